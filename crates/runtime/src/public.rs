//! The public HTTP listener: the accept loop in front of the api's REST
//! routes, the gateway's websocket upgrades and the all-in-one origin.
//!
//! `axum::serve` accepts every connection and waits for a request head for
//! as long as the peer likes, so a few hundred slow or silent connections
//! (slowloris) pin as many tasks and descriptors, and when descriptors run
//! out it retries `accept` in a tight loop with nothing in the logs. This
//! loop admits a connection only under two caps — one per client address,
//! one for the listener — and answers past them at once instead of letting
//! the peer wait. hyper's header-read timer closes a connection whose next
//! request head is not complete in time, which covers a silent peer, a
//! partial head and an idle keep-alive connection alike. Accept errors are
//! counted by reason, and running out of descriptors backs off instead of
//! spinning.
//!
//! The public port speaks HTTP/1.1 only (ADR 0004): browsers never use
//! cleartext HTTP/2, ingresses talk HTTP/1.1 to their backends, and one
//! protocol leaves one set of timers to get right.

use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper_util::rt::{TokioIo, TokioTimer};
use ipnet::IpNet;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt as _;

use crate::client_ip::TrustedProxy;
use crate::{ConfigError, Env};

/// Label values of the listener's counters.
pub mod reason {
    /// The client address already holds its share of connections.
    pub const PER_ADDRESS_CAP: &str = "per_address_cap";
    /// The listener already holds as many connections as it may.
    pub const GLOBAL_CAP: &str = "global_cap";
    /// `accept` failed because the process or the system ran out of
    /// descriptors (or socket buffers).
    pub const DESCRIPTORS: &str = "descriptors";
    /// Any other `accept` failure.
    pub const OTHER: &str = "other";
}

/// How many connections a public listener holds, and for how long it
/// waits for a request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicLimits {
    /// The next request head must be complete within this time of the
    /// connection opening or the previous response ending
    /// (`FILAMENT_HTTP_HEADER_TIMEOUT_SECS`).
    pub header_timeout: Duration,
    /// Open connections one client address may hold, websockets included
    /// (`FILAMENT_HTTP_MAX_CONNECTIONS_PER_ADDRESS`). Trusted proxies are
    /// exempt: every client behind them shares their address.
    pub max_connections_per_address: usize,
    /// Open connections the listener holds in all
    /// (`FILAMENT_HTTP_MAX_CONNECTIONS`).
    pub max_connections: usize,
    /// Peers exempt from the per-address cap (`FILAMENT_TRUSTED_PROXY_CIDRS`).
    pub trusted_proxies: Vec<IpNet>,
}

impl Default for PublicLimits {
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(10),
            max_connections_per_address: 512,
            max_connections: 16_384,
            trusted_proxies: Vec::new(),
        }
    }
}

impl PublicLimits {
    /// Reads the `FILAMENT_HTTP_*` variables. The global cap defaults to
    /// three quarters of the open-file limit, so that the database pool,
    /// the registry, gRPC and log files always find a descriptor.
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let defaults = Self {
            max_connections: crate::fd_limit::current()
                .map_or(Self::default().max_connections, |limit| {
                    usize::try_from(limit / 4 * 3).unwrap_or(usize::MAX)
                }),
            ..Self::default()
        };
        let limits = Self {
            header_timeout: env
                .secs_or("FILAMENT_HTTP_HEADER_TIMEOUT_SECS", defaults.header_timeout)?,
            max_connections_per_address: env.or(
                "FILAMENT_HTTP_MAX_CONNECTIONS_PER_ADDRESS",
                defaults.max_connections_per_address,
            )?,
            max_connections: env.or("FILAMENT_HTTP_MAX_CONNECTIONS", defaults.max_connections)?,
            trusted_proxies: env
                .list::<TrustedProxy>("FILAMENT_TRUSTED_PROXY_CIDRS")?
                .into_iter()
                .map(|proxy| proxy.0)
                .collect(),
        };
        let invalid = |name: &'static str, value: String| ConfigError::Invalid {
            name,
            value,
            reason: "must be at least 1".to_owned(),
        };
        if limits.header_timeout.is_zero() {
            return Err(invalid("FILAMENT_HTTP_HEADER_TIMEOUT_SECS", "0".to_owned()));
        }
        if limits.max_connections_per_address == 0 {
            return Err(invalid(
                "FILAMENT_HTTP_MAX_CONNECTIONS_PER_ADDRESS",
                "0".to_owned(),
            ));
        }
        if limits.max_connections == 0 {
            return Err(invalid("FILAMENT_HTTP_MAX_CONNECTIONS", "0".to_owned()));
        }
        Ok(limits)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

