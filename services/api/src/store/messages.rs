//! Message writes: posting (with attachments, or without through
//! [`CoreStore::create_message`](super::CoreStore::create_message), which
//! takes the same path), edits, deletes, reactions, and the attachments
//! bound to a message (with each user's attachment quota). Reading history
//! is the core's (`sql.rs`).
//!
//! Every write starts with a write statement, so that on SQLite the
//! transaction takes the write lock first (waiting out the busy timeout)
//! instead of failing when a read snapshot cannot be upgraded, and on
//! Postgres the row it touches stays locked until commit. Reactions lock
//! their message row that way, which is what makes the per-message emoji cap
//! hold under concurrent reactions.

use std::collections::BTreeMap;

use async_trait::async_trait;
use filament_ids::{AttachmentId, ChannelId, GuildId, MessageId, UserId};
use sqlx::{
    ColumnIndex, Database, Decode, Encode, Executor, IntoArguments, Row, Transaction, Type,
};

use super::idempotency::IdempotencyRecord;
use super::message_log::ChangeKind;
use super::outbox::{OutboxEvent, ReactionOutbox};
use super::sql::{SqlStore, decode_id, decode_message, parse_stored_id};
use super::{MessageRecord, StoreResult};

/// Distinct emoji one message may carry.
pub const MAX_REACTION_EMOJI: i64 = 64;
/// Reactor ids listed per emoji (the count is always exact).
pub const MAX_REACTOR_IDS: i64 = 32;

/// An uploaded file. `message_id` is `None` until a message binds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachmentRecord {
    pub attachment_id: AttachmentId,
    pub guild_id: GuildId,
    pub channel_id: ChannelId,
    pub owner_id: UserId,
    pub message_id: Option<MessageId>,
    pub filename: String,
    pub mime_type: String,
    pub size_bytes: i64,
    pub sha256_hex: String,
    pub created_at_unix: i64,
}

/// The outcome of recording an upload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttachmentInsert {
    Created,
    /// The owner's attachments would exceed the quota; nothing was written.
    QuotaExceeded,
}

/// The outcome of binding attachments to a new message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageInsert {
    Created,
    /// An attachment was not the author's, not in the message's channel, or
    /// already bound; nothing was written.
    AttachmentUnavailable,
}

/// One emoji's reactions on one message, as one viewer sees them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReactionSummary {
    pub message_id: MessageId,
    pub emoji: String,
    /// Every reactor, not only the listed ones.
    pub count: i64,
    pub reacted_by_me: bool,
    /// The first [`MAX_REACTOR_IDS`] reactor ids, ascending.
    pub reactor_ids: Vec<UserId>,
}

/// Who reacts with what to which message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReactionKey {
    pub guild_id: GuildId,
    pub channel_id: ChannelId,
    pub message_id: MessageId,
    pub emoji: String,
    pub user_id: UserId,
}

/// The outcome of adding or removing a reaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReactionChange {
    /// The reaction is now as asked. `changed` is false when it already
    /// was (the routes are idempotent). `summary` is seen by the reactor.
    Applied {
        changed: bool,
        summary: ReactionSummary,
    },
    /// No such message in that channel.
    MessageNotFound,
    /// A new emoji on a message that already has [`MAX_REACTION_EMOJI`].
    TooManyEmoji,
}

#[async_trait]
pub trait MessageStore: Send + Sync + 'static {
    /// One message of a channel.
    async fn message(
        &self,
        guild_id: GuildId,
        channel_id: ChannelId,
        message_id: MessageId,
    ) -> StoreResult<Option<MessageRecord>>;

    /// Creates the message and binds the attachments to it, all or nothing.
    /// Each attachment must be the author's, unbound, and in the message's
    /// channel.
    ///
    /// Like every message write here, it stores `outbox` (the write's
    /// realtime event) in the same transaction, and only if the write
    /// happens; so is `idempotency`, the request's key and response. A live
    /// row of that key is `StoreError::Conflict("idempotency_key")`, and
    /// nothing is written.
    async fn create_message_with_attachments(
        &self,
        message: MessageRecord,
        attachment_ids: &[AttachmentId],
        outbox: Option<OutboxEvent>,
        idempotency: Option<IdempotencyRecord>,
    ) -> StoreResult<MessageInsert>;

    /// Replaces the content; false if there is no such message.
    async fn edit_message(
        &self,
        guild_id: GuildId,
        channel_id: ChannelId,
        message_id: MessageId,
        content: &str,
        outbox: Option<OutboxEvent>,
    ) -> StoreResult<bool>;

    /// Deletes the message with its reactions and attachments (whose bytes
    /// leave their owners' usage). Returns the deleted attachments, whose
    /// files the caller removes; `None` if there is no such message.
    async fn delete_message(
        &self,
        guild_id: GuildId,
        channel_id: ChannelId,
        message_id: MessageId,
        outbox: Option<OutboxEvent>,
    ) -> StoreResult<Option<Vec<AttachmentRecord>>>;

    /// The attachments bound to these messages, by message then id.
    async fn attachments_of(&self, message_ids: &[MessageId])
    -> StoreResult<Vec<AttachmentRecord>>;

    /// The reactions on these messages as `viewer` sees them, by message
    /// then emoji.
    async fn reactions_of(
        &self,
        message_ids: &[MessageId],
        viewer: UserId,
    ) -> StoreResult<Vec<ReactionSummary>>;

    /// When the reaction changes anything, stores the event `outbox` builds
    /// from the emoji's count after the change, in the same transaction.
    async fn add_reaction(
        &self,
        key: ReactionKey,
        now_unix: i64,
        outbox: Option<ReactionOutbox<'_>>,
    ) -> StoreResult<ReactionChange>;

    /// Never `TooManyEmoji`. Stores `outbox`'s event like
    /// [`add_reaction`](Self::add_reaction).
    async fn remove_reaction(
        &self,
        key: ReactionKey,
        outbox: Option<ReactionOutbox<'_>>,
    ) -> StoreResult<ReactionChange>;

    /// Records an upload unless the owner's attachments would then hold more
    /// than `quota_bytes`.
    async fn create_attachment(
        &self,
        attachment: AttachmentRecord,
        quota_bytes: i64,
    ) -> StoreResult<AttachmentInsert>;

    /// One attachment of a channel, bound or not.
    async fn attachment(
        &self,
        guild_id: GuildId,
        channel_id: ChannelId,
        attachment_id: AttachmentId,
    ) -> StoreResult<Option<AttachmentRecord>>;

    /// Deletes the row and releases its bytes from the owner's usage;
    /// returns it, or `None` if there was none.
    async fn delete_attachment(
        &self,
        guild_id: GuildId,
        channel_id: ChannelId,
        attachment_id: AttachmentId,
    ) -> StoreResult<Option<AttachmentRecord>>;
}

