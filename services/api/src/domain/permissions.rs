//! The permission model (PROTOCOL.md §3): twelve bits, the roles that
//! grant them, the channel overrides that adjust them, and so who may do what
//! in a guild or channel.
//!
//! Every check goes through [`Authorizer`], so REST handlers and the gateway's
//! subscribe check (over gRPC) can never disagree. It reads the membership,
//! roles, assignments, channel and overrides fresh from the store on every
//! question, in one round trip (`RoleStore::access_facts`): a change
//! applies to the very next request, on every backend.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use filament_ids::{ChannelId, GuildId, RoleId, UserId};

use crate::error::{ApiError, ApiResult};
use crate::store::{
    AccessFacts, BuiltinRole, ChannelRecord, MemberRole, OverrideRecord, OverrideTarget,
    RoleRecord, Store, WORKSPACE_OWNER_POSITION,
};

/// One permission bit: the wire's enum, declared once in bit order
/// (PROTOCOL.md §3.1). `create_message` doubles as the right to view a
/// channel.
pub use filament_wire::Permission;

/// Parses a list of wire permission names, keeping the first occurrence of
/// each in request order. Any unknown name is a 400.
pub fn parse_permissions(names: &[String]) -> ApiResult<Vec<Permission>> {
    let mut parsed = Vec::with_capacity(names.len());
    for name in names {
        let permission = Permission::from_name(name).ok_or(ApiError::InvalidRequest)?;
        if !parsed.contains(&permission) {
            parsed.push(permission);
        }
    }
    Ok(parsed)
}

/// A set of permission bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Permissions(u64);

impl Permissions {
    pub const NONE: Self = Self(0);
    pub const EVERYONE: Self = Self(2304);
    pub const MEMBER: Self = Self(2304);
    pub const MODERATOR: Self = Self(4090);
    pub const ALL: Self = Self(4095);

    pub fn contains(self, permission: Permission) -> bool {
        self.0 & permission.mask() != 0
    }

    pub fn bits(self) -> u64 {
        self.0
    }

    /// A stored mask with any bit this build does not know dropped.
    pub fn from_stored(raw: u64) -> Self {
        Self(raw & Self::ALL.0)
    }

    /// The bits of a stored mask that [`Permissions::from_stored`] drops.
    pub fn unknown_bits(raw: u64) -> u64 {
        raw & !Self::ALL.0
    }

    pub fn union(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }

    pub fn intersects(self, other: Self) -> bool {
        self.0 & other.0 != 0
    }

    /// One override layer (PROTOCOL.md §3.4 step 5): allow bits that the layer
    /// also denies are dropped, then the denies are cleared, then the allows
    /// set.
    pub fn apply_override(self, allow: Self, deny: Self) -> Self {
        let allow = allow.0 & !deny.0;
        Self((self.0 & !deny.0) | allow)
    }

    /// The permissions in bit order.
    pub fn iter(self) -> impl Iterator<Item = Permission> {
        Permission::ALL
            .into_iter()
            .filter(move |p| self.contains(*p))
    }

    pub fn to_wire(self) -> Vec<Permission> {
        self.iter().collect()
    }

    pub fn to_proto(self) -> Vec<i32> {
        self.iter().map(Permission::proto).collect()
    }

    /// The default permissions of a built-in membership role's role.
    pub fn of_role(role: MemberRole) -> Self {
        match role {
            MemberRole::Owner => Self::ALL,
            MemberRole::Moderator => Self::MODERATOR,
            MemberRole::Member => Self::MEMBER,
        }
    }
}

impl FromIterator<Permission> for Permissions {
    fn from_iter<I: IntoIterator<Item = Permission>>(iter: I) -> Self {
        Self(iter.into_iter().fold(0, |bits, p| bits | p.mask()))
    }
}

/// What one user may do in one guild, or in one channel when it comes from
/// [`Authorizer::channel`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuildAccess {
    pub user_id: UserId,
    pub guild_id: GuildId,
    /// The legacy membership role; `Owner` for the server owner.
    pub role: MemberRole,
    pub permissions: Permissions,
    /// The highest position among the user's roles, for the hierarchy rules.
    pub highest_position: i64,
    /// Holds `workspace_owner` (explicitly or as a legacy owner).
    pub workspace_owner: bool,
    /// The server owner (`FILAMENT_SERVER_OWNER_USER_ID`).
    pub server_owner: bool,
}

