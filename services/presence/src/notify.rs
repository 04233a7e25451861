//! Tells the voice service when a user has no connection left anywhere, so
//! it removes them from voice (PROTOCOL.md §5.9: the user's last socket closing
//! frees their voice state). Only presence knows "last anywhere": a gateway
//! only sees its own sockets, and a crashed gateway tells nobody.
//!
//! Calls run on a background task behind a bounded queue, so a slow or
//! absent voice service never slows presence down. A notification that
//! cannot be queued or delivered is logged and dropped: the voice
//! participant TTL removes the user later anyway.

use std::time::Duration;

use filament_clients::VoiceClient;
use filament_runtime::grpc_client::GrpcClientMetrics;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::service::OfflineListener;

const QUEUE: usize = 4096;
const CALL_TIMEOUT: Duration = Duration::from_secs(3);

pub struct VoiceNotifier {
    queue: mpsc::Sender<(String, i64)>,
}

impl VoiceNotifier {
    /// Starts the delivery task for the voice service at `url`. The channel
    /// connects lazily, so a voice service that starts later is fine.
    pub fn spawn(
        url: &str,
        grpc_clients: &GrpcClientMetrics,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Self> {
        let voice = VoiceClient::new(url, CALL_TIMEOUT, grpc_clients)?;
        let (queue, rx) = mpsc::channel(QUEUE);
        tokio::spawn(deliver(voice, rx, shutdown));
        Ok(Self { queue })
    }
}

impl OfflineListener for VoiceNotifier {
    fn user_offline(&self, user_id: &str, at_unix_ms: i64) {
        if self
            .queue
            .try_send((user_id.to_owned(), at_unix_ms))
            .is_err()
        {
            tracing::warn!("voice notification queue full; the voice TTL will clean up");
        }
    }
}

async fn deliver(
    voice: VoiceClient,
    mut rx: mpsc::Receiver<(String, i64)>,
    shutdown: CancellationToken,
) {
    loop {
        let (user_id, closed_at_unix_ms) = tokio::select! {
            next = rx.recv() => match next {
                Some(next) => next,
                None => return,
            },
            () = shutdown.cancelled() => return,
        };
        if let Err(err) = voice.connection_closed(&user_id, closed_at_unix_ms).await {
            tracing::warn!(%err, "cannot tell voice that a user went offline");
        }
    }
}
