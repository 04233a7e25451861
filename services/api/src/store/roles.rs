//! Roles, role assignments, the default join role and channel permission
//! overrides (PROTOCOL.md §2.8, §2.9, §3): the facts the permission model evaluates.
//! [`RoleStore`] also declares the guild-settings and channel-lifecycle
//! writes, because they change what members see; their bodies live with
//! their records in `guilds.rs` and `channels.rs`.
//!
//! Writes that check a cap or an invariant (64 roles, 16 assignments, the
//! last workspace owner) first lock the guild's row, so two concurrent
//! requests cannot both pass the check. That lock is each transaction's
//! first statement and a write: SQLite then takes its write lock up front
//! rather than failing to upgrade a read snapshot that went stale.

use async_trait::async_trait;
use filament_ids::{ChannelId, GuildId, RoleId, UserId};
use sqlx::{ColumnIndex, Database, Decode, Encode, Executor, IntoArguments, Row, Type};
use ulid::Ulid;

use super::members::lock_guild;
use super::sql::{SqlStore, decode_enum, decode_id, parse_stored_id};
use super::{
    AccessFacts, Change, ChannelRecord, GuildRecord, MemberRole, OutboxEvent, OutboxFor,
    StoreResult, Visibility,
};

/// Where the seeded roles sit (PROTOCOL.md §3.2).
pub const EVERYONE_POSITION: i64 = 0;
pub const WORKSPACE_OWNER_POSITION: i64 = 10_000;
pub const MODERATOR_POSITION: i64 = 100;
pub const MEMBER_POSITION: i64 = 1;

/// The permission masks a new guild's four built-in roles are seeded with
/// (PROTOCOL.md §3.2). The permission model is the domain's, so the caller
/// of [`CoreStore::create_guild`](super::CoreStore::create_guild) passes
/// them in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BuiltinMasks {
    pub everyone: u64,
    pub workspace_owner: u64,
    pub moderator: u64,
    pub member: u64,
}

#[cfg(test)]
impl BuiltinMasks {
    /// The masks the domain seeds, as literals, for the store's tests,
    /// which may not import the domain; a test in `domain::roles` checks
    /// that the two agree.
    pub(crate) const FOR_TESTS: Self = Self {
        everyone: 2304,
        workspace_owner: 4095,
        moderator: 4090,
        member: 2304,
    };
}

/// The four roles seeded in every guild. `@everyone` and `workspace_owner`
/// are the system roles; `moderator` and `member` are ordinary roles that
/// the legacy membership roles map to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BuiltinRole {
    Everyone,
    WorkspaceOwner,
    Moderator,
    Member,
}

impl BuiltinRole {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Everyone => "everyone",
            Self::WorkspaceOwner => "workspace_owner",
            Self::Moderator => "moderator",
            Self::Member => "member",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "everyone" => Some(Self::Everyone),
            "workspace_owner" => Some(Self::WorkspaceOwner),
            "moderator" => Some(Self::Moderator),
            "member" => Some(Self::Member),
            _ => None,
        }
    }

    pub fn is_system(self) -> bool {
        matches!(self, Self::Everyone | Self::WorkspaceOwner)
    }

    /// The role a legacy membership role implies (PROTOCOL.md §3.4 step 3).
    pub fn of_member_role(role: MemberRole) -> Self {
        match role {
            MemberRole::Owner => Self::WorkspaceOwner,
            MemberRole::Moderator => Self::Moderator,
            MemberRole::Member => Self::Member,
        }
    }

    /// The legacy membership role this role stands for, if any.
    pub fn member_role(self) -> Option<MemberRole> {
        match self {
            Self::Everyone => None,
            Self::WorkspaceOwner => Some(MemberRole::Owner),
            Self::Moderator => Some(MemberRole::Moderator),
            Self::Member => Some(MemberRole::Member),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleRecord {
    pub role_id: RoleId,
    pub guild_id: GuildId,
    pub name: String,
    pub position: i64,
    pub builtin: Option<BuiltinRole>,
    /// The mask as stored. It may carry bits this build does not know;
    /// read it through the domain's `Permissions::from_stored`.
    pub permissions: u64,
    /// `#RRGGBB`, uppercase.
    pub color_hex: Option<String>,
    pub created_at_unix: i64,
}

impl RoleRecord {
    pub fn is_system(&self) -> bool {
        self.builtin.is_some_and(BuiltinRole::is_system)
    }
}

/// The fields a role PATCH changes; `None` leaves a field as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoleChanges {
    pub name: Option<String>,
    pub permissions: Option<u64>,
    /// `Some(None)` clears the color.
    pub color_hex: Option<Option<String>>,
}

/// Whose override it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OverrideTarget {
    Role(RoleId),
    Member(UserId),
}

impl OverrideTarget {
    fn kind(self) -> &'static str {
        match self {
            Self::Role(_) => "role",
            Self::Member(_) => "member",
        }
    }

    /// The id as stored: the same text whichever kind it is.
    fn id(self) -> String {
        match self {
            Self::Role(id) => id.to_string(),
            Self::Member(id) => id.to_string(),
        }
    }
}

/// One channel override: allow and deny masks for a role or a member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverrideRecord {
    pub guild_id: GuildId,
    pub channel_id: ChannelId,
    pub target: OverrideTarget,
    pub allow: u64,
    pub deny: u64,
}

/// What a capped write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CreateRoleOutcome {
    Created,
    /// The guild already has the maximum number of roles; nothing written.
    QuotaExceeded,
}

/// What assigning a role did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AssignOutcome {
    /// The assignment was added. `legacy_role` is the membership role after
    /// it was re-derived, when that changed.
    Assigned {
        legacy_role: Option<MemberRole>,
    },
    /// The user already had this explicit assignment; nothing changed.
    AlreadyAssigned,
    NotMember,
    RoleNotFound,
    /// The member already has the maximum number of assignments.
    QuotaExceeded,
}

/// What unassigning a role did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnassignOutcome {
    /// The user no longer holds the role. `legacy_role` is the membership
    /// role after it was re-derived, when that changed.
    Removed {
        legacy_role: Option<MemberRole>,
    },
    /// The user did not hold the role; nothing changed.
    NotAssigned,
    NotMember,
    RoleNotFound,
    /// The user is the guild's last workspace owner; nothing changed.
    LastWorkspaceOwner,
}

