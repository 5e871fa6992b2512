// The SDK against the real stack: nats-server, PostgreSQL, two gateway nodes
// and the backend, started by the Rust harness (see ../stack.js).

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { readFile } from "node:fs/promises";
import WebSocket from "ws";
import { OtakoApi, OtakoClient, compareIds } from "../../dist/otako.js";
import { Stack, waitFor, username } from "../stack.js";

let stack;

before(async () => {
  stack = await Stack.start({ name: "sdk-js/e2e" });
});

after(async () => {
  await stack?.stop();
});

/** A user with a token, and an API client acting as them. */
async function user(prefix) {
  const anon = new OtakoApi(stack.backend);
  const u = await anon.createUser(username(prefix));
  return { ...u, api: new OtakoApi(stack.backend, u.token) };
}

/** A Node client of `token`, recording what it sees. */
function connect(token, opts = {}) {
  const client = new OtakoClient({
    token,
    url: stack.liveGateways(),
    WebSocket,
    autoConnect: false,
    ...opts,
  });
  const seen = { states: [], readies: [], resyncs: 0, messages: [], disconnects: [], stops: [] };
  client.on("state", (s) => seen.states.push(s));
  // Each READY with the number of messages seen before it, so a session's
  // own messages can be told apart.
  client.on("ready", (r) => seen.readies.push({ ...r, at: seen.messages.length }));
  client.on("resync", () => (seen.resyncs += 1));
  client.on("message_create", (m) => seen.messages.push(m));
  client.on("disconnect", (d) => seen.disconnects.push(d));
  client.on("stopped", (e) => seen.stops.push(e));
  client.connect();
  return { client, seen };
}

const isUp = (c) => c.state === "live" || c.state === "resumed";

/** Alice with a channel that Bob is a member of. */
async function aliceAndBob() {
  const alice = await user("alice");
  const bob = await user("bob");
  const channel = await alice.api.createChannel("general");
  await alice.api.addMember(channel.id, bob.id);
  return { alice, bob, channel };
}

test("the backend serves the chat page, its SDK copy and /config.json", async () => {
  const get = async (p) => {
    const r = await fetch(`${stack.backend}${p}`);
    assert.equal(r.status, 200, p);
    return { type: r.headers.get("content-type"), body: await r.text() };
  };
  const page = await get("/");
  assert.match(page.type, /^text\/html/);
  assert.match(page.body, /<script type="module" src="\/app.js">/);
  assert.match((await get("/app.js")).type, /^text\/javascript/);
  assert.match((await get("/style.css")).type, /^text\/css/);
  const sdk = await get("/sdk/otako.js");
  assert.match(sdk.type, /^text\/javascript/);
  const built = await readFile(new URL("../../dist/otako.js", import.meta.url), "utf8");
  assert.ok(sdk.body === built, "the served SDK is the current build (rebuild the backend after sync-web)");
  const config = await get("/config.json");
  assert.match(config.type, /^application\/json/);
  assert.deepEqual(JSON.parse(config.body), { gateways: stack.publicGateways });
});

test("messages posted over HTTP arrive on the SDK, in order, on both APIs", async () => {
  const { alice, bob, channel } = await aliceAndBob();
  // Bob as a Node app would (the Authorization header); Alice as a browser
  // does (the token in the subprotocol list).
  const b = connect(bob.token);
  const a = connect(alice.token, { auth: "subprotocol" });
  const iter = b.client.events();
  await waitFor("both sessions to be live", () => isUp(a.client) && isUp(b.client));
  assert.deepEqual(b.seen.states, ["connecting", "live"]);
  assert.equal(b.client.user.id, bob.id);
  assert.ok(b.client.channels.includes(channel.id), "READY lists the channel");

  const posted = [];
  for (let i = 0; i < 5; i++) posted.push(await alice.api.postMessage(channel.id, `hello ${i}`));
  const ids = posted.map((m) => m.id);

  const fromIterator = [];
  for await (const ev of iter) {
    if (ev.t === "EVENT_MESSAGE_CREATE") fromIterator.push(ev.d.id);
    if (fromIterator.length === ids.length) break;
  }
  assert.deepEqual(fromIterator, ids, "the async iterator yields each message once, in order");
  await waitFor("Alice's own session to see her messages", () => a.seen.messages.length === 5);
  assert.deepEqual(b.seen.messages.map((m) => m.id), ids, "the emitter too");
  assert.deepEqual(b.seen.messages.map((m) => m.content), posted.map((m) => m.content));
  assert.equal(b.seen.messages[0].author.username, alice.username);
  a.client.close();
  b.client.close();
});

test("a member add about the session's own user extends its channel list", async () => {
  const alice = await user("alice");
  const bob = await user("bob");
  const b = connect(bob.token);
  await waitFor("Bob's session", () => isUp(b.client));
  assert.deepEqual(b.client.channels, []);
  const channel = await alice.api.createChannel("later");
  await alice.api.addMember(channel.id, bob.id);
  await waitFor("the add to reach Bob", () => b.client.channels.includes(channel.id));
  const m = await alice.api.postMessage(channel.id, "welcome");
  await waitFor("the new channel's message", () => b.seen.messages.some((x) => x.id === m.id));
  await bob.api.removeMember(channel.id, bob.id);
  await waitFor("the remove to reach Bob", () => !b.client.channels.includes(channel.id));
  b.client.close();
});

