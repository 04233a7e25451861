//! Hostile text (issue 15), on SQLite and on Postgres.
//!
//! A NUL (U+0000) is the one code point a Rust `String` holds that Postgres
//! `text` cannot, so a NUL that got past ingress was a 500 on Postgres and a
//! stored value on SQLite. One table sends a NUL in every text field of
//! every route — body fields, query parameters, path segments, and the
//! socket's `message_create` — and each must get its route's documented
//! error on both backends and write nothing: the whole world the caller can
//! see (guilds, channels, roles, members, messages and their reactions, IP
//! bans, the audit log, profiles, friend requests) is read before and after
//! every case and must not change.
//!
//! Also here: a body that is not JSON because a string in it is broken (a
//! lone surrogate escape, invalid UTF-8) is a 400 like any other malformed
//! JSON, and uploads are served so that a browser never runs them.

mod support;

use reqwest::Method;
use serde_json::{Value, json};
use support::{Backends, PASSWORD, TestStack, User};

/// Room for the table: every case reads the world twice.
fn roomy_limits(config: &mut filament_allinone::StackConfig) {
    config.tune_api = |api| {
        api.rate_limit_per_minute = 100_000;
        api.auth_route_per_minute = 10_000;
    };
}

/// The objects the table's routes act on.
struct World {
    t: TestStack,
    owner: User,
    member: User,
    guild: String,
    channel: String,
    message: String,
    role: String,
}

impl World {
    async fn start(backends: Backends) -> Option<Self> {
        let t = TestStack::start_with(backends, 1, roomy_limits).await?;
        let owner = t.user("owner").await;
        let member = t.user("member").await;
        let (guild, channel) = t.guild_with_channel(&owner, "public").await;
        // A directory join: it records an address, so a ban by user has
        // something to ban.
        t.join(&member, &guild).await;
        let (status, message) = t
            .post(
                &format!("/guilds/{guild}/channels/{channel}/messages"),
                Some(&owner.token),
                json!({"content": "hello"}),
            )
            .await;
        assert_eq!(status, 200, "{message}");
        let (status, role) = t
            .post(
                &format!("/guilds/{guild}/roles"),
                Some(&owner.token),
                json!({"name": "helpers", "permissions": ["create_message"]}),
            )
            .await;
        assert_eq!(status, 200, "{role}");
        Some(Self {
            message: message["message_id"].as_str().expect("id").to_owned(),
            role: role["role_id"].as_str().expect("id").to_owned(),
            t,
            owner,
            member,
            guild,
            channel,
        })
    }

    /// Everything a hostile call could have written, as the owner and the
    /// member see it.
    async fn snapshot(&self) -> Vec<(String, u16, Value)> {
        let (g, c) = (&self.guild, &self.channel);
        let owner_reads = [
            "/auth/me".to_owned(),
            "/guilds".to_owned(),
            "/guilds/public".to_owned(),
            "/friends/requests".to_owned(),
            format!("/guilds/{g}/channels"),
            format!("/guilds/{g}/roles"),
            format!("/guilds/{g}/members?limit=200"),
            format!("/guilds/{g}/channels/{c}/messages?limit=100"),
            format!("/guilds/{g}/ip-bans?limit=100"),
            format!("/guilds/{g}/audit?limit=100"),
        ];
        let member_reads = ["/auth/me", "/guilds", "/friends/requests"];
        let mut seen = Vec::new();
        for path in owner_reads {
            let (status, body) = self.t.get(&path, Some(&self.owner.token)).await;
            seen.push((format!("owner GET {path}"), status, body));
        }
        for path in member_reads {
            let (status, body) = self.t.get(path, Some(&self.member.token)).await;
            seen.push((format!("member GET {path}"), status, body));
        }
        seen
    }
}

/// One hostile call.
struct Case {
    /// The field that carries the NUL.
    field: &'static str,
    method: Method,
    path: String,
    body: Body,
    /// Sent with the owner's token, or none.
    authenticated: bool,
    status: u16,
    error: &'static str,
    /// A username the call would have registered: it must still be free.
    unregistered: Option<String>,
}

