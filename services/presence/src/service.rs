//! The presence domain: what each gateway report changes, and which events
//! that publishes. The store decides transitions atomically; this layer
//! turns each one into exactly one `presence_update`, published only after
//! the store call that made it returned `Ok`, and tells the voice service
//! when a user has no connection left anywhere.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use filament_fanout::EventSink;
use filament_proto::v1::{
    Audience, Event, GuildAudience, PresenceStatus, PresenceSync, PresenceUpdate, audience, event,
};
use filament_registry::GatewayId;
use tokio_util::sync::CancellationToken;

use crate::metrics::{PresenceMetrics, Transition};
use crate::store::{ConnectionKey, Departure, Lease, PresenceStore, StoreResult};

/// Hears about users whose last connection, on every gateway, closed
/// (explicitly or because their gateway's lease ran out). The voice
/// service uses it to take them out of voice channels.
pub trait OfflineListener: Send + Sync + 'static {
    fn user_offline(&self, user_id: &str, at_unix_ms: i64);
}

/// Connections expired per store call, so that one crashed gateway with
/// many sockets never holds the store (or Redis) for long.
const EXPIRE_BATCH: usize = 512;

#[derive(Clone)]
pub struct PresenceService {
    store: Arc<dyn PresenceStore>,
    events: Arc<dyn EventSink>,
    offline: Option<Arc<dyn OfflineListener>>,
    metrics: Arc<PresenceMetrics>,
}

impl PresenceService {
    pub fn new(
        store: Arc<dyn PresenceStore>,
        events: Arc<dyn EventSink>,
        offline: Option<Arc<dyn OfflineListener>>,
    ) -> Self {
        Self {
            store,
            events,
            offline,
            metrics: Arc::default(),
        }
    }

    /// Counts into `metrics` (the admin listener's) instead of a private set.
    #[must_use]
    pub fn with_metrics(mut self, metrics: Arc<PresenceMetrics>) -> Self {
        self.metrics = metrics;
        self
    }

    pub async fn heartbeat(&self, gateway: &GatewayId) -> StoreResult<Lease> {
        self.store.heartbeat(gateway).await
    }

    pub async fn connected(&self, connection: &ConnectionKey, user_id: &str) -> StoreResult<Lease> {
        let lease = self.store.connect(connection, user_id).await?;
        self.metrics.session_opened();
        Ok(lease)
    }

    /// Marks the connection present in the guild; publishes `presence_update
    /// online` when that made the user present. Returns the lease, whether
    /// the user came online, and the snapshot for the socket.
    pub async fn enter_guild(
        &self,
        connection: &ConnectionKey,
        user_id: &str,
        guild_id: &str,
    ) -> StoreResult<(Lease, bool, PresenceSync)> {
        let entered = self
            .store
            .enter_guild(connection, user_id, guild_id)
            .await?;
        if entered.came_online {
            self.publish_update(guild_id, user_id, PresenceStatus::Online)
                .await;
        }
        let sync = PresenceSync {
            guild_id: guild_id.to_owned(),
            user_ids: entered.present,
        };
        Ok((entered.lease, entered.came_online, sync))
    }

    /// Marks the connection no longer present in the guild; publishes
    /// `presence_update offline` when that was the user's last presence
    /// there. Returns whether it was.
    pub async fn leave_guild(
        &self,
        connection: &ConnectionKey,
        guild_id: &str,
    ) -> StoreResult<bool> {
        let Some(user_id) = self.store.leave_guild(connection, guild_id).await? else {
            return Ok(false);
        };
        self.publish_update(guild_id, &user_id, PresenceStatus::Offline)
            .await;
        Ok(true)
    }

    pub async fn disconnected(&self, connection: &ConnectionKey) -> StoreResult<Option<Departure>> {
        let departure = self.store.disconnect(connection).await?;
        if let Some(departure) = &departure {
            self.metrics.sessions_closed(1);
            self.announce(departure).await;
        }
        Ok(departure)
    }

    pub async fn snapshot(&self, guild_id: &str) -> StoreResult<PresenceSync> {
        Ok(PresenceSync {
            guild_id: guild_id.to_owned(),
            user_ids: self.store.present_in(guild_id).await?,
        })
    }

