//! The end-to-end harness: starts a whole [`Stack`] on port 0 and talks to
//! it over real sockets, as a web client would. Postgres and Redis are used
//! when `TEST_DATABASE_URL` / `TEST_REDIS_URL` are set; each test gets its
//! own schema and key prefix, so tests run in parallel.

#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use filament_allinone::{RegistryChoice, Stack, StackConfig};
use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub const TOKEN_SECRET: &[u8] = b"an-end-to-end-test-secret-of-at-least-32-bytes";
pub const PASSWORD: &str = "correct horse battery";
/// How long to wait for something that should happen.
pub const DEADLINE: Duration = Duration::from_secs(10);

/// Which backends a test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backends {
    /// SQLite in a temp dir and the in-memory registry.
    Embedded,
    /// Postgres (`TEST_DATABASE_URL`) and Redis (`TEST_REDIS_URL`).
    External,
}

pub struct TestStack {
    pub stack: Stack,
    pub http: reqwest::Client,
    /// What the stack was started with, for [`restart_with`](Self::restart_with).
    config: StackConfig,
    _dir: Option<tempfile::TempDir>,
}

impl TestStack {
    /// Starts a stack, or returns `None` (after saying so loudly) when the
    /// external backends are requested but not configured.
    pub async fn start(backends: Backends, gateways: usize) -> Option<Self> {
        Self::start_with(backends, gateways, |_| {}).await
    }

    pub async fn start_with(
        backends: Backends,
        gateways: usize,
        tune: impl FnOnce(&mut StackConfig),
    ) -> Option<Self> {
        let unique = ulid::Ulid::generate().to_string().to_lowercase();
        let (database_url, registry, dir, store) = match backends {
            Backends::Embedded => {
                let dir = tempfile::tempdir().expect("temp dir");
                let url = format!("sqlite://{}", dir.path().join("filament.db").display());
                (url, RegistryChoice::Memory, Some(dir), None)
            }
            Backends::External => {
                let (Ok(pg), Ok(redis)) = (
                    std::env::var("TEST_DATABASE_URL"),
                    std::env::var("TEST_REDIS_URL"),
                ) else {
                    eprintln!(
                        "SKIPPED: TEST_DATABASE_URL or TEST_REDIS_URL is unset; \
                         the Postgres + Redis end-to-end path was NOT tested"
                    );
                    return None;
                };
                drop_stale_schemas(&pg, "e2e_").await;
                let store = filament_api::store::PostgresStore::connect_in_schema(
                    &pg,
                    &format!("e2e_{unique}"),
                )
                .await
                .expect("postgres schema");
                let registry = RegistryChoice::Redis {
                    url: redis,
                    key_prefix: format!("filament-test:{unique}:"),
                };
                let store: Arc<dyn filament_api::store::Store> = Arc::new(store);
                (pg, registry, None, Some(store))
            }
        };
        let mut config = StackConfig::new(database_url, TOKEN_SECRET.to_vec());
        config.registry = registry;
        config.store = store;
        config.gateways = gateways;
        config.password_hashing = filament_api::PasswordHashing {
            memory_kib: 64,
            iterations: 1,
        };
        tune(&mut config);
        let stack = Stack::start(config.clone()).await.expect("stack starts");
        Some(Self {
            stack,
            http: reqwest::Client::new(),
            config,
            _dir: dir,
        })
    }

    /// Stops the stack and starts a new one on the same database, as a
    /// restarted deployment would be; `tune` changes the new stack's
    /// config. Users and their tokens carry over; sockets do not.
    pub async fn restart_with(self, tune: impl FnOnce(&mut StackConfig)) -> Self {
        let Self {
            stack,
            http,
            mut config,
            _dir,
        } = self;
        stack.stop().await.expect("clean shutdown");
        tune(&mut config);
        let stack = Stack::start(config.clone()).await.expect("stack restarts");
        Self {
            stack,
            http,
            config,
            _dir,
        }
    }

    /// A stack whose api and gateways believe `X-Forwarded-For` from
    /// loopback, so each request or socket can come from the address the
    /// test picks (see [`call_from`](Self::call_from)).
    pub async fn start_trusting(backends: Backends, gateways: usize) -> Option<Self> {
        Self::start_with(backends, gateways, |config| {
            config.tune_api = |api| {
                api.trusted_proxy_cidrs = vec!["127.0.0.0/8".parse().expect("network")];
            };
            config.tune_gateway = |gateway| {
                gateway.trusted_proxies = vec!["127.0.0.0/8".parse().expect("network")];
            };
        })
        .await
    }

