//! Membership changes and moderation: the public directory, joins and adds
//! that respect bans, kicks, bans, the addresses users joined each guild
//! from, and guild IP bans.
//!
//! Every write that must not interleave with a ban — adding a member,
//! banning, creating IP bans under their cap — first locks the guild's row,
//! as `roles.rs` does. Without it, on Postgres a join could check "not
//! banned" while a concurrent ban deletes a membership the join has not
//! committed yet, and the banned user would end up a member. The lock is
//! each transaction's first statement and a write, so SQLite takes its
//! write lock up front too.
//!
//! Addresses are stored as canonical host networks (see the migration);
//! they never leave this module except as a yes/no answer.

use std::net::IpAddr;

use async_trait::async_trait;
use filament_ids::{GuildId, SessionId, UserId};
use ipnet::IpNet;
use sqlx::{ColumnIndex, Database, Decode, Encode, Executor, IntoArguments, Row, Type};
use ulid::Ulid;

use super::sql::{SqlStore, decode_guild, decode_id, decode_user, parse_stored_id};
use super::{GuildRecord, MemberRecord, OutboxEvent, OutboxFor, StoreResult, UserRecord};

/// Join addresses kept per guild and user for bans by user; older ones are
/// forgotten.
pub const MAX_JOIN_ADDRESSES_PER_MEMBER: u32 = 32;

/// What adding a membership did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddMemberOutcome {
    Added,
    /// Already a member; nothing changed.
    AlreadyMember,
    /// Banned from the guild; nothing changed.
    Banned,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewGuildBan {
    pub guild_id: GuildId,
    pub user_id: UserId,
    pub banned_by: UserId,
    pub created_at_unix: i64,
}

/// An IP ban as clients may see it: no address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpBanRecord {
    pub ban_id: Ulid,
    pub source_user_id: Option<UserId>,
    pub reason: Option<String>,
    pub created_at_unix: i64,
    pub expires_at_unix: Option<i64>,
}

/// A position in a guild's IP-ban list: strictly older than this ban.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpBanCursor {
    pub created_at_unix: i64,
    pub ban_id: Ulid,
}

impl IpBanRecord {
    /// The cursor that continues after this ban.
    pub fn cursor(&self) -> IpBanCursor {
        IpBanCursor {
            created_at_unix: self.created_at_unix,
            ban_id: self.ban_id,
        }
    }
}

/// Bans of every address a user made accepted directory joins to the guild
/// from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewIpBansByUser {
    pub guild_id: GuildId,
    pub target_user_id: UserId,
    pub reason: Option<String>,
    pub created_by: UserId,
    pub created_at_unix: i64,
    pub expires_at_unix: Option<i64>,
    /// Active bans the guild may hold afterwards.
    pub max_entries: u32,
}

/// What banning a user's addresses did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IpBanOutcome {
    /// The new bans, newest address first; empty when every address was
    /// already banned or none was ever seen.
    Created(Vec<Ulid>),
    /// The guild would hold more than `max_entries` bans; nothing written.
    QuotaExceeded,
}

/// A removed IP ban.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RemovedIpBan {
    pub source_user_id: Option<UserId>,
}

#[async_trait]
pub trait MemberStore: Send + Sync + 'static {
    /// Public guilds whose name contains `name_contains` (ASCII
    /// case-insensitive), newest first, at most `limit`.
    async fn public_guilds(
        &self,
        name_contains: Option<&str>,
        limit: u32,
    ) -> StoreResult<Vec<GuildRecord>>;
    /// Adds the membership unless the user is banned from the guild or
    /// already a member.
    ///
    /// Stores `outbox`, the change's realtime events, in the same
    /// transaction (docs/adr/0006-outbox.md), only when the member was
    /// `Added`.
    async fn add_member_unless_banned(
        &self,
        member: MemberRecord,
        outbox: Vec<OutboxEvent>,
    ) -> StoreResult<AddMemberOutcome>;
    /// A directory join from `ip`: [`add_member_unless_banned`], and, when
    /// the user is a member afterwards (added, or already one), remembers
    /// in the same transaction that they came from `ip` to this guild at
    /// `member.joined_at_unix`, keeping the newest
    /// [`MAX_JOIN_ADDRESSES_PER_MEMBER`] per guild. A refused join records
    /// nothing. Stores `outbox` like [`add_member_unless_banned`].
    ///
    /// [`add_member_unless_banned`]: MemberStore::add_member_unless_banned
    async fn join_from(
        &self,
        member: MemberRecord,
        ip: IpAddr,
        outbox: Vec<OutboxEvent>,
    ) -> StoreResult<AddMemberOutcome>;
    /// Removes the membership and, by cascade, its role assignments.
    /// Returns whether the user was a member.
    ///
    /// Stores `outbox`, the change's realtime events, in the same
    /// transaction (docs/adr/0006-outbox.md), only if they were.
    async fn remove_member(
        &self,
        guild_id: GuildId,
        user_id: UserId,
        outbox: Vec<OutboxEvent>,
    ) -> StoreResult<bool>;
    /// Records the ban (kept if it exists) and removes the membership with
    /// its role assignments. Returns whether the user was a member.
    ///
    /// Stores `outbox`, the change's realtime events, in the same
    /// transaction (docs/adr/0006-outbox.md), member or not: a ban always
    /// tears down.
    async fn ban_member(&self, ban: NewGuildBan, outbox: Vec<OutboxEvent>) -> StoreResult<bool>;
    async fn is_banned(&self, guild_id: GuildId, user_id: UserId) -> StoreResult<bool>;

    /// Whether an IP ban of the guild, active at `now_unix`, covers `ip`.
    async fn ip_banned(&self, guild_id: GuildId, ip: IpAddr, now_unix: i64) -> StoreResult<bool>;
    /// [`ip_banned`](Self::ip_banned) and, for the session a request's
    /// access token names, [`user_in_session`](super::CoreStore::user_in_session),
    /// in one statement: what the IP gate of a guild route and the
    /// caller's authentication read for one request.
    async fn ip_gate(
        &self,
        guild_id: GuildId,
        ip: IpAddr,
        now_unix: i64,
        session: Option<(UserId, SessionId)>,
    ) -> StoreResult<IpGate>;
    /// Active IP bans of the guild, newest first, strictly after `cursor`,
    /// at most `limit`.
    async fn ip_bans(
        &self,
        guild_id: GuildId,
        cursor: Option<IpBanCursor>,
        now_unix: i64,
        limit: u32,
    ) -> StoreResult<Vec<IpBanRecord>>;
    /// Bans every address the target was seen joining this guild from
    /// that the guild does not ban yet; addresses seen only in other guilds
    /// are not this guild's to ban. Expired bans are dropped first and do
    /// not count against the cap.
    ///
    /// Stores the events `outbox` builds from the new bans' ids, the
    /// change's realtime events, in the same transaction
    /// (docs/adr/0006-outbox.md); nothing when no ban was created.
    async fn ban_user_ips(
        &self,
        request: NewIpBansByUser,
        outbox: OutboxFor<'_, [Ulid]>,
    ) -> StoreResult<IpBanOutcome>;
    /// Removes the ban; `None` if the guild has no such ban.
    ///
    /// Stores `outbox`, the change's realtime events, in the same
    /// transaction (docs/adr/0006-outbox.md), only if a ban was removed.
    async fn remove_ip_ban(
        &self,
        guild_id: GuildId,
        ban_id: Ulid,
        outbox: Vec<OutboxEvent>,
    ) -> StoreResult<Option<RemovedIpBan>>;
}

