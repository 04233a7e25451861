//! `/guilds/{g}/channels/{c}/attachments`: upload, download, delete.
//!
//! An upload is a raw body (no JSON, exempt from the JSON body limit) that
//! becomes an unbound attachment; a message binds it later through
//! `attachment_ids`. The type is sniffed from the bytes and must agree with
//! the declared `Content-Type`; the bytes go to [`AttachmentStorage`], the
//! description to the store, where the owner's quota is charged.

use axum::Json;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_axum::router::UtoipaMethodRouterExt as _;
use utoipa_axum::routes;

use crate::attachments::{
    AttachmentStorage, MAX_ATTACHMENT_BYTES, StageError, USER_QUOTA_BYTES, remove_file, storage,
};
use crate::clock::now_unix;
use crate::domain::messages::proto_attachment;
use crate::domain::storable_text;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::http::extract::{AuthUser, Ids, QueryParams};
use crate::http::openapi::{ApiRouter, AttachmentPath, Binary, ChannelPath};
use crate::http::uploads::{Disposition, untrusted_content_headers};
use crate::state::AppState;
use crate::store::{AttachmentInsert, AttachmentRecord, MemberRole};

/// The file name an upload gets when it names none.
const DEFAULT_FILENAME: &str = "upload.bin";
const MAX_FILENAME_BYTES: usize = 128;

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct UploadQuery {
    /// 1–128 bytes, no `/`, `\` or control characters; default
    /// `upload.bin`.
    filename: Option<String>,
}

/// 1–128 bytes, no path separators, no control characters (which includes
/// NUL).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Filename(String);

impl TryFrom<Option<String>> for Filename {
    type Error = ApiError;

    fn try_from(raw: Option<String>) -> Result<Self, Self::Error> {
        let raw = raw.unwrap_or_else(|| DEFAULT_FILENAME.to_owned());
        let valid = (1..=MAX_FILENAME_BYTES).contains(&raw.len())
            && storable_text(&raw)
            && !raw.chars().any(|c| c == '/' || c == '\\' || c.is_control());
        if valid {
            Ok(Self(raw))
        } else {
            Err(ApiError::InvalidRequest)
        }
    }
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
    Ids([guild_id, channel_id]): Ids<2>,
    QueryParams(query): QueryParams<UploadQuery>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<filament_wire::Attachment>> {
    let filename = Filename::try_from(query.filename)?;
    let declared = declared_type(&headers)?;
    // Authorized before a byte is read, so strangers cannot fill the disk.
    state
        .authorizer()
        .channel(guild_id, channel_id, user.user_id)
        .await?;
    // A body that says up front it is too large is refused unread.
    let announced = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok()?.parse::<u64>().ok());
    if announced.is_some_and(|length| length > MAX_ATTACHMENT_BYTES) {
        return Err(ApiError::PayloadTooLarge);
    }
    let storage = storage(&state);
    let staged = storage
        .stage(body, MAX_ATTACHMENT_BYTES)
        .await
        .map_err(|err| match err {
            StageError::TooLarge { .. } => ApiError::PayloadTooLarge,
            StageError::Body(_) => ApiError::InvalidRequest,
            StageError::Io(err) => ApiError::Internal(err.into()),
        })?;
    let size_bytes = i64::try_from(staged.size_bytes).map_err(|_| ApiError::PayloadTooLarge)?;
    if size_bytes == 0 {
        return Err(ApiError::InvalidRequest);
    }
    let mime_type = infer::get(&staged.head)
        .ok_or(ApiError::InvalidRequest)?
        .mime_type();
    if declared.is_some_and(|declared| declared != mime_type) {
        return Err(ApiError::InvalidRequest);
    }
    let record = AttachmentRecord {
        attachment_id: state.new_id(),
        guild_id,
        channel_id,
        owner_id: user.user_id,
        message_id: None,
        filename: filename.0,
        mime_type: mime_type.to_owned(),
        size_bytes,
        sha256_hex: staged.sha256_hex.clone(),
        created_at_unix: now_unix(),
    };
    // The file is in place before the row exists, so a row always has its
    // bytes; if the row is refused the file goes again.
    storage
        .commit(staged, record.attachment_id)
        .await
        .map_err(|err| ApiError::Internal(err.into()))?;
    let outcome = state
        .store()
        .create_attachment(record.clone(), USER_QUOTA_BYTES)
        .await;
    match outcome {
        Ok(AttachmentInsert::Created) => Ok(Json(filament_wire::Attachment::from(
            &proto_attachment(&record),
        ))),
        Ok(AttachmentInsert::QuotaExceeded) => {
            remove_file(&storage, record.attachment_id).await;
            Err(ApiError::QuotaExceeded)
        }
        Err(err) => {
            remove_file(&storage, record.attachment_id).await;
            Err(err.into())
        }
    }
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
    Ids([guild_id, channel_id, attachment_id]): Ids<3>,
) -> ApiResult<Response> {
    state
        .authorizer()
        .channel(guild_id, channel_id, user.user_id)
        .await?;
    let attachment = state
        .store()
        .attachment(guild_id, channel_id, attachment_id)
        .await?
        // An upload no message has used yet is its owner's draft.
        .filter(|a| a.message_id.is_some() || a.owner_id == user.user_id)
        .ok_or(ApiError::NotFound)?;
    let body = storage(&state)
        .open(attachment_id)
        .await
        .map_err(|err| match err.kind() {
            // Deleted between the lookup and the open.
            std::io::ErrorKind::NotFound => ApiError::NotFound,
            _ => ApiError::Internal(err.into()),
        })?;
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
    Ids([guild_id, channel_id, attachment_id]): Ids<3>,
) -> ApiResult<StatusCode> {
    let (access, _) = state
        .authorizer()
        .channel(guild_id, channel_id, user.user_id)
        .await?;
    let moderator = access.role >= MemberRole::Moderator;
    let attachment = state
        .store()
        .attachment(guild_id, channel_id, attachment_id)
        .await?
        .ok_or(ApiError::NotFound)?;
    let own = attachment.owner_id == user.user_id;
    if !own && !moderator {
        // Someone else's draft is invisible; a sent one is visible but not
        // the caller's to delete.
        return Err(if attachment.message_id.is_none() {
            ApiError::NotFound
        } else {
            ApiError::Forbidden
        });
    }
    state
        .store()
        .delete_attachment(guild_id, channel_id, attachment_id)
        .await?
        .ok_or(ApiError::NotFound)?;
    remove_file(&storage(&state), attachment_id).await;
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
    fn filenames() {
        assert_eq!(
            Filename::try_from(None).unwrap(),
            Filename("upload.bin".into())
        );
        assert!(Filename::try_from(Some("photo 1.png".into())).is_ok());
        assert!(Filename::try_from(Some("é".repeat(64))).is_ok());
        assert!(Filename::try_from(Some("x".repeat(129))).is_err());
        assert!(Filename::try_from(Some(String::new())).is_err());
        for bad in ["a/b", "a\\b", "a\0b", "a\nb"] {
            assert!(Filename::try_from(Some(bad.into())).is_err(), "{bad:?}");
        }
    }

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

    proptest::proptest! {
        #[test]
        fn a_filename_with_a_nul_is_refused(
            raw in crate::domain::hostile::text(),
            nul in crate::domain::hostile::plain_with_nul(),
        ) {
            proptest::prop_assert!(Filename::try_from(Some(nul)).is_err());
            if Filename::try_from(Some(raw.clone())).is_ok() {
                proptest::prop_assert!(crate::domain::storable_text(&raw), "{raw:?}");
            }
        }
    }
}
