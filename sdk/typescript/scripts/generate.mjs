#!/usr/bin/env node
// Generates src/generated/*.ts from the repository's contract documents:
//
//   docs/openapi.json -> openapi.ts (types, by openapi-typescript)
//                        routes.ts  (route table and one method per route)
//   docs/events.json  -> events.ts  (payload types, event names)
//                        event-schemas.ts (runtime schemas and the dispatch table)
//
// The output depends only on the input documents, so `npm run check:generated`
// can regenerate and compare. Usage:
//
//   node scripts/generate.mjs [--openapi FILE] [--events FILE] [--out DIR]

import { existsSync } from "node:fs";
import { mkdir, readFile, writeFile } from "node:fs/promises";
import path from "node:path";
import { fileURLToPath } from "node:url";
import openapiTS, { astToString } from "openapi-typescript";

const here = path.dirname(fileURLToPath(import.meta.url));
const packageRoot = path.resolve(here, "..");
const repoRoot = path.resolve(packageRoot, "../..");

const args = parseArgs(process.argv.slice(2));
const openapiPath = args.openapi ?? path.join(repoRoot, "docs/openapi.json");
const eventsPath = args.events ?? path.join(repoRoot, "docs/events.json");
const outDir = args.out ?? path.join(packageRoot, "src/generated");
const fixturePath = path.join(here, "fixtures/openapi.fixture.json");

/** Keywords the runtime validator (src/validate.ts) implements or ignores. */
const SUPPORTED_KEYWORDS = new Set([
  "$ref", "type", "properties", "required", "additionalProperties", "minProperties",
  "maxProperties", "items", "minItems", "maxItems", "uniqueItems", "enum", "const",
  "oneOf", "anyOf", "allOf", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum",
  "minLength", "maxLength", "pattern",
  "$schema", "$id", "$comment", "title", "description", "examples", "default", "deprecated",
  "format", "$defs",
]);
/** Annotation keywords: kept in the types' comments, left out of runtime data. */
const ANNOTATIONS = new Set([
  "$schema", "$id", "$comment", "title", "description", "examples", "default", "deprecated",
  "format", "$defs",
]);


async function main() {
  await mkdir(outDir, { recursive: true });

  const events = JSON.parse(await readFile(eventsPath, "utf8"));
  const eventFiles = generateEvents(events, relative(eventsPath));

  let openapiSource = openapiPath;
  if (!existsSync(openapiPath)) {
    console.warn(`generate: ${relative(openapiPath)} does not exist; using ${relative(fixturePath)}`);
    openapiSource = fixturePath;
  }
  const openapi = JSON.parse(await readFile(openapiSource, "utf8"));
  const openapiFiles = await generateOpenapi(openapi, relative(openapiSource));

  const files = { ...eventFiles, ...openapiFiles };
  for (const [name, text] of Object.entries(files)) {
    await writeFile(path.join(outDir, name), text);
  }
  console.log(`generate: wrote ${Object.keys(files).sort().join(", ")} to ${relative(outDir)}`);
}

// ---------------------------------------------------------------------------
// Events

