//! Positions and resume, for the sockets that ask for them
//! (docs/adr/0011-resume.md).
//!
//! A socket opened with `?positions=1` gets every logged event's frame with
//! its positions (`"p"`), a baseline position for its user's log on
//! `ready` and for a guild's log on its first `subscribe` there. After a
//! reconnect, to any gateway, the client sends `resume` with the positions
//! it held when its old socket ended, then subscribes again. The gateway
//! replays from the shared logs what this socket may see now:
//! - its user's log, and the logs of guilds it is already present in, at
//!   once;
//! - a guild's log when the socket's first subscribe there is accepted,
//!   as part of that subscribe's snapshots, so no live frame of the guild
//!   can come before the replayed ones.
//!
//! Each log's replay ends with a `resumed` frame for that log, carrying the
//! position replayed through, or `resync` when the log cannot cover the
//! gap: the client refetches what that log covers.
//!
//! Exactly once: a replay stops before the first offset of that log this
//! socket was written live, and live frames at or below what a replay
//! wrote are skipped. Both hold because a gateway receives each log's
//! events in offset order (`filament-fanout`'s `log.rs`).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::extract::ws::Utf8Bytes;
use filament_ids::{LogPosition, guild_scope, user_scope};
use filament_proto::v1::{Event, Resumed, audience, event};
use filament_registry::Replay;
use prost::Message as _;

use crate::Shared;
use crate::ids::{ChannelId, GuildId, UserId};
use crate::index::Logged;
use crate::metrics::ResumeOutcome;

/// Events one `resume` replays at most, over all its logs (the deferred
/// ones included). A log whose gap does not fit what is left is answered
/// with resync instead.
const MAX_REPLAYED_PER_RESUME: usize = 2048;
/// Logs whose positions one socket tracks. Past this, live frames of new
/// logs still go out, but a resume may replay one of them again.
const MAX_TRACKED_SCOPES: usize = 1024;

/// Ids of events written live through a log the socket does not follow
/// that one socket remembers (a guild's `profile_update` reaches its
/// author's sockets everywhere).
const MAX_OUTSIDE_EVENTS: usize = 256;

/// How many sockets asked for positions. Counted from before a socket
/// reads its first baseline until it is gone, so that every event appended
/// after a baseline is framed with its positions.
#[derive(Debug, Default)]
pub(crate) struct PositionedCount(AtomicUsize);

impl PositionedCount {
    pub(crate) fn none(&self) -> bool {
        self.0.load(Ordering::Acquire) == 0
    }

    /// Counts one socket until the guard drops.
    pub(crate) fn hold(&self) -> PositionedGuard<'_> {
        self.0.fetch_add(1, Ordering::AcqRel);
        PositionedGuard(&self.0)
    }
}

pub(crate) struct PositionedGuard<'a>(&'a AtomicUsize);

impl Drop for PositionedGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What a positioned socket knows of its logs.
#[derive(Debug, Default)]
pub(crate) struct Positions {
    /// The logs the socket follows: its user's, and those of the guilds it
    /// subscribed in on this connection.
    followed: HashSet<String>,
    /// Per followed log, the first offset written live since the socket
    /// followed it, in its epoch.
    first_live: HashMap<String, Mark>,
    /// Events written live that are also in a log the socket did not
    /// follow then: that log's replay, once it follows it, skips them.
    outside: HashSet<String>,
    /// Per log, the offset a replay wrote through, in its epoch.
    floor: HashMap<String, Mark>,
    /// Logs the socket was given a position for.
    known: HashSet<String>,
    /// Guild logs named by a `resume` before the socket was present in
    /// the guild: replayed by the first subscribe there.
    pending: HashMap<GuildId, LogPosition>,
    /// What is left of the last `resume`'s replay budget.
    budget: usize,
    /// Events replayed since the last `resume`: an event in two logs (a
    /// user's and a guild's) is written once.
    replayed: HashSet<String>,
}

/// An offset in one epoch of a log. Offsets of different epochs do not
/// compare: a log lost with a Redis restarted empty starts again at 1.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Mark {
    epoch: String,
    offset: u64,
}

