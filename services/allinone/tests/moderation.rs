//! Members, moderation, the directory, the audit log and IP bans, end to end:
//! REST through the public origin, events through real gateways.
//!
//! The teardown tests are the security property of this area: once a kick
//! or ban returns, the removed user's sockets — on any gateway — receive
//! nothing more from the guild. Absence is proved with sentinels (a later
//! event the socket must see next), never by sleeping.
//!
//! Client addresses: stacks that need several come up trusting loopback as
//! a proxy, and requests say where they come from in `X-Forwarded-For`.

mod support;

use reqwest::Method;
use serde_json::{Value, json};
use support::{Backends, Socket, TestStack, User};

// --- helpers -------------------------------------------------------------------

async fn get(t: &TestStack, path: &str, user: &User) -> (u16, Value) {
    t.call_from(Method::GET, path, Some(&user.token), None, None)
        .await
}

async fn post(t: &TestStack, path: &str, user: &User, body: Value) -> (u16, Value) {
    t.call_from(Method::POST, path, Some(&user.token), Some(body), None)
        .await
}

async fn patch(t: &TestStack, path: &str, user: &User, body: Value) -> (u16, Value) {
    t.call_from(Method::PATCH, path, Some(&user.token), Some(body), None)
        .await
}

async fn create_guild(t: &TestStack, owner: &User, name: &str, visibility: &str) -> Value {
    let body = json!({"name": name, "visibility": visibility});
    let (status, guild) = post(t, "/guilds", owner, body).await;
    assert_eq!(status, 200, "{guild}");
    guild
}

async fn join(t: &TestStack, user: &User, guild: &str, from: Option<&str>) -> (u16, Value) {
    let path = format!("/guilds/{guild}/join");
    t.call_from(Method::POST, &path, Some(&user.token), None, from)
        .await
}

async fn set_role(t: &TestStack, actor: &User, guild: &str, target: &User, role: &str) -> u16 {
    let path = format!("/guilds/{guild}/members/{}", target.id);
    patch(t, &path, actor, json!({ "role": role })).await.0
}

async fn send_message(t: &TestStack, user: &User, guild: &str, channel: &str) -> Value {
    let path = format!("/guilds/{guild}/channels/{channel}/messages");
    let (status, message) = post(t, &path, user, json!({"content": "hello"})).await;
    assert_eq!(status, 200, "{message}");
    message
}

/// The caller's legacy role in the guild, from `permissions/self`.
async fn legacy_role(t: &TestStack, user: &User, guild: &str, channel: &str) -> Value {
    let path = format!("/guilds/{guild}/channels/{channel}/permissions/self");
    let (status, body) = get(t, &path, user).await;
    assert_eq!(status, 200, "{body}");
    body["role"].clone()
}

async fn audit_actions(t: &TestStack, owner: &User, guild: &str, query: &str) -> Vec<Value> {
    let (status, body) = get(t, &format!("/guilds/{guild}/audit?{query}"), owner).await;
    assert_eq!(status, 200, "{body}");
    body["events"].as_array().expect("events").clone()
}

/// The next event that is not presence or voice chatter, which other areas
/// send on subscribes and disconnects.
async fn next_event(socket: &mut Socket) -> Value {
    loop {
        let event = socket.next_event().await;
        let t = event["t"].as_str().unwrap_or_default();
        if !t.starts_with("presence_") && !t.starts_with("voice_") {
            return event;
        }
    }
}

/// Every frame up to and including the first that `is_last` accepts.
async fn events_until(socket: &mut Socket, is_last: impl Fn(&Value) -> bool) -> Vec<Value> {
    let mut seen = Vec::new();
    loop {
        let event = socket.next_event().await;
        let done = is_last(&event);
        seen.push(event);
        if done {
            return seen;
        }
    }
}

async fn subscribed(socket: &mut Socket, guild: &str, channel: &str) {
    socket.subscribe(guild, channel).await;
    let ack = next_event(socket).await;
    assert_eq!(ack["t"], "subscribed", "{ack}");
    assert_eq!(ack["d"], json!({"guild_id": guild, "channel_id": channel}));
}

fn is_message(event: &Value, message: &Value) -> bool {
    event["t"] == "message_create" && event["d"]["message_id"] == message["message_id"]
}

/// Nothing in `events` came from `guild`.
fn none_from(events: &[Value], guild: &str) {
    for event in events {
        assert_ne!(
            event["d"]["guild_id"], guild,
            "leaked after teardown: {event}"
        );
    }
}

// --- kick and ban teardown ---------------------------------------------------------