const ATTACHMENT_COLUMNS: &str = "attachment_id, guild_id, channel_id, owner_id, message_id, \
     filename, mime_type, size_bytes, sha256_hex, created_at_unix";

/// `$first, $first+1, …` for an `IN (…)` list of `count` values.
fn placeholders(first: usize, count: usize) -> String {
    (first..first + count)
        .map(|n| format!("${n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl<DB> SqlStore<DB>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    for<'q> String: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> Vec<u8>: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> Option<i64>: Decode<'q, DB>,
    for<'i> &'i str: ColumnIndex<DB::Row>,
{
    /// The end of `add_reaction` and `remove_reaction` once the write ran:
    /// reads the emoji's summary, stores the event `outbox` builds from its
    /// count only if the write `changed` a row, and commits.
    async fn reaction_applied(
        mut tx: Transaction<'_, DB>,
        key: &ReactionKey,
        outbox: Option<ReactionOutbox<'_>>,
        changed: bool,
    ) -> StoreResult<ReactionChange> {
        let summary = reaction_summary(&mut tx, key).await?;
        if let (Some(build), true) = (outbox, changed) {
            Self::enqueue_outbox(&mut tx, build(summary.count)).await?;
        }
        tx.commit().await?;
        Ok(ReactionChange::Applied { changed, summary })
    }
}

#[async_trait]
impl<DB> MessageStore for SqlStore<DB>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    for<'q> String: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> Vec<u8>: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> Option<String>: Encode<'q, DB> + Decode<'q, DB>,
    for<'q> Option<i64>: Decode<'q, DB>,
    for<'i> &'i str: ColumnIndex<DB::Row>,
{
    async fn message(
        &self,
        guild_id: GuildId,
        channel_id: ChannelId,
        message_id: MessageId,
    ) -> StoreResult<Option<MessageRecord>> {
        let row = sqlx::query(
            "SELECT message_id, guild_id, channel_id, author_id, content, created_at_unix \
             FROM messages WHERE message_id = $1 AND channel_id = $2 AND guild_id = $3",
        )
        .bind(message_id.to_string())
        .bind(channel_id.to_string())
        .bind(guild_id.to_string())
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.as_ref().map(decode_message).transpose()?)
    }

    async fn create_message_with_attachments(
        &self,
        message: MessageRecord,
        attachment_ids: &[AttachmentId],
        outbox: Option<OutboxEvent>,
        idempotency: Option<IdempotencyRecord>,
    ) -> StoreResult<MessageInsert> {
        let message_id = message.message_id.to_string();
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO messages \
             (message_id, guild_id, channel_id, author_id, content, created_at_unix) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(message_id.clone())
        .bind(message.guild_id.to_string())
        .bind(message.channel_id.to_string())
        .bind(message.author_id.to_string())
        .bind(message.content)
        .bind(message.created_at_unix)
        .execute(&mut *tx)
        .await
        .map_err(super::sql::conflict_on("message_id"))?;
        if let Some(record) = idempotency {
            Self::record_idempotency(&mut tx, record).await?;
        }
        for attachment_id in attachment_ids {
            // The conditions are re-checked here, under the row lock the
            // UPDATE takes, so two messages racing for one upload cannot
            // both bind it.
            let bound = sqlx::query(
                "UPDATE attachments SET message_id = $1 \
                 WHERE attachment_id = $2 AND owner_id = $3 AND channel_id = $4 \
                   AND guild_id = $5 AND message_id IS NULL \
                 RETURNING attachment_id",
            )
            .bind(message_id.clone())
            .bind(attachment_id.to_string())
            .bind(message.author_id.to_string())
            .bind(message.channel_id.to_string())
            .bind(message.guild_id.to_string())
            .fetch_optional(&mut *tx)
            .await?;
            if bound.is_none() {
                // Dropping the transaction rolls the message back too.
                return Ok(MessageInsert::AttachmentUnavailable);
            }
        }
        let (guild_id, channel_id, id) = (message.guild_id, message.channel_id, message.message_id);
        self.commit_logged(tx, ChangeKind::Upsert, guild_id, channel_id, id, outbox)
            .await?;
        Ok(MessageInsert::Created)
    }

    async fn edit_message(
        &self,
        guild_id: GuildId,
        channel_id: ChannelId,
        message_id: MessageId,
        content: &str,
        outbox: Option<OutboxEvent>,
    ) -> StoreResult<bool> {
        let mut tx = self.pool.begin().await?;
        let edited = sqlx::query(
            "UPDATE messages SET content = $1 \
             WHERE message_id = $2 AND channel_id = $3 AND guild_id = $4 \
             RETURNING message_id",
        )
        .bind(content.to_owned())
        .bind(message_id.to_string())
        .bind(channel_id.to_string())
        .bind(guild_id.to_string())
        .fetch_optional(&mut *tx)
        .await?;
        if edited.is_none() {
            return Ok(false);
        }
        let kind = ChangeKind::Upsert;
        self.commit_logged(tx, kind, guild_id, channel_id, message_id, outbox)
            .await?;
        Ok(true)
    }

    async fn delete_message(
        &self,
        guild_id: GuildId,
        channel_id: ChannelId,
        message_id: MessageId,
        outbox: Option<OutboxEvent>,
    ) -> StoreResult<Option<Vec<AttachmentRecord>>> {
        let mut tx = self.pool.begin().await?;
        // Attachments first: deleting the message would cascade them away
        // before we learn whose bytes to release and which files to remove.
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "DELETE FROM attachments \
             WHERE message_id = $1 AND channel_id = $2 AND guild_id = $3 \
             RETURNING {ATTACHMENT_COLUMNS}"
        )))
        .bind(message_id.to_string())
        .bind(channel_id.to_string())
        .bind(guild_id.to_string())
        .fetch_all(&mut *tx)
        .await?;
        let attachments = rows
            .iter()
            .map(decode_attachment)
            .collect::<Result<Vec<_>, _>>()?;
        let deleted = sqlx::query(
            "DELETE FROM messages \
             WHERE message_id = $1 AND channel_id = $2 AND guild_id = $3 \
             RETURNING message_id",
        )
        .bind(message_id.to_string())
        .bind(channel_id.to_string())
        .bind(guild_id.to_string())
        .fetch_optional(&mut *tx)
        .await?;
        if deleted.is_none() {
            return Ok(None);
        }
        release_usage(&mut tx, &attachments).await?;
        let kind = ChangeKind::Delete;
        self.commit_logged(tx, kind, guild_id, channel_id, message_id, outbox)
            .await?;
        Ok(Some(attachments))
    }

    async fn attachments_of(
        &self,
        message_ids: &[MessageId],
    ) -> StoreResult<Vec<AttachmentRecord>> {
        if message_ids.is_empty() {
            return Ok(Vec::new());
        }
        let sql = format!(
            "SELECT {ATTACHMENT_COLUMNS} FROM attachments WHERE message_id IN ({}) \
             ORDER BY message_id, attachment_id",
            placeholders(1, message_ids.len())
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for id in message_ids {
            query = query.bind(id.to_string());
        }
        let rows = query.fetch_all(&self.pool).await?;
        Ok(rows
            .iter()
            .map(decode_attachment)
            .collect::<Result<_, _>>()?)
    }

    async fn reactions_of(
        &self,
        message_ids: &[MessageId],
        viewer: UserId,
    ) -> StoreResult<Vec<ReactionSummary>> {
        if message_ids.is_empty() {
            return Ok(Vec::new());
        }
        // One pass over the reaction rows: exact counts and "mine" per
        // (message, emoji) come from window aggregates, and only the first
        // MAX_REACTOR_IDS reactors of each group leave the database.
        let sql = format!(
            "SELECT message_id, emoji, user_id, reactor_count, mine FROM ( \
               SELECT message_id, emoji, user_id, \
                 ROW_NUMBER() OVER (PARTITION BY message_id, emoji ORDER BY user_id) AS position, \
                 COUNT(*) OVER (PARTITION BY message_id, emoji) AS reactor_count, \
                 SUM(CASE WHEN user_id = $1 THEN 1 ELSE 0 END) \
                   OVER (PARTITION BY message_id, emoji) AS mine \
               FROM message_reactions WHERE message_id IN ({}) \
             ) ranked WHERE position <= $2 \
             ORDER BY message_id, emoji, user_id",
            placeholders(3, message_ids.len())
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(viewer.to_string())
            .bind(MAX_REACTOR_IDS);
        for id in message_ids {
            query = query.bind(id.to_string());
        }
        let rows = query.fetch_all(&self.pool).await?;
        let mut summaries: BTreeMap<(MessageId, String), ReactionSummary> = BTreeMap::new();
        for row in &rows {
            let message_id = decode_id(row, "message_id")?;
            let emoji: String = row.try_get("emoji")?;
            let count: i64 = row.try_get("reactor_count")?;
            let mine: Option<i64> = row.try_get("mine")?;
            let reactor = decode_id(row, "user_id")?;
            summaries
                .entry((message_id, emoji.clone()))
                .or_insert_with(|| ReactionSummary {
                    message_id,
                    emoji,
                    count,
                    reacted_by_me: mine.unwrap_or(0) > 0,
                    reactor_ids: Vec::new(),
                })
                .reactor_ids
                .push(reactor);
        }
        Ok(summaries.into_values().collect())
    }

    async fn add_reaction(
        &self,
        key: ReactionKey,
        now_unix: i64,
        outbox: Option<ReactionOutbox<'_>>,
    ) -> StoreResult<ReactionChange> {
        let mut tx = self.pool.begin().await?;
        if !lock_message(&mut tx, &key).await? {
            return Ok(ReactionChange::MessageNotFound);
        }
        let row = sqlx::query(
            "SELECT COUNT(DISTINCT emoji) AS emoji_count, \
               SUM(CASE WHEN emoji = $2 THEN 1 ELSE 0 END) AS same_emoji \
             FROM message_reactions WHERE message_id = $1",
        )
        .bind(key.message_id.to_string())
        .bind(key.emoji.clone())
        .fetch_one(&mut *tx)
        .await?;
        let emoji_count: i64 = row.try_get("emoji_count")?;
        let same_emoji: Option<i64> = row.try_get("same_emoji")?;
        if same_emoji.unwrap_or(0) == 0 && emoji_count >= MAX_REACTION_EMOJI {
            return Ok(ReactionChange::TooManyEmoji);
        }
        let inserted = sqlx::query(
            "INSERT INTO message_reactions (message_id, emoji, user_id, created_at_unix) \
             VALUES ($1, $2, $3, $4) \
             ON CONFLICT (message_id, emoji, user_id) DO NOTHING \
             RETURNING user_id",
        )
        .bind(key.message_id.to_string())
        .bind(key.emoji.clone())
        .bind(key.user_id.to_string())
        .bind(now_unix)
        .fetch_optional(&mut *tx)
        .await?;
        Self::reaction_applied(tx, &key, outbox, inserted.is_some()).await
    }

    async fn remove_reaction(
        &self,
        key: ReactionKey,
        outbox: Option<ReactionOutbox<'_>>,
    ) -> StoreResult<ReactionChange> {
        let mut tx = self.pool.begin().await?;
        if !lock_message(&mut tx, &key).await? {
            return Ok(ReactionChange::MessageNotFound);
        }
        let removed = sqlx::query(
            "DELETE FROM message_reactions \
             WHERE message_id = $1 AND emoji = $2 AND user_id = $3 \
             RETURNING user_id",
        )
        .bind(key.message_id.to_string())
        .bind(key.emoji.clone())
        .bind(key.user_id.to_string())
        .fetch_optional(&mut *tx)
        .await?;
        Self::reaction_applied(tx, &key, outbox, removed.is_some()).await
    }

    async fn create_attachment(
        &self,
        attachment: AttachmentRecord,
        quota_bytes: i64,
    ) -> StoreResult<AttachmentInsert> {
        if attachment.size_bytes > quota_bytes {
            return Ok(AttachmentInsert::QuotaExceeded);
        }
        let mut tx = self.pool.begin().await?;
        // One statement checks and raises the usage: on a conflict the row
        // is locked and the WHERE re-evaluated against its latest value, so
        // concurrent uploads are counted one after the other.
        let charged = sqlx::query(
            "INSERT INTO attachment_usage (user_id, used_bytes) VALUES ($1, $2) \
             ON CONFLICT (user_id) DO UPDATE \
               SET used_bytes = attachment_usage.used_bytes + excluded.used_bytes \
               WHERE attachment_usage.used_bytes + excluded.used_bytes <= $3 \
             RETURNING used_bytes",
        )
        .bind(attachment.owner_id.to_string())
        .bind(attachment.size_bytes)
        .bind(quota_bytes)
        .fetch_optional(&mut *tx)
        .await?;
        if charged.is_none() {
            return Ok(AttachmentInsert::QuotaExceeded);
        }
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO attachments ({ATTACHMENT_COLUMNS}) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
        )))
        .bind(attachment.attachment_id.to_string())
        .bind(attachment.guild_id.to_string())
        .bind(attachment.channel_id.to_string())
        .bind(attachment.owner_id.to_string())
        .bind(attachment.message_id.map(|id| id.to_string()))
        .bind(attachment.filename)
        .bind(attachment.mime_type)
        .bind(attachment.size_bytes)
        .bind(attachment.sha256_hex)
        .bind(attachment.created_at_unix)
        .execute(&mut *tx)
        .await
        .map_err(super::sql::conflict_on("attachment_id"))?;
        tx.commit().await?;
        Ok(AttachmentInsert::Created)
    }

    async fn attachment(
        &self,
        guild_id: GuildId,
        channel_id: ChannelId,
        attachment_id: AttachmentId,
    ) -> StoreResult<Option<AttachmentRecord>> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {ATTACHMENT_COLUMNS} FROM attachments \
             WHERE attachment_id = $1 AND channel_id = $2 AND guild_id = $3"
        )))
        .bind(attachment_id.to_string())
        .bind(channel_id.to_string())
        .bind(guild_id.to_string())
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.as_ref().map(decode_attachment).transpose()?)
    }

    async fn delete_attachment(
        &self,
        guild_id: GuildId,
        channel_id: ChannelId,
        attachment_id: AttachmentId,
    ) -> StoreResult<Option<AttachmentRecord>> {
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "DELETE FROM attachments \
             WHERE attachment_id = $1 AND channel_id = $2 AND guild_id = $3 \
             RETURNING {ATTACHMENT_COLUMNS}"
        )))
        .bind(attachment_id.to_string())
        .bind(channel_id.to_string())
        .bind(guild_id.to_string())
        .fetch_optional(&mut *tx)
        .await?;
        let Some(attachment) = row.as_ref().map(decode_attachment).transpose()? else {
            return Ok(None);
        };
        release_usage(&mut tx, std::slice::from_ref(&attachment)).await?;
        tx.commit().await?;
        Ok(Some(attachment))
    }
}

