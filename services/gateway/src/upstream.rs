//! Following the event streams of the domain services.
//!
//! One task per service replica ([`crate::discovery`] finds them) keeps a
//! `filament.v1.EventStream/Open` stream open, reconnecting with backoff.
//! Events are applied in sequence order and acknowledged: at once when the
//! service asked for it, and on a durable stream also in batches, one Ack
//! for the highest seq applied whenever no further event is waiting.
//!
//! A `Welcome` that reports missed events on the api's stream makes the
//! gateway resynchronise: it closes every socket so clients reconnect and
//! refetch, rather than leaving them silently stale. So does an api stream
//! that broke or showed a gap, unless its `Welcome` said it is durable: the
//! api then keeps every event until this gateway acknowledged it, publishes
//! what was not again (from another replica if that one died), and the
//! repeats are dropped by event id (docs/adr/0010-durable-event-stream.md).
//! On a presence or voice stream the gateway sends every socket fresh
//! presence and voice snapshots once the stream is open again: those are
//! views, repaired without a reconnect.

use std::sync::Arc;
use std::time::Duration;

use filament_proto::v1::event_stream_client::EventStreamClient;
use filament_proto::v1::{Ack, GatewayMessage, Hello, gateway_message, service_message};
use filament_runtime::trace::TraceContext;
use tokio::sync::mpsc;
use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::Shared;

const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(2);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// On a durable stream, how long the gateway waits for a further event
/// before it acknowledges what it applied; a burst is acknowledged once.
const ACK_DELAY: Duration = Duration::from_millis(5);
/// On a durable stream, the most events applied before an acknowledgement
/// goes out even in a burst.
const ACK_BATCH: u64 = 256;

/// What a followed service is to this gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    /// The api: losing its events means missed messages, so a loss
    /// resynchronises every socket, and its streams make the gateway ready.
    Api,
    /// Presence or voice: views, repaired with fresh snapshots.
    View,
}

/// How a stream ended.
enum StreamEnd {
    /// The service drained and closed it: nothing was lost.
    Clean,
    /// It broke, or showed a gap: events may have been lost.
    Lossy(String),
    /// It broke, or showed a gap, but the service publishes again what this
    /// gateway did not acknowledge: nothing is lost for good.
    Durable(String),
}

