//! The voice roster: who is in which voice channel, their flags, and the
//! streams they publish. Pure state: every operation takes the time it
//! happens at and appends the events it causes, in order, to `out`, so the
//! service can publish them after the change and tests can drive time.
//!
//! Invariants: a user is in at most one channel; a channel exists while it
//! has a participant; every part is bounded (channels, participants per
//! channel and overall; a participant is a few ids and flags, validated by
//! the gRPC layer). A full channel's roster is larger than one gateway
//! frame: the gateway splits it (`filament_wire::encode_frames`). A refused
//! operation changes nothing.
//!
//! Idempotence: leaving twice, or a leave for someone who rejoined since
//! (out of order), is a no-op; a repeat join only sends what changed.
//!
//! A roster may be the whole state (the memory store) or a slice of it that
//! a store loaded for one change (the Redis store): some channels whole,
//! some only as the seats the change touches plus how many others sit
//! there, and the totals of everything not loaded. The rules read only
//! those counts and the loaded seats, so one definition serves both.
//! Expiry is wall-clock unix time, which every replica shares.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use filament_ids::{ChannelId, GuildId};
use filament_proto::v1::{
    self as pb, Audience, ChannelAudience, Event, UserAudience, VoiceStateFields, audience, event,
};
use serde::{Deserialize, Serialize};

use crate::livekit;

/// A media source, in the order PROTOCOL.md §6.1 lists them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Stream {
    Microphone,
    Camera,
    ScreenShare,
}

impl Stream {
    pub fn from_proto(value: i32) -> Option<Self> {
        match pb::VoiceStream::try_from(value).ok()? {
            pb::VoiceStream::Microphone => Some(Self::Microphone),
            pb::VoiceStream::Camera => Some(Self::Camera),
            pb::VoiceStream::ScreenShare => Some(Self::ScreenShare),
            pb::VoiceStream::Unspecified => None,
        }
    }

    pub fn to_proto(self) -> pb::VoiceStream {
        match self {
            Self::Microphone => pb::VoiceStream::Microphone,
            Self::Camera => pb::VoiceStream::Camera,
            Self::ScreenShare => pb::VoiceStream::ScreenShare,
        }
    }

    /// The name in a LiveKit grant's `canPublishSources`.
    pub fn livekit_name(self) -> &'static str {
        match self {
            Self::Microphone => "microphone",
            Self::Camera => "camera",
            Self::ScreenShare => "screen_share",
        }
    }
}

/// A voice channel, by its guild and its own id. Redis keys, LiveKit
/// room names and events spell both ids canonically.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChannelKey {
    pub guild_id: GuildId,
    pub channel_id: ChannelId,
}

#[derive(Debug, Clone)]
pub struct Limits {
    pub max_channels: usize,
    pub max_participants_per_channel: usize,
    pub max_participants: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_channels: 1024,
            max_participants_per_channel: 512,
            max_participants: 65_536,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RosterError {
    #[error("the voice channel is full")]
    ChannelFull,
    #[error("too many active voice channels")]
    TooManyChannels,
    #[error("too many voice participants")]
    TooManyParticipants,
}

/// When an operation happens, as wall-clock unix milliseconds: both the
/// timestamps clients see and expiry, which must mean the same on every
/// replica (a monotonic `Instant` is private to one process).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Clock {
    pub unix_ms: i64,
}

impl Clock {
    pub fn now() -> Self {
        let unix_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        Self { unix_ms }
    }

    pub fn at(unix_ms: i64) -> Self {
        Self { unix_ms }
    }

    /// `by` later.
    #[must_use]
    pub fn after(self, by: Duration) -> Self {
        Self::at(self.unix_ms.saturating_add(millis(by)))
    }

    fn unix(self) -> i64 {
        self.unix_ms / 1000
    }
}

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

/// Flags a participant shows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Flags {
    pub is_muted: bool,
    pub is_deafened: bool,
    pub is_speaking: bool,
    pub is_video_enabled: bool,
    pub is_screen_share_enabled: bool,
}

impl Flags {
    /// Applies `change`; returns the fields that really changed, if any.
    fn apply(&mut self, change: &VoiceStateFields) -> Option<VoiceStateFields> {
        let mut changed = VoiceStateFields::default();
        let mut any = false;
        let mut set = |current: &mut bool, wanted: Option<bool>, out: &mut Option<bool>| {
            if let Some(wanted) = wanted
                && *current != wanted
            {
                *current = wanted;
                *out = Some(wanted);
                any = true;
            }
        };
        set(&mut self.is_muted, change.is_muted, &mut changed.is_muted);
        set(
            &mut self.is_deafened,
            change.is_deafened,
            &mut changed.is_deafened,
        );
        set(
            &mut self.is_speaking,
            change.is_speaking,
            &mut changed.is_speaking,
        );
        set(
            &mut self.is_video_enabled,
            change.is_video_enabled,
            &mut changed.is_video_enabled,
        );
        set(
            &mut self.is_screen_share_enabled,
            change.is_screen_share_enabled,
            &mut changed.is_screen_share_enabled,
        );
        any.then_some(changed)
    }
}

/// One seat. Serialized whole by the Redis store; a field added here must
/// take a `#[serde(default)]` so that seats written before it still load.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Participant {
    user_id: String,
    identity: String,
    joined_at_unix: i64,
    updated_at_unix: i64,
    flags: Flags,
    streams: BTreeSet<Stream>,
    /// Whether the current token lets them subscribe to others' streams.
    can_subscribe: bool,
    /// Wall-clock unix ms after which the participant is pruned.
    expires_at_ms: i64,
    /// When a token was last issued, to order it against a connection
    /// close or a webhook leave that happened before it.
    last_join_ms: i64,
    /// LiveKit's id for the participant's current session, once a webhook
    /// told us; a leave for another session is stale.
    livekit_sid: Option<String>,
}