impl GuildAccess {
    pub fn require(&self, permission: Permission) -> ApiResult<()> {
        if self.permissions.contains(permission) {
            Ok(())
        } else {
            Err(ApiError::Forbidden)
        }
    }

    /// Whether the user may edit, delete or reorder this role
    /// (PROTOCOL.md §3.5): the server owner any role; nobody else the system
    /// roles; workspace owners every other role; everyone else only roles
    /// below their highest.
    pub fn can_manage_role(&self, role: &RoleRecord) -> bool {
        if self.server_owner {
            return true;
        }
        if role.is_system() {
            return false;
        }
        self.workspace_owner || role.position < self.highest_position
    }

    /// Whether a role at `position` is below the user, or the user is above
    /// the hierarchy (a workspace or server owner).
    pub fn outranks(&self, position: i64) -> bool {
        self.server_owner || self.workspace_owner || position < self.highest_position
    }

    /// Whether the user may take a role away from `target`: the kick and
    /// ban rule (PROTOCOL.md §2.6: owners are never removed, and the actor
    /// outranks the target) in the role hierarchy of PROTOCOL.md §3.5. The server
    /// owner may (it alone manages `workspace_owner`); nobody else may
    /// touch a workspace owner; a workspace owner outranks everyone else;
    /// anyone else only members whose highest role is below their own. For
    /// members holding only the built-in roles this is the legacy rank.
    pub fn outranks_member(&self, target: &GuildAccess) -> bool {
        if self.server_owner {
            return true;
        }
        if target.server_owner || target.workspace_owner {
            return false;
        }
        self.workspace_owner || target.highest_position < self.highest_position
    }

    /// The legacy owner rule of the legacy override route.
    pub fn is_legacy_owner(&self) -> bool {
        self.server_owner || self.role == MemberRole::Owner
    }
}

/// Answers permission questions from the store.
#[derive(Clone)]
pub struct Authorizer {
    store: Arc<dyn Store>,
    server_owner: Option<UserId>,
}

/// A member's roles in one guild, ready to evaluate channels against.
struct Standing {
    access: GuildAccess,
    everyone_role: Option<RoleId>,
    /// Explicit assignments plus the built-in role of the legacy role.
    assigned: HashSet<RoleId>,
}

impl Standing {
    /// Channel-level permissions (PROTOCOL.md §3.4 step 5) from the guild
    /// permissions and the overrides that may apply to this user.
    fn channel_permissions<'a>(
        &self,
        overrides: impl Iterator<Item = &'a OverrideRecord>,
    ) -> Permissions {
        if self.access.server_owner || self.access.workspace_owner {
            return Permissions::ALL;
        }
        let mut everyone = None;
        let (mut role_allow, mut role_deny) = (Permissions::NONE, Permissions::NONE);
        let mut member = None;
        for entry in overrides {
            let allow = stored(entry.allow);
            let deny = stored(entry.deny);
            match entry.target {
                OverrideTarget::Role(id) if Some(id) == self.everyone_role => {
                    everyone = Some((allow, deny));
                }
                OverrideTarget::Role(id) if self.assigned.contains(&id) => {
                    role_allow = role_allow.union(allow);
                    role_deny = role_deny.union(deny);
                }
                OverrideTarget::Member(id) if id == self.access.user_id => {
                    member = Some((allow, deny));
                }
                OverrideTarget::Role(_) | OverrideTarget::Member(_) => {}
            }
        }
        let mut bits = self.access.permissions;
        if let Some((allow, deny)) = everyone {
            bits = bits.apply_override(allow, deny);
        }
        bits = bits.apply_override(role_allow, role_deny);
        if let Some((allow, deny)) = member {
            bits = bits.apply_override(allow, deny);
        }
        bits
    }
}

