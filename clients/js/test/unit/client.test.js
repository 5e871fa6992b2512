import { test, beforeEach } from "node:test";
import assert from "node:assert/strict";
import { OtakoClient, OtakoStopError } from "../../dist/otako.js";
import { FakeClock, FakeWebSocket } from "./fakes.js";

let clock;

beforeEach(() => {
  FakeWebSocket.reset();
  clock = new FakeClock();
});

/** A client on the fakes; `random` is fixed unless given. */
function client(opts = {}) {
  const c = new OtakoClient({
    token: "tok",
    url: "ws://gw/gateway",
    WebSocket: FakeWebSocket,
    clock,
    random: () => 0.5,
    ...opts,
    autoConnect: false,
  });
  const log = { states: [], disconnects: [], resyncs: [], channels: [], stops: [], events: [] };
  c.on("state", (s) => log.states.push(s));
  c.on("disconnect", (d) => log.disconnects.push(d));
  c.on("resync", (r) => log.resyncs.push(r));
  c.on("channels", (ch) => log.channels.push(ch));
  c.on("stopped", (e) => log.stops.push(e));
  c.on("event", (e) => log.events.push(e));
  // Connected after the listeners are on, so they see the first state too.
  if (opts.autoConnect ?? true) c.connect();
  return { c, log };
}

function msg(id, s, cursor) {
  const frame = {
    op: 0,
    t: "EVENT_MESSAGE_CREATE",
    s,
    d: {
      id,
      channel_id: "1",
      author: { id: "8", username: "bob" },
      content: `m${id}`,
      nonce: null,
      timestamp: "2026-12-02T00:00:00Z",
      edited_timestamp: null,
    },
  };
  if (cursor !== undefined) frame.cursor = cursor;
  return frame;
}

test("the first heartbeat comes at interval × random, then one per interval", () => {
  const { c } = client({ random: () => 0.25 });
  const ws = FakeWebSocket.last;
  ws.hello(1000);
  ws.ready();
  clock.advance(249);
  assert.equal(ws.beats.length, 0, "not before interval × random");
  clock.advance(1);
  assert.deepEqual(ws.beats, [{ op: 1, d: 1 }], "the first beat carries the last s");
  ws.frame({ op: 11 });
  ws.frame(msg("10", 2));
  clock.advance(999);
  assert.equal(ws.beats.length, 1);
  clock.advance(1);
  assert.deepEqual(ws.beats[1], { op: 1, d: 2 });
  assert.equal(c.state, "live");
  c.close();
});

test("the first beat is jittered over the whole interval", () => {
  for (const [r, due] of [
    [0, 0],
    [0.9, 27_000],
  ]) {
    FakeWebSocket.reset();
    const { c } = client({ random: () => r });
    const ws = FakeWebSocket.last;
    ws.hello(30_000);
    ws.ready();
    clock.advance(Math.max(0, due - 1));
    assert.equal(ws.beats.length, due === 0 ? 1 : 0);
    clock.advance(1);
    assert.equal(ws.beats.length, 1, `random ${r}: first beat at ${due} ms`);
    c.close();
  }
});

test("acked heartbeats keep the session; a missing ACK is a zombie: close and reconnect", () => {
  const { c, log } = client({ random: () => 0 });
  const ws = FakeWebSocket.last;
  ws.hello(1000);
  ws.ready();
  clock.advance(0); // the first beat: random 0
  ws.frame({ op: 11 });
  for (let i = 0; i < 5; i++) {
    clock.advance(1000);
    ws.frame({ op: 11 });
  }
  assert.equal(FakeWebSocket.instances.length, 1, "acked beats never reconnect");
  assert.equal(ws.closedByClient, null);
  clock.advance(1000); // a beat that gets no ACK
  assert.equal(ws.closedByClient, null, "one beat without an ACK yet is fine");
  clock.advance(1000); // the next is due: still no ACK
  assert.notEqual(ws.closedByClient, null, "the zombie is closed");
  assert.equal(log.disconnects.at(-1).cause, "zombie");
  assert.equal(c.state, "resuming");
  clock.advance(0);
  assert.equal(FakeWebSocket.instances.length, 2, "and a new connection is opened");
  c.close();
});