impl Participant {
    pub(crate) fn user_id(&self) -> &str {
        &self.user_id
    }

    pub(crate) fn expires_at_ms(&self) -> i64 {
        self.expires_at_ms
    }

    fn renew(&mut self, clock: Clock, ttl: Duration) {
        self.expires_at_ms = clock.after(ttl).unix_ms;
    }

    fn to_proto(&self) -> pb::VoiceParticipant {
        pb::VoiceParticipant {
            user_id: self.user_id.clone(),
            identity: self.identity.clone(),
            joined_at_unix: self.joined_at_unix,
            updated_at_unix: self.updated_at_unix,
            is_muted: self.flags.is_muted,
            is_deafened: self.flags.is_deafened,
            is_speaking: self.flags.is_speaking,
            is_video_enabled: self.flags.is_video_enabled,
            is_screen_share_enabled: self.flags.is_screen_share_enabled,
        }
    }
}

/// The seats of one channel that are loaded, and how many others there are.
/// A channel is listed only while someone sits in it.
#[derive(Default)]
struct Seats {
    loaded: HashMap<String, Participant>,
    /// Participants of the channel that this roster did not load.
    unloaded: usize,
}

impl Seats {
    fn len(&self) -> usize {
        self.loaded.len() + self.unloaded
    }
}

/// What exists outside a slice: channels and participants not loaded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Elsewhere {
    pub channels: usize,
    pub participants: usize,
}

pub struct Roster {
    channels: HashMap<ChannelKey, Seats>,
    /// Which channel each loaded participant is in.
    users: HashMap<String, ChannelKey>,
    elsewhere: Elsewhere,
    limits: Limits,
    ttl: Duration,
}

impl Roster {
    /// `ttl`: how long a participant stays without a renewal (a token, a
    /// state update, a webhook about them).
    pub fn new(limits: Limits, ttl: Duration) -> Self {
        Self::slice(limits, ttl, Elsewhere::default())
    }

    /// An empty slice of a larger roster; fill it with [`Roster::load`].
    pub(crate) fn slice(limits: Limits, ttl: Duration, elsewhere: Elsewhere) -> Self {
        Self {
            channels: HashMap::new(),
            users: HashMap::new(),
            elsewhere,
            limits,
            ttl,
        }
    }

    /// Adds a channel that has `size` participants, of which `seats` are
    /// loaded. Nothing is listed for an empty channel, as in a whole roster.
    pub(crate) fn load(&mut self, key: &ChannelKey, size: usize, seats: Vec<Participant>) {
        let unloaded = size.saturating_sub(seats.len());
        if unloaded == 0 && seats.is_empty() {
            return;
        }
        let channel = self.channels.entry(key.clone()).or_default();
        channel.unloaded = unloaded;
        for participant in seats {
            self.users.insert(participant.user_id.clone(), key.clone());
            channel
                .loaded
                .insert(participant.user_id.clone(), participant);
        }
    }

    /// Every loaded seat.
    pub(crate) fn seats(&self) -> impl Iterator<Item = (&ChannelKey, &str, &Participant)> {
        self.channels.iter().flat_map(|(key, seats)| {
            seats
                .loaded
                .iter()
                .map(move |(user_id, p)| (key, user_id.as_str(), p))
        })
    }

    /// How many sit in `key`, loaded or not.
    pub(crate) fn channel_size(&self, key: &ChannelKey) -> usize {
        self.channels.get(key).map_or(0, Seats::len)
    }

    pub fn participant_count(&self) -> usize {
        self.users.len() + self.elsewhere.participants
    }

    fn channel_count(&self) -> usize {
        self.channels.len() + self.elsewhere.channels
    }

    /// Registers `user_id` in `key` with these streams, or refreshes them
    /// if already there; leaves their previous channel first. Refused,
    /// with nothing changed, when a bound would be exceeded.
    pub fn join(
        &mut self,
        key: &ChannelKey,
        user_id: &str,
        streams: &BTreeSet<Stream>,
        clock: Clock,
        out: &mut Vec<Event>,
    ) -> Result<(), RosterError> {
        if self.users.get(user_id) == Some(key) {
            self.refresh(key, user_id, streams, clock, out);
            return Ok(());
        }
        let participant = Participant {
            user_id: user_id.to_owned(),
            identity: livekit::identity(user_id, key),
            joined_at_unix: clock.unix(),
            updated_at_unix: clock.unix(),
            flags: Flags {
                is_video_enabled: streams.contains(&Stream::Camera),
                is_screen_share_enabled: streams.contains(&Stream::ScreenShare),
                ..Flags::default()
            },
            streams: streams.clone(),
            can_subscribe: false,
            expires_at_ms: clock.after(self.ttl).unix_ms,
            last_join_ms: clock.unix_ms,
            livekit_sid: None,
        };
        self.check_room_for(key, user_id)?;

        if let Some(previous) = self.users.get(user_id).cloned() {
            self.remove(&previous, user_id, clock, out);
        }
        out.push(channel_event(
            key,
            event::Payload::VoiceParticipantJoin(pb::VoiceParticipantJoin {
                guild_id: key.guild_id.to_string(),
                channel_id: key.channel_id.to_string(),
                participant: Some(participant.to_proto()),
            }),
        ));
        for stream in &participant.streams {
            out.push(stream_event(key, &participant, *stream, true, clock));
        }
        self.users.insert(user_id.to_owned(), key.clone());
        self.channels
            .entry(key.clone())
            .or_default()
            .loaded
            .insert(user_id.to_owned(), participant);
        Ok(())
    }

