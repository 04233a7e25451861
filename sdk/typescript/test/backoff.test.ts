import assert from "node:assert/strict";
import { describe, it } from "node:test";

import { Backoff } from "../src/backoff.js";

function sequence(values: number[]): () => number {
  let i = 0;
  return () => values[i++ % values.length] ?? 0;
}

describe("Backoff", () => {
  it("doubles its ceiling per attempt and never exceeds the cap", () => {
    const high = new Backoff({ baseMs: 1000, maxMs: 30_000, random: () => 0.999999 });
    const delays = Array.from({ length: 10 }, () => high.next());
    assert.deepEqual(delays, [1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000, 30000, 30000]);
    const low = new Backoff({ baseMs: 1000, maxMs: 30_000, random: () => 0 });
    assert.deepEqual(
      Array.from({ length: 7 }, () => low.next()),
      [500, 1000, 2000, 4000, 8000, 15000, 15000],
    );
  });

  it("stays within [ceiling/2, ceiling] for any random value, even after many attempts", () => {
    const values = [0, 0.1, 0.25, 0.5, 0.75, 0.99, 1, -1, 2, Number.NaN];
    const backoff = new Backoff({ baseMs: 250, maxMs: 10_000, random: sequence(values) });
    for (let attempt = 0; attempt < 200; attempt += 1) {
      const ceiling = backoff.ceiling();
      assert.equal(ceiling, Math.min(10_000, 250 * 2 ** attempt));
      const delay = backoff.next();
      assert.ok(delay >= ceiling / 2 && delay <= ceiling, `attempt ${attempt}: ${delay} outside [${ceiling / 2}, ${ceiling}]`);
      assert.ok(Number.isFinite(delay));
    }
  });

  it("spreads delays with jitter", () => {
    const backoff = new Backoff({ baseMs: 1000, maxMs: 30_000, random: sequence([0, 0.5, 0.999]) });
    const first = [backoff.next(), (backoff.reset(), backoff.next()), (backoff.reset(), backoff.next())];
    assert.equal(new Set(first).size, 3);
  });

  it("starts over after reset", () => {
    const backoff = new Backoff({ baseMs: 1000, maxMs: 30_000, random: () => 0.999999 });
    backoff.next();
    backoff.next();
    backoff.next();
    assert.equal(backoff.attempt, 3);
    backoff.reset();
    assert.equal(backoff.attempt, 0);
    assert.equal(backoff.next(), 1000);
  });

  it("rejects nonsensical settings", () => {
    assert.throws(() => new Backoff({ baseMs: 0 }), RangeError);
    assert.throws(() => new Backoff({ baseMs: 100, maxMs: 50 }), RangeError);
    assert.throws(() => new Backoff({ factor: 0.5 }), RangeError);
  });
});
