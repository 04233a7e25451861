/**
 * The gateway connection: one websocket to `/gateway/ws`, kept alive.
 *
 * Protocol (docs/ARCHITECTURE.md, "Connecting", "Subscribing", "Close
 * codes"; docs/GATEWAY_EVENTS.md):
 * - connect with `?access_token=…`; the server sends `ready`;
 * - subscribe with `{"v":1,"t":"subscribe","d":{guild_id,channel_id}}`;
 *   an accepted subscribe is answered by `subscribed` (a refused one is
 *   silently ignored);
 * - the server sends websocket pings every 30 s, which browsers answer on
 *   their own; a client `ping` (`{"nonce"}`) is answered by `pong` behind
 *   the frames already queued for the socket, which proves the event path
 *   alive, not only the connection (the optional heartbeat);
 * - with `?positions=1`, logged events carry their replay positions in
 *   `p`; after a reconnect, a `resume` quoting the positions held when the
 *   old socket ended, sent right after `ready` and before the subscribes,
 *   replays what was missed: the user's log at once, a guild's log right
 *   after the first `subscribed` there; each log ends with its own
 *   `resumed` (docs/GATEWAY_EVENTS.md, "Replay positions");
 * - the server closes with the codes in {@link CLOSE_CODES}.
 *
 * This client reconnects with jittered exponential backoff, re-subscribes
 * after every reconnect (resuming first, with the `positions` option),
 * refreshes the access token before it expires, and calls `onMissedEvents`
 * when the app should refetch what it shows (with `positions`: only the
 * logs the resume could not replay).
 */

import { Backoff } from "./backoff.js";
import {
  Dispatcher,
  MAX_FRAME_BYTES,
  POSITIONS_HEADROOM_BYTES,
  POSITION_TOKEN_PATTERN,
  PROTOCOL_VERSION,
  type EventHandler,
  type InvalidFrame,
  type LogPositions,
} from "./dispatcher.js";
import { ApiError, GatewayError } from "./errors.js";
import type { EventType, Resumed, Subscribed } from "./generated/events.js";
import type { AccessToken, TokenProvider } from "./session.js";
import { defaultTimers, type Timers } from "./timers.js";

/** What the client does after the server closed the socket with a code. */
export type CloseAction = "reconnect" | "refresh_then_reconnect" | "stop";

/** One row of the close-code table. */
export interface ClosePolicy {
  /** The reason the server sends with the code. */
  readonly reason: string;
  readonly action: CloseAction;
}

/**
 * Every close code in docs/ARCHITECTURE.md ("Close codes") and what this
 * client does about it. Any other code (a network drop is 1006) reconnects.
 *
 * Codes that mean "a frame this client sent was refused" (1002, 1003, 1007,
 * 1009, 4001–4003, 4008, 4014) reconnect too: the client never replays the
 * offending frame, only its subscriptions, so a reconnect is safe.
 */
export const CLOSE_CODES: { readonly [code: number]: ClosePolicy } = {
  1001: { reason: "server_shutdown", action: "reconnect" },
  1002: { reason: "protocol_error", action: "reconnect" },
  1003: { reason: "binary_frame", action: "reconnect" },
  1007: { reason: "invalid_utf8", action: "reconnect" },
  1008: { reason: "slow_consumer", action: "reconnect" },
  1009: { reason: "frame_too_large", action: "reconnect" },
  1011: { reason: "upstream_unavailable", action: "reconnect" },
  4001: { reason: "invalid_envelope", action: "reconnect" },
  4002: { reason: "unknown_event", action: "reconnect" },
  4003: { reason: "invalid_payload", action: "reconnect" },
  4004: { reason: "unsupported_version", action: "stop" },
  4008: { reason: "rate_limited", action: "reconnect" },
  4009: { reason: "idle_timeout", action: "reconnect" },
  4010: { reason: "token_expired", action: "refresh_then_reconnect" },
  4011: { reason: "resync", action: "reconnect" },
  4012: { reason: "access_revoked", action: "stop" },
  4013: { reason: "ip_banned", action: "stop" },
  4014: { reason: "message_rejected", action: "reconnect" },
};

/** Why the client stops, for each close code whose action is `stop`. */
const STOP_REASONS: { readonly [code: number]: StopReason } = {
  4004: "unsupported_version",
  4012: "access_revoked",
  4013: "ip_banned",
};

/** What the client does after a close with `code`. */
export function closeAction(code: number): CloseAction {
  return CLOSE_CODES[code]?.action ?? "reconnect";
}

/** The subset of the browser's `WebSocket` the client uses. */
export interface WebSocketLike {
  readonly readyState: number;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  onopen: ((event: Event) => void) | null;
  onmessage: ((event: MessageEvent) => void) | null;
  onclose: ((event: CloseEvent) => void) | null;
  onerror: ((event: Event) => void) | null;
}

/** A `WebSocket` constructor (the browser's, or a test double). */
export type WebSocketConstructor = new (url: string) => WebSocketLike;

/** Where the connection is. */
export type GatewayState = "idle" | "connecting" | "open" | "ready" | "waiting" | "stopped";

/** Why the client stopped for good (until `connect()` is called again). */
export type StopReason = "closed_by_client" | "access_revoked" | "ip_banned" | "unsupported_version" | "unauthenticated";

