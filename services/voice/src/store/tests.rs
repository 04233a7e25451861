//! The roster store conformance suite: every change, run through
//! [`RosterStore::apply`], against [`MemoryRosterStore`] and against
//! [`RedisRosterStore`] on the Redis at `TEST_REDIS_URL` (each test under a
//! key prefix of its own), judged by the same event lines, so the two
//! cannot drift apart. Time is injected: every change gets its clock from
//! the test, so TTLs are crossed to the millisecond without sleeping.
//!
//! Then, on Redis only: two `VoiceService` replicas sharing one roster, a
//! replica replaced without losing anyone, replicas racing to seat one
//! user in two channels, and a Redis that goes away mid-flight.

#![allow(clippy::unwrap_used, reason = "a failed call is a failed test")]

use std::collections::BTreeSet;
use std::time::Duration;

use filament_proto::v1::{VoiceParticipantSync, VoiceStateFields};

use super::*;
use crate::livekit;
use filament_ids::{ChannelId, GuildId};

use crate::roster::tests::{channel_name, describe, guild, key, streams};
use crate::roster::{Limits, ObservedTrack};

const TTL: Duration = Duration::from_secs(300);
/// When every test starts, on the injected clock.
const T0: Clock = Clock {
    unix_ms: 1_750_000_000_000,
};

trait Harness {
    /// A store with the default limits.
    fn store(&self) -> &dyn RosterStore;
    /// Another store over the same state, with these limits.
    async fn bounded(&self, limits: Limits) -> Box<dyn RosterStore>;
}

/// Applies `change` at `clock`: its outcome, and its events as lines.
async fn run(
    store: &dyn RosterStore,
    change: Change<'_>,
    clock: Clock,
) -> (StoreResult<Outcome>, Vec<String>) {
    let mut out = Vec::new();
    let result = store.apply(&change, clock, &mut out).await;
    (result.map(|applied| applied.outcome), describe(&out))
}

async fn join(
    store: &dyn RosterStore,
    channel: &ChannelKey,
    user_id: &str,
    sources: &[Stream],
    clock: Clock,
) -> Vec<String> {
    let (outcome, events) = run(
        store,
        join_change(channel, user_id, &streams(sources)),
        clock,
    )
    .await;
    assert_eq!(outcome.unwrap(), Outcome::Joined);
    events
}

fn join_change<'a>(
    channel: &'a ChannelKey,
    user_id: &'a str,
    streams: &'a BTreeSet<Stream>,
) -> Change<'a> {
    Change::Join {
        channel,
        user_id,
        streams,
        can_subscribe: true,
    }
}

async fn sync(store: &dyn RosterStore, channel: &ChannelKey, clock: Clock) -> VoiceParticipantSync {
    match run(store, Change::Snapshot { channel }, clock)
        .await
        .0
        .unwrap()
    {
        Outcome::Snapshot(sync) => sync,
        other => panic!("a snapshot answered {other:?}"),
    }
}

async fn roster_of(store: &dyn RosterStore, channel: &ChannelKey, clock: Clock) -> Vec<String> {
    let mut users: Vec<String> = sync(store, channel, clock)
        .await
        .participants
        .into_iter()
        .map(|p| p.user_id)
        .collect();
    users.sort();
    users
}

async fn changed(store: &dyn RosterStore, change: Change<'_>, clock: Clock) -> (bool, Vec<String>) {
    match run(store, change, clock).await {
        (Ok(Outcome::Changed(changed)), events) => (changed, events),
        (other, _) => panic!("expected a change flag, got {other:?}"),
    }
}

async fn removed(store: &dyn RosterStore, change: Change<'_>, clock: Clock) -> (u32, Vec<String>) {
    match run(store, change, clock).await {
        (Ok(Outcome::Removed(n)), events) => (n, events),
        (other, _) => panic!("expected a removal count, got {other:?}"),
    }
}

async fn prune(store: &dyn RosterStore, clock: Clock) -> (usize, Vec<String>) {
    match run(store, Change::Prune, clock).await {
        (Ok(Outcome::Pruned(n)), events) => (n, events),
        (other, _) => panic!("expected a prune count, got {other:?}"),
    }
}

