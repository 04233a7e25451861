//! Guild settings (`PATCH /guilds/{g}`): name and visibility, changed in
//! one transaction that reports the guild before and after, so the handler
//! can tell members what changed. Creating a guild is the core's
//! (`sql.rs`), since it seeds the roles and the owner's membership with it.
//!
//! [`RoleStore::update_guild`](super::RoleStore::update_guild) is the
//! trait method; its body is here.

use filament_ids::GuildId;
use sqlx::{ColumnIndex, Database, Decode, Encode, Executor, IntoArguments, Type};

use super::sql::{SqlStore, decode_guild};
use super::{Change, GuildRecord, OutboxFor, StoreResult, Visibility};

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
    /// The body of [`RoleStore::update_guild`](super::RoleStore::update_guild).
    pub(super) async fn write_guild_settings(
        &self,
        guild_id: GuildId,
        name: Option<String>,
        visibility: Option<Visibility>,
        outbox: OutboxFor<'_, Change<GuildRecord>>,
    ) -> StoreResult<Option<Change<GuildRecord>>> {
        let guild = guild_id.to_string();
        let mut tx = self.pool.begin().await?;
        // The no-op update locks the row and returns it as it was.
        let row = sqlx::query(
            "UPDATE guilds SET name = name WHERE guild_id = $1 \
             RETURNING guild_id, name, visibility, created_by, created_at_unix",
        )
        .bind(guild.clone())
        .fetch_optional(&mut *tx)
        .await?;
        let Some(before) = row.as_ref().map(decode_guild).transpose()? else {
            return Ok(None);
        };
        let after = GuildRecord {
            name: name.unwrap_or_else(|| before.name.clone()),
            visibility: visibility.unwrap_or(before.visibility),
            ..before.clone()
        };
        sqlx::query("UPDATE guilds SET name = $1, visibility = $2 WHERE guild_id = $3")
            .bind(after.name.clone())
            .bind(after.visibility.as_str().to_owned())
            .bind(guild)
            .execute(&mut *tx)
            .await?;
        let change = Change { before, after };
        Self::enqueue_outbox_all(&mut tx, outbox(&change)).await?;
        tx.commit().await?;
        Ok(Some(change))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::store::Store;
    use crate::store::tests::{TextChannel, conformance, new_id, no_events};

    conformance!(guild_update_reports_before_and_after);

    async fn guild_update_reports_before_and_after(store: Arc<dyn Store>) {
        let TextChannel { guild_id, .. } = TextChannel::create(&*store).await;
        let change = store
            .update_guild(guild_id, None, Some(Visibility::Public), &no_events)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(change.before.visibility, Visibility::Private);
        assert_eq!(
            (change.after.name.as_str(), change.after.visibility),
            ("g", Visibility::Public)
        );
        assert_eq!(store.guild(guild_id).await.unwrap(), Some(change.after));
        assert_eq!(
            store
                .update_guild(new_id(), None, None, &no_events)
                .await
                .unwrap(),
            None
        );
    }
}