/** Sent with every state change. */
export interface StateChange {
  readonly state: GatewayState;
  /** The close code that led here, if a close did. */
  readonly closeCode?: number;
  /** Set when `state` is `"stopped"`. */
  readonly stopReason?: StopReason;
  /** Set when `state` is `"waiting"`: the delay before the next attempt. */
  readonly retryInMs?: number;
}

/** Why the app should refetch. */
export interface MissedEvents {
  /** The close code of the connection that ended (1006: dropped, or no `pong` in time). */
  readonly closeCode: number;
  /**
   * With the `positions` option: the positions held when that connection
   * ended (the first of the outage, if several ended before a reconnect
   * was reported). Absent when none were held.
   */
  readonly positions?: LogPositions;
  /**
   * With the `positions` option, when the client resumed after the
   * reconnect: what to refetch. Absent otherwise: refetch everything.
   */
  readonly resume?: ResumeOutcome;
}

/**
 * How the automatic resume after a reconnect went, per log (`u:<user id>`,
 * `g:<guild id>`). Each log is in one list at most.
 */
export interface ResumeOutcome {
  /** Logs whose gap was replayed: nothing to refetch. */
  readonly replayed: readonly string[];
  /**
   * Logs to refetch (`GET …/messages?after=<newest id>` for a guild's
   * channels; friends and profile for the user's): answered `resync`, or
   * followed (the user's own, a subscribed guild's) with no position held.
   */
  readonly resync: readonly string[];
  /**
   * Guild logs the resume named that got no `resumed` within
   * `resubscribeTimeoutMs`: no subscribe there was accepted (yet). Refetch
   * them like `resync` if the app still shows them.
   */
  readonly unanswered: readonly string[];
}

/** The optional heartbeat: a `ping` every `intervalMs` once ready. */
export interface HeartbeatOptions {
  readonly intervalMs: number;
  /** Reconnect when the `pong` has not come this long after its `ping`. Default `intervalMs`. */
  readonly timeoutMs?: number;
}

/** A guild channel the app subscribed to. */
export interface Subscription {
  readonly guild_id: string;
  readonly channel_id: string;
}

/** `d` of a `message_create` sent over the socket. */
export interface GatewayMessageCreate {
  readonly guild_id: string;
  readonly channel_id: string;
  readonly content: string;
  readonly attachment_ids?: readonly string[];
}

export interface GatewayClientOptions {
  /** The app's origin or base URL (`https://chat.example`); relative resolves against the page. */
  readonly url: string;
  /** The gateway path. Default `/gateway/ws`. */
  readonly path?: string;
  /** Access tokens (a `RestClient`'s `session`). */
  readonly tokens: TokenProvider;
  /** Default `globalThis.WebSocket`. */
  readonly WebSocket?: WebSocketConstructor;
  readonly timers?: Timers;
  /** Numbers in `[0, 1)`, for the jitter. Default `Math.random`. */
  readonly random?: () => number;
  /** The clock, in epoch milliseconds. Default `Date.now`. */
  readonly now?: () => number;
  /** Reconnect backoff. Default 1 s doubling to 30 s. */
  readonly backoff?: { readonly baseMs?: number; readonly maxMs?: number };
  /** A connection ready this long resets the backoff. Default 10 s. */
  readonly stableAfterMs?: number;
  /** Refresh the access token this long before it expires. Default 60 s. */
  readonly refreshBeforeExpiryMs?: number;
  /** Wait at most this long for `subscribed` before calling `onMissedEvents`. Default 5 s. */
  readonly resubscribeTimeoutMs?: number;
  /** At most this many subscriptions. Default 50. */
  readonly maxSubscriptions?: number;
  /** At most this many frames per `sendWindowMs` (the server allows 60 per 10 s). Default 50. */
  readonly maxFramesPerWindow?: number;
  readonly sendWindowMs?: number;
  /**
   * Ask for replay positions (`?positions=1`): the client keeps the newest
   * per log ({@link GatewayClient.positions}) and, after a reconnect,
   * resumes from them before it re-subscribes; `onMissedEvents` then says
   * which logs to refetch ({@link MissedEvents.resume}). Default off:
   * frames are exactly `{v,t,d}`, and the app refetches after every
   * reconnect.
   */
  readonly positions?: boolean;
  /** Ping the gateway on a timer and reconnect when a pong is late. Default off. */
  readonly heartbeat?: HeartbeatOptions;
}

const OPEN = 1;

/** A `resume` names at most this many logs (the gateway refuses more). */
export const MAX_RESUME_SCOPES = 64;
/** A ping's nonce is at most this many UTF-8 bytes. */
export const MAX_NONCE_BYTES = 64;
/** The close code reported when the heartbeat gave up on a socket: as for a dropped connection. */
const HEARTBEAT_TIMEOUT_CODE = 1006;

/**
 * A log whose held position is behind a gap: a socket ended while it was
 * followed, or the app resumed it. Its positions from the current socket
 * (a baseline, live frames) are past the gap, so they wait in `ahead`
 * until a `resumed` closes the gap; only replayed frames move the held
 * position, so a drop before that loses nothing.
 */
interface Gap {
  /** The newest position the current socket delivered past the gap. */
  ahead?: string;
  /** Set while a `resume` on the current socket named the log and its `resumed` has not come. */
  replay?: PendingReplay;
}

