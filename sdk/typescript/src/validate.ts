/**
 * A small JSON Schema (draft 2020-12) validator for gateway payloads.
 *
 * It supports exactly the keywords the event schemas in docs/events.json
 * use (the generator refuses a schema with any other keyword, and the
 * {@link JsonSchema} type makes the generated constant fail to compile), so
 * an unsupported keyword can never be silently ignored.
 */

/** A JSON value, as `JSON.parse` returns it. */
export type JsonValue =
  | null
  | boolean
  | number
  | string
  | readonly JsonValue[]
  | { readonly [key: string]: JsonValue };

/** The JSON Schema primitive type names. */
export type JsonType = "null" | "boolean" | "object" | "array" | "number" | "integer" | "string";

/** The subset of JSON Schema this validator understands. */
export interface JsonSchema {
  readonly $ref?: string;
  readonly type?: JsonType | readonly JsonType[];
  readonly properties?: { readonly [name: string]: JsonSchema };
  readonly required?: readonly string[];
  readonly additionalProperties?: boolean | JsonSchema;
  readonly minProperties?: number;
  readonly maxProperties?: number;
  readonly items?: JsonSchema;
  readonly minItems?: number;
  readonly maxItems?: number;
  readonly uniqueItems?: boolean;
  readonly enum?: readonly JsonValue[];
  readonly const?: JsonValue;
  readonly oneOf?: readonly JsonSchema[];
  readonly anyOf?: readonly JsonSchema[];
  readonly allOf?: readonly JsonSchema[];
  readonly minimum?: number;
  readonly maximum?: number;
  readonly exclusiveMinimum?: number;
  readonly exclusiveMaximum?: number;
  readonly minLength?: number;
  readonly maxLength?: number;
  readonly pattern?: string;
  // Annotations: carried along, never checked.
  readonly $schema?: string;
  readonly $id?: string;
  readonly $comment?: string;
  readonly title?: string;
  readonly description?: string;
  readonly examples?: readonly JsonValue[];
  readonly default?: JsonValue;
  readonly deprecated?: boolean;
  readonly format?: string;
}

/** Every keyword {@link validate} checks or knowingly ignores. */
export const SUPPORTED_KEYWORDS: readonly string[] = [
  "$ref", "type", "properties", "required", "additionalProperties", "minProperties",
  "maxProperties", "items", "minItems", "maxItems", "uniqueItems", "enum", "const",
  "oneOf", "anyOf", "allOf", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum",
  "minLength", "maxLength", "pattern",
  "$schema", "$id", "$comment", "title", "description", "examples", "default", "deprecated",
  "format",
];

/** Schemas that `$ref` values point at, keyed by the `$ref` string itself. */
export type SchemaRefs = { readonly [ref: string]: JsonSchema };

/** The outcome of {@link validate}: the first failure, with its JSON path. */
export type ValidationResult =
  | { readonly ok: true }
  | { readonly ok: false; readonly path: string; readonly message: string };

const OK: ValidationResult = { ok: true };

/** Nesting deeper than this (in the schema, through `$ref`s) is refused. */
const MAX_DEPTH = 64;

const patternCache = new Map<string, RegExp>();

/**
 * What an object field that its schema does not declare means.
 * - `"reject"`: what the schema says (`additionalProperties: false` fails).
 * - `"ignore"`: the field is skipped, so a payload that a newer server grew
 *   still validates; docs/GATEWAY_EVENTS.md asks clients to do this.
 */
export type UnknownFields = "reject" | "ignore";

interface Context {
  readonly refs: SchemaRefs;
  readonly unknownFields: UnknownFields;
}

/** Checks `value` against `schema`; `$ref`s are looked up in `refs`. */
export function validate(
  schema: JsonSchema,
  value: unknown,
  refs: SchemaRefs = {},
  unknownFields: UnknownFields = "reject",
): ValidationResult {
  return check(schema, value, { refs, unknownFields }, "$", 0);
}

function fail(path: string, message: string): ValidationResult {
  return { ok: false, path, message };
}

