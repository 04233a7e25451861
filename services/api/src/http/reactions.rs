//! `/guilds/{g}/channels/{c}/messages/{m}/reactions/{emoji}`: add (POST)
//! and remove (DELETE) the caller's reaction. Both are idempotent; only a
//! real change publishes `message_reaction`. This adapter parses the path;
//! the use cases are `domain::reactions`.

use axum::Json;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use utoipa_axum::routes;

use crate::domain::parse_id;
use crate::domain::reactions::{self, Emoji, ReactionTarget};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::http::extract::AuthUser;
use crate::http::openapi::{ApiRouter, EmojiPath};
use crate::state::AppState;

/// The raw path; a bad one is turned into the 400 of PROTOCOL.md §1.2 by hand.
type RawPath = Result<Path<(String, String, String, String)>, PathRejection>;

/// The path of a reaction: three ULIDs and a (percent-decoded) emoji.
struct ReactionPath {
    target: ReactionTarget,
    emoji: Emoji,
}

impl TryFrom<RawPath> for ReactionPath {
    type Error = ApiError;

    fn try_from(path: RawPath) -> Result<Self, Self::Error> {
        let Path((guild, channel, message, emoji)) = path.map_err(|_| ApiError::InvalidRequest)?;
        let target = ReactionTarget {
            guild_id: parse_id(&guild)?,
            channel_id: parse_id(&channel)?,
            message_id: parse_id(&message)?,
        };
        Ok(Self {
            target,
            emoji: Emoji::try_from(emoji)?,
        })
    }
}

#[utoipa::path(
    post,
    path = "/guilds/{guild_id}/channels/{channel_id}/messages/{message_id}/reactions/{emoji}",
    tag = "messages",
    security(("bearer" = [])),
    params(EmojiPath),
    responses(
        (status = 200, description = "The emoji's reactions, the caller's included.", body = filament_wire::Reaction),
        (status = 400, description = "A malformed id or emoji, or the message has 64 emoji (`invalid_request`).", body = ErrorBody),
        (status = 403, description = "Cannot view the channel (`forbidden`).", body = ErrorBody),
        (status = 404, description = "No such channel or message (`not_found`).", body = ErrorBody),
    ),
)]
pub async fn add(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    path: RawPath,
) -> ApiResult<Json<filament_wire::Reaction>> {
    let ReactionPath { target, emoji } = ReactionPath::try_from(path)?;
    reactions::add(&state, user.user_id, target, emoji)
        .await
        .map(Json)
}

#[utoipa::path(
    delete,
    path = "/guilds/{guild_id}/channels/{channel_id}/messages/{message_id}/reactions/{emoji}",
    tag = "messages",
    security(("bearer" = [])),
    params(EmojiPath),
    responses(
        (status = 200, description = "The emoji's reactions, without the caller's.", body = filament_wire::Reaction),
        (status = 403, description = "Cannot view the channel (`forbidden`).", body = ErrorBody),
        (status = 404, description = "No such channel or message (`not_found`).", body = ErrorBody),
    ),
)]
pub async fn remove(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    path: RawPath,
) -> ApiResult<Json<filament_wire::Reaction>> {
    let ReactionPath { target, emoji } = ReactionPath::try_from(path)?;
    reactions::remove(&state, user.user_id, target, emoji)
        .await
        .map(Json)
}

pub fn routes() -> ApiRouter {
    ApiRouter::new().routes(routes!(add, remove))
}