impl Mark {
    /// Whether `position` is in this mark's epoch, at or before it.
    fn covers(&self, position: &LogPosition) -> bool {
        self.epoch == position.epoch && position.offset <= self.offset
    }

    /// Whether `position` is in this mark's epoch, at or after it.
    fn reached_by(&self, epoch: &str, offset: u64) -> bool {
        self.epoch == epoch && offset >= self.offset
    }
}

impl Positions {
    /// The frame to write for a logged event, or `None` when a replay
    /// already wrote it.
    pub(crate) fn frame_for<'a>(&mut self, logged: &'a Logged) -> Option<&'a Utf8Bytes> {
        let replayed = logged.positions.iter().any(|position| {
            self.floor
                .get(&position.scope)
                .is_some_and(|floor| floor.covers(position))
        });
        if replayed {
            return None;
        }
        for position in &logged.positions {
            if !self.followed.contains(&position.scope) {
                if self.outside.len() < MAX_OUTSIDE_EVENTS {
                    self.outside.insert(logged.event_id.clone());
                }
                continue;
            }
            let live = Mark {
                epoch: position.epoch.clone(),
                offset: position.offset,
            };
            let room = self.first_live.len() < MAX_TRACKED_SCOPES;
            match self.first_live.get_mut(&position.scope) {
                // A new epoch: what came before says nothing of it.
                Some(first) if first.epoch != live.epoch => *first = live,
                Some(_) => {}
                None if room => {
                    self.first_live.insert(position.scope.clone(), live);
                }
                None => {}
            }
            self.learned(position.scope.clone());
        }
        Some(&logged.positioned)
    }

    /// The socket follows this log from now on: its user's at connect, a
    /// guild's on the first subscribe there.
    pub(crate) fn follow(&mut self, scope: String) {
        if self.followed.len() < MAX_TRACKED_SCOPES {
            self.followed.insert(scope);
        }
    }

    /// Whether the socket has a position for this log already.
    pub(crate) fn knows(&self, scope: &str) -> bool {
        self.known.contains(scope)
    }

    pub(crate) fn learned(&mut self, scope: String) {
        if self.known.len() < MAX_TRACKED_SCOPES {
            self.known.insert(scope);
        }
    }

    /// The position a `resume` left for this guild's first subscribe.
    pub(crate) fn take_pending(&mut self, guild: GuildId) -> Option<LogPosition> {
        self.pending.remove(&guild)
    }

    pub(crate) fn has_pending(&self, guild: GuildId) -> bool {
        self.pending.contains_key(&guild)
    }
}

/// The newest position of a log, for a baseline; `None` (logged) when the
/// registry cannot say. The client then has no position for that log and
/// refetches it after a reconnect.
pub(crate) async fn head(shared: &Shared, scope: &str) -> Option<LogPosition> {
    match shared.holdings.registry().log_head(scope).await {
        Ok(head) => head,
        Err(err) => {
            tracing::debug!(%err, scope, "no baseline position");
            None
        }
    }
}

/// `frame` with the baseline position `head`, when there is one.
pub(crate) fn with_baseline(
    shared: &Shared,
    positions: &mut Positions,
    frame: Utf8Bytes,
    head: Option<LogPosition>,
) -> Utf8Bytes {
    let Some(head) = head else {
        return frame;
    };
    match shared.positioned(&frame, std::slice::from_ref(&head)) {
        Some(positioned) => {
            positions.learned(head.scope);
            positioned
        }
        None => frame,
    }
}

/// Who a resuming socket is and may see now.
pub(crate) struct Viewer {
    pub(crate) user: UserId,
    pub(crate) subscriptions: HashSet<(GuildId, ChannelId)>,
}

impl Viewer {
    fn present_in(&self, guild: &str) -> bool {
        guild
            .parse::<GuildId>()
            .is_ok_and(|guild| self.subscriptions.iter().any(|&(g, _)| g == guild))
    }

