//! The login-storm benchmark:
//! `cargo run --release -p filament-allinone --example login_storm`.
//!
//! It starts a whole stack in this process (SQLite in a temp directory, the
//! in-memory registry, loopback only) with the production Argon2 cost
//! (19 MiB, 2 iterations), then sends `FILAMENT_STORM_REQUESTS` (64)
//! registrations, `FILAMENT_STORM_CONCURRENCY` (16) at a time, and then as
//! many logins of those users. For each storm it prints this process's
//! `VmRSS` before, at the peak (sampled every few milliseconds) and
//! `FILAMENT_STORM_SETTLE_SECS` (3) after, the hashes per second, and how
//! many requests were refused 503.
//!
//! The hashing bound is the api's default (one hash per core, 64 queued,
//! 5 s wait) unless `FILAMENT_ARGON2_MAX_CONCURRENT`,
//! `FILAMENT_ARGON2_MAX_QUEUED` or `FILAMENT_ARGON2_QUEUE_WAIT_MS` are set;
//! set the first two very high to see the process without a bound. The
//! rate limiters are raised out of the way: this measures hashing, not
//! 429s. It is a benchmark: it prints figures and asserts nothing.
//!
//! It also prints whether each storm held the memory bound the README
//! states: at the peak, at most [`PER_RUNNING_HASH_MIB`] per hash allowed
//! to run at once plus [`SLACK_MIB`] above the start (one Argon2id hash
//! takes 19 MiB); `FILAMENT_STORM_SETTLE_SECS` after the storm, within
//! [`SLACK_MIB`] of the start.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use filament_allinone::{Stack, StackConfig};
use futures_util::StreamExt as _;
use serde_json::json;

/// The allocator of the `filament` binary, so the figures are the
/// binary's.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

const SECRET: &[u8] = b"the-benchmark-token-secret-of-32-bytes-or-more";
const PASSWORD: &str = "correct horse battery";
/// The stated bound: RSS a running hash may add at the peak (its 19 MiB
/// block, and the allocator's rounding).
const PER_RUNNING_HASH_MIB: u64 = 24;
/// The stated bound: what a storm may add beyond the hashes at the peak,
/// and what it may leave behind once settled.
const SLACK_MIB: u64 = 16;
/// How often the peak sampler reads `/proc/self/status`.
const SAMPLE_EVERY: Duration = Duration::from_millis(5);

/// The api's hashing bound for this run; a `fn` pointer tunes the api's
/// config, so it reads this rather than capturing.
static LIMITS: OnceLock<filament_api::HashingLimits> = OnceLock::new();

struct Settings {
    requests: usize,
    concurrency: usize,
    settle: Duration,
}

fn var<T: std::str::FromStr>(name: &str, default: T) -> anyhow::Result<T>
where
    T::Err: std::error::Error + Send + Sync + 'static,
{
    std::env::var(name).map_or(Ok(default), |v| {
        v.parse().with_context(|| format!("{name}={v:?}"))
    })
}

