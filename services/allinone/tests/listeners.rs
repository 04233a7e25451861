//! The public listeners against hostile connections: slow or silent heads
//! and idle keep-alives are dropped by the header timer, one address cannot
//! take every connection, a process short of descriptors keeps serving
//! other addresses, and the port speaks HTTP/1.1 only. The last tests run
//! the `filament` binary itself, under a lowered open-file limit, with its
//! configuration in the environment as an operator would set it.

mod support;

use std::net::{IpAddr, SocketAddr};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use filament_runtime::Env;
use support::{Backends, DEADLINE, TestStack};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::{TcpSocket, TcpStream};
use tokio::process::{Child, Command};

/// A connection from `source` (any loopback address) to `target`.
async fn connect_from(source: IpAddr, target: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    socket.bind((source, 0).into()).expect("bind source");
    socket.connect(target).await.expect("connect")
}

const LOCAL: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

fn loopback(last: u8) -> IpAddr {
    IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, last))
}

/// Reads until the peer closes; `None` if it has not closed by `deadline`.
async fn closed_within(stream: &mut TcpStream, deadline: Duration) -> Option<Vec<u8>> {
    let mut seen = Vec::new();
    tokio::time::timeout(deadline, async {
        let mut buf = [0u8; 1024];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .ok()
    .map(|()| seen)
}

/// One request on a fresh connection; the status line of the answer.
async fn status_line(stream: &mut TcpStream, path: &str) -> String {
    let request = format!("GET {path} HTTP/1.1\r\nhost: filament\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    tokio::time::timeout(DEADLINE, reader.read_line(&mut line))
        .await
        .expect("an answer before the deadline")
        .expect("read");
    line.trim_end().to_owned()
}

/// The header timeout the stacks of these tests run with.
const HEADER_TIMEOUT: Duration = Duration::from_secs(1);
/// A connection the header timer should drop is closed within this long
/// of opening: the timeout, and room for a loaded machine's scheduling.
const DROPPED_WITHIN: Duration = Duration::from_secs(5);

/// The three kinds of connection that used to stay open forever, against
/// one listener: each is closed by the header timer, not before the
/// timeout and soon after it.
async fn assert_header_timer(target: SocketAddr, health: &str) {
    let opened = tokio::time::Instant::now();
    let silent = connect_from(LOCAL, target).await;
    let mut partial = connect_from(LOCAL, target).await;
    partial.write_all(b"GET / HT").await.expect("write");
    let mut idle = connect_from(LOCAL, target).await;
    let request = format!("GET {health} HTTP/1.1\r\nhost: filament\r\n\r\n");
    idle.write_all(request.as_bytes()).await.expect("write");

    // The slow one keeps trickling bytes, as slowloris does.
    let (mut partial_read, mut partial_write) = partial.into_split();
    let trickle = tokio::spawn(async move {
        for byte in b"TP/1.1\r\nx-slow: ".iter().cycle() {
            if partial_write.write_all(&[*byte]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });

    let left = || DROPPED_WITHIN.saturating_sub(opened.elapsed());
    for (name, mut stream) in [("silent", silent), ("idle keep-alive", idle)] {
        let seen = closed_within(&mut stream, left())
            .await
            .unwrap_or_else(|| panic!("{target}: a {name} connection was still open"));
        assert!(
            opened.elapsed() >= HEADER_TIMEOUT,
            "{target}: a {name} connection was closed before the header timeout"
        );
        if name == "idle keep-alive" {
            let text = String::from_utf8_lossy(&seen);
            assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        }
    }
    let mut buf = [0u8; 256];
    let closed = tokio::time::timeout(left(), async {
        loop {
            match partial_read.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "{target}: a trickling head was still open");
    trickle.abort();
}

#[tokio::test]
async fn slow_silent_and_idle_connections_are_dropped_by_the_header_timer() {
    let stack = TestStack::start_with(Backends::Embedded, 1, |config| {
        config.env = Env::from_pairs([(
            "FILAMENT_HTTP_HEADER_TIMEOUT_SECS",
            HEADER_TIMEOUT.as_secs().to_string(),
        )]);
    })
    .await
    .expect("embedded stack");
    let s = &stack.stack;
    assert_header_timer(s.public_addr, "/api/health").await;
    assert_header_timer(s.api_http_addr, "/health").await;
    assert_header_timer(s.gateway_addrs[0], "/healthz").await;
}

#[tokio::test]
async fn one_address_cannot_take_every_connection() {
    let stack = TestStack::start_with(Backends::Embedded, 1, |config| {
        config.env = Env::from_pairs([("FILAMENT_HTTP_MAX_CONNECTIONS_PER_ADDRESS", "8")]);
    })
    .await
    .expect("embedded stack");
    let origin = stack.stack.public_addr;
    let attacker = loopback(2);
    let mut held = Vec::new();
    for _ in 0..8 {
        let mut stream = connect_from(attacker, origin).await;
        stream.write_all(b"GET / HT").await.expect("write");
        held.push(stream);
    }
    // The ninth is answered at once and closed.
    let mut ninth = connect_from(attacker, origin).await;
    let seen = closed_within(&mut ninth, DEADLINE)
        .await
        .expect("the ninth connection is closed");
    let text = String::from_utf8_lossy(&seen);
    assert!(text.starts_with("HTTP/1.1 429"), "{text}");

    // Everyone else is served.
    let mut other = connect_from(LOCAL, origin).await;
    assert_eq!(
        status_line(&mut other, "/api/health").await,
        "HTTP/1.1 200 OK"
    );

    // A closed connection gives its place back.
    drop(held.pop());
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let mut again = connect_from(attacker, origin).await;
        let status = status_line(&mut again, "/api/health").await;
        if status == "HTTP/1.1 200 OK" {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the freed place was never given back: {status}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn the_public_port_speaks_http1_only() {
    let stack = TestStack::start(Backends::Embedded, 1)
        .await
        .expect("embedded stack");
    let mut stream = connect_from(LOCAL, stack.stack.public_addr).await;
    stream
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .expect("write");
    let seen = closed_within(&mut stream, DEADLINE)
        .await
        .expect("the connection is closed");
    // An HTTP/2 server would answer with a SETTINGS frame (type 4 in the
    // fourth byte); an HTTP/1.1-only one with a status line, or nothing.
    let text = String::from_utf8_lossy(&seen);
    assert!(seen.is_empty() || text.starts_with("HTTP/1.1 "), "{seen:?}");
}

/// The `filament` binary, started with `env` under an open-file limit of
/// `nofile`, and the origin it prints.
struct Filament {
    child: Child,
    origin: SocketAddr,
    metrics: Vec<String>,
    /// Everything it logged so far (tracing writes to stdout).
    logs: Arc<Mutex<String>>,
    _dir: tempfile::TempDir,
}

impl Filament {
    async fn start(nofile: u32, env: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut command = Command::new("prlimit");
        command
            .arg(format!("--nofile={nofile}:{nofile}"))
            .arg(env!("CARGO_BIN_EXE_filament"))
            .env("FILAMENT_PUBLIC_ADDR", "127.0.0.1:0")
            .env("FILAMENT_DATA_DIR", dir.path())
            .env("FILAMENT_ARGON2_MEMORY_KIB", "1024")
            .env("FILAMENT_ARGON2_ITERATIONS", "1")
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        let mut child = command.spawn().expect("spawn filament under prlimit");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let mut origin = None;
        let mut metrics = Vec::new();
        let logs = Arc::new(Mutex::new(String::new()));
        tokio::time::timeout(Duration::from_secs(60), async {
            while let Some(line) = lines.next_line().await.expect("stdout") {
                append(&logs, &line);
                let line = line.trim();
                if let Some(rest) = line.strip_prefix("web clients: http://") {
                    let addr = rest.split_whitespace().next().expect("address");
                    origin = Some(addr.parse().expect("origin address"));
                } else if let Some(url) = line.strip_prefix("metrics:") {
                    metrics.push(url.trim().to_owned());
                } else if line.starts_with("Press ctrl-c") {
                    return;
                }
            }
        })
        .await
        .expect("filament printed where to connect");
        // Keep draining stdout so the child never blocks on a full pipe.
        tokio::spawn({
            let logs = Arc::clone(&logs);
            async move {
                while let Ok(Some(line)) = lines.next_line().await {
                    append(&logs, &line);
                }
            }
        });
        Self {
            child,
            origin: origin.expect("the origin was printed"),
            metrics,
            logs,
            _dir: dir,
        }
    }

    fn logs(&self) -> String {
        self.logs.lock().expect("logs").clone()
    }

    async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }
}

fn append(logs: &Mutex<String>, line: &str) {
    let mut logs = logs.lock().expect("logs");
    logs.push_str(line);
    logs.push('\n');
}

/// Opens up to `count` connections from `source`, each holding a partial
/// head; returns those the origin kept open.
async fn hold(source: IpAddr, origin: SocketAddr, count: usize) -> Vec<TcpStream> {
    let mut held = Vec::new();
    for _ in 0..count {
        let mut stream = connect_from(source, origin).await;
        if stream.write_all(b"GET / HT").await.is_ok() {
            held.push(stream);
        }
    }
    held
}

#[tokio::test]
async fn the_binary_keeps_serving_others_when_one_address_floods_it() {
    let filament = Filament::start(
        512,
        &[
            ("FILAMENT_HTTP_MAX_CONNECTIONS_PER_ADDRESS", "128"),
            ("FILAMENT_HTTP_HEADER_TIMEOUT_SECS", "60"),
        ],
    )
    .await;
    // Far more partial heads than the process has descriptors.
    let _held = hold(loopback(2), filament.origin, 600).await;
    let mut other = connect_from(LOCAL, filament.origin).await;
    assert_eq!(
        status_line(&mut other, "/api/health").await,
        "HTTP/1.1 200 OK"
    );
    let mut upgrade = connect_from(LOCAL, filament.origin).await;
    // No token: the gateway itself answers, which is the point here.
    let status = status_line(&mut upgrade, "/gateway/ws").await;
    assert!(status.starts_with("HTTP/1.1 4"), "{status}");
    filament.stop().await;
}

#[tokio::test]
async fn running_out_of_descriptors_is_counted_logged_and_survived() {
    // Caps above what the descriptors allow, spread over several
    // addresses: accept itself runs out of descriptors.
    // About 30 descriptors go to the process itself.
    let filament = Filament::start(
        128,
        &[
            ("FILAMENT_HTTP_MAX_CONNECTIONS_PER_ADDRESS", "100000"),
            ("FILAMENT_HTTP_MAX_CONNECTIONS", "100000"),
            ("FILAMENT_HTTP_HEADER_TIMEOUT_SECS", "60"),
        ],
    )
    .await;
    let mut held = Vec::new();
    for last in 2..=5 {
        held.extend(hold(loopback(last), filament.origin, 40).await);
    }
    // The process says why it stopped accepting.
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !filament.logs().contains("accept failed") {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no log line said why:\n{}",
            filament.logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(filament.logs().contains("open-file limit"));

    // Once the flood lets go, everyone is served again.
    drop(held);
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let mut other = connect_from(LOCAL, filament.origin).await;
        if status_line(&mut other, "/api/health").await == "HTTP/1.1 200 OK" {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never served again");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // And the failures were counted. The origin counts into the first
    // gateway's series: the api's admin listener is printed first, the
    // gateway's second.
    let gateway_metrics = filament
        .metrics
        .get(1)
        .cloned()
        .expect("gateway metrics url");
    let text = reqwest::get(gateway_metrics)
        .await
        .expect("scrape")
        .text()
        .await
        .expect("metrics text");
    let counted = text
        .lines()
        .find_map(|line| {
            line.strip_prefix("filament_http_accept_errors_total{reason=\"descriptors\"} ")
        })
        .and_then(|value| value.trim().parse::<u64>().ok());
    assert!(counted.is_some_and(|n| n > 0), "not counted:\n{text}");
    filament.stop().await;
}

#[tokio::test]
async fn the_binary_honours_the_gateway_and_api_variables() {
    let filament = Filament::start(
        4096,
        &[
            ("FILAMENT_GATEWAY_ALLOWED_ORIGINS", "https://chat.example"),
            ("FILAMENT_RATE_LIMIT_REQUESTS_PER_MINUTE", "3"),
        ],
    )
    .await;
    let upgrade = |origin: &'static str| {
        let target = filament.origin;
        async move {
            let mut stream = connect_from(LOCAL, target).await;
            let request = format!(
                "GET /gateway/ws HTTP/1.1\r\nhost: filament\r\norigin: {origin}\r\n\
                 connection: upgrade\r\nupgrade: websocket\r\nsec-websocket-version: 13\r\n\
                 sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
            );
            stream.write_all(request.as_bytes()).await.expect("write");
            let mut line = String::new();
            BufReader::new(&mut stream)
                .read_line(&mut line)
                .await
                .expect("read");
            line.trim_end().to_owned()
        }
    };
    assert_eq!(
        upgrade("https://evil.example").await,
        "HTTP/1.1 403 Forbidden"
    );
    // The allowed origin passes the origin check (and then fails for want
    // of a token, which is not a 403).
    let allowed = upgrade("https://chat.example").await;
    assert_ne!(allowed, "HTTP/1.1 403 Forbidden");

    // The global REST limiter takes its size from the environment too.
    let http = reqwest::Client::new();
    let mut statuses = Vec::new();
    for _ in 0..5 {
        let response = http
            .get(format!("http://{}/api/health", filament.origin))
            .send()
            .await
            .expect("health");
        statuses.push(response.status().as_u16());
    }
    assert!(statuses.contains(&429), "{statuses:?}");
    filament.stop().await;
}
