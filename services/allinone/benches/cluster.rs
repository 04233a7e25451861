//! The multi-process cluster of `tests/cluster.rs` (every service as
//! separate OS processes, in-process TCP proxies for Services, peers files
//! for headless Services, the machine's Postgres and Redis), measured on
//! this machine in one run with 1 and 2 api replicas × 1, 2 and 3 gateways
//! (one presence, voice and search each):
//!
//! - **saturation**: `FILAMENT_BENCH_POSTERS` (32) concurrent posters post
//!   as fast as the api answers, through the api's Service, for
//!   `FILAMENT_BENCH_SECS` (10) s, while `FILAMENT_BENCH_SOCKETS` (300)
//!   websocket clients, spread round-robin over the gateways and each
//!   subscribed to one of `FILAMENT_BENCH_CHANNELS` (10) channels, count
//!   the `message_create` frames they receive: deliveries per second (from
//!   the first post to the last delivery, and at least the posting time),
//!   acknowledged posts per second, and loss (deliveries expected from the
//!   acknowledged posts − received once the last expected frame arrived or
//!   the drain deadline passed);
//! - **steady**: 20 posts/s for as long, and publish→deliver p50 / p99 per
//!   delivery, measured client-side (frame received − POST sent, one
//!   clock), and loss.
//!
//! - **baseline**: the same sockets connect instead to a raw
//!   tokio-tungstenite broadcast server (`tests/support/raw_broadcast.rs`,
//!   a child process: this binary re-run with `FILAMENT_BENCH_RAW_SERVER`)
//!   that is sent the frames of the steady phase at the same rate, then
//!   `FILAMENT_BENCH_BURST` (100) frames at once. Its CPU per delivery and
//!   its RSS per socket are what a websocket fanout costs on this machine
//!   with nothing else to do: the floor for the gateway's.
//!
//! It prints one table row per configuration, with each configuration's
//! saturation deliveries/s as a ratio to the 1-api-1-gateway row of the
//! same run, then each phase's CPU cost: the CPU time of every service
//! process, of the machine's Postgres and of its Redis over the phase
//! (from `/proc/<pid>/stat`), per 1,000 deliveries, in all and by process
//! kind, and each gateway's RSS per subscribed socket (its `VmRSS` growth
//! while the second half of the sockets connected, over those sockets).
//! Last comes the goal table of issue 16, from the first configuration's
//! row and the baseline. A benchmark prints figures; it asserts nothing
//! about time.
//!
//! `cargo bench -p filament-allinone --bench cluster` builds the release
//! binaries (`cargo build --release --workspace --bins`) and runs them.
//! Under `cargo test` (the dev profile, no `--bench` argument) or with
//! `FILAMENT_BENCH_QUICK=1` it runs a quick check instead: 20 sockets,
//! 2 s phases, two configurations, on the debug binaries when built so.
//! Without `TEST_DATABASE_URL` and `TEST_REDIS_URL` it says it was skipped.
//! `FILAMENT_BENCH_CONFIGS` (e.g. `1x1,2x3`) picks the api × gateway
//! configurations; `FILAMENT_BENCH_BINARIES=<dir>` runs the service
//! binaries in that directory instead of building them, to measure another
//! build (an earlier commit's, say) on the same machine.

#[path = "../tests/support/cluster.rs"]
mod cluster;
#[path = "../tests/support/raw_broadcast.rs"]
mod raw_broadcast;
#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::HashMap;
use std::path::Path;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use cluster::{Channel, Cluster, Layout, User, Ws, channel, public_guild, register};
use futures_util::StreamExt as _;
use serde_json::json;
use support::Profile;
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::task::{JoinHandle, JoinSet};
use tokio_tungstenite::tungstenite::Message;

/// Posts per second in the steady phase.
const STEADY_RATE: u64 = 20;
/// Sockets opened at once while connecting.
const CONNECTING_AT_ONCE: usize = 16;
/// What marks a benchmark message's content, followed by its sequence
/// number and another `#`: clients find it without parsing the frame.
const MARK: &str = "BENCH#";
/// Set in the environment of the child process that serves the baseline.
const RAW_SERVER_ROLE: &str = "FILAMENT_BENCH_RAW_SERVER";

fn main() {
    if std::env::var_os(RAW_SERVER_ROLE).is_some() {
        raw_server();
        return;
    }
    bench();
}

