//! The registry conformance suite: the same tests, run against
//! [`MemoryRegistry`] on a paused clock and against [`RedisRegistry`] on a
//! real Redis (`TEST_REDIS_URL`), so the two cannot drift apart. A few tests
//! at the end check each implementation's own cleanup, which the trait
//! cannot see.
//!
//! Time-dependent tests never sleep to wait for something: they poll with a
//! deadline, and judge each answer by when it was asked and answered.

#![allow(clippy::unwrap_used, reason = "a failed call is a failed test")]

use std::time::Duration;

use tokio::time::Instant;

use crate::{
    GatewayId, LogConfig, MemoryRegistry, RedisRegistry, Registry, RegistryConfig, RegistryError,
    Replay,
};

/// What the suite needs from an implementation beyond the trait.
trait Harness {
    type Registry: Registry;

    fn registry(&self) -> &Self::Registry;

    /// The TTL the registry was configured with.
    fn ttl(&self) -> Duration;

    /// How far off a TTL edge may be observed: Redis keeps expiry times in
    /// whole milliseconds, the memory registry is exact.
    fn slack(&self) -> Duration;

    /// Lets `by` pass on the clock the registry reads: between two polls,
    /// or between two heartbeats.
    async fn pass(&self, by: Duration);

    /// Loses every holding and the epoch, as a Redis restarted empty does.
    async fn lose_state(&self);
}

/// How long a TTL test may take, beyond the TTL, before it fails.
const DEADLINE: Duration = Duration::from_secs(5);

fn gateway(name: &str) -> GatewayId {
    GatewayId::new(format!("gw-{name}"))
}

/// Every gateway the suite uses, so a harness can clean up after it.
const GATEWAYS: [&str; 4] = ["a", "b", "c", "d"];

/// Every session the suite revokes or asks about, likewise.
const SESSIONS: [&str; 4] = ["s1", "s2", "s3", "s4"];

fn ids<const N: usize>(ids: [&str; N]) -> Vec<String> {
    ids.into_iter().map(str::to_owned).collect()
}

fn gateways<const N: usize>(names: [&str; N]) -> Vec<GatewayId> {
    names.into_iter().map(gateway).collect()
}

async fn for_guild(registry: &impl Registry, guild_id: &str) -> Vec<GatewayId> {
    registry.gateways_for_guild(guild_id).await.unwrap()
}

async fn for_users<const N: usize>(
    registry: &impl Registry,
    user_ids: [&str; N],
) -> Vec<GatewayId> {
    registry
        .gateways_for_audience(&ids(user_ids), &[])
        .await
        .unwrap()
}

// ---------------------------------------------------------------------------
// The suite.
// ---------------------------------------------------------------------------

async fn holds_and_releases_guilds(h: &impl Harness) {
    let r = h.registry();
    let a = gateway("a");
    assert_eq!(for_guild(r, "g1").await, vec![], "nothing held yet");

    r.hold_guilds(&a, &ids(["g1", "g2"])).await.unwrap();
    assert_eq!(for_guild(r, "g1").await, gateways(["a"]));
    assert_eq!(for_guild(r, "g2").await, gateways(["a"]));
    assert_eq!(for_guild(r, "g3").await, vec![], "never held");
    assert_eq!(for_users(r, ["g1"]).await, vec![], "guilds are not users");

    r.release_guilds(&a, &ids(["g1"])).await.unwrap();
    assert_eq!(for_guild(r, "g1").await, vec![]);
    assert_eq!(
        for_guild(r, "g2").await,
        gateways(["a"]),
        "only g1 released"
    );
}

async fn holds_and_releases_users(h: &impl Harness) {
    let r = h.registry();
    let a = gateway("a");
    assert_eq!(for_users(r, ["u1"]).await, vec![], "nothing held yet");

    r.hold_users(&a, &ids(["u1", "u2"])).await.unwrap();
    assert_eq!(for_users(r, ["u1"]).await, gateways(["a"]));
    assert_eq!(for_users(r, ["u2"]).await, gateways(["a"]));
    assert_eq!(for_users(r, ["u3"]).await, vec![], "never held");
    assert_eq!(for_guild(r, "u1").await, vec![], "users are not guilds");

    r.release_users(&a, &ids(["u1"])).await.unwrap();
    assert_eq!(for_users(r, ["u1"]).await, vec![]);
    assert_eq!(
        for_users(r, ["u2"]).await,
        gateways(["a"]),
        "only u1 released"
    );
}

async fn audience_is_a_sorted_union_without_duplicates(h: &impl Harness) {
    let r = h.registry();
    // Registered out of order, so that a sorted answer is not an accident.
    r.hold_guilds(&gateway("c"), &ids(["g2"])).await.unwrap();
    r.hold_users(&gateway("b"), &ids(["u1", "u2"]))
        .await
        .unwrap();
    r.hold_guilds(&gateway("a"), &ids(["g1"])).await.unwrap();
    r.hold_users(&gateway("a"), &ids(["u1"])).await.unwrap();
    r.hold_guilds(&gateway("d"), &ids(["g9"])).await.unwrap();

    let audience = r
        .gateways_for_audience(&ids(["u1", "u2", "u1"]), &ids(["g1", "g2", "g1"]))
        .await
        .unwrap();
    assert_eq!(audience, gateways(["a", "b", "c"]), "d holds none of it");

    let only_guilds = r
        .gateways_for_audience(&[], &ids(["g2", "g1"]))
        .await
        .unwrap();
    assert_eq!(only_guilds, gateways(["a", "c"]));

    let nobody = r.gateways_for_audience(&[], &[]).await.unwrap();
    assert_eq!(nobody, vec![]);
}

