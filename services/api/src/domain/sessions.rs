//! Who an access token speaks for: the one check behind a REST caller
//! (`http::extract::AuthUser`) and the gateway's `EdgeAccess.Identify`. The
//! user is reloaded on every call, so a deleted account's tokens stop
//! working at once, and a logged-out session's are refused.
//!
//! Also how a session ends: a logout ([`logout`]) or a replayed refresh
//! token ([`rotate`]) revokes it in the store, lists it in the registry,
//! then tells every gateway holding the user (`SessionRevoked`).

use std::net::IpAddr;

use filament_ids::{GuildId, SessionId, UserId};

use crate::auth::RefreshToken;
use crate::domain::parse_id;
use crate::error::{ApiError, ApiResult};
use crate::publish;
use crate::state::AppState;
use crate::store::{RotateOutcome, UserRecord};

/// Who a valid access token speaks for, and for how long.
#[derive(Debug, Clone)]
pub struct Authenticated {
    pub user: UserRecord,
    /// The login session the token was issued for.
    pub session_id: SessionId,
    pub expires_at_unix: i64,
}

/// The user behind a valid access token, if the account still exists and
/// the token's session was not ended (logout).
pub async fn authenticate(state: &AppState, token: &str) -> Result<UserRecord, ApiError> {
    authenticate_session(state, token)
        .await
        .map(|session| session.user)
}

/// [`authenticate`], with the token's session and expiry (the gateway
/// needs both to close the socket when either ends).
pub async fn authenticate_session(
    state: &AppState,
    token: &str,
) -> Result<Authenticated, ApiError> {
    let claimed = claimed_session(state, token)?;
    // The session is read with the user, from the store that ended it: a
    // logout holds even if the registry lost its copy of the revocation,
    // and no request waits on the registry.
    let user = state
        .store()
        .user_in_session(claimed.user_id, claimed.session_id)
        .await?
        .ok_or(ApiError::InvalidCredentials)?;
    Ok(Authenticated {
        user,
        session_id: claimed.session_id,
        expires_at_unix: claimed.expires_at_unix,
    })
}

/// The user and session a validly signed, unexpired access token names;
/// whether that session is still live is the store's to say.
struct Claimed {
    user_id: UserId,
    session_id: SessionId,
    expires_at_unix: i64,
}

fn claimed_session(state: &AppState, token: &str) -> Result<Claimed, ApiError> {
    let claims = state
        .tokens()
        .verify(token)
        .ok_or(ApiError::InvalidCredentials)?;
    Ok(Claimed {
        user_id: parse_id(&claims.sub).map_err(|_| ApiError::InvalidCredentials)?,
        session_id: parse_id(&claims.sid).map_err(|_| ApiError::InvalidCredentials)?,
        expires_at_unix: claims.exp,
    })
}

/// What [`authenticate`] answers for one access token.
#[derive(Debug, Clone)]
pub enum Caller {
    /// The token is valid and its session live: whom it speaks for.
    User(UserRecord),
    /// An invalid or expired token, an ended session or a deleted account.
    Refused,
}

impl Caller {
    /// The user, or `InvalidCredentials`, as [`authenticate`] answers.
    pub fn into_user(self) -> Result<UserRecord, ApiError> {
        match self {
            Self::User(user) => Ok(user),
            Self::Refused => Err(ApiError::InvalidCredentials),
        }
    }
}

/// What the IP gate of a guild route read (PROTOCOL.md §1.8).
#[derive(Debug, Clone)]
pub struct Gate {
    /// An active IP ban of the guild covers the caller's address.
    pub banned: bool,
    /// What [`authenticate`] answers for the request's access token, read
    /// by the same statement; `None` for a request without one.
    pub caller: Option<Caller>,
}

