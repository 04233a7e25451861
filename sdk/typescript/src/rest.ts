/**
 * The REST client: one typed method per route of docs/openapi.json
 * (generated into {@link RouteMethods}), over `fetch`.
 *
 * - Authenticated routes send `Authorization: Bearer <access token>` from
 *   the client's {@link Session}, refreshed first when close to expiry.
 * - A 401 on an authenticated route refreshes the token once and retries
 *   once; a second 401 (or a refused refresh) is thrown.
 * - A 429 waits for `retry-after` and retries, a bounded number of times.
 * - Any other error answer is thrown as an {@link ApiError} whose `code` is
 *   the body's `{"error":"<code>"}`.
 */

import { ApiError, NetworkError, errorCodeOf, parseRetryAfter } from "./errors.js";
import { ROUTES, RouteMethods, type BinaryBody, type RouteCall, type RouteSpec } from "./generated/routes.js";
import { Session, type SessionTokens, type TokenPair } from "./session.js";
import { defaultTimers, sleep, type Timers } from "./timers.js";

export interface RestClientOptions {
  /** Where the api is mounted: `/api` on the app's own origin by default. */
  readonly baseUrl?: string;
  /** The `fetch` to use. Default `globalThis.fetch`. */
  readonly fetch?: typeof globalThis.fetch;
  /** Tokens restored from storage. */
  readonly tokens?: SessionTokens;
  /** Called whenever the session's tokens change (`null`: logged out). */
  readonly onSessionChange?: (tokens: SessionTokens | null) => void;
  /** How many times a 429 is waited out before it is thrown. Default 3. */
  readonly maxRateLimitRetries?: number;
  /** A `retry-after` longer than this is thrown at once. Default 60 s. */
  readonly maxRetryAfterMs?: number;
  /** The wait after a 429 without `retry-after`. Default 1 s. */
  readonly defaultRetryAfterMs?: number;
  /** Timers, for the waits. */
  readonly timers?: Timers;
  /** The clock, in epoch milliseconds. Default `Date.now`. */
  readonly now?: () => number;
}

type QueryValue = string | number | boolean | null | undefined | readonly (string | number | boolean)[];

export class RestClient extends RouteMethods {
  /** The tokens this client authenticates with; pass it to `GatewayClient`. */
  readonly session: Session;
  private readonly baseUrl: string;
  private readonly fetchFn: typeof globalThis.fetch;
  private readonly timers: Timers;
  private readonly now: () => number;
  private readonly maxRateLimitRetries: number;
  private readonly maxRetryAfterMs: number;
  private readonly defaultRetryAfterMs: number;

  constructor(options: RestClientOptions = {}) {
    super();
    this.baseUrl = (options.baseUrl ?? "/api").replace(/\/+$/, "");
    const fetchFn = options.fetch ?? globalThis.fetch;
    // Called unbound, a browser's fetch throws "Illegal invocation".
    this.fetchFn = (input, init) => fetchFn(input, init);
    this.timers = options.timers ?? defaultTimers;
    this.now = options.now ?? Date.now;
    this.maxRateLimitRetries = options.maxRateLimitRetries ?? 3;
    this.maxRetryAfterMs = options.maxRetryAfterMs ?? 60_000;
    this.defaultRetryAfterMs = options.defaultRetryAfterMs ?? 1000;
    this.session = new Session({
      refresh: (refreshToken) => this.exchangeRefreshToken(refreshToken),
      now: this.now,
      ...(options.tokens === undefined ? {} : { tokens: options.tokens }),
      ...(options.onSessionChange === undefined ? {} : { onChange: options.onSessionChange }),
    });
  }

  /** Whether the client holds a session. */
  get loggedIn(): boolean {
    return this.session.tokens !== null;
  }

  protected override async request(route: RouteSpec, call: RouteCall): Promise<unknown> {
    let rateLimited = 0;
    let refreshed = false;
    for (;;) {
      const token = route.auth ? (await this.session.accessToken()).token : undefined;
      const response = await this.send(route, call, token);

      if (response.status === 429 && rateLimited < this.maxRateLimitRetries) {
        const wait = parseRetryAfter(response.headers.get("retry-after"), this.now()) ?? this.defaultRetryAfterMs;
        if (wait <= this.maxRetryAfterMs) {
          rateLimited += 1;
          await discard(response);
          await sleep(wait, this.timers, call.options?.signal);
          continue;
        }
      }
      if (response.status === 401 && token !== undefined && !refreshed) {
        refreshed = true;
        await discard(response);
        // Throws when the refresh itself is refused: the session is over.
        await this.session.accessToken({ rejected: token });
        continue;
      }
      if (!response.ok) throw await this.errorFrom(response);

      const result = await this.readSuccess(route, response);
      this.applySessionEffect(route, result);
      return result;
    }
  }

