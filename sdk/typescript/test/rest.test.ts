import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { describe, it } from "node:test";

import { ApiError, NetworkError } from "../src/errors.js";
import { ROUTES, type RouteCall, type RouteSpec } from "../src/generated/routes.js";
import { RestClient, type RestClientOptions } from "../src/rest.js";
import type { SessionTokens } from "../src/session.js";
import { FakeClock, readRepoJson, repoRoot } from "./fakes.js";

interface Recorded {
  readonly url: string;
  readonly method: string;
  readonly headers: Headers;
  readonly body: unknown;
}

type Responder = (request: Recorded) => Response;

const json = (status: number, body: unknown, headers: Record<string, string> = {}): Response =>
  new Response(JSON.stringify(body), { status, headers: { "content-type": "application/json", ...headers } });

const pair = (n: number, expiresInSecs = 900) => ({
  access_token: `access-${n}`,
  refresh_token: `refresh-${n}`,
  expires_in_secs: expiresInSecs,
});

/** Exposes the generic request path, so tests do not depend on operation names. */
class TestClient extends RestClient {
  call(route: RouteSpec, call: Partial<RouteCall> = {}): Promise<unknown> {
    return this.request(route, { params: call.params, body: call.body, options: call.options });
  }
}

function route(overrides: Partial<RouteSpec>): RouteSpec {
  return {
    name: "test",
    method: "GET",
    path: "/guilds",
    pathParams: [],
    body: "none",
    response: "json",
    status: 200,
    auth: true,
    session: "none",
    ...overrides,
  };
}

const REFRESH = route({ name: "refresh", method: "POST", path: "/auth/refresh", body: "json", auth: false, session: "set" });

function setup(responders: Responder[], options: Partial<RestClientOptions> = {}, tokens?: SessionTokens) {
  const clock = new FakeClock();
  const requests: Recorded[] = [];
  const sessions: (SessionTokens | null)[] = [];
  const fetch = async (input: RequestInfo | URL, init?: RequestInit): Promise<Response> => {
    const recorded: Recorded = {
      url: String(input),
      method: init?.method ?? "GET",
      headers: new Headers(init?.headers),
      body: typeof init?.body === "string" ? JSON.parse(init.body) : init?.body,
    };
    requests.push(recorded);
    const next = responders.shift();
    if (next === undefined) throw new Error(`unexpected request ${recorded.method} ${recorded.url}`);
    return next(recorded);
  };
  const client = new TestClient({
    baseUrl: "https://chat.example/api/",
    fetch,
    timers: clock,
    now: clock.clock,
    onSessionChange: (t) => sessions.push(t),
    ...(tokens === undefined ? {} : { tokens }),
    ...options,
  });
  return { client, clock, requests, sessions };
}

const loggedIn = (clock: FakeClock | { now: number } = { now: 1_000_000 }): SessionTokens => ({
  accessToken: "access-1",
  refreshToken: "refresh-1",
  expiresAtMs: clock.now + 900_000,
});

describe("RestClient requests", () => {
  it("builds the URL from the base, encoded path parameters and the query", async () => {
    const ctx = setup([() => json(200, { ok: true })], {}, loggedIn());
    const spec = route({ path: "/guilds/{guild_id}/reactions/{emoji}", pathParams: ["guild_id", "emoji"] });
    await ctx.client.call(spec, {
      params: { guild_id: "G1", emoji: "👍/x" },
      options: { query: { limit: 50, before: undefined, tags: ["a", "b"] } },
    });
    assert.equal(ctx.requests[0]?.url, "https://chat.example/api/guilds/G1/reactions/%F0%9F%91%8D%2Fx?limit=50&tags=a&tags=b");
    assert.equal(ctx.requests[0]?.headers.get("authorization"), "Bearer access-1");
    await assert.rejects(ctx.client.call(spec, { params: { guild_id: "G1" } }), TypeError);
  });

  it("sends JSON bodies, and no token on public routes", async () => {
    const ctx = setup([() => json(200, { accepted: true })]);
    const spec = route({ method: "POST", path: "/auth/register", body: "json", auth: false });
    assert.deepEqual(await ctx.client.call(spec, { body: { username: "ada", password: "x".repeat(12) } }), { accepted: true });
    assert.equal(ctx.requests[0]?.headers.get("content-type"), "application/json");
    assert.equal(ctx.requests[0]?.headers.get("authorization"), null);
    assert.deepEqual(ctx.requests[0]?.body, { username: "ada", password: "x".repeat(12) });
  });

  it("stores the pair from login and clears it on logout", async () => {
    const ctx = setup([() => json(200, pair(1)), () => new Response(null, { status: 204 })]);
    const login = route({ method: "POST", path: "/auth/login", body: "json", auth: false, session: "set" });
    await ctx.client.call(login, { body: { username: "ada", password: "pw" } });
    assert.deepEqual(ctx.client.session.tokens, {
      accessToken: "access-1",
      refreshToken: "refresh-1",
      expiresAtMs: ctx.clock.now + 900_000,
    });
    assert.equal(ctx.client.loggedIn, true);
    const logout = route({ method: "POST", path: "/auth/logout", body: "json", response: "empty", auth: false, session: "clear" });
    assert.equal(await ctx.client.call(logout, { body: { refresh_token: "refresh-1" } }), undefined);
    assert.equal(ctx.client.session.tokens, null);
    assert.equal(ctx.sessions.length, 2);
  });

  it("refuses an authenticated call without a session, without a request", async () => {
    const ctx = setup([]);
    await assert.rejects(ctx.client.call(route({})), (e: unknown) => e instanceof ApiError && e.status === 401);
    assert.equal(ctx.requests.length, 0);
  });

  it("refreshes a token close to expiry before using it", async () => {
    const clock = { now: 1_000_000 };
    const ctx = setup([() => json(200, pair(2)), () => json(200, { guilds: [] })], {}, { ...loggedIn(clock), expiresAtMs: clock.now + 10_000 });
    await ctx.client.call(route({}));
    assert.equal(ctx.requests[0]?.url, "https://chat.example/api/auth/refresh");
    assert.deepEqual(ctx.requests[0]?.body, { refresh_token: "refresh-1" });
    assert.equal(ctx.requests[1]?.headers.get("authorization"), "Bearer access-2");
  });
});

