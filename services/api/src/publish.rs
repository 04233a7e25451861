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
//!
//! Publishing takes the [`Publisher`] (the fanout and the outbox's share
//! of the store), never the whole application state. What follows a
//! publish without being one (voice following an access change, the audit
//! log) is the domain's: `domain::access`, `domain::voice`,
//! `domain::audit`.

use std::sync::{Mutex, PoisonError};

use filament_ids::{SessionId, UserId};
use filament_proto::v1::{
    self as pb, Audience, ChannelAudience, Event, GuildAudience, audience, event,
};

use crate::clock::now_unix_ms;
use crate::error::{ApiError, ApiResult};
use crate::outbox::{Pending, Publisher};
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
pub(crate) async fn publish(publisher: &Publisher, event: Event) {
    let report = publisher.fanout().publish(event).await;
    if report.missed > 0 {
        tracing::debug!(?report, "event missed some gateways");
    }
}

/// Publishes, in order, events whose write committed.
pub async fn publish_all(publisher: &Publisher, pending: Vec<Pending>) {
    for event in pending {
        event.publish(publisher).await;
    }
}

/// Events a store call builds inside its transaction, from what only that
/// transaction knows (a request's parties, a version it bumped, what an
/// update changed), through an [`OutboxFor`](crate::store::OutboxFor)
/// closure: `|known| deferred.rows(events_of(known))`. It keeps each
/// event's [`Pending`], so that what is published after the commit is
/// exactly what was stored.
pub struct Deferred<'p> {
    publisher: &'p Publisher,
    built: Mutex<Vec<Pending>>,
}

impl<'p> Deferred<'p> {
    pub fn new(publisher: &'p Publisher) -> Self {
        Self {
            publisher,
            built: Mutex::new(Vec::new()),
        }
    }

    /// Makes `events` pending, keeps them, and returns their rows for the
    /// store to write. A transaction calls its closure once; a second call
    /// replaces what the first built.
    pub fn rows(&self, events: Vec<Event>) -> Vec<OutboxEvent> {
        let pending: Vec<Pending> = events
            .into_iter()
            .map(|event| Pending::new(self.publisher, event))
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
/// [`Pending::publish_acked`], or through
/// [`AccessRevocation`](crate::domain::access::AccessRevocation).
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
