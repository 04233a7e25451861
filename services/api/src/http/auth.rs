//! `/auth/*`: register, login, refresh, logout, me.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use filament_wire::Profile;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::routes;

use crate::auth::RefreshToken;
use crate::clock::now_unix;
use crate::domain::sessions;
use crate::domain::{Password, Username, storable_text};
use crate::error::ErrorBody;
use crate::error::{ApiError, ApiResult};
use crate::http::client_ip::ClientIp;
use crate::http::extract::{AuthUser, JsonBody};
use crate::http::openapi::ApiRouter;
use crate::http::roles::{ACK, Ack};
use crate::rate_limit::AuthRoute;
use crate::state::AppState;
use crate::store::{NewSession, NewUser, StoreError, UserRecord};

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterDto {
    /// 3–32 of `[A-Za-z0-9_.]`.
    #[schema(pattern = "^[A-Za-z0-9_.]{3,32}$")]
    username: String,
    /// 12–128 bytes.
    #[schema(min_length = 12, max_length = 128)]
    password: String,
    /// Only checked when hCaptcha is configured; ignored otherwise, except
    /// that a NUL is refused as in every text field.
    #[serde(default)]
    captcha_token: Option<String>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginDto {
    username: String,
    password: String,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefreshDto {
    refresh_token: String,
}

#[derive(Serialize, ToSchema)]
pub struct TokenPair {
    access_token: String,
    refresh_token: String,
    expires_in_secs: u64,
}

/// The Profile shape (PROTOCOL.md §1.9) of a stored user.
pub fn profile(user: &UserRecord) -> ApiResult<Profile> {
    let tokens = crate::markdown::tokenize(&user.about_markdown)
        .iter()
        .map(filament_wire::MarkdownToken::try_from)
        .collect::<Result<_, _>>()
        .map_err(|err| ApiError::Internal(anyhow::anyhow!("markdown token: {err}")))?;
    Ok(Profile {
        user_id: user.user_id.to_string(),
        username: user.username.clone(),
        about_markdown: user.about_markdown.clone(),
        about_markdown_tokens: tokens,
        avatar_version: user.avatar_version,
        banner_version: user.banner_version,
    })
}

/// Always answers `{accepted:true}` for a well-formed request, so the
/// response does not tell whether a username exists.
#[utoipa::path(
    post,
    path = "/auth/register",
    tag = "auth",
    request_body = RegisterDto,
    responses(
        (status = 200, description = "Accepted, whether or not the name was free.", body = Ack),
        (status = 500, description = "An unexpected failure (`internal_error`).", body = ErrorBody),
        (status = 503, description = "Shedding load (`unavailable`), with `retry-after`.", body = ErrorBody),
    ),
)]
pub async fn register(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    JsonBody(dto): JsonBody<RegisterDto>,
) -> ApiResult<Json<Ack>> {
    state.auth_limiter().check(AuthRoute::Register, ip)?;
    let username = Username::try_from(dto.username)?;
    let password = Password::try_from(dto.password)?;
    if dto
        .captcha_token
        .as_deref()
        .is_some_and(|token| !storable_text(token))
    {
        return Err(ApiError::InvalidRequest);
    }
    let password_hash = state.passwords().hash(password.expose()).await?;
    let user = NewUser {
        user_id: state.new_id(),
        username: username.as_str().to_owned(),
        password_hash,
        created_at_unix: now_unix(),
    };
    match state.store().create_user(user).await {
        Ok(()) | Err(StoreError::Conflict(_)) => Ok(Json(ACK)),
        Err(err) => Err(err.into()),
    }
}

