//! `/users/*`: reading and editing profiles, looking users up, and the
//! avatar and banner images (upload with a hard size cap and a sniffed
//! type; public, cacheable download).
//!
//! This adapter owns the request and response shapes, reads the upload
//! body under its cap and serves the images with their caching headers;
//! the use cases, and the events they tell each profile's audience, are
//! `domain::profiles`.

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use filament_ids::UserId;
use filament_wire::Profile;
use serde::{Deserialize, Serialize};
use tokio_stream::StreamExt as _;
use utoipa::ToSchema;
use utoipa_axum::routes;

use crate::domain::Username;
use crate::domain::profiles::{
    self, AboutMarkdown, LookupIds, ProfilePatch, accepted_image_type, max_image_bytes,
};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::http::auth::profile;
use crate::http::client_ip::ClientIp;
use crate::http::extract::{AuthUser, Ids, JsonBody};
use crate::http::openapi::{ApiRouter, Binary, Id, UserPath};
use crate::http::uploads::{Disposition, untrusted_content_headers};
use crate::rate_limit::AuthRoute;
use crate::state::AppState;
use crate::store::{ImageKind, UserRecord};

/// Browsers may reuse an image for five minutes; the `?v=` cache-buster
/// the client adds after an upload gets around that.
const IMAGE_CACHE_CONTROL: HeaderValue = HeaderValue::from_static("public, max-age=300");

/// At least one field.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProfilePatchDto {
    /// 3–32 of `[A-Za-z0-9_.]`, not taken.
    #[serde(default)]
    #[schema(pattern = "^[A-Za-z0-9_.]{3,32}$")]
    username: Option<String>,
    /// At most 2048 bytes.
    #[serde(default)]
    about_markdown: Option<String>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LookupDto {
    #[schema(value_type = Vec<Id>, min_items = 1, max_items = 64)]
    user_ids: Vec<String>,
}

#[derive(Serialize, ToSchema)]
pub struct LookupResponse {
    /// The users found; unknown ids are left out.
    users: Vec<UserSummary>,
}

#[derive(Serialize, ToSchema)]
pub struct UserSummary {
    user_id: String,
    username: String,
    avatar_version: i64,
}

impl TryFrom<ProfilePatchDto> for ProfilePatch {
    type Error = ApiError;

    fn try_from(dto: ProfilePatchDto) -> Result<Self, Self::Error> {
        ProfilePatch::new(
            dto.username.map(Username::try_from).transpose()?,
            dto.about_markdown
                .map(AboutMarkdown::try_from)
                .transpose()?,
        )
    }
}

impl TryFrom<LookupDto> for LookupIds {
    type Error = ApiError;

    fn try_from(dto: LookupDto) -> Result<Self, Self::Error> {
        LookupIds::parse(&dto.user_ids)
    }
}

#[utoipa::path(
    patch,
    path = "/users/me/profile",
    tag = "users",
    security(("bearer" = [])),
    request_body = ProfilePatchDto,
    responses(
        (status = 200, description = "The caller's profile as it is now.", body = Profile),
        (status = 400, description = "A malformed field, no field, or the name is taken (`invalid_request`).", body = ErrorBody),
    ),
)]
pub async fn update(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    ClientIp(ip): ClientIp,
    JsonBody(dto): JsonBody<ProfilePatchDto>,
) -> ApiResult<Json<Profile>> {
    state.auth_limiter().check(AuthRoute::ProfileUpdate, ip)?;
    let patch = ProfilePatch::try_from(dto)?;
    let updated = profiles::update(&state, user.user_id, patch).await?;
    profile(&updated).map(Json)
}

#[utoipa::path(
    get,
    path = "/users/{user_id}/profile",
    tag = "users",
    security(("bearer" = [])),
    params(UserPath),
    responses(
        (status = 200, description = "The user's profile.", body = Profile),
        (status = 404, description = "No such user (`not_found`).", body = ErrorBody),
    ),
)]
pub async fn get_profile(
    State(state): State<AppState>,
    AuthUser(_): AuthUser,
    Ids(user_id): Ids<UserId>,
) -> ApiResult<Json<Profile>> {
    let user = profiles::user(&state, user_id).await?;
    profile(&user).map(Json)
}

