//! The permission model of the contract (§4): twelve bits, the built-in
//! roles, and who may do what in a guild or channel.
//!
//! Every check goes through [`Authorizer`], so REST handlers and the gateway's
//! subscribe check (over gRPC) can never disagree.

use std::sync::Arc;

use ulid::Ulid;

use crate::error::{ApiError, ApiResult};
use crate::store::{ChannelRecord, MemberRole, Store};

/// One permission bit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Permission {
    ManageRoles = 0,
    ManageMemberRoles = 1,
    ManageWorkspaceRoles = 2,
    ManageChannelOverrides = 3,
    DeleteMessage = 4,
    BanMember = 5,
    ViewAuditLog = 6,
    ManageIpBans = 7,
    /// Doubles as the right to view a channel.
    CreateMessage = 8,
    PublishVideo = 9,
    PublishScreenShare = 10,
    SubscribeStreams = 11,
}

impl Permission {
    pub const ALL: [Self; 12] = [
        Self::ManageRoles,
        Self::ManageMemberRoles,
        Self::ManageWorkspaceRoles,
        Self::ManageChannelOverrides,
        Self::DeleteMessage,
        Self::BanMember,
        Self::ViewAuditLog,
        Self::ManageIpBans,
        Self::CreateMessage,
        Self::PublishVideo,
        Self::PublishScreenShare,
        Self::SubscribeStreams,
    ];

    pub fn bit(self) -> u64 {
        1 << (self as u64)
    }
}

/// A set of permission bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Permissions(u64);

impl Permissions {
    pub const EVERYONE: Self = Self(2304);
    pub const MODERATOR: Self = Self(4090);
    pub const ALL: Self = Self(4095);

    pub fn contains(self, permission: Permission) -> bool {
        self.0 & permission.bit() != 0
    }

    pub fn bits(self) -> u64 {
        self.0
    }

    /// The permissions a built-in membership role grants in a guild.
    pub fn of_role(role: MemberRole) -> Self {
        match role {
            MemberRole::Owner => Self::ALL,
            MemberRole::Moderator => Self::MODERATOR,
            MemberRole::Member => Self::EVERYONE,
        }
    }
}

/// What one user may do in one guild.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuildAccess {
    pub user_id: Ulid,
    pub guild_id: Ulid,
    /// The membership role; `Owner` for the server owner.
    pub role: MemberRole,
    pub permissions: Permissions,
}

impl GuildAccess {
    pub fn require(&self, permission: Permission) -> ApiResult<()> {
        if self.permissions.contains(permission) {
            Ok(())
        } else {
            Err(ApiError::Forbidden)
        }
    }
}

/// Answers permission questions from the store.
#[derive(Clone)]
pub struct Authorizer {
    store: Arc<dyn Store>,
    server_owner: Option<Ulid>,
}

impl Authorizer {
    pub fn new(store: Arc<dyn Store>, server_owner: Option<Ulid>) -> Self {
        Self {
            store,
            server_owner,
        }
    }

    /// The user's access to the guild; `Forbidden` for non-members (and for
    /// unknown guilds, so guild ids cannot be probed).
    pub async fn guild(&self, guild_id: Ulid, user_id: Ulid) -> ApiResult<GuildAccess> {
        if self.server_owner == Some(user_id) {
            if self.store.guild(guild_id).await?.is_none() {
                return Err(ApiError::NotFound);
            }
            return Ok(GuildAccess {
                user_id,
                guild_id,
                role: MemberRole::Owner,
                permissions: Permissions::ALL,
            });
        }
        let member = self
            .store
            .member(guild_id, user_id)
            .await?
            .ok_or(ApiError::Forbidden)?;
        Ok(GuildAccess {
            user_id,
            guild_id,
            role: member.role,
            permissions: Permissions::of_role(member.role),
        })
    }

    /// The user's access to a channel, which must exist in the guild
    /// (`NotFound` otherwise) and be visible to the user (`Forbidden`).
    pub async fn channel(
        &self,
        guild_id: Ulid,
        channel_id: Ulid,
        user_id: Ulid,
    ) -> ApiResult<(GuildAccess, ChannelRecord)> {
        let access = self.guild(guild_id, user_id).await?;
        let channel = self
            .store
            .channel(guild_id, channel_id)
            .await?
            .ok_or(ApiError::NotFound)?;
        access.require(Permission::CreateMessage)?;
        Ok((access, channel))
    }

    /// Members of the guild who hold `permission` at guild level (plus the
    /// server owner), for events only they may see.
    pub async fn members_with_permission(
        &self,
        guild_id: Ulid,
        permission: Permission,
    ) -> ApiResult<Vec<Ulid>> {
        const PAGE: u32 = 1000;
        let mut holders: Vec<Ulid> = self.server_owner.into_iter().collect();
        let mut after = None;
        loop {
            let page = self.store.members(guild_id, after, PAGE).await?;
            holders.extend(
                page.iter()
                    .filter(|m| Permissions::of_role(m.role).contains(permission))
                    .map(|m| m.user_id),
            );
            match page.last() {
                Some(last) if page.len() == PAGE as usize => after = Some(last.user_id),
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
        guild_id: Ulid,
        channel_id: Ulid,
        user_id: Ulid,
    ) -> ApiResult<bool> {
        match self.channel(guild_id, channel_id, user_id).await {
            Ok(_) => Ok(true),
            Err(ApiError::Forbidden | ApiError::NotFound) => Ok(false),
            Err(err) => Err(err),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_match_the_contract() {
        let count = |set: Permissions| Permission::ALL.iter().filter(|p| set.contains(**p)).count();
        assert_eq!(count(Permissions::ALL), 12);
        assert_eq!(
            Permissions::EVERYONE.bits(),
            Permission::CreateMessage.bit() | Permission::SubscribeStreams.bit()
        );
        assert!(!Permissions::MODERATOR.contains(Permission::ManageRoles));
        assert!(!Permissions::MODERATOR.contains(Permission::ManageWorkspaceRoles));
        assert!(Permissions::MODERATOR.contains(Permission::ManageChannelOverrides));
        assert_eq!(count(Permissions::MODERATOR), 10);
    }
}