test("backoff: full jitter under min(max, base × 2^failures), reset by a session", () => {
  // random just under 1 shows the ceilings.
  const { c, log } = client({ random: () => 0.9999, backoff: { baseMs: 100, maxMs: 1000 } });
  for (let i = 0; i < 6; i++) {
    FakeWebSocket.last.serverClose(1006);
    clock.advance(log.disconnects.at(-1).reconnectInMs);
  }
  assert.deepEqual(
    log.disconnects.map((d) => d.reconnectInMs),
    [99, 199, 399, 799, 999, 999],
  );
  assert.equal(FakeWebSocket.instances.length, 7);
  FakeWebSocket.last.hello();
  FakeWebSocket.last.ready();
  FakeWebSocket.last.serverClose(1006);
  assert.equal(log.disconnects.at(-1).reconnectInMs, 99, "a session resets the backoff");
  c.close();
});

test("backoff: random 0 reconnects at once, and the delay never exceeds the bound", () => {
  let r = 0;
  const { c, log } = client({ random: () => r, backoff: { baseMs: 1000, maxMs: 60_000 } });
  FakeWebSocket.last.serverClose(1006);
  assert.equal(log.disconnects[0].reconnectInMs, 0);
  clock.advance(0);
  assert.equal(FakeWebSocket.instances.length, 2);
  const rnd = mulberry32(42);
  for (let i = 0; i < 40; i++) {
    r = rnd();
    FakeWebSocket.last.serverClose(1011);
    const d = log.disconnects.at(-1).reconnectInMs;
    const bound = Math.min(60_000, 1000 * 2 ** (i + 1));
    assert.ok(d >= 0 && d < bound, `attempt ${i + 1}: ${d} within [0, ${bound})`);
    clock.advance(d);
  }
  c.close();
});

for (const [code, kind] of [
  [4004, "auth"],
  [4010, "session_limit"],
  [4001, "client_bug"],
  [4008, "client_bug"],
]) {
  test(`close ${code} stops with ${kind} and never reconnects`, async () => {
    const { c, log } = client();
    const events = c.events();
    const ws = FakeWebSocket.last;
    ws.hello();
    ws.ready();
    ws.serverClose(code, "why");
    assert.equal(c.state, "stopped");
    assert.equal(log.stops.length, 1);
    assert.ok(log.stops[0] instanceof OtakoStopError);
    assert.equal(log.stops[0].kind, kind);
    assert.equal(log.stops[0].code, code);
    assert.equal(c.stopReason, log.stops[0]);
    clock.advance(10 * 60_000);
    assert.equal(FakeWebSocket.instances.length, 1, "no reconnect");
    assert.equal(clock.pending, 0, "no timer left behind");
    // The iterator hands out what it had, then the reason.
    assert.equal((await events.next()).value.t, "READY");
    await assert.rejects(events.next(), (e) => e.kind === kind);
  });
}

for (const code of [1000, 1006, 1011, 4009, 4011]) {
  test(`close ${code} reconnects with backoff`, () => {
    const { c, log } = client({ random: () => 0.5, backoff: { baseMs: 1000 } });
    const ws = FakeWebSocket.last;
    ws.hello();
    ws.ready();
    ws.serverClose(code);
    assert.equal(c.state, "resuming");
    assert.equal(log.disconnects[0].code, code);
    assert.equal(log.disconnects[0].reconnectInMs, 500);
    clock.advance(499);
    assert.equal(FakeWebSocket.instances.length, 1);
    clock.advance(1);
    assert.equal(FakeWebSocket.instances.length, 2);
    c.close();
  });
}

test("close 1012 reconnects at once", () => {
  const { c, log } = client({ random: () => 0.9 });
  FakeWebSocket.last.hello();
  FakeWebSocket.last.ready();
  FakeWebSocket.last.serverClose(1012);
  assert.equal(log.disconnects[0].reconnectInMs, 0);
  clock.advance(0);
  assert.equal(FakeWebSocket.instances.length, 2);
  c.close();
});

test("op 7 closes the connection and reconnects at once, without waiting for 1012", () => {
  const { c, log } = client({ random: () => 0.9 });
  const ws = FakeWebSocket.last;
  ws.hello();
  ws.ready();
  ws.frame({ op: 7 });
  assert.notEqual(ws.closedByClient, null);
  assert.equal(log.disconnects[0].cause, "reconnect_requested");
  assert.equal(log.disconnects[0].reconnectInMs, 0);
  clock.advance(0);
  assert.equal(FakeWebSocket.instances.length, 2);
  ws.serverClose(1012); // the old socket's late close changes nothing
  assert.equal(log.disconnects.length, 1);
  c.close();
});

test("no READY within the connect timeout: the attempt is abandoned and retried", () => {
  const { c, log } = client({ connectTimeoutMs: 5000 });
  FakeWebSocket.last.open();
  clock.advance(4999);
  assert.equal(log.disconnects.length, 0);
  clock.advance(1);
  assert.equal(log.disconnects[0].cause, "timeout");
  assert.equal(c.state, "connecting", "no session yet: still connecting");
  c.close();
});

