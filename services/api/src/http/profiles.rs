//! `/users/*`: reading and editing profiles, looking users up, and the
//! avatar and banner images (upload with a hard size cap and a sniffed
//! type; public, cacheable download).
//!
//! Profile events go to the user, their friends and everyone present in a
//! guild the user is a member of, so that every place showing the name or
//! the avatar refreshes.

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use filament_proto::v1::{self as pb, event};
use filament_wire::Profile;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use tokio_stream::StreamExt as _;
use ulid::Ulid;
use utoipa::ToSchema;
use utoipa_axum::routes;

use crate::clock::now_unix;
use crate::domain::{Username, parse_id, storable_text};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::http::auth::profile;
use crate::http::client_ip::ClientIp;
use crate::http::extract::{AuthUser, Ids, JsonBody};
use crate::http::openapi::{ApiRouter, Binary, Id, UserPath};
use crate::http::uploads::{Disposition, untrusted_content_headers};
use crate::outbox::Pending;
use crate::publish;
use crate::rate_limit::AuthRoute;
use crate::state::AppState;
use crate::store::{ImageKind, ProfileChange, ProfileImage, StoreError, UserRecord};

/// Most ids one `POST /users/lookup` takes.
const LOOKUP_MAX_IDS: usize = 64;

/// Whether some bytes are of one image type.
type Sniffer = fn(&[u8]) -> bool;

/// The image types accepted for avatars and banners, each with the check
/// of its magic bytes. The type is always taken from the bytes, never from
/// the request, so a stored image is served as what it really is.
const IMAGE_TYPES: [(&str, Sniffer); 5] = [
    ("image/jpeg", infer::image::is_jpeg),
    ("image/png", infer::image::is_png),
    ("image/webp", is_webp),
    ("image/gif", is_gif),
    ("image/avif", infer::image::is_avif),
];

/// `infer` looks only at the `WEBP` tag at offset 8; a real file is a RIFF
/// container too.
fn is_webp(bytes: &[u8]) -> bool {
    bytes.starts_with(b"RIFF") && infer::image::is_webp(bytes)
}

/// `infer` accepts any `GIF` prefix; a real file is `GIF87a` or `GIF89a`.
fn is_gif(bytes: &[u8]) -> bool {
    bytes.starts_with(b"GIF87a") || bytes.starts_with(b"GIF89a")
}

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

/// The "about" text: at most 2048 bytes, no NUL.
#[derive(Debug, Clone, PartialEq, Eq)]
struct AboutMarkdown(String);

impl AboutMarkdown {
    const MAX_BYTES: usize = 2048;
}

impl TryFrom<String> for AboutMarkdown {
    type Error = ApiError;

    fn try_from(raw: String) -> Result<Self, Self::Error> {
        if raw.len() <= Self::MAX_BYTES && storable_text(&raw) {
            Ok(Self(raw))
        } else {
            Err(ApiError::InvalidRequest)
        }
    }
}

/// A validated profile edit with at least one field.
#[derive(Debug)]
struct ProfilePatch {
    username: Option<Username>,
    about: Option<AboutMarkdown>,
}

impl TryFrom<ProfilePatchDto> for ProfilePatch {
    type Error = ApiError;

    fn try_from(dto: ProfilePatchDto) -> Result<Self, Self::Error> {
        let patch = Self {
            username: dto.username.map(Username::try_from).transpose()?,
            about: dto
                .about_markdown
                .map(AboutMarkdown::try_from)
                .transpose()?,
        };
        if patch.username.is_none() && patch.about.is_none() {
            return Err(ApiError::InvalidRequest);
        }
        Ok(patch)
    }
}

/// The ids of a lookup: 1–64 canonical ULIDs.
struct LookupIds(Vec<Ulid>);

impl TryFrom<LookupDto> for LookupIds {
    type Error = ApiError;