/// What a public listener counts. Cheap to clone: every clone shares the
/// same series.
#[derive(Debug, Clone, Default)]
pub struct ListenerMetrics {
    open: Gauge,
    refused: Family<ReasonLabels, Counter>,
    accept_errors: Family<ReasonLabels, Counter>,
}

impl ListenerMetrics {
    pub fn register(&self, registry: &mut Registry) {
        let prefixed = registry.sub_registry_with_prefix("filament_http");
        prefixed.register(
            "open_connections",
            "Connections the public listener holds, websockets included",
            self.open.clone(),
        );
        prefixed.register(
            "connections_refused",
            "Connections closed at accept, by the cap they hit",
            self.refused.clone(),
        );
        prefixed.register(
            "accept_errors",
            "Failed accepts, by reason",
            self.accept_errors.clone(),
        );
        // Every series exists from the start, at zero: a scrape lists each
        // family, and `increase()` counts the first refusal.
        for reason in [reason::PER_ADDRESS_CAP, reason::GLOBAL_CAP] {
            drop(self.refused.get_or_create(&ReasonLabels { reason }));
        }
        for reason in [reason::DESCRIPTORS, reason::OTHER] {
            drop(self.accept_errors.get_or_create(&ReasonLabels { reason }));
        }
    }

    fn refused(&self, reason: &'static str) {
        self.refused.get_or_create(&ReasonLabels { reason }).inc();
    }

    fn accept_failed(&self, reason: &'static str) {
        self.accept_errors
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }
}

/// Serves `router` on `listener` until `shutdown` is cancelled, then stops
/// accepting, asks every open HTTP connection to finish its request and
/// close, and waits for them. Upgraded websockets are their owner's to
/// close. Handlers find the peer in `ConnectInfo<SocketAddr>`.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: PublicLimits,
    metrics: ListenerMetrics,
    shutdown: CancellationToken,
) -> io::Result<()> {
    let admission = Arc::new(Admission::new(&limits, metrics.clone()));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    let connections = TaskTracker::new();
    let mut backoff = AcceptBackoff::default();
    loop {
        let accepted = tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => {
                backoff.reset();
                accepted
            }
            Err(err) => {
                if let Some(pause) = backoff.after(&err, &metrics) {
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        () = tokio::time::sleep(pause) => {}
                    }
                }
                continue;
            }
        };
        let ticket = match admission.admit(peer.ip()) {
            Ok(ticket) => ticket,
            Err(refusal) => {
                refusal.answer(&stream);
                continue;
            }
        };
        if let Err(err) = stream.set_nodelay(true) {
            tracing::debug!(%err, "cannot set TCP_NODELAY");
        }
        let service = hyper::service::service_fn({
            let router = router.clone();
            move |mut request: hyper::Request<hyper::body::Incoming>| {
                request.extensions_mut().insert(ConnectInfo(peer));
                router.clone().oneshot(request)
            }
        });
        let connection = http
            .serve_connection(
                TokioIo::new(Admitted {
                    stream,
                    _ticket: ticket,
                }),
                service,
            )
            .with_upgrades();
        let stop = shutdown.clone();
        connections.spawn(async move {
            let mut connection = std::pin::pin!(connection);
            let outcome = tokio::select! {
                outcome = connection.as_mut() => outcome,
                () = stop.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(err) = outcome {
                tracing::debug!(%err, %peer, "connection ended with an error");
            }
        });
    }
    drop(listener);
    connections.close();
    connections.wait().await;
    Ok(())
}

/// The two connection caps of one listener.
#[derive(Debug)]
struct Admission {
    global: Arc<Semaphore>,
    per_address: Mutex<HashMap<IpAddr, usize>>,
    max_per_address: usize,
    trusted_proxies: Vec<IpNet>,
    metrics: ListenerMetrics,
}

/// Why a connection was turned away at accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    PerAddress,
    Global,
}

impl Refusal {
    /// Tells the peer why before the socket closes, without waiting: the
    /// reply fits any socket buffer, and a peer that cannot take it gets
    /// the close alone.
    fn answer(self, stream: &TcpStream) {
        let reply: &[u8] = match self {
            Self::PerAddress => {
                b"HTTP/1.1 429 Too Many Requests\r\nretry-after: 10\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
            }
            Self::Global => {
                b"HTTP/1.1 503 Service Unavailable\r\nretry-after: 10\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
            }
        };
        // Best effort by design: the connection is refused either way.
        let _ = stream.try_write(reply);
    }
}

