//! Api configuration, read once from the environment.

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::time::Duration;

use filament_ids::UserId;
use filament_registry::RegistryConfig;
use filament_runtime::public::PublicLimits;
use filament_runtime::secret::{SecretBytes, SecretUrl};
use filament_runtime::service_auth::ServiceToken;
use filament_runtime::{ConfigError, Env};

#[derive(Debug, Clone)]
pub struct Config {
    /// REST listener.
    pub http_addr: SocketAddr,
    /// gRPC listener: edge access and the event stream.
    pub grpc_addr: SocketAddr,
    /// Where `/metrics` is served (`FILAMENT_API_ADMIN_ADDR`); `None`
    /// serves no metrics. Never the public listener.
    pub admin_addr: Option<SocketAddr>,
    /// The global REST limiter: requests per minute per user, or per IP
    /// for anonymous calls (`FILAMENT_RATE_LIMIT_REQUESTS_PER_MINUTE`).
    pub rate_limit_per_minute: u32,
    /// `sqlite:…` or `postgres://…`; its `Debug` hides the password.
    pub database_url: SecretUrl,
    /// The registry's Redis (`REDIS_URL`, required by the api binary);
    /// `None` where the caller brings its own registry (the all-in-one).
    pub redis_url: Option<SecretUrl>,
    /// The registry's timeouts, breaker, key prefix and TLS.
    pub registry: RegistryConfig,
    /// HS256 key for access tokens, at least 32 bytes; its `Debug` shows
    /// only the length.
    pub token_secret: SecretBytes,
    pub access_token_ttl: Duration,
    pub session_ttl: Duration,
    pub max_created_guilds_per_user: u64,
    /// A user with every permission in every guild, member or not.
    pub server_owner: Option<UserId>,
    pub password_hashing: PasswordHashing,
    /// How many hashes run at once and how many callers wait for one.
    pub hashing_limits: HashingLimits,
    /// Largest JSON body accepted.
    pub max_body_bytes: usize,
    pub request_timeout: Duration,
    /// The search service (`FILAMENT_SEARCH_GRPC_URL`); unset, the search
    /// routes answer 500.
    pub search_url: Option<String>,
    /// The voice service (`FILAMENT_VOICE_GRPC_URL`); unset, the voice
    /// routes answer 500.
    pub voice_url: Option<String>,
    /// Where attachment files live (`FILAMENT_ATTACHMENT_ROOT`).
    pub attachment_root: PathBuf,
    /// Directory joins per minute and client IP, and per user
    /// (`FILAMENT_DIRECTORY_JOIN_REQUESTS_PER_MINUTE_PER_IP`, `…_PER_USER`).
    pub directory_join_per_minute_per_ip: u32,
    pub directory_join_per_minute_per_user: u32,
    /// Requests per minute and client IP to each auth route (register,
    /// login, refresh, profile update, avatar and banner upload)
    /// (`FILAMENT_AUTH_ROUTE_REQUESTS_PER_MINUTE`).
    pub auth_route_per_minute: u32,
    /// Largest `limit` of `GET /guilds/{g}/audit` (`FILAMENT_AUDIT_LIST_LIMIT_MAX`).
    pub audit_list_limit_max: u32,
    /// Active IP bans per guild (`FILAMENT_GUILD_IP_BAN_MAX_ENTRIES`).
    pub guild_ip_ban_max_entries: u32,
    /// Peers whose `CF-Connecting-IP` / `X-Forwarded-For` are believed
    /// (`FILAMENT_TRUSTED_PROXY_CIDRS`); empty trusts no header.
    pub trusted_proxy_cidrs: Vec<ipnet::IpNet>,
    /// The REST listener's connection caps and header timer
    /// (`FILAMENT_HTTP_*`).
    pub public: PublicLimits,
    /// How long a request may wait on the database
    /// (`FILAMENT_DATABASE_*_TIMEOUT_MS`); past it, 503.
    pub database: crate::store::DatabaseLimits,
    /// How the event outbox's relay runs (docs/adr/0006-outbox.md).
    pub outbox: OutboxConfig,
    /// Presented on every call to voice and search, and asked of every
    /// gRPC caller (`FILAMENT_INTERNAL_TOKEN`).
    pub internal_token: ServiceToken,
}

