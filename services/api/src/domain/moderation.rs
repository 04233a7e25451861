//! Moderation (PROTOCOL.md §2.6, §2.7): the use cases behind kick, ban,
//! the audit log and guild IP bans, the rules they follow, the validated
//! [`IpBanByUser`] and cursors they take, and their limits.
//!
//! Kick and ban are the system's core teardown. After the store committed,
//! and before the call returns, the removed user's access is gone
//! everywhere: `workspace_member_ban` (ban only) and `workspace_member_remove`
//! go to the guild and to the removed user's own sockets, then an
//! [`access::AccessRevocation`] makes every gateway drop the user's
//! subscriptions in the guild and acknowledge it. A later message in the
//! guild cannot reach them. All of these events are stored with the
//! removal (docs/adr/0006-outbox.md), so a crash after the commit delays
//! them rather than losing them.
//!
//! IP bans never show an address: the list, the responses and the
//! `workspace_ip_ban_sync` summary carry ids, counts and times only, and the
//! summary goes only to the users who may manage IP bans.

use filament_ids::{GuildId, UserId};
use filament_proto::v1::{self as pb, event};
use ulid::Ulid;

use crate::clock::now_unix;
use crate::domain::access;
use crate::domain::audit;
use crate::domain::permissions::{GuildAccess, Permission};
use crate::domain::roles::require_outranks;
use crate::domain::{parse_id, storable_text};
use crate::error::{ApiError, ApiResult};
use crate::outbox::Pending;
use crate::publish;
use crate::state::AppState;
use crate::store::{
    AuditCursor, AuditEntry, IpBanCursor, IpBanOutcome, IpBanRecord, MemberRecord, MemberRole,
    NewGuildBan, NewIpBansByUser, OutboxEvent,
};

const MEMBER_KICK: &str = "member.kick";
const MEMBER_BAN: &str = "member.ban";
const IP_BAN_ADD: &str = "moderation.ip_ban.add";
const IP_BAN_REMOVE: &str = "moderation.ip_ban.remove";

/// Audit log page size when none is asked for (or the configured maximum,
/// if lower).
pub const AUDIT_DEFAULT_LIMIT: u32 = 20;
pub const IP_BAN_DEFAULT_LIMIT: u32 = 20;
pub const IP_BAN_MAX_LIMIT: u32 = 100;
const MAX_CURSOR_BYTES: usize = 128;
const MAX_ACTION_PREFIX_BYTES: usize = 64;
const MAX_REASON_BYTES: usize = 240;
/// 180 days.
const MAX_IP_BAN_SECS: u64 = 15_552_000;

// --- kick and ban -------------------------------------------------------------

/// Why a member left, for `workspace_member_remove`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Removal {
    Kick,
    Ban,
}

/// Removes `target` from the guild as `actor`, a moderator who outranks
/// them; their access is gone everywhere when this returns.
pub async fn kick(
    state: &AppState,
    actor: UserId,
    guild_id: GuildId,
    target: UserId,
) -> ApiResult<()> {
    let access = moderator_access(state, guild_id, actor).await?;
    let member = state
        .store()
        .member(guild_id, target)
        .await?
        .ok_or(ApiError::NotFound)?;
    require_may_remove(state, &access, &member).await?;
    let tear_down = TearDown::new(state, guild_id, target, actor, Removal::Kick);
    if !state
        .store()
        .remove_member(guild_id, target, tear_down.rows())
        .await?
    {
        // Someone else removed them first; their teardown ran.
        return Err(ApiError::NotFound);
    }
    tear_down.publish(state).await;
    audit::record(state, guild_id, actor, Some(target), MEMBER_KICK).await;
    Ok(())
}

/// Bans `target` from the guild as `actor`, removing them if a member.
/// Non-members can be banned too, so they can never join.
pub async fn ban(
    state: &AppState,
    actor: UserId,
    guild_id: GuildId,
    target: UserId,
) -> ApiResult<()> {
    let access = moderator_access(state, guild_id, actor).await?;
    if state.store().user_by_id(target).await?.is_none() {
        return Err(ApiError::NotFound);
    }
    if let Some(member) = state.store().member(guild_id, target).await? {
        require_may_remove(state, &access, &member).await?;
    }
    let ban = NewGuildBan {
        guild_id,
        user_id: target,
        banned_by: actor,
        created_at_unix: now_unix(),
    };
    // Torn down even if they were not a member (any more): a socket that
    // slipped in through a concurrent join must not outlive the ban.
    let tear_down = TearDown::new(state, guild_id, target, actor, Removal::Ban);
    state.store().ban_member(ban, tear_down.rows()).await?;
    tear_down.publish(state).await;
    audit::record(state, guild_id, actor, Some(target), MEMBER_BAN).await;
    Ok(())
}