impl Admission {
    fn new(limits: &PublicLimits, metrics: ListenerMetrics) -> Self {
        Self {
            global: Arc::new(Semaphore::new(limits.max_connections)),
            per_address: Mutex::new(HashMap::new()),
            max_per_address: limits.max_connections_per_address,
            trusted_proxies: limits.trusted_proxies.clone(),
            metrics,
        }
    }

    fn admit(self: &Arc<Self>, peer: IpAddr) -> Result<Ticket, Refusal> {
        let peer = peer.to_canonical();
        let Ok(permit) = Arc::clone(&self.global).try_acquire_owned() else {
            self.metrics.refused(reason::GLOBAL_CAP);
            return Err(Refusal::Global);
        };
        let counted = !self.trusted_proxies.iter().any(|net| net.contains(&peer));
        if counted {
            let mut per_address = self
                .per_address
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let open = per_address.entry(peer).or_default();
            if *open >= self.max_per_address {
                drop(per_address);
                self.metrics.refused(reason::PER_ADDRESS_CAP);
                return Err(Refusal::PerAddress);
            }
            *open += 1;
        }
        self.metrics.open.inc();
        Ok(Ticket {
            admission: Arc::clone(self),
            address: counted.then_some(peer),
            _permit: permit,
        })
    }

    fn release(&self, address: Option<IpAddr>) {
        self.metrics.open.dec();
        let Some(address) = address else {
            return;
        };
        let mut per_address = self
            .per_address
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(open) = per_address.get_mut(&address) {
            *open = open.saturating_sub(1);
            if *open == 0 {
                per_address.remove(&address);
            }
        }
    }
}

/// One admitted connection's place under the caps, given back on drop.
#[derive(Debug)]
struct Ticket {
    admission: Arc<Admission>,
    address: Option<IpAddr>,
    _permit: OwnedSemaphorePermit,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.admission.release(self.address);
    }
}

/// A socket that holds its [`Ticket`] for as long as it lives. hyper hands
/// the socket itself to an upgraded websocket, so the ticket travels with
/// it and a websocket counts against the caps until it closes.
#[derive(Debug)]
struct Admitted {
    stream: TcpStream,
    _ticket: Ticket,
}

impl AsyncRead for Admitted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Admitted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// How long to wait after a failed accept. A peer that reset before we
/// accepted is no reason to wait; running out of descriptors is, since the
/// next accept would fail the same way until a connection closes.
#[derive(Debug, Default)]
struct AcceptBackoff {
    next: Option<Duration>,
    last_logged: Option<tokio::time::Instant>,
}

impl AcceptBackoff {
    const FIRST: Duration = Duration::from_millis(5);
    const MAX: Duration = Duration::from_secs(1);
    const LOG_EVERY: Duration = Duration::from_secs(10);

    fn reset(&mut self) {
        self.next = None;
    }

    /// Counts the error and returns the pause before the next accept.
    fn after(&mut self, err: &io::Error, metrics: &ListenerMetrics) -> Option<Duration> {
        if is_connection_error(err) {
            return None;
        }
        let reason = if is_resource_error(err) {
            reason::DESCRIPTORS
        } else {
            reason::OTHER
        };
        metrics.accept_failed(reason);
        let now = tokio::time::Instant::now();
        if self
            .last_logged
            .is_none_or(|last| now.duration_since(last) >= Self::LOG_EVERY)
        {
            self.last_logged = Some(now);
            tracing::error!(%err, reason, "accept failed; backing off (logged at most every 10 s)");
        }
        let pause = self
            .next
            .map_or(Self::FIRST, |last| (last * 2).min(Self::MAX));
        self.next = Some(pause);
        Some(pause)
    }
}

/// Errors about one connection that died before we accepted it.
fn is_connection_error(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
    )
}