#[async_trait]
pub trait RoleStore: Send + Sync + 'static {
    // --- roles ------------------------------------------------------------
    /// The guild's roles by position descending, then creation, then id.
    async fn roles(&self, guild_id: GuildId) -> StoreResult<Vec<RoleRecord>>;
    async fn role(&self, guild_id: GuildId, role_id: RoleId) -> StoreResult<Option<RoleRecord>>;
    /// Creates the role unless the guild already has `max_roles` roles.
    ///
    /// Stores `outbox`, the change's realtime events, in the same
    /// transaction (docs/adr/0006-outbox.md), only if it was
    /// `Created`.
    async fn create_role(
        &self,
        role: RoleRecord,
        max_roles: u32,
        outbox: Vec<OutboxEvent>,
    ) -> StoreResult<CreateRoleOutcome>;
    /// Applies the changes; `None` if the role does not exist.
    ///
    /// Stores `outbox`, the change's realtime events, in the same
    /// transaction (docs/adr/0006-outbox.md), only if it
    /// does.
    async fn update_role(
        &self,
        guild_id: GuildId,
        role_id: RoleId,
        changes: RoleChanges,
        outbox: Vec<OutboxEvent>,
    ) -> StoreResult<Option<RoleRecord>>;
    /// Deletes the role with its assignments and overrides (and clears it
    /// as the default join role). Deleting the built-in `moderator` role
    /// also turns legacy moderators into members, since nothing backs that
    /// rank any more. Returns the deleted role.
    ///
    /// Stores `outbox`, the change's realtime events, in the same
    /// transaction (docs/adr/0006-outbox.md), only if a
    /// role was deleted.
    async fn delete_role(
        &self,
        guild_id: GuildId,
        role_id: RoleId,
        outbox: Vec<OutboxEvent>,
    ) -> StoreResult<Option<RoleRecord>>;
    /// Sets the positions of `role_ids` to N…1 in list order. False, and
    /// nothing changed, if one of them is not a role of the guild.
    ///
    /// Stores `outbox`, the change's realtime events, in the same
    /// transaction (docs/adr/0006-outbox.md), only if it
    /// returns true.
    async fn reorder_roles(
        &self,
        guild_id: GuildId,
        role_ids: &[RoleId],
        outbox: Vec<OutboxEvent>,
    ) -> StoreResult<bool>;
    async fn default_join_role(&self, guild_id: GuildId) -> StoreResult<Option<RoleId>>;
    /// False, and nothing changed, if the role is not a role of the guild.
    async fn set_default_join_role(
        &self,
        guild_id: GuildId,
        role_id: Option<RoleId>,
    ) -> StoreResult<bool>;

    // --- assignments --------------------------------------------------------
    /// The user's explicit assignments (not the role implied by the legacy
    /// membership role), by role id.
    async fn assigned_role_ids(
        &self,
        guild_id: GuildId,
        user_id: UserId,
    ) -> StoreResult<Vec<RoleId>>;
    /// Explicit assignments of the members whose ids lie in `first..=last`,
    /// as `(user_id, role_id)` by user then role: one page of the member
    /// list at a time.
    async fn assignments_between(
        &self,
        guild_id: GuildId,
        first: UserId,
        last: UserId,
    ) -> StoreResult<Vec<(UserId, RoleId)>>;
    /// Adds an explicit assignment, at most `max_assignments` per member.
    /// Assigning `workspace_owner` or `moderator` raises the legacy role to
    /// match (never lowers it).
    ///
    /// Stores `outbox`, the change's realtime events, in the same
    /// transaction (docs/adr/0006-outbox.md), only if it
    /// was `Assigned`.
    async fn assign_role(
        &self,
        guild_id: GuildId,
        user_id: UserId,
        role_id: RoleId,
        assigned_at_unix: i64,
        max_assignments: u32,
        outbox: Vec<OutboxEvent>,
    ) -> StoreResult<AssignOutcome>;
    /// Removes the role from the user: the explicit assignment, and for the
    /// built-in role the legacy role implies, the legacy role itself, which
    /// is re-derived from what remains (workspace_owner → owner, moderator
    /// → moderator, else member). Refuses to remove the last workspace
    /// owner.
    ///
    /// Stores `outbox`, the change's realtime events, in the same
    /// transaction (docs/adr/0006-outbox.md), only if it
    /// was `Removed`.
    async fn unassign_role(
        &self,
        guild_id: GuildId,
        user_id: UserId,
        role_id: RoleId,
        outbox: Vec<OutboxEvent>,
    ) -> StoreResult<UnassignOutcome>;
    /// Sets a member's legacy role and swaps the built-in assignment to
    /// match (for `PATCH /guilds/{g}/members/{u}`): explicit `member` and
    /// `moderator` assignments are dropped and the new role's built-in role
    /// is assigned. False if the user is not a member.
    ///
    /// Stores `outbox`, the change's realtime events, in the same
    /// transaction (docs/adr/0006-outbox.md), only if they
    /// are.
    async fn set_legacy_role(
        &self,
        guild_id: GuildId,
        user_id: UserId,
        role: MemberRole,
        at_unix: i64,
        outbox: Vec<OutboxEvent>,
    ) -> StoreResult<bool>;
    /// Members whose guild-level permissions (PROTOCOL.md §3.4 step 4) share a
    /// bit with `mask`, by user id, strictly after `after`, at most `limit`.
    async fn members_with_permission_bits(
        &self,
        guild_id: GuildId,
        mask: u64,
        after: Option<UserId>,
        limit: u32,
    ) -> StoreResult<Vec<UserId>>;

    // --- access ------------------------------------------------------------
    /// Everything the permission model weighs for `user_id` in the guild
    /// (the membership, the guild's roles, the user's explicit
    /// assignments) and, when `channel_id` is given, in that channel of
    /// the guild (the channel, the overrides that can apply): what
    /// [`member`](super::CoreStore::member), [`roles`](Self::roles),
    /// [`assigned_role_ids`](Self::assigned_role_ids),
    /// [`channel`](super::CoreStore::channel) and
    /// [`overrides_for`](Self::overrides_for) answer, in one statement
    /// (`access.rs`).
    async fn access_facts(
        &self,
        guild_id: GuildId,
        user_id: UserId,
        channel_id: Option<ChannelId>,
    ) -> StoreResult<AccessFacts>;

    // --- channel overrides --------------------------------------------------
    /// The overrides that can apply to `user_id`: every role override of the
    /// guild (of one channel when `channel_id` is given) and the user's own
    /// member overrides.
    async fn overrides_for(
        &self,
        guild_id: GuildId,
        channel_id: Option<ChannelId>,
        user_id: UserId,
    ) -> StoreResult<Vec<OverrideRecord>>;
    /// Inserts or replaces the override; empty masks remove it.
    ///
    /// Stores `outbox`, the change's realtime events, in the same
    /// transaction (docs/adr/0006-outbox.md).
    async fn upsert_override(
        &self,
        entry: OverrideRecord,
        outbox: Vec<OutboxEvent>,
    ) -> StoreResult<()>;

    // --- guild settings and channel lifecycle (guilds.rs, channels.rs) -----
    /// Sets the given fields; `None` if the guild does not exist.
    ///
    /// Stores the events `outbox` builds from the guild before and after,
    /// the change's realtime events, in the same transaction
    /// (docs/adr/0006-outbox.md); nothing for a guild that does not exist.
    async fn update_guild(
        &self,
        guild_id: GuildId,
        name: Option<String>,
        visibility: Option<Visibility>,
        outbox: OutboxFor<'_, Change<GuildRecord>>,
    ) -> StoreResult<Option<Change<GuildRecord>>>;
    /// `None` if the channel does not exist in the guild.
    ///
    /// Stores the events `outbox` builds from the channel before and after,
    /// the change's realtime events, in the same transaction
    /// (docs/adr/0006-outbox.md); nothing for a channel that does not exist.
    async fn rename_channel(
        &self,
        guild_id: GuildId,
        channel_id: ChannelId,
        name: String,
        outbox: OutboxFor<'_, Change<ChannelRecord>>,
    ) -> StoreResult<Option<Change<ChannelRecord>>>;
    /// Deletes the channel with its messages and overrides. False if it did
    /// not exist in the guild.
    ///
    /// Stores `outbox`, the change's realtime events, in the same
    /// transaction (docs/adr/0006-outbox.md), only if it
    /// did.
    async fn delete_channel(
        &self,
        guild_id: GuildId,
        channel_id: ChannelId,
        outbox: Vec<OutboxEvent>,
    ) -> StoreResult<bool>;
}

const ROLE_COLUMNS: &str =
    "role_id, guild_id, name, position, builtin, permissions, color_hex, created_at_unix";

