//! `Idempotency-Key` on REST writes (today `POST …/messages`). A client
//! that got no answer (its request timed out after the commit, or the
//! connection dropped) retries with the same key, and gets the original
//! response instead of making a duplicate. The key and the response are
//! recorded in the write's own transaction (`store::idempotency`), per user,
//! for [`KEY_TTL`]. See docs/adr/0006-outbox.md.
//!
//! A key is 1 to [`MAX_KEY_LEN`] characters of `A-Z a-z 0-9 - _ . :` (a
//! UUID or a ULID fits); anything else is 400 `invalid_request`. A retry
//! whose request differs from the original (another body or another
//! channel) is 422 `idempotency_key_reused`: replaying the original would
//! answer a question that was not asked.

use std::time::Duration;

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use sha2::{Digest as _, Sha256};
use ulid::Ulid;

use crate::clock::now_unix;
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;
use crate::store::{IdempotencyRecord, StoredResponse};

pub const HEADER: &str = "idempotency-key";
/// Longest key accepted, so a row stays small whatever a client sends.
pub const MAX_KEY_LEN: usize = 128;
/// How long a key is remembered: longer than any client retries.
pub const KEY_TTL: Duration = Duration::from_secs(24 * 3600);

/// A write sent with an idempotency key: who sent it, the key, and a
/// fingerprint of what it asked for.
pub struct Keyed {
    user_id: Ulid,
    key: String,
    fingerprint: String,
}

impl Keyed {
    /// The request's key, if it sent one, with the fingerprint of `parts`
    /// (the route and every field of the body that matters).
    pub fn from_headers(
        headers: &HeaderMap,
        user_id: Ulid,
        parts: &[&str],
    ) -> ApiResult<Option<Self>> {
        let mut values = headers.get_all(HEADER).iter();
        let Some(value) = values.next() else {
            return Ok(None);
        };
        if values.next().is_some() {
            return Err(ApiError::InvalidRequest);
        }
        Ok(Some(Self {
            user_id,
            key: parse_key(value)?,
            fingerprint: fingerprint(parts),
        }))
    }

    /// The original response when this key was already used for the same
    /// request; 422 when it was used for another.
    pub async fn replay(&self, state: &AppState) -> ApiResult<Option<Response>> {
        let stored = state
            .store()
            .idempotent_response(self.user_id, &self.key, expired_before())
            .await?;
        stored.map(|stored| self.replay_of(stored)).transpose()
    }

    fn replay_of(&self, stored: StoredResponse) -> ApiResult<Response> {
        if stored.fingerprint != self.fingerprint {
            return Err(ApiError::IdempotencyKeyReused);
        }
        let status = StatusCode::from_u16(stored.status)
            .map_err(|err| ApiError::Internal(anyhow::anyhow!("stored status: {err}")))?;
        let mut response = (status, stored.response).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        Ok(response)
    }

    /// The row to write with the change, holding `body` as the response.
    pub fn record(
        &self,
        status: StatusCode,
        body: &impl Serialize,
    ) -> ApiResult<IdempotencyRecord> {
        let response = serde_json::to_string(body)
            .map_err(|err| ApiError::Internal(anyhow::anyhow!("response body: {err}")))?;
        Ok(IdempotencyRecord {
            user_id: self.user_id,
            key: self.key.clone(),
            fingerprint: self.fingerprint.clone(),
            status: status.as_u16(),
            response,
            created_at_unix: now_unix(),
            expired_before_unix: expired_before(),
        })
    }
}

fn parse_key(value: &HeaderValue) -> ApiResult<String> {
    let key = value.to_str().map_err(|_| ApiError::InvalidRequest)?;
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':');
    if key.is_empty() || key.len() > MAX_KEY_LEN || !key.chars().all(allowed) {
        return Err(ApiError::InvalidRequest);
    }
    Ok(key.to_owned())
}

/// Each part is length-prefixed, so no two different requests can run
/// together into the same bytes.
fn fingerprint(parts: &[&str]) -> String {
    let mut hash = Sha256::new();
    for part in parts {
        hash.update((part.len() as u64).to_be_bytes());
        hash.update(part.as_bytes());
    }
    hash.finalize()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

fn expired_before() -> i64 {
    now_unix().saturating_sub(i64::try_from(KEY_TTL.as_secs()).unwrap_or(i64::MAX))
}

/// Forgets keys older than [`KEY_TTL`]; the outbox relay calls it now and
/// then, so keys of users who never write again go too.
pub async fn prune(state: &AppState) {
    if let Err(err) = state.store().prune_idempotency_keys(expired_before()).await {
        tracing::warn!(%err, "cannot prune expired idempotency keys");
    }
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
        let user = Ulid::generate();
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

    #[test]
    fn fingerprints_tell_requests_apart() {
        assert_eq!(fingerprint(&["a", "bc"]), fingerprint(&["a", "bc"]));
        assert_ne!(fingerprint(&["a", "bc"]), fingerprint(&["ab", "c"]));
        assert_eq!(fingerprint(&[]).len(), 64);
    }
}
