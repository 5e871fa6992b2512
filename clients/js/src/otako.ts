// The Otako gateway client: one module, no runtime dependency, for browsers
// and Node. The protocol it speaks is docs/protocol.md and shared/CONTRACT.md.

// ---------------------------------------------------------------------------
// Wire types
// ---------------------------------------------------------------------------

/** Every id is a decimal string. */
export type Id = string;

export interface Author {
  id: Id;
  username: string;
}

/** The message object of the HTTP API and of message events. */
export interface Message {
  id: Id;
  channel_id: Id;
  author: Author;
  content: string;
  nonce: string | null;
  /** RFC 3339, UTC. */
  timestamp: string;
  edited_timestamp: string | null;
}

export interface MessageRef {
  id: Id;
  channel_id: Id;
}

export interface MemberRef {
  channel_id: Id;
  user_id: Id;
}

/** What every dispatched event carries besides `t` and `d`. */
interface EventBase {
  /** The frame's sequence number within its session. */
  s: number;
  /** The event's position in the cluster's history (absent from gateways without resume). */
  cursor?: string;
}

export interface MessageCreateEvent extends EventBase {
  t: "EVENT_MESSAGE_CREATE";
  d: Message;
}
export interface MessageUpdateEvent extends EventBase {
  t: "EVENT_MESSAGE_UPDATE";
  d: Message;
}
export interface MessageDeleteEvent extends EventBase {
  t: "EVENT_MESSAGE_DELETE";
  d: MessageRef;
}
export interface ChannelMemberAddEvent extends EventBase {
  t: "EVENT_CHANNEL_MEMBER_ADD";
  d: MemberRef;
}
export interface ChannelMemberRemoveEvent extends EventBase {
  t: "EVENT_CHANNEL_MEMBER_REMOVE";
  d: MemberRef;
}

/** The data of READY, with `resumed` and `cursor` always present. */
export interface Ready {
  session_id: string;
  user: Author;
  /** The channels whose events this session receives. */
  channels: Id[];
  /** Where this session starts in the cluster's history; null without resume. */
  cursor: string | null;
  /** Whether the session continues the previous one with nothing missed. */
  resumed: boolean;
  /**
   * True when events may have been missed since the previous session (it
   * existed and this one did not resume it): refetch recent history over HTTP.
   */
  resync: boolean;
}

export interface ReadyEvent extends EventBase {
  t: "READY";
  d: Ready;
}

/** A dispatched event, discriminated on `t`. */
export type GatewayEvent =
  | MessageCreateEvent
  | MessageUpdateEvent
  | MessageDeleteEvent
  | ChannelMemberAddEvent
  | ChannelMemberRemoveEvent;

/** What `events()` yields: READY (one per session) and every event. */
export type OtakoEvent = ReadyEvent | GatewayEvent;

/** Event-emitter names of the dispatched events. */
export const EVENT_NAMES = {
  EVENT_MESSAGE_CREATE: "message_create",
  EVENT_MESSAGE_UPDATE: "message_update",
  EVENT_MESSAGE_DELETE: "message_delete",
  EVENT_CHANNEL_MEMBER_ADD: "channel_member_add",
  EVENT_CHANNEL_MEMBER_REMOVE: "channel_member_remove",
} as const;

type EventByT<T extends GatewayEvent["t"]> = Extract<GatewayEvent, { t: T }>;

// ---------------------------------------------------------------------------
// Protocol constants
// ---------------------------------------------------------------------------

export const OP = {
  DISPATCH: 0,
  HEARTBEAT: 1,
  RECONNECT: 7,
  HELLO: 10,
  HEARTBEAT_ACK: 11,
} as const;

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
} as const;

/** A cursor as the contract defines it; anything else is never sent back. */
const CURSOR_RE = /^[A-Za-z0-9._~-]{1,64}$/;

export function isCursor(v: unknown): v is string {
  return typeof v === "string" && CURSOR_RE.test(v);
}