#[utoipa::path(
    post,
    path = "/auth/login",
    tag = "auth",
    request_body = LoginDto,
    responses(
        (status = 200, description = "A new session's tokens.", body = TokenPair),
        (status = 401, description = "Wrong name or password, or the account is locked out (`invalid_credentials`).", body = ErrorBody),
        (status = 500, description = "An unexpected failure (`internal_error`).", body = ErrorBody),
        (status = 503, description = "Shedding load (`unavailable`), with `retry-after`.", body = ErrorBody),
    ),
)]
pub async fn login(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    JsonBody(dto): JsonBody<LoginDto>,
) -> ApiResult<Json<TokenPair>> {
    state.auth_limiter().check(AuthRoute::Login, ip)?;
    // A malformed username or password is a failed login, not a 400.
    let (Ok(username), Ok(password)) = (
        Username::try_from(dto.username),
        Password::try_from(dto.password),
    ) else {
        return Err(ApiError::InvalidCredentials);
    };
    // One account, one lockout, whatever case the attempts spell it in:
    // `VICTIM` logs into `victim`, so its failures count against it too.
    let account = username.folded();
    if state.lockout().is_locked(&account) {
        return Err(ApiError::InvalidCredentials);
    }
    let user = state.store().user_by_username(username.as_str()).await?;
    let stored_hash = user.as_ref().map(|u| u.password_hash.as_str());
    let valid = state
        .passwords()
        .verify(password.expose(), stored_hash)
        .await?;
    let Some(user) = user.filter(|_| valid) else {
        state.lockout().record_failure(&account);
        return Err(ApiError::InvalidCredentials);
    };
    state.lockout().record_success(&account);
    let refresh = RefreshToken::generate(state.new_id());
    state
        .store()
        .create_session(NewSession {
            session_id: refresh.session_id,
            user_id: user.user_id,
            refresh_token_hash: refresh.hash(),
            expires_at_unix: now_unix() + session_ttl(&state),
        })
        .await?;
    token_pair(&state, &user, &refresh)
}

#[utoipa::path(
    post,
    path = "/auth/refresh",
    tag = "auth",
    request_body = RefreshDto,
    responses(
        (status = 200, description = "The rotated tokens.", body = TokenPair),
        (status = 401, description = "The refresh token is unknown, expired or replayed (`invalid_credentials`).", body = ErrorBody),
        (status = 500, description = "An unexpected failure (`internal_error`).", body = ErrorBody),
        (status = 503, description = "The database is unavailable (`unavailable`), with `retry-after`.", body = ErrorBody),
    ),
)]
pub async fn refresh(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    JsonBody(dto): JsonBody<RefreshDto>,
) -> ApiResult<Json<TokenPair>> {
    state.auth_limiter().check(AuthRoute::Refresh, ip)?;
    let presented = RefreshToken::parse(&dto.refresh_token).ok_or(ApiError::InvalidCredentials)?;
    let next = RefreshToken::generate(presented.session_id);
    let now = now_unix();
    let user_id =
        sessions::rotate(&state, &presented, &next, now + session_ttl(&state), now).await?;
    let user = state
        .store()
        .user_by_id(user_id)
        .await?
        .ok_or(ApiError::InvalidCredentials)?;
    token_pair(&state, &user, &next)
}

#[utoipa::path(
    post,
    path = "/auth/logout",
    tag = "auth",
    request_body = RefreshDto,
    responses(
        (status = 204, description = "The session is ended everywhere."),
        (status = 401, description = "The refresh token is unknown or expired (`invalid_credentials`).", body = ErrorBody),
        (status = 500, description = "An unexpected failure (`internal_error`).", body = ErrorBody),
        (status = 503, description = "The database is unavailable (`unavailable`), with `retry-after`.", body = ErrorBody),
    ),
)]
pub async fn logout(
    State(state): State<AppState>,
    JsonBody(dto): JsonBody<RefreshDto>,
) -> ApiResult<StatusCode> {
    let presented = RefreshToken::parse(&dto.refresh_token).ok_or(ApiError::InvalidCredentials)?;
    sessions::logout(&state, &presented).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(
    get,
    path = "/auth/me",
    tag = "auth",
    security(("bearer" = [])),
    responses((status = 200, description = "The caller's profile.", body = Profile)),
)]
pub async fn me(AuthUser(user): AuthUser) -> ApiResult<Json<Profile>> {
    profile(&user).map(Json)
}

fn session_ttl(state: &AppState) -> i64 {
    i64::try_from(state.config().session_ttl.as_secs()).unwrap_or(i64::MAX / 2)
}

fn token_pair(
    state: &AppState,
    user: &UserRecord,
    refresh: &RefreshToken,
) -> ApiResult<Json<TokenPair>> {
    let ttl = state.config().access_token_ttl.as_secs();
    let access_token = state.tokens().issue(
        user.user_id,
        refresh.session_id,
        &user.username,
        now_unix(),
        i64::try_from(ttl).unwrap_or(900),
    )?;
    Ok(Json(TokenPair {
        access_token,
        refresh_token: refresh.expose(),
        expires_in_secs: ttl,
    }))
}

pub fn routes() -> ApiRouter {
    ApiRouter::new()
        .routes(routes!(register))
        .routes(routes!(login))
        .routes(routes!(refresh))
        .routes(routes!(logout))
        .routes(routes!(me))
}
