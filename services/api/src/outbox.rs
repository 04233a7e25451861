//! Commit and publish as one fact: the realtime event of a message write is
//! stored in the write's transaction (the store's event outbox), published
//! by the request right after the commit, and otherwise by this process's
//! relay. Without it, a crash between the commit and `Fanout::publish`, or
//! a request dropped by its timeout there, lost the event: the message was
//! in history and reached no subscriber. See docs/adr/0006-outbox.md.
//!
//! The request path keeps its latency: it publishes from memory, as before,
//! in a task of its own (so a dropped request still publishes), and deletes
//! the row after answering. The relay, one task per api process, publishes
//! only rows whose lease ran out: at start-up whatever an earlier process
//! committed but never published, and later whatever a request, here or on
//! another replica, did not finish.

use filament_proto::v1::Event;
use prost::Message as _;
use tokio_util::sync::CancellationToken;
use ulid::Ulid;

use crate::clock::{now_unix, now_unix_ms};
use crate::config::OutboxRequestPath;
use crate::events;
use crate::state::AppState;
use crate::store::{OutboxEvent, StoreResult};

/// How often expired idempotency keys are deleted.
const PRUNE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(60);

/// Leftovers one claim takes; a larger backlog is drained batch after batch.
const CLAIM_BATCH: u32 = 256;

/// An event to store with its write and to publish once that committed.
pub struct Pending {
    row: OutboxEvent,
    event: Event,
}

impl Pending {
    /// Mints the event's id and its outbox row; the request holds the row's
    /// lease from now.
    pub fn new(state: &AppState, event: Event) -> Self {
        Self::with_id(state, state.new_id(), event)
    }

    /// The same, under an id minted earlier: for an event built twice,
    /// inside the write's transaction from what only it knows (a
    /// reaction's count) and again after the commit to publish it.
    pub fn with_id(state: &AppState, event_id: Ulid, mut event: Event) -> Self {
        // The row's id travels in the event, so that gateways can drop the
        // second copy of an event a relay published twice.
        event.event_id = event_id.to_string();
        let row = OutboxEvent {
            event_id,
            payload: event.encode_to_vec(),
            created_at_unix: now_unix(),
            claimed_until_unix_ms: lease_end(state, now_unix_ms()),
        };
        Self { row, event }
    }

    /// The row to hand to the store call that makes the change.
    pub fn row(&self) -> OutboxEvent {
        self.row.clone()
    }

    /// Publishes the committed event, then forgets its row. Call it only
    /// after the store call that stored [`row`](Self::row) returned `Ok`.
    pub async fn publish(self, state: &AppState) {
        let forget = match state.config().outbox.request_path {
            OutboxRequestPath::PublishAndForget => true,
            OutboxRequestPath::PublishOnly => false,
            OutboxRequestPath::Nothing => return,
        };
        let Self { row, event } = self;
        let (published, answered) = tokio::sync::oneshot::channel();
        let task_state = state.clone();
        // A task of its own: if the request is dropped now (its timeout),
        // the event still goes out and its row still goes away. It stays on
        // the request's trace.
        tokio::spawn(filament_runtime::trace::carried(async move {
            events::publish(&task_state, event).await;
            let _ = published.send(());
            if !forget {
                return;
            }
            // After the answer: this write is not on the request's latency.
            if let Err(err) = task_state.store().outbox_published(&[row.event_id]).await {
                tracing::warn!(%err, event_id = %row.event_id,
                    "cannot forget a published event; a relay will publish it again");
            }
        }));
        // An error means the task panicked; the relay publishes the row.
        let _ = answered.await;
    }
}

fn lease_end(state: &AppState, now_unix_ms: i64) -> i64 {
    let lease = i64::try_from(state.config().outbox.lease.as_millis()).unwrap_or(i64::MAX);
    now_unix_ms.saturating_add(lease)
}

/// The relay: sweeps at once (what an earlier process left), then every
/// `sweep_interval`, until `stop`.
pub async fn run_relay(state: AppState, stop: CancellationToken) {
    let interval = state.config().outbox.sweep_interval;
    let mut next_prune = tokio::time::Instant::now();
    loop {
        // The relay's loop is this process's one housekeeping timer: it
        // also forgets expired idempotency keys, about once a minute.
        if tokio::time::Instant::now() >= next_prune {
            crate::http::idempotency::prune(&state).await;
            next_prune += PRUNE_INTERVAL;
        }
        match sweep(&state).await {
            Ok(0) => {}
            Ok(relayed) => tracing::warn!(
                relayed,
                "published events whose writer did not (it died or timed out after its commit)"
            ),
            Err(err) => tracing::warn!(%err, "outbox sweep failed; retrying"),
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
    }
}

/// Publishes, oldest first, every row whose lease ran out, and forgets it.
/// Returns how many it published.
async fn sweep(state: &AppState) -> StoreResult<usize> {
    let mut relayed = 0;
    loop {
        let now = now_unix_ms();
        let claimed = state
            .store()
            .claim_outbox(now, lease_end(state, now), CLAIM_BATCH)
            .await?;
        let mut published: Vec<Ulid> = Vec::with_capacity(claimed.len());
        for record in &claimed {
            match Event::decode(record.payload.as_slice()) {
                Ok(event) => events::publish(state, event).await,
                // Only a payload from an incompatible build could do this;
                // keeping it would retry it forever.
                Err(err) => tracing::error!(%err, event_id = %record.event_id,
                    "dropping an outbox event that does not decode"),
            }
            published.push(record.event_id);
        }
        state.store().outbox_published(&published).await?;
        relayed += claimed.len();
        if claimed.len() < CLAIM_BATCH as usize {
            return Ok(relayed);
        }
    }
}
