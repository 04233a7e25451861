//! Channel permission overrides (PROTOCOL.md §2.9): setting one on a
//! legacy role (the `/overrides/{role}` route the web client uses) or on
//! any role or member (`/permission-overrides/{target_kind}/{target_id}`),
//! and the validated [`OverrideMasks`] both take.
//!
//! Both write the one `channel_overrides` table the [`Authorizer`] reads, so
//! an override applies from the next request on, on every backend (the
//! reference server's legacy route did not; PROTOCOL.md §7.2). An override can
//! hide a channel, so each change revokes access before the call returns.
//!
//! [`Authorizer`]: crate::domain::permissions::Authorizer

use filament_ids::{ChannelId, GuildId, UserId};
use filament_proto::v1::{self as pb, event};

use crate::clock::now_unix;
use crate::domain::access;
use crate::domain::audit;
use crate::domain::permissions::{Permission, Permissions};
use crate::error::{ApiError, ApiResult};
use crate::outbox::Pending;
use crate::publish;
use crate::state::AppState;
use crate::store::{BuiltinRole, MemberRole, OverrideRecord, OverrideTarget};

/// Validated allow and deny lists: known names, no permission in both.
#[derive(Debug)]
pub struct OverrideMasks {
    allow: Vec<Permission>,
    deny: Vec<Permission>,
}

impl OverrideMasks {
    pub fn new(allow: Vec<Permission>, deny: Vec<Permission>) -> ApiResult<Self> {
        if allow.iter().any(|p| deny.contains(p)) {
            return Err(ApiError::InvalidRequest);
        }
        Ok(Self { allow, deny })
    }

    fn record(
        &self,
        guild_id: GuildId,
        channel_id: ChannelId,
        target: OverrideTarget,
    ) -> OverrideRecord {
        OverrideRecord {
            guild_id,
            channel_id,
            target,
            allow: self.allow.iter().copied().collect::<Permissions>().bits(),
            deny: self.deny.iter().copied().collect::<Permissions>().bits(),
        }
    }

    fn fields(&self) -> pb::OverrideFields {
        pb::OverrideFields {
            allow: self.allow.iter().copied().map(Permission::proto).collect(),
            deny: self.deny.iter().copied().map(Permission::proto).collect(),
        }
    }
}

/// Sets the channel's override of the built-in role that stands for the
/// legacy role `legacy`, as `actor`: legacy owners (and the server owner)
/// only. `ApiError::NotFound` if the built-in role was deleted.
pub async fn set_legacy(
    state: &AppState,
    actor: UserId,
    guild_id: GuildId,
    channel_id: ChannelId,
    legacy: MemberRole,
    masks: OverrideMasks,
) -> ApiResult<()> {
    let access = state.authorizer().guild(guild_id, actor).await?;
    if !access.is_legacy_owner() {
        return Err(ApiError::Forbidden);
    }
    state
        .store()
        .channel(guild_id, channel_id)
        .await?
        .ok_or(ApiError::NotFound)?;
    let builtin = BuiltinRole::of_member_role(legacy);
    let target_role = state
        .store()
        .roles(guild_id)
        .await?
        .into_iter()
        .find(|role| role.builtin == Some(builtin))
        // The built-in `moderator` and `member` roles can be deleted.
        .ok_or(ApiError::NotFound)?;
    let guild = guild_id.to_string();
    let event = publish::for_guild(
        &guild,
        event::Payload::WorkspaceChannelRoleOverrideUpdate(
            pb::WorkspaceChannelRoleOverrideUpdate {
                guild_id: guild.clone(),
                channel_id: channel_id.to_string(),
                role: legacy_role(legacy).into(),
                updated_fields: Some(masks.fields()),
                updated_at_unix: now_unix(),
                actor_user_id: Some(actor.to_string()),
            },
        ),
    );
    publish::ensure_deliverable(&event)?;
    let record = masks.record(
        guild_id,
        channel_id,
        OverrideTarget::Role(target_role.role_id),
    );
    let updated = Pending::new(state.publisher(), event);
    let revocation = access::AccessRevocation::new(state, guild_id, &[], false);
    state
        .store()
        .upsert_override(record, vec![updated.row(), revocation.row()])
        .await?;
    updated.publish(state.publisher()).await;
    audit::record(state, guild_id, actor, None, "channel.override.update").await;
    revocation.publish(state).await;
    Ok(())
}

/// Sets the channel's override of any role of the guild or of one member,
/// as `actor`: channel-level `manage_channel_overrides`.
/// `ApiError::NotFound` if there is no such role or member.
pub async fn set_target(
    state: &AppState,
    actor: UserId,
    guild_id: GuildId,
    channel_id: ChannelId,
    target: OverrideTarget,
    masks: OverrideMasks,
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
    let (target_exists, target_kind, target_id) = match target {
        OverrideTarget::Role(role_id) => (
            state.store().role(guild_id, role_id).await?.is_some(),
            pb::OverrideTargetKind::Role,
            role_id.to_string(),
        ),
        OverrideTarget::Member(member) => (
            state.store().member(guild_id, member).await?.is_some(),
            pb::OverrideTargetKind::Member,
            member.to_string(),
        ),
    };
    if !target_exists {
        return Err(ApiError::NotFound);
    }
    let guild = guild_id.to_string();
    // The client accepts only legacy role names as a role `target_id`, so it
    // drops this event for a role target; it is still the record of the
    // change for other consumers.
    let event = publish::for_guild(
        &guild,
        event::Payload::WorkspaceChannelPermissionOverrideUpdate(
            pb::WorkspaceChannelPermissionOverrideUpdate {
                guild_id: guild.clone(),
                channel_id: channel_id.to_string(),
                target_kind: target_kind.into(),
                target_id,
                updated_fields: Some(masks.fields()),
                updated_at_unix: now_unix(),
                actor_user_id: Some(actor.to_string()),
            },
        ),
    );
    publish::ensure_deliverable(&event)?;
    let (audit_target, revoked) = match target {
        OverrideTarget::Member(member) => (Some(member), vec![member]),
        OverrideTarget::Role(_) => (None, Vec::new()),
    };
    let updated = Pending::new(state.publisher(), event);
    let revocation = access::AccessRevocation::new(state, guild_id, &revoked, false);
    state
        .store()
        .upsert_override(
            masks.record(guild_id, channel_id, target),
            vec![updated.row(), revocation.row()],
        )
        .await?;
    updated.publish(state.publisher()).await;
    audit::record(
        state,
        guild_id,
        actor,
        audit_target,
        "channel.permission_override.update",
    )
    .await;
    revocation.publish(state).await;
    Ok(())
}

fn legacy_role(role: MemberRole) -> pb::LegacyRole {
    match role {
        MemberRole::Owner => pb::LegacyRole::Owner,
        MemberRole::Moderator => pb::LegacyRole::Moderator,
        MemberRole::Member => pb::LegacyRole::Member,
    }
}