    fn try_from(dto: LookupDto) -> Result<Self, Self::Error> {
        if !(1..=LOOKUP_MAX_IDS).contains(&dto.user_ids.len()) {
            return Err(ApiError::InvalidRequest);
        }
        dto.user_ids
            .iter()
            .map(|raw| parse_id(raw))
            .collect::<Result<_, _>>()
            .map(Self)
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
    let payload = profile_update_payload(user.user_id, &patch, now_unix());
    // The audience does not change the frame, so the user alone is enough
    // to check the size before anything is written.
    publish::ensure_deliverable(&publish::for_users(
        vec![user.user_id.to_string()],
        Vec::new(),
        payload.clone(),
    ))?;
    let change = ProfileChange {
        username: patch.username.map(|u| u.as_str().to_owned()),
        about_markdown: patch.about.map(|about| about.0),
    };
    let audience = profile_audience(&state, user.user_id).await;
    let updated_event = Pending::new(&state, audience.event(payload));
    let updated = match state
        .store()
        .update_profile(user.user_id, change, vec![updated_event.row()])
        .await
    {
        Ok(updated) => updated.ok_or(ApiError::InvalidCredentials)?,
        Err(StoreError::Conflict(_)) => return Err(ApiError::InvalidRequest),
        Err(err) => return Err(err.into()),
    };
    updated_event.publish(&state).await;
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
    Ids([user_id]): Ids<1>,
) -> ApiResult<Json<Profile>> {
    let user = state
        .store()
        .user_by_id(user_id)
        .await?
        .ok_or(ApiError::NotFound)?;
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
    let LookupIds(ids) = LookupIds::try_from(dto)?;
    let users = state.store().users_by_ids(&ids).await?;
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
    Ids([user_id]): Ids<1>,
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
    Ids([user_id]): Ids<1>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    serve_image(&state, user_id, ImageKind::Banner, &headers).await
}

/// The largest image of a kind, in bytes.
fn max_image_bytes(kind: ImageKind) -> usize {
    match kind {
        ImageKind::Avatar => 2 * 1024 * 1024,
        ImageKind::Banner => 6 * 1024 * 1024,
    }
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
    let sniffed = sniff_image(&bytes).ok_or(ApiError::InvalidRequest)?;
    if declared.is_some_and(|declared| declared != sniffed) {
        return Err(ApiError::InvalidRequest);
    }
    // Hashing megabytes is CPU work: off the reactor.
    let (bytes, sha256_hex) = tokio::task::spawn_blocking(move || {
        let digest = Sha256::digest(&bytes);
        (bytes, format!("{digest:x}"))
    })
    .await
    .map_err(|err| ApiError::Internal(anyhow::anyhow!("hashing task: {err}")))?;
    let now = now_unix();
    let image = ProfileImage {
        content_type: sniffed.to_owned(),
        sha256_hex,
        bytes,
    };
    let audience = profile_audience(state, user.user_id).await;
    // The new version only the write's transaction knows.
    let deferred = publish::Deferred::new(state);
    let outbox = |updated: &UserRecord| {
        let user_id = updated.user_id.to_string();
        let payload = match kind {
            ImageKind::Avatar => event::Payload::ProfileAvatarUpdate(pb::ProfileAvatarUpdate {
                user_id,
                avatar_version: updated.avatar_version,
                updated_at_unix: now,
            }),
            ImageKind::Banner => event::Payload::ProfileBannerUpdate(pb::ProfileBannerUpdate {
                user_id,
                banner_version: updated.banner_version,
                updated_at_unix: now,
            }),
        };
        deferred.rows(vec![audience.event(payload)])
    };
    let updated = state
        .store()
        .set_profile_image(user.user_id, kind, image, now, &outbox)
        .await?
        .ok_or(ApiError::InvalidCredentials)?;
    publish::publish_all(state, deferred.into_pending()).await;
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
    IMAGE_TYPES
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(essence))
        .map(|(name, _)| Some(*name))
        .ok_or(ApiError::InvalidRequest)
}

