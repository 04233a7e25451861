/**
 * Filament's browser client: typed REST calls, a self-healing gateway
 * connection, and the event types generated from docs/events.json.
 */

export { RestClient, type RestClientOptions } from "./rest.js";
export {
  GatewayClient,
  CLOSE_CODES,
  closeAction,
  MAX_NONCE_BYTES,
  MAX_RESUME_SCOPES,
  type CloseAction,
  type ClosePolicy,
  type GatewayClientOptions,
  type GatewayMessageCreate,
  type GatewayState,
  type HeartbeatOptions,
  type MissedEvents,
  type ResumeOutcome,
  type StateChange,
  type StopReason,
  type Subscription,
  type WebSocketConstructor,
  type WebSocketLike,
} from "./gateway.js";
export {
  Dispatcher,
  isEventType,
  isLogPositions,
  MAX_FRAME_BYTES,
  POSITIONS_HEADROOM_BYTES,
  POSITION_TOKEN_PATTERN,
  PROTOCOL_VERSION,
  type DispatchOutcome,
  type DispatcherOptions,
  type EventHandler,
  type InvalidFrame,
  type InvalidReason,
  type LogPositions,
} from "./dispatcher.js";
export { Session, type AccessToken, type SessionOptions, type SessionTokens, type TokenPair, type TokenProvider } from "./session.js";
export { Backoff, type BackoffOptions } from "./backoff.js";
export {
  ApiError,
  GatewayError,
  NetworkError,
  type ApiErrorCode,
  type ClientErrorCode,
  type GatewayErrorCode,
} from "./errors.js";
export { validate, SUPPORTED_KEYWORDS, type JsonSchema, type JsonType, type JsonValue, type ValidationResult } from "./validate.js";
export type { Timers } from "./timers.js";
export * from "./generated/events.js";
export { DISPATCH_TABLE, type DispatchEntry } from "./generated/event-schemas.js";
export { ROUTES, type RouteName, type RouteSpec, type CallOptions, type BinaryBody, type ServerErrorCode } from "./generated/routes.js";
/** Request and response types per route: `Rest.ListGuildsResponse`, `Rest.PostMessageBody`, … */
export type * as Rest from "./generated/routes.js";
export type { paths, components, operations } from "./generated/openapi.js";
