//! Idempotency keys: the response of a REST write sent with an
//! `Idempotency-Key`, stored in the write's own transaction. A client whose
//! request timed out after its commit retries with the same key and gets
//! the original response instead of a duplicate (docs/adr/0006-outbox.md).
//! Either the write and its key commit together or neither does, so a key
//! is never recorded for a write that did not happen, and two concurrent
//! requests with one key cannot both write: the second's insert conflicts
//! on the key and rolls its write back.

use async_trait::async_trait;
use filament_ids::UserId;
use sqlx::{
    ColumnIndex, Database, Decode, Encode, Executor, IntoArguments, Row, Transaction, Type,
};

use super::sql::SqlStore;
use super::{StoreError, StoreResult};

/// A key to record with a write. The caller validated the key (length,
/// characters) and bounds the response's size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyRecord {
    pub user_id: UserId,
    pub key: String,
    /// What the request asked for; a retry must ask for the same.
    pub fingerprint: String,
    pub status: u16,
    /// The response body, JSON.
    pub response: String,
    pub created_at_unix: i64,
    /// A row of the same key older than this has expired, and is replaced.
    pub expired_before_unix: i64,
}

/// The recorded outcome of an earlier request with the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredResponse {
    pub fingerprint: String,
    pub status: u16,
    pub response: String,
}

#[async_trait]
pub trait IdempotencyStore: Send + Sync + 'static {
    /// The response recorded for the user's key, unless it was recorded
    /// before `not_before_unix` (expired).
    async fn idempotent_response(
        &self,
        user_id: UserId,
        key: &str,
        not_before_unix: i64,
    ) -> StoreResult<Option<StoredResponse>>;

    /// Deletes every key recorded before `before_unix`.
    async fn prune_idempotency_keys(&self, before_unix: i64) -> StoreResult<()>;
}

impl<DB> SqlStore<DB>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    for<'q> String: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
{
    /// Records the key inside `tx`. A live row of the same key makes this
    /// `StoreError::Conflict("idempotency_key")`, and the caller's write
    /// rolls back with the transaction.
    pub(super) async fn record_idempotency(
        tx: &mut Transaction<'_, DB>,
        record: IdempotencyRecord,
    ) -> StoreResult<()> {
        sqlx::query(
            "DELETE FROM idempotency_keys \
             WHERE user_id = $1 AND idempotency_key = $2 AND created_at_unix < $3",
        )
        .bind(record.user_id.to_string())
        .bind(record.key.clone())
        .bind(record.expired_before_unix)
        .execute(&mut **tx)
        .await?;
        sqlx::query(
            "INSERT INTO idempotency_keys \
             (user_id, idempotency_key, fingerprint, status, response, created_at_unix) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(record.user_id.to_string())
        .bind(record.key)
        .bind(record.fingerprint)
        .bind(i64::from(record.status))
        .bind(record.response)
        .bind(record.created_at_unix)
        .execute(&mut **tx)
        .await
        .map_err(super::sql::conflict_on("idempotency_key"))?;
        Ok(())
    }
}

#[async_trait]
impl<DB> IdempotencyStore for SqlStore<DB>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    for<'q> String: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'i> &'i str: ColumnIndex<DB::Row>,
{
    async fn idempotent_response(
        &self,
        user_id: UserId,
        key: &str,
        not_before_unix: i64,
    ) -> StoreResult<Option<StoredResponse>> {
        let row = sqlx::query(
            "SELECT fingerprint, status, response FROM idempotency_keys \
             WHERE user_id = $1 AND idempotency_key = $2 AND created_at_unix >= $3",
        )
        .bind(user_id.to_string())
        .bind(key.to_owned())
        .bind(not_before_unix)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let status: i64 = row.try_get("status")?;
        Ok(Some(StoredResponse {
            fingerprint: row.try_get("fingerprint")?,
            status: u16::try_from(status).map_err(|err| {
                StoreError::from(sqlx::Error::ColumnDecode {
                    index: "status".to_owned(),
                    source: Box::new(err),
                })
            })?,
            response: row.try_get("response")?,
        }))
    }