/// Seeds the four default roles of a new guild (PROTOCOL.md §3.2) with
/// `masks`, and assigns `workspace_owner` explicitly to its creator, inside
/// the caller's transaction (`create_guild`).
pub(super) async fn seed_guild_roles<DB>(
    connection: &mut DB::Connection,
    guild_id: &str,
    creator: &str,
    now_unix: i64,
    masks: BuiltinMasks,
) -> Result<(), sqlx::Error>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    for<'q> String: Encode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
{
    let seeds = [
        (
            "@everyone",
            EVERYONE_POSITION,
            BuiltinRole::Everyone,
            masks.everyone,
        ),
        (
            "workspace_owner",
            WORKSPACE_OWNER_POSITION,
            BuiltinRole::WorkspaceOwner,
            masks.workspace_owner,
        ),
        (
            "moderator",
            MODERATOR_POSITION,
            BuiltinRole::Moderator,
            masks.moderator,
        ),
        ("member", MEMBER_POSITION, BuiltinRole::Member, masks.member),
    ];
    let mut owner_role_id = String::new();
    for (name, position, builtin, permissions) in seeds {
        let role_id = RoleId::generate().to_string();
        if builtin == BuiltinRole::WorkspaceOwner {
            owner_role_id.clone_from(&role_id);
        }
        sqlx::query(
            "INSERT INTO roles \
             (role_id, guild_id, name, position, builtin, permissions, created_at_unix) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(role_id)
        .bind(guild_id.to_owned())
        .bind(name.to_owned())
        .bind(position)
        .bind(builtin.as_str().to_owned())
        .bind(mask_to_db(permissions))
        .bind(now_unix)
        .execute(&mut *connection)
        .await?;
    }
    sqlx::query(
        "INSERT INTO role_assignments (guild_id, user_id, role_id, assigned_at_unix) \
         VALUES ($1, $2, $3, $4)",
    )
    .bind(guild_id.to_owned())
    .bind(creator.to_owned())
    .bind(owner_role_id)
    .bind(now_unix)
    .execute(&mut *connection)
    .await?;
    Ok(())
}

// Every area's impl repeats the where-clause (see sql.rs).
#[async_trait]
impl<DB> RoleStore for SqlStore<DB>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    for<'q> String: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> Option<String>: Encode<'q, DB> + Decode<'q, DB>,
    for<'q> Vec<u8>: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'i> &'i str: ColumnIndex<DB::Row>,
{
    async fn roles(&self, guild_id: GuildId) -> StoreResult<Vec<RoleRecord>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {ROLE_COLUMNS} FROM roles WHERE guild_id = $1 \
             ORDER BY position DESC, created_at_unix, role_id"
        )))
        .bind(guild_id.to_string())
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(decode_role).collect::<Result<_, _>>()?)
    }

    async fn role(&self, guild_id: GuildId, role_id: RoleId) -> StoreResult<Option<RoleRecord>> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {ROLE_COLUMNS} FROM roles WHERE role_id = $1 AND guild_id = $2"
        )))
        .bind(role_id.to_string())
        .bind(guild_id.to_string())
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.as_ref().map(decode_role).transpose()?)
    }

    async fn create_role(
        &self,
        role: RoleRecord,
        max_roles: u32,
        outbox: Vec<OutboxEvent>,
    ) -> StoreResult<CreateRoleOutcome> {
        let guild_id = role.guild_id.to_string();
        let mut tx = self.pool.begin().await?;
        lock_guild(&mut *tx, &guild_id).await?;
        let row = sqlx::query("SELECT COUNT(*) AS roles FROM roles WHERE guild_id = $1")
            .bind(guild_id.clone())
            .fetch_one(&mut *tx)
            .await?;
        let count: i64 = row.try_get("roles")?;
        if count >= i64::from(max_roles) {
            return Ok(CreateRoleOutcome::QuotaExceeded);
        }
        sqlx::query(
            "INSERT INTO roles (role_id, guild_id, name, position, builtin, permissions, \
             color_hex, created_at_unix) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(role.role_id.to_string())
        .bind(guild_id)
        .bind(role.name)
        .bind(role.position)
        .bind(role.builtin.map(|b| b.as_str().to_owned()))
        .bind(mask_to_db(role.permissions))
        .bind(role.color_hex)
        .bind(role.created_at_unix)
        .execute(&mut *tx)
        .await?;
        Self::enqueue_outbox_all(&mut tx, outbox).await?;
        tx.commit().await?;
        Ok(CreateRoleOutcome::Created)
    }

    async fn update_role(
        &self,
        guild_id: GuildId,
        role_id: RoleId,
        changes: RoleChanges,
        outbox: Vec<OutboxEvent>,
    ) -> StoreResult<Option<RoleRecord>> {
        let guild = guild_id.to_string();
        let mut tx = self.pool.begin().await?;
        lock_guild(&mut *tx, &guild).await?;
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {ROLE_COLUMNS} FROM roles WHERE role_id = $1 AND guild_id = $2"
        )))
        .bind(role_id.to_string())
        .bind(guild.clone())
        .fetch_optional(&mut *tx)
        .await?;
        let Some(mut role) = row.as_ref().map(decode_role).transpose()? else {
            return Ok(None);
        };
        if let Some(name) = changes.name {
            role.name = name;
        }
        if let Some(permissions) = changes.permissions {
            role.permissions = permissions;
        }
        if let Some(color_hex) = changes.color_hex {
            role.color_hex = color_hex;
        }
        sqlx::query(
            "UPDATE roles SET name = $1, permissions = $2, color_hex = $3 \
             WHERE role_id = $4 AND guild_id = $5",
        )
        .bind(role.name.clone())
        .bind(mask_to_db(role.permissions))
        .bind(role.color_hex.clone())
        .bind(role_id.to_string())
        .bind(guild)
        .execute(&mut *tx)
        .await?;
        Self::enqueue_outbox_all(&mut tx, outbox).await?;
        tx.commit().await?;
        Ok(Some(role))
    }

    async fn delete_role(
        &self,
        guild_id: GuildId,
        role_id: RoleId,
        outbox: Vec<OutboxEvent>,
    ) -> StoreResult<Option<RoleRecord>> {
        let (guild, role) = (guild_id.to_string(), role_id.to_string());
        let mut tx = self.pool.begin().await?;
        lock_guild(&mut *tx, &guild).await?;
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "DELETE FROM roles WHERE role_id = $1 AND guild_id = $2 RETURNING {ROLE_COLUMNS}"
        )))
        .bind(role.clone())
        .bind(guild.clone())
        .fetch_optional(&mut *tx)
        .await?;
        let Some(deleted) = row.as_ref().map(decode_role).transpose()? else {
            return Ok(None);
        };
        // Assignments and the default join role follow by foreign key;
        // overrides name their target without one.
        sqlx::query(
            "DELETE FROM channel_overrides \
             WHERE guild_id = $1 AND target_kind = 'role' AND target_id = $2",
        )
        .bind(guild.clone())
        .bind(role)
        .execute(&mut *tx)
        .await?;
        if deleted.builtin == Some(BuiltinRole::Moderator) {
            sqlx::query(
                "UPDATE guild_members SET role = 'member' \
                 WHERE guild_id = $1 AND role = 'moderator'",
            )
            .bind(guild)
            .execute(&mut *tx)
            .await?;
        }
        Self::enqueue_outbox_all(&mut tx, outbox).await?;
        tx.commit().await?;
        Ok(Some(deleted))
    }

    async fn reorder_roles(
        &self,
        guild_id: GuildId,
        role_ids: &[RoleId],
        outbox: Vec<OutboxEvent>,
    ) -> StoreResult<bool> {
        let guild = guild_id.to_string();
        let mut tx = self.pool.begin().await?;
        lock_guild(&mut *tx, &guild).await?;
        let mut position = i64::try_from(role_ids.len()).unwrap_or(i64::MAX);
        for role_id in role_ids {
            let updated = sqlx::query(
                "UPDATE roles SET position = $1 WHERE role_id = $2 AND guild_id = $3 \
                 RETURNING role_id",
            )
            .bind(position)
            .bind(role_id.to_string())
            .bind(guild.clone())
            .fetch_optional(&mut *tx)
            .await?;
            if updated.is_none() {
                // Dropping the transaction rolls back the positions set so far.
                return Ok(false);
            }
            position -= 1;
        }
        Self::enqueue_outbox_all(&mut tx, outbox).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn default_join_role(&self, guild_id: GuildId) -> StoreResult<Option<RoleId>> {
        let row = sqlx::query("SELECT default_join_role_id FROM guilds WHERE guild_id = $1")
            .bind(guild_id.to_string())
            .fetch_optional(&self.pool)
            .await?;
        let Some(row) = row else { return Ok(None) };
        let raw: Option<String> = row.try_get("default_join_role_id")?;
        Ok(raw
            .map(|id| parse_stored_id(&id, "default_join_role_id"))
            .transpose()?)
    }

    async fn set_default_join_role(
        &self,
        guild_id: GuildId,
        role_id: Option<RoleId>,
    ) -> StoreResult<bool> {
        let guild = guild_id.to_string();
        let mut tx = self.pool.begin().await?;
        lock_guild(&mut *tx, &guild).await?;
        if let Some(role_id) = role_id {
            let exists =
                sqlx::query("SELECT role_id FROM roles WHERE role_id = $1 AND guild_id = $2")
                    .bind(role_id.to_string())
                    .bind(guild.clone())
                    .fetch_optional(&mut *tx)
                    .await?;
            if exists.is_none() {
                return Ok(false);
            }
        }
        sqlx::query("UPDATE guilds SET default_join_role_id = $1 WHERE guild_id = $2")
            .bind(role_id.map(|id| id.to_string()))
            .bind(guild)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn assigned_role_ids(
        &self,
        guild_id: GuildId,
        user_id: UserId,
    ) -> StoreResult<Vec<RoleId>> {
        let rows = sqlx::query(
            "SELECT role_id FROM role_assignments WHERE guild_id = $1 AND user_id = $2 \
             ORDER BY role_id",
        )
        .bind(guild_id.to_string())
        .bind(user_id.to_string())
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|row| decode_id(row, "role_id"))
            .collect::<Result<_, _>>()?)
    }

    async fn assignments_between(
        &self,
        guild_id: GuildId,
        first: UserId,
        last: UserId,
    ) -> StoreResult<Vec<(UserId, RoleId)>> {
        let rows = sqlx::query(
            "SELECT user_id, role_id FROM role_assignments \
             WHERE guild_id = $1 AND user_id >= $2 AND user_id <= $3 \
             ORDER BY user_id, role_id",
        )
        .bind(guild_id.to_string())
        .bind(first.to_string())
        .bind(last.to_string())
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|row| Ok((decode_id(row, "user_id")?, decode_id(row, "role_id")?)))
            .collect::<Result<_, sqlx::Error>>()?)
    }

    async fn assign_role(
        &self,
        guild_id: GuildId,
        user_id: UserId,
        role_id: RoleId,
        assigned_at_unix: i64,
        max_assignments: u32,
        outbox: Vec<OutboxEvent>,
    ) -> StoreResult<AssignOutcome> {
        let (guild, user, role_text) = (
            guild_id.to_string(),
            user_id.to_string(),
            role_id.to_string(),
        );
        let mut tx = self.pool.begin().await?;
        lock_guild(&mut *tx, &guild).await?;
        let Some(legacy) = legacy_role(&mut *tx, &guild, &user).await? else {
            return Ok(AssignOutcome::NotMember);
        };
        let Some(role) = role_in(&mut *tx, &guild, &role_text).await? else {
            return Ok(AssignOutcome::RoleNotFound);
        };
        let assigned = assigned_ids(&mut *tx, &guild, &user).await?;
        if assigned.contains(&role_id) {
            return Ok(AssignOutcome::AlreadyAssigned);
        }
        if assigned.len() >= usize::try_from(max_assignments).unwrap_or(usize::MAX) {
            return Ok(AssignOutcome::QuotaExceeded);
        }
        sqlx::query(
            "INSERT INTO role_assignments (guild_id, user_id, role_id, assigned_at_unix) \
             VALUES ($1, $2, $3, $4)",
        )
        .bind(guild.clone())
        .bind(user.clone())
        .bind(role_text)
        .bind(assigned_at_unix)
        .execute(&mut *tx)
        .await?;
        // Ranks only rise here: a member who is given `member` stays a
        // moderator.
        let raised = role
            .builtin
            .and_then(BuiltinRole::member_role)
            .filter(|rank| *rank > legacy);
        if let Some(rank) = raised {
            set_member_role(&mut *tx, &guild, &user, rank).await?;
        }
        Self::enqueue_outbox_all(&mut tx, outbox).await?;
        tx.commit().await?;
        Ok(AssignOutcome::Assigned {
            legacy_role: raised,
        })
    }

    async fn unassign_role(
        &self,
        guild_id: GuildId,
        user_id: UserId,
        role_id: RoleId,
        outbox: Vec<OutboxEvent>,
    ) -> StoreResult<UnassignOutcome> {
        let (guild, user, role_text) = (
            guild_id.to_string(),
            user_id.to_string(),
            role_id.to_string(),
        );
        let mut tx = self.pool.begin().await?;
        lock_guild(&mut *tx, &guild).await?;
        let Some(legacy) = legacy_role(&mut *tx, &guild, &user).await? else {
            return Ok(UnassignOutcome::NotMember);
        };
        let Some(role) = role_in(&mut *tx, &guild, &role_text).await? else {
            return Ok(UnassignOutcome::RoleNotFound);
        };
        let assigned = assigned_ids(&mut *tx, &guild, &user).await?;
        let explicit = assigned.contains(&role_id);
        let implied = role.builtin == Some(BuiltinRole::of_member_role(legacy));
        if !explicit && !implied {
            return Ok(UnassignOutcome::NotAssigned);
        }
        if role.builtin == Some(BuiltinRole::WorkspaceOwner)
            && other_workspace_owners(&mut *tx, &guild, &user, &role_text).await? == 0
        {
            return Ok(UnassignOutcome::LastWorkspaceOwner);
        }
        sqlx::query(
            "DELETE FROM role_assignments WHERE guild_id = $1 AND user_id = $2 AND role_id = $3",
        )
        .bind(guild.clone())
        .bind(user.clone())
        .bind(role_text)
        .execute(&mut *tx)
        .await?;
        let mut changed = None;
        if implied {
            let remaining = assigned.iter().filter(|id| **id != role_id);
            let rank = derive_legacy_role(&mut *tx, &guild, remaining).await?;
            if rank != legacy {
                set_member_role(&mut *tx, &guild, &user, rank).await?;
                changed = Some(rank);
            }
        }
        Self::enqueue_outbox_all(&mut tx, outbox).await?;
        tx.commit().await?;
        Ok(UnassignOutcome::Removed {
            legacy_role: changed,
        })
    }

    async fn set_legacy_role(
        &self,
        guild_id: GuildId,
        user_id: UserId,
        role: MemberRole,
        at_unix: i64,
        outbox: Vec<OutboxEvent>,
    ) -> StoreResult<bool> {
        let (guild, user) = (guild_id.to_string(), user_id.to_string());
        let mut tx = self.pool.begin().await?;
        lock_guild(&mut *tx, &guild).await?;
        if legacy_role(&mut *tx, &guild, &user).await?.is_none() {
            return Ok(false);
        }
        set_member_role(&mut *tx, &guild, &user, role).await?;
        sqlx::query(
            "DELETE FROM role_assignments WHERE guild_id = $1 AND user_id = $2 AND role_id IN \
             (SELECT role_id FROM roles WHERE guild_id = $1 \
              AND builtin IN ('moderator', 'member'))",
        )
        .bind(guild.clone())
        .bind(user.clone())
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO role_assignments (guild_id, user_id, role_id, assigned_at_unix) \
             SELECT guild_id, $2, role_id, $3 FROM roles WHERE guild_id = $1 AND builtin = $4 \
             ON CONFLICT (guild_id, user_id, role_id) DO NOTHING",
        )
        .bind(guild)
        .bind(user)
        .bind(at_unix)
        .bind(BuiltinRole::of_member_role(role).as_str().to_owned())
        .execute(&mut *tx)
        .await?;
        Self::enqueue_outbox_all(&mut tx, outbox).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn members_with_permission_bits(
        &self,
        guild_id: GuildId,
        mask: u64,
        after: Option<UserId>,
        limit: u32,
    ) -> StoreResult<Vec<UserId>> {
        // One query per page: a member qualifies through @everyone, the
        // built-in role of their legacy role, an explicit assignment, or by
        // being a workspace owner at all (which grants every bit).
        let rows = sqlx::query(
            "SELECT m.user_id FROM guild_members m \
             WHERE m.guild_id = $1 AND m.user_id > $2 AND ( \
               m.role = 'owner' \
               OR EXISTS (SELECT 1 FROM roles r WHERE r.guild_id = m.guild_id AND ( \
                   ((r.permissions & $3) <> 0 AND ( \
                     r.builtin = 'everyone' \
                     OR r.builtin = CASE m.role WHEN 'moderator' THEN 'moderator' \
                                                ELSE 'member' END \
                     OR r.role_id IN (SELECT a.role_id FROM role_assignments a \
                                      WHERE a.guild_id = m.guild_id AND a.user_id = m.user_id))) \
                   OR (r.builtin = 'workspace_owner' AND r.role_id IN \
                       (SELECT a.role_id FROM role_assignments a \
                        WHERE a.guild_id = m.guild_id AND a.user_id = m.user_id))))) \
             ORDER BY m.user_id LIMIT $4",
        )
        .bind(guild_id.to_string())
        .bind(after.map(|id| id.to_string()).unwrap_or_default())
        .bind(mask_to_db(mask))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|row| decode_id(row, "user_id"))
            .collect::<Result<_, _>>()?)
    }

    async fn access_facts(
        &self,
        guild_id: GuildId,
        user_id: UserId,
        channel_id: Option<ChannelId>,
    ) -> StoreResult<AccessFacts> {
        self.read_access_facts(guild_id, user_id, channel_id).await
    }

    async fn overrides_for(
        &self,
        guild_id: GuildId,
        channel_id: Option<ChannelId>,
        user_id: UserId,
    ) -> StoreResult<Vec<OverrideRecord>> {
        // Role overrides are few (64 roles at most per channel); member
        // overrides are read only for this user.
        let filter = "(target_kind = 'role' OR (target_kind = 'member' AND target_id = $2))";
        let sql = if channel_id.is_some() {
            format!(
                "SELECT guild_id, channel_id, target_kind, target_id, allow_bits, deny_bits \
                 FROM channel_overrides WHERE guild_id = $1 AND {filter} AND channel_id = $3"
            )
        } else {
            format!(
                "SELECT guild_id, channel_id, target_kind, target_id, allow_bits, deny_bits \
                 FROM channel_overrides WHERE guild_id = $1 AND {filter}"
            )
        };
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(guild_id.to_string())
            .bind(user_id.to_string());
        if let Some(channel_id) = channel_id {
            query = query.bind(channel_id.to_string());
        }
        let rows = query.fetch_all(&self.pool).await?;
        Ok(rows.iter().map(decode_override).collect::<Result<_, _>>()?)
    }

    async fn upsert_override(
        &self,
        entry: OverrideRecord,
        outbox: Vec<OutboxEvent>,
    ) -> StoreResult<()> {
        let key = (
            entry.channel_id.to_string(),
            entry.target.kind().to_owned(),
            entry.target.id(),
        );
        let mut tx = self.pool.begin().await?;
        if entry.allow == 0 && entry.deny == 0 {
            sqlx::query(
                "DELETE FROM channel_overrides \
                 WHERE channel_id = $1 AND target_kind = $2 AND target_id = $3",
            )
            .bind(key.0)
            .bind(key.1)
            .bind(key.2)
            .execute(&mut *tx)
            .await?;
        } else {
            sqlx::query(
                "INSERT INTO channel_overrides \
             (channel_id, target_kind, target_id, guild_id, allow_bits, deny_bits) \
             VALUES ($1, $2, $3, $4, $5, $6) \
             ON CONFLICT (channel_id, target_kind, target_id) \
             DO UPDATE SET allow_bits = excluded.allow_bits, deny_bits = excluded.deny_bits",
            )
            .bind(key.0)
            .bind(key.1)
            .bind(key.2)
            .bind(entry.guild_id.to_string())
            .bind(mask_to_db(entry.allow))
            .bind(mask_to_db(entry.deny))
            .execute(&mut *tx)
            .await?;
        }
        Self::enqueue_outbox_all(&mut tx, outbox).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn update_guild(
        &self,
        guild_id: GuildId,
        name: Option<String>,
        visibility: Option<Visibility>,
        outbox: OutboxFor<'_, Change<GuildRecord>>,
    ) -> StoreResult<Option<Change<GuildRecord>>> {
        self.write_guild_settings(guild_id, name, visibility, outbox)
            .await
    }

    async fn rename_channel(
        &self,
        guild_id: GuildId,
        channel_id: ChannelId,
        name: String,
        outbox: OutboxFor<'_, Change<ChannelRecord>>,
    ) -> StoreResult<Option<Change<ChannelRecord>>> {
        self.write_channel_name(guild_id, channel_id, name, outbox)
            .await
    }

    async fn delete_channel(
        &self,
        guild_id: GuildId,
        channel_id: ChannelId,
        outbox: Vec<OutboxEvent>,
    ) -> StoreResult<bool> {
        self.remove_channel(guild_id, channel_id, outbox).await
    }
}

