//! Bad input gets its documented error, and nothing is written.

mod support;

use serde_json::json;
use support::{Backends, PASSWORD, TestStack};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_failures_are_documented_and_write_nothing() {
    let t = TestStack::start(Backends::Embedded, 1)
        .await
        .expect("embedded");
    let a = t.user("alice").await;

    // A wrong password.
    let (status, body) = t
        .post(
            "/auth/login",
            None,
            json!({"username": a.username, "password": "wrong password!!"}),
        )
        .await;
    assert_eq!(
        (status, body),
        (401, json!({"error": "invalid_credentials"}))
    );

    // A duplicate username: accepted (existence is not disclosed) but
    // nothing is written: the old password still works, the new one not.
    let (status, body) = t
        .post(
            "/auth/register",
            None,
            json!({"username": a.username, "password": "another password"}),
        )
        .await;
    assert_eq!((status, body), (200, json!({"accepted": true})));
    let (status, _) = t
        .post(
            "/auth/login",
            None,
            json!({"username": a.username, "password": "another password"}),
        )
        .await;
    assert_eq!(status, 401);
    let (status, _) = t
        .post(
            "/auth/login",
            None,
            json!({"username": a.username, "password": PASSWORD}),
        )
        .await;
    assert_eq!(status, 200);

    // Register input that breaks the rules.
    for bad in [
        json!({"username": "x", "password": PASSWORD}),
        json!({"username": "bad name", "password": PASSWORD}),
        json!({"username": "fine_name", "password": "short"}),
    ] {
        let (status, body) = t.post("/auth/register", None, bad.clone()).await;
        assert_eq!(
            (status, body),
            (400, json!({"error": "invalid_request"})),
            "{bad}"
        );
    }

    // A missing token, a malformed one, and an expired one.
    let (status, body) = t.get("/auth/me", None).await;
    assert_eq!(
        (status, body),
        (401, json!({"error": "invalid_credentials"}))
    );
    let (status, _) = t
        .get("/auth/me", Some("not-a-token-but-long-enough-to-check"))
        .await;
    assert_eq!(status, 401);
    let expired = expired_token(&a.id);
    let (status, body) = t.get("/auth/me", Some(&expired)).await;
    assert_eq!(
        (status, body),
        (401, json!({"error": "invalid_credentials"}))
    );

    t.stack.stop().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_tokens_rotate_and_a_replay_revokes_the_session() {
    let t = TestStack::start(Backends::Embedded, 1)
        .await
        .expect("embedded");
    let a = t.user("alice").await;
    let (status, first) = t
        .post(
            "/auth/refresh",
            None,
            json!({"refresh_token": a.refresh_token}),
        )
        .await;
    assert_eq!(status, 200);
    assert_ne!(first["refresh_token"], a.refresh_token.as_str());
    // Replaying the rotated token fails and revokes the whole session...
    let (status, _) = t
        .post(
            "/auth/refresh",
            None,
            json!({"refresh_token": a.refresh_token}),
        )
        .await;
    assert_eq!(status, 401);
    // ...so even the newest token no longer works.
    let (status, _) = t
        .post(
            "/auth/refresh",
            None,
            json!({"refresh_token": first["refresh_token"]}),
        )
        .await;
    assert_eq!(status, 401);
    t.stack.stop().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_bodies_are_rejected_and_write_nothing() {
    let t = TestStack::start(Backends::Embedded, 1)
        .await
        .expect("embedded");
    let a = t.user("alice").await;
    let (guild, channel) = t.guild_with_channel(&a, "private").await;
    let messages = format!("/guilds/{guild}/channels/{channel}/messages");

    // Content of 2001 bytes.
    let (status, body) = t
        .post(
            &messages,
            Some(&a.token),
            json!({"content": "x".repeat(2001)}),
        )
        .await;
    assert_eq!((status, body), (400, json!({"error": "invalid_request"})));
    // Legal content whose event would not fit in a 64 KiB gateway frame
    // (2000 bytes of nested list markers make ~4000 markdown tokens).
    let (status, body) = t
        .post(
            &messages,
            Some(&a.token),
            json!({"content": format!("{}x", "- ".repeat(999))}),
        )
        .await;
    assert_eq!((status, body), (400, json!({"error": "invalid_request"})));
    // An unknown JSON field.
    let (status, body) = t
        .post(
            &messages,
            Some(&a.token),
            json!({"content": "hi", "pinned": true}),
        )
        .await;
    assert_eq!((status, body), (422, json!({"error": "invalid_request"})));
    // A wrong type.
    let (status, _) = t
        .post(&messages, Some(&a.token), json!({"content": 7}))
        .await;
    assert_eq!(status, 422);
    // Malformed JSON.
    let (status, body) = t.post_raw(&messages, Some(&a.token), "{\"content\":").await;
    assert_eq!((status, body), (400, json!({"error": "invalid_request"})));
    // None of it was written.
    let (status, page) = t.get(&messages, Some(&a.token)).await;
    assert_eq!(status, 200);
    assert_eq!(page, json!({"messages": [], "next_before": null}));

    // An unknown field on guild creation writes no guild.
    let (status, _) = t
        .post(
            "/guilds",
            Some(&a.token),
            json!({"name": "G2", "owner": "me"}),
        )
        .await;
    assert_eq!(status, 422);
    let (_, guilds) = t.get("/guilds", Some(&a.token)).await;
    assert_eq!(guilds["guilds"].as_array().map(Vec::len), Some(1));

    // A non-member can neither read nor write the channel.
    let b = t.user("bob").await;
    let (status, body) = t
        .post(&messages, Some(&b.token), json!({"content": "hi"}))
        .await;
    assert_eq!((status, body), (403, json!({"error": "forbidden"})));
    let (status, _) = t.get(&messages, Some(&b.token)).await;
    assert_eq!(status, 403);
    t.stack.stop().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_refuses_missing_forged_and_expired_tokens_before_upgrading() {
    let t = TestStack::start(Backends::Embedded, 1)
        .await
        .expect("embedded");
    let a = t.user("alice").await;
    let gateway = t.stack.gateway_addrs[0];
    let forged = {
        let mut token = a.token.clone();
        token.pop();
        token.push(if a.token.ends_with('A') { 'B' } else { 'A' });
        token
    };
    for (label, query) in [
        ("missing", String::new()),
        ("forged", format!("?access_token={forged}")),
        ("expired", format!("?access_token={}", expired_token(&a.id))),
    ] {
        let url = format!("ws://{gateway}/gateway/ws{query}");
        let err = tokio_tungstenite::connect_async(url)
            .await
            .expect_err("refused");
        let tokio_tungstenite::tungstenite::Error::Http(response) = err else {
            panic!("{label}: expected an HTTP refusal, got {err}");
        };
        assert_eq!(response.status(), 401, "{label}");
        let body: serde_json::Value =
            serde_json::from_slice(response.body().as_deref().unwrap_or_default()).expect("json");
        assert_eq!(body, json!({"error": "invalid_credentials"}), "{label}");
    }
    t.stack.stop().await.expect("clean shutdown");
}

/// An access token for `user_id` that expired a minute ago, signed with the
/// stack's real key: only the expiry is wrong.
fn expired_token(user_id: &str) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;
    let claims = json!({
        "sub": user_id, "username": "alice",
        "iat": now - 1000, "nbf": now - 1000, "exp": now - 60,
    });
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(support::TOKEN_SECRET),
    )
    .expect("token")
}

/// PROTOCOL.md §4.2, the auth-route limiter: each auth route counts its own requests per
/// client address in a sliding minute; past the limit it is a 429 with
/// nothing done, while other routes and other addresses go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_routes_are_limited_per_route_and_address() {
    let t = TestStack::start_with(Backends::Embedded, 1, |config| {
        config.tune_api = |api| {
            api.auth_route_per_minute = 3;
            api.trusted_proxy_cidrs = vec!["127.0.0.0/8".parse().expect("network")];
        };
    })
    .await
    .expect("embedded");
    // One register and one login so far, from loopback.
    let alice = t.user("alice").await;
    let login = json!({"username": alice.username, "password": PASSWORD});
    let from = |ip: &'static str| {
        t.http
            .post(t.api("/auth/login"))
            .header("x-forwarded-for", ip)
            .json(&login)
    };
    for _ in 0..3 {
        let response = from("198.51.100.20").send().await.expect("sent");
        assert_eq!(response.status(), 200);
    }
    let refused = from("198.51.100.20").send().await.expect("sent");
    assert_eq!(refused.status(), 429);
    assert_eq!(
        refused.json::<serde_json::Value>().await.expect("json"),
        json!({"error": "rate_limited"})
    );
    // Another address, and another route from the same address, are fine.
    assert_eq!(
        from("198.51.100.21").send().await.expect("sent").status(),
        200
    );
    let (status, _) = t
        .call_raw(
            reqwest::Method::PATCH,
            "/users/me/profile",
            Some(&alice.token),
            json!({"about_markdown": "still here"}).to_string(),
        )
        .await;
    assert_eq!(status, 200);
    t.stack.stop().await.expect("clean shutdown");
}

