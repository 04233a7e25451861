//! The audit log: who did what to whom in a guild. Every moderation and
//! permission change writes one entry; `GET /guilds/{g}/audit` reads them,
//! newest first.
//!
//! This file is also the pattern for every store area: records, the area's
//! trait, its one SQL implementation over [`SqlStore`], and its conformance
//! cases, all in one place.

use async_trait::async_trait;
use filament_ids::{GuildId, UserId};
use sqlx::{ColumnIndex, Database, Decode, Encode, Executor, IntoArguments, Row, Type};
use ulid::Ulid;

use super::StoreResult;
use super::sql::{SqlStore, decode_id, parse_stored_id};

/// Actions whose entries say an IP ban matched.
const IP_BAN_MATCH_ACTIONS: [&str; 2] = ["directory.join.rejected.ip_ban", "moderation.ip_ban.hit"];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewAuditEntry {
    pub audit_id: Ulid,
    pub guild_id: GuildId,
    pub actor_user_id: UserId,
    pub target_user_id: Option<UserId>,
    /// One of the audit actions of PROTOCOL.md §2.7, e.g. `member.kick`.
    pub action: &'static str,
    pub created_at_unix: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    pub audit_id: Ulid,
    pub actor_user_id: UserId,
    pub target_user_id: Option<UserId>,
    pub action: String,
    pub created_at_unix: i64,
}

impl AuditEntry {
    pub fn ip_ban_match(&self) -> bool {
        IP_BAN_MATCH_ACTIONS.contains(&self.action.as_str())
    }

    /// The cursor that continues after this entry: `<created_at>_<id>`.
    pub fn cursor(&self) -> String {
        format!("{}_{}", self.created_at_unix, self.audit_id)
    }
}

/// A position in the log, as `GET /audit` passes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuditCursor {
    pub created_at_unix: i64,
    pub audit_id: Ulid,
}

impl AuditCursor {
    /// Parses `<created_at_unix>_<audit_id>`.
    pub fn parse(raw: &str) -> Option<Self> {
        let (created, id) = raw.split_once('_')?;
        Some(Self {
            created_at_unix: created.parse().ok()?,
            audit_id: Ulid::from_string(id).ok()?,
        })
    }
}

/// One page of the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditPage {
    pub entries: Vec<AuditEntry>,
}

#[async_trait]
pub trait AuditStore: Send + Sync + 'static {
    async fn record_audit(&self, entry: NewAuditEntry) -> StoreResult<()>;

    /// Entries of a guild, newest first, strictly after `cursor`, whose
    /// action starts with `action_prefix`, at most `limit`.
    async fn audit_entries(
        &self,
        guild_id: GuildId,
        cursor: Option<AuditCursor>,
        action_prefix: Option<&str>,
        limit: u32,
    ) -> StoreResult<AuditPage>;
}

#[async_trait]
impl<DB> AuditStore for SqlStore<DB>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    for<'q> String: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> Option<String>: Encode<'q, DB> + Decode<'q, DB>,
    for<'i> &'i str: ColumnIndex<DB::Row>,
{
    async fn record_audit(&self, entry: NewAuditEntry) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO audit_log \
             (audit_id, guild_id, actor_user_id, target_user_id, action, created_at_unix) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(entry.audit_id.to_string())
        .bind(entry.guild_id.to_string())
        .bind(entry.actor_user_id.to_string())
        .bind(entry.target_user_id.map(|id| id.to_string()))
        .bind(entry.action.to_owned())
        .bind(entry.created_at_unix)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn audit_entries(
        &self,
        guild_id: GuildId,
        cursor: Option<AuditCursor>,
        action_prefix: Option<&str>,
        limit: u32,
    ) -> StoreResult<AuditPage> {
        // Prefix matching with substr, not LIKE: `_` is a LIKE wildcard and
        // appears in every action name.
        let (cursor_at, cursor_id) = cursor.map_or((i64::MAX, String::new()), |c| {
            (c.created_at_unix, c.audit_id.to_string())
        });
        let rows = sqlx::query(
            "SELECT audit_id, actor_user_id, target_user_id, action, created_at_unix \
             FROM audit_log \
             WHERE guild_id = $1 \
               AND (created_at_unix < $2 OR (created_at_unix = $2 AND audit_id < $3) OR $3 = '') \
               AND substr(action, 1, length($4)) = $4 \
             ORDER BY created_at_unix DESC, audit_id DESC \
             LIMIT $5",
        )
        .bind(guild_id.to_string())
        .bind(cursor_at)
        .bind(cursor_id)
        .bind(action_prefix.unwrap_or_default().to_owned())
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        let entries = rows
            .iter()
            .map(|row| {
                let target: Option<String> = row.try_get("target_user_id")?;
                Ok(AuditEntry {
                    audit_id: decode_id(row, "audit_id")?,
                    actor_user_id: decode_id(row, "actor_user_id")?,
                    target_user_id: target
                        .map(|t| parse_stored_id(&t, "target_user_id"))
                        .transpose()?,
                    action: row.try_get("action")?,
                    created_at_unix: row.try_get("created_at_unix")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()?;
        Ok(AuditPage { entries })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::store::Store;
    use crate::store::tests::{conformance, new_id};

    conformance!(audit_pages_newest_first_with_prefix_and_cursor);

    async fn audit_pages_newest_first_with_prefix_and_cursor(store: Arc<dyn Store>) {
        let guild_id = new_id();
        let actor = new_id();
        let actions = ["role.create", "member.kick", "role.update", "member.ban"];
        let mut ids = Vec::new();
        for (offset, action) in (0_i64..).zip(actions) {
            let audit_id = new_id();
            ids.push(audit_id);
            store
                .record_audit(NewAuditEntry {
                    audit_id,
                    guild_id,
                    actor_user_id: actor,
                    target_user_id: (offset % 2 == 1).then_some(actor),
                    action,
                    created_at_unix: 1_000 + offset,
                })
                .await
                .unwrap();
        }
        // Another guild's entries never show.
        store
            .record_audit(NewAuditEntry {
                audit_id: new_id(),
                guild_id: GuildId::generate(),
                actor_user_id: actor,
                target_user_id: None,
                action: "role.create",
                created_at_unix: 2_000,
            })
            .await
            .unwrap();

        let all = store.audit_entries(guild_id, None, None, 10).await.unwrap();
        let got: Vec<_> = all.entries.iter().map(|e| e.action.as_str()).collect();
        assert_eq!(
            got,
            ["member.ban", "role.update", "member.kick", "role.create"]
        );
        assert_eq!(all.entries[0].target_user_id, Some(actor));
        assert_eq!(all.entries[1].target_user_id, None);

        let roles = store
            .audit_entries(guild_id, None, Some("role."), 10)
            .await
            .unwrap();
        let got: Vec<_> = roles.entries.iter().map(|e| e.audit_id).collect();
        assert_eq!(got, [ids[2], ids[0]]);

        let first = store.audit_entries(guild_id, None, None, 2).await.unwrap();
        let cursor = AuditCursor::parse(&first.entries[1].cursor()).unwrap();
        let rest = store
            .audit_entries(guild_id, Some(cursor), None, 10)
            .await
            .unwrap();
        let got: Vec<_> = rest.entries.iter().map(|e| e.audit_id).collect();
        assert_eq!(got, [ids[1], ids[0]]);
    }
}
