//! The Postgres backend: how to connect, optionally inside one schema, and
//! migrate. The queries are shared with SQLite and live in `sql.rs`.
//!
//! A schema of its own lets each test (or each tenant of a shared server)
//! run the migrations and its queries in isolation within one database.

use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{AssertSqlSafe, Executor, Postgres};

use super::sql::SqlStore;
use super::{DatabaseLimits, StoreResult};

/// The [`Store`](super::Store) on Postgres.
pub type PostgresStore = SqlStore<Postgres>;

static MIGRATOR: Migrator = sqlx::migrate!("./migrations/postgres");

impl PostgresStore {
    /// Connects to a `postgres://` URL and applies pending migrations, in
    /// the server's default search path (normally `public`).
    pub async fn connect(url: &str) -> StoreResult<Self> {
        Self::connect_with(url, DatabaseLimits::default()).await
    }

    /// Like [`PostgresStore::connect`], with the given limits.
    pub async fn connect_with(url: &str, limits: DatabaseLimits) -> StoreResult<Self> {
        let pool = pool_options(limits)
            .connect_with(connect_options(url, limits)?)
            .await?;
        migrate(&pool).await?;
        Ok(Self::from_migrated_pool(pool))
    }

    /// Like [`PostgresStore::connect`], but every table (including the
    /// migrations' bookkeeping table) lives in `schema`, created if missing.
    pub async fn connect_in_schema(url: &str, schema: &str) -> StoreResult<Self> {
        Self::connect_in_schema_with(url, schema, DatabaseLimits::default()).await
    }

    /// Like [`PostgresStore::connect_in_schema`], with the given limits.
    pub async fn connect_in_schema_with(
        url: &str,
        schema: &str,
        limits: DatabaseLimits,
    ) -> StoreResult<Self> {
        let schema = quote_identifier(schema);
        let set_search_path = format!("SET search_path TO {schema}");
        let pool = pool_options(limits)
            // Every pooled connection, including ones opened later to replace
            // retired ones, must resolve unqualified names in the schema.
            .after_connect(move |connection, _metadata| {
                let set_search_path = set_search_path.clone();
                Box::pin(async move {
                    connection.execute(AssertSqlSafe(set_search_path)).await?;
                    Ok(())
                })
            })
            .connect_with(connect_options(url, limits)?)
            .await?;
        pool.execute(AssertSqlSafe(format!(
            "CREATE SCHEMA IF NOT EXISTS {schema}"
        )))
        .await?;
        migrate(&pool).await?;
        Ok(Self::from_migrated_pool(pool))
    }
}

/// A caller waits at most `acquire_timeout` for a connection: past it the
/// pool answers `PoolTimedOut`, which the api turns into a 503.
fn pool_options(limits: DatabaseLimits) -> PgPoolOptions {
    PgPoolOptions::new().acquire_timeout(limits.acquire_timeout)
}

/// The URL's options plus `statement_timeout`, sent as a startup parameter
/// so that every connection the pool ever opens has it, with no extra
/// round trip. A statement blocked on a lock (or just slow) is cancelled
/// with `57014 query_canceled`, which aborts its transaction: nothing of it
/// commits.
fn connect_options(url: &str, limits: DatabaseLimits) -> StoreResult<PgConnectOptions> {
    let options: PgConnectOptions = url.parse()?;
    Ok(options.options([(
        "statement_timeout",
        limits.statement_timeout.as_millis().to_string(),
    )]))
}

/// Applies pending migrations on a connection of their own without the
/// statement timeout (a migration may rightly take longer than a request),
/// which is closed afterwards instead of going back to the pool.
async fn migrate(pool: &PgPool) -> StoreResult<()> {
    let mut connection = pool.acquire().await?.detach();
    connection.execute("SET statement_timeout = 0").await?;
    MIGRATOR.run(&mut connection).await?;
    sqlx::Connection::close(connection).await?;
    Ok(())
}

/// Quotes a schema name as an SQL identifier, so that any name is taken
/// literally and cannot inject SQL.
pub(super) fn quote_identifier(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}
