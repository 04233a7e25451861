//! LiveKit interop: room and identity names, access tokens, and webhook
//! verification. LiveKit authenticates both ways with HS256 JWTs under the
//! deployment's API key and secret, which live only here.
//!
//! Tokens are signed by hand (HMAC-SHA256 over `header.claims`, base64url
//! without padding) rather than through a JWT library, so that the tests
//! can check them with `jsonwebtoken`, independently of this encoder.
//!
//! A webhook is trusted only after its `Authorization` JWT verifies under
//! our secret, names our API key as issuer, is within its validity, and
//! carries a `sha256` claim equal to the base64 SHA-256 of the exact body.
//! Every comparison of secret-derived bytes is constant-time.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use filament_ids::UserId;

use crate::roster::{ChannelKey, Stream};

type HmacSha256 = Hmac<Sha256>;

/// Clock skew tolerated on a webhook's `nbf` and `exp`.
const WEBHOOK_LEEWAY_SECS: i64 = 10;
/// The longest `Authorization` header considered.
const MAX_AUTHORIZATION_BYTES: usize = 8 * 1024;

/// The LiveKit deployment: where clients connect, and the key pair.
#[derive(Clone)]
pub struct LiveKit {
    api_key: String,
    api_secret: Vec<u8>,
    url: String,
}

/// Never prints the secret.
impl fmt::Debug for LiveKit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LiveKit")
            .field("api_key", &self.api_key)
            .field("api_secret", &"<redacted>")
            .field("url", &self.url)
            .finish()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LiveKitConfigError {
    #[error("must not be empty, at most 256 bytes of visible ASCII")]
    BadKey,
    #[error("must be at least 32 bytes")]
    ShortSecret,
    #[error(
        "must be an absolute ws:// or wss:// URL of at most 256 bytes, without credentials or fragment"
    )]
    BadUrl,
}

