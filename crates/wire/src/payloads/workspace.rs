//! Guild-scoped payloads: channels, the workspace itself, members, roles,
//! channel overrides and IP-ban summaries.
//!
//! `actor_user_id` is optional everywhere here and omitted when absent;
//! `updated_fields` members are omitted when they did not change.

use filament_proto::v1 as proto;
use schemars::JsonSchema;
use serde::Serialize;

use crate::convert::{ConvertError, enum_list, enum_value, required};
use crate::enums::{
    IpBanAction, LegacyRole, MemberRemoveReason, OverrideTargetKind, Permission, Visibility,
};
use crate::shapes::Channel;

/// `channel_create`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
pub struct ChannelCreate {
    pub guild_id: String,
    pub channel: Channel,
}

impl TryFrom<&proto::ChannelCreate> for ChannelCreate {
    type Error = ConvertError;

    fn try_from(create: &proto::ChannelCreate) -> Result<Self, Self::Error> {
        let channel = required("ChannelCreate.channel", create.channel.as_ref())?;
        Ok(Self {
            guild_id: create.guild_id.clone(),
            channel: Channel::try_from(channel)?,
        })
    }
}

/// `channel_update` (a rename; an addition, PROTOCOL.md §7.5).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
pub struct ChannelUpdate {
    pub guild_id: String,
    pub channel_id: String,
    pub updated_fields: ChannelFields,
    pub updated_at_unix: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(with = "String")]
    pub actor_user_id: Option<String>,
}

/// What changed in `channel_update`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
pub struct ChannelFields {
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(with = "String")]
    pub name: Option<String>,
}

impl TryFrom<&proto::ChannelUpdate> for ChannelUpdate {
    type Error = ConvertError;

    fn try_from(update: &proto::ChannelUpdate) -> Result<Self, Self::Error> {
        let fields = required(
            "ChannelUpdate.updated_fields",
            update.updated_fields.as_ref(),
        )?;
        Ok(Self {
            guild_id: update.guild_id.clone(),
            channel_id: update.channel_id.clone(),
            updated_fields: ChannelFields {
                name: fields.name.clone(),
            },
            updated_at_unix: update.updated_at_unix,
            actor_user_id: update.actor_user_id.clone(),
        })
    }
}

/// `channel_delete` (an addition, PROTOCOL.md §7.5).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
pub struct ChannelDelete {
    pub guild_id: String,
    pub channel_id: String,
    pub deleted_at_unix: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(with = "String")]
    pub actor_user_id: Option<String>,
}

impl TryFrom<&proto::ChannelDelete> for ChannelDelete {
    type Error = ConvertError;

    fn try_from(delete: &proto::ChannelDelete) -> Result<Self, Self::Error> {
        Ok(Self {
            guild_id: delete.guild_id.clone(),
            channel_id: delete.channel_id.clone(),
            deleted_at_unix: delete.deleted_at_unix,
            actor_user_id: delete.actor_user_id.clone(),
        })
    }
}

/// `workspace_update`: the guild's name or visibility changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
pub struct WorkspaceUpdate {
    pub guild_id: String,
    pub updated_fields: WorkspaceFields,
    pub updated_at_unix: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(with = "String")]
    pub actor_user_id: Option<String>,
}

/// What changed in `workspace_update`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
pub struct WorkspaceFields {
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(with = "String")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Visibility")]
    pub visibility: Option<Visibility>,
}

impl TryFrom<&proto::WorkspaceUpdate> for WorkspaceUpdate {
    type Error = ConvertError;

    fn try_from(update: &proto::WorkspaceUpdate) -> Result<Self, Self::Error> {
        let fields = required(
            "WorkspaceUpdate.updated_fields",
            update.updated_fields.as_ref(),
        )?;
        let visibility = fields
            .visibility
            .map(|raw| enum_value("WorkspaceFields.visibility", raw))
            .transpose()?;
        Ok(Self {
            guild_id: update.guild_id.clone(),
            updated_fields: WorkspaceFields {
                name: fields.name.clone(),
                visibility,
            },
            updated_at_unix: update.updated_at_unix,
            actor_user_id: update.actor_user_id.clone(),
        })
    }
}

/// `workspace_member_add`: a join or an added member.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
pub struct WorkspaceMemberAdd {
    pub guild_id: String,
    pub user_id: String,
    pub role: LegacyRole,
    pub joined_at_unix: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(with = "String")]
    pub actor_user_id: Option<String>,
}