async fn several_gateways_hold_one_guild(h: &impl Harness) {
    let r = h.registry();
    for name in ["c", "a", "b"] {
        r.hold_guilds(&gateway(name), &ids(["g1"])).await.unwrap();
    }
    assert_eq!(for_guild(r, "g1").await, gateways(["a", "b", "c"]));

    r.release_guilds(&gateway("b"), &ids(["g1"])).await.unwrap();
    assert_eq!(
        for_guild(r, "g1").await,
        gateways(["a", "c"]),
        "b's release is b's only"
    );
}

async fn holding_and_releasing_are_idempotent(h: &impl Harness) {
    let r = h.registry();
    let a = gateway("a");
    r.hold_guilds(&a, &ids(["g1", "g1"])).await.unwrap();
    r.hold_guilds(&a, &ids(["g1"])).await.unwrap();
    r.hold_users(&a, &ids(["u1"])).await.unwrap();
    r.hold_users(&a, &ids(["u1"])).await.unwrap();
    assert_eq!(for_guild(r, "g1").await, gateways(["a"]));
    assert_eq!(for_users(r, ["u1"]).await, gateways(["a"]));

    // A set, not a count: one release undoes any number of holds.
    r.release_guilds(&a, &ids(["g1"])).await.unwrap();
    r.release_users(&a, &ids(["u1"])).await.unwrap();
    assert_eq!(for_guild(r, "g1").await, vec![]);
    assert_eq!(for_users(r, ["u1"]).await, vec![]);

    r.release_guilds(&a, &ids(["g1"])).await.unwrap();
    r.release_users(&a, &ids(["u1"])).await.unwrap();
    r.release_guilds(&gateway("b"), &ids(["g1"])).await.unwrap();
    assert_eq!(for_guild(r, "g1").await, vec![]);

    // Empty batches are accepted, and a hold can follow a release.
    r.hold_guilds(&a, &[]).await.unwrap();
    r.release_users(&a, &[]).await.unwrap();
    r.hold_guilds(&a, &ids(["g1"])).await.unwrap();
    assert_eq!(for_guild(r, "g1").await, gateways(["a"]));
}

async fn deregister_removes_everything_the_gateway_held(h: &impl Harness) {
    let r = h.registry();
    let (a, b) = (gateway("a"), gateway("b"));
    r.hold_guilds(&a, &ids(["g1", "g2"])).await.unwrap();
    r.hold_users(&a, &ids(["u1"])).await.unwrap();
    r.hold_guilds(&b, &ids(["g1"])).await.unwrap();
    assert_eq!(for_guild(r, "g1").await, gateways(["a", "b"]));
    assert_eq!(for_users(r, ["u1"]).await, gateways(["a"]));

    r.deregister(&a).await.unwrap();
    assert_eq!(for_guild(r, "g1").await, gateways(["b"]));
    assert_eq!(for_guild(r, "g2").await, vec![]);
    assert_eq!(for_users(r, ["u1"]).await, vec![]);

    r.deregister(&a).await.unwrap();
    r.deregister(&gateway("d")).await.unwrap();
    assert_eq!(for_guild(r, "g1").await, gateways(["b"]), "b is untouched");

    // A heartbeat does not bring back what a deregistered gateway held, and
    // the gateway can start over.
    r.heartbeat(&a, None).await.unwrap();
    assert_eq!(for_guild(r, "g2").await, vec![]);
    r.hold_guilds(&a, &ids(["g2"])).await.unwrap();
    assert_eq!(for_guild(r, "g2").await, gateways(["a"]));
}

/// Producers wait for every live gateway's stream before they are ready:
/// the list must hold whoever heartbeats or holds, lose a deregistered
/// gateway at once and a silent one after its TTL.
async fn live_gateways_are_listed_until_they_leave_or_fall_silent(h: &impl Harness) {
    let r = h.registry();
    let (a, b) = (gateway("a"), gateway("b"));
    assert_eq!(r.live_gateways().await.unwrap(), vec![]);
    r.heartbeat(&a, None).await.unwrap();
    r.hold_guilds(&b, &[]).await.unwrap();
    assert_eq!(r.live_gateways().await.unwrap(), gateways(["a", "b"]));

    r.deregister(&a).await.unwrap();
    assert_eq!(r.live_gateways().await.unwrap(), gateways(["b"]));

    h.pass(h.ttl() + h.slack() + Duration::from_millis(1)).await;
    assert_eq!(r.live_gateways().await.unwrap(), vec![], "b fell silent");
}

