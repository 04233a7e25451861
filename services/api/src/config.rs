//! Api configuration, read once from the environment.

use std::net::SocketAddr;
use std::time::Duration;

use filament_runtime::{ConfigError, Env};

#[derive(Debug, Clone)]
pub struct Config {
    /// REST listener.
    pub http_addr: SocketAddr,
    /// gRPC listener: edge access and the event stream.
    pub grpc_addr: SocketAddr,
    /// `sqlite:…` or `postgres://…`.
    pub database_url: String,
    /// HS256 key for access tokens, at least 32 bytes.
    pub token_secret: Vec<u8>,
    pub access_token_ttl: Duration,
    pub session_ttl: Duration,
    pub max_created_guilds_per_user: u64,
    /// A user with every permission in every guild, member or not.
    pub server_owner: Option<ulid::Ulid>,
    pub password_hashing: PasswordHashing,
    /// Largest JSON body accepted.
    pub max_body_bytes: usize,
    pub request_timeout: Duration,
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

impl Config {
    /// A config with the contract's defaults, for the given listeners,
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
            database_url: database_url.into(),
            token_secret,
            access_token_ttl: Duration::from_secs(900),
            session_ttl: Duration::from_secs(30 * 24 * 3600),
            max_created_guilds_per_user: 5,
            server_owner: None,
            password_hashing: PasswordHashing::default(),
            max_body_bytes: 1024 * 1024,
            request_timeout: Duration::from_secs(10),
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
        config.max_created_guilds_per_user = env.or(
            "FILAMENT_MAX_CREATED_GUILDS_PER_USER",
            config.max_created_guilds_per_user,
        )?;
        config.server_owner = env.optional("FILAMENT_SERVER_OWNER_USER_ID")?;
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
        Ok(config)
    }
}
