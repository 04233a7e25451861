//! The multi-process cluster's plumbing, shared by the cluster test
//! (`tests/cluster.rs`) and the cluster benchmark (`benches/cluster.rs`),
//! which include this file by path: every service as separate OS
//! processes from the built binaries, as many replicas of each as a
//! [`Layout`] says, on the machine's Postgres (a schema of the caller's
//! own, [`fresh_schema`]) and Redis (a key prefix of the cluster's own).
//!
//! On one host the cluster's plumbing is the caller's own:
//!
//! - a **Service** is an in-process TCP proxy ([`Proxy`]) that hands each
//!   connection to one of its current backends, round-robin; every unary
//!   caller (gateways calling the api, presence and voice; the api calling
//!   voice and search; presence calling voice; search following the api's
//!   feed) is given the proxy's address;
//! - a **headless Service** is a file ([`PeersFile`]) listing one replica
//!   URL per line, which gateways read again every discovery interval to
//!   find the replicas whose event streams they follow.
//!
//! A replica goes behind its proxy only once ready (`/readyz`, or its gRPC
//! health), and a rolling update replaces one replica at a time
//! ([`Cluster::roll`]).
//!
//! It expects the including crate to have the end-to-end harness as
//! `crate::support` (`tests/support/mod.rs`).

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::Child;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use crate::support::{self, DEADLINE};

pub const TOKEN_SECRET: &str = "a-secret-every-replica-of-the-cluster-shares";
pub const INTERNAL_TOKEN: &str = "a-cluster-test-internal-service-token-of-32-bytes";
pub const LIVEKIT_KEY: &str = "APIclustertest";
pub const LIVEKIT_SECRET: &str = "a-cluster-test-livekit-secret-of-32-bytes-or-more";
pub const PASSWORD: &str = "a cluster password of some length";
/// A Postgres schema a cluster ran on; older ones than an hour are swept.
pub const SCHEMA_PREFIX: &str = "cluster_";

// --- binaries --------------------------------------------------------------

/// What each service is to the cluster: its binary, how it says where it
/// listens, and how it says it is ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Api,
    Gateway,
    Presence,
    Voice,
    Search,
}

impl Kind {
    pub fn binary(self) -> &'static str {
        match self {
            Self::Api => "filament-api",
            Self::Gateway => "filament-gateway",
            Self::Presence => "filament-presence",
            Self::Voice => "filament-voice",
            Self::Search => "filament-search",
        }
    }

    pub fn short(self) -> &'static str {
        &self.binary()["filament-".len()..]
    }

    /// The log line that names the listeners, and the fields that hold
    /// them, in [`Replica::addrs`] order.
    pub fn listening(self) -> (&'static str, &'static [&'static str]) {
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
    pub fn health_service(self) -> Option<&'static str> {
        match self {
            Self::Api | Self::Gateway => None,
            Self::Presence => Some("filament.v1.Presence"),
            Self::Voice => Some("filament.v1.Voice"),
            Self::Search => Some("filament.v1.Search"),
        }
    }

    /// Which of [`Replica::addrs`] gateways stream events from, if any.
    pub fn stream_listener(self) -> Option<usize> {
        match self {
            Self::Api => Some(1),
            Self::Presence | Self::Voice => Some(0),
            Self::Gateway | Self::Search => None,
        }
    }
}

// --- replicas --------------------------------------------------------------

/// Everything a process logged (JSON lines on stdout).
pub type Log = support::JsonLog;

/// One service process.
pub struct Replica {
    pub name: String,
    pub kind: Kind,
    pub child: Child,
    pub log: Log,
    /// Its listeners, in the order of [`Kind::listening`].
    pub addrs: Vec<SocketAddr>,
}

