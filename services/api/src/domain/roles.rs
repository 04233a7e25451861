//! Roles (PROTOCOL.md §2.8): the use cases behind `/guilds/{g}/roles…`
//! (list, create, update, delete, reorder, the default join role, and role
//! assignments), the validated values they take ([`RoleName`],
//! [`ColorHex`], [`NewRole`], [`RoleUpdate`], [`RoleOrder`]), the role
//! limits, the masks the built-in roles are seeded with, and the proto and
//! wire shapes of a role.
//!
//! Every change that can shrink what someone sees (a role's permissions, a
//! deleted role, an assignment, which may bring a role's deny overrides)
//! publishes its event and then revokes access before the call returns, so
//! gateways drop the subscriptions that are no longer allowed. Each
//! change's events, the revocation included, are stored with it
//! (docs/adr/0006-outbox.md).

use filament_ids::{GuildId, RoleId, UserId};
use filament_proto::v1::{self as pb, event};

use crate::clock::now_unix;
use crate::domain::access;
use crate::domain::audit;
use crate::domain::permissions::{GuildAccess, Permission, Permissions};
use crate::domain::{parse_id, storable_text};
use crate::error::{ApiError, ApiResult};
use crate::outbox::Pending;
use crate::publish;
use crate::state::AppState;
use crate::store::{
    AssignOutcome, BuiltinMasks, BuiltinRole, CreateRoleOutcome, RoleChanges, RoleRecord,
    UnassignOutcome,
};

/// Roles per guild, the seeded ones included.
pub const MAX_ROLES: u32 = 64;
/// Explicit role assignments per member.
pub const MAX_ASSIGNMENTS: u32 = 16;
/// The highest position a role can be created at: the store's column is a
/// 64-bit integer, but the reference server used 32 bits and clients may too.
const MAX_POSITION: i64 = i32::MAX as i64;

/// The permissions a new guild's built-in roles start with (PROTOCOL.md
/// §3.2), as the store seeds them.
pub fn builtin_masks() -> BuiltinMasks {
    BuiltinMasks {
        everyone: Permissions::EVERYONE.bits(),
        workspace_owner: Permissions::ALL.bits(),
        moderator: Permissions::MODERATOR.bits(),
        member: Permissions::MEMBER.bits(),
    }
}

/// A role name: trimmed, 1–32 bytes, no control characters, and not one of
/// the system roles' names in any case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleName(String);

impl TryFrom<String> for RoleName {
    type Error = ApiError;

    fn try_from(raw: String) -> Result<Self, Self::Error> {
        let name = raw.trim();
        let valid = (1..=32).contains(&name.len())
            && storable_text(name)
            && !name.chars().any(char::is_control)
            && !name.eq_ignore_ascii_case("@everyone")
            && !name.eq_ignore_ascii_case("workspace_owner");
        if valid {
            Ok(Self(name.to_owned()))
        } else {
            Err(ApiError::InvalidRequest)
        }
    }
}

/// A role color, `#RRGGBB`; stored and sent uppercase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColorHex(String);

impl TryFrom<String> for ColorHex {
    type Error = ApiError;

    fn try_from(raw: String) -> Result<Self, Self::Error> {
        let valid = raw.len() == 7
            && raw.starts_with('#')
            && raw.bytes().skip(1).all(|b| b.is_ascii_hexdigit());
        if valid {
            Ok(Self(raw.to_ascii_uppercase()))
        } else {
            Err(ApiError::InvalidRequest)
        }
    }
}

/// A validated new role: its position, if given, is 1 to 2^31-1.
#[derive(Debug)]
pub struct NewRole {
    name: RoleName,
    permissions: Vec<Permission>,
    position: Option<i64>,
    color_hex: Option<ColorHex>,
}

impl NewRole {
    pub fn new(
        name: RoleName,
        permissions: Vec<Permission>,
        position: Option<i64>,
        color_hex: Option<ColorHex>,
    ) -> ApiResult<Self> {
        if position.is_some_and(|p| !(1..=MAX_POSITION).contains(&p)) {
            return Err(ApiError::InvalidRequest);
        }
        Ok(Self {
            name,
            permissions,
            position,
            color_hex,
        })
    }
}

/// A validated role update, and the event fields it sends.
#[derive(Debug)]
pub struct RoleUpdate {
    changes: RoleChanges,
    fields: pb::RoleFields,
}