/// The IP gate of a guild route: whether an active ban of `guild_id`
/// covers `ip` at `now_unix` and, when the request carries an access
/// token, its caller, as [`authenticate`] would answer, in one store
/// read. A route behind the gate needs the caller next; this is the same
/// fresh read of the same request, not a remembered one.
pub async fn gate(
    state: &AppState,
    guild_id: GuildId,
    ip: IpAddr,
    now_unix: i64,
    token: Option<&str>,
) -> ApiResult<Gate> {
    let claimed = token.map(|token| claimed_session(state, token).ok());
    let session = claimed
        .as_ref()
        .and_then(Option::as_ref)
        .map(|claimed| (claimed.user_id, claimed.session_id));
    let read = state
        .store()
        .ip_gate(guild_id, ip, now_unix, session)
        .await?;
    let caller = claimed.map(|claimed| match (claimed, read.user) {
        (Some(_), Some(user)) => Caller::User(user),
        _ => Caller::Refused,
    });
    Ok(Gate {
        banned: read.banned,
        caller,
    })
}

/// Rotates the session `presented` names to `next` (valid until
/// `expires_at_unix`), and returns the session's user. A replayed refresh
/// token revokes its session and ends it everywhere ([`end_session`]):
/// whoever replayed it may hold the session's access tokens too.
pub async fn rotate(
    state: &AppState,
    presented: &RefreshToken,
    next: &RefreshToken,
    expires_at_unix: i64,
    now: i64,
) -> ApiResult<UserId> {
    // A replay revokes the session, and stores `session_revoked` for the
    // session's user, whom only its transaction knows.
    let deferred = publish::Deferred::new(state.publisher());
    let outbox = |user_id: &UserId| {
        deferred.rows(vec![publish::session_revoked(
            *user_id,
            presented.session_id,
        )])
    };
    let outcome = state
        .store()
        .rotate_session(
            presented.session_id,
            &presented.hash(),
            &next.hash(),
            expires_at_unix,
            now,
            &outbox,
        )
        .await?;
    match outcome {
        RotateOutcome::Rotated { user_id } => Ok(user_id),
        RotateOutcome::Replayed { .. } => {
            tracing::warn!(session = %presented.session_id, "refresh token replayed; session revoked");
            // Whoever replayed it may hold the session's access tokens too.
            end_session(state, presented.session_id, deferred).await?;
            Err(ApiError::InvalidCredentials)
        }
        RotateOutcome::Invalid => Err(ApiError::InvalidCredentials),
    }
}

/// Ends the session `presented` names, everywhere ([`end_session`]): a
/// logout.
pub async fn logout(state: &AppState, presented: &RefreshToken) -> ApiResult<()> {
    // `session_revoked` for the session's user, whom only the revoking
    // transaction knows.
    let deferred = publish::Deferred::new(state.publisher());
    let outbox = |user_id: &UserId| {
        deferred.rows(vec![publish::session_revoked(
            *user_id,
            presented.session_id,
        )])
    };
    state
        .store()
        .revoke_session(presented.session_id, &presented.hash(), &outbox)
        .await?
        .ok_or(ApiError::InvalidCredentials)?;
    end_session(state, presented.session_id, deferred).await
}

/// Ends a session the store has just revoked, everywhere: from now on its
/// access tokens are refused, by REST and by the gateways' `Identify`
/// (the registry lists it for as long as any of them can still be valid),
/// and before this returns every gateway holding the user has closed the
/// session's sockets (4012). Only then does a logout answer 204.
/// `revoked` holds the `session_revoked` event the revocation stored.
async fn end_session(
    state: &AppState,
    session_id: SessionId,
    revoked: publish::Deferred<'_>,
) -> ApiResult<()> {
    let ttl = state.config().access_token_ttl;
    if let Err(err) = state
        .registry()
        .revoke_session(&session_id.to_string(), ttl)
        .await
    {
        // The store has revoked the session, which is what REST and
        // `Identify` read; the registry's list only closes the race of a
        // socket registering during the logout. Redis being down must not
        // keep the gateways from hearing of it: the event below goes to
        // every gateway while the registry fails.
        tracing::warn!(%err, "cannot list the revoked session in the registry");
    }
    // Only now, after the registry (see `publish::session_revoked`): a
    // socket this misses, identified just before, finds the revocation
    // there.
    for pending in revoked.into_pending() {
        pending
            .publish_acked(state.publisher(), "session revocation")
            .await;
    }
    Ok(())
}
