//! The state every handler and RPC shares.

use std::sync::{Arc, Mutex, PoisonError};

use filament_fanout::Fanout;
use filament_registry::Registry;
use filament_runtime::grpc_client::GrpcClientMetrics;
use ulid::Ulid;

use crate::admin::HashingMetrics;
use crate::auth::{Lockout, PasswordHasher, TokenKeys};
use crate::config::Config;
use crate::domain::permissions::Authorizer;
use crate::domain::voice::VoiceLink;
use crate::rate_limit::AuthRouteLimiter;
use crate::store::Store;

#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

struct Inner {
    config: Config,
    store: Arc<dyn Store>,
    authorizer: Authorizer,
    tokens: TokenKeys,
    passwords: PasswordHasher,
    lockout: Lockout,
    auth_limiter: AuthRouteLimiter,
    fanout: Fanout,
    /// The registry the fanout routes with; also the list of revoked
    /// sessions every replica consults.
    registry: Arc<dyn Registry>,
    voice: VoiceLink,
    /// Where the api's gRPC clients (voice, search) time their calls.
    grpc_clients: GrpcClientMetrics,
    /// Monotonic within a millisecond, so ids created in the same
    /// millisecond still sort in creation order (message pagination relies
    /// on it).
    ids: Mutex<ulid::Generator>,
}

impl AppState {
    pub fn new(
        config: Config,
        store: Arc<dyn Store>,
        registry: Arc<dyn Registry>,
        fanout: Fanout,
        hashing_metrics: HashingMetrics,
        grpc_clients: &GrpcClientMetrics,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            inner: Arc::new(Inner {
                authorizer: Authorizer::new(Arc::clone(&store), config.server_owner),
                tokens: TokenKeys::new(config.token_secret.expose()),
                passwords: PasswordHasher::new(
                    config.password_hashing,
                    config.hashing_limits,
                    hashing_metrics,
                )?,
                lockout: Lockout::default(),
                auth_limiter: AuthRouteLimiter::new(config.auth_route_per_minute),
                voice: VoiceLink::new(config.voice_url.as_deref(), grpc_clients)?,
                grpc_clients: grpc_clients.clone(),
                ids: Mutex::new(ulid::Generator::new()),
                config,
                store,
                registry,
                fanout,
            }),
        })
    }

    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// Where the api's gRPC clients time their calls.
    pub fn grpc_clients(&self) -> &GrpcClientMetrics {
        &self.inner.grpc_clients
    }

    pub fn store(&self) -> &dyn Store {
        self.inner.store.as_ref()
    }

    pub fn authorizer(&self) -> &Authorizer {
        &self.inner.authorizer
    }

    pub fn tokens(&self) -> &TokenKeys {
        &self.inner.tokens
    }

    pub fn passwords(&self) -> &PasswordHasher {
        &self.inner.passwords
    }

    pub fn lockout(&self) -> &Lockout {
        &self.inner.lockout
    }

    pub fn auth_limiter(&self) -> &AuthRouteLimiter {
        &self.inner.auth_limiter
    }

    pub fn fanout(&self) -> &Fanout {
        &self.inner.fanout
    }

    pub fn registry(&self) -> &dyn Registry {
        self.inner.registry.as_ref()
    }

    pub fn voice(&self) -> &VoiceLink {
        &self.inner.voice
    }

    /// A new id of whichever kind the caller needs (a typed id, or a plain
    /// [`Ulid`] for an event), greater than every id this process minted
    /// before.
    pub fn new_id<T: From<Ulid>>(&self) -> T {
        let mut generator = self
            .inner
            .ids
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // Overflow needs 2^80 ids in one millisecond; fall back to a random
        // id rather than fail.
        T::from(generator.generate().unwrap_or_else(|_| Ulid::generate()))
    }
}
