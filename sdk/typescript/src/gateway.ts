/**
 * The gateway connection: one websocket to `/gateway/ws`, kept alive.
 *
 * Protocol (docs/ARCHITECTURE.md, "Connecting", "Subscribing", "Close
 * codes"; docs/GATEWAY_EVENTS.md):
 * - connect with `?access_token=…`; the server sends `ready`;
 * - subscribe with `{"v":1,"t":"subscribe","d":{guild_id,channel_id}}`;
 *   an accepted subscribe is answered by `subscribed` (a refused one is
 *   silently ignored);
 * - there is no application-level heartbeat: the server sends websocket
 *   pings every 30 s, which browsers answer on their own;
 * - the server closes with the codes in {@link CLOSE_CODES}.
 *
 * This client reconnects with jittered exponential backoff, re-subscribes
 * after every reconnect, refreshes the access token before it expires, and
 * calls `onMissedEvents` when the app should refetch what it shows.
 */

import { Backoff } from "./backoff.js";
import { Dispatcher, PROTOCOL_VERSION, type EventHandler, type InvalidFrame } from "./dispatcher.js";
import { ApiError, GatewayError } from "./errors.js";
import type { EventType } from "./generated/events.js";
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
  /** The close code of the connection that ended (1006: dropped). */
  readonly closeCode: number;
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
}

const OPEN = 1;

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
  private missed: MissedEvents | null = null;
  private awaitingAcks: Set<string> | null = null;

  private readonly subs = new Map<string, Subscription>();
  private readonly sentOnSocket = new Set<string>();
  private sendTimes: number[] = [];

  private reconnectTimer: unknown;
  private stableTimer: unknown;
  private refreshTimer: unknown;
  private ackTimer: unknown;
  private flushTimer: unknown;

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
      onInvalid: (frame) => this.emit(this.invalidListeners, frame),
      onHandlerError: (error) => this.reportError(error, true),
    });
    this.dispatcher.on("ready", () => this.onReady());
    this.dispatcher.on("subscribed", (d) => this.onSubscribed(d.guild_id, d.channel_id));
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

  /** Handles one event type; returns a function that removes the handler. */
  on<T extends EventType>(eventType: T, handler: EventHandler<T>): () => void {
    return this.dispatcher.on(eventType, handler);
  }

  /** Called when events may have been missed (after a reconnect, 4011 included): refetch now. */
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
    if (this.current !== "ready" || this.ws === null) throw new GatewayError("not_connected");
    if (!this.windowHasRoom()) throw new GatewayError("rate_limited", "too many frames in the send window");
    this.sendFrame("message_create", message);
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
    url.searchParams.set("access_token", token);
    return url.toString();
  }

  private onReady(): void {
    this.setState({ state: "ready" });
    this.clearTimer("stableTimer");
    this.stableTimer = this.timers.setTimeout(() => {
      this.backoff.reset();
    }, this.options.stableAfterMs ?? 10_000);
    this.scheduleTokenRefresh();

    this.sentOnSocket.clear();
    const missed = this.missed;
    if (missed !== null) {
      // Refetch once the re-sent subscriptions are live, so nothing falls between.
      this.awaitingAcks = new Set(this.subs.keys());
      this.clearTimer("ackTimer");
      this.ackTimer = this.timers.setTimeout(() => this.emitMissed(), this.options.resubscribeTimeoutMs ?? 5000);
    }
    this.flushSubscriptions();
    if (missed !== null && this.awaitingAcks?.size === 0) this.emitMissed();
  }

  private onSubscribed(guildId: string, channelId: string): void {
    const acks = this.awaitingAcks;
    if (acks === null) return;
    acks.delete(`${guildId}/${channelId}`);
    if (acks.size === 0) this.emitMissed();
  }

  private emitMissed(): void {
    const missed = this.missed;
    this.clearTimer("ackTimer");
    this.awaitingAcks = null;
    if (missed === null) return;
    this.missed = null;
    this.emit(this.missedListeners, missed);
  }

  private onSocketClosed(code: number): void {
    const wasReady = this.current === "ready";
    this.ws = null;
    this.clearConnectionTimers();
    this.awaitingAcks = null;
    if (!this.opened) this.failedHandshakes += 1;
    if (wasReady || this.missed !== null || code === 4011) this.missed = { closeCode: code };

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
    if (this.current === "ready") this.missed = { closeCode: closeCode ?? 1000 };
    this.running = false;
    this.generation += 1;
    this.clearTimer("reconnectTimer");
    this.clearConnectionTimers();
    this.awaitingAcks = null;
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
  }

  private clearTimer(name: "reconnectTimer" | "stableTimer" | "refreshTimer" | "ackTimer" | "flushTimer"): void {
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

function addListener<T>(set: Set<T>, listener: T): () => void {
  set.add(listener);
  return () => {
    set.delete(listener);
  };
}
