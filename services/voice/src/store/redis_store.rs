//! The roster in Redis: one roster for every voice replica, which outlives
//! any of them.
//!
//! Key layout, all under `config.key_prefix` (`{p}`); ids are ULIDs (the
//! gRPC and webhook edges check), so `:` never occurs inside one:
//! - `{p}seat:{guild}:{channel}:{user}`: one participant, the JSON of the
//!   roster's own record, so nothing here restates a rule;
//! - `{p}members:{guild}:{channel}`: set of the channel's user ids; Redis
//!   drops it with its last member;
//! - `{p}user:{user}`: `{guild}:{channel}`, the one channel the user is in;
//! - `{p}expiry`: sorted set, user id → expiry (wall-clock unix ms); its
//!   size is the participant count, its low end the prune candidates;
//! - `{p}channels`: set of `{guild}:{channel}` with a participant (its size
//!   is the channel count; the drift check lists it);
//! - `{p}guild:{guild}`: set of that guild's channel ids with a participant.
//!
//! Why optimistic transactions rather than Lua: the rules are Rust
//! ([`crate::roster`]), and a script would be a second copy of them to keep
//! in step. So each change WATCHes the keys its [`Scope`] reads, loads that
//! slice, runs the pure logic on it, and writes the difference in one
//! MULTI/EXEC; if another replica touched a watched key in between, EXEC
//! does nothing and the change runs again on fresh data, a bounded number
//! of times ([`StoreError::Contended`] past it). A change that writes
//! nothing (a snapshot, a no-op leave) skips EXEC: its answer is what each
//! key held when read. Seats are keys of their own so that a flag update
//! watches its seat and the channel's member set, not every seat there.
//!
//! WATCH is per connection, so transactions run one at a time on a
//! connection of their own, not the shared auto-reconnecting manager: a
//! reconnect between WATCH and EXEC would drop the watches and let a stale
//! change commit. Any failure drops that connection; the next change opens
//! a new one. Every command has the response timeout of
//! [`RedisOptions`], and each whole change a deadline.
//!
//! Approximations: the global bounds (`max_channels`, `max_participants`)
//! read the totals without watching them, since every join and renewal
//! writes them and watching would make all joins conflict; two replicas
//! racing past a bound can exceed it by one each. The per-channel bound is
//! exact. Expiry compares the callers' wall clocks, which NTP keeps within
//! a fraction of the TTL. As with the other Redis stores, key names are
//! built from the prefix, which a single Redis (or Sentinel) allows and
//! Redis Cluster does not.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use async_trait::async_trait;
use filament_ids::GuildId;
use filament_proto::v1::Event;
use filament_registry::{Breaker, BreakerConfig, RedisOptions, Tripped};
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Pipeline};
use tokio::sync::Mutex;

use super::{Applied, Change, Outcome, RosterStore, Scope, StoreError, StoreResult};
use crate::roster::{ChannelKey, Clock, Elsewhere, Limits, Participant, Roster};

/// How often a change runs again after another replica changed what it
/// read. Conflicts need two changes on one seat or channel within a round
/// trip; sixteen in a row means something is hammering it.
const MAX_ATTEMPTS: u32 = 16;
/// Expired participants removed per transaction, and transactions per
/// prune: bounded work per call; the pruner comes back for the rest.
const PRUNE_BATCH: usize = 128;
const PRUNE_ROUNDS: usize = 8;
/// A change may take this many breaker call timeouts (each already four
/// command timeouts) in all, retries included.
const DEADLINE_CALLS: u32 = 4;

#[derive(Debug, Clone)]
pub struct RedisRosterStoreConfig {
    pub limits: Limits,
    pub ttl: Duration,
    /// Prepended to every key (`$FILAMENT_REGISTRY_PREFIX` + `voice:`).
    pub key_prefix: String,
    pub redis: RedisOptions,
}

