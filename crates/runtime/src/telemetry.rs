//! Tracing set-up for binaries: logs filtered by `RUST_LOG` (default
//! `info`), readable text by default, or one JSON object per line with the
//! enclosing spans' fields when `FILAMENT_LOG_FORMAT=json`, which is what a
//! cluster's log pipeline indexes.
//!
//! With `FILAMENT_OTLP_ENDPOINT` set, the spans of Filament's own crates
//! are also exported to an OpenTelemetry collector over OTLP/gRPC, in
//! batches, under the service name `FILAMENT_OTLP_SERVICE_NAME` (default:
//! the binary's name). Their trace ids are the W3C trace ids the logs carry
//! ([`crate::trace::set_parent`]), so a REST post and the gateway's delivery
//! are one trace in the collector as in the logs. Unset, nothing is
//! exported and nothing is connected.
//!
//! Every binary calls [`init`] first thing, so one variable switches every
//! process of a deployment, and [`shutdown`] last, so the spans of the
//! drain are sent before the process exits ([`crate::process::run`] does
//! both).

use std::fmt;
use std::str::FromStr;
use std::sync::OnceLock;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor;
use tracing::Subscriber;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer};

use crate::{ConfigError, Env};

/// The variable that picks the log format.
pub const LOG_FORMAT_VAR: &str = "FILAMENT_LOG_FORMAT";
/// The OTLP/gRPC collector to export spans to (`http://collector:4317`);
/// unset, spans are not exported.
pub const OTLP_ENDPOINT_VAR: &str = "FILAMENT_OTLP_ENDPOINT";
/// The `service.name` exported spans carry; unset, the binary's name.
pub const OTLP_SERVICE_NAME_VAR: &str = "FILAMENT_OTLP_SERVICE_NAME";
/// The service name when neither the variable nor the binary's name gives
/// one.
const DEFAULT_SERVICE_NAME: &str = "filament";
/// Only spans opened by Filament's crates are exported: the exporter's own
/// gRPC stack (tonic, hyper, h2) must not export itself, and a
/// dependency's spans are noise the logs already hold.
const EXPORTED_TARGET_PREFIX: &str = "filament";

/// The exporting tracer, kept for [`shutdown`].
static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

/// How log lines are written to stdout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Human-readable lines, for a terminal.
    #[default]
    Text,
    /// One JSON object per line: timestamp, level, target, the event's
    /// fields, the current span and the list of enclosing spans with their
    /// fields.
    Json,
}

impl FromStr for LogFormat {
    type Err = InvalidLogFormat;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        match value.trim().to_ascii_lowercase().as_str() {
            "text" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            _ => Err(InvalidLogFormat),
        }
    }
}

/// A `FILAMENT_LOG_FORMAT` value other than `text` or `json`.
#[derive(Debug)]
pub struct InvalidLogFormat;

impl fmt::Display for InvalidLogFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("expected `text` or `json`")
    }
}

/// Reads the log format from `env`; unset is [`LogFormat::Text`].
pub fn log_format(env: &Env) -> Result<LogFormat, ConfigError> {
    env.or(LOG_FORMAT_VAR, LogFormat::default())
}

/// Where and as whom spans are exported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtlpConfig {
    pub endpoint: String,
    pub service_name: String,
}

/// Reads the OTLP settings from `env`: `None` when
/// `FILAMENT_OTLP_ENDPOINT` is unset or empty. `default_service_name` is
/// used when `FILAMENT_OTLP_SERVICE_NAME` is not set.
pub fn otlp_config(
    env: &Env,
    default_service_name: &str,
) -> Result<Option<OtlpConfig>, ConfigError> {
    let Some(endpoint) = env.raw(OTLP_ENDPOINT_VAR).map(str::trim) else {
        return Ok(None);
    };
    if endpoint.is_empty() {
        return Ok(None);
    }
    if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
        return Err(ConfigError::Invalid {
            name: OTLP_ENDPOINT_VAR,
            value: endpoint.to_owned(),
            reason: "expected an http:// or https:// URL".to_owned(),
        });
    }
    let service_name = env
        .raw(OTLP_SERVICE_NAME_VAR)
        .map(str::trim)
        .filter(|name| !name.is_empty())
        .unwrap_or(default_service_name);
    Ok(Some(OtlpConfig {
        endpoint: endpoint.to_owned(),
        service_name: service_name.to_owned(),
    }))
}

/// The running executable's file name, the default service name.
fn binary_name() -> String {
    std::env::current_exe()
        .ok()
        .and_then(|path| {
            path.file_stem()
                .map(|stem| stem.to_string_lossy().into_owned())
        })
        .unwrap_or_else(|| DEFAULT_SERVICE_NAME.to_owned())
}

