//! The one implementation of [`Store`], written once over sqlx and shared by
//! SQLite and Postgres.
//!
//! Both databases take the same SQL here: `$N` placeholders, `RETURNING`,
//! `ON CONFLICT ... DO NOTHING`. So the queries and the row mapping live only
//! in this file, and a backend module adds only what really differs: how it
//! connects and which migrations it runs (`sqlite.rs`, `postgres.rs`).
//!
//! Writes report what they changed through `RETURNING` rather than
//! `rows_affected()`, because sqlx has no backend-neutral `rows_affected`.

use async_trait::async_trait;
use filament_ids::{ChannelId, GuildId, SessionId, UserId};
use sqlx::{ColumnIndex, Database, Decode, Encode, Executor, IntoArguments, Pool, Row, Type};
use ulid::Ulid;

use super::{
    BuiltinMasks, ChannelKind, ChannelRecord, CoreStore, GuildRecord, HistoryCursor, MemberRecord,
    MemberRole, MessageRecord, MessageStore, NewSession, NewUser, OutboxEvent, OutboxFor,
    RotateOutcome, StoreError, StoreResult, UserRecord, Visibility,
};

/// A [`Store`] over a pool of one sqlx backend. Named through the
/// [`SqliteStore`](super::SqliteStore) and
/// [`PostgresStore`](super::PostgresStore) aliases, which add the
/// backend's constructors.
#[derive(Debug, Clone)]
pub struct SqlStore<DB: Database> {
    pub(super) pool: Pool<DB>,
    /// Wakes message-log followers after a change commits (`message_log.rs`).
    pub(super) log_signal: super::message_log::LogSignal,
}

impl<DB: Database> SqlStore<DB> {
    /// Wraps a pool whose database is already migrated.
    pub(super) fn from_migrated_pool(pool: Pool<DB>) -> Self {
        Self {
            pool,
            log_signal: super::message_log::LogSignal::default(),
        }
    }

