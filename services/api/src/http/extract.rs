//! Request extractors that fail the way the contract says: every rejection
//! becomes an [`ApiError`] with a `{"error":…}` body.

use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use serde::de::{DeserializeOwned, IgnoredAny};

use crate::error::ApiError;
use crate::state::AppState;
use crate::store::UserRecord;

/// The authenticated caller, reloaded from storage on every request.
#[derive(Debug, Clone)]
pub struct AuthUser(pub UserRecord);

impl FromRequestParts<AppState> for AuthUser {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let token = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or(ApiError::InvalidCredentials)?;
        authenticate(state, token).await.map(Self)
    }
}

/// The user behind a valid access token, if the account still exists.
pub async fn authenticate(state: &AppState, token: &str) -> Result<UserRecord, ApiError> {
    let claims = state
        .tokens()
        .verify(token)
        .ok_or(ApiError::InvalidCredentials)?;
    let user_id = crate::domain::parse_id(&claims.sub).map_err(|_| ApiError::InvalidCredentials)?;
    state
        .store()
        .user_by_id(user_id)
        .await?
        .ok_or(ApiError::InvalidCredentials)
}

/// A JSON body declared as `application/json` (else 415). Text that is not
/// JSON is a 400; JSON of the wrong shape (an unknown, missing or mistyped
/// field) is a 422, whichever way serde reports it; an oversized body 413.
#[derive(Debug, Clone)]
pub struct JsonBody<T>(pub T);

impl<T, S> FromRequest<S> for JsonBody<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !declares_json(req.headers()) {
            return Err(ApiError::UnsupportedMediaType);
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            match rejection.status() {
                StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge,
                _ => ApiError::InvalidRequest,
            }
        })?;
        match serde_json::from_slice::<T>(&bytes) {
            Ok(value) => Ok(Self(value)),
            Err(err) if err.is_data() => Err(ApiError::UnprocessableBody),
            // serde reports some shape errors (a number where an enum
            // belongs) as syntax errors; valid JSON means it was the shape.
            Err(_) if serde_json::from_slice::<IgnoredAny>(&bytes).is_ok() => {
                Err(ApiError::UnprocessableBody)
            }
            Err(_) => Err(ApiError::InvalidRequest),
        }
    }
}

/// `application/json` or an `application/*+json` type, any parameters.
fn declares_json(headers: &HeaderMap) -> bool {
    let Some(value) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = value
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// Query parameters; any problem is a 400.
#[derive(Debug, Clone)]
pub struct QueryParams<T>(pub T);

impl<T, S> FromRequestParts<S> for QueryParams<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Query(value)| Self(value))
            .map_err(|_: QueryRejection| ApiError::InvalidRequest)
    }
}

/// Path segments that must be canonical ULIDs; anything else is a 400.
#[derive(Debug, Clone)]
pub struct Ids<const N: usize>(pub [ulid::Ulid; N]);

impl<const N: usize, S> FromRequestParts<S> for Ids<N>
where
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let axum::extract::Path(raw) =
            axum::extract::Path::<Vec<String>>::from_request_parts(parts, state)
                .await
                .map_err(|_| ApiError::InvalidRequest)?;
        let ids: Vec<_> = raw
            .iter()
            .map(|segment| crate::domain::parse_id(segment))
            .collect::<Result<_, _>>()?;
        ids.try_into()
            .map(Self)
            .map_err(|_| ApiError::InvalidRequest)
    }
}
