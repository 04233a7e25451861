//! The Redis registry: the routing table shared by every gateway and domain
//! service of a multi-process deployment.
//!
//! Key layout, all under `config.key_prefix` (`{p}`):
//! - `{p}gw:{gateway}`: liveness, `SET … PX ttl` on every heartbeat and hold;
//! - `{p}guild:{guild_id}`, `{p}user:{user_id}`: sets of the gateways holding
//!   that guild or user, read by lookups;
//! - `{p}gateways`: the set of gateways that heartbeat, read by producers
//!   to know which gateways must stream from them before they are ready;
//!   dead members are removed as a read meets them, like the sets below;
//! - `{p}gw-guilds:{gateway}`, `{p}gw-users:{gateway}`: what one gateway
//!   holds, read by `deregister`. They expire with the liveness key, so a
//!   crashed gateway leaves nothing permanent there;
//! - `{p}revoked-session:{session_id}`: a revoked session, `SET … PX ttl`
//!   with the access-token lifetime, so it goes away by itself;
//! - `{p}epoch`: the life of this state, a ULID set by the first heartbeat
//!   that finds none, never expiring: it is missing only if the state was
//!   lost (or no gateway ever heartbeated);
//! - `{p}recovering`: set `PX ttl` by a heartbeat that finds a different
//!   epoch than its gateway knew. While it exists, or while `epoch` is
//!   missing, lookups answer `Recovering`;
//! - `{p}log:{scope}` and `{p}log-meta:{scope}`: a replay log (`replay.rs`),
//!   a stream whose entry ids are the offsets (`<offset>-0`) and a hash of
//!   its epoch and head, both expiring when the log is idle for its
//!   retention; `{p}logged:{event_id}`: the positions of an appended event,
//!   `PX` the marker TTL.
//!
//! The variable part is always last and follows a fixed head, so no two kinds
//! of key can collide whatever the ids contain.
//!
//! Each call is one round trip on one shared [`ConnectionManager`], so a
//! process holds a fixed number of connections however many sockets it
//! serves. Every call has a response timeout, a reconnect is tried twice
//! with short timeouts, and a circuit breaker (`breaker.rs`) answers at
//! once while Redis keeps failing: an unavailable Redis costs callers an
//! error they have a fallback for, never seconds. Lookups run a Lua script that filters out gateways whose liveness
//! key has expired and removes them from the sets it read: a crashed
//! gateway's entries go away as they are met, with no `KEYS` or `SCAN`.
//!
//! The scripts read liveness keys they were not given as `KEYS`, which a
//! single Redis (or a Sentinel set-up) allows and Redis Cluster does not.

use std::collections::BTreeSet;
use std::time::Duration;

use async_trait::async_trait;
use redis::Script;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::LogPosition;
use crate::breaker::Breaker;
use crate::replay::{self, LogConfig, LogEntry, LogRead, Replay};
use crate::{
    Epoch, GatewayId, RedisOptions, Registry, RegistryConfig, RegistryError, RegistryResult, Scope,
};

/// A connection manager whose calls are bounded by `options`: the response
/// timeout on every command, the connection timeout on each attempt, and
/// one quick retry. A reconnect in progress is awaited by every call on the
/// connection, so redis-rs' default of six retries with exponential backoff
/// made each call wait seconds while Redis was down. Shared with the
/// presence store, which keeps its state in the same Redis. The client
/// comes from [`RedisOptions::client`], so a `rediss://` URL gets TLS.
pub async fn connection_manager(
    url: &str,
    options: &RedisOptions,
) -> redis::RedisResult<ConnectionManager> {
    let client = options.client(url)?;
    let config = ConnectionManagerConfig::new()
        .set_response_timeout(Some(options.timeout))
        .set_connection_timeout(Some(options.timeout))
        .set_number_of_retries(1)
        .set_min_delay(Duration::from_millis(20))
        .set_max_delay(options.timeout);
    ConnectionManager::new_with_config(client, config).await
}

/// KEYS: the sets of gateways to read. ARGV[1]: the liveness key prefix;
/// ARGV[2], ARGV[3]: the epoch and recovering keys, or '' for a read that
/// does not depend on them (the set of all gateways). Returns
/// `{'recovering'}` while the state may be incomplete, else `'ok'` followed
/// by the live gateway ids, without duplicates, in no order: Lua sorts by
/// the server's locale, so the caller sorts.
const LIVE_HOLDERS_LUA: &str = r"
if ARGV[2] ~= '' and (redis.call('EXISTS', ARGV[2]) == 0 or redis.call('EXISTS', ARGV[3]) == 1) then
    return {'recovering'}
