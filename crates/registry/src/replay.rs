//! The replay logs: the recent events of each guild and each user, so that a
//! client that lost its socket can resume on any gateway
//! (docs/adr/0011-resume.md).
//!
//! A log is named by its scope: `g:<guild id>` holds the events sent to a
//! guild's channels or to the whole guild, `u:<user id>` the events sent to
//! that user by name. The publisher appends an event to every log of its
//! audience before it sends the event to the gateways, and stamps the
//! event with the positions it got. Offsets are dense within one epoch of
//! a log; a log that is lost (expired when idle, or a Redis restarted
//! empty) starts again at a new epoch, so a client quoting an old epoch is
//! told to resynchronise instead of being replayed the wrong events.
//!
//! Appends are idempotent by event id for [`LogConfig::marker_ttl`]: a
//! relay that publishes an event again gets the positions of the first
//! append. Logs are capped by length and by age, and a replay that would
//! pass either cap is refused, never truncated.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use filament_ids::LogPosition;
use tokio::time::Instant;

/// How long and how deep the logs are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// Entries kept per log; older ones are trimmed.
    pub max_len: usize,
    /// Entries older than this are trimmed (by every append) and never
    /// replayed; a log idle this long is dropped, and its next append
    /// starts a new epoch. With the length cap, this bounds a log's memory
    /// to what its guild (or user) published in this window.
    pub retention: Duration,
    /// How long an event id remembers its positions. At least the api's
    /// republish give-up age, so that every republish finds them.
    pub marker_ttl: Duration,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            max_len: 4096,
            retention: Duration::from_secs(5 * 60),
            marker_ttl: Duration::from_secs(180),
        }
    }
}

impl LogConfig {
    /// Reads `FILAMENT_REPLAY_RETENTION_SECS` and `FILAMENT_REPLAY_LOG_LENGTH`
    /// (see README.md); both must be at least 1.
    pub fn from_env(env: &filament_runtime::Env) -> Result<Self, filament_runtime::ConfigError> {
        let defaults = Self::default();
        let retention = env.secs_or("FILAMENT_REPLAY_RETENTION_SECS", defaults.retention)?;
        let max_len: usize = env.or("FILAMENT_REPLAY_LOG_LENGTH", defaults.max_len)?;
        for (name, value) in [
            ("FILAMENT_REPLAY_RETENTION_SECS", retention.as_secs()),
            (
                "FILAMENT_REPLAY_LOG_LENGTH",
                u64::try_from(max_len).unwrap_or(u64::MAX),
            ),
        ] {
            if value == 0 {
                return Err(filament_runtime::ConfigError::Invalid {
                    name,
                    value: "0".to_owned(),
                    reason: "must be at least 1".to_owned(),
                });
            }
        }
        Ok(Self {
            retention,
            max_len,
            ..defaults
        })
    }

    /// The append time of the oldest entry a replay may still include.
    pub(crate) fn oldest_unix_ms(&self) -> u64 {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        millis(now.saturating_sub(self.retention))
    }
}

/// One logged event: its offset, when it was appended, and the event as
/// the publisher encoded it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    pub offset: u64,
    pub at_unix_ms: u64,
    pub event: Vec<u8>,
}

/// What a log holds after some offset.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogRead {
    /// The log's epoch; empty when the log does not exist.
    pub epoch: String,
    /// The offset of its newest entry (0 for none).
    pub head: u64,
    /// Entries after the asked offset, oldest first, at most the asked
    /// number plus one (so that "more than the limit" shows).
    pub entries: Vec<LogEntry>,
}

/// The answer to "replay everything after this position".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Replay {
    /// Exactly the entries after the position, oldest first (none when the
    /// position is the head).
    Covered(Vec<LogEntry>),
    /// The log cannot cover the gap: another epoch, entries trimmed or too
    /// old, more than the limit, a gap marker (see `filament-fanout`'s
    /// `log.rs`), or a position past the head.
    Gap,
}

impl LogRead {
    /// Decides whether this read replays everything after `after` in
    /// `epoch`, with at most `limit` entries none older than `oldest_ms`.
    #[must_use]
    pub fn replay(self, epoch: &str, after: u64, limit: usize, oldest_ms: u64) -> Replay {
        if self.epoch != epoch || after > self.head {
            return Replay::Gap;
        }
        let missing = self.head - after;
        let contiguous = self
            .entries
            .first()
            .is_none_or(|first| first.offset == after + 1);
        let complete = u64::try_from(self.entries.len()).is_ok_and(|n| n == missing);
        // An empty event is a gap marker: the publisher missed appending
        // something to this log before it.
        let fresh = self
            .entries
            .iter()
            .all(|e| e.at_unix_ms >= oldest_ms && !e.event.is_empty());
        if !contiguous || !complete || self.entries.len() > limit || !fresh {
            return Replay::Gap;
        }
        Replay::Covered(self.entries)
    }
}