/// What [`MemberStore::ip_gate`] read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpGate {
    /// An IP ban of the guild, active then, covers the address.
    pub banned: bool,
    /// The user of the session asked about, if it is theirs and was not
    /// revoked; `None` too when no session was asked about.
    pub user: Option<UserRecord>,
}

/// [`MemberStore::ip_gate`]'s statement: a `ban` row when a ban matches
/// (the query of `ip_banned`), and a `user` row for a live session (the
/// query of `user_in_session`). `$4` and `$5`, the session's user and id,
/// are NULL when no session is asked about, which matches no row. The
/// NULLs of the `ban` row are typed so that Postgres takes each column's
/// type from the first branch.
const IP_GATE_SQL: &str = "\
    SELECT CAST('ban' AS TEXT) AS fact, CAST(NULL AS TEXT) AS user_id, \
      CAST(NULL AS TEXT) AS username, CAST(NULL AS TEXT) AS password_hash, \
      CAST(NULL AS TEXT) AS about_markdown, CAST(NULL AS BIGINT) AS avatar_version, \
      CAST(NULL AS BIGINT) AS banner_version, CAST(NULL AS BIGINT) AS created_at_unix \
    WHERE EXISTS (SELECT 1 FROM guild_ip_bans \
      WHERE guild_id = $1 AND ip_cidr = $2 \
        AND (expires_at_unix IS NULL OR expires_at_unix > $3)) \
    UNION ALL \
    SELECT 'user', u.user_id, u.username, u.password_hash, u.about_markdown, \
      u.avatar_version, u.banner_version, u.created_at_unix \
    FROM users u JOIN sessions s ON s.user_id = u.user_id \
    WHERE u.user_id = $4 AND s.session_id = $5 AND NOT s.revoked";

/// The stored form of an address: its host network, IPv4-mapped IPv6
/// folded to IPv4.
fn host_network(ip: IpAddr) -> String {
    IpNet::from(ip.to_canonical()).to_string()
}