// --- helpers inside a transaction -------------------------------------------

/// The member's legacy role, or `None` if they are not a member.
async fn legacy_role<DB>(
    connection: &mut DB::Connection,
    guild_id: &str,
    user_id: &str,
) -> Result<Option<MemberRole>, sqlx::Error>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    for<'q> String: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'i> &'i str: ColumnIndex<DB::Row>,
{
    let row = sqlx::query("SELECT role FROM guild_members WHERE guild_id = $1 AND user_id = $2")
        .bind(guild_id.to_owned())
        .bind(user_id.to_owned())
        .fetch_optional(&mut *connection)
        .await?;
    row.as_ref()
        .map(|row| decode_enum(row, "role", MemberRole::parse))
        .transpose()
}

async fn set_member_role<DB>(
    connection: &mut DB::Connection,
    guild_id: &str,
    user_id: &str,
    role: MemberRole,
) -> Result<(), sqlx::Error>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    for<'q> String: Encode<'q, DB> + Type<DB>,
{
    sqlx::query("UPDATE guild_members SET role = $1 WHERE guild_id = $2 AND user_id = $3")
        .bind(role.as_str().to_owned())
        .bind(guild_id.to_owned())
        .bind(user_id.to_owned())
        .execute(&mut *connection)
        .await?;
    Ok(())
}

