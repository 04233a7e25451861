//! The in-memory presence store, for the all-in-one binary and tests. Time
//! is `tokio::time::Instant`, so tests drive lease expiry with a paused
//! clock instead of sleeping.
//!
//! Besides the connections themselves it keeps two counters — open
//! connections per user, present connections per (guild, user) — so every
//! transition is a counter reaching 1 or 0, and a snapshot is a map lookup.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use filament_registry::GatewayId;
use tokio::time::Instant;

use super::{
    ConnectionKey, Departure, Entered, Lease, PresenceStore, PresenceStoreConfig, StoreError,
    StoreResult,
};

pub struct MemoryPresenceStore {
    config: PresenceStoreConfig,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// When each gateway's lease runs out (it is live up to this instant).
    leases: HashMap<GatewayId, Instant>,
    connections: HashMap<ConnectionKey, Connection>,
    /// Each gateway's connection numbers, so expiry needs no scan.
    by_gateway: HashMap<GatewayId, BTreeSet<u64>>,
    /// Open connections per user.
    user_connections: HashMap<String, usize>,
    /// Present connections per guild, per user. Sorted so that snapshots
    /// come out in order.
    guilds: HashMap<String, BTreeMap<String, usize>>,
}

struct Connection {
    user_id: String,
    guilds: BTreeSet<String>,
}

