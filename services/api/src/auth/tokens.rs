//! Access tokens (short-lived HS256 JWTs, opaque to clients) and refresh
//! tokens (`<session ulid>.<base64url(32 random bytes)>`, stored only as a
//! SHA-256 hash).

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rand::RngCore as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use ulid::Ulid;

/// The claims of an access token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessClaims {
    pub sub: String,
    pub username: String,
    pub iat: i64,
    pub nbf: i64,
    pub exp: i64,
}

/// Signs and verifies access tokens.
#[derive(Clone)]
pub struct TokenKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
}

impl std::fmt::Debug for TokenKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenKeys(<redacted>)")
    }
}

impl TokenKeys {
    pub fn new(secret: &[u8]) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 0;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "nbf", "sub"]);
        Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
        }
    }

    pub fn issue(
        &self,
        user_id: Ulid,
        username: &str,
        now: i64,
        ttl_secs: i64,
    ) -> anyhow::Result<String> {
        let claims = AccessClaims {
            sub: user_id.to_string(),
            username: username.to_owned(),
            iat: now,
            nbf: now,
            exp: now + ttl_secs,
        };
        Ok(jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &self.encoding,
        )?)
    }

    /// The claims of a valid, unexpired token signed with our key.
    pub fn verify(&self, token: &str) -> Option<AccessClaims> {
        // The contract bounds tokens to 32–4096 visible ASCII characters.
        if !(32..=4096).contains(&token.len()) || !token.bytes().all(|b| b.is_ascii_graphic()) {
            return None;
        }
        jsonwebtoken::decode::<AccessClaims>(token, &self.decoding, &self.validation)
            .ok()
            .map(|data| data.claims)
    }
}

/// A refresh token, split into the session it names and its secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefreshToken {
    pub session_id: Ulid,
    secret: String,
}

impl RefreshToken {
    pub const MAX_LEN: usize = 512;

    pub fn generate(session_id: Ulid) -> Self {
        let mut bytes = [0u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        Self {
            session_id,
            secret: URL_SAFE_NO_PAD.encode(bytes),
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        if raw.is_empty() || raw.len() > Self::MAX_LEN {
            return None;
        }
        let (session, secret) = raw.split_once('.')?;
        let session_id = crate::domain::parse_id(session).ok()?;
        let decoded = URL_SAFE_NO_PAD.decode(secret).ok()?;
        (decoded.len() == 32).then(|| Self {
            session_id,
            secret: secret.to_owned(),
        })
    }

    /// What the store keeps: SHA-256 of the secret, lowercase hex.
    pub fn hash(&self) -> String {
        let digest = Sha256::digest(self.secret.as_bytes());
        digest.iter().map(|b| format!("{b:02x}")).collect()
    }

    pub fn expose(&self) -> String {
        format!("{}.{}", self.session_id, self.secret)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::now_unix;

    #[test]
    fn access_tokens_round_trip_and_reject_bad_ones() {
        let keys = TokenKeys::new(&[7; 32]);
        let user = Ulid::generate();
        let now = now_unix();
        let fresh = keys.issue(user, "alice", now, 900).unwrap();
        assert_eq!(keys.verify(&fresh).unwrap().sub, user.to_string());
        let not_yet = keys.issue(user, "alice", now + 1000, 900).unwrap();
        assert!(keys.verify(&not_yet).is_none(), "nbf in the future");
        let expired = keys.issue(user, "alice", now - 1000, 900).unwrap();
        assert!(keys.verify(&expired).is_none());
        let forged = TokenKeys::new(&[8; 32])
            .issue(user, "alice", now, 900)
            .unwrap();
        assert!(keys.verify(&forged).is_none());
        assert!(keys.verify("short").is_none());
    }

    #[test]
    fn refresh_tokens_parse_and_hash() {
        let token = RefreshToken::generate(Ulid::generate());
        let parsed = RefreshToken::parse(&token.expose()).unwrap();
        assert_eq!(parsed, token);
        assert_eq!(parsed.hash().len(), 64);
        assert!(RefreshToken::parse("nope").is_none());
        assert!(RefreshToken::parse(&format!("{}.short", Ulid::generate())).is_none());
        assert!(RefreshToken::parse(&"x".repeat(513)).is_none());
    }
}
