//! `/guilds/{g}/channels/{c}/messages/{m}/reactions/{emoji}`: add (POST)
//! and remove (DELETE) the caller's reaction. Both are idempotent; only a
//! real change publishes `message_reaction`.

use axum::Json;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use filament_proto::v1::{self as pb, event};
use ulid::Ulid;
use utoipa_axum::routes;

use crate::clock::now_unix;
use crate::domain::{parse_id, storable_text};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::http::extract::AuthUser;
use crate::http::openapi::{ApiRouter, EmojiPath};
use crate::outbox::Pending;
use crate::publish;
use crate::state::AppState;
use crate::store::{ReactionChange, ReactionKey, ReactionSummary};

const MAX_EMOJI_CHARS: usize = 32;

/// The raw path; a bad one is turned into the 400 of PROTOCOL.md §1.2 by hand.
type RawPath = Result<Path<(String, String, String, String)>, PathRejection>;

/// 1–32 characters, none of them whitespace or control characters. Not
/// checked against an emoji list: clients send custom and composed emoji.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Emoji(String);

impl TryFrom<String> for Emoji {
    type Error = ApiError;

    fn try_from(raw: String) -> Result<Self, Self::Error> {
        let chars = raw.chars().count();
        let valid = (1..=MAX_EMOJI_CHARS).contains(&chars)
            && storable_text(&raw)
            && !raw.chars().any(|c| c.is_whitespace() || c.is_control());
        if valid {
            Ok(Self(raw))
        } else {
            Err(ApiError::InvalidRequest)
        }
    }
}

/// The path of a reaction: three ULIDs and a (percent-decoded) emoji.
struct ReactionPath {
    guild_id: Ulid,
    channel_id: Ulid,
    message_id: Ulid,
    emoji: Emoji,
}

impl TryFrom<(String, String, String, String)> for ReactionPath {
    type Error = ApiError;

    fn try_from(
        (guild, channel, message, emoji): (String, String, String, String),
    ) -> Result<Self, Self::Error> {
        Ok(Self {
            guild_id: parse_id(&guild)?,
            channel_id: parse_id(&channel)?,
            message_id: parse_id(&message)?,
            emoji: Emoji::try_from(emoji)?,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Operation {
    Add,
    Remove,
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
    state: State<AppState>,
    user: AuthUser,
    path: RawPath,
) -> ApiResult<Json<filament_wire::Reaction>> {
    react(state, user, path, Operation::Add).await
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
    state: State<AppState>,
    user: AuthUser,
    path: RawPath,
) -> ApiResult<Json<filament_wire::Reaction>> {
    react(state, user, path, Operation::Remove).await
}

async fn react(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    path: RawPath,
    operation: Operation,
) -> ApiResult<Json<filament_wire::Reaction>> {
    let Path(raw) = path.map_err(|_| ApiError::InvalidRequest)?;
    let path = ReactionPath::try_from(raw)?;
    state
        .authorizer()
        .channel(path.guild_id, path.channel_id, user.user_id)
        .await?;
    let key = ReactionKey {
        guild_id: path.guild_id,
        channel_id: path.channel_id,
        message_id: path.message_id,
        emoji: path.emoji.0,
        user_id: user.user_id,
    };
    // The count is known only after the write; the largest count this
    // event could carry stands in for it, so the check is still made first.
    publish::ensure_deliverable(&reaction_event(&key, i64::MAX, operation))?;
    // The event goes to the outbox with the change (`crate::outbox`), built
    // there from the count the transaction sees.
    let event_id = state.new_id();
    let outbox =
        |count| Pending::with_id(&state, event_id, reaction_event(&key, count, operation)).row();
    let change = match operation {
        Operation::Add => {
            state
                .store()
                .add_reaction(key.clone(), now_unix(), Some(&outbox))
                .await?
        }
        Operation::Remove => {
            state
                .store()
                .remove_reaction(key.clone(), Some(&outbox))
                .await?
        }
    };
    let (changed, summary) = match change {
        ReactionChange::Applied { changed, summary } => (changed, summary),
        ReactionChange::MessageNotFound => return Err(ApiError::NotFound),
        ReactionChange::TooManyEmoji => return Err(ApiError::InvalidRequest),
    };
    if changed {
        let event = reaction_event(&key, summary.count, operation);
        Pending::with_id(&state, event_id, event)
            .publish(&state)
            .await;
    }
    Ok(Json(filament_wire::Reaction::from(&proto_reaction(
        &summary,
    ))))
}

fn reaction_event(key: &ReactionKey, count: i64, operation: Operation) -> pb::Event {
    let (guild_id, channel_id) = (key.guild_id.to_string(), key.channel_id.to_string());
    publish::for_channel(
        &guild_id,
        &channel_id,
        event::Payload::MessageReaction(pb::MessageReaction {
            guild_id: guild_id.clone(),
            channel_id: channel_id.clone(),
            message_id: key.message_id.to_string(),
            emoji: key.emoji.clone(),
            count,
            operation: match operation {
                Operation::Add => pb::ReactionOperation::Add,
                Operation::Remove => pb::ReactionOperation::Remove,
            }
            .into(),
            actor_user_id: key.user_id.to_string(),
        }),
    )
}

/// A reaction as its viewer sees it; reactor ids are ascending already.
pub fn proto_reaction(summary: &ReactionSummary) -> pb::Reaction {
    pb::Reaction {
        emoji: summary.emoji.clone(),
        count: summary.count,
        reacted_by_me: summary.reacted_by_me,
        reactor_user_ids: summary.reactor_ids.iter().map(Ulid::to_string).collect(),
    }
}

pub fn routes() -> ApiRouter {
    ApiRouter::new().routes(routes!(add, remove))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emoji_rules() {
        assert!(Emoji::try_from("👍".to_owned()).is_ok());
        // A composed emoji is several characters, and counts as such.
        assert!(Emoji::try_from("👩‍👩‍👧‍👦".to_owned()).is_ok());
        assert!(Emoji::try_from(":party_parrot:".to_owned()).is_ok());
        assert!(Emoji::try_from("é".repeat(32)).is_ok());
        assert!(Emoji::try_from("é".repeat(33)).is_err());
        assert!(Emoji::try_from(String::new()).is_err());
        for bad in ["a b", "a\tb", "\u{3000}", "a\0"] {
            assert!(Emoji::try_from(bad.to_owned()).is_err(), "{bad:?}");
        }
    }

    proptest::proptest! {
        #[test]
        fn an_emoji_with_a_nul_is_refused(
            raw in crate::domain::hostile::text(),
            nul in crate::domain::hostile::plain_with_nul(),
        ) {
            proptest::prop_assert!(Emoji::try_from(nul).is_err());
            if Emoji::try_from(raw.clone()).is_ok() {
                proptest::prop_assert!(crate::domain::storable_text(&raw), "{raw:?}");
            }
        }
    }
}
