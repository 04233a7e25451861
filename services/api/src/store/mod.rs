//! Durable state of the api: users, sessions, guilds, members, channels and
//! messages. [`Store`] is the one seam between the HTTP handlers and SQL; it
//! has a SQLite and a Postgres implementation that share their queries
//! (`sql.rs`) but each have their own connection setup and migrations, and
//! one conformance suite (`tests`) that runs against both.
//!
//! Every method is one transaction. A write takes its realtime events and
//! stores them in that transaction (the event outbox, `outbox.rs`, ADR
//! 0006); callers publish them only after the method returned `Ok`, so an
//! event never describes a write that did not commit, and a committed
//! write never loses its event.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use filament_ids::{ChannelId, GuildId, MessageId, SessionId, UserId};

mod access;
mod audit;
mod channels;
mod guilds;
mod idempotency;
mod members;
mod message_log;
mod messages;
mod outbox;
mod postgres;
mod roles;
mod social;
mod sql;
mod sqlite;
#[cfg(test)]
pub(crate) mod tests;

pub use access::AccessFacts;
pub use audit::{AuditCursor, AuditEntry, AuditPage, AuditStore, NewAuditEntry};
pub use idempotency::{IdempotencyRecord, IdempotencyStore, StoredResponse};
pub use members::{
    AddMemberOutcome, IpBanCursor, IpBanOutcome, IpBanRecord, IpGate, MemberStore, NewGuildBan,
    NewIpBansByUser,
};
pub use message_log::{ChangeKind, LoggedChange, MessageLogStore};
pub use messages::{
    AttachmentInsert, AttachmentRecord, MAX_REACTION_EMOJI, MAX_REACTOR_IDS, MessageInsert,
    MessageStore, ReactionChange, ReactionKey, ReactionSummary,
};
pub use outbox::{OutboxEvent, OutboxFor, OutboxRecord, OutboxStore, ReactionOutbox};
pub use roles::{
    AssignOutcome, BuiltinMasks, BuiltinRole, CreateRoleOutcome, OverrideRecord, OverrideTarget,
    RoleChanges, RoleRecord, RoleStore, UnassignOutcome, WORKSPACE_OWNER_POSITION,
};
pub use social::{
    AcceptedFriendRequest, FriendRecord, FriendRequestParties, FriendRequestRecord, ImageKind,
    NewFriendRequest, ProfileAudience, ProfileChange, ProfileImage, SocialStore, UserSummary,
};

pub use postgres::PostgresStore;
pub use sqlite::SqliteStore;

/// How long a request may wait on the database before it is refused
/// (503 + `retry-after`, see `error.rs`) rather than left to run into the
/// REST timeout: a database that is down, saturated or locked must cost a
/// caller seconds at most, with an answer that says "try again".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DatabaseLimits {
    /// The longest wait for a pooled connection
    /// (`FILAMENT_DATABASE_ACQUIRE_TIMEOUT_MS`).
    pub acquire_timeout: Duration,
    /// Postgres' `statement_timeout` on every pooled connection
    /// (`FILAMENT_DATABASE_STATEMENT_TIMEOUT_MS`): a statement waiting on a
    /// lock is cancelled after it, which rolls its transaction back.
    /// Migrations run without it. Both apply to Postgres only: SQLite is
    /// a file in the process, with its own busy timeout.
    pub statement_timeout: Duration,
}

impl Default for DatabaseLimits {
    /// 3 s to get a connection plus 5 s for a statement stay inside the
    /// 10 s REST request timeout, so a caller gets the 503, not the 408.
    fn default() -> Self {
        Self {
            acquire_timeout: Duration::from_secs(3),
            statement_timeout: Duration::from_secs(5),
        }
    }
}

impl DatabaseLimits {
    /// Reads `FILAMENT_DATABASE_ACQUIRE_TIMEOUT_MS` and
    /// `FILAMENT_DATABASE_STATEMENT_TIMEOUT_MS`; see README.md.
    pub fn from_env(env: &filament_runtime::Env) -> Result<Self, filament_runtime::ConfigError> {
        let defaults = Self::default();
        let millis = |name: &'static str, default: Duration| {
            let value: u64 =
                env.or(name, u64::try_from(default.as_millis()).unwrap_or(u64::MAX))?;
            if value == 0 {
                return Err(filament_runtime::ConfigError::Invalid {
                    name,
                    value: "0".to_owned(),
                    reason: "must be at least 1".to_owned(),
                });
            }
            Ok(Duration::from_millis(value))
        };
        Ok(Self {
            acquire_timeout: millis(
                "FILAMENT_DATABASE_ACQUIRE_TIMEOUT_MS",
                defaults.acquire_timeout,
            )?,
            statement_timeout: millis(
                "FILAMENT_DATABASE_STATEMENT_TIMEOUT_MS",
                defaults.statement_timeout,
            )?,
        })
    }
}

/// Opens the store a database URL names: `sqlite:` for SQLite,
/// `postgres://` or `postgresql://` for Postgres. Migrations are applied
/// before this returns.
pub async fn connect(database_url: &str) -> StoreResult<Arc<dyn Store>> {
    connect_with(database_url, DatabaseLimits::default()).await
}

