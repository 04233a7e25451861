//! Finding every replica of a service and following each one's stream.
//!
//! A service's events come from whichever replica handled the change, so a
//! gateway needs a stream to every replica. A service URL whose host is a
//! name (a Kubernetes headless Service) is resolved every
//! `discovery_interval`, and each address it yields gets a follower of its
//! own ([`upstream::follow`]). An address that disappears is *retired*: its
//! follower finishes the stream it has (a draining replica ends it cleanly
//! after its last event) and does not reconnect. A URL whose host is an IP
//! address is followed as it is, without resolution. A `file://` URL names
//! a file listing one replica URL per line, read again every interval: for
//! deployments whose discovery writes files (and for the cluster test,
//! whose replicas share one host).
//!
//! [`ApiStreams`] turns the api followers' states into the gateway's
//! readiness: at least one api stream open, and at start-up every api
//! replica found by the first resolutions reached (or given up on after
//! [`STARTUP_GRACE`]), so that a gateway does not take sockets, and register
//! their guilds, while a replica it has no stream from could publish to it.
//! Replicas found later are covered from the other side: a producer is not
//! ready until every live gateway streams from it (`filament_fanout::Coverage`).

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::Shared;
use crate::upstream::{self, Role};

/// How long, at start-up, a replica that was found but cannot be reached
/// holds back the gateway's readiness.
pub(crate) const STARTUP_GRACE: Duration = Duration::from_secs(10);

/// A service URL split into what resolution needs.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Target {
    scheme: String,
    host: String,
    port: u16,
}

impl Target {
    fn parse(url: &str) -> Option<Self> {
        let uri: axum::http::Uri = url.parse().ok()?;
        let scheme = uri.scheme_str()?.to_owned();
        let default_port = if scheme == "https" { 443 } else { 80 };
        Some(Self {
            port: uri.port_u16().unwrap_or(default_port),
            host: uri.host()?.trim_matches(['[', ']']).to_owned(),
            scheme,
        })
    }

    /// The host as an address, when it is one: nothing to resolve.
    fn literal(&self) -> Option<IpAddr> {
        self.host.parse().ok()
    }

    fn url_of(&self, addr: SocketAddr) -> String {
        format!("{}://{addr}", self.scheme)
    }

    async fn resolve(&self) -> std::io::Result<HashSet<SocketAddr>> {
        Ok(tokio::net::lookup_host((self.host.as_str(), self.port))
            .await?
            .collect())
    }
}

/// Where a service's replicas are listed.
enum Source {
    /// A host name: every address it resolves to.
    Name(Target),
    /// A file of replica URLs, one per line.
    File(std::path::PathBuf),
}

impl Source {
    async fn replicas(&self) -> std::io::Result<HashSet<String>> {
        match self {
            Self::Name(target) => Ok(target
                .resolve()
                .await?
                .into_iter()
                .map(|addr| target.url_of(addr))
                .collect()),
            Self::File(path) => Ok(tokio::fs::read_to_string(path)
                .await?
                .lines()
                .map(str::trim)
                .filter(|line| !line.is_empty() && !line.starts_with('#'))
                .map(str::to_owned)
                .collect()),
        }
    }
}

/// Follows every replica behind `url` until `shutdown`.
pub(crate) async fn follow_service(
    shared: Arc<Shared>,
    url: String,
    role: Role,
    interval: Duration,
    shutdown: CancellationToken,
) {
    let source = if let Some(path) = url.strip_prefix("file://") {
        Source::File(path.into())
    } else {
        match Target::parse(&url) {
            Some(target) if target.literal().is_none() => Source::Name(target),
            _ => {
                // An address, or something only the connector can judge (it
                // will say what is wrong with it): one follower, as configured.
                if role == Role::Api {
                    shared.api_streams.found([url.clone()]);
                }
                upstream::follow(shared, url, role, shutdown.clone(), shutdown).await;
                return;
            }
        }
    };
    let mut followers: HashMap<String, Follower> = HashMap::new();
    loop {
        match source.replicas().await {
            Ok(urls) => {
                if role == Role::Api {
                    shared.api_streams.found(urls.iter().cloned());
                }
                reconcile(&shared, role, &urls, &mut followers, &shutdown);
            }
            Err(err) => {
                // Keep following what was found: a DNS hiccup is not a
                // reason to drop streams that work.
                tracing::warn!(%url, %err, "cannot list the service's replicas; keeping those found before");
            }
        }
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            () = shutdown.cancelled() => break,
        }
    }
}

/// One replica's follower.
struct Follower {
    retire: CancellationToken,
    task: JoinHandle<()>,
}

/// Starts a follower for each new replica (or one whose follower ended),
/// and retires those of replicas that are gone.
fn reconcile(
    shared: &Arc<Shared>,
    role: Role,
    urls: &HashSet<String>,
    followers: &mut HashMap<String, Follower>,
    shutdown: &CancellationToken,
) {
    for url in urls {
        if followers.get(url).is_some_and(|f| !f.task.is_finished()) {
            continue;
        }
        tracing::info!(%url, "following a replica");
        let retire = shutdown.child_token();
        let task = tokio::spawn(upstream::follow(
            Arc::clone(shared),
            url.clone(),
            role,
            retire.clone(),
            shutdown.clone(),
        ));
        followers.insert(url.clone(), Follower { retire, task });
    }
    followers.retain(|url, follower| {
        if urls.contains(url) {
            return true;
        }
        if !follower.retire.is_cancelled() {
            tracing::info!(%url, "replica gone; following it to the end of its stream");
            follower.retire.cancel();
            if role == Role::Api {
                shared.api_streams.gone(url);
            }
        }
        !follower.task.is_finished()
    });
}