enum Body {
    None,
    Json(Value),
    /// Raw bytes (an upload).
    Bytes(&'static [u8]),
}

/// "a", NUL, "b".
const NUL_TEXT: &str = "a\u{0}b";
/// The same, percent-encoded for a query or a path.
const NUL_URL: &str = "a%00b";
/// A PNG as far as sniffing goes.
const PNG: &[u8] = b"\x89PNG\r\n\x1a\n\0\0\0\0\0\0\0\0hostile";

fn cases(w: &World) -> Vec<Case> {
    let (g, c, m, r) = (&w.guild, &w.channel, &w.message, &w.role);
    let member = &w.member.id;
    let fresh = || {
        format!(
            "fresh_{}",
            ulid::Ulid::generate().to_string()[16..].to_lowercase()
        )
    };
    let (free_by_password, free_by_captcha) = (fresh(), fresh());
    let case = |field, method, path: String, body, status, error| Case {
        field,
        method,
        path,
        body,
        authenticated: true,
        status,
        error,
        unregistered: None,
    };
    let bad = "invalid_request";
    let json = Body::Json;
    let post = || Method::POST;
    let patch = || Method::PATCH;
    let get = || Method::GET;
    let messages = format!("/guilds/{g}/channels/{c}/messages");
    vec![
        // The five that were 500s on Postgres (the socket's is its own test).
        case(
            "message content",
            post(),
            messages.clone(),
            json(json!({"content": NUL_TEXT})),
            400,
            bad,
        ),
        case(
            "message content (with attachments allowed empty)",
            post(),
            messages.clone(),
            json(json!({"content": "\u{0}", "attachment_ids": []})),
            400,
            bad,
        ),
        case(
            "edited message content",
            patch(),
            format!("{messages}/{m}"),
            json(json!({"content": NUL_TEXT})),
            400,
            bad,
        ),
        case(
            "IP-ban reason",
            post(),
            format!("/guilds/{g}/ip-bans/by-user"),
            json(json!({"target_user_id": member, "reason": NUL_TEXT})),
            400,
            bad,
        ),
        case(
            "directory q",
            get(),
            format!("/guilds/public?q={NUL_URL}"),
            Body::None,
            400,
            bad,
        ),
        // Guilds and channels.
        case(
            "guild name",
            post(),
            "/guilds".to_owned(),
            json(json!({"name": NUL_TEXT})),
            400,
            bad,
        ),
        case(
            "guild visibility",
            post(),
            "/guilds".to_owned(),
            json(json!({"name": "ok", "visibility": "public\u{0}"})),
            400,
            bad,
        ),
        case(
            "renamed guild",
            patch(),
            format!("/guilds/{g}"),
            json(json!({"name": NUL_TEXT})),
            400,
            bad,
        ),
        case(
            "channel name",
            post(),
            format!("/guilds/{g}/channels"),
            json(json!({"name": NUL_TEXT})),
            400,
            bad,
        ),
        case(
            "channel kind",
            post(),
            format!("/guilds/{g}/channels"),
            json(json!({"name": "ok", "kind": "text\u{0}"})),
            400,
            bad,
        ),
        case(
            "renamed channel",
            patch(),
            format!("/guilds/{g}/channels/{c}"),
            json(json!({"name": NUL_TEXT})),
            400,
            bad,
        ),
        // Roles, members and overrides.
        case(
            "role name",
            post(),
            format!("/guilds/{g}/roles"),
            json(json!({"name": NUL_TEXT, "permissions": []})),
            400,
            bad,
        ),
        case(
            "role permission name",
            post(),
            format!("/guilds/{g}/roles"),
            json(json!({"name": "ok", "permissions": ["create_message\u{0}"]})),
            400,
            bad,
        ),
        case(
            "role color",
            post(),
            format!("/guilds/{g}/roles"),
            json(json!({"name": "ok", "permissions": [], "color_hex": "#AB\u{0}DEF"})),
            400,
            bad,
        ),
        case(
            "renamed role",
            patch(),
            format!("/guilds/{g}/roles/{r}"),
            json(json!({"name": NUL_TEXT})),
            400,
            bad,
        ),
        case(
            "reordered role id",
            post(),
            format!("/guilds/{g}/roles/reorder"),
            json(json!({"role_ids": [NUL_TEXT]})),
            400,
            bad,
        ),
        case(
            "default role id",
            post(),
            format!("/guilds/{g}/roles/default"),
            json(json!({"role_id": NUL_TEXT})),
            400,
            bad,
        ),
        case(
            "member's legacy role",
            patch(),
            format!("/guilds/{g}/members/{member}"),
            json(json!({"role": "moderator\u{0}"})),
            422,
            bad,
        ),
        case(
            "override permission name",
            post(),
            format!("/guilds/{g}/channels/{c}/overrides/member"),
            json(json!({"allow": ["create_message\u{0}"], "deny": []})),
            400,
            bad,
        ),
        case(
            "override role in the path",
            post(),
            format!("/guilds/{g}/channels/{c}/overrides/member%00"),
            json(json!({"allow": [], "deny": []})),
            400,
            bad,
        ),
        case(
            "override target kind in the path",
            post(),
            format!("/guilds/{g}/channels/{c}/permission-overrides/role%00/{r}"),
            json(json!({"allow": [], "deny": []})),
            400,
            bad,
        ),
        // Messages, reactions, attachments, search.
        case(
            "reaction emoji",
            Method::POST,
            format!("{messages}/{m}/reactions/{NUL_URL}"),
            Body::None,
            400,
            bad,
        ),
        case(
            "attachment id",
            post(),
            messages.clone(),
            json(json!({"content": "hi", "attachment_ids": [NUL_TEXT]})),
            400,
            bad,
        ),
        case(
            "upload filename",
            post(),
            format!("/guilds/{g}/channels/{c}/attachments?filename={NUL_URL}.png"),
            Body::Bytes(PNG),
            400,
            bad,
        ),
        case(
            "history cursor",
            get(),
            format!("{messages}?before={NUL_URL}"),
            Body::None,
            400,
            bad,
        ),
        case(
            "search q",
            get(),
            format!("/guilds/{g}/search?q={NUL_URL}"),
            Body::None,
            400,
            bad,
        ),
        case(
            "search channel id",
            get(),
            format!("/guilds/{g}/search?q=hello&channel_id={NUL_URL}"),
            Body::None,
            400,
            bad,
        ),
        case(
            "guild id in the path",
            get(),
            format!("/guilds/{NUL_URL}/members"),
            Body::None,
            400,
            bad,
        ),
        // Moderation reads.
        case(
            "member list cursor",
            get(),
            format!("/guilds/{g}/members?cursor={NUL_URL}"),
            Body::None,
            400,
            bad,
        ),
        case(
            "audit action prefix",
            get(),
            format!("/guilds/{g}/audit?action_prefix=member.{NUL_URL}"),
            Body::None,
            400,
            bad,
        ),
        case(
            "audit cursor",
            get(),
            format!("/guilds/{g}/audit?cursor=1_{NUL_URL}"),
            Body::None,
            400,
            bad,
        ),
        case(
            "IP-ban list cursor",
            get(),
            format!("/guilds/{g}/ip-bans?cursor=1_{NUL_URL}"),
            Body::None,
            400,
            bad,
        ),
        case(
            "IP-ban target id",
            post(),
            format!("/guilds/{g}/ip-bans/by-user"),
            json(json!({"target_user_id": NUL_TEXT})),
            400,
            bad,
        ),
        // Voice.
        case(
            "voice source",
            post(),
            format!("/guilds/{g}/channels/{c}/voice/token"),
            json(json!({"publish_sources": ["microphone\u{0}"]})),
            422,
            bad,
        ),
        // Profiles, users and friends.
        case(
            "profile about",
            patch(),
            "/users/me/profile".to_owned(),
            json(json!({"about_markdown": NUL_TEXT})),
            400,
            bad,
        ),
        case(
            "profile username",
            patch(),
            "/users/me/profile".to_owned(),
            json(json!({"username": "abc\u{0}def"})),
            400,
            bad,
        ),
        case(
            "looked-up user id",
            post(),
            "/users/lookup".to_owned(),
            json(json!({"user_ids": [NUL_TEXT]})),
            400,
            bad,
        ),
        case(
            "friend request recipient",
            post(),
            "/friends/requests".to_owned(),
            json(json!({"recipient_user_id": NUL_TEXT})),
            400,
            bad,
        ),
        case(
            "echo message",
            post(),
            "/echo".to_owned(),
            json(json!({"message": NUL_TEXT})),
            400,
            bad,
        ),
        // Auth: no token; a malformed login or refresh token is a 401.
        Case {
            authenticated: false,
            ..case(
                "registered username",
                post(),
                "/auth/register".to_owned(),
                json(json!({"username": "abc\u{0}def", "password": PASSWORD})),
                400,
                bad,
            )
        },
        Case {
            authenticated: false,
            unregistered: Some(free_by_password.clone()),
            ..case(
                "registered password",
                post(),
                "/auth/register".to_owned(),
                json(json!({"username": free_by_password, "password": "long enough\u{0}pass"})),
                400,
                bad,
            )
        },
        Case {
            authenticated: false,
            unregistered: Some(free_by_captcha.clone()),
            ..case(
                "captcha token",
                post(),
                "/auth/register".to_owned(),
                json(json!({
                    "username": free_by_captcha,
                    "password": PASSWORD,
                    "captcha_token": format!("{}\u{0}", "t".repeat(32)),
                })),
                400,
                bad,
            )
        },
        Case {
            authenticated: false,
            ..case(
                "login password",
                post(),
                "/auth/login".to_owned(),
                json(json!({"username": w.owner.username, "password": format!("{PASSWORD}\u{0}")})),
                401,
                "invalid_credentials",
            )
        },
        Case {
            authenticated: false,
            ..case(
                "login username",
                post(),
                "/auth/login".to_owned(),
                json(
                    json!({"username": format!("{}\u{0}", w.owner.username), "password": PASSWORD}),
                ),
                401,
                "invalid_credentials",
            )
        },
        Case {
            authenticated: false,
            ..case(
                "refresh token",
                post(),
                "/auth/refresh".to_owned(),
                json(json!({"refresh_token": format!("{}\u{0}", w.owner.refresh_token)})),
                401,
                "invalid_credentials",
            )
        },
        Case {
            authenticated: false,
            ..case(
                "logout refresh token",
                post(),
                "/auth/logout".to_owned(),
                json(json!({"refresh_token": format!("{}\u{0}", w.owner.refresh_token)})),
                401,
                "invalid_credentials",
            )
        },
    ]
}

async fn send(w: &World, case: &Case) -> (u16, Value) {
    let mut request = w.t.http.request(case.method.clone(), w.t.api(&case.path));
    if case.authenticated {
        request = request.bearer_auth(&w.owner.token);
    }
    request = match &case.body {
        Body::None => request,
        Body::Json(value) => request.json(value),
        Body::Bytes(bytes) => request.header("content-type", "image/png").body(*bytes),
    };
    let response = request.send().await.expect("request sent");
    let status = response.status().as_u16();
    let text = response.text().await.expect("body");
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// Runs the whole table against one backend; collects every mismatch, so
/// one run names every failing field.
async fn nul_in_every_text_field_is_refused_and_writes_nothing(backends: Backends) {
    let Some(w) = World::start(backends).await else {
        return;
    };
    let mut failures = Vec::new();
    let mut before = w.snapshot().await;
    for case in cases(&w) {
        let (status, body) = send(&w, &case).await;
        let expected = json!({"error": case.error});
        if (status, &body) != (case.status, &expected) {
            failures.push(format!(
                "{} ({} {}): got {status} {body}, want {} {expected}",
                case.field, case.method, case.path, case.status
            ));
        }
        let after = w.snapshot().await;
        for ((what, status_before, seen_before), (_, status_after, seen_after)) in
            before.iter().zip(&after)
        {
            if (status_before, seen_before) != (status_after, seen_after) {
                failures.push(format!(
                    "{}: {what} changed: {seen_before} -> {seen_after}",
                    case.field
                ));
            }
        }
        if let Some(username) = &case.unregistered {
            // Registering it now must create it: a register answers 200
            // either way, but only a new account logs in with this password.
            let login = json!({"username": username, "password": PASSWORD});
            let register = w.t.post("/auth/register", None, login.clone()).await;
            let (status, _) = w.t.post("/auth/login", None, login).await;
            if register.0 != 200 || status != 200 {
                failures.push(format!("{}: {username} was registered", case.field));
            }
        }
        before = after;
    }
    assert!(
        failures.is_empty(),
        "{backends:?}:\n{}",
        failures.join("\n")
    );
    w.t.stack.stop().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nul_in_every_text_field_is_refused_on_sqlite() {
    nul_in_every_text_field_is_refused_and_writes_nothing(Backends::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nul_in_every_text_field_is_refused_on_postgres() {
    nul_in_every_text_field_is_refused_and_writes_nothing(Backends::External).await;
}

/// The socket's `message_create` runs the REST route's validation (over
/// `EdgeAccess.CreateMessage`): a NUL closes the socket as any refused
/// message does, 4014 `message_rejected`, not 1011, and posts nothing.
async fn nul_over_the_socket_is_a_rejected_message(backends: Backends) {
    let Some(w) = World::start(backends).await else {
        return;
    };
    let before = w.snapshot().await;
    let mut socket = w.t.connect(0, &w.owner).await;
    socket.subscribed(&w.guild, &w.channel).await;
    socket
        .send_json(json!({"v": 1, "t": "message_create", "d": {
            "guild_id": w.guild, "channel_id": w.channel, "content": NUL_TEXT,
        }}))
        .await;
    assert_eq!(
        socket.next_close().await,
        (4014, "message_rejected".to_owned()),
        "{backends:?}"
    );
    assert_eq!(w.snapshot().await, before, "{backends:?}: nothing written");
    w.t.stack.stop().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nul_over_the_socket_is_a_rejected_message_on_sqlite() {
    nul_over_the_socket_is_a_rejected_message(Backends::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nul_over_the_socket_is_a_rejected_message_on_postgres() {
    nul_over_the_socket_is_a_rejected_message(Backends::External).await;
}

/// PROTOCOL.md §1.2: malformed JSON is a 400. A string with a lone surrogate
/// escape or invalid UTF-8 in it is malformed, wherever it stands, even
/// after a field the shape check would refuse; the same body made valid is
/// a 422 or a 200 as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_strings_are_malformed_json() {
    let w = World::start(Backends::Embedded).await.expect("embedded");
    let path = format!("/guilds/{}/channels/{}/messages", w.guild, w.channel);
    let before = w.snapshot().await;
    let cases: [(&str, &[u8], u16); 8] = [
        ("a lone high surrogate", br#"{"content":"\ud800"}"#, 400),
        ("a lone low surrogate", br#"{"content":"x\udc00y"}"#, 400),
        ("a reversed pair", br#"{"content":"\udc00\ud800"}"#, 400),
        ("invalid UTF-8", b"{\"content\":\"\xff\xfe\"}", 400),
        (
            "a truncated UTF-8 sequence",
            b"{\"content\":\"\xe2\x82\"}",
            400,
        ),
        (
            "a lone surrogate after an unknown field",
            br#"{"pinned":true,"content":"\ud800"}"#,
            400,
        ),
        (
            "invalid UTF-8 in an unknown field",
            b"{\"content\":\"hi\",\"pinned\":\"\xff\"}",
            400,
        ),
        (
            "a valid pair after an unknown field",
            br#"{"pinned":true,"content":"\ud83d\ude00"}"#,
            422,
        ),
    ];
    for (what, body, want) in cases {
        let response =
            w.t.http
                .post(w.t.api(&path))
                .bearer_auth(&w.owner.token)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .expect("sent");
        let status = response.status().as_u16();
        let body: Value = response.json().await.expect("json error body");
        assert_eq!(
            (status, body),
            (want, json!({"error": "invalid_request"})),
            "{what}"
        );
    }
    assert_eq!(w.snapshot().await, before, "nothing written");
    // A well-formed pair is an ordinary character.
    let (status, posted) =
        w.t.call_raw(
            Method::POST,
            &path,
            Some(&w.owner.token),
            r#"{"content":"\ud83d\ude00"}"#.to_owned(),
        )
        .await;
    assert_eq!(
        (status, &posted["content"]),
        (200, &json!("😀")),
        "{posted}"
    );
    w.t.stack.stop().await.expect("clean shutdown");
}

/// Uploads are a stranger's bytes: served as downloads, sandboxed and
/// unsniffed, so an uploaded HTML or SVG page never runs on this origin.
/// The attachment sniffer recognises HTML and XML, so such files do get
/// stored; avatars and banners are sniffed images only, and get the
/// sandbox too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_are_served_sandboxed() {
    let w = World::start(Backends::Embedded).await.expect("embedded");
    let upload = |filename: &str| {
        format!(
            "/guilds/{}/channels/{}/attachments?filename={filename}",
            w.guild, w.channel
        )
    };
    let page: &[u8] = b"<html><script>alert(document.domain)</script></html>";
    let svg: &[u8] = b"<?xml version=\"1.0\"?><svg xmlns=\"http://www.w3.org/2000/svg\"><script>alert(1)</script></svg>";
    for (filename, encoded, bytes, stored_type, disposition) in [
        (
            "page.html",
            "page.html",
            page,
            "text/html",
            "attachment; filename=\"page.html\"; filename*=UTF-8''page.html",
        ),
        (
            "dr\u{f4}le \"x\".svg",
            "dr%C3%B4le%20%22x%22.svg",
            svg,
            "text/xml",
            "attachment; filename=\"dr_le _x_.svg\"; filename*=UTF-8''dr%C3%B4le%20%22x%22.svg",
        ),
    ] {
        let response =
            w.t.http
                .post(w.t.api(&upload(encoded)))
                .bearer_auth(&w.owner.token)
                .body(bytes)
                .send()
                .await
                .expect("sent");
        assert_eq!(response.status(), 200, "{filename}");
        let attachment: Value = response.json().await.expect("json");
        assert_eq!(attachment["mime_type"], stored_type, "{filename}");
        assert_eq!(attachment["filename"], filename);
        let id = attachment["attachment_id"].as_str().expect("id");
        let response =
            w.t.http
                .get(w.t.api(&format!(
                    "/guilds/{}/channels/{}/attachments/{id}",
                    w.guild, w.channel
                )))
                .bearer_auth(&w.owner.token)
                .send()
                .await
                .expect("sent");
        assert_eq!(response.status(), 200);
        let headers = response.headers();
        for (name, value) in [
            ("content-type", stored_type),
            ("content-disposition", disposition),
            ("content-security-policy", "sandbox"),
            ("x-content-type-options", "nosniff"),
        ] {
            assert_eq!(headers[name], value, "{filename}: {name}");
        }
        assert_eq!(response.bytes().await.expect("bytes").as_ref(), bytes);
    }

    for kind in ["avatar", "banner"] {
        let response =
            w.t.http
                .post(w.t.api(&format!("/users/me/profile/{kind}")))
                .bearer_auth(&w.owner.token)
                .body(PNG)
                .send()
                .await
                .expect("sent");
        assert_eq!(response.status(), 200, "{kind}");
        let path = format!("/users/{}/{kind}", w.owner.id);
        let response = w.t.http.get(w.t.api(&path)).send().await.expect("sent");
        assert_eq!(response.status(), 200, "{kind}");
        let etag = response.headers()["etag"].clone();
        for response in [
            response,
            // A revalidation carries the same headers.
            w.t.http
                .get(w.t.api(&path))
                .header("if-none-match", etag)
                .send()
                .await
                .expect("sent"),
        ] {
            let headers = response.headers();
            for (name, value) in [
                ("content-disposition", "inline"),
                ("content-security-policy", "sandbox"),
                ("x-content-type-options", "nosniff"),
            ] {
                assert_eq!(headers[name], value, "{kind} {}: {name}", response.status());
            }
        }
    }
    w.t.stack.stop().await.expect("clean shutdown");
}
