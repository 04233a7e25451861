//! The attachment use cases behind `/guilds/{g}/channels/{c}/attachments`:
//! uploading a file, opening one to download it and deleting one, and the
//! validated [`Filename`] an upload takes.
//!
//! An upload becomes an unbound attachment; a message binds it later
//! through `attachment_ids`. The type is sniffed from the bytes and must
//! agree with the declared one; the bytes go to the attachment storage
//! (`crate::attachments`), the description to the store, where the owner's
//! quota is charged.

use axum::body::Body;
use filament_ids::{AttachmentId, ChannelId, GuildId, UserId};

use crate::attachments::{
    AttachmentStorage as _, MAX_ATTACHMENT_BYTES, StageError, USER_QUOTA_BYTES, remove_file,
    storage,
};
use crate::clock::now_unix;
use crate::domain::messages::proto_attachment;
use crate::domain::storable_text;
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;
use crate::store::{AttachmentInsert, AttachmentRecord, MemberRole};

/// The file name an upload gets when it names none.
const DEFAULT_FILENAME: &str = "upload.bin";
const MAX_FILENAME_BYTES: usize = 128;

/// 1–128 bytes, no path separators, no control characters (which includes
/// NUL).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filename(String);

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

/// What an upload says about itself before its bytes are read.
#[derive(Debug)]
pub struct Upload {
    pub filename: Filename,
    /// The declared media type without parameters, lowercased; `None` when
    /// the upload declares none.
    pub declared_type: Option<String>,
    /// The length the upload announced up front, if any.
    pub announced_bytes: Option<u64>,
}

/// Stores `body` as a new, unbound attachment of `owner`'s in the channel,
/// and answers it. Authorized before a byte is read, so strangers cannot
/// fill the disk; over [`MAX_ATTACHMENT_BYTES`] is
/// `ApiError::PayloadTooLarge`, an empty body or one of an unknown type or
/// not of the declared type `ApiError::InvalidRequest`, and a used-up quota
/// `ApiError::QuotaExceeded`.
pub async fn upload(
    state: &AppState,
    owner: UserId,
    guild_id: GuildId,
    channel_id: ChannelId,
    upload: Upload,
    body: Body,
) -> ApiResult<filament_wire::Attachment> {
    // Authorized before a byte is read, so strangers cannot fill the disk.
    state
        .authorizer()
        .channel(guild_id, channel_id, owner)
        .await?;
    // A body that says up front it is too large is refused unread.
    if upload
        .announced_bytes
        .is_some_and(|length| length > MAX_ATTACHMENT_BYTES)
    {
        return Err(ApiError::PayloadTooLarge);
    }
    let storage = storage(state);
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
    if upload
        .declared_type
        .is_some_and(|declared| declared != mime_type)
    {
        return Err(ApiError::InvalidRequest);
    }
    let record = AttachmentRecord {
        attachment_id: state.new_id(),
        guild_id,
        channel_id,
        owner_id: owner,
        message_id: None,
        filename: upload.filename.0,
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
        Ok(AttachmentInsert::Created) => {
            Ok(filament_wire::Attachment::from(&proto_attachment(&record)))
        }
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

/// The attachment and its bytes, for `viewer` to download. Someone else's
/// upload that no message has used yet is `ApiError::NotFound`.
pub async fn open(
    state: &AppState,
    viewer: UserId,
    guild_id: GuildId,
    channel_id: ChannelId,
    attachment_id: AttachmentId,
) -> ApiResult<(AttachmentRecord, Body)> {
    state
        .authorizer()
        .channel(guild_id, channel_id, viewer)
        .await?;
    let record = state
        .store()
        .attachment(guild_id, channel_id, attachment_id)
        .await?
        // An upload no message has used yet is its owner's draft.
        .filter(|a| a.message_id.is_some() || a.owner_id == viewer)
        .ok_or(ApiError::NotFound)?;
    let body = storage(state)
        .open(attachment_id)
        .await
        .map_err(|err| match err.kind() {
            // Deleted between the lookup and the open.
            std::io::ErrorKind::NotFound => ApiError::NotFound,
            _ => ApiError::Internal(err.into()),
        })?;
    Ok((record, body))
}

/// Deletes an attachment, row and bytes, as `actor`: its owner, or a
/// moderator.
pub async fn delete(
    state: &AppState,
    actor: UserId,
    guild_id: GuildId,
    channel_id: ChannelId,
    attachment_id: AttachmentId,
) -> ApiResult<()> {
    let (access, _) = state
        .authorizer()
        .channel(guild_id, channel_id, actor)
        .await?;
    let moderator = access.role >= MemberRole::Moderator;
    let record = state
        .store()
        .attachment(guild_id, channel_id, attachment_id)
        .await?
        .ok_or(ApiError::NotFound)?;
    let own = record.owner_id == actor;
    if !own && !moderator {
        // Someone else's draft is invisible; a sent one is visible but not
        // the caller's to delete.
        return Err(if record.message_id.is_none() {
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
    remove_file(&storage(state), attachment_id).await;
    Ok(())
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
