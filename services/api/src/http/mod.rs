//! The REST surface of the contract, on axum. Handlers are grouped by area;
//! each parses its input into domain values, calls the store, and publishes
//! the resulting events after the store call returned.

mod auth;
mod channels;
mod extract;
mod guilds;
mod messages;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderName, StatusCode};
use axum::routing::get;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

pub use extract::authenticate;

use crate::state::AppState;

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The api's routes, without a prefix (the ingress strips `/api`).
pub fn router(state: AppState, ready: impl Fn() -> bool + Clone + Send + Sync + 'static) -> Router {
    let timeout = state.config().request_timeout;
    let body_limit = state.config().max_body_bytes;
    Router::new()
        .route(
            "/health",
            get(|| async { axum::Json(serde_json::json!({ "status": "ok" })) }),
        )
        // One line per area; each area module owns its routes.
        .merge(auth::routes())
        .merge(guilds::routes())
        .merge(channels::routes())
        .merge(messages::routes())
        .with_state(state)
        .merge(filament_runtime::probes::http_routes(ready))
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            timeout,
        ))
        .layer(TraceLayer::new_for_http())
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
}