fn bench() {
    let bench_run = std::env::args().any(|arg| arg == "--bench");
    let quick = cfg!(debug_assertions)
        || !bench_run
        || std::env::var("FILAMENT_BENCH_QUICK").is_ok_and(|v| v == "1");
    let (Ok(pg), Ok(redis)) = (
        std::env::var("TEST_DATABASE_URL"),
        std::env::var("TEST_REDIS_URL"),
    ) else {
        eprintln!(
            "SKIPPED: TEST_DATABASE_URL or TEST_REDIS_URL is unset; \
             the cluster benchmark was NOT run"
        );
        return;
    };
    let settings = Settings::new(quick);
    // Hundreds of sockets, each with a proxy or a listener at the other end.
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let profile = if cfg!(debug_assertions) {
        Profile::Test
    } else {
        Profile::Release
    };
    let binaries = match std::env::var_os("FILAMENT_BENCH_BINARIES") {
        Some(dir) => {
            eprintln!("cluster bench: the binaries in {}", dir.to_string_lossy());
            dir.into()
        }
        None => {
            eprintln!("cluster bench: building the workspace binaries ({profile:?})");
            support::workspace_binaries_in(profile)
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let mut rows = Vec::new();
    for &(api, gateways) in &settings.configs {
        eprintln!("cluster bench: {api} api, {gateways} gateway(s)");
        let row = runtime.block_on(measure(&binaries, &pg, &redis, &settings, api, gateways));
        eprintln!(
            "cluster bench: {:.0} deliveries/s at saturation, steady p99 {:.1} ms",
            row.saturation.deliveries_per_second(),
            row.steady.percentile_ms(0.99).unwrap_or(f64::NAN),
        );
        rows.push(row);
    }
    let baseline = rows
        .first()
        .and_then(|row| row.sample_frame.clone())
        .map(|frame| {
            eprintln!("cluster bench: the raw tokio-tungstenite baseline");
            runtime.block_on(measure_baseline(&settings, &frame))
        });
    print_table(&settings, profile, &rows);
    if let (Some(row), Some(baseline)) = (rows.first(), &baseline) {
        print_goals(row, baseline);
    }
}

// --- settings ------------------------------------------------------------------

#[derive(Debug)]
struct Settings {
    quick: bool,
    sockets: usize,
    channels: usize,
    posters: usize,
    /// Users the sockets and posts are spread over, all in one guild.
    users: usize,
    phase: Duration,
    /// How long the clients may take, after the last post was answered,
    /// to receive every expected frame.
    drain: Duration,
    /// (api replicas, gateways), in the order run.
    configs: Vec<(usize, usize)>,
    /// Frames the baseline is sent at once.
    burst: usize,
}

impl Settings {
    fn new(quick: bool) -> Self {
        let (sockets, secs, posters, configs, drain) = if quick {
            (20, 2, 8, "1x1,2x2", 5)
        } else {
            (300, 10, 32, "1x1,1x2,1x3,2x1,2x2,2x3", 15)
        };
        let sockets: usize = env_or("FILAMENT_BENCH_SOCKETS", sockets).max(1);
        let channels: usize = env_or("FILAMENT_BENCH_CHANNELS", 10).clamp(1, sockets);
        let configs =
            std::env::var("FILAMENT_BENCH_CONFIGS").unwrap_or_else(|_| configs.to_owned());
        Self {
            quick,
            sockets,
            channels,
            posters: env_or("FILAMENT_BENCH_POSTERS", posters).max(1),
            users: sockets.min(16),
            phase: Duration::from_secs(env_or("FILAMENT_BENCH_SECS", secs).max(1)),
            drain: Duration::from_secs(drain),
            configs: configs.split(',').map(parse_config).collect(),
            burst: env_or("FILAMENT_BENCH_BURST", if quick { 10 } else { 100 }).max(1),
        }
    }

    /// How many sockets watch `channel` (socket `n` watches channel
    /// `n % channels`).
    fn watchers(&self, channel: usize) -> usize {
        (0..self.sockets)
            .filter(|n| n % self.channels == channel)
            .count()
    }
}

fn env_or<T: FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(value) => value
            .parse()
            .unwrap_or_else(|_| panic!("{name}={value} is not a number")),
        Err(_) => default,
    }
}

/// `2x3`: two api replicas, three gateways.
fn parse_config(config: &str) -> (usize, usize) {
    let parsed = config.trim().split_once('x').and_then(|(api, gateways)| {
        Some((api.parse::<usize>().ok()?, gateways.parse::<usize>().ok()?))
    });
    match parsed {
        Some((api, gateways)) if api >= 1 && gateways >= 1 => (api, gateways),
        _ => panic!("FILAMENT_BENCH_CONFIGS: {config:?} is not <api>x<gateways>"),
    }
}

/// The limits a benchmark from one address would trip, out of the way:
/// every socket, registration and join comes from 127.0.0.1.
fn limits_out_of_the_way() -> Vec<(&'static str, String)> {
    [
        ("FILAMENT_GATEWAY_MAX_CONNECTIONS_PER_IP", "1000000"),
        ("FILAMENT_GATEWAY_HANDSHAKES_PER_IP_PER_MINUTE", "1000000"),
        ("FILAMENT_HTTP_MAX_CONNECTIONS_PER_ADDRESS", "1000000"),
        ("FILAMENT_AUTH_ROUTE_REQUESTS_PER_MINUTE", "100000"),
        (
            "FILAMENT_DIRECTORY_JOIN_REQUESTS_PER_MINUTE_PER_IP",
            "100000",
        ),
        (
            "FILAMENT_DIRECTORY_JOIN_REQUESTS_PER_MINUTE_PER_USER",
            "100000",
        ),
    ]
    .into_iter()
    .map(|(name, value)| (name, value.to_owned()))
    .collect()
}

// --- one configuration -----------------------------------------------------------

