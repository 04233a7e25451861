//! Where the roster lives, behind one trait with two implementations:
//! memory for the embedded all-in-one (one voice instance) and Redis for a
//! deployment of several voice replicas, where a restarted replica must
//! find every participant still seated. One conformance suite (`tests.rs`)
//! runs against both.
//!
//! The rules are not here: each [`Change`] runs the pure logic of
//! [`Roster`] on whatever the store hands it — the whole roster, or the
//! slice the change can touch ([`Change::scope`]). Keeping what a change
//! does and what it reads side by side in one `match` is what stops the
//! Redis store from loading too little for a rule to see.

use std::collections::BTreeSet;
use std::time::Duration;

use async_trait::async_trait;
use filament_ids::GuildId;
use filament_proto::v1::{Event, VoiceGrantHolder, VoiceParticipantSync, VoiceStateFields};

use crate::roster::{ChannelKey, Clock, LiveParticipant, Reconciled, Roster, RosterError, Stream};
use crate::service::Observed;

mod memory;
mod redis_store;
#[cfg(test)]
mod tests;

pub use memory::MemoryRosterStore;
pub use redis_store::{RedisRosterStore, RedisRosterStoreConfig};

/// One atomic change of the roster, or a read of it.
#[derive(Debug, Clone, Copy)]
pub enum Change<'a> {
    /// Prunes, seats the user (leaving their previous channel), records
    /// their subscribe grant, and appends a roster sync for their sockets.
    Join {
        channel: &'a ChannelKey,
        user_id: &'a str,
        streams: &'a BTreeSet<Stream>,
        can_subscribe: bool,
    },
    Leave {
        channel: &'a ChannelKey,
        user_id: &'a str,
    },
    Update {
        channel: &'a ChannelKey,
        user_id: &'a str,
        fields: &'a VoiceStateFields,
    },
    Observe {
        channel: &'a ChannelKey,
        user_id: &'a str,
        observed: &'a Observed,
    },
    RemoveUser {
        user_id: &'a str,
        guild_id: Option<GuildId>,
        unless_joined_after_ms: Option<i64>,
    },
    /// Prunes the channel, then reads its roster.
    Snapshot {
        channel: &'a ChannelKey,
    },
    Reconcile {
        channel: &'a ChannelKey,
        live: &'a [LiveParticipant],
        grace: Duration,
    },
    GuildParticipants {
        guild_id: GuildId,
    },
    Prune,
}

/// What a change returned; the variant follows the [`Change`].
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Joined,
    /// Leave, Update, Observe: whether anything changed.
    Changed(bool),
    Removed(u32),
    Snapshot(VoiceParticipantSync),
    Reconciled(Reconciled),
    Holders(Vec<VoiceGrantHolder>),
    Pruned(usize),
}