impl Replica {
    /// Starts `binary` with nothing but `env`, and waits until it says
    /// where it listens.
    pub async fn spawn(name: String, kind: Kind, binary: &Path, env: &[(&str, String)]) -> Self {
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

    pub async fn listeners(&mut self) -> Vec<SocketAddr> {
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
    pub fn stream_url(&self) -> Option<String> {
        self.kind
            .stream_listener()
            .map(|n| format!("http://{}", self.addrs[n]))
    }

    pub async fn is_ready(&self, http: &reqwest::Client) -> bool {
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

    pub async fn wait_ready(&self, http: &reqwest::Client) {
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

    pub fn signal(&self, signal: &str) {
        let pid = self.child.id().expect("still running");
        let status = std::process::Command::new("kill")
            .args([format!("-{signal}"), pid.to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -{signal} {pid} failed");
    }

    /// SIGTERM, then waits (bounded) for a clean exit.
    pub async fn terminate(mut self) {
        self.signal("TERM");
        let status = tokio::time::timeout(DEADLINE, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("{} did not drain and exit", self.name))
            .expect("wait");
        assert!(status.success(), "{} exited with {status}", self.name);
    }

    /// SIGKILL, as a crash or an OOM kill, and waits for it to be gone.
    pub async fn kill(&mut self) {
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
pub struct Proxy {
    pub addr: SocketAddr,
    pub backends: Arc<Mutex<Vec<SocketAddr>>>,
    pub accept: JoinHandle<()>,
}

impl Proxy {
    pub async fn start() -> Self {
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

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn add(&self, backend: SocketAddr) {
        self.backends.lock().expect("backends").push(backend);
    }

    pub fn remove(&self, backend: SocketAddr) {
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
pub async fn forward(mut client: TcpStream, backends: Vec<SocketAddr>, first: usize) {
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
pub struct PeersFile {
    pub path: PathBuf,
    pub urls: Vec<String>,
}

impl PeersFile {
    pub fn create(path: PathBuf) -> Self {
        let file = Self {
            path,
            urls: Vec::new(),
        };
        file.write();
        file
    }

    pub fn url(&self) -> String {
        format!("file://{}", self.path.display())
    }

    pub fn add(&mut self, url: String) {
        self.urls.push(url);
        self.write();
    }

    pub fn remove(&mut self, url: &str) {
        self.urls.retain(|u| u != url);
        self.write();
    }

    /// Replaces the file whole, so a reader never sees half of it.
    pub fn write(&self) {
        let next = self.path.with_extension("next");
        std::fs::write(&next, self.urls.join("\n") + "\n").expect("write peers");
        std::fs::rename(&next, &self.path).expect("replace peers");
    }
}

// --- the cluster -----------------------------------------------------------

/// The replicas of one producer, its Services (one per listener callers
/// use, in [`Replica::addrs`] order) and its headless Service.
pub struct Tier {
    pub kind: Kind,
    pub replicas: Vec<Replica>,
    pub proxies: Vec<Proxy>,
    pub peers: Option<PeersFile>,
}

impl Tier {
    pub async fn new(kind: Kind, dir: &Path) -> Self {
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
    pub fn service_url(&self) -> String {
        self.proxies[0].url()
    }

    pub fn peers_url(&self) -> String {
        self.peers.as_ref().expect("a headless Service").url()
    }

    pub fn list(&mut self, replica: &Replica) {
        if let (Some(peers), Some(url)) = (&mut self.peers, replica.stream_url()) {
            peers.add(url);
        }
    }

    pub fn unlist(&mut self, replica: &Replica) {
        if let (Some(peers), Some(url)) = (&mut self.peers, replica.stream_url()) {
            peers.remove(&url);
        }
    }

    pub fn route_to(&self, replica: &Replica) {
        for (proxy, addr) in self.proxies.iter().zip(&replica.addrs) {
            proxy.add(*addr);
        }
    }

    pub fn route_away_from(&self, replica: &Replica) {
        for (proxy, addr) in self.proxies.iter().zip(&replica.addrs) {
            proxy.remove(*addr);
        }
    }
}

/// The producers, each rolled in turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Producer {
    Api,
    Presence,
    Voice,
    Search,
}

/// How many replicas of each service a [`Cluster`] runs, and what every
/// process is given on top of the cluster's own settings.
#[derive(Debug, Clone)]
pub struct Layout {
    pub api: usize,
    pub gateways: usize,
    pub presence: usize,
    pub voice: usize,
    pub search: usize,
    /// Added to every process's environment, after (so over) the
    /// cluster's own variables.
    pub env: Vec<(&'static str, String)>,
}

pub struct Cluster {
    pub layout: Layout,
    pub binaries: PathBuf,
    pub database_url: String,
    pub redis_url: String,
    pub prefix: String,
    pub api: Tier,
    pub presence: Tier,
    pub voice: Tier,
    pub search: Tier,
    pub gateways: Vec<Replica>,
    pub spawned: AtomicUsize,
    /// Every process's log, retired ones included, for a failure's report.
    pub logs: Mutex<Vec<(String, Log)>>,
    pub http: reqwest::Client,
    /// The peers files and attachments; last, so it goes after the
    /// processes (fields drop in order).
    pub dir: tempfile::TempDir,
}

impl Cluster {
    /// Every service, as many replicas as `layout` says (at least one
    /// api), ready, each replica behind its Service.
    pub async fn start(
        binaries: PathBuf,
        database_url: String,
        redis_url: String,
        layout: Layout,
    ) -> Self {
        assert!(layout.api >= 1, "a cluster needs an api replica");
        let dir = tempfile::tempdir().expect("temp dir");
        let mut cluster = Self {
            api: Tier::new(Kind::Api, dir.path()).await,
            presence: Tier::new(Kind::Presence, dir.path()).await,
            voice: Tier::new(Kind::Voice, dir.path()).await,
            search: Tier::new(Kind::Search, dir.path()).await,
            dir,
            layout: layout.clone(),
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
            cluster.spawn_many(Kind::Api, layout.api - 1),
            cluster.spawn_many(Kind::Presence, layout.presence),
            cluster.spawn_many(Kind::Voice, layout.voice),
            cluster.spawn_many(Kind::Search, layout.search),
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
        cluster.gateways = cluster.spawn_many(Kind::Gateway, layout.gateways).await;
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

    pub fn tier(&self, producer: Producer) -> &Tier {
        match producer {
            Producer::Api => &self.api,
            Producer::Presence => &self.presence,
            Producer::Voice => &self.voice,
            Producer::Search => &self.search,
        }
    }

    pub fn tier_mut(&mut self, producer: Producer) -> &mut Tier {
        match producer {
            Producer::Api => &mut self.api,
            Producer::Presence => &mut self.presence,
            Producer::Voice => &mut self.voice,
            Producer::Search => &mut self.search,
        }
    }

    /// What a process of `kind` is started with: the shared settings, and
    /// its listeners, peers and Services.
    pub fn env(&self, kind: Kind) -> Vec<(&'static str, String)> {
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
                // The loads (the test's 20/s, the benchmark's flood) are
                // not what the per-user limiter is about.
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
        env.extend(self.layout.env.iter().cloned());
        env
    }

    pub async fn spawn(&self, kind: Kind) -> Replica {
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

    pub async fn spawn_many(&self, kind: Kind, count: usize) -> Vec<Replica> {
        futures_util::future::join_all((0..count).map(|_| self.spawn(kind))).await
    }

    /// Lists `replica` for the gateways, waits until it is ready, and puts
    /// it behind its Services.
    pub async fn bring_up(&mut self, producer: Producer, replica: Replica) {
        self.tier_mut(producer).list(&replica);
        replica.wait_ready(&self.http).await;
        let tier = self.tier_mut(producer);
        tier.route_to(&replica);
        tier.replicas.push(replica);
    }

    /// Replaces the oldest replica of `producer` with a new one, the way a
    /// Deployment's rolling update does (maxSurge 1, maxUnavailable 0).
    pub async fn roll(&mut self, producer: Producer) -> Duration {
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

    /// SIGKILLs the oldest replica of `producer` while it takes requests,
    /// takes it out of its Services once dead (as the endpoints controller
    /// would, late), and brings up a replacement.
    pub async fn kill_and_replace(&mut self, producer: Producer) -> Duration {
        let started = Instant::now();
        let tier = self.tier_mut(producer);
        let kind = tier.kind;
        let mut old = tier.replicas.remove(0);
        old.kill().await;
        tier.route_away_from(&old);
        tier.unlist(&old);
        let new = self.spawn(kind).await;
        self.bring_up(producer, new).await;
        started.elapsed()
    }

    /// Starts one more gateway, waits until it is ready, and adds it to
    /// [`gateways`](Self::gateways), last; its address. The way a fault
    /// test brings the gateways back to strength after one died.
    pub async fn add_gateway(&mut self) -> SocketAddr {
        let gateway = self.spawn(Kind::Gateway).await;
        gateway.wait_ready(&self.http).await;
        let addr = gateway.addrs[0];
        self.gateways.push(gateway);
        addr
    }

    /// Takes the gateway listening on `addr` out of
    /// [`gateways`](Self::gateways), to be killed or terminated.
    pub fn take_gateway(&mut self, addr: SocketAddr) -> Replica {
        let n = self
            .gateways
            .iter()
            .position(|gateway| gateway.addrs[0] == addr)
            .unwrap_or_else(|| panic!("no gateway on {addr}"));
        self.gateways.remove(n)
    }

    /// Kills every process, then forgets the keys they left in Redis.
    pub async fn stop(mut self) {
        let mut replicas = std::mem::take(&mut self.gateways);
        for producer in Producer::ALL {
            replicas.append(&mut self.tier_mut(producer).replicas);
        }
        futures_util::future::join_all(replicas.iter_mut().map(Replica::kill)).await;
        let Ok(client) = redis::Client::open(self.redis_url.as_str()) else {
            return;
        };
        let Ok(mut redis) = client.get_multiplexed_async_connection().await else {
            return;
        };
        // Only this cluster's own prefix, and only in a test or benchmark:
        // KEYS is fine.
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

    pub fn api_url(&self, path: &str) -> String {
        format!("{}{path}", self.api.service_url())
    }
}

impl Producer {
    pub const ALL: [Self; 4] = [Self::Api, Self::Presence, Self::Voice, Self::Search];
}

impl Drop for Cluster {
    /// A failing run says what the services warned about.
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

/// A fresh schema of the caller's own (older ones from earlier runs are
/// dropped first), and the `DATABASE_URL` that selects it: sqlx sends the
/// URL's `options` as startup parameters, so every pooled connection of
/// every api replica starts with that `search_path`.
pub async fn fresh_schema(url: &str) -> (String, String) {
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

// --- users, guilds, channels ----------------------------------------------

#[derive(Debug, Clone)]
pub struct User {
    pub name: String,
    pub id: String,
    pub token: String,
}

#[derive(Debug, Clone)]
pub struct Channel {
    pub label: String,
    pub guild_id: String,
    pub channel_id: String,
}

/// Registers and logs in a user named `name` and a unique suffix.
pub async fn register(cluster: &Cluster, name: &str) -> User {
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
        name: name.to_owned(),
        id: me["user_id"].as_str().expect("user id").to_owned(),
        token,
    }
}

/// A guild owned by the first of `members`, which the others join.
pub async fn public_guild(cluster: &Cluster, name: &str, members: &[User]) -> String {
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
pub async fn posted(cluster: &Cluster, path: &str, user: &User, body: Value) -> Value {
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

pub async fn channel(
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

// --- sockets -------------------------------------------------------------------

pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A socket to `gateway` as `user`, subscribed to `channel`: returned once
/// subscribed, with every text frame read so far and the channel's voice
/// roster that followed the acknowledgement. `label` names it in failures.
pub async fn subscribed_socket(
    gateway: SocketAddr,
    user: &User,
    channel: &Channel,
    label: &str,
) -> (Ws, Vec<Value>, Value) {
    let (mut ws, _) = tokio_tungstenite::connect_async(format!(
        "ws://{gateway}/gateway/ws?access_token={}",
        user.token
    ))
    .await
    .unwrap_or_else(|err| panic!("{label} connects: {err}"));
    let mut frames = Vec::new();
    let ready = next_frame(&mut ws, label, &mut frames).await;
    assert_eq!(ready["t"], "ready", "{label}: {ready}");
    let subscribe = json!({"v": 1, "t": "subscribe", "d": {"guild_id": channel.guild_id, "channel_id": channel.channel_id}});
    ws.send(Message::Text(subscribe.to_string().into()))
        .await
        .expect("subscribe sent");
    let mut subscribed = false;
    let roster = loop {
        let frame = next_frame(&mut ws, label, &mut frames).await;
        subscribed |= frame["t"] == "subscribed";
        if subscribed
            && frame["t"] == "voice_participant_sync"
            && frame["d"]["channel_id"] == channel.channel_id.as_str()
        {
            break frame;
        }
    };
    (ws, frames, roster)
}

/// The next text frame, kept in `frames`; fails on anything else before it.
async fn next_frame(ws: &mut Ws, label: &str, frames: &mut Vec<Value>) -> Value {
    loop {
        let frame = tokio::time::timeout(DEADLINE, ws.next())
            .await
            .unwrap_or_else(|_| panic!("{label}: no frame before the deadline"));
        match frame {
            Some(Ok(Message::Text(text))) => {
                let value: Value = serde_json::from_str(&text).expect("a JSON frame");
                frames.push(value.clone());
                return value;
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
            other => panic!("{label}: {other:?} while subscribing"),
        }
    }
}

/// How a socket's frames ended: the server's close code and reason, or what
/// else ended the stream.
pub fn end_of(frame: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>) -> String {
    match frame {
        Some(Ok(Message::Close(close))) => close.map_or("close without a code".to_owned(), |c| {
            format!("close {} {}", u16::from(c.code), c.reason)
        }),
        Some(Ok(other)) => format!("unexpected frame {other:?}"),
        Some(Err(err)) => format!("error: {err}"),
        None => "ended".to_owned(),
    }
}