pub struct RedisRosterStore {
    client: redis::Client,
    /// The transaction connection; `None` after a failure.
    conn: Mutex<Option<MultiplexedConnection>>,
    keys: Keys,
    limits: Limits,
    ttl: Duration,
    redis: RedisOptions,
    /// Fails changes at once while Redis keeps failing: the gateway asks
    /// for a roster on every subscribe, and a Redis outage must cost that
    /// subscribe nothing, not a deadline per call queued on the connection.
    breaker: Breaker,
}

impl RedisRosterStore {
    /// Connects at once, so that an unreachable Redis fails start-up rather
    /// than the first join.
    pub async fn connect(url: &str, config: RedisRosterStoreConfig) -> StoreResult<Self> {
        let store = Self {
            client: config.redis.client(url)?,
            conn: Mutex::new(None),
            keys: Keys(config.key_prefix),
            limits: config.limits,
            ttl: config.ttl,
            breaker: Breaker::new(BreakerConfig {
                call_timeout: config.redis.breaker.call_timeout * DEADLINE_CALLS,
                ..config.redis.breaker
            }),
            redis: config.redis,
        };
        let conn = store.open().await?;
        *store.conn.lock().await = Some(conn);
        Ok(store)
    }

    async fn open(&self) -> redis::RedisResult<MultiplexedConnection> {
        let timeout = Some(self.redis.timeout);
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(timeout)
            .set_response_timeout(timeout);
        self.client
            .get_multiplexed_async_connection_with_config(&config)
            .await
    }

    /// Runs `work` on the transaction connection, opening one if needed and
    /// dropping it after a failure, within the deadline (the breaker's call
    /// timeout).
    async fn on_connection<T>(
        &self,
        work: impl AsyncFnOnce(&mut MultiplexedConnection) -> StoreResult<T>,
    ) -> StoreResult<T> {
        let run = async {
            let mut slot = self.conn.lock().await;
            // Taken out, so that a change cancelled by the deadline drops
            // the connection with whatever it was watching.
            let mut conn = match slot.take() {
                Some(conn) => conn,
                None => self.open().await?,
            };
            let result = work(&mut conn).await;
            // Kept only after a clean end: a failure may leave keys watched.
            if matches!(result, Ok(_) | Err(StoreError::Refused(_))) {
                *slot = Some(conn);
            }
            result
        };
        let unreachable =
            |err: &StoreError| matches!(err, StoreError::Redis(_) | StoreError::TimedOut);
        match self.breaker.run(run, unreachable).await {
            Ok(result) => result,
            Err(Tripped::TimedOut) => Err(StoreError::TimedOut),
            Err(Tripped::Open) => Err(StoreError::CircuitOpen),
        }
    }

    /// One change, run again on fresh data while another replica's commit
    /// gets in the way.
    async fn transact(
        &self,
        conn: &mut MultiplexedConnection,
        change: &Change<'_>,
        clock: Clock,
        out: &mut Vec<Event>,
    ) -> StoreResult<(Applied, usize)> {
        let mark = out.len();
        for attempt in 1..=MAX_ATTEMPTS {
            out.truncate(mark);
            if let Some(done) = self.attempt(conn, change, clock, out).await? {
                return Ok(done);
            }
            back_off(attempt).await;
        }
        out.truncate(mark);
        Err(StoreError::Contended(MAX_ATTEMPTS))
    }

    /// Loads, runs and commits once. `None`: a watched key changed, nothing
    /// was written. Also returns how many prune candidates were loaded.
    async fn attempt(
        &self,
        conn: &mut MultiplexedConnection,
        change: &Change<'_>,
        clock: Clock,
        out: &mut Vec<Event>,
    ) -> StoreResult<Option<(Applied, usize)>> {
        let slice = self.load(conn, change.scope(), clock).await?;
        let mut roster = slice.roster(self.limits.clone(), self.ttl);
        let result = change.run(&mut roster, clock, out);
        let participants = match slice.writes(&self.keys, &roster)? {
            None => {
                redis::cmd("UNWATCH").exec_async(conn).await?;
                None
            }
            Some(pipe) => match pipe.query_async::<Option<(usize,)>>(conn).await? {
                None => return Ok(None),
                Some((count,)) => Some(count),
            },
        };
        let applied = Applied {
            outcome: result?,
            participants,
        };
        Ok(Some((applied, slice.candidates)))
    }

