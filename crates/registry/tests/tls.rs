//! The registry reaches Redis over TLS (`rediss://`), trusting a private
//! CA from `FILAMENT_REDIS_CA_FILE`, and refuses a server it cannot trust.
//!
//! Each test starts a `redis-server` of its own that speaks only TLS, with
//! a certificate for 127.0.0.1 signed by a CA made for that test, so the
//! machine's shared Redis is never touched and no certificate outlives the
//! test. Without `redis-server` on `PATH` the tests pass after saying
//! `SKIPPED:` on stderr.

use std::io::Write as _;
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use filament_registry::{GatewayId, RedisOptions, RedisRegistry, Registry as _, RegistryConfig};
use filament_runtime::Env;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// Generous, so that a machine busy compiling does not fail a handshake;
/// the failures checked below are refusals, not timeouts.
const TIMEOUT_MS: &str = "5000";
/// How long the server may take to start accepting TLS connections.
const STARTUP_DEADLINE: Duration = Duration::from_secs(20);

fn redis_server_on_path() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join("redis-server"))
        .find(|candidate| candidate.is_file())
}

/// A CA and a server certificate for 127.0.0.1 signed by it, as PEM files.
struct Certificates {
    ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
}

fn write_certificates(dir: &Path) -> Certificates {
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "filament test CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca_params.self_signed(&ca_key).expect("CA certificate");
    let issuer = Issuer::new(ca_params, ca_key);

    let server_key = KeyPair::generate().expect("server key");
    // An IP string becomes an IP SAN, which is what a client connecting to
    // 127.0.0.1 checks.
    let mut server_params =
        CertificateParams::new(vec!["127.0.0.1".to_owned()]).expect("server params");
    server_params
        .distinguished_name
        .push(DnType::CommonName, "filament test redis");
    server_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let server_cert = server_params
        .signed_by(&server_key, &issuer)
        .expect("server certificate");

    let certificates = Certificates {
        ca: dir.join("ca.pem"),
        server_cert: dir.join("server.pem"),
        server_key: dir.join("server.key"),
    };
    std::fs::write(&certificates.ca, ca_cert.pem()).expect("write CA");
    std::fs::write(&certificates.server_cert, server_cert.pem()).expect("write certificate");
    std::fs::write(&certificates.server_key, server_key.serialize_pem()).expect("write key");
    certificates
}

/// A port nobody listens on now. Another process could take it before
/// redis-server binds it; then the server exits and the start-up check
/// says so.
fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port()
}

/// A TLS-only redis-server, killed when dropped (a failing test included).
struct TlsRedis {
    child: Child,
    port: u16,
    ca: PathBuf,
    dir: tempfile::TempDir,
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl TlsRedis {
    /// `None` (after saying so) when there is no redis-server to run.
    async fn start() -> Option<Self> {
        let Some(binary) = redis_server_on_path() else {
            // The real stderr: the harness hides `eprintln!` of passing tests.
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED: redis-server is not on PATH; Redis over TLS not checked"
            );
            return None;
        };
        let dir = tempfile::tempdir().expect("temp dir");
        let certificates = write_certificates(dir.path());
        let port = free_port();
        let child = Command::new(binary)
            .arg("--port")
            .arg("0")
            .arg("--bind")
            .arg("127.0.0.1")
            .arg("--tls-port")
            .arg(port.to_string())
            .arg("--tls-cert-file")
            .arg(&certificates.server_cert)
            .arg("--tls-key-file")
            .arg(&certificates.server_key)
            .arg("--tls-ca-cert-file")
            .arg(&certificates.ca)
            .arg("--tls-auth-clients")
            .arg("no")
            .arg("--save")
            .arg("")
            .arg("--appendonly")
            .arg("no")
            .arg("--dir")
            .arg(dir.path())
            .arg("--logfile")
            .arg(dir.path().join("redis.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        let mut server = Self {
            child,
            port,
            ca: certificates.ca,
            dir,
        };
        server.wait_until_serving().await;
        Some(server)
    }

    fn url(&self) -> String {
        format!("rediss://127.0.0.1:{}", self.port)
    }

    /// Options as a deployment reads them, trusting this server's CA or
    /// not.
    fn options(&self, trust_the_ca: bool) -> RedisOptions {
        let mut vars = vec![("FILAMENT_REDIS_TIMEOUT_MS", TIMEOUT_MS.to_owned())];
        if trust_the_ca {
            vars.push(("FILAMENT_REDIS_CA_FILE", self.ca.display().to_string()));
        }
        RedisOptions::from_env(&Env::from_pairs(vars)).expect("redis options")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default()
    }

    /// Polls with a real TLS PING until the server answers, failing early
    /// if it exited (a taken port, a refused certificate).
    async fn wait_until_serving(&mut self) {
        let client = self
            .options(true)
            .client(&self.url())
            .expect("redis client");
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("redis-server status") {
                panic!("redis-server exited with {status}:\n{}", self.log());
            }
            let ping = async {
                let mut connection = client.get_multiplexed_async_connection().await?;
                redis::cmd("PING")
                    .query_async::<String>(&mut connection)
                    .await
            };
            match ping.await {
                Ok(_) => return,
                Err(error) if started.elapsed() > STARTUP_DEADLINE => {
                    panic!(
                        "redis-server did not serve TLS in {STARTUP_DEADLINE:?}: {error}\n{}",
                        self.log()
                    );
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }
}

fn config(redis: RedisOptions) -> RegistryConfig {
    RegistryConfig {
        redis,
        ..RegistryConfig::default()
    }
}

#[tokio::test]
async fn the_registry_works_over_tls_with_the_configured_ca() {
    let Some(server) = TlsRedis::start().await else {
        return;
    };
    let registry = RedisRegistry::connect(&server.url(), config(server.options(true)))
        .await
        .expect("connect over TLS trusting the test CA");
    let gateway = GatewayId::new("gateway-tls");
    registry
        .heartbeat(&gateway, None)
        .await
        .expect("heartbeat over TLS");
    registry
        .hold_guilds(&gateway, &["guild-tls".to_owned()])
        .await
        .expect("hold over TLS");
    let holders = registry
        .gateways_for_guild("guild-tls")
        .await
        .expect("lookup over TLS");
    assert_eq!(holders, vec![gateway]);
}

#[tokio::test]
async fn a_server_certificate_from_an_untrusted_ca_is_refused() {
    let Some(server) = TlsRedis::start().await else {
        return;
    };
    // Only the webpki roots, which do not include the test CA.
    let refused = RedisRegistry::connect(&server.url(), config(server.options(false))).await;
    let Err(error) = refused else {
        panic!("connected to a server whose certificate nothing trusts");
    };
    assert!(
        error.to_string().contains("certificate"),
        "not a certificate refusal: {error}"
    );
    eprintln!("refused as expected: {error}");
}

#[tokio::test]
async fn plain_redis_to_the_tls_port_fails() {
    let Some(server) = TlsRedis::start().await else {
        return;
    };
    let plain_url = format!("redis://127.0.0.1:{}", server.port);
    let refused = RedisRegistry::connect(&plain_url, config(server.options(true))).await;
    let Err(error) = refused else {
        panic!("a plain connection to a TLS-only port succeeded");
    };
    eprintln!("refused as expected: {error}");
}
