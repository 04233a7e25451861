//! `/guilds`: create and list guilds, the public directory, and directory
//! joins.
//!
//! A join is rate limited per client IP and per user, records the address
//! it came from (so a moderator can later ban a user's addresses without
//! ever seeing them), and is refused — and audited — for private guilds,
//! banned users and banned addresses, in that order.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::extract::State;
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use filament_wire::Guild;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use ulid::Ulid;

use crate::clock::now_unix;
use crate::domain::{Name, page_limit};
use crate::error::{ApiError, ApiResult};
use crate::events;
use crate::http::client_ip::ClientIp;
use crate::http::extract::{AuthUser, Ids, JsonBody, QueryParams};
use crate::http::members::apply_default_join_role;
use crate::state::AppState;
use crate::store::{AddMemberOutcome, GuildRecord, MemberRecord, MemberRole, Visibility};

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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateGuildDto {
    name: String,
    #[serde(default)]
    visibility: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirectoryQuery {
    q: Option<String>,
    limit: Option<u32>,
}

/// The contract's Guild shape of a stored guild.
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

#[derive(Serialize)]
pub struct GuildList {
    guilds: Vec<Guild>,
}

#[derive(Serialize)]
pub struct JoinOutcome {
    guild_id: String,
    outcome: &'static str,
}

pub async fn create(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    JsonBody(dto): JsonBody<CreateGuildDto>,
) -> ApiResult<Json<Guild>> {
    let name = Name::try_from(dto.name)?;
    let visibility = match dto.visibility.as_deref() {
        None => Visibility::Private,
        Some(raw) => Visibility::parse(raw).ok_or(ApiError::InvalidRequest)?,
    };
    let created = state.store().count_guilds_created_by(user.user_id).await?;
    if created >= state.config().max_created_guilds_per_user {
        return Err(ApiError::GuildCreationLimitReached);
    }
    let guild = GuildRecord {
        guild_id: state.new_id(),
        name: name.into_string(),
        visibility,
        created_by: user.user_id,
        created_at_unix: now_unix(),
    };
    state.store().create_guild(guild.clone()).await?;
    // Nobody else can be present in a guild that did not exist a moment
    // ago, so there is no event to publish.
    Ok(Json(wire_guild(&guild)))
}

/// The caller's guilds; a ban removed the membership, so banned guilds are
/// not among them.
pub async fn list(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
) -> ApiResult<Json<GuildList>> {
    let guilds = state
        .store()
        .guilds_for_user(user.user_id, GUILD_LIST_LIMIT)
        .await?;
    Ok(Json(GuildList {
        guilds: guilds.iter().map(wire_guild).collect(),
    }))
}

/// `GET /guilds/public`: public guilds, newest first, optionally those whose
/// name contains `q` in any case.
pub async fn directory(
    State(state): State<AppState>,
    AuthUser(_): AuthUser,
    QueryParams(query): QueryParams<DirectoryQuery>,
) -> ApiResult<Json<GuildList>> {
    let limit = page_limit(query.limit, DIRECTORY_DEFAULT_LIMIT, DIRECTORY_MAX_LIMIT)?;
    let needle = match query.q.as_deref().map(str::trim) {
        Some(q) if q.len() > DIRECTORY_MAX_QUERY_BYTES => return Err(ApiError::InvalidRequest),
        Some("") | None => None,
        Some(q) => Some(q),
    };
    let guilds = state.store().public_guilds(needle, limit).await?;
    Ok(Json(GuildList {
        guilds: guilds.iter().map(wire_guild).collect(),
    }))
}

/// Joins a public guild. A private or unknown guild is a 404, so private
/// guilds cannot be discovered by id.
pub async fn join(
    State(state): State<AppState>,
    Extension(limiter): Extension<Arc<JoinLimiter>>,
    AuthUser(user): AuthUser,
    ClientIp(ip): ClientIp,
    Ids([guild_id]): Ids<1>,
) -> ApiResult<Json<JoinOutcome>> {
    let config = state.config();
    let limits = JoinLimits {
        per_ip: config.directory_join_per_minute_per_ip,
        per_user: config.directory_join_per_minute_per_user,
    };
    if !limiter.admit(ip, user.user_id, limits, Instant::now()) {
        return Err(ApiError::RateLimited);
    }
    let now = now_unix();
    state.store().record_join_ip(user.user_id, ip, now).await?;
    let guild = state
        .store()
        .guild(guild_id)
        .await?
        .ok_or(ApiError::NotFound)?;
    if let Some((action, error)) = refusal(&state, &guild, user.user_id, ip, now).await? {
        events::audit(&state, guild_id, user.user_id, Some(user.user_id), action).await;
        return Err(error);
    }
    let member = MemberRecord {
        guild_id,
        user_id: user.user_id,
        role: MemberRole::Member,
        joined_at_unix: now,
    };
    let outcome = match state.store().add_member_unless_banned(member).await? {
        AddMemberOutcome::Banned => {
            // A ban that landed since the check above.
            let action = JOIN_REJECTED_USER_BAN;
            events::audit(&state, guild_id, user.user_id, Some(user.user_id), action).await;
            return Err(ApiError::DirectoryJoinUserBanned);
        }
        AddMemberOutcome::AlreadyMember => "already_member",
        AddMemberOutcome::Added => {
            apply_default_join_role(&state, guild_id, user.user_id, now).await;
            let user_id = user.user_id.to_string();
            events::publish(
                &state,
                events::member_add(&guild_id.to_string(), &user_id, now, &user_id),
            )
            .await;
            "accepted"
        }
    };
    events::audit(
        &state,
        guild_id,
        user.user_id,
        Some(user.user_id),
        JOIN_ACCEPTED,
    )
    .await;
    Ok(Json(JoinOutcome {
        guild_id: guild_id.to_string(),
        outcome,
    }))
}

/// Why a join must be refused, as its audit action and error; `None` to
/// let it through.
async fn refusal(
    state: &AppState,
    guild: &GuildRecord,
    user_id: Ulid,
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

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/guilds", post(create).get(list))
        .route("/guilds/public", get(directory))
        .route(
            "/guilds/{guild_id}/join",
            post(join).layer(Extension(Arc::new(JoinLimiter::default()))),
        )
}

// --- the directory-join limiter ------------------------------------------------

/// The window both join limits count in.
const JOIN_WINDOW: Duration = Duration::from_secs(60);
/// Callers idle for a full window are forgotten every this many checks, so
/// memory follows the callers of the last minute.
const SWEEP_EVERY: u64 = 1024;

#[derive(Debug, Clone, Copy)]
pub struct JoinLimits {
    pub per_ip: u32,
    pub per_user: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum JoinCaller {
    Ip(IpAddr),
    User(Ulid),
}

/// At most `per_ip` joins from one address and `per_user` joins by one
/// user in any 60 seconds (a sliding window, as the reference server
/// counts). A refused attempt counts against neither.
#[derive(Debug, Default)]
pub struct JoinLimiter {
    recent: Mutex<HashMap<JoinCaller, VecDeque<Instant>>>,
    checks: AtomicU64,
}

impl JoinLimiter {
    pub fn admit(&self, ip: IpAddr, user: Ulid, limits: JoinLimits, now: Instant) -> bool {
        let mut recent = self.recent.lock().unwrap_or_else(PoisonError::into_inner);
        if self.checks.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
            recent.retain(|_, hits| hits.back().is_some_and(|t| now - *t < JOIN_WINDOW));
        }
        let callers = [
            (JoinCaller::Ip(ip), limits.per_ip),
            (JoinCaller::User(user), limits.per_user),
        ];
        for (caller, limit) in callers {
            let hits = recent.entry(caller).or_default();
            while hits.front().is_some_and(|t| now - *t >= JOIN_WINDOW) {
                hits.pop_front();
            }
            if hits.len() >= limit as usize {
                return false;
            }
        }
        for (caller, _) in callers {
            recent.entry(caller).or_default().push_back(now);
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: JoinLimits = JoinLimits {
        per_ip: 3,
        per_user: 2,
    };

    #[tokio::test(start_paused = true)]
    async fn joins_are_limited_per_user_and_per_ip_in_a_sliding_minute() {
        let limiter = JoinLimiter::default();
        let ip: IpAddr = [203, 0, 113, 1].into();
        let (alice, bob) = (Ulid::generate(), Ulid::generate());
        let start = Instant::now();
        assert!(limiter.admit(ip, alice, LIMITS, start));
        assert!(limiter.admit(ip, alice, LIMITS, start));
        // Alice is at her limit; her refused attempt costs the address
        // nothing, so Bob still gets the address's third join.
        assert!(!limiter.admit(ip, alice, LIMITS, start));
        assert!(limiter.admit(ip, bob, LIMITS, start));
        assert!(!limiter.admit(ip, bob, LIMITS, start));
        // Elsewhere, Bob has one join left.
        let other: IpAddr = [203, 0, 113, 2].into();
        assert!(limiter.admit(other, bob, LIMITS, start));
        assert!(!limiter.admit(other, bob, LIMITS, start));

        // The window slides: just short of a minute nothing has expired.
        let almost = start + JOIN_WINDOW - Duration::from_millis(1);
        assert!(!limiter.admit(ip, alice, LIMITS, almost));
        assert!(limiter.admit(ip, alice, LIMITS, start + JOIN_WINDOW));
    }

    #[tokio::test(start_paused = true)]
    async fn idle_callers_are_forgotten() {
        let limiter = JoinLimiter::default();
        let start = Instant::now();
        for n in 0..SWEEP_EVERY - 1 {
            let ip = IpAddr::from((n as u32).to_be_bytes());
            assert!(limiter.admit(ip, Ulid::generate(), LIMITS, start));
        }
        let later = start + JOIN_WINDOW;
        assert!(limiter.admit([1, 1, 1, 1].into(), Ulid::generate(), LIMITS, later));
        let recent = limiter.recent.lock().expect("lock");
        assert_eq!(recent.len(), 2, "only the last caller's address and user");
    }
}