impl MemoryPresenceStore {
    pub fn new(config: PresenceStoreConfig) -> Self {
        Self {
            config,
            state: Mutex::new(State::default()),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Critical sections only touch maps and cannot panic half way, so a
        // poisoned lock still guards a consistent state.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl State {
    fn renew(&mut self, gateway: &GatewayId, now: Instant, ttl: Duration) -> Lease {
        let was_live = self
            .leases
            .get(gateway)
            .is_some_and(|expires| now <= *expires);
        self.leases.insert(gateway.clone(), now + ttl);
        Lease { was_live }
    }

    /// Refuses a connection recorded for another user.
    fn check_owner(&self, key: &ConnectionKey, user_id: &str) -> StoreResult<()> {
        match self.connections.get(key) {
            Some(existing) if existing.user_id != user_id => {
                Err(StoreError::ConnectionOwnedByAnotherUser)
            }
            _ => Ok(()),
        }
    }

    fn record(&mut self, key: &ConnectionKey, user_id: &str) {
        if self.connections.contains_key(key) {
            return;
        }
        self.connections.insert(
            key.clone(),
            Connection {
                user_id: user_id.to_owned(),
                guilds: BTreeSet::new(),
            },
        );
        self.by_gateway
            .entry(key.gateway.clone())
            .or_default()
            .insert(key.connection);
        *self.user_connections.entry(user_id.to_owned()).or_default() += 1;
    }

    /// One fewer present connection of `user_id` in `guild_id`; true when it
    /// was the last.
    fn release(&mut self, guild_id: &str, user_id: &str) -> bool {
        let Some(present) = self.guilds.get_mut(guild_id) else {
            return false;
        };
        let Some(count) = present.get_mut(user_id) else {
            return false;
        };
        *count -= 1;
        if *count > 0 {
            return false;
        }
        present.remove(user_id);
        if present.is_empty() {
            self.guilds.remove(guild_id);
        }
        true
    }

    fn drop_connection(&mut self, key: &ConnectionKey) -> Option<Departure> {
        let connection = self.connections.remove(key)?;
        if let Some(numbers) = self.by_gateway.get_mut(&key.gateway) {
            numbers.remove(&key.connection);
            if numbers.is_empty() {
                self.by_gateway.remove(&key.gateway);
            }
        }
        let went_offline_in = connection
            .guilds
            .iter()
            .filter(|guild_id| self.release(guild_id, &connection.user_id))
            .cloned()
            .collect();
        let user_offline = match self.user_connections.get_mut(&connection.user_id) {
            Some(count) if *count > 1 => {
                *count -= 1;
                false
            }
            _ => {
                self.user_connections.remove(&connection.user_id);
                true
            }
        };
        Some(Departure {
            user_id: connection.user_id,
            went_offline_in,
            user_offline,
        })
    }

    fn present_in(&self, guild_id: &str, limit: usize) -> Vec<String> {
        self.guilds
            .get(guild_id)
            .into_iter()
            .flat_map(BTreeMap::keys)
            .take(limit)
            .cloned()
            .collect()
    }
}

#[async_trait]
impl PresenceStore for MemoryPresenceStore {
    async fn heartbeat(&self, gateway: &GatewayId) -> StoreResult<Lease> {
        Ok(self
            .state()
            .renew(gateway, Instant::now(), self.config.lease_ttl))
    }

    async fn connect(&self, connection: &ConnectionKey, user_id: &str) -> StoreResult<Lease> {
        let mut state = self.state();
        state.check_owner(connection, user_id)?;
        let lease = state.renew(&connection.gateway, Instant::now(), self.config.lease_ttl);
        state.record(connection, user_id);
        Ok(lease)
    }

    async fn enter_guild(
        &self,
        connection: &ConnectionKey,
        user_id: &str,
        guild_id: &str,
    ) -> StoreResult<Entered> {
        let mut state = self.state();
        state.check_owner(connection, user_id)?;
        let already = state
            .connections
            .get(connection)
            .is_some_and(|c| c.guilds.contains(guild_id));
        let held = state
            .connections
            .get(connection)
            .map_or(0, |c| c.guilds.len());
        let limit = self.config.max_guilds_per_connection;
        if !already && held >= limit {
            return Err(StoreError::TooManyGuilds { limit });
        }
        let lease = state.renew(&connection.gateway, Instant::now(), self.config.lease_ttl);
        state.record(connection, user_id);
        let mut came_online = false;
        if !already {
            if let Some(entry) = state.connections.get_mut(connection) {
                entry.guilds.insert(guild_id.to_owned());
            }
            let count = state
                .guilds
                .entry(guild_id.to_owned())
                .or_default()
                .entry(user_id.to_owned())
                .or_default();
            *count += 1;
            came_online = *count == 1;
        }
        Ok(Entered {
            lease,
            came_online,
            present: state.present_in(guild_id, self.config.snapshot_limit),
        })
    }

    async fn leave_guild(
        &self,
        connection: &ConnectionKey,
        guild_id: &str,
    ) -> StoreResult<Option<String>> {
        let mut state = self.state();
        let Some(entry) = state.connections.get_mut(connection) else {
            return Ok(None);
        };
        if !entry.guilds.remove(guild_id) {
            return Ok(None);
        }
        let user_id = entry.user_id.clone();
        Ok(state.release(guild_id, &user_id).then_some(user_id))
    }

    async fn disconnect(&self, connection: &ConnectionKey) -> StoreResult<Option<Departure>> {
        Ok(self.state().drop_connection(connection))
    }

    async fn present_in(&self, guild_id: &str) -> StoreResult<Vec<String>> {
        Ok(self
            .state()
            .present_in(guild_id, self.config.snapshot_limit))
    }

    async fn expire(&self, max_connections: usize) -> StoreResult<(Vec<Departure>, bool)> {
        let now = Instant::now();
        let mut state = self.state();
        let expired: Vec<GatewayId> = state
            .leases
            .iter()
            .filter(|(_, expires)| now > **expires)
            .map(|(gateway, _)| gateway.clone())
            .collect();
        let mut departures = Vec::new();
        let mut budget = max_connections;
        for gateway in expired {
            let numbers: Vec<u64> = state
                .by_gateway
                .get(&gateway)
                .into_iter()
                .flatten()
                .take(budget)
                .copied()
                .collect();
            budget -= numbers.len();
            for connection in numbers {
                let key = ConnectionKey {
                    gateway: gateway.clone(),
                    connection,
                };
                departures.extend(state.drop_connection(&key));
            }
            if !state.by_gateway.contains_key(&gateway) {
                state.leases.remove(&gateway);
            }
            if budget == 0 {
                break;
            }
        }
        let more = budget == 0
            && state
                .leases
                .iter()
                .any(|(gateway, expires)| now > *expires && state.by_gateway.contains_key(gateway));
        Ok((departures, more))
    }
}