/// Like [`connect`], with the given limits.
pub async fn connect_with(
    database_url: &str,
    limits: DatabaseLimits,
) -> StoreResult<Arc<dyn Store>> {
    if database_url.starts_with("sqlite:") {
        Ok(Arc::new(SqliteStore::connect(database_url).await?))
    } else if database_url.starts_with("postgres://") || database_url.starts_with("postgresql://") {
        Ok(Arc::new(
            PostgresStore::connect_with(database_url, limits).await?,
        ))
    } else {
        // Only the scheme is echoed: the rest of a URL may hold a password.
        let scheme = database_url
            .split_once(':')
            .map_or("", |(scheme, _)| scheme);
        Err(StoreError::UnsupportedUrl {
            scheme: scheme.to_owned(),
        })
    }
}

/// Errors a store can report. Anything not listed is `Backend`.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A uniqueness rule was violated (e.g. the username is taken).
    #[error("conflict: {0}")]
    Conflict(&'static str),
    /// The database failed or is unreachable.
    #[error("database error: {0}")]
    Backend(#[from] sqlx::Error),
    /// Migrations could not be applied.
    #[error("migration error: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The database URL names no backend this build supports.
    #[error(
        "unsupported database url scheme {scheme:?}: expected `sqlite:`, `postgres://` or `postgresql://`"
    )]
    UnsupportedUrl { scheme: String },
}

pub type StoreResult<T> = Result<T, StoreError>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRecord {
    pub user_id: UserId,
    pub username: String,
    pub password_hash: String,
    pub about_markdown: String,
    pub avatar_version: i64,
    pub banner_version: i64,
    pub created_at_unix: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewUser {
    pub user_id: UserId,
    pub username: String,
    pub password_hash: String,
    pub created_at_unix: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewSession {
    pub session_id: SessionId,
    pub user_id: UserId,
    /// SHA-256 of the refresh token's secret part, lowercase hex.
    pub refresh_token_hash: String,
    pub expires_at_unix: i64,
}

/// What happened when a refresh token was presented.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RotateOutcome {
    /// The token matched: the session now holds the new hash and expiry.
    Rotated { user_id: UserId },
    /// The session exists but the hash did not match: the token was rotated
    /// before (a replay) or forged. The session of this user is now revoked.
    Replayed { user_id: UserId },
    /// No live session: unknown, expired or already revoked.
    Invalid,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Visibility {
    Private,
    Public,
}

impl Visibility {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Private => "private",
            Self::Public => "public",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "private" => Some(Self::Private),
            "public" => Some(Self::Public),
            _ => None,
        }
    }
}

/// The built-in membership role ("legacy role", PROTOCOL.md §3.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum MemberRole {
    Member,
    Moderator,
    Owner,
}

impl MemberRole {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Member => "member",
            Self::Moderator => "moderator",
            Self::Owner => "owner",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "member" => Some(Self::Member),
            "moderator" => Some(Self::Moderator),
            "owner" => Some(Self::Owner),
            _ => None,
        }
    }
}

