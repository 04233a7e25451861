//! [`Fanout`]: routing published events onto gateway streams.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use filament_proto::v1::{Event, ServiceMessage, StreamEvent, audience, service_message};
use filament_registry::{GatewayId, Registry};
use tokio::sync::{mpsc, watch};
use tonic::Status;

use crate::log::Logs;

#[derive(Debug, Clone)]
pub struct FanoutConfig {
    /// Events queued per gateway stream before the gateway counts as too
    /// slow and its stream is cut.
    pub stream_capacity: usize,
    /// How long `publish_acked` waits for a gateway's acknowledgement.
    pub ack_timeout: Duration,
    /// Gateways whose missed-event counts are remembered.
    pub max_tracked_gateways: usize,
    /// Every event is kept by the publisher until it is confirmed
    /// ([`Fanout::publish_durable`]), and gateways are told so in
    /// `Welcome`: a broken stream then costs them no resynchronisation.
    /// A durable publisher's events are also appended to the replay logs
    /// and carry their positions (`log.rs`).
    pub durable: bool,
}

impl Default for FanoutConfig {
    fn default() -> Self {
        Self {
            stream_capacity: 4096,
            ack_timeout: Duration::from_secs(2),
            max_tracked_gateways: 4096,
            durable: false,
        }
    }
}

/// What happened to one published event.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PublishReport {
    /// Streams the event was queued on.
    pub queued: usize,
    /// Gateways that hold the audience but could not get the event.
    pub missed: usize,
    /// The registry could not answer; the event went to every stream.
    pub registry_degraded: bool,
}

pub(crate) type Outbound = mpsc::Sender<Result<ServiceMessage, Status>>;

/// How a publish treats a gateway it cannot reach.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Queued and forgotten; a miss is counted against the gateway, whose
    /// next `Welcome` makes it resynchronise.
    Lossy,
    /// Like `Lossy`, and the gateway acknowledges the event at once.
    Acked,
    /// The caller keeps the event until it is confirmed and publishes it
    /// again otherwise, so a miss is not counted: the gateway will get it.
    Durable,
}

/// An event published with [`Fanout::publish_durable`], until every gateway
/// it was queued for acknowledged it.
#[must_use = "an unconfirmed event must be published again"]
pub struct Confirmation {
    report: PublishReport,
    pending: Vec<(GatewayId, Arc<GatewayStream>, u64)>,
    ack_timeout: Duration,
}

impl Confirmation {
    pub fn report(&self) -> &PublishReport {
        &self.report
    }

    /// Waits until every gateway the event was queued for acknowledged it.
    /// True when every gateway holding the audience has it; false when one
    /// had no stream, a stream was full or closed, or an acknowledgement
    /// did not come within the ack timeout. The caller then publishes the
    /// event again later; gateways drop the repeat by event id.
    pub async fn confirmed(self) -> bool {
        if self.report.missed > 0 {
            return false;
        }
        let deadline = tokio::time::Instant::now() + self.ack_timeout;
        for (_, stream, seq) in &self.pending {
            if !stream.acked_by(*seq, deadline).await {
                return false;
            }
        }
        true
    }
}

/// What a gateway acknowledged on one stream, and whether the stream is
/// gone (no acknowledgement will come any more).
#[derive(Debug, Clone, Copy, Default)]
struct AckState {
    seq: u64,
    closed: bool,
}

/// One open stream to a gateway.
pub(crate) struct GatewayStream {
    /// Distinguishes this stream from a later one of the same gateway.
    pub(crate) generation: u64,
    /// The sequence counter and the queue, under one lock so that sequence
    /// order is queue order.
    sender: Mutex<StreamSender>,
    /// The highest sequence number the gateway acknowledged.
    acked: watch::Sender<AckState>,
}

struct StreamSender {
    next_seq: u64,
    tx: Option<Outbound>,
}

/// Publishes events to gateway streams. Cheap to clone.
#[derive(Clone)]
pub struct Fanout {
    inner: Arc<Inner>,
}

struct Inner {
    service: &'static str,
    instance_id: String,
    registry: Arc<dyn Registry>,
    config: FanoutConfig,
    next_generation: AtomicU64,
    state: Mutex<State>,
    /// The replay logs, for a durable publisher.
    logs: Option<Logs>,
}

