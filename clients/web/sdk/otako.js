// The Otako gateway client: one module, no runtime dependency, for browsers
// and Node. The protocol it speaks is docs/protocol.md and shared/CONTRACT.md.
/** Event-emitter names of the dispatched events. */
export const EVENT_NAMES = {
    EVENT_MESSAGE_CREATE: "message_create",
    EVENT_MESSAGE_UPDATE: "message_update",
    EVENT_MESSAGE_DELETE: "message_delete",
    EVENT_CHANNEL_MEMBER_ADD: "channel_member_add",
    EVENT_CHANNEL_MEMBER_REMOVE: "channel_member_remove",
};
// ---------------------------------------------------------------------------
// Protocol constants
// ---------------------------------------------------------------------------
export const OP = {
    DISPATCH: 0,
    HEARTBEAT: 1,
    RECONNECT: 7,
    HELLO: 10,
    HEARTBEAT_ACK: 11,
};
export const CLOSE = {
    NORMAL: 1000,
    ABNORMAL: 1006,
    SERVER_ERROR: 1011,
    RESTARTING: 1012,
    CLIENT_DATA_REJECTED: 4001,
    AUTHENTICATION_FAILED: 4004,
    HEARTBEATS_TOO_FREQUENT: 4008,
    HEARTBEAT_TIMEOUT: 4009,
    SESSION_LIMIT: 4010,
    TOO_SLOW: 4011,
};
/** A cursor as the contract defines it; anything else is never sent back. */
const CURSOR_RE = /^[A-Za-z0-9._~-]{1,64}$/;
export function isCursor(v) {
    return typeof v === "string" && CURSOR_RE.test(v);
}
export class OtakoStopError extends Error {
    kind;
    /** The WebSocket close code, or null for `close()`. */
    code;
    reason;
    constructor(kind, code, reason) {
        super(stopMessage(kind, code, reason));
        this.name = "OtakoStopError";
        this.kind = kind;
        this.code = code;
        this.reason = reason;
    }
}
function stopMessage(kind, code, reason) {
    const why = reason ? `: ${reason}` : "";
    switch (kind) {
        case "auth":
            return `authentication failed (close ${code})${why}; get a new token`;
        case "session_limit":
            return `session limit reached (close ${code})${why}; close another session of this user`;
        case "client_bug":
            return `the gateway rejected this client's frames (close ${code})${why}; this is a client bug`;
        case "closed":
            return "the client was closed";
    }
}
const realClock = {
    setTimeout: (fn, ms) => globalThis.setTimeout(fn, ms),
    clearTimeout: (h) => globalThis.clearTimeout(h),
};
class Emitter {
    onListenerError;
    listeners = new Map();
    constructor(onListenerError = (err) => queueMicrotask(() => {
        throw err;
    })) {
        this.onListenerError = onListenerError;
    }
    /** Adds a listener; returns a function that removes it. */
    on(name, fn) {
        let set = this.listeners.get(name);
        if (!set) {
            set = new Set();
            this.listeners.set(name, set);
        }
        set.add(fn);
        return () => this.off(name, fn);
    }
    once(name, fn) {
        const off = this.on(name, ((...args) => {
            off();
            fn(...args);
        }));
        return off;
    }
    off(name, fn) {
        this.listeners.get(name)?.delete(fn);
    }
    emit(name, ...args) {
        const set = this.listeners.get(name);
        if (!set)
            return;
        for (const fn of [...set]) {
            try {
                fn(...args);
            }
            catch (err) {
                // One listener's failure must not break the client or other listeners.
                this.onListenerError(err);
            }
        }
    }
}
const DEFAULT_BASE_MS = 1000;
const DEFAULT_MAX_MS = 60_000;
export class OtakoClient extends Emitter {
    token;
    chooseUrl;
    WS;
    authMode;
    baseMs;
    maxMs;
    connectTimeoutMs;
    resumeEnabled;
    clock;
    random;
    conn = null;
    reconnectTimer = null;
    /** Failed attempts since the last session that reached READY. */
    failures = 0;
    attempt = 0;
    previousUrl = null;
    hadSession = false;
    _state = "stopped";
    _stopReason = null;
    _cursor = null;
    _channels = [];
    _user = null;
    _sessionId = null;
    iterators = new Set();
    everStarted = false;
    constructor(options) {
        super(options.onListenerError);
        this.token = options.token;
        this.random = options.random ?? Math.random;
        this.chooseUrl = urlChooser(options.url, this.random);
        const WS = options.WebSocket ?? globalThis.WebSocket;
        if (!WS) {
            throw new TypeError("no WebSocket: pass one in the options (in Node: `import WebSocket from 'ws'`)");
        }
        this.WS = WS;
        this.authMode =
            options.auth ??
                (options.WebSocket && options.WebSocket !== globalThis.WebSocket
                    ? "header"
                    : "subprotocol");
        this.baseMs = options.backoff?.baseMs ?? DEFAULT_BASE_MS;
        this.maxMs = options.backoff?.maxMs ?? DEFAULT_MAX_MS;
        this.connectTimeoutMs = options.connectTimeoutMs ?? 15_000;
        this.resumeEnabled = options.resume ?? true;
        this.clock = options.clock ?? realClock;
        if (options.autoConnect ?? true) {
            // Connecting starts after the caller's synchronous code, so listeners
            // added right after construction see the first state change too.
            this._state = "connecting";
            this.everStarted = true;
            queueMicrotask(() => {
                if (this._state !== "connecting" || this.conn || this.reconnectTimer !== null)
                    return;
                this.emit("state", "connecting", "stopped");
                this.open();
            });
        }
    }
    /** The connection state; every change is emitted as `state`. */
    get state() {
        return this._state;
    }
    /** Why the client stopped, once it has (null while it runs). */
    get stopReason() {
        return this._stopReason;
    }
    /** The last cursor received; the next session resumes from it. */
    get cursor() {
        return this._cursor;
    }
    /** The channels this session receives events of (READY, then member events). */
    get channels() {
        return [...this._channels];
    }
    /** The session's user, from READY. */
    get user() {
        return this._user;
    }
    get sessionId() {
        return this._sessionId;
    }
    /** The URL of the current (or last) attempt. */
    get url() {
        return this.conn?.url ?? this.previousUrl;
    }
    /** Starts (or restarts, after `close()` or a stop) connecting. */
    connect() {
        if (this._state !== "stopped")
            return;
        this._stopReason = null;
        this.failures = 0;
        this.setState(this.hadSession ? "resuming" : "connecting");
        this.everStarted = true;
        this.open();
    }
    /** Ends the session and stops reconnecting; iterators finish. */
    close() {
        if (this._state === "stopped")
            return;
        this.stop(new OtakoStopError("closed", null, ""), CLOSE.NORMAL);
    }
    /**
     * Every READY and event from now on, until the client stops: an
     * iterator that ends after `close()` and throws `OtakoStopError` after any
     * other stop.
     */
    events() {
        const q = new EventQueue(() => this.iterators.delete(q));
        if (this._state === "stopped" && this.everStarted) {
            q.end(this._stopReason?.kind === "closed" ? null : this._stopReason);
        }
        else {
            this.iterators.add(q);
        }
        return q;
    }
    // --- connection lifecycle -------------------------------------------------
    open() {
        const url = this.chooseUrl({ attempt: this.attempt, previous: this.previousUrl });
        this.attempt += 1;
        this.previousUrl = url;
        const target = this.resumeEnabled && this._cursor ? withResume(url, this._cursor) : url;
        let ws;
        try {
            ws =
                this.authMode === "subprotocol"
                    ? new this.WS(target, ["otako.v1", `otako.token.${this.token}`])
                    : new this.WS(target, undefined, { headers: { Authorization: this.token } });
        }
        catch (err) {
            // A malformed URL or the like: a failed attempt like any other, so a
            // list of URLs moves on to the next one.
            this.conn = null;
            this.scheduleReconnect({
                code: CLOSE.ABNORMAL,
                reason: String(err?.message ?? err),
                reconnectInMs: null,
            });
            return;
        }
        const conn = {
            ws,
            url,
            lastS: null,
            intervalMs: 0,
            awaitingAck: false,
            heartbeatTimer: null,
            connectTimer: null,
            ready: false,
        };
        this.conn = conn;
        conn.connectTimer = this.clock.setTimeout(() => {
            if (this.conn === conn && !conn.ready)
                this.drop(conn, "timeout");
        }, this.connectTimeoutMs);
        ws.onmessage = (ev) => {
            if (this.conn === conn)
                this.onFrame(conn, ev.data);
        };
        ws.onclose = (ev) => {
            if (this.conn === conn)
                this.onClose(conn, ev.code, ev.reason ?? "");
        };
        // A failed connection also fires close, which does the work.
        ws.onerror = () => { };
    }
    onFrame(conn, data) {
        let frame;
        try {
            frame = JSON.parse(typeof data === "string" ? data : new TextDecoder().decode(data));
        }
        catch {
            return;
        }
        if (typeof frame.s === "number")
            conn.lastS = frame.s;
        switch (frame.op) {
            case OP.HELLO:
                this.onHello(conn, frame.d);
                break;
            case OP.HEARTBEAT_ACK:
                conn.awaitingAck = false;
                break;
            case OP.RECONNECT:
                this.drop(conn, "reconnect_requested");
                break;
            case OP.DISPATCH:
                if (frame.t === "READY")
                    this.onReady(conn, frame.d, frame.s);
                else
                    this.onDispatch(frame);
                break;
        }
    }
    onHello(conn, d) {
        const interval = Number(d?.heartbeat_interval);
        if (!(interval > 0))
            return;
        conn.intervalMs = interval;
        // The first beat at a random point of the first interval, so that
        // clients reconnecting together spread out.
        this.armHeartbeat(conn, interval * this.random());
    }
    armHeartbeat(conn, delayMs) {
        conn.heartbeatTimer = this.clock.setTimeout(() => this.beat(conn), delayMs);
    }
    beat(conn) {
        if (this.conn !== conn)
            return;
        if (conn.awaitingAck) {
            // No ACK since the last beat: the connection is a zombie.
            this.drop(conn, "zombie");
            return;
        }
        conn.awaitingAck = true;
        try {
            conn.ws.send(JSON.stringify({ op: OP.HEARTBEAT, d: conn.lastS }));
        }
        catch {
            // A socket that cannot send closes soon; the close starts the reconnect.
        }
        this.armHeartbeat(conn, conn.intervalMs);
    }
    onReady(conn, d, s) {
        conn.ready = true;
        this.clock.clearTimeout(conn.connectTimer);
        const resumed = d?.resumed === true;
        const cursor = isCursor(d?.cursor) ? d.cursor : null;
        const ready = {
            session_id: String(d?.session_id ?? ""),
            user: { id: String(d?.user?.id ?? ""), username: String(d?.user?.username ?? "") },
            channels: Array.isArray(d?.channels) ? d.channels.map(String) : [],
            cursor,
            resumed,
            resync: this.hadSession && !resumed,
        };
        // A fresh session starts from its own position; a resumed one from the
        // same place, which READY restates.
        this._cursor = cursor ?? (resumed ? this._cursor : null);
        this._user = ready.user;
        this._sessionId = ready.session_id;
        this._channels = [...ready.channels];
        this.failures = 0;
        const first = !this.hadSession;
        this.hadSession = true;
        this.setState(resumed && !first ? "resumed" : "live");
        this.emit("ready", ready);
        this.push({ t: "READY", s, d: ready });
        if (ready.resync)
            this.emit("resync", ready);
        this.emit("channels", this.channels);
    }
    onDispatch(frame) {
        if (isCursor(frame.cursor))
            this._cursor = frame.cursor;
        const name = EVENT_NAMES[frame.t];
        if (!name) {
            this.emit("unknown_event", frame);
            return;
        }
        const event = frame;
        if (event.t === "EVENT_CHANNEL_MEMBER_ADD" || event.t === "EVENT_CHANNEL_MEMBER_REMOVE") {
            this.applyMember(event);
        }
        this.emit("event", event);
        this.emit(name, event.d, event);
        this.push(event);
    }
    /** Member events about this session's user change its channel list (as a set). */
    applyMember(event) {
        if (!this._user || String(event.d.user_id) !== this._user.id)
            return;
        const ch = String(event.d.channel_id);
        const has = this._channels.includes(ch);
        if (event.t === "EVENT_CHANNEL_MEMBER_ADD" && !has) {
            this._channels.push(ch);
        }
        else if (event.t === "EVENT_CHANNEL_MEMBER_REMOVE" && has) {
            this._channels = this._channels.filter((c) => c !== ch);
        }
        else {
            return;
        }
        this.emit("channels", this.channels);
    }
    onClose(conn, code, reason) {
        this.teardown(conn);
        const stop = stopKind(code);
        if (stop) {
            this.stop(new OtakoStopError(stop, code, reason), null);
            return;
        }
        this.scheduleReconnect({ code, reason, reconnectInMs: null });
    }
    /** The client ends `conn` itself and moves on without waiting for its close. */
    drop(conn, cause) {
        this.teardown(conn);
        try {
            conn.ws.close(CLOSE.NORMAL, cause);
        }
        catch {
            // Already closed.
        }
        this.scheduleReconnect({
            code: cause === "reconnect_requested" ? CLOSE.RESTARTING : CLOSE.ABNORMAL,
            reason: "",
            cause,
            reconnectInMs: null,
        });
    }
    teardown(conn) {
        this.clock.clearTimeout(conn.heartbeatTimer);
        this.clock.clearTimeout(conn.connectTimer);
        conn.ws.onmessage = null;
        conn.ws.onclose = null;
        conn.ws.onopen = null;
        // Not null: Node's `ws` throws an error event nobody listens to, and
        // closing a socket that is still connecting emits one.
        conn.ws.onerror = () => { };
        if (this.conn === conn)
            this.conn = null;
    }
    scheduleReconnect(info) {
        const delay = this.reconnectDelay(info);
        this.failures += 1;
        this.setState(this.hadSession ? "resuming" : "connecting");
        this.emit("disconnect", { ...info, reconnectInMs: delay });
        this.reconnectTimer = this.clock.setTimeout(() => {
            this.reconnectTimer = null;
            if (this._state === "stopped")
                return;
            this.open();
        }, delay);
    }
    /**
     * Op 7 and 1012 (the node is going away): at once. Anything else: full
     * jitter, a random delay in [0, min(max, base × 2^failures)).
     */
    reconnectDelay(info) {
        if (info.cause === "reconnect_requested" || info.code === CLOSE.RESTARTING)
            return 0;
        const ceiling = Math.min(this.maxMs, this.baseMs * 2 ** Math.min(this.failures, 30));
        return Math.floor(this.random() * ceiling);
    }
    stop(error, closeCode) {
        if (this.reconnectTimer !== null) {
            this.clock.clearTimeout(this.reconnectTimer);
            this.reconnectTimer = null;
        }
        const conn = this.conn;
        if (conn) {
            this.teardown(conn);
            if (closeCode !== null) {
                try {
                    conn.ws.close(closeCode);
                }
                catch {
                    // Already closed.
                }
            }
        }
        this._stopReason = error;
        this.setState("stopped");
        if (error.kind !== "closed") {
            this.emit("disconnect", { code: error.code ?? CLOSE.NORMAL, reason: error.reason, reconnectInMs: null });
        }
        this.emit("stopped", error);
        for (const q of [...this.iterators])
            q.end(error.kind === "closed" ? null : error);
        this.iterators.clear();
    }
    setState(next) {
        const prev = this._state;
        if (prev === next)
            return;
        this._state = next;
        this.emit("state", next, prev);
    }
    push(event) {
        for (const q of this.iterators)
            q.push(event);
    }
}
/** What a close code means for the client: a reason to stop, or null to reconnect. */
export function stopKind(code) {
    switch (code) {
        case CLOSE.AUTHENTICATION_FAILED:
            return "auth";
        case CLOSE.SESSION_LIMIT:
            return "session_limit";
        case CLOSE.CLIENT_DATA_REJECTED:
        case CLOSE.HEARTBEATS_TOO_FREQUENT:
            return "client_bug";
        default:
            return null;
    }
}
function urlChooser(url, random) {
    if (typeof url === "function")
        return url;
    const urls = typeof url === "string" ? [url] : [...url];
    if (urls.length === 0)
        throw new TypeError("no gateway URL");
    // Start anywhere (spreads clients over nodes), then go round: a reconnect
    // leaves the node that just failed.
    const start = Math.floor(random() * urls.length);
    return ({ attempt }) => urls[(start + attempt) % urls.length];
}
function withResume(url, cursor) {
    const hash = url.indexOf("#");
    const base = hash >= 0 ? url.slice(0, hash) : url;
    return `${base}${base.includes("?") ? "&" : "?"}resume=${encodeURIComponent(cursor)}`;
}
/** One `events()` iterator's queue. */
class EventQueue {
    onReturn;
    items = [];
    waiting = null;
    done = false;
    error = null;
    constructor(onReturn) {
        this.onReturn = onReturn;
    }
    push(ev) {
        if (this.done)
            return;
        if (this.waiting) {
            const w = this.waiting;
            this.waiting = null;
            w.resolve({ value: ev, done: false });
        }
        else {
            this.items.push(ev);
        }
    }
    end(error) {
        if (this.done)
            return;
        this.done = true;
        this.error = error;
        if (this.waiting && this.items.length === 0) {
            const w = this.waiting;
            this.waiting = null;
            if (error)
                w.reject(error);
            else
                w.resolve({ value: undefined, done: true });
        }
    }
    next() {
        const ev = this.items.shift();
        if (ev)
            return Promise.resolve({ value: ev, done: false });
        if (this.done) {
            if (this.error) {
                const e = this.error;
                this.error = null;
                return Promise.reject(e);
            }
            return Promise.resolve({ value: undefined, done: true });
        }
        return new Promise((resolve, reject) => {
            this.waiting = { resolve, reject };
        });
    }
    return() {
        this.done = true;
        this.items = [];
        this.onReturn();
        return Promise.resolve({ value: undefined, done: true });
    }
    [Symbol.asyncIterator]() {
        return this;
    }
}
// ---------------------------------------------------------------------------
// The HTTP API, for the writes and for refetching after `resync`
// ---------------------------------------------------------------------------
export class OtakoApiError extends Error {
    status;
    code;
    constructor(status, code, message) {
        super(`${status} ${code}: ${message}`);
        this.name = "OtakoApiError";
        this.status = status;
        this.code = code;
    }
}
/** A thin `fetch` wrapper over the backend's HTTP API. */
export class OtakoApi {
    baseUrl;
    token;
    fetchFn;
    constructor(baseUrl, token = null, fetchFn = (...a) => globalThis.fetch(...a)) {
        this.baseUrl = baseUrl;
        this.token = token;
        this.fetchFn = fetchFn;
    }
    async createUser(username) {
        return this.call("POST", "/users", { username });
    }
    async createChannel(name) {
        return this.call("POST", "/channels", { name });
    }
    async addMember(channelId, userId) {
        await this.call("PUT", `/channels/${channelId}/members/${userId}`);
    }
    async removeMember(channelId, userId) {
        await this.call("DELETE", `/channels/${channelId}/members/${userId}`);
    }
    async postMessage(channelId, content, nonce) {
        return this.call("POST", `/channels/${channelId}/messages`, nonce ? { content, nonce } : { content });
    }
    /** Newest first, at most `limit` (1-100), older than `before` if given. */
    async listMessages(channelId, opts = {}) {
        const q = new URLSearchParams();
        if (opts.limit)
            q.set("limit", String(opts.limit));
        if (opts.before)
            q.set("before", opts.before);
        const qs = q.toString();
        return this.call("GET", `/channels/${channelId}/messages${qs ? `?${qs}` : ""}`);
    }
    async call(method, path, body) {
        const headers = {};
        if (this.token)
            headers.authorization = this.token;
        if (body !== undefined)
            headers["content-type"] = "application/json";
        const resp = await this.fetchFn(`${this.baseUrl.replace(/\/$/, "")}${path}`, {
            method,
            headers,
            body: body === undefined ? undefined : JSON.stringify(body),
        });
        const text = await resp.text();
        const json = text ? JSON.parse(text) : undefined;
        if (!resp.ok) {
            throw new OtakoApiError(resp.status, json?.code ?? "error", json?.message ?? text);
        }
        return json;
    }
}
/** Sorted by numeric id: ids are decimal strings that may exceed 2^53. */
export function compareIds(a, b) {
    return a.length - b.length || (a < b ? -1 : a > b ? 1 : 0);
}
