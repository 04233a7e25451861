//! The api's error type and its one mapping to HTTP (`{"error":"<code>"}`
//! with the status of PROTOCOL.md §1.3) and to gRPC statuses.

use std::time::Duration;

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::auth::HashError;
use crate::store::StoreError;

/// Every way a request can fail, as PROTOCOL.md §1.3 names it.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("invalid request")]
    InvalidRequest,
    /// The body did not have the expected shape (unknown, missing or
    /// mistyped field): 422 like the reference server, with a JSON body.
    #[error("invalid request body")]
    UnprocessableBody,
    /// A JSON body without `content-type: application/json`: 415 like the
    /// reference server (PROTOCOL.md §1.2), with a JSON body.
    #[error("body is not declared as JSON")]
    UnsupportedMediaType,
    #[error("invalid credentials")]
    InvalidCredentials,
    #[error("forbidden")]
    Forbidden,
    #[error("guild creation limit reached")]
    GuildCreationLimitReached,
    #[error("audit access denied")]
    AuditAccessDenied,
    #[error("directory join refused: user banned")]
    DirectoryJoinUserBanned,
    #[error("directory join refused: ip banned")]
    DirectoryJoinIpBanned,
    #[error("not found")]
    NotFound,
    #[error("payload too large")]
    PayloadTooLarge,
    #[error("quota exceeded")]
    QuotaExceeded,
    #[error("rate limited")]
    RateLimited,
    /// An `Idempotency-Key` already used by this user for another request
    /// (another body or route): 422 (`http::idempotency`).
    #[error("idempotency key reused for another request")]
    IdempotencyKeyReused,
    /// A concurrent request with the same `Idempotency-Key` committed
    /// first. Handlers answer with that request's response instead; should
    /// one escape, it is a 409.
    #[error("idempotency key taken by a concurrent request")]
    IdempotencyKeyTaken,
    /// Shed load: the server is healthy but saturated (password hashing,
    /// see `auth::PasswordHasher`). 503 with `retry-after`.
    #[error("temporarily unavailable")]
    Unavailable { retry_after: Duration },
    #[error("internal error: {0}")]
    Internal(#[from] anyhow::Error),
}

impl ApiError {
    pub fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            Self::InvalidRequest => (StatusCode::BAD_REQUEST, "invalid_request"),
            Self::UnprocessableBody => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_request"),
            Self::UnsupportedMediaType => (StatusCode::UNSUPPORTED_MEDIA_TYPE, "invalid_request"),
            Self::InvalidCredentials => (StatusCode::UNAUTHORIZED, "invalid_credentials"),
            Self::Forbidden => (StatusCode::FORBIDDEN, "forbidden"),
            Self::GuildCreationLimitReached => {
                (StatusCode::FORBIDDEN, "guild_creation_limit_reached")
            }
            Self::AuditAccessDenied => (StatusCode::FORBIDDEN, "audit_access_denied"),
            Self::DirectoryJoinUserBanned => (StatusCode::FORBIDDEN, "directory_join_user_banned"),
            Self::DirectoryJoinIpBanned => (StatusCode::FORBIDDEN, "directory_join_ip_banned"),
            Self::NotFound => (StatusCode::NOT_FOUND, "not_found"),
            Self::PayloadTooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            Self::QuotaExceeded => (StatusCode::CONFLICT, "quota_exceeded"),
            Self::RateLimited => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
            Self::IdempotencyKeyReused => {
                (StatusCode::UNPROCESSABLE_ENTITY, "idempotency_key_reused")
            }
            Self::IdempotencyKeyTaken => (StatusCode::CONFLICT, "idempotency_key_reused"),
            Self::Unavailable { .. } => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            Self::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal_error"),
        }
    }
}

/// The body of every error answer: `{"error":"<code>"}`. The OpenAPI
/// document references this one schema from every non-2xx response.
#[derive(Debug, serde::Serialize)]
pub struct ErrorBody {
    pub error: &'static str,
}

/// Every code [`ApiError::status_and_code`] can answer with, for the
/// schema: clients switch on them, so the document lists them all.
pub const ERROR_CODES: [&str; 14] = [
    "invalid_request",
    "invalid_credentials",
    "forbidden",
    "guild_creation_limit_reached",
    "audit_access_denied",
    "directory_join_user_banned",
    "directory_join_ip_banned",
    "not_found",
    "payload_too_large",
    "quota_exceeded",
    "rate_limited",
    "idempotency_key_reused",
    "unavailable",
    "internal_error",
];

impl utoipa::ToSchema for ErrorBody {}

impl utoipa::PartialSchema for ErrorBody {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{AdditionalProperties, ObjectBuilder, Type};
        let code = ObjectBuilder::new()
            .schema_type(Type::String)
            .enum_values(Some(ERROR_CODES))
            .description(Some("What went wrong, as the contract names it."));
        ObjectBuilder::new()
            .property("error", code)
            .required("error")
            .additional_properties(Some(AdditionalProperties::FreeForm(false)))
            .description(Some("The body of every error response."))
            .into()
    }
}

/// What a client is told to wait before retrying when the database is
/// unavailable.
const DATABASE_RETRY_AFTER: Duration = Duration::from_secs(2);

