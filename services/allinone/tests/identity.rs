//! Session and identity edges, end to end (issue 15): one account per
//! username in any case, a logout that ends the session everywhere (REST,
//! new sockets, open sockets), the kick and ban hierarchy on IP bans by user
//! and on role removal, and join addresses kept per guild and only for
//! joins that let the user in.
//!
//! Each property runs on SQLite with the in-memory registry and, when
//! `TEST_DATABASE_URL` and `TEST_REDIS_URL` are set, on Postgres and Redis.
//! Client addresses come from `X-Forwarded-For`, which these stacks trust
//! from loopback.

mod support;

use reqwest::Method;
use serde_json::{Value, json};
use support::{Backends, PASSWORD, TestStack, User};
use tokio_tungstenite::tungstenite;

// --- helpers -------------------------------------------------------------------

async fn post(t: &TestStack, path: &str, user: &User, body: Value) -> (u16, Value) {
    t.call_from(Method::POST, path, Some(&user.token), Some(body), None)
        .await
}

/// The guild's IP bans, as `user` (who may list them) sees them.
async fn ip_bans(t: &TestStack, guild_id: &str, user: &User) -> Value {
    let path = format!("/guilds/{guild_id}/ip-bans");
    let (status, list) = t
        .call_from(Method::GET, &path, Some(&user.token), None, None)
        .await;
    assert_eq!(status, 200, "{list}");
    list
}

async fn delete(t: &TestStack, path: &str, user: &User) -> (u16, Value) {
    t.call_from(Method::DELETE, path, Some(&user.token), None, None)
        .await
}

async fn register(t: &TestStack, username: &str, password: &str) -> (u16, Value) {
    let body = json!({"username": username, "password": password});
    t.post("/auth/register", None, body).await
}

async fn login(t: &TestStack, username: &str, password: &str) -> (u16, Value) {
    let body = json!({"username": username, "password": password});
    t.post("/auth/login", None, body).await
}

/// Logs `user` in once more: a second session of the same account.
async fn second_session(t: &TestStack, user: &User) -> User {
    let (status, pair) = login(t, &user.username, PASSWORD).await;
    assert_eq!(status, 200, "{pair}");
    User {
        token: pair["access_token"].as_str().expect("token").to_owned(),
        refresh_token: pair["refresh_token"].as_str().expect("refresh").to_owned(),
        ..user.clone()
    }
}

/// `GET /auth/me` as this access token: its status and the user id.
async fn me(t: &TestStack, token: &str) -> (u16, Value) {
    let (status, body) = t.get("/auth/me", Some(token)).await;
    (status, body["user_id"].clone())
}

/// The HTTP status and body of a websocket upgrade that must be refused.
async fn refused_upgrade(t: &TestStack, n: usize, token: &str) -> (u16, Value) {
    let url = format!(
        "ws://{}/gateway/ws?access_token={token}",
        t.stack.gateway_addrs[n]
    );
    match tokio_tungstenite::connect_async(url).await {
        Ok(_) => panic!("gateway {n} upgraded a socket for a revoked token"),
        Err(tungstenite::Error::Http(response)) => {
            let body = response
                .body()
                .as_deref()
                .map(|bytes| serde_json::from_slice(bytes).unwrap_or(Value::Null))
                .unwrap_or(Value::Null);
            (response.status().as_u16(), body)
        }
        Err(err) => panic!("upgrade failed below HTTP: {err}"),
    }
}

async fn set_role(t: &TestStack, owner: &User, guild: &str, target: &User, role: &str) {
    let path = format!("/guilds/{guild}/members/{}", target.id);
    let body = json!({ "role": role });
    let (status, answer) = t
        .call_from(Method::PATCH, &path, Some(&owner.token), Some(body), None)
        .await;
    assert_eq!(status, 200, "{answer}");
}