/// The event outbox's timing. Not read from the environment: the defaults
/// fit every deployment, and tests shorten them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutboxConfig {
    /// How long the request that wrote an event keeps it to itself; a relay
    /// publishes it only after this. It bounds how late an event arrives
    /// when its writer died between commit and publish, and must exceed a
    /// healthy request path's publish, or events go out twice (gateways
    /// then drop the repeat).
    pub lease: Duration,
    /// How often the relay looks for events whose lease ran out, written
    /// here or by another replica.
    pub sweep_interval: Duration,
    /// What the request path does after its commit:
    /// [`OutboxRequestPath::PublishAndForget`] in production. Tests choose
    /// the others to stand for a process that died on the way.
    pub request_path: OutboxRequestPath,
}

/// What a request does with its event once its write committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutboxRequestPath {
    /// Publishes it, then has its outbox row deleted: by the relay's next
    /// turn, with every row published meanwhile, while a relay runs.
    PublishAndForget,
    /// Publishes it and leaves the row, as a process killed right after
    /// publishing would: a relay publishes it again, and gateways drop the
    /// repeat.
    PublishOnly,
    /// Leaves it to the relay, as a process killed right after the commit
    /// would.
    Nothing,
}

impl Default for OutboxConfig {
    fn default() -> Self {
        Self {
            lease: Duration::from_secs(5),
            sweep_interval: Duration::from_secs(1),
            request_path: OutboxRequestPath::PublishAndForget,
        }
    }
}

/// Argon2id cost. The defaults are OWASP's; tests lower them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PasswordHashing {
    pub memory_kib: u32,
    pub iterations: u32,
}

impl Default for PasswordHashing {
    fn default() -> Self {
        Self {
            memory_kib: 19 * 1024,
            iterations: 2,
        }
    }
}

/// How much Argon2 runs at once. Each hash holds `memory_kib` (19 MiB by
/// default) for its whole run, so without a bound a registration or login
/// storm holds that much per request in flight and a container's memory
/// limit kills the pod; more hashes than cores at once would not finish
/// sooner anyway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HashingLimits {
    /// Hashes computed at once (`FILAMENT_ARGON2_MAX_CONCURRENT`).
    pub max_concurrent: NonZeroUsize,
    /// Callers waiting for one of those slots
    /// (`FILAMENT_ARGON2_MAX_QUEUED`); past it, 503 at once.
    pub max_queued: usize,
    /// Longest a caller waits for a slot (`FILAMENT_ARGON2_QUEUE_WAIT_MS`);
    /// past it, 503.
    pub queue_wait: Duration,
}

impl Default for HashingLimits {
    /// One hash per core, 64 waiting, for at most 5 s (well inside the
    /// 10 s request timeout).
    fn default() -> Self {
        Self {
            max_concurrent: std::thread::available_parallelism().unwrap_or(NonZeroUsize::MIN),
            max_queued: 64,
            queue_wait: Duration::from_secs(5),
        }
    }
}