async fn role_in<DB>(
    connection: &mut DB::Connection,
    guild_id: &str,
    role_id: &str,
) -> Result<Option<RoleRecord>, sqlx::Error>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    for<'q> String: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> i64: Decode<'q, DB> + Type<DB>,
    for<'q> Option<String>: Decode<'q, DB>,
    for<'i> &'i str: ColumnIndex<DB::Row>,
{
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {ROLE_COLUMNS} FROM roles WHERE role_id = $1 AND guild_id = $2"
    )))
    .bind(role_id.to_owned())
    .bind(guild_id.to_owned())
    .fetch_optional(&mut *connection)
    .await?;
    row.as_ref().map(decode_role).transpose()
}

async fn assigned_ids<DB>(
    connection: &mut DB::Connection,
    guild_id: &str,
    user_id: &str,
) -> Result<Vec<RoleId>, sqlx::Error>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    for<'q> String: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'i> &'i str: ColumnIndex<DB::Row>,
{
    let rows =
        sqlx::query("SELECT role_id FROM role_assignments WHERE guild_id = $1 AND user_id = $2")
            .bind(guild_id.to_owned())
            .bind(user_id.to_owned())
            .fetch_all(&mut *connection)
            .await?;
    rows.iter().map(|row| decode_id(row, "role_id")).collect()
}

/// How many members other than `user_id` hold `workspace_owner`, explicitly
/// or through the legacy `owner` role.
async fn other_workspace_owners<DB>(
    connection: &mut DB::Connection,
    guild_id: &str,
    user_id: &str,
    owner_role_id: &str,
) -> Result<i64, sqlx::Error>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    for<'q> String: Encode<'q, DB> + Type<DB>,
    for<'q> i64: Decode<'q, DB> + Type<DB>,
    for<'i> &'i str: ColumnIndex<DB::Row>,
{
    let row = sqlx::query(
        "SELECT COUNT(*) AS owners FROM guild_members m \
         WHERE m.guild_id = $1 AND m.user_id <> $2 AND (m.role = 'owner' OR EXISTS \
           (SELECT 1 FROM role_assignments a \
            WHERE a.guild_id = m.guild_id AND a.user_id = m.user_id AND a.role_id = $3))",
    )
    .bind(guild_id.to_owned())
    .bind(user_id.to_owned())
    .bind(owner_role_id.to_owned())
    .fetch_one(&mut *connection)
    .await?;
    row.try_get("owners")
}