function generateEvents(manifest, source) {
  if (!Array.isArray(manifest.events)) fail(`${source}: no "events" array`);

  const refs = new Map(); // "$ref" string -> resolved schema
  const events = manifest.events.map((entry) => {
    const type = entry.event_type;
    if (typeof type !== "string" || !/^[a-z0-9_.]{1,64}$/.test(type)) {
      fail(`${source}: bad event_type ${JSON.stringify(type)}`);
    }
    const schema = eventSchemaOf(entry, type, source);
    collectRefs(manifest, schema, refs, `${type}`);
    return {
      type,
      schemaVersion: entry.schema_version,
      scope: entry.scope,
      lifecycle: entry.lifecycle,
      schema,
    };
  });
  const seen = new Set();
  for (const event of events) {
    if (seen.has(event.type)) fail(`${source}: duplicate event_type ${event.type}`);
    seen.add(event.type);
  }

  // Type names: one per referenced schema, one per event payload.
  const refNames = new Map();
  const taken = new Set();
  for (const ref of [...refs.keys()].sort()) {
    const name = pascal(ref.split("/").pop());
    if (taken.has(name)) fail(`${source}: two schemas would both be named ${name}`);
    taken.add(name);
    refNames.set(ref, name);
  }
  for (const event of events) {
    const pureRef = isPureRef(event.schema);
    event.typeName = pureRef ? refNames.get(event.schema.$ref) : `${pascal(event.type)}Payload`;
    if (!pureRef) {
      if (taken.has(event.typeName)) fail(`${source}: ${event.typeName} is both an event and a schema`);
      taken.add(event.typeName);
    }
  }

  const header = banner(source);
  const types = [header];
  for (const [ref, name] of refNames) {
    const schema = refs.get(ref);
    types.push(`${doc(schema.description, "")}export type ${name} = ${tsType(schema, refNames, "")};\n`);
  }
  for (const event of events) {
    if (isPureRef(event.schema)) continue;
    const comment = event.schema.description ?? `The \`d\` of a \`${event.type}\` frame.`;
    types.push(`${doc(comment, "")}export type ${event.typeName} = ${tsType(event.schema, refNames, "")};\n`);
  }
  types.push("/** Every event the gateway sends, by its `t`, with the type of its `d`. */");
  types.push("export interface EventPayloads {");
  for (const event of events) types.push(`  ${propName(event.type)}: ${event.typeName};`);
  types.push("}\n");
  types.push("/** The `t` of every event in the manifest, in manifest order. */");
  types.push(`export const EVENT_TYPES = [\n${events.map((e) => `  ${JSON.stringify(e.type)},`).join("\n")}\n] as const;\n`);
  types.push("/** An event type the gateway sends. */");
  types.push("export type EventType = keyof EventPayloads;\n");

  const schemas = [header];
  schemas.push('import type { JsonSchema, SchemaRefs } from "../validate.js";');
  schemas.push('import type { EventType } from "./events.js";\n');
  schemas.push("/** One row of the dispatch table: what the manifest says about an event. */");
  schemas.push("export interface DispatchEntry {");
  schemas.push("  readonly schemaVersion: number;");
  schemas.push("  readonly scope: string;");
  schemas.push("  readonly lifecycle: string;");
  schemas.push("  readonly schema: JsonSchema;");
  schemas.push("}\n");
  schemas.push("/** The schemas that event schemas reference, keyed by their `$ref`. */");
  schemas.push("export const EVENT_SCHEMA_REFS: SchemaRefs = {");
  for (const ref of refNames.keys()) {
    schemas.push(`  ${JSON.stringify(ref)}: ${literal(runtimeSchema(refs.get(ref)), "  ")},`);
  }
  schemas.push("};\n");
  schemas.push("/** The dispatch table: one entry per manifest event, keyed by `t`. */");
  schemas.push("export const DISPATCH_TABLE: { readonly [T in EventType]: DispatchEntry } = {");
  for (const event of events) {
    schemas.push(`  ${propName(event.type)}: {`);
    schemas.push(`    schemaVersion: ${JSON.stringify(event.schemaVersion)},`);
    schemas.push(`    scope: ${JSON.stringify(event.scope)},`);
    schemas.push(`    lifecycle: ${JSON.stringify(event.lifecycle)},`);
    schemas.push(`    schema: ${literal(runtimeSchema(event.schema), "    ")},`);
    schemas.push("  },");
  }
  schemas.push("};\n");

  return { "events.ts": types.join("\n"), "event-schemas.ts": schemas.join("\n") };
}

/** Finds an event's payload schema, whichever key the manifest keeps it under. */
function eventSchemaOf(entry, type, source) {
  for (const key of ["schema", "payload_schema", "d_schema", "payload", "d"]) {
    const value = entry[key];
    if (value === undefined) continue;
    if (typeof value === "string") return { $ref: value };
    if (typeof value === "object" && value !== null && !Array.isArray(value)) {
      // `{"$ref": …}` or an inline schema; a wrapper `{ "schema": … }` too.
      if (value.schema && typeof value.schema === "object") return value.schema;
      return value;
    }
  }
  fail(`${source}: event ${type} has no payload schema`);
}