impl From<StoreError> for ApiError {
    /// The one place a database failure becomes an answer: a database
    /// that is unreachable, out of connections, or held up past the
    /// statement timeout is a 503 with `retry-after` (the request may
    /// succeed later and wrote nothing: a cancelled statement rolls its
    /// transaction back); a write whose `Idempotency-Key` another request
    /// holds is [`Self::IdempotencyKeyTaken`]; anything else is a 500.
    fn from(err: StoreError) -> Self {
        match &err {
            StoreError::Backend(backend) if database_unavailable(backend) => {
                tracing::warn!(error = %err, "database unavailable; answering 503");
                Self::Unavailable {
                    retry_after: DATABASE_RETRY_AFTER,
                }
            }
            StoreError::Conflict("idempotency_key") => Self::IdempotencyKeyTaken,
            _ => Self::Internal(err.into()),
        }
    }
}

/// Whether the error says "not now" rather than "never": the pool timed
/// out or the connection failed, or Postgres cancelled or refused the work
/// for a reason that passes (SQLSTATE `57014` query_canceled — the
/// statement timeout —, `55P03` lock_not_available, `53300`
/// too_many_connections, `57P01`..`57P03` shutdown and start-up, and the
/// connection exceptions `08…`).
fn database_unavailable(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            matches!(
                &*code,
                "57014" | "55P03" | "53300" | "57P01" | "57P02" | "57P03"
            ) || code.starts_with("08")
        }),
        _ => false,
    }
}

impl From<HashError> for ApiError {
    fn from(err: HashError) -> Self {
        match err {
            HashError::Refused { retry_after, .. } => Self::Unavailable { retry_after },
            HashError::Failed(inner) => Self::Internal(inner),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        if let Self::Internal(err) = &self {
            tracing::error!(error = %err, "request failed");
        }
        let mut response = (status, Json(ErrorBody { error: code })).into_response();
        if let Self::Unavailable { retry_after } = self {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, retry_after_secs(retry_after));
        }
        response
    }
}

/// Whole seconds, rounded up and at least 1: `retry-after: 0` would invite
/// the retry storm the 503 is shedding.
fn retry_after_secs(wait: Duration) -> HeaderValue {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    HeaderValue::from(secs.max(1))
}

impl From<ApiError> for tonic::Status {
    fn from(err: ApiError) -> Self {
        match err {
            ApiError::InvalidRequest
            | ApiError::UnprocessableBody
            | ApiError::UnsupportedMediaType
            | ApiError::PayloadTooLarge => Self::invalid_argument(err.to_string()),
            ApiError::InvalidCredentials => Self::unauthenticated(err.to_string()),
            ApiError::Forbidden
            | ApiError::GuildCreationLimitReached
            | ApiError::AuditAccessDenied
            | ApiError::DirectoryJoinUserBanned
            | ApiError::DirectoryJoinIpBanned => Self::permission_denied(err.to_string()),
            ApiError::NotFound => Self::not_found(err.to_string()),
            ApiError::IdempotencyKeyReused | ApiError::IdempotencyKeyTaken => {
                Self::failed_precondition(err.to_string())
            }
            ApiError::RateLimited | ApiError::QuotaExceeded => {
                Self::resource_exhausted(err.to_string())
            }
            ApiError::Unavailable { .. } => Self::unavailable(err.to_string()),
            ApiError::Internal(inner) => {
                tracing::error!(error = %inner, "rpc failed");
                Self::internal("internal error")
            }
        }
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schema_lists_every_code() {
        let every = [
            ApiError::InvalidRequest,
            ApiError::UnprocessableBody,
            ApiError::UnsupportedMediaType,
            ApiError::InvalidCredentials,
            ApiError::Forbidden,
            ApiError::GuildCreationLimitReached,
            ApiError::AuditAccessDenied,
            ApiError::DirectoryJoinUserBanned,
            ApiError::DirectoryJoinIpBanned,
            ApiError::NotFound,
            ApiError::PayloadTooLarge,
            ApiError::QuotaExceeded,
            ApiError::RateLimited,
            ApiError::IdempotencyKeyReused,
            ApiError::IdempotencyKeyTaken,
            ApiError::Unavailable {
                retry_after: Duration::ZERO,
            },
            ApiError::Internal(anyhow::anyhow!("x")),
        ];
        for err in &every {
            let (_, code) = err.status_and_code();
            assert!(ERROR_CODES.contains(&code), "{code} is missing");
        }
    }

    #[tokio::test]
    async fn unavailable_is_503_with_retry_after_in_whole_seconds() {
        let response = ApiError::Unavailable {
            retry_after: Duration::from_millis(2500),
        }
        .into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[header::RETRY_AFTER], "3");
        let body = axum::body::to_bytes(response.into_body(), 1024)
            .await
            .unwrap();
        assert_eq!(&body[..], br#"{"error":"unavailable"}"#);
        let response = ApiError::Unavailable {
            retry_after: Duration::ZERO,
        }
        .into_response();
        assert_eq!(response.headers()[header::RETRY_AFTER], "1");
    }
}
