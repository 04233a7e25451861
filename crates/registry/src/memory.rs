//! The in-memory registry: one process's routing table, for the all-in-one
//! binary, single-gateway deployments and tests.
//!
//! It keeps a forward index (guild or user id to the gateways holding it) so
//! that every lookup is a map lookup, and, per gateway, the reverse index of
//! what it holds so that a gateway can be forgotten without a scan. Liveness
//! is read from `tokio::time::Instant`, so tests drive the TTL with
//! `tokio::time::pause` and `advance` instead of sleeping.
//!
//! A gateway that has been silent for longer than the TTL is forgotten
//! entirely, with everything it held, as soon as a lookup meets it or
//! another gateway heartbeats. A gateway that comes back after that starts
//! empty, which is what the trait asks callers to expect.
//!
//! Memory is never lost while the process lives, so its epoch changes only
//! through [`MemoryRegistry::lose_state`], which tests use to play a Redis
//! restarted empty.
//!
//! The replay logs (`replay.rs`) live under a third lock: appends come
//! from every publish and have nothing to do with routing either.
//!
//! Revoked sessions live in their own map under their own lock (every
//! authenticated request reads it, and it has nothing to do with routing),
//! with an index by expiry so that expired entries are dropped in order
//! instead of by a scan.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;

use crate::LogPosition;
use crate::replay::{LogConfig, MemoryLogs, Replay};
use crate::{Epoch, GatewayId, Registry, RegistryConfig, RegistryError, RegistryResult, Scope};

/// Forward index: who holds a guild (or a user). Sorted, so lookups come
/// out in the order the trait promises without a sort per call.
type Holders = HashMap<String, BTreeSet<GatewayId>>;

pub struct MemoryRegistry {
    ttl: Duration,
    state: Mutex<State>,
    revoked: Mutex<RevokedSessions>,
    log_config: LogConfig,
    logs: Mutex<MemoryLogs>,
}

impl MemoryRegistry {
    pub fn new(config: RegistryConfig) -> Self {
        Self {
            ttl: config.ttl,
            state: Mutex::new(State::default()),
            revoked: Mutex::new(RevokedSessions::default()),
            log_config: config.log,
            logs: Mutex::new(MemoryLogs::default()),
        }
    }

    fn logs(&self) -> MutexGuard<'_, MemoryLogs> {
        // As for `state`: updates cannot panic half way.
        self.logs.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn revoked(&self) -> MutexGuard<'_, RevokedSessions> {
        // As for `state`: updates cannot panic half way.
        self.revoked.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // No critical section can panic half way through an update (they
        // only touch maps), so a poisoned lock still guards a consistent
        // state and the registry keeps serving.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn live_holders(&self, wanted: [(Scope, &[String]); 2]) -> RegistryResult<Vec<GatewayId>> {
        let now = Instant::now();
        let mut state = self.state();
        if state.epoch.is_none() || state.recovering_until.is_some_and(|until| now <= until) {
            return Err(RegistryError::Recovering);
        }
        let mut live = BTreeSet::new();
        for (scope, ids) in wanted {
            state.collect_live_holders(scope, ids, now, self.ttl, &mut live);
        }
        Ok(live.into_iter().collect())
    }

    /// Forgets everything — holdings, the epoch, revocations — as a Redis
    /// restarted empty would.
    pub fn lose_state(&self) {
        *self.state() = State {
            epoch: None,
            ..State::default()
        };
        *self.revoked() = RevokedSessions::default();
        *self.logs() = MemoryLogs::default();
    }

    /// How many gateways and index entries are remembered, dead or alive.
    /// Lets tests check that dead gateways do not stay in memory.
    #[cfg(test)]
    pub(crate) fn remembered(&self) -> usize {
        let state = self.state();
        state.gateways.len() + state.guilds.len() + state.users.len()
    }

    /// How many session revocations are remembered, expired or not.
    #[cfg(test)]
    pub(crate) fn remembered_revocations(&self) -> usize {
        let revoked = self.revoked();
        debug_assert_eq!(revoked.until.len(), revoked.by_expiry.len());
        revoked.until.len()
    }
}

/// Revoked sessions and when each revocation lapses.
#[derive(Default)]
struct RevokedSessions {
    until: HashMap<String, Instant>,
    /// The same entries, ordered by when they lapse.
    by_expiry: BTreeSet<(Instant, String)>,
}

impl RevokedSessions {
    fn revoke(&mut self, session_id: &str, until: Instant) {
        if let Some(previous) = self.until.insert(session_id.to_owned(), until) {
            self.by_expiry.remove(&(previous, session_id.to_owned()));
        }
        self.by_expiry.insert((until, session_id.to_owned()));
    }

    /// Revoked up to and including the instant the revocation lapses, like
    /// a Redis key set with `PX ttl` (and like gateway liveness above).
    fn is_revoked(&self, session_id: &str, now: Instant) -> bool {
        self.until
            .get(session_id)
            .is_some_and(|until| now <= *until)
    }

