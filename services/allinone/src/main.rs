//! `filament`: the whole system in one process on embedded defaults.
//! Prints where to connect, runs until ctrl-c or SIGTERM, then drains.

use std::path::PathBuf;

use anyhow::Context as _;
use filament_allinone::{RegistryChoice, Stack, StackConfig};
use filament_registry::RegistryConfig;
use filament_runtime::process::Process;
use filament_runtime::telemetry::LogFormat;

/// jemalloc, not glibc's malloc: it hands large freed blocks (a 19 MiB
/// Argon2 hash) back to the OS at once, where glibc keeps them in
/// per-thread arenas and RSS stays at the peak of the last login storm.
/// Every Filament binary uses it; see docs/adr/0005-jemalloc.md.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    filament_runtime::process::run(serve).await
}

async fn serve(process: Process) -> anyhow::Result<()> {
    let Process {
        env,
        shutdown: signalled,
        log_format,
    } = process;
    let data_dir: PathBuf = env.or("FILAMENT_DATA_DIR", PathBuf::from("data"))?;
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("creating FILAMENT_DATA_DIR {}", data_dir.display()))?;
    let database_url = env.or(
        "DATABASE_URL",
        format!("sqlite://{}", data_dir.join("filament.db").display()),
    )?;
    let token_secret = match env.raw("FILAMENT_TOKEN_SECRET") {
        Some(secret) if secret.len() >= 32 => secret.as_bytes().to_vec(),
        Some(_) => anyhow::bail!("FILAMENT_TOKEN_SECRET must be at least 32 bytes"),
        None => {
            tracing::warn!(
                "FILAMENT_TOKEN_SECRET unset: using a random key; sessions end at restart"
            );
            ulid::Ulid::generate()
                .to_string()
                .into_bytes()
                .into_iter()
                .chain(ulid::Ulid::generate().to_string().into_bytes())
                .collect()
        }
    };
    let mut config = StackConfig::new(database_url, token_secret);
    // Unset: a random secret per start is enough, since every service this
    // process calls is one it started.
    config.internal_token =
        filament_runtime::service_auth::ServiceToken::from_env_or_generate(&env)?;
    // The api's and the gateway's tuning variables mean here what they
    // mean for `filament-api` and `filament-gateway` (README.md).
    config.env = env.clone();
    config.registry_ttl = RegistryConfig::ttl_from_env(&env)?;
    config.attachment_root =
        Some(env.or("FILAMENT_ATTACHMENT_ROOT", data_dir.join("attachments"))?);
    config.public_addr = env.or("FILAMENT_PUBLIC_ADDR", ([127, 0, 0, 1], 8080).into())?;
    if let Some(url) = env.raw("REDIS_URL") {
        config.registry = RegistryChoice::Redis {
            url: url.to_owned(),
            key_prefix: RegistryConfig::key_prefix_from_env(&env)?,
        };
    }
    if let (Some(key), Some(secret)) = (
        env.raw("FILAMENT_LIVEKIT_API_KEY"),
        env.raw("FILAMENT_LIVEKIT_API_SECRET"),
    ) {
        config.livekit = Some(filament_voice::livekit_from(
            key.to_owned(),
            secret.to_owned(),
            env.or("FILAMENT_LIVEKIT_URL", "ws://127.0.0.1:7880".to_owned())?,
        )?);
    }

    let stack = Stack::start(config).await?;
    announce(&stack, log_format);

    let shutdown = stack.shutdown_token();
    tokio::spawn(async move {
        signalled.cancelled().await;
        shutdown.cancel();
    });
    stack.wait().await
}

/// Says where to connect: a banner on a terminal; one structured log line
/// when the logs are JSON, so every line a log pipeline reads parses.
fn announce(stack: &Stack, log_format: LogFormat) {
    let metrics: Vec<String> = stack
        .api_admin_addr
        .iter()
        .chain(stack.gateway_admin_addrs.iter().flatten())
        .chain(stack.presence_admin_addr.iter())
        .chain(stack.voice_admin_addr.iter())
        .chain(stack.search_admin_addr.iter())
        .map(|addr| format!("http://{addr}/metrics"))
        .collect();
    if log_format == LogFormat::Json {
        let gateways: Vec<String> = stack
            .gateway_addrs
            .iter()
            .map(|addr| format!("ws://{addr}/gateway/ws"))
            .collect();
        tracing::info!(
            web_clients = %format!("http://{}", stack.public_addr),
            api_rest = %format!("http://{}", stack.api_http_addr),
            api_grpc = %format!("http://{}", stack.api_grpc_addr),
            gateways = %gateways.join(","),
            presence = %format!("http://{}", stack.presence_grpc_addr),
            voice = %format!("http://{}", stack.voice_grpc_addr),
            search = %format!("http://{}", stack.search_grpc_addr),
            metrics = %metrics.join(","),
            "filament is running"
        );
        return;
    }
    println!();
    println!("Filament is running.");
    println!(
        "  web clients: http://{}  (REST under /api, websocket at /gateway/ws)",
        stack.public_addr
    );
    println!("  api REST:    http://{}", stack.api_http_addr);
    println!("  api gRPC:    http://{}", stack.api_grpc_addr);
    for addr in &stack.gateway_addrs {
        println!("  gateway:     ws://{addr}/gateway/ws");
    }
    println!("  presence:    http://{}", stack.presence_grpc_addr);
    println!("  voice:       http://{}", stack.voice_grpc_addr);
    println!("  search:      http://{}", stack.search_grpc_addr);
    for url in &metrics {
        println!("  metrics:     {url}");
    }
    println!("Press ctrl-c to stop.");
}
