//! Losing access (docs/ARCHITECTURE.md, "Losing access"): a change that
//! shrinks what users may see in a guild stores its `AccessChanged` event
//! with the write, and after the commit waits for every gateway holding
//! the guild to drop what they can no longer see, then voice follows
//! ([`voice::follow_access`]).

use filament_ids::{GuildId, UserId};

use crate::domain::voice;
use crate::outbox::Pending;
use crate::publish;
use crate::state::AppState;
use crate::store::OutboxEvent;

/// A change that shrinks what users may see in a guild, told to every
/// gateway holding the guild: its `AccessChanged` row goes into the write's
/// transaction ([`row`](Self::row)), and after the commit
/// [`publish`](Self::publish) waits for the gateways, then voice follows.
pub struct AccessRevocation {
    pending: Pending,
    guild_id: String,
    user_ids: Vec<String>,
    membership_revoked: bool,
}

impl AccessRevocation {
    /// These users' access shrank (an empty `user_ids`: everyone present in
    /// the guild is re-checked); `membership_revoked` when they are no
    /// longer members.
    pub fn new(
        state: &AppState,
        guild_id: GuildId,
        user_ids: &[UserId],
        membership_revoked: bool,
    ) -> Self {
        let guild_id = guild_id.to_string();
        let user_ids: Vec<String> = user_ids.iter().map(UserId::to_string).collect();
        let event = publish::access_changed(&guild_id, user_ids.clone(), membership_revoked, false);
        Self {
            pending: Pending::new(state.publisher(), event),
            guild_id,
            user_ids,
            membership_revoked,
        }
    }

    /// The row to store with the change.
    pub fn row(&self) -> OutboxEvent {
        self.pending.row()
    }

    /// After the commit: every gateway drops what the users can no longer
    /// see and acknowledges it, then voice follows.
    pub async fn publish(self, state: &AppState) {
        self.pending
            .publish_acked(state.publisher(), "access change")
            .await;
        voice::follow_access(
            state,
            &self.guild_id,
            &self.user_ids,
            self.membership_revoked,
        )
        .await;
    }
}