test("a bad token stops with an auth error (4004), no reconnect loop", async () => {
  let attempts = 0;
  class CountingWebSocket extends WebSocket {
    constructor(...args) {
      super(...args);
      attempts += 1;
    }
  }
  // A backoff of 1 ms: a client that retried would pile up attempts at once.
  const bad = connect("not-a-token", { WebSocket: CountingWebSocket, backoff: { baseMs: 1, maxMs: 1 } });
  const stopped = await waitFor("the client to stop", () => bad.seen.stops[0]);
  assert.equal(stopped.kind, "auth");
  assert.equal(stopped.code, 4004);
  assert.equal(bad.client.state, "stopped");
  assert.match(stopped.message, /authentication failed/);
  // Time for many retries to have happened, measured by real work: another
  // session connects all the way to READY meanwhile.
  const good = connect((await user("carol")).token);
  await waitFor("another session", () => isUp(good.client));
  good.client.close();
  assert.equal(attempts, 1, "one attempt only");
  await assert.rejects(bad.client.events().next(), (e) => e.kind === "auth");
});

test("op 7 on a graceful shutdown: the client moves to the other node at once", async () => {
  const { alice, bob, channel } = await aliceAndBob();
  const b = connect(bob.token);
  await waitFor("Bob's session", () => isUp(b.client));
  const node = stack.gateways.indexOf(b.client.url);
  assert.ok(stack.liveGateways().includes(b.client.url), `connected to a live node (${b.client.url})`);
  await stack.term(node);
  await waitFor("a second session", () => b.seen.readies.length === 2 && isUp(b.client));
  assert.equal(b.seen.disconnects[0].reconnectInMs, 0, "at once");
  assert.notEqual(b.client.url, stack.gateways[node], "on the other node");
  const m = await alice.api.postMessage(channel.id, "after the drain");
  await waitFor("a message on the new session", () => b.seen.messages.some((x) => x.id === m.id));
  // Put a node back for the tests after this one.
  await stack.startGateway();
  b.client.close();
});

for (const resume of [true, false]) {
  test(`a SIGKILLed gateway node is survived: every message exactly once (resume ${resume ? "on" : "off"})`, async () => {
    // Somewhere to move to.
    while (stack.liveGateways().length < 2) await stack.startGateway();
    const { alice, bob, channel } = await aliceAndBob();
    const b = connect(bob.token, { backoff: { baseMs: 200, maxMs: 2000 }, resume });
    await waitFor("Bob's session", () => isUp(b.client));
    const node = stack.gateways.indexOf(b.client.url);
    assert.ok(stack.liveGateways().includes(b.client.url), `connected to a live node (${b.client.url})`);

    // Alice posts on, one message after another, through the kill.
    const posted = [];
    let posting = true;
    const poster = (async () => {
      for (let i = 0; posting; i++) {
        posted.push(await alice.api.postMessage(channel.id, `m${i}`, `n${i}`));
      }
    })();
    await waitFor("some messages before the kill", () => b.seen.messages.length >= 5);
    const statesBefore = b.seen.states.length;
    await stack.kill(node);
    // From the history: the reconnect may be over between two looks at the state.
    await waitFor("Bob's client to notice", () => b.seen.states.slice(statesBefore).includes("resuming"), 30_000);
    await waitFor("a second session", () => b.seen.readies.length === 2 && isUp(b.client), 30_000);
    const second = b.seen.readies[1];
    assert.notEqual(b.client.url, stack.gateways[node], "on the other node");
    // Messages whose POST starts from here on are surely after the new READY.
    const afterReconnect = posted.length + 1;
    await waitFor("more messages after the reconnect", () => posted.length >= afterReconnect + 10, 30_000);
    posting = false;
    await poster;
    const all = posted.map((m) => m.id);
    const later = all.slice(afterReconnect);
    await waitFor(
      "every message posted after the reconnect",
      () => later.every((id) => b.seen.messages.some((m) => m.id === id)),
      30_000,
    );
    const ids = () => b.seen.messages.map((m) => m.id);

    if (!resume) assert.equal(second.resumed, false, "no resume asked, none given");
    if (second.resumed) {
      // A gateway with resume: the new session replays what the old one missed.
      await waitFor("every message", () => all.every((id) => ids().includes(id)), 30_000);
      assert.deepEqual(ids(), all, "every message exactly once, in order");
      assert.equal(b.client.state, "resumed");
      assert.equal(b.seen.resyncs, 0);
    } else {
      // A fresh session: the SDK says so, and the app refetches over HTTP.
      assert.equal(b.seen.resyncs, 1, "resumed:false is signalled");
      const secondSession = ids().slice(second.at);
      assert.equal(new Set(secondSession).size, secondSession.length, "no duplicate in the new session");
      assert.deepEqual(
        secondSession.filter((id) => later.includes(id)),
        later,
        "each message posted after the reconnect arrives once, in order",
      );
      const history = await everyMessage(bob.api, channel.id);
      const merged = [...new Set([...ids(), ...history.map((m) => m.id)])].sort(compareIds);
      assert.deepEqual(merged, all, "events and the refetch together hold every message once");
    }
    b.client.close();
  });
}

/** A channel's whole history over HTTP, page by page, newest first. */
async function everyMessage(api, channelId) {
  const out = [];
  for (;;) {
    const page = await api.listMessages(channelId, { limit: 100, before: out.at(-1)?.id });
    out.push(...page);
    if (page.length < 100) return out;
  }
}
