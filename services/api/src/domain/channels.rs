//! A guild's channels: the use cases behind `/guilds/{g}/channels…`
//! (create, list only the channels the caller can view, rename, delete,
//! and the caller's own channel permissions), the validated [`NewChannel`]
//! they take, and the proto and wire shapes of a channel.
//!
//! A deleted channel is announced, then access is revoked before the call
//! returns, so no gateway keeps a subscription to a channel that is gone.
//! Each change's events are stored with it (docs/adr/0006-outbox.md).

use filament_ids::{ChannelId, GuildId, UserId};
use filament_proto::v1::{self as pb, event};
use filament_wire::Channel;

use crate::clock::now_unix;
use crate::domain::Name;
use crate::domain::access;
use crate::domain::permissions::{Permission, Permissions};
use crate::error::{ApiError, ApiResult};
use crate::outbox::Pending;
use crate::publish;
use crate::state::AppState;
use crate::store::{Change, ChannelKind, ChannelRecord, MemberRole};

/// The most channels a listing returns.
const CHANNEL_LIST_LIMIT: u32 = 500;

/// A new channel: its name and kind (`text` by default).
#[derive(Debug)]
pub struct NewChannel {
    pub name: Name,
    pub kind: ChannelKind,
}

/// What a member may do in a channel: their legacy role and their
/// channel-level permissions.
#[derive(Debug, Clone, Copy)]
pub struct ChannelPermissions {
    pub role: MemberRole,
    pub permissions: Permissions,
}

/// Creates a channel as `actor` (`manage_channel_overrides`).
pub async fn create(
    state: &AppState,
    actor: UserId,
    guild_id: GuildId,
    new: NewChannel,
) -> ApiResult<Channel> {
    state
        .authorizer()
        .guild(guild_id, actor)
        .await?
        .require(Permission::ManageChannelOverrides)?;
    let channel = ChannelRecord {
        channel_id: state.new_id(),
        guild_id,
        name: new.name.into_string(),
        kind: new.kind,
        created_at_unix: now_unix(),
    };
    let created = Pending::new(
        state.publisher(),
        publish::channel_create(&guild_id.to_string(), proto_channel(&channel)),
    );
    state
        .store()
        .create_channel(channel.clone(), vec![created.row()])
        .await?;
    created.publish(state.publisher()).await;
    Ok(wire_channel(&channel))
}

/// The channels `viewer` can view, at most 500.
pub async fn list(state: &AppState, viewer: UserId, guild: GuildId) -> ApiResult<Vec<Channel>> {
    let channels = state
        .authorizer()
        .visible_channels(guild, viewer, CHANNEL_LIST_LIMIT)
        .await?;
    Ok(channels.iter().map(wire_channel).collect())
}

/// Renames a channel as `actor` (channel-level `manage_channel_overrides`),
/// and answers it as it is now.
pub async fn rename(
    state: &AppState,
    actor: UserId,
    guild_id: GuildId,
    channel_id: ChannelId,
    name: Name,
) -> ApiResult<Channel> {
    state
        .authorizer()
        .require_in_channel(
            guild_id,
            channel_id,
            actor,
            Permission::ManageChannelOverrides,
        )
        .await?;
    let guild = guild_id.to_string();
    let now = now_unix();
    // Only a rename that changed the name is announced, which only the
    // write's transaction knows.
    let deferred = publish::Deferred::new(state.publisher());
    let outbox = |change: &Change<ChannelRecord>| {
        if change.after.name == change.before.name {
            return Vec::new();
        }
        // Only sockets subscribed to the channel: they were authorized to
        // see it, while a guild-wide event would show a private channel's
        // name to members who cannot view it.
        let event = publish::for_channel(
            &guild,
            &channel_id.to_string(),
            event::Payload::ChannelUpdate(pb::ChannelUpdate {
                guild_id: guild.clone(),
                channel_id: channel_id.to_string(),
                updated_fields: Some(pb::ChannelFields {
                    name: Some(change.after.name.clone()),
                }),
                updated_at_unix: now,
                actor_user_id: Some(actor.to_string()),
            }),
        );
        deferred.rows(vec![event])
    };
    let change = state
        .store()
        .rename_channel(guild_id, channel_id, name.into_string(), &outbox)
        .await?
        .ok_or(ApiError::NotFound)?;
    publish::publish_all(state.publisher(), deferred.into_pending()).await;
    Ok(wire_channel(&change.after))
}

/// Deletes a channel with its messages as `actor` (channel-level
/// `manage_channel_overrides`).
pub async fn delete(
    state: &AppState,
    actor: UserId,
    guild_id: GuildId,
    channel_id: ChannelId,
) -> ApiResult<()> {
    state
        .authorizer()
        .require_in_channel(
            guild_id,
            channel_id,
            actor,
            Permission::ManageChannelOverrides,
        )
        .await?;
    let guild = guild_id.to_string();
    // The event first, to the channel's subscribers only (see `rename`): a
    // socket whose only subscription was this channel is no longer present
    // in the guild once access is revoked.
    let event = publish::for_channel(
        &guild,
        &channel_id.to_string(),
        event::Payload::ChannelDelete(pb::ChannelDelete {
            guild_id: guild.clone(),
            channel_id: channel_id.to_string(),
            deleted_at_unix: now_unix(),
            actor_user_id: Some(actor.to_string()),
        }),
    );
    let deleted = Pending::new(state.publisher(), event);
    let revocation = access::AccessRevocation::new(state, guild_id, &[], false);
    let outbox = vec![deleted.row(), revocation.row()];
    if !state
        .store()
        .delete_channel(guild_id, channel_id, outbox)
        .await?
    {
        return Err(ApiError::NotFound);
    }
    deleted.publish(state.publisher()).await;
    revocation.publish(state).await;
    Ok(())
}

/// `user`'s legacy role and channel-level permissions in a channel they
/// can view.
pub async fn own_permissions(
    state: &AppState,
    user: UserId,
    guild: GuildId,
    channel: ChannelId,
) -> ApiResult<ChannelPermissions> {
    let (access, _) = state.authorizer().channel(guild, channel, user).await?;
    Ok(ChannelPermissions {
        role: access.role,
        permissions: access.permissions,
    })
}

pub fn proto_channel(channel: &ChannelRecord) -> pb::Channel {
    pb::Channel {
        channel_id: channel.channel_id.to_string(),
        name: channel.name.clone(),
        kind: match channel.kind {
            ChannelKind::Text => pb::ChannelKind::Text,
            ChannelKind::Voice => pb::ChannelKind::Voice,
        }
        .into(),
    }
}

/// The Channel shape (PROTOCOL.md §1.9) of a stored channel.
fn wire_channel(channel: &ChannelRecord) -> Channel {
    Channel {
        channel_id: channel.channel_id.to_string(),
        name: channel.name.clone(),
        kind: match channel.kind {
            ChannelKind::Text => filament_wire::ChannelKind::Text,
            ChannelKind::Voice => filament_wire::ChannelKind::Voice,
        },
    }
}