impl RoleUpdate {
    /// At least one field; `Some(None)` clears the color.
    pub fn new(
        name: Option<RoleName>,
        permissions: Option<Vec<Permission>>,
        color_hex: Option<Option<ColorHex>>,
    ) -> ApiResult<Self> {
        if name.is_none() && permissions.is_none() && color_hex.is_none() {
            return Err(ApiError::InvalidRequest);
        }
        Ok(Self {
            changes: RoleChanges {
                name: name.as_ref().map(|n| n.0.clone()),
                permissions: permissions
                    .as_ref()
                    .map(|list| list.iter().copied().collect::<Permissions>().bits()),
                color_hex: color_hex.as_ref().map(|c| c.as_ref().map(|c| c.0.clone())),
            },
            fields: pb::RoleFields {
                name: name.map(|n| n.0),
                permissions: permissions.map(|list| pb::PermissionList {
                    permissions: list.into_iter().map(Permission::proto).collect(),
                }),
                color_hex: color_hex.map(|color| pb::NullableString {
                    value: color.map(|c| c.0),
                }),
            },
        })
    }
}

/// A new order of roles, highest first: 1–64 distinct role ids.
#[derive(Debug)]
pub struct RoleOrder(Vec<RoleId>);

impl TryFrom<&[String]> for RoleOrder {
    type Error = ApiError;

    fn try_from(raw: &[String]) -> Result<Self, Self::Error> {
        if raw.is_empty() || raw.len() > MAX_ROLES as usize {
            return Err(ApiError::InvalidRequest);
        }
        let mut ids = Vec::with_capacity(raw.len());
        for id in raw {
            let id = parse_id(id)?;
            if ids.contains(&id) {
                return Err(ApiError::InvalidRequest);
            }
            ids.push(id);
        }
        Ok(Self(ids))
    }
}

/// A guild's roles and its default join role.
#[derive(Debug)]
pub struct RoleListing {
    pub roles: Vec<filament_wire::Role>,
    pub default_join_role: Option<RoleId>,
}

/// The guild's roles, for any member. A role whose stored mask carries
/// bits this build does not know is listed without them, and audited.
pub async fn list(state: &AppState, viewer: UserId, guild_id: GuildId) -> ApiResult<RoleListing> {
    state.authorizer().guild(guild_id, viewer).await?;
    let roles = state.store().roles(guild_id).await?;
    let default_join_role_id = state.store().default_join_role(guild_id).await?;
    if roles
        .iter()
        .any(|role| Permissions::unknown_bits(role.permissions) != 0)
    {
        audit::record(
            state,
            guild_id,
            viewer,
            None,
            "permissions.unknown_bits.masked",
        )
        .await;
    }
    Ok(RoleListing {
        roles: roles
            .iter()
            .map(|role| wire_role(&proto_role(role)))
            .collect::<ApiResult<_>>()?,
        default_join_role: default_join_role_id,
    })
}

/// Creates a role as `actor` (`manage_workspace_roles`, and above the new
/// role); by default just below the actor's highest role.
/// `ApiError::QuotaExceeded` if the guild has [`MAX_ROLES`].
pub async fn create(
    state: &AppState,
    actor: UserId,
    guild_id: GuildId,
    new: NewRole,
) -> ApiResult<filament_wire::Role> {
    let access = state.authorizer().guild(guild_id, actor).await?;
    access.require(Permission::ManageWorkspaceRoles)?;
    let position = new
        .position
        .unwrap_or_else(|| (access.highest_position - 1).max(1));
    if !access.outranks(position) {
        return Err(ApiError::Forbidden);
    }
    let record = RoleRecord {
        role_id: state.new_id(),
        guild_id,
        name: new.name.0,
        position,
        builtin: None,
        permissions: new
            .permissions
            .iter()
            .copied()
            .collect::<Permissions>()
            .bits(),
        color_hex: new.color_hex.map(|c| c.0),
        created_at_unix: now_unix(),
    };
    // Created roles list their permissions in request order.
    let role = pb::Role {
        permissions: new
            .permissions
            .iter()
            .copied()
            .map(Permission::proto)
            .collect(),
        ..proto_role(&record)
    };
    let body = wire_role(&role)?;
    let event = publish::for_guild(
        &guild_id.to_string(),
        event::Payload::WorkspaceRoleCreate(pb::WorkspaceRoleCreate {
            guild_id: guild_id.to_string(),
            role: Some(role),
            actor_user_id: Some(actor.to_string()),
        }),
    );
    publish::ensure_deliverable(&event)?;
    let created = Pending::new(state.publisher(), event);
    let outcome = state
        .store()
        .create_role(record, MAX_ROLES, vec![created.row()])
        .await?;
    match outcome {
        CreateRoleOutcome::Created => {}
        CreateRoleOutcome::QuotaExceeded => return Err(ApiError::QuotaExceeded),
    }
    created.publish(state.publisher()).await;
    audit::record(state, guild_id, actor, None, "role.create").await;
    Ok(body)
}