    /// Whether this socket may resume the log `scope`.
    fn may_resume(&self, scope: &str) -> bool {
        scope == user_scope(self.user)
            || scope
                .strip_prefix("g:")
                .is_some_and(|guild| self.present_in(guild))
    }

    /// Whether the live event would have reached this socket now.
    fn sees(&self, event: &Event) -> bool {
        match event.audience.as_ref().and_then(|a| a.target.as_ref()) {
            Some(audience::Target::Channel(channel)) => {
                match (channel.guild_id.parse(), channel.channel_id.parse()) {
                    (Ok(guild), Ok(channel)) => self.subscriptions.contains(&(guild, channel)),
                    _ => false,
                }
            }
            Some(audience::Target::Guild(guild)) => self.present_in(&guild.guild_id),
            Some(audience::Target::Users(users)) => {
                let me = self.user.to_string();
                users.user_ids.contains(&me) || users.guild_ids.iter().any(|g| self.present_in(g))
            }
            None => false,
        }
    }
}

/// Answers a `resume`: replays the logs the socket may resume now, and
/// keeps the positions of guilds it is not present in yet for their first
/// subscribe. Returns the frames to write ahead of its queue.
pub(crate) async fn resume(
    shared: &Shared,
    viewer: &Viewer,
    positions: &mut Positions,
    wanted: Vec<LogPosition>,
) -> Vec<Utf8Bytes> {
    let mut frames = Vec::new();
    positions.budget = MAX_REPLAYED_PER_RESUME;
    positions.replayed.clear();
    for position in wanted {
        let later = position
            .scope
            .strip_prefix("g:")
            .and_then(|guild| guild.parse::<GuildId>().ok())
            .filter(|guild| !viewer.present_in(&guild.to_string()));
        match later {
            // Bounded: a resume names at most `MAX_RESUME_SCOPES` logs, and
            // a later one replaces what an earlier one left.
            Some(guild) => {
                if positions.pending.len() < crate::ingress::MAX_RESUME_SCOPES {
                    // Not present there: what this socket knew of the log
                    // (from before a revocation) no longer says what it
                    // was written.
                    positions.followed.remove(&position.scope);
                    positions.first_live.remove(&position.scope);
                    positions.floor.remove(&position.scope);
                    positions.pending.insert(guild, position);
                } else {
                    frames.extend(answer(shared, positions, &position.scope, Answer::Refused));
                }
            }
            None => {
                frames.extend(replay(shared, viewer, positions, &position).await);
            }
        }
    }
    frames
}

/// Answers a `resume` on a socket opened without positions: every log it
/// names gets `resync`. What the socket was written live is unknown, so a
/// replay could repeat it.
pub(crate) fn refuse_all(shared: &Shared, wanted: Vec<LogPosition>) -> Vec<Utf8Bytes> {
    let mut untracked = Positions::default();
    wanted
        .into_iter()
        .flat_map(|position| answer(shared, &mut untracked, &position.scope, Answer::Refused))
        .collect()
}

/// Replays one log for this socket, if it may resume it: the events it
/// may see now, each with its position, then `resumed`.
pub(crate) async fn replay(
    shared: &Shared,
    viewer: &Viewer,
    positions: &mut Positions,
    position: &LogPosition,
) -> Vec<Utf8Bytes> {
    if !viewer.may_resume(&position.scope) {
        return answer(shared, positions, &position.scope, Answer::Refused);
    }
    let mut frames = Vec::new();
    let Some(through) = replay_into(shared, viewer, positions, position, &mut frames).await else {
        // The client refetches; the log's head is where it then stands.
        let head = head(shared, &position.scope).await;
        return answer(shared, positions, &position.scope, Answer::Resync(head));
    };
    positions.budget = positions.budget.saturating_sub(frames.len());
    let replayed = u64::try_from(frames.len()).unwrap_or(u64::MAX);
    if !positions.first_live.contains_key(&position.scope) {
        let floor = Mark {
            epoch: through.epoch.clone(),
            offset: through.offset,
        };
        positions.floor.insert(position.scope.clone(), floor);
    }
    frames.extend(answer(
        shared,
        positions,
        &position.scope,
        Answer::Replayed { through, replayed },
    ));
    frames
}

