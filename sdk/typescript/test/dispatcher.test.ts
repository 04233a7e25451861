import assert from "node:assert/strict";
import { describe, it } from "node:test";

import { Dispatcher, type InvalidFrame } from "../src/dispatcher.js";
import { DISPATCH_TABLE } from "../src/generated/event-schemas.js";
import { EVENT_TYPES } from "../src/generated/events.js";
import { readRepoJson, sampleMessage, ULID } from "./fakes.js";

interface ManifestEvent {
  readonly event_type: string;
  readonly schema_version: number;
}

function setup(): { dispatcher: Dispatcher; invalid: InvalidFrame[] } {
  const invalid: InvalidFrame[] = [];
  const dispatcher = new Dispatcher({ onInvalid: (frame) => invalid.push(frame) });
  return { dispatcher, invalid };
}

const frame = (t: string, d: unknown, v: unknown = 1): string => JSON.stringify({ v, t, d });

describe("dispatch table", () => {
  it("has exactly the events of docs/events.json, with their schema versions", () => {
    const manifest = readRepoJson("docs/events.json") as { events: ManifestEvent[] };
    const fromManifest = manifest.events.map((e) => e.event_type).sort();
    assert.deepEqual(Object.keys(DISPATCH_TABLE).sort(), fromManifest);
    assert.deepEqual([...EVENT_TYPES].sort(), fromManifest);
    for (const event of manifest.events) {
      const entry = DISPATCH_TABLE[event.event_type as keyof typeof DISPATCH_TABLE];
      assert.equal(entry.schemaVersion, event.schema_version, event.event_type);
    }
  });
});

