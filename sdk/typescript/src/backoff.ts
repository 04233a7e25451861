/**
 * Capped exponential backoff with jitter, for reconnects and retries.
 *
 * Attempt `n` (from 0) draws its delay from `[ceiling / 2, ceiling]`, where
 * `ceiling = min(maxMs, baseMs * factor^n)`: the lower half keeps a herd of
 * clients from reconnecting in step, the upper half of the window keeps a
 * delay from collapsing to zero.
 */

export interface BackoffOptions {
  /** The first ceiling, in milliseconds. Default 1000. */
  readonly baseMs?: number;
  /** The largest delay ever returned, in milliseconds. Default 30000. */
  readonly maxMs?: number;
  /** Growth per attempt. Default 2. */
  readonly factor?: number;
  /** A source of numbers in `[0, 1)`. Default `Math.random`. */
  readonly random?: () => number;
}

export class Backoff {
  readonly baseMs: number;
  readonly maxMs: number;
  readonly factor: number;
  private readonly random: () => number;
  private attempts = 0;

  constructor(options: BackoffOptions = {}) {
    this.baseMs = options.baseMs ?? 1000;
    this.maxMs = options.maxMs ?? 30_000;
    this.factor = options.factor ?? 2;
    this.random = options.random ?? Math.random;
    if (!(this.baseMs > 0) || !(this.maxMs >= this.baseMs) || !(this.factor >= 1)) {
      throw new RangeError("backoff needs 0 < baseMs <= maxMs and factor >= 1");
    }
  }

  /** How many delays were handed out since the last reset. */
  get attempt(): number {
    return this.attempts;
  }

  /** The ceiling for the current attempt. */
  ceiling(): number {
    // Past the cap, stop multiplying (and never overflow to Infinity).
    const grown = this.baseMs * Math.pow(this.factor, Math.min(this.attempts, 64));
    return Math.min(this.maxMs, grown);
  }

  /** The next delay, in milliseconds; each call moves to the next attempt. */
  next(): number {
    const ceiling = this.ceiling();
    this.attempts += 1;
    const unit = clampUnit(this.random());
    return Math.round(ceiling / 2 + (ceiling / 2) * unit);
  }

  /** Starts over from the first attempt (after a connection proved stable). */
  reset(): void {
    this.attempts = 0;
  }
}

function clampUnit(value: number): number {
  if (!Number.isFinite(value) || value < 0) return 0;
  return value >= 1 ? 1 : value;
}
