//! The SQLite backend: how to open a database file (or a private in-memory
//! one for tests) and migrate it. The queries are shared with Postgres and
//! live in `sql.rs`.

use std::str::FromStr;
use std::time::Duration;

use sqlx::Sqlite;
use sqlx::migrate::Migrator;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};

use super::StoreResult;
use super::sql::SqlStore;

/// The [`Store`](super::Store) on SQLite.
pub type SqliteStore = SqlStore<Sqlite>;

static MIGRATOR: Migrator = sqlx::migrate!("./migrations/sqlite");

/// How long a connection waits for another connection's write lock before
/// giving up with "database is locked".
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

impl SqliteStore {
    /// Opens (creating if missing) the database at a `sqlite:` URL and
    /// applies pending migrations.
    ///
    /// A file database runs in WAL mode so that readers do not block the
    /// writer. An in-memory URL (`sqlite::memory:`) gets the single pinned
    /// connection of [`SqliteStore::in_memory`].
    pub async fn connect(url: &str) -> StoreResult<Self> {
        let options = SqliteConnectOptions::from_str(url)?;
        if url.contains(":memory:") || url.contains("mode=memory") {
            return Self::with_single_connection(options).await;
        }
        let options = options
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // NORMAL is durable across application crashes in WAL mode;
            // only a power loss can drop the last commits.
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(BUSY_TIMEOUT);
        let pool = SqlitePoolOptions::new().connect_with(options).await?;
        MIGRATOR.run(&pool).await?;
        Ok(Self::from_migrated_pool(pool))
    }

    /// A fresh, empty, migrated in-memory database, private to this store.
    pub async fn in_memory() -> StoreResult<Self> {
        // sqlx names each `sqlite::memory:` database uniquely, so two stores
        // never share one.
        Self::with_single_connection(SqliteConnectOptions::from_str("sqlite::memory:")?).await
    }

    /// An in-memory database lives exactly as long as a connection to it:
    /// the pool holds one connection and never retires it, so every query
    /// sees the same database and it is not dropped while idle. One
    /// connection also avoids shared-cache table locks, which fail at once
    /// instead of waiting for the busy timeout.
    async fn with_single_connection(options: SqliteConnectOptions) -> StoreResult<Self> {
        let options = options.foreign_keys(true).busy_timeout(BUSY_TIMEOUT);
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(options)
            .await?;
        MIGRATOR.run(&pool).await?;
        Ok(Self::from_migrated_pool(pool))
    }
}
