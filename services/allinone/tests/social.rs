//! Profiles, avatars and banners, user lookup and friends, end to end: every
//! route's happy path, its refusals, bad input that writes nothing, and who
//! receives each user-scoped event (and who does not).

mod support;

use reqwest::Method;
use reqwest::header::{HeaderMap, HeaderValue};
use serde_json::{Value, json};
use support::{Backends, Socket, TestStack, User};

/// A PNG signature and a few bytes: enough for the sniffer, and small.
const PNG: &[u8] = b"\x89PNG\r\n\x1a\n\0\0\0\0\0\0\0\0avatar one";
const PNG_SHA256: &str = "42653bdd748fb5f998f2daa0b30710e30cb7b0bb5653b2b5f8bfe965cb609528";
const JPEG: &[u8] = b"\xff\xd8\xff\xe0banner jpeg";
const JPEG_SHA256: &str = "c35b3d513e08817f3f96526306535bc4435e05b80fe4f2da0b48eef09e7a92a4";
const MIB: usize = 1024 * 1024;

// --- helpers -----------------------------------------------------------------

async fn patch_profile(t: &TestStack, user: &User, body: Value) -> (u16, Value) {
    t.call(
        Method::PATCH,
        "/users/me/profile",
        Some(&user.token),
        Some(body),
    )
    .await
}

async fn delete(t: &TestStack, path: &str, user: &User) -> (u16, Value) {
    t.call(Method::DELETE, path, Some(&user.token), None).await
}

/// Uploads raw bytes, with a `Content-Type` when given.
async fn upload(
    t: &TestStack,
    kind: &str,
    token: Option<&str>,
    content_type: Option<&str>,
    bytes: Vec<u8>,
) -> (u16, Value) {
    let mut request = t
        .http
        .post(t.api(&format!("/users/me/profile/{kind}")))
        .body(bytes);
    if let Some(content_type) = content_type {
        request = request.header("content-type", content_type);
    }
    t.send(request, token).await
}

/// `GET /users/{u}/{kind}` without a token: status, headers and bytes.
async fn fetch_image(
    t: &TestStack,
    user_id: &str,
    kind: &str,
    if_none_match: Option<&str>,
) -> (u16, HeaderMap, Vec<u8>) {
    let mut request = t.http.get(t.api(&format!("/users/{user_id}/{kind}")));
    if let Some(tag) = if_none_match {
        request = request.header("if-none-match", tag);
    }
    let response = request.send().await.expect("request sent");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let bytes = response.bytes().await.expect("body").to_vec();
    (status, headers, bytes)
}

async fn profile_of(t: &TestStack, viewer: &User, user_id: &str) -> Value {
    let (status, body) = t
        .get(&format!("/users/{user_id}/profile"), Some(&viewer.token))
        .await;
    assert_eq!(status, 200, "{body}");
    body
}