describe("RestClient errors", () => {
  it("surfaces {error: code} as a typed ApiError", async () => {
    const ctx = setup([() => json(403, { error: "forbidden" }, { "x-request-id": "req-1" })], {}, loggedIn());
    const error = await ctx.client.call(route({})).catch((e: unknown) => e);
    assert.ok(error instanceof ApiError);
    assert.equal(error.status, 403);
    assert.equal(error.code, "forbidden");
    assert.equal(error.requestId, "req-1");
  });

  it("derives the code from the status when the body is not the api's JSON", async () => {
    const cases: [Response, string][] = [
      [new Response("Payload Too Large", { status: 413 }), "payload_too_large"],
      [new Response("", { status: 408 }), "request_timeout"],
      [new Response("<html>", { status: 502 }), "internal_error"],
      [json(404, { error: "some_code_from_the_future" }), "not_found"],
      [new Response("", { status: 418 }), "unexpected_error"],
    ];
    for (const [response, code] of cases) {
      const ctx = setup([() => response], {}, loggedIn());
      await assert.rejects(ctx.client.call(route({})), (e: unknown) => e instanceof ApiError && e.code === code);
    }
  });

  it("reports an unreadable success as invalid_response, and a failed fetch as NetworkError", async () => {
    const bad = setup([() => new Response("not json", { status: 200 })], {}, loggedIn());
    await assert.rejects(bad.client.call(route({})), (e: unknown) => e instanceof ApiError && e.code === "invalid_response");
    const offline = setup(
      [
        () => {
          throw new TypeError("fetch failed");
        },
      ],
      {},
      loggedIn(),
    );
    await assert.rejects(offline.client.call(route({})), NetworkError);
  });
});

describe("RestClient 429", () => {
  it("waits for retry-after, then retries", async () => {
    const ctx = setup([() => json(429, { error: "rate_limited" }, { "retry-after": "3" }), () => json(200, { ok: 1 })], {}, loggedIn());
    const pending = ctx.client.call(route({}));
    await ctx.clock.advance(2999);
    assert.equal(ctx.requests.length, 1, "still waiting");
    await ctx.clock.advance(1);
    assert.deepEqual(await pending, { ok: 1 });
    assert.equal(ctx.requests.length, 2);
  });

  it("gives up after maxRateLimitRetries, with the retry-after on the error", async () => {
    const limited = () => new Response("Too Many Requests", { status: 429, headers: { "retry-after": "1" } });
    const ctx = setup([limited, limited, limited], { maxRateLimitRetries: 2 }, loggedIn());
    const pending = ctx.client.call(route({})).catch((e: unknown) => e);
    await ctx.clock.advance(10_000);
    const error = await pending;
    assert.ok(error instanceof ApiError);
    assert.equal(error.code, "rate_limited");
    assert.equal(error.retryAfterMs, 1000);
    assert.equal(ctx.requests.length, 3);
  });

  it("does not wait out a retry-after beyond maxRetryAfterMs, and honours an abort", async () => {
    const far = setup([() => json(429, { error: "rate_limited" }, { "retry-after": "120" })], { maxRetryAfterMs: 60_000 }, loggedIn());
    await assert.rejects(far.client.call(route({})), (e: unknown) => e instanceof ApiError && e.retryAfterMs === 120_000);

    const aborted = setup([() => json(429, { error: "rate_limited" }, { "retry-after": "5" })], {}, loggedIn());
    const controller = new AbortController();
    const pending = aborted.client.call(route({}), { options: { signal: controller.signal } });
    await aborted.clock.advance(10);
    controller.abort(new Error("user left"));
    await assert.rejects(pending, /user left/);
    assert.equal(aborted.requests.length, 1);
  });
});

