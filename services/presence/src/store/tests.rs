//! The presence store conformance suite: the same tests against
//! [`MemoryPresenceStore`] on a paused clock and [`RedisPresenceStore`] on
//! the Redis at `TEST_REDIS_URL` (each test under a key prefix of its own),
//! so the two cannot drift apart. Lease tests never sleep to wait for
//! something: they poll with a deadline and judge each answer by when it
//! was asked and answered.

#![allow(clippy::unwrap_used, reason = "a failed call is a failed test")]

use std::time::Duration;

use tokio::time::Instant;

use super::*;

trait Harness {
    type Store: PresenceStore;

    fn store(&self) -> &Self::Store;
    fn ttl(&self) -> Duration;
    /// How far off a TTL edge may be observed (Redis keeps whole ms).
    fn slack(&self) -> Duration;
    /// Lets `by` pass on the clock the store reads.
    async fn pass(&self, by: Duration);
}

/// The configuration every harness uses.
fn suite_config(ttl: Duration, key_prefix: String) -> PresenceStoreConfig {
    PresenceStoreConfig {
        lease_ttl: ttl,
        max_guilds_per_connection: 3,
        snapshot_limit: 3,
        key_prefix,
        redis: filament_registry::RedisOptions::default(),
    }
}

const DEADLINE: Duration = Duration::from_secs(5);

fn gateway(name: &str) -> GatewayId {
    GatewayId::new(format!("gw-{name}"))
}

fn conn(gateway_name: &str, number: u64) -> ConnectionKey {
    ConnectionKey {
        gateway: gateway(gateway_name),
        connection: number,
    }
}

fn ids<const N: usize>(ids: [&str; N]) -> Vec<String> {
    ids.into_iter().map(str::to_owned).collect()
}

fn departure<const N: usize>(user: &str, offline_in: [&str; N], user_offline: bool) -> Departure {
    Departure {
        user_id: user.to_owned(),
        went_offline_in: ids(offline_in),
        user_offline,
    }
}

/// Expires in batches until nothing is left; departures sorted by user.
async fn expire_all(store: &impl PresenceStore) -> Vec<Departure> {
    let mut all = Vec::new();
    loop {
        let (batch, more) = store.expire(100).await.unwrap();
        all.extend(batch);
        if !more {
            break;
        }
    }
    all.sort_by(|a, b| a.user_id.cmp(&b.user_id));
    all
}

// ---------------------------------------------------------------------------
// The suite.
// ---------------------------------------------------------------------------

async fn entering_reports_the_first_presence_and_a_snapshot(h: &impl Harness) {
    let s = h.store();
    assert_eq!(s.present_in("g1").await.unwrap(), Vec::<String>::new());

    let entered = s.enter_guild(&conn("a", 1), "u2", "g1").await.unwrap();
    assert!(entered.came_online);
    assert_eq!(entered.present, ids(["u2"]));

    let entered = s.enter_guild(&conn("a", 2), "u1", "g1").await.unwrap();
    assert!(entered.came_online);
    assert_eq!(
        entered.present,
        ids(["u1", "u2"]),
        "sorted, with the caller"
    );
    assert_eq!(s.present_in("g1").await.unwrap(), ids(["u1", "u2"]));
    assert_eq!(s.present_in("g2").await.unwrap(), Vec::<String>::new());
}

async fn a_second_connection_anywhere_is_not_a_transition(h: &impl Harness) {
    let s = h.store();
    assert!(
        s.enter_guild(&conn("a", 1), "u1", "g1")
            .await
            .unwrap()
            .came_online
    );
    let again = s.enter_guild(&conn("b", 1), "u1", "g1").await.unwrap();
    assert!(!again.came_online, "already online through gateway a");
    // The same connection number on another gateway is another connection.
    let departure_a = s.disconnect(&conn("a", 1)).await.unwrap();
    assert_eq!(departure_a, Some(departure("u1", [], false)));
    assert_eq!(s.present_in("g1").await.unwrap(), ids(["u1"]));
    let departure_b = s.disconnect(&conn("b", 1)).await.unwrap();
    assert_eq!(departure_b, Some(departure("u1", ["g1"], true)));
    assert_eq!(s.present_in("g1").await.unwrap(), Vec::<String>::new());
}

