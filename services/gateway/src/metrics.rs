//! Gateway metrics. Every metric name and label value is a constant here;
//! no label ever carries an id, so cardinality is bounded. They are served
//! only on the admin listener (`FILAMENT_GATEWAY_ADMIN_ADDR`), never on the
//! public port.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets, linear_buckets};
use prometheus_client::registry::Registry;

use crate::close::CloseReason;

/// Why an outbound frame was not delivered to a socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// The event could not be turned into JSON.
    SerializeError,
    /// The frame exceeded the outbound cap.
    OversizedOutbound,
    /// The socket's queue was full; it was evicted as a slow consumer.
    FullQueue,
    /// The socket was already closing.
    Closed,
    /// The event's id was seen recently: a service published it twice (an
    /// outbox relay that died after publishing, before marking). Counted
    /// once per event, not per socket.
    Duplicate,
    /// A logged event's positions would have taken its frame past the
    /// headroom: sockets that asked for positions get the plain frame.
    PositionsOversized,
}

impl DropReason {
    pub const ALL: [Self; 6] = [
        Self::SerializeError,
        Self::OversizedOutbound,
        Self::FullQueue,
        Self::Closed,
        Self::Duplicate,
        Self::PositionsOversized,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::SerializeError => "serialize_error",
            Self::OversizedOutbound => "oversized_outbound",
            Self::FullQueue => "full_queue",
            Self::Closed => "closed",
            Self::Duplicate => "duplicate",
            Self::PositionsOversized => "positions_oversized",
        }
    }
}

/// Why an upgrade request was refused before it became a socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UpgradeRejection {
    /// The `Origin` is not on the allowlist.
    OriginForbidden,
    /// No access token in the query or the `Authorization` header.
    MissingToken,
    /// The api did not accept the token (bad, forged, expired, no user).
    InvalidToken,
    /// The client IP already has the maximum number of open sockets.
    IpConnectionLimit,
    /// Upgrades from the client IP arrive too fast.
    HandshakeRateLimited,
    /// The gateway has no event stream from the api (starting, or the api
    /// is unreachable): a socket accepted now would miss events.
    NotReady,
}

impl UpgradeRejection {
    pub const ALL: [Self; 6] = [
        Self::OriginForbidden,
        Self::MissingToken,
        Self::InvalidToken,
        Self::IpConnectionLimit,
        Self::HandshakeRateLimited,
        Self::NotReady,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::OriginForbidden => "origin_forbidden",
            Self::MissingToken => "missing_token",
            Self::InvalidToken => "invalid_token",
            Self::IpConnectionLimit => "ip_connection_limit",
            Self::HandshakeRateLimited => "handshake_rate_limited",
            Self::NotReady => "not_ready",
        }
    }
}

/// Why a client frame (or what it asked for) was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IngressRejection {
    /// The frame closed the socket; the label is the close reason.
    Closed(CloseReason),
    /// A subscribe the user may not make (ignored, as PROTOCOL.md §5.5 says).
    SubscribeDenied,
    /// A subscribe that kept racing revocations and was given up.
    SubscribeContended,
}

impl IngressRejection {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Closed(reason) => reason.as_str(),
            Self::SubscribeDenied => "subscribe_denied",
            Self::SubscribeContended => "subscribe_contended",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct EventLabels {
    event_type: &'static str,
}

/// The gateway's metrics, registered once per process.
#[derive(Debug, Default)]
pub struct Metrics {
    connections: Gauge,
    events_emitted: Family<EventLabels, Counter>,
    events_dropped: Family<ReasonLabels, Counter>,
    closes: Family<ReasonLabels, Counter>,
    upgrades_rejected: Family<ReasonLabels, Counter>,
    ingress_rejected: Family<ReasonLabels, Counter>,
    unknown_events: Counter,
    resyncs: Counter,
    durable_stream_breaks: Counter,
    resume_scopes: Family<ReasonLabels, Counter>,
    replayed_events: Counter,
    delivery: DeliveryMetrics,
}

/// What became of one scope a `resume` named (docs/adr/0011-resume.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResumeOutcome {
    /// Its gap was replayed (possibly empty).
    Replayed,
    /// The socket was told to resync it.
    Resync,
}

impl ResumeOutcome {
    pub const ALL: [Self; 2] = [Self::Replayed, Self::Resync];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Replayed => "replayed",
            Self::Resync => "resync",
        }
    }
}

/// `filament_gateway_publish_to_deliver_seconds`: from the moment the
/// publishing service stamped the event (`Event.published_at_unix_ms`) to
/// the moment this gateway queued its frame on the sockets. Measured across
/// two clocks, so it is only as good as their synchronisation.
pub const PUBLISH_TO_DELIVER: &str = "publish_to_deliver_seconds";
/// `filament_gateway_outbound_queue_depth`: items in a socket's outbound
/// queue just after one was queued; its tail approaching
/// `FILAMENT_GATEWAY_OUTBOUND_QUEUE` means slow consumers are near eviction.
pub const OUTBOUND_QUEUE_DEPTH: &str = "outbound_queue_depth";
/// `filament_gateway_write_batch_items`: queued items a socket wrote under
/// one flush.
pub const WRITE_BATCH_ITEMS: &str = "write_batch_items";

