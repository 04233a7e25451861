//! The profile use cases behind `/users/*`: editing one's profile, reading
//! a profile, looking users up, and setting and reading the avatar and
//! banner images; with the validated values they take ([`AboutMarkdown`],
//! [`ProfilePatch`], [`LookupIds`]) and the accepted image types, each
//! recognised by its bytes.
//!
//! Profile events go to the user, their friends and everyone present in a
//! guild the user is a member of, so that every place showing the name or
//! the avatar refreshes.

use filament_ids::{GuildId, UserId};
use filament_proto::v1::{self as pb, event};
use sha2::{Digest as _, Sha256};

use crate::clock::now_unix;
use crate::domain::{Username, parse_id, storable_text};
use crate::error::{ApiError, ApiResult};
use crate::outbox::Pending;
use crate::publish;
use crate::state::AppState;
use crate::store::{ImageKind, ProfileChange, ProfileImage, StoreError, UserRecord, UserSummary};

/// Most ids one `POST /users/lookup` takes.
pub const LOOKUP_MAX_IDS: usize = 64;

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

/// The "about" text: at most 2048 bytes, no NUL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AboutMarkdown(String);

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
pub struct ProfilePatch {
    username: Option<Username>,
    about: Option<AboutMarkdown>,
}

impl ProfilePatch {
    /// An edit of the fields given; none at all is
    /// `ApiError::InvalidRequest`.
    pub fn new(username: Option<Username>, about: Option<AboutMarkdown>) -> ApiResult<Self> {
        if username.is_none() && about.is_none() {
            return Err(ApiError::InvalidRequest);
        }
        Ok(Self { username, about })
    }
}

/// The ids of a lookup: 1–[`LOOKUP_MAX_IDS`] canonical ULIDs.
#[derive(Debug)]
pub struct LookupIds(Vec<UserId>);

impl LookupIds {
    pub fn parse(raw: &[String]) -> ApiResult<Self> {
        if !(1..=LOOKUP_MAX_IDS).contains(&raw.len()) {
            return Err(ApiError::InvalidRequest);
        }
        raw.iter()
            .map(|raw| parse_id(raw))
            .collect::<Result<_, _>>()
            .map(Self)
    }
}

/// Applies `patch` to `user`'s profile, tells its audience, and answers the
/// user as they now are. A taken username is `ApiError::InvalidRequest`.
pub async fn update(
    state: &AppState,
    user_id: UserId,
    patch: ProfilePatch,
) -> ApiResult<UserRecord> {
    let payload = profile_update_payload(user_id, &patch, now_unix());
    // The audience does not change the frame, so the user alone is enough
    // to check the size before anything is written.
    publish::ensure_deliverable(&publish::for_users(
        vec![user_id.to_string()],
        Vec::new(),
        payload.clone(),
    ))?;
    let change = ProfileChange {
        username: patch.username.map(|u| u.as_str().to_owned()),
        about_markdown: patch.about.map(|about| about.0),
    };
    let audience = profile_audience(state, user_id).await;
    let updated_event = Pending::new(state.publisher(), audience.event(payload));
    let updated = match state
        .store()
        .update_profile(user_id, change, vec![updated_event.row()])
        .await
    {
        Ok(updated) => updated.ok_or(ApiError::InvalidCredentials)?,
        Err(StoreError::Conflict(_)) => return Err(ApiError::InvalidRequest),
        Err(err) => return Err(err.into()),
    };
    updated_event.publish(state.publisher()).await;
    Ok(updated)
}

/// The user; `ApiError::NotFound` if there is none.
pub async fn user(state: &AppState, user: UserId) -> ApiResult<UserRecord> {
    state
        .store()
        .user_by_id(user)
        .await?
        .ok_or(ApiError::NotFound)
}

/// The users among `ids` that exist, in the order asked, each once.
pub async fn lookup(state: &AppState, ids: &LookupIds) -> ApiResult<Vec<UserSummary>> {
    Ok(state.store().users_by_ids(&ids.0).await?)
}

/// The largest image of a kind, in bytes.
pub fn max_image_bytes(kind: ImageKind) -> usize {
    match kind {
        ImageKind::Avatar => 2 * 1024 * 1024,
        ImageKind::Banner => 6 * 1024 * 1024,
    }
}

/// The accepted image type `name` is (compared ignoring ASCII case), if it
/// is one.
pub fn accepted_image_type(name: &str) -> Option<&'static str> {
    IMAGE_TYPES
        .iter()
        .find(|(accepted, _)| accepted.eq_ignore_ascii_case(name))
        .map(|(accepted, _)| *accepted)
}

/// The accepted image type the bytes are, if any.
fn sniff_image(bytes: &[u8]) -> Option<&'static str> {
    IMAGE_TYPES
        .iter()
        .find(|(_, matches)| matches(bytes))
        .map(|(name, _)| *name)
}

/// Makes `bytes` `user`'s image of this kind, tells the profile's
/// audience, and answers the user with the new version. Bytes that are not
/// an accepted image type, or not the `declared` one, are
/// `ApiError::InvalidRequest`; the caller has already capped their size
/// ([`max_image_bytes`]).
pub async fn set_image(
    state: &AppState,
    user: UserId,
    kind: ImageKind,
    declared: Option<&'static str>,
    bytes: Vec<u8>,
) -> ApiResult<UserRecord> {
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
    let audience = profile_audience(state, user).await;
    // The new version only the write's transaction knows.
    let deferred = publish::Deferred::new(state.publisher());
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
        .set_profile_image(user, kind, image, now, &outbox)
        .await?
        .ok_or(ApiError::InvalidCredentials)?;
    publish::publish_all(state.publisher(), deferred.into_pending()).await;
    Ok(updated)
}

/// The user's image of this kind; `ApiError::NotFound` if there is no such
/// user or no image.
pub async fn image(state: &AppState, user: UserId, kind: ImageKind) -> ApiResult<ProfileImage> {
    state
        .store()
        .profile_image(user, kind)
        .await?
        .ok_or(ApiError::NotFound)
}

fn profile_update_payload(user_id: UserId, patch: &ProfilePatch, now: i64) -> event::Payload {
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
async fn profile_audience(state: &AppState, user_id: UserId) -> Audience {
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
        guild_ids: audience.guild_ids.iter().map(GuildId::to_string).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn about_is_at_most_2048_bytes_without_nul() {
        assert!(AboutMarkdown::try_from("é".repeat(1024)).is_ok());
        assert!(AboutMarkdown::try_from("é".repeat(1024) + "x").is_err());
        assert!(AboutMarkdown::try_from("a\0b".to_owned()).is_err());
        assert!(AboutMarkdown::try_from(String::new()).is_ok());
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