async fn entering_twice_is_idempotent(h: &impl Harness) {
    let s = h.store();
    let c = conn("a", 1);
    s.connect(&c, "u1").await.unwrap();
    s.connect(&c, "u1").await.unwrap();
    assert!(s.enter_guild(&c, "u1", "g1").await.unwrap().came_online);
    assert!(!s.enter_guild(&c, "u1", "g1").await.unwrap().came_online);
    // Counted once: one disconnect takes the user offline.
    assert_eq!(
        s.disconnect(&c).await.unwrap(),
        Some(departure("u1", ["g1"], true))
    );
}

async fn disconnect_reports_only_real_transitions(h: &impl Harness) {
    let s = h.store();
    let (c1, c2) = (conn("a", 1), conn("a", 2));
    s.enter_guild(&c1, "u1", "g1").await.unwrap();
    s.enter_guild(&c1, "u1", "g2").await.unwrap();
    s.enter_guild(&c2, "u1", "g2").await.unwrap();
    s.connect(&conn("a", 3), "u1").await.unwrap();

    assert_eq!(
        s.disconnect(&c1).await.unwrap(),
        Some(departure("u1", ["g1"], false)),
        "still present in g2 through c2, still connected through c3"
    );
    assert_eq!(
        s.disconnect(&c2).await.unwrap(),
        Some(departure("u1", ["g2"], false))
    );
    assert_eq!(
        s.disconnect(&conn("a", 3)).await.unwrap(),
        Some(departure("u1", [], true))
    );
}

async fn disconnecting_an_unknown_connection_is_a_no_op(h: &impl Harness) {
    let s = h.store();
    assert_eq!(s.disconnect(&conn("a", 9)).await.unwrap(), None);
    s.connect(&conn("a", 1), "u1").await.unwrap();
    assert!(s.disconnect(&conn("a", 1)).await.unwrap().is_some());
    assert_eq!(s.disconnect(&conn("a", 1)).await.unwrap(), None, "twice");
}

async fn leaving_a_guild_reports_the_last_presence(h: &impl Harness) {
    let s = h.store();
    let (c1, c2) = (conn("a", 1), conn("b", 1));
    s.enter_guild(&c1, "u1", "g1").await.unwrap();
    s.enter_guild(&c2, "u1", "g1").await.unwrap();
    assert_eq!(s.leave_guild(&c1, "g1").await.unwrap(), None, "c2 is there");
    assert_eq!(s.leave_guild(&c1, "g1").await.unwrap(), None, "idempotent");
    assert_eq!(
        s.leave_guild(&c2, "g1").await.unwrap(),
        Some("u1".to_owned())
    );
    assert_eq!(s.leave_guild(&conn("c", 1), "g1").await.unwrap(), None);
    assert_eq!(s.present_in("g1").await.unwrap(), Vec::<String>::new());
    // Still connected: leaving guilds is not disconnecting.
    assert_eq!(
        s.disconnect(&c1).await.unwrap(),
        Some(departure("u1", [], false))
    );
    assert_eq!(
        s.disconnect(&c2).await.unwrap(),
        Some(departure("u1", [], true))
    );
}

async fn a_connection_of_another_user_is_refused(h: &impl Harness) {
    let s = h.store();
    let c = conn("a", 1);
    s.enter_guild(&c, "u1", "g1").await.unwrap();
    assert!(matches!(
        s.connect(&c, "u2").await,
        Err(StoreError::ConnectionOwnedByAnotherUser)
    ));
    assert!(matches!(
        s.enter_guild(&c, "u2", "g2").await,
        Err(StoreError::ConnectionOwnedByAnotherUser)
    ));
    assert_eq!(s.present_in("g2").await.unwrap(), Vec::<String>::new());
    assert_eq!(
        s.disconnect(&c).await.unwrap(),
        Some(departure("u1", ["g1"], true)),
        "unchanged"
    );
}

async fn the_guild_cap_refuses_and_changes_nothing(h: &impl Harness) {
    let s = h.store();
    let c = conn("a", 1);
    for guild in ["g1", "g2", "g3"] {
        s.enter_guild(&c, "u1", guild).await.unwrap();
    }
    assert!(matches!(
        s.enter_guild(&c, "u1", "g4").await,
        Err(StoreError::TooManyGuilds { limit: 3 })
    ));
    assert_eq!(s.present_in("g4").await.unwrap(), Vec::<String>::new());
    // A guild already entered is no new guild.
    assert!(!s.enter_guild(&c, "u1", "g3").await.unwrap().came_online);
    assert_eq!(
        s.disconnect(&c).await.unwrap(),
        Some(departure("u1", ["g1", "g2", "g3"], true))
    );
}

