//! `filament-api`: the api as its own process. Needs `DATABASE_URL`,
//! `REDIS_URL` and `FILAMENT_TOKEN_SECRET`; see README.md.

use std::sync::Arc;

use filament_registry::{RedisRegistry, RegistryConfig};
use filament_runtime::Env;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    filament_runtime::telemetry::init();
    let env = Env::from_process();
    let config = filament_api::Config::from_env(&env)?;
    let registry = RedisRegistry::connect(
        &env.required::<String>("REDIS_URL")?,
        RegistryConfig {
            ttl: env.secs_or("FILAMENT_REGISTRY_TTL_SECS", RegistryConfig::default().ttl)?,
            key_prefix: env.or(
                "FILAMENT_REGISTRY_PREFIX",
                RegistryConfig::default().key_prefix,
            )?,
        },
    )
    .await?;
    let store = filament_api::store::connect(&config.database_url).await?;
    let api = filament_api::bind(config, store, Arc::new(registry)).await?;
    api.run(filament_runtime::shutdown::token_on_signal()).await
}
