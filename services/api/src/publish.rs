//! Addressing and publishing the api's realtime events: who an event is
//! for ([`for_channel`], [`for_guild`], [`for_users`]), whether it fits a
//! gateway frame ([`ensure_deliverable`]), and getting it out after its
//! write. The `Event` message is `events.proto`'s and the payloads the
//! gateway sends are `filament_wire::payloads`'.
//!
//! Every event the api publishes goes through the event outbox
//! (docs/adr/0006-outbox.md): a handler builds it before the write, wraps
//! it in a [`Pending`] (or lets the store's transaction build it,
//! [`Deferred`]), hands the row to the store call that makes the change,
//! and publishes it only after that call returned `Ok`.
//! So an event never describes a write that did not commit, and a write
//! that committed never loses its event.

use std::sync::{Mutex, PoisonError};

use filament_ids::{GuildId, SessionId, UserId};
use filament_proto::v1::{
    self as pb, Audience, ChannelAudience, Event, GuildAudience, audience, event,
};

use crate::clock::now_unix_ms;
use crate::error::{ApiError, ApiResult};
use crate::outbox::Pending;
use crate::state::AppState;
use crate::store::OutboxEvent;

/// An event for the sockets subscribed to one channel.
pub fn for_channel(guild_id: &str, channel_id: &str, payload: event::Payload) -> Event {
    event_with(
        audience::Target::Channel(ChannelAudience {
            guild_id: guild_id.to_owned(),
            channel_id: channel_id.to_owned(),
        }),
        payload,
    )
}

/// An event for the sockets present in one guild.
pub fn for_guild(guild_id: &str, payload: event::Payload) -> Event {
    event_with(
        audience::Target::Guild(GuildAudience {
            guild_id: guild_id.to_owned(),
        }),
        payload,
    )
}

/// An event for every socket of these users, and every socket present in
/// these guilds (profile changes reach friends and guild-mates).
pub fn for_users(user_ids: Vec<String>, guild_ids: Vec<String>, payload: event::Payload) -> Event {
    event_with(
        audience::Target::Users(pb::UserAudience {
            user_ids,
            guild_ids,
        }),
        payload,
    )
}

fn event_with(target: audience::Target, payload: event::Payload) -> Event {
    Event {
        audience: Some(Audience {
            target: Some(target),
        }),
        published_at_unix_ms: now_unix_ms(),
        event_id: String::new(),
        positions: Vec::new(),
        payload: Some(payload),
    }
}

/// Refuses a change whose event would not fit in a gateway frame: better a
/// clear 400 now than subscribers silently missing it later.
pub fn ensure_deliverable(event: &Event) -> ApiResult<()> {
    match filament_wire::encode_event(event, filament_wire::MAX_FRAME_BYTES) {
        Ok(_) => Ok(()),
        Err(filament_wire::EncodeError::Oversized { .. }) => Err(ApiError::InvalidRequest),
        Err(err) => Err(ApiError::Internal(anyhow::anyhow!(
            "event does not encode: {err}"
        ))),
    }
}

/// Publishes an event as it is, without waiting for acknowledgements: the
/// outbox's publish (`crate::outbox`), for its request path and its relay.
/// Handlers never call it: they store each event with its write through a
/// [`Pending`] and publish that after the commit, so a crash in between
/// delays the event instead of losing it (docs/adr/0006-outbox.md).
pub(crate) async fn publish(state: &AppState, event: Event) {
    let report = state.fanout().publish(event).await;
    if report.missed > 0 {
        tracing::debug!(?report, "event missed some gateways");
    }
}

/// Publishes, in order, events whose write committed.
pub async fn publish_all(state: &AppState, pending: Vec<Pending>) {
    for event in pending {
        event.publish(state).await;
    }
}

/// Events a store call builds inside its transaction, from what only that
/// transaction knows (a request's parties, a version it bumped, what an
/// update changed), through an [`OutboxFor`](crate::store::OutboxFor)
/// closure: `|known| deferred.rows(events_of(known))`. It keeps each
/// event's [`Pending`], so that what is published after the commit is
/// exactly what was stored.
pub struct Deferred<'s> {
    state: &'s AppState,
    built: Mutex<Vec<Pending>>,
}

impl<'s> Deferred<'s> {
    pub fn new(state: &'s AppState) -> Self {
        Self {
            state,
            built: Mutex::new(Vec::new()),
        }
    }

    /// Makes `events` pending, keeps them, and returns their rows for the
    /// store to write. A transaction calls its closure once; a second call
    /// replaces what the first built.
    pub fn rows(&self, events: Vec<Event>) -> Vec<OutboxEvent> {
        let pending: Vec<Pending> = events
            .into_iter()
            .map(|event| Pending::new(self.state, event))
            .collect();
        let rows = pending.iter().map(Pending::row).collect();
        *self.built.lock().unwrap_or_else(PoisonError::into_inner) = pending;
        rows
    }

