//! The gateway benchmark: `cargo run --release -p filament-allinone --example bench`.
//!
//! It starts a whole stack in this process (SQLite in a temp directory, the
//! in-memory registry, loopback only) and prints one table:
//!
//! - (a) RSS per idle connection: the server process's `VmRSS` before and
//!   after `FILAMENT_BENCH_IDLE` (10 000) sockets connect. The clients live
//!   in a child process (this binary, re-run with `--idle-clients`), so
//!   their memory is not counted.
//! - (b) Fanout: deliveries per second for one channel with
//!   `FILAMENT_BENCH_SUBSCRIBERS` (2 000) subscribers and
//!   `FILAMENT_BENCH_MESSAGES` (100) messages published through REST, and
//!   the same frames from a raw tokio-tungstenite broadcast server measured
//!   in the same run with the same clients, as a ratio.
//! - (c) Latency: publish → deliver p50 and p99 through the whole path
//!   (REST → api → gRPC event stream → gateway → socket) at 50 % and 90 % of
//!   the saturation rate measured first.
//!
//! Every phase is bounded in count and in time. The process raises its own
//! open-file limit to the hard limit; if that is below about twice the
//! connection count, run `ulimit -n 65536` first.

use std::fmt::Write as _;
use std::io::{BufRead as _, BufReader, Write as _};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context as _, bail, ensure};
use filament_allinone::{Stack, StackConfig};
use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, broadcast};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

#[path = "../tests/support/raw_broadcast.rs"]
mod raw_broadcast;

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// The allocator of the `filament` binary, so RSS per idle socket is the
/// binary's (docs/adr/0005-jemalloc.md).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

const SECRET: &[u8] = b"the-benchmark-token-secret-of-32-bytes-or-more";
const PASSWORD: &str = "correct horse battery";
/// How many sockets connect at once.
const CONNECT_CONCURRENCY: usize = 64;
/// Upper bound for any single wait in the benchmark.
const PHASE_TIMEOUT: Duration = Duration::from_secs(120);

struct Settings {
    idle: usize,
    subscribers: usize,
    messages: usize,
    latency_subscribers: usize,
    latency_secs: u64,
}

impl Settings {
    fn from_env() -> anyhow::Result<Self> {
        let var = |name: &str, default: usize| -> anyhow::Result<usize> {
            std::env::var(name).map_or(Ok(default), |v| {
                v.parse().with_context(|| format!("{name}={v:?}"))
            })
        };
        Ok(Self {
            idle: var("FILAMENT_BENCH_IDLE", 10_000)?,
            subscribers: var("FILAMENT_BENCH_SUBSCRIBERS", 2_000)?,
            messages: var("FILAMENT_BENCH_MESSAGES", 100)?,
            latency_subscribers: var("FILAMENT_BENCH_LATENCY_SUBSCRIBERS", 10)?,
            latency_secs: u64::try_from(var("FILAMENT_BENCH_LATENCY_SECS", 4)?)?,
        })
    }
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    if args.get(1).map(String::as_str) == Some("--idle-clients") {
        let url = args.get(2).context("--idle-clients URL COUNT")?.clone();
        let count: usize = args.get(3).context("--idle-clients URL COUNT")?.parse()?;
        return runtime.block_on(idle_clients(url, count));
    }
    runtime.block_on(run())
}