describe("Dispatcher", () => {
  it("delivers a valid frame to its typed handler", () => {
    const { dispatcher, invalid } = setup();
    const seen: string[] = [];
    dispatcher.on("message_create", (message) => seen.push(`${message.channel_id}:${message.content}`));
    assert.equal(dispatcher.dispatch(frame("message_create", sampleMessage())), "delivered");
    assert.deepEqual(seen, [`${ULID.channel}:hello`]);
    assert.deepEqual(invalid, []);
  });

  it("counts an unknown t and ignores it, without reporting it", () => {
    const { dispatcher, invalid } = setup();
    assert.equal(dispatcher.unknownEventCount, 0);
    assert.equal(dispatcher.dispatch(frame("some_future_event", { x: 1 })), "unknown");
    assert.equal(dispatcher.dispatch(frame("another.one", {})), "unknown");
    assert.equal(dispatcher.unknownEventCount, 2);
    assert.deepEqual(invalid, []);
  });

  it("accepts a payload with a field a newer server added", () => {
    const { dispatcher, invalid } = setup();
    const seen: string[] = [];
    dispatcher.on("message_create", (message) => seen.push(message.content));
    const grown = { ...sampleMessage(), pinned_by: ULID.user };
    assert.equal(dispatcher.dispatch(frame("message_create", grown)), "delivered");
    assert.deepEqual(seen, ["hello"]);
    assert.deepEqual(invalid, []);
  });

  it("drops a d that fails its schema and reports where", () => {
    const { dispatcher, invalid } = setup();
    let delivered = 0;
    dispatcher.on("message_create", () => delivered++);
    const bad = { ...sampleMessage(), content: 42 };
    assert.equal(dispatcher.dispatch(frame("message_create", bad)), "invalid");
    const missing: Record<string, unknown> = sampleMessage();
    delete missing.author_id;
    assert.equal(dispatcher.dispatch(frame("message_create", missing)), "invalid");
    assert.equal(dispatcher.dispatch(frame("ready", { user_id: 7 })), "invalid");
    assert.equal(delivered, 0);
    assert.deepEqual(
      invalid.map((i) => [i.reason, i.eventType]),
      [
        ["invalid_payload", "message_create"],
        ["invalid_payload", "message_create"],
        ["invalid_payload", "ready"],
      ],
    );
    assert.match(invalid[0]?.detail ?? "", /content/);
    assert.match(invalid[1]?.detail ?? "", /author_id/);
  });

  it("fails closed on anything but an exact {v,t,d} envelope", () => {
    const { dispatcher, invalid } = setup();
    const cases: [unknown, string][] = [
      ["not json", "not_json"],
      ["", "not_json"],
      ["[1,2]", "bad_envelope"],
      ["null", "bad_envelope"],
      ['"text"', "bad_envelope"],
      [JSON.stringify({ v: 1, t: "ready" }), "bad_envelope"],
      [JSON.stringify({ v: 1, t: "ready", d: { user_id: ULID.user }, x: 1 }), "bad_envelope"],
      [frame("ready", { user_id: ULID.user }, "1"), "bad_envelope"],
      [frame("ready", { user_id: ULID.user }, 2), "unsupported_version"],
      [frame("ready", { user_id: ULID.user }, 0), "unsupported_version"],
      [frame("READY", { user_id: ULID.user }), "bad_envelope"],
      [frame("", {}), "bad_envelope"],
      [frame("x".repeat(65), {}), "bad_envelope"],
      [frame("ready", [ULID.user]), "bad_envelope"],
      [frame("ready", null), "bad_envelope"],
      [new Uint8Array([1, 2]), "not_text"],
      [frame("ready", { user_id: ULID.user, pad: "x".repeat(70_000) }), "too_large"],
    ];
    let delivered = 0;
    dispatcher.on("ready", () => delivered++);
    for (const [raw] of cases) assert.equal(dispatcher.dispatch(raw), "invalid", String(raw).slice(0, 80));
    assert.deepEqual(
      invalid.map((i) => i.reason),
      cases.map(([, reason]) => reason),
    );
    assert.equal(delivered, 0);
    assert.equal(dispatcher.unknownEventCount, 0);
  });

  it("accepts a fourth field p of position tokens, and hands it to onPositions, then to handlers", () => {
    const seen: [unknown, string][] = [];
    const invalid: InvalidFrame[] = [];
    const dispatcher = new Dispatcher({
      onPositions: (positions, t) => seen.push([positions, t]),
      onInvalid: (frame) => invalid.push(frame),
    });
    const payloads: unknown[] = [];
    dispatcher.on("ready", (d, _t, positions) => payloads.push([d, positions, seen.length]));
    const p = { [`u:${ULID.user}`]: "00ff.7" };
    const ready = { v: 1, t: "ready", d: { user_id: ULID.user } };
    assert.equal(dispatcher.dispatch(JSON.stringify({ ...ready, p })), "delivered");
    assert.equal(dispatcher.dispatch(JSON.stringify({ v: 1, t: "future", d: {}, p })), "unknown");
    assert.equal(dispatcher.dispatch(JSON.stringify(ready)), "delivered");
    // onPositions ran first; a frame without p hands the handler undefined.
    assert.deepEqual(payloads, [
      [{ user_id: ULID.user }, p, 1],
      [{ user_id: ULID.user }, undefined, 2],
    ]);
    assert.deepEqual(seen, [
      [p, "ready"],
      [p, "future"],
    ]);
    for (const bad of [null, [], "0a.1", { g: 1 }, { g: "0a" }, { g: "0A.1" }, { g: "0a.-1" }]) {
      assert.equal(dispatcher.dispatch(JSON.stringify({ ...ready, p: bad })), "invalid", JSON.stringify(bad));
    }
    assert.equal(dispatcher.dispatch(JSON.stringify({ ...ready, p, x: 1 })), "invalid");
    assert.equal(dispatcher.dispatch(JSON.stringify({ v: 1, t: "ready", p, x: 1 })), "invalid");
    assert.ok(invalid.every((i) => i.reason === "bad_envelope"));
    assert.equal(invalid.length, 9);
    // A payload that fails its schema: its positions are not taken either.
    assert.equal(dispatcher.dispatch(JSON.stringify({ v: 1, t: "ready", d: { user_id: 1 }, p })), "invalid");
    assert.equal(seen.length, 2);
  });

  it("takes one resumed per log, with its position; the old shape is refused", () => {
    const { dispatcher, invalid } = setup();
    const got: unknown[] = [];
    dispatcher.on("resumed", (d, _t, p) => got.push([d, p]));
    const scope = `g:${ULID.guild}`;
    const replayed = { scope, replayed: 3, resync: false };
    assert.equal(dispatcher.dispatch(JSON.stringify({ v: 1, t: "resumed", d: replayed, p: { [scope]: "0a.9" } })), "delivered");
    assert.equal(dispatcher.dispatch(frame("resumed", { scope, replayed: 0, resync: true })), "delivered");
    assert.deepEqual(got, [
      [replayed, { [scope]: "0a.9" }],
      [{ scope, replayed: 0, resync: true }, undefined],
    ]);
    assert.equal(dispatcher.dispatch(frame("resumed", { replayed: 0, resync: [scope] })), "invalid");
    assert.deepEqual(
      invalid.map((i) => i.reason),
      ["invalid_payload"],
    );
  });

  it("stops calling a removed handler, and survives a handler that throws", () => {
    const errors: unknown[] = [];
    const dispatcher = new Dispatcher({ onHandlerError: (error) => errors.push(error) });
    let calls = 0;
    const off = dispatcher.on("ready", () => calls++);
    dispatcher.on("ready", () => {
      throw new Error("app bug");
    });
    const ready = frame("ready", { user_id: ULID.user });
    dispatcher.dispatch(ready);
    off();
    dispatcher.dispatch(ready);
    assert.equal(calls, 1);
    assert.equal(errors.length, 2);
  });

  it("refuses a handler for an event not in the manifest", () => {
    const dispatcher = new Dispatcher();
    assert.throws(() => dispatcher.on("nope" as "ready", () => undefined), TypeError);
  });
});
