//! The state every handler and RPC shares.

use std::sync::Arc;

use filament_fanout::Fanout;
use filament_registry::Registry;
use filament_runtime::grpc_client::GrpcClientMetrics;
use ulid::Ulid;

use crate::admin::HashingMetrics;
use crate::auth::{Lockout, PasswordHasher, TokenKeys};
use crate::config::Config;
use crate::domain::permissions::Authorizer;
use crate::domain::voice::VoiceLink;
use crate::id_generator::IdGenerator;
use crate::outbox::Publisher;
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
    /// What publishing an event needs: the fanout (the one this state's
    /// [`fanout`](AppState::fanout) is), the outbox's store handle and
    /// settings, and the id generator (shared with [`AppState::new_id`]).
    publisher: Publisher,
    /// The registry the fanout routes with; also the list of revoked
    /// sessions every replica consults.
    registry: Arc<dyn Registry>,
    voice: VoiceLink,
    /// Where the api's gRPC clients (voice, search) time their calls.
    grpc_clients: GrpcClientMetrics,
    /// The process's one id generator, shared with the publisher.
    ids: IdGenerator,
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
        let ids = IdGenerator::new();
        let publisher = Publisher::new(fanout, Arc::clone(&store), config.outbox, ids.clone());
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
                ids,
                publisher,
                config,
                store,
                registry,
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
        self.inner.publisher.fanout()
    }

    /// What publishing an event needs, and nothing more.
    pub fn publisher(&self) -> &Publisher {
        &self.inner.publisher
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
        self.inner.ids.next()
    }
}