function collectRefs(root, schema, refs, where) {
  if (typeof schema !== "object" || schema === null || Array.isArray(schema)) {
    fail(`${where}: a schema must be an object`);
  }
  for (const key of Object.keys(schema)) {
    if (!SUPPORTED_KEYWORDS.has(key)) fail(`${where}: unsupported schema keyword "${key}"`);
  }
  if (schema.$ref !== undefined) {
    const ref = schema.$ref;
    if (typeof ref !== "string" || !ref.startsWith("#/")) fail(`${where}: only local $refs are supported, not ${ref}`);
    if (!refs.has(ref)) {
      const target = resolvePointer(root, ref, where);
      refs.set(ref, target);
      collectRefs(root, target, refs, ref);
    }
  }
  for (const [name, child] of Object.entries(schema.properties ?? {})) collectRefs(root, child, refs, `${where}.${name}`);
  if (schema.items !== undefined) collectRefs(root, schema.items, refs, `${where}[]`);
  if (typeof schema.additionalProperties === "object") collectRefs(root, schema.additionalProperties, refs, `${where}.*`);
  for (const key of ["oneOf", "anyOf", "allOf"]) {
    (schema[key] ?? []).forEach((child, i) => collectRefs(root, child, refs, `${where}/${key}/${i}`));
  }
}

function resolvePointer(root, ref, where) {
  let node = root;
  for (const raw of ref.slice(2).split("/")) {
    const segment = decodeURIComponent(raw).replaceAll("~1", "/").replaceAll("~0", "~");
    if (typeof node !== "object" || node === null || !Object.hasOwn(node, segment)) {
      fail(`${where}: $ref ${ref} does not resolve`);
    }
    node = node[segment];
  }
  return node;
}

function isPureRef(schema) {
  return typeof schema.$ref === "string" && Object.keys(schema).every((k) => k === "$ref" || ANNOTATIONS.has(k));
}

/** The schema without annotations, for the runtime constant. */
function runtimeSchema(schema) {
  const out = {};
  for (const key of Object.keys(schema)) {
    if (ANNOTATIONS.has(key)) continue;
    const value = schema[key];
    if (key === "properties") {
      out.properties = Object.fromEntries(Object.entries(value).map(([k, v]) => [k, runtimeSchema(v)]));
    } else if (key === "items" || (key === "additionalProperties" && typeof value === "object")) {
      out[key] = runtimeSchema(value);
    } else if (key === "oneOf" || key === "anyOf" || key === "allOf") {
      out[key] = value.map(runtimeSchema);
    } else {
      out[key] = value;
    }
  }
  return out;
}

/** The TypeScript type of a schema (the subset the validator supports). */
function tsType(schema, refNames, indent) {
  const parts = [];
  if (schema.$ref !== undefined) parts.push(refNames.get(schema.$ref));
  const own = ownType(schema, refNames, indent);
  if (own !== undefined) parts.push(own);
  for (const key of ["oneOf", "anyOf"]) {
    if (schema[key] !== undefined) {
      const members = schema[key].map((s) => tsType(s, refNames, indent));
      parts.push(members.length === 1 ? members[0] : `(${members.join(" | ")})`);
    }
  }
  for (const part of schema.allOf ?? []) parts.push(tsType(part, refNames, indent));
  if (parts.length === 0) return "unknown";
  return parts.length === 1 ? stripParens(parts[0]) : parts.join(" & ");
}

function ownType(schema, refNames, indent) {
  if (schema.const !== undefined) return JSON.stringify(schema.const);
  if (schema.enum !== undefined) return schema.enum.map((v) => JSON.stringify(v)).join(" | ");
  let types = schema.type === undefined ? [] : Array.isArray(schema.type) ? schema.type : [schema.type];
  if (types.length === 0) {
    if (schema.properties !== undefined || schema.additionalProperties !== undefined) types = ["object"];
    else if (schema.items !== undefined) types = ["array"];
    else return undefined;
  }
  const rendered = types.map((type) => {
    switch (type) {
      case "string":
        return "string";
      case "integer":
      case "number":
        return "number";
      case "boolean":
        return "boolean";
      case "null":
        return "null";
      case "array": {
        const item = schema.items === undefined ? "unknown" : tsType(schema.items, refNames, indent);
        return /^[\w.]+$/.test(item) ? `${item}[]` : `Array<${item}>`;
      }
      case "object":
        return objectType(schema, refNames, indent);
      default:
        fail(`unknown JSON type ${type}`);
    }
  });
  return rendered.length === 1 ? rendered[0] : `(${rendered.join(" | ")})`;
}