    /// Removes the connections of every gateway whose lease ran out, and
    /// announces each real transition once. Returns how many connections
    /// were removed.
    pub async fn sweep(&self) -> StoreResult<usize> {
        let mut removed = 0;
        loop {
            let (departures, more) = self.store.expire(EXPIRE_BATCH).await?;
            removed += departures.len();
            self.metrics.sessions_closed(departures.len());
            for departure in &departures {
                self.announce(departure).await;
            }
            if !more {
                return Ok(removed);
            }
        }
    }

    /// Sweeps every `interval` until `shutdown`.
    pub async fn run_sweeper(self, interval: Duration, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => match self.sweep().await {
                    Ok(0) => {}
                    Ok(removed) => tracing::info!(removed, "expired connections of lapsed gateways"),
                    Err(err) => tracing::warn!(%err, "presence sweep failed"),
                },
                () = shutdown.cancelled() => return,
            }
        }
    }

    async fn announce(&self, departure: &Departure) {
        for guild_id in &departure.went_offline_in {
            self.publish_update(guild_id, &departure.user_id, PresenceStatus::Offline)
                .await;
        }
        if departure.user_offline
            && let Some(listener) = &self.offline
        {
            listener.user_offline(&departure.user_id, now_unix_ms());
        }
    }

    async fn publish_update(&self, guild_id: &str, user_id: &str, status: PresenceStatus) {
        self.metrics.transition(match status {
            PresenceStatus::Online => Transition::Online,
            _ => Transition::Offline,
        });
        let event = Event {
            audience: Some(Audience {
                target: Some(audience::Target::Guild(GuildAudience {
                    guild_id: guild_id.to_owned(),
                })),
            }),
            published_at_unix_ms: now_unix_ms(),
            event_id: String::new(),
            positions: Vec::new(),
            payload: Some(event::Payload::PresenceUpdate(PresenceUpdate {
                guild_id: guild_id.to_owned(),
                user_id: user_id.to_owned(),
                status: status.into(),
            })),
        };
        self.events.publish(event).await;
    }
}