/// A duration in milliseconds, saturating.
pub(crate) fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// A new epoch: 16 hex digits, unlikely to repeat.
pub(crate) fn new_log_epoch() -> String {
    let random = ulid::Ulid::generate().random();
    format!("{:016x}", random as u64 ^ (random >> 64) as u64)
}

/// The logs of the in-memory registry.
#[derive(Default)]
pub(crate) struct MemoryLogs {
    logs: HashMap<String, Log>,
    /// Event id to the positions of its first append, in append order so
    /// that expired markers are dropped from the front.
    markers: HashMap<String, Vec<LogPosition>>,
    marker_order: VecDeque<(Instant, String)>,
}

struct Log {
    epoch: String,
    head: u64,
    touched: Instant,
    entries: VecDeque<LogEntry>,
}

impl Log {
    fn new(now: Instant) -> Self {
        Self {
            epoch: new_log_epoch(),
            head: 0,
            touched: now,
            entries: VecDeque::new(),
        }
    }
}

impl MemoryLogs {
    pub(crate) fn append(
        &mut self,
        config: &LogConfig,
        event_id: &str,
        scopes: &[String],
        event: &[u8],
        at_unix_ms: u64,
        now: Instant,
    ) -> Vec<LogPosition> {
        self.forget_expired(config, now);
        if let Some(positions) = self.markers.get(event_id) {
            return positions.clone();
        }
        let mut positions = Vec::with_capacity(scopes.len());
        for scope in scopes {
            let log = self.log(config, scope, now);
            log.head += 1;
            log.entries.push_back(LogEntry {
                offset: log.head,
                at_unix_ms,
                event: event.to_vec(),
            });
            let oldest = at_unix_ms.saturating_sub(millis(config.retention));
            while log.entries.len() > config.max_len
                || log.entries.front().is_some_and(|e| e.at_unix_ms < oldest)
            {
                log.entries.pop_front();
            }
            positions.push(LogPosition {
                scope: scope.clone(),
                epoch: log.epoch.clone(),
                offset: log.head,
            });
        }
        if !event_id.is_empty() {
            self.markers.insert(event_id.to_owned(), positions.clone());
            self.marker_order.push_back((now, event_id.to_owned()));
        }
        positions
    }

    pub(crate) fn head(&mut self, config: &LogConfig, scope: &str, now: Instant) -> LogPosition {
        let log = self.log(config, scope, now);
        LogPosition {
            scope: scope.to_owned(),
            epoch: log.epoch.clone(),
            offset: log.head,
        }
    }

    pub(crate) fn read(
        &self,
        config: &LogConfig,
        scope: &str,
        after: u64,
        limit: usize,
        now: Instant,
    ) -> LogRead {
        let Some(log) = self
            .logs
            .get(scope)
            .filter(|log| now.duration_since(log.touched) < config.retention)
        else {
            return LogRead::default();
        };
        LogRead {
            epoch: log.epoch.clone(),
            head: log.head,
            entries: log
                .entries
                .iter()
                .filter(|entry| entry.offset > after)
                .take(limit.saturating_add(1))
                .cloned()
                .collect(),
        }
    }

    /// The scope's log, started at a new epoch if it is missing or idle
    /// past the retention.
    fn log(&mut self, config: &LogConfig, scope: &str, now: Instant) -> &mut Log {
        let log = self
            .logs
            .entry(scope.to_owned())
            .or_insert_with(|| Log::new(now));
        if now.duration_since(log.touched) >= config.retention {
            *log = Log::new(now);
        }
        log.touched = now;
        log
    }

    fn forget_expired(&mut self, config: &LogConfig, now: Instant) {
        while let Some((at, _)) = self.marker_order.front()
            && now.duration_since(*at) >= config.marker_ttl
        {
            if let Some((_, id)) = self.marker_order.pop_front() {
                self.markers.remove(&id);
            }
        }
        self.logs
            .retain(|_, log| now.duration_since(log.touched) < config.retention);
    }
}

/// KEYS[1]: the event id's marker; then, per scope, its meta hash and its
/// stream. ARGV[1]: the event; ARGV[2]: its time (ms); ARGV[3]: a fresh
/// epoch; ARGV[4]: the marker TTL (ms); ARGV[5]: the retention (ms), which
/// is also the log's TTL; ARGV[6]: the length cap. Entries are `e` (the
/// event), then `t` (its time), the order the age trim reads. Returns `epoch.offset` per scope, space
/// separated, the first append's for a repeated event id. A log whose meta
/// is gone starts a new epoch and drops what its stream still held.
pub(crate) const APPEND_LUA: &str = r"
if KEYS[1] ~= '' then
    local done = redis.call('GET', KEYS[1])
    if done then
        return done
    end