    /// Any method, with an optional JSON body, as the caller at `from` when
    /// given (sent as `X-Forwarded-For`; only a trusting stack believes it).
    pub async fn call_from(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
        from: Option<&str>,
    ) -> (u16, Value) {
        let mut request = self.http.request(method, self.api(path));
        if let Some(body) = body {
            request = request.json(&body);
        }
        if let Some(from) = from {
            request = request.header("x-forwarded-for", from);
        }
        self.send(request, token).await
    }

    pub fn api(&self, path: &str) -> String {
        format!("http://{}/api{path}", self.stack.public_addr)
    }

    /// Registers and logs in a fresh user; returns (user_id, access_token).
    pub async fn user(&self, name: &str) -> User {
        let username =
            format!("{name}_{}", &ulid::Ulid::generate().to_string()[20..]).to_lowercase();
        let (status, _) = self
            .post(
                "/auth/register",
                None,
                json!({"username": username, "password": PASSWORD}),
            )
            .await;
        assert_eq!(status, 200);
        let (status, body) = self
            .post(
                "/auth/login",
                None,
                json!({"username": username, "password": PASSWORD}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        let token = body["access_token"].as_str().expect("token").to_owned();
        let (_, me) = self.get("/auth/me", Some(&token)).await;
        User {
            id: me["user_id"].as_str().expect("user id").to_owned(),
            username,
            token,
            refresh_token: body["refresh_token"].as_str().expect("refresh").to_owned(),
        }
    }

    pub async fn post(&self, path: &str, token: Option<&str>, body: Value) -> (u16, Value) {
        self.send(self.http.post(self.api(path)).json(&body), token)
            .await
    }

    pub async fn post_raw(
        &self,
        path: &str,
        token: Option<&str>,
        body: &'static str,
    ) -> (u16, Value) {
        let request = self
            .http
            .post(self.api(path))
            .header("content-type", "application/json")
            .body(body);
        self.send(request, token).await
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> (u16, Value) {
        self.send(self.http.get(self.api(path)), token).await
    }

    /// Any method, with an optional JSON body.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let request = self.http.request(method, self.api(path));
        let request = match body {
            Some(body) => request.json(&body),
            None => request,
        };
        self.send(request, token).await
    }

    /// Any method, with a raw body sent as `application/json`.
    pub async fn call_raw(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: String,
    ) -> (u16, Value) {
        let request = self
            .http
            .request(method, self.api(path))
            .header("content-type", "application/json")
            .body(body);
        self.send(request, token).await
    }

    /// Sends a request the test built, with `token` as its bearer: the
    /// status and the body as JSON (`Null` when empty, else the text).
    pub async fn send(
        &self,
        request: reqwest::RequestBuilder,
        token: Option<&str>,
    ) -> (u16, Value) {
        let request = match token {
            Some(token) => request.bearer_auth(token),
            None => request,
        };
        let response = request.send().await.expect("request sent");
        let status = response.status().as_u16();
        let text = response.text().await.expect("body");
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        (status, body)
    }

    /// Creates a guild and a text channel in it; returns their ids.
    pub async fn guild_with_channel(&self, owner: &User, visibility: &str) -> (String, String) {
        let (status, guild) = self
            .post(
                "/guilds",
                Some(&owner.token),
                json!({"name": "Test Guild", "visibility": visibility}),
            )
            .await;
        assert_eq!(status, 200, "{guild}");
        let guild_id = guild["guild_id"].as_str().expect("guild id").to_owned();
        let (status, channel) = self
            .post(
                &format!("/guilds/{guild_id}/channels"),
                Some(&owner.token),
                json!({"name": "general"}),
            )
            .await;
        assert_eq!(status, 200, "{channel}");
        (
            guild_id,
            channel["channel_id"]
                .as_str()
                .expect("channel id")
                .to_owned(),
        )
    }

    /// Joins a public guild from the directory; the join must be accepted.
    pub async fn join(&self, user: &User, guild_id: &str) {
        let (status, body) = self
            .post(
                &format!("/guilds/{guild_id}/join"),
                Some(&user.token),
                json!(null),
            )
            .await;
        assert_eq!(
            (status, &body["outcome"]),
            (200, &json!("accepted")),
            "{body}"
        );
    }

    /// Connects to gateway `n` (0-based) directly.
    pub async fn connect(&self, n: usize, user: &User) -> Socket {
        self.connect_as(n, user, None).await
    }

    /// Connects to gateway `n` claiming, in `X-Forwarded-For`, to come from
    /// `client_ip` (only a gateway trusting loopback believes it).
    pub async fn connect_from(&self, n: usize, user: &User, client_ip: &str) -> Socket {
        self.connect_as(n, user, Some(client_ip)).await
    }

    async fn connect_as(&self, n: usize, user: &User, client_ip: Option<&str>) -> Socket {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
        let url = format!(
            "ws://{}/gateway/ws?access_token={}",
            self.stack.gateway_addrs[n], user.token
        );
        let mut request = url.into_client_request().expect("ws request");
        if let Some(ip) = client_ip {
            request
                .headers_mut()
                .insert("x-forwarded-for", ip.parse().expect("header value"));
        }
        let (ws, _) = tokio_tungstenite::connect_async(request)
            .await
            .expect("ws connects");
        let mut socket = Socket {
            ws,
            hide_presence: true,
        };
        let ready = socket.next_event().await;
        assert_eq!(ready["t"], "ready");
        assert_eq!(ready["d"]["user_id"], user.id.as_str());
        socket
    }

    pub fn gateway_metrics(&self, n: usize) -> Arc<filament_gateway::Metrics> {
        Arc::clone(&self.stack.gateway_metrics[n])
    }
}

/// Percent-encodes everything but unreserved characters, for path segments
/// and query values.
pub fn percent_encode(raw: &str) -> String {
    raw.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Everything a service process logged so far: its JSON log lines, parsed.
pub type JsonLog = std::sync::Arc<std::sync::Mutex<Vec<Value>>>;

/// Starts a service binary with nothing but `env` (JSON logs at `rust_log`
/// on stdout, collected into the returned log); killed when dropped.
pub fn spawn_logged(
    binary: &std::path::Path,
    rust_log: &str,
    env: &[(&str, String)],
) -> (tokio::process::Child, JsonLog) {
    use tokio::io::AsyncBufReadExt as _;
    let mut child = tokio::process::Command::new(binary)
        .env_clear()
        .env("FILAMENT_LOG_FORMAT", "json")
        .env("RUST_LOG", rust_log)
        .envs(env.iter().map(|(name, value)| (name, value)))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|err| panic!("{} starts: {err}", binary.display()));
    let log = JsonLog::default();
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    tokio::spawn({
        let log = std::sync::Arc::clone(&log);
        async move {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Ok(entry) = serde_json::from_str::<Value>(&line) {
                    log.lock().expect("log").push(entry);
                }
            }
        }
    });
    (child, log)
}

/// The directory of every workspace binary (`filament-api`,
/// `filament-gateway`, …), for tests that run them as separate processes:
/// another package's binary has no `CARGO_BIN_EXE_*` here. It asks cargo
/// to build exactly what `cargo test --workspace --all-targets` builds, so
/// inside that run it is a no-op that only checks freshness; building only
/// those packages' binaries would resolve features differently and compile
/// a second copy of their dependencies.
pub fn workspace_binaries() -> std::path::PathBuf {
    workspace_binaries_in(Profile::Test)
}

/// Which build of the workspace binaries [`workspace_binaries_in`] makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    /// What `cargo test --workspace --all-targets` builds (the dev profile).
    Test,
    /// `cargo build --release --workspace --bins`, for benchmarks.
    Release,
}