interface PendingReplay {
  /** The position the resume quoted: replayed frames come after it, in its epoch. */
  readonly quoted: string;
  /**
   * The newest position of the log this socket delivered before the
   * resume. Live frames after it are newer, so a frame at or below it
   * (and past `quoted`) is a replayed one.
   */
  readonly bound: string | undefined;
  /**
   * A guild log the gateway keeps for the socket's first subscribe there
   * (no subscribe there was sent on this socket yet).
   */
  readonly deferred: boolean;
  /**
   * A deferred log whose guild's first `subscribed` came: its frames until
   * `resumed` are the replay (written ahead of the socket's queue).
   */
  replaying: boolean;
}

/** An outage not yet reported: from the first ready connection that ended to the report. */
interface Outage {
  closeCode: number;
  positions: LogPositions | undefined;
  /** Logs the automatic resumes of this outage named. */
  readonly named: Set<string>;
  readonly replayed: Set<string>;
  /** Answered `resync`, or followed without a position: sticky until the report. */
  readonly resync: Set<string>;
}

export class GatewayClient {
  private readonly options: GatewayClientOptions;
  private readonly dispatcher: Dispatcher;
  private readonly WebSocketImpl: WebSocketConstructor;
  private readonly timers: Timers;
  private readonly now: () => number;
  private readonly backoff: Backoff;
  private readonly refreshBackoff: Backoff;

  private current: GatewayState = "idle";
  private running = false;
  /** Bumped on every connect attempt and on stop; stale callbacks check it. */
  private generation = 0;
  private ws: WebSocketLike | null = null;
  private socketToken: string | undefined;
  private tokenExpiresAtMs = 0;
  private forceRefresh = false;
  private failedHandshakes = 0;
  private opened = false;
  /** Set when a ready connection ended: the next ready triggers `onMissedEvents`. */
  private missed: Outage | null = null;
  private awaitingAcks: Set<string> | null = null;

  private readonly subs = new Map<string, Subscription>();
  private readonly sentOnSocket = new Set<string>();
  private sendTimes: number[] = [];
  /** The user the positions belong to (`ready`'s). */
  private userId: string | null = null;
  /** Per followed log, the newest position up to which everything was delivered. */
  private readonly held = new Map<string, string>();
  /** Logs whose held position is behind a gap ({@link Gap}). */
  private readonly gaps = new Map<string, Gap>();
  /** Guilds with an accepted `subscribed` on the current socket. */
  private readonly joined = new Set<string>();
  /** The newest position per log the current socket delivered. */
  private readonly seen = new Map<string, string>();
  private heartbeats = 0;
  /** The nonce of the heartbeat ping whose pong is due. */
  private awaitingPong: string | null = null;

  private reconnectTimer: unknown;
  private stableTimer: unknown;
  private refreshTimer: unknown;
  private ackTimer: unknown;
  private flushTimer: unknown;
  private heartbeatTimer: unknown;

  private readonly missedListeners = new Set<(info: MissedEvents) => void>();
  private readonly stateListeners = new Set<(change: StateChange) => void>();
  private readonly invalidListeners = new Set<(frame: InvalidFrame) => void>();
  private readonly errorListeners = new Set<(error: unknown) => void>();

  constructor(options: GatewayClientOptions) {
    this.options = options;
    const ctor = options.WebSocket ?? (globalThis.WebSocket as WebSocketConstructor | undefined);
    if (ctor === undefined) throw new TypeError("no WebSocket implementation: pass options.WebSocket");
    this.WebSocketImpl = ctor;
    this.timers = options.timers ?? defaultTimers;
    this.now = options.now ?? Date.now;
    const random = options.random ?? Math.random;
    this.backoff = new Backoff({ ...options.backoff, random });
    this.refreshBackoff = new Backoff({ baseMs: 2000, maxMs: 30_000, random });
    this.dispatcher = new Dispatcher({
      maxFrameBytes: options.positions === true ? MAX_FRAME_BYTES + POSITIONS_HEADROOM_BYTES : MAX_FRAME_BYTES,
      onPositions: (positions, eventType) => this.onFramePositions(positions, eventType),
      onInvalid: (frame) => this.emit(this.invalidListeners, frame),
      onHandlerError: (error) => this.reportError(error, true),
    });
    // Registered first, so they run before the app's handlers of these events.
    this.dispatcher.on("ready", (d, _t, p) => this.onReady(d.user_id, p));
    this.dispatcher.on("subscribed", (d, _t, p) => this.onSubscribed(d, p));
    this.dispatcher.on("pong", (d) => this.onPong(d.nonce));
    this.dispatcher.on("resumed", (d, _t, p) => this.onResumed(d, p));
  }

  /** The connection's state. */
  get state(): GatewayState {
    return this.current;
  }

  /** Frames dropped because their `t` is not in the manifest. */
  get unknownEventCount(): number {
    return this.dispatcher.unknownEventCount;
  }

  /** What the app subscribed to, re-sent after every reconnect. */
  get subscriptions(): readonly Subscription[] {
    return [...this.subs.values()];
  }

  /**
   * The replay position held per log (with the `positions` option): the
   * user's own log and those of guilds subscribed on this socket, each the
   * newest up to which every event was delivered. A log behind a gap (after
   * a reconnect, or named by a `resume`) stays where the gap starts, or
   * where its replay has got to, until its `resumed`: a drop then loses
   * nothing.
   */
  positions(): LogPositions {
    return Object.fromEntries(this.held);
  }