    /// Prunes in bounded batches until a batch comes back short.
    async fn prune(
        &self,
        conn: &mut MultiplexedConnection,
        clock: Clock,
        out: &mut Vec<Event>,
    ) -> StoreResult<Applied> {
        let mut pruned = 0;
        let mut participants = None;
        for _ in 0..PRUNE_ROUNDS {
            let (applied, candidates) = self.transact(conn, &Change::Prune, clock, out).await?;
            let Outcome::Pruned(n) = applied.outcome else {
                return Err(StoreError::Mismatch("prune"));
            };
            pruned += n;
            participants = applied.participants.or(participants);
            if candidates < PRUNE_BATCH {
                break;
            }
        }
        Ok(Applied {
            outcome: Outcome::Pruned(pruned),
            participants,
        })
    }

    // --- Loading a slice (WATCH first, then read) ------------------------

    async fn load(
        &self,
        conn: &mut MultiplexedConnection,
        scope: Scope<'_>,
        clock: Clock,
    ) -> StoreResult<Slice> {
        let mut slice = Slice::default();
        match scope {
            Scope::Channel(key) => self.load_channel(conn, key, &mut slice).await?,
            Scope::Seat(key, user) => {
                let seat = [(key.clone(), user.to_owned())];
                self.load_seats(conn, &seat, &mut slice).await?;
            }
            Scope::UserSeat(user) => {
                self.load_user_seats(conn, &[user.to_owned()], false, &mut slice)
                    .await?;
            }
            Scope::Join(key, user) => {
                self.load_user_seats(conn, &[user.to_owned()], false, &mut slice)
                    .await?;
                self.load_channel(conn, key, &mut slice).await?;
                slice.totals = Some(self.totals(conn).await?);
            }
            Scope::Guild(guild) => self.load_guild(conn, guild, &mut slice).await?,
            Scope::Expired => {
                let due = self.expired(conn, clock).await?;
                slice.candidates = due.len();
                self.load_user_seats(conn, &due, true, &mut slice).await?;
            }
        }
        Ok(slice)
    }

    /// Every seat of `key`.
    async fn load_channel(
        &self,
        conn: &mut MultiplexedConnection,
        key: &ChannelKey,
        slice: &mut Slice,
    ) -> StoreResult<()> {
        let members = self.keys.members(key);
        let (users,): (Vec<String>,) = redis::pipe()
            .cmd("WATCH")
            .arg(&members)
            .ignore()
            .cmd("SMEMBERS")
            .arg(&members)
            .query_async(conn)
            .await?;
        let seats: Vec<String> = users.iter().map(|u| self.keys.seat(key, u)).collect();
        let mut found = Vec::new();
        if !seats.is_empty() {
            let (raw,): (Vec<Option<String>>,) = redis::pipe()
                .cmd("WATCH")
                .arg(&seats)
                .ignore()
                .cmd("MGET")
                .arg(&seats)
                .query_async(conn)
                .await?;
            found = raw.into_iter().flatten().collect();
        }
        slice.add(key, users.len(), found)
    }