impl Config {
    /// A config with the defaults of PROTOCOL.md §4, for the given listeners,
    /// database and token key.
    pub fn new(
        http_addr: SocketAddr,
        grpc_addr: SocketAddr,
        database_url: impl Into<String>,
        token_secret: Vec<u8>,
    ) -> Self {
        Self {
            http_addr,
            grpc_addr,
            admin_addr: None,
            rate_limit_per_minute: 600,
            database_url: SecretUrl::new(database_url),
            redis_url: None,
            registry: RegistryConfig::default(),
            token_secret: SecretBytes::new(token_secret),
            access_token_ttl: Duration::from_secs(900),
            session_ttl: Duration::from_secs(30 * 24 * 3600),
            max_created_guilds_per_user: 5,
            server_owner: None,
            password_hashing: PasswordHashing::default(),
            hashing_limits: HashingLimits::default(),
            max_body_bytes: 1024 * 1024,
            request_timeout: Duration::from_secs(10),
            search_url: None,
            voice_url: None,
            attachment_root: PathBuf::from("./data/attachments"),
            directory_join_per_minute_per_ip: 60,
            directory_join_per_minute_per_user: 30,
            auth_route_per_minute: 60,
            audit_list_limit_max: 100,
            guild_ip_ban_max_entries: 4096,
            trusted_proxy_cidrs: Vec::new(),
            public: PublicLimits::default(),
            database: crate::store::DatabaseLimits::default(),
            outbox: OutboxConfig::default(),
            internal_token: ServiceToken::generate(),
        }
    }

    /// Reads the api's variables; see README.md for the list.
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let secret: String = env.required("FILAMENT_TOKEN_SECRET")?;
        if secret.len() < 32 {
            return Err(ConfigError::Invalid {
                name: "FILAMENT_TOKEN_SECRET",
                value: "<redacted>".to_owned(),
                reason: "must be at least 32 bytes".to_owned(),
            });
        }
        let mut config = Self::new(
            env.or("FILAMENT_API_HTTP_ADDR", ([0, 0, 0, 0], 3000).into())?,
            env.or("FILAMENT_API_GRPC_ADDR", ([0, 0, 0, 0], 50051).into())?,
            env.required::<String>("DATABASE_URL")?,
            secret.into_bytes(),
        );
        config.internal_token = ServiceToken::from_env(env)?;
        config.redis_url = Some(SecretUrl::new(env.required::<String>("REDIS_URL")?));
        config.registry = RegistryConfig::from_env(env)?;
        config.search_url = env.optional("FILAMENT_SEARCH_GRPC_URL")?;
        config.voice_url = env.optional("FILAMENT_VOICE_GRPC_URL")?;
        config.admin_addr = env.optional("FILAMENT_API_ADMIN_ADDR")?;
        config.attachment_root = env.or("FILAMENT_ATTACHMENT_ROOT", config.attachment_root)?;
        config.apply_env(env)?;
        Ok(config)
    }

    /// Applies the variables that tune the api rather than wire it up:
    /// limits, caps, costs and the public listener. The all-in-one reads
    /// them through here too, so both mean the same thing.
    pub fn apply_env(&mut self, env: &Env) -> Result<(), ConfigError> {
        let config = self;
        config.max_created_guilds_per_user = env.or(
            "FILAMENT_MAX_CREATED_GUILDS_PER_USER",
            config.max_created_guilds_per_user,
        )?;
        // Read as a plain ULID, in any case, as before ids were typed.
        config.server_owner = env
            .optional::<ulid::Ulid>("FILAMENT_SERVER_OWNER_USER_ID")?
            .map(UserId);
        config.public = PublicLimits::from_env(env)?;
        config.database = crate::store::DatabaseLimits::from_env(env)?;
        config.rate_limit_per_minute = env.or(
            "FILAMENT_RATE_LIMIT_REQUESTS_PER_MINUTE",
            config.rate_limit_per_minute,
        )?;
        if config.rate_limit_per_minute == 0 {
            return Err(ConfigError::Invalid {
                name: "FILAMENT_RATE_LIMIT_REQUESTS_PER_MINUTE",
                value: "0".to_owned(),
                reason: "must be at least 1".to_owned(),
            });
        }
        config.auth_route_per_minute = env.or(
            "FILAMENT_AUTH_ROUTE_REQUESTS_PER_MINUTE",
            config.auth_route_per_minute,
        )?;
        moderation_config_from_env(config, env)?;
        config.password_hashing = PasswordHashing {
            memory_kib: env.or(
                "FILAMENT_ARGON2_MEMORY_KIB",
                config.password_hashing.memory_kib,
            )?,
            iterations: env.or(
                "FILAMENT_ARGON2_ITERATIONS",
                config.password_hashing.iterations,
            )?,
        };
        config.hashing_limits = HashingLimits {
            max_concurrent: env.or(
                "FILAMENT_ARGON2_MAX_CONCURRENT",
                config.hashing_limits.max_concurrent,
            )?,
            max_queued: env.or(
                "FILAMENT_ARGON2_MAX_QUEUED",
                config.hashing_limits.max_queued,
            )?,
            queue_wait: Duration::from_millis(env.or(
                "FILAMENT_ARGON2_QUEUE_WAIT_MS",
                u64::try_from(config.hashing_limits.queue_wait.as_millis()).unwrap_or(u64::MAX),
            )?),
        };
        Ok(())
    }
}