    /// Records what the participant's newest token lets them subscribe to.
    pub fn grant_subscribe(&mut self, key: &ChannelKey, user_id: &str, can_subscribe: bool) {
        if let Some(participant) = self.participant_mut(key, user_id) {
            participant.can_subscribe = can_subscribe;
        }
    }

    /// The participants of `guild_id`'s channels with their grants. Walks
    /// the channels, which the registry bounds (`Limits::max_channels`).
    pub fn guild_participants(&self, guild_id: GuildId) -> Vec<pb::VoiceGrantHolder> {
        self.channels
            .iter()
            .filter(|(key, _)| key.guild_id == guild_id)
            .flat_map(|(key, seats)| {
                seats.loaded.values().map(|p| pb::VoiceGrantHolder {
                    user_id: p.user_id.clone(),
                    channel_id: key.channel_id.to_string(),
                    can_subscribe: p.can_subscribe,
                    publish_sources: p.streams.iter().map(|s| s.to_proto().into()).collect(),
                })
            })
            .collect()
    }

    /// Removes `user_id` from `key`. False when they were not there.
    pub fn leave(
        &mut self,
        key: &ChannelKey,
        user_id: &str,
        clock: Clock,
        out: &mut Vec<Event>,
    ) -> bool {
        self.remove(key, user_id, clock, out)
    }

    /// Applies a change of flags; renews the participant. False when not a
    /// participant or nothing changed.
    pub fn update(
        &mut self,
        key: &ChannelKey,
        user_id: &str,
        change: &VoiceStateFields,
        clock: Clock,
        out: &mut Vec<Event>,
    ) -> bool {
        let Some(participant) = self.renewed(key, user_id, clock) else {
            return false;
        };
        let Some(changed) = participant.flags.apply(change) else {
            return false;
        };
        participant.updated_at_unix = clock.unix();
        out.push(update_event(key, participant, changed, clock));
        true
    }

    /// The channel's roster, by join time then identity.
    pub fn snapshot(&self, key: &ChannelKey, clock: Clock) -> pb::VoiceParticipantSync {
        let mut participants: Vec<_> = self
            .channels
            .get(key)
            .into_iter()
            .flat_map(|seats| seats.loaded.values())
            .collect();
        participants
            .sort_by(|a, b| (a.joined_at_unix, &a.identity).cmp(&(b.joined_at_unix, &b.identity)));
        pb::VoiceParticipantSync {
            guild_id: key.guild_id.to_string(),
            channel_id: key.channel_id.to_string(),
            participants: participants
                .into_iter()
                .map(Participant::to_proto)
                .collect(),
            synced_at_unix: clock.unix(),
        }
    }

    /// The snapshot as an event for one user's sockets (drift repair after
    /// a join).
    pub fn sync_for_user(&self, key: &ChannelKey, user_id: &str, clock: Clock) -> Event {
        Event {
            audience: Some(Audience {
                target: Some(audience::Target::Users(UserAudience {
                    user_ids: vec![user_id.to_owned()],
                    guild_ids: Vec::new(),
                })),
            }),
            published_at_unix_ms: clock.unix_ms,
            event_id: String::new(),
            positions: Vec::new(),
            payload: Some(event::Payload::VoiceParticipantSync(
                self.snapshot(key, clock),
            )),
        }
    }

    /// Removes the user from voice if they are in a channel of `guild_id`
    /// (any guild when `None`), unless a token was issued to them after
    /// `unless_joined_after_ms`. Returns how many were removed.
    pub fn remove_user(
        &mut self,
        user_id: &str,
        guild_id: Option<GuildId>,
        unless_joined_after_ms: Option<i64>,
        clock: Clock,
        out: &mut Vec<Event>,
    ) -> u32 {
        let Some(key) = self.users.get(user_id).cloned() else {
            return 0;
        };
        if guild_id.is_some_and(|g| g != key.guild_id) {
            return 0;
        }
        if let Some(after) = unless_joined_after_ms
            && self
                .participant_mut(&key, user_id)
                .is_some_and(|p| p.last_join_ms > after)
        {
            return 0;
        }
        u32::from(self.remove(&key, user_id, clock, out))
    }

    /// The channels that have a participant.
    pub fn channels(&self) -> Vec<ChannelKey> {
        self.channels.keys().cloned().collect()
    }

    /// Brings `key` in line with what LiveKit lists in its room
    /// (PROTOCOL.md §6.6). A participant LiveKit does not list leaves, unless their
    /// newest token is younger than `grace` (it may not have been used
    /// yet); one the roster thinks muted whose microphone LiveKit shows
    /// live is un-muted. The identities LiveKit lists that the roster does
    /// not hold come back as strays, for the caller to remove from the room.
    pub fn reconcile(
        &mut self,
        key: &ChannelKey,
        live: &[LiveParticipant],
        grace: Duration,
        clock: Clock,
        out: &mut Vec<Event>,
    ) -> Reconciled {
        let room = livekit::room_name(key);
        let mut listed = BTreeSet::new();
        let mut done = Reconciled::default();
        for participant in live {
            match livekit::parse_identity(&participant.identity, &room) {
                Some((user_id, at)) if at == *key && self.users.get(&user_id) == Some(key) => {
                    let muted = self
                        .participant_mut(key, &user_id)
                        .is_some_and(|p| p.flags.is_muted);
                    if muted && participant.live_microphone {
                        let unmute = VoiceStateFields {
                            is_muted: Some(false),
                            ..VoiceStateFields::default()
                        };
                        self.update(key, &user_id, &unmute, clock, out);
                        done.unmuted += 1;
                    }
                    listed.insert(user_id);
                }
                _ => done.strays.push(participant.identity.clone()),
            }
        }
        let grace_ms = i64::try_from(grace.as_millis()).unwrap_or(i64::MAX);
        let gone: Vec<String> = self
            .channels
            .get(key)
            .into_iter()
            .flat_map(|seats| seats.loaded.values())
            .filter(|p| !listed.contains(&p.user_id))
            .filter(|p| clock.unix_ms.saturating_sub(p.last_join_ms) >= grace_ms)
            .map(|p| p.user_id.clone())
            .collect();
        for user_id in gone {
            if self.remove(key, &user_id, clock, out) {
                done.left += 1;
            }
        }
        done
    }