    /// The named seats, and the size of each one's channel.
    async fn load_seats(
        &self,
        conn: &mut MultiplexedConnection,
        seats: &[(ChannelKey, String)],
        slice: &mut Slice,
    ) -> StoreResult<()> {
        if seats.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for (key, user) in seats {
            pipe.cmd("WATCH")
                .arg(self.keys.members(key))
                .arg(self.keys.seat(key, user))
                .ignore();
        }
        for (key, user) in seats {
            pipe.cmd("SCARD").arg(self.keys.members(key));
            pipe.cmd("GET").arg(self.keys.seat(key, user));
        }
        let replies: Vec<(usize, Option<String>)> = pipe.query_async(conn).await?;
        for ((key, _), (size, raw)) in seats.iter().zip(replies) {
            slice.add(key, size, raw.into_iter().collect())?;
        }
        Ok(())
    }

    /// The seats of `users` wherever they are, found through their index.
    /// `from_expiry`: the users came from the expiry set, so one without
    /// an index entry is a stale expiry entry to clear.
    async fn load_user_seats(
        &self,
        conn: &mut MultiplexedConnection,
        users: &[String],
        from_expiry: bool,
        slice: &mut Slice,
    ) -> StoreResult<()> {
        if users.is_empty() {
            return Ok(());
        }
        let index: Vec<String> = users.iter().map(|u| self.keys.user(u)).collect();
        let (at,): (Vec<Option<String>>,) = redis::pipe()
            .cmd("WATCH")
            .arg(&index)
            .ignore()
            .cmd("MGET")
            .arg(&index)
            .query_async(conn)
            .await?;
        let mut seats = Vec::new();
        for (user, at) in users.iter().zip(at) {
            match at.as_deref().and_then(parse_channel) {
                Some(key) => seats.push((key, user.clone())),
                None if from_expiry => slice.stale.push(user.clone()),
                None => {}
            }
        }
        self.load_seats(conn, &seats, slice).await?;
        for (key, user) in seats {
            if !slice.has_seat(&key, &user) {
                slice.stale.push(user);
            }
        }
        Ok(())
    }

    async fn load_guild(
        &self,
        conn: &mut MultiplexedConnection,
        guild: GuildId,
        slice: &mut Slice,
    ) -> StoreResult<()> {
        let channels: Vec<String> = redis::cmd("SMEMBERS")
            .arg(self.keys.guild(guild))
            .query_async(conn)
            .await?;
        // Only this store writes the set, always canonically; a member
        // that does not parse is not a channel.
        for channel_id in channels.iter().filter_map(|c| c.parse().ok()) {
            let key = ChannelKey {
                guild_id: guild,
                channel_id,
            };
            self.load_channel(conn, &key, slice).await?;
        }
        Ok(())
    }

    /// Channels and participants in voice now. Not watched: see the module
    /// header on the global bounds.
    async fn totals(&self, conn: &mut MultiplexedConnection) -> StoreResult<(usize, usize)> {
        Ok(redis::pipe()
            .cmd("SCARD")
            .arg(self.keys.channels())
            .cmd("ZCARD")
            .arg(self.keys.expiry())
            .query_async(conn)
            .await?)
    }

    /// Up to a batch of users whose expiry is before `clock`.
    async fn expired(
        &self,
        conn: &mut MultiplexedConnection,
        clock: Clock,
    ) -> StoreResult<Vec<String>> {
        Ok(redis::cmd("ZRANGEBYSCORE")
            .arg(self.keys.expiry())
            .arg("-inf")
            .arg(format!("({}", clock.unix_ms))
            .arg("LIMIT")
            .arg(0)
            .arg(PRUNE_BATCH)
            .query_async(conn)
            .await?)
    }
}

#[async_trait]
impl RosterStore for RedisRosterStore {
    async fn apply(
        &self,
        change: &Change<'_>,
        clock: Clock,
        out: &mut Vec<Event>,
    ) -> StoreResult<Applied> {
        let mark = out.len();
        let result = self
            .on_connection(async |conn| match change {
                Change::Prune => self.prune(conn, clock, out).await,
                _ => Ok(self.transact(conn, change, clock, out).await?.0),
            })
            .await;
        if let Err(err) = &result
            && !matches!(err, StoreError::Refused(_))
        {
            out.truncate(mark);
        }
        result
    }