fn mute(muted: bool) -> VoiceStateFields {
    VoiceStateFields {
        is_muted: Some(muted),
        ..VoiceStateFields::default()
    }
}

// ---------------------------------------------------------------------------
// The suite.
// ---------------------------------------------------------------------------

async fn a_join_announces_the_participant_then_each_stream(h: &impl Harness) {
    let s = h.store();
    let all = [Stream::ScreenShare, Stream::Microphone, Stream::Camera];
    assert_eq!(
        join(s, &key(1), "alice", &all, T0).await,
        [
            "C1: join alice",
            "C1: publish alice microphone",
            "C1: publish alice camera",
            "C1: publish alice screen_share",
            "user alice: sync alice",
        ]
    );
    let snapshot = sync(s, &key(1), T0).await;
    let p = &snapshot.participants[0];
    let (g1, c1) = (key(1).guild_id, key(1).channel_id);
    assert_eq!(p.identity, format!("u.alice.{g1}.{c1}"));
    assert_eq!(p.joined_at_unix, T0.unix_ms / 1000);
    assert!(p.is_video_enabled && p.is_screen_share_enabled);
    assert!(!p.is_muted && !p.is_deafened && !p.is_speaking);
    assert_eq!(s.channels().await.unwrap(), [key(1)]);
}

async fn a_repeat_join_sends_only_what_changed(h: &impl Harness) {
    let s = h.store();
    let mic = [Stream::Microphone];
    join(s, &key(1), "alice", &mic, T0).await;
    assert_eq!(
        join(s, &key(1), "alice", &mic, T0).await,
        ["user alice: sync alice"],
        "nothing changed but the sync"
    );
    assert_eq!(
        join(s, &key(1), "alice", &[Stream::Camera], T0).await,
        [
            "C1: update alice video=true",
            "C1: unpublish alice microphone",
            "C1: publish alice camera",
            "user alice: sync alice",
        ]
    );
    assert_eq!(roster_of(s, &key(1), T0).await, ["alice"]);
}

async fn joining_elsewhere_leaves_the_old_channel_first(h: &impl Harness) {
    let s = h.store();
    join(s, &key(1), "alice", &[Stream::Microphone], T0).await;
    join(s, &key(1), "bob", &[], T0).await;
    assert_eq!(
        join(s, &key(2), "alice", &[], T0).await,
        [
            "C1: unpublish alice microphone",
            "C1: leave alice",
            "C2: join alice",
            "user alice: sync alice",
        ]
    );
    assert_eq!(roster_of(s, &key(1), T0).await, ["bob"]);
    assert_eq!(roster_of(s, &key(2), T0).await, ["alice"]);
    // The last one out closes the channel.
    join(s, &key(2), "bob", &[], T0).await;
    assert_eq!(s.channels().await.unwrap(), [key(2)]);
}

async fn leaving_unpublishes_then_leaves_and_is_idempotent(h: &impl Harness) {
    let s = h.store();
    join(
        s,
        &key(1),
        "alice",
        &[Stream::Microphone, Stream::Camera],
        T0,
    )
    .await;
    let leave = Change::Leave {
        channel: &key(1),
        user_id: "alice",
    };
    assert_eq!(
        changed(s, leave, T0).await,
        (
            true,
            vec![
                "C1: unpublish alice microphone".to_owned(),
                "C1: unpublish alice camera".to_owned(),
                "C1: leave alice".to_owned(),
            ]
        )
    );
    assert_eq!(changed(s, leave, T0).await, (false, vec![]), "twice");
    let stranger = Change::Leave {
        channel: &key(2),
        user_id: "bob",
    };
    assert_eq!(changed(s, stranger, T0).await, (false, vec![]));
    assert!(s.channels().await.unwrap().is_empty());
}