    /// Removes every participant whose TTL ran out. Returns how many.
    pub fn prune(&mut self, clock: Clock, out: &mut Vec<Event>) -> usize {
        let expired: Vec<(ChannelKey, String)> = self
            .channels
            .iter()
            .flat_map(|(key, seats)| {
                seats
                    .loaded
                    .values()
                    .filter(|p| clock.unix_ms > p.expires_at_ms)
                    .map(|p| (key.clone(), p.user_id.clone()))
            })
            .collect();
        for (key, user_id) in &expired {
            self.remove(key, user_id, clock, out);
        }
        expired.len()
    }

    // --- What LiveKit observed (verified webhooks) -------------------------

    /// LiveKit says the participant is in the room: renew them and remember
    /// the session. False for someone the roster does not know — a user
    /// removed here (left, kicked, expired) is not brought back by LiveKit.
    pub fn observe_joined(
        &mut self,
        key: &ChannelKey,
        user_id: &str,
        livekit_sid: &str,
        clock: Clock,
    ) -> bool {
        let Some(participant) = self.renewed(key, user_id, clock) else {
            return false;
        };
        if !livekit_sid.is_empty() {
            participant.livekit_sid = Some(livekit_sid.to_owned());
        }
        true
    }

    /// LiveKit says the participant left the room at `at_unix`. Ignored when
    /// it is about an earlier session (another sid, or before the last
    /// token): the user rejoined since.
    pub fn observe_left(
        &mut self,
        key: &ChannelKey,
        user_id: &str,
        livekit_sid: &str,
        at_unix: i64,
        clock: Clock,
        out: &mut Vec<Event>,
    ) -> bool {
        let Some(participant) = self.participant_mut(key, user_id) else {
            return false;
        };
        let other_session = participant
            .livekit_sid
            .as_deref()
            .is_some_and(|sid| !livekit_sid.is_empty() && sid != livekit_sid);
        // Webhook times are whole seconds: only an earlier second is
        // provably before the last token.
        if other_session || at_unix < participant.last_join_ms.div_euclid(1000) {
            return false;
        }
        self.remove(key, user_id, clock, out)
    }

    /// LiveKit says a track of `stream` was published (or unpublished).
    /// Updates the streams and the flags they imply; an audio track that is
    /// live un-mutes a participant the roster thought muted.
    pub fn observe_track(
        &mut self,
        key: &ChannelKey,
        user_id: &str,
        track: ObservedTrack,
        clock: Clock,
        out: &mut Vec<Event>,
    ) -> bool {
        let Some(participant) = self.renewed(key, user_id, clock) else {
            return false;
        };
        let mut change = VoiceStateFields::default();
        match track.stream {
            Stream::Camera => change.is_video_enabled = Some(track.published),
            Stream::ScreenShare => change.is_screen_share_enabled = Some(track.published),
            Stream::Microphone if track.published && !track.muted => {
                change.is_muted = Some(false);
            }
            Stream::Microphone => {}
        }
        let stream_changed = if track.published {
            participant.streams.insert(track.stream)
        } else {
            participant.streams.remove(&track.stream)
        };
        let flags_changed = participant.flags.apply(&change);
        if stream_changed || flags_changed.is_some() {
            participant.updated_at_unix = clock.unix();
        }
        if let Some(changed) = flags_changed {
            out.push(update_event(key, participant, changed, clock));
        }
        if stream_changed {
            out.push(stream_event(
                key,
                participant,
                track.stream,
                track.published,
                clock,
            ));
        }
        stream_changed || flags_changed.is_some()
    }

    // --- Internals ------------------------------------------------------------

    fn participant_mut(&mut self, key: &ChannelKey, user_id: &str) -> Option<&mut Participant> {
        self.channels.get_mut(key)?.loaded.get_mut(user_id)
    }

    /// The participant, its lease renewed from `clock`: something it did
    /// proves it is still there.
    fn renewed(
        &mut self,
        key: &ChannelKey,
        user_id: &str,
        clock: Clock,
    ) -> Option<&mut Participant> {
        let ttl = self.ttl;
        let participant = self.participant_mut(key, user_id)?;
        participant.renew(clock, ttl);
        Some(participant)
    }

    /// Whether `user_id` may enter `key` without exceeding a bound.
    fn check_room_for(&self, key: &ChannelKey, user_id: &str) -> Result<(), RosterError> {
        let in_voice = self.users.contains_key(user_id);
        if !in_voice && self.participant_count() >= self.limits.max_participants {
            return Err(RosterError::TooManyParticipants);
        }
        let Some(participants) = self.channels.get(key) else {
            // A user moving out of the last seat of their old channel frees
            // that channel, but a new one still counts against the cap.
            let freed = self
                .users
                .get(user_id)
                .and_then(|old| self.channels.get(old))
                .is_some_and(|old| old.len() == 1);
            if self.channel_count() - usize::from(freed) >= self.limits.max_channels {
                return Err(RosterError::TooManyChannels);
            }
            return Ok(());
        };
        if participants.len() >= self.limits.max_participants_per_channel {
            return Err(RosterError::ChannelFull);
        }
        Ok(())
    }

