//! Who an access token speaks for: the one check behind a REST caller
//! (`http::extract::AuthUser`) and the gateway's `EdgeAccess.Identify`. The
//! user is reloaded on every call, so a deleted account's tokens stop
//! working at once, and a logged-out session's are refused.

use filament_ids::SessionId;

use crate::domain::parse_id;
use crate::error::ApiError;
use crate::state::AppState;
use crate::store::UserRecord;

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
    let claims = state
        .tokens()
        .verify(token)
        .ok_or(ApiError::InvalidCredentials)?;
    let user_id = parse_id(&claims.sub).map_err(|_| ApiError::InvalidCredentials)?;
    let session_id = parse_id(&claims.sid).map_err(|_| ApiError::InvalidCredentials)?;
    // The session is read with the user, from the store that ended it: a
    // logout holds even if the registry lost its copy of the revocation,
    // and no request waits on the registry.
    let user = state
        .store()
        .user_in_session(user_id, session_id)
        .await?
        .ok_or(ApiError::InvalidCredentials)?;
    Ok(Authenticated {
        user,
        session_id,
        expires_at_unix: claims.exp,
    })
}
