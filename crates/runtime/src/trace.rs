//! W3C trace context (`traceparent`), so one trace id follows a request
//! from the REST edge through the api's gRPC calls and the event it
//! publishes to the gateway that delivers it, and an operator can grep
//! every process's logs for it.
//!
//! The REST edge accepts a caller's `traceparent` or starts a trace; the
//! context is held in a task-local for the request ([`scope`]), every gRPC
//! client channel sends it as metadata (`crate::grpc_client`), the gRPC
//! server layer
//! (`crate::grpc`) records it in its span, and the api copies it onto the
//! events it publishes.

use std::fmt::Write as _;
use std::future::Future;

/// The header (and gRPC metadata key) that carries the trace context.
pub const TRACEPARENT: &str = "traceparent";
/// The header (and gRPC metadata key) naming one REST request, carried on
/// to the gRPC calls the request makes.
pub const REQUEST_ID: &str = "x-request-id";
/// The longest request id passed on; a longer one is dropped, so a caller
/// cannot fill log lines through it.
const MAX_REQUEST_ID_LEN: usize = 128;

/// A parsed `traceparent`: version 00, trace id, parent span id, flags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    trace_id: String,
    span_id: String,
    flags: u8,
}

impl TraceContext {
    /// Parses a `traceparent` value; `None` for anything the W3C spec says
    /// to ignore (bad length or hex, an all-zero id, version `ff`).
    pub fn parse(value: &str) -> Option<Self> {
        let mut parts = value.trim().split('-');
        let version = parts.next()?;
        let trace_id = parts.next()?;
        let span_id = parts.next()?;
        let flags = parts.next()?;
        // Version 00 has exactly four parts; later versions may add more.
        if version.len() != 2 || !is_lower_hex(version) || version == "ff" {
            return None;
        }
        if version == "00" && parts.next().is_some() {
            return None;
        }
        let valid_id = |id: &str, len: usize| {
            id.len() == len && is_lower_hex(id) && id.bytes().any(|b| b != b'0')
        };
        if !valid_id(trace_id, 32) || !valid_id(span_id, 16) || flags.len() != 2 {
            return None;
        }
        Some(Self {
            trace_id: trace_id.to_owned(),
            span_id: span_id.to_owned(),
            flags: u8::from_str_radix(flags, 16).ok()?,
        })
    }

    /// A new trace, sampled, for a request that arrived without one.
    pub fn new_root() -> Self {
        Self {
            trace_id: random_hex::<16>(),
            span_id: random_hex::<8>(),
            flags: 1,
        }
    }

    /// The same trace with this process's span id: what it sends on. When
    /// spans are exported and the current span belongs to this trace, that
    /// is the exported span's id, so the callee's exported span nests under
    /// it in the collector; otherwise a new one.
    #[must_use]
    pub fn child(&self) -> Self {
        Self {
            trace_id: self.trace_id.clone(),
            span_id: exported_span_id(&self.trace_id).unwrap_or_else(random_hex::<8>),
            flags: self.flags,
        }
    }

    /// The 32 hex digits that name the trace in every process's logs.
    pub fn trace_id(&self) -> &str {
        &self.trace_id
    }

    /// The `traceparent` header value.
    pub fn header(&self) -> String {
        format!("00-{}-{}-{:02x}", self.trace_id, self.span_id, self.flags)
    }
}

/// Makes `trace` the remote parent of `span` for span export
/// ([`crate::telemetry`]), so the exported span carries the same trace id
/// as the logs and the caller's span. Without export it does nothing.
///
/// A trace this process started ([`TraceContext::new_root`]) names a parent
/// span no process exported; collectors show the span as the trace's
/// root.
pub fn set_parent(span: &tracing::Span, trace: &TraceContext) {
    use opentelemetry::trace::{
        SpanContext, SpanId, TraceContextExt as _, TraceFlags, TraceId, TraceState,
    };
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;

    let (Ok(trace_id), Ok(span_id)) = (
        TraceId::from_hex(&trace.trace_id),
        SpanId::from_hex(&trace.span_id),
    ) else {
        return;
    };
    let remote = SpanContext::new(
        trace_id,
        span_id,
        TraceFlags::new(trace.flags),
        true,
        TraceState::default(),
    );
    // An error only says no exporting layer is installed.
    let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(remote));
}

/// The id of the current span as exported, if it is exported and in the
/// trace `trace_id`.
fn exported_span_id(trace_id: &str) -> Option<String> {
    use opentelemetry::trace::TraceContextExt as _;
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;

    let context = tracing::Span::current().context();
    let span = context.span();
    let exported = span.span_context();
    (exported.is_valid() && exported.trace_id().to_string() == trace_id)
        .then(|| exported.span_id().to_string())
}

