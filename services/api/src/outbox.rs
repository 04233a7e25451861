//! Commit and publish as one fact: the realtime event of every api write is
//! stored in the write's transaction (the store's event outbox), published
//! by the request right after the commit, and otherwise by a relay.
//! Without it, a crash between the commit and the publish, or a request
//! dropped by its timeout there, lost the event: the change was made and
//! reached no subscriber. See docs/adr/0006-outbox.md.
//!
//! A row is deleted only once every gateway holding the event's audience
//! acknowledged it (docs/adr/0010-durable-event-stream.md). An event that
//! was queued on a stream that then broke, or that found a gateway without
//! a stream to this replica, stays, and a relay publishes it again: so a
//! replica can die mid-stream without a gateway missing anything, and
//! gateways keep their sockets instead of resynchronising.
//!
//! The request path keeps its latency: it publishes from memory, in a task
//! of its own (so a dropped request still publishes), and once confirmed,
//! after answering, hands the row's id to the relay, which deletes the ids
//! handed to it in one statement per turn rather than one transaction per
//! event. The relay, one task per api process, publishes only rows whose
//! lease ran out: at start-up whatever an earlier process left, and later
//! whatever a request, here or on another replica, did not see confirmed.
//! It gives up on an event [`REPUBLISH_GIVE_UP`] after its creation: it
//! publishes it once more, counting it as missed for every gateway still
//! without a stream, which then resynchronises its sockets.
//!
//! Publishing needs only a [`Publisher`]: the fanout, the store handle that
//! claims and forgets outbox rows, the outbox's settings, the published ids
//! waiting for the relay's delete, and the process's id generator, never
//! the whole application state. The relay's loop ([`run_relay`]) is the
//! one part that takes the state: the same timer also prunes idempotency
//! keys and reads the message log's head.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use filament_fanout::Fanout;
use filament_proto::limits::REPUBLISH_GIVE_UP;
use filament_proto::v1::Event;
use prometheus_client::metrics::gauge::Gauge;
use prost::Message as _;
use tokio_util::sync::CancellationToken;
use ulid::Ulid;

use crate::clock::{now_unix, now_unix_ms};
use crate::config::{OutboxConfig, OutboxRequestPath};
use crate::id_generator::IdGenerator;
use crate::publish;
use crate::state::AppState;
use crate::store::{OutboxEvent, Store, StoreResult};

/// How often expired idempotency keys are deleted.
const PRUNE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(60);

/// Leftovers one claim takes; a larger backlog is drained batch after batch.
const CLAIM_BATCH: u32 = 256;

/// Published ids held for the relay's next delete at most; past it (the
/// relay's turns falling behind) a request deletes its own row, as it
/// would without a relay.
const MAX_HELD_FORGETS: usize = 65_536;

/// What publishing an event needs, and nothing more: the fanout, the store
/// handle that claims and forgets outbox rows, the outbox's request path
/// and lease, and the process's id generator (shared with
/// [`AppState::new_id`], so that event ids and every other id this process
/// mints sort together). Cheap to clone.
#[derive(Clone)]
pub struct Publisher {
    inner: Arc<PublisherInner>,
}

struct PublisherInner {
    fanout: Fanout,
    store: Arc<dyn Store>,
    request_path: OutboxRequestPath,
    lease: Duration,
    ids: IdGenerator,
    /// Published ids the relay deletes on its next turn, all in one
    /// statement; `None` while no relay runs, when each request deletes
    /// its own row.
    forgotten: Mutex<Option<Vec<Ulid>>>,
}

impl Publisher {
    pub fn new(
        fanout: Fanout,
        store: Arc<dyn Store>,
        outbox: OutboxConfig,
        ids: IdGenerator,
    ) -> Self {
        Self {
            inner: Arc::new(PublisherInner {
                fanout,
                store,
                request_path: outbox.request_path,
                lease: outbox.lease,
                ids,
                forgotten: Mutex::new(None),
            }),
        }
    }

    /// The fanout events go out through.
    pub fn fanout(&self) -> &Fanout {
        &self.inner.fanout
    }

    fn store(&self) -> &dyn Store {
        self.inner.store.as_ref()
    }

    fn forgotten(&self) -> std::sync::MutexGuard<'_, Option<Vec<Ulid>>> {
        // A push or a take cannot panic half way.
        self.inner
            .forgotten
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Forgets published events: holds their ids for the relay's next turn,
    /// which deletes them in one statement; deletes them at once when no
    /// relay runs (or too many are held). Until deleted, a row keeps the
    /// lease its writer gave it, so no relay publishes it again meanwhile;
    /// if this process dies first, a relay publishes it once more and
    /// gateways drop the repeat by its id (docs/adr/0006-outbox.md).
    async fn forget(&self, event_ids: &[Ulid]) {
        if let Some(held) = self.forgotten().as_mut()
            && held.len() < MAX_HELD_FORGETS
        {
            held.extend_from_slice(event_ids);
            return;
        }
        forget_published(self, event_ids).await;
    }

