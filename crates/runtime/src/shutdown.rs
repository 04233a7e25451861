//! The shutdown signal. Binaries turn SIGTERM or ctrl-c into a cancelled
//! [`CancellationToken`]; libraries only ever see the token, so tests and the
//! all-in-one runner can stop services without signals.

use tokio_util::sync::CancellationToken;

/// A token that is cancelled when the process receives SIGTERM or ctrl-c.
///
/// The handlers are installed before this returns, so a signal that arrives
/// right after start-up still drains instead of killing the process. Call it
/// first thing in `main`.
pub fn token_on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(mut terminate), Ok(mut interrupt)) => {
                tokio::spawn(async move {
                    tokio::select! {
                        _ = terminate.recv() => tracing::info!("SIGTERM received, shutting down"),
                        _ = interrupt.recv() => tracing::info!("ctrl-c received, shutting down"),
                    }
                    cancel.cancel();
                });
            }
            (Err(err), _) | (_, Err(err)) => {
                // Only possible without a signal driver; the process then
                // stops on the default signal action, without draining.
                tracing::error!(%err, "cannot install signal handlers");
            }
        }
    }
    #[cfg(not(unix))]
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            tracing::info!("ctrl-c received, shutting down");
            cancel.cancel();
        }
    });
    token
}