    async fn channels(&self) -> StoreResult<Vec<ChannelKey>> {
        let listed: Vec<String> = self
            .on_connection(async |conn| {
                Ok(redis::cmd("SMEMBERS")
                    .arg(self.keys.channels())
                    .query_async(conn)
                    .await?)
            })
            .await?;
        Ok(listed.iter().filter_map(|c| parse_channel(c)).collect())
    }
}

/// Sleeps a random moment, longer after each conflict, so two replicas
/// that keep colliding stop doing it in step.
async fn back_off(attempt: u32) {
    let ceiling = u128::from(attempt) * 500;
    let micros = ulid::Ulid::generate().random() % ceiling.max(1);
    let micros = u64::try_from(micros).unwrap_or(0);
    tokio::time::sleep(Duration::from_micros(micros)).await;
}

// --- The loaded slice and its writes ----------------------------------------

/// One channel as loaded: how many sat there, and the seats read.
#[derive(Default)]
struct LoadedChannel {
    size: usize,
    seats: BTreeMap<String, Participant>,
}

/// What a change read, as it was when read.
#[derive(Default)]
struct Slice {
    channels: BTreeMap<ChannelKey, LoadedChannel>,
    /// Users whose index (or expiry entry) points at no seat; cleared if
    /// they end the change without one.
    stale: Vec<String>,
    /// Channels and participants in voice, for a join's global bounds.
    totals: Option<(usize, usize)>,
    /// How many prune candidates were read.
    candidates: usize,
}

impl Slice {
    fn add(&mut self, key: &ChannelKey, size: usize, raw: Vec<String>) -> StoreResult<()> {
        let channel = self.channels.entry(key.clone()).or_default();
        channel.size = size;
        for json in raw {
            let participant: Participant = serde_json::from_str(&json)
                .map_err(|err| StoreError::Corrupt(format!("a seat in {key:?}: {err}")))?;
            channel
                .seats
                .insert(participant.user_id().to_owned(), participant);
        }
        Ok(())
    }

    fn has_seat(&self, key: &ChannelKey, user: &str) -> bool {
        self.channels
            .get(key)
            .is_some_and(|c| c.seats.contains_key(user))
    }

    fn roster(&self, limits: Limits, ttl: Duration) -> Roster {
        let elsewhere = self
            .totals
            .map_or_else(Elsewhere::default, |(channels, users)| {
                let seated: usize = self.channels.values().map(|c| c.seats.len()).sum();
                let open = self.channels.values().filter(|c| c.size > 0).count();
                Elsewhere {
                    channels: channels.saturating_sub(open),
                    participants: users.saturating_sub(seated),
                }
            });
        let mut roster = Roster::slice(limits, ttl, elsewhere);
        for (key, channel) in &self.channels {
            roster.load(key, channel.size, channel.seats.values().cloned().collect());
        }
        roster
    }

    /// The MULTI/EXEC that turns what was read into `after`, ending with
    /// the participant count; `None` when nothing changed.
    fn writes(&self, keys: &Keys, after: &Roster) -> StoreResult<Option<Pipeline>> {
        let mut pipe = redis::pipe();
        pipe.atomic();
        let seated: HashMap<(&ChannelKey, &str), &Participant> = after
            .seats()
            .map(|(key, user, p)| ((key, user), p))
            .collect();
        let users_after: HashSet<&str> = seated.keys().map(|(_, user)| *user).collect();
        // Removals first: a user who moved gets their new index entry after.
        let mut any = self.write_removals(&mut pipe, keys, &seated, &users_after);
        for ((key, user), participant) in &seated {
            any |= self.write_seat(&mut pipe, keys, key, user, participant)?;
        }
        for (key, channel) in &self.channels {
            any |= write_channel_index(&mut pipe, keys, key, channel.size, after.channel_size(key));
        }
        if !any {
            return Ok(None);
        }
        pipe.cmd("ZCARD").arg(keys.expiry());
        Ok(Some(pipe))
    }