// ---------------------------------------------------------------------------
// Client state and reports
// ---------------------------------------------------------------------------

/**
 * - `connecting`: opening the first session;
 * - `live`: a session is up (a fresh one);
 * - `resuming`: the session was lost; opening another one;
 * - `resumed`: a session is up that continued the lost one, nothing missed;
 * - `stopped`: no session and no further attempts (see `stopReason`).
 */
export type ConnectionState = "connecting" | "live" | "resuming" | "resumed" | "stopped";

/**
 * Why the client stopped:
 * - `auth`: 4004, the token is bad, expired or revoked: get a new one;
 * - `session_limit`: 4010, the user has too many sessions open;
 * - `client_bug`: 4001 or 4008, the server rejected what this client sent;
 * - `closed`: `close()` was called.
 */
export type StopKind = "auth" | "session_limit" | "client_bug" | "closed";

export class OtakoStopError extends Error {
  readonly kind: StopKind;
  /** The WebSocket close code, or null for `close()`. */
  readonly code: number | null;
  readonly reason: string;
  constructor(kind: StopKind, code: number | null, reason: string) {
    super(stopMessage(kind, code, reason));
    this.name = "OtakoStopError";
    this.kind = kind;
    this.code = code;
    this.reason = reason;
  }
}

function stopMessage(kind: StopKind, code: number | null, reason: string): string {
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

export interface Disconnect {
  /** WebSocket close code; 1006 when the connection broke without one. */
  code: number;
  reason: string;
  /** Why the client itself ended the connection, if it did. */
  cause?: "zombie" | "reconnect_requested" | "timeout";
  /** When the next attempt starts, or null when the client stops. */
  reconnectInMs: number | null;
}

export interface ClientEvents {
  state: (state: ConnectionState, previous: ConnectionState) => void;
  ready: (ready: Ready) => void;
  /** Events may have been missed: refetch recent history over HTTP. */
  resync: (ready: Ready) => void;
  /** The session's channel list changed (READY or a member event about this user). */
  channels: (channels: Id[]) => void;
  /** Every dispatched event, READY excluded. */
  event: (event: GatewayEvent) => void;
  message_create: (d: Message, event: MessageCreateEvent) => void;
  message_update: (d: Message, event: MessageUpdateEvent) => void;
  message_delete: (d: MessageRef, event: MessageDeleteEvent) => void;
  channel_member_add: (d: MemberRef, event: ChannelMemberAddEvent) => void;
  channel_member_remove: (d: MemberRef, event: ChannelMemberRemoveEvent) => void;
  /** A dispatch with a `t` this version does not know. */
  unknown_event: (frame: { t: string; s: number; d: unknown; cursor?: string }) => void;
  disconnect: (info: Disconnect) => void;
  stopped: (error: OtakoStopError) => void;
}

// ---------------------------------------------------------------------------
// Injectable boundaries: WebSocket, timers, randomness
// ---------------------------------------------------------------------------

/** The part of a WebSocket this client uses (the browser API; `ws` has it too). */
export interface WebSocketLike {
  readonly readyState: number;
  onopen: ((ev: unknown) => void) | null;
  onmessage: ((ev: { data: unknown }) => void) | null;
  onclose: ((ev: { code: number; reason: string }) => void) | null;
  onerror: ((ev: unknown) => void) | null;
  send(data: string): void;
  close(code?: number, reason?: string): void;
}

/**
 * A WebSocket constructor: the browser's, or e.g. the `ws` package's in Node
 * (whose third argument takes `{ headers }`).
 */
export type WebSocketConstructor = new (
  url: string,
  protocols?: string | string[],
  options?: { headers?: Record<string, string> },
) => WebSocketLike;

export interface Clock {
  setTimeout(fn: () => void, ms: number): unknown;
  clearTimeout(handle: unknown): void;
}

const realClock: Clock = {
  setTimeout: (fn, ms) => globalThis.setTimeout(fn, ms),
  clearTimeout: (h) => globalThis.clearTimeout(h as ReturnType<typeof globalThis.setTimeout>),
};

/** Which URL to connect to on attempt `attempt` (0 = the first session). */
export type UrlChooser = (ctx: { attempt: number; previous: string | null }) => string;

export interface ClientOptions {
  /** The session token from the HTTP API (`POST /users`). */
  token: string;
  /**
   * The gateway: one URL, several (the client starts at a random one and
   * moves to the next on every reconnect, so it leaves a dead node), or a
   * function that picks one per attempt.
   */
  url: string | string[] | UrlChooser;
  /** The WebSocket constructor; defaults to `globalThis.WebSocket`. */
  WebSocket?: WebSocketConstructor;
  /**
   * How the token travels: `subprotocol` (`["otako.v1", "otako.token.<token>"]`,
   * the only way in browsers) or `header` (`Authorization`, for Node). The
   * default is `subprotocol` with the global WebSocket, `header` with a given one.
   */
  auth?: "subprotocol" | "header";
  /** Reconnect backoff: full jitter over `min(maxMs, baseMs × 2^n)`. */
  backoff?: { baseMs?: number; maxMs?: number };
  /** How long an attempt may take from opening to READY (default 15 s). */
  connectTimeoutMs?: number;
  /** Resume with the last cursor on reconnect (default true). */
  resume?: boolean;
  /** Timers (tests pass fake ones). */
  clock?: Clock;
  /** A number in [0, 1) (tests pass a fixed one). */
  random?: () => number;
  /** Connect at once (default true); otherwise call `connect()`. */
  autoConnect?: boolean;
  /**
   * Gets what a listener threw (the client and the other listeners carry on).
   * By default it is rethrown outside the client, as an uncaught error.
   */
  onListenerError?: (error: unknown) => void;
}

// ---------------------------------------------------------------------------
// A small typed emitter
// ---------------------------------------------------------------------------

type Listener = (...args: any[]) => void;

class Emitter<E extends { [K in keyof E]: Listener }> {
  private listeners = new Map<keyof E, Set<Listener>>();

  constructor(
    private readonly onListenerError: (error: unknown) => void = (err) =>
      queueMicrotask(() => {
        throw err;
      }),
  ) {}

  /** Adds a listener; returns a function that removes it. */
  on<K extends keyof E>(name: K, fn: E[K]): () => void {
    let set = this.listeners.get(name);
    if (!set) {
      set = new Set();
      this.listeners.set(name, set);
    }
    set.add(fn);
    return () => this.off(name, fn);
  }

  once<K extends keyof E>(name: K, fn: E[K]): () => void {
    const off = this.on(name, ((...args: unknown[]) => {
      off();
      fn(...args);
    }) as E[K]);
    return off;
  }

  off<K extends keyof E>(name: K, fn: E[K]): void {
    this.listeners.get(name)?.delete(fn);
  }

  protected emit<K extends keyof E>(name: K, ...args: Parameters<E[K]>): void {
    const set = this.listeners.get(name);
    if (!set) return;
    for (const fn of [...set]) {
      try {
        fn(...args);
      } catch (err) {
        // One listener's failure must not break the client or other listeners.
        this.onListenerError(err);
      }
    }
  }
}

// ---------------------------------------------------------------------------
// The client
// ---------------------------------------------------------------------------

/** One attempt's socket and what it has seen. */
interface Conn {
  ws: WebSocketLike;
  url: string;
  /** Sequence number of the last frame received in this session. */
  lastS: number | null;
  intervalMs: number;
  awaitingAck: boolean;
  heartbeatTimer: unknown;
  connectTimer: unknown;
  ready: boolean;
}

const DEFAULT_BASE_MS = 1000;
const DEFAULT_MAX_MS = 60_000;

export class OtakoClient extends Emitter<ClientEvents> {
  private readonly token: string;
  private readonly chooseUrl: UrlChooser;
  private readonly WS: WebSocketConstructor;
  private readonly authMode: "subprotocol" | "header";
  private readonly baseMs: number;
  private readonly maxMs: number;
  private readonly connectTimeoutMs: number;
  private readonly resumeEnabled: boolean;
  private readonly clock: Clock;
  private readonly random: () => number;

  private conn: Conn | null = null;
  private reconnectTimer: unknown = null;
  /** Failed attempts since the last session that reached READY. */
  private failures = 0;
  private attempt = 0;
  private previousUrl: string | null = null;
  private hadSession = false;
  private _state: ConnectionState = "stopped";
  private _stopReason: OtakoStopError | null = null;
  private _cursor: string | null = null;
  private _channels: Id[] = [];
  private _user: Author | null = null;
  private _sessionId: string | null = null;
  private iterators = new Set<EventQueue>();
  private everStarted = false;

  constructor(options: ClientOptions) {
    super(options.onListenerError);
    this.token = options.token;
    this.random = options.random ?? Math.random;
    this.chooseUrl = urlChooser(options.url, this.random);
    const WS = options.WebSocket ?? (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
    if (!WS) {
      throw new TypeError(
        "no WebSocket: pass one in the options (in Node: `import WebSocket from 'ws'`)",
      );
    }
    this.WS = WS;
    this.authMode =
      options.auth ??
      (options.WebSocket && options.WebSocket !== (globalThis as { WebSocket?: unknown }).WebSocket
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
        if (this._state !== "connecting" || this.conn || this.reconnectTimer !== null) return;
        this.emit("state", "connecting", "stopped");
        this.open();
      });
    }
  }

  /** The connection state; every change is emitted as `state`. */
  get state(): ConnectionState {
    return this._state;
  }

  /** Why the client stopped, once it has (null while it runs). */
  get stopReason(): OtakoStopError | null {
    return this._stopReason;
  }

  /** The last cursor received; the next session resumes from it. */
  get cursor(): string | null {
    return this._cursor;
  }

  /** The channels this session receives events of (READY, then member events). */
  get channels(): Id[] {
    return [...this._channels];
  }

  /** The session's user, from READY. */
  get user(): Author | null {
    return this._user;
  }

  get sessionId(): string | null {
    return this._sessionId;
  }

  /** The URL of the current (or last) attempt. */
  get url(): string | null {
    return this.conn?.url ?? this.previousUrl;
  }

  /** Starts (or restarts, after `close()` or a stop) connecting. */
  connect(): void {
    if (this._state !== "stopped") return;
    this._stopReason = null;
    this.failures = 0;
    this.setState(this.hadSession ? "resuming" : "connecting");
    this.everStarted = true;
    this.open();
  }

  /** Ends the session and stops reconnecting; iterators finish. */
  close(): void {
    if (this._state === "stopped") return;
    this.stop(new OtakoStopError("closed", null, ""), CLOSE.NORMAL);
  }

  /**
   * Every READY and event from now on, until the client stops: an
   * iterator that ends after `close()` and throws `OtakoStopError` after any
   * other stop.
   */
  events(): AsyncIterableIterator<OtakoEvent> {
    const q = new EventQueue(() => this.iterators.delete(q));
    if (this._state === "stopped" && this.everStarted) {
      q.end(this._stopReason?.kind === "closed" ? null : this._stopReason);
    } else {
      this.iterators.add(q);
    }
    return q;
  }

  // --- connection lifecycle -------------------------------------------------

  private open(): void {
    const url = this.chooseUrl({ attempt: this.attempt, previous: this.previousUrl });
    this.attempt += 1;
    this.previousUrl = url;
    const target = this.resumeEnabled && this._cursor ? withResume(url, this._cursor) : url;
    let ws: WebSocketLike;
    try {
      ws =
        this.authMode === "subprotocol"
          ? new this.WS(target, ["otako.v1", `otako.token.${this.token}`])
          : new this.WS(target, undefined, { headers: { Authorization: this.token } });
    } catch (err) {
      // A malformed URL or the like: a failed attempt like any other, so a
      // list of URLs moves on to the next one.
      this.conn = null;
      this.scheduleReconnect({
        code: CLOSE.ABNORMAL,
        reason: String((err as Error)?.message ?? err),
        reconnectInMs: null,
      });
      return;
    }
    const conn: Conn = {
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
      if (this.conn === conn && !conn.ready) this.drop(conn, "timeout");
    }, this.connectTimeoutMs);
    ws.onmessage = (ev) => {
      if (this.conn === conn) this.onFrame(conn, ev.data);
    };
    ws.onclose = (ev) => {
      if (this.conn === conn) this.onClose(conn, ev.code, ev.reason ?? "");
    };
    // A failed connection also fires close, which does the work.
    ws.onerror = () => {};
  }

  private onFrame(conn: Conn, data: unknown): void {
    let frame: { op?: unknown; t?: unknown; s?: unknown; d?: any; cursor?: unknown };
    try {
      frame = JSON.parse(typeof data === "string" ? data : new TextDecoder().decode(data as ArrayBuffer));
    } catch {
      return;
    }
    if (typeof frame.s === "number") conn.lastS = frame.s;
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
        if (frame.t === "READY") this.onReady(conn, frame.d, frame.s as number);
        else this.onDispatch(frame as { t: string; s: number; d: any; cursor?: unknown });
        break;
    }
  }

  private onHello(conn: Conn, d: { heartbeat_interval?: unknown } | undefined): void {
    const interval = Number(d?.heartbeat_interval);
    if (!(interval > 0)) return;
    conn.intervalMs = interval;
    // The first beat at a random point of the first interval, so that
    // clients reconnecting together spread out.
    this.armHeartbeat(conn, interval * this.random());
  }

  private armHeartbeat(conn: Conn, delayMs: number): void {
    conn.heartbeatTimer = this.clock.setTimeout(() => this.beat(conn), delayMs);
  }

  private beat(conn: Conn): void {
    if (this.conn !== conn) return;
    if (conn.awaitingAck) {
      // No ACK since the last beat: the connection is a zombie.
      this.drop(conn, "zombie");
      return;
    }
    conn.awaitingAck = true;
    try {
      conn.ws.send(JSON.stringify({ op: OP.HEARTBEAT, d: conn.lastS }));
    } catch {
      // A socket that cannot send closes soon; the close starts the reconnect.
    }
    this.armHeartbeat(conn, conn.intervalMs);
  }

  private onReady(conn: Conn, d: any, s: number): void {
    conn.ready = true;
    this.clock.clearTimeout(conn.connectTimer);
    const resumed = d?.resumed === true;
    const cursor = isCursor(d?.cursor) ? d.cursor : null;
    const ready: Ready = {
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
    if (ready.resync) this.emit("resync", ready);
    this.emit("channels", this.channels);
  }

  private onDispatch(frame: { t: string; s: number; d: any; cursor?: unknown }): void {
    if (isCursor(frame.cursor)) this._cursor = frame.cursor;
    const name = EVENT_NAMES[frame.t as GatewayEvent["t"]];
    if (!name) {
      this.emit("unknown_event", frame as { t: string; s: number; d: unknown });
      return;
    }
    const event = frame as GatewayEvent;
    if (event.t === "EVENT_CHANNEL_MEMBER_ADD" || event.t === "EVENT_CHANNEL_MEMBER_REMOVE") {
      this.applyMember(event);
    }
    this.emit("event", event);
    (this.emit as (n: string, ...a: unknown[]) => void)(name, event.d, event);
    this.push(event);
  }

  /** Member events about this session's user change its channel list (as a set). */
  private applyMember(event: ChannelMemberAddEvent | ChannelMemberRemoveEvent): void {
    if (!this._user || String(event.d.user_id) !== this._user.id) return;
    const ch = String(event.d.channel_id);
    const has = this._channels.includes(ch);
    if (event.t === "EVENT_CHANNEL_MEMBER_ADD" && !has) {
      this._channels.push(ch);
    } else if (event.t === "EVENT_CHANNEL_MEMBER_REMOVE" && has) {
      this._channels = this._channels.filter((c) => c !== ch);
    } else {
      return;
    }
    this.emit("channels", this.channels);
  }

  private onClose(conn: Conn, code: number, reason: string): void {
    this.teardown(conn);
    const stop = stopKind(code);
    if (stop) {
      this.stop(new OtakoStopError(stop, code, reason), null);
      return;
    }
    this.scheduleReconnect({ code, reason, reconnectInMs: null });
  }

  /** The client ends `conn` itself and moves on without waiting for its close. */
  private drop(conn: Conn, cause: Disconnect["cause"]): void {
    this.teardown(conn);
    try {
      conn.ws.close(CLOSE.NORMAL, cause);
    } catch {
      // Already closed.
    }
    this.scheduleReconnect({
      code: cause === "reconnect_requested" ? CLOSE.RESTARTING : CLOSE.ABNORMAL,
      reason: "",
      cause,
      reconnectInMs: null,
    });
  }

  private teardown(conn: Conn): void {
    this.clock.clearTimeout(conn.heartbeatTimer);
    this.clock.clearTimeout(conn.connectTimer);
    conn.ws.onmessage = null;
    conn.ws.onclose = null;
    conn.ws.onopen = null;
    // Not null: Node's `ws` throws an error event nobody listens to, and
    // closing a socket that is still connecting emits one.
    conn.ws.onerror = () => {};
    if (this.conn === conn) this.conn = null;
  }

  private scheduleReconnect(info: Disconnect): void {
    const delay = this.reconnectDelay(info);
    this.failures += 1;
    this.setState(this.hadSession ? "resuming" : "connecting");
    this.emit("disconnect", { ...info, reconnectInMs: delay });
    this.reconnectTimer = this.clock.setTimeout(() => {
      this.reconnectTimer = null;
      if (this._state === "stopped") return;
      this.open();
    }, delay);
  }

  /**
   * Op 7 and 1012 (the node is going away): at once. Anything else: full
   * jitter, a random delay in [0, min(max, base × 2^failures)).
   */
  private reconnectDelay(info: Pick<Disconnect, "code" | "cause">): number {
    if (info.cause === "reconnect_requested" || info.code === CLOSE.RESTARTING) return 0;
    const ceiling = Math.min(this.maxMs, this.baseMs * 2 ** Math.min(this.failures, 30));
    return Math.floor(this.random() * ceiling);
  }

  private stop(error: OtakoStopError, closeCode: number | null): void {
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
        } catch {
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
    for (const q of [...this.iterators]) q.end(error.kind === "closed" ? null : error);
    this.iterators.clear();
  }

  private setState(next: ConnectionState): void {
    const prev = this._state;
    if (prev === next) return;
    this._state = next;
    this.emit("state", next, prev);
  }

  private push(event: OtakoEvent): void {
    for (const q of this.iterators) q.push(event);
  }
}

