//! [`Fanout`]: routing published events onto gateway streams.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use filament_proto::v1::{Event, ServiceMessage, StreamEvent, audience, service_message};
use filament_registry::{GatewayId, Registry};
use tokio::sync::{mpsc, watch};
use tonic::Status;

#[derive(Debug, Clone)]
pub struct FanoutConfig {
    /// Events queued per gateway stream before the gateway counts as too
    /// slow and its stream is cut.
    pub stream_capacity: usize,
    /// How long `publish_acked` waits for a gateway's acknowledgement.
    pub ack_timeout: Duration,
    /// Gateways whose missed-event counts are remembered.
    pub max_tracked_gateways: usize,
}

impl Default for FanoutConfig {
    fn default() -> Self {
        Self {
            stream_capacity: 4096,
            ack_timeout: Duration::from_secs(2),
            max_tracked_gateways: 4096,
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

/// One open stream to a gateway.
pub(crate) struct GatewayStream {
    /// Distinguishes this stream from a later one of the same gateway.
    pub(crate) generation: u64,
    /// The sequence counter and the queue, under one lock so that sequence
    /// order is queue order.
    sender: Mutex<StreamSender>,
    /// The highest sequence number the gateway acknowledged.
    acked: watch::Sender<u64>,
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

    /// Queues `event` for every gateway holding its audience.
    pub async fn publish(&self, event: Event) -> PublishReport {
        self.route(event, false).await.0
    }

    /// Like [`publish`](Self::publish), then waits until every target gateway
    /// acknowledged the event. A gateway that does not acknowledge within the
    /// configured timeout has its stream cut (it will resynchronise), so when
    /// this returns, no target gateway still acts on the old state.
    pub async fn publish_acked(&self, event: Event) -> PublishReport {
        let (report, pending) = self.route(event, true).await;
        let deadline = tokio::time::Instant::now() + self.inner.config.ack_timeout;
        for (gateway, stream, seq) in pending {
            let mut acked = stream.acked.subscribe();
            let wait = acked.wait_for(|&value| value >= seq);
            match tokio::time::timeout_at(deadline, wait).await {
                Ok(Ok(_)) => {}
                Ok(Err(_)) | Err(_) => {
                    tracing::warn!(%gateway, seq, "gateway did not acknowledge in time; cutting its stream");
                    self.cut(&gateway, &stream);
                }
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
        ack_requested: bool,
    ) -> (PublishReport, Vec<(GatewayId, Arc<GatewayStream>, u64)>) {
        let mut report = PublishReport::default();
        let targets = match self.targets(&event).await {
            Ok(targets) => targets,
            Err(err) => {
                // Gateways filter by their own indexes, so sending to all of
                // them is safe; dropping the event would not be.
                tracing::warn!(%err, "registry unavailable; sending event to every gateway");
                report.registry_degraded = true;
                self.lock().streams.keys().cloned().collect()
            }
        };
        let event = Arc::new(event);
        let mut pending = Vec::new();
        for gateway in targets {
            let stream = self.lock().streams.get(&gateway).cloned();
            let Some(stream) = stream else {
                report.missed += 1;
                self.record_missed(&gateway, 1);
                continue;
            };
            match stream.push(&event, ack_requested) {
                Ok(seq) => {
                    report.queued += 1;
                    if ack_requested {
                        pending.push((gateway, stream, seq));
                    }
                }
                Err(()) => {
                    tracing::warn!(%gateway, "gateway stream full or closed; cutting it");
                    report.missed += 1;
                    self.cut(&gateway, &stream);
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
            acked: watch::Sender::new(0),
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

    /// Ends a stream that lost an event, and remembers that it did.
    fn cut(&self, gateway: &GatewayId, stream: &GatewayStream) {
        stream.close();
        self.detach(gateway, stream.generation);
        self.record_missed(gateway, 1);
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
    fn push(&self, event: &Event, ack_requested: bool) -> Result<u64, ()> {
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
            })),
        };
        tx.try_send(Ok(message)).map_err(|_| ())?;
        sender.next_seq += 1;
        Ok(seq)
    }

    /// Drops the sender: the gateway sees the stream end after what is
    /// already queued.
    fn close(&self) {
        self.sender
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .tx
            .take();
    }

    pub(crate) fn acknowledge(&self, seq: u64) {
        self.acked.send_if_modified(|acked| {
            if seq > *acked {
                *acked = seq;
                true
            } else {
                false
            }
        });
    }
}
