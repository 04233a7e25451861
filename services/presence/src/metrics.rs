//! Presence metrics, served on the admin listener
//! (`FILAMENT_PRESENCE_ADMIN_ADDR`). Names and label values are constants
//! here; no label carries an id.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// The prefix of every presence series.
pub const PREFIX: &str = "filament_presence";
/// `filament_presence_sessions`: gateway connections this replica saw
/// open and not yet close or expire. Summed over replicas it is the
/// cluster's count, whichever replica each call reached.
pub const SESSIONS: &str = "sessions";
/// `filament_presence_transitions_total{kind}`: published
/// `presence_update`s.
pub const TRANSITIONS: &str = "transitions";

/// A presence transition, as published.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transition {
    /// A user became present in a guild.
    Online,
    /// A user's last presence in a guild ended.
    Offline,
}

impl Transition {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Online => "online",
            Self::Offline => "offline",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

/// The presence service's series.
#[derive(Debug, Default)]
pub struct PresenceMetrics {
    sessions: Gauge,
    transitions: Family<KindLabels, Counter>,
    registry: filament_registry::RegistryMetrics,
}

impl PresenceMetrics {
    pub fn register(&self, registry: &mut Registry) {
        let prefixed = registry.sub_registry_with_prefix(PREFIX);
        prefixed.register(
            SESSIONS,
            "Gateway connections open on this replica's books (sum over replicas)",
            self.sessions.clone(),
        );
        prefixed.register(
            TRANSITIONS,
            "presence_update events published, by kind",
            self.transitions.clone(),
        );
        self.registry.register(registry);
    }

    /// The routing registry's call timings, served with these.
    pub fn registry_calls(&self) -> &filament_registry::RegistryMetrics {
        &self.registry
    }

    pub fn session_opened(&self) {
        self.sessions.inc();
    }

    pub fn sessions_closed(&self, count: usize) {
        self.sessions
            .dec_by(i64::try_from(count).unwrap_or(i64::MAX));
    }

    pub fn transition(&self, kind: Transition) {
        self.transitions
            .get_or_create(&KindLabels {
                kind: kind.as_str(),
            })
            .inc();
    }
}