impl TryFrom<&proto::WorkspaceMemberAdd> for WorkspaceMemberAdd {
    type Error = ConvertError;

    fn try_from(add: &proto::WorkspaceMemberAdd) -> Result<Self, Self::Error> {
        Ok(Self {
            guild_id: add.guild_id.clone(),
            user_id: add.user_id.clone(),
            role: enum_value("WorkspaceMemberAdd.role", add.role)?,
            joined_at_unix: add.joined_at_unix,
            actor_user_id: add.actor_user_id.clone(),
        })
    }
}

/// `workspace_member_update`: a member's legacy role changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
pub struct WorkspaceMemberUpdate {
    pub guild_id: String,
    pub user_id: String,
    pub updated_fields: MemberFields,
    pub updated_at_unix: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(with = "String")]
    pub actor_user_id: Option<String>,
}

/// What changed in `workspace_member_update`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
pub struct MemberFields {
    pub role: LegacyRole,
}

impl TryFrom<&proto::WorkspaceMemberUpdate> for WorkspaceMemberUpdate {
    type Error = ConvertError;

    fn try_from(update: &proto::WorkspaceMemberUpdate) -> Result<Self, Self::Error> {
        let fields = required(
            "WorkspaceMemberUpdate.updated_fields",
            update.updated_fields.as_ref(),
        )?;
        Ok(Self {
            guild_id: update.guild_id.clone(),
            user_id: update.user_id.clone(),
            updated_fields: MemberFields {
                role: enum_value("MemberFields.role", fields.role)?,
            },
            updated_at_unix: update.updated_at_unix,
            actor_user_id: update.actor_user_id.clone(),
        })
    }
}

/// `workspace_member_remove`: a kick, a ban or a leave.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
pub struct WorkspaceMemberRemove {
    pub guild_id: String,
    pub user_id: String,
    pub reason: MemberRemoveReason,
    pub removed_at_unix: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(with = "String")]
    pub actor_user_id: Option<String>,
}

impl TryFrom<&proto::WorkspaceMemberRemove> for WorkspaceMemberRemove {
    type Error = ConvertError;

    fn try_from(remove: &proto::WorkspaceMemberRemove) -> Result<Self, Self::Error> {
        Ok(Self {
            guild_id: remove.guild_id.clone(),
            user_id: remove.user_id.clone(),
            reason: enum_value("WorkspaceMemberRemove.reason", remove.reason)?,
            removed_at_unix: remove.removed_at_unix,
            actor_user_id: remove.actor_user_id.clone(),
        })
    }
}

/// `workspace_member_ban`: sent before the matching `workspace_member_remove`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
pub struct WorkspaceMemberBan {
    pub guild_id: String,
    pub user_id: String,
    pub banned_at_unix: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(with = "String")]
    pub actor_user_id: Option<String>,
}

impl TryFrom<&proto::WorkspaceMemberBan> for WorkspaceMemberBan {
    type Error = ConvertError;

    fn try_from(ban: &proto::WorkspaceMemberBan) -> Result<Self, Self::Error> {
        Ok(Self {
            guild_id: ban.guild_id.clone(),
            user_id: ban.user_id.clone(),
            banned_at_unix: ban.banned_at_unix,
            actor_user_id: ban.actor_user_id.clone(),
        })
    }
}

/// `workspace_role_create`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
pub struct WorkspaceRoleCreate {
    pub guild_id: String,
    pub role: CreatedRole,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(with = "String")]
    pub actor_user_id: Option<String>,
}

/// The role inside `workspace_role_create`. Unlike the REST
/// [`crate::Role`], a role without a color omits `color_hex` rather than
/// sending `null`: that is the shape the client decodes for this event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
pub struct CreatedRole {
    pub role_id: String,
    pub name: String,
    pub position: i64,
    pub is_system: bool,
    pub permissions: Vec<Permission>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(with = "String")]
    pub color_hex: Option<String>,
}

impl TryFrom<&proto::WorkspaceRoleCreate> for WorkspaceRoleCreate {
    type Error = ConvertError;

    fn try_from(create: &proto::WorkspaceRoleCreate) -> Result<Self, Self::Error> {
        let role = required("WorkspaceRoleCreate.role", create.role.as_ref())?;
        Ok(Self {
            guild_id: create.guild_id.clone(),
            role: CreatedRole {
                role_id: role.role_id.clone(),
                name: role.name.clone(),
                position: role.position,
                is_system: role.is_system,
                permissions: enum_list("Role.permissions", &role.permissions)?,
                color_hex: role.color_hex.clone(),
            },
            actor_user_id: create.actor_user_id.clone(),
        })
    }
}