  /** Handles one event type; returns a function that removes the handler. */
  on<T extends EventType>(eventType: T, handler: EventHandler<T>): () => void {
    return this.dispatcher.on(eventType, handler);
  }

  /**
   * Called once per reconnect that may have lost events (4011 included),
   * when the re-sent subscriptions are acknowledged (or after
   * `resubscribeTimeoutMs`): refetch now. With the `positions` option and a
   * resume, only after the logs it named are answered, and only the logs
   * in {@link MissedEvents.resume} need a refetch.
   */
  onMissedEvents(listener: (info: MissedEvents) => void): () => void {
    return addListener(this.missedListeners, listener);
  }

  onStateChange(listener: (change: StateChange) => void): () => void {
    return addListener(this.stateListeners, listener);
  }

  /** Frames dropped as malformed or failing their schema. */
  onInvalid(listener: (frame: InvalidFrame) => void): () => void {
    return addListener(this.invalidListeners, listener);
  }

  /** Errors thrown by handlers and listeners. */
  onError(listener: (error: unknown) => void): () => void {
    return addListener(this.errorListeners, listener);
  }

  /** Starts connecting (again, after a stop). */
  connect(): void {
    if (this.running) return;
    this.socketUrl("probe"); // Throws now, not in a loop, if the URL is unusable.
    this.running = true;
    this.backoff.reset();
    this.failedHandshakes = 0;
    void this.openSocket();
  }

  /** Closes the socket and stops reconnecting. */
  close(): void {
    this.stop("closed_by_client");
  }

  /**
   * Subscribes to a channel's events now (when ready) and after every
   * reconnect. The gateway ignores a subscribe the user may not make.
   */
  subscribe(guildId: string, channelId: string): void {
    const key = `${guildId}/${channelId}`;
    if (!this.subs.has(key)) {
      if (this.subs.size >= (this.options.maxSubscriptions ?? 50)) throw new GatewayError("too_many_subscriptions");
      this.subs.set(key, { guild_id: guildId, channel_id: channelId });
    }
    if (this.current === "ready") this.flushSubscriptions();
  }

  /**
   * Forgets a subscription: it is not re-sent after a reconnect. (The
   * protocol has no unsubscribe; the current socket keeps receiving.)
   */
  unsubscribe(guildId: string, channelId: string): void {
    this.subs.delete(`${guildId}/${channelId}`);
  }

  /**
   * Posts a message over the socket (no acknowledgement: it comes back as
   * `message_create`; a refusal closes the socket with 4014). Throws a
   * {@link GatewayError} unless ready; nothing is queued while disconnected.
   */
  sendMessage(message: GatewayMessageCreate): void {
    this.sendChecked("message_create", message);
  }

  /**
   * Asks the gateway to replay each log in `positions` after its position.
   * With the `positions` option the client does this itself after every
   * reconnect; this is for apps that manage positions themselves. The
   * user's log and those of guilds this socket is subscribed in are
   * replayed at once; another guild's right after the socket's first
   * `subscribed` there. Each log ends with its own `resumed` (`resync: true`:
   * refetch it). With the `positions` option, a log whose replay is still
   * pending on this socket is left out, and a named log is held at the
   * replay's progress until its `resumed`. Throws like `sendMessage`.
   */
  resume(positions: LogPositions): void {
    const entries = Object.entries(positions);
    if (entries.length > MAX_RESUME_SCOPES) throw new TypeError(`a resume names at most ${MAX_RESUME_SCOPES} logs`);
    for (const [scope, token] of entries) {
      if (!POSITION_TOKEN_PATTERN.test(token)) throw new TypeError(`${scope}: ${token} is not a position token`);
    }
    if (this.current !== "ready" || this.ws === null) throw new GatewayError("not_connected");
    if (!this.windowHasRoom()) throw new GatewayError("rate_limited", "too many frames in the send window");
    this.sendResume(entries);
  }

  /**
   * Sends a `ping`; the gateway answers `pong` with the same nonce (listen
   * with `on("pong", …)`) behind whatever it queued for this socket. Throws
   * like `sendMessage`.
   */
  ping(nonce = ""): void {
    if (new TextEncoder().encode(nonce).length > MAX_NONCE_BYTES) {
      throw new TypeError(`a nonce is at most ${MAX_NONCE_BYTES} bytes`);
    }
    this.sendChecked("ping", { nonce });
  }

  // -------------------------------------------------------------------------

