//! `/guilds/{g}/channels/{c}/attachments`: upload, download, delete.
//!
//! An upload is a raw body (no JSON, exempt from the JSON body limit) that
//! becomes an unbound attachment; a message binds it later through
//! `attachment_ids`. This adapter reads the query and headers and serves
//! the bytes; the use cases (type sniffing, storage, the owner's quota)
//! are `domain::attachments`.

use axum::Json;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use filament_ids::{AttachmentId, ChannelId, GuildId};
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_axum::router::UtoipaMethodRouterExt as _;
use utoipa_axum::routes;

use crate::domain::attachments::{self, Filename, Upload};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::http::extract::{AuthUser, Ids, QueryParams};
use crate::http::openapi::{ApiRouter, AttachmentPath, Binary, ChannelPath};
use crate::http::uploads::{Disposition, untrusted_content_headers};
use crate::state::AppState;

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct UploadQuery {
    /// 1–128 bytes, no `/`, `\` or control characters; default
    /// `upload.bin`.
    filename: Option<String>,
}

/// The declared media type without parameters, lowercased; `None` when the
/// request declares none.
fn declared_type(headers: &HeaderMap) -> ApiResult<Option<String>> {
    headers
        .get(header::CONTENT_TYPE)
        .map(|value| {
            let value = value.to_str().map_err(|_| ApiError::InvalidRequest)?;
            let essence = value.split(';').next().unwrap_or_default().trim();
            Ok(essence.to_ascii_lowercase())
        })
        .transpose()
}

/// The body is the file itself, up to 25 MiB. Its type is sniffed from the
/// bytes; a declared `Content-Type` must be that very type (so
/// `application/octet-stream` is refused), or be left out.
#[utoipa::path(
    post,
    path = "/guilds/{guild_id}/channels/{channel_id}/attachments",
    tag = "attachments",
    security(("bearer" = [])),
    params(ChannelPath, UploadQuery),
    request_body(
        content = Binary,
        content_type = "*/*",
        description = "The file's bytes, declared as the file's own media type.",
    ),
    responses(
        (status = 200, description = "The upload, not yet bound to a message.", body = filament_wire::Attachment),
        (status = 400, description = "Empty, of an unknown type, or not of the declared type; or a malformed id or filename (`invalid_request`).", body = ErrorBody),
        (status = 403, description = "Cannot view the channel (`forbidden`).", body = ErrorBody),
        (status = 404, description = "No such channel (`not_found`).", body = ErrorBody),
        (status = 409, description = "The caller's upload quota is used up (`quota_exceeded`).", body = ErrorBody),
        (status = 413, description = "Over 25 MiB (`payload_too_large`).", body = ErrorBody),
    ),
)]
pub async fn upload(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Ids((guild_id, channel_id)): Ids<(GuildId, ChannelId)>,
    QueryParams(query): QueryParams<UploadQuery>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<filament_wire::Attachment>> {
    let filename = Filename::try_from(query.filename)?;
    let declared_type = declared_type(&headers)?;
    let announced_bytes = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok()?.parse::<u64>().ok());
    let upload = Upload {
        filename,
        declared_type,
        announced_bytes,
    };
    attachments::upload(&state, user.user_id, guild_id, channel_id, upload, body)
        .await
        .map(Json)
}

#[utoipa::path(
    get,
    path = "/guilds/{guild_id}/channels/{channel_id}/attachments/{attachment_id}",
    tag = "attachments",
    security(("bearer" = [])),
    params(AttachmentPath),
    responses(
        (status = 200, description = "The file, as its sniffed type, to be saved (`Content-Disposition: attachment`).", body = Binary, content_type = "*/*"),
        (status = 403, description = "Cannot view the channel (`forbidden`).", body = ErrorBody),
        (status = 404, description = "No such attachment, or someone else's unsent upload (`not_found`).", body = ErrorBody),
    ),
)]
pub async fn download(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Ids((guild_id, channel_id, attachment_id)): Ids<(GuildId, ChannelId, AttachmentId)>,
) -> ApiResult<Response> {
    let (attachment, body) =
        attachments::open(&state, user.user_id, guild_id, channel_id, attachment_id).await?;
    let content_type = HeaderValue::from_str(&attachment.mime_type)
        .map_err(|err| ApiError::Internal(err.into()))?;
    let untrusted = untrusted_content_headers(Disposition::Attachment {
        filename: &attachment.filename,
    })?;
    Ok((
        [
            (header::CONTENT_TYPE, content_type),
            (
                header::CONTENT_LENGTH,
                HeaderValue::from(attachment.size_bytes),
            ),
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static("private, no-store"),
            ),
        ],
        untrusted,
        body,
    )
        .into_response())
}

#[utoipa::path(
    delete,
    path = "/guilds/{guild_id}/channels/{channel_id}/attachments/{attachment_id}",
    tag = "attachments",
    security(("bearer" = [])),
    params(AttachmentPath),
    responses(
        (status = 204, description = "Deleted."),
        (status = 403, description = "Cannot view the channel, or someone else's sent attachment and not a moderator (`forbidden`).", body = ErrorBody),
        (status = 404, description = "No such attachment (`not_found`).", body = ErrorBody),
    ),
)]
pub async fn delete(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Ids((guild_id, channel_id, attachment_id)): Ids<(GuildId, ChannelId, AttachmentId)>,
) -> ApiResult<StatusCode> {
    attachments::delete(&state, user.user_id, guild_id, channel_id, attachment_id).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub fn routes() -> ApiRouter {
    ApiRouter::new()
        // The upload streams under its own 25 MiB cap. The 1 MiB JSON limit
        // only binds buffering extractors, which this handler does not use;
        // disabled here so that it never will.
        .routes(routes!(upload).layer(DefaultBodyLimit::disable()))
        .routes(routes!(download, delete))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn declared_types_lose_parameters_and_case() {
        let mut headers = HeaderMap::new();
        assert_eq!(declared_type(&headers).unwrap(), None);
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("Image/PNG; charset=binary"),
        );
        assert_eq!(
            declared_type(&headers).unwrap().as_deref(),
            Some("image/png")
        );
    }
}
