//! The one place a Redis client is built, so that the registry, presence
//! and the voice roster reach a TLS Redis the same way and trust the same
//! certificates.
//!
//! The URL decides: `rediss://` is TLS (rustls on ring), `redis://` is
//! plain. A server certificate from a public CA is trusted through the
//! webpki roots compiled into the binary; one from a private CA needs that
//! CA in `FILAMENT_REDIS_CA_FILE`. The file is read once, at start-up, so
//! that a wrong path stops the process with the variable's name instead of
//! failing every reconnect later.

use std::fmt;
use std::sync::Arc;

use filament_runtime::{ConfigError, Env};
use redis::{ConnectionAddr, IntoConnectionInfo, TlsCertificates};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use crate::RedisOptions;

const CA_FILE_VAR: &str = "FILAMENT_REDIS_CA_FILE";

/// The certificates of a private CA that signs the Redis server's
/// certificate, in PEM, checked to hold at least one certificate.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisCa {
    /// Where the certificates came from, for `Debug` (the bytes say
    /// nothing to a reader of a log).
    source: String,
    pem: Arc<[u8]>,
}

impl RedisCa {
    /// The CA from PEM text; `source` names where it came from in messages.
    ///
    /// # Errors
    /// A description of the problem when the text holds no certificate or
    /// a malformed one.
    pub fn from_pem(source: impl Into<String>, pem: impl Into<Vec<u8>>) -> Result<Self, String> {
        let pem = pem.into();
        let mut certificates = 0_usize;
        for certificate in CertificateDer::pem_slice_iter(&pem) {
            certificate.map_err(|err| format!("a certificate in it is malformed: {err}"))?;
            certificates += 1;
        }
        if certificates == 0 {
            return Err("it holds no PEM certificate".to_owned());
        }
        Ok(Self {
            source: source.into(),
            pem: pem.into(),
        })
    }

    /// Reads `FILAMENT_REDIS_CA_FILE`, if set.
    pub(crate) fn from_env(env: &Env) -> Result<Option<Self>, ConfigError> {
        let Some(path) = env.raw(CA_FILE_VAR) else {
            return Ok(None);
        };
        let invalid = |reason: String| ConfigError::Invalid {
            name: CA_FILE_VAR,
            value: path.to_owned(),
            reason,
        };
        let pem = std::fs::read(path).map_err(|err| invalid(format!("cannot be read: {err}")))?;
        Self::from_pem(path, pem).map(Some).map_err(invalid)
    }
}

impl fmt::Debug for RedisCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("RedisCa").field(&self.source).finish()
    }
}

impl RedisOptions {
    /// A client for `url`: over TLS when it is `rediss://`, trusting the
    /// configured CA if there is one (and then only it), else the webpki
    /// roots; plain otherwise. Connecting is left to the caller.
    ///
    /// # Errors
    /// When the URL cannot be parsed, or the CA is refused by redis.
    pub fn client(&self, url: &str) -> redis::RedisResult<redis::Client> {
        let info = url.into_connection_info()?;
        if !matches!(info.addr(), ConnectionAddr::TcpTls { .. }) {
            return redis::Client::open(info);
        }
        install_crypto_provider();
        match &self.ca {
            Some(ca) => redis::Client::build_with_tls(
                info,
                TlsCertificates {
                    client_tls: None,
                    root_cert: Some(ca.pem.to_vec()),
                },
            ),
            None => redis::Client::open(info),
        }
    }
}

/// redis builds its rustls config with the process-wide provider. rustls
/// picks one by itself only when the build enables exactly one; a build
/// of a single crate (or a future dependency bringing aws-lc-rs) may not,
/// and rustls then panics on the first connection. Installing ring here,
/// before every TLS client, rules that out. Losing a race to another
/// installer is fine: any installed provider will do.
fn install_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // An `Err` only says that a provider is installed already.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

#[cfg(test)]
mod tests {
    use filament_runtime::{ConfigError, Env};

    use crate::RedisOptions;

    fn options_with_ca_file(path: &std::path::Path) -> Result<RedisOptions, ConfigError> {
        let path = path.display().to_string();
        RedisOptions::from_env(&Env::from_pairs([("FILAMENT_REDIS_CA_FILE", path)]))
    }

    fn assert_names_the_variable(result: Result<RedisOptions, ConfigError>) {
        assert!(
            matches!(
                &result,
                Err(ConfigError::Invalid {
                    name: "FILAMENT_REDIS_CA_FILE",
                    ..
                })
            ),
            "{result:?}"
        );
    }

    #[test]
    fn an_unreadable_ca_file_stops_start_up_naming_the_variable() {
        let dir = tempfile::tempdir().expect("temp dir");
        assert_names_the_variable(options_with_ca_file(&dir.path().join("missing.pem")));
    }

    #[test]
    fn a_ca_file_without_a_certificate_stops_start_up_naming_the_variable() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("empty.pem");
        std::fs::write(&path, "not a certificate\n").expect("write");
        assert_names_the_variable(options_with_ca_file(&path));
    }

    #[test]
    fn without_a_ca_file_no_ca_is_configured_and_urls_pick_their_transport() {
        let options = RedisOptions::from_env(&Env::default()).expect("defaults");
        assert_eq!(options.ca, None);
        for url in ["redis://127.0.0.1:6379", "rediss://127.0.0.1:6380"] {
            let client = options.client(url).expect("client");
            let is_tls = matches!(
                client.get_connection_info().addr(),
                redis::ConnectionAddr::TcpTls { .. }
            );
            assert_eq!(is_tls, url.starts_with("rediss://"), "{url}");
        }
    }
}
