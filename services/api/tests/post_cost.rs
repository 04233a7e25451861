//! What one `POST /guilds/{g}/channels/{c}/messages` costs Postgres:
//! round trips (each statement, once its connection has prepared it, and
//! the BEGIN sqlx sends before a transaction's first one) and
//! transactions, counted on the client from sqlx's own statement log
//! while the real api (router, middleware, relay) takes posts over HTTP,
//! against `TEST_DATABASE_URL` in a schema of its own.
//!
//! It prints the cost per post, by statement, and fails when a post takes
//! more round trips than [`MAX_ROUND_TRIPS_PER_POST`]: a lookup added to
//! the hot path shows up here before it shows up in production. No timing
//! is measured or asserted.
//!
//! The relay's periodic work (its claim, the change log's head, the
//! idempotency prune) runs per second, not per post, and is listed apart;
//! deleting the published outbox rows is counted with the posts, whoever
//! does it. Without `TEST_DATABASE_URL` the test passes after saying
//! `SKIPPED:` on stderr.

mod support;

use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use filament_api::store::{PostgresStore, Store};
use filament_api::{Config, PasswordHashing};
use filament_registry::{MemoryRegistry, Registry, RegistryConfig};
use serde_json::{Value, json};
use sqlx::{Connection as _, PgConnection};
use tokio_util::sync::CancellationToken;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::subscriber::Interest;
use tracing::{Event, Metadata, Subscriber};
use ulid::Ulid;

/// Posts measured, after [`WARM_UP`] posts that let every pooled
/// connection prepare its statements.
const POSTS: u32 = 100;
const WARM_UP: u32 = 10;
/// The bound a regression trips: the IP gate with the caller's session
/// (one statement), channel access (one statement), and the insert
/// transaction (BEGIN, message, outbox row, log head, log entry, COMMIT),
/// plus a share of the batched outbox delete: 8 and a little.
const MAX_ROUND_TRIPS_PER_POST: f64 = 8.5;
/// sqlx's statement log.
const SQLX_TARGET: &str = "sqlx::query";
/// Marks this test's own statements, which are not the api's cost.
const OWN: &str = "/* post_cost */";
const DEADLINE: Duration = Duration::from_secs(10);

/// Statements by label, round trips and transactions, while `counting`.
#[derive(Debug, Default)]
struct Tally {
    counting: bool,
    by_label: BTreeMap<String, (u64, Share)>,
    /// The posts' statements (not the relay's periodic work, not
    /// connection setup), and the BEGIN of each of their transactions.
    round_trips: u64,
    transactions: u64,
}

/// Where a statement's cost goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Share {
    /// Part of what a post costs.
    Post,
    /// The relay's periodic work, per second rather than per post.
    Periodic,
    /// A new pooled connection's setup, or this test's own statements.
    Setup,
}

/// The statement's label (verb and first table) and whose cost it is.
fn classify(sql: &str) -> (String, Share) {
    let words: Vec<&str> = sql.split_whitespace().collect();
    let upper = |word: &str| word.to_ascii_uppercase();
    let verb = words.first().map(|w| upper(w)).unwrap_or_default();
    let after = |keyword: &str| {
        words
            .iter()
            .position(|w| upper(w) == keyword)
            .and_then(|i| words.get(i + 1))
            .map_or("?", |w| w.trim_matches(|c: char| c == '(' || c == ','))
    };
    let table = match verb.as_str() {
        "INSERT" => after("INTO"),
        "UPDATE" => after("UPDATE"),
        "DELETE" | "SELECT" | "WITH" => after("FROM"),
        _ => "",
    };
    let unions = words
        .windows(2)
        .filter(|pair| upper(pair[0]) == "UNION" && upper(pair[1]) == "ALL")
        .count();
    let mut label = format!("{verb} {table}").trim_end().to_owned();
    if unions > 0 {
        label.push_str(&format!(" (+{unions} UNION ALL)"));
    }
    let share = if sql.contains(OWN) || verb == "SET" {
        Share::Setup
    } else if (verb == "UPDATE" && table == "event_outbox")
        || (verb == "SELECT" && table == "message_log_head")
        || (verb == "DELETE" && table == "idempotency_keys")
    {
        Share::Periodic
    } else {
        Share::Post
    };
    (label, share)
}