/// `workspace_role_update`: the fields the PATCH sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
pub struct WorkspaceRoleUpdate {
    pub guild_id: String,
    pub role_id: String,
    pub updated_fields: RoleFields,
    pub updated_at_unix: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(with = "String")]
    pub actor_user_id: Option<String>,
}

/// What changed in `workspace_role_update`. `color_hex` has three states:
/// absent (unchanged), `null` (cleared) or a color.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
pub struct RoleFields {
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(with = "String")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Vec<Permission>")]
    pub permissions: Option<Vec<Permission>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>")]
    pub color_hex: Option<Option<String>>,
}

impl TryFrom<&proto::WorkspaceRoleUpdate> for WorkspaceRoleUpdate {
    type Error = ConvertError;

    fn try_from(update: &proto::WorkspaceRoleUpdate) -> Result<Self, Self::Error> {
        let fields = required(
            "WorkspaceRoleUpdate.updated_fields",
            update.updated_fields.as_ref(),
        )?;
        let permissions = fields
            .permissions
            .as_ref()
            .map(|list| enum_list("RoleFields.permissions", &list.permissions))
            .transpose()?;
        Ok(Self {
            guild_id: update.guild_id.clone(),
            role_id: update.role_id.clone(),
            updated_fields: RoleFields {
                name: fields.name.clone(),
                permissions,
                color_hex: fields.color_hex.as_ref().map(|color| color.value.clone()),
            },
            updated_at_unix: update.updated_at_unix,
            actor_user_id: update.actor_user_id.clone(),
        })
    }
}

/// `workspace_role_delete`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
pub struct WorkspaceRoleDelete {
    pub guild_id: String,
    pub role_id: String,
    pub deleted_at_unix: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(with = "String")]
    pub actor_user_id: Option<String>,
}

impl TryFrom<&proto::WorkspaceRoleDelete> for WorkspaceRoleDelete {
    type Error = ConvertError;

    fn try_from(delete: &proto::WorkspaceRoleDelete) -> Result<Self, Self::Error> {
        Ok(Self {
            guild_id: delete.guild_id.clone(),
            role_id: delete.role_id.clone(),
            deleted_at_unix: delete.deleted_at_unix,
            actor_user_id: delete.actor_user_id.clone(),
        })
    }
}

/// `workspace_role_reorder`: the new order, highest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
pub struct WorkspaceRoleReorder {
    pub guild_id: String,
    pub role_ids: Vec<String>,
    pub updated_at_unix: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(with = "String")]
    pub actor_user_id: Option<String>,
}

impl TryFrom<&proto::WorkspaceRoleReorder> for WorkspaceRoleReorder {
    type Error = ConvertError;

    fn try_from(reorder: &proto::WorkspaceRoleReorder) -> Result<Self, Self::Error> {
        Ok(Self {
            guild_id: reorder.guild_id.clone(),
            role_ids: reorder.role_ids.clone(),
            updated_at_unix: reorder.updated_at_unix,
            actor_user_id: reorder.actor_user_id.clone(),
        })
    }
}

/// `workspace_role_assignment_add`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
pub struct WorkspaceRoleAssignmentAdd {
    pub guild_id: String,
    pub user_id: String,
    pub role_id: String,
    pub assigned_at_unix: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(with = "String")]
    pub actor_user_id: Option<String>,
}

impl TryFrom<&proto::WorkspaceRoleAssignmentAdd> for WorkspaceRoleAssignmentAdd {
    type Error = ConvertError;

    fn try_from(add: &proto::WorkspaceRoleAssignmentAdd) -> Result<Self, Self::Error> {
        Ok(Self {
            guild_id: add.guild_id.clone(),
            user_id: add.user_id.clone(),
            role_id: add.role_id.clone(),
            assigned_at_unix: add.assigned_at_unix,
            actor_user_id: add.actor_user_id.clone(),
        })
    }
}

/// `workspace_role_assignment_remove`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
pub struct WorkspaceRoleAssignmentRemove {
    pub guild_id: String,
    pub user_id: String,
    pub role_id: String,
    pub removed_at_unix: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(with = "String")]
    pub actor_user_id: Option<String>,
}

impl TryFrom<&proto::WorkspaceRoleAssignmentRemove> for WorkspaceRoleAssignmentRemove {
    type Error = ConvertError;

