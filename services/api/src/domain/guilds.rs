//! Guilds: creating one, listing the caller's, the public directory and
//! directory joins (the use cases behind `/guilds`), and the workspace
//! settings, name and visibility (`PATCH /guilds/{g}`, PROTOCOL.md §2.5);
//! the validated values they take ([`NewGuild`], [`DirectorySearch`],
//! [`GuildUpdate`]), their limits, and the wire shape of a guild.
//!
//! A join records the address it came from (so a moderator can later ban a
//! user's addresses without ever seeing them), and is refused — and
//! audited — for private guilds, banned users and banned addresses, in
//! that order. A settings change is announced with `workspace_update` only
//! when something actually changed.

use std::net::IpAddr;

use filament_ids::{GuildId, UserId};
use filament_proto::v1::{self as pb, event};
use filament_wire::Guild;

use crate::clock::now_unix;
use crate::domain::audit;
use crate::domain::members::apply_default_join_role;
use crate::domain::permissions::Permission;
use crate::domain::roles::builtin_masks;
use crate::domain::{Name, page_limit, storable_text};
use crate::error::{ApiError, ApiResult};
use crate::outbox::Pending;
use crate::publish;
use crate::state::AppState;
use crate::store::{AddMemberOutcome, Change, GuildRecord, MemberRecord, MemberRole, Visibility};

/// The most guilds `GET /guilds` returns.
const GUILD_LIST_LIMIT: u32 = 200;
/// `GET /guilds/public`: default and largest page, longest query.
const DIRECTORY_DEFAULT_LIMIT: u32 = 20;
const DIRECTORY_MAX_LIMIT: u32 = 50;
const DIRECTORY_MAX_QUERY_BYTES: usize = 64;

/// Audit actions of directory joins.
const JOIN_ACCEPTED: &str = "directory.join.accepted";
const JOIN_REJECTED_VISIBILITY: &str = "directory.join.rejected.visibility";
const JOIN_REJECTED_USER_BAN: &str = "directory.join.rejected.user_ban";
const JOIN_REJECTED_IP_BAN: &str = "directory.join.rejected.ip_ban";

/// A new guild: its name and visibility (`private` by default).
#[derive(Debug)]
pub struct NewGuild {
    pub name: Name,
    pub visibility: Visibility,
}

/// A directory listing, validated: the page size, and the name filter
/// trimmed (`None` when blank).
#[derive(Debug)]
pub struct DirectorySearch {
    needle: Option<String>,
    limit: u32,
}

impl DirectorySearch {
    /// A page of 1–50 guilds (default 20), whose name contains `q`, of at
    /// most 64 bytes after trimming.
    pub fn new(q: Option<&str>, limit: Option<u32>) -> ApiResult<Self> {
        let limit = page_limit(limit, DIRECTORY_DEFAULT_LIMIT, DIRECTORY_MAX_LIMIT)?;
        let needle = match q.map(str::trim) {
            Some(q) if q.len() > DIRECTORY_MAX_QUERY_BYTES || !storable_text(q) => {
                return Err(ApiError::InvalidRequest);
            }
            Some("") | None => None,
            Some(q) => Some(q.to_owned()),
        };
        Ok(Self { needle, limit })
    }
}

/// A validated guild update: at least one field.
#[derive(Debug)]
pub struct GuildUpdate {
    name: Option<Name>,
    visibility: Option<Visibility>,
}

impl GuildUpdate {
    pub fn new(name: Option<Name>, visibility: Option<Visibility>) -> ApiResult<Self> {
        if name.is_none() && visibility.is_none() {
            return Err(ApiError::InvalidRequest);
        }
        Ok(Self { name, visibility })
    }
}

/// How a directory join ended when it let the user in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Joined {
    Accepted,
    AlreadyMember,
}

impl Joined {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Accepted => "accepted",
            Self::AlreadyMember => "already_member",
        }
    }
}

/// Creates a guild owned by `creator`, with its built-in roles.
/// `ApiError::GuildCreationLimitReached` if they created as many as allowed.
pub async fn create(state: &AppState, creator: UserId, new: NewGuild) -> ApiResult<Guild> {
    let created = state.store().count_guilds_created_by(creator).await?;
    if created >= state.config().max_created_guilds_per_user {
        return Err(ApiError::GuildCreationLimitReached);
    }
    let guild = GuildRecord {
        guild_id: state.new_id(),
        name: new.name.into_string(),
        visibility: new.visibility,
        created_by: creator,
        created_at_unix: now_unix(),
    };
    state
        .store()
        .create_guild(guild.clone(), builtin_masks())
        .await?;
    // Nobody else can be present in a guild that did not exist a moment
    // ago, so there is no event to publish.
    Ok(wire_guild(&guild))
}

/// The user's guilds; a ban removed the membership, so banned guilds are
/// not among them.
pub async fn list(state: &AppState, user: UserId) -> ApiResult<Vec<Guild>> {
    let guilds = state
        .store()
        .guilds_for_user(user, GUILD_LIST_LIMIT)
        .await?;
    Ok(guilds.iter().map(wire_guild).collect())
}

/// Public guilds, newest first, optionally those whose name contains the
/// search's needle in any case.
pub async fn directory(state: &AppState, search: DirectorySearch) -> ApiResult<Vec<Guild>> {
    let guilds = state
        .store()
        .public_guilds(search.needle.as_deref(), search.limit)
        .await?;
    Ok(guilds.iter().map(wire_guild).collect())
}

