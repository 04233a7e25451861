//! Resume (docs/adr/0011-resume.md): a socket that asked for positions
//! loses its connection, reconnects to the other gateway, and gets exactly
//! what it missed, once, from the shared replay logs; what it may not see
//! or the logs cannot cover, it is told to refetch.

mod support;

use std::collections::BTreeMap;

use serde_json::{Value, json};
use support::{Backends, Socket, TestStack, User};

/// A socket opened with `?positions=1`, and the newest position it was
/// given per log, as a client keeps them.
struct Positioned {
    socket: Socket,
    positions: BTreeMap<String, String>,
}

impl Positioned {
    async fn open(t: &TestStack, n: usize, user: &User) -> Self {
        let url = format!(
            "ws://{}/gateway/ws?access_token={}&positions=1",
            t.stack.gateway_addrs[n], user.token
        );
        let (ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("ws connects");
        let mut socket = Self {
            socket: Socket {
                ws,
                hide_presence: true,
            },
            positions: BTreeMap::new(),
        };
        let ready = socket.next_event().await;
        assert_eq!(ready["t"], "ready");
        let user_log = format!("u:{}", user.id);
        assert!(
            ready["p"][&user_log].is_string(),
            "ready carries the user's log position: {ready}"
        );
        socket
    }

    /// The next frame, keeping the positions it carries.
    async fn next_event(&mut self) -> Value {
        let frame = self.socket.next_event().await;
        if let Some(positions) = frame["p"].as_object() {
            for (scope, token) in positions {
                self.positions
                    .insert(scope.clone(), token.as_str().expect("token").to_owned());
            }
        }
        frame
    }

    async fn subscribed(&mut self, guild: &str, channel: &str) {
        self.socket.subscribe(guild, channel).await;
        let ack = self.next_event().await;
        assert_eq!(ack["t"], "subscribed", "{ack}");
        let roster = self.next_event().await;
        assert_eq!(roster["t"], "voice_participant_sync", "{roster}");
    }

    async fn resume(&mut self, positions: &BTreeMap<String, String>) {
        self.socket
            .send_json(json!({"v": 1, "t": "resume", "d": {"positions": positions}}))
            .await;
    }

    /// Reads the replayed `message_create`s up to the `resumed` of
    /// `scope`: their contents and that `resumed`.
    async fn replayed(&mut self, scope: &str) -> (Vec<String>, Value) {
        let mut contents = Vec::new();
        loop {
            let frame = self.next_event().await;
            match frame["t"].as_str() {
                Some("message_create") => {
                    assert!(frame["p"].is_object(), "a replayed frame has its position");
                    contents.push(frame["d"]["content"].as_str().expect("content").to_owned());
                }
                Some("resumed") => {
                    assert_eq!(frame["d"]["scope"], scope, "{frame}");
                    if frame["d"]["resync"] == false {
                        assert!(
                            frame["p"][scope].is_string(),
                            "carries its position: {frame}"
                        );
                    }
                    return (contents, frame["d"].clone());
                }
                _ => panic!("unexpected frame during a replay: {frame}"),
            }
        }
    }
}

fn replayed(scope: &str, count: u64) -> Value {
    json!({"scope": scope, "replayed": count, "resync": false})
}

fn resync(scope: &str) -> Value {
    json!({"scope": scope, "replayed": 0, "resync": true})
}

async fn post(t: &TestStack, author: &User, guild: &str, channel: &str, content: &str) -> Value {
    let path = format!("/guilds/{guild}/channels/{channel}/messages");
    let (status, message) = t
        .post(&path, Some(&author.token), json!({ "content": content }))
        .await;
    assert_eq!(status, 200, "{message}");
    message
}

async fn a_socket_resumes_on_the_other_gateway_with_exactly_what_it_missed(backends: Backends) {
    let Some(t) = TestStack::start(backends, 2).await else {
        return;
    };
    let (alice, bob) = (t.user("alice").await, t.user("bob").await);
    let (guild, general) = t.guild_with_channel(&alice, "public").await;
    t.join(&bob, &guild).await;
    let (status, other) = t
        .post(
            &format!("/guilds/{guild}/channels"),
            Some(&alice.token),
            json!({"name": "other"}),
        )
        .await;
    assert_eq!(status, 200, "{other}");
    let other = other["channel_id"].as_str().expect("channel id").to_owned();
    let guild_log = format!("g:{guild}");

    let mut first = Positioned::open(&t, 0, &bob).await;
    first.subscribed(&guild, &general).await;
    assert!(
        first.positions.contains_key(&guild_log),
        "a baseline for the guild"
    );
    post(&t, &alice, &guild, &general, "one").await;
    let live = first.next_event().await;
    assert_eq!(live["d"]["content"], "one");
    assert!(live["p"][&guild_log].is_string(), "{live}");
    // A socket that did not ask sees the plain frame.
    let mut plain = t.connect(1, &alice).await;
    plain.subscribed(&guild, &general).await;
    post(&t, &alice, &guild, &general, "two").await;
    assert_eq!(first.next_event().await["d"]["content"], "two");
    let frame = plain.next_event().await;
    assert_eq!(frame["d"]["content"], "two");
    assert!(frame.get("p").is_none(), "{frame}");

    // Bob's connection dies; three messages go by, one of them in a
    // channel he will not subscribe to again.
    let kept = first.positions.clone();
    drop(first);
    post(&t, &alice, &guild, &general, "three").await;
    post(&t, &alice, &guild, &other, "elsewhere").await;
    post(&t, &alice, &guild, &general, "four").await;

    // On the other gateway: `resume` first. His own log is answered at
    // once; the guild's when he subscribes there again, after the
    // subscribe's snapshots and before any live frame of the guild.
    let user_log = format!("u:{}", bob.id);
    let mut second = Positioned::open(&t, 1, &bob).await;
    second.resume(&kept).await;
    assert_eq!(
        second.replayed(&user_log).await,
        (Vec::new(), replayed(&user_log, 0))
    );
    // Before he subscribes there, his own profile change reaches him live
    // (he is named), though it is in the guild's log too; a message
    // follows it. The guild's replay skips the one and keeps the other.
    let (status, _) = t
        .call(
            reqwest::Method::PATCH,
            "/users/me/profile",
            Some(&bob.token),
            Some(json!({"about_markdown": "back"})),
        )
        .await;
    assert_eq!(status, 200);
    let profile = second.next_event().await;
    assert_eq!(profile["t"], "profile_update", "{profile}");
    post(&t, &alice, &guild, &general, "after the profile").await;
    second.subscribed(&guild, &general).await;
    let (contents, resumed) = second.replayed(&guild_log).await;
    assert_eq!(
        (contents, resumed),
        (
            vec![
                "three".to_owned(),
                "four".to_owned(),
                "after the profile".to_owned()
            ],
            replayed(&guild_log, 3)
        )
    );
    // And then live again, once: the next frame is the next message.
    post(&t, &alice, &guild, &general, "five").await;
    assert_eq!(second.next_event().await["d"]["content"], "five");

    // The old order works too (subscribe, then resume), and a message
    // written live in between is not written again by the replay.
    let kept = second.positions.clone();
    drop(second);
    post(&t, &alice, &guild, &general, "six").await;
    let mut third = Positioned::open(&t, 0, &bob).await;
    third.subscribed(&guild, &general).await;
    post(&t, &alice, &guild, &general, "seven").await;
    assert_eq!(third.next_event().await["d"]["content"], "seven");
    // Logs are answered in the order the resume names them (a JSON
    // object's keys, sorted here: `g:` before `u:`).
    third.resume(&kept).await;
    assert_eq!(
        third.replayed(&guild_log).await,
        (vec!["six".to_owned()], replayed(&guild_log, 1))
    );
    assert_eq!(
        third.replayed(&user_log).await,
        (Vec::new(), replayed(&user_log, 0))
    );
    post(&t, &alice, &guild, &general, "eight").await;
    assert_eq!(third.next_event().await["d"]["content"], "eight");

    // What the logs cannot cover, or what this socket may not resume, is
    // answered with resync.
    let epoch_gone: BTreeMap<String, String> =
        [(guild_log.clone(), "ffffffffffffffff.1".to_owned())].into();
    third.resume(&epoch_gone).await;
    assert_eq!(
        third.replayed(&guild_log).await,
        (Vec::new(), resync(&guild_log))
    );
    let not_mine = format!("u:{}", alice.id);
    let foreign: BTreeMap<String, String> = [(not_mine.clone(), kept[&user_log].clone())].into();
    third.resume(&foreign).await;
    assert_eq!(
        third.replayed(&not_mine).await,
        (Vec::new(), resync(&not_mine))
    );

    // A ping is answered behind what is queued.
    third
        .socket
        .send_json(json!({"v": 1, "t": "ping", "d": {"nonce": "n-1"}}))
        .await;
    assert_eq!(
        third.next_event().await,
        json!({"v": 1, "t": "pong", "d": {"nonce": "n-1"}})
    );

    t.stack.stop().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_a_socket_resumes_on_the_other_gateway_with_exactly_what_it_missed() {
    a_socket_resumes_on_the_other_gateway_with_exactly_what_it_missed(Backends::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_redis_a_socket_resumes_on_the_other_gateway_with_exactly_what_it_missed() {
    a_socket_resumes_on_the_other_gateway_with_exactly_what_it_missed(Backends::External).await;
}

/// Positions are opt-in with `positions=1`; anything else is refused
/// before the upgrade, and a socket that did not ask cannot resume.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn positions_are_opt_in_and_checked() {
    let t = TestStack::start(Backends::Embedded, 1)
        .await
        .expect("embedded");
    let alice = t.user("alice").await;
    let (guild, channel) = t.guild_with_channel(&alice, "private").await;
    let url = format!(
        "http://{}/gateway/ws?access_token={}&positions=yes",
        t.stack.gateway_addrs[0], alice.token
    );
    let response = reqwest::Client::new()
        .get(url)
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .send()
        .await
        .expect("answered");
    assert_eq!(response.status(), 400);
    assert_eq!(
        response.json::<Value>().await.expect("json"),
        json!({"error": "invalid_request"})
    );

    let mut plain = t.connect(0, &alice).await;
    plain.subscribed(&guild, &channel).await;
    let scope = format!("g:{guild}");
    plain
        .send_json(json!({"v": 1, "t": "resume", "d": {"positions": {&scope: "00.0"}}}))
        .await;
    assert_eq!(
        plain.next_event().await,
        json!({"v": 1, "t": "resumed", "d": {"scope": scope, "replayed": 0, "resync": true}})
    );
    t.stack.stop().await.expect("clean shutdown");
}