/// The part of the roster a change may read or write. A store that holds
/// only a slice loads exactly this, so every seat a rule looks at is there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scope<'a> {
    /// Every seat of the channel.
    Channel(&'a ChannelKey),
    /// One seat, and how many others share the channel.
    Seat(&'a ChannelKey, &'a str),
    /// The user's seat, wherever it is.
    UserSeat(&'a str),
    /// A join: the target channel whole, the user's current seat, and the
    /// totals the global limits are checked against.
    Join(&'a ChannelKey, &'a str),
    /// Every channel of the guild, whole.
    Guild(GuildId),
    /// The seats whose TTL ran out.
    Expired,
}

impl Change<'_> {
    pub(crate) fn scope(&self) -> Scope<'_> {
        match *self {
            Self::Join {
                channel, user_id, ..
            } => Scope::Join(channel, user_id),
            Self::Leave { channel, user_id }
            | Self::Update {
                channel, user_id, ..
            }
            | Self::Observe {
                channel, user_id, ..
            } => Scope::Seat(channel, user_id),
            Self::RemoveUser { user_id, .. } => Scope::UserSeat(user_id),
            Self::Snapshot { channel } | Self::Reconcile { channel, .. } => Scope::Channel(channel),
            Self::GuildParticipants { guild_id } => Scope::Guild(guild_id),
            Self::Prune => Scope::Expired,
        }
    }

    /// Applies the change to `roster` (whole, or loaded for
    /// [`Change::scope`]), appending its events to `out` in order. A
    /// refusal leaves the roster as the prune before it left it.
    pub(crate) fn run(
        &self,
        roster: &mut Roster,
        clock: Clock,
        out: &mut Vec<Event>,
    ) -> Result<Outcome, RosterError> {
        Ok(match *self {
            Self::Join {
                channel,
                user_id,
                streams,
                can_subscribe,
            } => {
                roster.prune(clock, out);
                roster.join(channel, user_id, streams, clock, out)?;
                roster.grant_subscribe(channel, user_id, can_subscribe);
                out.push(roster.sync_for_user(channel, user_id, clock));
                Outcome::Joined
            }
            Self::Leave { channel, user_id } => {
                Outcome::Changed(roster.leave(channel, user_id, clock, out))
            }
            Self::Update {
                channel,
                user_id,
                fields,
            } => Outcome::Changed(roster.update(channel, user_id, fields, clock, out)),
            Self::Observe {
                channel,
                user_id,
                observed,
            } => Outcome::Changed(observe(roster, channel, user_id, observed, clock, out)),
            Self::RemoveUser {
                user_id,
                guild_id,
                unless_joined_after_ms,
            } => Outcome::Removed(roster.remove_user(
                user_id,
                guild_id,
                unless_joined_after_ms,
                clock,
                out,
            )),
            Self::Snapshot { channel } => {
                roster.prune(clock, out);
                Outcome::Snapshot(roster.snapshot(channel, clock))
            }
            Self::Reconcile {
                channel,
                live,
                grace,
            } => Outcome::Reconciled(roster.reconcile(channel, live, grace, clock, out)),
            Self::GuildParticipants { guild_id } => {
                Outcome::Holders(roster.guild_participants(guild_id))
            }
            Self::Prune => Outcome::Pruned(roster.prune(clock, out)),
        })
    }
}

fn observe(
    roster: &mut Roster,
    channel: &ChannelKey,
    user_id: &str,
    observed: &Observed,
    clock: Clock,
    out: &mut Vec<Event>,
) -> bool {
    match observed {
        Observed::Joined { sid } => roster.observe_joined(channel, user_id, sid, clock),
        Observed::Left { sid, at_unix } => {
            roster.observe_left(channel, user_id, sid, *at_unix, clock, out)
        }
        Observed::Track(track) => roster.observe_track(channel, user_id, *track, clock, out),
    }
}

/// A change that was committed.
#[derive(Debug, Clone, PartialEq)]
pub struct Applied {
    pub outcome: Outcome,
    /// Participants in voice after it, when the store learnt that for free.
    pub participants: Option<usize>,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A bound refused the change; the caller's fault, not the store's.
    #[error(transparent)]
    Refused(#[from] RosterError),
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("the roster store did not answer in time")]
    TimedOut,
    #[error("the roster store keeps failing; not asked again until its cool-down ends")]
    CircuitOpen,
    #[error("the roster kept changing under this change; gave up after {0} attempts")]
    Contended(u32),
    #[error("the roster store holds something unreadable: {0}")]
    Corrupt(String),
    #[error("a {0} change answered a different kind of outcome")]
    Mismatch(&'static str),
}

pub type StoreResult<T> = Result<T, StoreError>;

/// The roster's storage. Every change is atomic: concurrent changes, from
/// any number of voice replicas, see each other whole.
#[async_trait]
pub trait RosterStore: Send + Sync + 'static {
    /// Applies `change` at `clock`, appending the events of what was
    /// committed to `out`, in order. On [`StoreError::Refused`] `out` holds
    /// the events of the prune that came before the refusal, which was
    /// committed; on any other error, nothing was committed or appended.
    async fn apply(
        &self,
        change: &Change<'_>,
        clock: Clock,
        out: &mut Vec<Event>,
    ) -> StoreResult<Applied>;

    /// The channels that have a participant.
    async fn channels(&self) -> StoreResult<Vec<ChannelKey>>;
}
