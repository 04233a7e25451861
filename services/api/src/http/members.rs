//! `/guilds/{g}/members`: the member list, adding a member, and changing a
//! member's legacy role (PROTOCOL.md §2.6).
//!
//! The role change follows the legacy rules (owner > moderator > member):
//! the actor must outrank both the current and the new role, and neither
//! may be `owner`. A demotion can hide channels, so it revokes access
//! before the call returns, like every change that shrinks what someone
//! sees.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::State;
use filament_proto::v1::{self as pb, event};
use serde::{Deserialize, Serialize};
use ulid::Ulid;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::routes;

use crate::clock::now_unix;
use crate::domain::permissions::Permission;
use crate::domain::{page_limit, parse_id};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::http::extract::{AuthUser, Ids, JsonBody, QueryParams};
use crate::http::openapi::{ApiRouter, GuildPath, Id, MemberPath};
use crate::http::roles::{ACK, Ack, MAX_ASSIGNMENTS};
use crate::outbox::Pending;
use crate::publish;
use crate::state::AppState;
use crate::store::{AddMemberOutcome, AssignOutcome, MemberRecord, MemberRole};

const MEMBER_LIST_DEFAULT_LIMIT: u32 = 50;
const MEMBER_LIST_MAX_LIMIT: u32 = 200;

/// Audit action of `PATCH /guilds/{g}/members/{u}`.
const MEMBER_ROLE_UPDATE: &str = "member.role.update";

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct MemberListQuery {
    /// The `next_cursor` of the page before.
    #[param(value_type = Option<Id>)]
    cursor: Option<String>,
    /// Page size, 1–200 (default 50).
    #[param(minimum = 1, maximum = 200)]
    limit: Option<u32>,
}

#[derive(Serialize, ToSchema)]
pub struct MemberEntry {
    user_id: String,
    /// Explicitly assigned roles, ascending (at most 16).
    role_ids: Vec<String>,
}

#[derive(Serialize, ToSchema)]
pub struct MemberList {
    members: Vec<MemberEntry>,
    /// Where the next page starts; `null` on the last page.
    #[schema(required = true)]
    next_cursor: Option<String>,
}

/// The legacy role as clients send it; anything else is a 422 like any
/// other mistyped field.
#[derive(Debug, Clone, Copy, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
enum LegacyRoleDto {
    Owner,
    Moderator,
    Member,
}

impl From<LegacyRoleDto> for MemberRole {
    fn from(role: LegacyRoleDto) -> Self {
        match role {
            LegacyRoleDto::Owner => Self::Owner,
            LegacyRoleDto::Moderator => Self::Moderator,
            LegacyRoleDto::Member => Self::Member,
        }
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateMemberDto {
    role: LegacyRoleDto,
}

/// `GET /guilds/{g}/members`: members by user id, with their explicit role
/// assignments.
#[utoipa::path(
    get,
    path = "/guilds/{guild_id}/members",
    tag = "members",
    security(("bearer" = [])),
    params(GuildPath, MemberListQuery),
    responses(
        (status = 200, description = "A page of members, by user id.", body = MemberList),
        (status = 403, description = "Not a member, or no such guild (`forbidden`).", body = ErrorBody),
    ),
)]
pub async fn list(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Ids([guild_id]): Ids<1>,
    QueryParams(query): QueryParams<MemberListQuery>,
) -> ApiResult<Json<MemberList>> {
    let limit = page_limit(
        query.limit,
        MEMBER_LIST_DEFAULT_LIMIT,
        MEMBER_LIST_MAX_LIMIT,
    )?;
    let cursor = query.cursor.as_deref().map(parse_id).transpose()?;
    state.authorizer().guild(guild_id, user.user_id).await?;
    // One more than asked says whether another page follows.
    let mut page = state.store().members(guild_id, cursor, limit + 1).await?;
    let more = page.len() > limit as usize;
    page.truncate(limit as usize);
    let mut roles: BTreeMap<Ulid, Vec<String>> = BTreeMap::new();
    if let (Some(first), Some(last)) = (page.first(), page.last()) {
        let assignments = state
            .store()
            .assignments_between(guild_id, first.user_id, last.user_id)
            .await?;
        // Sorted by user, then role: each list comes out sorted.
        for (user_id, role_id) in assignments {
            let ids = roles.entry(user_id).or_default();
            if ids.len() < MAX_ASSIGNMENTS as usize {
                ids.push(role_id.to_string());
            }
        }
    }
    let next_cursor = page
        .last()
        .filter(|_| more)
        .map(|last| last.user_id.to_string());
    Ok(Json(MemberList {
        members: page
            .into_iter()
            .map(|member| MemberEntry {
                role_ids: roles.remove(&member.user_id).unwrap_or_default(),
                user_id: member.user_id.to_string(),
            })
            .collect(),
        next_cursor,
    }))
}