/// `LIKE` pattern matching names that contain `needle`, any case.
fn contains_pattern(needle: &str) -> String {
    let mut pattern = String::with_capacity(needle.len() + 2);
    pattern.push('%');
    for c in needle.to_ascii_lowercase().chars() {
        if matches!(c, '%' | '_' | '\\') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('%');
    pattern
}

#[async_trait]
impl<DB> MemberStore for SqlStore<DB>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    for<'q> String: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> Option<String>: Encode<'q, DB> + Decode<'q, DB>,
    for<'q> Option<i64>: Encode<'q, DB> + Decode<'q, DB>,
    for<'q> Vec<u8>: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'i> &'i str: ColumnIndex<DB::Row>,
{
    async fn public_guilds(
        &self,
        name_contains: Option<&str>,
        limit: u32,
    ) -> StoreResult<Vec<GuildRecord>> {
        // Names are printable ASCII, so lower() means the same on both
        // backends.
        let rows = sqlx::query(
            "SELECT guild_id, name, visibility, created_by, created_at_unix FROM guilds \
             WHERE visibility = 'public' AND lower(name) LIKE $1 ESCAPE '\\' \
             ORDER BY created_at_unix DESC, guild_id DESC LIMIT $2",
        )
        .bind(contains_pattern(name_contains.unwrap_or_default()))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(decode_guild).collect::<Result<_, _>>()?)
    }

    async fn add_member_unless_banned(
        &self,
        member: MemberRecord,
        outbox: Vec<OutboxEvent>,
    ) -> StoreResult<AddMemberOutcome> {
        self.add_member_from(member, None, outbox).await
    }

    async fn join_from(
        &self,
        member: MemberRecord,
        ip: IpAddr,
        outbox: Vec<OutboxEvent>,
    ) -> StoreResult<AddMemberOutcome> {
        self.add_member_from(member, Some(ip), outbox).await
    }

    async fn remove_member(
        &self,
        guild_id: GuildId,
        user_id: UserId,
        outbox: Vec<OutboxEvent>,
    ) -> StoreResult<bool> {
        self.delete_with_outbox(
            "DELETE FROM guild_members WHERE guild_id = $1 AND user_id = $2 RETURNING user_id",
            [guild_id.to_string(), user_id.to_string()],
            outbox,
        )
        .await
    }

    async fn ban_member(&self, ban: NewGuildBan, outbox: Vec<OutboxEvent>) -> StoreResult<bool> {
        let (guild, user) = (ban.guild_id.to_string(), ban.user_id.to_string());
        let mut tx = self.pool.begin().await?;
        lock_guild(&mut *tx, &guild).await?;
        sqlx::query(
            "INSERT INTO guild_bans (guild_id, user_id, banned_by_user_id, created_at_unix) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (guild_id, user_id) DO NOTHING",
        )
        .bind(guild.clone())
        .bind(user.clone())
        .bind(ban.banned_by.to_string())
        .bind(ban.created_at_unix)
        .execute(&mut *tx)
        .await?;
        let removed = sqlx::query(
            "DELETE FROM guild_members WHERE guild_id = $1 AND user_id = $2 RETURNING user_id",
        )
        .bind(guild)
        .bind(user)
        .fetch_optional(&mut *tx)
        .await?;
        Self::enqueue_outbox_all(&mut tx, outbox).await?;
        tx.commit().await?;
        Ok(removed.is_some())
    }

    async fn is_banned(&self, guild_id: GuildId, user_id: UserId) -> StoreResult<bool> {
        let row =
            sqlx::query("SELECT user_id FROM guild_bans WHERE guild_id = $1 AND user_id = $2")
                .bind(guild_id.to_string())
                .bind(user_id.to_string())
                .fetch_optional(&self.pool)
                .await?;
        Ok(row.is_some())
    }

    async fn ip_banned(&self, guild_id: GuildId, ip: IpAddr, now_unix: i64) -> StoreResult<bool> {
        let row = sqlx::query(
            "SELECT ban_id FROM guild_ip_bans \
             WHERE guild_id = $1 AND ip_cidr = $2 \
               AND (expires_at_unix IS NULL OR expires_at_unix > $3) \
             LIMIT 1",
        )
        .bind(guild_id.to_string())
        .bind(host_network(ip))
        .bind(now_unix)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.is_some())
    }

    async fn ip_gate(
        &self,
        guild_id: GuildId,
        ip: IpAddr,
        now_unix: i64,
        session: Option<(UserId, SessionId)>,
    ) -> StoreResult<IpGate> {
        let (user_id, session_id) = session.map_or((None, None), |(user, session)| {
            (Some(user.to_string()), Some(session.to_string()))
        });
        let rows = sqlx::query(IP_GATE_SQL)
            .bind(guild_id.to_string())
            .bind(host_network(ip))
            .bind(now_unix)
            .bind(user_id)
            .bind(session_id)
            .fetch_all(&self.pool)
            .await?;
        let mut gate = IpGate {
            banned: false,
            user: None,
        };
        for row in &rows {
            let fact: String = row.try_get("fact")?;
            if fact == "ban" {
                gate.banned = true;
            } else {
                gate.user = Some(decode_user(row)?);
            }
        }
        Ok(gate)
    }

    async fn ip_bans(
        &self,
        guild_id: GuildId,
        cursor: Option<IpBanCursor>,
        now_unix: i64,
        limit: u32,
    ) -> StoreResult<Vec<IpBanRecord>> {
        let (cursor_at, cursor_id) = cursor.map_or((i64::MAX, String::new()), |c| {
            (c.created_at_unix, c.ban_id.to_string())
        });
        let rows = sqlx::query(
            "SELECT ban_id, source_user_id, reason, created_at_unix, expires_at_unix \
             FROM guild_ip_bans \
             WHERE guild_id = $1 AND (expires_at_unix IS NULL OR expires_at_unix > $2) \
               AND (created_at_unix < $3 OR (created_at_unix = $3 AND ban_id < $4)) \
             ORDER BY created_at_unix DESC, ban_id DESC LIMIT $5",
        )
        .bind(guild_id.to_string())
        .bind(now_unix)
        .bind(cursor_at)
        .bind(cursor_id)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(decode_ip_ban).collect::<Result<_, _>>()?)
    }

    async fn ban_user_ips(
        &self,
        request: NewIpBansByUser,
        outbox: OutboxFor<'_, [Ulid]>,
    ) -> StoreResult<IpBanOutcome> {
        let guild = request.guild_id.to_string();
        let mut tx = self.pool.begin().await?;
        lock_guild(&mut *tx, &guild).await?;
        sqlx::query(
            "DELETE FROM guild_ip_bans \
             WHERE guild_id = $1 AND expires_at_unix IS NOT NULL AND expires_at_unix <= $2",
        )
        .bind(guild.clone())
        .bind(request.created_at_unix)
        .execute(&mut *tx)
        .await?;
        // Every remaining ban is active, so "not banned yet" is a plain
        // NOT EXISTS.
        let unbanned = sqlx::query(
            "SELECT o.ip_cidr FROM guild_join_addresses o \
             WHERE o.guild_id = $1 AND o.user_id = $2 AND NOT EXISTS \
               (SELECT 1 FROM guild_ip_bans b WHERE b.guild_id = $1 AND b.ip_cidr = o.ip_cidr) \
             ORDER BY o.last_seen_at_unix DESC, o.ip_cidr",
        )
        .bind(guild.clone())
        .bind(request.target_user_id.to_string())
        .fetch_all(&mut *tx)
        .await?;
        let networks: Vec<String> = unbanned
            .iter()
            .map(|row| row.try_get("ip_cidr"))
            .collect::<Result<_, _>>()?;
        if networks.is_empty() {
            tx.commit().await?;
            return Ok(IpBanOutcome::Created(Vec::new()));
        }
        let existing =
            sqlx::query("SELECT COUNT(*) AS bans FROM guild_ip_bans WHERE guild_id = $1")
                .bind(guild.clone())
                .fetch_one(&mut *tx)
                .await?;
        let existing: i64 = existing.try_get("bans")?;
        let total = existing.unsigned_abs() + networks.len() as u64;
        if total > u64::from(request.max_entries) {
            return Ok(IpBanOutcome::QuotaExceeded);
        }
        // Ids from one generator, so a batch lists in creation order.
        let mut ids = ulid::Generator::new();
        let mut created = Vec::with_capacity(networks.len());
        for network in networks {
            let ban_id = ids.generate().unwrap_or_else(|_| Ulid::generate());
            sqlx::query(
                "INSERT INTO guild_ip_bans (ban_id, guild_id, ip_cidr, source_user_id, reason, \
                 created_by_user_id, created_at_unix, expires_at_unix) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            )
            .bind(ban_id.to_string())
            .bind(guild.clone())
            .bind(network)
            .bind(Some(request.target_user_id.to_string()))
            .bind(request.reason.clone())
            .bind(request.created_by.to_string())
            .bind(request.created_at_unix)
            .bind(request.expires_at_unix)
            .execute(&mut *tx)
            .await?;
            created.push(ban_id);
        }
        Self::enqueue_outbox_all(&mut tx, outbox(created.as_slice())).await?;
        tx.commit().await?;
        Ok(IpBanOutcome::Created(created))
    }

    async fn remove_ip_ban(
        &self,
        guild_id: GuildId,
        ban_id: Ulid,
        outbox: Vec<OutboxEvent>,
    ) -> StoreResult<Option<RemovedIpBan>> {
        self.delete_one_with_outbox(
            "DELETE FROM guild_ip_bans WHERE guild_id = $1 AND ban_id = $2 \
             RETURNING source_user_id",
            [guild_id.to_string(), ban_id.to_string()],
            |row| {
                Ok(RemovedIpBan {
                    source_user_id: decode_optional_id(row, "source_user_id")?,
                })
            },
            |_| outbox,
        )
        .await
    }
}

