//! Every service as separate OS processes, several replicas each — two
//! api, three gateways, two presence, two voice, two search — on the
//! machine's Postgres (`TEST_DATABASE_URL`, in a schema of this test's own)
//! and Redis (`TEST_REDIS_URL`, under a key prefix of its own), wired the
//! way Kubernetes wires them, and a rolling replacement of every producer
//! under load that must cost clients nothing (docs/adr/0009-replicas.md).
//!
//! On one host the cluster's plumbing is the test's own:
//!
//! - a **Service** is an in-test TCP proxy ([`Proxy`]) that hands each
//!   connection to one of its current backends, round-robin; every unary
//!   caller (gateways calling the api, presence and voice; the api calling
//!   voice and search; presence calling voice; search following the api's
//!   feed) is given the proxy's address;
//! - a **headless Service** is a file ([`PeersFile`]) listing one replica
//!   URL per line, which gateways read again every second to find the
//!   replicas whose event streams they follow.
//!
//! A replica goes behind its proxy only once ready (`/readyz`, or its gRPC
//! health), and a rolling update replaces one replica at a time: start the
//! new one, list it, wait until it is ready, swap it into the proxy, unlist
//! the old one and SIGTERM it ([`Cluster::roll`]).
//!
//! Meanwhile a steady load posts messages through the api's proxy (each
//! with an `Idempotency-Key`, retried on a transport error or a 5xx), and
//! a dozen websocket clients spread over the gateways record every frame.
//! After every producer was rolled, a voice replica is SIGKILLed with two
//! users in voice: the roster lives in Redis, so a socket subscribing
//! afterwards is still told about both. At the end every acknowledged
//! message must have reached every client subscribed to its channel
//! exactly once, no client may have seen another channel's message, and
//! no client may have been closed.
//!
//! An api replica is deliberately never SIGKILLed here: its gateways'
//! streams break uncleanly and they resynchronise every socket (4011),
//! which the ADR leaves to future work (a replay log).

mod support;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use support::DEADLINE;
use tokio::net::{TcpListener, TcpStream};
use tokio::process::Child;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

const TOKEN_SECRET: &str = "a-secret-every-replica-of-the-cluster-shares";
const INTERNAL_TOKEN: &str = "a-cluster-test-internal-service-token-of-32-bytes";
const LIVEKIT_KEY: &str = "APIclustertest";
const LIVEKIT_SECRET: &str = "a-cluster-test-livekit-secret-of-32-bytes-or-more";
const PASSWORD: &str = "a cluster password of some length";
/// The steady load.
const POSTS_PER_SECOND: u64 = 20;
/// A Postgres schema this test made; older ones than an hour are swept.
const SCHEMA_PREFIX: &str = "cluster_";

// --- binaries --------------------------------------------------------------

/// What each service is to the test: its binary, how it says where it
/// listens, and how it says it is ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Api,
    Gateway,
    Presence,
    Voice,
    Search,
}

impl Kind {
    fn binary(self) -> &'static str {
        match self {
            Self::Api => "filament-api",
            Self::Gateway => "filament-gateway",
            Self::Presence => "filament-presence",
            Self::Voice => "filament-voice",
            Self::Search => "filament-search",
        }
    }

    fn short(self) -> &'static str {
        &self.binary()["filament-".len()..]
    }

    /// The log line that names the listeners, and the fields that hold
    /// them, in [`Replica::addrs`] order.
    fn listening(self) -> (&'static str, &'static [&'static str]) {
        match self {
            Self::Api => ("api listening", &["http", "grpc"]),
            Self::Gateway => ("gateway listening", &["addr"]),
            Self::Presence => ("presence listening", &["grpc"]),
            Self::Voice => ("voice listening", &["grpc"]),
            Self::Search => ("search listening", &["grpc"]),
        }
    }

    /// The gRPC service whose health is the readiness; `None`: `/readyz`
    /// on the first listener.
    fn health_service(self) -> Option<&'static str> {
        match self {
            Self::Api | Self::Gateway => None,
            Self::Presence => Some("filament.v1.Presence"),
            Self::Voice => Some("filament.v1.Voice"),
            Self::Search => Some("filament.v1.Search"),
        }
    }

    /// Which of [`Replica::addrs`] gateways stream events from, if any.
    fn stream_listener(self) -> Option<usize> {
        match self {
            Self::Api => Some(1),
            Self::Presence | Self::Voice => Some(0),
            Self::Gateway | Self::Search => None,
        }
    }
}

// --- replicas --------------------------------------------------------------

/// Everything a process logged (JSON lines on stdout).
type Log = support::JsonLog;

/// One service process.
struct Replica {
    name: String,
    kind: Kind,
    child: Child,
    log: Log,
    /// Its listeners, in the order of [`Kind::listening`].
    addrs: Vec<SocketAddr>,
}

impl Replica {
    /// Starts `binary` with nothing but `env`, and waits until it says
    /// where it listens.
    async fn spawn(name: String, kind: Kind, binary: &Path, env: &[(&str, String)]) -> Self {
        let (child, log) = support::spawn_logged(binary, "info", env);
        let mut replica = Self {
            name,
            kind,
            child,
            log,
            addrs: Vec::new(),
        };
        replica.addrs = replica.listeners().await;
        replica
    }

