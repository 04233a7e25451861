//! The roster in this process's memory: the embedded all-in-one's store,
//! and the reference the Redis store is held to. A restart forgets every
//! participant, which is why a deployment of several replicas uses Redis.

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use filament_proto::v1::Event;

use super::{Applied, Change, RosterStore, StoreResult};
use crate::roster::{ChannelKey, Clock, Limits, Roster};

pub struct MemoryRosterStore {
    roster: Mutex<Roster>,
}

impl MemoryRosterStore {
    pub fn new(limits: Limits, ttl: Duration) -> Self {
        Self {
            roster: Mutex::new(Roster::new(limits, ttl)),
        }
    }

    /// A change that panicked mid-way is already a failed test or a bug;
    /// the roster it left is still the best state there is.
    fn roster(&self) -> MutexGuard<'_, Roster> {
        self.roster.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[async_trait]
impl RosterStore for MemoryRosterStore {
    async fn apply(
        &self,
        change: &Change<'_>,
        clock: Clock,
        out: &mut Vec<Event>,
    ) -> StoreResult<Applied> {
        let mut roster = self.roster();
        let outcome = change.run(&mut roster, clock, out)?;
        Ok(Applied {
            outcome,
            participants: Some(roster.participant_count()),
        })
    }

    async fn channels(&self) -> StoreResult<Vec<ChannelKey>> {
        Ok(self.roster().channels())
    }
}
