/**
 * Decodes gateway frames (`{"v":1,"t":…,"d":{…}}`, docs/GATEWAY_EVENTS.md)
 * and calls typed handlers. Fail-closed: a frame is delivered only when the
 * envelope is exact, `v` is 1, `t` is in the generated dispatch table and
 * `d` validates against that event's schema. Everything else is reported
 * (or, for an unknown `t`, counted) and dropped.
 *
 * The envelope's optional fourth field, `p` (replay positions, sent only to
 * sockets opened with `?positions=1`), must be a map of well-formed
 * position tokens; it is handed to `onPositions`, then to the handlers
 * (their third argument).
 */

import { DISPATCH_TABLE } from "./generated/event-schemas.js";
import { EVENT_SCHEMA_REFS } from "./generated/event-schemas.js";
import type { EventPayloads, EventType } from "./generated/events.js";
import { validate } from "./validate.js";

/** The protocol version this client speaks. */
export const PROTOCOL_VERSION = 1;

/** The largest frame the gateway sends (docs/GATEWAY_EVENTS.md, "Limits"). */
export const MAX_FRAME_BYTES = 65_536;

/** How much larger a frame may be for its `p`, on a socket that asked for positions. */
export const POSITIONS_HEADROOM_BYTES = 4096;

/** A position token: a log's epoch (hex) and an offset, `"<epoch>.<offset>"`. */
export const POSITION_TOKEN_PATTERN = /^[0-9a-f]{1,16}\.[0-9]{1,20}$/;

/**
 * Replay positions: a token per log scope (`g:<guild id>`, `u:<user id>`),
 * as the envelope's `p` carries them and a `resume` quotes them back.
 */
export type LogPositions = { readonly [scope: string]: string };

const EVENT_TYPE_PATTERN = /^[a-z0-9_.]{1,64}$/;

/** Why a frame was dropped. */
export type InvalidReason =
  | "not_text"
  | "too_large"
  | "not_json"
  | "bad_envelope"
  | "unsupported_version"
  | "invalid_payload";

/** A dropped frame, as reported to `onInvalid`. */
export interface InvalidFrame {
  readonly reason: InvalidReason;
  /** What exactly was wrong. */
  readonly detail: string;
  /** The frame's `t`, when it got that far. */
  readonly eventType?: string;
}

/**
 * A handler for one event type. `positions` is the frame's `p`, on a socket
 * that asked for positions and only for a frame that carries one.
 */
export type EventHandler<T extends EventType> = (
  payload: EventPayloads[T],
  eventType: T,
  positions: LogPositions | undefined,
) => void;

/** What {@link Dispatcher.dispatch} did with a frame. */
export type DispatchOutcome = "delivered" | "unknown" | "invalid";

export interface DispatcherOptions {
  /** Frames larger than this many UTF-8 bytes are dropped. Default {@link MAX_FRAME_BYTES}. */
  readonly maxFrameBytes?: number;
  /**
   * Called with the `p` of every frame that is delivered or ignored as
   * unknown, before its handlers run.
   */
  readonly onPositions?: (positions: LogPositions, eventType: string) => void;
  /** Called for every dropped frame, except those with an unknown `t`. */
  readonly onInvalid?: (frame: InvalidFrame) => void;
  /** Called when a handler throws; by default the error is rethrown asynchronously. */
  readonly onHandlerError?: (error: unknown, eventType: EventType) => void;
}

type AnyHandler = (payload: never, eventType: never, positions: never) => void;

/** Whether `t` names an event in the generated dispatch table. */
export function isEventType(t: string): t is EventType {
  return Object.hasOwn(DISPATCH_TABLE, t);
}

export class Dispatcher {
  private readonly handlers = new Map<EventType, Set<AnyHandler>>();
  private readonly options: DispatcherOptions;
  private readonly maxFrameBytes: number;
  private unknown = 0;

  constructor(options: DispatcherOptions = {}) {
    this.options = options;
    this.maxFrameBytes = options.maxFrameBytes ?? MAX_FRAME_BYTES;
  }

  /** How many frames had a well-formed envelope but a `t` not in the table. */
  get unknownEventCount(): number {
    return this.unknown;
  }

