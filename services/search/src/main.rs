//! `filament-search`: the search service as its own process.

use filament_runtime::Env;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    filament_runtime::telemetry::init();
    let signalled = filament_runtime::shutdown::token_on_signal();
    let config = filament_search::Config::from_env(&Env::from_process())?;
    if config.index == filament_search::IndexLocation::Ram {
        tracing::warn!(
            "FILAMENT_SEARCH_INDEX_DIR unset: the index is in memory and is rebuilt from the log at every start"
        );
    }
    let service = filament_search::bind(config).await?;
    service.run(signalled).await
}
