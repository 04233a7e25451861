//! Building and publishing events. Handlers call these only after the
//! store call that made the change returned `Ok`, so an event never
//! describes a write that did not commit.

use filament_proto::v1::{
    self as pb, Audience, ChannelAudience, Event, GuildAudience, audience, event,
};

use crate::clock::now_unix_ms;
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

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

/// Publishes a committed change.
pub async fn publish(state: &AppState, event: Event) {
    let report = state.fanout().publish(event).await;
    if report.missed > 0 {
        tracing::debug!(?report, "event missed some gateways");
    }
}

/// Tells every gateway holding the guild that these users' access shrank,
/// and returns only once each gateway dropped what the users can no longer
/// see (or had its stream cut and so resynchronises). Call it after the
/// commit and before the REST call returns. An empty `user_ids` re-checks
/// everyone present in the guild.
///
/// Voice follows: members who are gone leave voice, and the others are
/// re-checked against what their voice tokens grant.
pub async fn revoke_access(
    state: &AppState,
    guild_id: &str,
    user_ids: Vec<String>,
    membership_revoked: bool,
) {
    publish_access_change(
        state,
        pb::AccessChanged {
            guild_id: guild_id.to_owned(),
            user_ids: user_ids.clone(),
            membership_revoked,
            ip_bans_changed: false,
        },
    )
    .await;
    if membership_revoked {
        state.voice().remove_members(guild_id, &user_ids).await;
    } else {
        state
            .voice()
            .recheck(state.authorizer(), guild_id, &user_ids)
            .await;
    }
}

/// Tells every gateway holding the guild that it bans more addresses, and
/// returns once each gateway closed the sockets present in the guild from
/// a banned address (contract §5.3: an IP-banned socket is disconnected).
pub async fn ip_bans_changed(state: &AppState, guild_id: &str) {
    publish_access_change(
        state,
        pb::AccessChanged {
            guild_id: guild_id.to_owned(),
            user_ids: Vec::new(),
            membership_revoked: false,
            ip_bans_changed: true,
        },
    )
    .await;
}

async fn publish_access_change(state: &AppState, change: pb::AccessChanged) {
    let guild_id = change.guild_id.clone();
    let event = for_guild(&guild_id, event::Payload::AccessChanged(change));
    let report = state.fanout().publish_acked(event).await;
    if report.missed > 0 {
        tracing::warn!(
            ?report,
            "access change missed some gateways; they will resynchronise"
        );
    }
}

/// Tells every gateway holding the user that one of the user's sessions
/// ended, and returns once each closed that session's sockets (or had its
/// stream cut, and so resynchronises, which closes every socket). Call it
/// after the session is listed as revoked in the registry, so that a socket
/// this misses (identified just before) finds the revocation there.
pub async fn session_revoked(state: &AppState, user_id: ulid::Ulid, session_id: ulid::Ulid) {
    let user = user_id.to_string();
    let revoked = pb::SessionRevoked {
        user_id: user.clone(),
        session_id: session_id.to_string(),
    };
    let event = for_users(
        vec![user],
        Vec::new(),
        event::Payload::SessionRevoked(revoked),
    );
    let report = state.fanout().publish_acked(event).await;
    if report.missed > 0 {
        tracing::warn!(
            ?report,
            "session revocation missed some gateways; they will resynchronise"
        );
    }
}

/// Records an audit entry for a committed change. The change stands even if
/// the entry cannot be written; that failure is logged loudly.
pub async fn audit(
    state: &AppState,
    guild_id: ulid::Ulid,
    actor_user_id: ulid::Ulid,
    target_user_id: Option<ulid::Ulid>,
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