    async fn listeners(&mut self) -> Vec<SocketAddr> {
        let (message, fields) = self.kind.listening();
        let deadline = Instant::now() + DEADLINE;
        loop {
            let line = self
                .log
                .lock()
                .expect("log")
                .iter()
                .find(|entry| entry["fields"]["message"] == message)
                .cloned();
            if let Some(line) = line {
                return fields
                    .iter()
                    .map(|field| {
                        let addr = line["fields"][field].as_str().expect("an address");
                        addr.parse().expect("a socket address")
                    })
                    .collect();
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("{} exited before listening: {status}", self.name);
            }
            assert!(Instant::now() < deadline, "{} never listened", self.name);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The URL gateways stream its events from, if they do.
    fn stream_url(&self) -> Option<String> {
        self.kind
            .stream_listener()
            .map(|n| format!("http://{}", self.addrs[n]))
    }

    async fn is_ready(&self, http: &reqwest::Client) -> bool {
        match self.kind.health_service() {
            None => http
                .get(format!("http://{}/readyz", self.addrs[0]))
                .timeout(Duration::from_secs(1))
                .send()
                .await
                .is_ok_and(|response| response.status() == 200),
            Some(service) => {
                use tonic_health::pb::HealthCheckRequest;
                use tonic_health::pb::health_client::HealthClient;
                let channel =
                    tonic::transport::Endpoint::from_shared(format!("http://{}", self.addrs[0]))
                        .expect("url")
                        .timeout(Duration::from_secs(1))
                        .connect_lazy();
                let answer = HealthClient::new(channel)
                    .check(HealthCheckRequest {
                        service: service.to_owned(),
                    })
                    .await;
                answer.is_ok_and(|answer| {
                    answer.into_inner().status == tonic_health::ServingStatus::Serving as i32
                })
            }
        }
    }

    async fn wait_ready(&self, http: &reqwest::Client) {
        let deadline = Instant::now() + DEADLINE;
        while !self.is_ready(http).await {
            assert!(
                Instant::now() < deadline,
                "{} never became ready",
                self.name
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn signal(&self, signal: &str) {
        let pid = self.child.id().expect("still running");
        let status = std::process::Command::new("kill")
            .args([format!("-{signal}"), pid.to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -{signal} {pid} failed");
    }

    /// SIGTERM, then waits (bounded) for a clean exit.
    async fn terminate(mut self) {
        self.signal("TERM");
        let status = tokio::time::timeout(DEADLINE, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("{} did not drain and exit", self.name))
            .expect("wait");
        assert!(status.success(), "{} exited with {status}", self.name);
    }

    /// SIGKILL, as a crash or an OOM kill, and waits for it to be gone.
    async fn kill(mut self) {
        self.signal("KILL");
        tokio::time::timeout(DEADLINE, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("{} survived SIGKILL", self.name))
            .expect("wait");
    }
}

// --- Services and headless Services ----------------------------------------

/// A Service: each connection accepted goes to one of the current
/// backends, round-robin, and stays there for its life (as with
/// kube-proxy, taking a backend out only affects new connections).
struct Proxy {
    addr: SocketAddr,
    backends: Arc<Mutex<Vec<SocketAddr>>>,
    accept: JoinHandle<()>,
}

impl Proxy {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let backends: Arc<Mutex<Vec<SocketAddr>>> = Arc::default();
        let accept = tokio::spawn({
            let backends = Arc::clone(&backends);
            async move {
                let turn = AtomicUsize::new(0);
                while let Ok((client, _)) = listener.accept().await {
                    let current = backends.lock().expect("backends").clone();
                    let first = turn.fetch_add(1, Ordering::Relaxed);
                    tokio::spawn(forward(client, current, first));
                }
            }
        });
        Self {
            addr,
            backends,
            accept,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn add(&self, backend: SocketAddr) {
        self.backends.lock().expect("backends").push(backend);
    }

    fn remove(&self, backend: SocketAddr) {
        self.backends
            .lock()
            .expect("backends")
            .retain(|b| *b != backend);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// Copies bytes between `client` and the first backend, from the
/// `first`-th on, that accepts a connection; a backend that refuses is
/// passed over, as a Service's endpoints soon stop listing a dead pod.
async fn forward(mut client: TcpStream, backends: Vec<SocketAddr>, first: usize) {
    for n in 0..backends.len() {
        let backend = backends[(first + n) % backends.len()];
        let Ok(Ok(mut upstream)) =
            tokio::time::timeout(Duration::from_secs(1), TcpStream::connect(backend)).await
        else {
            continue;
        };
        // gRPC and REST exchanges are small writes: no Nagle delays.
        let _ = client.set_nodelay(true);
        let _ = upstream.set_nodelay(true);
        let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
        return;
    }
}

/// A headless Service: a file listing every replica's URL, one a line,
/// that gateways read again every discovery interval.
struct PeersFile {
    path: PathBuf,
    urls: Vec<String>,
}

impl PeersFile {
    fn create(path: PathBuf) -> Self {
        let file = Self {
            path,
            urls: Vec::new(),
        };
        file.write();
        file
    }

    fn url(&self) -> String {
        format!("file://{}", self.path.display())
    }

    fn add(&mut self, url: String) {
        self.urls.push(url);
        self.write();
    }

    fn remove(&mut self, url: &str) {
        self.urls.retain(|u| u != url);
        self.write();
    }

    /// Replaces the file whole, so a reader never sees half of it.
    fn write(&self) {
        let next = self.path.with_extension("next");
        std::fs::write(&next, self.urls.join("\n") + "\n").expect("write peers");
        std::fs::rename(&next, &self.path).expect("replace peers");
    }
}

// --- the cluster -----------------------------------------------------------

/// The replicas of one producer, its Services (one per listener callers
/// use, in [`Replica::addrs`] order) and its headless Service.
struct Tier {
    kind: Kind,
    replicas: Vec<Replica>,
    proxies: Vec<Proxy>,
    peers: Option<PeersFile>,
}

impl Tier {
    async fn new(kind: Kind, dir: &Path) -> Self {
        let listeners = kind.listening().1.len();
        let mut proxies = Vec::new();
        for _ in 0..listeners {
            proxies.push(Proxy::start().await);
        }
        let peers = kind
            .stream_listener()
            .map(|_| PeersFile::create(dir.join(format!("{}-peers", kind.short()))));
        Self {
            kind,
            replicas: Vec::new(),
            proxies,
            peers,
        }
    }

    /// The Service callers are given (for the api: its REST one).
    fn service_url(&self) -> String {
        self.proxies[0].url()
    }

    fn peers_url(&self) -> String {
        self.peers.as_ref().expect("a headless Service").url()
    }

    fn list(&mut self, replica: &Replica) {
        if let (Some(peers), Some(url)) = (&mut self.peers, replica.stream_url()) {
            peers.add(url);
        }
    }

    fn unlist(&mut self, replica: &Replica) {
        if let (Some(peers), Some(url)) = (&mut self.peers, replica.stream_url()) {
            peers.remove(&url);
        }
    }

    fn route_to(&self, replica: &Replica) {
        for (proxy, addr) in self.proxies.iter().zip(&replica.addrs) {
            proxy.add(*addr);
        }
    }

    fn route_away_from(&self, replica: &Replica) {
        for (proxy, addr) in self.proxies.iter().zip(&replica.addrs) {
            proxy.remove(*addr);
        }
    }
}

/// The producers, each rolled in turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Producer {
    Api,
    Presence,
    Voice,
    Search,
}

struct Cluster {
    binaries: PathBuf,
    database_url: String,
    redis_url: String,
    prefix: String,
    api: Tier,
    presence: Tier,
    voice: Tier,
    search: Tier,
    gateways: Vec<Replica>,
    spawned: AtomicUsize,
    /// Every process's log, retired ones included, for a failure's report.
    logs: Mutex<Vec<(String, Log)>>,
    http: reqwest::Client,
    /// The peers files and attachments; last, so it goes after the
    /// processes (fields drop in order).
    dir: tempfile::TempDir,
}

impl Cluster {
    /// Every service, ready, each replica behind its Service.
    async fn start(binaries: PathBuf, database_url: String, redis_url: String) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut cluster = Self {
            api: Tier::new(Kind::Api, dir.path()).await,
            presence: Tier::new(Kind::Presence, dir.path()).await,
            voice: Tier::new(Kind::Voice, dir.path()).await,
            search: Tier::new(Kind::Search, dir.path()).await,
            dir,
            binaries,
            database_url,
            redis_url,
            prefix: format!("cluster-{}:", ulid::Ulid::generate()),
            gateways: Vec::new(),
            spawned: AtomicUsize::new(0),
            logs: Mutex::default(),
            http: reqwest::Client::new(),
        };
        // One api first: it migrates the schema, and search follows its feed.
        let api = cluster.spawn(Kind::Api).await;
        cluster.bring_up(Producer::Api, api).await;
        let (api, presence, voice, search) = tokio::join!(
            cluster.spawn_many(Kind::Api, 1),
            cluster.spawn_many(Kind::Presence, 2),
            cluster.spawn_many(Kind::Voice, 2),
            cluster.spawn_many(Kind::Search, 2),
        );
        for (producer, replicas) in [
            (Producer::Api, api),
            (Producer::Presence, presence),
            (Producer::Voice, voice),
            (Producer::Search, search),
        ] {
            for replica in replicas {
                cluster.bring_up(producer, replica).await;
            }
        }
        cluster.gateways = cluster.spawn_many(Kind::Gateway, 3).await;
        // Producers that were ready before any gateway lived wait for the
        // gateways' streams now (ADR 0009); so does the workload.
        let everyone = cluster.gateways.iter().chain(
            Producer::ALL
                .iter()
                .flat_map(|p| &cluster.tier(*p).replicas),
        );
        for replica in everyone {
            replica.wait_ready(&cluster.http).await;
        }
        cluster
    }

    fn tier(&self, producer: Producer) -> &Tier {
        match producer {
            Producer::Api => &self.api,
            Producer::Presence => &self.presence,
            Producer::Voice => &self.voice,
            Producer::Search => &self.search,
        }
    }

    fn tier_mut(&mut self, producer: Producer) -> &mut Tier {
        match producer {
            Producer::Api => &mut self.api,
            Producer::Presence => &mut self.presence,
            Producer::Voice => &mut self.voice,
            Producer::Search => &mut self.search,
        }
    }

    /// What a process of `kind` is started with: the shared settings, and
    /// its listeners, peers and Services.
    fn env(&self, kind: Kind) -> Vec<(&'static str, String)> {
        let mut env = vec![
            ("REDIS_URL", self.redis_url.clone()),
            ("FILAMENT_REGISTRY_PREFIX", self.prefix.clone()),
            ("FILAMENT_TOKEN_SECRET", TOKEN_SECRET.to_owned()),
            ("FILAMENT_INTERNAL_TOKEN", INTERNAL_TOKEN.to_owned()),
        ];
        let any_port = || "127.0.0.1:0".to_owned();
        let api_grpc = self.api.proxies[1].url();
        match kind {
            Kind::Api => env.extend([
                ("DATABASE_URL", self.database_url.clone()),
                (
                    "FILAMENT_ATTACHMENT_ROOT",
                    self.dir.path().join("attachments").display().to_string(),
                ),
                ("FILAMENT_API_HTTP_ADDR", any_port()),
                ("FILAMENT_API_GRPC_ADDR", any_port()),
                ("FILAMENT_ARGON2_MEMORY_KIB", "64".to_owned()),
                ("FILAMENT_ARGON2_ITERATIONS", "1".to_owned()),
                // The load is one client posting 20/s: not what the
                // per-user limiter is about.
                (
                    "FILAMENT_RATE_LIMIT_REQUESTS_PER_MINUTE",
                    "100000".to_owned(),
                ),
                ("FILAMENT_VOICE_GRPC_URL", self.voice.service_url()),
                ("FILAMENT_SEARCH_GRPC_URL", self.search.service_url()),
            ]),
            Kind::Gateway => env.extend([
                ("FILAMENT_GATEWAY_LISTEN_ADDR", any_port()),
                ("FILAMENT_API_GRPC_URL", api_grpc),
                ("FILAMENT_GATEWAY_API_STREAM_URL", self.api.peers_url()),
                (
                    "FILAMENT_GATEWAY_EVENT_SERVICE_URLS",
                    format!("{},{}", self.presence.peers_url(), self.voice.peers_url()),
                ),
                // Long enough that a new replica would take requests well
                // before the gateways find it, were it ready on its own:
                // only the producers' readiness gate (every live gateway
                // streams from it) keeps that from costing a 4011.
                ("FILAMENT_GATEWAY_DISCOVERY_INTERVAL_SECS", "3".to_owned()),
                (
                    "FILAMENT_GATEWAY_PRESENCE_GRPC_URL",
                    self.presence.service_url(),
                ),
                ("FILAMENT_GATEWAY_VOICE_GRPC_URL", self.voice.service_url()),
            ]),
            Kind::Presence => env.extend([
                ("FILAMENT_PRESENCE_GRPC_ADDR", any_port()),
                ("FILAMENT_PRESENCE_VOICE_GRPC_URL", self.voice.service_url()),
            ]),
            Kind::Voice => env.extend([
                ("FILAMENT_VOICE_GRPC_ADDR", any_port()),
                ("FILAMENT_LIVEKIT_API_KEY", LIVEKIT_KEY.to_owned()),
                ("FILAMENT_LIVEKIT_API_SECRET", LIVEKIT_SECRET.to_owned()),
            ]),
            Kind::Search => env.extend([
                ("FILAMENT_SEARCH_GRPC_ADDR", any_port()),
                ("FILAMENT_API_GRPC_URL", api_grpc),
            ]),
        }
        env
    }

    async fn spawn(&self, kind: Kind) -> Replica {
        let n = self.spawned.fetch_add(1, Ordering::Relaxed);
        let name = format!("{}-{n}", kind.short());
        let replica = Replica::spawn(
            name.clone(),
            kind,
            &self.binaries.join(kind.binary()),
            &self.env(kind),
        )
        .await;
        self.logs
            .lock()
            .expect("logs")
            .push((name, Arc::clone(&replica.log)));
        replica
    }

    async fn spawn_many(&self, kind: Kind, count: usize) -> Vec<Replica> {
        futures_util::future::join_all((0..count).map(|_| self.spawn(kind))).await
    }

    /// Lists `replica` for the gateways, waits until it is ready, and puts
    /// it behind its Services.
    async fn bring_up(&mut self, producer: Producer, replica: Replica) {
        self.tier_mut(producer).list(&replica);
        replica.wait_ready(&self.http).await;
        let tier = self.tier_mut(producer);
        tier.route_to(&replica);
        tier.replicas.push(replica);
    }

    /// Replaces the oldest replica of `producer` with a new one, the way a
    /// Deployment's rolling update does (maxSurge 1, maxUnavailable 0).
    async fn roll(&mut self, producer: Producer) -> Duration {
        let started = Instant::now();
        let kind = self.tier(producer).kind;
        let new = self.spawn(kind).await;
        self.bring_up(producer, new).await;
        let tier = self.tier_mut(producer);
        let old = tier.replicas.remove(0);
        tier.route_away_from(&old);
        tier.unlist(&old);
        old.terminate().await;
        started.elapsed()
    }

    /// SIGKILLs the oldest replica of `producer`, takes it out of its
    /// Services once dead (as the endpoints controller would), and brings
    /// up a replacement.
    async fn kill_and_replace(&mut self, producer: Producer) -> Duration {
        let started = Instant::now();
        let tier = self.tier_mut(producer);
        let kind = tier.kind;
        let old = tier.replicas.remove(0);
        tier.route_away_from(&old);
        tier.unlist(&old);
        old.kill().await;
        let new = self.spawn(kind).await;
        self.bring_up(producer, new).await;
        started.elapsed()
    }

    /// Kills every process, then forgets the keys they left in Redis.
    async fn stop(mut self) {
        let mut replicas = std::mem::take(&mut self.gateways);
        for producer in Producer::ALL {
            replicas.append(&mut self.tier_mut(producer).replicas);
        }
        futures_util::future::join_all(replicas.into_iter().map(Replica::kill)).await;
        let Ok(client) = redis::Client::open(self.redis_url.as_str()) else {
            return;
        };
        let Ok(mut redis) = client.get_multiplexed_async_connection().await else {
            return;
        };
        // Only this test's own prefix, and only in a test: KEYS is fine.
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{}*", self.prefix))
            .query_async(&mut redis)
            .await
            .unwrap_or_default();
        if !keys.is_empty() {
            let _ = redis::cmd("DEL")
                .arg(keys)
                .query_async::<()>(&mut redis)
                .await;
        }
    }

    fn api_url(&self, path: &str) -> String {
        format!("{}{path}", self.api.service_url())
    }
}

impl Producer {
    const ALL: [Self; 4] = [Self::Api, Self::Presence, Self::Voice, Self::Search];
}

impl Drop for Cluster {
    /// A failing test says what the services warned about.
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        for (name, log) in self.logs.lock().expect("logs").iter() {
            for entry in log.lock().expect("log").iter() {
                if matches!(entry["level"].as_str(), Some("WARN" | "ERROR")) {
                    eprintln!("[{name}] {entry}");
                }
            }
        }
    }
}

// --- Postgres --------------------------------------------------------------

/// A fresh schema of this test's own (older ones from earlier runs are
/// dropped first), and the `DATABASE_URL` that selects it: sqlx sends the
/// URL's `options` as startup parameters, so every pooled connection of
/// every api replica starts with that `search_path`.
async fn fresh_schema(url: &str) -> (String, String) {
    use sqlx::Connection as _;
    support::drop_stale_schemas(url, SCHEMA_PREFIX).await;
    let mut conn = sqlx::PgConnection::connect(url).await.expect("postgres");
    let schema = format!(
        "{SCHEMA_PREFIX}{}",
        ulid::Ulid::generate().to_string().to_lowercase()
    );
    // The name is the prefix and a ULID: nothing to inject or quote.
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
        .execute(&mut conn)
        .await
        .expect("create schema");
    let separator = if url.contains('?') { '&' } else { '?' };
    let in_schema = format!("{url}{separator}options=-c%20search_path%3D{schema}");
    (schema, in_schema)
}

/// How many messages the schema holds.
async fn messages_in_schema(url: &str, schema: &str) -> i64 {
    use sqlx::Connection as _;
    let mut conn = sqlx::PgConnection::connect(url).await.expect("postgres");
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT count(*) FROM {schema}.messages"
    )))
    .fetch_one(&mut conn)
    .await
    .expect("the api's tables are in the test's schema")
}

// --- the world: users, guilds, channels --------------------------------------

#[derive(Debug, Clone)]
struct User {
    name: &'static str,
    id: String,
    token: String,
}

#[derive(Debug, Clone)]
struct Channel {
    label: String,
    guild_id: String,
    channel_id: String,
}

/// What the workload runs on: two public guilds with two text channels
/// each (and a voice channel in the first), their members, and who
/// watches which channel through which gateway.
struct World {
    users: BTreeMap<&'static str, User>,
    text_channels: Vec<Channel>,
    voice_channel: Channel,
    /// Each text channel's members, who take turns posting in it.
    posters: Vec<(Channel, Vec<User>)>,
}

/// Each guild: its owner, its other members.
const GUILDS: [(&str, &str, &[&str]); 2] = [
    ("A", "alice", &["carol", "dave", "erin", "frank"]),
    ("B", "bob", &["carol", "erin", "frank"]),
];

/// The sockets: who, on which channel (guild and number).
const WATCHERS: [(&str, &str); 12] = [
    ("alice", "A1"),
    ("alice", "A2"),
    ("bob", "B1"),
    ("bob", "B2"),
    ("carol", "A1"),
    ("carol", "B1"),
    ("carol", "B2"),
    ("dave", "A2"),
    ("erin", "A1"),
    ("erin", "B2"),
    ("frank", "A2"),
    ("frank", "B1"),
];

impl World {
    async fn create(cluster: &Cluster) -> Self {
        let mut users = BTreeMap::new();
        for name in ["alice", "bob", "carol", "dave", "erin", "frank"] {
            users.insert(name, register(cluster, name).await);
        }
        let mut text_channels = Vec::new();
        let mut posters = Vec::new();
        let mut voice_channels = Vec::new();
        for (guild, owner, members) in GUILDS {
            let mut everyone = vec![users[owner].clone()];
            everyone.extend(members.iter().map(|member| users[member].clone()));
            let guild_id = public_guild(cluster, guild, &everyone).await;
            let owner = &everyone[0];
            for n in 1..=2 {
                let label = format!("{guild}{n}");
                let channel = channel(cluster, owner, &guild_id, &label, "text").await;
                text_channels.push(channel.clone());
                posters.push((channel, everyone.clone()));
            }
            let label = format!("{guild}-voice");
            voice_channels.push(channel(cluster, owner, &guild_id, &label, "voice").await);
        }
        Self {
            users,
            text_channels,
            voice_channel: voice_channels.swap_remove(0),
            posters,
        }
    }

    fn channel(&self, label: &str) -> &Channel {
        self.text_channels
            .iter()
            .find(|c| c.label == label)
            .expect("a channel of the world")
    }
}

async fn register(cluster: &Cluster, name: &'static str) -> User {
    let unique = &ulid::Ulid::generate().to_string()[20..];
    let username = format!("{name}_{unique}").to_lowercase();
    let credentials = json!({"username": username, "password": PASSWORD});
    let send = |path: &str| {
        cluster
            .http
            .post(cluster.api_url(path))
            .json(&credentials)
            .send()
    };
    let registered = send("/auth/register").await.expect("register");
    assert_eq!(registered.status(), 200, "register {name}");
    let login: Value = send("/auth/login")
        .await
        .expect("login")
        .json()
        .await
        .expect("login body");
    let token = login["access_token"].as_str().expect("token").to_owned();
    let me: Value = cluster
        .http
        .get(cluster.api_url("/auth/me"))
        .bearer_auth(&token)
        .send()
        .await
        .expect("me")
        .json()
        .await
        .expect("me body");
    User {
        name,
        id: me["user_id"].as_str().expect("user id").to_owned(),
        token,
    }
}

/// A guild owned by the first of `members`, which the others join.
async fn public_guild(cluster: &Cluster, name: &str, members: &[User]) -> String {
    let body = json!({"name": name, "visibility": "public"});
    let guild = posted(cluster, "/guilds", &members[0], body).await;
    let guild_id = guild["guild_id"].as_str().expect("guild id").to_owned();
    for member in &members[1..] {
        let path = format!("/guilds/{guild_id}/join");
        let joined = posted(cluster, &path, member, json!(null)).await;
        assert_eq!(joined["outcome"], "accepted", "{joined}");
    }
    guild_id
}

/// A POST through the api's Service that must succeed; the answer.
async fn posted(cluster: &Cluster, path: &str, user: &User, body: Value) -> Value {
    let response = cluster
        .http
        .post(cluster.api_url(path))
        .bearer_auth(&user.token)
        .json(&body)
        .send()
        .await
        .unwrap_or_else(|err| panic!("POST {path}: {err}"));
    let status = response.status().as_u16();
    let body = response.json().await.unwrap_or(Value::Null);
    assert_eq!(status, 200, "POST {path}: {body}");
    body
}

async fn channel(
    cluster: &Cluster,
    owner: &User,
    guild_id: &str,
    name: &str,
    kind: &str,
) -> Channel {
    let body = posted(
        cluster,
        &format!("/guilds/{guild_id}/channels"),
        owner,
        json!({"name": name, "kind": kind}),
    )
    .await;
    Channel {
        label: name.to_owned(),
        guild_id: guild_id.to_owned(),
        channel_id: body["channel_id"].as_str().expect("channel id").to_owned(),
    }
}

// --- clients -----------------------------------------------------------------

/// What one socket received, and how it ended if it did.
#[derive(Default)]
struct Record {
    frames: Vec<Value>,
    closed: Option<String>,
}

/// A websocket subscribed to one channel, whose every frame is recorded.
struct Client {
    label: String,
    channel_id: String,
    record: Arc<Mutex<Record>>,
    reader: JoinHandle<()>,
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

impl Client {
    /// Connects to `gateway` as `user`, subscribes to `channel`, and
    /// returns once subscribed, with the channel's voice roster that
    /// followed the acknowledgement.
    async fn connect(gateway: SocketAddr, user: &User, channel: &Channel) -> (Self, Value) {
        let label = format!("{}@{gateway}/{}", user.name, channel.label);
        let (mut ws, _) = tokio_tungstenite::connect_async(format!(
            "ws://{gateway}/gateway/ws?access_token={}",
            user.token
        ))
        .await
        .unwrap_or_else(|err| panic!("{label} connects: {err}"));
        let mut record = Record::default();
        let ready = next_frame(&mut ws, &label, &mut record).await;
        assert_eq!(ready["t"], "ready", "{label}: {ready}");
        let subscribe = json!({"v": 1, "t": "subscribe", "d": {"guild_id": channel.guild_id, "channel_id": channel.channel_id}});
        ws.send(Message::Text(subscribe.to_string().into()))
            .await
            .expect("subscribe sent");
        let mut subscribed = false;
        let roster = loop {
            let frame = next_frame(&mut ws, &label, &mut record).await;
            subscribed |= frame["t"] == "subscribed";
            if subscribed
                && frame["t"] == "voice_participant_sync"
                && frame["d"]["channel_id"] == channel.channel_id.as_str()
            {
                break frame;
            }
        };
        let record = Arc::new(Mutex::new(record));
        let reader = tokio::spawn(record_frames(ws, Arc::clone(&record)));
        let client = Self {
            label,
            channel_id: channel.channel_id.clone(),
            record,
            reader,
        };
        (client, roster)
    }

    /// How many times each message was delivered, and any delivered
    /// message of another channel.
    fn deliveries(&self) -> (HashMap<String, usize>, Vec<String>) {
        let record = self.record.lock().expect("record");
        let mut counts = HashMap::new();
        let mut strays = Vec::new();
        for frame in record.frames.iter().filter(|f| f["t"] == "message_create") {
            let id = frame["d"]["message_id"].as_str().expect("message id");
            if frame["d"]["channel_id"] != self.channel_id.as_str() {
                strays.push(id.to_owned());
            }
            *counts.entry(id.to_owned()).or_insert(0) += 1;
        }
        (counts, strays)
    }

    fn closed(&self) -> Option<String> {
        self.record.lock().expect("record").closed.clone()
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// The next text frame, recorded; fails on anything else before it.
async fn next_frame(ws: &mut Ws, label: &str, record: &mut Record) -> Value {
    loop {
        let frame = tokio::time::timeout(DEADLINE, ws.next())
            .await
            .unwrap_or_else(|_| panic!("{label}: no frame before the deadline"));
        match frame {
            Some(Ok(Message::Text(text))) => {
                let value: Value = serde_json::from_str(&text).expect("a JSON frame");
                record.frames.push(value.clone());
                return value;
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
            other => panic!("{label}: {other:?} while subscribing"),
        }
    }
}

/// Records every frame until the socket ends, and how it ended.
async fn record_frames(mut ws: Ws, record: Arc<Mutex<Record>>) {
    let closed = loop {
        match ws.next().await {
            Some(Ok(Message::Text(text))) => {
                let value = serde_json::from_str(&text).unwrap_or(Value::String(text.to_string()));
                record.lock().expect("record").frames.push(value);
            }
            Some(Ok(Message::Close(close))) => {
                break close.map_or("close without a code".to_owned(), |c| {
                    format!("close {} {}", u16::from(c.code), c.reason)
                });
            }
            Some(Ok(_)) => {}
            Some(Err(err)) => break format!("error: {err}"),
            None => break "ended".to_owned(),
        }
    };
    record.lock().expect("record").closed = Some(closed);
}

// --- the load ------------------------------------------------------------------

/// Every acknowledged message, per channel id.
#[derive(Default)]
struct Ledger {
    acknowledged: Mutex<BTreeMap<String, Vec<String>>>,
    retries: AtomicUsize,
}

impl Ledger {
    fn count(&self) -> usize {
        self.acknowledged
            .lock()
            .expect("ledger")
            .values()
            .map(Vec::len)
            .sum()
    }

    fn of(&self, channel_id: &str) -> Vec<String> {
        self.acknowledged
            .lock()
            .expect("ledger")
            .get(channel_id)
            .cloned()
            .unwrap_or_default()
    }

    fn known(&self, message_id: &str) -> bool {
        self.acknowledged
            .lock()
            .expect("ledger")
            .values()
            .any(|ids| ids.iter().any(|id| id == message_id))
    }
}

/// The steady load, running until [`Load::finish`].
struct Load {
    ledger: Arc<Ledger>,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Load {
    fn start(cluster: &Cluster, world: &World) -> Self {
        let ledger = Arc::new(Ledger::default());
        let stop = CancellationToken::new();
        let task = tokio::spawn(run_load(
            cluster.http.clone(),
            cluster.api.service_url(),
            world.posters.clone(),
            Arc::clone(&ledger),
            stop.clone(),
        ));
        Self { ledger, stop, task }
    }

    /// Waits for another half second's worth of acknowledged posts.
    async fn progress(&self) {
        let target = self.ledger.count() + usize::try_from(POSTS_PER_SECOND / 2).expect("small");
        eventually("the load goes on", || self.ledger.count() >= target).await;
    }

    /// Stops posting, and waits for every post in flight to be answered.
    async fn finish(self) -> Arc<Ledger> {
        self.stop.cancel();
        self.task.await.expect("the load");
        self.ledger
    }
}

/// Posts [`POSTS_PER_SECOND`] messages, round-robin over the channels and
/// their members, until `stop`; then waits for the posts in flight.
async fn run_load(
    http: reqwest::Client,
    api: String,
    posters: Vec<(Channel, Vec<User>)>,
    ledger: Arc<Ledger>,
    stop: CancellationToken,
) {
    let mut ticks = tokio::time::interval(Duration::from_millis(1000 / POSTS_PER_SECOND));
    let mut posts = JoinSet::new();
    for n in 0.. {
        tokio::select! {
            _ = ticks.tick() => {}
            () = stop.cancelled() => break,
        }
        let (channel, members) = &posters[n % posters.len()];
        let author = members[(n / posters.len()) % members.len()].clone();
        let url = format!(
            "{api}/guilds/{}/channels/{}/messages",
            channel.guild_id, channel.channel_id
        );
        posts.spawn(post_until_acknowledged(
            http.clone(),
            url,
            author,
            format!("cluster message m{n}"),
            channel.channel_id.clone(),
            Arc::clone(&ledger),
        ));
    }
    while let Some(done) = posts.join_next().await {
        done.expect("a post task");
    }
}

/// One message, retried under its idempotency key until acknowledged:
/// a retry after a lost answer gets the original message, not a copy.
async fn post_until_acknowledged(
    http: reqwest::Client,
    url: String,
    author: User,
    content: String,
    channel_id: String,
    ledger: Arc<Ledger>,
) {
    let key = ulid::Ulid::generate().to_string();
    let deadline = Instant::now() + DEADLINE;
    loop {
        let sent = http
            .post(&url)
            .bearer_auth(&author.token)
            .header("idempotency-key", &key)
            .json(&json!({"content": content}))
            .timeout(Duration::from_secs(5))
            .send()
            .await;
        match sent {
            Ok(response) if response.status().is_success() => {
                let message: Value = response.json().await.expect("a message");
                let id = message["message_id"]
                    .as_str()
                    .expect("message id")
                    .to_owned();
                ledger
                    .acknowledged
                    .lock()
                    .expect("ledger")
                    .entry(channel_id)
                    .or_default()
                    .push(id);
                return;
            }
            Ok(response) if response.status().is_server_error() => {}
            Ok(response) => {
                let status = response.status();
                panic!(
                    "post refused {status}: {}",
                    response.text().await.unwrap_or_default()
                );
            }
            Err(_) => {}
        }
        ledger.retries.fetch_add(1, Ordering::Relaxed);
        assert!(Instant::now() < deadline, "{content} never acknowledged");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// --- checks ------------------------------------------------------------------

/// Polls `done` until it holds, failing with `what` after [`DEADLINE`].
async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !done() {
        assert!(Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Acknowledged messages of its channel a client has not received yet.
fn missing(client: &Client, ledger: &Ledger) -> usize {
    let (counts, _) = client.deliveries();
    ledger
        .of(&client.channel_id)
        .iter()
        .filter(|id| !counts.contains_key(*id))
        .count()
}

/// Everything wrong with what the clients received; and the deliveries.
fn audit(clients: &[Client], ledger: &Ledger) -> (Vec<String>, usize) {
    let mut problems = Vec::new();
    let mut deliveries = 0;
    for client in clients {
        let (counts, strays) = client.deliveries();
        deliveries += counts.values().sum::<usize>();
        for id in ledger.of(&client.channel_id) {
            match counts.get(&id).copied().unwrap_or(0) {
                1 => {}
                n => problems.push(format!(
                    "{}: message {id} delivered {n} times",
                    client.label
                )),
            }
        }
        for id in strays {
            problems.push(format!("{}: message {id} of another channel", client.label));
        }
        for id in counts.keys().filter(|id| !ledger.known(id)) {
            problems.push(format!(
                "{}: message {id} was never acknowledged",
                client.label
            ));
        }
        if let Some(closed) = client.closed() {
            problems.push(format!("{}: {closed}", client.label));
        }
    }
    (problems, deliveries)
}

fn participants(roster: &Value) -> BTreeSet<String> {
    roster["d"]["participants"]
        .as_array()
        .expect("participants")
        .iter()
        .map(|p| p["user_id"].as_str().expect("user id").to_owned())
        .collect()
}

/// Polls search until `message_id` is found by its word.
async fn found_by_search(
    cluster: &Cluster,
    user: &User,
    guild_id: &str,
    word: &str,
    message_id: &str,
) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let answer: Option<Value> = async {
            let response = cluster
                .http
                // The word is letters and digits: nothing to escape.
                .get(cluster.api_url(&format!("/guilds/{guild_id}/search?q={word}")))
                .bearer_auth(&user.token)
                .send()
                .await
                .ok()?;
            response.json().await.ok()
        }
        .await;
        let ids = answer.as_ref().and_then(|a| a["message_ids"].as_array());
        if ids.is_some_and(|ids| ids.iter().any(|id| id == message_id)) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "search never found {word}: {answer:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// --- the test ------------------------------------------------------------------

/// How long each phase took, for the summary.
struct Phases(Vec<(String, Duration)>, Instant);

impl Default for Phases {
    fn default() -> Self {
        Self(Vec::new(), Instant::now())
    }
}

impl Phases {
    /// The phase that ends now.
    fn mark(&mut self, name: &str) {
        self.0.push((name.to_owned(), self.1.elapsed()));
        self.restart();
    }

    /// A phase timed elsewhere.
    fn record(&mut self, name: String, took: Duration) {
        self.0.push((name, took));
        self.restart();
    }

    fn restart(&mut self) {
        self.1 = Instant::now();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rolling_every_producer_costs_clients_nothing() {
    let (Ok(pg), Ok(redis)) = (
        std::env::var("TEST_DATABASE_URL"),
        std::env::var("TEST_REDIS_URL"),
    ) else {
        eprintln!(
            "SKIPPED: TEST_DATABASE_URL or TEST_REDIS_URL is unset; \
             the multi-process cluster test was NOT run"
        );
        return;
    };
    let mut phases = Phases::default();
    let binaries = tokio::task::spawn_blocking(support::workspace_binaries)
        .await
        .expect("build");
    phases.mark("build binaries");
    let (schema, database_url) = fresh_schema(&pg).await;
    let mut cluster = Cluster::start(binaries, database_url, redis).await;
    phases.mark("start 11 processes");
    let world = World::create(&cluster).await;
    let mut clients = watchers(&cluster, &world).await;
    phases.mark("users, guilds, 12 sockets");

    let load = Load::start(&cluster, &world);
    load.progress().await;
    phases.mark("load under way");
    for producer in Producer::ALL {
        for n in 0..2 {
            let took = cluster.roll(producer).await;
            phases.record(format!("roll {producer:?} replica {n}"), took);
            // The new replica takes its share before the next one goes.
            load.progress().await;
        }
    }
    phases.restart();
    clients.push(voice_survives_a_crash(&mut cluster, &world, &mut phases).await);

    let ledger = load.finish().await;
    eventually("every client has every message of its channel", || {
        clients.iter().all(|client| missing(client, &ledger) == 0)
    })
    .await;
    phases.mark("stop the load, drain");
    let (problems, deliveries) = audit(&clients, &ledger);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    search_and_store_agree(&cluster, &world, &clients, &ledger, (&pg, &schema)).await;
    phases.mark("search and store checks");

    eprintln!(
        "cluster: {} messages acknowledged ({} retries), {deliveries} deliveries to {} clients, none closed",
        ledger.count(),
        ledger.retries.load(Ordering::Relaxed),
        clients.len(),
    );
    for (name, took) in &phases.0 {
        eprintln!("  {name:<40} {:>6.2} s", took.as_secs_f64());
    }
    drop(clients);
    cluster.stop().await;
}

/// The [`WATCHERS`]' sockets, spread over the gateways, each subscribed.
async fn watchers(cluster: &Cluster, world: &World) -> Vec<Client> {
    let mut clients = Vec::new();
    for (n, (user, channel)) in WATCHERS.iter().enumerate() {
        let gateway = cluster.gateways[n % cluster.gateways.len()].addrs[0];
        let user = &world.users[user];
        let (client, _) = Client::connect(gateway, user, world.channel(channel)).await;
        clients.push(client);
    }
    clients
}

/// Two users take seats in voice, and a voice replica crashes; the roster
/// is in Redis, so a socket subscribing afterwards still sees both. That
/// socket, to be watched with the others.
async fn voice_survives_a_crash(
    cluster: &mut Cluster,
    world: &World,
    phases: &mut Phases,
) -> Client {
    let voice = &world.voice_channel;
    let path = format!(
        "/guilds/{}/channels/{}/voice/token",
        voice.guild_id, voice.channel_id
    );
    let mut seated = BTreeSet::new();
    for name in ["dave", "erin"] {
        let user = &world.users[name];
        posted(cluster, &path, user, json!({})).await;
        seated.insert(user.id.clone());
    }
    let took = cluster.kill_and_replace(Producer::Voice).await;
    phases.record("SIGKILL a voice replica, replace it".to_owned(), took);
    let gateway = cluster.gateways[2].addrs[0];
    let (client, roster) = Client::connect(gateway, &world.users["alice"], voice).await;
    assert_eq!(participants(&roster), seated, "{roster}");
    phases.mark("voice roster after the crash");
    client
}

/// The index followed the api's feed through both of its rolls (it finds
/// the last message of a channel), and the idempotent retries wrote
/// nothing twice (the schema holds exactly the acknowledged messages).
async fn search_and_store_agree(
    cluster: &Cluster,
    world: &World,
    clients: &[Client],
    ledger: &Ledger,
    (pg, schema): (&str, &str),
) {
    let (channel, members) = &world.posters[0];
    let last = ledger.of(&channel.channel_id).pop().expect("a message");
    let word = search_word(clients, &last);
    found_by_search(cluster, &members[0], &channel.guild_id, &word, &last).await;
    let stored = messages_in_schema(pg, schema).await;
    assert_eq!(
        usize::try_from(stored).expect("a count"),
        ledger.count(),
        "messages stored vs acknowledged"
    );
}

/// The word of the load's content that only `message_id` has.
fn search_word(clients: &[Client], message_id: &str) -> String {
    let content = clients
        .iter()
        .find_map(|client| {
            let record = client.record.lock().expect("record");
            record
                .frames
                .iter()
                .find(|f| f["t"] == "message_create" && f["d"]["message_id"] == message_id)
                .map(|f| f["d"]["content"].as_str().expect("content").to_owned())
        })
        .expect("the message was delivered");
    content.rsplit(' ').next().expect("a word").to_owned()
}
