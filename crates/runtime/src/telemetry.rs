//! Tracing set-up for binaries: logs filtered by `RUST_LOG` (default
//! `info`), readable text by default, or one JSON object per line with the
//! enclosing spans' fields when `FILAMENT_LOG_FORMAT=json`, which is what a
//! cluster's log pipeline indexes.
//!
//! Every binary calls [`init`] first thing, so one variable switches every
//! process of a deployment.

use std::fmt;
use std::str::FromStr;

use tracing_subscriber::EnvFilter;

use crate::{ConfigError, Env};

/// The variable that picks the log format.
pub const LOG_FORMAT_VAR: &str = "FILAMENT_LOG_FORMAT";

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

/// Installs the global subscriber, in the format the process environment
/// asks for. Safe to call more than once; later calls do nothing. An
/// invalid `FILAMENT_LOG_FORMAT` is an error naming it, so the binary stops
/// before it logs anything in a format the log pipeline cannot read.
/// Returns the format, so a binary that prints a banner can log it instead
/// when every line must be JSON.
pub fn init() -> Result<LogFormat, ConfigError> {
    let format = log_format(&Env::from_process())?;
    init_with(format);
    Ok(format)
}

/// Installs the global subscriber in `format`.
pub fn init_with(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(true);
    // A second call finds a subscriber installed and changes nothing.
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .try_init(),
    };
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
