//! The Redis presence store: one state for every presence replica.
//!
//! Key layout, all under `config.key_prefix` (`{p}`):
//! - `{p}leases`: sorted set, gateway id → lease expiry (unix ms, Redis'
//!   own clock, so replicas never disagree on time);
//! - `{p}gw-conns:{gateway}`: set of that gateway's connection numbers;
//! - `{p}conn:{gateway}:{number}`: hash, `user` → user id, and one field
//!   `g:{guild_id}` per guild the connection is present in;
//! - `{p}user-conns:{user_id}`: set of `{gateway}:{number}`, the user's open
//!   connections everywhere;
//! - `{p}guild:{guild_id}`: hash, user id → present connections.
//!
//! Gateway ids are ULIDs (checked by the service), so `conn:{gateway}:{n}`
//! is unambiguous. Every operation is one Lua script, so it is atomic
//! across replicas and each transition is reported exactly once. Nothing
//! scans: expiry reads the lease set by score and each expired gateway's
//! own set, a bounded batch per call. The scripts build key names from the
//! prefix, which a single Redis (or Sentinel) allows and Redis Cluster does
//! not — the same trade-off as the routing registry.

use async_trait::async_trait;
use filament_registry::GatewayId;
use redis::aio::ConnectionManager;
use redis::{Script, Value};

use super::{
    ConnectionKey, Departure, Entered, Lease, PresenceStore, PresenceStoreConfig, StoreError,
    StoreResult,
};

/// Helpers every script starts with.
const PRELUDE: &str = r"
local p = ARGV[1]
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
-- Renews a lease; 1 when it was live (up to and including its expiry).
local function renew(gw, ttl)
  local now = now_ms()
  local expires = redis.call('ZSCORE', p .. 'leases', gw)
  local live = 0
  if expires and tonumber(expires) >= now then live = 1 end
  redis.call('ZADD', p .. 'leases', now + ttl, gw)
  return live
end
local function conn_key(gw, conn) return p .. 'conn:' .. gw .. ':' .. conn end
-- One fewer present connection of user in guild; 1 when it was the last.
local function release(guild, user)
  local key = p .. 'guild:' .. guild
  if redis.call('HINCRBY', key, user, -1) <= 0 then
    redis.call('HDEL', key, user)
    return 1
  end
  return 0