async fn updates_carry_only_changed_fields_and_renew(h: &impl Harness) {
    let s = h.store();
    join(s, &key(1), "alice", &[], T0).await;
    let fields = VoiceStateFields {
        is_muted: Some(true),
        is_deafened: Some(false),
        ..VoiceStateFields::default()
    };
    let update = |user_id, n| Change::Update {
        channel: &KEYS[n],
        user_id,
        fields: &fields,
    };
    let later = T0.after(TTL - Duration::from_secs(10));
    assert_eq!(
        changed(s, update("alice", 0), later).await,
        (true, vec!["C1: update alice muted=true".to_owned()])
    );
    assert_eq!(changed(s, update("alice", 0), later).await, (false, vec![]));
    assert_eq!(changed(s, update("bob", 0), later).await, (false, vec![]));
    assert_eq!(changed(s, update("alice", 1), later).await, (false, vec![]));
    // Renewed by the update: alive past the TTL of her join.
    let past_join_ttl = T0.after(TTL + Duration::from_secs(1));
    assert!(sync(s, &key(1), past_join_ttl).await.participants[0].is_muted);
}

/// `key(1)` and `key(2)` as statics, for changes that borrow them in a
/// closure.
static KEYS: std::sync::LazyLock<[ChannelKey; 2]> = std::sync::LazyLock::new(|| [key(1), key(2)]);

async fn bounds_refuse_a_join_and_change_nothing(h: &impl Harness) {
    let limits = Limits {
        max_channels: 2,
        max_participants_per_channel: 2,
        max_participants: 4,
    };
    let bounded = h.bounded(limits).await;
    let s = bounded.as_ref();
    for (user, n) in [("a", 1), ("b", 1), ("c", 2)] {
        join(s, &key(n), user, &[], T0).await;
    }
    let none = BTreeSet::new();
    let [c1, c2, c3] = [key(1), key(2), key(3)];
    let refused = |channel, user_id| join_change(channel, user_id, &none);
    let (full, events) = run(s, refused(&c1, "c"), T0).await;
    assert!(matches!(
        full,
        Err(StoreError::Refused(RosterError::ChannelFull))
    ));
    assert!(events.is_empty(), "a refusal emits nothing");
    assert_eq!(roster_of(s, &key(2), T0).await, ["c"], "c did not leave C2");
    let (many, _) = run(s, refused(&c3, "d"), T0).await;
    assert!(matches!(
        many,
        Err(StoreError::Refused(RosterError::TooManyChannels))
    ));
    // Moving the last participant of C2 frees that channel for C3.
    join(s, &key(3), "c", &[], T0).await;
    join(s, &key(3), "d", &[], T0).await;
    let (crowded, events) = run(s, refused(&c2, "e"), T0).await;
    assert!(matches!(
        crowded,
        Err(StoreError::Refused(RosterError::TooManyParticipants))
    ));
    assert!(events.is_empty());
    // The prune before a refused join still happened, and says so.
    let expired = T0.after(TTL + Duration::from_millis(1));
    let (_, events) = run(s, refused(&c1, "e"), expired).await;
    assert!(events.contains(&"C1: leave a".to_owned()), "{events:?}");
}

async fn participants_expire_after_exactly_one_ttl(h: &impl Harness) {
    let s = h.store();
    join(s, &key(1), "alice", &[Stream::Microphone], T0).await;
    join(s, &key(1), "bob", &[], T0).await;
    let speak = VoiceStateFields {
        is_speaking: Some(true),
        ..VoiceStateFields::default()
    };
    let renewed = T0.after(TTL - Duration::from_secs(10));
    let update = Change::Update {
        channel: &key(1),
        user_id: "bob",
        fields: &speak,
    };
    assert!(changed(s, update, renewed).await.0);
    assert_eq!(prune(s, T0.after(TTL)).await, (0, vec![]), "alive at TTL");
    let past = T0.after(TTL + Duration::from_millis(1));
    assert_eq!(
        prune(s, past).await,
        (
            1,
            vec![
                "C1: unpublish alice microphone".to_owned(),
                "C1: leave alice".to_owned()
            ]
        )
    );
    assert_eq!(roster_of(s, &key(1), past).await, ["bob"]);
    // A snapshot never shows someone expired: it prunes its channel first.
    let (outcome, events) = run(
        s,
        Change::Snapshot { channel: &key(1) },
        renewed.after(TTL * 2),
    )
    .await;
    assert!(matches!(outcome, Ok(Outcome::Snapshot(sync)) if sync.participants.is_empty()));
    assert_eq!(events, ["C1: leave bob"]);
    assert!(s.channels().await.unwrap().is_empty());
}