async fn snapshots_are_capped(h: &impl Harness) {
    let s = h.store();
    for (n, user) in (1..).zip(["u1", "u2", "u3", "u4"]) {
        s.enter_guild(&conn("a", n), user, "g1").await.unwrap();
    }
    let present = s.present_in("g1").await.unwrap();
    assert_eq!(present.len(), 3, "{present:?}");
    let entered = s.enter_guild(&conn("a", 9), "u5", "g1").await.unwrap();
    assert_eq!(entered.present.len(), 3);
}

async fn leases_are_new_then_live_then_lapsed(h: &impl Harness) {
    let s = h.store();
    let a = gateway("a");
    assert!(!s.heartbeat(&a).await.unwrap().was_live, "new");
    assert!(s.heartbeat(&a).await.unwrap().was_live);
    assert!(s.connect(&conn("a", 1), "u1").await.unwrap().was_live);
    let fresh = s.connect(&conn("b", 1), "u1").await.unwrap();
    assert!(
        !fresh.was_live,
        "connect renews, and reports, b's lease too"
    );

    h.pass(h.ttl() + h.slack() + Duration::from_millis(5)).await;
    assert!(!s.heartbeat(&a).await.unwrap().was_live, "lapsed");
    assert!(s.heartbeat(&a).await.unwrap().was_live, "renewed");
}

/// `a` falls silent while `b` keeps heartbeating. Nothing of `a` may expire
/// before its TTL ran; everything of `a` must expire soon after, with one
/// departure per connection and transitions only where they are real.
async fn a_silent_gateway_expires_with_one_departure_per_connection(h: &impl Harness) {
    let s = h.store();
    let (ttl, slack) = (h.ttl(), h.slack());
    s.enter_guild(&conn("b", 1), "bob", "g1").await.unwrap();

    let first = Instant::now();
    s.enter_guild(&conn("a", 1), "alice", "g1").await.unwrap();
    s.enter_guild(&conn("a", 1), "alice", "g2").await.unwrap();
    s.enter_guild(&conn("a", 2), "alice", "g2").await.unwrap();
    s.enter_guild(&conn("a", 3), "bob", "g1").await.unwrap();
    let last = Instant::now();
    let surely_alive_until = first + ttl - slack;
    let surely_dead_after = last + ttl + slack;

    let mut departures = Vec::new();
    loop {
        s.heartbeat(&gateway("b")).await.unwrap();
        let asked = Instant::now();
        let (batch, _) = s.expire(100).await.unwrap();
        let answered = Instant::now();
        if !batch.is_empty() {
            assert!(
                answered >= surely_alive_until,
                "a expired {:?} after its renewal, before its TTL",
                answered - first
            );
            departures.extend(batch);
        }
        if asked > surely_dead_after {
            departures.extend(expire_all(s).await);
            break;
        }
        assert!(Instant::now() < surely_dead_after + DEADLINE, "deadline");
        h.pass(ttl / 30).await;
    }
    departures
        .sort_by(|x, y| (&x.user_id, &x.went_offline_in).cmp(&(&y.user_id, &y.went_offline_in)));
    // alice: two connections; the one that leaves last takes her offline in
    // each guild exactly once. bob: still on b, so no transition.
    let alice: Vec<_> = departures.iter().filter(|d| d.user_id == "alice").collect();
    assert_eq!(alice.len(), 2, "{departures:?}");
    let mut gone: Vec<_> = alice
        .iter()
        .flat_map(|d| d.went_offline_in.clone())
        .collect();
    gone.sort();
    assert_eq!(gone, ids(["g1", "g2"]), "one transition per guild");
    assert_eq!(alice.iter().filter(|d| d.user_offline).count(), 1);
    let bob: Vec<_> = departures.iter().filter(|d| d.user_id == "bob").collect();
    assert_eq!(*bob, [&departure("bob", [], false)]);

    assert_eq!(expire_all(s).await, vec![], "nothing expires twice");
    assert_eq!(s.present_in("g1").await.unwrap(), ids(["bob"]));
    assert_eq!(s.present_in("g2").await.unwrap(), Vec::<String>::new());
    assert!(s.heartbeat(&gateway("b")).await.unwrap().was_live);
    assert!(!s.heartbeat(&gateway("a")).await.unwrap().was_live);
}

