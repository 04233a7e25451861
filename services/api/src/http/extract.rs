//! Request extractors that fail the way the contract says: every rejection
//! becomes an [`ApiError`] with a `{"error":…}` body.

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::header;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

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

/// A JSON body. Syntax errors are 400, shape errors (unknown, missing or
/// mistyped fields) 422, an oversized body 413.
#[derive(Debug, Clone)]
pub struct JsonBody<T>(pub T);

impl<T, S> FromRequest<S> for JsonBody<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(value)) => Ok(Self(value)),
            Err(JsonRejection::JsonDataError(_)) => Err(ApiError::UnprocessableBody),
            Err(JsonRejection::BytesRejection(rejection))
                if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE =>
            {
                Err(ApiError::PayloadTooLarge)
            }
            Err(_) => Err(ApiError::InvalidRequest),
        }
    }
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
