// The chat page: sign up, channels, messages live over the gateway (the SDK
// in /sdk/otako.js), history over HTTP. Messages are kept by id, shown in id
// order, so a refetch after a reconnect never shows one twice.

import { OtakoApi, OtakoClient, compareIds } from "/sdk/otako.js";

const $ = (sel) => document.querySelector(sel);
const STATE_TEXT = {
  connecting: "connecting…",
  live: "live",
  resuming: "resuming…",
  resumed: "resumed",
  stopped: "offline",
};

const config = await (await fetch("/config.json")).json();
const api = new OtakoApi(location.origin);
/** channel id → Map(message id → message) */
const messages = new Map();
/** Ids deleted while a refetch may still bring them back. */
const deleted = new Set();
/** channel id → name, for the channels this tab created or named. */
const names = new Map(JSON.parse(sessionStorage.getItem("otako.names") ?? "[]"));
let channels = [];
let selected = null;
let client = null;

// What tests and curious people can look at in the console.
window.otako = { states: [], get client() { return client; } };

function showError(where, err) {
  $(where).textContent = err ? String(err.message ?? err) : "";
}

// --- sign-up ---------------------------------------------------------------

$("#signup-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  showError("#signup-error", null);
  try {
    const me = await api.createUser($("#username").value.trim());
    sessionStorage.setItem("otako.me", JSON.stringify(me));
    start(me);
  } catch (err) {
    showError("#signup-error", err.status === 409 ? "That username is taken." : err);
  }
});

const saved = sessionStorage.getItem("otako.me");
if (saved) start(JSON.parse(saved));

function start(me) {
  api.token = me.token;
  $("#signup").hidden = true;
  $("#chat").hidden = false;
  $("#me").textContent = me.username;
  $("#my-id").textContent = me.id;
  // `?resume=0` turns resume off: every reconnect then refetches over HTTP.
  const resume = new URLSearchParams(location.search).get("resume") !== "0";
  client = new OtakoClient({ token: me.token, url: config.gateways, resume, autoConnect: false });
  client.on("state", (state) => {
    window.otako.states.push(state);
    const conn = $("#conn");
    conn.dataset.state = state;
    conn.dataset.url = client.url ?? "";
    conn.title = `gateway: ${client.url ?? "none"}`;
    conn.textContent = STATE_TEXT[state];
  });
  let sessions = 0;
  client.on("ready", (ready) => {
    sessions += 1;
    // The first session, or one that did not resume: what is on screen may
    // have gaps, so load recent history (merged by id with what is there).
    if (sessions === 1 || ready.resync) for (const id of ready.channels) refetch(id);
  });
  client.on("channels", (list) => {
    channels = list;
    // A channel joined during the session: its history too.
    for (const id of list) if (!messages.has(id)) refetch(id);
    if (!channels.includes(selected)) select(channels[0] ?? null);
    renderChannels();
  });
  client.on("message_create", upsert);
  client.on("message_update", upsert);
  client.on("message_delete", (d) => {
    deleted.add(d.id);
    messages.get(d.channel_id)?.delete(d.id);
    if (d.channel_id === selected) renderMessages();
  });
  client.on("stopped", (err) => {
    if (err.kind === "auth") {
      sessionStorage.removeItem("otako.me");
      showError("#chat-error", "Your session token was rejected: reload the page and sign up again.");
    } else if (err.kind !== "closed") {
      showError("#chat-error", err);
    }
  });
  client.connect();
}

// --- messages --------------------------------------------------------------

function store(channelId) {
  let m = messages.get(channelId);
  if (!m) {
    m = new Map();
    messages.set(channelId, m);
  }
  return m;
}

function upsert(msg) {
  if (deleted.has(msg.id)) return;
  store(msg.channel_id).set(msg.id, msg);
  if (msg.channel_id === selected) renderMessages();
  else renderChannels();
}

async function refetch(channelId) {
  const m = store(channelId);
  try {
    const page = await api.listMessages(channelId, { limit: 100 });
    for (const msg of page) if (!deleted.has(msg.id)) m.set(msg.id, msg);
    if (channelId === selected) renderMessages();
  } catch (err) {
    showError("#chat-error", err);
  }
}

$("#post-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const input = $("#post-input");
  const content = input.value;
  if (!content || !selected) return;
  input.disabled = true;
  try {
    // The nonce makes a retried post safe: the same one returns the first message.
    const msg = await api.postMessage(selected, content, crypto.randomUUID());
    upsert(msg);
    input.value = "";
    showError("#chat-error", null);
  } catch (err) {
    showError("#chat-error", err);
  } finally {
    input.disabled = false;
    input.focus();
  }
});

// --- channels --------------------------------------------------------------

$("#channel-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  try {
    const ch = await api.createChannel($("#channel-name").value.trim());
    names.set(ch.id, ch.name);
    sessionStorage.setItem("otako.names", JSON.stringify([...names]));
    $("#channel-name").value = "";
    store(ch.id);
    select(ch.id);
    // The creator's member-add event puts it in the list; until then show it.
    if (!channels.includes(ch.id)) channels = [...channels, ch.id];
    renderChannels();
  } catch (err) {
    showError("#chat-error", err);
  }
});

$("#member-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  if (!selected) return showError("#chat-error", "Select a channel first.");
  try {
    await api.addMember(selected, $("#member-id").value.trim());
    $("#member-id").value = "";
    showError("#chat-error", null);
  } catch (err) {
    showError("#chat-error", err);
  }
});

function select(id) {
  selected = id;
  if (id && !messages.has(id)) {
    store(id);
    refetch(id);
  }
  const enabled = Boolean(id);
  $("#post-input").disabled = !enabled;
  $("#post-form button").disabled = !enabled;
  $("#channel-title").textContent = id ? channelName(id) : "No channel yet: create one, or ask to be added";
  renderChannels();
  renderMessages();
}

function channelName(id) {
  return names.has(id) ? `#${names.get(id)}` : `#${id}`;
}

function renderChannels() {
  const ul = $("#channels");
  ul.replaceChildren(
    ...[...channels].sort(compareIds).map((id) => {
      const li = document.createElement("li");
      const b = document.createElement("button");
      b.textContent = channelName(id);
      b.dataset.id = id;
      if (id === selected) b.className = "selected";
      b.addEventListener("click", () => select(id));
      li.append(b);
      return li;
    }),
  );
}

const timeFormat = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit", second: "2-digit" });

function renderMessages() {
  const ol = $("#messages");
  const list = selected ? [...(messages.get(selected)?.values() ?? [])] : [];
  list.sort((a, b) => compareIds(a.id, b.id));
  const atBottom = ol.scrollHeight - ol.scrollTop - ol.clientHeight < 40;
  ol.replaceChildren(
    ...list.slice(-500).map((m) => {
      const li = document.createElement("li");
      li.dataset.id = m.id;
      const who = document.createElement("b");
      who.textContent = m.author.username;
      const when = document.createElement("time");
      when.dateTime = m.timestamp;
      when.textContent = timeFormat.format(new Date(m.timestamp));
      const text = document.createElement("span");
      text.className = "content";
      text.textContent = m.content;
      li.append(who, when, text);
      return li;
    }),
  );
  if (atBottom) ol.scrollTop = ol.scrollHeight;
}