describe("RestClient 401", () => {
  it("refreshes once and retries with the new token", async () => {
    const ctx = setup([() => json(401, { error: "invalid_credentials" }), () => json(200, pair(2)), () => json(200, { ok: 1 })], {}, loggedIn());
    assert.deepEqual(await ctx.client.call(route({})), { ok: 1 });
    assert.deepEqual(
      ctx.requests.map((r) => [r.url.replace("https://chat.example/api", ""), r.headers.get("authorization")]),
      [
        ["/guilds", "Bearer access-1"],
        ["/auth/refresh", null],
        ["/guilds", "Bearer access-2"],
      ],
    );
  });

  it("throws the second 401 instead of refreshing again", async () => {
    const ctx = setup([() => json(401, { error: "invalid_credentials" }), () => json(200, pair(2)), () => json(401, { error: "invalid_credentials" })], {}, loggedIn());
    await assert.rejects(ctx.client.call(route({})), (e: unknown) => e instanceof ApiError && e.status === 401);
    assert.equal(ctx.requests.length, 3);
  });

  it("ends the session when the refresh itself is refused", async () => {
    const ctx = setup([() => json(401, { error: "invalid_credentials" }), () => json(401, { error: "invalid_credentials" })], {}, loggedIn());
    await assert.rejects(ctx.client.call(route({})), (e: unknown) => e instanceof ApiError && e.code === "invalid_credentials");
    assert.equal(ctx.client.session.tokens, null);
    assert.deepEqual(ctx.sessions, [null]);
  });

  it("shares one refresh between concurrent 401s", async () => {
    let refreshes = 0;
    const responders: Responder[] = [];
    const handler: Responder = (request) => {
      if (request.url.endsWith("/auth/refresh")) {
        refreshes += 1;
        return json(200, pair(2));
      }
      return request.headers.get("authorization") === "Bearer access-2" ? json(200, { ok: 1 }) : json(401, { error: "invalid_credentials" });
    };
    for (let i = 0; i < 10; i += 1) responders.push(handler);
    const ctx = setup(responders, {}, loggedIn());
    const results = await Promise.all([ctx.client.call(route({})), ctx.client.call(route({})), ctx.client.call(route({}))]);
    assert.deepEqual(results, [{ ok: 1 }, { ok: 1 }, { ok: 1 }]);
    assert.equal(refreshes, 1);
  });

  it("does not retry a 401 on a public route", async () => {
    const ctx = setup([() => json(401, { error: "invalid_credentials" })]);
    await assert.rejects(ctx.client.call(REFRESH, { body: { refresh_token: "x" } }), (e: unknown) => e instanceof ApiError && e.status === 401);
    assert.equal(ctx.requests.length, 1);
  });
});

describe("generated route table", () => {
  it("has one route per operation of the OpenAPI document, each with its method", () => {
    const source = existsSync(`${repoRoot}docs/openapi.json`) ? "docs/openapi.json" : "sdk/typescript/scripts/fixtures/openapi.fixture.json";
    const document = readRepoJson(source) as { paths: Record<string, Record<string, unknown>> };
    const operations = Object.entries(document.paths)
      .flatMap(([path, item]) =>
        ["get", "put", "post", "patch", "delete"].filter((m) => item[m] !== undefined).map((m) => `${m.toUpperCase()} ${path}`),
      )
      .sort();
    const routes = Object.values(ROUTES as Record<string, RouteSpec>);
    assert.deepEqual(routes.map((r) => `${r.method} ${r.path}`).sort(), operations);
    for (const r of routes) {
      const method = (RestClient.prototype as unknown as Record<string, unknown>)[r.name];
      assert.equal(typeof method, "function", r.name);
    }
    const auth = routes.filter((r) => r.path.startsWith("/auth/"));
    assert.ok(auth.some((r) => r.path === "/auth/refresh" && r.session === "set"));
    assert.ok(auth.some((r) => r.path === "/auth/login" && r.session === "set" && !r.auth));
  });
});