/// The legacy role explicit assignments imply: workspace_owner → owner,
/// else moderator → moderator, else member (PROTOCOL.md §3.4 step 3).
async fn derive_legacy_role<'a, DB>(
    connection: &mut DB::Connection,
    guild_id: &str,
    assigned: impl Iterator<Item = &'a RoleId>,
) -> Result<MemberRole, sqlx::Error>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    for<'q> String: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> Option<String>: Decode<'q, DB>,
    for<'i> &'i str: ColumnIndex<DB::Row>,
{
    let rows = sqlx::query(
        "SELECT role_id, builtin FROM roles WHERE guild_id = $1 \
         AND builtin IN ('workspace_owner', 'moderator')",
    )
    .bind(guild_id.to_owned())
    .fetch_all(&mut *connection)
    .await?;
    let assigned: Vec<&RoleId> = assigned.collect();
    let mut rank = MemberRole::Member;
    for row in &rows {
        let role_id = decode_id(row, "role_id")?;
        let builtin: Option<String> = row.try_get("builtin")?;
        let implied = builtin
            .as_deref()
            .and_then(BuiltinRole::parse)
            .and_then(BuiltinRole::member_role);
        if let Some(implied) = implied.filter(|_| assigned.contains(&&role_id)) {
            rank = rank.max(implied);
        }
    }
    Ok(rank)
}

// --- row decoding ------------------------------------------------------------

/// Masks are u64 bit sets; the databases store them as signed 64-bit
/// integers, bit for bit.
fn mask_to_db(mask: u64) -> i64 {
    i64::from_ne_bytes(mask.to_ne_bytes())
}

fn mask_from_db(raw: i64) -> u64 {
    u64::from_ne_bytes(raw.to_ne_bytes())
}

pub(super) fn decode_role<R>(row: &R) -> Result<RoleRecord, sqlx::Error>
where
    R: Row,
    for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> Option<String>: Decode<'r, R::Database>,
    for<'i> &'i str: ColumnIndex<R>,
{
    let builtin: Option<String> = row.try_get("builtin")?;
    let builtin = builtin
        .map(|text| {
            BuiltinRole::parse(&text).ok_or_else(|| sqlx::Error::ColumnDecode {
                index: "builtin".to_owned(),
                source: format!("unexpected value {text:?}").into(),
            })
        })
        .transpose()?;
    Ok(RoleRecord {
        role_id: decode_id(row, "role_id")?,
        guild_id: decode_id(row, "guild_id")?,
        name: row.try_get("name")?,
        position: row.try_get("position")?,
        builtin,
        permissions: mask_from_db(row.try_get("permissions")?),
        color_hex: row.try_get("color_hex")?,
        created_at_unix: row.try_get("created_at_unix")?,
    })
}

