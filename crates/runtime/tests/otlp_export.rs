//! Span export: with `FILAMENT_OTLP_ENDPOINT` set, `telemetry::init_from`
//! sends Filament's spans to an OTLP/gRPC collector (here a fake one on
//! port 0) under the configured service name, with the W3C trace id the
//! logs carry, and `telemetry::shutdown` flushes the last batch. Its own
//! test binary, because it installs the process's global subscriber.

use std::time::Duration;

use filament_runtime::Env;
use filament_runtime::telemetry::{self, OTLP_ENDPOINT_VAR, OTLP_SERVICE_NAME_VAR};
use filament_runtime::trace::TraceContext;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use tokio::sync::mpsc;

const TRACEPARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
const TRACE_ID: [u8; 16] = [
    0x0a, 0xf7, 0x65, 0x19, 0x16, 0xcd, 0x43, 0xdd, 0x84, 0x48, 0xeb, 0x21, 0x1c, 0x80, 0x31, 0x9c,
];
const PARENT_SPAN_ID: [u8; 8] = [0xb7, 0xad, 0x6b, 0x71, 0x69, 0x20, 0x33, 0x31];
const SERVICE_NAME: &str = "filament-otlp-test";

/// A collector that passes on every export it receives.
struct FakeCollector(mpsc::UnboundedSender<ExportTraceServiceRequest>);

#[tonic::async_trait]
impl TraceService for FakeCollector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let _ = self.0.send(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

fn service_name(request: &ExportTraceServiceRequest) -> Vec<String> {
    request
        .resource_spans
        .iter()
        .filter_map(|spans| spans.resource.as_ref())
        .flat_map(|resource| &resource.attributes)
        .filter(|attribute| attribute.key == "service.name")
        .filter_map(
            |attribute| match attribute.value.as_ref()?.value.as_ref()? {
                Value::StringValue(name) => Some(name.clone()),
                _ => None,
            },
        )
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_reach_the_collector_with_the_service_name_and_the_w3c_trace_id() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (received, mut exports) = mpsc::unbounded_channel();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(FakeCollector(received)))
            .serve_with_incoming(filament_runtime::net::grpc_incoming(listener)),
    );

    let env = Env::from_pairs([
        (OTLP_ENDPOINT_VAR, format!("http://{addr}")),
        (OTLP_SERVICE_NAME_VAR, SERVICE_NAME.to_owned()),
    ]);
    telemetry::init_from(&env).expect("valid settings");

    let trace = TraceContext::parse(TRACEPARENT).expect("valid traceparent");
    let sent_on;
    {
        // A debug span, as `grpc_call` and `deliver_event` are: exported
        // even though the logs filter at the default `info`.
        let span = tracing::debug_span!(target: "filament_test", "delivered");
        filament_runtime::trace::set_parent(&span, &trace);
        let _entered = span.enter();
        tracing::info!("inside the exported span");
        // What this process sends on names the exported span, so the
        // callee's span nests under it.
        sent_on = trace.child();
    }
    // Not one of Filament's spans: never exported.
    drop(tracing::info_span!(target: "hyper", "dependency"));
    telemetry::shutdown().await;

    let export = tokio::time::timeout(Duration::from_secs(10), exports.recv())
        .await
        .expect("an export within 10 s")
        .expect("collector running");
    assert_eq!(service_name(&export), [SERVICE_NAME]);
    let spans: Vec<_> = export
        .resource_spans
        .iter()
        .flat_map(|resource| &resource.scope_spans)
        .flat_map(|scope| &scope.spans)
        .collect();
    assert_eq!(spans.len(), 1, "{spans:?}");
    assert_eq!(spans[0].name, "delivered");
    assert_eq!(spans[0].trace_id, TRACE_ID);
    assert_eq!(spans[0].parent_span_id, PARENT_SPAN_ID);
    let exported_span_id = spans[0].span_id.iter().fold(String::new(), |mut hex, b| {
        hex.push_str(&format!("{b:02x}"));
        hex
    });
    assert_eq!(
        sent_on.header(),
        format!("00-0af7651916cd43dd8448eb211c80319c-{exported_span_id}-01")
    );
}

#[test]
fn unset_exports_nothing_and_a_bad_endpoint_names_the_variable() {
    assert_eq!(
        telemetry::otlp_config(&Env::default(), "filament-api").expect("unset is valid"),
        None
    );
    let env = Env::from_pairs([(OTLP_ENDPOINT_VAR, "http://collector:4317")]);
    let config = telemetry::otlp_config(&env, "filament-api")
        .expect("valid")
        .expect("set");
    assert_eq!(config.service_name, "filament-api");
    let env = Env::from_pairs([(OTLP_ENDPOINT_VAR, "collector:4317")]);
    let err = telemetry::otlp_config(&env, "filament-api")
        .expect_err("no scheme")
        .to_string();
    assert!(err.starts_with("FILAMENT_OTLP_ENDPOINT="), "{err}");
}