/// Updates a role the actor may manage, and answers it as it is now.
pub async fn update(
    state: &AppState,
    actor: UserId,
    guild_id: GuildId,
    role_id: RoleId,
    update: RoleUpdate,
) -> ApiResult<filament_wire::Role> {
    let access = state.authorizer().guild(guild_id, actor).await?;
    manageable_role(state, &access, role_id).await?;
    let fields = update.fields;
    let audits = [
        (fields.name.is_some(), "role.update"),
        (fields.permissions.is_some(), "role.permissions.update"),
        (fields.color_hex.is_some(), "role.color.update"),
    ];
    let shrinks = fields.permissions.is_some();
    let event = publish::for_guild(
        &guild_id.to_string(),
        event::Payload::WorkspaceRoleUpdate(pb::WorkspaceRoleUpdate {
            guild_id: guild_id.to_string(),
            role_id: role_id.to_string(),
            updated_fields: Some(fields),
            updated_at_unix: now_unix(),
            actor_user_id: Some(actor.to_string()),
        }),
    );
    publish::ensure_deliverable(&event)?;
    let updated = Pending::new(state.publisher(), event);
    // New permissions can take some away: gateways re-check everyone.
    let revocation = shrinks.then(|| access::AccessRevocation::new(state, guild_id, &[], false));
    let mut outbox = vec![updated.row()];
    outbox.extend(revocation.as_ref().map(access::AccessRevocation::row));
    let role = state
        .store()
        .update_role(guild_id, role_id, update.changes, outbox)
        .await?
        .ok_or(ApiError::NotFound)?;
    updated.publish(state.publisher()).await;
    for (_, action) in audits.into_iter().filter(|(sent, _)| *sent) {
        audit::record(state, guild_id, actor, None, action).await;
    }
    if let Some(revocation) = revocation {
        revocation.publish(state).await;
    }
    wire_role(&proto_role(&role))
}

/// Deletes a role the actor may manage; never a system role.
pub async fn delete(
    state: &AppState,
    actor: UserId,
    guild_id: GuildId,
    role_id: RoleId,
) -> ApiResult<()> {
    let access = state.authorizer().guild(guild_id, actor).await?;
    let role = manageable_role(state, &access, role_id).await?;
    if role.is_system() {
        return Err(ApiError::Forbidden);
    }
    let guild = guild_id.to_string();
    let event = publish::for_guild(
        &guild,
        event::Payload::WorkspaceRoleDelete(pb::WorkspaceRoleDelete {
            guild_id: guild.clone(),
            role_id: role_id.to_string(),
            deleted_at_unix: now_unix(),
            actor_user_id: Some(actor.to_string()),
        }),
    );
    let deleted = Pending::new(state.publisher(), event);
    let revocation = access::AccessRevocation::new(state, guild_id, &[], false);
    if state
        .store()
        .delete_role(guild_id, role_id, vec![deleted.row(), revocation.row()])
        .await?
        .is_none()
    {
        return Err(ApiError::NotFound);
    }
    deleted.publish(state.publisher()).await;
    audit::record(state, guild_id, actor, None, "role.delete").await;
    revocation.publish(state).await;
    Ok(())
}

/// Reorders roles the actor may manage, none of them a system role.
pub async fn reorder(
    state: &AppState,
    actor: UserId,
    guild_id: GuildId,
    order: RoleOrder,
) -> ApiResult<()> {
    let role_ids = order.0;
    let access = state.authorizer().guild(guild_id, actor).await?;
    access.require(Permission::ManageWorkspaceRoles)?;
    let roles = state.store().roles(guild_id).await?;
    for role_id in &role_ids {
        let role = roles
            .iter()
            .find(|role| role.role_id == *role_id)
            .ok_or(ApiError::InvalidRequest)?;
        if role.is_system() || !access.can_manage_role(role) {
            return Err(ApiError::Forbidden);
        }
    }
    let event = publish::for_guild(
        &guild_id.to_string(),
        event::Payload::WorkspaceRoleReorder(pb::WorkspaceRoleReorder {
            guild_id: guild_id.to_string(),
            role_ids: role_ids.iter().map(RoleId::to_string).collect(),
            updated_at_unix: now_unix(),
            actor_user_id: Some(actor.to_string()),
        }),
    );
    publish::ensure_deliverable(&event)?;
    let reordered = Pending::new(state.publisher(), event);
    if !state
        .store()
        .reorder_roles(guild_id, &role_ids, vec![reordered.row()])
        .await?
    {
        // A role was deleted between the check and the write.
        return Err(ApiError::InvalidRequest);
    }
    reordered.publish(state.publisher()).await;
    audit::record(state, guild_id, actor, None, "role.reorder").await;
    Ok(())
}

