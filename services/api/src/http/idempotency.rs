//! The REST `Idempotency-Key` header on writes (today `POST …/messages`).
//! A client that got no answer (its request timed out after the commit, or
//! the connection dropped) retries with the same key, and gets the original
//! response instead of making a duplicate. What a key means and how long it
//! is remembered is `domain::idempotency`'s; this module reads the header
//! and turns a stored response back into an HTTP one.
//!
//! A key is 1 to [`MAX_KEY_LEN`] characters of `A-Z a-z 0-9 - _ . :` (a
//! UUID or a ULID fits); anything else is 400 `invalid_request`. A retry
//! whose request differs from the original (another body or another
//! channel) is 422 `idempotency_key_reused`: replaying the original would
//! answer a question that was not asked.

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use filament_ids::UserId;

use crate::domain::idempotency::IdempotencyKey;
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;
use crate::store::StoredResponse;

pub const HEADER: &str = "idempotency-key";
/// Longest key accepted, so a row stays small whatever a client sends.
pub const MAX_KEY_LEN: usize = 128;

/// A write sent with an `Idempotency-Key` header.
pub struct Keyed(IdempotencyKey);

impl Keyed {
    /// The request's key, if it sent one, with the fingerprint of `parts`
    /// (the route and every field of the body that matters).
    pub fn from_headers(
        headers: &HeaderMap,
        user_id: UserId,
        parts: &[&str],
    ) -> ApiResult<Option<Self>> {
        let mut values = headers.get_all(HEADER).iter();
        let Some(value) = values.next() else {
            return Ok(None);
        };
        if values.next().is_some() {
            return Err(ApiError::InvalidRequest);
        }
        let key = parse_key(value)?;
        Ok(Some(Self(IdempotencyKey::new(user_id, key, parts))))
    }

    /// The key, for the use case to record with its change.
    pub fn key(&self) -> &IdempotencyKey {
        &self.0
    }

    /// The original response when this key was already used for the same
    /// request; 422 when it was used for another.
    pub async fn replay(&self, state: &AppState) -> ApiResult<Option<Response>> {
        let stored = self.0.stored_response(state).await?;
        stored.map(replay_of).transpose()
    }
}

fn replay_of(stored: StoredResponse) -> ApiResult<Response> {
    let status = StatusCode::from_u16(stored.status)
        .map_err(|err| ApiError::Internal(anyhow::anyhow!("stored status: {err}")))?;
    let mut response = (status, stored.response).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok(response)
}

fn parse_key(value: &HeaderValue) -> ApiResult<String> {
    let key = value.to_str().map_err(|_| ApiError::InvalidRequest)?;
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':');
    if key.is_empty() || key.len() > MAX_KEY_LEN || !key.chars().all(allowed) {
        return Err(ApiError::InvalidRequest);
    }
    Ok(key.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(HEADER, HeaderValue::from_str(value).expect("value"));
        }
        headers
    }

    #[test]
    fn keys_are_checked_at_the_door() {
        let user = UserId::generate();
        let parse = |values: &[&str]| Keyed::from_headers(&headers(values), user, &["x"]);
        assert!(parse(&[]).expect("no key").is_none());
        for good in ["a", "3f2c1d7e-0b1a-4c55-9d1e-0f6c1a2b3c4d", "01J:x_y.z"] {
            assert!(parse(&[good]).expect("valid").is_some(), "{good}");
        }
        let long = "k".repeat(MAX_KEY_LEN + 1);
        for bad in ["", "a b", "é", "a/b", long.as_str()] {
            assert!(
                matches!(parse(&[bad]), Err(ApiError::InvalidRequest)),
                "{bad:?}"
            );
        }
        assert!(matches!(parse(&["a", "b"]), Err(ApiError::InvalidRequest)));
    }
}
