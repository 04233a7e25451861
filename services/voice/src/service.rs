//! The voice domain: joins, leaves, state changes, snapshots, removals and
//! what LiveKit observed, applied as [`Change`]s to the roster's store and
//! published as channel events. One async lock covers each change and the
//! publishing of its events, so a replica's events leave in the order its
//! changes committed (a join can never be overtaken by the leave that
//! followed it). Two replicas publish independently: their events about one
//! channel may interleave differently from their commits, which the roster
//! syncs sent on every join and subscribe repair.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use filament_fanout::EventSink;
use filament_ids::GuildId;
use filament_proto::v1::{VoiceGrantHolder, VoiceParticipantSync, VoiceStateFields};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use crate::livekit::{self, LiveKit, TokenGrant};
use crate::metrics::{SyncReason, VoiceMetrics};
use crate::roster::{
    ChannelKey, Clock, LiveParticipant, ObservedTrack, Reconciled, RosterError, Stream,
};
use crate::store::{Applied, Change, Outcome, RosterStore, StoreError, StoreResult};

/// LiveKit access tokens live this long (PROTOCOL.md §4.8: 300 s, also the
/// maximum).
pub const TOKEN_TTL_SECS: i64 = 300;

/// A validated join: the caller's grants, already limited by their
/// permissions.
#[derive(Debug, Clone)]
pub struct Join {
    pub channel: ChannelKey,
    pub user_id: String,
    pub username: String,
    pub can_publish: bool,
    pub can_subscribe: bool,
    /// Distinct, ordered; empty unless `can_publish`.
    pub sources: Vec<Stream>,
}

/// What a join returns to the caller.
#[derive(Debug, Clone)]
pub struct JoinGrant {
    pub token: String,
    pub livekit_url: String,
    pub room: String,
    pub identity: String,
    pub can_publish: bool,
    pub can_subscribe: bool,
    pub sources: Vec<Stream>,
    pub expires_in_secs: i64,
}

/// One verified LiveKit webhook, reduced to what the roster uses.
#[derive(Debug, Clone)]
pub enum Observed {
    Joined { sid: String },
    Left { sid: String, at_unix: i64 },
    Track(ObservedTrack),
}

/// Where the service reads the time: the wall clock in production, a
/// clock the test moves in tests.
pub type TimeSource = Arc<dyn Fn() -> Clock + Send + Sync>;

#[derive(Clone)]
pub struct VoiceService {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn RosterStore>,
    /// Held across each change and the publishing of its events, so this
    /// replica publishes in the order it committed.
    order: Mutex<()>,
    time: TimeSource,
    livekit: LiveKit,
    events: Arc<dyn EventSink>,
    metrics: Arc<VoiceMetrics>,
}

impl VoiceService {
    pub fn new(
        livekit: LiveKit,
        store: Arc<dyn RosterStore>,
        events: Arc<dyn EventSink>,
        metrics: Arc<VoiceMetrics>,
    ) -> Self {
        Self::with_time(livekit, store, events, metrics, Arc::new(Clock::now))
    }

