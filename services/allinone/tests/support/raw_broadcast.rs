//! The benchmarks' baseline: a plain tokio-tungstenite server that sends
//! every frame given to it to every socket, one task per socket, each
//! frame written and flushed on its own. It has no index, no queue of its
//! own, no access checks and no positions: what a websocket fanout costs
//! on this machine with nothing else to do. Its sockets read into buffers
//! as small as the gateway's: tungstenite's 128 KiB default would make it
//! a straw man, zeroing the whole buffer before every read attempt.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use futures_util::{SinkExt as _, StreamExt as _};
use tokio::net::TcpListener;
use tokio::sync::broadcast;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

/// The read buffer of each socket: the gateway's.
const READ_BUFFER_BYTES: usize = 512;

/// Accepts sockets on `listener` until the task is dropped; each one gets
/// every frame sent on `frames` from its upgrade on. `accepted` counts the
/// sockets whose handshake completed.
pub async fn serve(
    listener: TcpListener,
    frames: broadcast::Sender<Utf8Bytes>,
    accepted: Arc<AtomicUsize>,
) {
    while let Ok((stream, _)) = listener.accept().await {
        let mut rx = frames.subscribe();
        let accepted = Arc::clone(&accepted);
        tokio::spawn(async move {
            let _ = stream.set_nodelay(true);
            let config = WebSocketConfig::default().read_buffer_size(READ_BUFFER_BYTES);
            let Ok(mut ws) =
                tokio_tungstenite::accept_async_with_config(stream, Some(config)).await
            else {
                return;
            };
            accepted.fetch_add(1, Ordering::Relaxed);
            loop {
                tokio::select! {
                    frame = rx.recv() => match frame {
                        Ok(frame) => if ws.send(Message::Text(frame)).await.is_err() { return },
                        Err(_) => return,
                    },
                    inbound = ws.next() => if !matches!(inbound, Some(Ok(_))) { return },
                }
            }
        });
    }
}