/// Joins `user`, connecting from `ip`, to a public guild. A private or
/// unknown guild is `ApiError::NotFound`, so private guilds cannot be
/// discovered by id. The caller has already rate limited the attempt.
pub async fn join(
    state: &AppState,
    user_id: UserId,
    ip: IpAddr,
    guild_id: GuildId,
) -> ApiResult<Joined> {
    let now = now_unix();
    let guild = state
        .store()
        .guild(guild_id)
        .await?
        .ok_or(ApiError::NotFound)?;
    if let Some((action, error)) = refusal(state, &guild, user_id, ip, now).await? {
        audit::record(state, guild_id, user_id, Some(user_id), action).await;
        return Err(error);
    }
    let member = MemberRecord {
        guild_id,
        user_id,
        role: MemberRole::Member,
        joined_at_unix: now,
    };
    let user_text = user_id.to_string();
    let added = Pending::new(
        state.publisher(),
        publish::member_add(&guild_id.to_string(), &user_text, now, &user_text),
    );
    // The address is recorded with the membership, in the guild, and only
    // for a join that let the user in (PROTOCOL.md §2.5): a refused join
    // records nothing, and a ban by user here bans only addresses seen here.
    // The event is stored only with a membership that is new.
    let outcome = match state
        .store()
        .join_from(member, ip, vec![added.row()])
        .await?
    {
        AddMemberOutcome::Banned => {
            // A ban that landed since the check above.
            let action = JOIN_REJECTED_USER_BAN;
            audit::record(state, guild_id, user_id, Some(user_id), action).await;
            return Err(ApiError::DirectoryJoinUserBanned);
        }
        AddMemberOutcome::AlreadyMember => Joined::AlreadyMember,
        AddMemberOutcome::Added => {
            apply_default_join_role(state, guild_id, user_id, now).await;
            added.publish(state.publisher()).await;
            Joined::Accepted
        }
    };
    audit::record(state, guild_id, user_id, Some(user_id), JOIN_ACCEPTED).await;
    Ok(outcome)
}

/// Why a join must be refused, as its audit action and error; `None` to
/// let it through.
async fn refusal(
    state: &AppState,
    guild: &GuildRecord,
    user_id: UserId,
    ip: IpAddr,
    now: i64,
) -> ApiResult<Option<(&'static str, ApiError)>> {
    Ok(if guild.visibility != Visibility::Public {
        Some((JOIN_REJECTED_VISIBILITY, ApiError::NotFound))
    } else if state.store().is_banned(guild.guild_id, user_id).await? {
        Some((JOIN_REJECTED_USER_BAN, ApiError::DirectoryJoinUserBanned))
    } else if state.store().ip_banned(guild.guild_id, ip, now).await? {
        Some((JOIN_REJECTED_IP_BAN, ApiError::DirectoryJoinIpBanned))
    } else {
        None
    })
}

/// Changes the guild's settings as `actor` (`manage_roles`), and answers
/// the guild as it is now.
pub async fn update(
    state: &AppState,
    actor: UserId,
    guild_id: GuildId,
    update: GuildUpdate,
) -> ApiResult<Guild> {
    state
        .authorizer()
        .guild(guild_id, actor)
        .await?
        .require(Permission::ManageRoles)?;
    let now = now_unix();
    // What changed, and so the event, only the write's transaction knows.
    let deferred = publish::Deferred::new(state.publisher());
    let outbox = |change: &Change<GuildRecord>| {
        let (before, after) = (&change.before, &change.after);
        let fields = pb::WorkspaceFields {
            name: (after.name != before.name).then(|| after.name.clone()),
            visibility: (after.visibility != before.visibility)
                .then(|| proto_visibility(after.visibility).into()),
        };
        if fields.name.is_none() && fields.visibility.is_none() {
            return Vec::new();
        }
        let guild = guild_id.to_string();
        let event = publish::for_guild(
            &guild,
            event::Payload::WorkspaceUpdate(pb::WorkspaceUpdate {
                guild_id: guild.clone(),
                updated_fields: Some(fields),
                updated_at_unix: now,
                actor_user_id: Some(actor.to_string()),
            }),
        );
        deferred.rows(vec![event])
    };
    let change = state
        .store()
        .update_guild(
            guild_id,
            update.name.map(Name::into_string),
            update.visibility,
            &outbox,
        )
        .await?
        .ok_or(ApiError::NotFound)?;
    publish::publish_all(state.publisher(), deferred.into_pending()).await;
    Ok(wire_guild(&change.after))
}

fn proto_visibility(visibility: Visibility) -> pb::Visibility {
    match visibility {
        Visibility::Private => pb::Visibility::Private,
        Visibility::Public => pb::Visibility::Public,
    }
}

/// The Guild shape (PROTOCOL.md §1.9) of a stored guild.
fn wire_guild(guild: &GuildRecord) -> Guild {
    Guild {
        guild_id: guild.guild_id.to_string(),
        name: guild.name.clone(),
        visibility: match guild.visibility {
            Visibility::Private => filament_wire::Visibility::Private,
            Visibility::Public => filament_wire::Visibility::Public,
        },
    }
}
