//! `filament-presence`: the presence service as its own process. Needs
//! `REDIS_URL` (the routing registry and the presence state) and
//! `FILAMENT_INTERNAL_TOKEN`; see README.md.

use std::sync::Arc;

use filament_registry::{RedisRegistry, RegistryConfig};
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
        let config = filament_presence::Config::from_env(&env)?;
        let redis_url: String = env.required("REDIS_URL")?;
        let registry = RedisRegistry::connect(&redis_url, RegistryConfig::from_env(&env)?).await?;
        let store = filament_presence::open_store(&config.store, Some(&redis_url)).await?;
        let service = filament_presence::bind(config, Arc::new(registry), store).await?;
        service.run(shutdown).await
    })
    .await
}