    pub fn with_time(
        livekit: LiveKit,
        store: Arc<dyn RosterStore>,
        events: Arc<dyn EventSink>,
        metrics: Arc<VoiceMetrics>,
        time: TimeSource,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                store,
                order: Mutex::new(()),
                time,
                livekit,
                events,
                metrics,
            }),
        }
    }

    pub fn livekit(&self) -> &LiveKit {
        &self.inner.livekit
    }

    pub fn metrics(&self) -> &Arc<VoiceMetrics> {
        &self.inner.metrics
    }

    /// Registers the participant (leaving their previous channel), publishes
    /// the changes and a roster snapshot for the user's sockets, and signs
    /// their token. A full channel or registry refuses it unchanged.
    pub async fn join(&self, join: Join) -> StoreResult<JoinGrant> {
        let streams: BTreeSet<Stream> = join.sources.iter().copied().collect();
        let change = Change::Join {
            channel: &join.channel,
            user_id: &join.user_id,
            streams: &streams,
            can_subscribe: join.can_subscribe,
        };
        match self.change(&change).await {
            // A replica's slice prunes only what the join touches: someone
            // expired elsewhere may still hold the place a bound counts.
            Err(StoreError::Refused(
                RosterError::TooManyChannels | RosterError::TooManyParticipants,
            )) => {
                self.prune().await?;
                self.change(&change).await?
            }
            other => other?,
        };
        self.inner.metrics.sync_repaired(SyncReason::Join);
        Ok(self.grant(&join, streams.into_iter().collect()))
    }

    /// The LiveKit token for a join that was registered.
    fn grant(&self, join: &Join, sources: Vec<Stream>) -> JoinGrant {
        let room = livekit::room_name(&join.channel);
        let identity = livekit::identity(&join.user_id, &join.channel);
        let grant = TokenGrant {
            identity: &identity,
            name: &join.username,
            room: &room,
            can_publish: join.can_publish,
            can_subscribe: join.can_subscribe,
            sources: &sources,
        };
        let now_unix = (self.inner.time)().unix_ms / 1000;
        let token = self
            .inner
            .livekit
            .access_token(&grant, now_unix, TOKEN_TTL_SECS);
        JoinGrant {
            token,
            livekit_url: self.inner.livekit.url().to_owned(),
            room,
            identity,
            can_publish: join.can_publish,
            can_subscribe: join.can_subscribe,
            sources,
            expires_in_secs: TOKEN_TTL_SECS,
        }
    }

    pub async fn leave(&self, channel: &ChannelKey, user_id: &str) -> StoreResult<bool> {
        let change = Change::Leave { channel, user_id };
        changed(self.change(&change).await?, "leave")
    }

    pub async fn update_state(
        &self,
        channel: &ChannelKey,
        user_id: &str,
        fields: &VoiceStateFields,
    ) -> StoreResult<bool> {
        let change = Change::Update {
            channel,
            user_id,
            fields,
        };
        changed(self.change(&change).await?, "update")
    }

    /// The roster of a channel for a socket whose subscribe was accepted.
    pub async fn snapshot(&self, channel: &ChannelKey) -> StoreResult<VoiceParticipantSync> {
        let Outcome::Snapshot(sync) = self.change(&Change::Snapshot { channel }).await? else {
            return Err(StoreError::Mismatch("snapshot"));
        };
        self.inner.metrics.sync_repaired(SyncReason::Subscribe);
        Ok(sync)
    }

    /// The user's last connection closed at `closed_at_unix_ms`.
    pub async fn connection_closed(
        &self,
        user_id: &str,
        closed_at_unix_ms: i64,
    ) -> StoreResult<u32> {
        self.remove(user_id, None, Some(closed_at_unix_ms)).await
    }

    /// The user lost access to `guild_id`.
    pub async fn remove_user(&self, guild_id: GuildId, user_id: &str) -> StoreResult<u32> {
        self.remove(user_id, Some(guild_id), None).await
    }

    async fn remove(
        &self,
        user_id: &str,
        guild_id: Option<GuildId>,
        unless_joined_after_ms: Option<i64>,
    ) -> StoreResult<u32> {
        let change = Change::RemoveUser {
            user_id,
            guild_id,
            unless_joined_after_ms,
        };
        match self.change(&change).await? {
            Outcome::Removed(n) => Ok(n),
            _ => Err(StoreError::Mismatch("remove")),
        }
    }

    /// Who is in the guild's voice channels, with their grants.
    pub async fn guild_participants(
        &self,
        guild_id: GuildId,
    ) -> StoreResult<Vec<VoiceGrantHolder>> {
        match self.change(&Change::GuildParticipants { guild_id }).await? {
            Outcome::Holders(holders) => Ok(holders),
            _ => Err(StoreError::Mismatch("guild participants")),
        }
    }

    /// The voice channels that have a participant.
    pub async fn voice_channels(&self) -> StoreResult<Vec<ChannelKey>> {
        self.inner.store.channels().await
    }

    /// Applies what LiveKit lists in a channel's room (the drift check).
    pub async fn reconcile(
        &self,
        channel: &ChannelKey,
        live: &[LiveParticipant],
        grace: Duration,
    ) -> StoreResult<Reconciled> {
        let change = Change::Reconcile {
            channel,
            live,
            grace,
        };
        match self.change(&change).await? {
            Outcome::Reconciled(done) => Ok(done),
            _ => Err(StoreError::Mismatch("reconcile")),
        }
    }

    /// Removes participants whose TTL ran out.
    pub async fn prune(&self) -> StoreResult<usize> {
        match self.change(&Change::Prune).await? {
            Outcome::Pruned(n) => Ok(n),
            _ => Err(StoreError::Mismatch("prune")),
        }
    }

    /// Applies what a verified LiveKit webhook reported about a participant.
    pub async fn observe(
        &self,
        channel: &ChannelKey,
        user_id: &str,
        observed: &Observed,
    ) -> StoreResult<bool> {
        let change = Change::Observe {
            channel,
            user_id,
            observed,
        };
        changed(self.change(&change).await?, "observe")
    }

    /// Prunes every `interval` until `shutdown`.
    pub async fn run_pruner(self, interval: Duration, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => match self.prune().await {
                    Ok(0) => {}
                    Ok(pruned) => tracing::info!(pruned, "expired voice participants removed"),
                    Err(err) => tracing::warn!(%err, "voice prune failed; retried next tick"),
                },
                () = shutdown.cancelled() => return,
            }
        }
    }

    /// Applies one change in the store and publishes its events, in order,
    /// under this replica's order lock. Events of a refused change that
    /// were caused before the refusal (pruning) are still published: they
    /// happened.
    async fn change(&self, change: &Change<'_>) -> StoreResult<Outcome> {
        let _order = self.inner.order.lock().await;
        let mut events = Vec::new();
        let clock = (self.inner.time)();
        let result = self.inner.store.apply(change, clock, &mut events).await;
        if let Ok(Applied {
            participants: Some(count),
            ..
        }) = &result
        {
            self.inner.metrics.set_participants(*count);
        }
        for event in events {
            self.inner.events.publish(event).await;
        }
        result.map(|applied| applied.outcome)
    }
}

