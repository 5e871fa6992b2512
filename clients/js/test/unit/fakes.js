// The unit tests' boundary: a fake WebSocket class and a fake clock, so the
// client's state machine runs without a network and without waiting.

/** Timers that run only when the test moves time forward. */
export class FakeClock {
  now = 0;
  #timers = new Map();
  #next = 1;

  setTimeout = (fn, ms) => {
    const id = this.#next++;
    this.#timers.set(id, { at: this.now + Math.max(0, ms), fn, id });
    return id;
  };

  clearTimeout = (id) => {
    this.#timers.delete(id);
  };

  /** Runs every timer due within `ms`, in order, timers they set included. */
  advance(ms) {
    const end = this.now + ms;
    for (;;) {
      const due = [...this.#timers.values()]
        .filter((t) => t.at <= end)
        .sort((a, b) => a.at - b.at || a.id - b.id)[0];
      if (!due) break;
      this.#timers.delete(due.id);
      this.now = due.at;
      due.fn();
    }
    this.now = end;
  }

  get pending() {
    return this.#timers.size;
  }
}

/** Records what the client does; the test plays the server. */
export class FakeWebSocket {
  static instances = [];
  static reset() {
    FakeWebSocket.instances = [];
  }
  static get last() {
    return FakeWebSocket.instances[FakeWebSocket.instances.length - 1];
  }

  readyState = 0;
  onopen = null;
  onmessage = null;
  onclose = null;
  onerror = null;
  sent = [];
  closedByClient = null;

  constructor(url, protocols, options) {
    this.url = url;
    this.protocols = protocols;
    this.options = options;
    FakeWebSocket.instances.push(this);
  }

  send(data) {
    if (this.readyState !== 1) throw new Error("not open");
    this.sent.push(JSON.parse(data));
  }

  close(code, reason) {
    this.closedByClient = { code, reason };
    this.readyState = 3;
  }

  // --- the server's side ---

  open() {
    this.readyState = 1;
    this.onopen?.({});
  }

  frame(obj) {
    this.onmessage?.({ data: JSON.stringify(obj) });
  }

  hello(interval = 1000) {
    this.open();
    this.frame({ op: 10, d: { heartbeat_interval: interval, session_id: "sess" } });
  }

  ready(d = {}) {
    this.frame({
      op: 0,
      t: "READY",
      s: 1,
      d: { session_id: "sess", user: { id: "7", username: "alice" }, channels: ["1", "2"], ...d },
    });
  }

  serverClose(code, reason = "") {
    this.readyState = 3;
    this.onclose?.({ code, reason });
  }

  get beats() {
    return this.sent.filter((f) => f.op === 1);
  }
}