#[derive(Default)]
struct State {
    streams: HashMap<GatewayId, Arc<GatewayStream>>,
    /// Events each gateway missed since its last stream closed.
    missed: HashMap<GatewayId, u64>,
    closed: bool,
}

impl Fanout {
    pub fn new(service: &'static str, registry: Arc<dyn Registry>, config: FanoutConfig) -> Self {
        Self {
            inner: Arc::new(Inner {
                service,
                instance_id: ulid::Ulid::generate().to_string(),
                logs: config.durable.then(Logs::new),
                registry,
                config,
                next_generation: AtomicU64::new(1),
                state: Mutex::new(State::default()),
            }),
        }
    }

    pub fn service_name(&self) -> &'static str {
        self.inner.service
    }

    pub fn instance_id(&self) -> &str {
        &self.inner.instance_id
    }

    pub(crate) fn registry(&self) -> &dyn Registry {
        self.inner.registry.as_ref()
    }

    pub(crate) fn config(&self) -> &FanoutConfig {
        &self.inner.config
    }

    /// The tonic service that gateways connect to.
    pub fn grpc_service(&self) -> crate::EventStreamService {
        crate::EventStreamService::new(self.clone())
    }

    /// Gateways with an open stream, for tests and metrics.
    pub fn connected_gateways(&self) -> Vec<GatewayId> {
        let mut ids: Vec<_> = self.lock().streams.keys().cloned().collect();
        ids.sort();
        ids
    }

    /// Whether this fanout's events are kept until confirmed.
    pub fn is_durable(&self) -> bool {
        self.inner.config.durable
    }

    /// Queues `event` for every gateway holding its audience.
    pub async fn publish(&self, event: Event) -> PublishReport {
        self.route(event, Mode::Lossy).await.0
    }

    /// Queues `event` for every gateway holding its audience, for a caller
    /// that keeps the event (the api's outbox) until the returned
    /// [`Confirmation`] says every one of them has it, and publishes it
    /// again otherwise. A gateway that cannot get it now is therefore not
    /// counted as having missed it, and a full stream is cut without a
    /// count. Gateways acknowledge such events in batches, as a running
    /// total, when they run out of events to apply.
    pub async fn publish_durable(&self, event: Event) -> Confirmation {
        let (report, pending) = self.route(event, Mode::Durable).await;
        Confirmation {
            report,
            pending,
            ack_timeout: self.inner.config.ack_timeout,
        }
    }

    /// Like [`publish`](Self::publish), then waits until every target gateway
    /// acknowledged the event. A gateway that does not acknowledge within the
    /// configured timeout has its stream cut (it will resynchronise), so when
    /// this returns, no target gateway still acts on the old state.
    pub async fn publish_acked(&self, event: Event) -> PublishReport {
        let (report, pending) = self.route(event, Mode::Acked).await;
        let deadline = tokio::time::Instant::now() + self.inner.config.ack_timeout;
        for (gateway, stream, seq) in pending {
            if !stream.acked_by(seq, deadline).await {
                tracing::warn!(%gateway, seq, "gateway did not acknowledge in time; cutting its stream");
                self.cut(&gateway, &stream, Mode::Acked);
            }
        }
        report
    }

    /// Ends every stream cleanly after the events already queued, and
    /// refuses new ones. Called at shutdown, after the last publish.
    pub fn close(&self) {
        let mut state = self.lock();
        state.closed = true;
        for stream in state.streams.values() {
            stream.close();
        }
        state.streams.clear();
    }

    async fn route(
        &self,
        event: Event,
        mode: Mode,
    ) -> (PublishReport, Vec<(GatewayId, Arc<GatewayStream>, u64)>) {
        let mut report = PublishReport::default();
        let targets = match self.targets(&event).await {
            Ok(targets) => targets,
            Err(err) => {
                // Gateways filter by their own indexes, so sending to all of
                // them is safe; dropping the event would not be.
                if matches!(err, filament_registry::RegistryError::Recovering) {
                    tracing::debug!("registry recovering; sending event to every gateway");
                } else if matches!(err, filament_registry::RegistryError::CircuitOpen) {
                    // Said once, at warn, when the circuit opened; not once
                    // per event for as long as Redis is down.
                    tracing::debug!("registry circuit open; sending event to every gateway");
                } else {
                    tracing::warn!(%err, "registry unavailable; sending event to every gateway");
                }
                report.registry_degraded = true;
                self.lock().streams.keys().cloned().collect()
            }
        };
        let mut event = event;
        // Held until the event is queued everywhere: see `log.rs`.
        let _order = match &self.inner.logs {
            Some(logs) => logs.stamp(self.registry(), &mut event).await,
            None => Vec::new(),
        };
        let event = Arc::new(event);
        // The request (or gRPC call) that caused the event, if it is traced:
        // the gateway logs its delivery under the same trace id.
        let traceparent = filament_runtime::trace::current()
            .map(|trace| trace.child().header())
            .unwrap_or_default();
        let mut pending = Vec::new();
        for gateway in targets {
            let stream = self.lock().streams.get(&gateway).cloned();
            let Some(stream) = stream else {
                report.missed += 1;
                if mode != Mode::Durable {
                    self.record_missed(&gateway, 1);
                }
                continue;
            };
            match stream.push(&event, mode == Mode::Acked, &traceparent) {
                Ok(seq) => {
                    report.queued += 1;
                    if mode != Mode::Lossy {
                        pending.push((gateway, stream, seq));
                    }
                }
                Err(()) => {
                    tracing::warn!(%gateway, "gateway stream full or closed; cutting it");
                    report.missed += 1;
                    self.cut(&gateway, &stream, mode);
                }
            }
        }
        (report, pending)
    }

    async fn targets(&self, event: &Event) -> filament_registry::RegistryResult<Vec<GatewayId>> {
        let registry = &self.inner.registry;
        match event.audience.as_ref().and_then(|a| a.target.as_ref()) {
            Some(audience::Target::Channel(channel)) => {
                registry.gateways_for_guild(&channel.guild_id).await
            }
            Some(audience::Target::Guild(guild)) => {
                registry.gateways_for_guild(&guild.guild_id).await
            }
            Some(audience::Target::Users(users)) => {
                registry
                    .gateways_for_audience(&users.user_ids, &users.guild_ids)
                    .await
            }
            None => {
                tracing::error!("event without audience dropped");
                Ok(Vec::new())
            }
        }
    }

    /// Registers a new stream for `gateway`, replacing (and ending) an older
    /// one. Returns the stream and the missed count to report in `Welcome`,
    /// or `None` when the fanout is closed.
    pub(crate) fn attach(
        &self,
        gateway: GatewayId,
        tx: Outbound,
    ) -> Option<(Arc<GatewayStream>, u64)> {
        let generation = self.inner.next_generation.fetch_add(1, Ordering::Relaxed);
        let stream = Arc::new(GatewayStream {
            generation,
            sender: Mutex::new(StreamSender {
                next_seq: 1,
                tx: Some(tx),
            }),
            acked: watch::Sender::new(AckState::default()),
        });
        let mut state = self.lock();
        if state.closed {
            return None;
        }
        let missed = state.missed.remove(&gateway).unwrap_or(0);
        if let Some(old) = state.streams.insert(gateway, Arc::clone(&stream)) {
            old.close();
        }
        Some((stream, missed))
    }

    /// Forgets a stream that ended, unless a newer one replaced it.
    pub(crate) fn detach(&self, gateway: &GatewayId, generation: u64) {
        let mut state = self.lock();
        if state
            .streams
            .get(gateway)
            .is_some_and(|s| s.generation == generation)
        {
            state.streams.remove(gateway);
        }
    }

    /// Ends a stream that lost an event, and remembers that it did unless
    /// the event's publisher keeps it to publish again.
    fn cut(&self, gateway: &GatewayId, stream: &GatewayStream, mode: Mode) {
        stream.close();
        self.detach(gateway, stream.generation);
        if mode != Mode::Durable {
            self.record_missed(gateway, 1);
        }
    }

    fn record_missed(&self, gateway: &GatewayId, missed: u64) {
        let mut state = self.lock();
        Self::add_missed(
            &mut state,
            gateway,
            missed,
            self.inner.config.max_tracked_gateways,
        );
    }

    fn add_missed(state: &mut State, gateway: &GatewayId, missed: u64, cap: usize) {
        if !state.missed.contains_key(gateway) && state.missed.len() >= cap {
            // Bounded memory: forget an arbitrary entry. That gateway's next
            // Welcome under-reports, which its seq-gap check does not cover,
            // so this is logged loudly.
            if let Some(victim) = state.missed.keys().next().cloned() {
                tracing::error!(gateway = %victim, "missed-event table full; forgetting a gateway");
                state.missed.remove(&victim);
            }
        }
        *state.missed.entry(gateway.clone()).or_default() += missed;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl GatewayStream {
    /// Queues one event; returns its sequence number, or `Err` when the
    /// stream is full or gone.
    fn push(&self, event: &Event, ack_requested: bool, traceparent: &str) -> Result<u64, ()> {
        let mut sender = self.sender.lock().unwrap_or_else(PoisonError::into_inner);
        let seq = sender.next_seq;
        let Some(tx) = sender.tx.as_ref() else {
            return Err(());
        };
        let message = ServiceMessage {
            kind: Some(service_message::Kind::Event(StreamEvent {
                seq,
                event: Some(event.clone()),
                ack_requested,
                traceparent: traceparent.to_owned(),
            })),
        };
        tx.try_send(Ok(message)).map_err(|_| ())?;
        sender.next_seq += 1;
        Ok(seq)
    }

    /// Drops the sender: the gateway sees the stream end after what is
    /// already queued. Waiters for acknowledgements stop waiting.
    pub(crate) fn close(&self) {
        self.sender
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .tx
            .take();
        self.acked
            .send_if_modified(|acked| !std::mem::replace(&mut acked.closed, true));
    }

    pub(crate) fn acknowledge(&self, seq: u64) {
        self.acked.send_if_modified(|acked| {
            if seq > acked.seq {
                acked.seq = seq;
                true
            } else {
                false
            }
        });
    }

    /// Whether the gateway acknowledged `seq` by `deadline`; false as soon
    /// as the stream closes without it.
    async fn acked_by(&self, seq: u64, deadline: tokio::time::Instant) -> bool {
        let mut acked = self.acked.subscribe();
        let wait = acked.wait_for(|state| state.seq >= seq || state.closed);
        match tokio::time::timeout_at(deadline, wait).await {
            Ok(Ok(state)) => state.seq >= seq,
            Ok(Err(_)) | Err(_) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use filament_proto::v1::{Audience, GuildAudience, MessageDelete, audience, event};
    use filament_registry::{MemoryRegistry, RegistryConfig};

    use super::*;

    type Rx = mpsc::Receiver<Result<ServiceMessage, Status>>;

    fn fanout(registry: Arc<dyn Registry>, config: FanoutConfig) -> Fanout {
        Fanout::new("test", registry, config)
    }

    fn memory() -> Arc<MemoryRegistry> {
        Arc::new(MemoryRegistry::new(RegistryConfig::default()))
    }

    fn gateway() -> GatewayId {
        GatewayId::new(ulid::Ulid::generate().to_string())
    }

    fn guild_event(guild_id: &str, message_id: &str) -> Event {
        Event {
            audience: Some(Audience {
                target: Some(audience::Target::Guild(GuildAudience {
                    guild_id: guild_id.to_owned(),
                })),
            }),
            published_at_unix_ms: 0,
            event_id: String::new(),
            positions: Vec::new(),
            payload: Some(event::Payload::MessageDelete(MessageDelete {
                message_id: message_id.to_owned(),
                ..MessageDelete::default()
            })),
        }
    }

    fn attach(
        fanout: &Fanout,
        gateway: &GatewayId,
        capacity: usize,
    ) -> (Arc<GatewayStream>, u64, Rx) {
        let (tx, rx) = mpsc::channel(capacity);
        let (stream, missed) = fanout.attach(gateway.clone(), tx).expect("open");
        (stream, missed, rx)
    }

    /// The (seq, message id, ack requested) of every event queued so far.
    fn drain(rx: &mut Rx) -> Vec<(u64, String, bool)> {
        std::iter::from_fn(|| rx.try_recv().ok())
            .map(|message| match message.expect("ok").kind {
                Some(service_message::Kind::Event(e)) => {
                    let Some(event::Payload::MessageDelete(payload)) =
                        e.event.and_then(|e| e.payload)
                    else {
                        panic!("unexpected payload");
                    };
                    (e.seq, payload.message_id, e.ack_requested)
                }
                other => panic!("unexpected message {other:?}"),
            })
            .collect()
    }

    #[tokio::test]
    async fn routes_only_to_gateways_holding_the_guild_in_sequence() {
        let registry = memory();
        let fanout = fanout(registry.clone(), FanoutConfig::default());
        let (holder, other) = (gateway(), gateway());
        registry
            .hold_guilds(&holder, &["G".to_owned()])
            .await
            .unwrap();
        registry.heartbeat(&other, None).await.unwrap();
        let (_s1, _, mut rx_holder) = attach(&fanout, &holder, 8);
        let (_s2, _, mut rx_other) = attach(&fanout, &other, 8);

        for id in ["a", "b"] {
            let report = fanout.publish(guild_event("G", id)).await;
            assert_eq!(
                report,
                PublishReport {
                    queued: 1,
                    missed: 0,
                    registry_degraded: false
                }
            );
        }
        assert_eq!(
            drain(&mut rx_holder),
            [(1, "a".to_owned(), false), (2, "b".to_owned(), false)]
        );
        assert!(drain(&mut rx_other).is_empty());
    }

    #[tokio::test]
    async fn events_for_a_gateway_without_stream_are_reported_in_its_next_welcome() {
        let registry = memory();
        let fanout = fanout(registry.clone(), FanoutConfig::default());
        let gw = gateway();
        registry.hold_guilds(&gw, &["G".to_owned()]).await.unwrap();
        let report = fanout.publish(guild_event("G", "lost")).await;
        assert_eq!(report.missed, 1);
        let (_stream, missed, _rx) = attach(&fanout, &gw, 8);
        assert_eq!(missed, 1);
        // Reported once: the next stream starts clean.
        let (_stream, missed, _rx) = attach(&fanout, &gw, 8);
        assert_eq!(missed, 0);
    }

    #[tokio::test]
    async fn a_full_stream_is_cut_and_counted() {
        let registry = memory();
        let fanout = fanout(registry.clone(), FanoutConfig::default());
        let gw = gateway();
        registry.hold_guilds(&gw, &["G".to_owned()]).await.unwrap();
        let (_stream, _, mut rx) = attach(&fanout, &gw, 1);
        assert_eq!(fanout.publish(guild_event("G", "fits")).await.queued, 1);
        assert_eq!(
            fanout.publish(guild_event("G", "overflows")).await.missed,
            1
        );
        assert!(fanout.connected_gateways().is_empty(), "the stream was cut");
        assert_eq!(drain(&mut rx), [(1, "fits".to_owned(), false)]);
        assert!(rx.recv().await.is_none(), "the gateway sees its stream end");
        let (_stream, missed, _rx) = attach(&fanout, &gw, 8);
        assert_eq!(missed, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn publish_acked_waits_for_the_ack_and_cuts_a_silent_gateway() {
        let registry = memory();
        let config = FanoutConfig {
            ack_timeout: Duration::from_secs(2),
            ..FanoutConfig::default()
        };
        let fanout = fanout(registry.clone(), config);
        let (acking, silent) = (gateway(), gateway());
        registry
            .hold_guilds(&acking, &["G".to_owned()])
            .await
            .unwrap();
        registry
            .hold_guilds(&silent, &["G".to_owned()])
            .await
            .unwrap();
        let (acking_stream, _, mut acking_rx) = attach(&fanout, &acking, 8);
        let (_silent_stream, _, mut silent_rx) = attach(&fanout, &silent, 8);

        let publishing = tokio::spawn({
            let fanout = fanout.clone();
            async move { fanout.publish_acked(guild_event("G", "revoke")).await }
        });
        tokio::task::yield_now().await;
        let queued = drain(&mut acking_rx);
        assert_eq!(queued, [(1, "revoke".to_owned(), true)]);
        acking_stream.acknowledge(1);
        assert!(
            !publishing.is_finished(),
            "still waiting for the silent gateway"
        );

        let report = publishing.await.unwrap();
        assert_eq!(report.queued, 2);
        assert_eq!(fanout.connected_gateways(), std::slice::from_ref(&acking));
        assert_eq!(drain(&mut silent_rx).len(), 1);
        assert!(
            silent_rx.recv().await.is_none(),
            "the silent gateway's stream ended"
        );
        let (_stream, missed, _rx) = attach(&fanout, &silent, 8);
        assert_eq!(missed, 1, "so it resynchronises on reconnect");
    }

    /// The replay positions of every event queued so far.
    fn positions(rx: &mut Rx) -> Vec<Vec<(String, u64)>> {
        std::iter::from_fn(|| rx.try_recv().ok())
            .map(|message| match message.expect("ok").kind {
                Some(service_message::Kind::Event(e)) => e
                    .event
                    .expect("event")
                    .positions
                    .into_iter()
                    .map(|p| (p.scope, p.offset))
                    .collect(),
                other => panic!("unexpected message {other:?}"),
            })
            .collect()
    }

    #[tokio::test]
    async fn a_durable_publisher_logs_its_events_and_sends_their_positions() {
        let registry = memory();
        let durable = FanoutConfig {
            durable: true,
            ..FanoutConfig::default()
        };
        let logging = fanout(registry.clone(), durable);
        let plain = fanout(registry.clone(), FanoutConfig::default());
        let holder = gateway();
        registry
            .hold_guilds(&holder, &["G".to_owned()])
            .await
            .unwrap();
        let (_stream, _, mut rx) = attach(&logging, &holder, 8);
        let (_plain_stream, _, mut plain_rx) = attach(&plain, &holder, 8);

        for (n, id) in ["a", "b"].into_iter().enumerate() {
            let mut event = guild_event("G", id);
            event.event_id = format!("event-{n}");
            drop(logging.publish_durable(event).await);
        }
        // Published again (a relay's retry): the first positions, no new entry.
        let mut repeat = guild_event("G", "a");
        repeat.event_id = "event-0".to_owned();
        drop(logging.publish_durable(repeat).await);
        let g = |offset| vec![("g:G".to_owned(), offset)];
        assert_eq!(positions(&mut rx), [g(1), g(2), g(1)]);
        // A lossy publisher (presence, voice) logs nothing.
        plain.publish(guild_event("G", "c")).await;
        assert_eq!(positions(&mut plain_rx), [Vec::new()]);
        let head = registry.log_head("g:G").await.unwrap().unwrap();
        assert_eq!(head.offset, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_durable_event_is_confirmed_once_every_holder_acknowledged_it() {
        let registry = memory();
        let fanout = fanout(registry.clone(), FanoutConfig::default());
        let (first, second) = (gateway(), gateway());
        for gw in [&first, &second] {
            registry.hold_guilds(gw, &["G".to_owned()]).await.unwrap();
        }
        let (first_stream, _, mut first_rx) = attach(&fanout, &first, 8);
        let (second_stream, _, mut second_rx) = attach(&fanout, &second, 8);

        let confirmation = fanout.publish_durable(guild_event("G", "kept")).await;
        assert_eq!(confirmation.report().queued, 2);
        // Gateways acknowledge durable events in batches, not at once.
        assert_eq!(drain(&mut first_rx), [(1, "kept".to_owned(), false)]);
        assert_eq!(drain(&mut second_rx), [(1, "kept".to_owned(), false)]);
        let waiting = tokio::spawn(confirmation.confirmed());
        first_stream.acknowledge(1);
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "one gateway has not acknowledged");
        second_stream.acknowledge(1);
        assert!(waiting.await.unwrap());
    }

    #[tokio::test(start_paused = true)]
    async fn an_unreachable_holder_leaves_a_durable_event_unconfirmed_and_uncounted() {
        let registry = memory();
        let fanout = fanout(registry.clone(), FanoutConfig::default());
        let (silent, absent, full) = (gateway(), gateway(), gateway());
        for gw in [&silent, &absent, &full] {
            registry.hold_guilds(gw, &["G".to_owned()]).await.unwrap();
        }
        let (_silent_stream, _, _silent_rx) = attach(&fanout, &silent, 8);
        let (_full_stream, _, _full_rx) = attach(&fanout, &full, 1);
        let filling = fanout.publish_durable(guild_event("G", "fills")).await;
        assert_eq!(filling.report().queued, 2);
        assert_eq!(filling.report().missed, 1, "the absent gateway");

        let confirmation = fanout.publish_durable(guild_event("G", "kept")).await;
        assert_eq!(
            confirmation.report(),
            &PublishReport {
                queued: 1,
                missed: 2,
                registry_degraded: false
            }
        );
        assert!(!confirmation.confirmed().await);
        assert!(
            !fanout.connected_gateways().contains(&full),
            "the full stream was cut"
        );
        // The publisher publishes both again: no gateway is told to
        // resynchronise for them.
        let (_stream, missed, _rx) = attach(&fanout, &full, 8);
        assert_eq!(missed, 0);
        let (_stream, missed, _rx) = attach(&fanout, &absent, 8);
        assert_eq!(missed, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_closed_stream_stops_the_wait_for_its_acknowledgement() {
        let registry = memory();
        let fanout = fanout(registry.clone(), FanoutConfig::default());
        let gw = gateway();
        registry.hold_guilds(&gw, &["G".to_owned()]).await.unwrap();
        let (stream, _, _rx) = attach(&fanout, &gw, 8);
        let confirmation = fanout.publish_durable(guild_event("G", "kept")).await;
        stream.close();
        let started = tokio::time::Instant::now();
        assert!(!confirmation.confirmed().await);
        assert_eq!(
            tokio::time::Instant::now(),
            started,
            "it did not wait for the ack timeout"
        );
    }

    #[tokio::test]
    async fn close_ends_streams_after_what_is_queued_and_refuses_new_ones() {
        let registry = memory();
        let fanout = fanout(registry.clone(), FanoutConfig::default());
        let gw = gateway();
        registry.hold_guilds(&gw, &["G".to_owned()]).await.unwrap();
        let (_stream, _, mut rx) = attach(&fanout, &gw, 8);
        fanout.publish(guild_event("G", "last")).await;
        fanout.close();
        assert_eq!(drain(&mut rx), [(1, "last".to_owned(), false)]);
        assert!(rx.recv().await.is_none());
        let (tx, _rx) = mpsc::channel(1);
        assert!(fanout.attach(gw, tx).is_none());
    }

    /// A registry that cannot answer.
    struct Down;

    #[async_trait::async_trait]
    impl Registry for Down {
        async fn heartbeat(
            &self,
            _: &GatewayId,
            _: Option<&filament_registry::Epoch>,
        ) -> filament_registry::RegistryResult<filament_registry::Epoch> {
            Err(down())
        }
        async fn hold_guilds(
            &self,
            _: &GatewayId,
            _: &[String],
        ) -> filament_registry::RegistryResult<()> {
            Err(down())
        }
        async fn release_guilds(
            &self,
            _: &GatewayId,
            _: &[String],
        ) -> filament_registry::RegistryResult<()> {
            Err(down())
        }
        async fn hold_users(
            &self,
            _: &GatewayId,
            _: &[String],
        ) -> filament_registry::RegistryResult<()> {
            Err(down())
        }
        async fn release_users(
            &self,
            _: &GatewayId,
            _: &[String],
        ) -> filament_registry::RegistryResult<()> {
            Err(down())
        }
        async fn live_gateways(&self) -> filament_registry::RegistryResult<Vec<GatewayId>> {
            Err(down())
        }
        async fn gateways_for_guild(
            &self,
            _: &str,
        ) -> filament_registry::RegistryResult<Vec<GatewayId>> {
            Err(down())
        }
        async fn gateways_for_audience(
            &self,
            _: &[String],
            _: &[String],
        ) -> filament_registry::RegistryResult<Vec<GatewayId>> {
            Err(down())
        }
        async fn deregister(&self, _: &GatewayId) -> filament_registry::RegistryResult<()> {
            Err(down())
        }
        async fn revoke_session(
            &self,
            _: &str,
            _: std::time::Duration,
        ) -> filament_registry::RegistryResult<()> {
            Err(down())
        }
        async fn is_session_revoked(&self, _: &str) -> filament_registry::RegistryResult<bool> {
            Err(down())
        }
    }

    fn down() -> filament_registry::RegistryError {
        filament_registry::RegistryError::Redis(redis::RedisError::from((
            redis::ErrorKind::Io,
            "registry down",
        )))
    }

    #[tokio::test]
    async fn without_a_registry_every_gateway_gets_the_event() {
        let fanout = fanout(Arc::new(Down), FanoutConfig::default());
        let (a, b) = (gateway(), gateway());
        let (_sa, _, mut rx_a) = attach(&fanout, &a, 8);
        let (_sb, _, mut rx_b) = attach(&fanout, &b, 8);
        let report = fanout.publish(guild_event("G", "x")).await;
        assert!(report.registry_degraded);
        assert_eq!(report.queued, 2);
        assert_eq!(drain(&mut rx_a).len(), 1);
        assert_eq!(drain(&mut rx_b).len(), 1);
    }
}