/// Takes the message's row lock (a no-op UPDATE: the one row lock both
/// backends share), so that reaction changes on one message run one at a
/// time. False if the message is not in the key's channel.
async fn lock_message<DB>(conn: &mut DB::Connection, key: &ReactionKey) -> Result<bool, sqlx::Error>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    for<'q> String: Encode<'q, DB> + Type<DB>,
{
    let locked = sqlx::query(
        "UPDATE messages SET content = content \
         WHERE message_id = $1 AND channel_id = $2 AND guild_id = $3 \
         RETURNING message_id",
    )
    .bind(key.message_id.to_string())
    .bind(key.channel_id.to_string())
    .bind(key.guild_id.to_string())
    .fetch_optional(&mut *conn)
    .await?;
    Ok(locked.is_some())
}

/// One (message, emoji) as the key's user sees it, within the transaction
/// that just changed it.
async fn reaction_summary<DB>(
    conn: &mut DB::Connection,
    key: &ReactionKey,
) -> Result<ReactionSummary, sqlx::Error>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    for<'q> String: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> Option<i64>: Decode<'q, DB>,
    for<'i> &'i str: ColumnIndex<DB::Row>,
{
    let totals = sqlx::query(
        "SELECT COUNT(*) AS reactor_count, \
           SUM(CASE WHEN user_id = $3 THEN 1 ELSE 0 END) AS mine \
         FROM message_reactions WHERE message_id = $1 AND emoji = $2",
    )
    .bind(key.message_id.to_string())
    .bind(key.emoji.clone())
    .bind(key.user_id.to_string())
    .fetch_one(&mut *conn)
    .await?;
    let reactors = sqlx::query(
        "SELECT user_id FROM message_reactions WHERE message_id = $1 AND emoji = $2 \
         ORDER BY user_id LIMIT $3",
    )
    .bind(key.message_id.to_string())
    .bind(key.emoji.clone())
    .bind(MAX_REACTOR_IDS)
    .fetch_all(&mut *conn)
    .await?;
    let mine: Option<i64> = totals.try_get("mine")?;
    Ok(ReactionSummary {
        message_id: key.message_id,
        emoji: key.emoji.clone(),
        count: totals.try_get("reactor_count")?,
        reacted_by_me: mine.unwrap_or(0) > 0,
        reactor_ids: reactors
            .iter()
            .map(|row| decode_id(row, "user_id"))
            .collect::<Result<_, _>>()?,
    })
}