/// Sets the guild's default join role, or clears it (`None`).
pub async fn set_default(
    state: &AppState,
    actor: UserId,
    guild_id: GuildId,
    role_id: Option<RoleId>,
) -> ApiResult<()> {
    let access = state.authorizer().guild(guild_id, actor).await?;
    access.require(Permission::ManageWorkspaceRoles)?;
    if let Some(role_id) = role_id {
        let role = state
            .store()
            .role(guild_id, role_id)
            .await?
            .ok_or(ApiError::InvalidRequest)?;
        if role.is_system() || !access.can_manage_role(&role) {
            return Err(ApiError::Forbidden);
        }
    }
    if !state
        .store()
        .set_default_join_role(guild_id, role_id)
        .await?
    {
        return Err(ApiError::InvalidRequest);
    }
    audit::record(state, guild_id, actor, None, "role.default_join.update").await;
    Ok(())
}

/// Assigns the role to `target`; assigning it again changes nothing.
/// `ApiError::QuotaExceeded` if the member has [`MAX_ASSIGNMENTS`].
pub async fn assign(
    state: &AppState,
    actor: UserId,
    guild_id: GuildId,
    role_id: RoleId,
    target: UserId,
) -> ApiResult<()> {
    assignable_role(state, guild_id, role_id, actor).await?;
    let now = now_unix();
    let guild = guild_id.to_string();
    let event = publish::for_guild(
        &guild,
        event::Payload::WorkspaceRoleAssignmentAdd(pb::WorkspaceRoleAssignmentAdd {
            guild_id: guild.clone(),
            user_id: target.to_string(),
            role_id: role_id.to_string(),
            assigned_at_unix: now,
            actor_user_id: Some(actor.to_string()),
        }),
    );
    let assigned = Pending::new(state.publisher(), event);
    // A role can carry deny overrides, so even a new role can hide channels.
    let revocation = access::AccessRevocation::new(state, guild_id, &[target], false);
    let outbox = vec![assigned.row(), revocation.row()];
    let outcome = state
        .store()
        .assign_role(guild_id, target, role_id, now, MAX_ASSIGNMENTS, outbox)
        .await?;
    match outcome {
        AssignOutcome::Assigned { .. } => {}
        AssignOutcome::AlreadyAssigned => return Ok(()),
        AssignOutcome::NotMember | AssignOutcome::RoleNotFound => {
            return Err(ApiError::NotFound);
        }
        AssignOutcome::QuotaExceeded => return Err(ApiError::QuotaExceeded),
    }
    assigned.publish(state.publisher()).await;
    audit::record(state, guild_id, actor, Some(target), "role.assign").await;
    revocation.publish(state).await;
    Ok(())
}

/// Takes the role from `target`; a role not assigned changes nothing. The
/// last `workspace_owner` keeps theirs.
pub async fn unassign(
    state: &AppState,
    actor: UserId,
    guild_id: GuildId,
    role_id: RoleId,
    target: UserId,
) -> ApiResult<()> {
    let (access, _) = assignable_role(state, guild_id, role_id, actor).await?;
    require_outranks(state, &access, target).await?;
    let guild = guild_id.to_string();
    let event = publish::for_guild(
        &guild,
        event::Payload::WorkspaceRoleAssignmentRemove(pb::WorkspaceRoleAssignmentRemove {
            guild_id: guild.clone(),
            user_id: target.to_string(),
            role_id: role_id.to_string(),
            removed_at_unix: now_unix(),
            actor_user_id: Some(actor.to_string()),
        }),
    );
    let removed = Pending::new(state.publisher(), event);
    let revocation = access::AccessRevocation::new(state, guild_id, &[target], false);
    let outcome = state
        .store()
        .unassign_role(
            guild_id,
            target,
            role_id,
            vec![removed.row(), revocation.row()],
        )
        .await?;
    match outcome {
        UnassignOutcome::Removed { .. } => {}
        UnassignOutcome::NotAssigned => return Ok(()),
        UnassignOutcome::NotMember | UnassignOutcome::RoleNotFound => {
            return Err(ApiError::NotFound);
        }
        UnassignOutcome::LastWorkspaceOwner => return Err(ApiError::Forbidden),
    }
    removed.publish(state.publisher()).await;
    audit::record(state, guild_id, actor, Some(target), "role.unassign").await;
    revocation.publish(state).await;
    Ok(())
}

