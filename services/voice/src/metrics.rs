//! Voice metrics. Names and label values are constants here; no label ever
//! carries an id. Served only on the admin listener
//! (`FILAMENT_VOICE_ADMIN_ADDR`).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Why a `voice_participant_sync` was sent to repair a client's roster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SyncReason {
    /// A socket's subscribe was accepted.
    Subscribe,
    /// The user joined a channel (sent to their own sockets).
    Join,
}

impl SyncReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Subscribe => "subscribe",
            Self::Join => "join",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Debug, Default)]
pub struct VoiceMetrics {
    sync_repairs: Family<ReasonLabels, Counter>,
    participants: Gauge,
    webhooks_rejected: Counter,
}

impl VoiceMetrics {
    pub fn register(&self, registry: &mut Registry) {
        let voice = registry.sub_registry_with_prefix("filament_voice");
        voice.register(
            "sync_repairs",
            "voice_participant_sync snapshots sent as drift repair, by reason",
            self.sync_repairs.clone(),
        );
        voice.register(
            "participants",
            "Participants in voice channels",
            self.participants.clone(),
        );
        voice.register(
            "webhooks_rejected",
            "LiveKit webhook requests that failed verification",
            self.webhooks_rejected.clone(),
        );
    }

    pub fn sync_repaired(&self, reason: SyncReason) {
        self.sync_repairs
            .get_or_create(&ReasonLabels {
                reason: reason.as_str(),
            })
            .inc();
    }

    pub fn sync_repairs(&self, reason: SyncReason) -> u64 {
        self.sync_repairs
            .get_or_create(&ReasonLabels {
                reason: reason.as_str(),
            })
            .get()
    }

    pub fn set_participants(&self, count: usize) {
        self.participants
            .set(i64::try_from(count).unwrap_or(i64::MAX));
    }

    pub fn webhook_rejected(&self) {
        self.webhooks_rejected.inc();
    }

    pub fn webhooks_rejected(&self) -> u64 {
        self.webhooks_rejected.get()
    }
}