/// One configuration's figures.
#[derive(Debug)]
struct Row {
    api: usize,
    gateways: usize,
    sockets: usize,
    saturation: Phase,
    steady: Phase,
    /// CPU time by process kind over each phase.
    saturation_cpu: Cpu,
    steady_cpu: Cpu,
    /// Sockets the gateways closed (or that broke) during the run.
    closed: usize,
    /// Each gateway's RSS growth per socket it serves, in KiB.
    rss_per_socket_kib: Vec<f64>,
    /// A `message_create` frame the clients received, for the baseline.
    sample_frame: Option<String>,
}

/// What one phase measured.
#[derive(Debug, Default)]
struct Phase {
    /// Posts answered 2xx.
    acknowledged: usize,
    /// Posts answered otherwise, or not at all.
    failed: usize,
    first_failure: Option<String>,
    /// Deliveries the acknowledged posts should have made.
    expected: usize,
    /// Deliveries of acknowledged posts received.
    received: usize,
    /// From the first post to the last delivery (at least the posting time).
    span: Duration,
    posting: Duration,
    /// Publish→deliver, sorted.
    latencies: Vec<Duration>,
}

impl Phase {
    fn deliveries_per_second(&self) -> f64 {
        count_f64(self.received) / self.span.as_secs_f64()
    }

    fn posts_per_second(&self) -> f64 {
        count_f64(self.acknowledged) / self.posting.as_secs_f64()
    }

    /// Expected − received: negative if anything came twice.
    fn loss(&self) -> i64 {
        i64::try_from(self.expected).expect("a count")
            - i64::try_from(self.received).expect("a count")
    }

    fn percentile_ms(&self, p: f64) -> Option<f64> {
        let last = self.latencies.len().checked_sub(1)?;
        // Nearest rank; the index is within 0..=last.
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss
        )]
        let rank = ((p * last as f64).round() as usize).min(last);
        Some(self.latencies[rank].as_secs_f64() * 1000.0)
    }
}

#[allow(clippy::cast_precision_loss)]
fn count_f64(count: usize) -> f64 {
    count as f64
}

async fn measure(
    binaries: &Path,
    pg: &str,
    redis: &str,
    settings: &Settings,
    api: usize,
    gateways: usize,
) -> Row {
    let (schema, database_url) = cluster::fresh_schema(pg).await;
    let layout = Layout {
        api,
        gateways,
        presence: 1,
        voice: 1,
        search: 1,
        env: limits_out_of_the_way(),
    };
    let cluster = Cluster::start(binaries.to_owned(), database_url, redis.to_owned(), layout).await;
    let world = World::create(&cluster, settings).await;
    let (sockets, rss_per_socket_kib) = Sockets::connect(&cluster, &world, settings).await;
    let poster = Arc::new(Poster::new(&cluster, &world));

    let before = Cpu::of(&cluster);
    let saturation = saturate(&poster, &sockets, settings).await;
    let between = Cpu::of(&cluster);
    let steady = steady(&poster, &sockets, settings).await;
    let after = Cpu::of(&cluster);

    let closed = sockets.closed();
    let sample_frame = sockets.arrivals.sample.get().cloned();
    drop(sockets);
    cluster.stop().await;
    drop_schema(pg, &schema).await;
    Row {
        api,
        gateways,
        sockets: settings.sockets,
        saturation,
        steady,
        saturation_cpu: between.since(&before),
        steady_cpu: after.since(&between),
        closed,
        rss_per_socket_kib,
        sample_frame,
    }
}

/// Opens sockets `0..n` with `open`, socket `k` to the server `pids[k %
/// pids.len()]`, in two halves; returns them with each server's RSS growth
/// over the second half, in KiB per socket it got there. Connecting the
/// first half leaves the allocator holding transient memory (handshakes,
/// subscribes) that the second half reuses, so the second half shows what
/// a socket keeps.
async fn open_in_halves<F, Fut>(n: usize, pids: &[Option<u32>], open: F) -> (Vec<Ws>, Vec<f64>)
where
    F: Fn(usize) -> Fut,
    Fut: Future<Output = Ws>,
{
    let half = n / 2;
    let connect = |range: std::ops::Range<usize>| {
        futures_util::stream::iter(range)
            .map(&open)
            .buffered(CONNECTING_AT_ONCE)
            .collect::<Vec<Ws>>()
    };
    let mut sockets = connect(0..half).await;
    let before: Vec<u64> = pids.iter().map(|pid| rss_kib(*pid)).collect();
    sockets.extend(connect(half..n).await);
    let rss = pids
        .iter()
        .zip(before)
        .enumerate()
        .map(|(k, (pid, before))| {
            let got = (half..n).filter(|s| s % pids.len() == k).count();
            let grown = usize::try_from(rss_kib(*pid).saturating_sub(before)).expect("a size");
            count_f64(grown) / count_f64(got.max(1))
        })
        .collect();
    (sockets, rss)
}