impl<DB> SqlStore<DB>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    for<'q> String: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> Vec<u8>: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
{
    /// Adds the membership unless banned and, for a join with an address,
    /// records the address once the user is a member (see
    /// [`MemberStore::join_from`]); stores `outbox` if it added one.
    async fn add_member_from(
        &self,
        member: MemberRecord,
        ip: Option<IpAddr>,
        outbox: Vec<OutboxEvent>,
    ) -> StoreResult<AddMemberOutcome> {
        let (guild, user) = (member.guild_id.to_string(), member.user_id.to_string());
        let mut tx = self.pool.begin().await?;
        lock_guild(&mut *tx, &guild).await?;
        let banned =
            sqlx::query("SELECT user_id FROM guild_bans WHERE guild_id = $1 AND user_id = $2")
                .bind(guild.clone())
                .bind(user.clone())
                .fetch_optional(&mut *tx)
                .await?;
        if banned.is_some() {
            return Ok(AddMemberOutcome::Banned);
        }
        let inserted = sqlx::query(
            "INSERT INTO guild_members (guild_id, user_id, role, joined_at_unix) \
             VALUES ($1, $2, $3, $4) \
             ON CONFLICT (guild_id, user_id) DO NOTHING \
             RETURNING user_id",
        )
        .bind(guild.clone())
        .bind(user.clone())
        .bind(member.role.as_str().to_owned())
        .bind(member.joined_at_unix)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(ip) = ip {
            record_join_address(&mut tx, guild, user, ip, member.joined_at_unix).await?;
        }
        if inserted.is_some() {
            Self::enqueue_outbox_all(&mut tx, outbox).await?;
        }
        tx.commit().await?;
        Ok(if inserted.is_some() {
            AddMemberOutcome::Added
        } else {
            AddMemberOutcome::AlreadyMember
        })
    }
}

