//! Argon2id password hashing, always off the async reactor.

use argon2::password_hash::{PasswordHasher as _, PasswordVerifier};
use argon2::{Algorithm, Argon2, Params, Version};

use crate::config::PasswordHashing;

#[derive(Debug, Clone)]
pub struct PasswordHasher {
    params: Params,
    /// A hash of a random password, verified against when the username is
    /// unknown, so a login takes as long whether or not the user exists.
    decoy: String,
}

impl PasswordHasher {
    pub fn new(cost: PasswordHashing) -> anyhow::Result<Self> {
        let params = Params::new(cost.memory_kib, cost.iterations, 1, None)
            .map_err(|err| anyhow::anyhow!("argon2 parameters: {err}"))?;
        let decoy = hash_with(&params, &ulid::Ulid::generate().to_string())?;
        Ok(Self { params, decoy })
    }

    pub async fn hash(&self, password: &str) -> anyhow::Result<String> {
        let params = self.params.clone();
        let password = password.to_owned();
        tokio::task::spawn_blocking(move || hash_with(&params, &password)).await?
    }

    /// Whether `password` matches `stored`. With `stored = None` it checks
    /// against the decoy and returns false, taking the same time.
    pub async fn verify(&self, password: &str, stored: Option<&str>) -> anyhow::Result<bool> {
        let known = stored.is_some();
        let stored = stored.unwrap_or(&self.decoy).to_owned();
        let password = password.to_owned();
        // The stored hash carries its own parameters.
        let matches = tokio::task::spawn_blocking(move || {
            Argon2::default()
                .verify_password(password.as_bytes(), stored.as_str())
                .is_ok()
        })
        .await?;
        Ok(known && matches)
    }
}

fn hash_with(params: &Params, password: &str) -> anyhow::Result<String> {
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone())
        .hash_password(password.as_bytes())
        .map(|hash| hash.to_string())
        .map_err(|err| anyhow::anyhow!("argon2: {err}"))
}
