//! The REST surface of the contract, on axum. Handlers are grouped by area;
//! each parses its input into domain values, calls the store, and publishes
//! the resulting events after the store call returned.

mod attachments;
mod auth;
mod channels;
mod client_ip;
mod extract;
mod friends;
mod guilds;
pub(crate) mod idempotency;
mod members;
pub(crate) mod messages;
mod moderation;
mod observe;
mod overrides;
mod profiles;
pub(crate) mod rate_limit;
mod reactions;
mod roles;
mod search;
mod sliding;
mod system;
mod uploads;
mod voice;
mod workspace;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderName, StatusCode};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

pub use extract::authenticate_session;

pub(crate) use client_ip::moderation_config_from_env;

use crate::state::AppState;

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The api's routes, without a prefix (the ingress strips `/api`).
pub fn router(state: AppState, ready: impl Fn() -> bool + Clone + Send + Sync + 'static) -> Router {
    let timeout = state.config().request_timeout;
    let body_limit = state.config().max_body_bytes;
    // One line per area; each area module owns its routes.
    Router::new()
        .merge(system::routes())
        .merge(auth::routes())
        .merge(guilds::routes())
        .merge(members::routes())
        .merge(moderation::routes())
        .merge(channels::routes())
        .merge(messages::routes())
        .merge(roles::routes())
        .merge(overrides::routes())
        .merge(workspace::routes())
        .merge(reactions::routes())
        .merge(attachments::routes())
        .merge(profiles::routes())
        .merge(friends::routes())
        .merge(search::routes(&state))
        .merge(voice::routes())
        // The contract's "IP" column: one gate for every guild route it marks.
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            client_ip::refuse_ip_banned,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            rate_limit::enforce,
        ))
        .with_state(state)
        .merge(filament_runtime::probes::http_routes(ready))
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            timeout,
        ))
        .layer(TraceLayer::new_for_http().make_span_with(observe::request_span))
        .layer(axum::middleware::from_fn(observe::observe))
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
}