    fn try_from(remove: &proto::WorkspaceRoleAssignmentRemove) -> Result<Self, Self::Error> {
        Ok(Self {
            guild_id: remove.guild_id.clone(),
            user_id: remove.user_id.clone(),
            role_id: remove.role_id.clone(),
            removed_at_unix: remove.removed_at_unix,
            actor_user_id: remove.actor_user_id.clone(),
        })
    }
}

/// The allow and deny lists of a channel override; both always sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
pub struct OverrideFields {
    pub allow: Vec<Permission>,
    pub deny: Vec<Permission>,
}

impl TryFrom<&proto::OverrideFields> for OverrideFields {
    type Error = ConvertError;

    fn try_from(fields: &proto::OverrideFields) -> Result<Self, Self::Error> {
        Ok(Self {
            allow: enum_list("OverrideFields.allow", &fields.allow)?,
            deny: enum_list("OverrideFields.deny", &fields.deny)?,
        })
    }
}

/// `workspace_channel_role_override_update`: the legacy per-role override.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
pub struct WorkspaceChannelRoleOverrideUpdate {
    pub guild_id: String,
    pub channel_id: String,
    pub role: LegacyRole,
    pub updated_fields: OverrideFields,
    pub updated_at_unix: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(with = "String")]
    pub actor_user_id: Option<String>,
}

impl TryFrom<&proto::WorkspaceChannelRoleOverrideUpdate> for WorkspaceChannelRoleOverrideUpdate {
    type Error = ConvertError;

    fn try_from(update: &proto::WorkspaceChannelRoleOverrideUpdate) -> Result<Self, Self::Error> {
        let fields = required(
            "WorkspaceChannelRoleOverrideUpdate.updated_fields",
            update.updated_fields.as_ref(),
        )?;
        Ok(Self {
            guild_id: update.guild_id.clone(),
            channel_id: update.channel_id.clone(),
            role: enum_value("WorkspaceChannelRoleOverrideUpdate.role", update.role)?,
            updated_fields: OverrideFields::try_from(fields)?,
            updated_at_unix: update.updated_at_unix,
            actor_user_id: update.actor_user_id.clone(),
        })
    }
}

/// `workspace_channel_permission_override_update`: an override on a role or
/// a member.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
pub struct WorkspaceChannelPermissionOverrideUpdate {
    pub guild_id: String,
    pub channel_id: String,
    pub target_kind: OverrideTargetKind,
    pub target_id: String,
    pub updated_fields: OverrideFields,
    pub updated_at_unix: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(with = "String")]
    pub actor_user_id: Option<String>,
}

impl TryFrom<&proto::WorkspaceChannelPermissionOverrideUpdate>
    for WorkspaceChannelPermissionOverrideUpdate
{
    type Error = ConvertError;

    fn try_from(
        update: &proto::WorkspaceChannelPermissionOverrideUpdate,
    ) -> Result<Self, Self::Error> {
        let fields = required(
            "WorkspaceChannelPermissionOverrideUpdate.updated_fields",
            update.updated_fields.as_ref(),
        )?;
        Ok(Self {
            guild_id: update.guild_id.clone(),
            channel_id: update.channel_id.clone(),
            target_kind: enum_value(
                "WorkspaceChannelPermissionOverrideUpdate.target_kind",
                update.target_kind,
            )?,
            target_id: update.target_id.clone(),
            updated_fields: OverrideFields::try_from(fields)?,
            updated_at_unix: update.updated_at_unix,
            actor_user_id: update.actor_user_id.clone(),
        })
    }
}

/// `workspace_ip_ban_sync`: how many bans changed, never an address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
pub struct WorkspaceIpBanSync {
    pub guild_id: String,
    pub summary: IpBanSummary,
    pub updated_at_unix: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(with = "String")]
    pub actor_user_id: Option<String>,
}

/// The summary of `workspace_ip_ban_sync`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
pub struct IpBanSummary {
    pub action: IpBanAction,
    pub changed_count: i64,
}

impl TryFrom<&proto::WorkspaceIpBanSync> for WorkspaceIpBanSync {
    type Error = ConvertError;

    fn try_from(sync: &proto::WorkspaceIpBanSync) -> Result<Self, Self::Error> {
        let summary = required("WorkspaceIpBanSync.summary", sync.summary.as_ref())?;
        Ok(Self {
            guild_id: sync.guild_id.clone(),
            summary: IpBanSummary {
                action: enum_value("IpBanSummary.action", summary.action)?,
                changed_count: summary.changed_count,
            },
            updated_at_unix: sync.updated_at_unix,
            actor_user_id: sync.actor_user_id.clone(),
        })
    }
}