    /// Closes the pool and waits for its connections to close, so that a
    /// shutdown (or a test dropping its schema) does not race them.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

// Every area's `impl<DB> XStore for SqlStore<DB>` repeats this where-clause:
// Rust does not carry such bounds from a helper trait to its users.
#[async_trait]
impl<DB> CoreStore for SqlStore<DB>
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
    async fn create_user(&self, user: NewUser) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO users (user_id, username, password_hash, created_at_unix) \
             VALUES ($1, $2, $3, $4)",
        )
        .bind(user.user_id.to_string())
        .bind(user.username)
        .bind(user.password_hash)
        .bind(user.created_at_unix)
        .execute(&self.pool)
        .await
        .map_err(conflict_on("username"))?;
        Ok(())
    }

    async fn user_by_id(&self, user_id: UserId) -> StoreResult<Option<UserRecord>> {
        let row = sqlx::query(
            "SELECT user_id, username, password_hash, about_markdown, avatar_version, \
             banner_version, created_at_unix FROM users WHERE user_id = $1",
        )
        .bind(user_id.to_string())
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.as_ref().map(decode_user).transpose()?)
    }

    async fn user_in_session(
        &self,
        user_id: UserId,
        session_id: SessionId,
    ) -> StoreResult<Option<UserRecord>> {
        let row = sqlx::query(
            "SELECT u.user_id, u.username, u.password_hash, u.about_markdown, \
             u.avatar_version, u.banner_version, u.created_at_unix \
             FROM users u JOIN sessions s ON s.user_id = u.user_id \
             WHERE u.user_id = $1 AND s.session_id = $2 AND NOT s.revoked",
        )
        .bind(user_id.to_string())
        .bind(session_id.to_string())
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.as_ref().map(decode_user).transpose()?)
    }

    async fn user_by_username(&self, username: &str) -> StoreResult<Option<UserRecord>> {
        // Usernames are ASCII (PROTOCOL.md §2.2), so lower() folds them alike on
        // both backends; the expression is the one the unique index of
        // migration 0008 is built on, so that index serves the lookup.
        let row = sqlx::query(
            "SELECT user_id, username, password_hash, about_markdown, avatar_version, \
             banner_version, created_at_unix FROM users WHERE lower(username) = lower($1)",
        )
        .bind(username.to_owned())
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.as_ref().map(decode_user).transpose()?)
    }

    async fn create_session(&self, session: NewSession) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO sessions (session_id, user_id, refresh_token_hash, expires_at_unix) \
             VALUES ($1, $2, $3, $4)",
        )
        .bind(session.session_id.to_string())
        .bind(session.user_id.to_string())
        .bind(session.refresh_token_hash)
        .bind(session.expires_at_unix)
        .execute(&self.pool)
        .await
        .map_err(conflict_on("session_id"))?;
        Ok(())
    }

    async fn rotate_session(
        &self,
        session_id: SessionId,
        presented_hash: &str,
        new_hash: &str,
        new_expires_at_unix: i64,
        now_unix: i64,
        outbox: OutboxFor<'_, UserId>,
    ) -> StoreResult<RotateOutcome> {
        let session_id = session_id.to_string();
        let mut tx = self.pool.begin().await?;
        // The check and the swap are one conditional UPDATE, so two requests
        // racing with the same token cannot both pass: the loser's UPDATE
        // sees the winner's new hash and matches nothing.
        let rotated = sqlx::query(
            "UPDATE sessions SET refresh_token_hash = $1, expires_at_unix = $2 \
             WHERE session_id = $3 AND refresh_token_hash = $4 \
             AND NOT revoked AND expires_at_unix > $5 \
             RETURNING user_id",
        )
        .bind(new_hash.to_owned())
        .bind(new_expires_at_unix)
        .bind(session_id.clone())
        .bind(presented_hash.to_owned())
        .bind(now_unix)
        .fetch_optional(&mut *tx)
        .await?;
        let outcome = if let Some(row) = rotated {
            RotateOutcome::Rotated {
                user_id: decode_id(&row, "user_id")?,
            }
        } else {
            // The swap failed, so a live session with this id holds another
            // hash: the token was already rotated (or forged). Revoke it, so
            // that whoever holds the newer token is logged out too.
            let revoked = sqlx::query(
                "UPDATE sessions SET revoked = TRUE \
                 WHERE session_id = $1 AND NOT revoked AND expires_at_unix > $2 \
                 RETURNING user_id",
            )
            .bind(session_id)
            .bind(now_unix)
            .fetch_optional(&mut *tx)
            .await?;
            match revoked {
                Some(row) => {
                    let user_id = decode_id(&row, "user_id")?;
                    Self::enqueue_outbox_all(&mut tx, outbox(&user_id)).await?;
                    RotateOutcome::Replayed { user_id }
                }
                None => RotateOutcome::Invalid,
            }
        };
        tx.commit().await?;
        Ok(outcome)
    }

    async fn revoke_session(
        &self,
        session_id: SessionId,
        presented_hash: &str,
        outbox: OutboxFor<'_, UserId>,
    ) -> StoreResult<Option<UserId>> {
        let mut tx = self.pool.begin().await?;
        let revoked = sqlx::query(
            "UPDATE sessions SET revoked = TRUE \
             WHERE session_id = $1 AND refresh_token_hash = $2 AND NOT revoked \
             RETURNING user_id",
        )
        .bind(session_id.to_string())
        .bind(presented_hash.to_owned())
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = revoked else {
            return Ok(None);
        };
        let user_id = decode_id(&row, "user_id")?;
        Self::enqueue_outbox_all(&mut tx, outbox(&user_id)).await?;
        tx.commit().await?;
        Ok(Some(user_id))
    }

    async fn create_guild(&self, guild: GuildRecord, masks: BuiltinMasks) -> StoreResult<()> {
        let guild_id = guild.guild_id.to_string();
        let created_by = guild.created_by.to_string();
        // A guild without its owner membership would be unreachable, so both
        // rows commit together or not at all.
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO guilds (guild_id, name, visibility, created_by, created_at_unix) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(guild_id.clone())
        .bind(guild.name)
        .bind(guild.visibility.as_str().to_owned())
        .bind(created_by.clone())
        .bind(guild.created_at_unix)
        .execute(&mut *tx)
        .await
        .map_err(conflict_on("guild_id"))?;
        sqlx::query(
            "INSERT INTO guild_members (guild_id, user_id, role, joined_at_unix) \
             VALUES ($1, $2, $3, $4)",
        )
        .bind(guild_id.clone())
        .bind(created_by.clone())
        .bind(MemberRole::Owner.as_str().to_owned())
        .bind(guild.created_at_unix)
        .execute(&mut *tx)
        .await?;
        // The default roles come with the guild: permission checks need them.
        super::roles::seed_guild_roles(
            &mut *tx,
            &guild_id,
            &created_by,
            guild.created_at_unix,
            masks,
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn guild(&self, guild_id: GuildId) -> StoreResult<Option<GuildRecord>> {
        let row = sqlx::query(
            "SELECT guild_id, name, visibility, created_by, created_at_unix \
             FROM guilds WHERE guild_id = $1",
        )
        .bind(guild_id.to_string())
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.as_ref().map(decode_guild).transpose()?)
    }

    async fn guilds_for_user(&self, user_id: UserId, limit: u32) -> StoreResult<Vec<GuildRecord>> {
        let rows = sqlx::query(
            "SELECT g.guild_id, g.name, g.visibility, g.created_by, g.created_at_unix \
             FROM guild_members m JOIN guilds g ON g.guild_id = m.guild_id \
             WHERE m.user_id = $1 \
             ORDER BY g.created_at_unix DESC, g.guild_id DESC LIMIT $2",
        )
        .bind(user_id.to_string())
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(decode_guild).collect::<Result<_, _>>()?)
    }

    async fn count_guilds_created_by(&self, user_id: UserId) -> StoreResult<u64> {
        let row = sqlx::query("SELECT COUNT(*) AS created FROM guilds WHERE created_by = $1")
            .bind(user_id.to_string())
            .fetch_one(&self.pool)
            .await?;
        let created: i64 = row.try_get("created")?;
        // COUNT is never negative; this only changes the type.
        Ok(created.unsigned_abs())
    }

    async fn member(
        &self,
        guild_id: GuildId,
        user_id: UserId,
    ) -> StoreResult<Option<MemberRecord>> {
        let row = sqlx::query(
            "SELECT guild_id, user_id, role, joined_at_unix \
             FROM guild_members WHERE guild_id = $1 AND user_id = $2",
        )
        .bind(guild_id.to_string())
        .bind(user_id.to_string())
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.as_ref().map(decode_member).transpose()?)
    }

    async fn members(
        &self,
        guild_id: GuildId,
        after: Option<UserId>,
        limit: u32,
    ) -> StoreResult<Vec<MemberRecord>> {
        let rows = sqlx::query(
            "SELECT guild_id, user_id, role, joined_at_unix FROM guild_members \
             WHERE guild_id = $1 AND user_id > $2 ORDER BY user_id LIMIT $3",
        )
        .bind(guild_id.to_string())
        .bind(after.map(|id| id.to_string()).unwrap_or_default())
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(decode_member).collect::<Result<_, _>>()?)
    }

    async fn add_member(&self, member: MemberRecord) -> StoreResult<bool> {
        // DO NOTHING keeps an existing membership (and its role) untouched;
        // RETURNING yields a row only when the insert happened.
        let inserted = sqlx::query(
            "INSERT INTO guild_members (guild_id, user_id, role, joined_at_unix) \
             VALUES ($1, $2, $3, $4) \
             ON CONFLICT (guild_id, user_id) DO NOTHING \
             RETURNING user_id",
        )
        .bind(member.guild_id.to_string())
        .bind(member.user_id.to_string())
        .bind(member.role.as_str().to_owned())
        .bind(member.joined_at_unix)
        .fetch_optional(&self.pool)
        .await?;
        Ok(inserted.is_some())
    }

    async fn create_channel(
        &self,
        channel: ChannelRecord,
        outbox: Vec<OutboxEvent>,
    ) -> StoreResult<()> {
        self.insert_channel(channel, outbox).await
    }

    async fn channel(
        &self,
        guild_id: GuildId,
        channel_id: ChannelId,
    ) -> StoreResult<Option<ChannelRecord>> {
        let row = sqlx::query(
            "SELECT channel_id, guild_id, name, kind, created_at_unix \
             FROM channels WHERE channel_id = $1 AND guild_id = $2",
        )
        .bind(channel_id.to_string())
        .bind(guild_id.to_string())
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.as_ref().map(decode_channel).transpose()?)
    }

    async fn channels(&self, guild_id: GuildId, limit: u32) -> StoreResult<Vec<ChannelRecord>> {
        let rows = sqlx::query(
            "SELECT channel_id, guild_id, name, kind, created_at_unix \
             FROM channels WHERE guild_id = $1 \
             ORDER BY created_at_unix, channel_id LIMIT $2",
        )
        .bind(guild_id.to_string())
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(decode_channel).collect::<Result<_, _>>()?)
    }

    async fn create_message(
        &self,
        message: MessageRecord,
        outbox: Option<OutboxEvent>,
    ) -> StoreResult<()> {
        // A message without attachments: the one message insert is
        // `messages.rs`', and with no attachments to bind it always creates.
        self.create_message_with_attachments(message, &[], outbox, None)
            .await
            .map(|_| ())
    }

    async fn messages(
        &self,
        guild_id: GuildId,
        channel_id: ChannelId,
        cursor: HistoryCursor,
        limit: u32,
    ) -> StoreResult<Vec<MessageRecord>> {
        // One statement per cursor rather than `($4 IS NULL OR ...)`: a
        // plain range bound lets the (channel_id, message_id) index start
        // right at the cursor, also under a cached generic plan. The cursor
        // is the last placeholder so that all share the first three binds.
        let (sql, bound) = match cursor {
            HistoryCursor::Latest => (
                "SELECT message_id, guild_id, channel_id, author_id, content, created_at_unix \
                 FROM messages WHERE channel_id = $1 AND guild_id = $2 \
                 ORDER BY message_id DESC LIMIT $3",
                None,
            ),
            HistoryCursor::Before(before) => (
                "SELECT message_id, guild_id, channel_id, author_id, content, created_at_unix \
                 FROM messages WHERE channel_id = $1 AND guild_id = $2 AND message_id < $4 \
                 ORDER BY message_id DESC LIMIT $3",
                Some(before),
            ),
            HistoryCursor::After(after) => (
                "SELECT message_id, guild_id, channel_id, author_id, content, created_at_unix \
                 FROM messages WHERE channel_id = $1 AND guild_id = $2 AND message_id > $4 \
                 ORDER BY message_id ASC LIMIT $3",
                Some(after),
            ),
        };
        let mut query = sqlx::query(sql)
            .bind(channel_id.to_string())
            .bind(guild_id.to_string())
            .bind(i64::from(limit));
        if let Some(bound) = bound {
            query = query.bind(bound.to_string());
        }
        let rows = query.fetch_all(&self.pool).await?;
        Ok(rows.iter().map(decode_message).collect::<Result<_, _>>()?)
    }
}