end
local liveness_prefix = ARGV[1]
local is_alive = {}
local live = {'ok'}
for _, holders_key in ipairs(KEYS) do
    local dead = {}
    for _, gateway in ipairs(redis.call('SMEMBERS', holders_key)) do
        local alive = is_alive[gateway]
        if alive == nil then
            alive = redis.call('EXISTS', liveness_prefix .. gateway) == 1
            is_alive[gateway] = alive
            if alive then
                live[#live + 1] = gateway
            end
        end
        if not alive then
            dead[#dead + 1] = gateway
        end
    end
    if #dead > 0 then
        redis.call('SREM', holders_key, unpack(dead))
    end
end
return live
";

/// KEYS[1]: liveness key; KEYS[2], KEYS[3]: what the gateway holds (guilds,
/// users); KEYS[4], KEYS[5]: the epoch and recovering keys; KEYS[6]: the
/// set of all gateways. ARGV[1]: the TTL in ms; ARGV[2]: an epoch to start
/// if there is none; ARGV[3]: the epoch the gateway knew, or ''; ARGV[4]:
/// the gateway id. Returns the epoch. One script, so that no
/// lookup can slip between a new epoch and the recovery it starts.
const HEARTBEAT_LUA: &str = r"
local ttl = ARGV[1]
redis.call('SET', KEYS[1], 1, 'PX', ttl)
redis.call('SADD', KEYS[6], ARGV[4])
redis.call('PEXPIRE', KEYS[2], ttl)
redis.call('PEXPIRE', KEYS[3], ttl)
local epoch = redis.call('GET', KEYS[4])
if not epoch then
    epoch = ARGV[2]
    redis.call('SET', KEYS[4], epoch)
end
if ARGV[3] ~= '' and ARGV[3] ~= epoch then
    redis.call('SET', KEYS[5], 1, 'PX', ttl)
end
return epoch
";

/// KEYS[1]: liveness key; KEYS[2], KEYS[3]: what the gateway holds (guilds,
/// users); KEYS[4]: the set of all gateways. ARGV[1]: the gateway id; ARGV[2], ARGV[3]: the guild and user set
/// prefixes. A script rather than read-then-write so that a hold racing
/// with the shutdown cannot slip between the two.
const DEREGISTER_LUA: &str = r"
local gateway = ARGV[1]
for i = 2, 3 do
    local holders_prefix = ARGV[i]
    for _, id in ipairs(redis.call('SMEMBERS', KEYS[i])) do
        redis.call('SREM', holders_prefix .. id, gateway)
    end
end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
redis.call('SREM', KEYS[4], gateway)
return 0
";

pub struct RedisRegistry {
    conn: ConnectionManager,
    breaker: Breaker,
    keys: Keys,
    /// The TTL in Redis' unit. At least 1: Redis rejects `PX 0`.
    ttl_ms: u64,
    live_holders: Script,
    deregister: Script,
    heartbeat: Script,
    log_config: LogConfig,
    append: Script,
    log_head: Script,
}

impl RedisRegistry {
    /// Connects, and loads the scripts so that a Redis that cannot run them
    /// fails start-up rather than the first lookup.
    pub async fn connect(url: &str, config: RegistryConfig) -> RegistryResult<Self> {
        let mut conn = connection_manager(url, &config.redis).await?;
        let live_holders = Script::new(LIVE_HOLDERS_LUA);
        let deregister = Script::new(DEREGISTER_LUA);
        let heartbeat = Script::new(HEARTBEAT_LUA);
        live_holders.load_async(&mut conn).await?;
        deregister.load_async(&mut conn).await?;
        heartbeat.load_async(&mut conn).await?;
        let append = Script::new(replay::APPEND_LUA);
        let log_head = Script::new(replay::HEAD_LUA);
        append.load_async(&mut conn).await?;
        log_head.load_async(&mut conn).await?;
        Ok(Self {
            conn,
            breaker: Breaker::new(config.redis.breaker),
            keys: Keys {
                prefix: config.key_prefix,
            },
            ttl_ms: millis(config.ttl),
            live_holders,
            deregister,
            heartbeat,
            log_config: config.log,
            append,
            log_head,
        })
    }

    /// Queues the liveness writes shared by `heartbeat` and the holds.
    fn queue_heartbeat(&self, pipe: &mut redis::Pipeline, gateway: &GatewayId) {
        pipe.cmd("SET")
            .arg(self.keys.liveness(gateway))
            .arg(1)
            .arg("PX")
            .arg(self.ttl_ms)
            .ignore();
        pipe.sadd(self.keys.gateways(), gateway.as_str()).ignore();
        for scope in [Scope::Guild, Scope::User] {
            pipe.cmd("PEXPIRE")
                .arg(self.keys.held(scope, gateway))
                .arg(self.ttl_ms)
                .ignore();
        }
    }

    async fn hold(&self, scope: Scope, gateway: &GatewayId, ids: &[String]) -> RegistryResult<()> {
        let mut pipe = redis::pipe();
        // MULTI/EXEC: both indexes change together or not at all, so
        // `deregister` always finds what the lookups can see.
        pipe.atomic();
        if !ids.is_empty() {
            for id in ids {
                pipe.sadd(self.keys.holders(scope, id), gateway.as_str())
                    .ignore();
            }
            pipe.sadd(self.keys.held(scope, gateway), ids).ignore();
        }
        // After the SADDs, so that a reverse set created just now gets its
        // TTL in the same transaction.
        self.queue_heartbeat(&mut pipe, gateway);
        pipe.exec_async(&mut self.conn.clone()).await?;
        Ok(())
    }

    async fn release(
        &self,
        scope: Scope,
        gateway: &GatewayId,
        ids: &[String],
    ) -> RegistryResult<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        pipe.atomic();
        for id in ids {
            pipe.srem(self.keys.holders(scope, id), gateway.as_str())
                .ignore();
        }
        pipe.srem(self.keys.held(scope, gateway), ids).ignore();
        pipe.exec_async(&mut self.conn.clone()).await?;
        Ok(())
    }

    async fn live_holders(
        &self,
        wanted: [(Scope, &[String]); 2],
    ) -> RegistryResult<Vec<GatewayId>> {
        // Deduplicated so that the script reads each set once.
        let holders_keys: BTreeSet<String> = wanted
            .iter()
            .flat_map(|(scope, ids)| ids.iter().map(|id| self.keys.holders(*scope, id)))
            .collect();
        if holders_keys.is_empty() {
            return Ok(Vec::new());
        }
        let mut invocation = self.live_holders.prepare_invoke();
        for key in &holders_keys {
            invocation.key(key);
        }
        invocation
            .arg(self.keys.liveness_prefix())
            .arg(self.keys.epoch())
            .arg(self.keys.recovering());
        let mut live: Vec<String> = invocation.invoke_async(&mut self.conn.clone()).await?;
        if live.first().map(String::as_str) != Some("ok") {
            return Err(crate::RegistryError::Recovering);
        }
        live.swap_remove(0);
        live.sort_unstable();
        live.dedup();
        Ok(live.into_iter().map(GatewayId::new).collect())
    }
}

/// Builds every key from the prefix, so the layout lives in one place.
struct Keys {
    prefix: String,
}

impl Keys {
    fn liveness_prefix(&self) -> String {
        format!("{}gw:", self.prefix)
    }

    fn liveness(&self, gateway: &GatewayId) -> String {
        format!("{}gw:{gateway}", self.prefix)
    }

    fn gateways(&self) -> String {
        format!("{}gateways", self.prefix)
    }

    fn holders_prefix(&self, scope: Scope) -> String {
        match scope {
            Scope::Guild => format!("{}guild:", self.prefix),
            Scope::User => format!("{}user:", self.prefix),
        }
    }

    /// The set of gateways holding one guild or user.
    fn holders(&self, scope: Scope, id: &str) -> String {
        format!("{}{id}", self.holders_prefix(scope))
    }

    /// The set of guilds or users one gateway holds.
    fn held(&self, scope: Scope, gateway: &GatewayId) -> String {
        match scope {
            Scope::Guild => format!("{}gw-guilds:{gateway}", self.prefix),
            Scope::User => format!("{}gw-users:{gateway}", self.prefix),
        }
    }

    fn epoch(&self) -> String {
        format!("{}epoch", self.prefix)
    }

    fn recovering(&self) -> String {
        format!("{}recovering", self.prefix)
    }

    /// A replay log's meta hash (`e`: epoch, `n`: head) and its stream.
    fn log(&self, scope: &str) -> (String, String) {
        (
            format!("{}log-meta:{scope}", self.prefix),
            format!("{}log:{scope}", self.prefix),
        )
    }

    /// Remembers the positions of one appended event.
    fn logged_event(&self, event_id: &str) -> String {
        format!("{}logged:{event_id}", self.prefix)
    }

    /// The marker of one revoked session.
    fn revoked_session(&self, session_id: &str) -> String {
        format!("{}revoked-session:{session_id}", self.prefix)
    }
}

#[async_trait]
impl Registry for RedisRegistry {
    async fn heartbeat(&self, gateway: &GatewayId, known: Option<&Epoch>) -> RegistryResult<Epoch> {
        self.breaker
            .call(async {
                let epoch: String = self
                    .heartbeat
                    .key(self.keys.liveness(gateway))
                    .key(self.keys.held(Scope::Guild, gateway))
                    .key(self.keys.held(Scope::User, gateway))
                    .key(self.keys.epoch())
                    .key(self.keys.recovering())
                    .key(self.keys.gateways())
                    .arg(self.ttl_ms)
                    .arg(ulid::Ulid::generate().to_string())
                    .arg(known.map_or("", Epoch::as_str))
                    .arg(gateway.as_str())
                    .invoke_async(&mut self.conn.clone())
                    .await?;
                Ok(Epoch::new(epoch))
            })
            .await
    }

    async fn hold_guilds(&self, gateway: &GatewayId, guild_ids: &[String]) -> RegistryResult<()> {
        self.breaker
            .call(async { self.hold(Scope::Guild, gateway, guild_ids).await })
            .await
    }

    async fn release_guilds(
        &self,
        gateway: &GatewayId,
        guild_ids: &[String],
    ) -> RegistryResult<()> {
        self.breaker
            .call(async { self.release(Scope::Guild, gateway, guild_ids).await })
            .await
    }

    async fn hold_users(&self, gateway: &GatewayId, user_ids: &[String]) -> RegistryResult<()> {
        self.breaker
            .call(async { self.hold(Scope::User, gateway, user_ids).await })
            .await
    }

    async fn release_users(&self, gateway: &GatewayId, user_ids: &[String]) -> RegistryResult<()> {
        self.breaker
            .call(async { self.release(Scope::User, gateway, user_ids).await })
            .await
    }

    async fn live_gateways(&self) -> RegistryResult<Vec<GatewayId>> {
        self.breaker
            .call(async {
                let mut live: Vec<String> = self
                    .live_holders
                    .key(self.keys.gateways())
                    .arg(self.keys.liveness_prefix())
                    .arg("")
                    .arg("")
                    .invoke_async(&mut self.conn.clone())
                    .await?;
                if !live.is_empty() {
                    // The script's leading 'ok'.
                    live.swap_remove(0);
                }
                live.sort_unstable();
                Ok(live.into_iter().map(GatewayId::new).collect())
            })
            .await
    }

    async fn gateways_for_guild(&self, guild_id: &str) -> RegistryResult<Vec<GatewayId>> {
        self.breaker
            .call(async {
                let guild_ids = [guild_id.to_owned()];
                self.live_holders([(Scope::Guild, &guild_ids), (Scope::User, &[])])
                    .await
            })
            .await
    }

    async fn gateways_for_audience(
        &self,
        user_ids: &[String],
        guild_ids: &[String],
    ) -> RegistryResult<Vec<GatewayId>> {
        self.breaker
            .call(async {
                self.live_holders([(Scope::User, user_ids), (Scope::Guild, guild_ids)])
                    .await
            })
            .await
    }

    async fn deregister(&self, gateway: &GatewayId) -> RegistryResult<()> {
        self.breaker
            .call(async {
                self.deregister
                    .key(self.keys.liveness(gateway))
                    .key(self.keys.held(Scope::Guild, gateway))
                    .key(self.keys.held(Scope::User, gateway))
                    .key(self.keys.gateways())
                    .arg(gateway.as_str())
                    .arg(self.keys.holders_prefix(Scope::Guild))
                    .arg(self.keys.holders_prefix(Scope::User))
                    .invoke_async::<()>(&mut self.conn.clone())
                    .await?;
                Ok(())
            })
            .await
    }

    async fn revoke_session(&self, session_id: &str, ttl: Duration) -> RegistryResult<()> {
        self.breaker
            .call(async {
                let ttl_ms = millis(ttl);
                redis::cmd("SET")
                    .arg(self.keys.revoked_session(session_id))
                    .arg(1)
                    .arg("PX")
                    .arg(ttl_ms)
                    .exec_async(&mut self.conn.clone())
                    .await?;
                Ok(())
            })
            .await
    }

    async fn is_session_revoked(&self, session_id: &str) -> RegistryResult<bool> {
        self.breaker
            .call(async {
                let exists: bool = redis::cmd("EXISTS")
                    .arg(self.keys.revoked_session(session_id))
                    .query_async(&mut self.conn.clone())
                    .await?;
                Ok(exists)
            })
            .await
    }

    async fn append_to_logs(
        &self,
        event_id: &str,
        scopes: &[String],
        event: &[u8],
        at_unix_ms: u64,
    ) -> RegistryResult<Vec<LogPosition>> {
        if scopes.is_empty() {
            return Ok(Vec::new());
        }
        self.breaker
            .call(async {
                let mut call = self.append.prepare_invoke();
                if event_id.is_empty() {
                    call.key("");
                } else {
                    call.key(self.keys.logged_event(event_id));
                }
                for scope in scopes {
                    let (meta, stream) = self.keys.log(scope);
                    call.key(meta).key(stream);
                }
                let answer: String = call
                    .arg(event)
                    .arg(at_unix_ms)
                    .arg(replay::new_log_epoch())
                    .arg(millis(self.log_config.marker_ttl))
                    .arg(millis(self.log_config.retention))
                    .arg(self.log_config.max_len)
                    .invoke_async(&mut self.conn.clone())
                    .await?;
                replay::parse_appended(scopes, &answer).ok_or_else(|| {
                    RegistryError::Redis(redis::RedisError::from((
                        redis::ErrorKind::UnexpectedReturnType,
                        "unexpected append answer",
                    )))
                })
            })
            .await
    }

    async fn log_head(&self, scope: &str) -> RegistryResult<Option<LogPosition>> {
        self.breaker
            .call(async {
                let (meta, stream) = self.keys.log(scope);
                let (epoch, head): (String, u64) = self
                    .log_head
                    .key(meta)
                    .key(stream)
                    .arg(replay::new_log_epoch())
                    .arg(millis(self.log_config.retention))
                    .invoke_async(&mut self.conn.clone())
                    .await?;
                Ok(Some(LogPosition {
                    scope: scope.to_owned(),
                    epoch,
                    offset: head,
                }))
            })
            .await
    }

    async fn replay(&self, position: &LogPosition, limit: usize) -> RegistryResult<Replay> {
        self.breaker
            .call(async {
                let (meta, stream) = self.keys.log(&position.scope);
                let start = format!("{}-0", position.offset.saturating_add(1));
                let ((epoch, head), entries): (
                    (Option<String>, Option<u64>),
                    Vec<(String, Vec<Vec<u8>>)>,
                ) = redis::pipe()
                    .atomic()
                    .cmd("HMGET")
                    .arg(&meta)
                    .arg("e")
                    .arg("n")
                    .cmd("XRANGE")
                    .arg(&stream)
                    .arg(start)
                    .arg("+")
                    .arg("COUNT")
                    .arg(limit.saturating_add(1))
                    .query_async(&mut self.conn.clone())
                    .await?;
                let read = LogRead {
                    epoch: epoch.unwrap_or_default(),
                    head: head.unwrap_or(0),
                    entries: entries.into_iter().filter_map(log_entry).collect(),
                };
                Ok(read.replay(
                    &position.epoch,
                    position.offset,
                    limit,
                    self.log_config.oldest_unix_ms(),
                ))
            })
            .await
    }
}

/// One stream entry, `<offset>-0` with the fields `e` (the event) and `t`
/// (its time); `None` for anything else, which the replay then reports as
/// a gap.
fn log_entry((id, fields): (String, Vec<Vec<u8>>)) -> Option<LogEntry> {
    let offset = id.strip_suffix("-0")?.parse().ok()?;
    let mut event = None;
    let mut at_unix_ms = None;
    for pair in fields.chunks(2) {
        match pair {
            [name, value] if name == b"e" => event = Some(value.clone()),
            [name, value] if name == b"t" => {
                at_unix_ms = std::str::from_utf8(value).ok()?.parse().ok();
            }
            _ => {}
        }
    }
    Some(LogEntry {
        offset,
        at_unix_ms: at_unix_ms?,
        event: event?,
    })
}

/// A duration in Redis' unit, at least 1: Redis rejects `PX 0`.
fn millis(duration: Duration) -> u64 {
    replay::millis(duration).max(1)
}
