//! Access tokens (short-lived HS256 JWTs, opaque to clients) and refresh
//! tokens (`<session ulid>.<base64url(32 random bytes)>`, stored only as a
//! SHA-256 hash). An access token names the session it was issued for, so
//! that a logout can revoke it before it expires.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use filament_ids::{SessionId, UserId};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rand::RngCore as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The claims of an access token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessClaims {
    pub sub: String,
    /// The session (the refresh token's session id). Required: a token
    /// that names no session could not be revoked by a logout.
    pub sid: String,
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
        // `sid` is not a registered claim; serde requires it.
        validation.set_required_spec_claims(&["exp", "nbf", "sub"]);
        Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
        }
    }

    pub fn issue(
        &self,
        user_id: UserId,
        session_id: SessionId,
        username: &str,
        now: i64,
        ttl_secs: i64,
    ) -> anyhow::Result<String> {
        let claims = AccessClaims {
            sub: user_id.to_string(),
            sid: session_id.to_string(),
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
        // PROTOCOL.md §1.5 bounds tokens to 32–4096 visible ASCII characters.
        if !(32..=4096).contains(&token.len()) || !token.bytes().all(|b| b.is_ascii_graphic()) {
            return None;
        }
        jsonwebtoken::decode::<AccessClaims>(token, &self.decoding, &self.validation)
            .ok()
            .map(|data| data.claims)
    }
}

/// A refresh token, split into the session it names and its secret.
#[derive(Clone, PartialEq, Eq)]
pub struct RefreshToken {
    pub session_id: SessionId,
    secret: String,
}

/// Names the session, never prints the secret: a token that reached a log
/// line would be a session anyone reading the logs could take over.
impl std::fmt::Debug for RefreshToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RefreshToken")
            .field("session_id", &format_args!("{}", self.session_id))
            .field("secret", &"<redacted>")
            .finish()
    }
}

impl RefreshToken {
    pub const MAX_LEN: usize = 512;

    pub fn generate(session_id: SessionId) -> Self {
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
        let (user, session) = (UserId::generate(), SessionId::generate());
        let now = now_unix();
        let fresh = keys.issue(user, session, "alice", now, 900).unwrap();
        let claims = keys.verify(&fresh).unwrap();
        assert_eq!(claims.sub, user.to_string());
        assert_eq!(claims.sid, session.to_string());
        let not_yet = keys.issue(user, session, "alice", now + 1000, 900).unwrap();
        assert!(keys.verify(&not_yet).is_none(), "nbf in the future");
        let expired = keys.issue(user, session, "alice", now - 1000, 900).unwrap();
        assert!(keys.verify(&expired).is_none());
        let forged = TokenKeys::new(&[8; 32])
            .issue(user, session, "alice", now, 900)
            .unwrap();
        assert!(keys.verify(&forged).is_none());
        assert!(keys.verify("short").is_none());
    }

    /// A token from before sessions were named in tokens cannot be revoked
    /// by a logout, so it is not accepted at all.
    #[test]
    fn access_tokens_without_a_session_are_refused() {
        #[derive(Serialize)]
        struct Sessionless {
            sub: String,
            username: String,
            iat: i64,
            nbf: i64,
            exp: i64,
        }
        let secret = [7; 32];
        let now = now_unix();
        let claims = Sessionless {
            sub: UserId::generate().to_string(),
            username: "alice".to_owned(),
            iat: now,
            nbf: now,
            exp: now + 900,
        };
        let token = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(&secret),
        )
        .unwrap();
        assert!(TokenKeys::new(&secret).verify(&token).is_none());
    }

    #[test]
    fn refresh_tokens_parse_and_hash() {
        let token = RefreshToken::generate(SessionId::generate());
        let parsed = RefreshToken::parse(&token.expose()).unwrap();
        assert_eq!(parsed, token);
        assert_eq!(parsed.hash().len(), 64);
        assert!(RefreshToken::parse("nope").is_none());
        assert!(RefreshToken::parse(&format!("{}.short", SessionId::generate())).is_none());
        assert!(RefreshToken::parse(&"x".repeat(513)).is_none());
    }

    #[test]
    fn a_refresh_token_debug_never_shows_its_secret() {
        let token = RefreshToken::generate(SessionId::generate());
        let printed = format!("{token:?}");
        let secret = token.expose();
        let secret = secret.split_once('.').unwrap().1;
        assert!(!printed.contains(secret), "{printed}");
        assert!(printed.contains(&token.session_id.to_string()), "{printed}");
    }
}