/// `a` falls silent while `b` keeps heartbeating. `a` must be returned for
/// as long as its TTL runs, and must not be returned once it has run out.
async fn silent_gateway_expires_after_ttl(h: &impl Harness) {
    let r = h.registry();
    let (a, b) = (gateway("a"), gateway("b"));
    let (ttl, slack) = (h.ttl(), h.slack());
    r.hold_guilds(&b, &ids(["g1"])).await.unwrap();
    r.hold_users(&b, &ids(["u1"])).await.unwrap();

    let first_hold = Instant::now();
    r.hold_guilds(&a, &ids(["g1"])).await.unwrap();
    r.hold_users(&a, &ids(["u1"])).await.unwrap();
    let last_hold = Instant::now();
    // a's last heartbeat happened somewhere between these two instants.
    let surely_alive_until = first_hold + ttl - slack;
    let surely_dead_after = last_hold + ttl + slack;
    let deadline = surely_dead_after + DEADLINE;

    let both = gateways(["a", "b"]);
    assert_eq!(for_guild(r, "g1").await, both, "a is alive at first");
    assert_eq!(for_users(r, ["u1"]).await, both, "a is alive at first");

    let mut saw_alive = false;
    let mut saw_gone = false;
    loop {
        r.heartbeat(&b, None).await.unwrap();
        let asked = Instant::now();
        let guild = for_guild(r, "g1").await;
        let users = for_users(r, ["u1"]).await;
        let answered = Instant::now();

        assert_eq!(guild, users, "one liveness for guilds and users");
        if guild == both {
            assert!(!saw_gone, "a came back after it expired");
            saw_alive |= answered > first_hold + ttl / 2;
        } else {
            assert_eq!(guild, gateways(["b"]), "b heartbeats, so it stays");
            assert!(
                answered >= surely_alive_until,
                "a expired {:?} after its hold, before its TTL of {ttl:?}",
                answered - first_hold,
            );
            saw_gone = true;
        }
        if asked > surely_dead_after {
            assert!(
                saw_gone,
                "a is still returned {:?} after its TTL",
                asked - last_hold - ttl
            );
            break;
        }
        assert!(Instant::now() < deadline, "no answer after the deadline");
        h.pass(ttl / 30).await;
    }
    assert!(
        saw_alive,
        "never saw a alive past half its TTL: the test proves nothing"
    );
}

/// Which call keeps a gateway alive in [`keeps_entries_alive`].
#[derive(Debug, Clone, Copy)]
enum Refresh {
    Heartbeat,
    HoldGuilds,
    HoldUsers,
}

/// `a` refreshes its liveness every quarter of a TTL, for three TTLs: what
/// it held at the start must stay returned throughout.
async fn keeps_entries_alive(h: &impl Harness, refresh: Refresh) {
    let r = h.registry();
    let a = gateway("a");
    let (ttl, slack) = (h.ttl(), h.slack());
    r.hold_guilds(&a, &ids(["g1"])).await.unwrap();
    // Liveness was last set during this call: after the first instant,
    // before the second.
    let holding = Instant::now();
    r.hold_users(&a, &ids(["u1"])).await.unwrap();
    let held = Instant::now();
    let deadline = held + 3 * ttl + DEADLINE;

    let mut refreshed = holding;
    let mut checked_past_ttl = 0;
    while checked_past_ttl < 3 {
        h.pass(ttl / 4).await;
        let guild = for_guild(r, "g1").await;
        let users = for_users(r, ["u1"]).await;
        let answered = Instant::now();
        // Only a check within one TTL of the previous refresh proves
        // anything; a loaded machine may stall longer than that.
        if answered < refreshed + ttl - slack {
            assert_eq!(guild, gateways(["a"]), "{refresh:?} did not keep the guild");
            assert_eq!(users, gateways(["a"]), "{refresh:?} did not keep the user");
            if answered > held + ttl + slack {
                checked_past_ttl += 1;
            }
        }
        assert!(Instant::now() < deadline, "could not check in time");

        refreshed = Instant::now();
        match refresh {
            Refresh::Heartbeat => {
                r.heartbeat(&a, None).await.unwrap();
            }
            Refresh::HoldGuilds => r.hold_guilds(&a, &ids(["g-other"])).await.unwrap(),
            Refresh::HoldUsers => r.hold_users(&a, &ids(["u-other"])).await.unwrap(),
        }
    }
}

async fn heartbeat_keeps_entries_alive_past_ttl(h: &impl Harness) {
    keeps_entries_alive(h, Refresh::Heartbeat).await;
}

async fn hold_guilds_counts_as_heartbeat(h: &impl Harness) {
    keeps_entries_alive(h, Refresh::HoldGuilds).await;
}

async fn hold_users_counts_as_heartbeat(h: &impl Harness) {
    keeps_entries_alive(h, Refresh::HoldUsers).await;
}

/// A revoked session is listed, and only that one; revoking is idempotent,
/// and a revocation is not a holding: it routes nothing and survives the
/// deregistration of every gateway.
async fn revoked_sessions_are_listed(h: &impl Harness) {
    let r = h.registry();
    let long = DEADLINE * 2;
    assert!(!r.is_session_revoked("s1").await.unwrap(), "nothing yet");

    r.revoke_session("s1", long).await.unwrap();
    assert!(r.is_session_revoked("s1").await.unwrap());
    assert!(!r.is_session_revoked("s2").await.unwrap(), "only s1");
    r.revoke_session("s1", long).await.unwrap();
    assert!(r.is_session_revoked("s1").await.unwrap(), "idempotent");

    assert_eq!(for_users(r, ["s1"]).await, vec![], "routes nothing");
    r.hold_users(&gateway("a"), &ids(["u1"])).await.unwrap();
    for name in GATEWAYS {
        r.deregister(&gateway(name)).await.unwrap();
    }
    assert!(r.is_session_revoked("s1").await.unwrap(), "not a holding");
}