test("resume: the next session asks for the last cursor seen", () => {
  const { c } = client({ random: () => 0 });
  let ws = FakeWebSocket.last;
  assert.equal(ws.url, "ws://gw/gateway", "no cursor yet: no resume");
  ws.hello();
  ws.ready({ cursor: "r.0", resumed: false });
  assert.equal(c.cursor, "r.0", "READY's cursor");
  ws.frame(msg("10", 2, "c-2"));
  ws.frame(msg("11", 3, "c_3~"));
  ws.frame(msg("12", 4, "not a cursor!")); // malformed: ignored
  ws.frame(msg("13", 5)); // none: the last one stays
  assert.equal(c.cursor, "c_3~");
  ws.serverClose(1006);
  clock.advance(0);
  ws = FakeWebSocket.last;
  assert.equal(ws.url, "ws://gw/gateway?resume=c_3~");
  c.close();
});

test("resume keeps an existing query string and encodes nothing unsafe", () => {
  const { c } = client({ url: "ws://gw/gateway?x=1", random: () => 0 });
  FakeWebSocket.last.hello();
  FakeWebSocket.last.ready({ cursor: "A".repeat(64), resumed: false });
  FakeWebSocket.last.serverClose(1006);
  clock.advance(0);
  assert.equal(FakeWebSocket.last.url, `ws://gw/gateway?x=1&resume=${"A".repeat(64)}`);
  c.close();
});

test("a cursor longer than 64 characters is never sent back", () => {
  const { c } = client({ random: () => 0 });
  FakeWebSocket.last.hello();
  FakeWebSocket.last.ready({ cursor: "A".repeat(65), resumed: false });
  assert.equal(c.cursor, null);
  c.close();
});

test("resumed: true → state resumed, no resync; the cursor carries on", () => {
  const { c, log } = client({ random: () => 0 });
  FakeWebSocket.last.hello();
  FakeWebSocket.last.ready({ cursor: "c1", resumed: false });
  assert.deepEqual(log.states, ["connecting", "live"]);
  assert.equal(log.resyncs.length, 0, "the first session needs no resync");
  FakeWebSocket.last.frame(msg("10", 2, "c2"));
  FakeWebSocket.last.serverClose(1006);
  clock.advance(0);
  assert.match(FakeWebSocket.last.url, /\?resume=c2$/);
  FakeWebSocket.last.hello();
  FakeWebSocket.last.ready({ cursor: "c2", resumed: true });
  assert.deepEqual(log.states, ["connecting", "live", "resuming", "resumed"]);
  assert.equal(log.resyncs.length, 0);
  c.close();
  assert.equal(c.state, "stopped");
});

test("resumed: false after a lost session → a resync signal and state live", () => {
  const { c, log } = client({ random: () => 0 });
  const it = c.events();
  FakeWebSocket.last.hello();
  FakeWebSocket.last.ready({ cursor: "c1", resumed: false });
  FakeWebSocket.last.serverClose(1006);
  clock.advance(0);
  FakeWebSocket.last.hello();
  FakeWebSocket.last.ready({ cursor: "z9", resumed: false });
  assert.equal(log.resyncs.length, 1);
  assert.equal(log.resyncs[0].resumed, false);
  assert.equal(log.resyncs[0].resync, true);
  assert.equal(c.state, "live");
  assert.equal(c.cursor, "z9", "a fresh session starts from its own cursor");
  c.close();
  return (async () => {
    const readies = [];
    for await (const ev of it) readies.push(ev.d.resync);
    assert.deepEqual(readies, [false, true], "the iterator's READY says resync too");
  })();
});

test("a gateway without resume (no cursor, no resumed) counts as resumed: false", () => {
  const { c, log } = client({ random: () => 0 });
  FakeWebSocket.last.hello();
  FakeWebSocket.last.ready();
  FakeWebSocket.last.frame(msg("10", 2));
  FakeWebSocket.last.serverClose(1006);
  clock.advance(0);
  assert.equal(FakeWebSocket.last.url, "ws://gw/gateway", "nothing to resume from");
  FakeWebSocket.last.hello();
  FakeWebSocket.last.ready();
  assert.equal(log.resyncs.length, 1);
  assert.equal(c.state, "live");
  c.close();
});