async fn removals_respect_guild_and_a_later_join(h: &impl Harness) {
    let s = h.store();
    join(s, &key(1), "alice", &[], T0).await;
    let remove = |guild_id, unless_joined_after_ms| Change::RemoveUser {
        user_id: "alice",
        guild_id,
        unless_joined_after_ms,
    };
    assert_eq!(
        removed(s, remove(Some(guild(2)), None), T0).await,
        (0, vec![])
    );
    let before_join = Some(T0.unix_ms - 1);
    assert_eq!(
        removed(s, remove(None, before_join), T0).await,
        (0, vec![]),
        "a stale close"
    );
    assert_eq!(
        removed(s, remove(None, Some(T0.unix_ms)), T0).await,
        (1, vec!["C1: leave alice".to_owned()])
    );
    assert_eq!(
        removed(s, remove(Some(guild(1)), None), T0).await,
        (0, vec![])
    );
    let nobody = Change::RemoveUser {
        user_id: "nobody",
        guild_id: None,
        unless_joined_after_ms: None,
    };
    assert_eq!(removed(s, nobody, T0).await, (0, vec![]));
}

async fn livekit_observations_are_idempotent_and_ordered(h: &impl Harness) {
    let s = h.store();
    join(s, &key(1), "alice", &[], T0).await;
    let observe = |user_id, observed| Change::Observe {
        channel: &KEYS[0],
        user_id,
        observed,
    };
    let joined = Observed::Joined {
        sid: "PA_1".to_owned(),
    };
    assert!(changed(s, observe("alice", &joined), T0).await.0);
    assert!(
        !changed(s, observe("mallory", &joined), T0).await.0,
        "unknown"
    );
    let fields = mute(true);
    let update = Change::Update {
        channel: &key(1),
        user_id: "alice",
        fields: &fields,
    };
    changed(s, update, T0).await;
    let mic = ObservedTrack {
        stream: Stream::Microphone,
        published: true,
        muted: false,
    };
    let published = Observed::Track(mic);
    assert_eq!(
        changed(s, observe("alice", &published), T0).await,
        (
            true,
            vec![
                "C1: update alice muted=false".to_owned(),
                "C1: publish alice microphone".to_owned()
            ]
        ),
        "a live audio track un-mutes"
    );
    assert_eq!(
        changed(s, observe("alice", &published), T0).await,
        (false, vec![])
    );
    let unpublished = Observed::Track(ObservedTrack {
        published: false,
        ..mic
    });
    assert_eq!(
        changed(s, observe("alice", &unpublished), T0).await,
        (true, vec!["C1: unpublish alice microphone".to_owned()])
    );
    let now = T0.unix_ms / 1000;
    let left = |sid: &str, at_unix| Observed::Left {
        sid: sid.to_owned(),
        at_unix,
    };
    let other_session = left("PA_0", now);
    let before_join = left("PA_1", now - 5);
    assert_eq!(
        changed(s, observe("alice", &other_session), T0).await,
        (false, vec![])
    );
    assert_eq!(
        changed(s, observe("alice", &before_join), T0).await,
        (false, vec![])
    );
    let real = left("PA_1", now);
    assert_eq!(
        changed(s, observe("alice", &real), T0).await,
        (true, vec!["C1: leave alice".to_owned()])
    );
    assert_eq!(
        changed(s, observe("alice", &real), T0).await,
        (false, vec![]),
        "dup"
    );
}

