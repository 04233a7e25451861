//! Request extractors that fail the way PROTOCOL.md §1.2 says: every rejection
//! becomes an [`ApiError`] with a `{"error":…}` body.

use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use filament_ids::{AttachmentId, ChannelId, GuildId, MessageId, RoleId, SessionId, UserId};
use serde::de::DeserializeOwned;
use ulid::Ulid;

use crate::domain::sessions::{Caller, authenticate};
use crate::error::ApiError;
use crate::state::AppState;
use crate::store::UserRecord;

/// The authenticated caller, reloaded from storage on every request.
#[derive(Debug, Clone)]
pub struct AuthUser(pub UserRecord);

impl FromRequestParts<AppState> for AuthUser {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let token = bearer_token(&parts.headers).ok_or(ApiError::InvalidCredentials)?;
        // Behind the IP gate, the gate's statement already read this
        // request's caller.
        if let Some(read) = parts.extensions.get::<GateCaller>()
            && read.token == token
        {
            return read.caller.clone().into_user().map(Self);
        }
        authenticate(state, token).await.map(Self)
    }
}

/// The request's bearer token, if it has one.
pub fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
}

/// The caller the IP gate (`client_ip.rs`) read for this request's
/// token, together with the ban, so that [`AuthUser`] does not read it a
/// second time. It lives in the request's extensions, which only this
/// crate's middleware writes, and so ends with the request: nothing is
/// remembered for the next one.
#[derive(Debug, Clone)]
pub struct GateCaller {
    pub token: String,
    pub caller: Caller,
}

/// A JSON body declared as `application/json` (else 415). Text that is not
/// JSON is a 400 — that includes invalid UTF-8 and a `\uD800` escape with
/// no partner, which no JSON string may hold (RFC 8259 §8); JSON of the
/// wrong shape (an unknown, missing or mistyped field) is a 422, whichever
/// way serde reports it; an oversized body 413.
#[derive(Debug, Clone)]
pub struct JsonBody<T>(pub T);

impl<T, S> FromRequest<S> for JsonBody<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !declares_json(req.headers()) {
            return Err(ApiError::UnsupportedMediaType);
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            match rejection.status() {
                StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge,
                _ => ApiError::InvalidRequest,
            }
        })?;
        // Checked whole and first: serde skips the bytes of a value it
        // ignores without decoding them.
        let text = std::str::from_utf8(&bytes).map_err(|_| ApiError::InvalidRequest)?;
        match serde_json::from_str::<T>(text) {
            Ok(value) => Ok(Self(value)),
            // Which error serde meets first depends on where it stands: an
            // unknown field ahead of a broken string is a data error, a
            // number where an enum belongs a syntax one. So the document
            // decides: if it is JSON, the shape was wrong. A `Value`
            // decodes every string (`IgnoredAny` would pass a lone
            // surrogate escape), and this runs only on the error path.
            Err(_) if serde_json::from_str::<serde_json::Value>(text).is_ok() => {
                Err(ApiError::UnprocessableBody)
            }
            Err(_) => Err(ApiError::InvalidRequest),
        }
    }
}

/// `application/json` or an `application/*+json` type, any parameters.
fn declares_json(headers: &HeaderMap) -> bool {
    let Some(value) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = value
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// Query parameters; any problem is a 400.
#[derive(Debug, Clone)]
pub struct QueryParams<T>(pub T);

impl<T, S> FromRequestParts<S> for QueryParams<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Query(value)| Self(value))
            .map_err(|_: QueryRejection| ApiError::InvalidRequest)
    }
}

/// Path segments that must be canonical ULIDs; anything else is a 400.
/// `T` says what they are: one id (`Ids<GuildId>`) or a tuple of them
/// (`Ids<(GuildId, ChannelId)>`), in path order; a plain `Ulid` for a
/// segment that names no entity.
#[derive(Debug, Clone)]
pub struct Ids<T>(pub T);

/// What [`Ids`] can extract: typed ids from the path's segments, exactly as
/// many as there are.
pub trait PathIds: Sized {
    /// `None` when the number of segments is not the number of ids.
    fn from_segments(segments: &[String]) -> Result<Option<Self>, ApiError>;
}