test("resume: false in the options never sends the cursor", () => {
  const { c } = client({ random: () => 0, resume: false });
  FakeWebSocket.last.hello();
  FakeWebSocket.last.ready({ cursor: "c1", resumed: false });
  FakeWebSocket.last.serverClose(1006);
  clock.advance(0);
  assert.equal(FakeWebSocket.last.url, "ws://gw/gateway");
  c.close();
});

test("the channel list: READY's, then member events about this user as set changes", () => {
  const { c, log } = client();
  const ws = FakeWebSocket.last;
  ws.hello();
  ws.ready({ channels: ["1", "2"] });
  const member = (t, channel_id, user_id, s) =>
    ws.frame({ op: 0, t, s, d: { channel_id, user_id } });
  member("EVENT_CHANNEL_MEMBER_ADD", "3", "7", 2);
  member("EVENT_CHANNEL_MEMBER_ADD", "4", "8", 3); // someone else
  member("EVENT_CHANNEL_MEMBER_ADD", "3", "7", 4); // already in: no change
  member("EVENT_CHANNEL_MEMBER_REMOVE", "1", "7", 5);
  member("EVENT_CHANNEL_MEMBER_REMOVE", "2", "9", 6); // someone else
  member("EVENT_CHANNEL_MEMBER_REMOVE", "1", "7", 7); // already out
  assert.deepEqual(c.channels, ["2", "3"]);
  assert.deepEqual(log.channels, [["1", "2"], ["1", "2", "3"], ["2", "3"]]);
  assert.equal(log.events.length, 6, "every member event is still an event");
  c.close();
});

test("a new session's READY replaces the channel list", () => {
  const { c } = client({ random: () => 0 });
  FakeWebSocket.last.hello();
  FakeWebSocket.last.ready({ channels: ["1"] });
  FakeWebSocket.last.serverClose(1006);
  clock.advance(0);
  FakeWebSocket.last.hello();
  FakeWebSocket.last.ready({ channels: ["5", "6"] });
  assert.deepEqual(c.channels, ["5", "6"]);
  c.close();
});

test("typed emitter: per-type events and the catch-all, unknown types apart", () => {
  const { c } = client();
  const created = [];
  const deleted = [];
  const unknown = [];
  c.on("message_create", (d, ev) => created.push([d.id, ev.s]));
  const off = c.on("message_delete", (d) => deleted.push(d.id));
  c.on("unknown_event", (f) => unknown.push(f.t));
  const ws = FakeWebSocket.last;
  ws.hello();
  ws.ready();
  ws.frame(msg("10", 2));
  ws.frame({ op: 0, t: "EVENT_MESSAGE_DELETE", s: 3, d: { id: "10", channel_id: "1" } });
  off();
  ws.frame({ op: 0, t: "EVENT_MESSAGE_DELETE", s: 4, d: { id: "11", channel_id: "1" } });
  ws.frame({ op: 0, t: "EVENT_SOMETHING_NEW", s: 5, d: {} });
  assert.deepEqual(created, [["10", 2]]);
  assert.deepEqual(deleted, ["10"]);
  assert.deepEqual(unknown, ["EVENT_SOMETHING_NEW"]);
  c.close();
});

test("async iterator: READY and events in order, ends after close()", async () => {
  const { c } = client();
  const it = c.events();
  const ws = FakeWebSocket.last;
  ws.hello();
  ws.ready();
  ws.frame(msg("10", 2));
  ws.frame(msg("11", 3));
  setTimeout(() => {
    ws.frame(msg("12", 4));
    c.close();
  }, 1);
  const seen = [];
  for await (const ev of it) seen.push(ev.t === "READY" ? "READY" : ev.d.id);
  assert.deepEqual(seen, ["READY", "10", "11", "12"]);
});

test("an iterator taken after close() ends at once; after a stop it throws", async () => {
  const { c } = client();
  c.close();
  assert.deepEqual(await c.events().next(), { value: undefined, done: true });
  c.connect();
  FakeWebSocket.last.serverClose(4004);
  await assert.rejects(c.events().next(), (e) => e.kind === "auth");
});

test("a listener that throws does not break the client or the others", () => {
  const errors = [];
  const { c } = client({ onListenerError: (e) => errors.push(e.message) });
  c.on("message_create", () => {
    throw new Error("app bug");
  });
  const got = [];
  c.on("message_create", (d) => got.push(d.id));
  FakeWebSocket.last.hello();
  FakeWebSocket.last.ready();
  FakeWebSocket.last.frame(msg("10", 2));
  FakeWebSocket.last.frame(msg("11", 3));
  assert.deepEqual(got, ["10", "11"]);
  assert.deepEqual(errors, ["app bug", "app bug"], "each error is handed on, not swallowed");
  assert.equal(c.state, "live");
  c.close();
});