/// Builds the workspace binaries in `profile` and returns their directory:
/// the one this test or benchmark's own `filament` binary is in, which is
/// `target/release` when it was built by `cargo bench` (pass
/// [`Profile::Release`] then) and `target/debug` under `cargo test`.
pub fn workspace_binaries_in(profile: Profile) -> std::path::PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let mut build = std::process::Command::new(cargo);
    match profile {
        Profile::Test => build.args(["build", "--quiet", "--workspace", "--all-targets"]),
        Profile::Release => build.args(["build", "--quiet", "--release", "--workspace", "--bins"]),
    };
    // Without what cargo set for this test process alone (`CARGO_PKG_*`,
    // `CARGO_BIN_EXE_*`, `OUT_DIR`, …): builds see them as a changed
    // environment and compile everything again.
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        let kept = ["CARGO_HOME", "CARGO_TARGET_DIR"].contains(&name.as_ref())
            || name.starts_with("CARGO_TERM_");
        if (name.starts_with("CARGO_") && !kept) || name == "OUT_DIR" {
            build.env_remove(name.as_ref());
        }
    }
    let status = build.status().expect("cargo runs");
    assert!(status.success(), "building the workspace failed");
    std::path::PathBuf::from(env!("CARGO_BIN_EXE_filament"))
        .parent()
        .expect("the target directory")
        .to_owned()
}