  /** Registers a handler; returns a function that removes it. */
  on<T extends EventType>(eventType: T, handler: EventHandler<T>): () => void {
    if (!isEventType(eventType)) throw new TypeError(`unknown event type ${String(eventType)}`);
    let set = this.handlers.get(eventType);
    if (set === undefined) {
      set = new Set();
      this.handlers.set(eventType, set);
    }
    const stored = handler as AnyHandler;
    set.add(stored);
    return () => {
      set.delete(stored);
    };
  }

  /** Decodes one frame and delivers it, or drops it. */
  dispatch(raw: unknown): DispatchOutcome {
    if (typeof raw !== "string") return this.invalid({ reason: "not_text", detail: "a non-text frame" });
    if (utf8Length(raw, this.maxFrameBytes) > this.maxFrameBytes) {
      return this.invalid({ reason: "too_large", detail: `over ${this.maxFrameBytes} bytes` });
    }
    let frame: unknown;
    try {
      frame = JSON.parse(raw);
    } catch {
      return this.invalid({ reason: "not_json", detail: "not JSON" });
    }
    if (typeof frame !== "object" || frame === null || Array.isArray(frame)) {
      return this.invalid({ reason: "bad_envelope", detail: "not an object" });
    }
    const envelope = frame as { readonly [key: string]: unknown };
    const keys = Object.keys(envelope);
    const expected = "p" in envelope ? 4 : 3;
    if (keys.length !== expected || !("v" in envelope) || !("t" in envelope) || !("d" in envelope)) {
      return this.invalid({ reason: "bad_envelope", detail: `keys ${keys.join(",")}, expected v,t,d and maybe p` });
    }
    const { v, t, d, p } = envelope;
    if (typeof v !== "number") return this.invalid({ reason: "bad_envelope", detail: "v is not a number" });
    if (v !== PROTOCOL_VERSION) {
      return this.invalid({ reason: "unsupported_version", detail: `v ${v}` });
    }
    if (typeof t !== "string" || !EVENT_TYPE_PATTERN.test(t)) {
      return this.invalid({ reason: "bad_envelope", detail: "t is not an event type" });
    }
    if (typeof d !== "object" || d === null || Array.isArray(d)) {
      return this.invalid({ reason: "bad_envelope", detail: "d is not an object", eventType: t });
    }
    if (p !== undefined && !isLogPositions(p)) {
      return this.invalid({ reason: "bad_envelope", detail: "p is not a map of position tokens", eventType: t });
    }
    if (!isEventType(t)) {
      this.unknown += 1;
      if (p !== undefined) this.options.onPositions?.(p, t);
      return "unknown";
    }
    const result = validate(DISPATCH_TABLE[t].schema, d, EVENT_SCHEMA_REFS, "ignore");
    if (!result.ok) {
      return this.invalid({ reason: "invalid_payload", detail: `${result.path}: ${result.message}`, eventType: t });
    }
    if (p !== undefined) this.options.onPositions?.(p, t);
    this.deliver(t, d, p);
    return "delivered";
  }

  private deliver(eventType: EventType, payload: object, positions: LogPositions | undefined): void {
    const set = this.handlers.get(eventType);
    if (set === undefined) return;
    // A copy: a handler may remove itself (or others) while we iterate.
    for (const handler of [...set]) {
      try {
        (handler as (payload: object, eventType: EventType, positions: LogPositions | undefined) => void)(
          payload,
          eventType,
          positions,
        );
      } catch (error) {
        this.handlerFailed(error, eventType);
      }
    }
  }

  private handlerFailed(error: unknown, eventType: EventType): void {
    if (this.options.onHandlerError !== undefined) {
      this.options.onHandlerError(error, eventType);
      return;
    }
    queueMicrotask(() => {
      throw error;
    });
  }

  private invalid(frame: InvalidFrame): "invalid" {
    this.options.onInvalid?.(frame);
    return "invalid";
  }
}

/** Whether `value` is a `p`: an object whose values are all position tokens. */
export function isLogPositions(value: unknown): value is LogPositions {
  if (typeof value !== "object" || value === null || Array.isArray(value)) return false;
  return Object.values(value).every((token) => typeof token === "string" && POSITION_TOKEN_PATTERN.test(token));
}

function utf8Length(text: string, limit: number): number {
  // Each UTF-16 unit is at most 3 UTF-8 bytes: skip the count for short frames.
  if (text.length * 3 <= limit) return text.length;
  return new TextEncoder().encode(text).length;
}
