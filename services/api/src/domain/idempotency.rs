//! Idempotency keys on writes, apart from how a request carries them (the
//! REST `Idempotency-Key` header is parsed in `http::idempotency`). A key is
//! remembered per user for [`KEY_TTL`], with a fingerprint of the request it
//! was first used for and the response it got, in the write's own
//! transaction (`store::idempotency`). See docs/adr/0006-outbox.md.

use std::time::Duration;

use filament_ids::UserId;
use serde::Serialize;
use sha2::{Digest as _, Sha256};

use crate::clock::now_unix;
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;
use crate::store::{IdempotencyRecord, StoredResponse};

/// How long a key is remembered: longer than any client retries.
pub const KEY_TTL: Duration = Duration::from_secs(24 * 3600);

/// A write sent with an idempotency key: who sent it, the key, and a
/// fingerprint of what it asked for.
#[derive(Debug)]
pub struct IdempotencyKey {
    user_id: UserId,
    key: String,
    fingerprint: String,
}

impl IdempotencyKey {
    /// `key` as the adapter accepted it, with the fingerprint of `parts`
    /// (the route and every field of the body that matters).
    pub fn new(user_id: UserId, key: String, parts: &[&str]) -> Self {
        Self {
            user_id,
            key,
            fingerprint: fingerprint(parts),
        }
    }

    /// The original response when this key was already used for the same
    /// request; `IdempotencyKeyReused` when it was used for another.
    pub async fn stored_response(&self, state: &AppState) -> ApiResult<Option<StoredResponse>> {
        let stored = state
            .store()
            .idempotent_response(self.user_id, &self.key, expired_before())
            .await?;
        match stored {
            Some(stored) if stored.fingerprint != self.fingerprint => {
                Err(ApiError::IdempotencyKeyReused)
            }
            stored => Ok(stored),
        }
    }

    /// The row to write with the change, holding `body` as the response.
    pub fn record(&self, status: u16, body: &impl Serialize) -> ApiResult<IdempotencyRecord> {
        let response = serde_json::to_string(body)
            .map_err(|err| ApiError::Internal(anyhow::anyhow!("response body: {err}")))?;
        Ok(IdempotencyRecord {
            user_id: self.user_id,
            key: self.key.clone(),
            fingerprint: self.fingerprint.clone(),
            status,
            response,
            created_at_unix: now_unix(),
            expired_before_unix: expired_before(),
        })
    }
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

    #[test]
    fn fingerprints_tell_requests_apart() {
        assert_eq!(fingerprint(&["a", "bc"]), fingerprint(&["a", "bc"]));
        assert_ne!(fingerprint(&["a", "bc"]), fingerprint(&["ab", "c"]));
        assert_eq!(fingerprint(&[]).len(), 64);
    }
}
