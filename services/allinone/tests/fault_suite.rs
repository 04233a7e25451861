//! The fault suite of issue 12: one multi-process cluster (one api, two
//! gateways, one presence, one voice, one search) on the machine's
//! Postgres (a schema of its own) and a `redis-server` of the suite's own
//! (so that it can stop it and start it again empty), put through nine
//! faults in turn under a steady load, with an accounting after each.
//!
//! The load: a poster sends [`POSTS_PER_SECOND`] messages a second to one
//! channel through the api's Service, each retried under its
//! `Idempotency-Key` until acknowledged; and [`CLIENTS`] users each hold
//! one resilient socket (`positions=1`) subscribed to that channel, on the
//! gateways alternately. A resilient client does what
//! docs/adr/0011-resume.md asks of one: it keeps the newest position per
//! log, pings every [`PING_EVERY`] and gives a socket up when no pong came
//! within [`PONG_DEADLINE`], reconnects to the gateways in turn, sends
//! `resume` with the positions it held when the old socket ended, then
//! subscribes again, and waits for each log's `resumed`. When it is told
//! to resynchronise (a guild `resumed` with `resync`, a 4011 close, or no
//! position held for the guild) it refetches the channel's history.
//!
//! The faults: a gateway SIGKILLed, SIGTERMed and SIGSTOPped; Redis
//! restarted empty after a short and a long outage; the api, presence and
//! voice SIGKILLed; and the messages table locked for longer than the
//! api's request timeout. After each, once the load has gone on for a
//! while: every acknowledged message is in the channel's history, and
//! every client has each one exactly once, live or replayed, or, only if
//! it was told to resynchronise, from its refetch. A client that misses a
//! message without being told is stale: never acceptable. A failure names
//! each stale client with its journal (sockets, closes, resumes), where
//! the epochs of its positions changed, and how the messages around the
//! first one it misses reached it.
//!
//! Run it with `--nocapture` to see one line per fault and the table at
//! the end. It takes about two minutes after the build.

#[path = "support/cluster.rs"]
mod cluster;
#[path = "support/redis_server.rs"]
mod redis_server;
mod support;

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cluster::{
    Channel, Cluster, Layout, Producer, User, Ws, channel, fresh_schema, public_guild, register,
};
use futures_util::{SinkExt as _, StreamExt as _};
use redis_server::RedisServer;
use serde_json::{Value, json};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;
use ulid::Ulid;

/// Users with one resilient socket each.
const CLIENTS: usize = 10;
/// The poster's steady rate.
const POSTS_PER_SECOND: u64 = 20;
/// Acknowledged posts to wait for after a fault before the accounting:
/// two seconds of load.
const QUIET_POSTS: usize = 40;

/// A client pings this often…
const PING_EVERY: Duration = Duration::from_secs(1);
/// …and gives the socket up when a ping is this old without a pong.
const PONG_DEADLINE: Duration = Duration::from_secs(3);
/// The upgrade and the `ready` frame, on one gateway.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// From `subscribe` to the channel's voice roster.
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(5);
/// From `resume` to `resumed`.
const RESUMED_TIMEOUT: Duration = Duration::from_secs(10);
/// A client that cannot subscribe again within this long gives up.
const RECONNECT_DEADLINE: Duration = Duration::from_secs(60);
/// A refetch goes back this far before the newest message the client had
/// when it lost its socket: ids are made when a post starts, so a message
/// may commit (and be sent) after one with a newer id.
const REFETCH_MARGIN: Duration = Duration::from_secs(30);

/// A post is retried under its key for this long at most.
const POST_DEADLINE: Duration = Duration::from_secs(60);
/// Longer than the api's 10 s request timeout, so its 408 is seen.
const POST_TIMEOUT: Duration = Duration::from_secs(15);
/// How long the accounting waits for every client to have everything.
const ACCOUNTING_DEADLINE: Duration = Duration::from_secs(30);

/// How long a gateway stays SIGSTOPped.
const FREEZE: Duration = Duration::from_secs(6);
/// Redis outages.
const SHORT_OUTAGE: Duration = Duration::from_secs(1);
const LONG_OUTAGE: Duration = Duration::from_secs(10);
/// The api's REST request timeout (`services/api/src/config.rs`; not
/// read from the environment, so it cannot be shortened here) and how
/// long the messages table stays locked: a few seconds longer.
const API_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const LOCK_HOLD: Duration = Duration::from_secs(13);

/// One api, two gateways, one of every other service.
fn layout() -> Layout {
    Layout {
        api: 1,
        gateways: 2,
        presence: 1,
        voice: 1,
        search: 1,
        env: Vec::new(),
    }
}

/// Milliseconds since the Unix epoch: the clock ULIDs are made with.
fn now_ms() -> u64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970");
    u64::try_from(since.as_millis()).expect("a small number")
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).expect("a small number")
}

// --- the faults ----------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    GatewayKill,
    GatewayTerm,
    GatewayStop,
    RedisShort,
    RedisLong,
    ApiKill,
    PresenceKill,
    VoiceKill,
    DatabaseLock,
}

impl Fault {
    const ALL: [Self; 9] = [
        Self::GatewayKill,
        Self::GatewayTerm,
        Self::GatewayStop,
        Self::RedisShort,
        Self::RedisLong,
        Self::ApiKill,
        Self::PresenceKill,
        Self::VoiceKill,
        Self::DatabaseLock,
    ];

    fn name(self) -> &'static str {
        match self {
            Self::GatewayKill => "1 gateway SIGKILL",
            Self::GatewayTerm => "2 gateway SIGTERM",
            Self::GatewayStop => "3 gateway SIGSTOP 6s",
            Self::RedisShort => "4 redis down 1s",
            Self::RedisLong => "5 redis down 10s",
            Self::ApiKill => "6 api SIGKILL",
            Self::PresenceKill => "7 presence SIGKILL",
            Self::VoiceKill => "8 voice SIGKILL",
            Self::DatabaseLock => "9 messages locked 13s",
        }
    }

    /// Whether a gateway may close sockets with 4011 here: reported, not
    /// asserted. Everywhere else a 4011 is a failure.
    fn may_resync(self) -> bool {
        matches!(self, Self::RedisLong | Self::ApiKill | Self::DatabaseLock)
    }
}

/// What an injected fault touched, for the checks after its accounting.
#[derive(Default)]
struct Injected {
    /// The clients on the gateway that was killed, stopped or terminated.
    affected: Vec<usize>,
    /// Each client's guild log epoch before a Redis restart.
    epochs_before: Vec<Option<String>>,
}

// --- positions -----------------------------------------------------------------

/// A log position as the gateway quotes it: `<epoch>.<offset>`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Token {
    epoch: String,
    offset: u64,
}

impl Token {
    fn parse(token: &str) -> Option<Self> {
        let (epoch, offset) = token.split_once('.')?;
        Some(Self {
            epoch: epoch.to_owned(),
            offset: offset.parse().ok()?,
        })
    }

    fn quoted(&self) -> String {
        format!("{}.{}", self.epoch, self.offset)
    }
}

/// The newest position per log.
type Positions = BTreeMap<String, Token>;

/// Keeps `token` unless the same epoch's position held is newer: frames
/// a resume replays arrive after live ones with higher offsets, and
/// quoting the older one later would replay what was written live. A new
/// epoch replaces the old one (the log was lost and started again).
fn keep_newest(positions: &mut Positions, scope: &str, token: Token) {
    let newer = positions
        .get(scope)
        .is_none_or(|held| held.epoch != token.epoch || held.offset < token.offset);
    if newer {
        positions.insert(scope.to_owned(), token);
    }
}

fn keep_frame_positions(positions: &mut Positions, frame: &Value) {
    let Some(carried) = frame["p"].as_object() else {
        return;
    };
    for (scope, token) in carried {
        if let Some(token) = token.as_str().and_then(Token::parse) {
            keep_newest(positions, scope, token);
        }
    }
}

