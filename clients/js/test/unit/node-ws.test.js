// The client on Node's `ws` against sockets that misbehave at the TCP level:
// what a fake WebSocket cannot show.
import { test } from "node:test";
import assert from "node:assert/strict";
import net from "node:net";
import WebSocket from "ws";
import { OtakoClient } from "../../dist/otako.js";

test("an upgrade that never completes times out and is retried, without an uncaught error", async () => {
  // Accepts connections and never answers: every attempt hangs in CONNECTING.
  const held = [];
  const server = net.createServer((s) => held.push(s));
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  const url = `ws://127.0.0.1:${server.address().port}/gateway`;
  const disconnects = [];
  const client = new OtakoClient({
    token: "tok",
    url,
    WebSocket,
    connectTimeoutMs: 50,
    backoff: { baseMs: 1, maxMs: 1 },
  });
  client.on("disconnect", (d) => disconnects.push(d));
  try {
    await new Promise((resolve, reject) => {
      const t = setTimeout(() => reject(new Error("no retries")), 5000);
      client.on("disconnect", () => disconnects.length >= 3 && (clearTimeout(t), resolve()));
    });
    assert.ok(disconnects.every((d) => d.cause === "timeout"));
    assert.equal(client.state, "connecting");
  } finally {
    client.close();
    for (const s of held) s.destroy();
    server.close();
  }
});

test("a refused connection (a dead node) is retried on the next URL", async () => {
  // A port with nothing listening: bind, read, release.
  const probe = net.createServer();
  await new Promise((r) => probe.listen(0, "127.0.0.1", r));
  const dead = probe.address().port;
  await new Promise((r) => probe.close(r));
  const urls = [`ws://127.0.0.1:${dead}/gateway`, `ws://127.0.0.1:${dead}/gateway?second`];
  const seen = [];
  const client = new OtakoClient({ token: "tok", url: urls, WebSocket, random: () => 0, backoff: { baseMs: 1, maxMs: 1 } });
  try {
    await new Promise((resolve, reject) => {
      const t = setTimeout(() => reject(new Error("no retries")), 5000);
      client.on("disconnect", (d) => {
        seen.push([client.url, d.code]);
        if (seen.length >= 2) {
          clearTimeout(t);
          resolve();
        }
      });
    });
    assert.deepEqual(seen.slice(0, 2), [
      [urls[0], 1006],
      [urls[1], 1006],
    ]);
  } finally {
    client.close();
  }
});
