//! The message change log: an ordered, durable record of every committed
//! create, edit and delete of a message, written in the same transaction as
//! the change itself. The search service follows it (`feed.rs` serves it
//! over gRPC) from the last position it applied, which is what lets a
//! restarted index catch up with nothing lost and nothing applied twice.
//! See docs/adr/0002-search-feed.md.
//!
//! Writers call [`SqlStore::commit_logged`] instead of `tx.commit()`: it
//! appends the change (and the write's realtime event to the outbox,
//! `outbox.rs`), commits, and then wakes this process's followers.
//! Positions come from the one row of `message_log_head`, taken with an
//! UPDATE whose row lock lasts until commit, so positions become visible in
//! order on Postgres too (a sequence would not guarantee that).

use std::sync::Arc;

use async_trait::async_trait;
use filament_ids::{ChannelId, GuildId, MessageId};
use sqlx::{
    ColumnIndex, Database, Decode, Encode, Executor, IntoArguments, Row, Transaction, Type,
};
use tokio::sync::watch;

use super::outbox::OutboxEvent;
use super::sql::{SqlStore, decode_id, decode_message, parse_stored_id};
use super::{MessageRecord, StoreError, StoreResult};

/// What a change did to its message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    /// Created or edited.
    Upsert,
    Delete,
}

impl ChangeKind {
    fn as_str(self) -> &'static str {
        match self {
            Self::Upsert => "upsert",
            Self::Delete => "delete",
        }
    }

    fn parse(value: &str) -> Option<Self> {
        match value {
            "upsert" => Some(Self::Upsert),
            "delete" => Some(Self::Delete),
            _ => None,
        }
    }
}

/// One entry of the log, as a follower reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggedChange {
    pub seq: u64,
    pub message_id: MessageId,
    pub guild_id: GuildId,
    pub channel_id: ChannelId,
    /// The message as it is now, for an upsert whose message still exists.
    /// `None` means the message is gone: a delete, or an upsert overtaken
    /// by a later delete (which the follower will also read).
    pub message: Option<MessageRecord>,
}

impl LoggedChange {
    pub fn kind(&self) -> ChangeKind {
        if self.message.is_some() {
            ChangeKind::Upsert
        } else {
            ChangeKind::Delete
        }
    }
}

/// Wakes followers in this process when a change commits; holds the
/// highest position this process committed. Changes committed by other
/// api replicas do not wake it, which is why followers also re-read on a
/// timer (`feed.rs`).
#[derive(Debug, Clone)]
pub struct LogSignal(Arc<watch::Sender<u64>>);

impl Default for LogSignal {
    fn default() -> Self {
        Self(Arc::new(watch::Sender::new(0)))
    }
}

impl LogSignal {
    fn committed(&self, seq: u64) {
        self.0.send_if_modified(|latest| {
            let newer = seq > *latest;
            if newer {
                *latest = seq;
            }
            newer
        });
    }
}

#[async_trait]
pub trait MessageLogStore: Send + Sync + 'static {
    /// Changes with `seq > after_seq`, oldest first, at most `limit`.
    async fn message_changes_after(
        &self,
        after_seq: u64,
        limit: u32,
    ) -> StoreResult<Vec<LoggedChange>>;

    /// The position of the last committed change, 0 when there is none.
    async fn message_log_head(&self) -> StoreResult<u64>;

    /// Changes (to the highest position committed by this process) each
    /// time a change commits here.
    fn watch_message_log(&self) -> watch::Receiver<u64>;

    /// A guild's messages by id ascending, strictly after `after`, at most
    /// `limit`.
    async fn guild_messages_page(
        &self,
        guild_id: GuildId,
        after: Option<MessageId>,
        limit: u32,
    ) -> StoreResult<Vec<MessageRecord>>;

    /// Those of `message_ids` that exist in the guild, in no particular
    /// order.
    async fn messages_by_ids(
        &self,
        guild_id: GuildId,
        message_ids: &[MessageId],
    ) -> StoreResult<Vec<MessageRecord>>;
}

const MESSAGE_COLUMNS: &str =
    "message_id, guild_id, channel_id, author_id, content, created_at_unix";