/** What a close code means for the client: a reason to stop, or null to reconnect. */
export function stopKind(code: number): StopKind | null {
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

function urlChooser(url: ClientOptions["url"], random: () => number): UrlChooser {
  if (typeof url === "function") return url;
  const urls = typeof url === "string" ? [url] : [...url];
  if (urls.length === 0) throw new TypeError("no gateway URL");
  // Start anywhere (spreads clients over nodes), then go round: a reconnect
  // leaves the node that just failed.
  const start = Math.floor(random() * urls.length);
  return ({ attempt }) => urls[(start + attempt) % urls.length];
}

function withResume(url: string, cursor: string): string {
  const hash = url.indexOf("#");
  const base = hash >= 0 ? url.slice(0, hash) : url;
  return `${base}${base.includes("?") ? "&" : "?"}resume=${encodeURIComponent(cursor)}`;
}

/** One `events()` iterator's queue. */
class EventQueue implements AsyncIterableIterator<OtakoEvent> {
  private items: OtakoEvent[] = [];
  private waiting: { resolve: (r: IteratorResult<OtakoEvent>) => void; reject: (e: unknown) => void } | null = null;
  private done = false;
  private error: OtakoStopError | null = null;
  constructor(private readonly onReturn: () => void) {}

  push(ev: OtakoEvent): void {
    if (this.done) return;
    if (this.waiting) {
      const w = this.waiting;
      this.waiting = null;
      w.resolve({ value: ev, done: false });
    } else {
      this.items.push(ev);
    }
  }

  end(error: OtakoStopError | null): void {
    if (this.done) return;
    this.done = true;
    this.error = error;
    if (this.waiting && this.items.length === 0) {
      const w = this.waiting;
      this.waiting = null;
      if (error) w.reject(error);
      else w.resolve({ value: undefined, done: true });
    }
  }

  next(): Promise<IteratorResult<OtakoEvent>> {
    const ev = this.items.shift();
    if (ev) return Promise.resolve({ value: ev, done: false });
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

  return(): Promise<IteratorResult<OtakoEvent>> {
    this.done = true;
    this.items = [];
    this.onReturn();
    return Promise.resolve({ value: undefined, done: true });
  }

  [Symbol.asyncIterator](): AsyncIterableIterator<OtakoEvent> {
    return this;
  }
}

// ---------------------------------------------------------------------------
// The HTTP API, for the writes and for refetching after `resync`
// ---------------------------------------------------------------------------

export class OtakoApiError extends Error {
  readonly status: number;
  readonly code: string;
  constructor(status: number, code: string, message: string) {
    super(`${status} ${code}: ${message}`);
    this.name = "OtakoApiError";
    this.status = status;
    this.code = code;
  }
}

/** A thin `fetch` wrapper over the backend's HTTP API. */
export class OtakoApi {
  constructor(
    readonly baseUrl: string,
    public token: string | null = null,
    private readonly fetchFn: typeof fetch = (...a) => globalThis.fetch(...a),
  ) {}

  async createUser(username: string): Promise<{ id: Id; username: string; token: string }> {
    return this.call("POST", "/users", { username });
  }

  async createChannel(name: string): Promise<{ id: Id; name: string }> {
    return this.call("POST", "/channels", { name });
  }

  async addMember(channelId: Id, userId: Id): Promise<void> {
    await this.call("PUT", `/channels/${channelId}/members/${userId}`);
  }

  async removeMember(channelId: Id, userId: Id): Promise<void> {
    await this.call("DELETE", `/channels/${channelId}/members/${userId}`);
  }

  async postMessage(channelId: Id, content: string, nonce?: string): Promise<Message> {
    return this.call("POST", `/channels/${channelId}/messages`, nonce ? { content, nonce } : { content });
  }

  /** Newest first, at most `limit` (1-100), older than `before` if given. */
  async listMessages(channelId: Id, opts: { limit?: number; before?: Id } = {}): Promise<Message[]> {
    const q = new URLSearchParams();
    if (opts.limit) q.set("limit", String(opts.limit));
    if (opts.before) q.set("before", opts.before);
    const qs = q.toString();
    return this.call("GET", `/channels/${channelId}/messages${qs ? `?${qs}` : ""}`);
  }

  private async call<T>(method: string, path: string, body?: unknown): Promise<T> {
    const headers: Record<string, string> = {};
    if (this.token) headers.authorization = this.token;
    if (body !== undefined) headers["content-type"] = "application/json";
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
    return json as T;
  }
}

/** Sorted by numeric id: ids are decimal strings that may exceed 2^53. */
export function compareIds(a: Id, b: Id): number {
  return a.length - b.length || (a < b ? -1 : a > b ? 1 : 0);
}
