//! Reacting to a message: adding and removing the caller's reaction, the
//! use cases behind `POST` and `DELETE …/reactions/{emoji}`, and the
//! validated [`Emoji`] they take. Both are idempotent; only a real change
//! publishes `message_reaction`, through the event outbox
//! (`crate::outbox`).

use filament_ids::{ChannelId, GuildId, MessageId, UserId};
use filament_proto::v1::{self as pb, event};

use crate::clock::now_unix;
use crate::domain::storable_text;
use crate::error::{ApiError, ApiResult};
use crate::outbox::Pending;
use crate::publish;
use crate::state::AppState;
use crate::store::{ReactionChange, ReactionKey, ReactionSummary};

const MAX_EMOJI_CHARS: usize = 32;

/// 1–32 characters, none of them whitespace or control characters. Not
/// checked against an emoji list: clients send custom and composed emoji.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Emoji(String);

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

/// The message a reaction is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReactionTarget {
    pub guild_id: GuildId,
    pub channel_id: ChannelId,
    pub message_id: MessageId,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Operation {
    Add,
    Remove,
}

/// Adds `user`'s `emoji` to the message, and answers the emoji's
/// reactions, the user's included. `ApiError::InvalidRequest` if the
/// message already has the most emoji it may.
pub async fn add(
    state: &AppState,
    user: UserId,
    target: ReactionTarget,
    emoji: Emoji,
) -> ApiResult<filament_wire::Reaction> {
    react(state, user, target, emoji, Operation::Add).await
}

/// Removes `user`'s `emoji` from the message, and answers the emoji's
/// reactions, without the user's.
pub async fn remove(
    state: &AppState,
    user: UserId,
    target: ReactionTarget,
    emoji: Emoji,
) -> ApiResult<filament_wire::Reaction> {
    react(state, user, target, emoji, Operation::Remove).await
}

async fn react(
    state: &AppState,
    user: UserId,
    target: ReactionTarget,
    emoji: Emoji,
    operation: Operation,
) -> ApiResult<filament_wire::Reaction> {
    state
        .authorizer()
        .channel(target.guild_id, target.channel_id, user)
        .await?;
    let key = ReactionKey {
        guild_id: target.guild_id,
        channel_id: target.channel_id,
        message_id: target.message_id,
        emoji: emoji.0,
        user_id: user,
    };
    // The count is known only after the write; the largest count this
    // event could carry stands in for it, so the check is still made first.
    publish::ensure_deliverable(&reaction_event(&key, i64::MAX, operation))?;
    // The event goes to the outbox with the change (`crate::outbox`), built
    // there from the count the transaction sees.
    let event_id = state.new_id();
    let outbox = |count| {
        Pending::with_id(
            state.publisher(),
            event_id,
            reaction_event(&key, count, operation),
        )
        .row()
    };
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
        Pending::with_id(state.publisher(), event_id, event)
            .publish(state.publisher())
            .await;
    }
    Ok(filament_wire::Reaction::from(&proto_reaction(&summary)))
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
        reactor_user_ids: summary.reactor_ids.iter().map(UserId::to_string).collect(),
    }
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