/// The actor's access; their legacy role must be moderator or owner.
async fn moderator_access(
    state: &AppState,
    guild_id: GuildId,
    actor: UserId,
) -> ApiResult<GuildAccess> {
    let access = state.authorizer().guild(guild_id, actor).await?;
    if access.role < MemberRole::Moderator {
        return Err(ApiError::Forbidden);
    }
    Ok(access)
}

/// The one rule of kick, ban and IP bans by user: the legacy rule
/// ([`may_remove`]), and the actor outranks the member in the role
/// hierarchy too, as for taking a role away.
async fn require_may_remove(
    state: &AppState,
    access: &GuildAccess,
    member: &MemberRecord,
) -> ApiResult<()> {
    if !may_remove(access.role, member.role) {
        return Err(ApiError::Forbidden);
    }
    require_outranks(state, access, member.user_id).await
}

/// The legacy rule of kick and ban: owners are never removed, and the actor
/// outranks the target.
fn may_remove(actor: MemberRole, target: MemberRole) -> bool {
    target != MemberRole::Owner && actor > target
}

/// A removal's events, built before the write and stored with it: what the
/// guild and the removed user are told, and the revocation of the user's
/// access.
struct TearDown {
    told: Vec<Pending>,
    revocation: access::AccessRevocation,
}

impl TearDown {
    fn new(
        state: &AppState,
        guild_id: GuildId,
        user_id: UserId,
        actor: UserId,
        removal: Removal,
    ) -> Self {
        let (guild, user, actor) = (guild_id.to_string(), user_id.to_string(), actor.to_string());
        let now = now_unix();
        let mut told = Vec::with_capacity(2);
        if removal == Removal::Ban {
            let ban = pb::WorkspaceMemberBan {
                guild_id: guild.clone(),
                user_id: user.clone(),
                banned_at_unix: now,
                actor_user_id: Some(actor.clone()),
            };
            let event = publish::for_guild(&guild, event::Payload::WorkspaceMemberBan(ban));
            told.push(Pending::new(state.publisher(), event));
        }
        let reason = match removal {
            Removal::Kick => pb::MemberRemoveReason::Kick,
            Removal::Ban => pb::MemberRemoveReason::Ban,
        };
        let remove = pb::WorkspaceMemberRemove {
            guild_id: guild.clone(),
            user_id: user.clone(),
            reason: reason.into(),
            removed_at_unix: now,
            actor_user_id: Some(actor),
        };
        // The removed user hears it on every socket, wherever it is
        // subscribed.
        let event = publish::for_users(
            vec![user.clone()],
            vec![guild.clone()],
            event::Payload::WorkspaceMemberRemove(remove),
        );
        told.push(Pending::new(state.publisher(), event));
        Self {
            told,
            revocation: access::AccessRevocation::new(state, guild_id, &[user_id], true),
        }
    }

    /// The rows to store with the removal, in publishing order.
    fn rows(&self) -> Vec<OutboxEvent> {
        let mut rows: Vec<OutboxEvent> = self.told.iter().map(Pending::row).collect();
        rows.push(self.revocation.row());
        rows
    }

    /// After the commit: tells the guild and the removed user, then revokes
    /// the user's access on every gateway and waits for each to
    /// acknowledge.
    async fn publish(self, state: &AppState) {
        publish::publish_all(state.publisher(), self.told).await;
        self.revocation.publish(state).await;
    }
}

// --- the audit log ------------------------------------------------------------

/// One page of the audit log, newest first.
#[derive(Debug)]
pub struct AuditPage {
    pub entries: Vec<AuditEntry>,
    /// Where the next page starts; `None` on the last page.
    pub next_cursor: Option<String>,
}