/// The delivery-path histograms. Observed per delivery, per socket, so
/// each is one histogram with no labels.
#[derive(Debug)]
struct DeliveryMetrics {
    publish_to_deliver: Histogram,
    queue_depth: Histogram,
    batch_items: Histogram,
}

impl Default for DeliveryMetrics {
    fn default() -> Self {
        Self {
            // 0.5 ms to ~16 s.
            publish_to_deliver: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            // 1 to 4096 items.
            queue_depth: Histogram::new(exponential_buckets(1.0, 2.0, 13)),
            // 1 to 32 items (the flush cap), one bucket each.
            batch_items: Histogram::new(linear_buckets(1.0, 1.0, 32)),
        }
    }
}

impl Metrics {
    pub fn register(&self, registry: &mut Registry) {
        let prefixed = registry.sub_registry_with_prefix("filament_gateway");
        prefixed.register(
            "connections",
            "Open websocket connections",
            self.connections.clone(),
        );
        prefixed.register(
            "events_emitted",
            "Frames queued to sockets, by event type",
            self.events_emitted.clone(),
        );
        prefixed.register(
            "events_dropped",
            "Frames not delivered, by reason",
            self.events_dropped.clone(),
        );
        prefixed.register(
            "closes",
            "Sockets closed by the server, by reason",
            self.closes.clone(),
        );
        prefixed.register(
            "upgrades_rejected",
            "Upgrade requests refused before the socket opened, by reason",
            self.upgrades_rejected.clone(),
        );
        prefixed.register(
            "ingress_rejected",
            "Inbound frames rejected, by reason",
            self.ingress_rejected.clone(),
        );
        prefixed.register(
            "unknown_events",
            "Inbound frames whose event type clients may not send",
            self.unknown_events.clone(),
        );
        prefixed.register(
            "resyncs",
            "Times the gateway dropped its sockets after missing upstream events",
            self.resyncs.clone(),
        );
        prefixed.register(
            "durable_stream_breaks",
            "Durable event streams that broke; their services publish again what was not acknowledged, so no socket is dropped",
            self.durable_stream_breaks.clone(),
        );
        prefixed.register(
            "resume_scopes",
            "Logs named by resume requests, by outcome (replayed, resync)",
            self.resume_scopes.clone(),
        );
        prefixed.register(
            "replayed_events",
            "Events replayed from the logs to resuming sockets",
            self.replayed_events.clone(),
        );
        prefixed.register(
            PUBLISH_TO_DELIVER,
            "Time from an event's publication to its frames being queued on sockets",
            self.delivery.publish_to_deliver.clone(),
        );
        prefixed.register(
            OUTBOUND_QUEUE_DEPTH,
            "Items in a socket's outbound queue after one was queued",
            self.delivery.queue_depth.clone(),
        );
        prefixed.register(
            WRITE_BATCH_ITEMS,
            "Queued items written to a socket under one flush",
            self.delivery.batch_items.clone(),
        );
        // The bounded reason series exist from the start, at zero: a scrape
        // lists each family, and `increase()` counts the first eviction.
        for reason in DropReason::ALL {
            drop(
                self.events_dropped
                    .get_or_create(&reason_labels(reason.as_str())),
            );
        }
        for reason in CloseReason::ALL {
            drop(self.closes.get_or_create(&reason_labels(reason.as_str())));
        }
        for reason in UpgradeRejection::ALL {
            drop(
                self.upgrades_rejected
                    .get_or_create(&reason_labels(reason.as_str())),
            );
        }
        for outcome in ResumeOutcome::ALL {
            drop(
                self.resume_scopes
                    .get_or_create(&reason_labels(outcome.as_str())),
            );
        }
        for reason in [
            IngressRejection::SubscribeDenied,
            IngressRejection::SubscribeContended,
        ] {
            drop(
                self.ingress_rejected
                    .get_or_create(&reason_labels(reason.as_str())),
            );
        }
    }

    /// An event published at `published_at_unix_ms` was queued on sockets
    /// at `now_unix_ms`. Events without a stamp (0) are not observed.
    pub fn delivered(&self, published_at_unix_ms: i64, now_unix_ms: i64) {
        if published_at_unix_ms > 0 {
            // A clock that steps back counts as no delay, never negative.
            let millis = now_unix_ms.saturating_sub(published_at_unix_ms).max(0);
            #[allow(clippy::cast_precision_loss)]
            self.delivery
                .publish_to_deliver
                .observe(millis as f64 / 1000.0);
        }
    }

    pub fn queued(&self, depth: usize) {
        #[allow(clippy::cast_precision_loss)]
        self.delivery.queue_depth.observe(depth as f64);
    }

    pub fn wrote_batch(&self, items: usize) {
        #[allow(clippy::cast_precision_loss)]
        self.delivery.batch_items.observe(items as f64);
    }

    pub fn connection_opened(&self) {
        self.connections.inc();
    }

    pub fn connection_closed(&self) {
        self.connections.dec();
    }