async fn reconcile_follows_livekit_but_spares_fresh_tokens(h: &impl Harness) {
    let s = h.store();
    // Real ULIDs: LiveKit identities embed them and are parsed back.
    let channel = ChannelKey {
        guild_id: GuildId::generate(),
        channel_id: ChannelId::generate(),
    };
    let [gone, muted, fresh] = [(); 3].map(|()| ulid::Ulid::generate().to_string());
    for user in [&gone, &muted] {
        join(s, &channel, user, &[Stream::Microphone], T0).await;
    }
    let fields = mute(true);
    let update = Change::Update {
        channel: &channel,
        user_id: &muted,
        fields: &fields,
    };
    changed(s, update, T0).await;
    let later = T0.after(Duration::from_secs(60));
    join(s, &channel, &fresh, &[], later).await;
    let stray = livekit::identity(&ulid::Ulid::generate().to_string(), &channel);
    let live = [
        LiveParticipant {
            identity: livekit::identity(&muted, &channel),
            live_microphone: true,
        },
        LiveParticipant {
            identity: stray.clone(),
            live_microphone: false,
        },
    ];
    let reconcile = Change::Reconcile {
        channel: &channel,
        live: &live,
        grace: Duration::from_secs(30),
    };
    let (outcome, events) = run(s, reconcile, later).await;
    assert_eq!(
        outcome.unwrap(),
        Outcome::Reconciled(Reconciled {
            left: 1,
            unmuted: 1,
            strays: vec![stray],
        })
    );
    let c = &channel.channel_id;
    assert_eq!(
        events,
        [
            format!("{c}: update {muted} muted=false"),
            format!("{c}: unpublish {gone} microphone"),
            format!("{c}: leave {gone}"),
        ]
    );
    let mut expected = vec![muted, fresh];
    expected.sort();
    assert_eq!(roster_of(s, &channel, later).await, expected);
}

async fn guild_participants_list_each_seat_with_its_grants(h: &impl Harness) {
    let s = h.store();
    let other_channel = ChannelKey {
        guild_id: guild(1),
        channel_id: key(9).channel_id,
    };
    join(s, &key(1), "alice", &[Stream::Camera], T0).await;
    let none = BTreeSet::new();
    let listener = Change::Join {
        channel: &other_channel,
        user_id: "bob",
        streams: &none,
        can_subscribe: false,
    };
    run(s, listener, T0).await.0.unwrap();
    join(s, &key(2), "carol", &[], T0).await;
    let holders = match run(s, Change::GuildParticipants { guild_id: guild(1) }, T0)
        .await
        .0
    {
        Ok(Outcome::Holders(holders)) => holders,
        other => panic!("{other:?}"),
    };
    let mut seen: Vec<_> = holders
        .into_iter()
        .map(|h| {
            (
                h.user_id,
                channel_name(&h.channel_id),
                h.can_subscribe,
                h.publish_sources,
            )
        })
        .collect();
    seen.sort();
    let camera = i32::from(Stream::Camera.to_proto());
    assert_eq!(
        seen,
        [
            ("alice".to_owned(), "C1".to_owned(), true, vec![camera]),
            ("bob".to_owned(), "C9".to_owned(), false, vec![]),
        ]
    );
    let mut channels = s.channels().await.unwrap();
    channels.sort();
    assert_eq!(channels, [key(1), other_channel, key(2)]);
}

/// More expire at once than one transaction takes: one prune takes them all.
async fn a_mass_expiry_is_pruned_whole(h: &impl Harness) {
    let s = h.store();
    for n in 0..300 {
        let channel = key(u8::try_from(n % 3).unwrap());
        join(s, &channel, &format!("u{n:03}"), &[], T0).await;
    }
    let (pruned, events) = prune(s, T0.after(TTL * 2)).await;
    assert_eq!(pruned, 300);
    assert_eq!(events.len(), 300, "one leave each");
    assert!(s.channels().await.unwrap().is_empty());
}