/// A stored mask, with unknown bits dropped (and noted in the log).
fn stored(raw: u64) -> Permissions {
    let unknown = Permissions::unknown_bits(raw);
    if unknown != 0 {
        tracing::warn!(unknown, "stored permission mask has unknown bits; masked");
    }
    Permissions::from_stored(raw)
}

impl Authorizer {
    pub fn new(store: Arc<dyn Store>, server_owner: Option<UserId>) -> Self {
        Self {
            store,
            server_owner,
        }
    }

    /// The user's guild-level access; `Forbidden` for non-members (and for
    /// unknown guilds, so guild ids cannot be probed).
    pub async fn guild(&self, guild_id: GuildId, user_id: UserId) -> ApiResult<GuildAccess> {
        Ok(self.standing(guild_id, user_id, None).await?.0.access)
    }

    /// The user's access to a channel, which must exist in the guild
    /// (`NotFound` otherwise) and be visible to the user (`Forbidden`). The
    /// returned permissions are the channel-level ones.
    pub async fn channel(
        &self,
        guild_id: GuildId,
        channel_id: ChannelId,
        user_id: UserId,
    ) -> ApiResult<(GuildAccess, ChannelRecord)> {
        let (standing, facts) = self.standing(guild_id, user_id, Some(channel_id)).await?;
        let channel = facts.channel.ok_or(ApiError::NotFound)?;
        let permissions = standing.channel_permissions(facts.overrides.iter());
        let access = GuildAccess {
            permissions,
            ..standing.access
        };
        access.require(Permission::CreateMessage)?;
        Ok((access, channel))
    }

    /// [`Authorizer::channel`], and then `permission` at channel level
    /// (`Forbidden` without it).
    pub async fn require_in_channel(
        &self,
        guild_id: GuildId,
        channel_id: ChannelId,
        user_id: UserId,
        permission: Permission,
    ) -> ApiResult<()> {
        let (access, _) = self.channel(guild_id, channel_id, user_id).await?;
        access.require(permission)
    }

    /// The guild's channels the user can view (channel-level
    /// `create_message`), in creation order, from the first `limit`.
    pub async fn visible_channels(
        &self,
        guild_id: GuildId,
        user_id: UserId,
        limit: u32,
    ) -> ApiResult<Vec<ChannelRecord>> {
        let (standing, _) = self.standing(guild_id, user_id, None).await?;
        let channels = self.store.channels(guild_id, limit).await?;
        let overrides = self.store.overrides_for(guild_id, None, user_id).await?;
        let mut by_channel: HashMap<ChannelId, Vec<&OverrideRecord>> = HashMap::new();
        for entry in &overrides {
            by_channel.entry(entry.channel_id).or_default().push(entry);
        }
        Ok(channels
            .into_iter()
            .filter(|channel| {
                let entries = by_channel.get(&channel.channel_id);
                standing
                    .channel_permissions(entries.into_iter().flatten().copied())
                    .contains(Permission::CreateMessage)
            })
            .collect())
    }

    /// Members of the guild who hold `permission` at guild level (plus the
    /// server owner), for events only they may see. Read a page at a time.
    pub async fn members_with_permission(
        &self,
        guild_id: GuildId,
        permission: Permission,
    ) -> ApiResult<Vec<UserId>> {
        const PAGE: u32 = 1000;
        let mut holders: Vec<UserId> = self.server_owner.into_iter().collect();
        let mut after = None;
        loop {
            let page = self
                .store
                .members_with_permission_bits(guild_id, permission.mask(), after, PAGE)
                .await?;
            holders.extend(&page);
            match page.last() {
                Some(last) if page.len() == PAGE as usize => after = Some(*last),
                _ => break,
            }
        }
        holders.sort_unstable();
        holders.dedup();
        Ok(holders)
    }

    /// Whether the user may view (and so subscribe to) the channel. Any
    /// failure to decide is an error, never a yes.
    pub async fn can_view_channel(
        &self,
        guild_id: GuildId,
        channel_id: ChannelId,
        user_id: UserId,
    ) -> ApiResult<bool> {
        match self.channel(guild_id, channel_id, user_id).await {
            Ok(_) => Ok(true),
            Err(ApiError::Forbidden | ApiError::NotFound) => Ok(false),
            Err(err) => Err(err),
        }
    }

