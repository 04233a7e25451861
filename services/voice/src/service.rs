//! The voice domain: joins, leaves, state changes, snapshots, removals and
//! what LiveKit observed, applied to the [`Roster`] and published as channel
//! events. One async lock covers each change and the publishing of its
//! events, so events leave in the order the changes happened (a join can
//! never be overtaken by the leave that followed it).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use filament_fanout::Fanout;
use filament_proto::v1::{Event, VoiceGrantHolder, VoiceParticipantSync, VoiceStateFields};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use crate::livekit::{self, LiveKit, TokenGrant};
use crate::metrics::{SyncReason, VoiceMetrics};
use crate::roster::{
    ChannelKey, Clock, LiveParticipant, ObservedTrack, Reconciled, Roster, RosterError, Stream,
};

/// LiveKit access tokens live this long (contract §6: 300 s, also the
/// maximum).
pub const TOKEN_TTL_SECS: i64 = 300;

/// Where voice events go: the service's [`Fanout`] in production, a
/// recorder in tests.
#[async_trait]
pub trait EventSink: Send + Sync + 'static {
    async fn publish(&self, event: Event);
}

#[async_trait]
impl EventSink for Fanout {
    async fn publish(&self, event: Event) {
        let report = Fanout::publish(self, event).await;
        if report.missed > 0 {
            tracing::debug!(?report, "voice event missed some gateways");
        }
    }
}

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

#[derive(Clone)]
pub struct VoiceService {
    inner: Arc<Inner>,
}

struct Inner {
    roster: Mutex<Roster>,
    livekit: LiveKit,
    events: Arc<dyn EventSink>,
    metrics: Arc<VoiceMetrics>,
}