/// Installs the global subscriber, in the format the process environment
/// asks for. Safe to call more than once; later calls do nothing. An
/// invalid `FILAMENT_LOG_FORMAT` is an error naming it, so the binary stops
/// before it logs anything in a format the log pipeline cannot read.
/// Returns the format, so a binary that prints a banner can log it instead
/// when every line must be JSON.
///
/// With `FILAMENT_OTLP_ENDPOINT` set it also starts the span exporter,
/// which needs the tokio runtime: call it from inside one.
pub fn init() -> Result<LogFormat, ConfigError> {
    init_from(&Env::from_process())
}

/// [`init`] with the settings read from `env`.
pub fn init_from(env: &Env) -> Result<LogFormat, ConfigError> {
    let format = log_format(env)?;
    let otlp = otlp_config(env, &binary_name())?;
    let exporter = otlp.as_ref().map(start_export).transpose()?;
    install(format, exporter);
    Ok(format)
}

/// Installs the global subscriber in `format`, without export.
pub fn init_with(format: LogFormat) {
    install(format, None);
}

fn install(format: LogFormat, exporter: Option<SdkTracerProvider>) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // `RUST_LOG` filters the log lines only: the exported spans have their
    // own filter, so `info` logs still export the debug spans (`grpc_call`,
    // `deliver_event`) that join a trace across processes.
    let logs = match format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_target(true)
            .with_filter(filter)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_target(true)
            .with_current_span(true)
            .with_span_list(true)
            .with_filter(filter)
            .boxed(),
    };
    let export = exporter.as_ref().map(export_layer);
    // A second call finds a subscriber installed and changes nothing.
    let installed = tracing_subscriber::registry()
        .with(logs)
        .with(export)
        .try_init()
        .is_ok();
    if installed && let Some(provider) = exporter {
        let _ = PROVIDER.set(provider);
    }
}

/// The exporter: OTLP over the workspace's tonic, in batches sent by a
/// tokio task (the default batch thread has no tokio reactor, which the
/// exporter's HTTP/2 connection needs).
fn start_export(config: &OtlpConfig) -> Result<SdkTracerProvider, ConfigError> {
    let invalid = |reason: String| ConfigError::Invalid {
        name: OTLP_ENDPOINT_VAR,
        value: config.endpoint.clone(),
        reason,
    };
    if tokio::runtime::Handle::try_current().is_err() {
        return Err(invalid("span export needs a tokio runtime".to_owned()));
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(config.endpoint.clone())
        .build()
        .map_err(|err| invalid(err.to_string()))?;
    let processor =
        BatchSpanProcessor::builder(exporter, opentelemetry_sdk::runtime::Tokio).build();
    Ok(SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name(config.service_name.clone())
                .build(),
        )
        .build())
}

fn export_layer<S>(provider: &SdkTracerProvider) -> impl Layer<S> + use<S>
where
    S: Subscriber + for<'span> LookupSpan<'span>,
{
    let only_ours = tracing_subscriber::filter::filter_fn(|metadata| {
        metadata.is_span() && metadata.target().starts_with(EXPORTED_TARGET_PREFIX)
    });
    tracing_opentelemetry::layer()
        .with_tracer(provider.tracer(DEFAULT_SERVICE_NAME))
        .with_filter(only_ours)
}

/// Sends the spans still batched and stops exporting; a no-op without
/// export. Call it once the process has drained, before it exits.
pub async fn shutdown() {
    let Some(provider) = PROVIDER.get().cloned() else {
        return;
    };
    // The SDK blocks this thread until the batch task (on the runtime) has
    // sent what it held: off the runtime's threads.
    let flushed = tokio::task::spawn_blocking(move || provider.shutdown()).await;
    if let Ok(Err(err)) = flushed {
        tracing::warn!(%err, "span export did not flush at shutdown");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_by_default_json_on_request_and_names_the_variable_otherwise() {
        assert_eq!(log_format(&Env::default()).unwrap(), LogFormat::Text);
        let env = Env::from_pairs([(LOG_FORMAT_VAR, "JSON")]);
        assert_eq!(log_format(&env).unwrap(), LogFormat::Json);
        let env = Env::from_pairs([(LOG_FORMAT_VAR, "text")]);
        assert_eq!(log_format(&env).unwrap(), LogFormat::Text);
        let env = Env::from_pairs([(LOG_FORMAT_VAR, "xml")]);
        let err = log_format(&env).unwrap_err().to_string();
        assert_eq!(
            err,
            "FILAMENT_LOG_FORMAT=\"xml\" is invalid: expected `text` or `json`"
        );
    }
}