// --- the world ------------------------------------------------------------------

/// The poster, the clients' users, and their one channel.
struct World {
    poster: User,
    members: Vec<User>,
    channel: Channel,
}

impl World {
    async fn create(cluster: &Cluster) -> Self {
        let poster = register(cluster, "poster").await;
        let mut members = Vec::new();
        for n in 0..CLIENTS {
            members.push(register(cluster, &format!("c{n}")).await);
        }
        let mut everyone = vec![poster.clone()];
        everyone.extend(members.iter().cloned());
        let guild_id = public_guild(cluster, "faults", &everyone).await;
        let channel = channel(cluster, &poster, &guild_id, "general", "text").await;
        Self {
            poster,
            members,
            channel,
        }
    }

    fn guild_log(&self) -> String {
        format!("g:{}", self.channel.guild_id)
    }
}

/// Message ids of `channel`'s history newer than `after`, oldest first,
/// read as `user` page by page until a page is short.
async fn history_after(
    http: &reqwest::Client,
    api: &str,
    user: &User,
    channel: &Channel,
    after: Ulid,
) -> Result<Vec<String>, String> {
    const PAGE: usize = 100;
    let mut after = after.to_string();
    let mut ids = Vec::new();
    loop {
        let url = format!(
            "{api}/guilds/{}/channels/{}/messages?limit={PAGE}&after={after}",
            channel.guild_id, channel.channel_id
        );
        let response = http
            .get(url)
            .bearer_auth(&user.token)
            .timeout(POST_TIMEOUT)
            .send()
            .await
            .map_err(|err| format!("history: {err}"))?;
        let status = response.status();
        let page: Value = response
            .json()
            .await
            .map_err(|err| format!("history body: {err}"))?;
        if !status.is_success() {
            return Err(format!("history answered {status}: {page}"));
        }
        let messages = page["messages"].as_array().ok_or("no messages")?;
        ids.extend(
            messages
                .iter()
                .filter_map(|m| m["message_id"].as_str().map(str::to_owned)),
        );
        match page["next_after"].as_str() {
            Some(next) if messages.len() == PAGE => next.clone_into(&mut after),
            _ => return Ok(ids),
        }
    }
}

/// A ULID just older than every id of `ids`.
fn just_before(ids: &[String]) -> Option<Ulid> {
    let oldest = ids
        .iter()
        .filter_map(|id| Ulid::from_string(id).ok())
        .map(|id| id.timestamp_ms())
        .min()?;
    Some(Ulid::from_parts(oldest.saturating_sub(1), 0))
}

// --- the poster -----------------------------------------------------------------

#[derive(Debug, Clone)]
enum Answer {
    Acknowledged(String),
    Refused(u16),
    Transport(String),
}

#[derive(Debug, Clone)]
struct Attempt {
    started_ms: u64,
    answered_ms: u64,
    answer: Answer,
}

/// One post and every attempt it took.
#[derive(Debug, Clone)]
struct PostRecord {
    content: String,
    message_id: Option<String>,
    attempts: Vec<Attempt>,
}

impl PostRecord {
    fn failed_attempts(&self) -> usize {
        self.attempts
            .iter()
            .filter(|a| !matches!(a.answer, Answer::Acknowledged(_)))
            .count()
    }
}

/// Every post, acknowledged (in the order of acknowledgement) or given up.
#[derive(Default)]
struct Ledger {
    acknowledged: Mutex<Vec<PostRecord>>,
    abandoned: Mutex<Vec<PostRecord>>,
}

impl Ledger {
    fn len(&self) -> usize {
        self.acknowledged.lock().expect("ledger").len()
    }

    fn window(&self, from: usize, to: usize) -> Vec<PostRecord> {
        self.acknowledged.lock().expect("ledger")[from..to].to_vec()
    }
}

