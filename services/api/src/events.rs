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

fn event_with(target: audience::Target, payload: event::Payload) -> Event {
    Event {
        audience: Some(Audience {
            target: Some(target),
        }),
        published_at_unix_ms: now_unix_ms(),
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
