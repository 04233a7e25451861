//! `filament-api`: the api as its own process. Needs `DATABASE_URL`,
//! `REDIS_URL`, `FILAMENT_TOKEN_SECRET` and `FILAMENT_INTERNAL_TOKEN`; see
//! README.md.

use std::sync::Arc;

use filament_registry::RedisRegistry;
use filament_runtime::ConfigError;
use filament_runtime::process::Process;

/// jemalloc, not glibc's malloc: it hands large freed blocks (a 19 MiB
/// Argon2 hash) back to the OS at once, where glibc keeps them in
/// per-thread arenas and RSS stays at the peak of the last login storm.
/// Every Filament binary uses it; see docs/adr/0005-jemalloc.md.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    filament_runtime::process::run(|Process { env, shutdown, .. }| async move {
        let config = filament_api::Config::from_env(&env)?;
        let redis_url = config
            .redis_url
            .as_ref()
            .ok_or(ConfigError::Missing { name: "REDIS_URL" })?;
        let registry = RedisRegistry::connect(redis_url.expose(), config.registry.clone()).await?;
        let store =
            filament_api::store::connect_with(config.database_url.expose(), config.database)
                .await?;
        let api = filament_api::bind(config, store, Arc::new(registry)).await?;
        api.run(shutdown).await
    })
    .await
}