impl Tally {
    fn statement(&mut self, sql: &str) {
        if !self.counting {
            return;
        }
        let (label, share) = classify(sql);
        self.by_label.entry(label.clone()).or_insert((0, share)).0 += 1;
        if share != Share::Post {
            return;
        }
        self.round_trips += 1;
        match label.split_whitespace().next().unwrap_or_default() {
            // sqlx does not log the BEGIN it sends (and waits for) first.
            "COMMIT" | "ROLLBACK" => {
                self.round_trips += 1;
                self.transactions += 1;
            }
            // On a post's path the inserts and updates run inside its
            // BEGIN … COMMIT; each read, and the outbox delete, is a
            // transaction of its own.
            "INSERT" | "UPDATE" => {}
            _ => self.transactions += 1,
        }
    }
}

fn tally() -> &'static Mutex<Tally> {
    static TALLY: OnceLock<Mutex<Tally>> = OnceLock::new();
    TALLY.get_or_init(Mutex::default)
}

fn with_tally<T>(f: impl FnOnce(&mut Tally) -> T) -> T {
    f(&mut tally().lock().unwrap_or_else(PoisonError::into_inner))
}

/// A subscriber that only listens to sqlx's statement log, and tallies it.
struct StatementCounter;

/// The SQL of one logged statement: the whole text when sqlx logs it
/// apart from its summary, else the summary (a short statement).
#[derive(Default)]
struct StatementText {
    summary: String,
    statement: String,
}

impl Visit for StatementText {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "summary" => value.clone_into(&mut self.summary),
            "db.statement" => value.clone_into(&mut self.statement),
            _ => {}
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if matches!(field.name(), "summary" | "db.statement") {
            self.record_str(field, format!("{value:?}").trim_matches('"'));
        }
    }
}

impl Subscriber for StatementCounter {
    fn register_callsite(&self, metadata: &'static Metadata<'static>) -> Interest {
        if self.enabled(metadata) {
            Interest::always()
        } else {
            Interest::never()
        }
    }

    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        // sqlx first asks `enabled!` (a hint, not an event) whether to log.
        !metadata.is_span() && metadata.target() == SQLX_TARGET
    }

    fn new_span(&self, _span: &Attributes<'_>) -> Id {
        // Never called: no span is enabled.
        Id::from_u64(1)
    }

    fn record(&self, _span: &Id, _values: &Record<'_>) {}

    fn record_follows_from(&self, _span: &Id, _follows: &Id) {}

    fn event(&self, event: &Event<'_>) {
        let mut text = StatementText::default();
        event.record(&mut text);
        let sql = if text.statement.trim().is_empty() {
            text.summary
        } else {
            text.statement
        };
        with_tally(|tally| tally.statement(&sql));
    }

    fn enter(&self, _span: &Id) {}

    fn exit(&self, _span: &Id) {}
}