impl VoiceService {
    pub fn new(
        livekit: LiveKit,
        roster: Roster,
        events: Arc<dyn EventSink>,
        metrics: Arc<VoiceMetrics>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                roster: Mutex::new(roster),
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
    pub async fn join(&self, join: Join) -> Result<JoinGrant, RosterError> {
        let streams: BTreeSet<Stream> = join.sources.iter().copied().collect();
        self.change(|roster, clock, out| {
            roster.prune(clock, out);
            roster.join(&join.channel, &join.user_id, &streams, clock, out)?;
            roster.grant_subscribe(&join.channel, &join.user_id, join.can_subscribe);
            out.push(roster.sync_for_user(&join.channel, &join.user_id, clock));
            Ok(())
        })
        .await?;
        self.inner.metrics.sync_repaired(SyncReason::Join);

        let room = livekit::room_name(&join.channel);
        let identity = livekit::identity(&join.user_id, &join.channel);
        let sources: Vec<Stream> = streams.into_iter().collect();
        let grant = TokenGrant {
            identity: &identity,
            name: &join.username,
            room: &room,
            can_publish: join.can_publish,
            can_subscribe: join.can_subscribe,
            sources: &sources,
        };
        let token =
            self.inner
                .livekit
                .access_token(&grant, Clock::now().unix_ms / 1000, TOKEN_TTL_SECS);
        Ok(JoinGrant {
            token,
            livekit_url: self.inner.livekit.url().to_owned(),
            room,
            identity,
            can_publish: join.can_publish,
            can_subscribe: join.can_subscribe,
            sources,
            expires_in_secs: TOKEN_TTL_SECS,
        })
    }

    pub async fn leave(&self, channel: &ChannelKey, user_id: &str) -> bool {
        self.change(|roster, clock, out| Ok(roster.leave(channel, user_id, clock, out)))
            .await
            .unwrap_or(false)
    }

    pub async fn update_state(
        &self,
        channel: &ChannelKey,
        user_id: &str,
        change: &VoiceStateFields,
    ) -> bool {
        self.change(|roster, clock, out| Ok(roster.update(channel, user_id, change, clock, out)))
            .await
            .unwrap_or(false)
    }

    /// The roster of a channel for a socket whose subscribe was accepted.
    pub async fn snapshot(&self, channel: &ChannelKey) -> VoiceParticipantSync {
        let mut sync = None;
        let _ = self
            .change(|roster, clock, out| {
                roster.prune(clock, out);
                sync = Some(roster.snapshot(channel, clock));
                Ok(())
            })
            .await;
        self.inner.metrics.sync_repaired(SyncReason::Subscribe);
        sync.unwrap_or_else(|| VoiceParticipantSync {
            guild_id: channel.guild_id.clone(),
            channel_id: channel.channel_id.clone(),
            participants: Vec::new(),
            synced_at_unix: Clock::now().unix_ms / 1000,
        })
    }

    /// The user's last connection closed at `closed_at_unix_ms`.
    pub async fn connection_closed(&self, user_id: &str, closed_at_unix_ms: i64) -> u32 {
        self.change(|roster, clock, out| {
            Ok(roster.remove_user(user_id, None, Some(closed_at_unix_ms), clock, out))
        })
        .await
        .unwrap_or(0)
    }

    /// The user lost access to `guild_id`.
    pub async fn remove_user(&self, guild_id: &str, user_id: &str) -> u32 {
        self.change(|roster, clock, out| {
            Ok(roster.remove_user(user_id, Some(guild_id), None, clock, out))
        })
        .await
        .unwrap_or(0)
    }

    /// Who is in the guild's voice channels, with their grants.
    pub async fn guild_participants(&self, guild_id: &str) -> Vec<VoiceGrantHolder> {
        self.inner.roster.lock().await.guild_participants(guild_id)
    }

    /// The voice channels that have a participant.
    pub async fn voice_channels(&self) -> Vec<ChannelKey> {
        self.inner.roster.lock().await.channels()
    }

    /// Applies what LiveKit lists in a channel's room (the drift check).
    pub async fn reconcile(
        &self,
        channel: &ChannelKey,
        live: &[LiveParticipant],
        grace: Duration,
    ) -> Reconciled {
        self.change(|roster, clock, out| Ok(roster.reconcile(channel, live, grace, clock, out)))
            .await
            .unwrap_or_default()
    }

    /// Removes participants whose TTL ran out.
    pub async fn prune(&self) -> usize {
        self.change(|roster, clock, out| Ok(roster.prune(clock, out)))
            .await
            .unwrap_or(0)
    }

    /// Applies what a verified LiveKit webhook reported about a participant.
    pub async fn observe(&self, channel: &ChannelKey, user_id: &str, observed: Observed) -> bool {
        self.change(|roster, clock, out| {
            Ok(match &observed {
                Observed::Joined { sid } => roster.observe_joined(channel, user_id, sid, clock),
                Observed::Left { sid, at_unix } => {
                    roster.observe_left(channel, user_id, sid, *at_unix, clock, out)
                }
                Observed::Track(track) => {
                    roster.observe_track(channel, user_id, *track, clock, out)
                }
            })
        })
        .await
        .unwrap_or(false)
    }

    /// Prunes every `interval` until `shutdown`.
    pub async fn run_pruner(self, interval: Duration, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    let pruned = self.prune().await;
                    if pruned > 0 {
                        tracing::info!(pruned, "expired voice participants removed");
                    }
                }
                () = shutdown.cancelled() => return,
            }
        }
    }

    /// Runs one change on the roster and publishes its events, in order,
    /// under the same lock. Events of a refused change that were caused
    /// before the refusal (pruning) are still published: they happened.
    async fn change<T>(
        &self,
        apply: impl FnOnce(&mut Roster, Clock, &mut Vec<Event>) -> Result<T, RosterError>,
    ) -> Result<T, RosterError> {
        let mut roster = self.inner.roster.lock().await;
        let mut events = Vec::new();
        let result = apply(&mut roster, Clock::now(), &mut events);
        self.inner
            .metrics
            .set_participants(roster.participant_count());
        for event in events {
            self.inner.events.publish(event).await;
        }
        result
    }
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used, reason = "a failed call is a failed test")]

    use std::sync::Mutex as StdMutex;

    use filament_proto::v1::event;

    use super::*;
    use crate::roster::Limits;

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

    pub(crate) fn service() -> (VoiceService, Arc<Recorder>) {
        let recorder = Arc::new(Recorder::default());
        let livekit = LiveKit::new(
            "key",
            b"a-unit-test-secret-of-32-bytes-or-more".to_vec(),
            "ws://lk",
        )
        .unwrap();
        let service = VoiceService::new(
            livekit,
            Roster::new(Limits::default(), TTL),
            recorder.clone(),
            Arc::new(VoiceMetrics::default()),
        );
        (service, recorder)
    }

    pub(crate) fn join(user: &str) -> Join {
        Join {
            channel: ChannelKey {
                guild_id: "G".to_owned(),
                channel_id: "C".to_owned(),
            },
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
        let (service, recorder) = service();
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
                .participants
                .len(),
            0
        );
        stop.cancel();
        pruner.await.unwrap();
    }
}
