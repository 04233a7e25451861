//! The life of every Filament binary around its service, in one place so
//! that each `main` only wires its service: tracing first ([`telemetry`]),
//! the open-file limit raised, the signal handlers installed before
//! anything can take long ([`shutdown`]), and the trace export flushed at
//! the end whatever the service returned, so the spans of a failed start
//! are sent too.
//!
//! [`telemetry`]: crate::telemetry
//! [`shutdown`]: crate::shutdown

use std::future::Future;

use tokio_util::sync::CancellationToken;

use crate::Env;
use crate::telemetry::LogFormat;

/// What a binary's service is given.
#[derive(Debug)]
pub struct Process {
    /// The process environment, to read the config from.
    pub env: Env,
    /// Cancelled by SIGTERM or ctrl-c.
    pub shutdown: CancellationToken,
    /// How log lines are written (`FILAMENT_LOG_FORMAT`).
    pub log_format: LogFormat,
}

/// Runs `service` as the process's life; see the module docs.
pub async fn run<F, Fut>(service: F) -> anyhow::Result<()>
where
    F: FnOnce(Process) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let env = Env::from_process();
    let log_format = crate::telemetry::init_from(&env)?;
    crate::fd_limit::raise();
    let shutdown = crate::shutdown::token_on_signal();
    let ran = service(Process {
        env,
        shutdown,
        log_format,
    })
    .await;
    crate::telemetry::shutdown().await;
    ran
}