/// The answer of a change that reports whether anything changed.
fn changed(outcome: Outcome, kind: &'static str) -> StoreResult<bool> {
    match outcome {
        Outcome::Changed(changed) => Ok(changed),
        _ => Err(StoreError::Mismatch(kind)),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used, reason = "a failed call is a failed test")]

    use std::sync::Mutex as StdMutex;

    use async_trait::async_trait;
    use filament_proto::v1::{Event, event};

    use super::*;
    use crate::roster::Limits;
    use crate::store::MemoryRosterStore;

    const TTL: Duration = Duration::from_secs(300);

    /// Keeps what the service publishes, for tests to read.
    #[derive(Default)]
    pub(crate) struct Recorder(StdMutex<Vec<Event>>);

    #[async_trait]
    impl EventSink for Recorder {
        async fn publish(&self, event: Event) {
            self.0.lock().unwrap().push(event);
        }
    }

    impl Recorder {
        /// The events published since the last call.
        pub(crate) fn take(&self) -> Vec<Event> {
            self.0.lock().unwrap().drain(..).collect()
        }

        /// The kinds of the events published since the last call.
        pub(crate) fn kinds(&self) -> Vec<&'static str> {
            self.0
                .lock()
                .unwrap()
                .drain(..)
                .map(|e| match e.payload.unwrap() {
                    event::Payload::VoiceParticipantJoin(_) => "join",
                    event::Payload::VoiceParticipantLeave(_) => "leave",
                    event::Payload::VoiceStreamPublish(_) => "publish",
                    event::Payload::VoiceStreamUnpublish(_) => "unpublish",
                    event::Payload::VoiceParticipantSync(_) => "sync",
                    event::Payload::VoiceParticipantUpdate(_) => "update",
                    _ => "other",
                })
                .collect()
        }
    }

    pub(crate) fn livekit() -> LiveKit {
        LiveKit::new(
            "key",
            b"a-unit-test-secret-of-32-bytes-or-more".to_vec(),
            "ws://lk",
        )
        .unwrap()
    }

    /// A service over `store` that reads `time`, and what it publishes.
    pub(crate) fn service_on(
        store: Arc<dyn RosterStore>,
        time: TimeSource,
    ) -> (VoiceService, Arc<Recorder>) {
        let recorder = Arc::new(Recorder::default());
        let service = VoiceService::with_time(
            livekit(),
            store,
            recorder.clone(),
            Arc::new(VoiceMetrics::default()),
            time,
        );
        (service, recorder)
    }

    pub(crate) fn service() -> (VoiceService, Arc<Recorder>) {
        let store = Arc::new(MemoryRosterStore::new(Limits::default(), TTL));
        service_on(store, Arc::new(Clock::now))
    }

    /// Wall-clock time that moves with tokio's (paused) clock.
    fn tokio_time() -> TimeSource {
        let (origin, start) = (tokio::time::Instant::now(), Clock::now());
        Arc::new(move || start.after(origin.elapsed()))
    }

    pub(crate) fn join(user: &str) -> Join {
        Join {
            channel: crate::roster::tests::key(1),
            user_id: user.to_owned(),
            username: user.to_owned(),
            can_publish: true,
            can_subscribe: true,
            sources: vec![Stream::Microphone],
        }
    }

    /// The pruner task removes participants once their TTL ran out, with
    /// unpublish then leave, and not a moment before.
    #[tokio::test(start_paused = true)]
    async fn the_pruner_removes_silent_participants_after_their_ttl() {
        let store = Arc::new(MemoryRosterStore::new(Limits::default(), TTL));
        let (service, recorder) = service_on(store, tokio_time());
        service.join(join("alice")).await.unwrap();
        assert_eq!(recorder.kinds(), ["join", "publish", "sync"]);
        let stop = CancellationToken::new();
        let pruner = tokio::spawn(
            service
                .clone()
                .run_pruner(Duration::from_secs(5), stop.clone()),
        );

        tokio::time::sleep(TTL - Duration::from_secs(1)).await;
        assert_eq!(recorder.kinds(), Vec::<&str>::new(), "alive during its TTL");
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(recorder.kinds(), ["unpublish", "leave"]);
        assert_eq!(
            service
                .snapshot(&join("x").channel)
                .await
                .unwrap()
                .participants
                .len(),
            0
        );
        stop.cancel();
        pruner.await.unwrap();
    }
}
