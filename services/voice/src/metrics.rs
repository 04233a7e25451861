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

/// What a LiveKit drift check corrected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DriftKind {
    /// A participant LiveKit no longer had left the roster.
    Left,
    /// A participant with a live microphone was un-muted.
    Unmuted,
    /// Someone in a room without a place in the roster was removed.
    Removed,
}

impl DriftKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Left => "left",
            Self::Unmuted => "unmuted",
            Self::Removed => "removed",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Debug, Default)]
pub struct VoiceMetrics {
    sync_repairs: Family<ReasonLabels, Counter>,
    drift_corrections: Family<KindLabels, Counter>,
    participants: Gauge,
    webhooks_rejected: Counter,
    registry: filament_registry::RegistryMetrics,
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
            "drift_corrections",
            "Roster and room corrections made by the LiveKit drift check, by kind",
            self.drift_corrections.clone(),
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
        // Every counter series exists from the start, at zero: a scrape
        // lists each family, and `increase()` counts the first one.
        for reason in [SyncReason::Subscribe, SyncReason::Join] {
            drop(self.sync_repairs.get_or_create(&ReasonLabels {
                reason: reason.as_str(),
            }));
        }
        for kind in [DriftKind::Left, DriftKind::Unmuted, DriftKind::Removed] {
            drop(self.drift_corrections.get_or_create(&KindLabels {
                kind: kind.as_str(),
            }));
        }
        self.registry.register(registry);
    }

    /// The routing registry's call timings, served with these.
    pub fn registry_calls(&self) -> &filament_registry::RegistryMetrics {
        &self.registry
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

    pub fn drift_corrected(&self, kind: DriftKind, count: usize) {
        if count > 0 {
            self.drift_corrections
                .get_or_create(&KindLabels {
                    kind: kind.as_str(),
                })
                .inc_by(count as u64);
        }
    }

    pub fn drift_corrections(&self, kind: DriftKind) -> u64 {
        self.drift_corrections
            .get_or_create(&KindLabels {
                kind: kind.as_str(),
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