/// Maps a unique violation to `Conflict(what)`; anything else stays a
/// backend error.
pub(super) fn conflict_on(what: &'static str) -> impl FnOnce(sqlx::Error) -> StoreError {
    move |error| match &error {
        sqlx::Error::Database(database) if database.is_unique_violation() => {
            StoreError::Conflict(what)
        }
        _ => StoreError::Backend(error),
    }
}

// --- row decoding ----------------------------------------------------------
//
// Generic over the row type, so one decoder serves both backends. A stored
// value that does not parse (a bad ULID or enum text) is reported like any
// other undecodable column, naming the column.

pub(super) fn decode_user<R>(row: &R) -> Result<UserRecord, sqlx::Error>
where
    R: Row,
    for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
    for<'i> &'i str: ColumnIndex<R>,
{
    Ok(UserRecord {
        user_id: decode_id(row, "user_id")?,
        username: row.try_get("username")?,
        password_hash: row.try_get("password_hash")?,
        about_markdown: row.try_get("about_markdown")?,
        avatar_version: row.try_get("avatar_version")?,
        banner_version: row.try_get("banner_version")?,
        created_at_unix: row.try_get("created_at_unix")?,
    })
}

pub(super) fn decode_guild<R>(row: &R) -> Result<GuildRecord, sqlx::Error>
where
    R: Row,
    for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
    for<'i> &'i str: ColumnIndex<R>,
{
    Ok(GuildRecord {
        guild_id: decode_id(row, "guild_id")?,
        name: row.try_get("name")?,
        visibility: decode_enum(row, "visibility", Visibility::parse)?,
        created_by: decode_id(row, "created_by")?,
        created_at_unix: row.try_get("created_at_unix")?,
    })
}