/// The api on Postgres in its own schema, served on port 0.
struct Api {
    base: String,
    http: reqwest::Client,
    shutdown: CancellationToken,
    running: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Api {
    async fn start(store: Arc<dyn Store>) -> Self {
        let any: SocketAddr = ([127, 0, 0, 1], 0).into();
        let mut config = Config::new(
            any,
            any,
            "postgres://unused",
            b"a-post-cost-test-secret-of-at-least-32-bytes".to_vec(),
        );
        config.password_hashing = PasswordHashing {
            memory_kib: 64,
            iterations: 1,
        };
        config.attachment_root = std::env::temp_dir().join("filament-post-cost");
        let registry: Arc<dyn Registry> = Arc::new(MemoryRegistry::new(RegistryConfig::default()));
        let api = filament_api::bind(config, store, registry)
            .await
            .expect("bind");
        let base = format!("http://{}", api.http_addr().expect("address"));
        let shutdown = CancellationToken::new();
        let running = tokio::spawn(api.run(shutdown.clone()));
        Self {
            base,
            http: reqwest::Client::new(),
            shutdown,
            running,
        }
    }

    async fn post(&self, path: &str, token: Option<&str>, body: Value) -> Value {
        let mut request = self.http.post(format!("{}{path}", self.base)).json(&body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.expect("request");
        let status = response.status();
        let body: Value = response.json().await.expect("json");
        assert!(status.is_success(), "{path}: {status} {body}");
        body
    }

    async fn stop(self) {
        self.shutdown.cancel();
        self.running.await.expect("join").expect("clean shutdown");
    }
}

/// Polls the schema's outbox until it is empty: every published event was
/// deleted, by the request path or by the relay's batch.
async fn outbox_drained(connection: &mut PgConnection, schema: &str) {
    let query = format!("SELECT count(*) FROM \"{schema}\".event_outbox {OWN}");
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let (left,): (i64,) = sqlx::query_as(sqlx::AssertSqlSafe(query.clone()))
            .fetch_one(&mut *connection)
            .await
            .expect("count the outbox");
        if left == 0 {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{left} outbox rows were never deleted"
        );
        tokio::task::yield_now().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_costs_few_round_trips() {
    let Some(url) = support::postgres_url("the cost of a post was not measured") else {
        return;
    };
    tracing::subscriber::set_global_default(StatementCounter).expect("the only subscriber");
    let schema = format!("post_cost_{}", Ulid::generate().to_string().to_lowercase());
    let store = Arc::new(
        PostgresStore::connect_in_schema(&url, &schema)
            .await
            .expect("connect"),
    );
    let api = Api::start(store.clone()).await;

    let credentials = json!({"username": "poster", "password": "correct horse battery"});
    api.post("/auth/register", None, credentials.clone()).await;
    let login = api.post("/auth/login", None, credentials).await;
    let token = login["access_token"].as_str().expect("token").to_owned();
    let guild = api
        .post("/guilds", Some(&token), json!({"name": "cost"}))
        .await;
    let guild = guild["guild_id"].as_str().expect("guild id").to_owned();
    let channel = api
        .post(
            &format!("/guilds/{guild}/channels"),
            Some(&token),
            json!({"name": "general"}),
        )
        .await;
    let channel = channel["channel_id"].as_str().expect("channel id");
    let messages = format!("/guilds/{guild}/channels/{channel}/messages");
    for n in 0..WARM_UP {
        let body = json!({"content": format!("warm-up {n}")});
        api.post(&messages, Some(&token), body).await;
    }
    let mut own = PgConnection::connect(&url).await.expect("connect");
    outbox_drained(&mut own, &schema).await;

    with_tally(|tally| {
        *tally = Tally {
            counting: true,
            ..Tally::default()
        };
    });
    for n in 0..POSTS {
        let body = json!({"content": format!("message {n}")});
        api.post(&messages, Some(&token), body).await;
    }
    // Stopping lets the relay delete what it batched; the outbox then
    // holds nothing of the posts.
    api.stop().await;
    outbox_drained(&mut own, &schema).await;
    let tally = with_tally(std::mem::take);

    let per_post = |count: u64| f64::from(u32::try_from(count).expect("small")) / f64::from(POSTS);
    let round_trips = per_post(tally.round_trips);
    let mut report = format!(
        "cost of one POST …/messages on Postgres, over {POSTS} posts:\n  \
         round trips per post (statements + BEGINs): {round_trips:.2}\n  \
         transactions per post: {:.2}\n  by statement, per post:\n",
        per_post(tally.transactions)
    );
    for (label, (count, share)) in &tally.by_label {
        let note = match share {
            Share::Post => "",
            Share::Periodic => "  (the relay's periodic work: not counted)",
            Share::Setup => "  (connection setup or this test: not counted)",
        };
        report.push_str(&format!("    {:>6.2}  {label}{note}\n", per_post(*count)));
    }
    let _ = writeln!(std::io::stderr(), "{report}");

    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP SCHEMA \"{schema}\" CASCADE {OWN}"
    )))
    .execute(&mut own)
    .await
    .expect("drop the schema");
    store.close().await;
    assert!(
        round_trips <= MAX_ROUND_TRIPS_PER_POST,
        "a post takes {round_trips:.2} round trips, more than {MAX_ROUND_TRIPS_PER_POST}:\n{report}"
    );
}