function objectType(schema, refNames, indent) {
  const properties = Object.entries(schema.properties ?? {});
  const extra = schema.additionalProperties;
  if (properties.length === 0) {
    if (typeof extra === "object") return `{ [key: string]: ${tsType(extra, refNames, indent)} }`;
    return extra === false ? "Record<string, never>" : "{ [key: string]: unknown }";
  }
  const required = new Set(schema.required ?? []);
  const inner = `${indent}  `;
  const lines = properties.map(([name, child]) => {
    const optional = required.has(name) ? "" : "?";
    return `${doc(child.description, inner)}${inner}${propName(name)}${optional}: ${tsType(child, refNames, inner)};`;
  });
  return `{\n${lines.join("\n")}\n${indent}}`;
}

function stripParens(text) {
  if (!text.startsWith("(") || !text.endsWith(")")) return text;
  // Only when the outer parentheses enclose the whole text.
  let depth = 0;
  for (let i = 0; i < text.length; i += 1) {
    if (text[i] === "(") depth += 1;
    if (text[i] === ")") depth -= 1;
    if (depth === 0 && i < text.length - 1) return text;
  }
  return text.slice(1, -1);
}

// ---------------------------------------------------------------------------
// OpenAPI

const METHODS = ["get", "put", "post", "patch", "delete"];
/** Routes whose success changes the session the client holds. */
const SESSION_EFFECTS = { "post /auth/login": "set", "post /auth/refresh": "set", "post /auth/logout": "clear" };
/** Used only when the document declares no security at all. */
const PUBLIC_WITHOUT_SECURITY = new Set([
  "post /auth/register", "post /auth/login", "post /auth/refresh", "post /auth/logout",
  "get /health", "post /echo", "get /slow", "get /users/{user_id}/avatar", "get /users/{user_id}/banner",
]);