    /// Sockets open right now.
    pub fn open_connections(&self) -> i64 {
        self.connections.get()
    }

    pub fn emitted(&self, event_type: &'static str, count: u64) {
        self.events_emitted
            .get_or_create(&EventLabels { event_type })
            .inc_by(count);
    }

    /// Frames of `event_type` queued so far.
    pub fn emitted_count(&self, event_type: &'static str) -> u64 {
        self.events_emitted
            .get_or_create(&EventLabels { event_type })
            .get()
    }

    pub fn dropped(&self, reason: DropReason) {
        self.events_dropped
            .get_or_create(&reason_labels(reason.as_str()))
            .inc();
    }

    pub fn dropped_count(&self, reason: DropReason) -> u64 {
        self.events_dropped
            .get_or_create(&reason_labels(reason.as_str()))
            .get()
    }

    pub fn closed(&self, reason: CloseReason) {
        self.closes
            .get_or_create(&reason_labels(reason.as_str()))
            .inc();
    }

    pub fn closed_count(&self, reason: CloseReason) -> u64 {
        self.closes
            .get_or_create(&reason_labels(reason.as_str()))
            .get()
    }

    pub fn upgrade_rejected(&self, reason: UpgradeRejection) {
        self.upgrades_rejected
            .get_or_create(&reason_labels(reason.as_str()))
            .inc();
    }

    pub fn upgrade_rejected_count(&self, reason: UpgradeRejection) -> u64 {
        self.upgrades_rejected
            .get_or_create(&reason_labels(reason.as_str()))
            .get()
    }

    pub fn rejected(&self, reason: IngressRejection) {
        if reason == IngressRejection::Closed(CloseReason::UnknownEvent) {
            self.unknown_events.inc();
        }
        self.ingress_rejected
            .get_or_create(&reason_labels(reason.as_str()))
            .inc();
    }

    pub fn rejected_count(&self, reason: IngressRejection) -> u64 {
        self.ingress_rejected
            .get_or_create(&reason_labels(reason.as_str()))
            .get()
    }

    pub fn unknown_events_count(&self) -> u64 {
        self.unknown_events.get()
    }

    pub fn resynced(&self) {
        self.resyncs.inc();
    }

    pub fn resumed(&self, outcome: ResumeOutcome, replayed: u64) {
        self.resume_scopes
            .get_or_create(&reason_labels(outcome.as_str()))
            .inc();
        self.replayed_events.inc_by(replayed);
    }

    pub fn durable_stream_break(&self) {
        self.durable_stream_breaks.inc();
    }

    pub fn durable_stream_breaks_count(&self) -> u64 {
        self.durable_stream_breaks.get()
    }
}

fn reason_labels(reason: &'static str) -> ReasonLabels {
    ReasonLabels { reason }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(metrics: &Metrics) -> String {
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        text
    }

    #[test]
    fn exports_every_family_with_bounded_labels() {
        let metrics = Metrics::default();
        metrics.connection_opened();
        metrics.emitted("message_create", 3);
        for reason in DropReason::ALL {
            metrics.dropped(reason);
        }
        metrics.closed(CloseReason::SlowConsumer);
        metrics.upgrade_rejected(UpgradeRejection::OriginForbidden);
        metrics.rejected(IngressRejection::Closed(CloseReason::UnknownEvent));
        metrics.rejected(IngressRejection::SubscribeDenied);
        let text = encoded(&metrics);
        for line in [
            "filament_gateway_connections 1",
            "filament_gateway_events_emitted_total{event_type=\"message_create\"} 3",
            "filament_gateway_events_dropped_total{reason=\"serialize_error\"} 1",
            "filament_gateway_events_dropped_total{reason=\"oversized_outbound\"} 1",
            "filament_gateway_events_dropped_total{reason=\"full_queue\"} 1",
            "filament_gateway_events_dropped_total{reason=\"closed\"} 1",
            "filament_gateway_events_dropped_total{reason=\"duplicate\"} 1",
            "filament_gateway_closes_total{reason=\"slow_consumer\"} 1",
            "filament_gateway_upgrades_rejected_total{reason=\"origin_forbidden\"} 1",
            "filament_gateway_ingress_rejected_total{reason=\"unknown_event\"} 1",
            "filament_gateway_ingress_rejected_total{reason=\"subscribe_denied\"} 1",
            "filament_gateway_unknown_events_total 1",
            "filament_gateway_resyncs_total 0",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
    }

    #[test]
    fn delivery_histograms_skip_unstamped_events_and_never_go_negative() {
        let metrics = Metrics::default();
        metrics.delivered(0, 5_000);
        metrics.delivered(1_000, 1_250);
        metrics.delivered(2_000, 1_000);
        metrics.queued(3);
        metrics.wrote_batch(2);
        let text = encoded(&metrics);
        for line in [
            "filament_gateway_publish_to_deliver_seconds_count 2",
            "filament_gateway_publish_to_deliver_seconds_sum 0.25",
            "filament_gateway_outbound_queue_depth_count 1",
            "filament_gateway_write_batch_items_sum 2.0",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
    }
}