  private async openSocket(): Promise<void> {
    const generation = ++this.generation;
    this.setState({ state: "connecting" });
    let token: AccessToken;
    try {
      const minValidityMs = (this.options.refreshBeforeExpiryMs ?? 60_000) / 2;
      token = await this.options.tokens.accessToken(
        this.forceRefresh && this.socketToken !== undefined ? { rejected: this.socketToken } : { minValidityMs },
      );
    } catch (error) {
      if (generation !== this.generation) return;
      if (error instanceof ApiError && error.status === 401) {
        this.stop("unauthenticated");
      } else {
        this.reportError(error);
        this.scheduleReconnect(this.missed?.closeCode);
      }
      return;
    }
    if (generation !== this.generation) return;
    this.forceRefresh = false;
    this.socketToken = token.token;
    this.tokenExpiresAtMs = token.expiresAtMs;
    this.opened = false;
    this.sendTimes = [];
    this.sentOnSocket.clear();

    let ws: WebSocketLike;
    try {
      ws = new this.WebSocketImpl(this.socketUrl(token.token));
    } catch (error) {
      this.reportError(error);
      this.scheduleReconnect(undefined);
      return;
    }
    this.ws = ws;
    ws.onopen = () => {
      if (ws !== this.ws) return;
      this.opened = true;
      this.failedHandshakes = 0;
      this.setState({ state: "open" });
    };
    ws.onmessage = (event) => {
      if (ws !== this.ws) return;
      this.dispatcher.dispatch(event.data);
    };
    ws.onclose = (event) => {
      if (ws !== this.ws) return;
      this.onSocketClosed(event.code);
    };
    ws.onerror = () => {
      // A close event follows; nothing to do here.
    };
  }

  private socketUrl(token: string): string {
    const page = (globalThis as { location?: { href?: string } }).location?.href;
    const base = page === undefined ? new URL(this.options.url) : new URL(this.options.url, page);
    const url = new URL(this.options.path ?? "/gateway/ws", base);
    url.protocol = url.protocol === "https:" || url.protocol === "wss:" ? "wss:" : "ws:";
    if (this.options.positions === true) url.searchParams.set("positions", "1");
    url.searchParams.set("access_token", token);
    return url.toString();
  }

  private onReady(userId: string, positions: LogPositions | undefined): void {
    this.identify(userId);
    if (positions !== undefined) this.takePositions(positions);
    this.setState({ state: "ready" });
    this.clearTimer("stableTimer");
    this.stableTimer = this.timers.setTimeout(() => {
      this.backoff.reset();
    }, this.options.stableAfterMs ?? 10_000);
    this.scheduleTokenRefresh();
    this.awaitingPong = null;
    this.scheduleHeartbeat();

    this.sentOnSocket.clear();
    const missed = this.missed;
    if (missed !== null) {
      // Report once the re-sent subscriptions are live (and, with
      // positions, the logs the resume named are answered), so nothing
      // falls between; at most resubscribeTimeoutMs from now.
      this.awaitingAcks = new Set(this.subs.keys());
      this.clearTimer("ackTimer");
      this.ackTimer = this.timers.setTimeout(() => this.emitMissed(), this.options.resubscribeTimeoutMs ?? 5000);
      // Resume first: the gateway then replays a guild's log right after
      // the first `subscribed` there, before any live frame of the guild.
      this.resumeAfterReconnect(missed);
    }
    this.flushSubscriptions();
    this.emitMissedIfRecovered();
  }

  private onSubscribed(subscribed: Subscribed, positions: LogPositions | undefined): void {
    const guild = subscribed.guild_id;
    const first = !this.joined.has(guild);
    this.joined.add(guild);
    if (positions !== undefined) this.takePositions(positions);
    // A deferred replay of the guild's log comes next, ahead of its live frames.
    const replay = first ? this.gaps.get(`g:${guild}`)?.replay : undefined;
    if (replay?.deferred === true) replay.replaying = true;
    this.awaitingAcks?.delete(`${guild}/${subscribed.channel_id}`);
    this.emitMissedIfRecovered();
  }

  /** One log's replay ended: its gap is closed (replayed) or left to the app (resync). */
  private onResumed(resumed: Resumed, positions: LogPositions | undefined): void {
    const scope = resumed.scope;
    const gap = this.gaps.get(scope);
    if (gap?.replay === undefined) return; // Not a replay this client waits for.
    this.gaps.delete(scope);
    // Replayed: everything up to `p` came, and everything after it (up to
    // `ahead`) came live. Resync: only what came live counts, once the app
    // has refetched the rest.
    let position = resumed.resync ? undefined : this.held.get(scope);
    const through = resumed.resync ? undefined : positions?.[scope];
    if (through !== undefined) position = newer(position, through);
    if (gap.ahead !== undefined) position = newer(position, gap.ahead);
    if (position === undefined) this.held.delete(scope);
    else this.held.set(scope, position);
    const outage = this.missed;
    if (outage !== null) (resumed.resync ? outage.resync : outage.replayed).add(scope);
    this.emitMissedIfRecovered();
  }

  /**
   * After a reconnect, with the `positions` option: sends `resume` with
   * the held positions of the logs still followed (the user's, and those of
   * subscribed guilds), before any subscribe. A followed log with no
   * position from before the gap is to be refetched.
   */
  private resumeAfterReconnect(outage: Outage): void {
    if (this.options.positions !== true || this.userId === null) return;
    const guildLogs = [...this.subs.values()].map((sub) => `g:${sub.guild_id}`);
    const followed = [...new Set([`u:${this.userId}`, ...guildLogs])];
    // Logs no longer followed are forgotten: nothing would replay them.
    for (const scope of [...this.held.keys()]) {
      if (!followed.includes(scope)) {
        this.held.delete(scope);
        this.gaps.delete(scope);
      }
    }
    const quoted: [string, string][] = [];
    for (const scope of followed) {
      const gap = this.gaps.get(scope);
      const token = gap === undefined ? undefined : this.held.get(scope);
      if (token !== undefined && quoted.length < MAX_RESUME_SCOPES) {
        quoted.push([scope, token]);
        continue;
      }
      // No position from before the gap (what is held, if anything, came
      // on this socket), or past what one resume may name: refetch it.
      if (gap !== undefined) {
        this.gaps.delete(scope);
        if (gap.ahead === undefined) this.held.delete(scope);
        else this.held.set(scope, gap.ahead);
      }
      outage.resync.add(scope);
    }
    if (quoted.length === 0) return;
    for (const [scope] of quoted) outage.named.add(scope);
    this.sendResume(quoted);
  }