    /// From now until [`stop_holding`](Self::stop_holding), published ids
    /// wait for the relay's turn.
    fn start_holding(&self) {
        self.forgotten().get_or_insert_with(Vec::new);
    }

    /// The ids held since the last take, for the relay to delete.
    fn take_held(&self) -> Vec<Ulid> {
        self.forgotten()
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }

    /// The relay stops: requests delete their own rows again, and the ids
    /// still held are returned for one last delete.
    fn stop_holding(&self) -> Vec<Ulid> {
        self.forgotten().take().unwrap_or_default()
    }
}

/// An event to store with its write and to publish once that committed.
pub struct Pending {
    row: OutboxEvent,
    event: Event,
}

impl Pending {
    /// Mints the event's id and its outbox row; the request holds the row's
    /// lease from now.
    pub fn new(publisher: &Publisher, event: Event) -> Self {
        Self::with_id(publisher, publisher.inner.ids.next(), event)
    }

    /// The same, under an id minted earlier: for an event built twice,
    /// inside the write's transaction from what only it knows (a
    /// reaction's count) and again after the commit to publish it.
    pub fn with_id(publisher: &Publisher, event_id: Ulid, mut event: Event) -> Self {
        // The row's id travels in the event, so that gateways can drop the
        // second copy of an event a relay published twice.
        event.event_id = event_id.to_string();
        let row = OutboxEvent {
            event_id,
            payload: event.encode_to_vec(),
            created_at_unix: now_unix(),
            claimed_until_unix_ms: lease_end(publisher, now_unix_ms()),
        };
        Self { row, event }
    }

    /// The row to hand to the store call that makes the change.
    pub fn row(&self) -> OutboxEvent {
        self.row.clone()
    }

    /// Publishes the committed event, then forgets its row. Call it only
    /// after the store call that stored [`row`](Self::row) returned `Ok`.
    pub async fn publish(self, publisher: &Publisher) {
        let forget = match publisher.inner.request_path {
            OutboxRequestPath::PublishAndForget => true,
            OutboxRequestPath::PublishOnly => false,
            OutboxRequestPath::Nothing => return,
        };
        let Self { row, event } = self;
        let (published, answered) = tokio::sync::oneshot::channel();
        let task_publisher = publisher.clone();
        // A task of its own: if the request is dropped now (its timeout),
        // the event still goes out and its row still goes away. It stays on
        // the request's trace.
        tokio::spawn(filament_runtime::trace::carried(async move {
            let confirmation = task_publisher.fanout().publish_durable(event).await;
            let _ = published.send(());
            if !forget {
                return;
            }
            // After the answer: neither the acknowledgements nor the delete
            // are on the request's latency.
            if !confirmation.confirmed().await {
                tracing::debug!(event_id = %row.event_id,
                    "a gateway did not acknowledge the event; a relay publishes it again");
                return;
            }
            task_publisher.forget(&[row.event_id]).await;
        }));
        // An error means the task panicked; the relay publishes the row.
        let _ = answered.await;
    }

    /// Publishes the committed event and waits until every gateway that
    /// holds its audience acknowledged it (or had its stream cut), as
    /// access changes and session revocations need before their REST call
    /// returns; then forgets its row. `what` names the event in the warning
    /// logged when a gateway missed it. Call it only after the store call
    /// that stored [`row`](Self::row) returned `Ok`.
    pub async fn publish_acked(self, publisher: &Publisher, what: &'static str) {
        let Self { row, event } = self;
        // A gateway that did not get it or did not acknowledge it in time
        // was counted as having missed it and resynchronises: the row has
        // done its work either way.
        let report = publisher.fanout().publish_acked(event).await;
        if report.missed > 0 {
            tracing::warn!(
                ?report,
                what,
                "acknowledged event missed some gateways; they will resynchronise"
            );
        }
        publisher.forget(&[row.event_id]).await;
    }
}

async fn forget_published(publisher: &Publisher, event_ids: &[Ulid]) {
    if event_ids.is_empty() {
        return;
    }
    if let Err(err) = publisher.store().outbox_published(event_ids).await {
        tracing::warn!(%err, events = event_ids.len(),
            "cannot forget published events; a relay will publish them again");
    }
}

fn lease_end(publisher: &Publisher, now_unix_ms: i64) -> i64 {
    let lease = i64::try_from(publisher.inner.lease.as_millis()).unwrap_or(i64::MAX);
    now_unix_ms.saturating_add(lease)
}