/// A revocation is reported for as long as its TTL runs, and not once it
/// has run out.
async fn session_revocation_lapses_after_its_ttl(h: &impl Harness) {
    let r = h.registry();
    let (ttl, slack) = (h.ttl(), h.slack());
    let before = Instant::now();
    r.revoke_session("s1", ttl).await.unwrap();
    let after = Instant::now();
    let surely_revoked_until = before + ttl - slack;
    let surely_lapsed_after = after + ttl + slack;
    let deadline = surely_lapsed_after + DEADLINE;

    let mut saw_revoked = false;
    loop {
        let asked = Instant::now();
        let revoked = r.is_session_revoked("s1").await.unwrap();
        let answered = Instant::now();
        if revoked {
            assert!(
                asked <= surely_lapsed_after,
                "still revoked {:?} after its TTL",
                asked - after - ttl
            );
            saw_revoked |= answered > before + ttl / 2;
        } else {
            assert!(
                answered >= surely_revoked_until,
                "lapsed {:?} after the revocation, before its TTL of {ttl:?}",
                answered - before,
            );
            break;
        }
        assert!(Instant::now() < deadline, "no answer after the deadline");
        h.pass(ttl / 30).await;
    }
    assert!(
        saw_revoked,
        "never saw s1 revoked past half its TTL: the test proves nothing"
    );
}

/// Revoking a session again counts its TTL from the second call.
async fn revoking_again_restarts_the_ttl(h: &impl Harness) {
    let r = h.registry();
    let (ttl, slack) = (h.ttl(), h.slack());
    r.revoke_session("s1", ttl).await.unwrap();
    h.pass(ttl / 2).await;
    let again = Instant::now();
    r.revoke_session("s1", ttl).await.unwrap();
    let again_done = Instant::now();
    let deadline = again_done + ttl + DEADLINE;

    let mut checked_past_first_ttl = false;
    loop {
        h.pass(ttl / 8).await;
        let asked = Instant::now();
        let revoked = r.is_session_revoked("s1").await.unwrap();
        let answered = Instant::now();
        if answered < again + ttl - slack {
            assert!(revoked, "the second revocation did not restart the TTL");
            checked_past_first_ttl |= asked > again_done + ttl / 2 + slack;
        } else if !revoked {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still revoked after the deadline"
        );
    }
    assert!(
        checked_past_first_ttl,
        "never checked past the first TTL: the test proves nothing"
    );
}

/// A registry that lost its state says so instead of answering "nobody",
/// until one TTL after a gateway noticed; the gateway, told a new epoch,
/// holds everything again; a gateway's first heartbeat starts no recovery.
async fn a_lost_state_is_recovered_not_reported_empty(h: &impl Harness) {
    let r = h.registry();
    let (a, b) = (gateway("a"), gateway("b"));
    let first = r.heartbeat(&a, None).await.unwrap();
    assert_eq!(r.heartbeat(&a, Some(&first)).await.unwrap(), first);
    r.hold_guilds(&a, &ids(["g1"])).await.unwrap();
    // A gateway joining later, on its first heartbeat, changes nothing.
    assert_eq!(r.heartbeat(&b, None).await.unwrap(), first);
    assert_eq!(for_guild(r, "g1").await, gateways(["a"]));

    h.lose_state().await;
    assert!(matches!(
        r.gateways_for_guild("g1").await,
        Err(RegistryError::Recovering)
    ));
    let second = r.heartbeat(&a, Some(&first)).await.unwrap();
    assert_ne!(second, first, "a lost state has a new epoch");
    r.hold_guilds(&a, &ids(["g1"])).await.unwrap();
    let noticed = Instant::now();
    // Other gateways may not have heard yet: still recovering.
    assert!(matches!(
        r.gateways_for_audience(&ids(["u1"]), &ids(["g1"])).await,
        Err(RegistryError::Recovering)
    ));
    let deadline = noticed + h.ttl() + DEADLINE;
    loop {
        r.heartbeat(&a, Some(&second)).await.unwrap();
        let asked = Instant::now();
        match r.gateways_for_guild("g1").await {
            Ok(holders) => {
                assert_eq!(holders, gateways(["a"]));
                assert!(
                    asked + h.slack() >= noticed + h.ttl(),
                    "recovered before a TTL had passed"
                );
                break;
            }
            Err(RegistryError::Recovering) => {}
            Err(err) => panic!("{err}"),
        }
        assert!(Instant::now() < deadline, "never recovered");
        h.pass(h.ttl() / 10).await;
    }
    // Heartbeats with the current epoch start no new recovery.
    assert_eq!(r.heartbeat(&b, Some(&second)).await.unwrap(), second);
    assert_eq!(for_guild(r, "g1").await, gateways(["a"]));
}

/// The replay logs the suite writes, and the event ids it appends.
const LOGS: [&str; 2] = ["g:L1", "u:L1"];
const LOGGED_EVENTS: [&str; 3] = ["e1", "e2", "e3"];

fn now_ms() -> u64 {
    u64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
}