/// Up to `limit` entries of the guild's audit log from `cursor`, only the
/// actions starting with `prefix` if given. Refusals say
/// `audit_access_denied`, as the reference server does: to a non-member of
/// an existing guild and of an unknown one alike, and to a member without
/// `view_audit_log`. Only the server owner, who may see any guild, learns
/// that an id is unknown (404).
pub async fn audit_log(
    state: &AppState,
    viewer: UserId,
    guild_id: GuildId,
    cursor: Option<AuditCursor>,
    prefix: Option<&str>,
    limit: u32,
) -> ApiResult<AuditPage> {
    // No lookup of the guild first: the authorizer refuses a stranger the
    // same way whether the guild exists or not, so the answer cannot tell
    // which ids are real.
    let access = match state.authorizer().guild(guild_id, viewer).await {
        Ok(access) => access,
        Err(ApiError::Forbidden) => return Err(ApiError::AuditAccessDenied),
        Err(err) => return Err(err),
    };
    if !access.permissions.contains(Permission::ViewAuditLog) {
        return Err(ApiError::AuditAccessDenied);
    }
    let mut entries = state
        .store()
        .audit_entries(guild_id, cursor, prefix, limit + 1)
        .await?
        .entries;
    let more = entries.len() > limit as usize;
    entries.truncate(limit as usize);
    Ok(AuditPage {
        next_cursor: entries.last().filter(|_| more).map(AuditEntry::cursor),
        entries,
    })
}

/// `<created_at_unix>_<id>`: ≤128 bytes of `[A-Za-z0-9_-]`.
pub fn parse_cursor(raw: &str) -> ApiResult<(i64, Ulid)> {
    let charset = raw
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if raw.is_empty() || raw.len() > MAX_CURSOR_BYTES || !charset {
        return Err(ApiError::InvalidRequest);
    }
    let (created, id) = raw.split_once('_').ok_or(ApiError::InvalidRequest)?;
    let created = created.parse().map_err(|_| ApiError::InvalidRequest)?;
    Ok((created, parse_id(id)?))
}

/// 1–64 bytes of `[a-z0-9._]`.
pub fn action_prefix(raw: &str) -> ApiResult<&str> {
    let charset = raw
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'_');
    if raw.is_empty() || raw.len() > MAX_ACTION_PREFIX_BYTES || !charset {
        return Err(ApiError::InvalidRequest);
    }
    Ok(raw)
}

// --- IP bans ------------------------------------------------------------------

/// A validated ban-by-user request.
#[derive(Debug)]
pub struct IpBanByUser {
    target_user_id: UserId,
    /// 1–240 bytes, not blank, no NUL.
    reason: Option<String>,
    /// 1 s – 180 days.
    expires_in_secs: Option<i64>,
}

impl IpBanByUser {
    /// A canonical target id, a reason of 1–240 bytes that is not blank,
    /// and an expiry of 1 s to 180 days, if any.
    pub fn parse(
        target_user_id: &str,
        reason: Option<String>,
        expires_in_secs: Option<u64>,
    ) -> ApiResult<Self> {
        let reason = match reason {
            Some(reason)
                if reason.trim().is_empty()
                    || reason.len() > MAX_REASON_BYTES
                    || !storable_text(&reason) =>
            {
                return Err(ApiError::InvalidRequest);
            }
            reason => reason,
        };
        let expires_in_secs = match expires_in_secs {
            None => None,
            Some(secs @ 1..=MAX_IP_BAN_SECS) => Some(secs.cast_signed()),
            Some(_) => return Err(ApiError::InvalidRequest),
        };
        Ok(Self {
            target_user_id: parse_id(target_user_id)?,
            reason,
            expires_in_secs,
        })
    }
}

/// One page of a guild's active IP bans, newest first.
#[derive(Debug)]
pub struct IpBanPage {
    pub bans: Vec<IpBanRecord>,
    /// Where the next page starts; `None` on the last page.
    pub next_cursor: Option<String>,
}