/// The relay: sweeps at once (what an earlier process left), then every
/// `sweep_interval`, until `stop`. Each turn first deletes the rows that
/// requests published since the last turn, in one statement, before it
/// claims, so that none of them is taken for a leftover. Each turn also
/// reads the message change log's head into `log_head`, so that an
/// operator sees how far search is behind the log, not only behind what it
/// received. It takes the whole state for those chores; its sweeps take
/// only the [`Publisher`]. When `stop` comes it deletes what is still held,
/// and requests delete their own rows again.
pub async fn run_relay(state: AppState, log_head: Gauge, stop: CancellationToken) {
    let interval = state.config().outbox.sweep_interval;
    let mut next_prune = tokio::time::Instant::now();
    state.publisher().start_holding();
    loop {
        let held = state.publisher().take_held();
        forget_published(state.publisher(), &held).await;
        // The relay's loop is this process's one housekeeping timer: it
        // also forgets expired idempotency keys, about once a minute.
        if tokio::time::Instant::now() >= next_prune {
            crate::domain::idempotency::prune(&state).await;
            next_prune += PRUNE_INTERVAL;
        }
        match state.store().message_log_head().await {
            Ok(head) => {
                log_head.set(i64::try_from(head).unwrap_or(i64::MAX));
            }
            Err(err) => tracing::debug!(%err, "cannot read the change log's head"),
        }
        match sweep(state.publisher()).await {
            Ok(swept) if swept == Swept::default() => {}
            Ok(swept) => tracing::warn!(
                relayed = swept.relayed,
                confirmed = swept.confirmed,
                given_up = swept.given_up,
                "published again events not seen confirmed (a writer died, a stream broke, or a gateway was slow)"
            ),
            Err(err) => tracing::warn!(%err, "outbox sweep failed; retrying"),
        }
        tokio::select! {
            () = stop.cancelled() => break,
            () = tokio::time::sleep(interval) => {}
        }
    }
    let held = state.publisher().stop_holding();
    forget_published(state.publisher(), &held).await;
}

/// What one sweep did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Swept {
    /// Rows published again.
    relayed: usize,
    /// Of those, the ones every gateway acknowledged, now forgotten.
    confirmed: usize,
    /// Rows past [`REPUBLISH_GIVE_UP`]: published a last time, counted as
    /// missed where a gateway had no stream, and forgotten.
    given_up: usize,
}

/// Publishes, oldest first, every row whose lease ran out, and forgets the
/// ones every gateway then acknowledged. The others keep the lease the
/// claim gave them and are published again by a later sweep.
async fn sweep(publisher: &Publisher) -> StoreResult<Swept> {
    let mut swept = Swept::default();
    loop {
        let now = now_unix_ms();
        let claimed = publisher
            .store()
            .claim_outbox(now, lease_end(publisher, now), CLAIM_BATCH)
            .await?;
        let mut done: Vec<Ulid> = Vec::with_capacity(claimed.len());
        let mut confirmations = Vec::with_capacity(claimed.len());
        for record in &claimed {
            let event = match Event::decode(record.payload.as_slice()) {
                Ok(event) => event,
                Err(err) => {
                    // Only a payload from an incompatible build could do
                    // this; keeping it would retry it forever.
                    tracing::error!(%err, event_id = %record.event_id,
                        "dropping an outbox event that does not decode");
                    done.push(record.event_id);
                    continue;
                }
            };
            swept.relayed += 1;
            if is_given_up(record.event_id, now) {
                publish::publish(publisher, event).await;
                swept.given_up += 1;
                done.push(record.event_id);
            } else {
                let event_id = record.event_id;
                let confirmation = publisher.fanout().publish_durable(event).await;
                confirmations
                    .push(async move { confirmation.confirmed().await.then_some(event_id) });
            }
        }
        let confirmed: Vec<Ulid> = futures_util::future::join_all(confirmations)
            .await
            .into_iter()
            .flatten()
            .collect();
        swept.confirmed += confirmed.len();
        done.extend(confirmed);
        publisher.store().outbox_published(&done).await?;
        if claimed.len() < CLAIM_BATCH as usize {
            return Ok(swept);
        }
    }
}

/// Whether an event was created longer than [`REPUBLISH_GIVE_UP`] ago
/// (its id's time, which gateways read too).
fn is_given_up(event_id: Ulid, now_unix_ms: i64) -> bool {
    let give_up = i64::try_from(REPUBLISH_GIVE_UP.as_millis()).unwrap_or(i64::MAX);
    let created = i64::try_from(event_id.timestamp_ms()).unwrap_or(i64::MAX);
    now_unix_ms.saturating_sub(created) > give_up
}
