// The chat page in a real browser (Debian's Chromium, driven by
// playwright-core) against the real stack: two users in two pages; the
// gateway node the second page is on is SIGKILLed while the first keeps
// posting; the second page shows resuming, then every message once, in order:
// once with resume (the gateway replays what the page missed) and once with
// resume off in the page (`?resume=0`: it refetches over HTTP instead).

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { mkdtemp, mkdir, rm } from "node:fs/promises";
import { existsSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { chromium } from "playwright-core";
import { ROOT, Stack, waitFor, username } from "../stack.js";

const CHROMIUM = process.env.OTAKO_CHROMIUM ?? "/usr/bin/chromium";
const SHOTS = path.join(process.env.CARGO_TARGET_DIR ?? path.join(ROOT, "target"), "otako-browser");

let stack;
let context;
let profile;

before(async () => {
  if (!existsSync(CHROMIUM)) {
    throw new Error(`${CHROMIUM} is missing: deploy/scripts/install-deps.sh installs it (apt-get install chromium)`);
  }
  await mkdir(SHOTS, { recursive: true });
  profile = await mkdtemp(path.join(os.tmpdir(), "otako-chromium-"));
  const launching = chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    viewport: { width: 1000, height: 640 },
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
  [stack, context] = await Promise.all([Stack.start({ name: "sdk-js/browser", gateways: 3 }), launching]);
});

after(async () => {
  await context?.close();
  await stack?.stop();
  if (profile) await rm(profile, { recursive: true, force: true });
});

/** A page signed up as a new user; returns the page and the user's id. */
async function signUp(prefix, query = "") {
  const page = await context.newPage();
  page.on("pageerror", (e) => console.error(`[${prefix} page error]`, e));
  await page.goto(`${stack.backend}/${query}`);
  const name = username(prefix);
  await page.fill("#username", name);
  await page.click("#signup-form button");
  await page.waitForSelector('#conn[data-state="live"]');
  const id = await page.textContent("#my-id");
  return { page, name, id };
}

/** The message contents page shows, top to bottom. */
const shown = (page) => page.$$eval("#messages li .content", (els) => els.map((e) => e.textContent));

async function post(page, text) {
  await page.fill("#post-input", text);
  await page.press("#post-input", "Enter");
  // The input empties once the backend has accepted the message.
  await page.waitForFunction(() => document.querySelector("#post-input").value === "");
}

const states = (page) => page.evaluate(() => window.otako.states);

/**
 * Alice and Bob chat; Bob's gateway node is SIGKILLed while Alice keeps
 * posting; Bob's page must show resuming, then every message once, in order.
 * Returns Bob's states after the kill and the history requests he made.
 */
async function killMidConversation(shot, bobQuery) {
  const alice = await signUp("alice");
  const bob = await signUp("bob", bobQuery);

  await alice.page.fill("#channel-name", "general");
  await alice.page.click("#channel-form button");
  await alice.page.waitForSelector("#channels button.selected");
  await alice.page.fill("#member-id", bob.id);
  await alice.page.click("#member-form button");
  // Bob's session learns of the channel from the member event, and opens it.
  await bob.page.waitForSelector("#channels button.selected");

  const sent = [];
  for (let i = 0; i < 3; i++) {
    sent.push(`hello ${i}`);
    await post(alice.page, `hello ${i}`);
  }
  await waitFor("Bob to see Alice's messages", async () => (await shown(bob.page)).length === 3);
  assert.deepEqual(await shown(bob.page), sent);
  await alice.page.screenshot({ path: path.join(SHOTS, `${shot}-1-alice.png`) });
  await bob.page.screenshot({ path: path.join(SHOTS, `${shot}-1-bob.png`) });

  const url = await bob.page.getAttribute("#conn", "data-url");
  const node = stack.gateways.indexOf(url);
  assert.ok(stack.liveGateways().includes(url), `Bob's page is on a live node (${url})`);
  const statesBefore = (await states(bob.page)).length;
  const refetches = [];
  bob.page.on("request", (r) => {
    if (r.method() === "GET" && /\/channels\/\d+\/messages/.test(r.url())) refetches.push(r.url());
  });

  // Alice keeps posting through the kill.
  let posting = true;
  const poster = (async () => {
    for (let i = 0; posting; i++) {
      sent.push(`during ${i}`);
      await post(alice.page, `during ${i}`);
    }
  })();
  await waitFor("Bob to see messages posted meanwhile", async () => (await shown(bob.page)).length >= 6);
  await stack.kill(node);
  // From the page's history: the reconnect may be over between two looks.
  await waitFor("Bob's page to show resuming", async () =>
    (await states(bob.page)).slice(statesBefore).includes("resuming"),
  );
  await bob.page
    .screenshot({ path: path.join(SHOTS, `${shot}-2-bob-resuming.png`) })
    .catch(() => {}); // best effort: the state may already have moved on
  await bob.page.waitForFunction(
    () => ["live", "resumed"].includes(document.querySelector("#conn").dataset.state),
    null,
    { timeout: 30_000 },
  );
  const after = await bob.page.getAttribute("#conn", "data-url");
  assert.notEqual(after, url, "Bob's page moved to another node");
  const since = (await states(bob.page)).slice(statesBefore);
  assert.equal(since[0], "resuming", `states after the kill: ${since}`);

  // A few more after the reconnect, then stop and compare.
  const target = sent.length + 5;
  await waitFor("Alice's posts after the reconnect", () => sent.length >= target, 30_000);
  posting = false;
  await poster;
  await waitFor(
    "Bob's page to show every message",
    async () => (await shown(bob.page)).length >= sent.length,
    30_000,
  );
  assert.deepEqual(await shown(bob.page), sent, `every message once, in order (states ${since})`);
  assert.deepEqual(await shown(alice.page), sent, "Alice's page agrees");
  await bob.page.screenshot({ path: path.join(SHOTS, `${shot}-3-bob-after.png`) });
  await alice.page.screenshot({ path: path.join(SHOTS, `${shot}-3-alice-after.png`) });
  await alice.page.close();
  await bob.page.close();
  return { since, refetches };
}

test("two users chat; the second survives the SIGKILL of its gateway node", async () => {
  const { since, refetches } = await killMidConversation("resume");
  if (since.includes("resumed")) {
    // The gateway replayed what the page missed: nothing to refetch.
    assert.deepEqual(refetches, [], "a resumed session needs no refetch");
  } else {
    // A gateway without resume: the page refetched instead.
    assert.ok(refetches.length > 0, "resumed:false: the page refetches over HTTP");
  }
});

test("with resume off, the page refetches after the kill and still shows every message once", async () => {
  const { since, refetches } = await killMidConversation("refetch", "?resume=0");
  assert.ok(!since.includes("resumed"), `no resume asked, none given: ${since}`);
  assert.ok(refetches.length > 0, "the page refetched over HTTP");
});