end
local out = {}
for i = 2, #KEYS, 2 do
    local meta, stream = KEYS[i], KEYS[i + 1]
    local epoch = redis.call('HGET', meta, 'e')
    if not epoch then
        epoch = ARGV[3]
        redis.call('DEL', stream)
        redis.call('HSET', meta, 'e', epoch)
    end
    local offset = redis.call('HINCRBY', meta, 'n', 1)
    redis.call('XADD', stream, 'MAXLEN', '~', ARGV[6], offset .. '-0', 'e', ARGV[1], 't', ARGV[2])
    -- Trim by age: each append drops at most a few of the oldest entries,
    -- so every entry is deleted once, by some later append.
    local oldest = tonumber(ARGV[2]) - tonumber(ARGV[5])
    for _ = 1, 8 do
        local first = redis.call('XRANGE', stream, '-', '+', 'COUNT', 1)[1]
        if not first or tonumber(first[2][4]) == nil or tonumber(first[2][4]) >= oldest then
            break
        end
        redis.call('XDEL', stream, first[1])
    end
    redis.call('PEXPIRE', meta, ARGV[5])
    redis.call('PEXPIRE', stream, ARGV[5])
    out[#out + 1] = epoch .. '.' .. offset
end
local joined = table.concat(out, ' ')
if KEYS[1] ~= '' then
    redis.call('SET', KEYS[1], joined, 'PX', ARGV[4])
end
return joined
";

/// KEYS[1]: a log's meta hash; KEYS[2]: its stream. ARGV[1]: a fresh
/// epoch; ARGV[2]: the log TTL (ms). Returns `{epoch, head}`, starting the
/// log if it is missing, so that a position taken now stays valid when the
/// first event is appended.
pub(crate) const HEAD_LUA: &str = r"
local epoch = redis.call('HGET', KEYS[1], 'e')
if not epoch then
    epoch = ARGV[1]
    redis.call('DEL', KEYS[2])
    redis.call('HSET', KEYS[1], 'e', epoch, 'n', 0)
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[2])
return {epoch, redis.call('HGET', KEYS[1], 'n') or '0'}
";

/// Splits `APPEND_LUA`'s answer into positions, one per scope in order.
pub(crate) fn parse_appended(scopes: &[String], answer: &str) -> Option<Vec<LogPosition>> {
    let tokens: Vec<&str> = answer.split(' ').filter(|t| !t.is_empty()).collect();
    if tokens.len() != scopes.len() {
        return None;
    }
    scopes
        .iter()
        .zip(tokens)
        .map(|(scope, token)| {
            let (epoch, offset) = token.split_once('.')?;
            Some(LogPosition {
                scope: scope.clone(),
                epoch: epoch.to_owned(),
                offset: offset.parse().ok()?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(offset: u64, at_unix_ms: u64) -> LogEntry {
        LogEntry {
            offset,
            at_unix_ms,
            event: vec![1],
        }
    }

    fn read(head: u64, offsets: &[u64]) -> LogRead {
        LogRead {
            epoch: "e".to_owned(),
            head,
            entries: offsets.iter().map(|&o| entry(o, 100)).collect(),
        }
    }

    #[test]
    fn a_replay_is_exactly_the_gap_or_refused() {
        assert!(
            matches!(read(5, &[4, 5]).replay("e", 3, 10, 0), Replay::Covered(e) if e.len() == 2)
        );
        assert_eq!(
            read(5, &[]).replay("e", 5, 10, 0),
            Replay::Covered(Vec::new())
        );
        // Another epoch, a trimmed gap, a position past the head.
        assert_eq!(read(5, &[4, 5]).replay("x", 3, 10, 0), Replay::Gap);
        assert_eq!(read(5, &[5]).replay("e", 3, 10, 0), Replay::Gap);
        assert_eq!(read(5, &[]).replay("e", 6, 10, 0), Replay::Gap);
        // More than the limit, or older than the retention.
        assert_eq!(read(5, &[3, 4, 5]).replay("e", 2, 2, 0), Replay::Gap);
        assert_eq!(read(5, &[4, 5]).replay("e", 3, 10, 101), Replay::Gap);
        // A gap marker.
        let mut marked = read(5, &[4, 5]);
        marked.entries[0].event.clear();
        assert_eq!(marked.replay("e", 3, 10, 0), Replay::Gap);
    }

    #[test]
    fn appended_answers_parse_per_scope() {
        let scopes = ["g:a".to_owned(), "u:b".to_owned()];
        let parsed = parse_appended(&scopes, "00ab.3 00cd.9").expect("valid");
        assert_eq!(parsed[1].offset, 9);
        assert_eq!(parsed[0].epoch, "00ab");
        assert!(parse_appended(&scopes, "00ab.3").is_none());
        assert!(parse_appended(&scopes, "00ab.x 00cd.9").is_none());
    }
}