  /** Sends `resume`; with the `positions` option, holds each log it names behind its gap. */
  private sendResume(entries: readonly (readonly [string, string])[]): void {
    const tracked = this.options.positions === true;
    const named = tracked ? entries.filter(([scope]) => this.gaps.get(scope)?.replay === undefined) : entries;
    if (named.length === 0) return;
    this.sendFrame("resume", { positions: Object.fromEntries(named) });
    if (!tracked) return;
    for (const [scope, token] of named) {
      let gap = this.gaps.get(scope);
      if (gap === undefined) {
        // What is held now was delivered: it counts again once the gap is closed.
        const held = this.held.get(scope);
        gap = held === undefined ? {} : { ahead: held };
        this.gaps.set(scope, gap);
      }
      gap.replay = { quoted: token, bound: this.seen.get(scope), deferred: this.isDeferred(scope), replaying: false };
      this.held.set(scope, token);
    }
  }

  /** Whether the gateway keeps this log's replay for the socket's first subscribe in its guild. */
  private isDeferred(scope: string): boolean {
    if (!scope.startsWith("g:")) return false;
    const guild = scope.slice(2);
    if (this.joined.has(guild)) return false;
    // A subscribe sent but not answered yet: the gateway may be in the
    // guild already. Not deferred, then, and its frames are not taken for
    // replayed ones by their arrival (only by their offset).
    for (const key of this.sentOnSocket) if (key.startsWith(`${guild}/`)) return false;
    return true;
  }

  private emitMissedIfRecovered(): void {
    const outage = this.missed;
    const acks = this.awaitingAcks;
    if (outage === null || acks === null || acks.size > 0) return;
    if (this.pendingReplays(outage).length > 0) return;
    this.emitMissed();
  }

  /** The logs an automatic resume of this outage named whose `resumed` has not come. */
  private pendingReplays(outage: Outage): string[] {
    return [...outage.named].filter((scope) => this.gaps.get(scope)?.replay !== undefined);
  }

  private emitMissed(): void {
    const outage = this.missed;
    this.clearTimer("ackTimer");
    this.awaitingAcks = null;
    if (outage === null) return;
    this.missed = null;
    this.emit(this.missedListeners, this.report(outage));
  }

  private report(outage: Outage): MissedEvents {
    const { closeCode, positions } = outage;
    const missed: MissedEvents = positions === undefined ? { closeCode } : { closeCode, positions };
    if (outage.named.size === 0) return missed;
    const resync = [...outage.resync];
    const unanswered = this.pendingReplays(outage).filter((scope) => !outage.resync.has(scope));
    const replayed = [...outage.replayed].filter((scope) => !outage.resync.has(scope) && !unanswered.includes(scope));
    return { ...missed, resume: { replayed, resync, unanswered } };
  }

  private onSocketClosed(code: number): void {
    const wasReady = this.current === "ready";
    this.ws = null;
    this.clearConnectionTimers();
    this.awaitingAcks = null;
    if (!this.opened) this.failedHandshakes += 1;
    if (wasReady || this.missed !== null || code === 4011) this.missed = this.missedAfter(code);
    this.socketEnded();

    const action = closeAction(code);
    if (action === "stop") {
      this.stop(STOP_REASONS[code] ?? "unsupported_version", code);
      return;
    }
    // The browser hides why an upgrade failed (a 401 looks like a drop), so
    // after two failed handshakes in a row, try a fresh token (once: each
    // refresh rotates the session, and a long outage is no reason to).
    if (action === "refresh_then_reconnect" || this.failedHandshakes === 2) this.forceRefresh = true;
    this.scheduleReconnect(code);
  }

  /**
   * The outage a connection that ended with `code` is part of: the one not
   * reported yet, or a new one with the positions held now.
   */
  private missedAfter(code: number): Outage {
    const outage = this.missed;
    if (outage !== null) {
      outage.closeCode = code;
      return outage;
    }
    const positions = this.held.size === 0 ? undefined : this.positions();
    return { closeCode: code, positions, named: new Set(), replayed: new Set(), resync: new Set() };
  }

  /**
   * The socket ended: every held log is behind a gap now. What the socket
   * delivered past a gap, and the replays it was waiting for, end with it.
   */
  private socketEnded(): void {
    this.joined.clear();
    this.seen.clear();
    this.gaps.clear();
    for (const scope of this.held.keys()) this.gaps.set(scope, {});
  }

  /** Positions belong to one user: another user's ready forgets them. */
  private identify(userId: string): void {
    if (this.userId !== null && this.userId !== userId) {
      this.held.clear();
      this.gaps.clear();
      const outage = this.missed;
      if (outage !== null) {
        outage.positions = undefined;
        outage.named.clear();
        outage.replayed.clear();
        outage.resync.clear();
      }
    }
    this.userId = userId;
  }