    /// Drops the revocations that lapsed before `now`, oldest first.
    fn forget_expired(&mut self, now: Instant) {
        while let Some((until, _)) = self.by_expiry.first()
            && *until < now
        {
            if let Some((_, session_id)) = self.by_expiry.pop_first() {
                self.until.remove(&session_id);
            }
        }
    }
}

struct State {
    gateways: HashMap<GatewayId, Holdings>,
    guilds: Holders,
    users: Holders,
    /// `None` after a loss, until a gateway heartbeats.
    epoch: Option<Epoch>,
    /// Lookups answer `Recovering` up to this instant.
    recovering_until: Option<Instant>,
}

impl Default for State {
    fn default() -> Self {
        Self {
            gateways: HashMap::new(),
            guilds: Holders::new(),
            users: Holders::new(),
            epoch: Some(new_epoch()),
            recovering_until: None,
        }
    }
}

fn new_epoch() -> Epoch {
    Epoch::new(ulid::Ulid::generate().to_string())
}

/// What one gateway holds, and when it last proved it was alive.
struct Holdings {
    last_seen: Instant,
    guilds: HashSet<String>,
    users: HashSet<String>,
}

impl Holdings {
    fn new(now: Instant) -> Self {
        Self {
            last_seen: now,
            guilds: HashSet::new(),
            users: HashSet::new(),
        }
    }

    /// Alive up to and including exactly one TTL after the last heartbeat,
    /// like a Redis key set with `PX ttl`.
    fn is_alive(&self, now: Instant, ttl: Duration) -> bool {
        now.saturating_duration_since(self.last_seen) <= ttl
    }
}

// Invariant: a gateway appears in `guilds` or `users` exactly for the ids in
// its own `Holdings`. Every method below keeps both sides in step, which is
// what lets `forget` clean a gateway up from its reverse index alone.
impl State {
    /// Marks the gateway alive now. A gateway that had already expired is
    /// forgotten first, so it never comes back with a stale part of what it
    /// used to hold.
    fn touch(&mut self, gateway: &GatewayId, now: Instant, ttl: Duration) {
        if self
            .gateways
            .get(gateway)
            .is_some_and(|holdings| !holdings.is_alive(now, ttl))
        {
            self.forget(gateway);
        }
        self.gateways
            .entry(gateway.clone())
            .or_insert_with(|| Holdings::new(now))
            .last_seen = now;
    }

    fn hold(
        &mut self,
        scope: Scope,
        gateway: &GatewayId,
        ids: &[String],
        now: Instant,
        ttl: Duration,
    ) {
        self.touch(gateway, now, ttl);
        let Some(holdings) = self.gateways.get_mut(gateway) else {
            return; // `touch` has just inserted it.
        };
        let (held, holders) = match scope {
            Scope::Guild => (&mut holdings.guilds, &mut self.guilds),
            Scope::User => (&mut holdings.users, &mut self.users),
        };
        for id in ids {
            if held.insert(id.clone()) {
                holders
                    .entry(id.clone())
                    .or_default()
                    .insert(gateway.clone());
            }
        }
    }

    fn release(&mut self, scope: Scope, gateway: &GatewayId, ids: &[String]) {
        let Some(holdings) = self.gateways.get_mut(gateway) else {
            return;
        };
        let (held, holders) = match scope {
            Scope::Guild => (&mut holdings.guilds, &mut self.guilds),
            Scope::User => (&mut holdings.users, &mut self.users),
        };
        for id in ids {
            if held.remove(id) {
                unindex(holders, id, gateway);
            }
        }
    }

    /// Adds the live holders of `ids` to `live`, and forgets every dead
    /// gateway met on the way: this is the lazy cleanup.
    fn collect_live_holders(
        &mut self,
        scope: Scope,
        ids: &[String],
        now: Instant,
        ttl: Duration,
        live: &mut BTreeSet<GatewayId>,
    ) {
        let holders = match scope {
            Scope::Guild => &self.guilds,
            Scope::User => &self.users,
        };
        let mut dead = Vec::new();
        for gateway in ids.iter().filter_map(|id| holders.get(id)).flatten() {
            match self.gateways.get(gateway) {
                Some(holdings) if holdings.is_alive(now, ttl) => {
                    live.insert(gateway.clone());
                }
                _ => dead.push(gateway.clone()),
            }
        }
        for gateway in dead {
            tracing::debug!(%gateway, "forgetting expired gateway");
            self.forget(&gateway);
        }
    }

    /// Forgets every expired gateway. Walks the gateways, not what they
    /// hold, so it costs one step per gateway process; run on heartbeats,
    /// it keeps a crashed gateway whose guilds nobody asks about anymore
    /// from staying in memory for ever.
    fn forget_expired(&mut self, now: Instant, ttl: Duration) {
        let expired: Vec<GatewayId> = self
            .gateways
            .iter()
            .filter(|(_, holdings)| !holdings.is_alive(now, ttl))
            .map(|(gateway, _)| gateway.clone())
            .collect();
        for gateway in expired {
            tracing::debug!(%gateway, "forgetting expired gateway");
            self.forget(&gateway);
        }
    }