/// A record as it was before a write and as the write left it, so that the
/// caller can tell what changed (a guild's settings, a channel's name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change<T> {
    pub before: T,
    pub after: T,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuildRecord {
    pub guild_id: GuildId,
    pub name: String,
    pub visibility: Visibility,
    pub created_by: UserId,
    pub created_at_unix: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberRecord {
    pub guild_id: GuildId,
    pub user_id: UserId,
    pub role: MemberRole,
    pub joined_at_unix: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelKind {
    Text,
    Voice,
}

impl ChannelKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Text => "text",
            Self::Voice => "voice",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "text" => Some(Self::Text),
            "voice" => Some(Self::Voice),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelRecord {
    pub channel_id: ChannelId,
    pub guild_id: GuildId,
    pub name: String,
    pub kind: ChannelKind,
    pub created_at_unix: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageRecord {
    pub message_id: MessageId,
    pub guild_id: GuildId,
    pub channel_id: ChannelId,
    pub author_id: UserId,
    pub content: String,
    pub created_at_unix: i64,
}

/// Where a page of a channel's history starts, by message id. A cursor id
/// need not be a message of the channel: it is only a bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HistoryCursor {
    /// The newest messages, newest first.
    Latest,
    /// Messages strictly older than this id, newest first.
    Before(MessageId),
    /// Messages strictly newer than this id, oldest first: what a client
    /// that reconnects missed since the last message it has.
    After(MessageId),
}

/// Users, sessions, guilds, members, channels and messages: the core that
/// every other area builds on.
#[async_trait]
pub trait CoreStore: Send + Sync + 'static {
    // --- users -----------------------------------------------------------
    /// `Conflict("username")` when the username is taken, in any case:
    /// usernames are ASCII, unique once folded to lowercase, and stored in
    /// the case they were given.
    async fn create_user(&self, user: NewUser) -> StoreResult<()>;
    async fn user_by_id(&self, user_id: UserId) -> StoreResult<Option<UserRecord>>;
    /// The user, if `session_id` is one of theirs and was not revoked
    /// (logout, or a replayed refresh token). One read: every
    /// authenticated request makes it, so a revocation holds whatever
    /// happens to the registry's copy of it.
    async fn user_in_session(
        &self,
        user_id: UserId,
        session_id: SessionId,
    ) -> StoreResult<Option<UserRecord>>;
    /// The user whose username equals `username` in any (ASCII) case.
    async fn user_by_username(&self, username: &str) -> StoreResult<Option<UserRecord>>;

    // --- sessions --------------------------------------------------------
    async fn create_session(&self, session: NewSession) -> StoreResult<()>;
    /// Atomically checks `presented_hash` against the live session and, on a
    /// match, stores `new_hash` and `new_expires_at_unix`. A mismatch revokes
    /// the session. A session is live while not revoked and `now_unix <
    /// expires_at_unix`.
    ///
    /// A revocation (`Replayed`) stores the events `outbox` builds from the
    /// session's user, the change's realtime events, in the same
    /// transaction (docs/adr/0006-outbox.md); a rotation stores none.
    async fn rotate_session(
        &self,
        session_id: SessionId,
        presented_hash: &str,
        new_hash: &str,
        new_expires_at_unix: i64,
        now_unix: i64,
        outbox: OutboxFor<'_, UserId>,
    ) -> StoreResult<RotateOutcome>;
    /// Revokes the session if its hash matches and it is not revoked yet.
    /// Returns the session's user if it did. Expiry is not checked: the
    /// trait has no clock here, and revoking an expired session is harmless.
    ///
    /// Stores the events `outbox` builds from the session's user, the
    /// change's realtime events, in the same transaction
    /// (docs/adr/0006-outbox.md); nothing if no session was revoked.
    async fn revoke_session(
        &self,
        session_id: SessionId,
        presented_hash: &str,
        outbox: OutboxFor<'_, UserId>,
    ) -> StoreResult<Option<UserId>>;

    // --- guilds and members ---------------------------------------------
    /// Creates the guild and makes its creator a member with role `Owner`;
    /// its built-in roles are seeded with `masks`.
    async fn create_guild(&self, guild: GuildRecord, masks: BuiltinMasks) -> StoreResult<()>;
    async fn guild(&self, guild_id: GuildId) -> StoreResult<Option<GuildRecord>>;
    /// Guilds where the user is a member, newest first, at most `limit`.
    async fn guilds_for_user(&self, user_id: UserId, limit: u32) -> StoreResult<Vec<GuildRecord>>;
    async fn count_guilds_created_by(&self, user_id: UserId) -> StoreResult<u64>;
    /// The membership, if the user is a member.
    async fn member(&self, guild_id: GuildId, user_id: UserId)
    -> StoreResult<Option<MemberRecord>>;
    /// Members of a guild by user id ascending, strictly after `after`, at
    /// most `limit`.
    async fn members(
        &self,
        guild_id: GuildId,
        after: Option<UserId>,
        limit: u32,
    ) -> StoreResult<Vec<MemberRecord>>;
    /// Adds the membership as given (handlers pass role `Member`). Returns
    /// false, changing nothing, if the user is already a member.
    async fn add_member(&self, member: MemberRecord) -> StoreResult<bool>;

    // --- channels --------------------------------------------------------
    /// Stores `outbox`, the change's realtime events, in the same
    /// transaction (docs/adr/0006-outbox.md).
    async fn create_channel(
        &self,
        channel: ChannelRecord,
        outbox: Vec<OutboxEvent>,
    ) -> StoreResult<()>;
    async fn channel(
        &self,
        guild_id: GuildId,
        channel_id: ChannelId,
    ) -> StoreResult<Option<ChannelRecord>>;
    /// Channels of a guild in creation order, at most `limit`.
    async fn channels(&self, guild_id: GuildId, limit: u32) -> StoreResult<Vec<ChannelRecord>>;

    // --- messages --------------------------------------------------------
    /// Stores `outbox`, the message's realtime event, in the same
    /// transaction (docs/adr/0006-outbox.md).
    async fn create_message(
        &self,
        message: MessageRecord,
        outbox: Option<OutboxEvent>,
    ) -> StoreResult<()>;
    /// At most `limit` messages of a channel from `cursor`, in the
    /// cursor's order.
    async fn messages(
        &self,
        guild_id: GuildId,
        channel_id: ChannelId,
        cursor: HistoryCursor,
        limit: u32,
    ) -> StoreResult<Vec<MessageRecord>>;
}

/// The durable state of the api: every area's trait, implemented by
/// [`SqlStore`](sql::SqlStore) for SQLite and Postgres. An area adds its
/// trait here (and its file under `store/`, with its records, its SQL and
/// its conformance cases).
pub trait Store:
    CoreStore
    + AuditStore
    + SocialStore
    + MessageStore
    + RoleStore
    + MessageLogStore
    + MemberStore
    + OutboxStore
    + IdempotencyStore
{
}

impl<T> Store for T where
    T: CoreStore
        + AuditStore
        + SocialStore
        + MessageStore
        + RoleStore
        + MessageLogStore
        + MemberStore
        + OutboxStore
        + IdempotencyStore
{
}