async fn expiry_works_in_bounded_batches(h: &impl Harness) {
    let s = h.store();
    for n in 1..=5 {
        s.enter_guild(&conn("a", n), &format!("u{n}"), "g1")
            .await
            .unwrap();
    }
    h.pass(h.ttl() + h.slack() + Duration::from_millis(5)).await;
    let mut seen = Vec::new();
    let mut calls = 0;
    loop {
        let (batch, more) = s.expire(2).await.unwrap();
        assert!(batch.len() <= 2, "a batch is bounded");
        seen.extend(batch.into_iter().map(|d| d.user_id));
        calls += 1;
        assert!(calls < 10, "expiry does not converge");
        if !more {
            break;
        }
    }
    seen.sort();
    assert_eq!(seen, ids(["u1", "u2", "u3", "u4", "u5"]), "each once");
    assert_eq!(s.present_in("g1").await.unwrap(), Vec::<String>::new());
}

async fn renewing_keeps_a_gateway_past_its_ttl(h: &impl Harness) {
    let s = h.store();
    let (ttl, slack) = (h.ttl(), h.slack());
    s.enter_guild(&conn("a", 1), "u1", "g1").await.unwrap();
    let held = Instant::now();
    let mut renewed = held;
    let mut checked_past_ttl = 0;
    while checked_past_ttl < 3 {
        h.pass(ttl / 4).await;
        let (batch, _) = s.expire(100).await.unwrap();
        let answered = Instant::now();
        if answered < renewed + ttl - slack {
            assert_eq!(batch, vec![], "expired while renewed");
            if answered > held + ttl + slack {
                checked_past_ttl += 1;
            }
        }
        assert!(Instant::now() < held + 3 * ttl + DEADLINE, "deadline");
        renewed = Instant::now();
        s.heartbeat(&gateway("a")).await.unwrap();
    }
    assert_eq!(s.present_in("g1").await.unwrap(), ids(["u1"]));
}

macro_rules! conformance {
    ($harness:ident, #[$test_attr:meta], $($test:ident),+ $(,)?) => {
        $(
            #[$test_attr]
            async fn $test() {
                let Some(harness) = $harness::start().await else {
                    return;
                };
                super::$test(&harness).await;
                harness.finish().await;
            }
        )+
    };
}

macro_rules! suite {
    ($harness:ident, #[$test_attr:meta]) => {
        conformance!(
            $harness,
            #[$test_attr],
            entering_reports_the_first_presence_and_a_snapshot,
            a_second_connection_anywhere_is_not_a_transition,
            entering_twice_is_idempotent,
            disconnect_reports_only_real_transitions,
            disconnecting_an_unknown_connection_is_a_no_op,
            leaving_a_guild_reports_the_last_presence,
            a_connection_of_another_user_is_refused,
            the_guild_cap_refuses_and_changes_nothing,
            snapshots_are_capped,
            leases_are_new_then_live_then_lapsed,
            a_silent_gateway_expires_with_one_departure_per_connection,
            expiry_works_in_bounded_batches,
            renewing_keeps_a_gateway_past_its_ttl,
        );
    };
}

// ---------------------------------------------------------------------------
// In memory, on tokio's paused clock.
// ---------------------------------------------------------------------------

mod memory {
    use super::*;