pub(super) fn decode_member<R>(row: &R) -> Result<MemberRecord, sqlx::Error>
where
    R: Row,
    for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
    for<'i> &'i str: ColumnIndex<R>,
{
    Ok(MemberRecord {
        guild_id: decode_id(row, "guild_id")?,
        user_id: decode_id(row, "user_id")?,
        role: decode_enum(row, "role", MemberRole::parse)?,
        joined_at_unix: row.try_get("joined_at_unix")?,
    })
}

pub(super) fn decode_channel<R>(row: &R) -> Result<ChannelRecord, sqlx::Error>
where
    R: Row,
    for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
    for<'i> &'i str: ColumnIndex<R>,
{
    Ok(ChannelRecord {
        channel_id: decode_id(row, "channel_id")?,
        guild_id: decode_id(row, "guild_id")?,
        name: row.try_get("name")?,
        kind: decode_enum(row, "kind", ChannelKind::parse)?,
        created_at_unix: row.try_get("created_at_unix")?,
    })
}

pub(super) fn decode_message<R>(row: &R) -> Result<MessageRecord, sqlx::Error>
where
    R: Row,
    for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
    for<'i> &'i str: ColumnIndex<R>,
{
    Ok(MessageRecord {
        message_id: decode_id(row, "message_id")?,
        guild_id: decode_id(row, "guild_id")?,
        channel_id: decode_id(row, "channel_id")?,
        author_id: decode_id(row, "author_id")?,
        content: row.try_get("content")?,
        created_at_unix: row.try_get("created_at_unix")?,
    })
}