/// Up to `limit` of the guild's active bans from `cursor`, for a viewer who
/// may manage IP bans.
pub async fn ip_bans(
    state: &AppState,
    viewer: UserId,
    guild_id: GuildId,
    cursor: Option<IpBanCursor>,
    limit: u32,
) -> ApiResult<IpBanPage> {
    require_ip_ban_manager(state, guild_id, viewer).await?;
    let mut bans = state
        .store()
        .ip_bans(guild_id, cursor, now_unix(), limit + 1)
        .await?;
    let more = bans.len() > limit as usize;
    bans.truncate(limit as usize);
    let next_cursor = bans.last().filter(|_| more).map(|last| {
        let cursor = last.cursor();
        format!("{}_{}", cursor.created_at_unix, cursor.ban_id)
    });
    Ok(IpBanPage { bans, next_cursor })
}

/// Bans every address the target made accepted directory joins to this
/// guild from, and answers the bans created (none if no address was seen).
/// It is a ban, so the ban's rule applies: a member the actor does not
/// outrank, and any owner, is refused; a non-member may be banned.
/// `ApiError::QuotaExceeded` if the guild holds as many IP bans as allowed.
pub async fn ban_ips_by_user(
    state: &AppState,
    actor: UserId,
    guild_id: GuildId,
    request: IpBanByUser,
) -> ApiResult<Vec<Ulid>> {
    let target_user_id = request.target_user_id;
    let access = require_ip_ban_manager(state, guild_id, actor).await?;
    let target = state.store().member(guild_id, target_user_id).await?;
    if let Some(member) = target {
        require_may_remove(state, &access, &member).await?;
    }
    let now = now_unix();
    let guild = guild_id.to_string();
    // Built before the write and stored with it, if it creates a ban:
    // gateways close the sockets from a banned address (PROTOCOL.md §5.8),
    // and the managers get the count only the transaction knows.
    let ip_bans_changed = Pending::new(
        state.publisher(),
        publish::access_changed(&guild, Vec::new(), false, true),
    );
    let managers = ip_ban_managers(state, guild_id).await;
    let deferred = publish::Deferred::new(state.publisher());
    let outbox = |ban_ids: &[Ulid]| {
        let mut rows = vec![ip_bans_changed.row()];
        if let Some(managers) = &managers {
            let sync = ip_ban_sync(
                guild_id,
                managers.clone(),
                pb::IpBanAction::Upsert,
                ban_ids.len(),
                actor,
                now,
            );
            rows.extend(deferred.rows(vec![sync]));
        }
        rows
    };
    let outcome = state
        .store()
        .ban_user_ips(
            NewIpBansByUser {
                guild_id,
                target_user_id,
                reason: request.reason,
                created_by: actor,
                created_at_unix: now,
                expires_at_unix: request.expires_in_secs.map(|secs| now.saturating_add(secs)),
                max_entries: state.config().guild_ip_ban_max_entries,
            },
            &outbox,
        )
        .await?;
    let IpBanOutcome::Created(ban_ids) = outcome else {
        return Err(ApiError::QuotaExceeded);
    };
    if !ban_ids.is_empty() {
        ip_bans_changed
            .publish_acked(state.publisher(), "ip ban change")
            .await;
        let target = Some(target_user_id);
        audit::record(state, guild_id, actor, target, IP_BAN_ADD).await;
        publish::publish_all(state.publisher(), deferred.into_pending()).await;
    }
    Ok(ban_ids)
}

/// Removes an IP ban as `actor`, who may manage IP bans.
pub async fn remove_ip_ban(
    state: &AppState,
    actor: UserId,
    guild_id: GuildId,
    ban_id: Ulid,
) -> ApiResult<()> {
    require_ip_ban_manager(state, guild_id, actor).await?;
    let sync = ip_ban_managers(state, guild_id).await.map(|managers| {
        let event = ip_ban_sync(
            guild_id,
            managers,
            pb::IpBanAction::Remove,
            1,
            actor,
            now_unix(),
        );
        Pending::new(state.publisher(), event)
    });
    let outbox = sync.iter().map(Pending::row).collect();
    let removed = state
        .store()
        .remove_ip_ban(guild_id, ban_id, outbox)
        .await?
        .ok_or(ApiError::NotFound)?;
    let target = removed.source_user_id;
    audit::record(state, guild_id, actor, target, IP_BAN_REMOVE).await;
    publish::publish_all(state.publisher(), sync.into_iter().collect()).await;
    Ok(())
}