macro_rules! conformance {
    ($harness:ident, $($test:ident),+ $(,)?) => {
        $(
            #[tokio::test]
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
    ($harness:ident) => {
        conformance!(
            $harness,
            a_join_announces_the_participant_then_each_stream,
            a_repeat_join_sends_only_what_changed,
            joining_elsewhere_leaves_the_old_channel_first,
            leaving_unpublishes_then_leaves_and_is_idempotent,
            updates_carry_only_changed_fields_and_renew,
            bounds_refuse_a_join_and_change_nothing,
            participants_expire_after_exactly_one_ttl,
            removals_respect_guild_and_a_later_join,
            livekit_observations_are_idempotent_and_ordered,
            reconcile_follows_livekit_but_spares_fresh_tokens,
            guild_participants_list_each_seat_with_its_grants,
            a_mass_expiry_is_pruned_whole,
        );
    };
}

// ---------------------------------------------------------------------------
// In memory.
// ---------------------------------------------------------------------------

mod memory {
    use super::*;

    suite!(MemoryHarness);

    pub(super) struct MemoryHarness {
        store: MemoryRosterStore,
    }

    impl MemoryHarness {
        pub(super) async fn start() -> Option<Self> {
            Some(Self {
                store: MemoryRosterStore::new(Limits::default(), TTL),
            })
        }

        pub(super) async fn finish(self) {}
    }

    impl Harness for MemoryHarness {
        fn store(&self) -> &dyn RosterStore {
            &self.store
        }

        async fn bounded(&self, limits: Limits) -> Box<dyn RosterStore> {
            Box::new(MemoryRosterStore::new(limits, TTL))
        }
    }
}

// ---------------------------------------------------------------------------
// On the Redis at TEST_REDIS_URL.
// ---------------------------------------------------------------------------

mod redis {
    use std::io::Write as _;
    use std::sync::Once;

    use super::*;

    suite!(RedisHarness);

    pub(super) struct RedisHarness {
        store: RedisRosterStore,
        url: String,
        prefix: String,
    }

    /// A failed test never reaches `finish`; its keys go here instead.
    impl Drop for RedisHarness {
        fn drop(&mut self) {
            if std::thread::panicking() {
                forget_prefix(&self.url, &self.prefix);
            }
        }
    }

    impl RedisHarness {
        pub(super) async fn start() -> Option<Self> {
            let url = test_redis_url()?;
            let prefix = format!("filament-test:{}:voice:", ulid::Ulid::generate());
            let store = connect(&url, &prefix, Limits::default()).await;
            Some(Self { store, url, prefix })
        }

        /// Prunes everyone, then checks that nothing is left behind: the
        /// store cleans up after itself.
        pub(super) async fn finish(self) {
            prune(&self.store, T0.after(TTL * 1000)).await;
            assert_eq!(keys_under(&self.url, &self.prefix), Vec::<String>::new());
        }
    }

    impl Harness for RedisHarness {
        fn store(&self) -> &dyn RosterStore {
            &self.store
        }

        async fn bounded(&self, limits: Limits) -> Box<dyn RosterStore> {
            Box::new(connect(&self.url, &self.prefix, limits).await)
        }
    }

    pub(super) fn test_redis_url() -> Option<String> {
        let url = std::env::var("TEST_REDIS_URL").ok();
        if url.is_none() {
            static SAID: Once = Once::new();
            SAID.call_once(|| {
                let _ = writeln!(
                    std::io::stderr(),
                    "SKIPPED: TEST_REDIS_URL is unset; Redis voice roster conformance not run"
                );
            });
        }
        url
    }

    pub(super) async fn connect(url: &str, prefix: &str, limits: Limits) -> RedisRosterStore {
        let config = RedisRosterStoreConfig {
            limits,
            ttl: TTL,
            key_prefix: prefix.to_owned(),
            redis: filament_registry::RedisOptions::default(),
        };
        RedisRosterStore::connect(url, config).await.unwrap()
    }

    /// Test-only, and only to check one test's own prefix: KEYS has no
    /// place in the store itself.
    pub(super) fn keys_under(url: &str, prefix: &str) -> Vec<String> {
        let mut conn = ::redis::Client::open(url)
            .unwrap()
            .get_connection()
            .unwrap();
        ::redis::cmd("KEYS")
            .arg(format!("{prefix}*"))
            .query(&mut conn)
            .unwrap()
    }

    pub(super) fn forget_prefix(url: &str, prefix: &str) {
        let keys = keys_under(url, prefix);
        if let Ok(mut conn) = ::redis::Client::open(url).and_then(|c| c.get_connection())
            && !keys.is_empty()
        {
            let _ = ::redis::cmd("DEL").arg(keys).exec(&mut conn);
        }
    }
}

// ---------------------------------------------------------------------------
// Replicas of the service on one Redis.
// ---------------------------------------------------------------------------

mod replicas {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use super::redis::{connect, forget_prefix, keys_under, test_redis_url};
    use super::*;
    use crate::service::tests::{Recorder, join as seat_request, service_on};
    use crate::service::{Join, VoiceService};

    /// One Redis roster, and as many replicas over it as a test starts.
    struct Cluster {
        url: String,
        prefix: String,
    }

    impl Drop for Cluster {
        fn drop(&mut self) {
            forget_prefix(&self.url, &self.prefix);
        }
    }

    impl Cluster {
        fn new() -> Option<Self> {
            Some(Self {
                url: test_redis_url()?,
                prefix: format!("filament-test:{}:voice:", ulid::Ulid::generate()),
            })
        }

        /// A replica: its own store connection, its own event recorder.
        async fn replica(&self) -> (VoiceService, Arc<Recorder>) {
            let store = connect(&self.url, &self.prefix, Limits::default()).await;
            service_on(Arc::new(store), Arc::new(Clock::now))
        }
    }

    fn seat(channel: &ChannelKey, user: &str) -> Join {
        Join {
            channel: channel.clone(),
            ..seat_request(user)
        }
    }

    async fn users_in(service: &VoiceService, channel: &ChannelKey) -> Vec<String> {
        let mut users: Vec<String> = service
            .snapshot(channel)
            .await
            .unwrap()
            .participants
            .into_iter()
            .map(|p| p.user_id)
            .collect();
        users.sort();
        users
    }

    #[tokio::test]
    async fn two_replicas_see_one_roster() {
        let Some(cluster) = Cluster::new() else {
            return;
        };
        let (a, a_events) = cluster.replica().await;
        let (b, b_events) = cluster.replica().await;
        a.join(seat(&key(1), "alice")).await.unwrap();
        assert_eq!(a_events.kinds(), ["join", "publish", "sync"]);
        assert_eq!(users_in(&b, &key(1)).await, ["alice"], "joined via a");
        assert!(b.leave(&key(1), "alice").await.unwrap(), "left via b");
        assert_eq!(b_events.kinds(), ["unpublish", "leave"]);
        assert!(users_in(&a, &key(1)).await.is_empty());
        assert!(!a.leave(&key(1), "alice").await.unwrap(), "once only");
        assert!(a_events.kinds().is_empty());
    }

    #[tokio::test]
    async fn a_replaced_replica_loses_no_participant() {
        let Some(cluster) = Cluster::new() else {
            return;
        };
        let (old, _) = cluster.replica().await;
        for (channel, user) in [(1, "alice"), (1, "bob"), (2, "carol")] {
            old.join(seat(&key(channel), user)).await.unwrap();
        }
        drop(old);

        let (new, events) = cluster.replica().await;
        assert_eq!(users_in(&new, &key(1)).await, ["alice", "bob"]);
        assert_eq!(users_in(&new, &key(2)).await, ["carol"]);
        let mut channels = new.voice_channels().await.unwrap();
        channels.sort();
        assert_eq!(channels, [key(1), key(2)]);
        assert_eq!(new.guild_participants(guild(1)).await.unwrap().len(), 2);
        // What the old replica set up, the new one takes down.
        assert_eq!(new.remove_user(guild(2), "carol").await.unwrap(), 1);
        assert_eq!(events.kinds(), ["unpublish", "leave"]);
    }

    /// Both joins succeed; the user ends in one channel, and each channel's
    /// events tell the same story as its roster.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn racing_joins_leave_the_user_in_exactly_one_channel() {
        let Some(cluster) = Cluster::new() else {
            return;
        };
        let (a, a_events) = cluster.replica().await;
        let (b, b_events) = cluster.replica().await;
        let users: Vec<String> = (0..20).map(|n| format!("racer{n:02}")).collect();
        for user in &users {
            let (left, right) =
                tokio::join!(a.join(seat(&key(1), user)), b.join(seat(&key(2), user)));
            left.unwrap();
            right.unwrap();
        }
        let seated = [users_in(&a, &key(1)).await, users_in(&b, &key(2)).await];
        let mut net: BTreeMap<(String, String), i32> = BTreeMap::new();
        for line in describe(&a_events.take())
            .into_iter()
            .chain(describe(&b_events.take()))
        {
            let mut words = line.split_whitespace();
            let (Some(channel), Some(kind), Some(user)) =
                (words.next(), words.next(), words.next())
            else {
                continue;
            };
            let step = match kind {
                "join" => 1,
                "leave" => -1,
                _ => continue,
            };
            *net.entry((channel.trim_end_matches(':').to_owned(), user.to_owned()))
                .or_default() += step;
        }
        for user in &users {
            let here: Vec<usize> = (0..2).filter(|&n| seated[n].contains(user)).collect();
            assert_eq!(here.len(), 1, "{user} sits in {here:?}");
            for (n, channel) in ["C1", "C2"].into_iter().enumerate() {
                let expected = i32::from(here[0] == n);
                let got = net
                    .get(&(channel.to_owned(), user.clone()))
                    .copied()
                    .unwrap_or(0);
                assert_eq!(got, expected, "{user} in {channel}: joins minus leaves");
            }
        }
    }

    /// A Redis that goes away fails each change closed — an error, nothing
    /// published — and the store is back once Redis is.
    #[tokio::test]
    async fn a_lost_redis_fails_closed_and_recovers() {
        let Some(cluster) = Cluster::new() else {
            return;
        };
        let proxy = Proxy::start(&cluster.url).await;
        let store = connect(&proxy.url, &cluster.prefix, Limits::default()).await;
        let (service, events) = service_on(Arc::new(store), Arc::new(Clock::now));
        service.join(seat(&key(1), "alice")).await.unwrap();
        events.kinds();

        proxy.cut();
        assert!(service.join(seat(&key(1), "bob")).await.is_err());
        assert!(service.snapshot(&key(1)).await.is_err());
        assert!(service.leave(&key(1), "alice").await.is_err());
        assert!(
            events.kinds().is_empty(),
            "nothing committed, nothing published"
        );

        proxy.restore();
        // The breaker opened on those failures: the store answers again
        // once its cool-down let a probe through.
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        while service.snapshot(&key(1)).await.is_err() {
            assert!(tokio::time::Instant::now() < deadline, "never recovered");
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        assert_eq!(users_in(&service, &key(1)).await, ["alice"]);
        assert!(!keys_under(&cluster.url, &cluster.prefix).is_empty());
    }

    /// A TCP relay to Redis that can be cut and restored.
    struct Proxy {
        url: String,
        cut: Arc<std::sync::atomic::AtomicBool>,
        links: Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
    }

    impl Proxy {
        async fn start(redis_url: &str) -> Self {
            let (scheme, rest) = redis_url.split_once("://").unwrap();
            let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
            let (credentials, target) = match authority.rsplit_once('@') {
                Some((credentials, target)) => (format!("{credentials}@"), target.to_owned()),
                None => (String::new(), authority.to_owned()),
            };
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let proxy = Self {
                url: format!("{scheme}://{credentials}{addr}/{path}"),
                cut: Arc::default(),
                links: Arc::default(),
            };
            let (cut, links) = (Arc::clone(&proxy.cut), Arc::clone(&proxy.links));
            tokio::spawn(async move {
                while let Ok((mut inbound, _)) = listener.accept().await {
                    if cut.load(std::sync::atomic::Ordering::SeqCst) {
                        continue;
                    }
                    let target = target.clone();
                    let link = tokio::spawn(async move {
                        let mut outbound = tokio::net::TcpStream::connect(target).await?;
                        tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await
                    });
                    links.lock().unwrap().push(link.abort_handle());
                }
            });
            proxy
        }

        fn cut(&self) {
            self.cut.store(true, std::sync::atomic::Ordering::SeqCst);
            for link in self.links.lock().unwrap().drain(..) {
                link.abort();
            }
        }

        fn restore(&self) {
            self.cut.store(false, std::sync::atomic::Ordering::SeqCst);
        }
    }
}
