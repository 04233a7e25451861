//! Guild membership (PROTOCOL.md §2.6): the use cases behind the member
//! list, adding a member and changing a member's legacy role, the legacy
//! rule of that change, and the default join role every new member gets.
//!
//! The role change follows the legacy rules (owner > moderator > member):
//! the actor must outrank both the current and the new role, and neither
//! may be `owner`. A demotion can hide channels, so it revokes access
//! before the call returns, like every change that shrinks what someone
//! sees.

use std::collections::BTreeMap;

use filament_ids::{GuildId, RoleId, UserId};
use filament_proto::v1::{self as pb, event};

use crate::clock::now_unix;
use crate::domain::access;
use crate::domain::audit;
use crate::domain::permissions::Permission;
use crate::domain::roles::MAX_ASSIGNMENTS;
use crate::error::{ApiError, ApiResult};
use crate::outbox::Pending;
use crate::publish;
use crate::state::AppState;
use crate::store::{AddMemberOutcome, AssignOutcome, MemberRecord, MemberRole};

pub const MEMBER_LIST_DEFAULT_LIMIT: u32 = 50;
pub const MEMBER_LIST_MAX_LIMIT: u32 = 200;

/// Audit action of `PATCH /guilds/{g}/members/{u}`.
const MEMBER_ROLE_UPDATE: &str = "member.role.update";

/// A member with their explicit role assignments.
#[derive(Debug)]
pub struct ListedMember {
    pub user_id: UserId,
    /// Ascending, at most [`MAX_ASSIGNMENTS`].
    pub role_ids: Vec<RoleId>,
}

/// One page of the member list, by user id.
#[derive(Debug)]
pub struct MemberPage {
    pub members: Vec<ListedMember>,
    /// Where the next page starts; `None` on the last page.
    pub next_cursor: Option<UserId>,
}

/// Up to `limit` members of the guild after `cursor`, with their explicit
/// role assignments, for a viewer who is a member.
pub async fn list(
    state: &AppState,
    viewer: UserId,
    guild_id: GuildId,
    cursor: Option<UserId>,
    limit: u32,
) -> ApiResult<MemberPage> {
    state.authorizer().guild(guild_id, viewer).await?;
    // One more than asked says whether another page follows.
    let mut page = state.store().members(guild_id, cursor, limit + 1).await?;
    let more = page.len() > limit as usize;
    page.truncate(limit as usize);
    let mut roles: BTreeMap<UserId, Vec<RoleId>> = BTreeMap::new();
    if let (Some(first), Some(last)) = (page.first(), page.last()) {
        let assignments = state
            .store()
            .assignments_between(guild_id, first.user_id, last.user_id)
            .await?;
        // Sorted by user, then role: each list comes out sorted.
        for (user_id, role_id) in assignments {
            let ids = roles.entry(user_id).or_default();
            if ids.len() < MAX_ASSIGNMENTS as usize {
                ids.push(role_id);
            }
        }
    }
    let next_cursor = page.last().filter(|_| more).map(|last| last.user_id);
    Ok(MemberPage {
        members: page
            .into_iter()
            .map(|member| ListedMember {
                role_ids: roles.remove(&member.user_id).unwrap_or_default(),
                user_id: member.user_id,
            })
            .collect(),
        next_cursor,
    })
}

/// Adds `target` to the guild as `actor`, who holds `manage_member_roles`.
/// Idempotent; a banned user cannot be added (`ApiError::Forbidden`).
pub async fn add(
    state: &AppState,
    actor: UserId,
    guild_id: GuildId,
    target: UserId,
) -> ApiResult<()> {
    let access = state.authorizer().guild(guild_id, actor).await?;
    access.require(Permission::ManageMemberRoles)?;
    if state.store().user_by_id(target).await?.is_none() {
        return Err(ApiError::NotFound);
    }
    let now = now_unix();
    let member = MemberRecord {
        guild_id,
        user_id: target,
        role: MemberRole::Member,
        joined_at_unix: now,
    };
    let event = publish::member_add(
        &guild_id.to_string(),
        &target.to_string(),
        now,
        &actor.to_string(),
    );
    let added = Pending::new(state.publisher(), event);
    // The event is stored only with a membership that is new.
    let outcome = state
        .store()
        .add_member_unless_banned(member, vec![added.row()])
        .await?;
    match outcome {
        AddMemberOutcome::Banned => Err(ApiError::Forbidden),
        AddMemberOutcome::AlreadyMember => Ok(()),
        AddMemberOutcome::Added => {
            apply_default_join_role(state, guild_id, target, now).await;
            added.publish(state.publisher()).await;
            Ok(())
        }
    }
}