/// Refuses a caller without `manage_ip_bans`; returns their access.
async fn require_ip_ban_manager(
    state: &AppState,
    guild_id: GuildId,
    user_id: UserId,
) -> ApiResult<GuildAccess> {
    let access = state.authorizer().guild(guild_id, user_id).await?;
    access.require(Permission::ManageIpBans)?;
    Ok(access)
}

/// The users who may manage IP bans in the guild: the audience of
/// `workspace_ip_ban_sync`, read before the change it reports. `None` if
/// they cannot be read; the change goes ahead without its sync event.
async fn ip_ban_managers(state: &AppState, guild_id: GuildId) -> Option<Vec<String>> {
    match state
        .authorizer()
        .members_with_permission(guild_id, Permission::ManageIpBans)
        .await
    {
        Ok(holders) => Some(holders.iter().map(UserId::to_string).collect()),
        Err(err) => {
            tracing::error!(%err, %guild_id, "cannot find who manages IP bans; sync event not sent");
            None
        }
    }
}

/// The redacted summary, for every socket of `managers` and nobody else.
fn ip_ban_sync(
    guild_id: GuildId,
    managers: Vec<String>,
    action: pb::IpBanAction,
    changed: usize,
    actor: UserId,
    now: i64,
) -> pb::Event {
    let sync = pb::WorkspaceIpBanSync {
        guild_id: guild_id.to_string(),
        summary: Some(pb::IpBanSummary {
            action: action.into(),
            changed_count: i64::try_from(changed).unwrap_or(i64::MAX),
        }),
        updated_at_unix: now,
        actor_user_id: Some(actor.to_string()),
    };
    publish::for_users(
        managers,
        Vec::new(),
        event::Payload::WorkspaceIpBanSync(sync),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_are_never_removed_and_the_actor_must_outrank() {
        use MemberRole::{Member, Moderator, Owner};
        assert!(may_remove(Owner, Moderator));
        assert!(may_remove(Owner, Member));
        assert!(may_remove(Moderator, Member));
        assert!(!may_remove(Moderator, Moderator));
        assert!(!may_remove(Owner, Owner));
        assert!(!may_remove(Member, Member));
    }

    #[test]
    fn cursors_and_prefixes_are_validated() {
        let id = Ulid::generate();
        assert_eq!(parse_cursor(&format!("1700_{id}")).ok(), Some((1700, id)));
        for bad in [
            String::new(),
            "1700".to_owned(),
            format!("x_{id}"),
            format!("1700_{id} "),
            format!("1700_{}", id.to_string().to_lowercase()),
            format!("{}_{id}", "1".repeat(MAX_CURSOR_BYTES)),
        ] {
            assert!(parse_cursor(&bad).is_err(), "{bad:?}");
        }
        assert_eq!(action_prefix("member.").ok(), Some("member."));
        assert_eq!(
            action_prefix("directory.join_").ok(),
            Some("directory.join_")
        );
        for bad in ["", "Member", "member-", &"a".repeat(65)] {
            assert!(action_prefix(bad).is_err(), "{bad:?}");
        }
    }

    fn parse(reason: Option<&str>, secs: Option<u64>) -> ApiResult<IpBanByUser> {
        let target = Ulid::generate().to_string();
        IpBanByUser::parse(&target, reason.map(str::to_owned), secs)
    }

    #[test]
    fn ban_by_user_requests_are_validated() {
        assert!(parse(None, None).is_ok());
        assert!(parse(Some(&"r".repeat(240)), Some(15_552_000)).is_ok());
        assert!(parse(Some(&"r".repeat(241)), None).is_err());
        assert!(parse(Some("  "), None).is_err());
        assert!(parse(None, Some(0)).is_err());
        assert!(parse(None, Some(15_552_001)).is_err());
        assert!(IpBanByUser::parse("nope", None, None).is_err());
    }

    proptest::proptest! {
        #[test]
        fn a_reason_with_a_nul_is_refused(
            raw in crate::domain::hostile::text(),
            nul in crate::domain::hostile::plain_with_nul(),
        ) {
            proptest::prop_assert!(parse(Some(&nul), None).is_err());
            if parse(Some(&raw), None).is_ok() {
                proptest::prop_assert!(crate::domain::storable_text(&raw), "{raw:?}");
            }
        }
    }
}