async function generateOpenapi(document, source) {
  if (typeof document.openapi !== "string" || !document.openapi.startsWith("3.")) {
    fail(`${source}: not an OpenAPI 3 document`);
  }
  const dangling = danglingRefs(document);
  if (dangling.length > 0) fail(`${source}: $refs that resolve to nothing: ${dangling.join(", ")}`);
  const ast = await openapiTS(document, { alphabetize: false, silent: true });
  const openapiTs = `${banner(source)}\n${astToString(ast)}`;

  const declaresSecurity =
    Array.isArray(document.security) ||
    Object.values(document.paths ?? {}).some((item) => METHODS.some((m) => Array.isArray(item?.[m]?.security)));
  if (!declaresSecurity) {
    console.warn(`generate: ${source} declares no security; assuming bearer auth on every route but the public ones`);
  }

  const routes = [];
  const names = new Set();
  const idCounts = new Map();
  for (const item of Object.values(document.paths ?? {})) {
    for (const method of METHODS) {
      const id = item[method]?.operationId;
      if (id !== undefined) idCounts.set(id, (idCounts.get(id) ?? 0) + 1);
    }
  }
  for (const [route, item] of Object.entries(document.paths ?? {})) {
    for (const method of METHODS) {
      const op = item[method];
      if (op === undefined) continue;
      const key = `${method} ${route}`;
      const name = methodName(op.operationId, idCounts, method, route);
      if (names.has(name)) fail(`${source}: two routes would both be named ${name}`);
      names.add(name);
      const parameters = [...(item.parameters ?? []), ...(op.parameters ?? [])].map((p) => deref(document, p));
      const pathParams = [...route.matchAll(/\{([^}]+)\}/g)].map((m) => m[1]);
      const query = parameters.filter((p) => p.in === "query");
      const body = requestBodyKind(deref(document, op.requestBody), `${source}: ${key}`);
      const success = successResponse(document, op, `${source}: ${key}`);
      const security = op.security ?? document.security;
      const auth = declaresSecurity
        ? Array.isArray(security) && security.length > 0 && !security.some((r) => Object.keys(r).length === 0)
        : !PUBLIC_WITHOUT_SECURITY.has(key);
      routes.push({
        name,
        key,
        route,
        method,
        summary: (op.summary ?? op.description?.split("\n\n")[0])?.replace(/\s+/g, " ").trim(),
        pathParams,
        hasQuery: query.length > 0,
        queryRequired: query.some((p) => p.required === true),
        body,
        success,
        auth,
        session: SESSION_EFFECTS[key] ?? "none",
      });
    }
  }

  const out = [banner(source)];
  out.push('import type { paths } from "./openapi.js";\n');
  out.push("/** How a route is called: the data its generated method passes to `request`. */");
  out.push("export interface RouteSpec {");
  out.push("  readonly name: string;");
  out.push('  readonly method: "GET" | "PUT" | "POST" | "PATCH" | "DELETE";');
  out.push("  /** The path template, with `{name}` for each path parameter. */");
  out.push("  readonly path: string;");
  out.push("  readonly pathParams: readonly string[];");
  out.push('  readonly body: "none" | "json" | "binary";');
  out.push('  readonly response: "empty" | "json" | "text" | "binary";');
  out.push("  /** The success status the document declares. */");
  out.push("  readonly status: number;");
  out.push("  /** Whether the route takes the bearer access token. */");
  out.push("  readonly auth: boolean;");
  out.push("  /** What a success does to the client's session (login, refresh, logout). */");
  out.push('  readonly session: "none" | "set" | "clear";');
  out.push("}\n");
  out.push("/** Every route of the OpenAPI document, by method name. */");
  out.push("export const ROUTES = {");
  for (const r of routes) {
    const fields = [
      `name: ${JSON.stringify(r.name)}`,
      `method: ${JSON.stringify(r.method.toUpperCase())}`,
      `path: ${JSON.stringify(r.route)}`,
      `pathParams: [${r.pathParams.map((p) => JSON.stringify(p)).join(", ")}]`,
      `body: ${JSON.stringify(r.body.kind)}`,
      `response: ${JSON.stringify(r.success.kind)}`,
      `status: ${r.success.status}`,
      `auth: ${r.auth}`,
      `session: ${JSON.stringify(r.session)}`,
    ];
    out.push(`  ${r.name}: { ${fields.join(", ")} },`);
  }
  out.push("} as const satisfies { readonly [name: string]: RouteSpec };\n");
  const errorCodes = deref(document, document.components?.schemas?.ErrorBody)?.properties?.error?.enum;
  if (Array.isArray(errorCodes)) {
    out.push("/** Every `error` code the api answers with, as the document lists them. */");
    out.push(`export const SERVER_ERROR_CODES = [${errorCodes.map((c) => JSON.stringify(c)).join(", ")}] as const;\n`);
  } else {
    console.warn(`generate: ${source} has no ErrorBody schema with an enum of codes`);
    out.push("/** The document lists no error codes. */");
    out.push("export const SERVER_ERROR_CODES = [] as const;\n");
  }
  out.push("/** An `error` code the api answers with. */");
  out.push("export type ServerErrorCode = (typeof SERVER_ERROR_CODES)[number];\n");
  out.push("/** The name of a route, which is also the name of its method. */");
  out.push("export type RouteName = keyof typeof ROUTES;\n");
  out.push("/** Per-call options every route method takes last. */");
  out.push("export interface CallOptions<Query = never> {");
  out.push("  /** The query string, for routes that take one. */");
  out.push("  readonly query?: Query;");
  out.push("  /** Extra request headers (e.g. `idempotency-key`). */");
  out.push("  readonly headers?: { readonly [name: string]: string };");
  out.push("  /** Aborts the request, and any wait before a retry. */");
  out.push("  readonly signal?: AbortSignal;");
  out.push("}\n");
  out.push("/** A raw request body, for upload routes. */");
  out.push("export type BinaryBody = Blob | ArrayBuffer | Uint8Array<ArrayBuffer>;\n");
  out.push("/** What {@link RouteMethods} hands to the client for each call. */");
  out.push("export interface RouteCall {");
  out.push("  readonly params: { readonly [name: string]: string | number | boolean } | undefined;");
  out.push("  readonly body: unknown;");
  out.push("  readonly options: CallOptions<object> | undefined;");
  out.push("}\n");
  // Named types per route, so apps can say `Rest.ListGuildsResponse`.
  for (const r of routes) {
    const op = `paths[${JSON.stringify(r.route)}][${JSON.stringify(r.method)}]`;
    const T = pascal(r.name);
    r.types = {};
    out.push(`// ${r.method.toUpperCase()} ${r.route}`);
    if (r.pathParams.length > 0) {
      out.push(`export type ${T}Params = ${op}["parameters"]["path"];`);
      r.types.params = `${T}Params`;
    }
    if (r.hasQuery) {
      out.push(`export type ${T}Query = NonNullable<${op}["parameters"]["query"]>;`);
      r.types.query = `${T}Query`;
    }
    if (r.body.kind === "json") {
      out.push(`export type ${T}Body = NonNullable<${op}["requestBody"]>["content"][${JSON.stringify(r.body.contentType)}];`);
      r.types.body = `${T}Body`;
    } else if (r.body.kind === "binary") {
      r.types.body = "BinaryBody";
    }
    if (r.success.kind === "json") {
      out.push(`export type ${T}Response = ${op}["responses"][${r.success.status}]["content"][${JSON.stringify(r.success.contentType)}];`);
      r.types.result = `${T}Response`;
    } else {
      r.types.result = { text: "string", binary: "Blob", empty: "void" }[r.success.kind];
    }
    out.push("");
  }
  out.push("/** One typed method per route; the client supplies `request`. */");
  out.push("export abstract class RouteMethods {");
  out.push("  protected abstract request(route: RouteSpec, call: RouteCall): Promise<unknown>;");
  for (const r of routes) {
    const params = [];
    if (r.types.params) params.push(`params: ${r.types.params}`);
    if (r.types.body) params.push(r.body.kind === "json" && !r.body.required ? `body?: ${r.types.body}` : `body: ${r.types.body}`);
    const queryType = r.types.query ?? "never";
    if (r.queryRequired && params.some((p) => p.startsWith("body?"))) fail(`${r.key}: required query after optional body`);
    const optional = r.queryRequired || (r.body.kind === "json" && !r.body.required) ? "" : "?";
    params.push(`options${optional}: CallOptions<${queryType}>${r.queryRequired ? ` & { readonly query: ${queryType} }` : ""}`);
    const call = `{ params: ${r.types.params ? "params" : "undefined"}, body: ${r.types.body ? "body" : "undefined"}, options }`;
    out.push("");
    const where = `\`${r.method.toUpperCase()} ${r.route}\``;
    const text = !r.summary ? where : r.summary.startsWith(`\`${r.method.toUpperCase()} `) ? r.summary : `${where}: ${r.summary}`;
    out.push(`  /** ${escapeDoc(text)} */`);
    out.push(`  ${r.name}(${params.join(", ")}): Promise<${r.types.result}> {`);
    out.push(`    return this.request(ROUTES.${r.name}, ${call}) as Promise<${r.types.result}>;`);
    out.push("  }");
  }
  out.push("}");
  out.push("");
  return { "openapi.ts": openapiTs, "routes.ts": out.join("\n") };
}