/// `VmRSS` of `pid` in KiB; 0 once it is gone.
fn rss_kib(pid: Option<u32>) -> u64 {
    let status = pid
        .and_then(|pid| std::fs::read_to_string(format!("/proc/{pid}/status")).ok())
        .unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

// --- CPU ------------------------------------------------------------------------

/// CPU time (user and system) by process kind: each service's replicas,
/// and every `postgres` and `redis-server` process on the machine.
#[derive(Debug, Default)]
struct Cpu(Vec<(&'static str, Duration)>);

impl Cpu {
    /// What the processes used so far.
    fn of(cluster: &Cluster) -> Self {
        let mut kinds: Vec<(&'static str, Duration)> = Vec::new();
        let mut add =
            |kind: &'static str, used: Duration| match kinds.iter_mut().find(|(k, _)| *k == kind) {
                Some((_, total)) => *total += used,
                None => kinds.push((kind, used)),
            };
        let replicas = cluster.gateways.iter().chain(
            cluster::Producer::ALL
                .iter()
                .flat_map(|p| &cluster.tier(*p).replicas),
        );
        for replica in replicas {
            if let Some(used) = replica.child.id().and_then(process_cpu) {
                add(replica.kind.short(), used);
            }
        }
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
                continue;
            };
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            let kind = match comm.trim_end() {
                "postgres" => "postgres",
                "redis-server" => "redis",
                _ => continue,
            };
            if let Some(used) = process_cpu(pid) {
                add(kind, used);
            }
        }
        Self(kinds)
    }

    /// What was used between `earlier` and this reading. A process that
    /// ended in between loses its time; one that started counts whole.
    fn since(&self, earlier: &Self) -> Self {
        Self(
            self.0
                .iter()
                .map(|(kind, now)| {
                    let then = earlier
                        .0
                        .iter()
                        .find(|(k, _)| k == kind)
                        .map_or(Duration::ZERO, |(_, t)| *t);
                    (*kind, now.saturating_sub(then))
                })
                .collect(),
        )
    }

    fn total(&self) -> Duration {
        self.0.iter().map(|(_, used)| *used).sum()
    }
}

/// User plus system time of `pid` (fields 14 and 15 of its stat line, in
/// clock ticks of 10 ms); `None` once it is gone.
fn process_cpu(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces; the fields after it do not.
    let (_, rest) = stat.rsplit_once(") ")?;
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(Duration::from_millis((utime + stime) * 10))
}

/// Users, all members of one public guild with the benchmark's channels.
struct World {
    users: Vec<User>,
    guild_id: String,
    channels: Vec<Channel>,
}

impl World {
    async fn create(cluster: &Cluster, settings: &Settings) -> Self {
        let mut users = Vec::new();
        for n in 0..settings.users {
            users.push(register(cluster, &format!("bench{n}")).await);
        }
        let guild_id = public_guild(cluster, "bench", &users).await;
        let mut channels = Vec::new();
        for n in 0..settings.channels {
            let name = format!("c{n}");
            channels.push(channel(cluster, &users[0], &guild_id, &name, "text").await);
        }
        Self {
            users,
            guild_id,
            channels,
        }
    }
}

async fn drop_schema(pg: &str, schema: &str) {
    use sqlx::Connection as _;
    let Ok(mut conn) = sqlx::PgConnection::connect(pg).await else {
        return;
    };
    // The name is fresh_schema's prefix and a ULID: nothing to inject.
    let drop = format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE");
    let _ = sqlx::query(sqlx::AssertSqlSafe(drop))
        .execute(&mut conn)
        .await;
}

// --- clients -----------------------------------------------------------------------

/// What one socket received: each benchmark message's sequence number and
/// when it arrived; and how the socket ended, if it did.
#[derive(Default)]
struct Inbox {
    frames: Mutex<Vec<(u64, Instant)>>,
    closed: Mutex<Option<String>>,
}

/// Deliveries of the current phase (sequence numbers from `floor` on), as
/// they arrive, to know when to stop waiting.
#[derive(Default)]
struct Arrivals {
    floor: AtomicU64,
    received: AtomicUsize,
    /// The first benchmark frame any socket received.
    sample: OnceLock<String>,
}

struct Sockets {
    inboxes: Vec<Arc<Inbox>>,
    readers: Vec<JoinHandle<()>>,
    arrivals: Arc<Arrivals>,
    /// How many sockets watch each channel.
    watchers: Vec<usize>,
}

impl Sockets {
    /// Socket `n` goes to gateway `n % gateways` as user `n % users`,
    /// subscribed to channel `n % channels`; returns once all are
    /// subscribed.
    /// Also returns each gateway's RSS per socket (see [`open_in_halves`]).
    async fn connect(cluster: &Cluster, world: &World, settings: &Settings) -> (Self, Vec<f64>) {
        let gateways: Vec<_> = cluster.gateways.iter().map(|g| g.addrs[0]).collect();
        let pids: Vec<_> = cluster.gateways.iter().map(|g| g.child.id()).collect();
        let (connected, rss) = open_in_halves(settings.sockets, &pids, |n| {
            let gateway = gateways[n % gateways.len()];
            let user = &world.users[n % world.users.len()];
            let channel = &world.channels[n % world.channels.len()];
            async move {
                let label = format!("socket {n} ({}@{gateway}/{})", user.name, channel.label);
                cluster::subscribed_socket(gateway, user, channel, &label)
                    .await
                    .0
            }
        })
        .await;
        let watchers = (0..settings.channels)
            .map(|c| settings.watchers(c))
            .collect();
        (Self::reading(connected, watchers), rss)
    }

    /// Starts reading `connected`, which watch the channels as `watchers`
    /// says.
    fn reading(connected: Vec<Ws>, watchers: Vec<usize>) -> Self {
        let arrivals = Arc::new(Arrivals::default());
        let mut inboxes = Vec::new();
        let mut readers = Vec::new();
        for ws in connected {
            let inbox = Arc::new(Inbox::default());
            readers.push(tokio::spawn(read(
                ws,
                Arc::clone(&inbox),
                Arc::clone(&arrivals),
            )));
            inboxes.push(inbox);
        }
        Self {
            inboxes,
            readers,
            arrivals,
            watchers,
        }
    }

    fn closed(&self) -> usize {
        self.inboxes
            .iter()
            .filter(|inbox| inbox.closed.lock().expect("closed").is_some())
            .count()
    }

    /// Starts counting the phase whose first sequence number is `floor`.
    fn count_from(&self, floor: u64) {
        self.arrivals.floor.store(floor, Ordering::SeqCst);
        self.arrivals.received.store(0, Ordering::SeqCst);
    }
}

impl Drop for Sockets {
    fn drop(&mut self) {
        for reader in &self.readers {
            reader.abort();
        }
    }
}

/// Notes every benchmark message's arrival until the socket ends.
async fn read(mut ws: Ws, inbox: Arc<Inbox>, arrivals: Arc<Arrivals>) {
    let closed = loop {
        match ws.next().await {
            Some(Ok(Message::Text(text))) => {
                let at = Instant::now();
                if let Some(seq) = sequence_number(&text) {
                    inbox.frames.lock().expect("frames").push((seq, at));
                    if arrivals.sample.get().is_none() {
                        let _ = arrivals.sample.set(text.as_str().to_owned());
                    }
                    if seq >= arrivals.floor.load(Ordering::Relaxed) {
                        arrivals.received.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            Some(Ok(message)) if !message.is_close() => {}
            other => break cluster::end_of(other),
        }
    };
    *inbox.closed.lock().expect("closed") = Some(closed);
}

/// A `message_create` frame's benchmark sequence number, found without
/// parsing the JSON (hundreds of sockets share the two cores with the
/// cluster).
fn sequence_number(frame: &str) -> Option<u64> {
    if !frame.contains("\"message_create\"") {
        return None;
    }
    let rest = &frame[frame.find(MARK)? + MARK.len()..];
    rest[..rest.find('#')?].parse().ok()
}

// --- posting -----------------------------------------------------------------------

/// One post: which, where, when it was sent, and whether it was
/// acknowledged.
struct Post {
    seq: u64,
    channel: usize,
    sent: Instant,
    acknowledged: bool,
}

/// Posts through the api's Service, numbering every message.
struct Poster {
    http: reqwest::Client,
    /// The channels' message URLs.
    urls: Vec<String>,
    users: Vec<User>,
    next: AtomicU64,
    posts: Mutex<Vec<Post>>,
    first_failure: Mutex<Option<String>>,
}

impl Poster {
    fn new(cluster: &Cluster, world: &World) -> Self {
        let api = cluster.api.service_url();
        Self {
            http: cluster.http.clone(),
            urls: world
                .channels
                .iter()
                .map(|c| {
                    format!(
                        "{api}/guilds/{}/channels/{}/messages",
                        world.guild_id, c.channel_id
                    )
                })
                .collect(),
            users: world.users.clone(),
            next: AtomicU64::new(0),
            posts: Mutex::default(),
            first_failure: Mutex::default(),
        }
    }

    /// Posts the next message, in channel `seq % channels`, as user
    /// `author % users`, and notes how it went.
    async fn post(&self, author: usize) {
        let seq = self.next.fetch_add(1, Ordering::SeqCst);
        let channel = usize::try_from(seq).expect("a count") % self.urls.len();
        let author = &self.users[author % self.users.len()];
        let body = json!({"content": format!("{MARK}{seq}# from {}", author.name)});
        let sent = Instant::now();
        let answer = self
            .http
            .post(&self.urls[channel])
            .bearer_auth(&author.token)
            .json(&body)
            .timeout(Duration::from_secs(10))
            .send()
            .await;
        let failure = match answer {
            Ok(response) if response.status().is_success() => {
                // Read to the end, so the connection goes back to the pool.
                response.bytes().await.err().map(|err| err.to_string())
            }
            Ok(response) => {
                let status = response.status();
                Some(format!(
                    "{status}: {}",
                    response.text().await.unwrap_or_default()
                ))
            }
            Err(err) => Some(err.to_string()),
        };
        if let Some(failure) = &failure {
            self.first_failure
                .lock()
                .expect("failure")
                .get_or_insert_with(|| failure.clone());
        }
        self.posts.lock().expect("posts").push(Post {
            seq,
            channel,
            sent,
            acknowledged: failure.is_none(),
        });
    }

    /// The posts of the phase that ended, and its first failure.
    fn take_posts(&self) -> (Vec<Post>, Option<String>) {
        let failure = self.first_failure.lock().expect("failure").take();
        let posts = std::mem::take(&mut *self.posts.lock().expect("posts"));
        (posts, failure)
    }

    fn next_seq(&self) -> u64 {
        self.next.load(Ordering::SeqCst)
    }
}

/// The saturation phase: every poster posts again as soon as answered.
async fn saturate(poster: &Arc<Poster>, sockets: &Sockets, settings: &Settings) -> Phase {
    let floor = poster.next_seq();
    sockets.count_from(floor);
    let started = Instant::now();
    let until = started + settings.phase;
    let mut posters = JoinSet::new();
    for n in 0..settings.posters {
        let poster = Arc::clone(poster);
        posters.spawn(async move {
            while Instant::now() < until {
                poster.post(n).await;
            }
        });
    }
    while let Some(done) = posters.join_next().await {
        done.expect("a poster");
    }
    let posting = started.elapsed();
    let (posts, failure) = poster.take_posts();
    finish(&posts, failure, sockets, settings, floor, started, posting).await
}

/// The steady phase: [`STEADY_RATE`] posts a second.
async fn steady(poster: &Arc<Poster>, sockets: &Sockets, settings: &Settings) -> Phase {
    let floor = poster.next_seq();
    sockets.count_from(floor);
    let started = Instant::now();
    let count = STEADY_RATE * settings.phase.as_secs();
    let mut ticks =
        tokio::time::interval(Duration::from_secs(1) / u32::try_from(STEADY_RATE).expect("small"));
    let mut posts = JoinSet::new();
    for n in 0..count {
        ticks.tick().await;
        let poster = Arc::clone(poster);
        let author = usize::try_from(n).expect("a count");
        posts.spawn(async move { poster.post(author).await });
    }
    while let Some(done) = posts.join_next().await {
        done.expect("a post");
    }
    let posting = started.elapsed();
    let (posts, failure) = poster.take_posts();
    finish(&posts, failure, sockets, settings, floor, started, posting).await
}

/// Waits until the clients received every delivery the phase's
/// acknowledged posts should make, or the drain deadline; then counts.
async fn finish(
    posts: &[Post],
    first_failure: Option<String>,
    sockets: &Sockets,
    settings: &Settings,
    floor: u64,
    started: Instant,
    posting: Duration,
) -> Phase {
    let (sent, mut phase) = {
        let mut sent = HashMap::new();
        let mut phase = Phase {
            posting,
            ..Phase::default()
        };
        for post in posts.iter().filter(|p| p.seq >= floor) {
            if post.acknowledged {
                phase.acknowledged += 1;
                phase.expected += sockets.watchers[post.channel];
                sent.insert(post.seq, post.sent);
            } else {
                phase.failed += 1;
            }
        }
        (sent, phase)
    };
    phase.first_failure = first_failure;
    let deadline = Instant::now() + settings.drain;
    while sockets.arrivals.received.load(Ordering::Relaxed) < phase.expected
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut last = started;
    for inbox in &sockets.inboxes {
        for (seq, at) in inbox.frames.lock().expect("frames").iter() {
            if let Some(sent) = sent.get(seq) {
                phase.received += 1;
                last = last.max(*at);
                phase.latencies.push(at.saturating_duration_since(*sent));
            }
        }
    }
    phase.latencies.sort_unstable();
    phase.span = (last - started).max(posting);
    phase
}

// --- the baseline ------------------------------------------------------------------

/// The child process of the baseline: prints its websocket address, then
/// broadcasts each line of its standard input as a text frame, until the
/// input ends.
fn raw_server() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
            .await
            .expect("a port");
        println!("{}", listener.local_addr().expect("an address"));
        // Room for a whole burst, so no socket lags behind the buffer.
        let (frames, _) = tokio::sync::broadcast::channel(4096);
        let accepted = Arc::new(AtomicUsize::new(0));
        tokio::spawn(raw_broadcast::serve(listener, frames.clone(), accepted));
        let mut lines = BufReader::new(tokio::io::stdin()).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let _ = frames.send(line.into());
        }
    });
}

