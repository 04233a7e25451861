//! Channel permission overrides (PROTOCOL.md §2.9): the legacy
//! `/overrides/{role}` route the web client uses, and the
//! `/permission-overrides/{target_kind}/{target_id}` route.
//!
//! Both write the one `channel_overrides` table the [`Authorizer`] reads, so
//! an override applies from the next request on, on every backend (the
//! reference server's legacy route did not; PROTOCOL.md §7.2). An override can
//! hide a channel, so each change revokes access before the call returns.
//!
//! [`Authorizer`]: crate::domain::permissions::Authorizer

use axum::Json;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use filament_proto::v1::{self as pb, event};
use serde::Deserialize;
use ulid::Ulid;
use utoipa::ToSchema;
use utoipa_axum::routes;

use crate::clock::now_unix;
use crate::domain::parse_id;
use crate::domain::permissions::{Permission, Permissions};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::http::extract::{AuthUser, JsonBody};
use crate::http::openapi::{ApiRouter, LegacyOverridePath, TargetOverridePath};
use crate::http::roles::{ACK, Ack};
use crate::outbox::Pending;
use crate::publish;
use crate::state::AppState;
use crate::store::{BuiltinRole, MemberRole, OverrideRecord, OverrideTarget};

/// The permissions an override allows and denies; none in both.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OverrideDto {
    #[schema(value_type = Vec<filament_wire::Permission>)]
    allow: Vec<String>,
    #[schema(value_type = Vec<filament_wire::Permission>)]
    deny: Vec<String>,
}

/// Validated allow and deny lists: known names, no permission in both.
struct Masks {
    allow: Vec<Permission>,
    deny: Vec<Permission>,
}

impl TryFrom<OverrideDto> for Masks {
    type Error = ApiError;

    fn try_from(dto: OverrideDto) -> Result<Self, Self::Error> {
        let allow = Permission::parse_list(&dto.allow)?;
        let deny = Permission::parse_list(&dto.deny)?;
        if allow.iter().any(|p| deny.contains(p)) {
            return Err(ApiError::InvalidRequest);
        }
        Ok(Self { allow, deny })
    }
}

impl Masks {
    fn record(&self, guild_id: Ulid, channel_id: Ulid, target: OverrideTarget) -> OverrideRecord {
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

/// `POST /guilds/{g}/channels/{c}/overrides/{role}`: `role` is
/// `owner`/`moderator`/`member`, stored on the matching built-in role.
/// Legacy owners (and the server owner) only.
#[utoipa::path(
    post,
    path = "/guilds/{guild_id}/channels/{channel_id}/overrides/{role}",
    tag = "channels",
    security(("bearer" = [])),
    params(LegacyOverridePath),
    request_body = OverrideDto,
    responses(
        (status = 200, description = "The override is set.", body = Ack),
        (status = 403, description = "Not a legacy owner (`forbidden`).", body = ErrorBody),
        (status = 404, description = "No such channel, or the built-in role was deleted (`not_found`).", body = ErrorBody),
    ),
)]
pub async fn set_legacy(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    path: Result<Path<(String, String, String)>, PathRejection>,
    JsonBody(dto): JsonBody<OverrideDto>,
) -> ApiResult<Json<Ack>> {
    let Path((guild, channel, role)) = path.map_err(|_| ApiError::InvalidRequest)?;
    let (guild_id, channel_id) = (parse_id(&guild)?, parse_id(&channel)?);
    let legacy = MemberRole::parse(&role).ok_or(ApiError::InvalidRequest)?;
    let masks = Masks::try_from(dto)?;
    let access = state.authorizer().guild(guild_id, user.user_id).await?;
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
    let event = publish::for_guild(
        &guild,
        event::Payload::WorkspaceChannelRoleOverrideUpdate(
            pb::WorkspaceChannelRoleOverrideUpdate {
                guild_id: guild.clone(),
                channel_id: channel.clone(),
                role: legacy_role(legacy).into(),
                updated_fields: Some(masks.fields()),
                updated_at_unix: now_unix(),
                actor_user_id: Some(user.user_id.to_string()),
            },
        ),
    );
    publish::ensure_deliverable(&event)?;
    let record = masks.record(
        guild_id,
        channel_id,
        OverrideTarget::Role(target_role.role_id),
    );
    let updated = Pending::new(&state, event);
    let revocation = publish::AccessRevocation::new(&state, &guild, Vec::new(), false);
    state
        .store()
        .upsert_override(record, vec![updated.row(), revocation.row()])
        .await?;
    updated.publish(&state).await;
    publish::audit(
        &state,
        guild_id,
        user.user_id,
        None,
        "channel.override.update",
    )
    .await;
    revocation.publish(&state).await;
    Ok(Json(ACK))
}