test("with autoConnect, listeners added right after construction see 'connecting'", async () => {
  const c = new OtakoClient({ token: "tok", url: "ws://gw/gateway", WebSocket: FakeWebSocket, clock });
  assert.equal(c.state, "connecting");
  const states = [];
  c.on("state", (s) => states.push(s));
  assert.equal(FakeWebSocket.instances.length, 0, "nothing opened synchronously");
  await Promise.resolve();
  assert.deepEqual(states, ["connecting"]);
  assert.equal(FakeWebSocket.instances.length, 1);
  c.close();
  assert.deepEqual(states, ["connecting", "stopped"]);
});

test("close() right after construction opens nothing", async () => {
  const c = new OtakoClient({ token: "tok", url: "ws://gw/gateway", WebSocket: FakeWebSocket, clock });
  c.close();
  await Promise.resolve();
  assert.equal(FakeWebSocket.instances.length, 0);
  assert.equal(c.state, "stopped");
});

test("auth: the header with a given constructor, the subprotocol list when asked", () => {
  const a = client().c;
  assert.deepEqual(FakeWebSocket.last.options, { headers: { Authorization: "tok" } });
  assert.equal(FakeWebSocket.last.protocols, undefined);
  a.close();
  const b = client({ auth: "subprotocol" }).c;
  assert.deepEqual(FakeWebSocket.last.protocols, ["otako.v1", "otako.token.tok"]);
  assert.equal(FakeWebSocket.last.options, undefined);
  b.close();
});

test("the global WebSocket (as in browsers) gets the token in the subprotocol list", async () => {
  const saved = globalThis.WebSocket;
  globalThis.WebSocket = FakeWebSocket;
  try {
    const c = new OtakoClient({ token: "tok", url: "ws://gw/gateway", clock });
    await Promise.resolve();
    assert.deepEqual(FakeWebSocket.last.protocols, ["otako.v1", "otako.token.tok"]);
    c.close();
  } finally {
    globalThis.WebSocket = saved;
  }
});

test("several URLs: start at a random one, move on at every reconnect", () => {
  const { c } = client({ url: ["ws://a/gateway", "ws://b/gateway", "ws://c/gateway"], random: () => 0.5 });
  const urls = () => FakeWebSocket.instances.map((w) => w.url);
  assert.deepEqual(urls(), ["ws://b/gateway"]);
  assert.equal(c.url, "ws://b/gateway");
  for (let i = 0; i < 3; i++) {
    FakeWebSocket.last.serverClose(1012);
    clock.advance(0);
  }
  assert.deepEqual(urls(), ["ws://b/gateway", "ws://c/gateway", "ws://a/gateway", "ws://b/gateway"]);
  c.close();
});

test("a URL chooser function picks each attempt's URL", () => {
  const calls = [];
  const { c } = client({
    url: (ctx) => {
      calls.push(ctx);
      return `ws://n${ctx.attempt}/gateway`;
    },
  });
  FakeWebSocket.last.serverClose(1012);
  clock.advance(0);
  assert.deepEqual(calls, [
    { attempt: 0, previous: null },
    { attempt: 1, previous: "ws://n0/gateway" },
  ]);
  assert.equal(FakeWebSocket.last.url, "ws://n1/gateway");
  c.close();
});

test("close() closes the socket, cancels every timer, and connect() starts again", () => {
  const { c, log } = client();
  const ws = FakeWebSocket.last;
  ws.hello();
  ws.ready();
  c.close();
  assert.equal(ws.closedByClient.code, 1000);
  assert.equal(clock.pending, 0);
  assert.equal(log.stops[0].kind, "closed");
  c.connect();
  assert.equal(c.state, "resuming", "it had a session: what follows may resume it");
  assert.equal(FakeWebSocket.instances.length, 2);
  c.close();
});

test("close() during the backoff wait stops it", () => {
  const { c } = client({ random: () => 0.5 });
  FakeWebSocket.last.serverClose(1006);
  assert.equal(clock.pending, 1);
  c.close();
  assert.equal(clock.pending, 0);
  clock.advance(60_000);
  assert.equal(FakeWebSocket.instances.length, 1);
});

/** A small seeded generator, so the bound test is repeatable. */
function mulberry32(a) {
  return () => {
    a |= 0;
    a = (a + 0x6d2b79f5) | 0;
    let t = Math.imul(a ^ (a >>> 15), 1 | a);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