/// `POST /guilds/{g}/members/{u}`: adds a member. Idempotent; a banned user
/// cannot be added.
#[utoipa::path(
    post,
    path = "/guilds/{guild_id}/members/{user_id}",
    tag = "members",
    security(("bearer" = [])),
    params(MemberPath),
    responses(
        (status = 200, description = "A member now, or already.", body = Ack),
        (status = 403, description = "Lacks `manage_member_roles`, or the user is banned (`forbidden`).", body = ErrorBody),
        (status = 404, description = "No such user (`not_found`).", body = ErrorBody),
    ),
)]
pub async fn add(
    State(state): State<AppState>,
    AuthUser(actor): AuthUser,
    Ids([guild_id, target]): Ids<2>,
) -> ApiResult<Json<Ack>> {
    let access = state.authorizer().guild(guild_id, actor.user_id).await?;
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
        &actor.user_id.to_string(),
    );
    let added = Pending::new(&state, event);
    // The event is stored only with a membership that is new.
    let outcome = state
        .store()
        .add_member_unless_banned(member, vec![added.row()])
        .await?;
    match outcome {
        AddMemberOutcome::Banned => Err(ApiError::Forbidden),
        AddMemberOutcome::AlreadyMember => Ok(Json(ACK)),
        AddMemberOutcome::Added => {
            apply_default_join_role(&state, guild_id, target, now).await;
            added.publish(&state).await;
            Ok(Json(ACK))
        }
    }
}

/// `PATCH /guilds/{g}/members/{u}`: moves a member between `member` and
/// `moderator` under the legacy rules.
#[utoipa::path(
    patch,
    path = "/guilds/{guild_id}/members/{user_id}",
    tag = "members",
    security(("bearer" = [])),
    params(MemberPath),
    request_body = UpdateMemberDto,
    responses(
        (status = 200, description = "The role is changed.", body = Ack),
        (status = 403, description = "The legacy rules refuse the change (`forbidden`).", body = ErrorBody),
        (status = 404, description = "Not a member (`not_found`).", body = ErrorBody),
    ),
)]
pub async fn update(
    State(state): State<AppState>,
    AuthUser(actor): AuthUser,
    Ids([guild_id, target]): Ids<2>,
    JsonBody(dto): JsonBody<UpdateMemberDto>,
) -> ApiResult<Json<Ack>> {
    let new_role = MemberRole::from(dto.role);
    let access = state.authorizer().guild(guild_id, actor.user_id).await?;
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
            actor_user_id: Some(actor.user_id.to_string()),
        }),
    );
    let updated = Pending::new(&state, event);
    // A moderator made member may no longer see moderator-only channels:
    // gateways drop them before this call returns.
    let revocation = (new_role < current)
        .then(|| publish::AccessRevocation::new(&state, &guild, vec![target.to_string()], false));
    let mut outbox = vec![updated.row()];
    outbox.extend(revocation.as_ref().map(publish::AccessRevocation::row));
    if !state
        .store()
        .set_legacy_role(guild_id, target, new_role, now, outbox)
        .await?
    {
        return Err(ApiError::NotFound);
    }
    updated.publish(&state).await;
    if let Some(revocation) = revocation {
        revocation.publish(&state).await;
    }
    publish::audit(
        &state,
        guild_id,
        actor.user_id,
        Some(target),
        MEMBER_ROLE_UPDATE,
    )
    .await;
    Ok(Json(ACK))
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
pub async fn apply_default_join_role(state: &AppState, guild_id: Ulid, user_id: Ulid, at: i64) {
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

pub fn routes() -> ApiRouter {
    ApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(add, update))
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