  private async send(route: RouteSpec, call: RouteCall, token: string | undefined): Promise<Response> {
    const headers = new Headers(call.options?.headers);
    if (token !== undefined) headers.set("authorization", `Bearer ${token}`);
    if (route.response === "json") headers.set("accept", "application/json");
    let body: BodyInit | undefined;
    if (route.body === "json" && call.body !== undefined) {
      headers.set("content-type", "application/json");
      body = JSON.stringify(call.body);
    } else if (route.body === "binary") {
      body = call.body as BinaryBody;
    }
    const init: RequestInit = { method: route.method, headers, credentials: "omit" };
    if (body !== undefined) init.body = body;
    if (call.options?.signal !== undefined) init.signal = call.options.signal;
    const url = this.url(route, call);
    try {
      return await this.fetchFn(url, init);
    } catch (error) {
      if (call.options?.signal?.aborted) throw error;
      throw new NetworkError(`${route.method} ${route.path} failed`, { cause: error });
    }
  }

  /** The request URL: base, path with its parameters, query string. */
  url(route: RouteSpec, call: Pick<RouteCall, "params" | "options">): string {
    const path = route.path.replace(/\{([^}]+)\}/g, (_, name: string) => {
      const value = call.params?.[name];
      if (value === undefined || value === "") throw new TypeError(`${route.name}: missing path parameter ${name}`);
      return encodeURIComponent(String(value));
    });
    const search = new URLSearchParams();
    const query = (call.options?.query ?? {}) as { readonly [key: string]: QueryValue };
    for (const [key, value] of Object.entries(query)) {
      if (value === undefined || value === null) continue;
      for (const item of Array.isArray(value) ? value : [value]) search.append(key, String(item));
    }
    const qs = search.toString();
    return `${this.baseUrl}${path}${qs === "" ? "" : `?${qs}`}`;
  }

  private async errorFrom(response: Response): Promise<ApiError> {
    let body: unknown;
    try {
      body = JSON.parse(await response.text());
    } catch {
      body = undefined;
    }
    const retryAfterMs = parseRetryAfter(response.headers.get("retry-after"), this.now());
    const requestId = response.headers.get("x-request-id") ?? undefined;
    return new ApiError(response.status, errorCodeOf(response.status, body), {
      ...(retryAfterMs === undefined ? {} : { retryAfterMs }),
      ...(requestId === undefined ? {} : { requestId }),
    });
  }

  private async readSuccess(route: RouteSpec, response: Response): Promise<unknown> {
    switch (route.response) {
      case "empty":
        await discard(response);
        return undefined;
      case "text":
        return response.text();
      case "binary":
        return response.blob();
      case "json": {
        const text = await response.text();
        try {
          return JSON.parse(text);
        } catch {
          throw new ApiError(response.status, "invalid_response", { message: `${route.name}: answer is not JSON` });
        }
      }
    }
  }

  private applySessionEffect(route: RouteSpec, result: unknown): void {
    if (route.session === "clear") {
      this.session.set(null);
    } else if (route.session === "set") {
      if (!isTokenPair(result)) {
        throw new ApiError(200, "invalid_response", { message: `${route.name}: answer is not a token pair` });
      }
      this.session.setPair(result);
    }
  }

  /** `POST /auth/refresh`, without the session effect (the session applies it). */
  private async exchangeRefreshToken(refreshToken: string): Promise<TokenPair> {
    const route = Object.values(ROUTES as { readonly [name: string]: RouteSpec }).find(
      (r) => r.method === "POST" && r.path === "/auth/refresh",
    );
    if (route === undefined) throw new TypeError("the api document has no POST /auth/refresh");
    const response = await this.send(route, { params: undefined, body: { refresh_token: refreshToken }, options: undefined }, undefined);
    if (!response.ok) throw await this.errorFrom(response);
    const result = await this.readSuccess(route, response);
    if (!isTokenPair(result)) throw new ApiError(response.status, "invalid_response", { message: "refresh: not a token pair" });
    return result;
  }
}

function isTokenPair(value: unknown): value is TokenPair {
  if (typeof value !== "object" || value === null) return false;
  const pair = value as { readonly [key: string]: unknown };
  return (
    typeof pair.access_token === "string" &&
    typeof pair.refresh_token === "string" &&
    typeof pair.expires_in_secs === "number" &&
    pair.expires_in_secs >= 0
  );
}

async function discard(response: Response): Promise<void> {
  try {
    await response.body?.cancel();
  } catch {
    // Nothing to release.
  }
}