impl<DB> SqlStore<DB>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    for<'q> String: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> Vec<u8>: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'i> &'i str: ColumnIndex<DB::Row>,
{
    /// Appends one change to the log inside `tx`, with the write's realtime
    /// event in the outbox when given, commits, and wakes the followers. Use
    /// it in place of `tx.commit()` in every transaction that creates, edits
    /// or deletes a message, so the change, its log entry and its event
    /// commit together or not at all.
    pub(super) async fn commit_logged(
        &self,
        mut tx: Transaction<'_, DB>,
        kind: ChangeKind,
        guild_id: GuildId,
        channel_id: ChannelId,
        message_id: MessageId,
        outbox: Option<OutboxEvent>,
    ) -> StoreResult<()> {
        if let Some(event) = outbox {
            Self::enqueue_outbox(&mut tx, event).await?;
        }
        // Last statement before the commit, so the head's row lock (which
        // serialises every message write) is held as briefly as possible.
        let head =
            sqlx::query("UPDATE message_log_head SET seq = seq + 1 WHERE id = 1 RETURNING seq")
                .fetch_one(&mut *tx)
                .await?;
        let seq: i64 = head.try_get("seq")?;
        sqlx::query(
            "INSERT INTO message_changes \
             (seq, message_id, guild_id, channel_id, kind, changed_at_unix) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(seq)
        .bind(message_id.to_string())
        .bind(guild_id.to_string())
        .bind(channel_id.to_string())
        .bind(kind.as_str().to_owned())
        .bind(crate::clock::now_unix())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        self.log_signal.committed(seq.unsigned_abs());
        Ok(())
    }
}

#[async_trait]
impl<DB> MessageLogStore for SqlStore<DB>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    for<'q> String: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> Option<String>: Decode<'q, DB>,
    for<'q> Option<i64>: Decode<'q, DB>,
    for<'i> &'i str: ColumnIndex<DB::Row>,
{
    async fn message_changes_after(
        &self,
        after_seq: u64,
        limit: u32,
    ) -> StoreResult<Vec<LoggedChange>> {
        // The join reads each upserted message as it is now: replaying an
        // old change can only bring the index forward, never back.
        let rows = sqlx::query(
            "SELECT c.seq, c.kind, c.message_id, c.guild_id, c.channel_id, \
               m.author_id, m.content, m.created_at_unix \
             FROM message_changes c \
             LEFT JOIN messages m ON m.message_id = c.message_id AND c.kind = 'upsert' \
             WHERE c.seq > $1 ORDER BY c.seq LIMIT $2",
        )
        .bind(i64::try_from(after_seq).unwrap_or(i64::MAX))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(decode_change)
            .collect::<Result<_, _>>()
            .map_err(StoreError::from)
    }

    async fn message_log_head(&self) -> StoreResult<u64> {
        let row = sqlx::query("SELECT seq FROM message_log_head WHERE id = 1")
            .fetch_one(&self.pool)
            .await?;
        let seq: i64 = row.try_get("seq")?;
        Ok(seq.unsigned_abs())
    }

    fn watch_message_log(&self) -> watch::Receiver<u64> {
        self.log_signal.0.subscribe()
    }

    async fn guild_messages_page(
        &self,
        guild_id: GuildId,
        after: Option<MessageId>,
        limit: u32,
    ) -> StoreResult<Vec<MessageRecord>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages \
             WHERE guild_id = $1 AND message_id > $2 ORDER BY message_id LIMIT $3"
        )))
        .bind(guild_id.to_string())
        .bind(after.map(|id| id.to_string()).unwrap_or_default())
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(decode_message)
            .collect::<Result<_, _>>()
            .map_err(StoreError::from)
    }

    async fn messages_by_ids(
        &self,
        guild_id: GuildId,
        message_ids: &[MessageId],
    ) -> StoreResult<Vec<MessageRecord>> {
        if message_ids.is_empty() {
            return Ok(Vec::new());
        }
        let placeholders = (2..message_ids.len() + 2)
            .map(|n| format!("${n}"))
            .collect::<Vec<_>>()
            .join(", ");
        let sql = format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages \
             WHERE guild_id = $1 AND message_id IN ({placeholders})"
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(guild_id.to_string());
        for id in message_ids {
            query = query.bind(id.to_string());
        }
        let rows = query.fetch_all(&self.pool).await?;
        rows.iter()
            .map(decode_message)
            .collect::<Result<_, _>>()
            .map_err(StoreError::from)
    }
}