function check(schema: JsonSchema, value: unknown, ctx: Context, path: string, depth: number): ValidationResult {
  if (depth > MAX_DEPTH) return fail(path, "schema nests too deeply");

  if (schema.$ref !== undefined) {
    const target = ctx.refs[schema.$ref];
    if (target === undefined) return fail(path, `unresolved $ref ${schema.$ref}`);
    const result = check(target, value, ctx, path, depth + 1);
    if (!result.ok) return result;
  }

  if (schema.type !== undefined) {
    const types: readonly JsonType[] = typeof schema.type === "string" ? [schema.type] : schema.type;
    if (!types.some((type) => hasType(value, type))) {
      return fail(path, `expected ${types.join(" or ")}, got ${describe(value)}`);
    }
  }

  if (schema.const !== undefined && !jsonEqual(schema.const, value)) {
    return fail(path, `expected ${JSON.stringify(schema.const)}`);
  }
  if (schema.enum !== undefined && !schema.enum.some((option) => jsonEqual(option, value))) {
    return fail(path, `expected one of ${schema.enum.map((v) => JSON.stringify(v)).join(", ")}`);
  }

  if (typeof value === "number") {
    const bounds = checkNumber(schema, value, path);
    if (!bounds.ok) return bounds;
  } else if (typeof value === "string") {
    const text = checkString(schema, value, path);
    if (!text.ok) return text;
  } else if (Array.isArray(value)) {
    const items = checkArray(schema, value, ctx, path, depth);
    if (!items.ok) return items;
  } else if (isObject(value)) {
    const fields = checkObject(schema, value, ctx, path, depth);
    if (!fields.ok) return fields;
  }

  if (schema.allOf !== undefined) {
    for (const part of schema.allOf) {
      const result = check(part, value, ctx, path, depth + 1);
      if (!result.ok) return result;
    }
  }
  if (schema.anyOf !== undefined) {
    if (!schema.anyOf.some((part) => check(part, value, ctx, path, depth + 1).ok)) {
      return fail(path, "matches none of anyOf");
    }
  }
  if (schema.oneOf !== undefined) {
    const matches = schema.oneOf.filter((part) => check(part, value, ctx, path, depth + 1).ok).length;
    // Ignoring unknown fields can make branches that differ only in which
    // fields they allow overlap: then one match or more is a match.
    const enough = ctx.unknownFields === "ignore" ? matches >= 1 : matches === 1;
    if (!enough) return fail(path, `matches ${matches} of oneOf, expected exactly 1`);
  }
  return OK;
}

function checkNumber(schema: JsonSchema, value: number, path: string): ValidationResult {
  if (schema.minimum !== undefined && value < schema.minimum) return fail(path, `below minimum ${schema.minimum}`);
  if (schema.maximum !== undefined && value > schema.maximum) return fail(path, `above maximum ${schema.maximum}`);
  if (schema.exclusiveMinimum !== undefined && value <= schema.exclusiveMinimum) {
    return fail(path, `not above ${schema.exclusiveMinimum}`);
  }
  if (schema.exclusiveMaximum !== undefined && value >= schema.exclusiveMaximum) {
    return fail(path, `not below ${schema.exclusiveMaximum}`);
  }
  return OK;
}

function checkString(schema: JsonSchema, value: string, path: string): ValidationResult {
  if (schema.minLength !== undefined || schema.maxLength !== undefined) {
    // JSON Schema counts characters (code points), not UTF-16 units.
    const length = codePoints(value);
    if (schema.minLength !== undefined && length < schema.minLength) return fail(path, `shorter than ${schema.minLength}`);
    if (schema.maxLength !== undefined && length > schema.maxLength) return fail(path, `longer than ${schema.maxLength}`);
  }
  if (schema.pattern !== undefined && !compile(schema.pattern).test(value)) {
    return fail(path, `does not match ${schema.pattern}`);
  }
  return OK;
}