/// Moves `target` between `member` and `moderator` as `actor`, under the
/// legacy rules.
pub async fn update_role(
    state: &AppState,
    actor: UserId,
    guild_id: GuildId,
    target: UserId,
    new_role: MemberRole,
) -> ApiResult<()> {
    let access = state.authorizer().guild(guild_id, actor).await?;
    if access.role < MemberRole::Moderator {
        return Err(ApiError::Forbidden);
    }
    let current = state
        .store()
        .member(guild_id, target)
        .await?
        .ok_or(ApiError::NotFound)?
        .role;
    if !may_change_role(access.role, current, new_role) {
        return Err(ApiError::Forbidden);
    }
    let now = now_unix();
    let guild = guild_id.to_string();
    let event = publish::for_guild(
        &guild,
        event::Payload::WorkspaceMemberUpdate(pb::WorkspaceMemberUpdate {
            guild_id: guild.clone(),
            user_id: target.to_string(),
            updated_fields: Some(pb::MemberFields {
                role: legacy_role_proto(new_role).into(),
            }),
            updated_at_unix: now,
            actor_user_id: Some(actor.to_string()),
        }),
    );
    let updated = Pending::new(state.publisher(), event);
    // A moderator made member may no longer see moderator-only channels:
    // gateways drop them before this call returns.
    let revocation = (new_role < current)
        .then(|| access::AccessRevocation::new(state, guild_id, &[target], false));
    let mut outbox = vec![updated.row()];
    outbox.extend(revocation.as_ref().map(access::AccessRevocation::row));
    if !state
        .store()
        .set_legacy_role(guild_id, target, new_role, now, outbox)
        .await?
    {
        return Err(ApiError::NotFound);
    }
    updated.publish(state.publisher()).await;
    if let Some(revocation) = revocation {
        revocation.publish(state).await;
    }
    audit::record(state, guild_id, actor, Some(target), MEMBER_ROLE_UPDATE).await;
    Ok(())
}

/// The legacy rule of a role change: the actor outranks both roles, and
/// nobody is made or unmade `owner` this way.
fn may_change_role(actor: MemberRole, current: MemberRole, new: MemberRole) -> bool {
    current != MemberRole::Owner && new != MemberRole::Owner && actor > current && actor > new
}

fn legacy_role_proto(role: MemberRole) -> pb::LegacyRole {
    match role {
        MemberRole::Owner => pb::LegacyRole::Owner,
        MemberRole::Moderator => pb::LegacyRole::Moderator,
        MemberRole::Member => pb::LegacyRole::Member,
    }
}

/// Gives a new member the guild's default join role, if it has one. The
/// membership already committed, so a failure here is logged rather than
/// undoing the join: the role can still be assigned by hand.
pub async fn apply_default_join_role(
    state: &AppState,
    guild_id: GuildId,
    user_id: UserId,
    at: i64,
) {
    let assigned = async {
        let Some(role_id) = state.store().default_join_role(guild_id).await? else {
            return Ok(None);
        };
        // No event: the join's `workspace_member_add` announces the member.
        state
            .store()
            .assign_role(guild_id, user_id, role_id, at, MAX_ASSIGNMENTS, Vec::new())
            .await
            .map(Some)
    };
    match assigned.await {
        Ok(None | Some(AssignOutcome::Assigned { .. } | AssignOutcome::AlreadyAssigned)) => {}
        // The member was removed, or the role deleted, in between.
        Ok(Some(outcome)) => {
            tracing::info!(?outcome, %guild_id, %user_id, "default join role not assigned");
        }
        Err(err) => {
            tracing::error!(%err, %guild_id, %user_id, "cannot assign the default join role");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_changes_follow_the_legacy_ranks() {
        use MemberRole::{Member, Moderator, Owner};
        // Only owners move people between member and moderator.
        assert!(may_change_role(Owner, Member, Moderator));
        assert!(may_change_role(Owner, Moderator, Member));
        assert!(may_change_role(Owner, Member, Member));
        assert!(!may_change_role(Moderator, Member, Moderator));
        assert!(!may_change_role(Moderator, Moderator, Member));
        assert!(!may_change_role(Member, Member, Member));
        // Nobody is made or unmade owner this way.
        assert!(!may_change_role(Owner, Member, Owner));
        assert!(!may_change_role(Owner, Owner, Member));
    }
}