/// Follows the stream at `url` until `shutdown`, or, once `retire` fired
/// (the replica is gone from discovery), until its current stream ends.
pub(crate) async fn follow(
    shared: Arc<Shared>,
    url: String,
    role: Role,
    retire: CancellationToken,
    shutdown: CancellationToken,
) {
    let mut backoff = MIN_BACKOFF;
    // A presence or voice stream lost events: repair the views at the
    // next open.
    let mut views_lost = false;
    while !retire.is_cancelled() {
        let end = tokio::select! {
            end = run_stream(&shared, &url, role, &mut views_lost) => end,
            () = shutdown.cancelled() => break,
        };
        if role == Role::Api {
            shared.api_streams.set_open(&url, false);
        }
        match end {
            Ok(StreamEnd::Clean) => {
                tracing::info!(%url, "event stream ended cleanly; reconnecting");
                backoff = MIN_BACKOFF;
            }
            Ok(StreamEnd::Durable(why)) => {
                tracing::warn!(%url, %why,
                    "durable event stream broke; its service publishes again what was not acknowledged");
                shared.metrics.durable_stream_break();
                backoff = MIN_BACKOFF;
            }
            Ok(StreamEnd::Lossy(why)) if role == Role::Api => {
                tracing::warn!(%url, %why, "event stream lost events; resynchronising sockets");
                shared.resync();
                backoff = MIN_BACKOFF;
            }
            Ok(StreamEnd::Lossy(why)) => {
                // Presence and voice: their views are repaired with fresh
                // snapshots once the stream is back (below), not with a
                // reconnect of every socket.
                tracing::warn!(%url, %why, "event stream lost events; repairing views once it is back");
                views_lost = true;
                backoff = MIN_BACKOFF;
            }
            Err(err) => {
                tracing::debug!(%url, %err, "cannot open event stream");
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            () = retire.cancelled() => break,
        }
    }
    if views_lost && !shutdown.is_cancelled() {
        // The replica that lost them is gone (a crash, then discovery
        // dropped it), so the repair cannot wait for its stream to come
        // back: the other replicas answer the snapshots, and carry every
        // later change on their own streams.
        tracing::info!(%url, "replica retired after losing events; repairing views");
        crate::connection::repair_views(&shared, crate::connection::Repair::StreamLost).await;
    }
}

async fn run_stream(
    shared: &Arc<Shared>,
    url: &str,
    role: Role,
    views_lost: &mut bool,
) -> anyhow::Result<StreamEnd> {
    // A stream stays open: no call timeout. Keepalive pings notice a dead
    // service behind a half-open connection, and the stream then breaks
    // into the reconnect loop above.
    let channel =
        filament_runtime::grpc_client::connect(url, CONNECT_TIMEOUT, None, &shared.grpc_clients)?;
    let (tx, rx) = mpsc::channel(64);
    tx.send(GatewayMessage {
        kind: Some(gateway_message::Kind::Hello(Hello {
            gateway_id: shared.holdings.gateway().to_string(),
        })),
    })
    .await?;
    let mut inbound = EventStreamClient::new(channel)
        .max_decoding_message_size(4 * 1024 * 1024)
        .open(ReceiverStream::new(rx))
        .await?
        .into_inner();

    let welcome = match inbound.message().await?.and_then(|m| m.kind) {
        Some(service_message::Kind::Welcome(welcome)) => welcome,
        _ => anyhow::bail!("the first message was not a welcome"),
    };
    tracing::info!(
        %url,
        service = %welcome.service,
        instance = %welcome.instance_id,
        missed = welcome.missed_events,
        "event stream open"
    );
    if role == Role::Api {
        if welcome.missed_events > 0 {
            shared.resync();
        }
    } else if welcome.missed_events > 0 || std::mem::take(views_lost) {
        // After the stream is open, so every change past the snapshots
        // reaches the sockets through it.
        let shared = Arc::clone(shared);
        tokio::spawn(async move {
            crate::connection::repair_views(&shared, crate::connection::Repair::StreamLost).await;
        });
    }
    if role == Role::Api {
        shared.api_streams.set_open(url, true);
    }

    let broken = |why: String| {
        Ok(if welcome.durable {
            StreamEnd::Durable(why)
        } else {
            StreamEnd::Lossy(why)
        })
    };
    let mut acks = Acks::new(tx, welcome.durable);
    let mut expected_seq = 1;
    loop {
        let next = if acks.owing() {
            match tokio::time::timeout(ACK_DELAY, inbound.next()).await {
                Ok(next) => next,
                Err(_) => {
                    // Nothing further is waiting: acknowledge the burst.
                    if acks.send().await.is_err() {
                        return broken("ack channel closed".into());
                    }
                    continue;
                }
            }
        } else {
            inbound.next().await
        };
        let message = match next {
            Some(Ok(message)) => message,
            None => return Ok(StreamEnd::Clean),
            Some(Err(status)) => return broken(status.to_string()),
        };
        let Some(service_message::Kind::Event(streamed)) = message.kind else {
            return broken("unexpected message kind".into());
        };
        if streamed.seq != expected_seq {
            return broken(format!("expected seq {expected_seq}, got {}", streamed.seq));
        }
        expected_seq += 1;
        if let Some(event) = streamed.event {
            deliver(shared, event, &streamed.traceparent).await;
        }
        if acks
            .applied(streamed.seq, streamed.ack_requested)
            .await
            .is_err()
        {
            return broken("ack channel closed".into());
        }
    }
}

/// The acknowledgements of one stream. Every Ack covers all events up to
/// its seq, so on a durable stream one Ack per burst does for all of them.
struct Acks {
    tx: mpsc::Sender<GatewayMessage>,
    durable: bool,
    applied: u64,
    acked: u64,
}

impl Acks {
    fn new(tx: mpsc::Sender<GatewayMessage>, durable: bool) -> Self {
        Self {
            tx,
            durable,
            applied: 0,
            acked: 0,
        }
    }

    /// Whether applied events still wait for their acknowledgement.
    fn owing(&self) -> bool {
        self.applied > self.acked
    }

    /// Records an applied event, and acknowledges at once when the service
    /// waits for it or a long burst is owed.
    async fn applied(&mut self, seq: u64, requested: bool) -> Result<(), ()> {
        self.applied = seq;
        if requested || (self.durable && self.applied - self.acked >= ACK_BATCH) {
            return self.send().await;
        }
        if !self.durable {
            // A lossy stream's service waits for no acknowledgement but the
            // requested ones.
            self.acked = seq;
        }
        Ok(())
    }

    async fn send(&mut self) -> Result<(), ()> {
        let ack = GatewayMessage {
            kind: Some(gateway_message::Kind::Ack(Ack { seq: self.applied })),
        };
        self.tx.send(ack).await.map_err(|_| ())?;
        self.acked = self.applied;
        Ok(())
    }
}

/// Applies one event inside a span holding the trace id of the request
/// that caused it, so the delivery's log lines (`event delivered`, at
/// debug) join that request's trace; the gRPC calls the event makes (an
/// access change's `AuthorizeSubscribe` and `BannedAddresses` to the api,
/// `LeaveGuild` to presence) carry the trace on, as every call through
/// `filament_runtime::grpc_client::connect` made in this task does.
async fn deliver(shared: &Shared, event: filament_proto::v1::Event, traceparent: &str) {
    let Some(trace) = TraceContext::parse(traceparent) else {
        shared.dispatch(event).await;
        return;
    };
    let span = tracing::debug_span!("deliver_event", trace_id = trace.trace_id());
    filament_runtime::trace::set_parent(&span, &trace);
    filament_runtime::trace::scope(trace, shared.dispatch(event))
        .instrument(span)
        .await;
}
