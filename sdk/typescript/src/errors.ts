/**
 * Errors the client throws. REST failures are {@link ApiError}s carrying the
 * api's `{"error":"<code>"}`; a request that never got an answer is a
 * {@link NetworkError}; gateway operations refused locally are
 * {@link GatewayError}s.
 */

import { SERVER_ERROR_CODES, type ServerErrorCode } from "./generated/routes.js";

/**
 * Codes the client itself assigns: to an error answer whose body is not the
 * api's JSON (a proxy's page, the global limiter's plain-text 429, a 408),
 * or to a success it could not read.
 */
export type ClientErrorCode =
  | "invalid_request"
  | "invalid_credentials"
  | "forbidden"
  | "not_found"
  | "request_timeout"
  | "payload_too_large"
  | "rate_limited"
  | "unavailable"
  | "internal_error"
  | "unexpected_error"
  | "invalid_response";

/** Every code an {@link ApiError} can carry. */
export type ApiErrorCode = ServerErrorCode | ClientErrorCode;

const SERVER_CODES: ReadonlySet<string> = new Set(SERVER_ERROR_CODES);

/** An error answer from the api (or a success the client could not read). */
export class ApiError extends Error {
  override readonly name = "ApiError";
  /** The HTTP status. */
  readonly status: number;
  /** The `error` code of the body, or one derived from the status. */
  readonly code: ApiErrorCode;
  /** The `retry-after` the answer carried, in milliseconds. */
  readonly retryAfterMs: number | undefined;
  /** The `x-request-id` of the answer, for support. */
  readonly requestId: string | undefined;

  constructor(status: number, code: ApiErrorCode, init: { retryAfterMs?: number; requestId?: string; message?: string } = {}) {
    super(init.message ?? `${code} (HTTP ${status})`);
    this.status = status;
    this.code = code;
    this.retryAfterMs = init.retryAfterMs;
    this.requestId = init.requestId;
  }
}

/** `fetch` failed before an answer arrived (offline, DNS, aborted). */
export class NetworkError extends Error {
  override readonly name = "NetworkError";
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
  }
}

/** Why a gateway operation was refused without sending anything. */
export type GatewayErrorCode = "not_connected" | "too_many_subscriptions" | "rate_limited";

/** A gateway operation the client refused locally. */
export class GatewayError extends Error {
  override readonly name = "GatewayError";
  readonly code: GatewayErrorCode;
  constructor(code: GatewayErrorCode, message?: string) {
    super(message ?? code);
    this.code = code;
  }
}

/** The code for an error answer: the body's, when it is the api's JSON. */
export function errorCodeOf(status: number, body: unknown): ApiErrorCode {
  if (typeof body === "object" && body !== null && !Array.isArray(body)) {
    const code = (body as { readonly error?: unknown }).error;
    if (typeof code === "string" && SERVER_CODES.has(code)) return code as ServerErrorCode;
  }
  return codeForStatus(status);
}

/** The code for an answer whose body does not name one. */
export function codeForStatus(status: number): ClientErrorCode {
  switch (status) {
    case 400:
    case 422:
      return "invalid_request";
    case 401:
      return "invalid_credentials";
    case 403:
      return "forbidden";
    case 404:
      return "not_found";
    case 408:
      return "request_timeout";
    case 413:
      return "payload_too_large";
    case 429:
      return "rate_limited";
    case 503:
      return "unavailable";
    default:
      return status >= 500 ? "internal_error" : "unexpected_error";
  }
}

/**
 * A `retry-after` header in milliseconds: delta-seconds or an HTTP date.
 * `undefined` when absent or unreadable.
 */
export function parseRetryAfter(value: string | null, nowMs: number): number | undefined {
  if (value === null) return undefined;
  const text = value.trim();
  if (/^\d+$/.test(text)) return Number(text) * 1000;
  const date = Date.parse(text);
  if (Number.isNaN(date)) return undefined;
  return Math.max(0, date - nowMs);
}