/// Reads the moderation variables into `config` (PROTOCOL.md §4): the
/// directory join limits, the audit page cap, the IP-ban cap and the trusted proxies.
fn moderation_config_from_env(config: &mut Config, env: &Env) -> Result<(), ConfigError> {
    let positive = |name: &'static str, default: u32| -> Result<u32, ConfigError> {
        let value = env.or(name, default)?;
        if value == 0 {
            return Err(ConfigError::Invalid {
                name,
                value: "0".to_owned(),
                reason: "must be at least 1".to_owned(),
            });
        }
        Ok(value)
    };
    config.directory_join_per_minute_per_ip = positive(
        "FILAMENT_DIRECTORY_JOIN_REQUESTS_PER_MINUTE_PER_IP",
        config.directory_join_per_minute_per_ip,
    )?;
    config.directory_join_per_minute_per_user = positive(
        "FILAMENT_DIRECTORY_JOIN_REQUESTS_PER_MINUTE_PER_USER",
        config.directory_join_per_minute_per_user,
    )?;
    config.audit_list_limit_max =
        positive("FILAMENT_AUDIT_LIST_LIMIT_MAX", config.audit_list_limit_max)?;
    config.guild_ip_ban_max_entries = positive(
        "FILAMENT_GUILD_IP_BAN_MAX_ENTRIES",
        config.guild_ip_ban_max_entries,
    )?;
    config.trusted_proxy_cidrs = env
        .list::<filament_runtime::client_ip::TrustedProxy>("FILAMENT_TRUSTED_PROXY_CIDRS")?
        .into_iter()
        .map(|proxy| proxy.0)
        .collect();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_reads_the_variables_and_names_a_bad_one() {
        let mut config = Config::new(
            ([127, 0, 0, 1], 0).into(),
            ([127, 0, 0, 1], 0).into(),
            "sqlite::memory:",
            vec![0; 32],
        );
        let env = Env::from_pairs([
            ("FILAMENT_TRUSTED_PROXY_CIDRS", "10.0.0.0/8, 192.0.2.7"),
            ("FILAMENT_GUILD_IP_BAN_MAX_ENTRIES", "12"),
        ]);
        moderation_config_from_env(&mut config, &env).expect("valid");
        assert_eq!(config.trusted_proxy_cidrs.len(), 2);
        assert_eq!(config.guild_ip_ban_max_entries, 12);
        assert_eq!(config.directory_join_per_minute_per_ip, 60);
        assert_eq!(config.directory_join_per_minute_per_user, 30);
        assert_eq!(config.audit_list_limit_max, 100);

        let bad = Env::from_pairs([("FILAMENT_TRUSTED_PROXY_CIDRS", "10.0.0.0/99")]);
        let err = moderation_config_from_env(&mut config, &bad).expect_err("invalid");
        assert!(
            err.to_string().contains("FILAMENT_TRUSTED_PROXY_CIDRS"),
            "{err}"
        );
        let zero = Env::from_pairs([("FILAMENT_AUDIT_LIST_LIMIT_MAX", "0")]);
        let err = moderation_config_from_env(&mut config, &zero).expect_err("invalid");
        assert!(
            err.to_string().contains("FILAMENT_AUDIT_LIST_LIMIT_MAX"),
            "{err}"
        );
    }

    fn config() -> Config {
        Config::new(
            ([127, 0, 0, 1], 0).into(),
            ([127, 0, 0, 1], 0).into(),
            "sqlite::memory:",
            vec![0; 32],
        )
    }

    #[test]
    fn debug_hides_the_database_password() {
        let config = Config::from_env(&Env::from_pairs([
            (
                "DATABASE_URL",
                "postgres://filament:s3cretpw@db:5432/filament",
            ),
            (
                "FILAMENT_TOKEN_SECRET",
                "a-token-secret-of-at-least-32-bytes-long",
            ),
            (
                "FILAMENT_INTERNAL_TOKEN",
                "an-internal-token-of-at-least-32-bytes-long",
            ),
            ("REDIS_URL", "redis://:r3dispw@cache:6379"),
        ]))
        .expect("config");
        assert!(!format!("{config:?}").contains("r3dispw"));
        assert_eq!(
            config.database_url.expose(),
            "postgres://filament:s3cretpw@db:5432/filament"
        );
        let printed = format!("{config:?}");
        assert!(!printed.contains("s3cretpw"), "{printed}");
        assert!(
            printed.contains("postgres://filament:<redacted>@db:5432/filament"),
            "{printed}"
        );
        assert!(
            !printed.contains("an-internal-token-of-at-least-32-bytes-long"),
            "{printed}"
        );
    }

    #[test]
    fn database_limits_default_below_the_request_timeout_and_read_their_variables() {
        let mut defaults = config();
        defaults.apply_env(&Env::default()).unwrap();
        let limits = defaults.database;
        assert!(limits.acquire_timeout + limits.statement_timeout < defaults.request_timeout);

        let mut tuned = config();
        tuned
            .apply_env(&Env::from_pairs([
                ("FILAMENT_DATABASE_ACQUIRE_TIMEOUT_MS", "1500"),
                ("FILAMENT_DATABASE_STATEMENT_TIMEOUT_MS", "2500"),
            ]))
            .unwrap();
        assert_eq!(
            tuned.database,
            crate::store::DatabaseLimits {
                acquire_timeout: Duration::from_millis(1500),
                statement_timeout: Duration::from_millis(2500),
            }
        );
        let zero = config().apply_env(&Env::from_pairs([(
            "FILAMENT_DATABASE_STATEMENT_TIMEOUT_MS",
            "0",
        )]));
        assert!(
            matches!(
                zero,
                Err(ConfigError::Invalid {
                    name: "FILAMENT_DATABASE_STATEMENT_TIMEOUT_MS",
                    ..
                })
            ),
            "{zero:?}"
        );
    }

    #[test]
    fn hashing_limits_default_to_the_cores_and_read_their_variables() {
        let mut defaults = config();
        defaults.apply_env(&Env::default()).unwrap();
        assert_eq!(
            defaults.hashing_limits.max_concurrent,
            std::thread::available_parallelism().unwrap()
        );
        assert_eq!(defaults.hashing_limits.max_queued, 64);

        let mut tuned = config();
        tuned
            .apply_env(&Env::from_pairs([
                ("FILAMENT_ARGON2_MAX_CONCURRENT", "3"),
                ("FILAMENT_ARGON2_MAX_QUEUED", "0"),
                ("FILAMENT_ARGON2_QUEUE_WAIT_MS", "250"),
            ]))
            .unwrap();
        assert_eq!(
            tuned.hashing_limits,
            HashingLimits {
                max_concurrent: NonZeroUsize::new(3).unwrap(),
                max_queued: 0,
                queue_wait: Duration::from_millis(250),
            }
        );

        let zero = config().apply_env(&Env::from_pairs([("FILAMENT_ARGON2_MAX_CONCURRENT", "0")]));
        assert!(
            matches!(
                zero,
                Err(ConfigError::Invalid {
                    name: "FILAMENT_ARGON2_MAX_CONCURRENT",
                    ..
                })
            ),
            "{zero:?}"
        );
    }
}