fn limits_from_env() -> anyhow::Result<filament_api::HashingLimits> {
    let defaults = filament_api::HashingLimits::default();
    Ok(filament_api::HashingLimits {
        max_concurrent: var("FILAMENT_ARGON2_MAX_CONCURRENT", defaults.max_concurrent)?,
        max_queued: var("FILAMENT_ARGON2_MAX_QUEUED", defaults.max_queued)?,
        queue_wait: Duration::from_millis(var(
            "FILAMENT_ARGON2_QUEUE_WAIT_MS",
            u64::try_from(defaults.queue_wait.as_millis())?,
        )?),
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = Settings {
        requests: var("FILAMENT_STORM_REQUESTS", 64)?,
        concurrency: var("FILAMENT_STORM_CONCURRENCY", 16)?,
        settle: Duration::from_secs(var("FILAMENT_STORM_SETTLE_SECS", 3)?),
    };
    let limits = limits_from_env()?;
    let _ = LIMITS.set(limits);
    let dir = std::env::temp_dir().join(format!("filament-storm-{}", ulid::Ulid::generate()));
    std::fs::create_dir_all(&dir)?;
    let result = storms(&settings, limits, &dir).await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn storms(
    settings: &Settings,
    limits: filament_api::HashingLimits,
    dir: &std::path::Path,
) -> anyhow::Result<()> {
    let mut config = StackConfig::new(
        format!("sqlite://{}", dir.join("filament.db").display()),
        SECRET.to_vec(),
    );
    config.tune_api = |api| {
        api.rate_limit_per_minute = 10_000_000;
        api.auth_route_per_minute = 10_000_000;
        if let Some(limits) = LIMITS.get() {
            api.hashing_limits = *limits;
        }
    };
    let cost = config.password_hashing;
    let stack = Stack::start(config).await?;
    let client = reqwest::Client::new();
    let base = format!("http://{}/api", stack.public_addr);

    println!(
        "setup: {} CPUs, release={}, argon2 {} KiB x {} iterations, bound {} running / {} queued / {} ms wait, {} requests {} at a time",
        std::thread::available_parallelism().map_or(0, usize::from),
        !cfg!(debug_assertions),
        cost.memory_kib,
        cost.iterations,
        limits.max_concurrent,
        limits.max_queued,
        limits.queue_wait.as_millis(),
        settings.requests,
        settings.concurrency,
    );
    let suffix = ulid::Ulid::generate().to_string()[20..].to_lowercase();
    let usernames: Vec<String> = (0..settings.requests)
        .map(|i| format!("storm{i}_{suffix}"))
        .collect();
    let register = format!("{base}/auth/register");
    storm(settings, &limits, &client, &register, &usernames).await?;
    let login = format!("{base}/auth/login");
    storm(settings, &limits, &client, &login, &usernames).await?;
    stack.stop().await
}

/// One storm against `url`, one request per username, with its figures.
async fn storm(
    settings: &Settings,
    limits: &filament_api::HashingLimits,
    client: &reqwest::Client,
    url: &str,
    usernames: &[String],
) -> anyhow::Result<()> {
    let before = memory()?;
    let peak = std::sync::Arc::new(AtomicU64::new(before.rss_kib));
    let sampler = tokio::spawn({
        let peak = std::sync::Arc::clone(&peak);
        async move {
            let mut every = tokio::time::interval(SAMPLE_EVERY);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                every.tick().await;
                if let Ok(now) = memory() {
                    peak.fetch_max(now.rss_kib, Ordering::Relaxed);
                }
            }
        }
    });
    let started = Instant::now();
    let statuses: Vec<u16> = futures_util::stream::iter(usernames)
        .map(|username| async move {
            client
                .post(url)
                .json(&json!({"username": username, "password": PASSWORD}))
                .send()
                .await
                .map_or(0, |response| response.status().as_u16())
        })
        .buffer_unordered(settings.concurrency.max(1))
        .collect()
        .await;
    let elapsed = started.elapsed();
    sampler.abort();
    let at_end = memory()?;
    tokio::time::sleep(settings.settle).await;
    let after = memory()?;

    let ok = statuses.iter().filter(|s| **s == 200).count();
    let unavailable = statuses.iter().filter(|s| **s == 503).count();
    let other = statuses.len() - ok - unavailable;
    let mib = |kib: u64| kib as f64 / 1024.0;
    println!(
        "{url}\n  {ok} ok, {unavailable} × 503, {other} other in {:.2} s: {:.1} hashes/s\n  VmRSS before {:.1} MiB, peak {:.1} MiB (VmHWM {:.1} MiB), at end {:.1} MiB, {} s after {:.1} MiB",
        elapsed.as_secs_f64(),
        ok as f64 / elapsed.as_secs_f64(),
        mib(before.rss_kib),
        mib(peak.load(Ordering::Relaxed).max(at_end.rss_kib)),
        mib(at_end.hwm_kib),
        mib(at_end.rss_kib),
        settings.settle.as_secs(),
        mib(after.rss_kib),
    );
    let running = u64::try_from(limits.max_concurrent.get()).unwrap_or(u64::MAX);
    let peak_bound = before.rss_kib + (running * PER_RUNNING_HASH_MIB + SLACK_MIB) * 1024;
    let after_bound = before.rss_kib + SLACK_MIB * 1024;
    let peak = peak.load(Ordering::Relaxed).max(at_end.rss_kib);
    let verdict = |held: bool| if held { "held" } else { "EXCEEDED" };
    println!(
        "  bound: peak <= {:.1} MiB ({}), settled <= {:.1} MiB ({})",
        mib(peak_bound),
        verdict(peak <= peak_bound),
        mib(after_bound),
        verdict(after.rss_kib <= after_bound),
    );
    Ok(())
}

struct Memory {
    rss_kib: u64,
    hwm_kib: u64,
}

/// This process's resident and peak-resident set, from `/proc/self/status`.
fn memory() -> anyhow::Result<Memory> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let field = |name: &str| -> anyhow::Result<u64> {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .with_context(|| format!("no {name} in /proc/self/status"))?
            .parse()
            .with_context(|| format!("{name} value"))
    };
    Ok(Memory {
        rss_kib: field("VmRSS:")?,
        hwm_kib: field("VmHWM:")?,
    })
}
