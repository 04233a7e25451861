//! The audit log's writing side: [`record`] adds an entry for a change
//! that committed (reading the log is `moderation::audit_log`).

use filament_ids::{GuildId, UserId};

use crate::state::AppState;
use crate::store::NewAuditEntry;

/// Records an audit entry for a committed change. The change stands even if
/// the entry cannot be written; that failure is logged loudly.
pub async fn record(
    state: &AppState,
    guild_id: GuildId,
    actor_user_id: UserId,
    target_user_id: Option<UserId>,
    action: &'static str,
) {
    let entry = NewAuditEntry {
        audit_id: state.new_id(),
        guild_id,
        actor_user_id,
        target_user_id,
        action,
        created_at_unix: crate::clock::now_unix(),
    };
    if let Err(err) = state.store().record_audit(entry).await {
        tracing::error!(%err, action, "cannot write audit entry");
    }
}