function checkArray(
  schema: JsonSchema,
  value: readonly unknown[],
  ctx: Context,
  path: string,
  depth: number,
): ValidationResult {
  if (schema.minItems !== undefined && value.length < schema.minItems) return fail(path, `fewer than ${schema.minItems} items`);
  if (schema.maxItems !== undefined && value.length > schema.maxItems) return fail(path, `more than ${schema.maxItems} items`);
  if (schema.items !== undefined) {
    for (let i = 0; i < value.length; i += 1) {
      const result = check(schema.items, value[i], ctx, `${path}[${i}]`, depth + 1);
      if (!result.ok) return result;
    }
  }
  if (schema.uniqueItems === true) {
    for (let i = 1; i < value.length; i += 1) {
      for (let j = 0; j < i; j += 1) {
        if (jsonEqual(value[i], value[j])) return fail(`${path}[${i}]`, "duplicate item");
      }
    }
  }
  return OK;
}

function checkObject(
  schema: JsonSchema,
  value: { readonly [key: string]: unknown },
  ctx: Context,
  path: string,
  depth: number,
): ValidationResult {
  const keys = Object.keys(value);
  if (schema.minProperties !== undefined && keys.length < schema.minProperties) {
    return fail(path, `fewer than ${schema.minProperties} properties`);
  }
  if (schema.maxProperties !== undefined && keys.length > schema.maxProperties) {
    return fail(path, `more than ${schema.maxProperties} properties`);
  }
  for (const name of schema.required ?? []) {
    if (!Object.hasOwn(value, name)) return fail(`${path}.${name}`, "is required");
  }
  const properties = schema.properties ?? {};
  for (const key of keys) {
    const child = `${path}.${key}`;
    const declared = Object.hasOwn(properties, key) ? properties[key] : undefined;
    const rule = declared ?? schema.additionalProperties;
    if (rule === undefined || rule === true) continue;
    if (rule === false) {
      if (ctx.unknownFields === "ignore") continue;
      return fail(child, "is not allowed");
    }
    const result = check(rule, value[key], ctx, child, depth + 1);
    if (!result.ok) return result;
  }
  return OK;
}

function hasType(value: unknown, type: JsonType): boolean {
  switch (type) {
    case "null":
      return value === null;
    case "boolean":
      return typeof value === "boolean";
    case "string":
      return typeof value === "string";
    case "number":
      return typeof value === "number" && Number.isFinite(value);
    case "integer":
      return typeof value === "number" && Number.isInteger(value);
    case "array":
      return Array.isArray(value);
    case "object":
      return isObject(value);
  }
}

function isObject(value: unknown): value is { readonly [key: string]: unknown } {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

function describe(value: unknown): string {
  if (value === null) return "null";
  if (Array.isArray(value)) return "array";
  if (typeof value === "number" && Number.isInteger(value)) return "integer";
  return typeof value;
}

function codePoints(text: string): number {
  let count = 0;
  for (let i = 0; i < text.length; i += 1) {
    const unit = text.charCodeAt(i);
    // A high surrogate followed by a low one is one character.
    if (unit >= 0xd800 && unit <= 0xdbff && i + 1 < text.length) {
      const next = text.charCodeAt(i + 1);
      if (next >= 0xdc00 && next <= 0xdfff) i += 1;
    }
    count += 1;
  }
  return count;
}

function compile(pattern: string): RegExp {
  let regex = patternCache.get(pattern);
  if (regex === undefined) {
    regex = new RegExp(pattern, "u");
    patternCache.set(pattern, regex);
  }
  return regex;
}

/** Structural equality of two JSON values (object key order ignored). */
export function jsonEqual(a: unknown, b: unknown): boolean {
  if (a === b) return true;
  if (Array.isArray(a)) {
    return Array.isArray(b) && a.length === b.length && a.every((item, i) => jsonEqual(item, b[i]));
  }
  if (isObject(a) && isObject(b)) {
    const keys = Object.keys(a);
    return (
      keys.length === Object.keys(b).length &&
      keys.every((key) => Object.hasOwn(b, key) && jsonEqual(a[key], b[key]))
    );
  }
  return false;
}
