//! Channel lifecycle: creating, renaming and deleting a guild's channels.
//! A rename reports the channel before and after, so the handler can tell
//! members what changed; a delete takes the channel's messages and
//! overrides with it (the schema's cascades). Reading channels is the
//! core's (`sql.rs`); their permission overrides are `roles.rs`', beside
//! the roles they refer to.
//!
//! The trait methods are [`CoreStore::create_channel`](super::CoreStore::create_channel),
//! [`RoleStore::rename_channel`](super::RoleStore::rename_channel) and
//! [`RoleStore::delete_channel`](super::RoleStore::delete_channel); their
//! bodies are here.

use filament_ids::{ChannelId, GuildId};
use sqlx::{ColumnIndex, Database, Decode, Encode, Executor, IntoArguments, Type};

use super::sql::{SqlStore, conflict_on, decode_channel};
use super::{Change, ChannelRecord, OutboxEvent, OutboxFor, StoreResult};

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
    /// The body of [`CoreStore::create_channel`](super::CoreStore::create_channel).
    pub(super) async fn insert_channel(
        &self,
        channel: ChannelRecord,
        outbox: Vec<OutboxEvent>,
    ) -> StoreResult<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO channels (channel_id, guild_id, name, kind, created_at_unix) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(channel.channel_id.to_string())
        .bind(channel.guild_id.to_string())
        .bind(channel.name)
        .bind(channel.kind.as_str().to_owned())
        .bind(channel.created_at_unix)
        .execute(&mut *tx)
        .await
        .map_err(conflict_on("channel_id"))?;
        Self::enqueue_outbox_all(&mut tx, outbox).await?;
        tx.commit().await?;
        Ok(())
    }

    /// The body of [`RoleStore::rename_channel`](super::RoleStore::rename_channel).
    pub(super) async fn write_channel_name(
        &self,
        guild_id: GuildId,
        channel_id: ChannelId,
        name: String,
        outbox: OutboxFor<'_, Change<ChannelRecord>>,
    ) -> StoreResult<Option<Change<ChannelRecord>>> {
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query(
            "UPDATE channels SET name = name WHERE channel_id = $1 AND guild_id = $2 \
             RETURNING channel_id, guild_id, name, kind, created_at_unix",
        )
        .bind(channel_id.to_string())
        .bind(guild_id.to_string())
        .fetch_optional(&mut *tx)
        .await?;
        let Some(before) = row.as_ref().map(decode_channel).transpose()? else {
            return Ok(None);
        };
        sqlx::query("UPDATE channels SET name = $1 WHERE channel_id = $2")
            .bind(name.clone())
            .bind(channel_id.to_string())
            .execute(&mut *tx)
            .await?;
        let after = ChannelRecord {
            name,
            ..before.clone()
        };
        let change = Change { before, after };
        Self::enqueue_outbox_all(&mut tx, outbox(&change)).await?;
        tx.commit().await?;
        Ok(Some(change))
    }

    /// The body of [`RoleStore::delete_channel`](super::RoleStore::delete_channel).
    pub(super) async fn remove_channel(
        &self,
        guild_id: GuildId,
        channel_id: ChannelId,
        outbox: Vec<OutboxEvent>,
    ) -> StoreResult<bool> {
        self.delete_with_outbox(
            "DELETE FROM channels WHERE channel_id = $1 AND guild_id = $2 RETURNING channel_id",
            [channel_id.to_string(), guild_id.to_string()],
            outbox,
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use crate::store::Store;
    use crate::store::tests::{TextChannel, conformance, new_id, no_events};

    conformance!(channel_rename_reports_before_and_after);

    async fn channel_rename_reports_before_and_after(store: Arc<dyn Store>) {
        let TextChannel {
            guild_id,
            channel_id,
            ..
        } = TextChannel::create(&*store).await;
        let renamed = store
            .rename_channel(guild_id, channel_id, "renamed".to_owned(), &no_events)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (renamed.before.name.as_str(), renamed.after.name.as_str()),
            ("c", "renamed")
        );
        assert_eq!(
            store.channel(guild_id, channel_id).await.unwrap(),
            Some(renamed.after)
        );
        assert_eq!(
            store
                .rename_channel(new_id(), channel_id, "x".to_owned(), &no_events)
                .await
                .unwrap(),
            None
        );
    }
}