/// The role, if it exists (404) and the caller may manage roles at all and
/// this one in particular (403).
async fn manageable_role(
    state: &AppState,
    access: &GuildAccess,
    role_id: RoleId,
) -> ApiResult<RoleRecord> {
    access.require(Permission::ManageWorkspaceRoles)?;
    let role = state
        .store()
        .role(access.guild_id, role_id)
        .await?
        .ok_or(ApiError::NotFound)?;
    if access.can_manage_role(&role) {
        Ok(role)
    } else {
        Err(ApiError::Forbidden)
    }
}

/// Taking a role away is refused (403, as kick and ban refuse) unless the
/// caller outranks the member ([`GuildAccess::outranks_member`]); dropping
/// one's own role takes nothing from anyone above. A target that is not a
/// member is left to the store, which answers 404.
pub(crate) async fn require_outranks(
    state: &AppState,
    actor: &GuildAccess,
    target: UserId,
) -> ApiResult<()> {
    if target == actor.user_id {
        return Ok(());
    }
    match state.authorizer().guild(actor.guild_id, target).await {
        Ok(target) if actor.outranks_member(&target) => Ok(()),
        Ok(_) => Err(ApiError::Forbidden),
        Err(ApiError::Forbidden) => Ok(()),
        Err(err) => Err(err),
    }
}

/// The checks of assign and unassign that do not depend on the target:
/// `manage_member_roles`, the role exists (404), is not @everyone (400), is
/// `workspace_owner` only for the server owner, and is below the caller.
/// Returns the caller's access with the role.
async fn assignable_role(
    state: &AppState,
    guild_id: GuildId,
    role_id: RoleId,
    actor: UserId,
) -> ApiResult<(GuildAccess, RoleRecord)> {
    let access = state.authorizer().guild(guild_id, actor).await?;
    access.require(Permission::ManageMemberRoles)?;
    let role = state
        .store()
        .role(guild_id, role_id)
        .await?
        .ok_or(ApiError::NotFound)?;
    match role.builtin {
        Some(BuiltinRole::Everyone) => Err(ApiError::InvalidRequest),
        Some(BuiltinRole::WorkspaceOwner) if !access.server_owner => Err(ApiError::Forbidden),
        _ if !access.outranks(role.position) => Err(ApiError::Forbidden),
        _ => Ok((access, role)),
    }
}

/// The proto Role of a stored role; permissions in bit order.
pub fn proto_role(role: &RoleRecord) -> pb::Role {
    pb::Role {
        role_id: role.role_id.to_string(),
        name: role.name.clone(),
        position: role.position,
        is_system: role.is_system(),
        permissions: Permissions::from_stored(role.permissions).to_proto(),
        color_hex: role.color_hex.clone(),
    }
}

/// The REST body of a role: the same shape the wire crate defines.
fn wire_role(role: &pb::Role) -> ApiResult<filament_wire::Role> {
    filament_wire::Role::try_from(role)
        .map_err(|err| ApiError::Internal(anyhow::anyhow!("role shape: {err}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_names() {
        assert_eq!(
            RoleName::try_from("  Mods  ".to_owned()).ok(),
            Some(RoleName("Mods".to_owned()))
        );
        for bad in ["", "   ", "a\u{7}b", "@EVERYONE", "Workspace_Owner"] {
            assert!(RoleName::try_from(bad.to_owned()).is_err(), "{bad:?}");
        }
        assert!(RoleName::try_from("x".repeat(32)).is_ok());
        assert!(RoleName::try_from("x".repeat(33)).is_err());
        // Bytes, not characters.
        assert!(RoleName::try_from("é".repeat(17)).is_err());
    }

    #[test]
    fn colors_are_uppercased() {
        assert_eq!(
            ColorHex::try_from("#a1b2c3".to_owned()).ok(),
            Some(ColorHex("#A1B2C3".to_owned()))
        );
        for bad in ["A1B2C3", "#A1B2C", "#A1B2C3D", "#G1B2C3", "#A1B2C\u{e9}"] {
            assert!(ColorHex::try_from(bad.to_owned()).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_store_tests_seed_the_masks_the_domain_does() {
        assert_eq!(builtin_masks(), BuiltinMasks::FOR_TESTS);
    }

    proptest::proptest! {
        #[test]
        fn a_role_name_with_a_nul_is_refused(
            raw in crate::domain::hostile::text(),
            nul in crate::domain::hostile::plain_with_nul(),
        ) {
            proptest::prop_assert!(RoleName::try_from(nul).is_err());
            if RoleName::try_from(raw.clone()).is_ok() {
                proptest::prop_assert!(crate::domain::storable_text(&raw), "{raw:?}");
            }
        }
    }
}