    /// A repeat join: new streams and the flags they imply, as diffs.
    fn refresh(
        &mut self,
        key: &ChannelKey,
        user_id: &str,
        streams: &BTreeSet<Stream>,
        clock: Clock,
        out: &mut Vec<Event>,
    ) {
        let Some(participant) = self.renewed(key, user_id, clock) else {
            return;
        };
        participant.last_join_ms = clock.unix_ms;
        // A new token may start a new LiveKit session; the next webhook
        // about a join says which.
        participant.livekit_sid = None;
        let change = VoiceStateFields {
            is_video_enabled: Some(streams.contains(&Stream::Camera)),
            is_screen_share_enabled: Some(streams.contains(&Stream::ScreenShare)),
            ..VoiceStateFields::default()
        };
        let removed: Vec<Stream> = participant.streams.difference(streams).copied().collect();
        let added: Vec<Stream> = streams.difference(&participant.streams).copied().collect();
        let flags_changed = participant.flags.apply(&change);
        if flags_changed.is_some() || !removed.is_empty() || !added.is_empty() {
            participant.updated_at_unix = clock.unix();
        }
        participant.streams.clone_from(streams);
        if let Some(changed) = flags_changed {
            out.push(update_event(key, participant, changed, clock));
        }
        for stream in removed {
            out.push(stream_event(key, participant, stream, false, clock));
        }
        for stream in added {
            out.push(stream_event(key, participant, stream, true, clock));
        }
    }

    /// Takes the participant out: unpublish each stream, then leave.
    fn remove(
        &mut self,
        key: &ChannelKey,
        user_id: &str,
        clock: Clock,
        out: &mut Vec<Event>,
    ) -> bool {
        let Some(seats) = self.channels.get_mut(key) else {
            return false;
        };
        let Some(participant) = seats.loaded.remove(user_id) else {
            return false;
        };
        if seats.len() == 0 {
            self.channels.remove(key);
        }
        self.users.remove(user_id);
        for stream in &participant.streams {
            out.push(stream_event(key, &participant, *stream, false, clock));
        }
        out.push(channel_event(
            key,
            event::Payload::VoiceParticipantLeave(pb::VoiceParticipantLeave {
                guild_id: key.guild_id.to_string(),
                channel_id: key.channel_id.to_string(),
                user_id: participant.user_id.clone(),
                identity: participant.identity.clone(),
                left_at_unix: clock.unix(),
            }),
        ));
        true
    }
}

/// What [`Roster::reconcile`] changed, and what LiveKit holds that it
/// should not.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Reconciled {
    /// Participants LiveKit no longer had, removed.
    pub left: usize,
    /// Participants un-muted because LiveKit showed a live microphone.
    pub unmuted: usize,
    /// Identities in the room that the roster does not hold.
    pub strays: Vec<String>,
}

/// One participant of a LiveKit room, as its server API lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveParticipant {
    pub identity: String,
    /// A microphone track that is published and not muted.
    pub live_microphone: bool,
}

/// A track change LiveKit reported.
#[derive(Debug, Clone, Copy)]
pub struct ObservedTrack {
    pub stream: Stream,
    pub published: bool,
    pub muted: bool,
}

fn channel_event(key: &ChannelKey, payload: event::Payload) -> Event {
    Event {
        audience: Some(Audience {
            target: Some(audience::Target::Channel(ChannelAudience {
                guild_id: key.guild_id.to_string(),
                channel_id: key.channel_id.to_string(),
            })),
        }),
        published_at_unix_ms: Clock::now().unix_ms,
        event_id: String::new(),
        positions: Vec::new(),
        payload: Some(payload),
    }
}

fn update_event(
    key: &ChannelKey,
    participant: &Participant,
    changed: VoiceStateFields,
    clock: Clock,
) -> Event {
    channel_event(
        key,
        event::Payload::VoiceParticipantUpdate(pb::VoiceParticipantUpdate {
            guild_id: key.guild_id.to_string(),
            channel_id: key.channel_id.to_string(),
            user_id: participant.user_id.clone(),
            identity: participant.identity.clone(),
            updated_fields: Some(changed),
            updated_at_unix: clock.unix(),
        }),
    )
}