/// The api streams' states, as the gateway's readiness.
pub(crate) struct ApiStreams {
    state: Mutex<ApiState>,
    ready: AtomicBool,
}

#[derive(Default)]
struct ApiState {
    /// Replicas whose stream is open and welcomed.
    open: HashSet<String>,
    /// Replicas found but never reached yet, with when they were found.
    pending: HashMap<String, Instant>,
    /// Once ready, only "at least one stream" counts.
    was_ready: bool,
}

impl Default for ApiStreams {
    fn default() -> Self {
        Self {
            state: Mutex::new(ApiState::default()),
            ready: AtomicBool::new(false),
        }
    }
}

impl ApiStreams {
    pub(crate) fn is_ready(&self) -> bool {
        if self.ready.load(Ordering::Acquire) {
            return true;
        }
        // Readiness may only be waiting for a grace period to run out.
        self.recompute(&mut self.lock());
        self.ready.load(Ordering::Acquire)
    }

    /// Replicas that resolution returned; new ones start pending.
    fn found(&self, urls: impl IntoIterator<Item = String>) {
        let now = Instant::now();
        let mut state = self.lock();
        for url in urls {
            if !state.open.contains(&url) {
                state.pending.entry(url).or_insert(now);
            }
        }
        self.recompute(&mut state);
    }

    fn gone(&self, url: &str) {
        let mut state = self.lock();
        state.pending.remove(url);
        self.recompute(&mut state);
    }

    pub(crate) fn set_open(&self, url: &str, open: bool) {
        let mut state = self.lock();
        state.pending.remove(url);
        if open {
            state.open.insert(url.to_owned());
        } else {
            state.open.remove(url);
        }
        self.recompute(&mut state);
    }

    fn recompute(&self, state: &mut ApiState) {
        let now = Instant::now();
        let waiting = !state.was_ready
            && state
                .pending
                .values()
                .any(|found| now.duration_since(*found) < STARTUP_GRACE);
        let ready = !state.open.is_empty() && !waiting;
        state.was_ready |= ready;
        self.ready.store(ready, Ordering::Release);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ApiState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_scheme_host_and_port() {
        let target = Target::parse("http://filament-api-peers:50051").unwrap();
        assert_eq!(target.host, "filament-api-peers");
        assert_eq!(target.port, 50051);
        assert!(target.literal().is_none());
        let addr: SocketAddr = "[::1]:7".parse().unwrap();
        assert_eq!(target.url_of(addr), "http://[::1]:7");
        let literal = Target::parse("http://[::1]:50051").unwrap();
        assert_eq!(literal.literal(), Some("::1".parse().unwrap()));
        assert!(Target::parse("not a url").is_none());
    }

    #[tokio::test]
    async fn a_file_lists_one_replica_per_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api");
        std::fs::write(
            &path,
            "http://127.0.0.1:1\n\n# retired\n  http://127.0.0.2:1  \n",
        )
        .unwrap();
        let replicas = Source::File(path).replicas().await.unwrap();
        let expected: HashSet<String> = ["http://127.0.0.1:1", "http://127.0.0.2:1"]
            .map(str::to_owned)
            .into();
        assert_eq!(replicas, expected);
    }

    #[tokio::test]
    async fn a_name_resolves_to_its_addresses() {
        let target = Target::parse("http://localhost:50051").unwrap();
        let addrs = target.resolve().await.unwrap();
        assert!(!addrs.is_empty());
        assert!(
            addrs
                .iter()
                .all(|addr| addr.port() == 50051 && addr.ip().is_loopback())
        );
    }

    #[tokio::test(start_paused = true)]
    async fn ready_once_every_replica_found_at_start_is_reached() {
        let streams = ApiStreams::default();
        assert!(!streams.is_ready(), "nothing found yet");
        streams.found(["a".to_owned(), "b".to_owned()]);
        streams.set_open("a", true);
        assert!(
            !streams.is_ready(),
            "b was found at start and not reached yet"
        );
        streams.set_open("b", true);
        assert!(streams.is_ready());

        // Later, one open stream is enough, and a new replica does not
        // hold readiness back: the producer waits for us instead.
        streams.set_open("a", false);
        streams.found(["c".to_owned()]);
        assert!(streams.is_ready());
        streams.set_open("b", false);
        assert!(!streams.is_ready(), "no api stream at all");
    }

    #[tokio::test(start_paused = true)]
    async fn an_unreachable_replica_holds_readiness_back_only_for_the_grace() {
        let streams = ApiStreams::default();
        streams.found(["a".to_owned(), "dead".to_owned()]);
        streams.set_open("a", true);
        assert!(!streams.is_ready());
        tokio::time::advance(STARTUP_GRACE).await;
        assert!(streams.is_ready(), "given up on the dead replica");
    }

    #[tokio::test(start_paused = true)]
    async fn a_replica_gone_before_it_was_reached_no_longer_counts() {
        let streams = ApiStreams::default();
        streams.found(["a".to_owned(), "b".to_owned()]);
        streams.set_open("a", true);
        streams.gone("b");
        assert!(streams.is_ready());
    }
}