/// Drops `<prefix><ulid>` schemas older than an hour. Tests do not drop
/// their own (a failing test must not leave a half-stopped stack behind a
/// DROP), so each run sweeps what earlier runs left. The ULID's time says
/// the age.
pub async fn drop_stale_schemas(url: &str, prefix: &str) {
    use sqlx::{Connection as _, Row as _};
    let Ok(mut conn) = sqlx::PgConnection::connect(url).await else {
        return;
    };
    let pattern = format!("{}%", prefix.replace('_', "\\_"));
    let rows = sqlx::query("SELECT nspname FROM pg_namespace WHERE nspname LIKE $1")
        .bind(pattern)
        .fetch_all(&mut conn)
        .await
        .unwrap_or_default();
    let cutoff = std::time::SystemTime::now() - Duration::from_secs(3600);
    for row in rows {
        let name: String = row.get("nspname");
        let Some(id) = name
            .strip_prefix(prefix)
            .and_then(|id| ulid::Ulid::from_string(&id.to_uppercase()).ok())
        else {
            continue;
        };
        if id.datetime() < cutoff {
            // The name is the prefix + a parsed ULID: nothing to inject.
            let drop = format!("DROP SCHEMA IF EXISTS \"{name}\" CASCADE");
            let _ = sqlx::query(sqlx::AssertSqlSafe(drop))
                .execute(&mut conn)
                .await;
        }
    }
}

#[derive(Debug, Clone)]
pub struct User {
    pub id: String,
    pub username: String,
    pub token: String,
    pub refresh_token: String,
}

pub struct Socket {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// Skip `presence_sync` and `presence_update` frames in
    /// [`next_event`](Self::next_event). Presence updates arrive whenever
    /// anyone in a shared guild comes or goes, so tests of other events
    /// ignore them; presence tests turn this off.
    pub hide_presence: bool,
}

impl Socket {
    /// The next JSON frame, skipping pings; fails after [`DEADLINE`].
    pub async fn next_event(&mut self) -> Value {
        loop {
            let frame = tokio::time::timeout(DEADLINE, self.ws.next())
                .await
                .expect("a frame before the deadline")
                .expect("socket open")
                .expect("frame readable");
            match frame {
                Message::Text(text) => {
                    let event: Value = serde_json::from_str(&text).expect("json frame");
                    let presence = event["t"]
                        .as_str()
                        .is_some_and(|t| t.starts_with("presence_"));
                    if !(presence && self.hide_presence) {
                        return event;
                    }
                }
                Message::Ping(_) | Message::Pong(_) => {}
                other => panic!("unexpected frame: {other:?}"),
            }
        }
    }

    /// The close frame's code and reason; fails after [`DEADLINE`].
    pub async fn next_close(&mut self) -> (u16, String) {
        loop {
            let frame = tokio::time::timeout(DEADLINE, self.ws.next())
                .await
                .expect("a frame before the deadline");
            match frame {
                Some(Ok(Message::Close(Some(close)))) => {
                    return (close.code.into(), close.reason.to_string());
                }
                Some(Ok(Message::Close(None))) | None => return (1005, String::new()),
                Some(Ok(_)) => {}
                Some(Err(err)) => panic!("socket error before close: {err}"),
            }
        }
    }

    pub async fn send_json(&mut self, value: Value) {
        self.ws
            .send(Message::Text(value.to_string().into()))
            .await
            .expect("frame sent");
    }

    pub async fn subscribe(&mut self, guild_id: &str, channel_id: &str) {
        self.send_json(json!({"v": 1, "t": "subscribe", "d": {"guild_id": guild_id, "channel_id": channel_id}}))
            .await;
    }

    /// Subscribes and waits for the acknowledgement.
    /// Subscribes and waits for the acknowledgement and the channel's voice
    /// roster that follows it (PROTOCOL.md §5.5).
    pub async fn subscribed(&mut self, guild_id: &str, channel_id: &str) {
        self.subscribe(guild_id, channel_id).await;
        let ack = self.next_event().await;
        assert_eq!(ack["t"], "subscribed", "{ack}");
        assert_eq!(
            ack["d"],
            json!({"guild_id": guild_id, "channel_id": channel_id})
        );
        let roster = self.next_event().await;
        assert_eq!(roster["t"], "voice_participant_sync", "{roster}");
        assert_eq!(roster["d"]["channel_id"], channel_id);
    }
}

impl TestStack {
    /// Opens a socket on gateway `n` (0-based) and reads nothing, not even
    /// `ready`: for tests that check every frame themselves.
    pub async fn open(&self, n: usize, user: &User) -> Socket {
        let url = format!(
            "ws://{}/gateway/ws?access_token={}",
            self.stack.gateway_addrs[n], user.token
        );
        let (ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("ws connects");
        Socket {
            ws,
            hide_presence: false,
        }
    }
}