/// The accepted image type the bytes are, if any.
fn sniff_image(bytes: &[u8]) -> Option<&'static str> {
    IMAGE_TYPES
        .iter()
        .find(|(_, matches)| matches(bytes))
        .map(|(name, _)| *name)
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
    user_id: Ulid,
    kind: ImageKind,
    headers: &HeaderMap,
) -> ApiResult<Response> {
    let image = state
        .store()
        .profile_image(user_id, kind)
        .await?
        .ok_or(ApiError::NotFound)?;
    let etag = format!("\"{}\"", image.sha256_hex);
    let etag_value = HeaderValue::from_str(&etag)
        .map_err(|err| ApiError::Internal(anyhow::anyhow!("stored sha256 is no header: {err}")))?;
    let content_type = HeaderValue::from_str(&image.content_type)
        .map_err(|err| ApiError::Internal(anyhow::anyhow!("stored type is no header: {err}")))?;
    let cache_headers: [(HeaderName, HeaderValue); 2] = [
        (header::ETAG, etag_value),
        (header::CACHE_CONTROL, IMAGE_CACHE_CONTROL),
    ];
    // Inline: the type is one of `IMAGE_TYPES`, sniffed on upload, and the
    // client shows it in an `<img>`.
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

fn profile_update_payload(user_id: Ulid, patch: &ProfilePatch, now: i64) -> event::Payload {
    event::Payload::ProfileUpdate(pb::ProfileUpdate {
        user_id: user_id.to_string(),
        updated_fields: Some(pb::ProfileFields {
            username: patch.username.as_ref().map(|u| u.as_str().to_owned()),
            about: patch.about.as_ref().map(|about| pb::AboutFields {
                about_markdown: about.0.clone(),
                about_markdown_tokens: crate::markdown::tokenize(&about.0),
            }),
        }),
        updated_at_unix: now,
    })
}

/// Who hears of a user's profile change: the user, their friends and the
/// guilds they are in, read before the change is written (its event is
/// stored with it).
struct Audience {
    user_ids: Vec<String>,
    guild_ids: Vec<String>,
}

impl Audience {
    fn event(&self, payload: event::Payload) -> pb::Event {
        publish::for_users(self.user_ids.clone(), self.guild_ids.clone(), payload)
    }
}

/// The audience of the user's profile changes. If it cannot be read, the
/// user's own sockets still hear of the change; the others see it on their
/// next fetch.
async fn profile_audience(state: &AppState, user_id: Ulid) -> Audience {
    let audience = match state.store().profile_audience(user_id).await {
        Ok(audience) => audience,
        Err(err) => {
            tracing::error!(%err, %user_id, "cannot read the profile audience; telling the user only");
            crate::store::ProfileAudience::default()
        }
    };
    Audience {
        user_ids: std::iter::once(user_id)
            .chain(audience.friend_ids)
            .map(|id| id.to_string())
            .collect(),
        guild_ids: audience.guild_ids.iter().map(Ulid::to_string).collect(),
    }
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
    fn about_is_at_most_2048_bytes_without_nul() {
        assert!(AboutMarkdown::try_from("é".repeat(1024)).is_ok());
        assert!(AboutMarkdown::try_from("é".repeat(1024) + "x").is_err());
        assert!(AboutMarkdown::try_from("a\0b".to_owned()).is_err());
        assert!(AboutMarkdown::try_from(String::new()).is_ok());
    }

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
    fn images_are_sniffed_from_their_bytes() {
        let mut avif = b"\0\0\0\x1cftypavif\0\0\0\0avifmif1miaf".to_vec();
        avif.extend_from_slice(&[0; 8]);
        let cases: [(&[u8], Option<&str>); 9] = [
            (b"\xff\xd8\xff\xe0rest", Some("image/jpeg")),
            (b"\x89PNG\r\n\x1a\nrest", Some("image/png")),
            (b"RIFF\0\0\0\0WEBPVP8 ", Some("image/webp")),
            (b"XXXX\0\0\0\0WEBPVP8 ", None),
            (b"GIF89a rest", Some("image/gif")),
            (b"GIFfake", None),
            (&avif, Some("image/avif")),
            (b"%PDF-1.7 not an image", None),
            (b"", None),
        ];
        for (bytes, expected) in cases {
            assert_eq!(sniff_image(bytes), expected, "{bytes:?}");
        }
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

    proptest::proptest! {
        #[test]
        fn an_about_text_with_a_nul_is_refused(
            raw in crate::domain::hostile::text(),
            nul in crate::domain::hostile::plain_with_nul(),
        ) {
            proptest::prop_assert!(AboutMarkdown::try_from(nul).is_err());
            if AboutMarkdown::try_from(raw.clone()).is_ok() {
                proptest::prop_assert!(crate::domain::storable_text(&raw), "{raw:?}");
            }
        }
    }
}