/// Remembers, within the caller's transaction, that the user came to the
/// guild from `ip`, and forgets all but the newest
/// [`MAX_JOIN_ADDRESSES_PER_MEMBER`] of their addresses there.
async fn record_join_address<DB>(
    tx: &mut sqlx::Transaction<'_, DB>,
    guild: String,
    user: String,
    ip: IpAddr,
    seen_at_unix: i64,
) -> Result<(), sqlx::Error>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    for<'q> String: Encode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
{
    sqlx::query(
        "INSERT INTO guild_join_addresses \
         (guild_id, user_id, ip_cidr, first_seen_at_unix, last_seen_at_unix) \
         VALUES ($1, $2, $3, $4, $4) \
         ON CONFLICT (guild_id, user_id, ip_cidr) \
         DO UPDATE SET last_seen_at_unix = excluded.last_seen_at_unix",
    )
    .bind(guild.clone())
    .bind(user.clone())
    .bind(host_network(ip))
    .bind(seen_at_unix)
    .execute(&mut **tx)
    .await?;
    // Bounded: a ban by user needs recent addresses, and keeping every
    // address anyone ever used would only be a liability.
    sqlx::query(
        "DELETE FROM guild_join_addresses \
         WHERE guild_id = $1 AND user_id = $2 AND ip_cidr NOT IN \
         (SELECT ip_cidr FROM guild_join_addresses WHERE guild_id = $1 AND user_id = $2 \
          ORDER BY last_seen_at_unix DESC, ip_cidr DESC LIMIT $3)",
    )
    .bind(guild)
    .bind(user)
    .bind(i64::from(MAX_JOIN_ADDRESSES_PER_MEMBER))
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Locks the guild's row for the rest of the transaction (see the module
/// header). A missing guild locks nothing; the reads that follow then find
/// nothing either.
pub(super) async fn lock_guild<'c, DB>(
    connection: &'c mut DB::Connection,
    guild_id: &str,
) -> Result<(), sqlx::Error>
where
    DB: Database,
    &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    for<'q> String: Encode<'q, DB> + Type<DB>,
{
    sqlx::query("UPDATE guilds SET name = name WHERE guild_id = $1")
        .bind(guild_id.to_owned())
        .execute(connection)
        .await?;
    Ok(())
}

fn decode_ip_ban<R>(row: &R) -> Result<IpBanRecord, sqlx::Error>
where
    R: Row,
    for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> Option<String>: Decode<'r, R::Database>,
    for<'r> Option<i64>: Decode<'r, R::Database>,
    for<'i> &'i str: ColumnIndex<R>,
{
    Ok(IpBanRecord {
        ban_id: decode_id(row, "ban_id")?,
        source_user_id: decode_optional_id(row, "source_user_id")?,
        reason: row.try_get("reason")?,
        created_at_unix: row.try_get("created_at_unix")?,
        expires_at_unix: row.try_get("expires_at_unix")?,
    })
}