/// EMFILE, ENFILE, ENOBUFS, ENOMEM: no descriptor or buffer to accept into.
fn is_resource_error(err: &io::Error) -> bool {
    const ENFILE: i32 = 23;
    const EMFILE: i32 = 24;
    const ENOBUFS: i32 = 105;
    const ENOMEM: i32 = 12;
    matches!(err.raw_os_error(), Some(ENFILE | EMFILE | ENOBUFS | ENOMEM))
        || err.kind() == io::ErrorKind::OutOfMemory
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admission(per_address: usize, global: usize, trusted: &[&str]) -> Arc<Admission> {
        Arc::new(Admission::new(
            &PublicLimits {
                max_connections_per_address: per_address,
                max_connections: global,
                trusted_proxies: trusted.iter().map(|net| net.parse().unwrap()).collect(),
                ..PublicLimits::default()
            },
            ListenerMetrics::default(),
        ))
    }

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 2));

    #[test]
    fn an_address_gets_its_share_and_no_more() {
        let admission = admission(2, 10, &[]);
        let first = admission.admit(A).unwrap();
        let _second = admission.admit(A).unwrap();
        assert_eq!(admission.admit(A).unwrap_err(), Refusal::PerAddress);
        // Another address is not affected.
        let _other = admission.admit(B).unwrap();
        // A closed connection gives its place back.
        drop(first);
        let _third = admission.admit(A).unwrap();
        assert_eq!(admission.admit(A).unwrap_err(), Refusal::PerAddress);
    }

    #[test]
    fn the_listener_cap_covers_every_address() {
        let admission = admission(10, 2, &[]);
        let _a = admission.admit(A).unwrap();
        let b = admission.admit(B).unwrap();
        assert_eq!(admission.admit(B).unwrap_err(), Refusal::Global);
        drop(b);
        let _b = admission.admit(B).unwrap();
    }

    #[test]
    fn trusted_proxies_are_exempt_from_the_per_address_cap_only() {
        let admission = admission(1, 3, &["192.0.2.0/24"]);
        let held: Vec<_> = (0..3).map(|_| admission.admit(A).unwrap()).collect();
        assert_eq!(admission.admit(A).unwrap_err(), Refusal::Global);
        drop(held);
        assert!(admission.per_address.lock().unwrap().is_empty());
    }

    #[test]
    fn v4_mapped_addresses_count_as_their_v4_address() {
        let admission = admission(1, 10, &[]);
        let _v4 = admission.admit(A).unwrap();
        let mapped = IpAddr::V6(std::net::Ipv4Addr::new(192, 0, 2, 1).to_ipv6_mapped());
        assert_eq!(admission.admit(mapped).unwrap_err(), Refusal::PerAddress);
    }

    #[test]
    fn released_addresses_leave_no_entry_behind() {
        let admission = admission(4, 10, &[]);
        let tickets: Vec<_> = (0..4).map(|_| admission.admit(A).unwrap()).collect();
        drop(tickets);
        assert!(admission.per_address.lock().unwrap().is_empty());
    }

    #[test]
    fn descriptor_exhaustion_backs_off_and_a_reset_peer_does_not() {
        let metrics = ListenerMetrics::default();
        let mut backoff = AcceptBackoff::default();
        let reset = io::Error::from(io::ErrorKind::ConnectionAborted);
        assert_eq!(backoff.after(&reset, &metrics), None);
        let emfile = io::Error::from_raw_os_error(24);
        let pauses: Vec<_> = (0..10)
            .map(|_| backoff.after(&emfile, &metrics).unwrap())
            .collect();
        assert_eq!(pauses[0], AcceptBackoff::FIRST);
        assert!(pauses.windows(2).all(|w| w[1] >= w[0]));
        assert_eq!(pauses[9], AcceptBackoff::MAX);
        backoff.reset();
        assert_eq!(backoff.after(&emfile, &metrics), Some(AcceptBackoff::FIRST));
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(
            text.contains("filament_http_accept_errors_total{reason=\"descriptors\"} 11"),
            "{text}"
        );
    }

    #[test]
    fn limits_read_from_the_environment() {
        let env = Env::from_pairs([
            ("FILAMENT_HTTP_HEADER_TIMEOUT_SECS", "3"),
            ("FILAMENT_HTTP_MAX_CONNECTIONS_PER_ADDRESS", "7"),
            ("FILAMENT_HTTP_MAX_CONNECTIONS", "99"),
            ("FILAMENT_TRUSTED_PROXY_CIDRS", "10.0.0.0/8"),
        ]);
        let limits = PublicLimits::from_env(&env).unwrap();
        assert_eq!(limits.header_timeout, Duration::from_secs(3));
        assert_eq!(limits.max_connections_per_address, 7);
        assert_eq!(limits.max_connections, 99);
        assert_eq!(limits.trusted_proxies.len(), 1);
        for name in [
            "FILAMENT_HTTP_HEADER_TIMEOUT_SECS",
            "FILAMENT_HTTP_MAX_CONNECTIONS_PER_ADDRESS",
            "FILAMENT_HTTP_MAX_CONNECTIONS",
        ] {
            let err = PublicLimits::from_env(&Env::from_pairs([(name, "0")])).unwrap_err();
            assert!(err.to_string().starts_with(name), "{err}");
        }
    }
}