/// How one log's resume ended.
enum Answer {
    /// Replayed through this position.
    Replayed { through: LogPosition, replayed: u64 },
    /// The log cannot cover the gap; the client refetches and stands at
    /// the log's head (when the registry could say).
    Resync(Option<LogPosition>),
    /// Not a log this socket may resume (or one too many).
    Refused,
}

/// The `resumed` frame of one log, carrying (in `p`) where the client now
/// stands in it.
fn answer(
    shared: &Shared,
    positions: &mut Positions,
    scope: &str,
    outcome: Answer,
) -> Vec<Utf8Bytes> {
    let (replayed, stands_at) = match outcome {
        Answer::Replayed { through, replayed } => (Some(replayed), Some(through)),
        Answer::Resync(head) => (None, head),
        Answer::Refused => (None, None),
    };
    let (metric, count) = match replayed {
        Some(count) => (ResumeOutcome::Replayed, count),
        None => (ResumeOutcome::Resync, 0),
    };
    shared.metrics.resumed(metric, count);
    let done = crate::connection::connection_event(event::Payload::Resumed(Resumed {
        scope: scope.to_owned(),
        replayed: count,
        resync: replayed.is_none(),
    }));
    shared
        .encode_for_one(&done)
        .into_iter()
        .map(|frame| with_baseline(shared, positions, frame, stands_at.clone()))
        .collect()
}

/// Replays one log into `out`. Returns the position it read through, or
/// `None` when the log cannot cover the gap (the caller answers resync).
async fn replay_into(
    shared: &Shared,
    viewer: &Viewer,
    positions: &mut Positions,
    position: &LogPosition,
    out: &mut Vec<Utf8Bytes>,
) -> Option<LogPosition> {
    let budget = positions.budget;
    let entries = match shared.holdings.registry().replay(position, budget).await {
        Ok(Replay::Covered(entries)) => entries,
        Ok(Replay::Gap) => return None,
        Err(err) => {
            // Fail closed: without the log, the client must refetch.
            tracing::warn!(%err, scope = position.scope, "replay log unavailable");
            return None;
        }
    };
    let through = LogPosition {
        scope: position.scope.clone(),
        epoch: position.epoch.clone(),
        offset: entries.last().map_or(position.offset, |entry| entry.offset),
    };
    let live_from = positions.first_live.get(&position.scope).cloned();
    for entry in entries {
        if live_from
            .as_ref()
            .is_some_and(|first| first.reached_by(&position.epoch, entry.offset))
        {
            break;
        }
        let event = Event::decode(entry.event.as_slice()).ok()?;
        if !viewer.sees(&event)
            || positions.outside.contains(&event.event_id)
            || !positions.replayed.insert(event.event_id.clone())
        {
            continue;
        }
        let at = LogPosition {
            offset: entry.offset,
            ..through.clone()
        };
        let frames = shared.encode_for_one(&event);
        let [frame] = frames.as_slice() else {
            continue;
        };
        out.push(
            shared
                .positioned(frame, std::slice::from_ref(&at))
                .unwrap_or_else(|| frame.clone()),
        );
    }
    Some(through)
}

/// The logs a positioned socket gets a baseline for: its user's on `ready`.
pub(crate) fn user_log(user: UserId) -> String {
    user_scope(user)
}

/// And a guild's on its first `subscribe` there.
pub(crate) fn guild_log(guild: GuildId) -> String {
    guild_scope(guild)
}

#[cfg(test)]
mod tests {
    use filament_proto::v1::{Audience, ChannelAudience, GuildAudience, UserAudience};
    use ulid::Ulid;

    use super::*;

    fn logged(scope: &str, offset: u64) -> Logged {
        logged_in("0a", scope, offset)
    }

    fn logged_in(epoch: &str, scope: &str, offset: u64) -> Logged {
        Logged {
            event_id: format!("{scope}/{epoch}.{offset}"),
            plain: Utf8Bytes::from_static("plain"),
            positioned: Utf8Bytes::from_static("positioned"),
            positions: vec![LogPosition {
                scope: scope.to_owned(),
                epoch: epoch.to_owned(),
                offset,
            }],
        }
    }