impl LiveKit {
    pub fn new(
        api_key: impl Into<String>,
        api_secret: impl Into<Vec<u8>>,
        url: impl Into<String>,
    ) -> Result<Self, LiveKitConfigError> {
        let (api_key, api_secret, url) = (api_key.into(), api_secret.into(), url.into());
        if api_key.is_empty()
            || api_key.len() > 256
            || !api_key.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(LiveKitConfigError::BadKey);
        }
        if api_secret.len() < 32 {
            return Err(LiveKitConfigError::ShortSecret);
        }
        if !valid_client_url(&url) {
            return Err(LiveKitConfigError::BadUrl);
        }
        Ok(Self {
            api_key,
            api_secret,
            url,
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Signs an access token for one participant.
    pub fn access_token(&self, grant: &TokenGrant<'_>, now_unix: i64, ttl_secs: i64) -> String {
        let claims = AccessClaims {
            iss: &self.api_key,
            sub: grant.identity,
            name: grant.name,
            iat: now_unix,
            nbf: now_unix,
            exp: now_unix + ttl_secs,
            jti: ulid::Ulid::generate().to_string(),
            video: VideoGrant {
                room_join: true,
                room: grant.room,
                can_publish: grant.can_publish,
                can_subscribe: grant.can_subscribe,
                can_publish_data: grant.can_publish,
                can_publish_sources: grant.sources.iter().map(|s| s.livekit_name()).collect(),
            },
        };
        self.jwt(&claims)
    }

    /// Signs a short-lived token for LiveKit's server API (`RoomService`):
    /// listing rooms, or administering one room.
    pub fn server_token(&self, scope: ServerScope<'_>, now_unix: i64) -> String {
        let video = match scope {
            ServerScope::ListRooms => ServerGrant {
                room_list: true,
                room_admin: false,
                room: None,
            },
            ServerScope::Room(room) => ServerGrant {
                room_list: false,
                room_admin: true,
                room: Some(room),
            },
        };
        self.jwt(&ServerClaims {
            iss: &self.api_key,
            nbf: now_unix,
            exp: now_unix + SERVER_TOKEN_TTL_SECS,
            video,
        })
    }

    /// An HS256 JWT of `claims`, signed with the secret.
    fn jwt(&self, claims: &impl Serialize) -> String {
        // Serializing plain strings, integers and booleans cannot fail.
        let claims = serde_json::to_vec(claims).unwrap_or_default();
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#),
            URL_SAFE_NO_PAD.encode(claims)
        );
        let signature = URL_SAFE_NO_PAD.encode(self.sign(signing_input.as_bytes()));
        format!("{signing_input}.{signature}")
    }

    /// Checks a webhook request: the JWT in `authorization` and the body it
    /// vouches for. Nothing of the body may be trusted before this is `Ok`.
    pub fn verify_webhook(
        &self,
        authorization: Option<&str>,
        body: &[u8],
        now_unix: i64,
    ) -> Result<(), WebhookAuthError> {
        let token = authorization.ok_or(WebhookAuthError::Missing)?;
        if token.len() > MAX_AUTHORIZATION_BYTES {
            return Err(WebhookAuthError::Malformed);
        }
        let token = token.strip_prefix("Bearer ").unwrap_or(token).trim();
        let mut parts = token.split('.');
        let (Some(header), Some(claims), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(WebhookAuthError::Malformed);
        };
        let signature = URL_SAFE_NO_PAD
            .decode(signature)
            .map_err(|_| WebhookAuthError::Malformed)?;
        let mut mac = self.mac();
        mac.update(header.as_bytes());
        mac.update(b".");
        mac.update(claims.as_bytes());
        mac.verify_slice(&signature)
            .map_err(|_| WebhookAuthError::BadSignature)?;

        // Signed by us; now the contents can be read.
        let header: JwtHeader = decode_part(header)?;
        if header.alg != "HS256" {
            return Err(WebhookAuthError::Malformed);
        }
        let claims: WebhookClaims = decode_part(claims)?;
        if claims.iss != self.api_key {
            return Err(WebhookAuthError::WrongIssuer);
        }
        if now_unix > claims.exp + WEBHOOK_LEEWAY_SECS
            || claims
                .nbf
                .is_some_and(|nbf| now_unix + WEBHOOK_LEEWAY_SECS < nbf)
        {
            return Err(WebhookAuthError::Expired);
        }
        let claimed = STANDARD
            .decode(claims.sha256.as_bytes())
            .map_err(|_| WebhookAuthError::BodyMismatch)?;
        let actual = Sha256::digest(body);
        if !constant_time_eq(&claimed, &actual) {
            return Err(WebhookAuthError::BodyMismatch);
        }
        Ok(())
    }

    fn mac(&self) -> HmacSha256 {
        // HMAC takes keys of any length; this cannot fail.
        <HmacSha256 as Mac>::new_from_slice(&self.api_secret)
            .unwrap_or_else(|_| unreachable!("HMAC accepts every key length"))
    }

    fn sign(&self, input: &[u8]) -> Vec<u8> {
        let mut mac = self.mac();
        mac.update(input);
        mac.finalize().into_bytes().to_vec()
    }
}

/// What one access token allows.
#[derive(Debug, Clone)]
pub struct TokenGrant<'a> {
    pub identity: &'a str,
    pub name: &'a str,
    pub room: &'a str,
    pub can_publish: bool,
    pub can_subscribe: bool,
    /// Ordered microphone, camera, screen share.
    pub sources: &'a [Stream],
}

/// What a server-API token may do.
#[derive(Debug, Clone, Copy)]
pub enum ServerScope<'a> {
    ListRooms,
    Room(&'a str),
}

/// Server-API tokens live this long: one drift check.
const SERVER_TOKEN_TTL_SECS: i64 = 60;

#[derive(Serialize)]
struct ServerClaims<'a> {
    iss: &'a str,
    nbf: i64,
    exp: i64,
    video: ServerGrant<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ServerGrant<'a> {
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    room_list: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    room_admin: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    room: Option<&'a str>,
}