    fn forget(&mut self, gateway: &GatewayId) {
        let Some(holdings) = self.gateways.remove(gateway) else {
            return;
        };
        for guild_id in &holdings.guilds {
            unindex(&mut self.guilds, guild_id, gateway);
        }
        for user_id in &holdings.users {
            unindex(&mut self.users, user_id, gateway);
        }
    }
}

/// Drops the gateway from one id's holders, and the id itself once nobody
/// holds it, so released guilds do not pile up as empty sets.
fn unindex(holders: &mut Holders, id: &str, gateway: &GatewayId) {
    if let Some(gateways) = holders.get_mut(id) {
        gateways.remove(gateway);
        if gateways.is_empty() {
            holders.remove(id);
        }
    }
}

#[async_trait]
impl Registry for MemoryRegistry {
    async fn heartbeat(&self, gateway: &GatewayId, known: Option<&Epoch>) -> RegistryResult<Epoch> {
        let now = Instant::now();
        let mut state = self.state();
        state.touch(gateway, now, self.ttl);
        state.forget_expired(now, self.ttl);
        let epoch = state.epoch.get_or_insert_with(new_epoch).clone();
        if known.is_some_and(|known| *known != epoch) {
            state.recovering_until = Some(now + self.ttl);
        }
        Ok(epoch)
    }

    async fn hold_guilds(&self, gateway: &GatewayId, guild_ids: &[String]) -> RegistryResult<()> {
        let now = Instant::now();
        self.state()
            .hold(Scope::Guild, gateway, guild_ids, now, self.ttl);
        Ok(())
    }

    async fn release_guilds(
        &self,
        gateway: &GatewayId,
        guild_ids: &[String],
    ) -> RegistryResult<()> {
        self.state().release(Scope::Guild, gateway, guild_ids);
        Ok(())
    }

    async fn hold_users(&self, gateway: &GatewayId, user_ids: &[String]) -> RegistryResult<()> {
        let now = Instant::now();
        self.state()
            .hold(Scope::User, gateway, user_ids, now, self.ttl);
        Ok(())
    }

    async fn release_users(&self, gateway: &GatewayId, user_ids: &[String]) -> RegistryResult<()> {
        self.state().release(Scope::User, gateway, user_ids);
        Ok(())
    }

    async fn live_gateways(&self) -> RegistryResult<Vec<GatewayId>> {
        let now = Instant::now();
        let mut live: Vec<GatewayId> = self
            .state()
            .gateways
            .iter()
            .filter(|(_, holdings)| holdings.is_alive(now, self.ttl))
            .map(|(gateway, _)| gateway.clone())
            .collect();
        live.sort_unstable();
        Ok(live)
    }

    async fn gateways_for_guild(&self, guild_id: &str) -> RegistryResult<Vec<GatewayId>> {
        let guild_ids = [guild_id.to_owned()];
        self.live_holders([(Scope::Guild, &guild_ids), (Scope::User, &[])])
    }

    async fn gateways_for_audience(
        &self,
        user_ids: &[String],
        guild_ids: &[String],
    ) -> RegistryResult<Vec<GatewayId>> {
        self.live_holders([(Scope::User, user_ids), (Scope::Guild, guild_ids)])
    }

    async fn deregister(&self, gateway: &GatewayId) -> RegistryResult<()> {
        self.state().forget(gateway);
        Ok(())
    }

    async fn revoke_session(&self, session_id: &str, ttl: Duration) -> RegistryResult<()> {
        let now = Instant::now();
        let mut revoked = self.revoked();
        revoked.forget_expired(now);
        revoked.revoke(session_id, now + ttl);
        Ok(())
    }

    async fn is_session_revoked(&self, session_id: &str) -> RegistryResult<bool> {
        let now = Instant::now();
        let mut revoked = self.revoked();
        revoked.forget_expired(now);
        Ok(revoked.is_revoked(session_id, now))
    }

    async fn append_to_logs(
        &self,
        event_id: &str,
        scopes: &[String],
        event: &[u8],
        at_unix_ms: u64,
    ) -> RegistryResult<Vec<LogPosition>> {
        let config = &self.log_config;
        Ok(self
            .logs()
            .append(config, event_id, scopes, event, at_unix_ms, Instant::now()))
    }

    async fn log_head(&self, scope: &str) -> RegistryResult<Option<LogPosition>> {
        Ok(Some(self.logs().head(
            &self.log_config,
            scope,
            Instant::now(),
        )))
    }

    async fn replay(&self, position: &LogPosition, limit: usize) -> RegistryResult<Replay> {
        let config = &self.log_config;
        let read = self.logs().read(
            config,
            &position.scope,
            position.offset,
            limit,
            Instant::now(),
        );
        Ok(read.replay(
            &position.epoch,
            position.offset,
            limit,
            config.oldest_unix_ms(),
        ))
    }
}