/// The baseline server, seen from the benchmark.
struct RawServer {
    child: Child,
    input: ChildStdin,
    addr: std::net::SocketAddr,
}

impl RawServer {
    async fn start() -> Self {
        let mut child = Command::new(std::env::current_exe().expect("this binary"))
            .env(RAW_SERVER_ROLE, "1")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("the baseline server");
        let input = child.stdin.take().expect("its input");
        let mut output = BufReader::new(child.stdout.take().expect("its output")).lines();
        let addr = output
            .next_line()
            .await
            .expect("its address")
            .expect("an address line")
            .parse()
            .expect("a socket address");
        Self { child, input, addr }
    }

    /// Sends the sample frame, renumbered `seq`, to every socket.
    async fn send(&mut self, sample: &str, seq: u64) -> Post {
        let frame = renumbered(sample, seq);
        let sent = Instant::now();
        let written = self.input.write_all(format!("{frame}\n").as_bytes()).await;
        Post {
            seq,
            channel: 0,
            sent,
            acknowledged: written.is_ok(),
        }
    }

    fn cpu(&self) -> Duration {
        self.child.id().and_then(process_cpu).unwrap_or_default()
    }
}

/// `frame` with its benchmark sequence number replaced by `seq`.
fn renumbered(frame: &str, seq: u64) -> String {
    let start = frame.find(MARK).expect("a benchmark frame") + MARK.len();
    let end = start + frame[start..].find('#').expect("a numbered frame");
    format!("{}{seq}{}", &frame[..start], &frame[end..])
}