    /// The events built, in order: empty when the write did not happen.
    /// Publish them only after the store call returned `Ok`.
    pub fn into_pending(self) -> Vec<Pending> {
        self.built
            .into_inner()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// `AccessChanged` for the guild: these users' access shrank
/// (`membership_revoked` when they are no longer members; an empty
/// `user_ids` re-checks everyone present in the guild), or, with
/// `ip_bans_changed`, the guild bans more addresses. Published with
/// [`Pending::publish_acked`], or through [`AccessRevocation`].
pub fn access_changed(
    guild_id: &str,
    user_ids: Vec<String>,
    membership_revoked: bool,
    ip_bans_changed: bool,
) -> Event {
    for_guild(
        guild_id,
        event::Payload::AccessChanged(pb::AccessChanged {
            guild_id: guild_id.to_owned(),
            user_ids,
            membership_revoked,
            ip_bans_changed,
        }),
    )
}

/// `SessionRevoked` for every socket of the user: one of the user's
/// sessions ended. Published with [`Pending::publish_acked`], after the session is
/// listed as revoked in the registry, so that a socket this misses
/// (identified just before) finds the revocation there.
pub fn session_revoked(user_id: UserId, session_id: SessionId) -> Event {
    let user = user_id.to_string();
    for_users(
        vec![user.clone()],
        Vec::new(),
        event::Payload::SessionRevoked(pb::SessionRevoked {
            user_id: user,
            session_id: session_id.to_string(),
        }),
    )
}

/// Voice follows an access change: members who are gone leave voice, and
/// the others are re-checked against what their voice tokens grant.
pub async fn voice_follows_access(
    state: &AppState,
    guild_id: &str,
    user_ids: &[String],
    membership_revoked: bool,
) {
    if membership_revoked {
        state.voice().remove_members(guild_id, user_ids).await;
    } else {
        state
            .voice()
            .recheck(state.authorizer(), guild_id, user_ids)
            .await;
    }
}

/// A change that shrinks what users may see in a guild, told to every
/// gateway holding the guild: its `AccessChanged` row goes into the write's
/// transaction ([`row`](Self::row)), and after the commit
/// [`publish`](Self::publish) waits for the gateways, then voice follows.
pub struct AccessRevocation {
    pending: Pending,
    guild_id: String,
    user_ids: Vec<String>,
    membership_revoked: bool,
}

impl AccessRevocation {
    /// These users' access shrank (an empty `user_ids`: everyone present in
    /// the guild is re-checked); `membership_revoked` when they are no
    /// longer members.
    pub fn new(
        state: &AppState,
        guild_id: &str,
        user_ids: Vec<String>,
        membership_revoked: bool,
    ) -> Self {
        let event = access_changed(guild_id, user_ids.clone(), membership_revoked, false);
        Self {
            pending: Pending::new(state, event),
            guild_id: guild_id.to_owned(),
            user_ids,
            membership_revoked,
        }
    }

    /// The row to store with the change.
    pub fn row(&self) -> OutboxEvent {
        self.pending.row()
    }

    /// After the commit: every gateway drops what the users can no longer
    /// see and acknowledges it, then voice follows.
    pub async fn publish(self, state: &AppState) {
        self.pending.publish_acked(state, "access change").await;
        voice_follows_access(
            state,
            &self.guild_id,
            &self.user_ids,
            self.membership_revoked,
        )
        .await;
    }
}

/// Records an audit entry for a committed change. The change stands even if
/// the entry cannot be written; that failure is logged loudly.
pub async fn audit(
    state: &AppState,
    guild_id: GuildId,
    actor_user_id: UserId,
    target_user_id: Option<UserId>,
    action: &'static str,
) {
    let entry = crate::store::NewAuditEntry {
        audit_id: state.new_id(),
        guild_id,
        actor_user_id,
        target_user_id,
        action,
        created_at_unix: crate::clock::now_unix(),
    };
    if let Err(err) = state.store().record_audit(entry).await {
        tracing::error!(%err, action, "cannot write audit entry");
    }
}

pub fn message_create(message: pb::Message) -> Event {
    let (guild_id, channel_id) = (message.guild_id.clone(), message.channel_id.clone());
    for_channel(
        &guild_id,
        &channel_id,
        event::Payload::MessageCreate(pb::MessageCreate {
            message: Some(message),
        }),
    )
}

pub fn channel_create(guild_id: &str, channel: pb::Channel) -> Event {
    for_guild(
        guild_id,
        event::Payload::ChannelCreate(pb::ChannelCreate {
            guild_id: guild_id.to_owned(),
            channel: Some(channel),
        }),
    )
}

pub fn member_add(guild_id: &str, user_id: &str, joined_at_unix: i64, actor: &str) -> Event {
    for_guild(
        guild_id,
        event::Payload::WorkspaceMemberAdd(pb::WorkspaceMemberAdd {
            guild_id: guild_id.to_owned(),
            user_id: user_id.to_owned(),
            role: pb::LegacyRole::Member.into(),
            joined_at_unix,
            actor_user_id: Some(actor.to_owned()),
        }),
    )
}