macro_rules! single_path_id {
    ($($id:ty),+) => {
        $(
            impl PathIds for $id {
                fn from_segments(segments: &[String]) -> Result<Option<Self>, ApiError> {
                    let ids = <(Self,)>::from_segments(segments)?;
                    Ok(ids.map(|(id,)| id))
                }
            }
        )+
    };
}

single_path_id!(
    AttachmentId,
    ChannelId,
    GuildId,
    MessageId,
    RoleId,
    SessionId,
    UserId,
    Ulid
);

macro_rules! tuple_path_ids {
    ($($len:literal => ($($name:ident $var:ident),+);)+) => {
        $(
            impl<$($name: From<Ulid>),+> PathIds for ($($name,)+) {
                fn from_segments(segments: &[String]) -> Result<Option<Self>, ApiError> {
                    // Every segment is parsed before the count is checked,
                    // as a bad id is the same 400 either way.
                    let ids = segments
                        .iter()
                        .map(|segment| crate::domain::parse_id::<Ulid>(segment))
                        .collect::<Result<Vec<_>, _>>()?;
                    let Ok([$($var),+]) = <[Ulid; $len]>::try_from(ids) else {
                        return Ok(None);
                    };
                    Ok(Some(($($var.into(),)+)))
                }
            }
        )+
    };
}

tuple_path_ids! {
    1 => (A a);
    2 => (A a, B b);
    3 => (A a, B b, C c);
}

impl<T: PathIds, S> FromRequestParts<S> for Ids<T>
where
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let axum::extract::Path(raw) =
            axum::extract::Path::<Vec<String>>::from_request_parts(parts, state)
                .await
                .map_err(|_| ApiError::InvalidRequest)?;
        T::from_segments(&raw)?
            .map(Self)
            .ok_or(ApiError::InvalidRequest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Dto {
        #[allow(dead_code)]
        content: String,
    }

    /// The status a body gets, or 200.
    async fn status_of(body: &'static [u8]) -> u16 {
        let request = Request::builder()
            .header(header::CONTENT_TYPE, "application/json")
            .body(axum::body::Body::from(body))
            .unwrap();
        match JsonBody::<Dto>::from_request(request, &()).await {
            Ok(_) => 200,
            Err(err) => err.status_and_code().0.as_u16(),
        }
    }

    #[test]
    fn path_ids_are_typed_canonical_and_exactly_as_many_as_asked() {
        let (g, c) = (GuildId::generate(), ChannelId::generate());
        let segments = [g.to_string(), c.to_string()];
        assert_eq!(
            <(GuildId, ChannelId)>::from_segments(&segments).unwrap(),
            Some((g, c))
        );
        assert_eq!(GuildId::from_segments(&segments[..1]).unwrap(), Some(g));
        assert_eq!(GuildId::from_segments(&segments).unwrap(), None);
        assert_eq!(
            <(GuildId, ChannelId)>::from_segments(&segments[..1]).unwrap(),
            None
        );
        let lowercase = [g.to_string().to_lowercase()];
        assert!(matches!(
            GuildId::from_segments(&lowercase),
            Err(ApiError::InvalidRequest)
        ));
    }

    #[tokio::test]
    async fn broken_strings_are_malformed_and_wrong_shapes_unprocessable() {
        for (body, want) in [
            (&br#"{"content":"\ud83d\ude00"}"#[..], 200),
            (br#"{"content":"\ud800"}"#, 400),
            (br#"{"content":"\udc00"}"#, 400),
            (b"{\"content\":\"\xff\"}", 400),
            // Whatever serde meets first, a broken document is a 400...
            (br#"{"pinned":1,"content":"\ud800"}"#, 400),
            (b"{\"content\":\"x\",\"pinned\":\"\xc3\"}", 400),
            (br#"{"content":"x""#, 400),
            // ...and a whole one of the wrong shape a 422.
            (br#"{"pinned":1,"content":"x"}"#, 422),
            (br#"{"content":7}"#, 422),
            (br#"{"content":"x","content":"y"}"#, 422),
        ] {
            assert_eq!(
                status_of(body).await,
                want,
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }
}
