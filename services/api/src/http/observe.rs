//! What an operator sees of each REST request: its duration in a histogram
//! by route template and status class, and a span carrying the request id
//! and the W3C trace id, so the request's log lines, the gRPC calls it made
//! and the events it published can be followed across processes.
//!
//! A request arriving with a valid `traceparent` continues that trace; any
//! other starts one. The trace context is the request's task-local for the
//! handler's whole run (`filament_runtime::trace::scope`), which is where
//! the fanout and the gRPC clients pick it up.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use filament_runtime::trace::{self, TRACEPARENT, TraceContext};
use tracing::Span;

use crate::admin::{Edge, UNMATCHED_ROUTE};

use super::REQUEST_ID;

/// The prefix the all-in-one origin mounts the api under (the production
/// ingress strips it before the api sees the request). No api route starts
/// with it, so it is removed to give every deployment the same labels.
const MOUNT_PREFIX: &str = "/api";

/// The request's route template, as the api itself declares it.
fn route_of(request: &Request) -> &str {
    request
        .extensions()
        .get::<MatchedPath>()
        .map_or(UNMATCHED_ROUTE, |matched| {
            let route = matched.as_str();
            route
                .strip_prefix(MOUNT_PREFIX)
                .filter(|rest| rest.starts_with('/'))
                .unwrap_or(route)
        })
}

/// Continues or starts the request's trace, times it, and answers with
/// the `traceparent` this process used, so a client can quote it.
pub async fn observe(mut request: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = route_of(&request).to_owned();
    let edge = request.extensions().get::<Arc<Edge>>().cloned();
    let trace = request
        .headers()
        .get(TRACEPARENT)
        .and_then(|value| value.to_str().ok())
        .and_then(TraceContext::parse)
        .map_or_else(TraceContext::new_root, |caller| caller.child());
    request.extensions_mut().insert(trace.clone());
    let header = HeaderValue::from_str(&trace.header()).ok();
    // Set by the request-id layer in front of this one.
    let request_id = request
        .headers()
        .get(REQUEST_ID)
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned);
    let mut response = trace::scope_request(trace, request_id.as_deref(), next.run(request)).await;
    if let Some(header) = header {
        response.headers_mut().insert(TRACEPARENT, header);
    }
    if let Some(edge) = edge {
        edge.metrics
            .request_served(&route, response.status(), started.elapsed().as_secs_f64());
    }
    response
}

/// The request's span (tower-http's `TraceLayer`): method, route template,
/// request id and trace id. Never the query string or a header value: a
/// token or password must not reach the logs.
pub fn request_span(request: &Request) -> Span {
    let route = route_of(request);
    let request_id = request
        .headers()
        .get(REQUEST_ID)
        .and_then(|value| value.to_str().ok())
        .and_then(trace::usable_request_id)
        .unwrap_or_default();
    let trace = request.extensions().get::<TraceContext>();
    let trace_id = trace.map(TraceContext::trace_id).unwrap_or_default();
    let span = tracing::info_span!(
        "http_request",
        method = %request.method(),
        route,
        request_id,
        trace_id,
    );
    // Exported spans (FILAMENT_OTLP_ENDPOINT) join the same trace.
    if let Some(trace) = trace {
        trace::set_parent(&span, trace);
    }
    span
}