fn stream_event(
    key: &ChannelKey,
    participant: &Participant,
    stream: Stream,
    published: bool,
    clock: Clock,
) -> Event {
    let (guild_id, channel_id) = (key.guild_id.to_string(), key.channel_id.to_string());
    let (user_id, identity) = (participant.user_id.clone(), participant.identity.clone());
    let stream = stream.to_proto().into();
    let payload = if published {
        event::Payload::VoiceStreamPublish(pb::VoiceStreamPublish {
            guild_id,
            channel_id,
            user_id,
            identity,
            stream,
            published_at_unix: clock.unix(),
        })
    } else {
        event::Payload::VoiceStreamUnpublish(pb::VoiceStreamUnpublish {
            guild_id,
            channel_id,
            user_id,
            identity,
            stream,
            unpublished_at_unix: clock.unix(),
        })
    };
    channel_event(key, payload)
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used, reason = "a failed call is a failed test")]

    use super::*;

    const TTL: Duration = Duration::from_secs(300);

    /// The ULID timestamp of the ids [`key`] makes, so [`describe`] can
    /// name them back.
    const TEST_ID_TIME: u64 = 1;

    /// Channel `n` of guild `n`: canonical ids that [`describe`] and
    /// [`channel_name`] print as `C{n}`.
    pub(crate) fn key(n: u8) -> ChannelKey {
        ChannelKey {
            guild_id: guild(n),
            channel_id: ChannelId::from(ulid::Ulid::from_parts(TEST_ID_TIME, u128::from(n))),
        }
    }

    /// Guild `n`, the guild of [`key`]`(n)`.
    pub(crate) fn guild(n: u8) -> GuildId {
        GuildId::from(ulid::Ulid::from_parts(TEST_ID_TIME, u128::from(n)))
    }

    /// `C{n}` for the channel id of [`key`]`(n)`; any other id as it is.
    pub(crate) fn channel_name(channel_id: &str) -> String {
        match channel_id.parse::<ChannelId>() {
            Ok(id) if id.0.timestamp_ms() == TEST_ID_TIME => format!("C{}", id.0.random()),
            _ => channel_id.to_owned(),
        }
    }

    fn clock() -> Clock {
        Clock::now()
    }

    pub(crate) fn streams(list: &[Stream]) -> BTreeSet<Stream> {
        list.iter().copied().collect()
    }

    /// One line per event: kind, channel, user and what changed.
    pub(crate) fn describe(events: &[Event]) -> Vec<String> {
        events
            .iter()
            .map(|e| {
                let channel = match e.audience.as_ref().and_then(|a| a.target.as_ref()) {
                    Some(audience::Target::Channel(c)) => channel_name(&c.channel_id),
                    Some(audience::Target::Users(u)) => format!("user {}", u.user_ids.join(",")),
                    _ => "?".to_owned(),
                };
                let what = match e.payload.as_ref().unwrap() {
                    event::Payload::VoiceParticipantJoin(j) => {
                        format!("join {}", j.participant.as_ref().unwrap().user_id)
                    }
                    event::Payload::VoiceParticipantLeave(l) => format!("leave {}", l.user_id),
                    event::Payload::VoiceParticipantUpdate(u) => {
                        let f = u.updated_fields.unwrap();
                        let mut parts = Vec::new();
                        for (name, value) in [
                            ("muted", f.is_muted),
                            ("deafened", f.is_deafened),
                            ("speaking", f.is_speaking),
                            ("video", f.is_video_enabled),
                            ("screen", f.is_screen_share_enabled),
                        ] {
                            if let Some(v) = value {
                                parts.push(format!("{name}={v}"));
                            }
                        }
                        format!("update {} {}", u.user_id, parts.join(","))
                    }
                    event::Payload::VoiceStreamPublish(p) => {
                        format!("publish {} {}", p.user_id, stream_name(p.stream))
                    }
                    event::Payload::VoiceStreamUnpublish(p) => {
                        format!("unpublish {} {}", p.user_id, stream_name(p.stream))
                    }
                    event::Payload::VoiceParticipantSync(s) => format!(
                        "sync {}",
                        s.participants
                            .iter()
                            .map(|p| p.user_id.as_str())
                            .collect::<Vec<_>>()
                            .join(",")
                    ),
                    other => format!("{other:?}"),
                };
                format!("{channel}: {what}")
            })
            .collect()
    }

    fn stream_name(raw: i32) -> &'static str {
        Stream::from_proto(raw).unwrap().livekit_name()
    }

    fn roster() -> Roster {
        Roster::new(Limits::default(), TTL)
    }

    fn roster_of(roster: &Roster, key: &ChannelKey) -> Vec<String> {
        roster
            .snapshot(key, clock())
            .participants
            .into_iter()
            .map(|p| p.user_id)
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn a_join_announces_the_participant_then_each_stream() {
        let mut r = roster();
        let mut out = Vec::new();
        let all = streams(&[Stream::ScreenShare, Stream::Microphone, Stream::Camera]);
        r.join(&key(1), "alice", &all, clock(), &mut out).unwrap();
        assert_eq!(
            describe(&out),
            [
                "C1: join alice",
                "C1: publish alice microphone",
                "C1: publish alice camera",
                "C1: publish alice screen_share",
            ]
        );
        let sync = r.snapshot(&key(1), clock());
        let p = &sync.participants[0];
        let (g1, c1) = (key(1).guild_id, key(1).channel_id);
        assert_eq!(p.identity, format!("u.alice.{g1}.{c1}"));
        assert!(p.is_video_enabled && p.is_screen_share_enabled);
        assert!(!p.is_muted && !p.is_deafened && !p.is_speaking);
    }

    #[tokio::test(start_paused = true)]
    async fn a_repeat_join_sends_only_what_changed() {
        let mut r = roster();
        let mut out = Vec::new();
        let mic = streams(&[Stream::Microphone]);
        r.join(&key(1), "alice", &mic, clock(), &mut out).unwrap();
        out.clear();
        r.join(&key(1), "alice", &mic, clock(), &mut out).unwrap();
        assert_eq!(describe(&out), Vec::<String>::new(), "nothing changed");

        let cam = streams(&[Stream::Camera]);
        r.join(&key(1), "alice", &cam, clock(), &mut out).unwrap();
        assert_eq!(
            describe(&out),
            [
                "C1: update alice video=true",
                "C1: unpublish alice microphone",
                "C1: publish alice camera",
            ]
        );
        assert_eq!(roster_of(&r, &key(1)), ["alice"], "still one participant");
    }

    #[tokio::test(start_paused = true)]
    async fn joining_elsewhere_leaves_the_old_channel_first() {
        let mut r = roster();
        let mut out = Vec::new();
        let mic = streams(&[Stream::Microphone]);
        r.join(&key(1), "alice", &mic, clock(), &mut out).unwrap();
        out.clear();
        r.join(&key(2), "alice", &BTreeSet::new(), clock(), &mut out)
            .unwrap();
        assert_eq!(
            describe(&out),
            [
                "C1: unpublish alice microphone",
                "C1: leave alice",
                "C2: join alice",
            ]
        );
        assert_eq!(roster_of(&r, &key(1)), Vec::<String>::new());
        assert_eq!(roster_of(&r, &key(2)), ["alice"]);
    }

    #[tokio::test(start_paused = true)]
    async fn leaving_unpublishes_then_leaves_and_is_idempotent() {
        let mut r = roster();
        let mut out = Vec::new();
        let both = streams(&[Stream::Microphone, Stream::Camera]);
        r.join(&key(1), "alice", &both, clock(), &mut out).unwrap();
        out.clear();
        assert!(r.leave(&key(1), "alice", clock(), &mut out));
        assert_eq!(
            describe(&out),
            [
                "C1: unpublish alice microphone",
                "C1: unpublish alice camera",
                "C1: leave alice",
            ]
        );
        out.clear();
        assert!(!r.leave(&key(1), "alice", clock(), &mut out), "twice");
        assert!(!r.leave(&key(2), "bob", clock(), &mut out), "never joined");
        assert_eq!(out.len(), 0);
        assert_eq!(r.participant_count(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn updates_carry_only_changed_fields() {
        let mut r = roster();
        let mut out = Vec::new();
        r.join(&key(1), "alice", &BTreeSet::new(), clock(), &mut out)
            .unwrap();
        out.clear();
        let mute = VoiceStateFields {
            is_muted: Some(true),
            is_deafened: Some(false),
            ..VoiceStateFields::default()
        };
        assert!(r.update(&key(1), "alice", &mute, clock(), &mut out));
        assert_eq!(describe(&out), ["C1: update alice muted=true"]);
        out.clear();
        assert!(
            !r.update(&key(1), "alice", &mute, clock(), &mut out),
            "same"
        );
        assert!(
            !r.update(&key(1), "bob", &mute, clock(), &mut out),
            "absent"
        );
        assert!(
            !r.update(&key(2), "alice", &mute, clock(), &mut out),
            "elsewhere"
        );
        assert_eq!(out.len(), 0);
        assert!(r.snapshot(&key(1), clock()).participants[0].is_muted);
    }

    #[tokio::test(start_paused = true)]
    async fn bounds_refuse_a_join_and_change_nothing() {
        let limits = Limits {
            max_channels: 2,
            max_participants_per_channel: 2,
            max_participants: 4,
        };
        let mut r = Roster::new(limits, TTL);
        let mut out = Vec::new();
        let none = BTreeSet::new();
        r.join(&key(1), "a", &none, clock(), &mut out).unwrap();
        r.join(&key(1), "b", &none, clock(), &mut out).unwrap();
        r.join(&key(2), "c", &none, clock(), &mut out).unwrap();
        out.clear();

        assert_eq!(
            r.join(&key(1), "c", &none, clock(), &mut out),
            Err(RosterError::ChannelFull)
        );
        assert_eq!(roster_of(&r, &key(2)), ["c"], "c did not leave C2");
        assert_eq!(
            r.join(&key(3), "d", &none, clock(), &mut out),
            Err(RosterError::TooManyChannels)
        );
        // Moving the last participant of C2 frees that channel for C3.
        r.join(&key(3), "c", &none, clock(), &mut out).unwrap();
        out.clear();
        r.join(&key(3), "d", &none, clock(), &mut out).unwrap();
        assert_eq!(
            r.join(&key(2), "e", &none, clock(), &mut out),
            Err(RosterError::TooManyParticipants)
        );
        assert_eq!(describe(&out), ["C3: join d"], "refusals emit nothing");
    }

    #[tokio::test(start_paused = true)]
    async fn reconcile_follows_livekit_but_spares_fresh_tokens() {
        // Real ULIDs: LiveKit identities embed them and are parsed back.
        let key = ChannelKey {
            guild_id: GuildId::generate(),
            channel_id: ChannelId::generate(),
        };
        let [gone, muted, fresh] = [(); 3].map(|()| ulid::Ulid::generate().to_string());
        let mut r = roster();
        let mut out = Vec::new();
        let early = clock();
        for user in [&gone, &muted] {
            r.join(&key, user, &streams(&[Stream::Microphone]), early, &mut out)
                .unwrap();
        }
        let mute = VoiceStateFields {
            is_muted: Some(true),
            ..VoiceStateFields::default()
        };
        r.update(&key, &muted, &mute, early, &mut out);
        let later = early.after(Duration::from_secs(60));
        r.join(&key, &fresh, &BTreeSet::new(), later, &mut out)
            .unwrap();
        out.clear();

        let stray = format!(
            "u.{}.{}.{}",
            ulid::Ulid::generate(),
            key.guild_id,
            key.channel_id
        );
        let live = [
            LiveParticipant {
                identity: livekit::identity(&muted, &key),
                live_microphone: true,
            },
            LiveParticipant {
                identity: stray.clone(),
                live_microphone: false,
            },
        ];
        let done = r.reconcile(&key, &live, Duration::from_secs(30), later, &mut out);
        assert_eq!(
            done,
            Reconciled {
                left: 1,
                unmuted: 1,
                strays: vec![stray],
            }
        );
        assert_eq!(
            describe(&out),
            [
                format!("{}: update {muted} muted=false", key.channel_id),
                format!("{}: unpublish {gone} microphone", key.channel_id),
                format!("{}: leave {gone}", key.channel_id),
            ]
        );
        // The fresh token, not yet in LiveKit, stays; so does the muted one.
        let left: BTreeSet<String> = r
            .snapshot(&key, later)
            .participants
            .into_iter()
            .map(|p| p.user_id)
            .collect();
        assert_eq!(left, [muted, fresh].into_iter().collect());
    }

    #[tokio::test(start_paused = true)]
    async fn a_channel_takes_its_full_512_and_refuses_the_next() {
        let mut r = Roster::new(Limits::default(), TTL);
        let mut out = Vec::new();
        for n in 0..512 {
            let user = format!("01HZX3N4B5C6D7E8F9{n:08}");
            r.join(&key(1), &user, &BTreeSet::new(), clock(), &mut out)
                .expect("a seat is free");
        }
        assert_eq!(r.snapshot(&key(1), clock()).participants.len(), 512);
        out.clear();
        assert_eq!(
            r.join(&key(1), "one-too-many", &BTreeSet::new(), clock(), &mut out),
            Err(RosterError::ChannelFull)
        );
        assert!(out.is_empty(), "a refusal emits nothing");
    }

    #[tokio::test(start_paused = true)]
    async fn participants_expire_after_their_ttl_unless_renewed() {
        let mut r = roster();
        let mut out = Vec::new();
        let mic = streams(&[Stream::Microphone]);
        let start = clock();
        r.join(&key(1), "alice", &mic, start, &mut out).unwrap();
        r.join(&key(1), "bob", &BTreeSet::new(), start, &mut out)
            .unwrap();
        out.clear();

        let renewed = start.after(TTL - Duration::from_secs(10));
        let speak = VoiceStateFields {
            is_speaking: Some(true),
            ..VoiceStateFields::default()
        };
        r.update(&key(1), "bob", &speak, renewed, &mut out);
        out.clear();
        let at_ttl = start.after(TTL);
        assert_eq!(r.prune(at_ttl, &mut out), 0, "alive for the whole TTL");
        let past_ttl = at_ttl.after(Duration::from_millis(1));
        assert_eq!(r.prune(past_ttl, &mut out), 1);
        assert_eq!(
            describe(&out),
            ["C1: unpublish alice microphone", "C1: leave alice"]
        );
        assert_eq!(roster_of(&r, &key(1)), ["bob"]);
        out.clear();
        assert_eq!(
            r.prune(renewed.after(TTL).after(Duration::from_millis(1)), &mut out),
            1
        );
        assert_eq!(describe(&out), ["C1: leave bob"]);
        assert_eq!(r.participant_count(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn removals_respect_guild_and_a_later_join() {
        let mut r = roster();
        let mut out = Vec::new();
        let at_join = clock();
        r.join(&key(1), "alice", &BTreeSet::new(), at_join, &mut out)
            .unwrap();
        out.clear();
        assert_eq!(
            r.remove_user("alice", Some(guild(2)), None, clock(), &mut out),
            0
        );
        // A close from before the (re)join does not remove her.
        let before = at_join.unix_ms - 1;
        assert_eq!(
            r.remove_user("alice", None, Some(before), clock(), &mut out),
            0
        );
        assert_eq!(out.len(), 0);
        let after = at_join.unix_ms;
        assert_eq!(
            r.remove_user("alice", None, Some(after), clock(), &mut out),
            1
        );
        assert_eq!(describe(&out), ["C1: leave alice"]);
        assert_eq!(
            r.remove_user("alice", Some(guild(1)), None, clock(), &mut out),
            0
        );
    }

    #[tokio::test(start_paused = true)]
    async fn livekit_observations_are_idempotent_and_ordered() {
        let mut r = roster();
        let mut out = Vec::new();
        let at_join = clock();
        r.join(&key(1), "alice", &BTreeSet::new(), at_join, &mut out)
            .unwrap();
        out.clear();
        assert!(r.observe_joined(&key(1), "alice", "PA_1", clock()));
        assert!(
            !r.observe_joined(&key(1), "mallory", "PA_9", clock()),
            "unknown"
        );

        let mic = ObservedTrack {
            stream: Stream::Microphone,
            published: true,
            muted: false,
        };
        let mute = VoiceStateFields {
            is_muted: Some(true),
            ..VoiceStateFields::default()
        };
        r.update(&key(1), "alice", &mute, clock(), &mut out);
        out.clear();
        assert!(r.observe_track(&key(1), "alice", mic, clock(), &mut out));
        assert_eq!(
            describe(&out),
            [
                "C1: update alice muted=false",
                "C1: publish alice microphone"
            ],
            "a live audio track un-mutes"
        );
        out.clear();
        assert!(
            !r.observe_track(&key(1), "alice", mic, clock(), &mut out),
            "dup"
        );
        let unpublished = ObservedTrack {
            published: false,
            ..mic
        };
        assert!(r.observe_track(&key(1), "alice", unpublished, clock(), &mut out));
        assert_eq!(describe(&out), ["C1: unpublish alice microphone"]);
        out.clear();

        // A leave of another session, or from before the join, is stale.
        let now = at_join.unix_ms / 1000;
        assert!(!r.observe_left(&key(1), "alice", "PA_0", now, clock(), &mut out));
        assert!(!r.observe_left(&key(1), "alice", "PA_1", now - 5, clock(), &mut out));
        assert_eq!(out.len(), 0);
        assert!(r.observe_left(&key(1), "alice", "PA_1", now, clock(), &mut out));
        assert_eq!(describe(&out), ["C1: leave alice"]);
        assert!(
            !r.observe_left(&key(1), "alice", "PA_1", now, clock(), &mut out),
            "dup"
        );
    }
}
