//! The ids of the events this gateway applied lately, so that it applies a
//! repeat only once. The api publishes an event again until every gateway
//! holding its audience acknowledged it (docs/adr/0010-durable-event-stream.md):
//! after a stream broke, a relay whose lease ran out mid-publish, or a
//! replica that died, a gateway may get an event it already applied, over
//! this stream or another replica's.
//!
//! The window is global, not per upstream: an event's id is unique across
//! services and replicas. It is bounded by age, not by count: event ids are
//! ULIDs, whose first 48 bits are the event's creation time, and the api
//! gives up republishing an event `REPUBLISH_GIVE_UP` after its creation.
//! The gateway remembers every id created within [`WINDOW`] of now, twice
//! that age, which leaves room for clocks that disagree. A hard cap
//! ([`MAX_IDS`]) bounds the memory under a flood; an id forgotten under it
//! is counted, since its repeat would then be applied twice.

use std::collections::BTreeSet;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use filament_proto::limits::REPUBLISH_GIVE_UP;
use ulid::Ulid;

/// Ids created this long ago or less are remembered.
pub(crate) const WINDOW: Duration = Duration::from_secs(2 * REPUBLISH_GIVE_UP.as_secs());
/// The most ids remembered, whatever their age: about 8 MiB.
pub(crate) const MAX_IDS: usize = 1 << 18;

/// Whether an event should be applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sight {
    /// Not seen within the window: apply it.
    First,
    /// Applied already: drop it.
    Repeat,
}

#[derive(Debug)]
pub(crate) struct RecentEvents {
    ids: Mutex<BTreeSet<u128>>,
    capacity: usize,
}

impl Default for RecentEvents {
    fn default() -> Self {
        Self::with_capacity(MAX_IDS)
    }
}

impl RecentEvents {
    pub(crate) fn with_capacity(capacity: usize) -> Self {
        Self {
            ids: Mutex::new(BTreeSet::new()),
            capacity: capacity.max(1),
        }
    }

    /// Records `event_id`; [`Sight::Repeat`] if it is already in the window.
    /// An id that is empty (services that never publish twice leave it
    /// unset), not a ULID, or older than the window is always a first
    /// sight: nothing could tell it apart from its original.
    pub(crate) fn sight(&self, event_id: &str) -> Sight {
        self.sight_at(event_id, now_unix_ms())
    }

    fn sight_at(&self, event_id: &str, now_unix_ms: u64) -> Sight {
        let Ok(id) = Ulid::from_string(event_id) else {
            return Sight::First;
        };
        let horizon = now_unix_ms.saturating_sub(millis(WINDOW));
        if id.timestamp_ms() < horizon {
            return Sight::First;
        }
        let mut ids = self.ids.lock().unwrap_or_else(PoisonError::into_inner);
        if !ids.insert(id.0) {
            return Sight::Repeat;
        }
        // ULIDs order by creation time, so the oldest go first.
        while let Some(&oldest) = ids.first() {
            let expired = Ulid(oldest).timestamp_ms() < horizon;
            if !expired && ids.len() <= self.capacity {
                break;
            }
            ids.pop_first();
            if !expired {
                tracing::warn!(
                    capacity = self.capacity,
                    "event-id window full; forgetting an id inside the window"
                );
            }
        }
        Sight::First
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, millis)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000_000;

    /// A fresh id created at `unix_ms`.
    fn id_at(unix_ms: u64) -> String {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let random = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ulid::from_parts(unix_ms, u128::from(random)).to_string()
    }

    #[test]
    fn a_repeat_is_caught_for_the_whole_window() {
        let recent = RecentEvents::default();
        let created = id_at(NOW);
        assert_eq!(recent.sight_at(&created, NOW), Sight::First);
        assert_eq!(recent.sight_at(&created, NOW), Sight::Repeat);
        // However many events come in between.
        for _ in 0..10_000 {
            assert_eq!(recent.sight_at(&id_at(NOW + 1), NOW + 1), Sight::First);
        }
        let last_moment = NOW + millis(WINDOW);
        assert_eq!(recent.sight_at(&created, last_moment), Sight::Repeat);
    }

    #[test]
    fn ids_older_than_the_window_are_forgotten() {
        let recent = RecentEvents::default();
        let created = id_at(NOW);
        assert_eq!(recent.sight_at(&created, NOW), Sight::First);
        let later = NOW + millis(WINDOW) + 1;
        // A newer event sweeps the old id out...
        assert_eq!(recent.sight_at(&id_at(later), later), Sight::First);
        assert_eq!(recent.ids.lock().unwrap().len(), 1);
        // ...and an id that old is applied: nothing tells it from a repeat.
        assert_eq!(recent.sight_at(&created, later), Sight::First);
    }

    #[test]
    fn the_cap_bounds_the_window_under_a_flood() {
        let recent = RecentEvents::with_capacity(2);
        let (a, b, c) = (id_at(NOW), id_at(NOW + 1), id_at(NOW + 2));
        for id in [&a, &b, &c] {
            assert_eq!(recent.sight_at(id, NOW + 2), Sight::First);
        }
        assert_eq!(recent.ids.lock().unwrap().len(), 2);
        // The oldest went first.
        assert_eq!(recent.sight_at(&c, NOW + 2), Sight::Repeat);
        assert_eq!(recent.sight_at(&a, NOW + 2), Sight::First);
    }

    #[test]
    fn events_without_a_ulid_are_never_repeats() {
        let recent = RecentEvents::default();
        for id in ["", "", "not-a-ulid", "not-a-ulid"] {
            assert_eq!(recent.sight_at(id, NOW), Sight::First);
        }
    }
}