end
-- Removes a connection: {user, user_offline, {guilds gone offline}}, or
-- false when it was not recorded.
local function drop(gw, conn)
  local key = conn_key(gw, conn)
  redis.call('SREM', p .. 'gw-conns:' .. gw, conn)
  local fields = redis.call('HGETALL', key)
  redis.call('DEL', key)
  local user = nil
  for i = 1, #fields, 2 do
    if fields[i] == 'user' then user = fields[i + 1] end
  end
  if not user then return false end
  local offline = {}
  for i = 1, #fields, 2 do
    if string.sub(fields[i], 1, 2) == 'g:' then
      local guild = string.sub(fields[i], 3)
      if release(guild, user) == 1 then offline[#offline + 1] = guild end
    end
  end
  local user_conns = p .. 'user-conns:' .. user
  redis.call('SREM', user_conns, gw .. ':' .. conn)
  local user_offline = 0
  if redis.call('SCARD', user_conns) == 0 then user_offline = 1 end
  return {user, user_offline, offline}
end
local function snapshot(guild, limit)
  local key = p .. 'guild:' .. guild
  if redis.call('HLEN', key) <= limit then return redis.call('HKEYS', key) end
  return redis.call('HRANDFIELD', key, limit)
end
";

/// ARGV: prefix, gateway, ttl ms. Returns 1 when the lease was live.
const HEARTBEAT: &str = r"
return renew(ARGV[2], tonumber(ARGV[3]))
";

/// ARGV: prefix, gateway, connection, user, guild ('' to only connect), ttl
/// ms, max guilds per connection, snapshot limit. Returns {'conflict'},
/// {'too_many_guilds'}, or {'ok', was_live, came_online, present}.
const ENTER: &str = r"
local gw, conn, user, guild = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local key = conn_key(gw, conn)
local owner = redis.call('HGET', key, 'user')
if owner and owner ~= user then return {'conflict'} end
local field = 'g:' .. guild
local entering = guild ~= '' and redis.call('HEXISTS', key, field) == 0
if entering then
  local held = 0
  if owner then held = redis.call('HLEN', key) - 1 end
  if held >= tonumber(ARGV[7]) then return {'too_many_guilds'} end
end
local live = renew(gw, tonumber(ARGV[6]))
if not owner then
  redis.call('HSET', key, 'user', user)
  redis.call('SADD', p .. 'gw-conns:' .. gw, conn)
  redis.call('SADD', p .. 'user-conns:' .. user, gw .. ':' .. conn)
end
if guild == '' then return {'ok', live, 0, {}} end
local came_online = 0
if entering then
  redis.call('HSET', key, field, '1')
  if redis.call('HINCRBY', p .. 'guild:' .. guild, user, 1) == 1 then came_online = 1 end
end
return {'ok', live, came_online, snapshot(guild, tonumber(ARGV[8]))}
";

/// ARGV: prefix, gateway, connection, guild. Returns the user when they
/// went offline in the guild, else nil.
const LEAVE_GUILD: &str = r"
local key = conn_key(ARGV[2], ARGV[3])
local user = redis.call('HGET', key, 'user')
if not user then return false end
if redis.call('HDEL', key, 'g:' .. ARGV[4]) == 0 then return false end
if release(ARGV[4], user) == 1 then return user end
return false
";

/// ARGV: prefix, gateway, connection. Returns a departure or nil.
const DISCONNECT: &str = r"
return drop(ARGV[2], ARGV[3])
";

/// ARGV: prefix, guild, limit.
const PRESENT_IN: &str = r"
return snapshot(ARGV[2], tonumber(ARGV[3]))
";

/// ARGV: prefix, max connections. Returns {more, {departures}}.
const EXPIRE: &str = r"
local budget = tonumber(ARGV[2])
local now = now_ms()
local out = {}
local expired = redis.call('ZRANGEBYSCORE', p .. 'leases', '-inf', string.format('(%d', now), 'LIMIT', 0, 64)
for _, gw in ipairs(expired) do
  if budget <= 0 then break end
  local set = p .. 'gw-conns:' .. gw
  for _, conn in ipairs(redis.call('SRANDMEMBER', set, budget)) do
    local departure = drop(gw, conn)
    if departure then out[#out + 1] = departure end
    budget = budget - 1
  end
  if redis.call('SCARD', set) == 0 then redis.call('ZREM', p .. 'leases', gw) end
end
local more = 0
if budget <= 0 or #expired == 64 then more = 1 end
return {more, out}
";

pub struct RedisPresenceStore {
    conn: ConnectionManager,
    config: PresenceStoreConfig,
    ttl_ms: u64,
    heartbeat: Script,
    enter: Script,
    leave_guild: Script,
    disconnect: Script,
    present_in: Script,
    expire: Script,
}

impl RedisPresenceStore {
    /// Connects and loads every script, so that a Redis that cannot run
    /// them fails start-up rather than the first call.
    pub async fn connect(url: &str, config: PresenceStoreConfig) -> StoreResult<Self> {
        let mut conn = filament_registry::connection_manager(url, &config.redis).await?;
        let script = |body: &str| Script::new(&format!("{PRELUDE}\n{body}"));
        let store = Self {
            ttl_ms: u64::try_from(config.lease_ttl.as_millis())
                .unwrap_or(u64::MAX)
                .max(1),
            heartbeat: script(HEARTBEAT),
            enter: script(ENTER),
            leave_guild: script(LEAVE_GUILD),
            disconnect: script(DISCONNECT),
            present_in: script(PRESENT_IN),
            expire: script(EXPIRE),
            config,
            conn: conn.clone(),
        };
        for script in [
            &store.heartbeat,
            &store.enter,
            &store.leave_guild,
            &store.disconnect,
            &store.present_in,
            &store.expire,
        ] {
            script.load_async(&mut conn).await?;
        }
        Ok(store)
    }

    async fn run(&self, script: &Script, args: &[&str]) -> StoreResult<Value> {
        let mut invocation = script.prepare_invoke();
        invocation.arg(&self.config.key_prefix);
        for arg in args {
            invocation.arg(*arg);
        }
        Ok(invocation.invoke_async(&mut self.conn.clone()).await?)
    }

    async fn enter(
        &self,
        connection: &ConnectionKey,
        user_id: &str,
        guild_id: &str,
    ) -> StoreResult<Entered> {
        let number = connection.connection.to_string();
        let ttl = self.ttl_ms.to_string();
        let max_guilds = self.config.max_guilds_per_connection.to_string();
        let limit = self.config.snapshot_limit.to_string();
        let reply = self
            .run(
                &self.enter,
                &[
                    connection.gateway.as_str(),
                    &number,
                    user_id,
                    guild_id,
                    &ttl,
                    &max_guilds,
                    &limit,
                ],
            )
            .await?;
        let items = array(reply)?;
        match items.first().map(text).transpose()?.as_deref() {
            Some("ok") => {}
            Some("conflict") => return Err(StoreError::ConnectionOwnedByAnotherUser),
            Some("too_many_guilds") => {
                return Err(StoreError::TooManyGuilds {
                    limit: self.config.max_guilds_per_connection,
                });
            }
            other => return Err(StoreError::Protocol(format!("enter replied {other:?}"))),
        }
        let [_, live, came_online, present] = <[Value; 4]>::try_from(items)
            .map_err(|_| StoreError::Protocol("enter reply has the wrong length".into()))?;
        let mut present = strings(present)?;
        present.sort_unstable();
        Ok(Entered {
            lease: Lease {
                was_live: flag(&live)?,
            },
            came_online: flag(&came_online)?,
            present,
        })
    }
}

#[async_trait]
impl PresenceStore for RedisPresenceStore {
    async fn heartbeat(&self, gateway: &GatewayId) -> StoreResult<Lease> {
        let ttl = self.ttl_ms.to_string();
        let reply = self.run(&self.heartbeat, &[gateway.as_str(), &ttl]).await?;
        Ok(Lease {
            was_live: flag(&reply)?,
        })
    }

    async fn connect(&self, connection: &ConnectionKey, user_id: &str) -> StoreResult<Lease> {
        Ok(self.enter(connection, user_id, "").await?.lease)
    }

    async fn enter_guild(
        &self,
        connection: &ConnectionKey,
        user_id: &str,
        guild_id: &str,
    ) -> StoreResult<Entered> {
        if guild_id.is_empty() {
            return Err(StoreError::Protocol("empty guild id".into()));
        }
        self.enter(connection, user_id, guild_id).await
    }

    async fn leave_guild(
        &self,
        connection: &ConnectionKey,
        guild_id: &str,
    ) -> StoreResult<Option<String>> {
        let number = connection.connection.to_string();
        let reply = self
            .run(
                &self.leave_guild,
                &[connection.gateway.as_str(), &number, guild_id],
            )
            .await?;
        match reply {
            Value::Nil => Ok(None),
            other => text(&other).map(Some),
        }
    }

    async fn disconnect(&self, connection: &ConnectionKey) -> StoreResult<Option<Departure>> {
        let number = connection.connection.to_string();
        let reply = self
            .run(&self.disconnect, &[connection.gateway.as_str(), &number])
            .await?;
        match reply {
            Value::Nil => Ok(None),
            other => departure(other).map(Some),
        }
    }

    async fn present_in(&self, guild_id: &str) -> StoreResult<Vec<String>> {
        let limit = self.config.snapshot_limit.to_string();
        let reply = self.run(&self.present_in, &[guild_id, &limit]).await?;
        let mut present = strings(reply)?;
        present.sort_unstable();
        Ok(present)
    }

    async fn expire(&self, max_connections: usize) -> StoreResult<(Vec<Departure>, bool)> {
        let max = max_connections.max(1).to_string();
        let reply = self.run(&self.expire, &[&max]).await?;
        let [more, departures] = <[Value; 2]>::try_from(array(reply)?)
            .map_err(|_| StoreError::Protocol("expire reply has the wrong length".into()))?;
        let departures = array(departures)?
            .into_iter()
            .map(departure)
            .collect::<StoreResult<_>>()?;
        Ok((departures, flag(&more)?))
    }
}

// ---------------------------------------------------------------------------
// Reading script replies. Lua tables arrive as arrays, numbers as integers,
// strings as bulk strings; `false` arrives as nil.
// ---------------------------------------------------------------------------

fn array(value: Value) -> StoreResult<Vec<Value>> {
    match value {
        Value::Array(items) => Ok(items),
        Value::Nil => Ok(Vec::new()),
        other => Err(StoreError::Protocol(format!(
            "expected an array: {other:?}"
        ))),
    }
}

fn text(value: &Value) -> StoreResult<String> {
    match value {
        Value::BulkString(bytes) => String::from_utf8(bytes.clone())
            .map_err(|_| StoreError::Protocol("a reply string is not UTF-8".into())),
        Value::SimpleString(s) => Ok(s.clone()),
        other => Err(StoreError::Protocol(format!(
            "expected a string: {other:?}"
        ))),
    }
}

fn strings(value: Value) -> StoreResult<Vec<String>> {
    array(value)?.iter().map(text).collect()
}

fn flag(value: &Value) -> StoreResult<bool> {
    match value {
        Value::Int(n) => Ok(*n != 0),
        other => Err(StoreError::Protocol(format!("expected 0 or 1: {other:?}"))),
    }
}

fn departure(value: Value) -> StoreResult<Departure> {
    let [user, offline, guilds] = <[Value; 3]>::try_from(array(value)?)
        .map_err(|_| StoreError::Protocol("a departure has the wrong length".into()))?;
    let mut went_offline_in = strings(guilds)?;
    went_offline_in.sort_unstable();
    Ok(Departure {
        user_id: text(&user)?,
        went_offline_in,
        user_offline: flag(&offline)?,
    })
}
