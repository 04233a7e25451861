//! The REST surface (PROTOCOL.md §2), on axum: an adapter over `domain`,
//! sibling of the gRPC one (`grpc.rs`), and never called by it. Handlers are
//! grouped by area; each parses its input into domain values, calls the
//! domain use case where one exists (`domain::messages`, `domain::sessions`)
//! or else the store, and publishes the resulting events after the store
//! call returned.

mod attachments;
mod auth;
mod channels;
mod client_ip;
mod extract;
mod friends;
mod guilds;
mod idempotency;
mod members;
mod messages;
mod moderation;
mod observe;
mod openapi;
mod overrides;
mod profiles;
mod rate_limit;
mod reactions;
mod roles;
mod search;
mod system;
mod uploads;
mod voice;
mod workspace;

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderName, StatusCode};
use axum::{Extension, Router};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

use crate::state::AppState;

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The api's routes, without a prefix (the ingress strips `/api`).
pub fn router(state: AppState, ready: impl Fn() -> bool + Clone + Send + Sync + 'static) -> Router {
    let timeout = state.config().request_timeout;
    let body_limit = state.config().max_body_bytes;
    let search =
        search::SearchBackend::new(state.config().search_url.as_deref(), state.grpc_clients());
    let (routes, document) = areas(search).split_for_parts();
    let document = openapi::Document(Arc::new(openapi::finish(document)));
    routes
        // An unknown route is a clear `{"error":"not_found"}`, through every
        // layer below like any route (a custom fallback also survives the
        // merge of the probes after the layers).
        .fallback(unknown_route)
        .layer(Extension(document))
        // The IP gate of PROTOCOL.md §1.8: one gate for every guild route it covers.
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            client_ip::refuse_ip_banned,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            rate_limit::enforce,
        ))
        .with_state(state)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            timeout,
        ))
        .layer(TraceLayer::new_for_http().make_span_with(observe::request_span))
        .layer(axum::middleware::from_fn(observe::observe))
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
        // After the layers: a probe is not a request to log, time or count,
        // and a replica that is not ready yet answers 503 to every probe,
        // which the trace layer would log as a failed request each time.
        .merge(filament_runtime::probes::http_routes(ready))
}

async fn unknown_route() -> crate::error::ApiError {
    crate::error::ApiError::NotFound
}

/// The OpenAPI document `GET /openapi.json` serves, built without a state:
/// from the same route table as [`router`].
pub fn openapi_document() -> utoipa::openapi::OpenApi {
    openapi::finish(areas(search::SearchBackend::disconnected()).into_openapi())
}

/// Every area's routes with their documentation; one line per area, each
/// area module owns its routes.
fn areas(search: search::SearchBackend) -> openapi::ApiRouter {
    openapi::new_router()
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
        .merge(search::routes(search))
        .merge(voice::routes())
}
