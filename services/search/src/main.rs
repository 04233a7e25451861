//! `filament-search`: the search service as its own process.

use filament_runtime::Env;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    filament_runtime::telemetry::init();
    let config = filament_search::Config::from_env(&Env::from_process())?;
    let service = filament_search::bind(config).await?;
    service
        .run(filament_runtime::shutdown::token_on_signal())
        .await
}