/// `POST /guilds/{g}/channels/{c}/permission-overrides/{target_kind}/{target_id}`:
/// an override on any role of the guild or on one member; channel-level
/// `manage_channel_overrides`.
#[utoipa::path(
    post,
    path = "/guilds/{guild_id}/channels/{channel_id}/permission-overrides/{target_kind}/{target_id}",
    tag = "channels",
    security(("bearer" = [])),
    params(TargetOverridePath),
    request_body = OverrideDto,
    responses(
        (status = 200, description = "The override is set.", body = Ack),
        (status = 403, description = "Cannot view the channel, or lacks `manage_channel_overrides` (`forbidden`).", body = ErrorBody),
        (status = 404, description = "No such channel, role or member (`not_found`).", body = ErrorBody),
    ),
)]
pub async fn set_target(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    path: Result<Path<(String, String, String, String)>, PathRejection>,
    JsonBody(dto): JsonBody<OverrideDto>,
) -> ApiResult<Json<Ack>> {
    let Path((guild, channel, kind, raw_target)) = path.map_err(|_| ApiError::InvalidRequest)?;
    let (guild_id, channel_id) = (parse_id(&guild)?, parse_id(&channel)?);
    let target_id = parse_id(&raw_target)?;
    let (target, target_kind) = match kind.as_str() {
        "role" => (
            OverrideTarget::Role(target_id),
            pb::OverrideTargetKind::Role,
        ),
        "member" => (
            OverrideTarget::Member(target_id),
            pb::OverrideTargetKind::Member,
        ),
        _ => return Err(ApiError::InvalidRequest),
    };
    let masks = Masks::try_from(dto)?;
    let (access, _) = state
        .authorizer()
        .channel(guild_id, channel_id, user.user_id)
        .await?;
    access.require(Permission::ManageChannelOverrides)?;
    let target_exists = match target {
        OverrideTarget::Role(role_id) => state.store().role(guild_id, role_id).await?.is_some(),
        OverrideTarget::Member(member) => state.store().member(guild_id, member).await?.is_some(),
    };
    if !target_exists {
        return Err(ApiError::NotFound);
    }
    // The client accepts only legacy role names as a role `target_id`, so it
    // drops this event for a role target; it is still the record of the
    // change for other consumers.
    let event = publish::for_guild(
        &guild,
        event::Payload::WorkspaceChannelPermissionOverrideUpdate(
            pb::WorkspaceChannelPermissionOverrideUpdate {
                guild_id: guild.clone(),
                channel_id: channel.clone(),
                target_kind: target_kind.into(),
                target_id: raw_target.clone(),
                updated_fields: Some(masks.fields()),
                updated_at_unix: now_unix(),
                actor_user_id: Some(user.user_id.to_string()),
            },
        ),
    );
    publish::ensure_deliverable(&event)?;
    let (audit_target, revoked) = match target {
        OverrideTarget::Member(member) => (Some(member), vec![member.to_string()]),
        OverrideTarget::Role(_) => (None, Vec::new()),
    };
    let updated = Pending::new(&state, event);
    let revocation = publish::AccessRevocation::new(&state, &guild, revoked, false);
    state
        .store()
        .upsert_override(
            masks.record(guild_id, channel_id, target),
            vec![updated.row(), revocation.row()],
        )
        .await?;
    updated.publish(&state).await;
    publish::audit(
        &state,
        guild_id,
        user.user_id,
        audit_target,
        "channel.permission_override.update",
    )
    .await;
    revocation.publish(&state).await;
    Ok(Json(ACK))
}

fn legacy_role(role: MemberRole) -> pb::LegacyRole {
    match role {
        MemberRole::Owner => pb::LegacyRole::Owner,
        MemberRole::Moderator => pb::LegacyRole::Moderator,
        MemberRole::Member => pb::LegacyRole::Member,
    }
}

pub fn routes() -> ApiRouter {
    ApiRouter::new()
        .routes(routes!(set_legacy))
        .routes(routes!(set_target))
}