async fn run() -> anyhow::Result<()> {
    let settings = Settings::from_env()?;
    let fd_limit = rlimit::increase_nofile_limit(u64::MAX)?;
    let dir = std::env::temp_dir().join(format!("filament-bench-{}", ulid::Ulid::generate()));
    std::fs::create_dir_all(&dir)?;
    let result = bench(&settings, &dir, fd_limit).await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn bench(settings: &Settings, dir: &std::path::Path, fd_limit: u64) -> anyhow::Result<()> {
    let mut config = StackConfig::new(
        format!("sqlite://{}", dir.join("filament.db").display()),
        SECRET.to_vec(),
    );
    config.password_hashing = filament_api::PasswordHashing {
        memory_kib: 1024,
        iterations: 1,
    };
    config.tune_api = |api| api.rate_limit_per_minute = 10_000_000;
    config.tune_gateway = |gateway| {
        // One client IP opens every socket here.
        gateway.max_connections_per_ip = 1_000_000;
        gateway.handshakes_per_ip_per_minute = 1_000_000;
    };
    config.env = filament_runtime::Env::from_pairs([
        ("FILAMENT_HTTP_MAX_CONNECTIONS_PER_ADDRESS", "1000000"),
        ("FILAMENT_HTTP_MAX_CONNECTIONS", "1000000"),
    ]);
    let stack = Stack::start(config).await?;
    let client = Arc::new(Client::new(&stack));
    let owner = Arc::new(client.user("bench").await?);
    let (guild, channel) = client.guild_with_channel(&owner).await?;

    let mut report = Report::default();
    report.line(
        "setup",
        &format!(
            "{} CPUs, open-file limit {fd_limit}, release={}",
            std::thread::available_parallelism().map_or(0, usize::from),
            !cfg!(debug_assertions)
        ),
    );

    eprintln!("(a) {} idle connections...", settings.idle);
    let rss = idle_rss(&stack, &owner, settings.idle).await?;
    report.line(
        &format!("(a) RSS per idle connection @ {}", settings.idle),
        &format!(
            "{:.1} KiB (VmRSS {:.1} → {:.1} MiB; target ≤ 12 KB)",
            rss.per_connection_kib,
            rss.before_kib as f64 / 1024.0,
            rss.after_kib as f64 / 1024.0
        ),
    );

    eprintln!(
        "(b) fanout to {} subscribers × {} messages...",
        settings.subscribers, settings.messages
    );
    let fanout = fanout(&client, &owner, (&guild, &channel), settings).await?;
    report.line(
        &format!(
            "(b) fanout, 1 channel × {} subscribers × {} messages",
            settings.subscribers, settings.messages
        ),
        &format!(
            "{:.0} deliveries/s (raw tokio-tungstenite broadcast: {:.0}/s; ratio {:.2})",
            fanout.filament,
            fanout.raw,
            fanout.filament / fanout.raw
        ),
    );

    eprintln!("(c) latency...");
    let latency = latency(&stack, &client, &owner, (&guild, &channel), settings).await?;
    report.line(
        "(c) saturation, REST message creates",
        &format!("{:.0}/s", latency.saturation),
    );
    for point in &latency.points {
        report.line(
            &format!(
                "(c) publish→deliver @ {:.0}% ({:.0}/s)",
                point.load * 100.0,
                point.rate
            ),
            &format!(
                "p50 {:.2} ms, p99 {:.2} ms ({} deliveries)",
                point.p50_ms, point.p99_ms, point.samples
            ),
        );
    }

    println!("{}", report.render());
    stack.stop().await
}

#[derive(Default)]
struct Report {
    rows: Vec<(String, String)>,
}

impl Report {
    fn line(&mut self, metric: &str, value: &str) {
        self.rows.push((metric.to_owned(), value.to_owned()));
    }

    fn render(&self) -> String {
        let width = self
            .rows
            .iter()
            .map(|(m, _)| m.chars().count())
            .max()
            .unwrap_or(6);
        let mut out = String::new();
        let _ = writeln!(out, "| {:width$} | result |", "metric");
        let _ = writeln!(out, "|{}|--------|", "-".repeat(width + 2));
        for (metric, value) in &self.rows {
            let _ = writeln!(out, "| {metric:width$} | {value} |");
        }
        out
    }
}

// ---------------------------------------------------------------------------
// REST and websocket clients.

struct Client {
    http: reqwest::Client,
    api: String,
    ws: String,
}

struct User {
    token: String,
}

impl Client {
    fn new(stack: &Stack) -> Self {
        Self {
            http: reqwest::Client::new(),
            api: format!("http://{}/api", stack.public_addr),
            ws: format!("ws://{}/gateway/ws", stack.gateway_addrs[0]),
        }
    }

    async fn post(&self, path: &str, token: Option<&str>, body: Value) -> anyhow::Result<Value> {
        let mut request = self.http.post(format!("{}{path}", self.api)).json(&body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await?;
        let status = response.status();
        let text = response.text().await?;
        ensure!(status.is_success(), "POST {path}: {status} {text}");
        Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    async fn user(&self, name: &str) -> anyhow::Result<User> {
        let username =
            format!("{name}_{}", &ulid::Ulid::generate().to_string()[20..]).to_lowercase();
        let credentials = json!({"username": username, "password": PASSWORD});
        self.post("/auth/register", None, credentials.clone())
            .await?;
        let login = self.post("/auth/login", None, credentials).await?;
        let token = login["access_token"]
            .as_str()
            .context("access token")?
            .to_owned();
        Ok(User { token })
    }

    async fn guild_with_channel(&self, owner: &User) -> anyhow::Result<(String, String)> {
        let guild = self
            .post(
                "/guilds",
                Some(&owner.token),
                json!({"name": "Bench", "visibility": "private"}),
            )
            .await?;
        let guild_id = guild["guild_id"].as_str().context("guild id")?.to_owned();
        let channel = self
            .post(
                &format!("/guilds/{guild_id}/channels"),
                Some(&owner.token),
                json!({"name": "fanout"}),
            )
            .await?;
        let channel_id = channel["channel_id"]
            .as_str()
            .context("channel id")?
            .to_owned();
        Ok((guild_id, channel_id))
    }

    async fn publish(
        &self,
        owner: &User,
        (guild, channel): (&str, &str),
        content: String,
    ) -> anyhow::Result<()> {
        self.post(
            &format!("/guilds/{guild}/channels/{channel}/messages"),
            Some(&owner.token),
            json!({ "content": content }),
        )
        .await
        .map(drop)
    }
}

fn client_config() -> WebSocketConfig {
    WebSocketConfig::default().read_buffer_size(4 * 1024)
}

async fn connect(url: &str) -> anyhow::Result<Ws> {
    let (ws, _) =
        tokio_tungstenite::connect_async_with_config(url, Some(client_config()), true).await?;
    Ok(ws)
}

/// Connects to the gateway, waits for `ready`, subscribes and waits for
/// `subscribed`.
async fn gateway_subscriber(url: &str, (guild, channel): (&str, &str)) -> anyhow::Result<Ws> {
    let mut ws = connect(url).await?;
    let subscribe =
        json!({"v": 1, "t": "subscribe", "d": {"guild_id": guild, "channel_id": channel}});
    ws.send(Message::Text(subscribe.to_string().into())).await?;
    loop {
        match tokio::time::timeout(PHASE_TIMEOUT, ws.next()).await? {
            Some(Ok(Message::Text(text))) if text.contains(r#""t":"subscribed""#) => return Ok(ws),
            Some(Ok(Message::Close(close))) => bail!("closed while subscribing: {close:?}"),
            Some(Ok(_)) => {}
            Some(Err(err)) => return Err(err.into()),
            None => bail!("socket ended while subscribing"),
        }
    }
}

/// Opens `count` sockets with at most [`CONNECT_CONCURRENCY`] at once.
async fn connect_many<F, Fut>(count: usize, connect_one: F) -> anyhow::Result<Vec<Ws>>
where
    F: Fn() -> Fut,
    Fut: Future<Output = anyhow::Result<Ws>> + Send + 'static,
{
    let permits = Arc::new(Semaphore::new(CONNECT_CONCURRENCY));
    let mut tasks = Vec::with_capacity(count);
    for _ in 0..count {
        let permit = Arc::clone(&permits).acquire_owned().await?;
        let pending = connect_one();
        tasks.push(tokio::spawn(async move {
            let ws = pending.await;
            drop(permit);
            ws
        }));
    }
    let mut sockets = Vec::with_capacity(count);
    for task in tasks {
        sockets.push(task.await??);
    }
    Ok(sockets)
}

// ---------------------------------------------------------------------------
// (a) RSS per idle connection.

struct Rss {
    before_kib: u64,
    after_kib: u64,
    per_connection_kib: f64,
}

fn vm_rss_kib() -> anyhow::Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .context("no VmRSS in /proc/self/status")?;
    Ok(line
        .split_whitespace()
        .nth(1)
        .context("VmRSS value")?
        .parse()?)
}

async fn idle_rss(stack: &Stack, owner: &User, count: usize) -> anyhow::Result<Rss> {
    let metrics = Arc::clone(&stack.gateway_metrics[0]);
    let url = format!(
        "ws://{}/gateway/ws?access_token={}",
        stack.gateway_addrs[0], owner.token
    );
    // A warm-up round, so that allocator arenas and the api's connection
    // pools exist before the baseline.
    let warm_up = count.min(50);
    IdleClients::spawn(&url, warm_up)?.stop().await?;
    wait_until(|| metrics.open_connections() == 0).await?;
    settle().await;

    let before_kib = vm_rss_kib()?;
    let clients = IdleClients::spawn(&url, count)?;
    let wanted = i64::try_from(count)?;
    wait_until(|| metrics.open_connections() >= wanted).await?;
    settle().await;
    let after_kib = vm_rss_kib()?;
    clients.stop().await?;
    wait_until(|| metrics.open_connections() == 0).await?;
    Ok(Rss {
        before_kib,
        after_kib,
        per_connection_kib: after_kib.saturating_sub(before_kib) as f64 / count as f64,
    })
}

/// Lets in-flight work (handshakes, identify calls) finish before a
/// measurement.
async fn settle() {
    tokio::time::sleep(Duration::from_secs(2)).await;
}

async fn wait_until(mut condition: impl FnMut() -> bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + PHASE_TIMEOUT;
    while !condition() {
        ensure!(Instant::now() < deadline, "timed out");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// A child process holding idle sockets; dropping it closes them.
struct IdleClients(std::process::Child);

impl IdleClients {
    fn spawn(url: &str, count: usize) -> anyhow::Result<Self> {
        let mut child = Command::new(std::env::current_exe()?)
            .args(["--idle-clients", url, &count.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        let stdout = child.stdout.take().context("child stdout")?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        ensure!(
            line.trim() == format!("connected {count}"),
            "idle clients: {line:?}"
        );
        Ok(Self(child))
    }
}

impl IdleClients {
    /// Closing stdin tells the child to close its sockets and exit.
    async fn stop(mut self) -> anyhow::Result<()> {
        drop(self.0.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.0.try_wait()?.is_none() {
            ensure!(Instant::now() < deadline, "idle clients did not exit");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }
}

impl Drop for IdleClients {
    fn drop(&mut self) {
        // After `stop` this finds the child gone; on an error path it
        // makes sure no client process outlives the benchmark.
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// The child: opens `count` sockets, says so, answers pings until stdin
/// closes.
async fn idle_clients(url: String, count: usize) -> anyhow::Result<()> {
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let sockets = connect_many(count, || {
        let url = url.clone();
        async move { connect(&url).await }
    })
    .await?;
    let mut readers = Vec::with_capacity(count);
    for mut ws in sockets {
        // Reading answers the server's pings.
        readers.push(tokio::spawn(async move {
            while let Some(Ok(_)) = ws.next().await {}
        }));
    }
    let mut stdout = std::io::stdout();
    writeln!(stdout, "connected {count}")?;
    stdout.flush()?;
    tokio::task::spawn_blocking(|| {
        let mut sink = String::new();
        while std::io::stdin().read_line(&mut sink).is_ok_and(|n| n > 0) {}
    })
    .await?;
    for reader in readers {
        reader.abort();
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// (b) Fanout.

struct Fanout {
    filament: f64,
    raw: f64,
}

/// Reads frames and counts the `message_create` ones.
fn count_deliveries(
    sockets: Vec<Ws>,
    delivered: &Arc<AtomicU64>,
) -> Vec<tokio::task::JoinHandle<()>> {
    sockets
        .into_iter()
        .map(|mut ws| {
            let delivered = Arc::clone(delivered);
            tokio::spawn(async move {
                while let Some(Ok(frame)) = ws.next().await {
                    if let Message::Text(text) = frame
                        && text.starts_with(r#"{"v":1,"t":"message_create""#)
                    {
                        delivered.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect()
}

async fn fanout(
    client: &Arc<Client>,
    owner: &Arc<User>,
    room: (&str, &str),
    settings: &Settings,
) -> anyhow::Result<Fanout> {
    let (n, m) = (settings.subscribers, settings.messages);
    let url = format!("{}?access_token={}", client.ws, owner.token);
    let (guild, channel) = (room.0.to_owned(), room.1.to_owned());
    let sockets = connect_many(n, || {
        let (url, guild, channel) = (url.clone(), guild.clone(), channel.clone());
        async move { gateway_subscriber(&url, (&guild, &channel)).await }
    })
    .await?;
    let content = "f".repeat(200);
    let delivered = Arc::new(AtomicU64::new(0));
    let readers = count_deliveries(sockets, &delivered);
    // One more subscriber keeps a frame for the raw server: the same bytes
    // on the wire.
    let mut sampler = gateway_subscriber(&url, room).await?;

    let target = u64::try_from(n * m)?;
    let start = Instant::now();
    let publishers = Arc::new(Semaphore::new(16));
    let mut publishes = Vec::with_capacity(m);
    for _ in 0..m {
        let permit = Arc::clone(&publishers).acquire_owned().await?;
        let (client, owner, content) = (Arc::clone(client), Arc::clone(owner), content.clone());
        let (guild, channel) = (room.0.to_owned(), room.1.to_owned());
        publishes.push(tokio::spawn(async move {
            let result = client.publish(&owner, (&guild, &channel), content).await;
            drop(permit);
            result
        }));
    }
    for publish in publishes {
        publish.await??;
    }
    wait_until(|| delivered.load(Ordering::Relaxed) >= target).await?;
    let filament = target as f64 / start.elapsed().as_secs_f64();
    let frame = loop {
        match sampler.next().await {
            Some(Ok(Message::Text(text))) if text.starts_with(r#"{"v":1,"t":"message_create""#) => {
                break text;
            }
            Some(Ok(_)) => {}
            _ => bail!("the sampling socket ended"),
        }
    };
    for reader in readers {
        reader.abort();
    }
    let raw = raw_fanout(n, m, frame).await?;
    Ok(Fanout { filament, raw })
}

/// The baseline: a plain tokio-tungstenite server that broadcasts each
/// frame to every socket, with the same clients.
async fn raw_fanout(n: usize, m: usize, frame: Utf8Bytes) -> anyhow::Result<f64> {
    let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
    let url = format!("ws://{}/", listener.local_addr()?);
    let (tx, _) = broadcast::channel::<Utf8Bytes>(m.max(16));
    let accepted = Arc::new(AtomicUsize::new(0));
    let server = tokio::spawn(raw_broadcast::serve(
        listener,
        tx.clone(),
        Arc::clone(&accepted),
    ));
    let sockets = connect_many(n, || {
        let url = url.clone();
        async move { connect(&url).await }
    })
    .await?;
    wait_until(|| accepted.load(Ordering::Relaxed) >= n).await?;
    let delivered = Arc::new(AtomicU64::new(0));
    let readers = count_deliveries(sockets, &delivered);
    let target = u64::try_from(n * m)?;
    let start = Instant::now();
    for _ in 0..m {
        tx.send(frame.clone())?;
    }
    wait_until(|| delivered.load(Ordering::Relaxed) >= target).await?;
    let rate = target as f64 / start.elapsed().as_secs_f64();
    server.abort();
    for reader in readers {
        reader.abort();
    }
    Ok(rate)
}

// ---------------------------------------------------------------------------
// (c) Latency.

struct LatencyPoint {
    load: f64,
    rate: f64,
    p50_ms: f64,
    p99_ms: f64,
    samples: usize,
}

struct Latency {
    saturation: f64,
    points: Vec<LatencyPoint>,
}

async fn latency(
    stack: &Stack,
    client: &Arc<Client>,
    owner: &Arc<User>,
    room: (&str, &str),
    settings: &Settings,
) -> anyhow::Result<Latency> {
    let saturation = saturation(client, owner, room).await?;
    let mut points = Vec::new();
    for load in [0.5, 0.9] {
        points.push(
            latency_at(
                stack,
                client,
                owner,
                room,
                settings,
                load,
                saturation * load,
            )
            .await?,
        );
    }
    Ok(Latency { saturation, points })
}

/// Closed loop: 32 publishers back to back for 3 s; completions per second.
async fn saturation(
    client: &Arc<Client>,
    owner: &Arc<User>,
    room: (&str, &str),
) -> anyhow::Result<f64> {
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let stop = start + Duration::from_secs(3);
    let mut workers = Vec::new();
    for _ in 0..32 {
        let (client, owner, done) = (Arc::clone(client), Arc::clone(owner), Arc::clone(&done));
        let (guild, channel) = (room.0.to_owned(), room.1.to_owned());
        workers.push(tokio::spawn(async move {
            while Instant::now() < stop {
                client
                    .publish(&owner, (&guild, &channel), "s".to_owned())
                    .await?;
                done.fetch_add(1, Ordering::Relaxed);
            }
            anyhow::Ok(())
        }));
    }
    for worker in workers {
        worker.await??;
    }
    Ok(done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64())
}

/// Open loop at `rate`: each publish starts at its scheduled time whatever
/// the previous ones do, and latency counts from the schedule, so a stall
/// is not hidden (no coordinated omission).
async fn latency_at(
    stack: &Stack,
    client: &Arc<Client>,
    owner: &Arc<User>,
    room: (&str, &str),
    settings: &Settings,
    load: f64,
    rate: f64,
) -> anyhow::Result<LatencyPoint> {
    let url = format!(
        "ws://{}/gateway/ws?access_token={}",
        stack.gateway_addrs[0], owner.token
    );
    let subscribers = settings.latency_subscribers;
    let mut sockets = Vec::new();
    for _ in 0..subscribers {
        sockets.push(gateway_subscriber(&url, room).await?);
    }
    let epoch = Instant::now();
    let samples = Arc::new(std::sync::Mutex::new(Vec::<Duration>::new()));
    let mut readers = Vec::new();
    for mut ws in sockets {
        let samples = Arc::clone(&samples);
        readers.push(tokio::spawn(async move {
            while let Some(Ok(frame)) = ws.next().await {
                let Message::Text(text) = frame else { continue };
                let Ok(event) = serde_json::from_str::<Value>(&text) else {
                    continue;
                };
                let Some(content) = event["d"]["content"].as_str() else {
                    continue;
                };
                let Some(nanos) = content
                    .strip_prefix("lat ")
                    .and_then(|n| n.parse::<u64>().ok())
                else {
                    continue;
                };
                let latency = Instant::now() - (epoch + Duration::from_nanos(nanos));
                samples
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .push(latency);
            }
        }));
    }

    let count = ((rate * settings.latency_secs as f64) as usize).max(1);
    let interval = Duration::from_secs_f64(1.0 / rate);
    let start = Instant::now() + Duration::from_millis(50);
    let mut publishes = Vec::with_capacity(count);
    for i in 0..count {
        let at = start + interval.mul_f64(i as f64);
        tokio::time::sleep_until(at).await;
        let nanos = u64::try_from((at - epoch).as_nanos())?;
        let (client, owner) = (Arc::clone(client), Arc::clone(owner));
        let (guild, channel) = (room.0.to_owned(), room.1.to_owned());
        publishes.push(tokio::spawn(async move {
            client
                .publish(&owner, (&guild, &channel), format!("lat {nanos}"))
                .await
        }));
    }
    for publish in publishes {
        publish.await??;
    }
    let expected = count * subscribers;
    wait_until(|| samples.lock().map_or(0, |s| s.len()) >= expected).await?;
    for reader in readers {
        reader.abort();
    }
    let mut samples = std::mem::take(
        &mut *samples
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    );
    samples.sort_unstable();
    let percentile = |p: f64| {
        let index = ((p * samples.len() as f64).ceil() as usize).clamp(1, samples.len()) - 1;
        samples[index].as_secs_f64() * 1000.0
    };
    Ok(LatencyPoint {
        load,
        rate,
        p50_ms: percentile(0.50),
        p99_ms: percentile(0.99),
        samples: samples.len(),
    })
}