/// What the baseline measured.
#[derive(Debug)]
struct Baseline {
    steady: Phase,
    burst: Phase,
    steady_cpu: Duration,
    burst_cpu: Duration,
    rss_per_socket_kib: f64,
}

/// The sockets of the benchmark on the raw server: the steady phase's
/// frames at its rate, then a burst.
async fn measure_baseline(settings: &Settings, sample: &str) -> Baseline {
    let mut server = RawServer::start().await;
    let url = format!("ws://{}/", server.addr);
    let (connected, rss) = open_in_halves(settings.sockets, &[server.child.id()], |_| {
        let url = url.clone();
        async move {
            let (ws, _) = tokio_tungstenite::connect_async(url.as_str())
                .await
                .expect("a socket to the baseline");
            ws
        }
    })
    .await;
    let rss_per_socket_kib = rss[0];
    let sockets = Sockets::reading(connected, vec![settings.sockets]);

    let count = STEADY_RATE * settings.phase.as_secs();
    let cpu = server.cpu();
    sockets.count_from(0);
    let started = Instant::now();
    let mut ticks =
        tokio::time::interval(Duration::from_secs(1) / u32::try_from(STEADY_RATE).expect("small"));
    let mut posts = Vec::new();
    for seq in 0..count {
        ticks.tick().await;
        posts.push(server.send(sample, seq).await);
    }
    let posting = started.elapsed();
    let steady = finish(&posts, None, &sockets, settings, 0, started, posting).await;
    let steady_cpu = server.cpu().saturating_sub(cpu);

    let floor = count;
    let cpu = server.cpu();
    sockets.count_from(floor);
    let started = Instant::now();
    let mut posts = Vec::new();
    for seq in floor..floor + u64::try_from(settings.burst).expect("a count") {
        posts.push(server.send(sample, seq).await);
    }
    let posting = started.elapsed();
    let burst = finish(&posts, None, &sockets, settings, floor, started, posting).await;
    let burst_cpu = server.cpu().saturating_sub(cpu);
    drop(sockets);
    Baseline {
        steady,
        burst,
        steady_cpu,
        burst_cpu,
        rss_per_socket_kib,
    }
}