fn offsets(replay: Replay) -> Vec<(u64, Vec<u8>)> {
    match replay {
        Replay::Covered(entries) => entries.into_iter().map(|e| (e.offset, e.event)).collect(),
        Replay::Gap => panic!("the log should cover the gap"),
    }
}

async fn logs_replay_exactly_the_gap(h: &impl Harness) {
    let r = h.registry();
    let head = r.log_head("g:L1").await.unwrap().unwrap();
    assert_eq!(head.offset, 0);
    let first = r
        .append_to_logs("e1", &ids(LOGS), b"one", now_ms())
        .await
        .unwrap();
    assert_eq!(
        first
            .iter()
            .map(|p| (p.scope.as_str(), p.offset))
            .collect::<Vec<_>>(),
        [("g:L1", 1), ("u:L1", 1)]
    );
    assert_eq!(first[0].epoch, head.epoch, "a head keeps its epoch");
    let second = r
        .append_to_logs("e2", &ids(["g:L1"]), b"two", now_ms())
        .await
        .unwrap();
    assert_eq!(second[0].offset, 2);
    // A repeat of an event id gets the first append's positions and adds
    // nothing.
    let again = r
        .append_to_logs("e1", &ids(LOGS), b"one", now_ms())
        .await
        .unwrap();
    assert_eq!(again, first);
    assert_eq!(
        offsets(r.replay(&head, 10).await.unwrap()),
        [(1, b"one".to_vec()), (2, b"two".to_vec())]
    );
    assert_eq!(
        offsets(r.replay(&first[0], 10).await.unwrap()),
        [(2, b"two".to_vec())]
    );
    assert!(offsets(r.replay(&second[0], 10).await.unwrap()).is_empty());
    // More than the limit, another epoch, a position past the head.
    assert_eq!(r.replay(&head, 1).await.unwrap(), Replay::Gap);
    let mut other_epoch = head.clone();
    other_epoch.epoch = "ffff".to_owned();
    assert_eq!(r.replay(&other_epoch, 10).await.unwrap(), Replay::Gap);
    let mut ahead = second[0].clone();
    ahead.offset = 3;
    assert_eq!(r.replay(&ahead, 10).await.unwrap(), Replay::Gap);
}

async fn a_lost_log_starts_a_new_epoch(h: &impl Harness) {
    let r = h.registry();
    let before = r
        .append_to_logs("e1", &ids(["g:L1"]), b"one", now_ms())
        .await
        .unwrap();
    h.lose_state().await;
    assert_eq!(r.replay(&before[0], 10).await.unwrap(), Replay::Gap);
    let after = r
        .append_to_logs("e2", &ids(["g:L1"]), b"two", now_ms())
        .await
        .unwrap();
    assert_eq!(after[0].offset, 1);
    assert_ne!(after[0].epoch, before[0].epoch);
}

async fn a_gap_marker_refuses_the_replays_it_spans(h: &impl Harness) {
    let r = h.registry();
    let head = r.log_head("g:L1").await.unwrap().unwrap();
    r.append_to_logs("e1", &ids(["g:L1"]), b"one", now_ms())
        .await
        .unwrap();
    let marker = r.append_to_logs("", &ids(["g:L1"]), &[], 0).await.unwrap();
    r.append_to_logs("e3", &ids(["g:L1"]), b"three", now_ms())
        .await
        .unwrap();
    assert_eq!(r.replay(&head, 10).await.unwrap(), Replay::Gap);
    assert_eq!(
        offsets(r.replay(&marker[0], 10).await.unwrap()),
        [(3, b"three".to_vec())]
    );
}

async fn entries_past_the_retention_are_trimmed_by_later_appends(h: &impl Harness) {
    let r = h.registry();
    let head = r.log_head("g:L1").await.unwrap().unwrap();
    let retention = u64::try_from(crate::LogConfig::default().retention.as_millis()).unwrap();
    let old = r
        .append_to_logs("e1", &ids(["g:L1"]), b"old", now_ms() - retention - 1000)
        .await
        .unwrap();
    let new = r
        .append_to_logs("e2", &ids(["g:L1"]), b"new", now_ms())
        .await
        .unwrap();
    // The old entry is gone: a replay from before it has a hole, one from
    // it is whole.
    assert_eq!(r.replay(&head, 10).await.unwrap(), Replay::Gap);
    assert_eq!(
        offsets(r.replay(&old[0], 10).await.unwrap()),
        [(new[0].offset, b"new".to_vec())]
    );
}

/// Runs each named suite test against one harness, as one test each with
/// the given test attribute.
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