async fn join_from(t: &TestStack, user: &User, guild: &str, from: &str) -> u16 {
    let path = format!("/guilds/{guild}/join");
    t.call_from(Method::POST, &path, Some(&user.token), None, Some(from))
        .await
        .0
}

// --- case-insensitive usernames ------------------------------------------------

/// `VICTIM` cannot be registered beside `victim`: the answer is the same
/// `{accepted:true}` as for any taken name (not disclosed), and no second
/// account exists. Logins fold case and reach the one account, which keeps
/// the case it was registered with. A rename onto another user's name in
/// another case is taken; changing the case of one's own name is allowed.
async fn usernames_fold_case(backends: Backends) {
    let Some(t) = TestStack::start(backends, 1).await else {
        return;
    };
    let suffix = &ulid::Ulid::generate().to_string()[20..];
    let victim_name = format!("Victim_{suffix}");
    let (status, body) = register(&t, &victim_name, PASSWORD).await;
    assert_eq!((status, &body), (200, &json!({"accepted": true})));
    let (status, pair) = login(&t, &victim_name, PASSWORD).await;
    assert_eq!(status, 200, "{pair}");
    let victim_token = pair["access_token"].as_str().expect("token").to_owned();
    let (_, victim_id) = me(&t, &victim_token).await;

    let twin = victim_name.to_uppercase();
    let impostor_password = "an entirely different password";
    let (status, body) = register(&t, &twin, impostor_password).await;
    assert_eq!(
        (status, &body),
        (200, &json!({"accepted": true})),
        "a taken name is accepted without saying so"
    );
    assert_eq!(
        login(&t, &twin, impostor_password).await.0,
        401,
        "no second account was made"
    );

    for spelling in [twin.clone(), victim_name.to_lowercase()] {
        let (status, pair) = login(&t, &spelling, PASSWORD).await;
        assert_eq!(status, 200, "{spelling}: {pair}");
        let token = pair["access_token"].as_str().expect("token");
        let (status, profile) = t.get("/auth/me", Some(token)).await;
        assert_eq!(status, 200);
        assert_eq!(profile["user_id"], victim_id, "{spelling}");
        assert_eq!(profile["username"], victim_name.as_str(), "stored case");
    }

    let other = t.user("other").await;
    let rename = |name: &str| json!({"username": name});
    let (status, body) = t
        .call_from(
            Method::PATCH,
            "/users/me/profile",
            Some(&other.token),
            Some(rename(&victim_name.to_lowercase())),
            None,
        )
        .await;
    assert_eq!((status, &body["error"]), (400, &json!("invalid_request")));
    let (status, profile) = t
        .call_from(
            Method::PATCH,
            "/users/me/profile",
            Some(&victim_token),
            Some(rename(&twin)),
            None,
        )
        .await;
    assert_eq!(status, 200, "{profile}");
    assert_eq!(profile["username"], twin.as_str());
    t.stack.stop().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usernames_fold_case_on_sqlite() {
    usernames_fold_case(Backends::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usernames_fold_case_on_postgres() {
    usernames_fold_case(Backends::External).await;
}

// --- logout ------------------------------------------------------------------

/// A logout ends its session everywhere before it answers: the session's
/// sockets, on both gateways, close with 4012 `access_revoked`; its access
/// token is refused by REST (401 `invalid_credentials`) and by a new
/// upgrade on either gateway. The same user's other session keeps its
/// socket, which still subscribes, and its token.
async fn logout_ends_the_session(backends: Backends) {
    let Some(t) = TestStack::start(backends, 2).await else {
        return;
    };
    let ended = t.user("leaver").await;
    let kept = second_session(&t, &ended).await;
    let (g, c) = t.guild_with_channel(&ended, "private").await;
    let mut ended_0 = t.connect(0, &ended).await;
    let mut ended_1 = t.connect(1, &ended).await;
    let mut kept_1 = t.connect(1, &kept).await;
    ended_0.subscribed(&g, &c).await;

    let (status, body) = t
        .post(
            "/auth/logout",
            None,
            json!({"refresh_token": ended.refresh_token}),
        )
        .await;
    assert_eq!((status, &body), (204, &Value::Null));

    for socket in [&mut ended_0, &mut ended_1] {
        assert_eq!(
            socket.next_close().await,
            (4012, "access_revoked".to_owned())
        );
    }
    let (status, body) = t.get("/auth/me", Some(&ended.token)).await;
    assert_eq!(
        (status, &body["error"]),
        (401, &json!("invalid_credentials"))
    );
    let (status, body) = t.get("/guilds", Some(&ended.token)).await;
    assert_eq!(
        (status, &body["error"]),
        (401, &json!("invalid_credentials"))
    );
    for n in 0..2 {
        assert_eq!(
            refused_upgrade(&t, n, &ended.token).await,
            (401, json!({"error": "invalid_credentials"})),
            "gateway {n}"
        );
    }

    // The other session: its open socket is served, its token works, and
    // it can still open sockets.
    kept_1.subscribed(&g, &c).await;
    assert_eq!(me(&t, &kept.token).await, (200, json!(ended.id)));
    let mut kept_0 = t.connect(0, &kept).await;
    kept_0.subscribed(&g, &c).await;
    t.stack.stop().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_ends_the_session_on_the_memory_registry() {
    logout_ends_the_session(Backends::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_ends_the_session_on_redis() {
    logout_ends_the_session(Backends::External).await;
}

/// A replayed refresh token revokes its session (PROTOCOL.md §2.2), and that
/// ends the session the way a logout does: whoever replayed it may hold
/// its access token too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_refresh_token_ends_the_session() {
    let t = TestStack::start(Backends::Embedded, 1)
        .await
        .expect("embedded");
    let user = t.user("replayed").await;
    let (status, rotated) = t
        .post(
            "/auth/refresh",
            None,
            json!({"refresh_token": user.refresh_token}),
        )
        .await;
    assert_eq!(status, 200, "{rotated}");
    let token = rotated["access_token"].as_str().expect("token").to_owned();
    let rotated_user = User {
        token: token.clone(),
        ..user.clone()
    };
    let mut socket = t.connect(0, &rotated_user).await;
    assert_eq!(me(&t, &token).await.0, 200);

    let (status, _) = t
        .post(
            "/auth/refresh",
            None,
            json!({"refresh_token": user.refresh_token}),
        )
        .await;
    assert_eq!(status, 401, "the replay is refused");
    assert_eq!(
        socket.next_close().await,
        (4012, "access_revoked".to_owned())
    );
    for stale in [&user.token, &token] {
        assert_eq!(me(&t, stale).await.0, 401);
    }
    t.stack.stop().await.expect("clean shutdown");
}

// --- hierarchy -----------------------------------------------------------------

/// IP bans by user follow the ban's rule: a moderator may not IP-ban the
/// owner, nor a fellow moderator (403 `forbidden`, nothing banned), but
/// may IP-ban a member. Role removal follows the same rule in the role
/// hierarchy: a moderator may not take a role from the owner or a fellow
/// moderator, nor from a member whose custom role ranks above theirs, but
/// may from a plain member; and IP bans follow the hierarchy too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moderators_cannot_act_on_those_who_outrank_them() {
    let t = TestStack::start_trusting(Backends::Embedded, 1)
        .await
        .expect("embedded");
    let (owner, moderator, peer, member, admin) = (
        t.user("owner").await,
        t.user("moderator").await,
        t.user("peer").await,
        t.user("member").await,
        t.user("admin").await,
    );
    let (g, _) = t.guild_with_channel(&owner, "public").await;
    // The owner joined another public guild from an address of their own:
    // before the hierarchy rule, that was enough to ban it here.
    let (elsewhere, _) = t.guild_with_channel(&member, "public").await;
    assert_eq!(join_from(&t, &owner, &elsewhere, "198.51.100.1").await, 200);
    for (user, from) in [
        (&moderator, "198.51.100.2"),
        (&peer, "198.51.100.3"),
        (&member, "198.51.100.4"),
        (&admin, "198.51.100.5"),
    ] {
        assert_eq!(join_from(&t, user, &g, from).await, 200);
    }
    set_role(&t, &owner, &g, &moderator, "moderator").await;
    set_role(&t, &owner, &g, &peer, "moderator").await;

    let by_user = format!("/guilds/{g}/ip-bans/by-user");
    for target in [&owner, &peer] {
        let (status, body) = post(
            &t,
            &by_user,
            &moderator,
            json!({"target_user_id": target.id}),
        )
        .await;
        assert_eq!(
            (status, &body),
            (403, &json!({"error": "forbidden"})),
            "{}",
            target.username
        );
    }
    let (status, created) = post(
        &t,
        &by_user,
        &moderator,
        json!({"target_user_id": member.id}),
    )
    .await;
    assert_eq!(
        (status, &created["created_count"]),
        (200, &json!(1)),
        "{created}"
    );
    let list = ip_bans(&t, &g, &owner).await;
    assert_eq!(list["bans"].as_array().map(Vec::len), Some(1), "{list}");
    assert_eq!(list["bans"][0]["source_user_id"], member.id.as_str());

    // A role the moderator could manage (position 50 is below their 100),
    // held by everyone, and a role above the moderator held by `admin`.
    let role =
        |name: &str, position: u32| json!({"name": name, "permissions": [], "position": position});
    let roles = format!("/guilds/{g}/roles");
    let (status, helper) = post(&t, &roles, &owner, role("helper", 50)).await;
    assert_eq!(status, 200, "{helper}");
    let helper = helper["role_id"].as_str().expect("role id").to_owned();
    let (status, senior) = post(&t, &roles, &owner, role("senior", 200)).await;
    assert_eq!(status, 200, "{senior}");
    let senior = senior["role_id"].as_str().expect("role id").to_owned();
    let assignment =
        |role: &str, user: &User| format!("/guilds/{g}/roles/{role}/members/{}", user.id);
    for user in [&owner, &peer, &member, &admin] {
        assert_eq!(
            post(&t, &assignment(&helper, user), &owner, json!(null))
                .await
                .0,
            200
        );
    }
    assert_eq!(
        post(&t, &assignment(&senior, &admin), &owner, json!(null))
            .await
            .0,
        200
    );

    for target in [&owner, &peer, &admin] {
        assert_eq!(
            delete(&t, &assignment(&helper, target), &moderator).await,
            (403, json!({"error": "forbidden"})),
            "{} outranks the moderator",
            target.username
        );
    }
    assert_eq!(
        delete(&t, &assignment(&helper, &member), &moderator).await,
        (200, json!({"accepted": true}))
    );
    let (status, members) = t
        .call_from(
            Method::GET,
            &format!("/guilds/{g}/members"),
            Some(&owner.token),
            None,
            None,
        )
        .await;
    assert_eq!(status, 200, "{members}");
    let holds_helper = |user: &User| {
        members["members"]
            .as_array()
            .expect("members")
            .iter()
            .find(|m| m["user_id"] == user.id.as_str())
            .is_some_and(|m| {
                m["role_ids"]
                    .as_array()
                    .is_some_and(|ids| ids.contains(&json!(helper)))
            })
    };
    for (user, holds) in [
        (&owner, true),
        (&peer, true),
        (&admin, true),
        (&member, false),
    ] {
        assert_eq!(holds_helper(user), holds, "{}", user.username);
    }

    // `admin` is a member by legacy rank, but holds `senior`, above the
    // moderator: banning their addresses is refused too, as taking their
    // role away is, and bans nothing.
    let (status, body) = post(
        &t,
        &by_user,
        &moderator,
        json!({"target_user_id": admin.id}),
    )
    .await;
    assert_eq!((status, body), (403, json!({"error": "forbidden"})));
    let list = ip_bans(&t, &g, &owner).await;
    assert_eq!(list["bans"].as_array().map(Vec::len), Some(1), "{list}");
    // Kicking or banning them is refused alike: one rule for all three.
    for action in ["kick", "ban"] {
        let path = format!("/guilds/{g}/members/{}/{action}", admin.id);
        assert_eq!(
            post(&t, &path, &moderator, json!(null)).await,
            (403, json!({"error": "forbidden"})),
            "{action}"
        );
    }
    // The owner outranks them, and may.
    let (status, created) = post(&t, &by_user, &owner, json!({"target_user_id": admin.id})).await;
    assert_eq!(
        (status, &created["created_count"]),
        (200, &json!(1)),
        "{created}"
    );
    t.stack.stop().await.expect("clean shutdown");
}

// --- join addresses ------------------------------------------------------------

const HERE: &str = "203.0.113.10";
const UNKNOWN_GUILD: &str = "203.0.113.11";
const PRIVATE_GUILD: &str = "203.0.113.12";
const ELSEWHERE: &str = "203.0.113.13";

/// Only joins that let the user in record the address, and only for their
/// guild: a ban by user in guild A bans the address the user joined A
/// from, not the ones behind a refused join (an unknown guild, a private
/// one) nor the one they joined guild B from.
async fn join_addresses_stay_in_their_guild(backends: Backends) {
    let Some(t) = TestStack::start_trusting(backends, 1).await else {
        return;
    };
    let (owner, other_owner, target) = (
        t.user("owner").await,
        t.user("other").await,
        t.user("target").await,
    );
    let (a, _) = t.guild_with_channel(&owner, "public").await;
    let (b, _) = t.guild_with_channel(&other_owner, "public").await;
    let (private, _) = t.guild_with_channel(&other_owner, "private").await;
    let unknown = ulid::Ulid::generate().to_string();

    assert_eq!(join_from(&t, &target, &a, HERE).await, 200);
    assert_eq!(join_from(&t, &target, &unknown, UNKNOWN_GUILD).await, 404);
    assert_eq!(join_from(&t, &target, &private, PRIVATE_GUILD).await, 404);
    assert_eq!(join_from(&t, &target, &b, ELSEWHERE).await, 200);

    let by_user = format!("/guilds/{a}/ip-bans/by-user");
    let (status, created) = post(&t, &by_user, &owner, json!({"target_user_id": target.id})).await;
    assert_eq!(
        (status, &created["created_count"]),
        (200, &json!(1)),
        "only the address seen joining A: {created}"
    );

    // The owner's own IP-checked route in A, from each address.
    let channels = format!("/guilds/{a}/channels");
    for (from, status) in [
        (HERE, 403),
        (UNKNOWN_GUILD, 200),
        (PRIVATE_GUILD, 200),
        (ELSEWHERE, 200),
    ] {
        let answer = t
            .call_from(Method::GET, &channels, Some(&owner.token), None, Some(from))
            .await;
        assert_eq!(answer.0, status, "from {from}: {}", answer.1);
    }
    // And B bans nothing by this user it did not see.
    let by_user = format!("/guilds/{b}/ip-bans/by-user");
    let (status, created) = post(
        &t,
        &by_user,
        &other_owner,
        json!({"target_user_id": target.id}),
    )
    .await;
    assert_eq!(
        (status, &created["created_count"]),
        (200, &json!(1)),
        "{created}"
    );
    let channels = format!("/guilds/{b}/channels");
    let (status, _) = t
        .call_from(
            Method::GET,
            &channels,
            Some(&other_owner.token),
            None,
            Some(HERE),
        )
        .await;
    assert_eq!(status, 200, "A's address is not B's to ban");
    t.stack.stop().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_addresses_stay_in_their_guild_on_sqlite() {
    join_addresses_stay_in_their_guild(Backends::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_addresses_stay_in_their_guild_on_postgres() {
    join_addresses_stay_in_their_guild(Backends::External).await;
}