/// The steady load, until [`Poster::finish`].
struct Poster {
    ledger: Arc<Ledger>,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Poster {
    fn start(cluster: &Cluster, world: &World, ledger: Arc<Ledger>) -> Self {
        let stop = CancellationToken::new();
        let url = cluster.api_url(&format!(
            "/guilds/{}/channels/{}/messages",
            world.channel.guild_id, world.channel.channel_id
        ));
        let task = tokio::spawn(run_poster(
            cluster.http.clone(),
            url,
            world.poster.token.clone(),
            Arc::clone(&ledger),
            stop.clone(),
        ));
        Self { ledger, stop, task }
    }

    /// Waits until `posts` more posts were acknowledged.
    async fn progress(&self, posts: usize) {
        let target = self.ledger.len() + posts;
        let deadline = Instant::now() + POST_DEADLINE;
        while self.ledger.len() < target {
            assert!(
                Instant::now() < deadline,
                "the load stalled: {} of {target} posts acknowledged",
                self.ledger.len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops posting and waits for every post in flight to be settled.
    async fn finish(self) {
        self.stop.cancel();
        self.task.await.expect("the poster");
    }
}

async fn run_poster(
    http: reqwest::Client,
    url: String,
    token: String,
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
        posts.spawn(post_until_acknowledged(
            http.clone(),
            url.clone(),
            token.clone(),
            format!("fault suite m{n}"),
            Arc::clone(&ledger),
        ));
    }
    while let Some(done) = posts.join_next().await {
        done.expect("a post task");
    }
}

/// Whether a refused post is worth retrying under its key.
fn retryable(status: u16) -> bool {
    matches!(status, 408 | 409 | 429) || status >= 500
}

async fn post_once(
    http: &reqwest::Client,
    url: &str,
    token: &str,
    key: &str,
    content: &str,
) -> Answer {
    let sent = http
        .post(url)
        .bearer_auth(token)
        .header("idempotency-key", key)
        .json(&json!({ "content": content }))
        .timeout(POST_TIMEOUT)
        .send()
        .await;
    match sent {
        Ok(response) if response.status().is_success() => match response.json::<Value>().await {
            Ok(message) => match message["message_id"].as_str() {
                Some(id) => Answer::Acknowledged(id.to_owned()),
                None => Answer::Transport(format!("no message id in {message}")),
            },
            Err(err) => Answer::Transport(format!("body: {err}")),
        },
        Ok(response) => Answer::Refused(response.status().as_u16()),
        Err(err) => Answer::Transport(err.to_string()),
    }
}

/// One message, retried under its idempotency key until acknowledged, a
/// refusal not worth retrying, or [`POST_DEADLINE`].
async fn post_until_acknowledged(
    http: reqwest::Client,
    url: String,
    token: String,
    content: String,
    ledger: Arc<Ledger>,
) {
    let key = Ulid::generate().to_string();
    let deadline = Instant::now() + POST_DEADLINE;
    let mut backoff = Duration::from_millis(200);
    let mut record = PostRecord {
        content,
        message_id: None,
        attempts: Vec::new(),
    };
    loop {
        let started_ms = now_ms();
        let answer = post_once(&http, &url, &token, &key, &record.content).await;
        record.attempts.push(Attempt {
            started_ms,
            answered_ms: now_ms(),
            answer: answer.clone(),
        });
        match answer {
            Answer::Acknowledged(id) => {
                record.message_id = Some(id);
                ledger.acknowledged.lock().expect("ledger").push(record);
                return;
            }
            Answer::Refused(status) if !retryable(status) => break,
            _ if Instant::now() > deadline => break,
            _ => {}
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(1));
    }
    ledger.abandoned.lock().expect("ledger").push(record);
}

// --- resilient clients -------------------------------------------------------------

/// The live gateways' addresses, in the order clients take turns on them.
#[derive(Clone, Default)]
struct Gateways(Arc<Mutex<Vec<SocketAddr>>>);

impl Gateways {
    fn list(&self) -> Vec<SocketAddr> {
        self.0.lock().expect("gateways").clone()
    }

    fn replace(&self, old: SocketAddr, new: SocketAddr) {
        for addr in self.0.lock().expect("gateways").iter_mut() {
            if *addr == old {
                *addr = new;
            }
        }
    }
}

/// What a client counts.
#[derive(Debug, Default, Clone, Copy)]
struct Counters {
    /// Sockets lost: closed, broken, or given up on a ping timeout.
    lost: u64,
    /// Sockets subscribed and resumed again after a loss.
    reconnects: u64,
    /// Connection attempts that failed (a gateway refused, hung, closed).
    failed_attempts: u64,
    resumes: u64,
    /// What the `resumed` frames said was replayed.
    replayed: u64,
    /// Told to resynchronise: a `resumed` naming logs, a 4011, or no
    /// position held for the guild's log when resuming.
    told: u64,
    /// Logs other than the guild's answered with resync (the user's).
    other_resyncs: u64,
    closes_4011: u64,
    ping_timeouts: u64,
    refetches: u64,
    /// `message_create` frames that came without a position.
    unpositioned: u64,
}

#[derive(Debug, Clone, Copy)]
enum Phase {
    Subscribing,
    Resuming,
    Live,
}

/// One `message_create` as it arrived, for a failure's evidence.
#[derive(Debug)]
struct Arrival {
    /// Seconds since the suite started.
    at: f64,
    message_id: String,
    socket: u32,
    phase: Phase,
    positions: Value,
}

/// Everything one client knows and counted.
#[derive(Default)]
struct ClientState {
    /// Every `message_create` id received, live or replayed, and how often.
    received: HashMap<String, u32>,
    newest: Option<Ulid>,
    /// What refetches after being told found; apart from `received`.
    refetched: HashSet<String>,
    /// Refetched messages older than the newest one the client had when
    /// its socket was lost: a refetch from that message on would have
    /// missed them.
    refetched_behind: HashSet<String>,
    refetches_running: u32,
    refetch_failures: Vec<String>,
    positions: Positions,
    counters: Counters,
    resume_ms: Vec<u64>,
    /// Close codes seen; 1006 for a socket that broke without one.
    closes: Vec<u16>,
    gateway: Option<SocketAddr>,
    /// Subscribed (and resumed, after a loss) on a socket now.
    live: bool,
    gave_up: Option<String>,
    /// What happened to its sockets, timed from the suite's start.
    journal: Vec<String>,
    arrivals: Vec<Arrival>,
}

impl ClientState {
    fn received_frame(&mut self, t0: Instant, frame: &Value, socket: u32, phase: Phase) {
        if frame["t"] != "message_create" {
            return;
        }
        let Some(id) = frame["d"]["message_id"].as_str() else {
            return;
        };
        *self.received.entry(id.to_owned()).or_default() += 1;
        if let Ok(ulid) = Ulid::from_string(id) {
            self.newest = self.newest.max(Some(ulid));
        }
        if !frame["p"].is_object() {
            self.counters.unpositioned += 1;
        }
        self.arrivals.push(Arrival {
            at: t0.elapsed().as_secs_f64(),
            message_id: id.to_owned(),
            socket,
            phase,
            positions: frame["p"].clone(),
        });
    }

    fn has(&self, id: &str) -> bool {
        self.received.contains_key(id) || self.refetched.contains(id)
    }
}

/// Everything a client task needs.
#[derive(Clone)]
struct ClientCtx {
    n: usize,
    user: User,
    channel: Channel,
    gateways: Gateways,
    http: reqwest::Client,
    api: String,
    t0: Instant,
    state: Arc<Mutex<ClientState>>,
    stop: CancellationToken,
}

impl ClientCtx {
    fn with<R>(&self, f: impl FnOnce(&mut ClientState) -> R) -> R {
        f(&mut self.state.lock().expect("client state"))
    }

    fn note(&self, what: &str) {
        let at = self.t0.elapsed().as_secs_f64();
        self.with(|s| s.journal.push(format!("{at:>8.3}s {what}")));
    }

    fn guild_log(&self) -> String {
        format!("g:{}", self.channel.guild_id)
    }
}

/// How a socket, or an attempt at one, ended.
#[derive(Debug)]
enum Ended {
    Closed(u16),
    Broken(String),
    PingTimeout,
    Stopped,
}

impl Ended {
    fn describe(&self) -> String {
        match self {
            Self::Closed(code) => format!("closed {code}"),
            Self::Broken(why) => format!("broken: {why}"),
            Self::PingTimeout => format!("no pong within {PONG_DEADLINE:?}"),
            Self::Stopped => "stopped".to_owned(),
        }
    }
}

/// A socket lost: when it was noticed, and what the next one owes.
struct Lost {
    noticed: Instant,
    /// The newest message the client had: where its refetch starts.
    newest_before: Option<Ulid>,
    /// A 4011 said to refetch, whatever the resume says.
    refetch_owed: bool,
}

impl ClientCtx {
    /// Counts how a socket or an attempt ended; whether it was a 4011.
    fn ended(&self, ended: &Ended, socket: u32) -> bool {
        let resync = matches!(ended, Ended::Closed(4011));
        self.note(&format!("socket {socket} ended: {}", ended.describe()));
        self.with(|s| {
            match ended {
                Ended::Closed(code) => s.closes.push(*code),
                Ended::Broken(_) => s.closes.push(1006),
                Ended::PingTimeout => s.counters.ping_timeouts += 1,
                Ended::Stopped => {}
            }
            if resync {
                s.counters.closes_4011 += 1;
                s.counters.told += 1;
            }
        });
        resync
    }

    fn lost(&self, ended: &Ended, socket: u32) -> Lost {
        let noticed = Instant::now();
        let refetch_owed = self.ended(ended, socket);
        let newest_before = self.with(|s| {
            s.live = false;
            s.counters.lost += 1;
            s.newest
        });
        Lost {
            noticed,
            newest_before,
            refetch_owed,
        }
    }
}

/// One client's life: connect, then after every loss reconnect to the
/// next gateway in turn and resume, until the suite stops.
async fn run_client(ctx: ClientCtx) {
    let mut turn = ctx.n;
    let mut socket = 0;
    let mut lost: Option<Lost> = None;
    loop {
        let Some(mut ws) = establish(&ctx, &mut turn, &mut socket, lost.as_mut()).await else {
            return;
        };
        let ended = live(&ctx, &mut ws, socket).await;
        if matches!(ended, Ended::Stopped) {
            let _ = ws.close(None).await;
            return;
        }
        lost = Some(ctx.lost(&ended, socket));
        turn += 1;
    }
}

/// A subscribed socket, resumed after a loss; `None` once stopped or
/// given up.
async fn establish(
    ctx: &ClientCtx,
    turn: &mut usize,
    socket: &mut u32,
    mut lost: Option<&mut Lost>,
) -> Option<Ws> {
    let deadline = Instant::now() + RECONNECT_DEADLINE;
    let mut backoff = Duration::from_millis(100);
    loop {
        let gateways = ctx.gateways.list();
        let gateway = gateways[*turn % gateways.len()];
        *socket += 1;
        match attempt(ctx, gateway, *socket, lost.as_deref_mut()).await {
            Ok(ws) => {
                ctx.with(|s| {
                    s.gateway = Some(gateway);
                    s.live = true;
                });
                return Some(ws);
            }
            Err(ended) => {
                if ctx.ended(&ended, *socket)
                    && let Some(lost) = lost.as_deref_mut()
                {
                    lost.refetch_owed = true;
                }
                ctx.with(|s| s.counters.failed_attempts += 1);
            }
        }
        *turn += 1;
        if Instant::now() > deadline {
            ctx.with(|s| {
                s.gave_up = Some(format!("no gateway took it back in {RECONNECT_DEADLINE:?}"))
            });
            return None;
        }
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            () = ctx.stop.cancelled() => return None,
        }
        backoff = (backoff * 2).min(Duration::from_secs(1));
    }
}

/// A new socket's positions until each log its `resume` named is
/// answered: a token of such a log is held apart until that log's
/// `resumed`, so that a socket lost before then is resumed again from the
/// old position. Tokens of other logs are kept at once.
struct Settling {
    awaiting: HashSet<String>,
    held: Positions,
}

impl Settling {
    fn keep(&mut self, ctx: &ClientCtx, frame: &Value) {
        let Some(carried) = frame["p"].as_object() else {
            return;
        };
        ctx.with(|s| {
            for (scope, token) in carried {
                let Some(token) = token.as_str().and_then(Token::parse) else {
                    continue;
                };
                if self.awaiting.contains(scope) {
                    keep_newest(&mut self.held, scope, token);
                } else {
                    keep_newest(&mut s.positions, scope, token);
                }
            }
        });
    }

    /// A log's `resumed`: its scope, and whether it said resync. On
    /// resync the log's positions start again from this socket's frames.
    fn settle(&mut self, ctx: &ClientCtx, resumed: &Value) -> (String, bool) {
        let scope = resumed["d"]["scope"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let resync = resumed["d"]["resync"] != false;
        self.awaiting.remove(&scope);
        let held = self.held.remove(&scope);
        ctx.with(|s| {
            if resync {
                s.positions.remove(&scope);
            }
            if let Some(token) = held {
                keep_newest(&mut s.positions, &scope, token);
            }
        });
        self.keep(ctx, resumed);
        (scope, resync)
    }
}

/// One attempt on `gateway`: connect; after a loss, `resume` with the
/// positions held when the old socket ended (docs/adr/0011-resume.md: the
/// resume first, then the subscribe); subscribe. Returned once subscribed
/// and every log the resume named was answered.
async fn attempt(
    ctx: &ClientCtx,
    gateway: SocketAddr,
    socket: u32,
    lost: Option<&mut Lost>,
) -> Result<Ws, Ended> {
    let kept = lost.is_some().then(|| ctx.with(|s| s.positions.clone()));
    let mut settling = Settling {
        awaiting: kept.iter().flat_map(|k| k.keys().cloned()).collect(),
        held: Positions::new(),
    };
    let url = format!(
        "ws://{gateway}/gateway/ws?access_token={}&positions=1",
        ctx.user.token
    );
    let connected =
        tokio::time::timeout(CONNECT_TIMEOUT, tokio_tungstenite::connect_async(url)).await;
    let (mut ws, _) = connected
        .map_err(|_| Ended::Broken("the upgrade hung".to_owned()))?
        .map_err(|err| Ended::Broken(format!("refused: {err}")))?;
    let ready = next_json(&mut ws, Instant::now() + CONNECT_TIMEOUT).await?;
    if ready["t"] != "ready" {
        return Err(Ended::Broken(format!("first frame {ready}")));
    }
    settling.keep(ctx, &ready);
    if let Some(kept) = &kept {
        let resume = json!({"v": 1, "t": "resume", "d": {"positions": quoted(kept)}});
        send_json(&mut ws, &resume).await?;
    }
    let subscribe = json!({"v": 1, "t": "subscribe", "d": {
        "guild_id": ctx.channel.guild_id, "channel_id": ctx.channel.channel_id,
    }});
    send_json(&mut ws, &subscribe).await?;
    let answers = subscribed(ctx, &mut ws, socket, &mut settling, kept.is_some()).await?;
    let Some(lost) = lost else {
        ctx.note(&format!("socket {socket} subscribed on {gateway}"));
        return Ok(ws);
    };
    let kept = kept.unwrap_or_default();
    resumed(ctx, gateway, socket, lost, &kept, &answers);
    Ok(ws)
}

/// What the `resumed` frames of one attempt said.
#[derive(Debug, Default)]
struct Answers {
    replayed: u64,
    resync: Vec<String>,
}

/// Reads until the socket is subscribed (its `subscribed` and the
/// channel's voice roster, or the guild's `resumed` that follows them)
/// and every log the resume named was answered.
async fn subscribed(
    ctx: &ClientCtx,
    ws: &mut Ws,
    socket: u32,
    settling: &mut Settling,
    resuming: bool,
) -> Result<Answers, Ended> {
    let phase = if resuming {
        Phase::Resuming
    } else {
        Phase::Subscribing
    };
    let guild_log = ctx.guild_log();
    let deadline = Instant::now() + SUBSCRIBE_TIMEOUT + RESUMED_TIMEOUT;
    let mut answers = Answers::default();
    let (mut acknowledged, mut roster, mut guild_answered) = (false, false, false);
    while !(acknowledged && (roster || guild_answered) && settling.awaiting.is_empty()) {
        let frame = next_json(ws, deadline).await?;
        match frame["t"].as_str() {
            Some("resumed") => {
                let (scope, resync) = settling.settle(ctx, &frame);
                answers.replayed += frame["d"]["replayed"].as_u64().unwrap_or(0);
                guild_answered |= scope == guild_log;
                if resync {
                    answers.resync.push(scope);
                }
            }
            Some("voice_participant_sync")
                if frame["d"]["channel_id"] == ctx.channel.channel_id.as_str() =>
            {
                roster = acknowledged;
            }
            Some(kind) => {
                acknowledged |= kind == "subscribed";
                settling.keep(ctx, &frame);
                ctx.with(|s| s.received_frame(ctx.t0, &frame, socket, phase));
            }
            None => {}
        }
    }
    Ok(answers)
}

/// Counts a resume that completed, and refetches when told to.
fn resumed(
    ctx: &ClientCtx,
    gateway: SocketAddr,
    socket: u32,
    lost: &mut Lost,
    kept: &Positions,
    answers: &Answers,
) {
    let took = millis(lost.noticed.elapsed());
    let guild_log = ctx.guild_log();
    // Told about the guild's log: the messages are in it. Without a
    // position for it, the client knows by itself that it must refetch.
    let told = answers.resync.contains(&guild_log) || !kept.contains_key(&guild_log);
    ctx.with(|s| {
        s.counters.reconnects += 1;
        s.counters.resumes += 1;
        s.counters.replayed += answers.replayed;
        s.counters.other_resyncs += u64::try_from(
            answers
                .resync
                .iter()
                .filter(|scope| **scope != guild_log)
                .count(),
        )
        .expect("a few");
        s.resume_ms.push(took);
        if told {
            s.counters.told += 1;
        }
    });
    ctx.note(&format!(
        "socket {socket} resumed on {gateway} after {took} ms: {answers:?} (kept {})",
        quoted(kept)
    ));
    if told || lost.refetch_owed {
        let after = lost.newest_before.map_or_else(
            || Ulid::from_parts(0, 0),
            |newest| {
                Ulid::from_parts(
                    newest.timestamp_ms().saturating_sub(millis(REFETCH_MARGIN)),
                    0,
                )
            },
        );
        ctx.with(|s| s.refetches_running += 1);
        tokio::spawn(refetch(ctx.clone(), after, lost.newest_before));
        lost.refetch_owed = false;
    }
}

fn quoted(positions: &Positions) -> Value {
    positions
        .iter()
        .map(|(scope, token)| (scope.clone(), Value::String(token.quoted())))
        .collect::<serde_json::Map<_, _>>()
        .into()
}

/// The next JSON text frame before `deadline`.
async fn next_json(ws: &mut Ws, deadline: Instant) -> Result<Value, Ended> {
    loop {
        let frame = tokio::time::timeout_at(deadline, ws.next())
            .await
            .map_err(|_| Ended::Broken("no frame before the deadline".to_owned()))?;
        match frame {
            Some(Ok(Message::Text(text))) => {
                if let Ok(value) = serde_json::from_str(&text) {
                    return Ok(value);
                }
            }
            Some(Ok(Message::Close(close))) => {
                return Err(Ended::Closed(close.map_or(1005, |c| c.code.into())));
            }
            Some(Ok(_)) => {}
            Some(Err(err)) => return Err(Ended::Broken(err.to_string())),
            None => return Err(Ended::Broken("the stream ended".to_owned())),
        }
    }
}

async fn send_json(ws: &mut Ws, frame: &Value) -> Result<(), Ended> {
    let sent = tokio::time::timeout(
        Duration::from_secs(1),
        ws.send(Message::Text(frame.to_string().into())),
    )
    .await;
    match sent {
        Ok(Ok(())) => Ok(()),
        Ok(Err(err)) => Err(Ended::Broken(format!("send: {err}"))),
        Err(_) => Err(Ended::Broken("send hung".to_owned())),
    }
}

/// Reads a subscribed socket, pinging it, until it ends.
async fn live(ctx: &ClientCtx, ws: &mut Ws, socket: u32) -> Ended {
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut unanswered: VecDeque<(u64, Instant)> = VecDeque::new();
    let mut nonce = 0_u64;
    loop {
        tokio::select! {
            () = ctx.stop.cancelled() => return Ended::Stopped,
            frame = ws.next() => match frame {
                Some(Ok(Message::Text(text))) => {
                    let Ok(frame) = serde_json::from_str::<Value>(&text) else {
                        continue;
                    };
                    if frame["t"] == "pong" {
                        let answered = frame["d"]["nonce"].as_str().and_then(|n| n.parse::<u64>().ok());
                        unanswered.retain(|(sent, _)| answered.is_none_or(|n| *sent > n));
                        continue;
                    }
                    ctx.with(|s| {
                        keep_frame_positions(&mut s.positions, &frame);
                        s.received_frame(ctx.t0, &frame, socket, Phase::Live);
                    });
                }
                Some(Ok(Message::Close(close))) => {
                    return Ended::Closed(close.map_or(1005, |c| c.code.into()));
                }
                Some(Ok(_)) => {}
                Some(Err(err)) => return Ended::Broken(err.to_string()),
                None => return Ended::Broken("the stream ended".to_owned()),
            },
            _ = ping.tick() => {
                if unanswered.front().is_some_and(|(_, sent)| sent.elapsed() > PONG_DEADLINE) {
                    return Ended::PingTimeout;
                }
                nonce += 1;
                let frame = json!({"v": 1, "t": "ping", "d": {"nonce": nonce.to_string()}});
                if let Err(ended) = send_json(ws, &frame).await {
                    return ended;
                }
                unanswered.push_back((nonce, Instant::now()));
            }
        }
    }
}

/// The channel's history after `after`, into the client's refetched set;
/// retried (the api may be down) until [`RECONNECT_DEADLINE`].
async fn refetch(ctx: ClientCtx, after: Ulid, newest_before: Option<Ulid>) {
    let deadline = Instant::now() + RECONNECT_DEADLINE;
    loop {
        match history_after(&ctx.http, &ctx.api, &ctx.user, &ctx.channel, after).await {
            Ok(ids) => {
                ctx.note(&format!("refetched {} messages after {after}", ids.len()));
                ctx.with(|s| {
                    let behind = ids.iter().filter(|id| {
                        Ulid::from_string(id).is_ok_and(|id| Some(id) <= newest_before)
                    });
                    s.refetched_behind.extend(behind.cloned());
                    s.refetched.extend(ids);
                    s.counters.refetches += 1;
                    s.refetches_running -= 1;
                });
                return;
            }
            Err(err) if Instant::now() > deadline => {
                ctx.with(|s| {
                    s.refetch_failures.push(err);
                    s.refetches_running -= 1;
                });
                return;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}

/// A client task and its state.
struct Client {
    label: String,
    state: Arc<Mutex<ClientState>>,
    task: JoinHandle<()>,
}

impl Client {
    fn with<R>(&self, f: impl FnOnce(&ClientState) -> R) -> R {
        f(&self.state.lock().expect("client state"))
    }
}

// --- the accounting --------------------------------------------------------------

/// A client's counts when the last accounting ended.
#[derive(Clone, Copy)]
struct ClientMark {
    counters: Counters,
    resumes_timed: usize,
    closes: usize,
}

/// What one client did in one scenario's window.
struct ClientVerdict {
    delta: Counters,
    resume_ms: Vec<u64>,
    closes: Vec<u16>,
    missing: Vec<String>,
    duplicates: Vec<(String, u32)>,
    /// Messages it has only from a refetch after being told.
    recovered: usize,
    /// Of those, the ones older than its newest message when the socket
    /// was lost (sent after a newer one: ids are made when a post starts).
    behind: usize,
}

impl ClientVerdict {
    fn of(client: &Client, ids: &[String], mark: ClientMark) -> Self {
        client.with(|s| {
            let mut verdict = Self {
                delta: s.counters.since(mark.counters),
                resume_ms: s.resume_ms[mark.resumes_timed..].to_vec(),
                closes: s.closes[mark.closes..].to_vec(),
                missing: Vec::new(),
                duplicates: Vec::new(),
                recovered: 0,
                behind: 0,
            };
            for id in ids {
                match s.received.get(id).copied().unwrap_or(0) {
                    0 if s.refetched.contains(id) && s.counters.told > 0 => {
                        verdict.recovered += 1;
                        verdict.behind += usize::from(s.refetched_behind.contains(id));
                    }
                    0 => verdict.missing.push(id.clone()),
                    1 => {}
                    n => verdict.duplicates.push((id.clone(), n)),
                }
            }
            verdict
        })
    }

    fn told(&self) -> bool {
        self.delta.told > 0
    }
}

impl Counters {
    fn since(self, before: Self) -> Self {
        Self {
            lost: self.lost - before.lost,
            reconnects: self.reconnects - before.reconnects,
            failed_attempts: self.failed_attempts - before.failed_attempts,
            resumes: self.resumes - before.resumes,
            replayed: self.replayed - before.replayed,
            told: self.told - before.told,
            other_resyncs: self.other_resyncs - before.other_resyncs,
            closes_4011: self.closes_4011 - before.closes_4011,
            ping_timeouts: self.ping_timeouts - before.ping_timeouts,
            refetches: self.refetches - before.refetches,
            unpositioned: self.unpositioned - before.unpositioned,
        }
    }
}

/// One line of the table.
struct Row {
    name: String,
    acknowledged: usize,
    reconnects: u64,
    resumes: u64,
    resume_p50: Option<u64>,
    resume_p99: Option<u64>,
    replayed: u64,
    told: usize,
    stale: usize,
    duplicates: usize,
    closes_4011: u64,
    recovered: usize,
    behind: usize,
    unpositioned: u64,
    retries: usize,
    took: Duration,
}

impl Row {
    const HEADER: &'static str = "scenario                  acked reconn resumes p50ms p99ms replayed told stale dups 4011 recovered behind no_p retries   secs";

    fn line(&self) -> String {
        let ms = |v: Option<u64>| v.map_or_else(|| "-".to_owned(), |v| v.to_string());
        format!(
            "{:<24} {:>6} {:>6} {:>7} {:>5} {:>5} {:>8} {:>4} {:>5} {:>4} {:>4} {:>9} {:>6} {:>4} {:>7} {:>6.1}",
            self.name,
            self.acknowledged,
            self.reconnects,
            self.resumes,
            ms(self.resume_p50),
            ms(self.resume_p99),
            self.replayed,
            self.told,
            self.stale,
            self.duplicates,
            self.closes_4011,
            self.recovered,
            self.behind,
            self.unpositioned,
            self.retries,
            self.took.as_secs_f64(),
        )
    }
}

/// The `p`th percentile (nearest rank) of `values`.
fn percentile(values: &[u64], p: usize) -> Option<u64> {
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    let rank = (sorted.len() * p).div_ceil(100).max(1);
    sorted.get(rank - 1).copied()
}

/// One scenario's accounting: its row and the verdicts behind it.
struct Accounting {
    row: Row,
    verdicts: Vec<ClientVerdict>,
}

// --- the suite -----------------------------------------------------------------

struct Suite {
    cluster: Cluster,
    redis: RedisServer,
    world: World,
    gateways: Gateways,
    clients: Vec<Client>,
    stop_clients: CancellationToken,
    ledger: Arc<Ledger>,
    poster: Option<Poster>,
    /// Where the last accounting left off: posts, and each client's counts.
    acknowledged_mark: usize,
    client_marks: Vec<ClientMark>,
    lock: Option<(u64, u64)>,
    rows: Vec<Row>,
    problems: Vec<String>,
    /// Figures worth a line that are not failures.
    notes: Vec<String>,
    t0: Instant,
}

impl Suite {
    async fn start(cluster: Cluster, redis: RedisServer, t0: Instant) -> Self {
        let world = World::create(&cluster).await;
        let gateways = Gateways::default();
        gateways
            .0
            .lock()
            .expect("gateways")
            .extend(cluster.gateways.iter().map(|g| g.addrs[0]));
        let stop_clients = CancellationToken::new();
        let clients = world
            .members
            .iter()
            .enumerate()
            .map(|(n, user)| {
                let ctx = ClientCtx {
                    n,
                    user: user.clone(),
                    channel: world.channel.clone(),
                    gateways: gateways.clone(),
                    http: cluster.http.clone(),
                    api: cluster.api.service_url(),
                    t0,
                    state: Arc::default(),
                    stop: stop_clients.clone(),
                };
                Client {
                    label: format!("c{n}"),
                    state: Arc::clone(&ctx.state),
                    task: tokio::spawn(run_client(ctx)),
                }
            })
            .collect();
        let mut suite = Self {
            cluster,
            redis,
            world,
            gateways,
            clients,
            stop_clients,
            ledger: Arc::default(),
            poster: None,
            acknowledged_mark: 0,
            client_marks: Vec::new(),
            lock: None,
            rows: Vec::new(),
            problems: Vec::new(),
            notes: Vec::new(),
            t0,
        };
        suite.wait_until_all_live().await;
        suite.client_marks = suite.marks();
        let ledger = Arc::clone(&suite.ledger);
        suite.poster = Some(Poster::start(&suite.cluster, &suite.world, ledger));
        suite
    }

    fn poster(&self) -> &Poster {
        self.poster.as_ref().expect("the load runs")
    }

    fn marks(&self) -> Vec<ClientMark> {
        self.clients
            .iter()
            .map(|c| {
                c.with(|s| ClientMark {
                    counters: s.counters,
                    resumes_timed: s.resume_ms.len(),
                    closes: s.closes.len(),
                })
            })
            .collect()
    }

    async fn wait_until_all_live(&self) {
        let deadline = Instant::now() + RECONNECT_DEADLINE;
        while !self.clients.iter().all(|c| c.with(|s| s.live)) {
            assert!(
                Instant::now() < deadline,
                "the clients never all subscribed"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The gateway most clients are on, and those clients.
    fn busiest_gateway(&self) -> (SocketAddr, Vec<usize>) {
        let on = |addr: SocketAddr| -> Vec<usize> {
            (0..self.clients.len())
                .filter(|&n| self.clients[n].with(|s| s.gateway == Some(addr)))
                .collect()
        };
        self.gateways
            .list()
            .into_iter()
            .map(|addr| (addr, on(addr)))
            .max_by_key(|(_, clients)| clients.len())
            .expect("a gateway")
    }

    fn epochs(&self) -> Vec<Option<String>> {
        let scope = self.world.guild_log();
        self.clients
            .iter()
            .map(|c| c.with(|s| s.positions.get(&scope).map(|t| t.epoch.clone())))
            .collect()
    }

    /// Waits (bounded) until a client is given a position in a new epoch
    /// of the guild's log: the appends go on in the Redis restarted empty.
    async fn positions_back(&mut self, fault: Fault, before: &[Option<String>]) {
        let answering = Instant::now();
        let deadline = answering + ACCOUNTING_DEADLINE;
        let new_epoch = |suite: &Self| {
            suite
                .epochs()
                .iter()
                .zip(before)
                .any(|(now, before)| now.is_some() && now != before)
        };
        while !new_epoch(self) {
            if Instant::now() > deadline {
                self.problems.push(format!(
                    "{}: no client was given a position in a new epoch of the guild's log \
                     within {ACCOUNTING_DEADLINE:?} of Redis answering again",
                    fault.name()
                ));
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.notes.push(format!(
            "{}: the first position in a new epoch reached a client {:.1} s after Redis answered again",
            fault.name(),
            answering.elapsed().as_secs_f64()
        ));
    }

    async fn run(&mut self, fault: Fault) {
        let started = Instant::now();
        let injected = self.inject(fault).await;
        self.poster().progress(QUIET_POSTS).await;
        let accounting = self.account(fault.name(), started).await;
        self.check_fault(fault, &injected, &accounting);
        self.rows.push(accounting.row);
    }

    async fn inject(&mut self, fault: Fault) -> Injected {
        let mut injected = Injected::default();
        match fault {
            Fault::GatewayKill | Fault::GatewayTerm => {
                let (addr, affected) = self.busiest_gateway();
                injected.affected = affected;
                let mut victim = self.cluster.take_gateway(addr);
                if fault == Fault::GatewayKill {
                    victim.kill().await;
                } else {
                    victim.terminate().await;
                }
                let replacement = self.cluster.add_gateway().await;
                self.gateways.replace(addr, replacement);
            }
            Fault::GatewayStop => {
                let (addr, affected) = self.busiest_gateway();
                injected.affected = affected;
                let victim = self
                    .cluster
                    .gateways
                    .iter()
                    .find(|g| g.addrs[0] == addr)
                    .expect("the busiest gateway");
                victim.signal("STOP");
                // The fault's length, not a wait for something to happen.
                tokio::time::sleep(FREEZE).await;
                victim.signal("CONT");
            }
            Fault::RedisShort | Fault::RedisLong => {
                injected.epochs_before = self.epochs();
                self.redis.stop().await;
                let outage = if fault == Fault::RedisShort {
                    SHORT_OUTAGE
                } else {
                    LONG_OUTAGE
                };
                tokio::time::sleep(outage).await;
                self.redis.start_again().await;
                self.positions_back(fault, &injected.epochs_before).await;
            }
            Fault::ApiKill => {
                self.cluster.kill_and_replace(Producer::Api).await;
            }
            Fault::PresenceKill => {
                self.cluster.kill_and_replace(Producer::Presence).await;
            }
            Fault::VoiceKill => {
                self.cluster.kill_and_replace(Producer::Voice).await;
            }
            Fault::DatabaseLock => {
                self.lock = Some(hold_messages_lock(&self.cluster.database_url).await);
            }
        }
        injected
    }

    /// Waits (bounded) until every client is subscribed and has every
    /// message of `ids`, received or refetched.
    async fn wait_for_coverage(&self, ids: &[String]) {
        let deadline = Instant::now() + ACCOUNTING_DEADLINE;
        let covered = |c: &Client| {
            c.with(|s| s.live && s.refetches_running == 0 && ids.iter().all(|id| s.has(id)))
        };
        while Instant::now() < deadline && !self.clients.iter().all(covered) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The messages acknowledged since the last accounting: in history,
    /// and with every client exactly once.
    async fn account(&mut self, name: &str, started: Instant) -> Accounting {
        let to = self.ledger.len();
        let window = self.ledger.window(self.acknowledged_mark, to);
        let ids: Vec<String> = window.iter().filter_map(|p| p.message_id.clone()).collect();
        self.wait_for_coverage(&ids).await;
        self.check_history(name, &ids).await;
        let verdicts: Vec<ClientVerdict> = self
            .clients
            .iter()
            .zip(&self.client_marks)
            .map(|(client, mark)| ClientVerdict::of(client, &ids, *mark))
            .collect();
        self.acknowledged_mark = to;
        self.client_marks = self.marks();
        let row = self.row(name, started, &window, &verdicts);
        if row.behind > 0 {
            self.notes.push(format!(
                "{name}: {} recovered messages were older than the client's newest one when its \
                 socket was lost: a refetch `after` that newest one would have missed them",
                row.behind
            ));
        }
        self.check_clients(name, &ids, &verdicts);
        eprintln!("fault suite: {}", row.line());
        Accounting { row, verdicts }
    }

    fn row(
        &self,
        name: &str,
        started: Instant,
        window: &[PostRecord],
        verdicts: &[ClientVerdict],
    ) -> Row {
        let sum = |f: fn(&Counters) -> u64| verdicts.iter().map(|v| f(&v.delta)).sum::<u64>();
        let resume_ms: Vec<u64> = verdicts.iter().flat_map(|v| v.resume_ms.clone()).collect();
        Row {
            name: name.to_owned(),
            acknowledged: window.len(),
            reconnects: sum(|c| c.reconnects),
            resumes: sum(|c| c.resumes),
            resume_p50: percentile(&resume_ms, 50),
            resume_p99: percentile(&resume_ms, 99),
            replayed: sum(|c| c.replayed),
            told: verdicts.iter().filter(|v| v.told()).count(),
            stale: verdicts
                .iter()
                .filter(|v| !v.missing.is_empty() && !v.told())
                .count(),
            duplicates: verdicts.iter().map(|v| v.duplicates.len()).sum(),
            closes_4011: sum(|c| c.closes_4011),
            recovered: verdicts.iter().map(|v| v.recovered).sum(),
            behind: verdicts.iter().map(|v| v.behind).sum(),
            unpositioned: sum(|c| c.unpositioned),
            retries: window.iter().map(PostRecord::failed_attempts).sum(),
            took: started.elapsed(),
        }
    }

    async fn check_history(&mut self, name: &str, ids: &[String]) {
        let Some(after) = just_before(ids) else {
            return;
        };
        let cluster = &self.cluster;
        let history = history_after(
            &cluster.http,
            &cluster.api.service_url(),
            &self.world.poster,
            &self.world.channel,
            after,
        )
        .await;
        match history {
            Ok(history) => {
                let history: HashSet<String> = history.into_iter().collect();
                let absent: Vec<&String> = ids.iter().filter(|id| !history.contains(*id)).collect();
                if !absent.is_empty() {
                    self.problems.push(format!(
                        "{name}: {} acknowledged messages not in history: {absent:?}",
                        absent.len()
                    ));
                }
            }
            Err(err) => self
                .problems
                .push(format!("{name}: history unreadable: {err}")),
        }
    }

    /// Stale, unrecovered, duplicated, given up: each a problem, with the
    /// client's evidence.
    fn check_clients(&mut self, name: &str, ids: &[String], verdicts: &[ClientVerdict]) {
        let guild_log = self.world.guild_log();
        for (client, verdict) in self.clients.iter().zip(verdicts) {
            let label = &client.label;
            if !verdict.missing.is_empty() {
                let kind = if verdict.told() {
                    "told to resync, but its refetch did not recover"
                } else {
                    "STALE (never told)"
                };
                self.problems.push(format!(
                    "{name}: {label} {kind}: missing {} of {} messages, first {:?}\n{}",
                    verdict.missing.len(),
                    ids.len(),
                    &verdict.missing[..verdict.missing.len().min(5)],
                    evidence(client, &guild_log, ids, &verdict.missing[0]),
                ));
            }
            if let Some((id, times)) = verdict.duplicates.first() {
                self.problems.push(format!(
                    "{name}: {label} received {} messages more than once (first {id}, {times} times)\n{}",
                    verdict.duplicates.len(),
                    evidence(client, &guild_log, ids, id),
                ));
            }
            client.with(|s| {
                if let Some(why) = &s.gave_up {
                    self.problems
                        .push(format!("{name}: {label} gave up: {why}"));
                }
                for err in &s.refetch_failures {
                    self.problems
                        .push(format!("{name}: {label} could not refetch: {err}"));
                }
            });
        }
    }

    /// What each fault must have done to count as tested, and its 4011s.
    fn check_fault(&mut self, fault: Fault, injected: &Injected, accounting: &Accounting) {
        let name = fault.name();
        let verdicts = &accounting.verdicts;
        let mut problems = Vec::new();
        if !fault.may_resync() && accounting.row.closes_4011 > 0 {
            problems.push(format!(
                "{name}: {} sockets closed 4011",
                accounting.row.closes_4011
            ));
        }
        for &n in &injected.affected {
            let (label, verdict) = (&self.clients[n].label, &verdicts[n]);
            let noticed = match fault {
                Fault::GatewayKill => verdict.delta.reconnects > 0,
                Fault::GatewayTerm => verdict.closes.contains(&1001),
                Fault::GatewayStop => verdict.delta.ping_timeouts > 0,
                _ => true,
            };
            if !noticed {
                problems.push(format!(
                    "{name}: {label} was on the gateway but did not notice as expected: {:?}, closes {:?}",
                    verdict.delta, verdict.closes
                ));
            }
        }
        if matches!(
            fault,
            Fault::GatewayKill | Fault::GatewayTerm | Fault::GatewayStop
        ) && injected.affected.is_empty()
        {
            problems.push(format!("{name}: no client was on the gateway"));
        }
        if fault == Fault::ApiKill && accounting.row.retries == 0 {
            problems.push(format!("{name}: no post failed while the api was replaced"));
        }
        self.problems.extend(problems);
    }

    /// Stops the load, accounts for the last posts, and checks what only
    /// the whole run can show.
    async fn finish(mut self, pg: &str, schema: &str) {
        let poster = self.poster.take().expect("the load runs");
        poster.finish().await;
        let ledger = Arc::clone(&self.ledger);
        let started = Instant::now();
        let accounting = self.account("drain (load stopped)", started).await;
        self.rows.push(accounting.row);
        self.check_ledger(&ledger, pg, schema).await;
        self.check_lock(&ledger);
        self.check_strays(&ledger);

        eprintln!(
            "fault suite: {} posts acknowledged in {:.1} s",
            ledger.len(),
            self.t0.elapsed().as_secs_f64()
        );
        for note in &self.notes {
            eprintln!("fault suite: {note}");
        }
        eprintln!("fault suite: {}", Row::HEADER);
        for row in &self.rows {
            eprintln!("fault suite: {}", row.line());
        }
        assert!(
            self.problems.is_empty(),
            "{} problems:\n{}",
            self.problems.len(),
            self.problems.join("\n\n")
        );
        self.stop_clients.cancel();
        for client in self.clients {
            let _ = tokio::time::timeout(Duration::from_secs(5), client.task).await;
        }
        self.cluster.stop().await;
        drop(self.redis);
    }

    /// Every post was acknowledged once, and the schema holds exactly the
    /// acknowledged messages; a post refused with a status wrote nothing.
    async fn check_ledger(&mut self, ledger: &Ledger, pg: &str, schema: &str) {
        let acknowledged = ledger.acknowledged.lock().expect("ledger").clone();
        let abandoned = ledger.abandoned.lock().expect("ledger").clone();
        for post in &abandoned {
            self.problems.push(format!(
                "{}: never acknowledged: {:?}",
                post.content, post.attempts
            ));
        }
        let ids: HashSet<&String> = acknowledged
            .iter()
            .filter_map(|p| p.message_id.as_ref())
            .collect();
        if ids.len() != acknowledged.len() {
            self.problems.push(format!(
                "{} posts acknowledged with {} distinct ids",
                acknowledged.len(),
                ids.len()
            ));
        }
        let stored = messages_in_schema(pg, schema).await;
        if stored != acknowledged.len() {
            self.problems.push(format!(
                "the schema holds {stored} messages, {} were acknowledged",
                acknowledged.len()
            ));
        }
        for post in &acknowledged {
            let id = post.message_id.as_deref().expect("acknowledged");
            let made_ms = Ulid::from_string(id).expect("a ULID").timestamp_ms();
            let writer = post.attempts.iter().find(|a| {
                matches!(a.answer, Answer::Refused(_))
                    && a.started_ms <= made_ms
                    && made_ms <= a.answered_ms
            });
            if let Some(refused) = writer {
                self.problems.push(format!(
                    "{}: refused {:?} but it wrote {id} (made at {made_ms} ms)",
                    post.content, refused
                ));
            }
        }
    }

    /// Every post tried while the messages table was locked was refused
    /// 503 or 408, and none was written then.
    fn check_lock(&mut self, ledger: &Ledger) {
        let Some((from_ms, to_ms)) = self.lock else {
            return;
        };
        let acknowledged = ledger.acknowledged.lock().expect("ledger").clone();
        let mut answers: BTreeMap<String, usize> = BTreeMap::new();
        for attempt in acknowledged
            .iter()
            .flat_map(|p| &p.attempts)
            .filter(|a| a.started_ms >= from_ms && a.answered_ms <= to_ms)
        {
            let answer = match &attempt.answer {
                Answer::Refused(status @ (503 | 408)) => format!("{status}"),
                Answer::Acknowledged(id)
                    if Ulid::from_string(id).is_ok_and(|id| id.timestamp_ms() < from_ms) =>
                {
                    "replayed".to_owned()
                }
                other => {
                    let other = match other {
                        Answer::Transport(why) => format!("a transport error: {why}"),
                        Answer::Refused(status) => format!("refused {status}"),
                        Answer::Acknowledged(id) => format!("{id} written"),
                    };
                    self.problems.push(format!(
                        "{}: a post tried during the lock: {other}",
                        Fault::DatabaseLock.name()
                    ));
                    "unexpected".to_owned()
                }
            };
            *answers.entry(answer).or_default() += 1;
        }
        self.notes.push(format!(
            "{}: answers to posts tried during the lock: {answers:?}",
            Fault::DatabaseLock.name()
        ));
        let refused =
            answers.get("503").copied().unwrap_or(0) + answers.get("408").copied().unwrap_or(0);
        if refused == 0 {
            self.problems.push(format!(
                "{}: no post was refused while the table was locked",
                Fault::DatabaseLock.name()
            ));
        }
    }

    /// No client received a message that was not acknowledged.
    fn check_strays(&mut self, ledger: &Ledger) {
        let acknowledged: HashSet<String> = ledger
            .acknowledged
            .lock()
            .expect("ledger")
            .iter()
            .filter_map(|p| p.message_id.clone())
            .collect();
        for client in &self.clients {
            let strays: Vec<String> = client.with(|s| {
                s.received
                    .keys()
                    .filter(|id| !acknowledged.contains(*id))
                    .cloned()
                    .collect()
            });
            if !strays.is_empty() {
                self.problems.push(format!(
                    "{} received messages never acknowledged: {strays:?}",
                    client.label
                ));
            }
        }
    }
}

/// A client's journal, its close codes and positions, and how the
/// messages around `message_id` (in acknowledgement order) reached it.
fn evidence(client: &Client, guild_log: &str, ids: &[String], message_id: &str) -> String {
    let at = ids.iter().position(|id| id == message_id).unwrap_or(0);
    let around: HashSet<&String> = ids[at.saturating_sub(3)..(at + 4).min(ids.len())]
        .iter()
        .collect();
    client.with(|s| {
        let mut out = format!(
            "  evidence of {}: counters {:?}, closes {:?}, positions {}\n",
            client.label,
            s.counters,
            s.closes,
            quoted(&s.positions)
        );
        for line in &s.journal {
            let _ = writeln!(out, "  | {line}");
        }
        let _ = writeln!(out, "  where its positions' epochs changed:");
        let mut epoch = None;
        for arrival in &s.arrivals {
            let now = arrival.positions[&guild_log]
                .as_str()
                .and_then(Token::parse)
                .map(|token| token.epoch);
            if now != epoch {
                let _ = writeln!(
                    out,
                    "  e {:>8.3}s {} on socket {} ({:?}) p={}",
                    arrival.at,
                    arrival.message_id,
                    arrival.socket,
                    arrival.phase,
                    arrival.positions
                );
                epoch = now;
            }
        }
        for arrival in s.arrivals.iter().filter(|a| around.contains(&a.message_id)) {
            let _ = writeln!(
                out,
                "  > {:>8.3}s {} on socket {} ({:?}) p={}",
                arrival.at, arrival.message_id, arrival.socket, arrival.phase, arrival.positions
            );
        }
        let _ = writeln!(
            out,
            "  around it, acknowledged in order: {:?}",
            &ids[at.saturating_sub(3)..(at + 4).min(ids.len())]
        );
        out
    })
}

/// Locks the messages table from another connection for [`LOCK_HOLD`];
/// the wall-clock milliseconds it was held from and to.
async fn hold_messages_lock(database_url: &str) -> (u64, u64) {
    use sqlx::Connection as _;
    assert!(
        LOCK_HOLD > API_REQUEST_TIMEOUT,
        "the lock must outlast the request timeout"
    );
    // The URL selects the cluster's schema (`fresh_schema`).
    let mut conn = sqlx::PgConnection::connect(database_url)
        .await
        .expect("postgres");
    let mut lock = conn.begin().await.expect("begin");
    sqlx::query("LOCK TABLE messages IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *lock)
        .await
        .expect("lock");
    let from_ms = now_ms();
    // The fault's length, not a wait for something to happen.
    tokio::time::sleep(LOCK_HOLD).await;
    let to_ms = now_ms();
    lock.commit().await.expect("unlock");
    (from_ms, to_ms)
}

async fn messages_in_schema(url: &str, schema: &str) -> usize {
    use sqlx::Connection as _;
    let mut conn = sqlx::PgConnection::connect(url).await.expect("postgres");
    let count: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT count(*) FROM {schema}.messages"
    )))
    .fetch_one(&mut conn)
    .await
    .expect("the api's tables are in the suite's schema");
    usize::try_from(count).expect("a count")
}

// --- the test --------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_fault_of_issue_12_leaves_a_client_stale() {
    let Ok(pg) = std::env::var("TEST_DATABASE_URL") else {
        eprintln!("SKIPPED: TEST_DATABASE_URL is unset; the fault suite was NOT run");
        return;
    };
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let binaries = tokio::task::spawn_blocking(support::workspace_binaries)
        .await
        .expect("build");
    let t0 = Instant::now();
    let (schema, database_url) = fresh_schema(&pg).await;
    let cluster = Cluster::start(binaries, database_url, redis.url(), layout()).await;
    let mut suite = Suite::start(cluster, redis, t0).await;
    let started = Instant::now();
    suite.poster().progress(QUIET_POSTS).await;
    let accounting = suite.account("0 steady load", started).await;
    suite.rows.push(accounting.row);
    for fault in Fault::ALL {
        suite.run(fault).await;
    }
    suite.finish(&pg, &schema).await;
}