/// Why a webhook was not trusted. Callers answer 401 for all of them and
/// log the kind, never the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WebhookAuthError {
    #[error("no Authorization header")]
    Missing,
    #[error("the Authorization header is not a JWT")]
    Malformed,
    #[error("the signature does not verify")]
    BadSignature,
    #[error("the token was issued for another API key")]
    WrongIssuer,
    #[error("the token is expired or not yet valid")]
    Expired,
    #[error("the body does not match the signed hash")]
    BodyMismatch,
}

#[derive(Serialize)]
struct AccessClaims<'a> {
    iss: &'a str,
    sub: &'a str,
    name: &'a str,
    iat: i64,
    nbf: i64,
    exp: i64,
    jti: String,
    video: VideoGrant<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct VideoGrant<'a> {
    room_join: bool,
    room: &'a str,
    can_publish: bool,
    can_subscribe: bool,
    can_publish_data: bool,
    can_publish_sources: Vec<&'static str>,
}

#[derive(Deserialize)]
struct JwtHeader {
    alg: String,
}

#[derive(Deserialize)]
struct WebhookClaims {
    iss: String,
    exp: i64,
    #[serde(default)]
    nbf: Option<i64>,
    sha256: String,
}

fn decode_part<T: for<'de> Deserialize<'de>>(part: &str) -> Result<T, WebhookAuthError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| WebhookAuthError::Malformed)?;
    serde_json::from_slice(&bytes).map_err(|_| WebhookAuthError::Malformed)
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Every room name starts with this.
const ROOM_PREFIX: &str = "filament.voice.";

/// The LiveKit room of a voice channel.
pub fn room_name(channel: &ChannelKey) -> String {
    format!("{ROOM_PREFIX}{}.{}", channel.guild_id, channel.channel_id)
}

/// The voice channel of a room this service named; `None` for any other.
pub fn parse_room(room: &str) -> Option<ChannelKey> {
    let (guild, channel) = room.strip_prefix(ROOM_PREFIX)?.split_once('.')?;
    Some(ChannelKey {
        guild_id: guild.parse().ok()?,
        channel_id: channel.parse().ok()?,
    })
}

/// A participant's LiveKit identity; the web client reads the user id from
/// its second dot-separated part.
pub fn identity(user_id: &str, channel: &ChannelKey) -> String {
    format!("u.{user_id}.{}.{}", channel.guild_id, channel.channel_id)
}

/// The user and channel named by an identity in `room`, if the two agree
/// and every id is a canonical ULID.
pub fn parse_identity(identity: &str, room: &str) -> Option<(String, ChannelKey)> {
    let key = parse_room(room)?;
    let user = identity
        .strip_prefix("u.")?
        .strip_suffix(&format!(".{}.{}", key.guild_id, key.channel_id))?;
    user.parse::<UserId>().ok()?;
    Some((user.to_owned(), key))
}

