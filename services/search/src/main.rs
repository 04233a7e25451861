//! `filament-search`: the search service as its own process. Needs
//! `FILAMENT_API_GRPC_URL` and `FILAMENT_INTERNAL_TOKEN`; see README.md.

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
        let config = filament_search::Config::from_env(&env)?;
        if config.index == filament_search::IndexLocation::Ram {
            tracing::warn!(
                "FILAMENT_SEARCH_INDEX_DIR unset: the index is in memory and is rebuilt from the log at every start"
            );
        }
        let service = filament_search::bind(config).await?;
        service.run(shutdown).await
    })
    .await
}