#[utoipa::path(
    post,
    path = "/users/lookup",
    tag = "users",
    security(("bearer" = [])),
    request_body = LookupDto,
    responses((status = 200, description = "Who the ids are.", body = LookupResponse)),
)]
pub async fn lookup(
    State(state): State<AppState>,
    AuthUser(_): AuthUser,
    JsonBody(dto): JsonBody<LookupDto>,
) -> ApiResult<Json<LookupResponse>> {
    let ids = LookupIds::try_from(dto)?;
    let users = profiles::lookup(&state, &ids).await?;
    Ok(Json(LookupResponse {
        users: users
            .into_iter()
            .map(|user| UserSummary {
                user_id: user.user_id.to_string(),
                username: user.username,
                avatar_version: user.avatar_version,
            })
            .collect(),
    }))
}

#[utoipa::path(
    post,
    path = "/users/me/profile/avatar",
    tag = "users",
    security(("bearer" = [])),
    request_body(
        description = "The image, at most 2 MiB, declared as its own type (or not at all): the type is sniffed from the bytes.",
        content(
            (Binary = "image/png"),
            (Binary = "image/jpeg"),
            (Binary = "image/webp"),
            (Binary = "image/gif"),
            (Binary = "image/avif"),
        ),
    ),
    responses(
        (status = 200, description = "The caller's profile with the new `avatar_version`.", body = Profile),
        (status = 400, description = "Not an accepted image type, or not the declared one (`invalid_request`).", body = ErrorBody),
        (status = 413, description = "Over 2 MiB (`payload_too_large`).", body = ErrorBody),
    ),
)]
pub async fn upload_avatar(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    ClientIp(ip): ClientIp,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<Profile>> {
    state.auth_limiter().check(AuthRoute::AvatarUpload, ip)?;
    upload(&state, &user, ImageKind::Avatar, &headers, body).await
}

#[utoipa::path(
    post,
    path = "/users/me/profile/banner",
    tag = "users",
    security(("bearer" = [])),
    request_body(
        description = "The image, at most 6 MiB, declared as its own type (or not at all): the type is sniffed from the bytes.",
        content(
            (Binary = "image/png"),
            (Binary = "image/jpeg"),
            (Binary = "image/webp"),
            (Binary = "image/gif"),
            (Binary = "image/avif"),
        ),
    ),
    responses(
        (status = 200, description = "The caller's profile with the new `banner_version`.", body = Profile),
        (status = 400, description = "Not an accepted image type, or not the declared one (`invalid_request`).", body = ErrorBody),
        (status = 413, description = "Over 6 MiB (`payload_too_large`).", body = ErrorBody),
    ),
)]
pub async fn upload_banner(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    ClientIp(ip): ClientIp,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<Profile>> {
    state.auth_limiter().check(AuthRoute::BannerUpload, ip)?;
    upload(&state, &user, ImageKind::Banner, &headers, body).await
}

/// Public: `<img>` tags carry no token.
#[utoipa::path(
    get,
    path = "/users/{user_id}/avatar",
    tag = "users",
    params(UserPath, ("If-None-Match" = Option<String>, Header, description = "An `ETag` from before.")),
    responses(
        (status = 200, description = "The image, as its sniffed type; `ETag` is its SHA-256.", content(
            (Binary = "image/png"),
            (Binary = "image/jpeg"),
            (Binary = "image/webp"),
            (Binary = "image/gif"),
            (Binary = "image/avif"),
        )),
        (status = 304, description = "`If-None-Match` names the current image."),
        (status = 404, description = "No such user, or no image (`not_found`).", body = ErrorBody),
        (status = 500, description = "An unexpected failure (`internal_error`).", body = ErrorBody),
        (status = 503, description = "The database is unavailable (`unavailable`), with `retry-after`.", body = ErrorBody),
    ),
)]
pub async fn avatar(
    State(state): State<AppState>,
    Ids(user_id): Ids<UserId>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    serve_image(&state, user_id, ImageKind::Avatar, &headers).await
}

/// Public: `<img>` tags carry no token.
#[utoipa::path(
    get,
    path = "/users/{user_id}/banner",
    tag = "users",
    params(UserPath, ("If-None-Match" = Option<String>, Header, description = "An `ETag` from before.")),
    responses(
        (status = 200, description = "The image, as its sniffed type; `ETag` is its SHA-256.", content(
            (Binary = "image/png"),
            (Binary = "image/jpeg"),
            (Binary = "image/webp"),
            (Binary = "image/gif"),
            (Binary = "image/avif"),
        )),
        (status = 304, description = "`If-None-Match` names the current image."),
        (status = 404, description = "No such user, or no image (`not_found`).", body = ErrorBody),
        (status = 500, description = "An unexpected failure (`internal_error`).", body = ErrorBody),
        (status = 503, description = "The database is unavailable (`unavailable`), with `retry-after`.", body = ErrorBody),
    ),
)]
pub async fn banner(
    State(state): State<AppState>,
    Ids(user_id): Ids<UserId>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    serve_image(&state, user_id, ImageKind::Banner, &headers).await
}