/// The whole suite, for one harness.
macro_rules! suite {
    ($harness:ident, #[$test_attr:meta]) => {
        conformance!(
            $harness,
            #[$test_attr],
            holds_and_releases_guilds,
            holds_and_releases_users,
            audience_is_a_sorted_union_without_duplicates,
            several_gateways_hold_one_guild,
            holding_and_releasing_are_idempotent,
            deregister_removes_everything_the_gateway_held,
            silent_gateway_expires_after_ttl,
            heartbeat_keeps_entries_alive_past_ttl,
            hold_guilds_counts_as_heartbeat,
            hold_users_counts_as_heartbeat,
            revoked_sessions_are_listed,
            session_revocation_lapses_after_its_ttl,
            revoking_again_restarts_the_ttl,
            a_lost_state_is_recovered_not_reported_empty,
            live_gateways_are_listed_until_they_leave_or_fall_silent,
            logs_replay_exactly_the_gap,
            a_lost_log_starts_a_new_epoch,
            a_gap_marker_refuses_the_replays_it_spans,
            entries_past_the_retention_are_trimmed_by_later_appends,
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
        registry: MemoryRegistry,
    }

    impl MemoryHarness {
        const TTL: Duration = Duration::from_secs(30);

        /// Always starts; an `Option` to match the Redis harness.
        pub(super) async fn start() -> Option<Self> {
            Some(Self {
                registry: MemoryRegistry::new(RegistryConfig {
                    ttl: Self::TTL,
                    ..RegistryConfig::default()
                }),
            })
        }

        pub(super) async fn finish(self) {}
    }

    impl Harness for MemoryHarness {
        type Registry = MemoryRegistry;

        fn registry(&self) -> &MemoryRegistry {
            &self.registry
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

        async fn lose_state(&self) {
            self.registry.lose_state();
        }
    }

    #[tokio::test(start_paused = true)]
    async fn expires_exactly_after_ttl() {
        let harness = MemoryHarness::start().await.unwrap();
        let r = harness.registry();
        r.hold_guilds(&gateway("a"), &ids(["g1"])).await.unwrap();

        tokio::time::advance(MemoryHarness::TTL).await;
        assert_eq!(
            for_guild(r, "g1").await,
            gateways(["a"]),
            "alive for the whole TTL"
        );
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(for_guild(r, "g1").await, vec![], "dead right after it");
    }

    #[tokio::test(start_paused = true)]
    async fn lookup_forgets_what_an_expired_gateway_held() {
        let harness = MemoryHarness::start().await.unwrap();
        let r = harness.registry();
        r.hold_guilds(&gateway("a"), &ids(["g1", "g2"]))
            .await
            .unwrap();
        r.hold_users(&gateway("a"), &ids(["u1"])).await.unwrap();
        assert_eq!(r.remembered(), 4, "a, g1, g2 and u1");

        tokio::time::advance(MemoryHarness::TTL * 2).await;
        assert_eq!(for_guild(r, "g1").await, vec![]);
        assert_eq!(
            r.remembered(),
            0,
            "meeting a dead gateway forgets all of it"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn heartbeat_forgets_expired_gateways_nobody_asks_about() {
        let harness = MemoryHarness::start().await.unwrap();
        let r = harness.registry();
        r.hold_guilds(&gateway("a"), &ids(["g1"])).await.unwrap();
        r.hold_guilds(&gateway("b"), &ids(["g2"])).await.unwrap();

        tokio::time::advance(MemoryHarness::TTL / 2).await;
        r.heartbeat(&gateway("b"), None).await.unwrap();
        assert_eq!(r.remembered(), 4, "nobody has expired yet");
        tokio::time::advance(MemoryHarness::TTL).await;
        r.heartbeat(&gateway("b"), None).await.unwrap();
        assert_eq!(r.remembered(), 2, "only b and g2 are left");
        assert_eq!(for_guild(r, "g2").await, gateways(["b"]));
    }

    #[tokio::test(start_paused = true)]
    async fn session_revocation_lapses_exactly_after_its_ttl() {
        let harness = MemoryHarness::start().await.unwrap();
        let r = harness.registry();
        r.revoke_session("s1", MemoryHarness::TTL).await.unwrap();

        tokio::time::advance(MemoryHarness::TTL).await;
        assert!(
            r.is_session_revoked("s1").await.unwrap(),
            "revoked for the whole TTL"
        );
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(
            !r.is_session_revoked("s1").await.unwrap(),
            "lapsed right after it"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn lapsed_revocations_are_forgotten() {
        let harness = MemoryHarness::start().await.unwrap();
        let r = harness.registry();
        r.revoke_session("s1", MemoryHarness::TTL).await.unwrap();
        r.revoke_session("s2", MemoryHarness::TTL * 3)
            .await
            .unwrap();
        r.revoke_session("s1", MemoryHarness::TTL).await.unwrap();
        assert_eq!(r.remembered_revocations(), 2, "s1 once, s2");

        tokio::time::advance(MemoryHarness::TTL * 2).await;
        assert!(!r.is_session_revoked("s3").await.unwrap());
        assert_eq!(r.remembered_revocations(), 1, "s1 lapsed and is gone");
        assert!(r.is_session_revoked("s2").await.unwrap());
        tokio::time::advance(MemoryHarness::TTL * 2).await;
        r.revoke_session("s4", MemoryHarness::TTL).await.unwrap();
        assert_eq!(r.remembered_revocations(), 1, "only s4 is left");
    }

    #[tokio::test(start_paused = true)]
    async fn expired_gateway_comes_back_empty() {
        let harness = MemoryHarness::start().await.unwrap();
        let r = harness.registry();
        r.hold_guilds(&gateway("a"), &ids(["g1"])).await.unwrap();

        tokio::time::advance(MemoryHarness::TTL * 2).await;
        r.heartbeat(&gateway("a"), None).await.unwrap();
        assert_eq!(for_guild(r, "g1").await, vec![], "it must hold g1 again");
    }
}

// ---------------------------------------------------------------------------
// On the Redis at TEST_REDIS_URL, in real time.
// ---------------------------------------------------------------------------

mod redis {
    use std::io::Write as _;
    use std::sync::Once;

    use ::redis::AsyncCommands as _;
    use ::redis::aio::ConnectionManager;

    use super::*;

    suite!(RedisHarness, #[tokio::test]);

    pub(super) struct RedisHarness {
        registry: RedisRegistry,
        /// A connection of its own, to look at keys the trait does not show.
        inspect: ConnectionManager,
        client: ::redis::Client,
        prefix: String,
    }

    /// A failed test never reaches `finish`: delete its keys here instead,
    /// so a red run does not leave sets without a TTL in the shared Redis.
    impl Drop for RedisHarness {
        fn drop(&mut self) {
            if !std::thread::panicking() {
                return;
            }
            if let Ok(mut conn) = self.client.get_connection() {
                let keys = [self.suite_keys(), self.state_keys()].concat();
                let _ = ::redis::cmd("DEL").arg(keys).exec(&mut conn);
            }
        }
    }

    impl RedisHarness {
        /// Short, so the TTL tests take a fraction of a second; long enough
        /// that a busy test machine does not stall past it.
        const TTL: Duration = Duration::from_millis(300);

        /// A registry under a prefix of its own, so tests run in parallel
        /// on one Redis; `None`, after saying so, when no Redis is set.
        pub(super) async fn start() -> Option<Self> {
            let Ok(url) = std::env::var("TEST_REDIS_URL") else {
                say_skipped();
                return None;
            };
            let prefix = format!("filament-test:{}:", ulid::Ulid::generate());
            let config = RegistryConfig {
                ttl: Self::TTL,
                key_prefix: prefix.clone(),
                ..RegistryConfig::default()
            };
            let registry = RedisRegistry::connect(&url, config).await.unwrap();
            let client = ::redis::Client::open(url).unwrap();
            let mut inspect = ConnectionManager::new(client.clone()).await.unwrap();
            // As a deployment's gateways would have by now: without an
            // epoch, every lookup answers `Recovering`.
            let () = inspect
                .set(format!("{prefix}epoch"), "suite")
                .await
                .unwrap();
            Some(Self {
                registry,
                inspect,
                client,
                prefix,
            })
        }

        /// Deregisters every gateway the suite uses, which removes all the
        /// keys the registry wrote but the revocations, then checks that it
        /// did. Revocations only expire: each must have a TTL, and is then
        /// deleted so the shared Redis does not keep it for seconds.
        pub(super) async fn finish(mut self) {
            for name in GATEWAYS {
                self.registry.deregister(&gateway(name)).await.unwrap();
            }
            let () = self.inspect.del(self.state_keys()).await.unwrap();
            for key in self.revocation_keys() {
                let pttl = self.pttl(&key).await;
                assert!(pttl == -2 || pttl > 0, "{key} never expires");
                let () = self.inspect.del(&key).await.unwrap();
            }
            for key in self.suite_keys() {
                let exists: bool = self.inspect.exists(&key).await.unwrap();
                assert!(!exists, "{key} is left behind");
            }
        }

        /// Every key the suite can make the registry write.
        fn suite_keys(&self) -> Vec<String> {
            let p = &self.prefix;
            let guilds = ["g1", "g2", "g9", "g-other"].map(|id| format!("{p}guild:{id}"));
            let users = ["u1", "u2", "u-other"].map(|id| format!("{p}user:{id}"));
            let per_gateway = GATEWAYS.into_iter().flat_map(|name| {
                let gw = gateway(name);
                [
                    format!("{p}gw:{gw}"),
                    format!("{p}gw-guilds:{gw}"),
                    format!("{p}gw-users:{gw}"),
                ]
            });
            guilds
                .into_iter()
                .chain(users)
                .chain(per_gateway)
                .chain(self.revocation_keys())
                .collect()
        }

        /// The epoch and recovery markers, which outlive every gateway,
        /// and the replay logs, which expire only when idle.
        fn state_keys(&self) -> Vec<String> {
            let p = &self.prefix;
            let logs = LOGS
                .into_iter()
                .flat_map(|scope| [format!("{p}log:{scope}"), format!("{p}log-meta:{scope}")]);
            let logged = LOGGED_EVENTS
                .into_iter()
                .map(|id| format!("{p}logged:{id}"));
            [
                format!("{p}epoch"),
                format!("{p}recovering"),
                format!("{p}gateways"),
            ]
            .into_iter()
            .chain(logs)
            .chain(logged)
            .collect()
        }

        /// The revocation markers the suite can make the registry write.
        fn revocation_keys(&self) -> Vec<String> {
            SESSIONS
                .into_iter()
                .map(|id| format!("{}revoked-session:{id}", self.prefix))
                .collect()
        }

        /// Remaining time to live of a key in ms: -2 if it does not exist,
        /// -1 if it never expires.
        async fn pttl(&mut self, key: &str) -> i64 {
            self.inspect.pttl(key).await.unwrap()
        }

        async fn members(&mut self, key: &str) -> Vec<String> {
            let mut members: Vec<String> = self.inspect.smembers(key).await.unwrap();
            members.sort();
            members
        }
    }

    /// Says once per run that the Redis tests were skipped. Written to the
    /// stderr handle, not with `eprintln!`, which the test harness captures
    /// and shows only for failing tests: a skip must not pass unnoticed.
    fn say_skipped() {
        static SAID: Once = Once::new();
        SAID.call_once(|| {
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED: TEST_REDIS_URL is unset; Redis registry conformance not run"
            );
        });
    }

    impl Harness for RedisHarness {
        type Registry = RedisRegistry;

        fn registry(&self) -> &RedisRegistry {
            &self.registry
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

        async fn lose_state(&self) {
            let mut conn = self.inspect.clone();
            let () = conn
                .del([self.suite_keys(), self.state_keys()].concat())
                .await
                .unwrap();
        }
    }

    #[tokio::test]
    async fn keys_have_the_documented_layout_and_ttls() {
        let Some(mut harness) = RedisHarness::start().await else {
            return;
        };
        let p = harness.prefix.clone();
        let a = gateway("a");
        harness
            .registry
            .hold_guilds(&a, &ids(["g1"]))
            .await
            .unwrap();
        harness.registry.hold_users(&a, &ids(["u1"])).await.unwrap();

        assert_eq!(harness.members(&format!("{p}guild:g1")).await, vec!["gw-a"]);
        assert_eq!(harness.members(&format!("{p}user:u1")).await, vec!["gw-a"]);
        assert_eq!(
            harness.members(&format!("{p}gw-guilds:gw-a")).await,
            vec!["g1"]
        );
        assert_eq!(
            harness.members(&format!("{p}gw-users:gw-a")).await,
            vec!["u1"]
        );
        let ttl_ms = i64::try_from(RedisHarness::TTL.as_millis()).unwrap();
        for key in ["gw:gw-a", "gw-guilds:gw-a", "gw-users:gw-a"] {
            let pttl = harness.pttl(&format!("{p}{key}")).await;
            assert!(0 < pttl && pttl <= ttl_ms, "{key} expires in {pttl} ms");
        }
        harness.finish().await;
    }

    #[tokio::test]
    async fn a_log_and_its_markers_expire() {
        let Some(mut harness) = RedisHarness::start().await else {
            return;
        };
        let p = harness.prefix.clone();
        harness
            .registry
            .append_to_logs("e1", &ids(["g:L1"]), b"one", now_ms())
            .await
            .unwrap();
        let retention = i64::try_from(LogConfig::default().retention.as_millis()).unwrap();
        let marker = i64::try_from(LogConfig::default().marker_ttl.as_millis()).unwrap();
        for key in [format!("{p}log:g:L1"), format!("{p}log-meta:g:L1")] {
            let pttl = harness.pttl(&key).await;
            assert!(0 < pttl && pttl <= retention, "{key} expires in {pttl} ms");
        }
        let pttl = harness.pttl(&format!("{p}logged:e1")).await;
        assert!(
            0 < pttl && pttl <= marker,
            "the marker expires in {pttl} ms"
        );
        // The oldest entry, once past the retention, is deleted by the
        // next append.
        let retention_ms = u64::try_from(retention).unwrap();
        for (id, at) in [("e2", now_ms() - retention_ms - 1000), ("e3", now_ms())] {
            harness
                .registry
                .append_to_logs(id, &ids(["u:L1"]), b"x", at)
                .await
                .unwrap();
        }
        let len: usize = ::redis::cmd("XLEN")
            .arg(format!("{p}log:u:L1"))
            .query_async(&mut harness.inspect)
            .await
            .unwrap();
        assert_eq!(len, 1, "e2 was past the retention");
        harness.finish().await;
    }

    #[tokio::test]
    async fn a_revocation_is_one_key_with_its_ttl() {
        let Some(mut harness) = RedisHarness::start().await else {
            return;
        };
        let p = harness.prefix.clone();
        let ttl = Duration::from_secs(60);
        harness.registry.revoke_session("s1", ttl).await.unwrap();
        let pttl = harness.pttl(&format!("{p}revoked-session:s1")).await;
        let ttl_ms = i64::try_from(ttl.as_millis()).unwrap();
        assert!(0 < pttl && pttl <= ttl_ms, "expires in {pttl} ms");
        assert_eq!(harness.pttl(&format!("{p}revoked-session:s2")).await, -2);
        harness.finish().await;
    }

    #[tokio::test]
    async fn lookup_removes_an_expired_gateway_from_the_sets_it_reads() {
        let Some(mut harness) = RedisHarness::start().await else {
            return;
        };
        let p = harness.prefix.clone();
        let (a, b) = (gateway("a"), gateway("b"));
        harness
            .registry
            .hold_guilds(&a, &ids(["g1"]))
            .await
            .unwrap();
        harness
            .registry
            .hold_guilds(&b, &ids(["g1"]))
            .await
            .unwrap();

        // The key the registry sets on every heartbeat going away is what
        // expiry looks like; deleting it spares the wait.
        let () = harness.inspect.del(format!("{p}gw:gw-a")).await.unwrap();
        assert_eq!(
            harness.members(&format!("{p}guild:g1")).await,
            vec!["gw-a", "gw-b"],
            "nothing is cleaned before a lookup"
        );
        assert_eq!(for_guild(&harness.registry, "g1").await, gateways(["b"]));
        assert_eq!(harness.members(&format!("{p}guild:g1")).await, vec!["gw-b"]);
        harness.finish().await;
    }
}
