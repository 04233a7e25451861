//! Search metrics, served on the admin listener
//! (`FILAMENT_SEARCH_ADMIN_ADDR`): how far the index trails the message
//! change log, how long commits take, and how long queries take. Names and
//! label values are constants here; no label carries an id.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// The prefix of every search series.
pub const PREFIX: &str = "filament_search";
/// `filament_search_index_lag`: change-log positions received from the
/// api's feed but not yet committed (not yet searchable).
pub const INDEX_LAG: &str = "index_lag";
/// `filament_search_index_received_position`: the last change-log position
/// received from the feed.
pub const RECEIVED_POSITION: &str = "index_received_position";
/// `filament_search_index_committed_position`: the change-log position of
/// the last commit.
pub const COMMITTED_POSITION: &str = "index_committed_position";
/// `filament_search_commit_duration_seconds`: one tantivy commit.
pub const COMMIT_DURATION: &str = "commit_duration_seconds";
/// `filament_search_query_duration_seconds{outcome}`: one query, queueing
/// for a slot included.
pub const QUERY_DURATION: &str = "query_duration_seconds";

/// How a query ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QueryOutcome {
    Ok,
    /// Over the query budget.
    Timeout,
    /// Refused (a cap) or failed.
    Error,
}

impl QueryOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Timeout => "timeout",
            Self::Error => "error",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

fn seconds_histogram() -> Histogram {
    // 0.25 ms to ~8 s.
    Histogram::new(exponential_buckets(0.000_25, 2.0, 16))
}

/// The search service's series; shared by the indexer and the engine.
#[derive(Debug)]
pub struct SearchMetrics {
    lag: Gauge,
    received: Gauge,
    committed: Gauge,
    commit_duration: Histogram,
    query_duration: Family<OutcomeLabels, Histogram, fn() -> Histogram>,
}

impl Default for SearchMetrics {
    fn default() -> Self {
        Self {
            lag: Gauge::default(),
            received: Gauge::default(),
            committed: Gauge::default(),
            commit_duration: seconds_histogram(),
            query_duration: Family::new_with_constructor(seconds_histogram),
        }
    }
}

impl SearchMetrics {
    pub fn register(&self, registry: &mut Registry) {
        let prefixed = registry.sub_registry_with_prefix(PREFIX);
        prefixed.register(
            INDEX_LAG,
            "Change-log positions received but not yet committed (searchable)",
            self.lag.clone(),
        );
        prefixed.register(
            RECEIVED_POSITION,
            "The last change-log position received from the api's feed",
            self.received.clone(),
        );
        prefixed.register(
            COMMITTED_POSITION,
            "The change-log position of the last index commit",
            self.committed.clone(),
        );
        prefixed.register(
            COMMIT_DURATION,
            "Index commits",
            self.commit_duration.clone(),
        );
        prefixed.register(
            QUERY_DURATION,
            "Search queries, waiting for a slot included, by outcome",
            self.query_duration.clone(),
        );
    }

    /// The indexer's positions after it received or committed changes.
    pub fn positions(&self, received: u64, committed: u64) {
        let as_gauge = |position: u64| i64::try_from(position).unwrap_or(i64::MAX);
        self.received.set(as_gauge(received));
        self.committed.set(as_gauge(committed));
        self.lag.set(as_gauge(received.saturating_sub(committed)));
    }

    pub fn committed_in(&self, secs: f64) {
        self.commit_duration.observe(secs);
    }

    pub fn query_ran(&self, outcome: QueryOutcome, secs: f64) {
        self.query_duration
            .get_or_create(&OutcomeLabels {
                outcome: outcome.as_str(),
            })
            .observe(secs);
    }
}