    fn write_removals(
        &self,
        pipe: &mut Pipeline,
        keys: &Keys,
        seated: &HashMap<(&ChannelKey, &str), &Participant>,
        users_after: &HashSet<&str>,
    ) -> bool {
        let mut any = false;
        for (key, channel) in &self.channels {
            for user in channel.seats.keys() {
                if seated.contains_key(&(key, user.as_str())) {
                    continue;
                }
                pipe.del(keys.seat(key, user)).ignore();
                pipe.srem(keys.members(key), user).ignore();
                any = true;
            }
        }
        let gone = self.channels.values().flat_map(|c| c.seats.keys());
        for user in gone.chain(&self.stale) {
            if !users_after.contains(user.as_str()) {
                pipe.del(keys.user(user)).ignore();
                pipe.zrem(keys.expiry(), user).ignore();
                any = true;
            }
        }
        any
    }

    fn write_seat(
        &self,
        pipe: &mut Pipeline,
        keys: &Keys,
        key: &ChannelKey,
        user: &str,
        participant: &Participant,
    ) -> StoreResult<bool> {
        let before = self.channels.get(key).and_then(|c| c.seats.get(user));
        if before == Some(participant) {
            return Ok(false);
        }
        let json = serde_json::to_string(participant)
            .map_err(|err| StoreError::Corrupt(format!("a seat does not serialize: {err}")))?;
        pipe.set(keys.seat(key, user), json).ignore();
        pipe.zadd(keys.expiry(), user, participant.expires_at_ms())
            .ignore();
        if before.is_none() {
            pipe.sadd(keys.members(key), user).ignore();
            pipe.set(keys.user(user), channel_member(key)).ignore();
        }
        Ok(true)
    }
}

/// Lists or unlists a channel that gained its first or lost its last
/// participant.
fn write_channel_index(
    pipe: &mut Pipeline,
    keys: &Keys,
    key: &ChannelKey,
    before: usize,
    after: usize,
) -> bool {
    match (before > 0, after > 0) {
        (false, true) => {
            pipe.sadd(keys.channels(), channel_member(key)).ignore();
            pipe.sadd(keys.guild(key.guild_id), key.channel_id.to_string())
                .ignore();
        }
        (true, false) => {
            pipe.srem(keys.channels(), channel_member(key)).ignore();
            pipe.srem(keys.guild(key.guild_id), key.channel_id.to_string())
                .ignore();
        }
        _ => return false,
    }
    true
}

// --- Key names ----------------------------------------------------------------

struct Keys(String);

impl Keys {
    fn seat(&self, key: &ChannelKey, user: &str) -> String {
        format!("{}seat:{}:{}:{user}", self.0, key.guild_id, key.channel_id)
    }

    fn members(&self, key: &ChannelKey) -> String {
        format!("{}members:{}:{}", self.0, key.guild_id, key.channel_id)
    }

    fn user(&self, user: &str) -> String {
        format!("{}user:{user}", self.0)
    }

    fn expiry(&self) -> String {
        format!("{}expiry", self.0)
    }

    fn channels(&self) -> String {
        format!("{}channels", self.0)
    }

    fn guild(&self, guild: GuildId) -> String {
        format!("{}guild:{guild}", self.0)
    }
}

fn channel_member(key: &ChannelKey) -> String {
    format!("{}:{}", key.guild_id, key.channel_id)
}

/// The channel of a [`channel_member`]; `None` if either id is not
/// canonical, which no member this store wrote can be.
fn parse_channel(member: &str) -> Option<ChannelKey> {
    let (guild_id, channel_id) = member.split_once(':')?;
    Some(ChannelKey {
        guild_id: guild_id.parse().ok()?,
        channel_id: channel_id.parse().ok()?,
    })
}