/// V is present in G on both gateways, and has a third socket that is only
/// in V's own guild H. A bans V: every V socket hears
/// `workspace_member_remove` (reason `ban`), the two present in G also the
/// ban, and afterwards nothing from G reaches any of them — proved by a
/// message in G that A receives, then a sentinel in H that V's sockets see
/// next. V is then out everywhere REST looks.
async fn ban_tears_down_every_socket_of_the_banned_user(backends: Backends) {
    let Some(t) = TestStack::start(backends, 2).await else {
        return;
    };
    let (a, v) = (t.user("owner").await, t.user("victim").await);
    let (g, c) = t.guild_with_channel(&a, "public").await;
    t.join(&v, &g).await;
    let (h, d) = t.guild_with_channel(&v, "private").await;

    let mut sa = t.connect(0, &a).await;
    let mut sv0 = t.connect(0, &v).await;
    let mut sv1 = t.connect(1, &v).await;
    let mut sv_elsewhere = t.connect(1, &v).await;
    subscribed(&mut sa, &g, &c).await;
    for socket in [&mut sv0, &mut sv1] {
        subscribed(socket, &g, &c).await;
        subscribed(socket, &h, &d).await;
    }
    subscribed(&mut sv_elsewhere, &h, &d).await;

    let (status, body) = post(
        &t,
        &format!("/guilds/{g}/members/{}/ban", v.id),
        &a,
        json!(null),
    )
    .await;
    assert_eq!((status, body), (200, json!({"accepted": true})));

    let ban = json!({"guild_id": g, "user_id": v.id, "actor_user_id": a.id});
    let remove = json!({"guild_id": g, "user_id": v.id, "reason": "ban", "actor_user_id": a.id});
    for socket in [&mut sa, &mut sv0, &mut sv1] {
        let first = next_event(socket).await;
        assert_eq!(first["t"], "workspace_member_ban", "{first}");
        assert!(first["d"]["banned_at_unix"].as_i64() > Some(0));
        assert_eq!(without(&first["d"], "banned_at_unix"), ban);
        let second = next_event(socket).await;
        assert_eq!(second["t"], "workspace_member_remove", "{second}");
        assert_eq!(without(&second["d"], "removed_at_unix"), remove);
    }
    let only = next_event(&mut sv_elsewhere).await;
    assert_eq!(only["t"], "workspace_member_remove", "{only}");
    assert_eq!(only["d"]["reason"], "ban");

    // The guild goes on; the banned user's sockets hear none of it.
    let after = send_message(&t, &a, &g, &c).await;
    assert!(is_message(&next_event(&mut sa).await, &after));
    let sentinel = send_message(&t, &v, &h, &d).await;
    for socket in [&mut sv0, &mut sv1, &mut sv_elsewhere] {
        let seen = events_until(socket, |e| is_message(e, &sentinel)).await;
        none_from(&seen, &g);
    }
    // A subscribe to the guild is now ignored.
    sv1.subscribe(&g, &c).await;
    subscribed(&mut sv1, &h, &d).await;

    // REST agrees: not listed, not a member, cannot come back.
    let (_, guilds) = get(&t, "/guilds", &v).await;
    let listed: Vec<_> = guilds["guilds"]
        .as_array()
        .expect("guilds")
        .iter()
        .map(|g| g["guild_id"].clone())
        .collect();
    assert_eq!(listed, [json!(h)]);
    assert_eq!(get(&t, &format!("/guilds/{g}/channels"), &v).await.0, 403);
    assert_eq!(get(&t, &format!("/guilds/{g}/members"), &v).await.0, 403);
    assert_eq!(
        join(&t, &v, &g, None).await,
        (403, json!({"error": "directory_join_user_banned"}))
    );
    let (status, _) = post(
        &t,
        &format!("/guilds/{g}/members/{}", v.id),
        &a,
        json!(null),
    )
    .await;
    assert_eq!(status, 403, "a banned user cannot be added back");
    let (_, members) = get(&t, &format!("/guilds/{g}/members"), &a).await;
    assert_eq!(members["members"].as_array().expect("members").len(), 1);

    let entries = audit_actions(&t, &a, &g, "action_prefix=member.").await;
    assert_eq!(entries[0]["action"], "member.ban");
    assert_eq!(entries[0]["target_user_id"], v.id.as_str());
    assert_eq!(entries[0]["actor_user_id"], a.id.as_str());

    t.stack.stop().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_ban_tears_down_every_socket_of_the_banned_user() {
    ban_tears_down_every_socket_of_the_banned_user(Backends::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_redis_ban_tears_down_every_socket_of_the_banned_user() {
    ban_tears_down_every_socket_of_the_banned_user(Backends::External).await;
}

/// The same teardown for a kick, which is not a ban: the user can rejoin.
async fn kick_tears_down_and_allows_a_rejoin(backends: Backends) {
    let Some(t) = TestStack::start(backends, 2).await else {
        return;
    };
    let (a, m, v, x) = (
        t.user("owner").await,
        t.user("member").await,
        t.user("victim").await,
        t.user("outsider").await,
    );
    let (g, c) = t.guild_with_channel(&a, "public").await;
    t.join(&m, &g).await;
    t.join(&v, &g).await;
    let (h, d) = t.guild_with_channel(&v, "private").await;
    let (xg, xc) = t.guild_with_channel(&x, "private").await;

    let mut sm = t.connect(0, &m).await;
    let mut sv = t.connect(1, &v).await;
    let mut sx = t.connect(1, &x).await;
    subscribed(&mut sm, &g, &c).await;
    subscribed(&mut sv, &g, &c).await;
    subscribed(&mut sv, &h, &d).await;
    subscribed(&mut sx, &xg, &xc).await;

    let (status, _) = post(
        &t,
        &format!("/guilds/{g}/members/{}/kick", v.id),
        &a,
        json!(null),
    )
    .await;
    assert_eq!(status, 200);
    for socket in [&mut sm, &mut sv] {
        let event = next_event(socket).await;
        assert_eq!(event["t"], "workspace_member_remove", "{event}");
        assert_eq!(event["d"]["user_id"], v.id.as_str());
        assert_eq!(event["d"]["reason"], "kick");
        assert_eq!(event["d"]["actor_user_id"], a.id.as_str());
    }
    let outside = send_message(&t, &x, &xg, &xc).await;
    assert!(
        is_message(&next_event(&mut sx).await, &outside),
        "outsiders hear nothing"
    );
    let after = send_message(&t, &a, &g, &c).await;
    assert!(is_message(&next_event(&mut sm).await, &after));
    let sentinel = send_message(&t, &v, &h, &d).await;
    none_from(
        &events_until(&mut sv, |e| is_message(e, &sentinel)).await,
        &g,
    );

    assert_eq!(get(&t, &format!("/guilds/{g}/channels"), &v).await.0, 403);
    // Kicking again: no longer a member.
    let (status, body) = post(
        &t,
        &format!("/guilds/{g}/members/{}/kick", v.id),
        &a,
        json!(null),
    )
    .await;
    assert_eq!((status, body), (404, json!({"error": "not_found"})));
    // Not banned: a kicked user may come back.
    t.join(&v, &g).await;
    subscribed(&mut sv, &g, &c).await;
    let back = send_message(&t, &a, &g, &c).await;
    let seen = events_until(&mut sv, |e| is_message(e, &back)).await;
    assert_eq!(
        seen.last().map(|e| e["t"].clone()),
        Some(json!("message_create"))
    );

    let entries = audit_actions(&t, &a, &g, "action_prefix=member.kick").await;
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0]["target_user_id"], v.id.as_str());
    t.stack.stop().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_kick_tears_down_and_allows_a_rejoin() {
    kick_tears_down_and_allows_a_rejoin(Backends::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_redis_kick_tears_down_and_allows_a_rejoin() {
    kick_tears_down_and_allows_a_rejoin(Backends::External).await;
}

/// Kick and ban follow the legacy ranks; every refusal changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kick_and_ban_follow_the_legacy_ranks() {
    let t = TestStack::start(Backends::Embedded, 1)
        .await
        .expect("embedded");
    let (owner, mod1, mod2, member, outsider) = (
        t.user("owner").await,
        t.user("mod1").await,
        t.user("mod2").await,
        t.user("member").await,
        t.user("outsider").await,
    );
    let (g, _) = t.guild_with_channel(&owner, "public").await;
    for user in [&mod1, &mod2, &member] {
        t.join(user, &g).await;
    }
    assert_eq!(set_role(&t, &owner, &g, &mod1, "moderator").await, 200);
    assert_eq!(set_role(&t, &owner, &g, &mod2, "moderator").await, 200);
    let kick = |target: &User| format!("/guilds/{g}/members/{}/kick", target.id);
    let ban = |target: &User| format!("/guilds/{g}/members/{}/ban", target.id);

    let forbidden = [
        (&member, kick(&mod1)),
        (&member, ban(&outsider)),
        (&mod1, kick(&mod2)),
        (&mod1, ban(&mod2)),
        (&mod1, kick(&owner)),
        (&mod1, ban(&owner)),
        (&owner, ban(&owner)),
        (&mod1, kick(&mod1)),
        (&outsider, kick(&member)),
    ];
    for (actor, path) in &forbidden {
        let (status, body) = post(&t, path, actor, json!(null)).await;
        assert_eq!(
            (status, body),
            (403, json!({"error": "forbidden"})),
            "{path}"
        );
    }
    for (path, status) in [
        (format!("/guilds/{g}/members/not-a-ulid/kick"), 400),
        (
            format!("/guilds/{g}/members/{}/ban", ulid::Ulid::generate()),
            404,
        ),
        (
            format!(
                "/guilds/{}/members/{}/kick",
                ulid::Ulid::generate(),
                member.id
            ),
            403,
        ),
        (kick(&outsider), 404),
    ] {
        assert_eq!(
            post(&t, &path, &owner, json!(null)).await.0,
            status,
            "{path}"
        );
    }
    // Nothing above changed the guild.
    let (_, members) = get(&t, &format!("/guilds/{g}/members"), &owner).await;
    assert_eq!(members["members"].as_array().expect("members").len(), 4);
    assert!(
        audit_actions(&t, &owner, &g, "action_prefix=member.kick")
            .await
            .is_empty()
    );
    assert!(
        audit_actions(&t, &owner, &g, "action_prefix=member.ban")
            .await
            .is_empty()
    );

    // What the ranks allow.
    assert_eq!(post(&t, &kick(&member), &mod1, json!(null)).await.0, 200);
    assert_eq!(post(&t, &ban(&mod2), &owner, json!(null)).await.0, 200);
    // A non-member can be banned, and then cannot join.
    assert_eq!(post(&t, &ban(&outsider), &mod1, json!(null)).await.0, 200);
    assert_eq!(join(&t, &outsider, &g, None).await.0, 403);
    let (_, members) = get(&t, &format!("/guilds/{g}/members"), &owner).await;
    let ids: Vec<_> = members["members"]
        .as_array()
        .expect("members")
        .iter()
        .map(|m| m["user_id"].clone())
        .collect();
    let mut expected = vec![json!(owner.id), json!(mod1.id)];
    expected.sort_by_key(|id| id.as_str().map(str::to_owned));
    assert_eq!(ids, expected);
    t.stack.stop().await.expect("clean shutdown");
}

// --- member roles -------------------------------------------------------------------

/// Owners move members between `member` and `moderator`; the guild hears
/// `workspace_member_update`, outsiders do not; bad input and refusals
/// change nothing.
async fn member_role_changes_follow_the_legacy_rules(backends: Backends) {
    let Some(t) = TestStack::start(backends, 2).await else {
        return;
    };
    let (owner, target, other, outsider) = (
        t.user("owner").await,
        t.user("target").await,
        t.user("other").await,
        t.user("outsider").await,
    );
    let (g, c) = t.guild_with_channel(&owner, "public").await;
    t.join(&target, &g).await;
    t.join(&other, &g).await;
    let (h, d) = t.guild_with_channel(&outsider, "private").await;
    let mut so = t.connect(1, &other).await;
    let mut sx = t.connect(0, &outsider).await;
    subscribed(&mut so, &g, &c).await;
    subscribed(&mut sx, &h, &d).await;

    assert_eq!(set_role(&t, &owner, &g, &target, "moderator").await, 200);
    let event = next_event(&mut so).await;
    assert_eq!(event["t"], "workspace_member_update", "{event}");
    assert!(event["d"]["updated_at_unix"].as_i64() > Some(0));
    assert_eq!(
        without(&event["d"], "updated_at_unix"),
        json!({"guild_id": g, "user_id": target.id, "updated_fields": {"role": "moderator"}, "actor_user_id": owner.id})
    );
    let sentinel = send_message(&t, &outsider, &h, &d).await;
    assert!(
        is_message(&next_event(&mut sx).await, &sentinel),
        "outsiders hear nothing"
    );
    assert_eq!(legacy_role(&t, &target, &g, &c).await, "moderator");

    let path = format!("/guilds/{g}/members/{}", other.id);
    for (actor, body, status) in [
        // A moderator does not outrank a moderator.
        (&target, json!({"role": "moderator"}), 403),
        (&other, json!({"role": "moderator"}), 403),
        (&owner, json!({"role": "owner"}), 403),
        (&outsider, json!({"role": "moderator"}), 403),
        // Bad shapes: wrong value, type, unknown or missing field.
        (&owner, json!({"role": "admin"}), 422),
        // A wrong type is a 422 (PROTOCOL.md §1.2), though serde_json calls a
        // number where an enum belongs a syntax error.
        (&owner, json!({"role": 1}), 422),
        (&owner, json!({"role": "moderator", "extra": true}), 422),
        (&owner, json!({}), 422),
        (&owner, json!({"role": "x".repeat(10_000)}), 422),
    ] {
        let (got, _) = patch(&t, &path, actor, body.clone()).await;
        assert_eq!(got, status, "{body}");
    }
    let (status, _) = t
        .call_from(
            Method::PATCH,
            &path,
            Some(&owner.token),
            Some(json!("{")),
            None,
        )
        .await;
    assert_eq!(status, 422, "a JSON string is the wrong type");
    assert_eq!(
        set_role(&t, &owner, &g, &owner, "member").await,
        403,
        "owners stay owners"
    );
    let stranger = format!("/guilds/{g}/members/{}", outsider.id);
    assert_eq!(
        patch(&t, &stranger, &owner, json!({"role": "moderator"}))
            .await
            .0,
        404
    );
    assert_eq!(
        patch(
            &t,
            &format!("/guilds/{g}/members/nope"),
            &owner,
            json!({"role": "member"})
        )
        .await
        .0,
        400
    );
    // None of that changed anyone or told anyone.
    assert_eq!(legacy_role(&t, &other, &g, &c).await, "member");
    let marker = send_message(&t, &owner, &g, &c).await;
    assert!(is_message(&next_event(&mut so).await, &marker));

    // Back down: the guild hears it, and the role is gone.
    assert_eq!(set_role(&t, &owner, &g, &target, "member").await, 200);
    let event = next_event(&mut so).await;
    assert_eq!(event["d"]["updated_fields"], json!({"role": "member"}));
    assert_eq!(legacy_role(&t, &target, &g, &c).await, "member");
    let entries = audit_actions(&t, &owner, &g, "action_prefix=member.role").await;
    assert_eq!(entries.len(), 2);
    t.stack.stop().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_member_role_changes_follow_the_legacy_rules() {
    member_role_changes_follow_the_legacy_rules(Backends::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_redis_member_role_changes_follow_the_legacy_rules() {
    member_role_changes_follow_the_legacy_rules(Backends::External).await;
}

/// A demoted moderator loses a moderator-only channel on their open socket
/// before the PATCH returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_demotion_revokes_moderator_only_channels() {
    let t = TestStack::start(Backends::Embedded, 2)
        .await
        .expect("embedded");
    let (owner, moderator) = (t.user("owner").await, t.user("moderator").await);
    let (g, general) = t.guild_with_channel(&owner, "public").await;
    t.join(&moderator, &g).await;
    assert_eq!(set_role(&t, &owner, &g, &moderator, "moderator").await, 200);
    let (status, staff) = post(
        &t,
        &format!("/guilds/{g}/channels"),
        &owner,
        json!({"name": "staff"}),
    )
    .await;
    assert_eq!(status, 200, "{staff}");
    let staff = staff["channel_id"].as_str().expect("channel id").to_owned();
    let hide = format!("/guilds/{g}/channels/{staff}/overrides/member");
    let (status, body) = post(
        &t,
        &hide,
        &owner,
        json!({"allow": [], "deny": ["create_message"]}),
    )
    .await;
    assert_eq!(status, 200, "{body}");

    let mut sm = t.connect(1, &moderator).await;
    subscribed(&mut sm, &g, &staff).await;
    subscribed(&mut sm, &g, &general).await;
    assert_eq!(set_role(&t, &owner, &g, &moderator, "member").await, 200);
    assert_eq!(next_event(&mut sm).await["t"], "workspace_member_update");

    send_message(&t, &owner, &g, &staff).await;
    let sentinel = send_message(&t, &owner, &g, &general).await;
    let seen = events_until(&mut sm, |e| is_message(e, &sentinel)).await;
    for event in &seen {
        assert_ne!(event["d"]["channel_id"], staff.as_str(), "{event}");
    }
    t.stack.stop().await.expect("clean shutdown");
}

// --- adding members and the member list ----------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adding_a_member_needs_manage_member_roles_and_tells_the_guild() {
    let t = TestStack::start(Backends::Embedded, 1)
        .await
        .expect("embedded");
    let (owner, member, newcomer, outsider) = (
        t.user("owner").await,
        t.user("member").await,
        t.user("newcomer").await,
        t.user("outsider").await,
    );
    let (g, c) = t.guild_with_channel(&owner, "private").await;
    let (h, d) = t.guild_with_channel(&outsider, "private").await;
    let add = |user: &User| format!("/guilds/{g}/members/{}", user.id);
    assert_eq!(
        post(&t, &add(&member), &owner, json!(null)).await,
        (200, json!({"accepted": true}))
    );
    let mut sm = t.connect(0, &member).await;
    let mut sx = t.connect(0, &outsider).await;
    subscribed(&mut sm, &g, &c).await;
    subscribed(&mut sx, &h, &d).await;

    // Refused: a plain member, an outsider, an unknown user, a bad id.
    assert_eq!(post(&t, &add(&newcomer), &member, json!(null)).await.0, 403);
    assert_eq!(
        post(&t, &add(&newcomer), &outsider, json!(null)).await.0,
        403
    );
    let unknown = format!("/guilds/{g}/members/{}", ulid::Ulid::generate());
    assert_eq!(post(&t, &unknown, &owner, json!(null)).await.0, 404);
    assert_eq!(
        post(&t, &format!("/guilds/{g}/members/x"), &owner, json!(null))
            .await
            .0,
        400
    );

    assert_eq!(post(&t, &add(&newcomer), &owner, json!(null)).await.0, 200);
    let event = next_event(&mut sm).await;
    assert_eq!(event["t"], "workspace_member_add", "{event}");
    assert!(event["d"]["joined_at_unix"].as_i64() > Some(0));
    assert_eq!(
        without(&event["d"], "joined_at_unix"),
        json!({"guild_id": g, "user_id": newcomer.id, "role": "member", "actor_user_id": owner.id})
    );
    // Adding again is fine and silent.
    assert_eq!(
        post(&t, &add(&newcomer), &owner, json!(null)).await,
        (200, json!({"accepted": true}))
    );
    let marker = send_message(&t, &owner, &g, &c).await;
    assert!(
        is_message(&next_event(&mut sm).await, &marker),
        "no second member_add"
    );
    let sentinel = send_message(&t, &outsider, &h, &d).await;
    assert!(
        is_message(&next_event(&mut sx).await, &sentinel),
        "outsiders hear nothing"
    );
    let (_, guilds) = get(&t, "/guilds", &newcomer).await;
    assert_eq!(guilds["guilds"][0]["guild_id"], g.as_str());
    t.stack.stop().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_member_list_pages_by_user_id_with_role_ids() {
    let t = TestStack::start(Backends::Embedded, 1)
        .await
        .expect("embedded");
    let owner = t.user("owner").await;
    let (g, _) = t.guild_with_channel(&owner, "public").await;
    let mut everyone = vec![owner.id.clone()];
    let mut moderator = None;
    for n in 0..4 {
        let user = t.user(&format!("m{n}")).await;
        t.join(&user, &g).await;
        everyone.push(user.id.clone());
        moderator.get_or_insert(user);
    }
    let moderator = moderator.expect("a member");
    assert_eq!(set_role(&t, &owner, &g, &moderator, "moderator").await, 200);
    everyone.sort();

    let (status, first) = get(&t, &format!("/guilds/{g}/members?limit=2"), &owner).await;
    assert_eq!(status, 200, "{first}");
    let page: Vec<_> = first["members"].as_array().expect("members").clone();
    assert_eq!(page.len(), 2);
    assert_eq!(first["next_cursor"], page[1]["user_id"]);
    let (_, rest) = get(
        &t,
        &format!(
            "/guilds/{g}/members?limit=200&cursor={}",
            page[1]["user_id"].as_str().expect("id")
        ),
        &owner,
    )
    .await;
    assert_eq!(rest["next_cursor"], Value::Null);
    let all: Vec<_> = page
        .iter()
        .chain(rest["members"].as_array().expect("members"))
        .cloned()
        .collect();
    let ids: Vec<_> = all
        .iter()
        .map(|m| m["user_id"].as_str().expect("id").to_owned())
        .collect();
    assert_eq!(ids, everyone);

    // Role ids are the explicit assignments, sorted, never @everyone.
    let (_, roles) = get(&t, &format!("/guilds/{g}/roles"), &owner).await;
    let role_id = |name: &str| {
        roles["roles"]
            .as_array()
            .expect("roles")
            .iter()
            .find(|r| r["name"] == name)
            .map(|r| r["role_id"].clone())
            .expect("role")
    };
    let of =
        |user: &str| all.iter().find(|m| m["user_id"] == user).expect("listed")["role_ids"].clone();
    assert_eq!(of(&owner.id), json!([role_id("workspace_owner")]));
    assert_eq!(of(&moderator.id), json!([role_id("moderator")]));
    for member in &all {
        assert!(
            !member["role_ids"]
                .as_array()
                .expect("ids")
                .contains(&role_id("@everyone"))
        );
        assert_eq!(member.as_object().expect("object").len(), 2, "{member}");
    }

    let outsider = t.user("outsider").await;
    assert_eq!(
        get(&t, &format!("/guilds/{g}/members"), &outsider).await.0,
        403
    );
    for query in ["limit=0", "limit=201", "limit=x", "cursor=nope", "other=1"] {
        let (status, body) = get(&t, &format!("/guilds/{g}/members?{query}"), &owner).await;
        assert_eq!(
            (status, body),
            (400, json!({"error": "invalid_request"})),
            "{query}"
        );
    }
    t.stack.stop().await.expect("clean shutdown");
}

// --- the directory ---------------------------------------------------------------------

async fn the_directory_lists_public_guilds_and_joins_them(backends: Backends) {
    let Some(t) = TestStack::start(backends, 1).await else {
        return;
    };
    let (owner, joiner) = (t.user("owner").await, t.user("joiner").await);
    let rust = create_guild(&t, &owner, "Rust Club", "public").await;
    let private = create_guild(&t, &owner, "Rust Secret", "private").await;
    let garden = create_guild(&t, &owner, "Gardening", "public").await;

    let (status, all) = get(&t, "/guilds/public", &joiner).await;
    assert_eq!(status, 200, "{all}");
    assert_eq!(
        all,
        json!({"guilds": [garden, rust]}),
        "public only, newest first"
    );
    let (_, found) = get(&t, "/guilds/public?q=rUsT&limit=50", &joiner).await;
    assert_eq!(found, json!({"guilds": [rust]}));
    let (_, limited) = get(&t, "/guilds/public?limit=1", &joiner).await;
    assert_eq!(limited, json!({"guilds": [garden]}));
    let long_q = format!("/guilds/public?q={}", "a".repeat(65));
    for path in [
        "/guilds/public?limit=0",
        "/guilds/public?limit=51",
        "/guilds/public?x=1",
        long_q.as_str(),
    ] {
        let (status, body) = get(&t, path, &joiner).await;
        assert_eq!(
            (status, body),
            (400, json!({"error": "invalid_request"})),
            "{path}"
        );
    }
    assert_eq!(
        t.call_from(Method::GET, "/guilds/public", None, None, None)
            .await
            .0,
        401
    );

    let g = rust["guild_id"].as_str().expect("id");
    assert_eq!(
        join(&t, &joiner, g, None).await,
        (200, json!({"guild_id": g, "outcome": "accepted"}))
    );
    assert_eq!(
        join(&t, &joiner, g, None).await,
        (200, json!({"guild_id": g, "outcome": "already_member"}))
    );
    let hidden = private["guild_id"].as_str().expect("id");
    assert_eq!(
        join(&t, &joiner, hidden, None).await,
        (404, json!({"error": "not_found"}))
    );
    assert_eq!(
        join(&t, &joiner, &ulid::Ulid::generate().to_string(), None)
            .await
            .0,
        404
    );
    assert_eq!(join(&t, &joiner, "not-a-ulid", None).await.0, 400);
    let (_, guilds) = get(&t, "/guilds", &joiner).await;
    assert_eq!(guilds, json!({"guilds": [rust]}));

    let rejected = audit_actions(&t, &owner, hidden, "action_prefix=directory.join").await;
    assert_eq!(rejected.len(), 1);
    assert_eq!(rejected[0]["action"], "directory.join.rejected.visibility");
    assert_eq!(rejected[0]["actor_user_id"], joiner.id.as_str());
    let accepted = audit_actions(&t, &owner, g, "action_prefix=directory.join").await;
    assert!(
        accepted
            .iter()
            .all(|e| e["action"] == "directory.join.accepted" && e["ip_ban_match"] == false)
    );
    t.stack.stop().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_the_directory_lists_public_guilds_and_joins_them() {
    the_directory_lists_public_guilds_and_joins_them(Backends::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_redis_the_directory_lists_public_guilds_and_joins_them() {
    the_directory_lists_public_guilds_and_joins_them(Backends::External).await;
}

/// 30 joins a minute per user, 60 per address; a refused attempt is a 429.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn directory_joins_are_rate_limited_per_user_and_per_address() {
    let t = TestStack::start_trusting(Backends::Embedded, 1)
        .await
        .expect("embedded");
    let owner = t.user("owner").await;
    let (g, _) = t.guild_with_channel(&owner, "public").await;
    let (p, q, r) = (t.user("p").await, t.user("q").await, t.user("r").await);
    let shared = Some("198.51.100.20");
    for user in [&p, &q] {
        for _ in 0..30 {
            assert_eq!(join(&t, user, &g, shared).await.0, 200);
        }
        let elsewhere = Some("198.51.100.21");
        assert_eq!(
            join(&t, user, &g, elsewhere).await,
            (429, json!({"error": "rate_limited"})),
            "31st join by one user"
        );
    }
    // The address has had 60; a fresh user from it is refused too.
    assert_eq!(join(&t, &r, &g, shared).await.0, 429);
    assert_eq!(join(&t, &r, &g, Some("198.51.100.22")).await.0, 200);
    t.stack.stop().await.expect("clean shutdown");
}

// --- the audit log -------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_log_needs_view_audit_log_and_pages_newest_first() {
    let t = TestStack::start(Backends::Embedded, 1)
        .await
        .expect("embedded");
    let (owner, moderator, member, outsider) = (
        t.user("owner").await,
        t.user("moderator").await,
        t.user("member").await,
        t.user("outsider").await,
    );
    let (g, _) = t.guild_with_channel(&owner, "public").await;
    for user in [&moderator, &member] {
        t.join(user, &g).await;
    }
    assert_eq!(set_role(&t, &owner, &g, &moderator, "moderator").await, 200);
    assert_eq!(
        post(
            &t,
            &format!("/guilds/{g}/members/{}/kick", member.id),
            &owner,
            json!(null)
        )
        .await
        .0,
        200
    );

    let (status, all) = get(&t, &format!("/guilds/{g}/audit?limit=100"), &moderator).await;
    assert_eq!(status, 200, "{all}");
    let events = all["events"].as_array().expect("events");
    let actions: Vec<_> = events
        .iter()
        .map(|e| e["action"].as_str().expect("action"))
        .collect();
    assert_eq!(
        actions,
        [
            "member.kick",
            "member.role.update",
            "directory.join.accepted",
            "directory.join.accepted"
        ]
    );
    assert_eq!(all["next_cursor"], Value::Null);
    assert_eq!(
        without(&events[0], "created_at_unix"),
        json!({
            "audit_id": events[0]["audit_id"],
            "actor_user_id": owner.id,
            "target_user_id": member.id,
            "action": "member.kick",
            "ip_ban_match": false,
        })
    );

    // Paging: each page continues strictly after the last entry returned.
    let mut paged = Vec::new();
    let mut path = format!("/guilds/{g}/audit?limit=3");
    loop {
        let (status, page) = get(&t, &path, &owner).await;
        assert_eq!(status, 200, "{page}");
        paged.extend(page["events"].as_array().expect("events").iter().cloned());
        let Some(cursor) = page["next_cursor"].as_str() else {
            break;
        };
        path = format!("/guilds/{g}/audit?limit=3&cursor={cursor}");
    }
    assert_eq!(&paged, events);
    let members_only = audit_actions(&t, &owner, &g, "action_prefix=member.").await;
    assert_eq!(members_only.len(), 2);

    for user in [&member, &outsider] {
        let (status, body) = get(&t, &format!("/guilds/{g}/audit"), user).await;
        assert_eq!(
            (status, body),
            (403, json!({"error": "audit_access_denied"}))
        );
    }
    // An unknown guild answers as an existing one does to a stranger, so
    // the answer does not tell which guild ids exist.
    let unknown = format!("/guilds/{}/audit", ulid::Ulid::generate());
    assert_eq!(
        get(&t, &unknown, &owner).await,
        (403, json!({"error": "audit_access_denied"}))
    );
    let long_cursor = format!("cursor={}", "1".repeat(129));
    for query in [
        "limit=0",
        "limit=101",
        "cursor=",
        "cursor=12_nope",
        "cursor=a.b",
        long_cursor.as_str(),
        "action_prefix=",
        "action_prefix=Member",
        "action_prefix=member-",
        "other=1",
    ] {
        let (status, body) = get(&t, &format!("/guilds/{g}/audit?{query}"), &owner).await;
        assert_eq!(
            (status, body),
            (400, json!({"error": "invalid_request"})),
            "{query}"
        );
    }
    t.stack.stop().await.expect("clean shutdown");
}

/// A stranger cannot tell from the audit log which guild ids exist: a real
/// guild they are not in and an unknown id get the same answer, as every
/// other guild route gives them one answer for both (`forbidden`, here the
/// audit log's own `audit_access_denied`).
async fn strangers_learn_nothing_from_the_audit_log(backends: Backends) {
    let Some(t) = TestStack::start(backends, 1).await else {
        return;
    };
    let (owner, outsider) = (t.user("owner").await, t.user("outsider").await);
    let (g, _) = t.guild_with_channel(&owner, "private").await;
    let unknown = ulid::Ulid::generate().to_string();
    for (route, refusal) in [
        ("audit", json!({"error": "audit_access_denied"})),
        ("audit?limit=5", json!({"error": "audit_access_denied"})),
        ("members", json!({"error": "forbidden"})),
        ("roles", json!({"error": "forbidden"})),
    ] {
        let real = get(&t, &format!("/guilds/{g}/{route}"), &outsider).await;
        let made_up = get(&t, &format!("/guilds/{unknown}/{route}"), &outsider).await;
        assert_eq!(real, (403, refusal), "{backends:?} {route}: a real guild");
        assert_eq!(made_up, real, "{backends:?} {route}: an unknown guild");
    }
    t.stack.stop().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_strangers_learn_nothing_from_the_audit_log() {
    strangers_learn_nothing_from_the_audit_log(Backends::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_redis_strangers_learn_nothing_from_the_audit_log() {
    strangers_learn_nothing_from_the_audit_log(Backends::External).await;
}

// --- IP bans -------------------------------------------------------------------------------

const VICTIM_IP: &str = "198.51.100.7";

/// V joined from 198.51.100.7. A moderator bans V's addresses: only the
/// users who may manage IP bans hear `workspace_ip_ban_sync`; requests
/// from that address to IP routes are refused (and audited) whoever makes
/// them, and joins from it too; other routes and other addresses are fine.
/// Removing the ban lifts all of it. No response shows an address.
async fn ip_bans_by_user(backends: Backends) {
    let Some(t) = TestStack::start_trusting(backends, 2).await else {
        return;
    };
    let (owner, moderator, member, victim, newcomer) = (
        t.user("owner").await,
        t.user("moderator").await,
        t.user("member").await,
        t.user("victim").await,
        t.user("newcomer").await,
    );
    let (g, c) = t.guild_with_channel(&owner, "public").await;
    for user in [&moderator, &member] {
        t.join(user, &g).await;
    }
    assert_eq!(join(&t, &victim, &g, Some(VICTIM_IP)).await.0, 200);
    assert_eq!(set_role(&t, &owner, &g, &moderator, "moderator").await, 200);
    let mut so = t.connect(0, &owner).await;
    let mut sm = t.connect(1, &moderator).await;
    let mut sp = t.connect(1, &member).await;
    for socket in [&mut so, &mut sm, &mut sp] {
        subscribed(socket, &g, &c).await;
    }

    let by_user = format!("/guilds/{g}/ip-bans/by-user");
    let request = json!({"target_user_id": victim.id, "reason": "spam", "expires_in_secs": 3600});
    let (status, created) = post(&t, &by_user, &moderator, request.clone()).await;
    assert_eq!(status, 200, "{created}");
    assert_eq!(created["created_count"], 1);
    let ban_id = created["ban_ids"][0].as_str().expect("ban id").to_owned();

    for socket in [&mut so, &mut sm] {
        let event = next_event(socket).await;
        assert_eq!(event["t"], "workspace_ip_ban_sync", "{event}");
        assert!(event["d"]["updated_at_unix"].as_i64() > Some(0));
        assert_eq!(
            without(&event["d"], "updated_at_unix"),
            json!({"guild_id": g, "summary": {"action": "upsert", "changed_count": 1}, "actor_user_id": moderator.id})
        );
    }
    let marker = send_message(&t, &owner, &g, &c).await;
    assert!(
        is_message(&next_event(&mut sp).await, &marker),
        "members without manage_ip_bans hear nothing"
    );
    for socket in [&mut so, &mut sm] {
        assert!(is_message(&next_event(socket).await, &marker));
    }

    let (status, list) = get(&t, &format!("/guilds/{g}/ip-bans"), &owner).await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(list["next_cursor"], Value::Null);
    let ban = &list["bans"][0];
    assert_eq!(ban["ban_id"], ban_id.as_str());
    assert_eq!(ban["source_user_id"], victim.id.as_str());
    assert_eq!(ban["reason"], "spam");
    assert_eq!(
        ban["expires_at_unix"].as_i64(),
        ban["created_at_unix"].as_i64().map(|at| at + 3600)
    );
    assert_no_address_keys(&list);

    // The address is refused on IP routes, whoever uses it.
    let channels = format!("/guilds/{g}/channels");
    let messages = format!("/guilds/{g}/channels/{c}/messages");
    for user in [&victim, &member] {
        let (status, body) = t
            .call_from(
                Method::GET,
                &channels,
                Some(&user.token),
                None,
                Some(VICTIM_IP),
            )
            .await;
        assert_eq!((status, body), (403, json!({"error": "forbidden"})));
    }
    let (status, _) = t
        .call_from(
            Method::POST,
            &messages,
            Some(&victim.token),
            Some(json!({"content": "hi"})),
            Some(VICTIM_IP),
        )
        .await;
    assert_eq!(status, 403);
    // Without credentials it is the route's usual 401, and nothing is audited.
    assert_eq!(
        t.call_from(Method::GET, &channels, None, None, Some(VICTIM_IP))
            .await
            .0,
        401
    );
    // Other addresses and routes PROTOCOL.md §2 does not mark IP are fine.
    assert_eq!(
        t.call_from(
            Method::GET,
            &channels,
            Some(&victim.token),
            None,
            Some("198.51.100.8")
        )
        .await
        .0,
        200
    );
    let members = format!("/guilds/{g}/members");
    assert_eq!(
        t.call_from(
            Method::GET,
            &members,
            Some(&victim.token),
            None,
            Some(VICTIM_IP)
        )
        .await
        .0,
        200
    );
    // Joins from the address are refused with their own error.
    assert_eq!(
        join(&t, &newcomer, &g, Some(VICTIM_IP)).await,
        (403, json!({"error": "directory_join_ip_banned"}))
    );
    assert_eq!(join(&t, &newcomer, &g, Some("198.51.100.9")).await.0, 200);
    for socket in [&mut so, &mut sm, &mut sp] {
        assert_eq!(next_event(socket).await["t"], "workspace_member_add");
    }

    let hits = audit_actions(&t, &owner, &g, "action_prefix=moderation.ip_ban.hit").await;
    assert_eq!(hits.len(), 3, "two GETs and one POST");
    assert!(hits.iter().all(|e| e["ip_ban_match"] == true));
    assert_eq!(hits[0]["actor_user_id"], victim.id.as_str());
    let rejected = audit_actions(&t, &owner, &g, "action_prefix=directory.join.rejected").await;
    assert_eq!(rejected.len(), 1);
    assert_eq!(rejected[0]["action"], "directory.join.rejected.ip_ban");
    assert_eq!(rejected[0]["ip_ban_match"], true);
    let added = audit_actions(&t, &owner, &g, "action_prefix=moderation.ip_ban.add").await;
    assert_eq!(added[0]["target_user_id"], victim.id.as_str());
    assert_eq!(added[0]["ip_ban_match"], false);

    // Banning again creates nothing and tells nobody: the next sync event
    // the owner sees is the removal.
    let (status, again) = post(&t, &by_user, &owner, request).await;
    assert_eq!(
        (status, again),
        (200, json!({"created_count": 0, "ban_ids": []}))
    );

    // Only IP-ban managers can list, ban or unban.
    let one = format!("/guilds/{g}/ip-bans/{ban_id}");
    assert_eq!(
        get(&t, &format!("/guilds/{g}/ip-bans"), &member).await.0,
        403
    );
    assert_eq!(
        post(&t, &by_user, &member, json!({"target_user_id": victim.id}))
            .await
            .0,
        403
    );
    assert_eq!(
        t.call_from(Method::DELETE, &one, Some(&member.token), None, None)
            .await
            .0,
        403
    );

    let (status, body) = t
        .call_from(Method::DELETE, &one, Some(&moderator.token), None, None)
        .await;
    assert_eq!((status, body), (200, json!({"accepted": true})));
    for socket in [&mut so, &mut sm] {
        let event = next_event(socket).await;
        assert_eq!(event["t"], "workspace_ip_ban_sync", "{event}");
        assert_eq!(
            event["d"]["summary"],
            json!({"action": "remove", "changed_count": 1})
        );
    }
    let marker = send_message(&t, &owner, &g, &c).await;
    assert!(
        is_message(&next_event(&mut sp).await, &marker),
        "members without manage_ip_bans hear nothing"
    );
    assert_eq!(
        t.call_from(Method::DELETE, &one, Some(&moderator.token), None, None)
            .await
            .0,
        404
    );
    assert_eq!(
        t.call_from(
            Method::GET,
            &channels,
            Some(&victim.token),
            None,
            Some(VICTIM_IP)
        )
        .await
        .0,
        200
    );
    let removed = audit_actions(&t, &owner, &g, "action_prefix=moderation.ip_ban.remove").await;
    assert_eq!(removed[0]["target_user_id"], victim.id.as_str());
    t.stack.stop().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_ip_bans_by_user() {
    ip_bans_by_user(Backends::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_redis_ip_bans_by_user() {
    ip_bans_by_user(Backends::External).await;
}

/// Bad ban-by-user requests and list queries are refused and write nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_ip_ban_input_writes_nothing() {
    let t = TestStack::start_trusting(Backends::Embedded, 1)
        .await
        .expect("embedded");
    let (owner, victim) = (t.user("owner").await, t.user("victim").await);
    let (g, _) = t.guild_with_channel(&owner, "public").await;
    assert_eq!(join(&t, &victim, &g, Some(VICTIM_IP)).await.0, 200);
    let by_user = format!("/guilds/{g}/ip-bans/by-user");
    let target = victim.id.as_str();
    for (body, status) in [
        (json!({"target_user_id": target, "extra": 1}), 422),
        (json!({"reason": "spam"}), 422),
        (json!({"target_user_id": 42}), 422),
        (
            json!({"target_user_id": target, "expires_in_secs": "soon"}),
            422,
        ),
        (
            json!({"target_user_id": target, "expires_in_secs": -1}),
            422,
        ),
        (json!({"target_user_id": "not-a-ulid"}), 400),
        (
            json!({"target_user_id": target, "reason": "r".repeat(241)}),
            400,
        ),
        (json!({"target_user_id": target, "reason": "   "}), 400),
        (json!({"target_user_id": target, "expires_in_secs": 0}), 400),
        (
            json!({"target_user_id": target, "expires_in_secs": 15_552_001}),
            400,
        ),
    ] {
        let (got, _) = post(&t, &by_user, &owner, body.clone()).await;
        assert_eq!(got, status, "{body}");
    }
    let (status, _) = t
        .post_raw(&by_user, Some(&owner.token), "{\"target_user_id\":")
        .await;
    assert_eq!(status, 400, "malformed JSON");
    let (_, list) = get(&t, &format!("/guilds/{g}/ip-bans"), &owner).await;
    assert_eq!(list, json!({"bans": [], "next_cursor": null}));
    assert!(
        audit_actions(&t, &owner, &g, "action_prefix=moderation")
            .await
            .is_empty()
    );

    for query in ["limit=0", "limit=101", "cursor=x", "other=1"] {
        let (status, body) = get(&t, &format!("/guilds/{g}/ip-bans?{query}"), &owner).await;
        assert_eq!(
            (status, body),
            (400, json!({"error": "invalid_request"})),
            "{query}"
        );
    }
    let bad_id = format!("/guilds/{g}/ip-bans/nope");
    assert_eq!(
        t.call_from(Method::DELETE, &bad_id, Some(&owner.token), None, None)
            .await
            .0,
        400
    );
    let unknown = format!("/guilds/{g}/ip-bans/{}", ulid::Ulid::generate());
    assert_eq!(
        t.call_from(Method::DELETE, &unknown, Some(&owner.token), None, None)
            .await
            .0,
        404
    );
    // At the edge of the limits, accepted.
    let edge =
        json!({"target_user_id": target, "reason": "r".repeat(240), "expires_in_secs": 15_552_000});
    assert_eq!(post(&t, &by_user, &owner, edge).await.0, 200);
    t.stack.stop().await.expect("clean shutdown");
}

/// Without trusted proxies, `X-Forwarded-For` is the client's own claim and
/// is ignored: the ban lands on the real peer address, and a header cannot
/// talk the caller out of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_headers_from_untrusted_peers_are_ignored() {
    let t = TestStack::start(Backends::Embedded, 1)
        .await
        .expect("embedded");
    let (owner, victim) = (t.user("owner").await, t.user("victim").await);
    let (g, _) = t.guild_with_channel(&owner, "public").await;
    assert_eq!(join(&t, &victim, &g, Some(VICTIM_IP)).await.0, 200);
    let by_user = format!("/guilds/{g}/ip-bans/by-user");
    let (status, created) = post(&t, &by_user, &owner, json!({"target_user_id": victim.id})).await;
    assert_eq!(
        (status, &created["created_count"]),
        (200, &json!(1)),
        "{created}"
    );

    // Every test client is on loopback, so the owner is caught too.
    let channels = format!("/guilds/{g}/channels");
    for from in [None, Some("198.51.100.8"), Some(VICTIM_IP)] {
        let (status, _) = t
            .call_from(Method::GET, &channels, Some(&owner.token), None, from)
            .await;
        assert_eq!(status, 403, "{from:?}");
    }
    // Not an IP route: the owner can lift the ban.
    let one = format!(
        "/guilds/{g}/ip-bans/{}",
        created["ban_ids"][0].as_str().expect("id")
    );
    assert_eq!(
        t.call_from(Method::DELETE, &one, Some(&owner.token), None, None)
            .await
            .0,
        200
    );
    assert_eq!(get(&t, &channels, &owner).await.0, 200);
    t.stack.stop().await.expect("clean shutdown");
}

// --- small helpers ---------------------------------------------------------------

/// `value` without one key, to compare objects with a timestamp in them.
/// PROTOCOL.md §5.5: an IP-banned address cannot subscribe. Adding the ban closes the
/// sockets from that address present in the guild (on either gateway)
/// before the REST call returns, with 4013 `ip_banned`; a later subscribe
/// from the address, by anyone, is closed the same way. Other addresses
/// and other guilds are untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ip_ban_closes_and_refuses_sockets_from_the_address() {
    let t = TestStack::start_with(Backends::Embedded, 2, |config| {
        config.tune_api = |api| {
            api.trusted_proxy_cidrs = vec!["127.0.0.0/8".parse().expect("network")];
        };
        config.tune_gateway = |gateway| {
            gateway.trusted_proxies = vec!["127.0.0.0/8".parse().expect("network")];
        };
    })
    .await
    .expect("embedded");
    let (owner, member, victim) = (
        t.user("owner").await,
        t.user("member").await,
        t.user("victim").await,
    );
    let (g, c) = t.guild_with_channel(&owner, "public").await;
    t.join(&member, &g).await;
    assert_eq!(join(&t, &victim, &g, Some(VICTIM_IP)).await.0, 200);
    let (elsewhere, elsewhere_channel) = t.guild_with_channel(&victim, "private").await;

    let mut victim_here = t.connect_from(0, &victim, VICTIM_IP).await;
    let mut victim_elsewhere = t.connect_from(1, &victim, VICTIM_IP).await;
    let mut bystander = t.connect_from(1, &member, "198.51.100.8").await;
    subscribed(&mut victim_here, &g, &c).await;
    subscribed(&mut victim_elsewhere, &elsewhere, &elsewhere_channel).await;
    subscribed(&mut bystander, &g, &c).await;

    let (status, body) = post(
        &t,
        &format!("/guilds/{g}/ip-bans/by-user"),
        &owner,
        json!({"target_user_id": victim.id}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        victim_here.next_close().await,
        (4013, "ip_banned".to_owned())
    );
    // Not in the guild: the victim's other socket stays.
    let mine = send_message(&t, &victim, &elsewhere, &elsewhere_channel).await;
    assert!(is_message(&next_event(&mut victim_elsewhere).await, &mine));
    let theirs = send_message(&t, &owner, &g, &c).await;
    assert!(is_message(&next_event(&mut bystander).await, &theirs));

    // Anyone subscribing from the address is closed; the socket's other
    // address-independent state does not matter.
    let mut borrowed = t.connect_from(0, &member, VICTIM_IP).await;
    borrowed.subscribe(&g, &c).await;
    assert_eq!(borrowed.next_close().await, (4013, "ip_banned".to_owned()));
    let metrics = t.gateway_metrics(0);
    assert_eq!(
        metrics.closed_count(filament_gateway::CloseReason::IpBanned),
        2
    );
    t.stack.stop().await.expect("clean shutdown");
}

fn without(value: &Value, key: &str) -> Value {
    let mut value = value.clone();
    if let Some(object) = value.as_object_mut() {
        object.remove(key);
    }
    value
}

/// The client rejects any key containing `ip` or `cidr`.
fn assert_no_address_keys(value: &Value) {
    match value {
        Value::Object(object) => {
            for (key, inner) in object {
                assert!(!key.contains("ip") && !key.contains("cidr"), "{key}");
                assert_no_address_keys(inner);
            }
        }
        Value::Array(items) => items.iter().for_each(assert_no_address_keys),
        _ => {}
    }
}
