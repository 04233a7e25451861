//! `filament-gateway`: one websocket edge process. Needs
//! `FILAMENT_API_GRPC_URL` and `REDIS_URL`; see README.md.

use std::sync::Arc;

use filament_registry::{RedisRegistry, RegistryConfig};
use filament_runtime::Env;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    filament_runtime::telemetry::init();
    let env = Env::from_process();
    let config = filament_gateway::Config::from_env(&env)?;
    let registry = RedisRegistry::connect(
        &env.required::<String>("REDIS_URL")?,
        RegistryConfig {
            ttl: config.registry_ttl,
            key_prefix: env.or(
                "FILAMENT_REGISTRY_PREFIX",
                RegistryConfig::default().key_prefix,
            )?,
        },
    )
    .await?;
    let gateway = filament_gateway::bind(config, Arc::new(registry)).await?;
    gateway
        .run(filament_runtime::shutdown::token_on_signal())
        .await
}