/// CPU-milliseconds per 1,000 of a phase's deliveries.
fn per_1k(used: Duration, phase: &Phase) -> f64 {
    used.as_secs_f64() * 1e3 / (count_f64(phase.received) / 1e3).max(f64::MIN_POSITIVE)
}

// --- the table -----------------------------------------------------------------------

fn print_table(settings: &Settings, profile: Profile, rows: &[Row]) {
    let cpus = std::thread::available_parallelism().map_or(0, std::num::NonZero::get);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|line| line.strip_prefix("model name"))
                .map(|rest| rest.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned());
    println!();
    println!(
        "cluster benchmark{}: {cpus} CPUs ({model}), {profile:?} binaries; {} sockets over {} \
         channels ({} users, one guild); presence, voice, search: 1 each",
        if settings.quick {
            " (QUICK: a check of the logic, not figures)"
        } else {
            ""
        },
        settings.sockets,
        settings.channels,
        settings.users,
    );
    println!(
        "saturation: {} posters for {} s; steady: {STEADY_RATE} posts/s for {} s; drain deadline {} s",
        settings.posters,
        settings.phase.as_secs(),
        settings.phase.as_secs(),
        settings.drain.as_secs(),
    );
    println!();
    println!(
        "| api | gateways | sockets | saturation deliveries/s | posts/s | loss | steady p50 ms | steady p99 ms | steady loss | vs 1 api, 1 gateway |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    let base = rows
        .iter()
        .find(|row| (row.api, row.gateways) == (1, 1))
        .map(|row| row.saturation.deliveries_per_second());
    let ms = |value: Option<f64>| value.map_or("–".to_owned(), |ms| format!("{ms:.1}"));
    for row in rows {
        let rate = row.saturation.deliveries_per_second();
        println!(
            "| {} | {} | {} | {:.0} | {:.0} | {} | {} | {} | {} | {} |",
            row.api,
            row.gateways,
            row.sockets,
            rate,
            row.saturation.posts_per_second(),
            row.saturation.loss(),
            ms(row.steady.percentile_ms(0.50)),
            ms(row.steady.percentile_ms(0.99)),
            row.steady.loss(),
            base.map_or("–".to_owned(), |base| format!("{:.2}", rate / base)),
        );
    }
    println!();
    for row in rows {
        let config = format!("{} api, {} gateway(s)", row.api, row.gateways);
        for (name, phase) in [("saturation", &row.saturation), ("steady", &row.steady)] {
            println!(
                "{config}, {name}: {} posts acknowledged, {} failed, {} of {} deliveries in {:.2} s",
                phase.acknowledged,
                phase.failed,
                phase.received,
                phase.expected,
                phase.span.as_secs_f64(),
            );
            if let Some(failure) = &phase.first_failure {
                println!("  first failed post: {failure}");
            }
        }
        for (name, phase, cpu) in [
            ("saturation", &row.saturation, &row.saturation_cpu),
            ("steady", &row.steady, &row.steady_cpu),
        ] {
            let per_1k = |used: Duration| per_1k(used, phase);
            let kinds: Vec<String> = cpu
                .0
                .iter()
                .map(|(kind, used)| format!("{kind} {:.2}", per_1k(*used)))
                .collect();
            println!(
                "{config}, {name}: {:.2} CPU-ms per 1k deliveries ({})",
                per_1k(cpu.total()),
                kinds.join(", "),
            );
        }
        let rss: Vec<String> = row
            .rss_per_socket_kib
            .iter()
            .map(|kib| format!("{kib:.1}"))
            .collect();
        println!(
            "{config}: gateway RSS per subscribed socket {} KiB",
            rss.join(", ")
        );
        if row.closed > 0 {
            println!("{config}: {} socket(s) closed during the run", row.closed);
        }
    }
}