    async fn prune_idempotency_keys(&self, before_unix: i64) -> StoreResult<()> {
        sqlx::query("DELETE FROM idempotency_keys WHERE created_at_unix < $1")
            .bind(before_unix)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::store::tests::{TextChannel, conformance, new_id};
    use crate::store::{MessageInsert, Store};

    conformance!(
        a_key_commits_with_its_write_and_replays_until_it_expires,
        a_write_that_does_not_happen_records_no_key,
    );

    fn key(user_id: UserId, key: &str, created_at_unix: i64) -> IdempotencyRecord {
        IdempotencyRecord {
            user_id,
            key: key.to_owned(),
            fingerprint: format!("fp-{key}"),
            status: 200,
            response: format!(r#"{{"key":"{key}"}}"#),
            created_at_unix,
            expired_before_unix: created_at_unix - 100,
        }
    }

    async fn a_key_commits_with_its_write_and_replays_until_it_expires(store: Arc<dyn Store>) {
        let place = TextChannel::create(&*store).await;
        let user = place.author;
        let first = place.message("hello");
        let inserted = store
            .create_message_with_attachments(first, &[], None, Some(key(user, "k1", 1000)))
            .await
            .expect("create");
        assert_eq!(inserted, MessageInsert::Created);
        let stored = store
            .idempotent_response(user, "k1", 900)
            .await
            .expect("lookup")
            .expect("recorded");
        assert_eq!(
            stored,
            StoredResponse {
                fingerprint: "fp-k1".to_owned(),
                status: 200,
                response: r#"{"key":"k1"}"#.to_owned(),
            }
        );
        // Keys are per user.
        assert_eq!(
            store
                .idempotent_response(new_id(), "k1", 0)
                .await
                .expect("lookup"),
            None
        );
        // A second write under a live key writes nothing at all.
        let duplicate = place.message("hello");
        let refused = store
            .create_message_with_attachments(
                duplicate.clone(),
                &[],
                None,
                Some(key(user, "k1", 1050)),
            )
            .await;
        assert!(
            matches!(refused, Err(StoreError::Conflict("idempotency_key"))),
            "{refused:?}"
        );
        let (g, c) = (place.guild_id, place.channel_id);
        assert_eq!(
            store
                .message(g, c, duplicate.message_id)
                .await
                .expect("read"),
            None
        );
        // Expired, it is no longer replayed, and a new write may take it.
        assert_eq!(
            store
                .idempotent_response(user, "k1", 1001)
                .await
                .expect("lookup"),
            None
        );
        let mut renewed = key(user, "k1", 2000);
        renewed.fingerprint = "fp-renewed".to_owned();
        store
            .create_message_with_attachments(place.message("hello"), &[], None, Some(renewed))
            .await
            .expect("create");
        let stored = store
            .idempotent_response(user, "k1", 1500)
            .await
            .expect("lookup")
            .expect("recorded");
        assert_eq!(stored.fingerprint, "fp-renewed");
        // Pruning drops what is older than the cut only.
        store
            .create_message_with_attachments(
                place.message("hello"),
                &[],
                None,
                Some(key(user, "k2", 10)),
            )
            .await
            .expect("create");
        store.prune_idempotency_keys(1000).await.expect("prune");
        assert_eq!(
            store
                .idempotent_response(user, "k2", 0)
                .await
                .expect("lookup"),
            None
        );
        assert!(
            store
                .idempotent_response(user, "k1", 0)
                .await
                .expect("lookup")
                .is_some()
        );
    }

    async fn a_write_that_does_not_happen_records_no_key(store: Arc<dyn Store>) {
        let place = TextChannel::create(&*store).await;
        let refused = store
            .create_message_with_attachments(
                place.message("hello"),
                &[new_id()],
                None,
                Some(key(place.author, "k", 1000)),
            )
            .await
            .expect("create");
        assert_eq!(refused, MessageInsert::AttachmentUnavailable);
        assert_eq!(
            store
                .idempotent_response(place.author, "k", 0)
                .await
                .expect("lookup"),
            None
        );
    }
}