  /** The `p` of a frame; `ready`, `subscribed` and `resumed` take theirs in their handlers. */
  private onFramePositions(positions: LogPositions, eventType: string): void {
    if (eventType === "ready" || eventType === "subscribed" || eventType === "resumed") return;
    this.takePositions(positions);
  }

  private takePositions(positions: LogPositions): void {
    if (this.options.positions !== true) return;
    for (const [scope, token] of Object.entries(positions)) this.take(scope, token);
  }

  /**
   * A position the current socket delivered: it moves the log's held
   * position, unless the log is behind a gap and the frame is not a
   * replayed one (then it is kept until the gap is closed).
   */
  private take(scope: string, token: string): void {
    if (!this.follows(scope)) return;
    this.seen.set(scope, newer(this.seen.get(scope), token));
    const gap = this.gaps.get(scope);
    if (gap === undefined || (gap.replay !== undefined && isReplayed(gap.replay, token))) {
      this.held.set(scope, newer(this.held.get(scope), token));
    } else {
      gap.ahead = newer(gap.ahead, token);
    }
  }

  /**
   * Whether this socket gets every event of the log it may see: the user's
   * own, or a guild it is subscribed in. Other logs also ride on frames (a
   * `profile_update` carries the logs of every guild the user is in) but
   * say nothing about what this client has.
   */
  private follows(scope: string): boolean {
    if (scope.startsWith("u:")) return this.userId !== null && scope === `u:${this.userId}`;
    return scope.startsWith("g:") && this.joined.has(scope.slice(2));
  }

  private scheduleHeartbeat(): void {
    const heartbeat = this.options.heartbeat;
    if (heartbeat === undefined) return;
    this.clearTimer("heartbeatTimer");
    const generation = this.generation;
    this.heartbeatTimer = this.timers.setTimeout(() => {
      if (generation === this.generation) this.beat(heartbeat, generation);
    }, heartbeat.intervalMs);
  }

  /** Sends a heartbeat ping (or waits another interval for room in the send window). */
  private beat(heartbeat: HeartbeatOptions, generation: number): void {
    if (this.current !== "ready" || this.ws?.readyState !== OPEN || !this.windowHasRoom()) {
      this.scheduleHeartbeat();
      return;
    }
    const nonce = `hb-${++this.heartbeats}`;
    this.awaitingPong = nonce;
    this.sendFrame("ping", { nonce });
    this.heartbeatTimer = this.timers.setTimeout(() => {
      if (generation === this.generation && this.awaitingPong === nonce) this.abandonSocket();
    }, heartbeat.timeoutMs ?? heartbeat.intervalMs);
  }

  private onPong(nonce: string): void {
    if (this.awaitingPong === null || nonce !== this.awaitingPong) return;
    this.awaitingPong = null;
    this.scheduleHeartbeat();
  }

  /**
   * The pong is late: the socket (or its event path) is stuck. Closing may
   * itself hang on a dead network, so the client lets go of the socket and
   * reconnects at once, as for a drop.
   */
  private abandonSocket(): void {
    const ws = this.ws;
    if (ws === null) return;
    this.awaitingPong = null;
    try {
      ws.close(1000, "heartbeat timeout");
    } catch {
      // Already closing.
    }
    this.onSocketClosed(HEARTBEAT_TIMEOUT_CODE);
  }

  private scheduleReconnect(closeCode: number | undefined): void {
    if (!this.running) return;
    const delay = this.backoff.next();
    this.clearTimer("reconnectTimer");
    const generation = ++this.generation;
    this.setState({ state: "waiting", retryInMs: delay, ...(closeCode === undefined ? {} : { closeCode }) });
    this.reconnectTimer = this.timers.setTimeout(() => {
      if (generation !== this.generation || !this.running) return;
      void this.openSocket();
    }, delay);
  }

  private scheduleTokenRefresh(): void {
    this.clearTimer("refreshTimer");
    const lead = this.options.refreshBeforeExpiryMs ?? 60_000;
    const delay = Math.max(0, this.tokenExpiresAtMs - lead - this.now());
    const generation = this.generation;
    this.refreshTimer = this.timers.setTimeout(() => {
      if (generation !== this.generation) return;
      void this.refreshToken(generation);
    }, delay);
  }

  /**
   * Refreshes the token ahead of expiry. The open socket keeps the token it
   * was opened with and is closed with 4010 when that expires; the fresh
   * token is then at hand for the immediate reconnect.
   */
  private async refreshToken(generation: number): Promise<void> {
    try {
      await this.options.tokens.accessToken(
        this.socketToken === undefined ? {} : { rejected: this.socketToken },
      );
      if (generation !== this.generation) return;
      this.refreshBackoff.reset();
    } catch (error) {
      if (generation !== this.generation) return;
      if (error instanceof ApiError && error.status === 401) {
        this.stop("unauthenticated");
        return;
      }
      this.reportError(error);
      const delay = this.refreshBackoff.next();
      this.refreshTimer = this.timers.setTimeout(() => {
        if (generation === this.generation) void this.refreshToken(generation);
      }, delay);
    }
  }