/**
 * A route's method name: its `operationId` when that is unique in the
 * document; otherwise (utoipa names operations after handler functions, and
 * `list`, `create`, `delete` recur across modules) the operationId (or the
 * HTTP method) followed by the resource, the path's last literal segment:
 * plural for a list, singular otherwise (`listGuilds`, `deleteMessage`).
 */
function methodName(operationId, idCounts, method, route) {
  if (operationId !== undefined && idCounts.get(operationId) === 1) return camel(operationId);
  const verb = operationId ?? method;
  const literal = route.split("/").filter((s) => s !== "" && !s.startsWith("{")).at(-1) ?? "root";
  const plural = verb === "list" || (verb === "get" && !route.endsWith("}"));
  const noun = plural || !literal.endsWith("s") ? literal : literal.slice(0, -1);
  return camel(`${verb}_${noun}`);
}

function requestBodyKind(body, where) {
  if (body === undefined) return { kind: "none" };
  const types = Object.keys(body.content ?? {});
  const json = types.find((t) => t === "application/json" || t.endsWith("+json"));
  if (json !== undefined) return { kind: "json", contentType: json, required: body.required === true };
  if (types.length > 0) return { kind: "binary", required: true };
  fail(`${where}: a request body without content`);
}

function successResponse(document, op, where) {
  const codes = Object.keys(op.responses ?? {}).filter((c) => /^2\d\d$/.test(c)).sort();
  if (codes.length === 0) fail(`${where}: no success response`);
  const status = Number(codes[0]);
  const response = deref(document, op.responses[codes[0]]);
  const types = Object.keys(response.content ?? {});
  const json = types.find((t) => t === "application/json" || t.endsWith("+json"));
  if (json !== undefined) return { kind: "json", contentType: json, status };
  if (types.some((t) => t.startsWith("text/"))) return { kind: "text", status };
  if (types.length > 0) return { kind: "binary", status };
  return { kind: "empty", status };
}

