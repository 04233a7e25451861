//! A `redis-server` of a test's own, on a free port, with nothing on disk:
//! the test can kill it and start it again empty on the same port, which it
//! must never do to the machine's shared Redis. Used by the Redis fault
//! tests (`tests/faults.rs`) and the fault suite (`tests/fault_suite.rs`),
//! which include this file by path; it expects the including crate to have
//! the end-to-end harness as `crate::support` (`tests/support/mod.rs`).

#![allow(dead_code)]

use std::net::TcpListener as StdTcpListener;
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

use crate::support::DEADLINE;

/// A `redis-server` of this test's own, with nothing on disk.
pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
}

impl RedisServer {
    /// A server on a free port, answering; `None` (after a loud
    /// `SKIPPED:` line) when there is no `redis-server` to run.
    pub async fn start() -> Option<Self> {
        if Command::new("redis-server")
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .await
            .is_err()
        {
            eprintln!("SKIPPED: no redis-server on PATH; the Redis fault tests were NOT run");
            return None;
        }
        let port = StdTcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free port")
            .port();
        let mut server = Self { port, child: None };
        server.spawn().await;
        Some(server)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    async fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("redis-server starts");
        self.child = Some(child);
        let client = redis::Client::open(self.url()).expect("redis url");
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            if let Ok(mut conn) = client.get_multiplexed_async_connection().await
                && redis::cmd("PING")
                    .query_async::<String>(&mut conn)
                    .await
                    .is_ok()
            {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "redis never answered"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGKILL, then a new, empty server on the same port.
    pub async fn restart_empty(&mut self) {
        self.stop().await;
        self.spawn().await;
    }

    /// SIGKILL, and nothing on the port until [`start_again`](Self::start_again):
    /// connections are refused, as from a Redis that crashed.
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.start_kill().expect("kill redis");
            child.wait().await.expect("redis exits");
        }
    }

    /// A new, empty server on the same port, after [`stop`](Self::stop).
    pub async fn start_again(&mut self) {
        assert!(self.child.is_none(), "redis is still running");
        self.spawn().await;
    }
}