pub(crate) fn now_unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "a failed call is a failed test")]

    use std::sync::Mutex;

    use async_trait::async_trait;

    use super::*;
    use crate::store::{MemoryPresenceStore, PresenceStoreConfig};

    const TTL: Duration = Duration::from_secs(30);

    #[derive(Default)]
    struct Recorder {
        updates: Mutex<Vec<(String, String, PresenceStatus)>>,
        offline: Mutex<Vec<String>>,
    }

    impl Recorder {
        fn take_updates(&self) -> Vec<(String, String, PresenceStatus)> {
            std::mem::take(&mut *self.updates.lock().unwrap())
        }

        fn take_offline(&self) -> Vec<String> {
            std::mem::take(&mut *self.offline.lock().unwrap())
        }
    }

    #[async_trait]
    impl EventSink for Recorder {
        async fn publish(&self, event: Event) {
            let Some(audience::Target::Guild(guild)) = event.audience.unwrap().target else {
                panic!("presence events go to a guild");
            };
            let Some(event::Payload::PresenceUpdate(update)) = event.payload else {
                panic!("only presence_update is published");
            };
            assert_eq!(update.guild_id, guild.guild_id, "audience is the guild");
            let status = PresenceStatus::try_from(update.status).unwrap();
            self.updates
                .lock()
                .unwrap()
                .push((update.guild_id, update.user_id, status));
        }
    }

    impl OfflineListener for Recorder {
        fn user_offline(&self, user_id: &str, _: i64) {
            self.offline.lock().unwrap().push(user_id.to_owned());
        }
    }

    fn service() -> (PresenceService, Arc<Recorder>) {
        let recorder = Arc::new(Recorder::default());
        let store = MemoryPresenceStore::new(PresenceStoreConfig {
            lease_ttl: TTL,
            ..PresenceStoreConfig::default()
        });
        let service = PresenceService::new(
            Arc::new(store),
            recorder.clone(),
            Some(recorder.clone() as Arc<dyn OfflineListener>),
        );
        (service, recorder)
    }

    fn conn(gateway: &str, connection: u64) -> ConnectionKey {
        ConnectionKey {
            gateway: GatewayId::new(gateway),
            connection,
        }
    }

    fn update(guild: &str, user: &str, status: PresenceStatus) -> (String, String, PresenceStatus) {
        (guild.to_owned(), user.to_owned(), status)
    }

    #[tokio::test(start_paused = true)]
    async fn only_real_transitions_are_published() {
        let (s, rec) = service();
        let (_, came_online, sync) = s.enter_guild(&conn("a", 1), "alice", "g1").await.unwrap();
        assert!(came_online);
        assert_eq!(sync.user_ids, ["alice"]);
        assert_eq!(
            rec.take_updates(),
            [update("g1", "alice", PresenceStatus::Online)]
        );

        // A second socket, on another gateway: no duplicate.
        s.enter_guild(&conn("b", 1), "alice", "g1").await.unwrap();
        assert_eq!(rec.take_updates(), []);
        s.disconnected(&conn("a", 1)).await.unwrap();
        assert_eq!(rec.take_updates(), [], "still online through b");
        assert_eq!(rec.take_offline(), Vec::<String>::new());

        s.disconnected(&conn("b", 1)).await.unwrap();
        assert_eq!(
            rec.take_updates(),
            [update("g1", "alice", PresenceStatus::Offline)]
        );
        assert_eq!(rec.take_offline(), ["alice"], "voice hears about it");
        assert!(s.disconnected(&conn("b", 1)).await.unwrap().is_none());
        assert_eq!(rec.take_updates(), [], "a repeated close is a no-op");
    }

    #[tokio::test(start_paused = true)]
    async fn leaving_a_guild_publishes_offline_there_only() {
        let (s, rec) = service();
        s.enter_guild(&conn("a", 1), "alice", "g1").await.unwrap();
        s.enter_guild(&conn("a", 1), "alice", "g2").await.unwrap();
        rec.take_updates();
        assert!(s.leave_guild(&conn("a", 1), "g1").await.unwrap());
        assert!(!s.leave_guild(&conn("a", 1), "g1").await.unwrap());
        assert_eq!(
            rec.take_updates(),
            [update("g1", "alice", PresenceStatus::Offline)]
        );
        assert_eq!(rec.take_offline(), Vec::<String>::new(), "still connected");
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_report_publishes_nothing() {
        let (s, rec) = service();
        s.connected(&conn("a", 1), "alice").await.unwrap();
        assert!(s.enter_guild(&conn("a", 1), "mallory", "g1").await.is_err());
        assert_eq!(rec.take_updates(), []);
        assert_eq!(
            s.snapshot("g1").await.unwrap().user_ids,
            Vec::<String>::new()
        );
    }

    /// Gateway `a` crashes; `b` lives on. Within the TTL nothing happens;
    /// after it, one offline update per real transition and nothing more.
    #[tokio::test(start_paused = true)]
    async fn a_crashed_gateway_goes_offline_within_the_ttl_without_duplicates() {
        let (s, rec) = service();
        for (n, user) in (1..).zip(["alice", "alice", "bob", "carol"]) {
            s.enter_guild(&conn("a", n), user, "g1").await.unwrap();
        }
        s.enter_guild(&conn("b", 1), "bob", "g1").await.unwrap();
        rec.take_updates();

        tokio::time::advance(TTL - Duration::from_secs(1)).await;
        s.heartbeat(&GatewayId::new("b")).await.unwrap();
        assert_eq!(s.sweep().await.unwrap(), 0, "a is alive for its TTL");
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(s.sweep().await.unwrap(), 4);

        let mut updates = rec.take_updates();
        updates.sort();
        assert_eq!(
            updates,
            [
                update("g1", "alice", PresenceStatus::Offline),
                update("g1", "carol", PresenceStatus::Offline),
            ],
            "bob is still on b"
        );
        let mut offline = rec.take_offline();
        offline.sort();
        assert_eq!(offline, ["alice", "carol"]);
        assert_eq!(s.sweep().await.unwrap(), 0);
        assert_eq!(rec.take_updates(), [], "nothing twice");
        assert_eq!(s.snapshot("g1").await.unwrap().user_ids, ["bob"]);
    }
}