    /// PROTOCOL.md §3.4 steps 1–4, from one read of the store
    /// ([`RoleStore::access_facts`]), which also brings the channel and the
    /// overrides that may apply when `channel_id` is given: those come back
    /// in the facts (the membership, roles and assignments went into the
    /// standing). Nothing is kept between questions.
    ///
    /// [`RoleStore::access_facts`]: crate::store::RoleStore::access_facts
    async fn standing(
        &self,
        guild_id: GuildId,
        user_id: UserId,
        channel_id: Option<ChannelId>,
    ) -> ApiResult<(Standing, AccessFacts)> {
        if self.server_owner == Some(user_id) {
            if self.store.guild(guild_id).await?.is_none() {
                return Err(ApiError::NotFound);
            }
            // Above every override: only the channel's existence matters.
            let channel = match channel_id {
                Some(channel_id) => self.store.channel(guild_id, channel_id).await?,
                None => None,
            };
            let facts = AccessFacts {
                channel,
                ..AccessFacts::default()
            };
            let standing = Standing {
                access: GuildAccess {
                    user_id,
                    guild_id,
                    role: MemberRole::Owner,
                    permissions: Permissions::ALL,
                    highest_position: WORKSPACE_OWNER_POSITION,
                    workspace_owner: true,
                    server_owner: true,
                },
                everyone_role: None,
                assigned: HashSet::new(),
            };
            return Ok((standing, facts));
        }
        let mut facts = self
            .store
            .access_facts(guild_id, user_id, channel_id)
            .await?;
        let member = facts.member.take().ok_or(ApiError::Forbidden)?;
        let roles = std::mem::take(&mut facts.roles);
        let explicit = std::mem::take(&mut facts.assigned_role_ids);
        let implied = BuiltinRole::of_member_role(member.role);
        let mut standing = Standing {
            access: GuildAccess {
                user_id,
                guild_id,
                role: member.role,
                permissions: Permissions::NONE,
                highest_position: 0,
                workspace_owner: false,
                server_owner: false,
            },
            everyone_role: None,
            assigned: HashSet::new(),
        };
        let access = &mut standing.access;
        for role in &roles {
            if role.builtin == Some(BuiltinRole::Everyone) {
                standing.everyone_role = Some(role.role_id);
                access.permissions = access.permissions.union(stored(role.permissions));
                continue;
            }
            if !(explicit.contains(&role.role_id) || role.builtin == Some(implied)) {
                continue;
            }
            standing.assigned.insert(role.role_id);
            access.permissions = access.permissions.union(stored(role.permissions));
            access.highest_position = access.highest_position.max(role.position);
            access.workspace_owner |= role.builtin == Some(BuiltinRole::WorkspaceOwner);
        }
        if access.workspace_owner {
            access.permissions = Permissions::ALL;
        }
        Ok((standing, facts))
    }
}

#[cfg(test)]
mod tests {
    use filament_proto::v1 as pb;

    use super::*;

    /// Someone holding roles up to `highest`, possibly an owner.
    fn standing(highest: i64, workspace_owner: bool, server_owner: bool) -> GuildAccess {
        GuildAccess {
            user_id: UserId::generate(),
            guild_id: GuildId::generate(),
            role: MemberRole::Member,
            permissions: Permissions::NONE,
            highest_position: highest,
            workspace_owner,
            server_owner,
        }
    }

    #[test]
    fn taking_roles_follows_the_kick_and_ban_rule() {
        let server_owner = standing(WORKSPACE_OWNER_POSITION, true, true);
        let owner = standing(WORKSPACE_OWNER_POSITION, true, false);
        let moderator = standing(100, false, false);
        let senior = standing(200, false, false);
        let member = standing(1, false, false);
        // Owners are never acted on, but by the server owner.
        assert!(server_owner.outranks_member(&owner));
        assert!(!owner.outranks_member(&standing(WORKSPACE_OWNER_POSITION, true, false)));
        assert!(!senior.outranks_member(&owner));
        assert!(!owner.outranks_member(&server_owner));
        // Everyone else must be strictly below the actor.
        assert!(owner.outranks_member(&senior));
        assert!(senior.outranks_member(&moderator));
        assert!(moderator.outranks_member(&member));
        assert!(!moderator.outranks_member(&standing(100, false, false)));
        assert!(!moderator.outranks_member(&senior));
        assert!(!member.outranks_member(&standing(1, false, false)));
    }

