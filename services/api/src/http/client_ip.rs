//! Who is calling, by network address, and the guild IP-ban gate built on
//! it.
//!
//! [`ClientIp`] is the peer address of the connection, or, only when that
//! peer is a proxy listed in `FILAMENT_TRUSTED_PROXY_CIDRS`, the address the
//! proxy forwarded (`CF-Connecting-IP`, else the first `X-Forwarded-For`
//! entry). Anyone else could write those headers, to dodge an IP ban or to
//! get someone else's address banned, so they are ignored from untrusted
//! peers. The router must be served with
//! `into_make_service_with_connect_info::<SocketAddr>()`; without the peer
//! address the extractor fails closed with a 500 rather than guess.
//!
//! [`refuse_ip_banned`] enforces the IP gate of PROTOCOL.md §1.8 in one place: it
//! is layered on the whole router (`http/mod.rs`), recognises the routes
//! under `/guilds/{g}/channels…` and `/guilds/{g}/search…` — exactly the
//! routes PROTOCOL.md §2 marks IP — and answers `403 forbidden` (auditing
//! `moderation.ip_ban.hit`) when the caller's address matches an active ban
//! of that guild. Handlers of those routes need no code of their own: a new
//! IP route only has to live under one of those two prefixes. The same
//! statement reads the caller of the request's access token, which
//! [`AuthUser`] then takes instead of reading it again: one round trip for
//! the gate and the authentication of a guild route.

use std::net::{IpAddr, SocketAddr};

use axum::extract::connect_info::ConnectInfo;
use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use filament_ids::GuildId;
pub use filament_runtime::client_ip::resolve;

use crate::clock::now_unix;
use crate::domain::audit;
use crate::domain::sessions;
use crate::error::{ApiError, ApiResult};
use crate::http::extract::{AuthUser, GateCaller, bearer_token};
use crate::state::AppState;

/// The audit action of a request refused by an IP ban.
pub const IP_BAN_HIT: &str = "moderation.ip_ban.hit";

/// The caller's address, IPv4-mapped IPv6 folded to IPv4 so that one
/// client has one address whichever way the listener is bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientIp(pub IpAddr);

impl FromRequestParts<AppState> for ClientIp {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let ConnectInfo(peer) = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .copied()
            .ok_or_else(|| {
                ApiError::Internal(anyhow::anyhow!(
                    "no peer address: serve the api with into_make_service_with_connect_info"
                ))
            })?;
        Ok(Self(resolve(
            peer.ip(),
            &parts.headers,
            &state.config().trusted_proxy_cidrs,
        )))
    }
}

/// The guild of a request to a route PROTOCOL.md §2 marks IP, if this is one:
/// `/guilds/{g}/channels…` or `/guilds/{g}/search…`. Segments are
/// percent-decoded the way axum's `Path` decodes the id for the handler, so
/// an encoded path cannot slip past the gate to a handler that accepts it.
fn ip_checked_guild(path: &str) -> Option<GuildId> {
    let mut segments = path.strip_prefix('/')?.split('/').map(percent_decode);
    if segments.next()?.as_deref()? != "guilds" {
        return None;
    }
    let guild = segments.next()??;
    if !matches!(segments.next()?.as_deref()?, "channels" | "search") {
        return None;
    }
    crate::domain::parse_id(&guild).ok()
}

/// `%XX` sequences to bytes; `None` if the result is not UTF-8. Malformed
/// sequences stay as they are, as in axum's decoding.
fn percent_decode(segment: &str) -> Option<String> {
    let bytes = segment.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|pair| std::str::from_utf8(pair).ok())
            .and_then(|pair| u8::from_str_radix(pair, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(byte)) => {
                decoded.push(byte);
                i += 3;
            }
            (byte, _) => {
                decoded.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8(decoded).ok()
}

/// The middleware: refuses callers whose address an active ban of the
/// guild covers. Other requests pass untouched after one indexed lookup.
pub async fn refuse_ip_banned(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let Some(guild_id) = ip_checked_guild(request.uri().path()) else {
        return next.run(request).await;
    };
    let (mut parts, body) = request.into_parts();
    match check_ip_ban(&state, guild_id, &mut parts).await {
        Ok(()) => next.run(Request::from_parts(parts, body)).await,
        Err(err) => err.into_response(),
    }
}

async fn check_ip_ban(state: &AppState, guild_id: GuildId, parts: &mut Parts) -> ApiResult<()> {
    let ClientIp(ip) = ClientIp::from_request_parts(parts, state).await?;
    let token = bearer_token(&parts.headers).map(str::to_owned);
    let gate = sessions::gate(state, guild_id, ip, now_unix(), token.as_deref()).await?;
    if let (Some(token), Some(caller)) = (token, gate.caller) {
        parts.extensions.insert(GateCaller { token, caller });
    }
    if !gate.banned {
        return Ok(());
    }
    // Only an authenticated caller learns that a ban matched; anyone else
    // gets the 401 the route would have given them.
    let AuthUser(user) = AuthUser::from_request_parts(parts, state).await?;
    audit::record(
        state,
        guild_id,
        user.user_id,
        Some(user.user_id),
        IP_BAN_HIT,
    )
    .await;
    Err(ApiError::Forbidden)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gate_recognises_exactly_the_ip_routes() {
        let guild = GuildId::generate();
        let g = guild.to_string();
        for path in [
            format!("/guilds/{g}/channels"),
            format!("/guilds/{g}/channels/{g}/messages"),
            format!("/guilds/{g}/search"),
            format!("/guilds/{g}/search/rebuild"),
        ] {
            assert_eq!(ip_checked_guild(&path), Some(guild), "{path}");
        }
        for path in [
            format!("/guilds/{g}"),
            format!("/guilds/{g}/members"),
            format!("/guilds/{g}/join"),
            format!("/guilds/{g}/roles"),
            format!("/guilds/{g}/ip-bans"),
            format!("/guilds/{g}/audit"),
            "/guilds/public".to_owned(),
            "/guilds/not-an-id/channels".to_owned(),
            format!("/users/{g}/channels"),
        ] {
            assert_eq!(ip_checked_guild(&path), None, "{path}");
        }
        // Percent-encoding the id does not get past the gate.
        let encoded: String = g.bytes().map(|b| format!("%{b:02X}")).collect();
        assert_eq!(
            ip_checked_guild(&format!("/guilds/{encoded}/channels")),
            Some(guild)
        );
        assert_eq!(
            ip_checked_guild(&format!("/%67uilds/{g}/%63hannels/{g}")),
            Some(guild)
        );
        assert_eq!(percent_decode("a%2"), Some("a%2".to_owned()));
        assert_eq!(percent_decode("%zz"), Some("%zz".to_owned()));
        assert_eq!(percent_decode("%FF"), None);
    }
}