fn decode_optional_id<R, T>(row: &R, column: &str) -> Result<Option<T>, sqlx::Error>
where
    R: Row,
    T: From<Ulid>,
    for<'r> Option<String>: Decode<'r, R::Database>,
    for<'r> String: Type<R::Database>,
    for<'i> &'i str: ColumnIndex<R>,
{
    let text: Option<String> = row.try_get(column)?;
    text.map(|text| parse_stored_id(&text, column)).transpose()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::store::Visibility;
    use crate::store::tests::{conformance, new_id, new_user, no_events};
    use crate::store::{MemberRole, Store};

    const NOW: i64 = 1_700_000_000;

    conformance!(
        public_guilds_filter_by_name_newest_first,
        bans_drop_membership_and_block_adds,
        kicks_remove_only_members,
        join_addresses_are_kept_per_member_and_bounded,
        join_addresses_are_per_guild_and_only_from_accepted_joins,
        ip_bans_by_user_match_list_expire_and_cap,
        removed_ip_bans_report_their_source,
        the_ip_gate_answers_the_ban_and_the_session_in_one_read,
    );

    async fn guild(
        store: &dyn Store,
        owner: UserId,
        name: &str,
        visibility: Visibility,
        at: i64,
    ) -> GuildId {
        let guild_id = new_id();
        store
            .create_guild(
                GuildRecord {
                    guild_id,
                    name: name.to_owned(),
                    visibility,
                    created_by: owner,
                    created_at_unix: at,
                },
                crate::store::BuiltinMasks::FOR_TESTS,
            )
            .await
            .expect("create guild");
        guild_id
    }

    fn member(guild_id: GuildId, user_id: UserId) -> MemberRecord {
        member_at(guild_id, user_id, NOW)
    }

    fn member_at(guild_id: GuildId, user_id: UserId, joined_at_unix: i64) -> MemberRecord {
        MemberRecord {
            guild_id,
            user_id,
            role: MemberRole::Member,
            joined_at_unix,
        }
    }

    /// A directory join of `user` to `g` from `address` at `at`.
    async fn join(
        store: &dyn Store,
        g: GuildId,
        user: UserId,
        address: &str,
        at: i64,
    ) -> AddMemberOutcome {
        store
            .join_from(member_at(g, user, at), ip(address), Vec::new())
            .await
            .expect("join")
    }

    /// Bans by user in `g` at `at`; the new bans' count.
    async fn ban_by_user(
        store: &dyn Store,
        g: GuildId,
        target: UserId,
        by: UserId,
        at: i64,
    ) -> usize {
        let outcome = store
            .ban_user_ips(
                NewIpBansByUser {
                    guild_id: g,
                    target_user_id: target,
                    reason: None,
                    created_by: by,
                    created_at_unix: at,
                    expires_at_unix: None,
                    max_entries: 4096,
                },
                &no_events,
            )
            .await
            .expect("ban");
        let IpBanOutcome::Created(ids) = outcome else {
            panic!("under the cap: {outcome:?}");
        };
        ids.len()
    }

    fn ip(raw: &str) -> IpAddr {
        raw.parse().expect("address")
    }

    async fn public_guilds_filter_by_name_newest_first(store: Arc<dyn Store>) {
        let owner = new_user(store.as_ref()).await;
        let old = guild(&*store, owner, "Rust Club", Visibility::Public, NOW).await;
        let new = guild(&*store, owner, "rusty_nails", Visibility::Public, NOW + 1).await;
        guild(&*store, owner, "Secret Rust", Visibility::Private, NOW + 2).await;
        guild(&*store, owner, "Gardening", Visibility::Public, NOW + 3).await;

        let found = store.public_guilds(Some("RUST"), 10).await.expect("list");
        let ids: Vec<_> = found.iter().map(|g| g.guild_id).collect();
        assert_eq!(ids, [new, old]);
        assert_eq!(store.public_guilds(None, 10).await.expect("list").len(), 3);
        assert_eq!(store.public_guilds(None, 1).await.expect("list").len(), 1);
        // LIKE wildcards in the query are literal characters.
        let literal = store.public_guilds(Some("y_n"), 10).await.expect("list");
        assert_eq!(
            literal.iter().map(|g| g.guild_id).collect::<Vec<_>>(),
            [new]
        );
        assert!(
            store
                .public_guilds(Some("%"), 10)
                .await
                .expect("list")
                .is_empty()
        );
        assert!(
            store
                .public_guilds(Some("s_n"), 10)
                .await
                .expect("list")
                .is_empty()
        );
    }

    async fn bans_drop_membership_and_block_adds(store: Arc<dyn Store>) {
        let owner = new_user(store.as_ref()).await;
        let target = new_user(store.as_ref()).await;
        let g = guild(&*store, owner, "g", Visibility::Public, NOW).await;
        assert_eq!(
            store
                .add_member_unless_banned(member(g, target), Vec::new())
                .await
                .expect("add"),
            AddMemberOutcome::Added
        );
        assert_eq!(
            store
                .add_member_unless_banned(member(g, target), Vec::new())
                .await
                .expect("add"),
            AddMemberOutcome::AlreadyMember
        );
        let ban = NewGuildBan {
            guild_id: g,
            user_id: target,
            banned_by: owner,
            created_at_unix: NOW,
        };
        assert!(
            store
                .ban_member(ban.clone(), Vec::new())
                .await
                .expect("ban")
        );
        assert!(store.is_banned(g, target).await.expect("banned?"));
        assert_eq!(store.member(g, target).await.expect("member"), None);
        assert!(
            store
                .guilds_for_user(target, 10)
                .await
                .expect("guilds")
                .is_empty()
        );
        assert_eq!(
            store
                .add_member_unless_banned(member(g, target), Vec::new())
                .await
                .expect("add"),
            AddMemberOutcome::Banned
        );
        assert_eq!(store.member(g, target).await.expect("member"), None);
        // Banning again, or banning a non-member, is fine and changes nothing.
        assert!(!store.ban_member(ban, Vec::new()).await.expect("ban again"));
        let outsider = new_user(store.as_ref()).await;
        assert!(
            !store
                .ban_member(
                    NewGuildBan {
                        guild_id: g,
                        user_id: outsider,
                        banned_by: owner,
                        created_at_unix: NOW,
                    },
                    Vec::new()
                )
                .await
                .expect("ban outsider")
        );
        assert!(store.is_banned(g, outsider).await.expect("banned?"));
        // Bans are per guild.
        let other = guild(&*store, owner, "h", Visibility::Public, NOW).await;
        assert!(!store.is_banned(other, target).await.expect("banned?"));
        assert_eq!(
            store
                .add_member_unless_banned(member(other, target), Vec::new())
                .await
                .expect("add"),
            AddMemberOutcome::Added
        );
    }

    async fn kicks_remove_only_members(store: Arc<dyn Store>) {
        let owner = new_user(store.as_ref()).await;
        let target = new_user(store.as_ref()).await;
        let g = guild(&*store, owner, "g", Visibility::Public, NOW).await;
        assert!(
            !store
                .remove_member(g, target, Vec::new())
                .await
                .expect("kick")
        );
        store
            .add_member_unless_banned(member(g, target), Vec::new())
            .await
            .expect("add");
        assert!(
            store
                .remove_member(g, target, Vec::new())
                .await
                .expect("kick")
        );
        assert_eq!(store.member(g, target).await.expect("member"), None);
        // A kick is not a ban.
        assert!(!store.is_banned(g, target).await.expect("banned?"));
        assert_eq!(
            store
                .add_member_unless_banned(member(g, target), Vec::new())
                .await
                .expect("add"),
            AddMemberOutcome::Added
        );
    }

    async fn join_addresses_are_kept_per_member_and_bounded(store: Arc<dyn Store>) {
        let owner = new_user(store.as_ref()).await;
        let target = new_user(store.as_ref()).await;
        let g = guild(&*store, owner, "g", Visibility::Public, NOW).await;
        let total = MAX_JOIN_ADDRESSES_PER_MEMBER + 3;
        for n in 0..total {
            let address = IpAddr::from([198, 51, 100, u8::try_from(n).expect("small")]);
            store
                .join_from(
                    member_at(g, target, NOW + i64::from(n)),
                    address,
                    Vec::new(),
                )
                .await
                .expect("join");
        }
        // Seen again: refreshed, not duplicated.
        assert_eq!(
            join(&*store, g, target, "198.51.100.0", NOW + 100).await,
            AddMemberOutcome::AlreadyMember
        );
        assert_eq!(
            ban_by_user(&*store, g, target, owner, NOW + 200).await,
            MAX_JOIN_ADDRESSES_PER_MEMBER as usize
        );
        // The refreshed address was kept; the oldest others were forgotten.
        assert!(
            store
                .ip_banned(g, ip("198.51.100.0"), NOW + 201)
                .await
                .expect("check")
        );
        assert!(
            !store
                .ip_banned(g, ip("198.51.100.1"), NOW + 201)
                .await
                .expect("check")
        );
        assert!(
            store
                .ip_banned(g, ip("198.51.100.34"), NOW + 201)
                .await
                .expect("check")
        );
    }

    /// A ban by user in one guild takes only the addresses seen joining
    /// that guild, and a refused join (a banned user) leaves no address.
    async fn join_addresses_are_per_guild_and_only_from_accepted_joins(store: Arc<dyn Store>) {
        let owner = new_user(store.as_ref()).await;
        let target = new_user(store.as_ref()).await;
        let g = guild(&*store, owner, "g", Visibility::Public, NOW).await;
        let h = guild(&*store, owner, "h", Visibility::Public, NOW).await;
        assert_eq!(
            join(&*store, h, target, "203.0.113.1", NOW).await,
            AddMemberOutcome::Added
        );
        assert_eq!(
            ban_by_user(&*store, g, target, owner, NOW + 1).await,
            0,
            "nothing was seen in g"
        );
        assert!(
            !store
                .ip_banned(g, ip("203.0.113.1"), NOW + 2)
                .await
                .expect("check")
        );

        let ban = NewGuildBan {
            guild_id: g,
            user_id: target,
            banned_by: owner,
            created_at_unix: NOW,
        };
        store.ban_member(ban, Vec::new()).await.expect("ban");
        assert_eq!(
            join(&*store, g, target, "203.0.113.2", NOW + 3).await,
            AddMemberOutcome::Banned
        );
        assert_eq!(
            ban_by_user(&*store, g, target, owner, NOW + 4).await,
            0,
            "a refused join records nothing"
        );

        // A member's repeated join is still a join from that address.
        assert_eq!(
            join(&*store, h, target, "203.0.113.3", NOW + 5).await,
            AddMemberOutcome::AlreadyMember
        );
        assert_eq!(ban_by_user(&*store, h, target, owner, NOW + 6).await, 2);
        for (address, banned) in [
            ("203.0.113.1", true),
            ("203.0.113.2", false),
            ("203.0.113.3", true),
        ] {
            assert_eq!(
                store
                    .ip_banned(h, ip(address), NOW + 7)
                    .await
                    .expect("check"),
                banned,
                "{address}"
            );
        }
        // A plain add (not a directory join) records nothing either.
        let other = new_user(store.as_ref()).await;
        store
            .add_member_unless_banned(member(g, other), Vec::new())
            .await
            .expect("add");
        assert_eq!(ban_by_user(&*store, g, other, owner, NOW + 8).await, 0);
    }

    async fn ip_bans_by_user_match_list_expire_and_cap(store: Arc<dyn Store>) {
        let owner = new_user(store.as_ref()).await;
        let target = new_user(store.as_ref()).await;
        let g = guild(&*store, owner, "g", Visibility::Public, NOW).await;
        let other_guild = guild(&*store, owner, "h", Visibility::Public, NOW).await;
        let request = |at: i64, expires: Option<i64>, max_entries: u32| NewIpBansByUser {
            guild_id: g,
            target_user_id: target,
            reason: Some("spam".to_owned()),
            created_by: owner,
            created_at_unix: at,
            expires_at_unix: expires,
            max_entries,
        };
        // Nothing observed yet: nothing to ban.
        assert_eq!(
            store
                .ban_user_ips(request(NOW, None, 10), &no_events)
                .await
                .expect("ban"),
            IpBanOutcome::Created(Vec::new())
        );
        join(&*store, g, target, "203.0.113.7", NOW).await;
        // A dual-stack listener reports the same client as a mapped address.
        join(&*store, g, target, "::ffff:203.0.113.7", NOW + 1).await;
        join(&*store, g, target, "2001:db8::5", NOW + 2).await;

        // Two addresses, one ban slot: refused, nothing written.
        assert_eq!(
            store
                .ban_user_ips(request(NOW + 10, None, 1), &no_events)
                .await
                .expect("ban"),
            IpBanOutcome::QuotaExceeded
        );
        assert!(
            !store
                .ip_banned(g, ip("203.0.113.7"), NOW + 10)
                .await
                .expect("check")
        );

        let IpBanOutcome::Created(first) = store
            .ban_user_ips(request(NOW + 10, Some(NOW + 100), 2), &no_events)
            .await
            .expect("ban")
        else {
            panic!("exactly at the cap is allowed");
        };
        assert_eq!(first.len(), 2);
        for address in ["203.0.113.7", "::ffff:203.0.113.7", "2001:db8::5"] {
            assert!(
                store
                    .ip_banned(g, ip(address), NOW + 11)
                    .await
                    .expect("check"),
                "{address}"
            );
        }
        assert!(
            !store
                .ip_banned(g, ip("203.0.113.8"), NOW + 11)
                .await
                .expect("check")
        );
        assert!(
            !store
                .ip_banned(other_guild, ip("203.0.113.7"), NOW + 11)
                .await
                .expect("check")
        );
        // Already banned: nothing new, and at the cap that is not an error.
        assert_eq!(
            store
                .ban_user_ips(request(NOW + 20, None, 2), &no_events)
                .await
                .expect("ban"),
            IpBanOutcome::Created(Vec::new())
        );

        let listed = store.ip_bans(g, None, NOW + 11, 10).await.expect("list");
        assert_eq!(listed.len(), 2);
        assert_eq!(listed[0].source_user_id, Some(target));
        assert_eq!(listed[0].reason.as_deref(), Some("spam"));
        assert_eq!(listed[0].expires_at_unix, Some(NOW + 100));
        // Newest first (same second: by id), and the cursor continues.
        assert!(listed[0].ban_id > listed[1].ban_id);
        let page = store.ip_bans(g, None, NOW + 11, 1).await.expect("list");
        assert_eq!(page, listed[..1]);
        let rest = store
            .ip_bans(g, Some(page[0].cursor()), NOW + 11, 10)
            .await
            .expect("list");
        assert_eq!(rest, listed[1..]);

        // Expired bans neither match nor list, and free their slots.
        assert!(
            !store
                .ip_banned(g, ip("203.0.113.7"), NOW + 100)
                .await
                .expect("check")
        );
        assert!(
            store
                .ip_bans(g, None, NOW + 100, 10)
                .await
                .expect("list")
                .is_empty()
        );
        let IpBanOutcome::Created(again) = store
            .ban_user_ips(request(NOW + 100, None, 2), &no_events)
            .await
            .expect("ban")
        else {
            panic!("expired bans do not count");
        };
        assert_eq!(again.len(), 2);
        assert!(
            store
                .ip_banned(g, ip("203.0.113.7"), NOW + 1_000_000)
                .await
                .expect("check")
        );
    }

    async fn the_ip_gate_answers_the_ban_and_the_session_in_one_read(store: Arc<dyn Store>) {
        let owner = new_user(store.as_ref()).await;
        let target = new_user(store.as_ref()).await;
        let g = guild(&*store, owner, "g", Visibility::Public, NOW).await;
        let session: SessionId = new_id();
        store
            .create_session(crate::store::NewSession {
                session_id: session,
                user_id: target,
                refresh_token_hash: "hash".to_owned(),
                expires_at_unix: NOW + 1000,
            })
            .await
            .expect("session");
        join(&*store, g, target, "203.0.113.7", NOW).await;
        let banned = store
            .ban_user_ips(
                NewIpBansByUser {
                    guild_id: g,
                    target_user_id: target,
                    reason: None,
                    created_by: owner,
                    created_at_unix: NOW,
                    expires_at_unix: Some(NOW + 100),
                    max_entries: 10,
                },
                &no_events,
            )
            .await
            .expect("ban");
        assert!(matches!(banned, IpBanOutcome::Created(bans) if bans.len() == 1));
        let live = store
            .user_in_session(target, session)
            .await
            .expect("read")
            .expect("live");
        let gate = |address: &'static str, at: i64, asked: Option<(UserId, SessionId)>| {
            let store = Arc::clone(&store);
            async move {
                store
                    .ip_gate(g, ip(address), at, asked)
                    .await
                    .expect("gate")
            }
        };

        let both = gate("203.0.113.7", NOW + 1, Some((target, session))).await;
        assert_eq!(
            both,
            IpGate {
                banned: true,
                user: Some(live.clone())
            }
        );
        let elsewhere = gate("203.0.113.8", NOW + 1, Some((target, session))).await;
        assert_eq!((elsewhere.banned, elsewhere.user), (false, Some(live)));
        // No session asked about, someone else's, or an unknown one: no user.
        for asked in [None, Some((owner, session)), Some((target, new_id()))] {
            let read = gate("203.0.113.7", NOW + 1, asked).await;
            assert_eq!((read.banned, read.user), (true, None), "{asked:?}");
        }
        // The ban expires; the session ends.
        assert!(!gate("203.0.113.7", NOW + 100, None).await.banned);
        let revoked = store
            .revoke_session(session, "hash", &no_events)
            .await
            .expect("revoke");
        assert_eq!(revoked, Some(target));
        let read = gate("203.0.113.7", NOW + 1, Some((target, session))).await;
        assert_eq!((read.banned, read.user), (true, None));
    }

    async fn removed_ip_bans_report_their_source(store: Arc<dyn Store>) {
        let owner = new_user(store.as_ref()).await;
        let target = new_user(store.as_ref()).await;
        let g = guild(&*store, owner, "g", Visibility::Public, NOW).await;
        join(&*store, g, target, "203.0.113.7", NOW).await;
        let IpBanOutcome::Created(ids) = store
            .ban_user_ips(
                NewIpBansByUser {
                    guild_id: g,
                    target_user_id: target,
                    reason: None,
                    created_by: owner,
                    created_at_unix: NOW,
                    expires_at_unix: None,
                    max_entries: 10,
                },
                &no_events,
            )
            .await
            .expect("ban")
        else {
            panic!("under the cap");
        };
        let other_guild = guild(&*store, owner, "h", Visibility::Public, NOW).await;
        assert_eq!(
            store
                .remove_ip_ban(other_guild, ids[0], Vec::new())
                .await
                .expect("remove"),
            None
        );
        assert_eq!(
            store
                .remove_ip_ban(g, ids[0], Vec::new())
                .await
                .expect("remove"),
            Some(RemovedIpBan {
                source_user_id: Some(target)
            })
        );
        assert_eq!(
            store
                .remove_ip_ban(g, ids[0], Vec::new())
                .await
                .expect("remove"),
            None
        );
        assert!(
            !store
                .ip_banned(g, ip("203.0.113.7"), NOW)
                .await
                .expect("check")
        );
    }
}