/// Takes deleted attachments' bytes off their owners' usage.
async fn release_usage<DB>(
    conn: &mut DB::Connection,
    attachments: &[AttachmentRecord],
) -> Result<(), sqlx::Error>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    for<'q> String: Encode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
{
    let mut per_owner: BTreeMap<UserId, i64> = BTreeMap::new();
    for attachment in attachments {
        *per_owner.entry(attachment.owner_id).or_default() += attachment.size_bytes;
    }
    for (owner_id, bytes) in per_owner {
        sqlx::query("UPDATE attachment_usage SET used_bytes = used_bytes - $1 WHERE user_id = $2")
            .bind(bytes)
            .bind(owner_id.to_string())
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

fn decode_attachment<R>(row: &R) -> Result<AttachmentRecord, sqlx::Error>
where
    R: Row,
    for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> Option<String>: Decode<'r, R::Database>,
    for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
    for<'i> &'i str: ColumnIndex<R>,
{
    let message_id: Option<String> = row.try_get("message_id")?;
    Ok(AttachmentRecord {
        attachment_id: decode_id(row, "attachment_id")?,
        guild_id: decode_id(row, "guild_id")?,
        channel_id: decode_id(row, "channel_id")?,
        owner_id: decode_id(row, "owner_id")?,
        message_id: message_id
            .map(|id| parse_stored_id(&id, "message_id"))
            .transpose()?,
        filename: row.try_get("filename")?,
        mime_type: row.try_get("mime_type")?,
        size_bytes: row.try_get("size_bytes")?,
        sha256_hex: row.try_get("sha256_hex")?,
        created_at_unix: row.try_get("created_at_unix")?,
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::store::tests::{conformance, new_id};
    use crate::store::{ChannelKind, ChannelRecord, GuildRecord, NewUser, Store, Visibility};

    conformance!(
        edit_and_delete_stay_in_their_channel,
        attachments_bind_once_and_leave_with_their_message,
        attachment_quota_is_charged_and_released,
        concurrent_uploads_cannot_pass_the_quota,
        reactions_count_list_and_cap,
        concurrent_new_emoji_respect_the_cap,
    );

    const NOW: i64 = 1_700_000_000;

    /// A channel in a fresh guild, and a second channel of that guild.
    struct Place {
        guild_id: GuildId,
        channel_id: ChannelId,
        other_channel_id: ChannelId,
    }

    async fn place(store: &dyn Store) -> Place {
        let owner = new_id();
        store
            .create_user(NewUser {
                user_id: owner,
                username: format!("u{}", &owner.to_string()[16..]).to_lowercase(),
                password_hash: "hash".to_owned(),
                created_at_unix: NOW,
            })
            .await
            .unwrap();
        let guild_id = new_id();
        store
            .create_guild(
                GuildRecord {
                    guild_id,
                    name: "guild".to_owned(),
                    visibility: Visibility::Private,
                    created_by: owner,
                    created_at_unix: NOW,
                },
                crate::store::BuiltinMasks::FOR_TESTS,
            )
            .await
            .unwrap();
        let mut channels = Vec::new();
        for name in ["general", "other"] {
            let channel_id = new_id();
            store
                .create_channel(
                    ChannelRecord {
                        channel_id,
                        guild_id,
                        name: name.to_owned(),
                        kind: ChannelKind::Text,
                        created_at_unix: NOW,
                    },
                    Vec::new(),
                )
                .await
                .unwrap();
            channels.push(channel_id);
        }
        Place {
            guild_id,
            channel_id: channels[0],
            other_channel_id: channels[1],
        }
    }

    fn message(place: &Place, author_id: UserId, content: &str) -> MessageRecord {
        MessageRecord {
            message_id: MessageId::generate(),
            guild_id: place.guild_id,
            channel_id: place.channel_id,
            author_id,
            content: content.to_owned(),
            created_at_unix: NOW,
        }
    }

    fn attachment(place: &Place, owner_id: UserId, size_bytes: i64) -> AttachmentRecord {
        AttachmentRecord {
            attachment_id: AttachmentId::generate(),
            guild_id: place.guild_id,
            channel_id: place.channel_id,
            owner_id,
            message_id: None,
            filename: "photo.png".to_owned(),
            mime_type: "image/png".to_owned(),
            size_bytes,
            sha256_hex: "ab".repeat(32),
            created_at_unix: NOW,
        }
    }

    fn key(place: &Place, message_id: MessageId, emoji: &str, user_id: UserId) -> ReactionKey {
        ReactionKey {
            guild_id: place.guild_id,
            channel_id: place.channel_id,
            message_id,
            emoji: emoji.to_owned(),
            user_id,
        }
    }

    async fn edit_and_delete_stay_in_their_channel(store: Arc<dyn Store>) {
        let place = place(store.as_ref()).await;
        let author = new_id();
        let original = message(&place, author, "first");
        let id = original.message_id;
        store.create_message(original.clone(), None).await.unwrap();
        let (g, c, other) = (place.guild_id, place.channel_id, place.other_channel_id);

        assert_eq!(
            store.message(g, c, id).await.unwrap(),
            Some(original.clone())
        );
        assert_eq!(store.message(g, other, id).await.unwrap(), None);
        assert!(
            !store
                .edit_message(g, other, id, "moved?", None)
                .await
                .unwrap()
        );
        assert!(store.edit_message(g, c, id, "second", None).await.unwrap());
        let edited = store.message(g, c, id).await.unwrap().unwrap();
        assert_eq!(edited.content, "second");
        assert_eq!(edited.created_at_unix, original.created_at_unix);

        assert_eq!(
            store.delete_message(g, other, id, None).await.unwrap(),
            None
        );
        assert_eq!(
            store.delete_message(g, c, id, None).await.unwrap(),
            Some(Vec::new())
        );
        assert_eq!(store.message(g, c, id).await.unwrap(), None);
        assert_eq!(store.delete_message(g, c, id, None).await.unwrap(), None);
        assert!(!store.edit_message(g, c, id, "gone", None).await.unwrap());
    }

    async fn attachments_bind_once_and_leave_with_their_message(store: Arc<dyn Store>) {
        let place = place(store.as_ref()).await;
        let (author, stranger) = (new_id(), new_id());
        let own = attachment(&place, author, 10);
        let strangers = attachment(&place, stranger, 10);
        let elsewhere = AttachmentRecord {
            channel_id: place.other_channel_id,
            ..attachment(&place, author, 10)
        };
        for a in [&own, &strangers, &elsewhere] {
            let created = store.create_attachment(a.clone(), 1000).await.unwrap();
            assert_eq!(created, AttachmentInsert::Created);
        }

        // Any unusable attachment refuses the whole message.
        for bad in [strangers.attachment_id, elsewhere.attachment_id] {
            let refused = message(&place, author, "with files");
            let outcome = store
                .create_message_with_attachments(
                    refused.clone(),
                    &[own.attachment_id, bad],
                    None,
                    None,
                )
                .await
                .unwrap();
            assert_eq!(outcome, MessageInsert::AttachmentUnavailable);
            let (g, c) = (place.guild_id, place.channel_id);
            assert_eq!(store.message(g, c, refused.message_id).await.unwrap(), None);
            let still = store.attachment(g, c, own.attachment_id).await.unwrap();
            assert_eq!(still.unwrap().message_id, None);
        }

        let sent = message(&place, author, "");
        let outcome = store
            .create_message_with_attachments(sent.clone(), &[own.attachment_id], None, None)
            .await
            .unwrap();
        assert_eq!(outcome, MessageInsert::Created);
        let bound = AttachmentRecord {
            message_id: Some(sent.message_id),
            ..own.clone()
        };
        let listed = store.attachments_of(&[sent.message_id]).await.unwrap();
        assert_eq!(listed, std::slice::from_ref(&bound));

        // Bound once only.
        let again = message(&place, author, "reuse");
        let outcome = store
            .create_message_with_attachments(again, &[own.attachment_id], None, None)
            .await
            .unwrap();
        assert_eq!(outcome, MessageInsert::AttachmentUnavailable);

        let (g, c) = (place.guild_id, place.channel_id);
        let deleted = store
            .delete_message(g, c, sent.message_id, None)
            .await
            .unwrap();
        assert_eq!(deleted, Some(vec![bound]));
        assert_eq!(
            store.attachment(g, c, own.attachment_id).await.unwrap(),
            None
        );
        // Its 10 bytes left the author's usage: 1000 fit again exactly.
        let full = attachment(&place, author, 990);
        let created = store.create_attachment(full, 1000).await.unwrap();
        assert_eq!(created, AttachmentInsert::Created);
    }

    async fn attachment_quota_is_charged_and_released(store: Arc<dyn Store>) {
        let place = place(store.as_ref()).await;
        let (owner, other) = (new_id(), new_id());
        let quota = 100;
        let first = attachment(&place, owner, 60);
        assert_eq!(
            store.create_attachment(first.clone(), quota).await.unwrap(),
            AttachmentInsert::Created
        );
        let over = attachment(&place, owner, 50);
        assert_eq!(
            store.create_attachment(over.clone(), quota).await.unwrap(),
            AttachmentInsert::QuotaExceeded
        );
        let (g, c) = (place.guild_id, place.channel_id);
        assert_eq!(
            store.attachment(g, c, over.attachment_id).await.unwrap(),
            None
        );
        // Exactly at the quota is allowed; a lone file over it never is.
        assert_eq!(
            store
                .create_attachment(attachment(&place, owner, 40), quota)
                .await
                .unwrap(),
            AttachmentInsert::Created
        );
        assert_eq!(
            store
                .create_attachment(attachment(&place, other, 101), quota)
                .await
                .unwrap(),
            AttachmentInsert::QuotaExceeded
        );
        // Another user's usage is their own.
        assert_eq!(
            store
                .create_attachment(attachment(&place, other, 100), quota)
                .await
                .unwrap(),
            AttachmentInsert::Created
        );

        let removed = store
            .delete_attachment(g, c, first.attachment_id)
            .await
            .unwrap();
        assert_eq!(removed, Some(first.clone()));
        assert_eq!(
            store
                .delete_attachment(g, c, first.attachment_id)
                .await
                .unwrap(),
            None
        );
        assert_eq!(
            store.create_attachment(over, quota).await.unwrap(),
            AttachmentInsert::Created
        );
    }

    async fn concurrent_uploads_cannot_pass_the_quota(store: Arc<dyn Store>) {
        let place = Arc::new(place(store.as_ref()).await);
        let owner = new_id();
        let start = Arc::new(tokio::sync::Barrier::new(10));
        let uploads = (0..10).map(|_| {
            let (store, place, start) =
                (Arc::clone(&store), Arc::clone(&place), Arc::clone(&start));
            tokio::spawn(async move {
                start.wait().await;
                store
                    .create_attachment(attachment(&place, owner, 30), 100)
                    .await
                    .unwrap()
            })
        });
        let mut created = 0;
        for upload in uploads.collect::<Vec<_>>() {
            if upload.await.unwrap() == AttachmentInsert::Created {
                created += 1;
            }
        }
        assert_eq!(created, 3);
    }

    async fn reactions_count_list_and_cap(store: Arc<dyn Store>) {
        let place = place(store.as_ref()).await;
        let target = message(&place, new_id(), "react to me");
        let quiet = message(&place, new_id(), "no reactions");
        store.create_message(target.clone(), None).await.unwrap();
        store.create_message(quiet.clone(), None).await.unwrap();
        let m = target.message_id;
        let mut reactors: Vec<UserId> = (0..40).map(|_| new_id()).collect();
        for user in &reactors {
            let change = store
                .add_reaction(key(&place, m, "👍", *user), NOW, None)
                .await
                .unwrap();
            assert!(matches!(
                change,
                ReactionChange::Applied { changed: true, .. }
            ));
        }
        reactors.sort_unstable();
        let me = reactors[7];
        let change = store
            .add_reaction(key(&place, m, "🎉", me), NOW, None)
            .await
            .unwrap();
        let ReactionChange::Applied { changed, summary } = change else {
            panic!("{change:?}");
        };
        assert!(changed);
        assert_eq!((summary.count, summary.reacted_by_me), (1, true));
        assert_eq!(summary.reactor_ids, [me]);

        let seen = store
            .reactions_of(&[m, quiet.message_id], me)
            .await
            .unwrap();
        assert_eq!(seen.len(), 2);
        // By emoji, byte by byte: 🎉 is F0 9F 8E 89, 👍 is F0 9F 91 8D.
        assert_eq!(seen[0].emoji, "🎉");
        assert_eq!(seen[1].emoji, "👍");
        assert_eq!(seen[1].count, 40);
        assert!(seen[1].reacted_by_me);
        assert_eq!(seen[1].reactor_ids, reactors[..32]);
        let outsider = store.reactions_of(&[m], new_id()).await.unwrap();
        assert!(outsider.iter().all(|r| !r.reacted_by_me));

        // Idempotent both ways; the summary is the reactor's view.
        let again = store
            .add_reaction(key(&place, m, "👍", me), NOW, None)
            .await
            .unwrap();
        assert!(
            matches!(again, ReactionChange::Applied { changed: false, ref summary } if summary.count == 40)
        );
        let removed = store
            .remove_reaction(key(&place, m, "👍", me), None)
            .await
            .unwrap();
        let ReactionChange::Applied { changed, summary } = removed else {
            panic!("{removed:?}");
        };
        assert!(changed);
        assert_eq!((summary.count, summary.reacted_by_me), (39, false));
        assert!(!summary.reactor_ids.contains(&me));
        let twice = store
            .remove_reaction(key(&place, m, "👍", me), None)
            .await
            .unwrap();
        assert!(matches!(
            twice,
            ReactionChange::Applied { changed: false, .. }
        ));

        // Unknown or misplaced messages.
        let nowhere = store
            .add_reaction(key(&place, new_id(), "👍", me), NOW, None)
            .await
            .unwrap();
        assert_eq!(nowhere, ReactionChange::MessageNotFound);
        let misplaced = ReactionKey {
            channel_id: place.other_channel_id,
            ..key(&place, m, "👍", me)
        };
        assert_eq!(
            store.remove_reaction(misplaced, None).await.unwrap(),
            ReactionChange::MessageNotFound
        );

        // 64 distinct emoji at most; existing ones still take reactors.
        for n in 2..MAX_REACTION_EMOJI {
            let emoji = format!("e{n}");
            let change = store
                .add_reaction(key(&place, m, &emoji, me), NOW, None)
                .await
                .unwrap();
            assert!(matches!(
                change,
                ReactionChange::Applied { changed: true, .. }
            ));
        }
        let over = store
            .add_reaction(key(&place, m, "one-more", me), NOW, None)
            .await
            .unwrap();
        assert_eq!(over, ReactionChange::TooManyEmoji);
        let existing = store
            .add_reaction(key(&place, m, "e2", reactors[0]), NOW, None)
            .await
            .unwrap();
        assert!(matches!(
            existing,
            ReactionChange::Applied { changed: true, .. }
        ));
        let all = store.reactions_of(&[m], me).await.unwrap();
        assert_eq!(all.len(), 64);

        // Reactions go with their message.
        let (g, c) = (place.guild_id, place.channel_id);
        store.delete_message(g, c, m, None).await.unwrap();
        assert!(store.reactions_of(&[m], me).await.unwrap().is_empty());
    }

    async fn concurrent_new_emoji_respect_the_cap(store: Arc<dyn Store>) {
        let place = Arc::new(place(store.as_ref()).await);
        let user = new_id();
        // A race is won or lost by timing; a few rounds make a broken lock
        // show up reliably.
        for _ in 0..4 {
            let target = message(&place, new_id(), "busy");
            store.create_message(target.clone(), None).await.unwrap();
            let m = target.message_id;
            for n in 1..MAX_REACTION_EMOJI {
                store
                    .add_reaction(key(&place, m, &format!("e{n}"), user), NOW, None)
                    .await
                    .unwrap();
            }
            let start = Arc::new(tokio::sync::Barrier::new(8));
            let racers = (0..8).map(|n| {
                let (store, place, start) =
                    (Arc::clone(&store), Arc::clone(&place), Arc::clone(&start));
                tokio::spawn(async move {
                    start.wait().await;
                    store
                        .add_reaction(key(&place, m, &format!("new{n}"), user), NOW, None)
                        .await
                        .unwrap()
                })
            });
            let mut applied = 0;
            for racer in racers.collect::<Vec<_>>() {
                match racer.await.unwrap() {
                    ReactionChange::Applied { changed: true, .. } => applied += 1,
                    ReactionChange::TooManyEmoji => {}
                    other => panic!("{other:?}"),
                }
            }
            assert_eq!(applied, 1);
            assert_eq!(store.reactions_of(&[m], user).await.unwrap().len(), 64);
        }
    }
}
