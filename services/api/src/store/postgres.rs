//! The Postgres backend: how to connect, optionally inside one schema, and
//! migrate. The queries are shared with SQLite and live in `sql.rs`.
//!
//! A schema of its own lets each test (or each tenant of a shared server)
//! run the migrations and its queries in isolation within one database.

use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{AssertSqlSafe, Executor, Postgres};

use super::StoreResult;
use super::sql::SqlStore;

/// The [`Store`](super::Store) on Postgres.
pub type PostgresStore = SqlStore<Postgres>;

static MIGRATOR: Migrator = sqlx::migrate!("./migrations/postgres");

impl PostgresStore {
    /// Connects to a `postgres://` URL and applies pending migrations, in
    /// the server's default search path (normally `public`).
    pub async fn connect(url: &str) -> StoreResult<Self> {
        let options: PgConnectOptions = url.parse()?;
        let pool = PgPoolOptions::new().connect_with(options).await?;
        MIGRATOR.run(&pool).await?;
        Ok(Self::from_migrated_pool(pool))
    }

    /// Like [`PostgresStore::connect`], but every table (including the
    /// migrations' bookkeeping table) lives in `schema`, created if missing.
    pub async fn connect_in_schema(url: &str, schema: &str) -> StoreResult<Self> {
        let options: PgConnectOptions = url.parse()?;
        let schema = quote_identifier(schema);
        let set_search_path = format!("SET search_path TO {schema}");
        let pool = PgPoolOptions::new()
            // Every pooled connection, including ones opened later to replace
            // retired ones, must resolve unqualified names in the schema.
            .after_connect(move |connection, _metadata| {
                let set_search_path = set_search_path.clone();
                Box::pin(async move {
                    connection.execute(AssertSqlSafe(set_search_path)).await?;
                    Ok(())
                })
            })
            .connect_with(options)
            .await?;
        pool.execute(AssertSqlSafe(format!(
            "CREATE SCHEMA IF NOT EXISTS {schema}"
        )))
        .await?;
        MIGRATOR.run(&pool).await?;
        Ok(Self::from_migrated_pool(pool))
    }
}

/// Quotes a schema name as an SQL identifier, so that any name is taken
/// literally and cannot inject SQL.
pub(super) fn quote_identifier(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}