fn is_lower_hex(value: &str) -> bool {
    value
        .bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn random_hex<const N: usize>() -> String {
    let bytes: [u8; N] = rand::random();
    bytes
        .iter()
        .fold(String::with_capacity(N * 2), |mut hex, b| {
            let _ = write!(hex, "{b:02x}");
            hex
        })
}

/// What a task works on behalf of.
#[derive(Debug, Clone)]
struct Current {
    trace: TraceContext,
    request_id: Option<String>,
}

tokio::task_local! {
    static CURRENT: Current;
}

/// Runs `future` with `trace` as the current trace context.
pub async fn scope<F: Future>(trace: TraceContext, future: F) -> F::Output {
    scope_request(trace, None, future).await
}

/// Runs `future` with `trace` as the current trace context, on behalf of
/// the request `request_id` (if it has a usable one).
pub async fn scope_request<F: Future>(
    trace: TraceContext,
    request_id: Option<&str>,
    future: F,
) -> F::Output {
    let request_id = request_id.and_then(usable_request_id).map(str::to_owned);
    CURRENT.scope(Current { trace, request_id }, future).await
}

/// `future`, run in this task's trace context and tracing span: for a
/// task spawned on behalf of a request, so that what it does (an event it
/// publishes) stays on the request's trace.
pub fn carried<F: Future>(future: F) -> impl Future<Output = F::Output> {
    use tracing::Instrument as _;
    let current = CURRENT
        .try_with(|current| (current.trace.clone(), current.request_id.clone()))
        .ok();
    async move {
        match current {
            Some((trace, request_id)) => scope_request(trace, request_id.as_deref(), future).await,
            None => future.await,
        }
    }
    .instrument(tracing::Span::current())
}

/// The current trace context, if this task runs inside [`scope`].
pub fn current() -> Option<TraceContext> {
    CURRENT.try_with(|current| current.trace.clone()).ok()
}

/// The current request id, if this task runs on behalf of one.
pub fn current_request_id() -> Option<String> {
    CURRENT
        .try_with(|current| current.request_id.clone())
        .ok()
        .flatten()
}

/// `request_id` if it is short, visible ASCII.
pub fn usable_request_id(request_id: &str) -> Option<&str> {
    (!request_id.is_empty()
        && request_id.len() <= MAX_REQUEST_ID_LEN
        && request_id.bytes().all(|b| b.is_ascii_graphic()))
    .then_some(request_id)
}

/// Adds the current trace context (as a child span) and request id to the
/// headers (gRPC metadata) of an outgoing call, unless the call already
/// carries them, so the callee's span carries the same ids. Every channel
/// from [`crate::grpc_client::connect`] does this on every call.
pub(crate) fn inject(headers: &mut http::HeaderMap) {
    if !headers.contains_key(TRACEPARENT)
        && let Some(trace) = current()
        && let Ok(value) = trace.child().header().parse()
    {
        headers.insert(TRACEPARENT, value);
    }
    if !headers.contains_key(REQUEST_ID)
        && let Some(request_id) = current_request_id()
        && let Ok(value) = request_id.parse()
    {
        headers.insert(REQUEST_ID, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn parses_valid_and_ignores_invalid_traceparents() {
        let trace = TraceContext::parse(VALID).expect("valid");
        assert_eq!(trace.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(trace.header(), VALID);
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        ] {
            assert_eq!(TraceContext::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_child_keeps_the_trace_and_a_root_is_valid() {
        let root = TraceContext::new_root();
        assert_eq!(TraceContext::parse(&root.header()), Some(root.clone()));
        let child = root.child();
        assert_eq!(child.trace_id(), root.trace_id());
        assert_ne!(child.header(), root.header());
    }

    #[tokio::test]
    async fn the_scope_is_injected_into_grpc_requests() {
        let trace = TraceContext::parse(VALID).expect("valid");
        let mut headers = http::HeaderMap::new();
        inject(&mut headers);
        assert!(headers.get(TRACEPARENT).is_none());
        scope_request(trace.clone(), Some("req-1"), async {
            inject(&mut headers);
        })
        .await;
        assert_eq!(headers.get(REQUEST_ID).expect("request id"), "req-1");
        let sent = headers.get(TRACEPARENT).expect("injected");
        let sent = TraceContext::parse(sent.to_str().expect("ascii")).expect("valid");
        assert_eq!(sent.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");

        // A call that names its own trace keeps it.
        let mut own = http::HeaderMap::new();
        own.insert(TRACEPARENT, http::HeaderValue::from_static(VALID));
        scope_request(TraceContext::new_root(), Some("req-2"), async {
            inject(&mut own);
        })
        .await;
        assert_eq!(own.get(TRACEPARENT).expect("kept"), VALID);
        assert_eq!(own.get(REQUEST_ID).expect("request id"), "req-2");
    }
}