/// Sends a friend request and returns its id.
async fn send_request(t: &TestStack, from: &User, to: &User) -> String {
    let (status, body) = t
        .post(
            "/friends/requests",
            Some(&from.token),
            json!({"recipient_user_id": to.id}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    body["request_id"].as_str().expect("request id").to_owned()
}

async fn befriend(t: &TestStack, a: &User, b: &User) {
    let request_id = send_request(t, a, b).await;
    let (status, body) = t
        .post(
            &format!("/friends/requests/{request_id}/accept"),
            Some(&b.token),
            json!(null),
        )
        .await;
    assert_eq!((status, body), (200, json!({"accepted": true})));
}

/// Proves that nothing reached `socket` before this call: `user` sends a
/// friend request to a brand-new user, which is an event for `user` alone
/// here, so it must be the very next frame on `user`'s socket.
async fn assert_nothing_pending(t: &TestStack, user: &User, socket: &mut Socket) {
    let stranger = t.user("sentinel").await;
    let request_id = send_request(t, user, &stranger).await;
    let frame = socket.next_event().await;
    assert_eq!(frame["t"], "friend_request_create", "{frame}");
    assert_eq!(frame["d"]["request_id"], request_id.as_str(), "{frame}");
}

fn is_unix_now(value: &Value) -> bool {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    value
        .as_i64()
        .and_then(|v| u64::try_from(v).ok())
        .is_some_and(|v| v + 60 >= now && v <= now + 60)
}

// --- profiles ----------------------------------------------------------------

async fn profile_edit_read_and_lookup(backends: Backends) {
    let Some(t) = TestStack::start(backends, 1).await else {
        return;
    };
    let (a, b) = (t.user("alice").await, t.user("bob").await);

    let initial = profile_of(&t, &b, &a.id).await;
    assert_eq!(
        initial,
        json!({
            "user_id": a.id, "username": a.username, "about_markdown": "",
            "about_markdown_tokens": [], "avatar_version": 0, "banner_version": 0,
        })
    );

    let new_name = format!("{}_x", &a.username[..a.username.len().min(28)]);
    let (status, updated) = patch_profile(
        &t,
        &a,
        json!({"username": new_name, "about_markdown": "hi **there**"}),
    )
    .await;
    assert_eq!(status, 200, "{updated}");
    assert_eq!(updated["username"], new_name.as_str());
    assert_eq!(updated["about_markdown"], "hi **there**");
    assert_eq!(
        updated["about_markdown_tokens"],
        json!([
            {"type": "paragraph_start"}, {"type": "text", "text": "hi "},
            {"type": "strong_start"}, {"type": "text", "text": "there"},
            {"type": "strong_end"}, {"type": "paragraph_end"},
        ])
    );
    // Everyone reads the same profile, and /auth/me agrees.
    assert_eq!(profile_of(&t, &b, &a.id).await, updated);
    assert_eq!(
        t.get("/auth/me", Some(&a.token)).await,
        (200, updated.clone())
    );

    // One field at a time leaves the other as it was.
    let (status, about_only) = patch_profile(&t, &a, json!({"about_markdown": ""})).await;
    assert_eq!(status, 200);
    assert_eq!(about_only["username"], new_name.as_str());
    assert_eq!(about_only["about_markdown_tokens"], json!([]));

    // Lookup: unknown ids are left out, known ones come once each.
    let unknown = ulid::Ulid::generate().to_string();
    let (status, found) = t
        .post(
            "/users/lookup",
            Some(&b.token),
            json!({"user_ids": [a.id, unknown, b.id, a.id]}),
        )
        .await;
    assert_eq!(status, 200, "{found}");
    assert_eq!(
        found,
        json!({"users": [
            {"user_id": a.id, "username": new_name, "avatar_version": 0},
            {"user_id": b.id, "username": b.username, "avatar_version": 0},
        ]})
    );
    t.stack.stop().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_profile_edit_read_and_lookup() {
    profile_edit_read_and_lookup(Backends::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_redis_profile_edit_read_and_lookup() {
    profile_edit_read_and_lookup(Backends::External).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn profile_bad_input_is_refused_and_writes_nothing() {
    let t = TestStack::start(Backends::Embedded, 1)
        .await
        .expect("embedded");
    let (a, b) = (t.user("alice").await, t.user("bob").await);
    let before = profile_of(&t, &b, &a.id).await;

    let invalid = json!({"error": "invalid_request"});
    for (body, status) in [
        (json!({}), 400),
        (json!({"username": null}), 400),
        (json!({"username": "x"}), 400),
        (json!({"username": "a".repeat(33)}), 400),
        (json!({"username": "bad name"}), 400),
        (json!({"username": b.username}), 400),
        (json!({"about_markdown": "x".repeat(2049)}), 400),
        (json!({"about_markdown": "nul \u{0} inside"}), 400),
        // Legal length, but its profile_update could not fit one frame:
        // one link definition used 456 times expands far past 64 KiB.
        (json!({"about_markdown": amplified_about()}), 400),
        // A valid field does not carry an invalid one through.
        (json!({"about_markdown": "fine", "username": "no way"}), 400),
        (json!({"about_markdown": "fine", "nickname": "extra"}), 422),
        (json!({"username": 42}), 422),
        (json!({"about_markdown": ["x"]}), 422),
        (json!("about_markdown"), 422),
    ] {
        let (got, error) = patch_profile(&t, &a, body.clone()).await;
        assert_eq!((got, error), (status, invalid.clone()), "{body}");
    }
    let (status, _) = t
        .call(
            Method::PATCH,
            "/users/me/profile",
            None,
            Some(json!({"about_markdown": "anonymous"})),
        )
        .await;
    assert_eq!(status, 401);
    // 2048 bytes is still fine (bytes, not characters: 1024 × "é").
    let (status, _) = patch_profile(&t, &b, json!({"about_markdown": "é".repeat(1024)})).await;
    assert_eq!(status, 200);

    assert_eq!(profile_of(&t, &b, &a.id).await, before);

    // Reading: a bad id, an unknown one, no token.
    let (status, body) = t.get("/users/not-a-ulid/profile", Some(&b.token)).await;
    assert_eq!((status, body), (400, invalid.clone()));
    let unknown = ulid::Ulid::generate().to_string();
    let (status, body) = t
        .get(&format!("/users/{unknown}/profile"), Some(&b.token))
        .await;
    assert_eq!((status, body), (404, json!({"error": "not_found"})));
    let (status, _) = t.get(&format!("/users/{}/profile", a.id), None).await;
    assert_eq!(status, 401);

    // Lookup: 1–64 canonical ids, nothing else.
    let many: Vec<String> = (0..65)
        .map(|_| ulid::Ulid::generate().to_string())
        .collect();
    for (body, status) in [
        (json!({"user_ids": []}), 400),
        (json!({"user_ids": many}), 400),
        (json!({"user_ids": [a.id.to_lowercase()]}), 400),
        (json!({"user_ids": ["nope"]}), 400),
        (json!({"user_ids": [a.id], "extra": 1}), 422),
        (json!({"user_ids": a.id}), 422),
        (json!({}), 422),
    ] {
        let (got, _) = t.post("/users/lookup", Some(&b.token), body.clone()).await;
        assert_eq!(got, status, "{body}");
    }
    let (status, found) = t
        .post(
            "/users/lookup",
            Some(&b.token),
            json!({"user_ids": &many[..64]}),
        )
        .await;
    assert_eq!((status, found), (200, json!({"users": []})));
    let (status, _) = t
        .post("/users/lookup", None, json!({"user_ids": [a.id]}))
        .await;
    assert_eq!(status, 401);
    t.stack.stop().await.expect("clean shutdown");
}

/// Exactly 2048 bytes of markdown whose tokens (each use of the link
/// carries its url) make a `profile_update` over the frame cap.
fn amplified_about() -> String {
    let about = format!("{}\n\n[a]: https://{}", "[a]x".repeat(456), "x".repeat(209));
    assert_eq!(about.len(), 2048);
    about
}

// --- avatars and banners ---------------------------------------------------

async fn images_upload_and_serve(backends: Backends) {
    let Some(t) = TestStack::start(backends, 1).await else {
        return;
    };
    let a = t.user("alice").await;
    assert_eq!(fetch_image(&t, &a.id, "avatar", None).await.0, 404);

    let (status, profile) = upload(
        &t,
        "avatar",
        Some(&a.token),
        Some("image/png"),
        PNG.to_vec(),
    )
    .await;
    assert_eq!(status, 200, "{profile}");
    assert!(is_unix_now(&profile["avatar_version"]), "{profile}");
    assert_eq!(profile["banner_version"], 0);
    let first_version = profile["avatar_version"].as_i64().expect("version");

    // Served without a token, as stored, with its cache headers.
    let (status, headers, bytes) = fetch_image(&t, &a.id, "avatar", None).await;
    assert_eq!(status, 200);
    assert_eq!(bytes, PNG);
    let etag = format!("\"{PNG_SHA256}\"");
    for (name, value) in [
        ("content-type", "image/png"),
        ("x-content-type-options", "nosniff"),
        ("cache-control", "public, max-age=300"),
        ("etag", etag.as_str()),
    ] {
        assert_eq!(
            headers.get(name),
            Some(&HeaderValue::from_str(value).expect("header")),
            "{name}"
        );
    }
    // A revalidation with the same tag costs no bytes.
    let (status, headers, bytes) = fetch_image(&t, &a.id, "avatar", Some(&etag)).await;
    assert_eq!((status, bytes.len()), (304, 0));
    assert_eq!(
        headers.get("etag"),
        Some(&HeaderValue::from_str(&etag).expect("header"))
    );

    // A second upload, even within the same second, gets a newer version.
    let (status, profile) = upload(&t, "avatar", Some(&a.token), None, JPEG.to_vec()).await;
    assert_eq!(status, 200, "{profile}");
    assert!(profile["avatar_version"].as_i64().expect("version") > first_version);
    let (_, headers, bytes) = fetch_image(&t, &a.id, "avatar", Some(&etag)).await;
    assert_eq!(bytes, JPEG);
    assert_eq!(
        headers.get("content-type"),
        Some(&HeaderValue::from_static("image/jpeg"))
    );
    assert_eq!(
        headers.get("etag"),
        Some(&HeaderValue::from_str(&format!("\"{JPEG_SHA256}\"")).expect("header"))
    );

    // Banners are separate, and may be larger than an avatar may.
    assert_eq!(fetch_image(&t, &a.id, "banner", None).await.0, 404);
    let mut big = PNG.to_vec();
    big.resize(3 * MIB, 0);
    let (status, profile) =
        upload(&t, "banner", Some(&a.token), Some("image/png"), big.clone()).await;
    assert_eq!(status, 200, "{profile}");
    assert!(is_unix_now(&profile["banner_version"]), "{profile}");
    let (status, _, bytes) = fetch_image(&t, &a.id, "banner", None).await;
    assert_eq!((status, bytes.len()), (200, big.len()));
    assert_eq!(profile_of(&t, &a, &a.id).await, profile);
    let (status, found) = t
        .post("/users/lookup", Some(&a.token), json!({"user_ids": [a.id]}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        found["users"][0]["avatar_version"],
        profile["avatar_version"]
    );
    t.stack.stop().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_images_upload_and_serve() {
    images_upload_and_serve(Backends::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_redis_images_upload_and_serve() {
    images_upload_and_serve(Backends::External).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_bad_input_is_refused_and_writes_nothing() {
    let t = TestStack::start(Backends::Embedded, 1)
        .await
        .expect("embedded");
    let a = t.user("alice").await;
    let invalid = json!({"error": "invalid_request"});
    let too_large = json!({"error": "payload_too_large"});
    let mut over_avatar = PNG.to_vec();
    over_avatar.resize(2 * MIB + 1, 0);
    let mut over_banner = PNG.to_vec();
    over_banner.resize(6 * MIB + 1, 0);
    let mut max_avatar = b"not an image".to_vec();
    max_avatar.resize(2 * MIB, 0);

    for (kind, content_type, bytes, expected) in [
        ("avatar", None, Vec::new(), (400, invalid.clone())),
        (
            "avatar",
            None,
            b"just some text".to_vec(),
            (400, invalid.clone()),
        ),
        (
            "avatar",
            Some("image/jpeg"),
            PNG.to_vec(),
            (400, invalid.clone()),
        ),
        (
            "avatar",
            Some("text/plain"),
            PNG.to_vec(),
            (400, invalid.clone()),
        ),
        (
            "avatar",
            Some("image/svg+xml"),
            b"<svg/>".to_vec(),
            (400, invalid.clone()),
        ),
        // At the cap it is read whole (and refused for its content)...
        ("avatar", None, max_avatar, (400, invalid.clone())),
        // ...one byte over it is too large, whatever it is.
        (
            "avatar",
            Some("image/png"),
            over_avatar,
            (413, too_large.clone()),
        ),
        (
            "banner",
            Some("image/png"),
            over_banner,
            (413, too_large.clone()),
        ),
        (
            "banner",
            Some("image/png"),
            Vec::new(),
            (400, invalid.clone()),
        ),
    ] {
        let got = upload(&t, kind, Some(&a.token), content_type, bytes).await;
        assert_eq!(got, expected, "{kind} {content_type:?}");
    }
    let (status, _) = upload(&t, "avatar", None, Some("image/png"), PNG.to_vec()).await;
    assert_eq!(status, 401);
    let (status, _) = upload(
        &t,
        "avatar",
        Some("not-a-token-but-long-enough-to-check"),
        None,
        PNG.to_vec(),
    )
    .await;
    assert_eq!(status, 401);

    // Nothing was stored, and the versions did not move.
    for kind in ["avatar", "banner"] {
        assert_eq!(fetch_image(&t, &a.id, kind, None).await.0, 404);
    }
    let profile = profile_of(&t, &a, &a.id).await;
    assert_eq!(
        (
            profile["avatar_version"].clone(),
            profile["banner_version"].clone()
        ),
        (json!(0), json!(0))
    );
    // A bad id on the public GET.
    assert_eq!(fetch_image(&t, "nope", "avatar", None).await.0, 400);
    t.stack.stop().await.expect("clean shutdown");
}

// --- friends -----------------------------------------------------------------

async fn friend_routes(backends: Backends) {
    let Some(t) = TestStack::start(backends, 1).await else {
        return;
    };
    let (a, b, c) = (
        t.user("alice").await,
        t.user("bob").await,
        t.user("carol").await,
    );

    let (status, created) = t
        .post(
            "/friends/requests",
            Some(&a.token),
            json!({"recipient_user_id": b.id}),
        )
        .await;
    assert_eq!(status, 200, "{created}");
    let request_id = created["request_id"].as_str().expect("id").to_owned();
    assert_eq!(created["sender_user_id"], a.id.as_str());
    assert_eq!(created["recipient_user_id"], b.id.as_str());
    assert!(is_unix_now(&created["created_at_unix"]));
    assert_eq!(created.as_object().map(serde_json::Map::len), Some(4));

    let entry = json!({
        "request_id": request_id, "sender_user_id": a.id, "sender_username": a.username,
        "recipient_user_id": b.id, "recipient_username": b.username,
        "created_at_unix": created["created_at_unix"],
    });
    assert_eq!(
        t.get("/friends/requests", Some(&a.token)).await,
        (200, json!({"incoming": [], "outgoing": [entry]}))
    );
    assert_eq!(
        t.get("/friends/requests", Some(&b.token)).await,
        (200, json!({"incoming": [entry], "outgoing": []}))
    );

    // Someone else's request: not theirs to accept or delete. The sender
    // cannot accept it either.
    let accept_path = format!("/friends/requests/{request_id}/accept");
    for user in [&c, &a] {
        let (status, body) = t.post(&accept_path, Some(&user.token), json!(null)).await;
        assert_eq!((status, body), (404, json!({"error": "not_found"})));
    }
    let request_path = format!("/friends/requests/{request_id}");
    assert_eq!(
        delete(&t, &request_path, &c).await,
        (404, json!({"error": "not_found"}))
    );
    assert_eq!(
        t.get("/friends/requests", Some(&b.token)).await.1["incoming"],
        json!([entry])
    );

    let (status, body) = t.post(&accept_path, Some(&b.token), json!(null)).await;
    assert_eq!((status, body), (200, json!({"accepted": true})));
    let (status, again) = t.post(&accept_path, Some(&b.token), json!(null)).await;
    assert_eq!((status, again), (404, json!({"error": "not_found"})));
    for (user, friend) in [(&a, &b), (&b, &a)] {
        let (status, list) = t.get("/friends", Some(&user.token)).await;
        assert_eq!(status, 200);
        assert_eq!(list["friends"].as_array().map(Vec::len), Some(1), "{list}");
        assert_eq!(list["friends"][0]["user_id"], friend.id.as_str());
        assert_eq!(list["friends"][0]["username"], friend.username.as_str());
        assert!(is_unix_now(&list["friends"][0]["created_at_unix"]));
        assert_eq!(
            t.get("/friends/requests", Some(&user.token)).await,
            (200, json!({"incoming": [], "outgoing": []}))
        );
    }

    // Declining (recipient) and cancelling (sender) both delete.
    let declined = send_request(&t, &c, &a).await;
    assert_eq!(
        delete(&t, &format!("/friends/requests/{declined}"), &a).await,
        (204, Value::Null)
    );
    assert_eq!(
        delete(&t, &format!("/friends/requests/{declined}"), &c)
            .await
            .0,
        404
    );
    let cancelled = send_request(&t, &c, &a).await;
    assert_eq!(
        delete(&t, &format!("/friends/requests/{cancelled}"), &c).await,
        (204, Value::Null)
    );
    assert_eq!(
        t.get("/friends/requests", Some(&a.token)).await.1["incoming"],
        json!([])
    );

    // Unfriending is idempotent and needs no friendship.
    assert_eq!(
        delete(&t, &format!("/friends/{}", a.id), &b).await,
        (204, Value::Null)
    );
    assert_eq!(
        delete(&t, &format!("/friends/{}", a.id), &b).await,
        (204, Value::Null)
    );
    assert_eq!(
        delete(&t, &format!("/friends/{}", c.id), &b).await,
        (204, Value::Null)
    );
    for user in [&a, &b] {
        assert_eq!(
            t.get("/friends", Some(&user.token)).await,
            (200, json!({"friends": []}))
        );
    }
    // ...and they may befriend each other again.
    befriend(&t, &b, &a).await;
    t.stack.stop().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_friend_routes() {
    friend_routes(Backends::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_redis_friend_routes() {
    friend_routes(Backends::External).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn friend_bad_input_is_refused_and_writes_nothing() {
    let t = TestStack::start(Backends::Embedded, 1)
        .await
        .expect("embedded");
    let (a, b, c) = (
        t.user("alice").await,
        t.user("bob").await,
        t.user("carol").await,
    );
    let invalid = json!({"error": "invalid_request"});
    let unknown = ulid::Ulid::generate().to_string();
    for (body, status) in [
        (json!({"recipient_user_id": a.id}), 400),
        (json!({"recipient_user_id": unknown}), 400),
        (json!({"recipient_user_id": "nope"}), 400),
        (json!({"recipient_user_id": b.id.to_lowercase()}), 400),
        (json!({"recipient_user_id": b.id, "note": "hi"}), 422),
        (json!({"recipient_user_id": 7}), 422),
        (json!({}), 422),
    ] {
        let (got, _) = t
            .post("/friends/requests", Some(&a.token), body.clone())
            .await;
        assert_eq!(got, status, "{body}");
    }
    let (status, _) = t
        .post(
            "/friends/requests",
            None,
            json!({"recipient_user_id": b.id}),
        )
        .await;
    assert_eq!(status, 401);
    assert_eq!(
        t.get("/friends/requests", Some(&a.token)).await,
        (200, json!({"incoming": [], "outgoing": []}))
    );

    // Pending either way, and already friends: refused, nothing new.
    send_request(&t, &a, &b).await;
    for (from, to) in [(&a, &b), (&b, &a)] {
        let (status, body) = t
            .post(
                "/friends/requests",
                Some(&from.token),
                json!({"recipient_user_id": to.id}),
            )
            .await;
        assert_eq!((status, body), (400, invalid.clone()));
    }
    befriend(&t, &c, &a).await;
    for (from, to) in [(&a, &c), (&c, &a)] {
        let (status, _) = t
            .post(
                "/friends/requests",
                Some(&from.token),
                json!({"recipient_user_id": to.id}),
            )
            .await;
        assert_eq!(status, 400);
    }
    let (_, lists) = t.get("/friends/requests", Some(&a.token)).await;
    assert_eq!(
        lists["outgoing"].as_array().map(Vec::len),
        Some(1),
        "{lists}"
    );
    assert_eq!(lists["incoming"], json!([]));

    // Path ids: bad ones are 400, unknown requests 404.
    assert_eq!(
        t.post("/friends/requests/nope/accept", Some(&a.token), json!(null))
            .await
            .0,
        400
    );
    assert_eq!(
        t.post(
            &format!("/friends/requests/{unknown}/accept"),
            Some(&a.token),
            json!(null)
        )
        .await
        .0,
        404
    );
    assert_eq!(delete(&t, "/friends/requests/nope", &a).await.0, 400);
    assert_eq!(
        delete(&t, &format!("/friends/requests/{unknown}"), &a)
            .await
            .0,
        404
    );
    assert_eq!(
        delete(&t, "/friends/nope", &a).await,
        (400, invalid.clone())
    );
    assert_eq!(
        delete(&t, &format!("/friends/{}", a.id), &a).await,
        (400, invalid.clone())
    );
    for path in ["/friends", "/friends/requests"] {
        assert_eq!(t.get(path, None).await.0, 401);
    }
    // The friendship survived all of that.
    let (_, friends) = t.get("/friends", Some(&a.token)).await;
    assert_eq!(friends["friends"][0]["user_id"], c.id.as_str());
    t.stack.stop().await.expect("clean shutdown");
}

// --- events ------------------------------------------------------------------

/// A edits their profile and uploads images. A (two sockets, one on each
/// gateway), their friend F and their guild-mate G hear about each change
/// exactly once; stranger S, who has a guild and a friend of their own,
/// hears nothing.
async fn profile_events_reach_self_friends_and_guild_mates_only(backends: Backends) {
    let Some(t) = TestStack::start(backends, 2).await else {
        return;
    };
    let (a, f, g, s, s_friend) = (
        t.user("alice").await,
        t.user("frank").await,
        t.user("gina").await,
        t.user("sam").await,
        t.user("sams_friend").await,
    );
    let (guild, channel) = t.guild_with_channel(&a, "public").await;
    t.join(&g, &guild).await;
    let (s_guild, s_channel) = t.guild_with_channel(&s, "private").await;
    befriend(&t, &a, &f).await;
    befriend(&t, &s, &s_friend).await;

    let mut sa0 = t.connect(0, &a).await;
    let mut sa1 = t.connect(1, &a).await;
    let mut sf = t.connect(1, &f).await;
    let mut sg = t.connect(0, &g).await;
    let mut ss = t.connect(1, &s).await;
    sg.subscribed(&guild, &channel).await;
    ss.subscribed(&s_guild, &s_channel).await;
    // G's arrival in the guild is announced to nobody we listen on.

    let (status, updated) = patch_profile(
        &t,
        &a,
        json!({"about_markdown": "new *about*", "username": format!("{}_2", a.username)}),
    )
    .await;
    assert_eq!(status, 200, "{updated}");
    let expected = json!({
        "v": 1, "t": "profile_update",
        "d": {
            "user_id": a.id,
            "updated_fields": {
                "username": updated["username"],
                "about_markdown": "new *about*",
                "about_markdown_tokens": updated["about_markdown_tokens"],
            },
            "updated_at_unix": null,
        },
    });
    for socket in [&mut sa0, &mut sa1, &mut sf, &mut sg] {
        let mut frame = socket.next_event().await;
        assert!(is_unix_now(&frame["d"]["updated_at_unix"]), "{frame}");
        frame["d"]["updated_at_unix"] = Value::Null;
        assert_eq!(frame, expected);
    }

    // Only the about text: no username in the event.
    let (status, _) = patch_profile(&t, &a, json!({"about_markdown": "plain"})).await;
    assert_eq!(status, 200);
    for socket in [&mut sa0, &mut sf, &mut sg] {
        let frame = socket.next_event().await;
        assert_eq!(frame["t"], "profile_update");
        assert_eq!(
            frame["d"]["updated_fields"],
            json!({"about_markdown": "plain", "about_markdown_tokens": [
                {"type": "paragraph_start"}, {"type": "text", "text": "plain"}, {"type": "paragraph_end"},
            ]})
        );
    }
    assert_eq!(sa1.next_event().await["t"], "profile_update");

    let (status, profile) = upload(
        &t,
        "avatar",
        Some(&a.token),
        Some("image/png"),
        PNG.to_vec(),
    )
    .await;
    assert_eq!(status, 200, "{profile}");
    let (status, profile) = upload(
        &t,
        "banner",
        Some(&a.token),
        Some("image/jpeg"),
        JPEG.to_vec(),
    )
    .await;
    assert_eq!(status, 200, "{profile}");
    for socket in [&mut sa0, &mut sa1, &mut sf, &mut sg] {
        let avatar = socket.next_event().await;
        assert_eq!(avatar["t"], "profile_avatar_update", "{avatar}");
        assert_eq!(avatar["d"]["user_id"], a.id.as_str());
        assert_eq!(avatar["d"]["avatar_version"], profile["avatar_version"]);
        assert!(is_unix_now(&avatar["d"]["updated_at_unix"]));
        let banner = socket.next_event().await;
        assert_eq!(banner["t"], "profile_banner_update", "{banner}");
        assert_eq!(banner["d"]["user_id"], a.id.as_str());
        assert_eq!(banner["d"]["banner_version"], profile["banner_version"]);
    }

    // Refused edits publish nothing; then the sentinels: nobody got a
    // duplicate, and S got none of it.
    let (status, _) = patch_profile(&t, &a, json!({"username": "bad name"})).await;
    assert_eq!(status, 400);
    let (status, _) = upload(&t, "avatar", Some(&a.token), None, b"text".to_vec()).await;
    assert_eq!(status, 400);
    for (user, socket) in [(&a, &mut sa0), (&f, &mut sf), (&g, &mut sg), (&s, &mut ss)] {
        assert_nothing_pending(&t, user, socket).await;
    }
    // A's own second socket got the sentinel A sent too, and nothing else.
    assert_eq!(sa1.next_event().await["t"], "friend_request_create");

    // S's own change reaches S but not A's circle.
    let (status, _) = patch_profile(&t, &s, json!({"about_markdown": "sam here"})).await;
    assert_eq!(status, 200);
    let frame = ss.next_event().await;
    assert_eq!(
        (frame["t"].as_str(), frame["d"]["user_id"].as_str()),
        (Some("profile_update"), Some(s.id.as_str()))
    );
    for (user, socket) in [(&f, &mut sf), (&g, &mut sg)] {
        assert_nothing_pending(&t, user, socket).await;
    }
    t.stack.stop().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_profile_events_reach_self_friends_and_guild_mates_only() {
    profile_events_reach_self_friends_and_guild_mates_only(Backends::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_redis_profile_events_reach_self_friends_and_guild_mates_only() {
    profile_events_reach_self_friends_and_guild_mates_only(Backends::External).await;
}

/// A and B on different gateways go through a request, an acceptance and
/// an unfriending; C (a stranger, connected) hears none of it. Each party
/// gets its own `friend_request_update` and `friend_remove`, naming the
/// other party.
async fn friend_events_reach_both_parties_each_their_own_copy(backends: Backends) {
    let Some(t) = TestStack::start(backends, 2).await else {
        return;
    };
    let (a, b, c) = (
        t.user("alice").await,
        t.user("bob").await,
        t.user("carol").await,
    );
    let mut sa = t.connect(0, &a).await;
    let mut sb = t.connect(1, &b).await;
    let mut sc = t.connect(0, &c).await;

    let (status, created) = t
        .post(
            "/friends/requests",
            Some(&a.token),
            json!({"recipient_user_id": b.id}),
        )
        .await;
    assert_eq!(status, 200, "{created}");
    let request_id = created["request_id"].as_str().expect("id").to_owned();
    let expected = json!({"v": 1, "t": "friend_request_create", "d": {
        "request_id": request_id, "sender_user_id": a.id, "sender_username": a.username,
        "recipient_user_id": b.id, "recipient_username": b.username,
        "created_at_unix": created["created_at_unix"],
    }});
    for socket in [&mut sa, &mut sb] {
        assert_eq!(socket.next_event().await, expected);
    }

    // A refused accept (the sender's) publishes nothing.
    let accept = format!("/friends/requests/{request_id}/accept");
    assert_eq!(t.post(&accept, Some(&a.token), json!(null)).await.0, 404);
    let (status, _) = t.post(&accept, Some(&b.token), json!(null)).await;
    assert_eq!(status, 200);
    let (_, friends) = t.get("/friends", Some(&a.token)).await;
    let since = friends["friends"][0]["created_at_unix"].clone();
    for (socket, me, other) in [(&mut sa, &a, &b), (&mut sb, &b, &a)] {
        let mut frame = socket.next_event().await;
        assert!(is_unix_now(&frame["d"]["updated_at_unix"]), "{frame}");
        frame["d"]["updated_at_unix"] = Value::Null;
        assert_eq!(
            frame,
            json!({"v": 1, "t": "friend_request_update", "d": {
                "request_id": request_id, "state": "accepted",
                "user_id": me.id, "friend_user_id": other.id, "friend_username": other.username,
                "friendship_created_at_unix": since, "updated_at_unix": null,
                "actor_user_id": b.id,
            }})
        );
    }
    // Exactly one copy each.
    assert_nothing_pending(&t, &a, &mut sa).await;
    assert_nothing_pending(&t, &b, &mut sb).await;

    // A request from C that A declines: create and delete reach C and A.
    let declined = send_request(&t, &c, &a).await;
    for socket in [&mut sc, &mut sa] {
        let frame = socket.next_event().await;
        assert_eq!(
            (frame["t"].as_str(), frame["d"]["request_id"].as_str()),
            (Some("friend_request_create"), Some(declined.as_str()))
        );
    }
    assert_eq!(
        delete(&t, &format!("/friends/requests/{declined}"), &a)
            .await
            .0,
        204
    );
    for socket in [&mut sc, &mut sa] {
        let frame = socket.next_event().await;
        assert_eq!(frame["t"], "friend_request_delete", "{frame}");
        assert_eq!(frame["d"]["request_id"], declined.as_str());
        assert_eq!(frame["d"]["actor_user_id"], a.id.as_str());
        assert!(is_unix_now(&frame["d"]["deleted_at_unix"]));
    }

    // Unfriending: each side its own copy; a second time tells nobody.
    assert_eq!(delete(&t, &format!("/friends/{}", a.id), &b).await.0, 204);
    for (socket, me, other) in [(&mut sa, &a, &b), (&mut sb, &b, &a)] {
        let frame = socket.next_event().await;
        assert_eq!(frame["t"], "friend_remove", "{frame}");
        assert_eq!(frame["d"]["user_id"], me.id.as_str());
        assert_eq!(frame["d"]["friend_user_id"], other.id.as_str());
        assert_eq!(frame["d"]["actor_user_id"], b.id.as_str());
        assert!(is_unix_now(&frame["d"]["removed_at_unix"]));
    }
    assert_eq!(delete(&t, &format!("/friends/{}", b.id), &a).await.0, 204);
    for (user, socket) in [(&a, &mut sa), (&b, &mut sb), (&c, &mut sc)] {
        assert_nothing_pending(&t, user, socket).await;
    }
    t.stack.stop().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_friend_events_reach_both_parties_each_their_own_copy() {
    friend_events_reach_both_parties_each_their_own_copy(Backends::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_redis_friend_events_reach_both_parties_each_their_own_copy() {
    friend_events_reach_both_parties_each_their_own_copy(Backends::External).await;
}