async fn upload(
    state: &AppState,
    user: &UserRecord,
    kind: ImageKind,
    headers: &HeaderMap,
    body: Body,
) -> ApiResult<Json<Profile>> {
    // A declared type we would refuse anyway is refused before the body is
    // read.
    let declared = declared_image_type(headers)?;
    let bytes = read_capped(body, headers, max_image_bytes(kind), UPLOAD_DRAIN_BYTES).await?;
    let updated = profiles::set_image(state, user.user_id, kind, declared, bytes).await?;
    profile(&updated).map(Json)
}

/// The request's `Content-Type` essence (no parameters, lowercase), if
/// there is one; a type that is not an accepted image type is a 400.
fn declared_image_type(headers: &HeaderMap) -> ApiResult<Option<&'static str>> {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Ok(None);
    };
    let raw = value.to_str().map_err(|_| ApiError::InvalidRequest)?;
    let essence = raw.split(';').next().unwrap_or_default().trim();
    accepted_image_type(essence)
        .map(Some)
        .ok_or(ApiError::InvalidRequest)
}

/// How much of an oversized upload is read and thrown away before the 413.
/// A server that answers before the body is in and then closes makes the
/// client see a reset connection instead of the 413; reading a bounded
/// excess (never kept) lets a merely-too-big upload get its answer, while
/// anything larger is refused at once. The request timeout bounds the time.
const UPLOAD_DRAIN_BYTES: usize = 16 * 1024 * 1024;

/// The body of an upload of at most `limit` bytes, or a 413; never holds
/// more than `limit` bytes. The api's JSON body limit does not apply to a
/// raw `Body`, which is why this cap is here.
async fn read_capped(
    body: Body,
    headers: &HeaderMap,
    limit: usize,
    drain: usize,
) -> ApiResult<Vec<u8>> {
    let declared_len = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared_len.is_some_and(|len| len > limit.saturating_add(drain)) {
        return Err(ApiError::PayloadTooLarge);
    }
    let mut bytes = Vec::with_capacity(declared_len.unwrap_or(0).min(limit));
    let mut total = 0_usize;
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        // A body that breaks off is a bad request, not a server error.
        let chunk = chunk.map_err(|_| ApiError::InvalidRequest)?;
        total = total.saturating_add(chunk.len());
        if total <= limit {
            bytes.extend_from_slice(&chunk);
            continue;
        }
        // Over the cap: nothing is kept; the rest is only counted.
        bytes = Vec::new();
        if total > limit.saturating_add(drain) {
            break;
        }
    }
    if total > limit {
        return Err(ApiError::PayloadTooLarge);
    }
    Ok(bytes)
}

async fn serve_image(
    state: &AppState,
    user_id: UserId,
    kind: ImageKind,
    headers: &HeaderMap,
) -> ApiResult<Response> {
    let image = profiles::image(state, user_id, kind).await?;
    let etag = format!("\"{}\"", image.sha256_hex);
    let etag_value = HeaderValue::from_str(&etag)
        .map_err(|err| ApiError::Internal(anyhow::anyhow!("stored sha256 is no header: {err}")))?;
    let content_type = HeaderValue::from_str(&image.content_type)
        .map_err(|err| ApiError::Internal(anyhow::anyhow!("stored type is no header: {err}")))?;
    let cache_headers: [(HeaderName, HeaderValue); 2] = [
        (header::ETAG, etag_value),
        (header::CACHE_CONTROL, IMAGE_CACHE_CONTROL),
    ];
    // Inline: the type is an accepted image type (`domain::profiles`),
    // sniffed on upload, and the client shows it in an `<img>`.
    let untrusted = untrusted_content_headers(Disposition::Inline)?;
    if if_none_match_hits(headers, &etag) {
        return Ok((StatusCode::NOT_MODIFIED, cache_headers, untrusted).into_response());
    }
    Ok((
        StatusCode::OK,
        cache_headers,
        untrusted,
        [(header::CONTENT_TYPE, content_type)],
        image.bytes,
    )
        .into_response())
}

