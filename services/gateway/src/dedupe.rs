//! The ids of the events this gateway applied lately, so that it applies a
//! repeat only once. A service may publish one event twice: the api's
//! outbox relay publishes a row and then deletes it, and a relay that dies
//! in between (or whose lease ran out mid-publish) leaves the row for
//! another relay, which publishes it again (docs/adr/0006-outbox.md).
//!
//! The window is global, not per upstream: an event's id is unique across
//! services and replicas (a ULID), and the repeat may come from another api
//! replica's relay, over another stream. It is bounded by count: a repeat
//! follows its original within a relay lease (seconds), far inside the last
//! [`WINDOW`] events of any gateway.

use std::collections::{HashSet, VecDeque};
use std::sync::{Mutex, PoisonError};

/// Event ids remembered; the oldest is forgotten first.
pub(crate) const WINDOW: usize = 8192;

#[derive(Debug)]
pub(crate) struct RecentEvents {
    inner: Mutex<Window>,
    capacity: usize,
}

#[derive(Debug, Default)]
struct Window {
    ids: HashSet<String>,
    order: VecDeque<String>,
}

impl Default for RecentEvents {
    fn default() -> Self {
        Self::with_capacity(WINDOW)
    }
}

impl RecentEvents {
    pub(crate) fn with_capacity(capacity: usize) -> Self {
        Self {
            inner: Mutex::new(Window::default()),
            capacity: capacity.max(1),
        }
    }

    /// Records `event_id`; false if it is already in the window, i.e. the
    /// event is a repeat. An empty id is never a repeat: services that do
    /// not publish twice leave it unset.
    pub(crate) fn first_sight(&self, event_id: &str) -> bool {
        if event_id.is_empty() {
            return true;
        }
        let mut window = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        if !window.ids.insert(event_id.to_owned()) {
            return false;
        }
        window.order.push_back(event_id.to_owned());
        if window.order.len() > self.capacity
            && let Some(oldest) = window.order.pop_front()
        {
            window.ids.remove(&oldest);
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repeat_is_caught_within_the_window_and_forgotten_after_it() {
        let recent = RecentEvents::with_capacity(2);
        assert!(recent.first_sight("a"));
        assert!(!recent.first_sight("a"));
        assert!(recent.first_sight("b"));
        assert!(!recent.first_sight("a"));
        // "c" pushes "a" out.
        assert!(recent.first_sight("c"));
        assert!(recent.first_sight("a"));
        assert!(!recent.first_sight("c"));
    }

    #[test]
    fn events_without_an_id_are_never_repeats() {
        let recent = RecentEvents::with_capacity(2);
        assert!(recent.first_sight(""));
        assert!(recent.first_sight(""));
    }
}
