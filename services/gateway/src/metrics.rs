//! Gateway metrics. Every metric name and label value is a constant here;
//! no label ever carries an id, so cardinality is bounded.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
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
}

impl DropReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::SerializeError => "serialize_error",
            Self::OversizedOutbound => "oversized_outbound",
            Self::FullQueue => "full_queue",
            Self::Closed => "closed",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct DropLabels {
    reason: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct EventLabels {
    event_type: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct CloseLabels {
    reason: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RejectLabels {
    reason: &'static str,
}

/// The gateway's metrics, registered once per process.
#[derive(Debug, Default)]
pub struct Metrics {
    connections: Gauge,
    events_emitted: Family<EventLabels, Counter>,
    events_dropped: Family<DropLabels, Counter>,
    closes: Family<CloseLabels, Counter>,
    ingress_rejected: Family<RejectLabels, Counter>,
    resyncs: Counter,
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
            "ingress_rejected",
            "Inbound frames rejected, by reason",
            self.ingress_rejected.clone(),
        );
        prefixed.register(
            "resyncs",
            "Times the gateway dropped its sockets after missing upstream events",
            self.resyncs.clone(),
        );
    }

    pub fn connection_opened(&self) {
        self.connections.inc();
    }

    pub fn connection_closed(&self) {
        self.connections.dec();
    }

    pub fn emitted(&self, event_type: &'static str, count: u64) {
        self.events_emitted
            .get_or_create(&EventLabels { event_type })
            .inc_by(count);
    }

    pub fn dropped(&self, reason: DropReason) {
        self.events_dropped
            .get_or_create(&DropLabels {
                reason: reason.as_str(),
            })
            .inc();
    }

    pub fn dropped_count(&self, reason: DropReason) -> u64 {
        self.events_dropped
            .get_or_create(&DropLabels {
                reason: reason.as_str(),
            })
            .get()
    }

    pub fn closed(&self, reason: CloseReason) {
        self.closes
            .get_or_create(&CloseLabels {
                reason: reason.as_str(),
            })
            .inc();
    }

    pub fn rejected(&self, reason: &'static str) {
        self.ingress_rejected
            .get_or_create(&RejectLabels { reason })
            .inc();
    }

    pub fn resynced(&self) {
        self.resyncs.inc();
    }
}