/// A column holding an id, decoded into whichever id type the caller wants
/// (a typed id, or a plain [`Ulid`] for ids that name no entity).
pub(super) fn decode_id<R, T>(row: &R, column: &str) -> Result<T, sqlx::Error>
where
    R: Row,
    T: From<Ulid>,
    for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
    for<'i> &'i str: ColumnIndex<R>,
{
    let text: String = row.try_get(column)?;
    parse_stored_id(&text, column)
}

/// Stored id text already read from a row, decoded like [`decode_id`].
pub(super) fn parse_stored_id<T: From<Ulid>>(text: &str, column: &str) -> Result<T, sqlx::Error> {
    Ulid::from_string(text)
        .map(T::from)
        .map_err(|error| sqlx::Error::ColumnDecode {
            index: column.to_owned(),
            source: Box::new(error),
        })
}

pub(super) fn decode_enum<R, T>(
    row: &R,
    column: &str,
    parse: fn(&str) -> Option<T>,
) -> Result<T, sqlx::Error>
where
    R: Row,
    for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
    for<'i> &'i str: ColumnIndex<R>,
{
    let text: String = row.try_get(column)?;
    parse(&text).ok_or_else(|| sqlx::Error::ColumnDecode {
        index: column.to_owned(),
        source: format!("unexpected value {text:?}").into(),
    })
}