/// The goal table of issue 16: `row` (the first configuration) against
/// the baseline measured in the same run.
fn print_goals(row: &Row, baseline: &Baseline) {
    let gateway = |cpu: &Cpu| {
        cpu.0
            .iter()
            .filter(|(kind, _)| *kind == "gateway")
            .map(|(_, used)| *used)
            .sum::<Duration>()
    };
    let search_share = |cpu: &Cpu| {
        let search: Duration = cpu
            .0
            .iter()
            .filter(|(k, _)| *k == "search")
            .map(|(_, u)| *u)
            .sum();
        100.0 * search.as_secs_f64() / cpu.total().as_secs_f64().max(f64::MIN_POSITIVE)
    };
    let raw_steady = per_1k(baseline.steady_cpu, &baseline.steady);
    let raw_burst = per_1k(baseline.burst_cpu, &baseline.burst);
    let gateway_steady = per_1k(gateway(&row.steady_cpu), &row.steady);
    let gateway_saturation = per_1k(gateway(&row.saturation_cpu), &row.saturation);
    let rss = row.rss_per_socket_kib.iter().copied().fold(0.0, f64::max);
    let ms = |value: Option<f64>| value.map_or("–".to_owned(), |ms| format!("{ms:.1}"));
    println!();
    println!(
        "baseline (raw tokio-tungstenite broadcast, {} sockets): steady {} of {} deliveries, \
         {raw_steady:.2} CPU-ms per 1k, p50 / p99 {} / {} ms; burst of {} frames: {:.0} deliveries/s, \
         {raw_burst:.2} CPU-ms per 1k; RSS per socket {:.1} KiB",
        row.sockets,
        baseline.steady.received,
        baseline.steady.expected,
        ms(baseline.steady.percentile_ms(0.50)),
        ms(baseline.steady.percentile_ms(0.99)),
        baseline.burst.acknowledged,
        baseline.burst.deliveries_per_second(),
        baseline.rss_per_socket_kib,
    );
    println!();
    println!(
        "| figure ({} api, {} gateway(s), {} sockets) | measured | baseline, same run | goal |",
        row.api, row.gateways, row.sockets
    );
    println!("|---|---|---|---|");
    println!(
        "| CPU-ms per 1k deliveries, steady {STEADY_RATE} msg/s, all processes | {:.2} | {raw_steady:.2} | ≤ 5 |",
        per_1k(row.steady_cpu.total(), &row.steady),
    );
    println!(
        "| search's share of that CPU | {:.1} % | – | ≤ 5 % |",
        search_share(&row.steady_cpu),
    );
    println!(
        "| CPU-ms per 1k deliveries, saturation, all processes | {:.2} | {raw_burst:.2} | ≤ 1.5 |",
        per_1k(row.saturation_cpu.total(), &row.saturation),
    );
    println!(
        "| p99 publish→deliver, steady | {} ms | {} ms | ≤ 20 ms |",
        ms(row.steady.percentile_ms(0.99)),
        ms(baseline.steady.percentile_ms(0.99)),
    );
    println!(
        "| gateway CPU-ms per 1k deliveries, steady (baseline ÷ gateway) | {gateway_steady:.2} ({:.2}) | {raw_steady:.2} | ratio ≥ 0.8 |",
        raw_steady / gateway_steady.max(f64::MIN_POSITIVE),
    );
    println!(
        "| gateway CPU-ms per 1k deliveries, saturation (baseline ÷ gateway) | {gateway_saturation:.2} ({:.2}) | {raw_burst:.2} | ratio ≥ 0.8 |",
        raw_burst / gateway_saturation.max(f64::MIN_POSITIVE),
    );
    println!(
        "| posts/s at saturation, Postgres | {:.0} | – | ≥ 2000 |",
        row.saturation.posts_per_second(),
    );
    println!(
        "| RSS per subscribed socket, gateway | {rss:.1} KiB | {:.1} KiB | ≤ 8 KiB |",
        baseline.rss_per_socket_kib,
    );
}