function danglingRefs(document) {
  const found = new Set();
  const walk = (node) => {
    if (Array.isArray(node)) node.forEach(walk);
    else if (typeof node === "object" && node !== null) {
      for (const [key, value] of Object.entries(node)) {
        if (key === "$ref" && typeof value === "string") {
          if (!pointerResolves(document, value)) found.add(value);
        } else {
          walk(value);
        }
      }
    }
  };
  walk(document);
  return [...found].sort();
}

function pointerResolves(root, ref) {
  if (!ref.startsWith("#/")) return false;
  let node = root;
  for (const raw of ref.slice(2).split("/")) {
    const segment = decodeURIComponent(raw).replaceAll("~1", "/").replaceAll("~0", "~");
    if (typeof node !== "object" || node === null || !Object.hasOwn(node, segment)) return false;
    node = node[segment];
  }
  return true;
}

function deref(document, node) {
  let current = node;
  for (let hops = 0; current && typeof current.$ref === "string"; hops += 1) {
    if (hops > 16) fail(`$ref loop at ${node.$ref}`);
    current = resolvePointer(document, current.$ref, "openapi");
  }
  return current;
}

// ---------------------------------------------------------------------------
// Helpers

function banner(source) {
  return `// Generated by scripts/generate.mjs from ${source}. Do not edit by hand:\n// change the source document and run \`npm run generate\`.\n/* eslint-disable */\n`;
}

function doc(text, indent) {
  if (typeof text !== "string" || text.trim() === "") return "";
  const lines = escapeDoc(text.trim()).split("\n");
  if (lines.length === 1) return `${indent}/** ${lines[0]} */\n`;
  return `${indent}/**\n${lines.map((l) => `${indent} *${l ? ` ${l}` : ""}`).join("\n")}\n${indent} */\n`;
}

function escapeDoc(text) {
  return text.replaceAll("*/", "*\\/");
}

/** A JS literal of a JSON value, indented, keys quoted only when needed. */
function literal(value, indent) {
  if (Array.isArray(value)) {
    if (value.every((v) => typeof v !== "object" || v === null)) return `[${value.map((v) => JSON.stringify(v)).join(", ")}]`;
    const inner = `${indent}  `;
    return `[\n${value.map((v) => `${inner}${literal(v, inner)},`).join("\n")}\n${indent}]`;
  }
  if (typeof value === "object" && value !== null) {
    const entries = Object.entries(value);
    if (entries.length === 0) return "{}";
    const inner = `${indent}  `;
    return `{\n${entries.map(([k, v]) => `${inner}${propName(k)}: ${literal(v, inner)},`).join("\n")}\n${indent}}`;
  }
  return JSON.stringify(value);
}

function propName(name) {
  return /^[A-Za-z_$][\w$]*$/.test(name) ? name : JSON.stringify(name);
}

function pascal(text) {
  return String(text)
    .split(/[^A-Za-z0-9]+/)
    .filter(Boolean)
    .map((w) => w[0].toUpperCase() + w.slice(1))
    .join("");
}

function camel(text) {
  const p = pascal(text);
  return p[0].toLowerCase() + p.slice(1);
}

function relative(file) {
  return path.relative(repoRoot, file).split(path.sep).join("/");
}

function parseArgs(argv) {
  const out = {};
  for (let i = 0; i < argv.length; i += 2) {
    const flag = argv[i];
    const value = argv[i + 1];
    if (!["--openapi", "--events", "--out"].includes(flag) || value === undefined) {
      fail(`usage: generate.mjs [--openapi FILE] [--events FILE] [--out DIR]`);
    }
    out[flag.slice(2)] = path.resolve(value);
  }
  return out;
}

function fail(message) {
  console.error(`generate: ${message}`);
  process.exit(1);
}

await main();
