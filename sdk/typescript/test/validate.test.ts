import assert from "node:assert/strict";
import { describe, it } from "node:test";

import { SUPPORTED_KEYWORDS, validate, type JsonSchema } from "../src/validate.js";
import { readRepoJson } from "./fakes.js";

const ok = (schema: JsonSchema, value: unknown, refs = {}): boolean => validate(schema, value, refs).ok;

describe("validate", () => {
  it("checks type, including type arrays and integers", () => {
    assert.ok(ok({ type: "string" }, "a"));
    assert.ok(!ok({ type: "string" }, 1));
    assert.ok(ok({ type: ["string", "null"] }, null));
    assert.ok(!ok({ type: ["string", "null"] }, 0));
    assert.ok(ok({ type: "integer" }, 3));
    assert.ok(!ok({ type: "integer" }, 3.5));
    assert.ok(!ok({ type: "number" }, Number.NaN));
    assert.ok(!ok({ type: "object" }, []));
    assert.ok(!ok({ type: "array" }, {}));
    assert.ok(ok({ type: "boolean" }, false));
  });

  it("checks properties, required and additionalProperties", () => {
    const schema: JsonSchema = {
      type: "object",
      required: ["a"],
      properties: { a: { type: "string" }, b: { type: "integer" } },
      additionalProperties: false,
    };
    assert.ok(ok(schema, { a: "x" }));
    assert.ok(ok(schema, { a: "x", b: 1 }));
    assert.ok(!ok(schema, { b: 1 }));
    assert.ok(!ok(schema, { a: "x", b: "1" }));
    const extra = validate(schema, { a: "x", c: 1 });
    assert.deepEqual(extra, { ok: false, path: "$.c", message: "is not allowed" });
    assert.ok(validate(schema, { a: "x", c: 1 }, {}, "ignore").ok, "unknown fields may be ignored");
    assert.ok(!validate(schema, { c: 1 }, {}, "ignore").ok, "required fields still are not");
    assert.ok(ok({ type: "object", additionalProperties: { type: "integer" } }, { x: 1, y: 2 }));
    assert.ok(!ok({ type: "object", additionalProperties: { type: "integer" } }, { x: "1" }));
    assert.ok(ok({ type: "object", properties: { a: { type: "string" } } }, { a: "x", z: 1 }));
    assert.ok(!ok({ type: "object", minProperties: 1 }, {}));
  });

  it("checks items, enum, const and bounds", () => {
    assert.ok(ok({ type: "array", items: { type: "string" } }, ["a", "b"]));
    const bad = validate({ type: "array", items: { type: "string" } }, ["a", 2]);
    assert.equal(bad.ok ? "" : bad.path, "$[1]");
    assert.ok(!ok({ type: "array", maxItems: 1 }, [1, 2]));
    assert.ok(!ok({ type: "array", minItems: 1 }, []));
    assert.ok(!ok({ type: "array", uniqueItems: true }, ["a", "a"]));
    assert.ok(ok({ enum: ["online", "offline"] }, "online"));
    assert.ok(!ok({ enum: ["online", "offline"] }, "away"));
    assert.ok(ok({ const: "text" }, "text"));
    assert.ok(!ok({ const: "text" }, "code"));
    assert.ok(ok({ type: "integer", minimum: 1, maximum: 6 }, 6));
    assert.ok(!ok({ type: "integer", minimum: 1, maximum: 6 }, 0));
    assert.ok(!ok({ type: "integer", minimum: 1, maximum: 6 }, 7));
    assert.ok(!ok({ type: "integer", exclusiveMinimum: 0 }, 0));
    assert.ok(!ok({ type: "integer", exclusiveMaximum: 5 }, 5));
  });

  it("counts string length in characters, and checks patterns", () => {
    assert.ok(ok({ type: "string", maxLength: 2 }, "😀😀"));
    assert.ok(!ok({ type: "string", maxLength: 1 }, "😀😀"));
    assert.ok(!ok({ type: "string", minLength: 1 }, ""));
    const ulid: JsonSchema = { type: "string", pattern: "^[0-9A-HJKMNP-TV-Z]{26}$" };
    assert.ok(ok(ulid, "01HZX3N4B5C6D7E8F9G0H1J2K3"));
    assert.ok(!ok(ulid, "01hzx3n4b5c6d7e8f9g0h1j2k3"));
  });

  it("resolves $ref and checks oneOf (exactly one), anyOf and allOf", () => {
    const refs = {
      "#/$defs/Id": { type: "string", minLength: 1 } as JsonSchema,
      "#/$defs/Token": {
        oneOf: [
          { type: "object", required: ["type"], properties: { type: { const: "a" } } },
          { type: "object", required: ["type", "text"], properties: { type: { const: "b" }, text: { type: "string" } } },
        ],
      } as JsonSchema,
    };
    assert.ok(ok({ $ref: "#/$defs/Id" }, "x", refs));
    assert.ok(!ok({ $ref: "#/$defs/Id" }, "", refs));
    assert.ok(!ok({ $ref: "#/$defs/Missing" }, "x", refs));
    assert.ok(ok({ $ref: "#/$defs/Token" }, { type: "a" }, refs));
    assert.ok(ok({ $ref: "#/$defs/Token" }, { type: "b", text: "t" }, refs));
    assert.ok(!ok({ $ref: "#/$defs/Token" }, { type: "c" }, refs));
    assert.ok(!ok({ oneOf: [{ type: "string" }, { type: "string" }] }, "x"));
    assert.ok(ok({ anyOf: [{ type: "string" }, { type: "string" }] }, "x"));
    assert.ok(!ok({ anyOf: [{ type: "string" }, { type: "null" }] }, 1));
    assert.ok(!ok({ allOf: [{ type: "integer" }, { minimum: 2 }] }, 1));
  });

  it("supports every keyword docs/events.json uses", () => {
    const used = new Set<string>();
    const walk = (node: unknown, inSchema: boolean): void => {
      if (Array.isArray(node)) {
        node.forEach((item) => walk(item, inSchema));
        return;
      }
      if (typeof node !== "object" || node === null) return;
      for (const [key, value] of Object.entries(node)) {
        if (inSchema) used.add(key);
        if (key === "properties" || key === "$defs") {
          for (const child of Object.values(value as object)) walk(child, true);
        } else if (["items", "additionalProperties", "oneOf", "anyOf", "allOf", "not"].includes(key)) {
          walk(value, true);
        } else if (!inSchema) {
          walk(value, /schema/i.test(key));
        }
      }
    };
    const manifest = readRepoJson("docs/events.json") as { events: object[]; $defs?: object };
    if (manifest.$defs !== undefined) walk({ $defs: manifest.$defs }, false);
    for (const event of manifest.events) walk(event, false);
    used.delete("$defs");
    const unsupported = [...used].filter((k) => !SUPPORTED_KEYWORDS.includes(k));
    assert.deepEqual(unsupported, []);
  });
});