/// What the web client accepts as `livekit_url` (PROTOCOL.md §6.2).
fn valid_client_url(url: &str) -> bool {
    let Some(rest) = url
        .strip_prefix("ws://")
        .or_else(|| url.strip_prefix("wss://"))
    else {
        return false;
    };
    let authority = rest.split('/').next().unwrap_or_default();
    url.len() <= 256
        && !authority.is_empty()
        && !authority.contains('@')
        && !url.contains('#')
        && url.bytes().all(|b| b.is_ascii_graphic())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "a failed call is a failed test")]

    use super::*;

    const SECRET: &[u8] = b"a-livekit-secret-of-at-least-32-bytes!!";

    fn livekit() -> LiveKit {
        LiveKit::new("APIkey1", SECRET, "wss://voice.example.com").unwrap()
    }

    /// RFC 4231 test case 2: the MAC under the token signer is HMAC-SHA256.
    #[test]
    fn the_mac_is_hmac_sha256() {
        let mut mac = <HmacSha256 as Mac>::new_from_slice(b"Jefe").unwrap();
        mac.update(b"what do ya want for nothing?");
        let hex: String = mac
            .finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(
            hex,
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn config_is_checked_and_the_secret_never_printed() {
        assert_eq!(
            LiveKit::new("k", b"short".to_vec(), "ws://x").unwrap_err(),
            LiveKitConfigError::ShortSecret
        );
        assert_eq!(
            LiveKit::new("", SECRET, "ws://x").unwrap_err(),
            LiveKitConfigError::BadKey
        );
        for url in [
            "http://x",
            "ws://",
            "ws://user:pw@host",
            "wss://host/#frag",
            "wss://host with space",
        ] {
            assert_eq!(
                LiveKit::new("k", SECRET, url).unwrap_err(),
                LiveKitConfigError::BadUrl,
                "{url}"
            );
        }
        let printed = format!("{:?}", livekit());
        assert!(!printed.contains("a-livekit-secret"), "{printed}");
    }

    #[test]
    fn identities_round_trip_only_with_their_room() {
        let key = ChannelKey {
            guild_id: filament_ids::GuildId::generate(),
            channel_id: filament_ids::ChannelId::generate(),
        };
        let user = ulid::Ulid::generate().to_string();
        let id = identity(&user, &key);
        assert_eq!(
            parse_identity(&id, &room_name(&key)),
            Some((user, key.clone()))
        );
        assert_eq!(parse_identity(&id, "filament.voice.other"), None);
        assert_eq!(parse_identity("u.x.y.z", &room_name(&key)), None);
        assert_eq!(
            parse_identity(&format!("{id}.extra"), &room_name(&key)),
            None
        );
    }

    fn webhook_token(livekit: &LiveKit, claims: &serde_json::Value) -> String {
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        format!(
            "{input}.{}",
            URL_SAFE_NO_PAD.encode(livekit.sign(input.as_bytes()))
        )
    }

    #[test]
    fn webhooks_verify_only_when_everything_matches() {
        let lk = livekit();
        let body = br#"{"event":"room_started"}"#;
        let hash = STANDARD.encode(Sha256::digest(body));
        let good = serde_json::json!({"iss": "APIkey1", "exp": 1_000, "nbf": 900, "sha256": hash});
        let token = webhook_token(&lk, &good);
        assert_eq!(lk.verify_webhook(Some(&token), body, 950), Ok(()));
        assert_eq!(
            lk.verify_webhook(Some(&format!("Bearer {token}")), body, 950),
            Ok(())
        );

        let err =
            |auth: Option<&str>, body: &[u8], now| lk.verify_webhook(auth, body, now).unwrap_err();
        assert_eq!(err(None, body, 950), WebhookAuthError::Missing);
        assert_eq!(err(Some("abc"), body, 950), WebhookAuthError::Malformed);
        assert_eq!(
            err(Some(&token), br#"{"event":"room_finished"}"#, 950),
            WebhookAuthError::BodyMismatch
        );
        assert_eq!(err(Some(&token), body, 1_011), WebhookAuthError::Expired);
        assert_eq!(err(Some(&token), body, 889), WebhookAuthError::Expired);
        let other_key = LiveKit::new(
            "APIkey1",
            b"another-secret-of-at-least-32-bytes!!".to_vec(),
            "ws://x",
        )
        .unwrap();
        assert_eq!(
            err(Some(&webhook_token(&other_key, &good)), body, 950),
            WebhookAuthError::BadSignature
        );
        let mut wrong_issuer = good.clone();
        wrong_issuer["iss"] = "someone-else".into();
        assert_eq!(
            err(Some(&webhook_token(&lk, &wrong_issuer)), body, 950),
            WebhookAuthError::WrongIssuer
        );
        // A valid signature over a token without the hash is not enough.
        let no_hash = serde_json::json!({"iss": "APIkey1", "exp": 1_000});
        assert_eq!(
            err(Some(&webhook_token(&lk, &no_hash)), body, 950),
            WebhookAuthError::Malformed
        );
    }
}