    /// A Redis restarted empty starts every log again at offset 1, in a new
    /// epoch: a replay's floor and a first live offset of the old epoch say
    /// nothing of the new one's frames.
    #[test]
    fn offsets_of_another_epoch_are_never_skipped() {
        let mut positions = Positions::default();
        positions.follow("g:A".to_owned());
        positions.floor.insert(
            "g:A".to_owned(),
            Mark {
                epoch: "0a".to_owned(),
                offset: 233,
            },
        );
        assert!(positions.frame_for(&logged_in("0a", "g:A", 200)).is_none());
        assert!(positions.frame_for(&logged_in("0b", "g:A", 1)).is_some());
        assert!(positions.frame_for(&logged_in("0b", "g:A", 2)).is_some());
        // The first live offset follows the new epoch.
        assert_eq!(
            positions.first_live.get("g:A"),
            Some(&Mark {
                epoch: "0b".to_owned(),
                offset: 1
            })
        );
        assert!(!positions.first_live["g:A"].reached_by("0a", 5));
    }

    #[test]
    fn live_frames_below_a_replay_are_skipped_and_the_first_live_one_is_kept() {
        let mut positions = Positions::default();
        positions.follow("g:A".to_owned());
        positions.follow("g:B".to_owned());
        positions.floor.insert(
            "g:A".to_owned(),
            Mark {
                epoch: "0a".to_owned(),
                offset: 5,
            },
        );
        assert!(positions.frame_for(&logged("g:A", 5)).is_none(), "replayed");
        assert_eq!(
            positions
                .frame_for(&logged("g:A", 6))
                .map(Utf8Bytes::as_str),
            Some("positioned")
        );
        assert!(positions.frame_for(&logged("g:B", 3)).is_some());
        positions.frame_for(&logged("g:B", 4));
        assert_eq!(positions.first_live.get("g:B").map(|m| m.offset), Some(3));
        assert!(positions.knows("g:B"));
        // A log the socket does not follow (a user event that is also in
        // another guild's log): written, and remembered by id so that the
        // guild's replay skips it, but no first live offset that would cut
        // that replay short.
        assert!(positions.frame_for(&logged("g:C", 9)).is_some());
        assert!(!positions.first_live.contains_key("g:C"));
        assert!(positions.outside.contains("g:C/0a.9"));
    }

    #[test]
    fn a_viewer_sees_what_its_subscriptions_and_name_reach() {
        let (guild, channel, other) = (
            GuildId(Ulid::generate()),
            ChannelId(Ulid::generate()),
            ChannelId(Ulid::generate()),
        );
        let user = UserId(Ulid::generate());
        let viewer = Viewer {
            user,
            subscriptions: [(guild, channel)].into(),
        };
        let to = |target| Event {
            audience: Some(Audience {
                target: Some(target),
            }),
            ..Event::default()
        };
        let in_channel = |channel: ChannelId| {
            to(audience::Target::Channel(ChannelAudience {
                guild_id: guild.to_string(),
                channel_id: channel.to_string(),
            }))
        };
        assert!(viewer.sees(&in_channel(channel)));
        assert!(!viewer.sees(&in_channel(other)), "not subscribed there");
        assert!(viewer.sees(&to(audience::Target::Guild(GuildAudience {
            guild_id: guild.to_string()
        }))));
        let named = |user_ids: Vec<String>| {
            to(audience::Target::Users(UserAudience {
                user_ids,
                guild_ids: Vec::new(),
            }))
        };
        assert!(viewer.sees(&named(vec![user.to_string()])));
        assert!(!viewer.sees(&named(vec![Ulid::generate().to_string()])));
        assert!(viewer.may_resume(&user_scope(user)));
        assert!(viewer.may_resume(&guild_scope(guild)));
        assert!(!viewer.may_resume(&guild_scope(Ulid::generate())));
        assert!(!viewer.may_resume(&user_scope(Ulid::generate())));
    }
}