  private flushSubscriptions(): void {
    this.clearTimer("flushTimer");
    for (const [key, sub] of this.subs) {
      if (this.sentOnSocket.has(key)) continue;
      if (!this.windowHasRoom()) {
        const oldest = this.sendTimes[0] ?? this.now();
        const wait = Math.max(0, oldest + (this.options.sendWindowMs ?? 10_000) - this.now());
        this.flushTimer = this.timers.setTimeout(() => {
          if (this.current === "ready") this.flushSubscriptions();
        }, wait);
        return;
      }
      this.sentOnSocket.add(key);
      this.sendFrame("subscribe", sub);
    }
  }

  /** Sends a frame the app asked for: only when ready, and within the send window. */
  private sendChecked(t: string, d: object): void {
    if (this.current !== "ready" || this.ws === null) throw new GatewayError("not_connected");
    if (!this.windowHasRoom()) throw new GatewayError("rate_limited", "too many frames in the send window");
    this.sendFrame(t, d);
  }

  private windowHasRoom(): boolean {
    const now = this.now();
    const windowMs = this.options.sendWindowMs ?? 10_000;
    this.sendTimes = this.sendTimes.filter((at) => now - at < windowMs);
    return this.sendTimes.length < (this.options.maxFramesPerWindow ?? 50);
  }

  private sendFrame(t: string, d: object): void {
    const ws = this.ws;
    if (ws === null || ws.readyState !== OPEN) throw new GatewayError("not_connected");
    this.sendTimes.push(this.now());
    ws.send(JSON.stringify({ v: PROTOCOL_VERSION, t, d }));
  }

  private stop(reason: StopReason, closeCode?: number): void {
    // Events sent while stopped are missed too: the next ready reports it.
    if (this.current === "ready") this.missed = this.missedAfter(closeCode ?? 1000);
    this.running = false;
    this.generation += 1;
    this.clearTimer("reconnectTimer");
    this.clearConnectionTimers();
    this.awaitingAcks = null;
    this.socketEnded();
    const ws = this.ws;
    this.ws = null;
    if (ws !== null) {
      try {
        ws.close(1000, "client closing");
      } catch {
        // Already closing.
      }
    }
    this.setState({ state: "stopped", stopReason: reason, ...(closeCode === undefined ? {} : { closeCode }) });
  }

  private clearConnectionTimers(): void {
    this.clearTimer("stableTimer");
    this.clearTimer("refreshTimer");
    this.clearTimer("ackTimer");
    this.clearTimer("flushTimer");
    this.clearTimer("heartbeatTimer");
    this.awaitingPong = null;
  }

  private clearTimer(
    name: "reconnectTimer" | "stableTimer" | "refreshTimer" | "ackTimer" | "flushTimer" | "heartbeatTimer",
  ): void {
    if (this[name] !== undefined) {
      this.timers.clearTimeout(this[name]);
      this[name] = undefined;
    }
  }

  private setState(change: StateChange): void {
    this.current = change.state;
    this.emit(this.stateListeners, change);
  }

  /** Calls app listeners; one that throws cannot break the connection. */
  private emit<T>(listeners: Set<(value: T) => void>, value: T): void {
    for (const listener of [...listeners]) {
      try {
        listener(value);
      } catch (error) {
        this.reportError(error, true);
      }
    }
  }

  /**
   * Passes an error to the `onError` listeners. A bug in app code (a
   * throwing handler) with nobody listening is rethrown asynchronously so it
   * is not lost; a transient failure (a token fetch) is not.
   */
  private reportError(error: unknown, rethrowIfUnheard = false): void {
    if (this.errorListeners.size === 0) {
      if (rethrowIfUnheard) {
        queueMicrotask(() => {
          throw error;
        });
      }
      return;
    }
    for (const listener of [...this.errorListeners]) listener(error);
  }
}

/**
 * The newer of two tokens of one log: within an epoch the higher offset
 * (live frames and baselines can be ahead of a replay), else `token` (a new
 * epoch replaces a lost log).
 */
function newer(current: string | undefined, token: string): string {
  if (current === undefined) return token;
  const [epoch, offset] = splitToken(token);
  const [heldEpoch, heldOffset] = splitToken(current);
  return heldEpoch === epoch && heldOffset >= offset ? current : token;
}

/**
 * Whether a frame of a log whose replay is pending is a replayed one: past
 * the quoted position, in its epoch, and either inside a deferred replay
 * (after the guild's first `subscribed`) or not past what the socket had
 * delivered before the resume (live frames after the resume are newer).
 */
function isReplayed(replay: PendingReplay, token: string): boolean {
  const [epoch, offset] = splitToken(token);
  const [quotedEpoch, quotedOffset] = splitToken(replay.quoted);
  if (epoch !== quotedEpoch || offset <= quotedOffset) return false;
  if (replay.replaying) return true;
  if (replay.deferred || replay.bound === undefined) return false;
  const [boundEpoch, boundOffset] = splitToken(replay.bound);
  return boundEpoch === epoch && offset <= boundOffset;
}

/** A position token's epoch and offset (tokens are checked when they arrive). */
function splitToken(token: string): [string, bigint] {
  const dot = token.indexOf(".");
  return [token.slice(0, dot), BigInt(token.slice(dot + 1))];
}

function addListener<T>(set: Set<T>, listener: T): () => void {
  set.add(listener);
  return () => {
    set.delete(listener);
  };
}
