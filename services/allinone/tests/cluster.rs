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
//! After every producer was rolled, an api replica is SIGKILLed mid-stream,
//! under the load and a burst of [`BURST`] posts sent at once (some commit
//! there unanswered and are retried under their keys on the other
//! replica): its gateways' streams break, the events they had not
//! acknowledged stay in the outbox and the other replica's relay publishes
//! them again, and the gateways keep their sockets
//! (docs/adr/0010-durable-event-stream.md). Then a voice replica is
//! SIGKILLed with two users in voice: the roster lives in Redis, so a
//! socket subscribing afterwards is still told about both. At the end every
//! acknowledged message must have reached every client subscribed to its
//! channel exactly once, no client may have seen another channel's message,
//! and no client may have been closed.

#[path = "support/cluster.rs"]
mod cluster;
mod support;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cluster::{
    Channel, Cluster, Layout, Producer, User, Ws, channel, fresh_schema, posted, public_guild,
    register, subscribed_socket,
};
use futures_util::StreamExt as _;
use serde_json::{Value, json};
use support::DEADLINE;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

/// The steady load.
const POSTS_PER_SECOND: u64 = 20;
/// Posts sent at once just before an api replica is SIGKILLed.
const BURST: usize = 64;

/// The cluster: two api, three gateways, two of every other producer.
fn layout() -> Layout {
    Layout {
        api: 2,
        gateways: 3,
        presence: 2,
        voice: 2,
        search: 2,
        env: Vec::new(),
    }
}

// --- Postgres --------------------------------------------------------------

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

impl Client {
    /// Connects to `gateway` as `user`, subscribes to `channel`, and
    /// returns once subscribed, with the channel's voice roster that
    /// followed the acknowledgement.
    async fn connect(gateway: SocketAddr, user: &User, channel: &Channel) -> (Self, Value) {
        let label = format!("{}@{gateway}/{}", user.name, channel.label);
        let (ws, frames, roster) = subscribed_socket(gateway, user, channel, &label).await;
        let record = Arc::new(Mutex::new(Record {
            frames,
            closed: None,
        }));
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

/// Records every frame until the socket ends, and how it ended.
async fn record_frames(mut ws: Ws, record: Arc<Mutex<Record>>) {
    let closed = loop {
        match ws.next().await {
            Some(Ok(Message::Text(text))) => {
                let value = serde_json::from_str(&text).unwrap_or(Value::String(text.to_string()));
                record.lock().expect("record").frames.push(value);
            }
            Some(Ok(message)) if !message.is_close() => {}
            other => break cluster::end_of(other),
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

    /// Sends `count` posts at once, to be in flight when a replica dies;
    /// they go in the ledger, like the load's, once acknowledged.
    fn burst(&self, cluster: &Cluster, world: &World, count: usize) -> JoinSet<()> {
        let api = cluster.api.service_url();
        let mut posts = JoinSet::new();
        for n in 0..count {
            posts.spawn(nth_post(
                &cluster.http,
                &api,
                &world.posters,
                "burst b",
                n,
                &self.ledger,
            ));
        }
        posts
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
        posts.spawn(nth_post(&http, &api, &posters, "message m", n, &ledger));
    }
    while let Some(done) = posts.join_next().await {
        done.expect("a post task");
    }
}

/// The `n`th post of a series (`label` tells the series apart in the
/// content), round-robin over the channels and their members.
fn nth_post(
    http: &reqwest::Client,
    api: &str,
    posters: &[(Channel, Vec<User>)],
    label: &str,
    n: usize,
    ledger: &Arc<Ledger>,
) -> impl Future<Output = ()> + Send + 'static {
    let (channel, members) = &posters[n % posters.len()];
    let author = members[(n / posters.len()) % members.len()].clone();
    let url = format!(
        "{api}/guilds/{}/channels/{}/messages",
        channel.guild_id, channel.channel_id
    );
    post_until_acknowledged(
        http.clone(),
        url,
        author,
        format!("cluster {label}{n}"),
        channel.channel_id.clone(),
        Arc::clone(ledger),
    )
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
    let mut cluster = Cluster::start(binaries, database_url, redis, layout()).await;
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
    // A burst in flight as the api replica dies: some posts reach it and
    // commit unanswered, some never reach it. Retries under their keys and
    // the surviving replica's relay must make each count exactly once.
    let mut burst = load.burst(&cluster, &world, BURST);
    let took = cluster.kill_and_replace(Producer::Api).await;
    while let Some(done) = burst.join_next().await {
        done.expect("a burst post");
    }
    phases.record(format!("SIGKILL an api replica under {BURST} posts"), took);
    load.progress().await;
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