    suite!(MemoryHarness, #[tokio::test(start_paused = true)]);

    pub(super) struct MemoryHarness {
        store: MemoryPresenceStore,
    }

    impl MemoryHarness {
        const TTL: Duration = Duration::from_secs(30);

        pub(super) async fn start() -> Option<Self> {
            Some(Self {
                store: MemoryPresenceStore::new(suite_config(Self::TTL, String::new())),
            })
        }

        pub(super) async fn finish(self) {}
    }

    impl Harness for MemoryHarness {
        type Store = MemoryPresenceStore;

        fn store(&self) -> &MemoryPresenceStore {
            &self.store
        }

        fn ttl(&self) -> Duration {
            Self::TTL
        }

        fn slack(&self) -> Duration {
            Duration::ZERO
        }

        async fn pass(&self, by: Duration) {
            tokio::time::advance(by).await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_lease_lives_exactly_one_ttl() {
        let harness = MemoryHarness::start().await.unwrap();
        let s = harness.store();
        s.enter_guild(&conn("a", 1), "u1", "g1").await.unwrap();
        tokio::time::advance(MemoryHarness::TTL).await;
        assert_eq!(s.expire(10).await.unwrap(), (vec![], false), "alive at TTL");
        tokio::time::advance(Duration::from_millis(1)).await;
        let (gone, more) = s.expire(10).await.unwrap();
        assert_eq!(gone, vec![departure("u1", ["g1"], true)]);
        assert!(!more);
    }
}

// ---------------------------------------------------------------------------
// On the Redis at TEST_REDIS_URL, in real time.
// ---------------------------------------------------------------------------

mod redis {
    use std::io::Write as _;
    use std::sync::Once;

    use ::redis::AsyncCommands as _;

    use super::*;

    suite!(RedisHarness, #[tokio::test]);

    pub(super) struct RedisHarness {
        store: RedisPresenceStore,
        client: ::redis::Client,
        prefix: String,
    }

    /// A failed test never reaches `finish`; its keys go here instead.
    impl Drop for RedisHarness {
        fn drop(&mut self) {
            if std::thread::panicking()
                && let Ok(mut conn) = self.client.get_connection()
            {
                let _ = ::redis::cmd("DEL").arg(self.suite_keys()).exec(&mut conn);
            }
        }
    }

    impl RedisHarness {
        /// Short, so lease tests take a fraction of a second; long enough
        /// that a busy machine does not stall past it.
        const TTL: Duration = Duration::from_millis(300);

        pub(super) async fn start() -> Option<Self> {
            let Ok(url) = std::env::var("TEST_REDIS_URL") else {
                say_skipped();
                return None;
            };
            let prefix = format!("filament-test:{}:presence:", ulid::Ulid::generate());
            let store = RedisPresenceStore::connect(&url, suite_config(Self::TTL, prefix.clone()))
                .await
                .unwrap();
            Some(Self {
                store,
                client: ::redis::Client::open(url).unwrap(),
                prefix,
            })
        }

        /// Lets every lease lapse and expires everything, then checks that
        /// no key is left behind: the store cleans up after itself.
        pub(super) async fn finish(self) {
            tokio::time::sleep(Self::TTL + Duration::from_millis(20)).await;
            expire_all(&self.store).await;
            let mut conn = self
                .client
                .get_multiplexed_async_connection()
                .await
                .unwrap();
            for key in self.suite_keys() {
                let exists: bool = conn.exists(&key).await.unwrap();
                assert!(!exists, "{key} is left behind");
            }
        }

        /// Every key the suite can make the store write.
        fn suite_keys(&self) -> Vec<String> {
            let p = &self.prefix;
            let gateways = ["gw-a", "gw-b", "gw-c"];
            let users = [
                "u1", "u2", "u3", "u4", "u5", "alice", "bob", "carol", "mallory",
            ];
            let guilds = ["g1", "g2", "g3", "g4"];
            let mut keys = vec![format!("{p}leases")];
            for gw in gateways {
                keys.push(format!("{p}gw-conns:{gw}"));
                keys.extend((0..=9).map(|n| format!("{p}conn:{gw}:{n}")));
            }
            keys.extend(users.map(|u| format!("{p}user-conns:{u}")));
            keys.extend(guilds.map(|g| format!("{p}guild:{g}")));
            keys
        }
    }

    fn say_skipped() {
        static SAID: Once = Once::new();
        SAID.call_once(|| {
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED: TEST_REDIS_URL is unset; Redis presence store conformance not run"
            );
        });
    }

    impl Harness for RedisHarness {
        type Store = RedisPresenceStore;

        fn store(&self) -> &RedisPresenceStore {
            &self.store
        }

        fn ttl(&self) -> Duration {
            Self::TTL
        }

        fn slack(&self) -> Duration {
            Duration::from_millis(5)
        }

        async fn pass(&self, by: Duration) {
            tokio::time::sleep(by).await;
        }
    }
}