fn decode_change<R>(row: &R) -> Result<LoggedChange, sqlx::Error>
where
    R: Row,
    for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> Option<String>: Decode<'r, R::Database>,
    for<'r> Option<i64>: Decode<'r, R::Database>,
    for<'i> &'i str: ColumnIndex<R>,
{
    let seq: i64 = row.try_get("seq")?;
    let message_id = decode_id(row, "message_id")?;
    let guild_id = decode_id(row, "guild_id")?;
    let channel_id = decode_id(row, "channel_id")?;
    let kind = super::sql::decode_enum(row, "kind", ChangeKind::parse)?;
    let author: Option<String> = row.try_get("author_id")?;
    let content: Option<String> = row.try_get("content")?;
    let created_at_unix: Option<i64> = row.try_get("created_at_unix")?;
    let message = match (kind, author, content, created_at_unix) {
        (ChangeKind::Upsert, Some(author), Some(content), Some(created_at_unix)) => {
            Some(MessageRecord {
                message_id,
                guild_id,
                channel_id,
                author_id: parse_stored_id(&author, "author_id")?,
                content,
                created_at_unix,
            })
        }
        _ => None,
    };
    Ok(LoggedChange {
        seq: seq.unsigned_abs(),
        message_id,
        guild_id,
        channel_id,
        message,
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::store::Store;
    use crate::store::tests::{TextChannel, conformance, new_id};

    conformance!(
        every_message_write_is_logged_in_order_with_current_content,
        concurrent_writes_get_gap_free_positions_in_commit_order,
        guild_pages_and_lookups_by_id,
    );

    async fn every_message_write_is_logged_in_order_with_current_content(store: Arc<dyn Store>) {
        let fixture = TextChannel::create(&*store).await;
        assert_eq!(store.message_log_head().await.expect("head"), 0);
        let mut committed = store.watch_message_log();
        let first = fixture.message("first");
        let second = fixture.message("second");
        store
            .create_message(first.clone(), None)
            .await
            .expect("create");
        assert!(committed.has_changed().expect("open"));
        assert_eq!(*committed.borrow_and_update(), 1);
        store
            .create_message_with_attachments(second.clone(), &[], None, None)
            .await
            .expect("create");
        let (g, c) = (fixture.guild_id, fixture.channel_id);
        assert!(
            store
                .edit_message(g, c, first.message_id, "first, edited", None)
                .await
                .expect("edit")
        );
        assert!(
            store
                .delete_message(g, c, second.message_id, None)
                .await
                .expect("delete")
                .is_some()
        );
        // Writes that change nothing log nothing.
        assert!(
            !store
                .edit_message(g, c, new_id(), "nobody", None)
                .await
                .expect("edit")
        );
        assert!(
            store
                .delete_message(g, c, second.message_id, None)
                .await
                .expect("delete")
                .is_none()
        );
        assert_eq!(store.message_log_head().await.expect("head"), 4);
        assert_eq!(*committed.borrow_and_update(), 4);

        let changes = store.message_changes_after(0, 10).await.expect("changes");
        let seen: Vec<_> = changes
            .iter()
            .map(|c| (c.seq, c.message_id, c.kind()))
            .collect();
        // Each upsert reads the message as it is now: the first one already
        // carries the edit, and the second message's create reads as a
        // delete because the message is gone.
        assert_eq!(
            seen,
            [
                (1, first.message_id, ChangeKind::Upsert),
                (2, second.message_id, ChangeKind::Delete),
                (3, first.message_id, ChangeKind::Upsert),
                (4, second.message_id, ChangeKind::Delete),
            ]
        );
        let current = changes[0].message.as_ref().expect("content");
        assert_eq!(current.content, "first, edited");
        assert_eq!(current.author_id, fixture.author);
        assert_eq!(changes[1].guild_id, fixture.guild_id);
        assert_eq!(changes[1].channel_id, fixture.channel_id);

        let tail = store.message_changes_after(2, 1).await.expect("changes");
        assert_eq!(tail.len(), 1);
        assert_eq!(tail[0].seq, 3);
        assert!(
            store
                .message_changes_after(4, 10)
                .await
                .expect("changes")
                .is_empty()
        );
    }

    async fn concurrent_writes_get_gap_free_positions_in_commit_order(store: Arc<dyn Store>) {
        let fixture = Arc::new(TextChannel::create(&*store).await);
        let writers: Vec<_> = (0..16)
            .map(|n| {
                let (store, fixture) = (Arc::clone(&store), Arc::clone(&fixture));
                tokio::spawn(async move {
                    store
                        .create_message(fixture.message(&format!("m{n}")), None)
                        .await
                        .expect("create");
                })
            })
            .collect();
        for writer in writers {
            writer.await.expect("writer");
        }
        let seqs: Vec<u64> = store
            .message_changes_after(0, 100)
            .await
            .expect("changes")
            .iter()
            .map(|c| c.seq)
            .collect();
        assert_eq!(seqs, (1..=16).collect::<Vec<_>>());
        assert_eq!(store.message_log_head().await.expect("head"), 16);
    }

    async fn guild_pages_and_lookups_by_id(store: Arc<dyn Store>) {
        let fixture = TextChannel::create(&*store).await;
        let other = TextChannel::create(&*store).await;
        let mut ours = Vec::new();
        for n in 0..5 {
            let record = fixture.message(&format!("m{n}"));
            store
                .create_message(record.clone(), None)
                .await
                .expect("create");
            ours.push(record);
        }
        // Pages go by id, and ids minted in one millisecond are not ordered.
        ours.sort_by_key(|m| m.message_id);
        store
            .create_message(other.message("elsewhere"), None)
            .await
            .expect("create");
        let first = store
            .guild_messages_page(fixture.guild_id, None, 3)
            .await
            .expect("page");
        assert_eq!(first, ours[..3]);
        let rest = store
            .guild_messages_page(fixture.guild_id, Some(ours[2].message_id), 10)
            .await
            .expect("page");
        assert_eq!(rest, ours[3..]);

        let wanted = [ours[4].message_id, new_id(), ours[1].message_id];
        let mut found: Vec<_> = store
            .messages_by_ids(fixture.guild_id, &wanted)
            .await
            .expect("lookup")
            .into_iter()
            .map(|m| m.message_id)
            .collect();
        found.sort();
        assert_eq!(found, [ours[1].message_id, ours[4].message_id]);
        // Another guild's id is not found through this guild.
        assert!(
            store
                .messages_by_ids(other.guild_id, &[ours[0].message_id])
                .await
                .expect("lookup")
                .is_empty()
        );
        assert!(
            store
                .messages_by_ids(fixture.guild_id, &[])
                .await
                .expect("lookup")
                .is_empty()
        );
    }
}