/// PROTOCOL.md §1.2: a body not declared as JSON is a 415; a well-formed JSON body of
/// the wrong shape is a 422 even where serde calls it a syntax error (a
/// number where an enum belongs); text that is not JSON is a 400.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_errors_are_415_422_and_400() {
    let t = TestStack::start(Backends::Embedded, 1)
        .await
        .expect("embedded");
    let alice = t.user("alice").await;
    let undeclared = t
        .http
        .post(t.api("/guilds"))
        .bearer_auth(&alice.token)
        .body(r#"{"name":"no type","visibility":"public"}"#)
        .send()
        .await
        .expect("sent");
    assert_eq!(undeclared.status(), 415);
    let (status, body) = t
        .post(
            "/guilds",
            Some(&alice.token),
            json!({"name": "typed", "visibility": 7}),
        )
        .await;
    assert_eq!((status, body), (422, json!({"error": "invalid_request"})));
    let (status, _) = t
        .call_raw(
            reqwest::Method::POST,
            "/guilds",
            Some(&alice.token),
            "{not json".to_owned(),
        )
        .await;
    assert_eq!(status, 400);
    let (_, guilds) = t.get("/guilds", Some(&alice.token)).await;
    assert_eq!(guilds["guilds"], json!([]), "nothing was created");
    t.stack.stop().await.expect("clean shutdown");
}