/// Whether `If-None-Match` names this ETag (weakly compared, as RFC 9110
/// asks for this header) or is `*`.
fn if_none_match_hits(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .any(|tag| tag == "*" || tag.trim_start_matches("W/") == etag)
}

pub fn routes() -> ApiRouter {
    ApiRouter::new()
        .routes(routes!(update))
        .routes(routes!(upload_avatar))
        .routes(routes!(upload_banner))
        .routes(routes!(lookup))
        .routes(routes!(get_profile))
        .routes(routes!(avatar))
        .routes(routes!(banner))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use axum::body::Bytes;

    use super::*;

    #[test]
    fn a_patch_needs_a_field() {
        let dto = |username: Option<&str>, about: Option<&str>| ProfilePatchDto {
            username: username.map(str::to_owned),
            about_markdown: about.map(str::to_owned),
        };
        assert!(ProfilePatch::try_from(dto(None, None)).is_err());
        assert!(ProfilePatch::try_from(dto(Some("no spaces"), None)).is_err());
        assert!(ProfilePatch::try_from(dto(Some("fine_name"), None)).is_ok());
        assert!(ProfilePatch::try_from(dto(None, Some(""))).is_ok());
    }

    #[test]
    fn declared_types_are_compared_by_essence() {
        let with = |value: &'static str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(value));
            declared_image_type(&headers)
        };
        assert_eq!(declared_image_type(&HeaderMap::new()).ok(), Some(None));
        assert_eq!(with("image/png").ok(), Some(Some("image/png")));
        assert_eq!(with("Image/PNG; q=1").ok(), Some(Some("image/png")));
        assert!(with("text/plain").is_err());
        assert!(with("application/octet-stream").is_err());
    }

    #[test]
    fn if_none_match_takes_lists_weak_tags_and_star() {
        let etag = "\"abc\"";
        let with = |value: &'static str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::IF_NONE_MATCH, HeaderValue::from_static(value));
            if_none_match_hits(&headers, etag)
        };
        assert!(!if_none_match_hits(&HeaderMap::new(), etag));
        assert!(with("\"abc\""));
        assert!(with("\"x\", W/\"abc\""));
        assert!(with("*"));
        assert!(!with("\"abcd\""));
    }

    /// A body of chunks of these sizes, and a count of the chunks read.
    fn streamed(chunks: &[usize]) -> (Body, Arc<AtomicUsize>) {
        let read = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&read);
        let chunks: Vec<usize> = chunks.to_vec();
        let stream = tokio_stream::iter(chunks).map(move |len| {
            counter.fetch_add(1, Ordering::SeqCst);
            Ok::<_, std::io::Error>(Bytes::from(vec![7; len]))
        });
        (Body::from_stream(stream), read)
    }

    #[tokio::test]
    async fn uploads_are_capped_and_a_bounded_excess_is_drained() {
        let none = HeaderMap::new();
        let (body, _) = streamed(&[4, 4, 2]);
        let read = read_capped(body, &none, 10, 0).await;
        assert_eq!(read.ok().map(|bytes| bytes.len()), Some(10));

        // Over the cap: the rest is read (so the client gets the answer)...
        let (body, chunks_read) = streamed(&[4, 4, 3, 5, 5]);
        let over = read_capped(body, &none, 10, 20).await;
        assert!(matches!(over, Err(ApiError::PayloadTooLarge)));
        assert_eq!(chunks_read.load(Ordering::SeqCst), 5);
        // ...but only up to the drain budget.
        let (body, chunks_read) = streamed(&[8, 8, 8, 8, 8]);
        let way_over = read_capped(body, &none, 10, 5).await;
        assert!(matches!(way_over, Err(ApiError::PayloadTooLarge)));
        assert_eq!(chunks_read.load(Ordering::SeqCst), 2);

        // A declared length past cap and budget is refused unread.
        let mut declared = HeaderMap::new();
        declared.insert(header::CONTENT_LENGTH, HeaderValue::from_static("16"));
        let (body, chunks_read) = streamed(&[1]);
        let early = read_capped(body, &declared, 10, 5).await;
        assert!(matches!(early, Err(ApiError::PayloadTooLarge)));
        assert_eq!(chunks_read.load(Ordering::SeqCst), 0);
    }
}