    #[test]
    fn masks_match_the_contract() {
        let count = |set: Permissions| Permission::ALL.iter().filter(|p| set.contains(**p)).count();
        assert_eq!(count(Permissions::ALL), 12);
        assert_eq!(
            Permissions::EVERYONE.bits(),
            Permission::CreateMessage.mask() | Permission::SubscribeStreams.mask()
        );
        assert!(!Permissions::MODERATOR.contains(Permission::ManageRoles));
        assert!(!Permissions::MODERATOR.contains(Permission::ManageWorkspaceRoles));
        assert!(Permissions::MODERATOR.contains(Permission::ManageChannelOverrides));
        assert_eq!(count(Permissions::MODERATOR), 10);
    }

    #[test]
    fn names_come_from_the_catalogue_and_match_the_wire() {
        for permission in Permission::ALL {
            let name = serde_json::to_value(permission).expect("serializes");
            let name = name.as_str().expect("a string");
            assert_eq!(Permission::from_name(name), Some(permission), "{name}");
            assert_eq!(
                pb::Permission::try_from(permission.proto()).map(|p| p.as_str_name()),
                Ok(format!("PERMISSION_{}", name.to_ascii_uppercase()).as_str())
            );
        }
        for bad in [
            "",
            "CREATE_MESSAGE",
            "Create_message",
            "unspecified",
            "admin",
        ] {
            assert_eq!(Permission::from_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn lists_keep_request_order_without_duplicates() {
        let names = ["subscribe_streams", "create_message", "subscribe_streams"];
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        assert_eq!(
            parse_permissions(&names).expect("valid"),
            [Permission::SubscribeStreams, Permission::CreateMessage]
        );
        assert!(parse_permissions(&["nope".to_owned()]).is_err());
    }

    #[test]
    fn an_override_layer_drops_allows_it_also_denies() {
        let base: Permissions = [Permission::CreateMessage, Permission::SubscribeStreams]
            .into_iter()
            .collect();
        let both: Permissions = [Permission::CreateMessage, Permission::PublishVideo]
            .into_iter()
            .collect();
        let deny: Permissions = [Permission::CreateMessage].into_iter().collect();
        let after = base.apply_override(both, deny);
        assert!(!after.contains(Permission::CreateMessage));
        assert!(after.contains(Permission::PublishVideo));
        assert!(after.contains(Permission::SubscribeStreams));
    }

    /// PROTOCOL.md §3.4 against a real store: layers, immunity, and that every answer
    /// reads the current data (a change applies to the next question).
    mod evaluation {
        use std::sync::Arc;

        use super::*;
        use crate::store::tests::new_user;
        use crate::store::{
            ChannelKind, GuildRecord, MemberRecord, RoleChanges, SqliteStore, Visibility,
        };

        const NOW: i64 = 1_700_000_000;

        struct World {
            store: Arc<dyn Store>,
            guild: GuildId,
            owner: UserId,
            channel: ChannelId,
        }

        impl World {
            async fn new() -> Self {
                let store: Arc<dyn Store> = Arc::new(SqliteStore::in_memory().await.unwrap());
                let owner = new_user(&*store).await;
                let guild = GuildId::generate();
                store
                    .create_guild(
                        GuildRecord {
                            guild_id: guild,
                            name: "g".to_owned(),
                            visibility: Visibility::Private,
                            created_by: owner,
                            created_at_unix: NOW,
                        },
                        crate::domain::roles::builtin_masks(),
                    )
                    .await
                    .unwrap();
                let channel = ChannelId::generate();
                store
                    .create_channel(
                        ChannelRecord {
                            channel_id: channel,
                            guild_id: guild,
                            name: "c".to_owned(),
                            kind: ChannelKind::Text,
                            created_at_unix: NOW,
                        },
                        Vec::new(),
                    )
                    .await
                    .unwrap();
                Self {
                    store,
                    guild,
                    owner,
                    channel,
                }
            }

            async fn member(&self) -> UserId {
                let user_id = new_user(&*self.store).await;
                self.store
                    .add_member(MemberRecord {
                        guild_id: self.guild,
                        user_id,
                        role: MemberRole::Member,
                        joined_at_unix: NOW,
                    })
                    .await
                    .unwrap();
                user_id
            }

            async fn builtin(&self, which: BuiltinRole) -> RoleId {
                let roles = self.store.roles(self.guild).await.unwrap();
                roles
                    .iter()
                    .find(|r| r.builtin == Some(which))
                    .unwrap()
                    .role_id
            }

            async fn set_override(
                &self,
                target: OverrideTarget,
                allow: &[Permission],
                deny: &[Permission],
            ) {
                self.store
                    .upsert_override(
                        OverrideRecord {
                            guild_id: self.guild,
                            channel_id: self.channel,
                            target,
                            allow: allow.iter().copied().collect::<Permissions>().bits(),
                            deny: deny.iter().copied().collect::<Permissions>().bits(),
                        },
                        Vec::new(),
                    )
                    .await
                    .unwrap();
            }

            async fn can_view(&self, authorizer: &Authorizer, user_id: UserId) -> bool {
                authorizer
                    .can_view_channel(self.guild, self.channel, user_id)
                    .await
                    .unwrap()
            }
        }

        #[tokio::test]
        async fn layers_apply_in_order_and_owners_are_immune() {
            let world = World::new().await;
            let authorizer = Authorizer::new(Arc::clone(&world.store), None);
            let member = world.member().await;
            let everyone = world.builtin(BuiltinRole::Everyone).await;
            let member_role = world.builtin(BuiltinRole::Member).await;
            assert!(world.can_view(&authorizer, member).await);

            // (a) @everyone denies; the owner is immune.
            world
                .set_override(
                    OverrideTarget::Role(everyone),
                    &[],
                    &[Permission::CreateMessage],
                )
                .await;
            assert!(!world.can_view(&authorizer, member).await);
            assert!(world.can_view(&authorizer, world.owner).await);
            let (owner_access, _) = authorizer
                .channel(world.guild, world.channel, world.owner)
                .await
                .unwrap();
            assert_eq!(owner_access.permissions, Permissions::ALL);

            // (b) a role the member holds (here implied by the legacy role)
            // allows it back.
            world
                .set_override(
                    OverrideTarget::Role(member_role),
                    &[Permission::CreateMessage],
                    &[],
                )
                .await;
            assert!(world.can_view(&authorizer, member).await);

            // (c) the member's own override has the last word.
            world
                .set_override(
                    OverrideTarget::Member(member),
                    &[],
                    &[Permission::CreateMessage],
                )
                .await;
            assert!(!world.can_view(&authorizer, member).await);
            assert!(matches!(
                authorizer.channel(world.guild, world.channel, member).await,
                Err(ApiError::Forbidden)
            ));
            // Guild-level permissions ignore channel overrides.
            let access = authorizer.guild(world.guild, member).await.unwrap();
            assert!(access.permissions.contains(Permission::CreateMessage));
        }

        #[tokio::test]
        async fn merged_role_overrides_let_deny_win() {
            let world = World::new().await;
            let authorizer = Authorizer::new(Arc::clone(&world.store), None);
            let member = world.member().await;
            let member_role = world.builtin(BuiltinRole::Member).await;
            let moderator = world.builtin(BuiltinRole::Moderator).await;
            // An explicit `member` assignment, then `moderator` on top.
            world
                .store
                .set_legacy_role(world.guild, member, MemberRole::Member, NOW, Vec::new())
                .await
                .unwrap();
            world
                .store
                .assign_role(world.guild, member, moderator, NOW, 16, Vec::new())
                .await
                .unwrap();
            world
                .set_override(
                    OverrideTarget::Role(moderator),
                    &[Permission::CreateMessage],
                    &[],
                )
                .await;
            world
                .set_override(
                    OverrideTarget::Role(member_role),
                    &[],
                    &[Permission::CreateMessage],
                )
                .await;
            // Holds both member (explicitly) and moderator: the merged layer
            // allows and denies create_message, so the deny wins.
            assert!(!world.can_view(&authorizer, member).await);
        }

        #[tokio::test]
        async fn role_permission_changes_apply_to_the_next_question() {
            let world = World::new().await;
            let authorizer = Authorizer::new(Arc::clone(&world.store), None);
            let member = world.member().await;
            let everyone = world.builtin(BuiltinRole::Everyone).await;
            let member_role = world.builtin(BuiltinRole::Member).await;
            let strip = RoleChanges {
                permissions: Some(0),
                ..RoleChanges::default()
            };
            world
                .store
                .update_role(world.guild, everyone, strip.clone(), Vec::new())
                .await
                .unwrap();
            assert!(
                world.can_view(&authorizer, member).await,
                "member role still grants it"
            );
            world
                .store
                .update_role(world.guild, member_role, strip, Vec::new())
                .await
                .unwrap();
            assert!(!world.can_view(&authorizer, member).await);
            let listed = authorizer
                .visible_channels(world.guild, member, 500)
                .await
                .unwrap();
            assert!(listed.is_empty());
            assert_eq!(
                authorizer
                    .members_with_permission(world.guild, Permission::CreateMessage)
                    .await
                    .unwrap(),
                [world.owner]
            );
        }

        #[tokio::test]
        async fn the_server_owner_has_everything_everywhere() {
            let world = World::new().await;
            let stranger = new_user(&*world.store).await;
            let authorizer = Authorizer::new(Arc::clone(&world.store), Some(stranger));
            let access = authorizer.guild(world.guild, stranger).await.unwrap();
            assert_eq!(
                (access.role, access.permissions),
                (MemberRole::Owner, Permissions::ALL)
            );
            assert!(world.can_view(&authorizer, stranger).await);
            assert!(matches!(
                authorizer.guild(GuildId::generate(), stranger).await,
                Err(ApiError::NotFound)
            ));
            // Everyone else who is not a member is refused, known guild or not.
            let other = new_user(&*world.store).await;
            assert!(matches!(
                authorizer.guild(world.guild, other).await,
                Err(ApiError::Forbidden)
            ));
            assert!(matches!(
                authorizer
                    .channel(world.guild, ChannelId::generate(), world.owner)
                    .await,
                Err(ApiError::NotFound)
            ));
        }

        #[tokio::test]
        async fn hierarchy_follows_the_highest_role() {
            let world = World::new().await;
            let authorizer = Authorizer::new(Arc::clone(&world.store), None);
            let member = world.member().await;
            let moderator = world.builtin(BuiltinRole::Moderator).await;
            world
                .store
                .assign_role(world.guild, member, moderator, NOW, 16, Vec::new())
                .await
                .unwrap();
            let access = authorizer.guild(world.guild, member).await.unwrap();
            assert_eq!(
                (access.role, access.highest_position),
                (MemberRole::Moderator, 100)
            );
            assert!(access.outranks(99) && !access.outranks(100));
            let roles = world.store.roles(world.guild).await.unwrap();
            let manageable: Vec<_> = roles
                .iter()
                .filter(|r| access.can_manage_role(r))
                .map(|r| r.name.as_str())
                .collect();
            assert_eq!(manageable, ["member"]);
            let owner = authorizer.guild(world.guild, world.owner).await.unwrap();
            let manageable: Vec<_> = roles
                .iter()
                .filter(|r| owner.can_manage_role(r))
                .map(|r| r.name.as_str())
                .collect();
            assert_eq!(manageable, ["moderator", "member"]);
        }
    }

    #[test]
    fn unknown_stored_bits_are_masked() {
        let raw = (1 << 20) | Permission::CreateMessage.mask();
        assert_eq!(Permissions::unknown_bits(raw), 1 << 20);
        assert_eq!(
            Permissions::from_stored(raw).bits(),
            Permission::CreateMessage.mask()
        );
    }
}