pub(super) fn decode_override<R>(row: &R) -> Result<OverrideRecord, sqlx::Error>
where
    R: Row,
    for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
    for<'i> &'i str: ColumnIndex<R>,
{
    // One column holds either kind of id; `target_kind` says which.
    let target_id: Ulid = decode_id(row, "target_id")?;
    let kind: String = row.try_get("target_kind")?;
    let target = match kind.as_str() {
        "role" => OverrideTarget::Role(target_id.into()),
        "member" => OverrideTarget::Member(target_id.into()),
        other => {
            return Err(sqlx::Error::ColumnDecode {
                index: "target_kind".to_owned(),
                source: format!("unexpected value {other:?}").into(),
            });
        }
    };
    Ok(OverrideRecord {
        guild_id: decode_id(row, "guild_id")?,
        channel_id: decode_id(row, "channel_id")?,
        target,
        allow: mask_from_db(row.try_get("allow_bits")?),
        deny: mask_from_db(row.try_get("deny_bits")?),
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::store::tests::{conformance, custom_role, new_id};
    use crate::store::{ChannelKind, ChannelRecord, GuildRecord, MemberRecord, NewUser, Store};

    const NOW: i64 = 1_700_000_000;

    conformance!(
        create_guild_seeds_the_default_roles_and_the_owner_assignment,
        role_crud_respects_the_cap_and_cleans_up_after_itself,
        reorder_sets_positions_n_to_one_or_nothing,
        assignments_are_capped_and_rederive_the_legacy_role,
        the_last_workspace_owner_cannot_be_removed,
        set_legacy_role_swaps_the_builtin_assignment,
        members_with_permission_follow_roles,
        overrides_upsert_filter_and_go_with_their_channel_or_role,
    );

    async fn user(store: &dyn Store) -> UserId {
        let user_id = new_id();
        store
            .create_user(NewUser {
                user_id,
                username: format!("u{}", &user_id.to_string()[16..]).to_lowercase(),
                password_hash: "hash".to_owned(),
                created_at_unix: NOW,
            })
            .await
            .unwrap();
        user_id
    }

    /// A guild owned by a new user; returns (guild, owner).
    async fn guild(store: &dyn Store) -> (GuildId, UserId) {
        let owner = user(store).await;
        let guild_id = new_id();
        store
            .create_guild(
                GuildRecord {
                    guild_id,
                    name: "g".to_owned(),
                    visibility: Visibility::Private,
                    created_by: owner,
                    created_at_unix: NOW,
                },
                BuiltinMasks::FOR_TESTS,
            )
            .await
            .unwrap();
        (guild_id, owner)
    }

    async fn member(store: &dyn Store, guild_id: GuildId) -> UserId {
        let user_id = user(store).await;
        store
            .add_member(MemberRecord {
                guild_id,
                user_id,
                role: MemberRole::Member,
                joined_at_unix: NOW,
            })
            .await
            .unwrap();
        user_id
    }

    async fn channel(store: &dyn Store, guild_id: GuildId) -> ChannelId {
        let channel_id = new_id();
        store
            .create_channel(
                ChannelRecord {
                    channel_id,
                    guild_id,
                    name: "c".to_owned(),
                    kind: ChannelKind::Text,
                    created_at_unix: NOW,
                },
                Vec::new(),
            )
            .await
            .unwrap();
        channel_id
    }

    async fn builtin(store: &dyn Store, guild_id: GuildId, which: BuiltinRole) -> RoleRecord {
        store
            .roles(guild_id)
            .await
            .unwrap()
            .into_iter()
            .find(|r| r.builtin == Some(which))
            .unwrap()
    }

    async fn legacy(store: &dyn Store, guild_id: GuildId, user_id: UserId) -> MemberRole {
        store.member(guild_id, user_id).await.unwrap().unwrap().role
    }

    async fn create_guild_seeds_the_default_roles_and_the_owner_assignment(store: Arc<dyn Store>) {
        let (guild_id, owner) = guild(&*store).await;
        let roles = store.roles(guild_id).await.unwrap();
        let seen: Vec<_> = roles
            .iter()
            .map(|r| (r.name.as_str(), r.position, r.is_system(), r.permissions))
            .collect();
        assert_eq!(
            seen,
            [
                ("workspace_owner", 10_000, true, 4095),
                ("moderator", 100, false, 4090),
                ("member", 1, false, 2304),
                ("@everyone", 0, true, 2304),
            ]
        );
        let owner_role = builtin(&*store, guild_id, BuiltinRole::WorkspaceOwner).await;
        assert_eq!(
            store.assigned_role_ids(guild_id, owner).await.unwrap(),
            [owner_role.role_id]
        );
        assert_eq!(store.default_join_role(guild_id).await.unwrap(), None);
    }

    async fn role_crud_respects_the_cap_and_cleans_up_after_itself(store: Arc<dyn Store>) {
        let (guild_id, _) = guild(&*store).await;
        let user_id = member(&*store, guild_id).await;
        let channel_id = channel(&*store, guild_id).await;
        let role = custom_role(guild_id, "mods", 50, 256);
        assert_eq!(
            store
                .create_role(role.clone(), 5, Vec::new())
                .await
                .unwrap(),
            CreateRoleOutcome::Created
        );
        assert_eq!(
            store
                .create_role(custom_role(guild_id, "one too many", 2, 0), 5, Vec::new())
                .await
                .unwrap(),
            CreateRoleOutcome::QuotaExceeded
        );
        assert_eq!(store.roles(guild_id).await.unwrap().len(), 5);

        let updated = store
            .update_role(
                guild_id,
                role.role_id,
                RoleChanges {
                    color_hex: Some(Some("#ABCDEF".to_owned())),
                    ..RoleChanges::default()
                },
                Vec::new(),
            )
            .await
            .unwrap()
            .unwrap();
        assert_eq!(updated.name, "mods");
        assert_eq!(updated.color_hex.as_deref(), Some("#ABCDEF"));
        let cleared = RoleChanges {
            name: Some("renamed".to_owned()),
            permissions: Some(0),
            color_hex: Some(None),
        };
        let updated = store
            .update_role(guild_id, role.role_id, cleared, Vec::new())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            store.role(guild_id, role.role_id).await.unwrap(),
            Some(updated.clone())
        );
        assert_eq!(
            (
                updated.name.as_str(),
                updated.permissions,
                updated.color_hex
            ),
            ("renamed", 0, None)
        );
        // Another guild's id does not reach the role.
        assert_eq!(
            store
                .update_role(new_id(), role.role_id, RoleChanges::default(), Vec::new())
                .await
                .unwrap(),
            None
        );

        assert!(matches!(
            store
                .assign_role(guild_id, user_id, role.role_id, NOW, 16, Vec::new())
                .await
                .unwrap(),
            AssignOutcome::Assigned { legacy_role: None }
        ));
        assert!(
            store
                .set_default_join_role(guild_id, Some(role.role_id))
                .await
                .unwrap()
        );
        assert_eq!(
            store.default_join_role(guild_id).await.unwrap(),
            Some(role.role_id)
        );
        store
            .upsert_override(
                OverrideRecord {
                    guild_id,
                    channel_id,
                    target: OverrideTarget::Role(role.role_id),
                    allow: 0,
                    deny: 256,
                },
                Vec::new(),
            )
            .await
            .unwrap();

        let deleted = store
            .delete_role(guild_id, role.role_id, Vec::new())
            .await
            .unwrap();
        assert_eq!(deleted.map(|r| r.role_id), Some(role.role_id));
        assert_eq!(store.role(guild_id, role.role_id).await.unwrap(), None);
        assert!(
            store
                .assigned_role_ids(guild_id, user_id)
                .await
                .unwrap()
                .is_empty()
        );
        assert_eq!(store.default_join_role(guild_id).await.unwrap(), None);
        assert!(
            store
                .overrides_for(guild_id, Some(channel_id), user_id)
                .await
                .unwrap()
                .is_empty()
        );
        assert_eq!(
            store
                .delete_role(guild_id, role.role_id, Vec::new())
                .await
                .unwrap(),
            None
        );
        assert!(
            !store
                .set_default_join_role(guild_id, Some(role.role_id))
                .await
                .unwrap()
        );
    }

    async fn reorder_sets_positions_n_to_one_or_nothing(store: Arc<dyn Store>) {
        let (guild_id, _) = guild(&*store).await;
        let a = custom_role(guild_id, "a", 5, 0);
        let b = custom_role(guild_id, "b", 6, 0);
        for role in [&a, &b] {
            store
                .create_role(role.clone(), 64, Vec::new())
                .await
                .unwrap();
        }
        assert!(
            store
                .reorder_roles(guild_id, &[a.role_id, b.role_id], Vec::new())
                .await
                .unwrap()
        );
        let position = |id| {
            let store = Arc::clone(&store);
            async move { store.role(guild_id, id).await.unwrap().unwrap().position }
        };
        assert_eq!(
            (position(a.role_id).await, position(b.role_id).await),
            (2, 1)
        );
        // One unknown id changes nothing.
        assert!(
            !store
                .reorder_roles(guild_id, &[b.role_id, new_id()], Vec::new())
                .await
                .unwrap()
        );
        assert_eq!(
            (position(a.role_id).await, position(b.role_id).await),
            (2, 1)
        );
    }

    async fn assignments_are_capped_and_rederive_the_legacy_role(store: Arc<dyn Store>) {
        let (guild_id, _) = guild(&*store).await;
        let user_id = member(&*store, guild_id).await;
        let moderator = builtin(&*store, guild_id, BuiltinRole::Moderator).await;
        let member_role = builtin(&*store, guild_id, BuiltinRole::Member).await;

        assert_eq!(
            store
                .assign_role(guild_id, user_id, moderator.role_id, NOW, 2, Vec::new())
                .await
                .unwrap(),
            AssignOutcome::Assigned {
                legacy_role: Some(MemberRole::Moderator)
            }
        );
        assert_eq!(
            legacy(&*store, guild_id, user_id).await,
            MemberRole::Moderator
        );
        assert_eq!(
            store
                .assign_role(guild_id, user_id, moderator.role_id, NOW, 2, Vec::new())
                .await
                .unwrap(),
            AssignOutcome::AlreadyAssigned
        );
        // Being given `member` never lowers a moderator.
        assert_eq!(
            store
                .assign_role(guild_id, user_id, member_role.role_id, NOW, 2, Vec::new())
                .await
                .unwrap(),
            AssignOutcome::Assigned { legacy_role: None }
        );
        let extra = custom_role(guild_id, "extra", 5, 0);
        store
            .create_role(extra.clone(), 64, Vec::new())
            .await
            .unwrap();
        assert_eq!(
            store
                .assign_role(guild_id, user_id, extra.role_id, NOW, 2, Vec::new())
                .await
                .unwrap(),
            AssignOutcome::QuotaExceeded
        );
        assert_eq!(
            store
                .assign_role(guild_id, new_id(), extra.role_id, NOW, 2, Vec::new())
                .await
                .unwrap(),
            AssignOutcome::NotMember
        );
        assert_eq!(
            store
                .assign_role(guild_id, user_id, new_id(), NOW, 2, Vec::new())
                .await
                .unwrap(),
            AssignOutcome::RoleNotFound
        );

        assert_eq!(
            store
                .unassign_role(guild_id, user_id, moderator.role_id, Vec::new())
                .await
                .unwrap(),
            UnassignOutcome::Removed {
                legacy_role: Some(MemberRole::Member)
            }
        );
        assert_eq!(legacy(&*store, guild_id, user_id).await, MemberRole::Member);
        assert_eq!(
            store
                .unassign_role(guild_id, user_id, extra.role_id, Vec::new())
                .await
                .unwrap(),
            UnassignOutcome::NotAssigned
        );
        assert_eq!(
            store.assigned_role_ids(guild_id, user_id).await.unwrap(),
            [member_role.role_id]
        );
        // The implied role can be "removed" too; the legacy role stays what
        // the remaining assignments say.
        assert_eq!(
            store
                .unassign_role(guild_id, user_id, member_role.role_id, Vec::new())
                .await
                .unwrap(),
            UnassignOutcome::Removed { legacy_role: None }
        );
        assert!(
            store
                .assigned_role_ids(guild_id, user_id)
                .await
                .unwrap()
                .is_empty()
        );
    }

    async fn the_last_workspace_owner_cannot_be_removed(store: Arc<dyn Store>) {
        let (guild_id, owner) = guild(&*store).await;
        let other = member(&*store, guild_id).await;
        let owner_role = builtin(&*store, guild_id, BuiltinRole::WorkspaceOwner).await;
        assert_eq!(
            store
                .unassign_role(guild_id, owner, owner_role.role_id, Vec::new())
                .await
                .unwrap(),
            UnassignOutcome::LastWorkspaceOwner
        );
        assert_eq!(legacy(&*store, guild_id, owner).await, MemberRole::Owner);

        assert_eq!(
            store
                .assign_role(guild_id, other, owner_role.role_id, NOW, 16, Vec::new())
                .await
                .unwrap(),
            AssignOutcome::Assigned {
                legacy_role: Some(MemberRole::Owner)
            }
        );
        assert_eq!(
            store
                .unassign_role(guild_id, owner, owner_role.role_id, Vec::new())
                .await
                .unwrap(),
            UnassignOutcome::Removed {
                legacy_role: Some(MemberRole::Member)
            }
        );
        assert_eq!(
            store
                .unassign_role(guild_id, other, owner_role.role_id, Vec::new())
                .await
                .unwrap(),
            UnassignOutcome::LastWorkspaceOwner
        );
    }

    async fn set_legacy_role_swaps_the_builtin_assignment(store: Arc<dyn Store>) {
        let (guild_id, _) = guild(&*store).await;
        let user_id = member(&*store, guild_id).await;
        let moderator = builtin(&*store, guild_id, BuiltinRole::Moderator).await;
        let member_role = builtin(&*store, guild_id, BuiltinRole::Member).await;
        assert!(
            store
                .set_legacy_role(guild_id, user_id, MemberRole::Moderator, NOW, Vec::new())
                .await
                .unwrap()
        );
        assert_eq!(
            legacy(&*store, guild_id, user_id).await,
            MemberRole::Moderator
        );
        assert_eq!(
            store.assigned_role_ids(guild_id, user_id).await.unwrap(),
            [moderator.role_id]
        );
        assert!(
            store
                .set_legacy_role(guild_id, user_id, MemberRole::Member, NOW, Vec::new())
                .await
                .unwrap()
        );
        assert_eq!(
            store.assigned_role_ids(guild_id, user_id).await.unwrap(),
            [member_role.role_id]
        );
        assert!(
            !store
                .set_legacy_role(guild_id, new_id(), MemberRole::Member, NOW, Vec::new())
                .await
                .unwrap()
        );
    }

    async fn members_with_permission_follow_roles(store: Arc<dyn Store>) {
        let (guild_id, owner) = guild(&*store).await;
        let plain = member(&*store, guild_id).await;
        let helper = member(&*store, guild_id).await;
        let auditors = custom_role(guild_id, "auditors", 5, 64);
        store
            .create_role(auditors.clone(), 64, Vec::new())
            .await
            .unwrap();
        store
            .assign_role(guild_id, helper, auditors.role_id, NOW, 16, Vec::new())
            .await
            .unwrap();
        let holders = |mask| {
            let store = Arc::clone(&store);
            async move {
                store
                    .members_with_permission_bits(guild_id, mask, None, 100)
                    .await
                    .unwrap()
            }
        };
        let mut expected = vec![owner, helper];
        expected.sort();
        assert_eq!(holders(64).await, expected);
        // @everyone grants create_message to all.
        let mut everyone = vec![owner, plain, helper];
        everyone.sort();
        assert_eq!(holders(256).await, everyone);
        // Pages continue after the cursor.
        let page = store
            .members_with_permission_bits(guild_id, 256, Some(everyone[0]), 1)
            .await
            .unwrap();
        assert_eq!(page, [everyone[1]]);
        // The owner keeps every bit even if workspace_owner's mask is emptied.
        let owner_role = builtin(&*store, guild_id, BuiltinRole::WorkspaceOwner).await;
        store
            .update_role(
                guild_id,
                owner_role.role_id,
                RoleChanges {
                    permissions: Some(0),
                    ..RoleChanges::default()
                },
                Vec::new(),
            )
            .await
            .unwrap();
        assert_eq!(holders(1).await, [owner]);
    }

    async fn overrides_upsert_filter_and_go_with_their_channel_or_role(store: Arc<dyn Store>) {
        let (guild_id, _) = guild(&*store).await;
        let (alice, bob) = (
            member(&*store, guild_id).await,
            member(&*store, guild_id).await,
        );
        let (first, second) = (
            channel(&*store, guild_id).await,
            channel(&*store, guild_id).await,
        );
        let everyone = builtin(&*store, guild_id, BuiltinRole::Everyone).await;
        let entry = |channel_id, target, allow, deny| OverrideRecord {
            guild_id,
            channel_id,
            target,
            allow,
            deny,
        };
        let role_override = entry(first, OverrideTarget::Role(everyone.role_id), 0, 256);
        store
            .upsert_override(role_override.clone(), Vec::new())
            .await
            .unwrap();
        let replaced = entry(first, OverrideTarget::Role(everyone.role_id), 512, 256);
        store
            .upsert_override(replaced.clone(), Vec::new())
            .await
            .unwrap();
        let alice_second = entry(second, OverrideTarget::Member(alice), 256, 0);
        store
            .upsert_override(alice_second.clone(), Vec::new())
            .await
            .unwrap();

        assert_eq!(
            store
                .overrides_for(guild_id, Some(first), alice)
                .await
                .unwrap(),
            std::slice::from_ref(&replaced)
        );
        let mut all = store.overrides_for(guild_id, None, alice).await.unwrap();
        all.sort_by_key(|o| o.channel_id);
        // Two channels made in one millisecond have no defined id order.
        let mut expected = [replaced.clone(), alice_second.clone()];
        expected.sort_by_key(|o| o.channel_id);
        assert_eq!(all, expected);
        // Bob never sees Alice's member override.
        assert_eq!(
            store.overrides_for(guild_id, None, bob).await.unwrap(),
            [replaced]
        );
        // Empty masks remove the row.
        store
            .upsert_override(
                entry(second, OverrideTarget::Member(alice), 0, 0),
                Vec::new(),
            )
            .await
            .unwrap();
        assert!(
            store
                .overrides_for(guild_id, Some(second), alice)
                .await
                .unwrap()
                .is_empty()
        );
        assert!(
            store
                .delete_channel(guild_id, first, Vec::new())
                .await
                .unwrap()
        );
        assert!(
            !store
                .delete_channel(guild_id, first, Vec::new())
                .await
                .unwrap()
        );
        assert!(
            store
                .overrides_for(guild_id, None, alice)
                .await
                .unwrap()
                .is_empty()
        );
        assert_eq!(store.channel(guild_id, first).await.unwrap(), None);
    }

    /// Removing a membership (kick, ban) drops its assignments: other areas
    /// rely on this cascade. Checked with raw SQL because the member removal
    /// route belongs to another area.
    #[tokio::test]
    async fn removing_a_membership_drops_its_assignments_on_sqlite() {
        let store = crate::store::SqliteStore::in_memory().await.unwrap();
        let (guild_id, owner) = guild(&store).await;
        assert!(
            !store
                .assigned_role_ids(guild_id, owner)
                .await
                .unwrap()
                .is_empty()
        );
        sqlx::query("DELETE FROM guild_members WHERE guild_id = $1 AND user_id = $2")
            .bind(guild_id.to_string())
            .bind(owner.to_string())
            .execute(&store.pool)
            .await
            .unwrap();
        assert!(
            store
                .assigned_role_ids(guild_id, owner)
                .await
                .unwrap()
                .is_empty()
        );
    }

    #[tokio::test]
    async fn removing_a_membership_drops_its_assignments_on_postgres() {
        let Some(url) = std::env::var("TEST_DATABASE_URL")
            .ok()
            .filter(|u| !u.is_empty())
        else {
            eprintln!("SKIPPED: TEST_DATABASE_URL is unset; Postgres cascade not checked");
            return;
        };
        let schema = format!("test_{}", Ulid::generate().to_string().to_lowercase());
        let store = crate::store::PostgresStore::connect_in_schema(&url, &schema)
            .await
            .unwrap();
        let (guild_id, owner) = guild(&store).await;
        assert!(
            !store
                .assigned_role_ids(guild_id, owner)
                .await
                .unwrap()
                .is_empty()
        );
        sqlx::query("DELETE FROM guild_members WHERE guild_id = $1 AND user_id = $2")
            .bind(guild_id.to_string())
            .bind(owner.to_string())
            .execute(&store.pool)
            .await
            .unwrap();
        let remaining = store.assigned_role_ids(guild_id, owner).await.unwrap();
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP SCHEMA \"{schema}\" CASCADE"
        )))
        .execute(&store.pool)
        .await
        .unwrap();
        store.close().await;
        assert!(remaining.is_empty());
    }
}
