//! Voice end to end: the REST routes of PROTOCOL.md §2.14 through the api, the
//! voice service over gRPC, and the voice events through two gateways to
//! websockets. Each subscribed client keeps the roster it is told about;
//! every one of them must converge on the same roster, and a client that
//! may not see the channel must hear nothing.
//!
//! The `voice_participant_sync` of a subscribe, and the cleanup when a
//! user's last socket closes, need the gateway's presence and voice hooks;
//! those tests are written and ignored until the hooks are wired.

mod support;

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Value, json};
use support::{Backends, Socket, TestStack, User};

const LIVEKIT_KEY: &str = "APIe2etestkey";
const LIVEKIT_SECRET: &str = "an-e2e-livekit-secret-of-at-least-32-bytes";

fn with_livekit(config: &mut filament_allinone::StackConfig) {
    config.livekit = Some(
        filament_voice::LiveKit::new(LIVEKIT_KEY, LIVEKIT_SECRET, "wss://livekit.test")
            .expect("valid LiveKit settings"),
    );
}

fn one_seat_per_channel(config: &mut filament_allinone::StackConfig) {
    config.tune_voice = |voice| voice.limits.max_participants_per_channel = 1;
}

/// A guild owned by `owner`, public so others can join, with a voice and a
/// text channel.
async fn voice_guild(t: &TestStack, owner: &User) -> (String, String, String) {
    let (guild, text) = t.guild_with_channel(owner, "public").await;
    let (status, voice) = t
        .post(
            &format!("/guilds/{guild}/channels"),
            Some(&owner.token),
            json!({"name": "lounge", "kind": "voice"}),
        )
        .await;
    assert_eq!(status, 200, "{voice}");
    (
        guild,
        voice["channel_id"].as_str().expect("id").to_owned(),
        text,
    )
}

/// Takes a seat with these token options; the request must be granted.
async fn take_seat(t: &TestStack, guild: &str, channel: &str, user: &User, options: Value) {
    let (status, body) = t
        .post(
            &voice_path(guild, channel, "token"),
            Some(&user.token),
            options,
        )
        .await;
    assert_eq!(status, 200, "{body}");
}

fn voice_path(guild: &str, channel: &str, route: &str) -> String {
    format!("/guilds/{guild}/channels/{channel}/voice/{route}")
}

/// What one client believes about a voice channel, built only from the
/// events it received.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Roster {
    /// user id → the participant, without `updated_at_unix`.
    participants: BTreeMap<String, Value>,
    /// (user id, stream) published.
    streams: BTreeSet<(String, String)>,
}

impl Roster {
    fn apply(&mut self, frame: &Value) {
        let d = &frame["d"];
        let user = || d["user_id"].as_str().expect("user_id").to_owned();
        match frame["t"].as_str().expect("t") {
            "voice_participant_sync" => {
                self.participants.clear();
                for p in d["participants"].as_array().expect("participants") {
                    self.insert(p);
                }
                let present: BTreeSet<_> = self.participants.keys().cloned().collect();
                self.streams.retain(|(u, _)| present.contains(u));
            }
            "voice_participant_join" => self.insert(&d["participant"]),
            "voice_participant_leave" => {
                let user = user();
                self.participants.remove(&user);
                self.streams.retain(|(u, _)| *u != user);
            }
            "voice_participant_update" => {
                let participant = self.participants.get_mut(&user()).expect("known");
                for (field, value) in d["updated_fields"].as_object().expect("fields") {
                    participant[field] = value.clone();
                }
            }
            "voice_stream_publish" => {
                self.streams
                    .insert((user(), d["stream"].as_str().expect("s").to_owned()));
            }
            "voice_stream_unpublish" => {
                self.streams
                    .remove(&(user(), d["stream"].as_str().expect("s").to_owned()));
            }
            // Other events (an override, `subscribed`) say nothing of it.
            other if !other.starts_with("voice_") => {}
            other => panic!("unknown voice event: {other}"),
        }
    }

    /// Who is in the channel.
    fn users(&self) -> BTreeSet<String> {
        self.participants.keys().cloned().collect()
    }

    fn insert(&mut self, participant: &Value) {
        let mut participant = participant.clone();
        participant
            .as_object_mut()
            .expect("object")
            .remove("updated_at_unix");
        let user = participant["user_id"].as_str().expect("id").to_owned();
        self.participants.insert(user, participant);
    }
}

/// A socket and the roster it has been told.
struct Client {
    socket: Socket,
    roster: Roster,
}

impl Client {
    /// A socket on gateway `n` subscribed to the channel, with the roster
    /// its subscribe brought.
    async fn watching(t: &TestStack, n: usize, user: &User, guild: &str, channel: &str) -> Self {
        let mut client = Self {
            socket: t.connect(n, user).await,
            roster: Roster::default(),
        };
        client.socket.subscribed(guild, channel).await;
        client
    }

    /// Reads the next events, checks their types in order, and applies them.
    async fn expect(&mut self, types: &[&str]) -> Vec<Value> {
        let mut frames = Vec::new();
        for expected in types {
            let frame = self.socket.next_event().await;
            assert_eq!(frame["t"], *expected, "{frame}");
            self.roster.apply(&frame);
            frames.push(frame);
        }
        frames
    }
}

/// Join, update, publish, unpublish and leave, with clients on two
/// gateways: each sees every change in order and they all agree, a later
/// joiner's snapshot included; a non-member on the same gateway sees none.
async fn every_subscriber_converges_on_the_same_roster(backends: Backends) {
    let Some(t) = TestStack::start(backends, 2).await else {
        return;
    };
    let (alice, bob, dave, carol) = (
        t.user("alice").await,
        t.user("bob").await,
        t.user("dave").await,
        t.user("carol").await,
    );
    let (guild, voice, _) = voice_guild(&t, &alice).await;
    t.join(&bob, &guild).await;
    t.join(&dave, &guild).await;
    let (carol_guild, carol_channel) = t.guild_with_channel(&carol, "private").await;

    let mut a = Client {
        socket: t.connect(0, &alice).await,
        roster: Roster::default(),
    };
    let mut b = Client {
        socket: t.connect(1, &bob).await,
        roster: Roster::default(),
    };
    let mut c = t.connect(0, &carol).await;
    a.socket.subscribed(&guild, &voice).await;
    b.socket.subscribed(&guild, &voice).await;
    // Carol may not subscribe to the voice channel; her own is the proof.
    c.subscribe(&guild, &voice).await;
    c.subscribed(&carol_guild, &carol_channel).await;

    // Alice joins with the defaults plus subscribing: the microphone.
    let (status, token) = t
        .post(
            &voice_path(&guild, &voice, "token"),
            Some(&alice.token),
            json!({"can_subscribe": true}),
        )
        .await;
    assert_eq!(status, 200, "{token}");
    assert_eq!(token["publish_sources"], json!(["microphone"]));
    assert_eq!(token["identity"], format!("u.{}.{guild}.{voice}", alice.id));
    let joined = ["voice_participant_join", "voice_stream_publish"];
    a.expect(&[joined[0], joined[1], "voice_participant_sync"])
        .await;
    b.expect(&joined).await;

    // Bob asks for the camera too; a member only gets the microphone.
    let (status, token) = t
        .post(
            &voice_path(&guild, &voice, "token"),
            Some(&bob.token),
            json!({"can_subscribe": true, "publish_sources": ["microphone", "camera"]}),
        )
        .await;
    assert_eq!(status, 200, "{token}");
    assert_eq!(token["publish_sources"], json!(["microphone"]));
    a.expect(&joined).await;
    b.expect(&[joined[0], joined[1], "voice_participant_sync"])
        .await;

    // Alice, the owner, adds her camera: an update and one new stream.
    take_seat(
        &t,
        &guild,
        &voice,
        &alice,
        json!({"can_subscribe": true, "publish_sources": ["camera", "microphone"]}),
    )
    .await;
    let refreshed = ["voice_participant_update", "voice_stream_publish"];
    let frames = a
        .expect(&[refreshed[0], refreshed[1], "voice_participant_sync"])
        .await;
    assert_eq!(
        frames[0]["d"]["updated_fields"],
        json!({"is_video_enabled": true})
    );
    assert_eq!(frames[1]["d"]["stream"], "camera");
    b.expect(&refreshed).await;

    // State changes carry only what changed.
    let (status, body) = t
        .post(
            &voice_path(&guild, &voice, "state"),
            Some(&alice.token),
            json!({"is_muted": true}),
        )
        .await;
    assert_eq!((status, body), (204, Value::Null));
    let (status, _) = t
        .post(
            &voice_path(&guild, &voice, "state"),
            Some(&bob.token),
            json!({"is_muted": false, "is_deafened": true}),
        )
        .await;
    assert_eq!(status, 204);
    for client in [&mut a, &mut b] {
        let frames = client
            .expect(&["voice_participant_update", "voice_participant_update"])
            .await;
        assert_eq!(frames[0]["d"]["updated_fields"], json!({"is_muted": true}));
        assert_eq!(
            frames[1]["d"]["updated_fields"],
            json!({"is_deafened": true})
        );
    }

    // Bob leaves: his stream goes first, then he does.
    let (status, body) = t
        .post(
            &voice_path(&guild, &voice, "leave"),
            Some(&bob.token),
            json!(null),
        )
        .await;
    assert_eq!((status, body), (204, Value::Null));
    for client in [&mut a, &mut b] {
        let frames = client
            .expect(&["voice_stream_unpublish", "voice_participant_leave"])
            .await;
        assert_eq!(frames[1]["d"]["user_id"], bob.id.as_str());
    }
    assert_eq!(a.roster, b.roster, "both gateways' clients agree");
    assert_eq!(
        a.roster.streams,
        BTreeSet::from([
            (alice.id.clone(), "camera".to_owned()),
            (alice.id.clone(), "microphone".to_owned()),
        ])
    );

    // Dave joins late: the snapshot he gets agrees with what the others built.
    let mut d = Client::watching(&t, 1, &dave, &guild, &voice).await;
    take_seat(&t, &guild, &voice, &dave, json!({})).await;
    a.expect(&joined).await;
    b.expect(&joined).await;
    d.expect(&[joined[0], joined[1], "voice_participant_sync"])
        .await;
    assert_eq!(d.roster.participants, a.roster.participants);
    assert_eq!(d.roster.participants, b.roster.participants);
    let alice_now = &d.roster.participants[&alice.id];
    assert_eq!(alice_now["is_muted"], true);
    assert_eq!(alice_now["is_video_enabled"], true);
    assert_eq!(d.roster.participants.len(), 2, "alice and dave");

    // Carol heard nothing: her next frame is her own message.
    let (_, message) = t
        .post(
            &format!("/guilds/{carol_guild}/channels/{carol_channel}/messages"),
            Some(&carol.token),
            json!({"content": "sentinel"}),
        )
        .await;
    let frame = c.next_event().await;
    assert_eq!(frame["t"], "message_create", "{frame}");
    assert_eq!(frame["d"]["message_id"], message["message_id"]);

    use filament_voice::metrics::SyncReason;
    assert_eq!(t.stack.voice_metrics.sync_repairs(SyncReason::Join), 4);
    t.stack.stop().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_every_subscriber_converges_on_the_same_roster() {
    every_subscriber_converges_on_the_same_roster(Backends::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_redis_every_subscriber_converges_on_the_same_roster() {
    every_subscriber_converges_on_the_same_roster(Backends::External).await;
}

/// The token is a LiveKit JWT signed with the configured key and secret,
/// checked here with `jsonwebtoken`, independently of the voice service.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_is_a_livekit_jwt_with_the_callers_grants() {
    use jsonwebtoken::{Algorithm, DecodingKey, Validation};
    let t = TestStack::start_with(Backends::Embedded, 1, with_livekit)
        .await
        .expect("embedded");
    let (alice, bob) = (t.user("alice").await, t.user("bob").await);
    let (guild, voice, _) = voice_guild(&t, &alice).await;
    t.join(&bob, &guild).await;

    let mut validation = Validation::new(Algorithm::HS256);
    validation.set_issuer(&[LIVEKIT_KEY]);
    validation.set_required_spec_claims(&["exp", "nbf", "iss", "sub"]);
    validation.leeway = 0;
    let decode = |token: &Value| {
        jsonwebtoken::decode::<Value>(
            token["token"].as_str().expect("token"),
            &DecodingKey::from_secret(LIVEKIT_SECRET.as_bytes()),
            &validation,
        )
        .expect("verifies with the configured secret")
        .claims
    };

    let everything = json!({
        "can_publish": true,
        "can_subscribe": true,
        "publish_sources": ["screen_share", "camera", "microphone"],
    });
    let (status, token) = t
        .post(
            &voice_path(&guild, &voice, "token"),
            Some(&alice.token),
            everything.clone(),
        )
        .await;
    assert_eq!(status, 200, "{token}");
    let room = format!("filament.voice.{guild}.{voice}");
    assert_eq!(
        [
            &token["livekit_url"],
            &token["room"],
            &token["expires_in_secs"]
        ],
        [&json!("wss://livekit.test"), &json!(room), &json!(300)]
    );
    assert_eq!(
        token["publish_sources"],
        json!(["microphone", "camera", "screen_share"])
    );
    let claims = decode(&token);
    assert_eq!(claims["sub"], token["identity"]);
    assert_eq!(claims["name"], alice.username.as_str());
    assert_eq!(
        claims["exp"].as_i64().unwrap_or(0) - claims["nbf"].as_i64().unwrap_or(0),
        300
    );
    assert_eq!(
        claims["video"],
        json!({
            "roomJoin": true, "room": room, "canPublish": true, "canSubscribe": true,
            "canPublishData": true,
            "canPublishSources": ["microphone", "camera", "screen_share"],
        })
    );
    assert!(
        !token.to_string().contains(LIVEKIT_SECRET),
        "no secret in the response"
    );

    // A member gets only what their permissions allow.
    let (_, token) = t
        .post(
            &voice_path(&guild, &voice, "token"),
            Some(&bob.token),
            everything,
        )
        .await;
    let claims = decode(&token);
    assert_eq!(claims["video"]["canPublishSources"], json!(["microphone"]));
    assert_eq!(
        claims["video"]["canSubscribe"], true,
        "members have subscribe_streams"
    );
    let (_, token) = t
        .post(
            &voice_path(&guild, &voice, "token"),
            Some(&bob.token),
            json!({"can_publish": false, "can_subscribe": true}),
        )
        .await;
    let claims = decode(&token);
    assert_eq!(token["can_publish"], false);
    assert_eq!(claims["video"]["canPublish"], false);
    assert_eq!(claims["video"]["canPublishSources"], json!([]));
    t.stack.stop().await.expect("clean shutdown");
}

/// Refusals: a text channel, a non-member, an unknown channel, a full
/// channel, no token, and malformed bodies. None of them reaches the
/// roster: the sentinel join that follows is the only event anyone sees.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_joins_and_bad_input_change_nothing() {
    let t = TestStack::start_with(Backends::Embedded, 1, one_seat_per_channel)
        .await
        .expect("embedded");
    let (alice, bob, mallory) = (
        t.user("alice").await,
        t.user("bob").await,
        t.user("mallory").await,
    );
    let (guild, voice, text) = voice_guild(&t, &alice).await;
    t.join(&bob, &guild).await;
    let mut watcher = t.connect(0, &alice).await;
    watcher.subscribed(&guild, &voice).await;
    let token_path = voice_path(&guild, &voice, "token");
    let invalid = json!({"error": "invalid_request"});

    let refusals = [
        (
            voice_path(&guild, &text, "token"),
            &alice,
            json!({}),
            400,
            "a text channel",
        ),
        (token_path.clone(), &mallory, json!({}), 403, "not a member"),
        (
            voice_path(&guild, &ulid::Ulid::generate().to_string(), "token"),
            &alice,
            json!({}),
            404,
            "no such channel",
        ),
        (
            token_path.clone(),
            &alice,
            json!({"can_publish": false}),
            400,
            "grants nothing",
        ),
        (
            token_path.clone(),
            &bob,
            json!({"publish_sources": ["camera"]}),
            400,
            "nothing allowed",
        ),
        (
            token_path.clone(),
            &alice,
            json!({"publish_sources": ["microphone"], "room": "x"}),
            422,
            "unknown field",
        ),
        (
            token_path.clone(),
            &alice,
            json!({"can_publish": "yes"}),
            422,
            "wrong type",
        ),
        (
            token_path.clone(),
            &alice,
            json!({"publish_sources": ["smell"]}),
            422,
            "unknown source",
        ),
        (
            token_path.clone(),
            &alice,
            json!({"publish_sources": ["camera", "camera", "camera", "camera"]}),
            400,
            "too many sources",
        ),
    ];
    for (path, user, body, expected, label) in refusals {
        let (status, body) = t.post(&path, Some(&user.token), body).await;
        assert_eq!(status, expected, "{label}: {body}");
        assert!(body["error"].is_string(), "{label}: {body}");
    }
    let (status, _) = t.post(&token_path, None, json!({})).await;
    assert_eq!(status, 401);
    let (status, body) = t
        .post_raw(&token_path, Some(&alice.token), "{not json")
        .await;
    assert_eq!((status, body), (400, invalid.clone()));

    for (body, expected) in [
        (json!({}), 400),
        (json!({"is_speaking": true}), 422),
        (json!({"is_muted": "yes"}), 422),
        (json!({"is_muted": true, "extra": 1}), 422),
    ] {
        let (status, _) = t
            .post(
                &voice_path(&guild, &voice, "state"),
                Some(&alice.token),
                body.clone(),
            )
            .await;
        assert_eq!(status, expected, "state {body}");
    }
    // Valid, but alice is not in voice: a no-op, and so is leaving.
    let (status, _) = t
        .post(
            &voice_path(&guild, &voice, "state"),
            Some(&alice.token),
            json!({"is_muted": true}),
        )
        .await;
    assert_eq!(status, 204);
    let (status, _) = t
        .post(
            &voice_path(&guild, &voice, "leave"),
            Some(&alice.token),
            json!(null),
        )
        .await;
    assert_eq!(status, 204);

    // Bob takes the only seat; alice is refused with 429 and stays out.
    let (status, _) = t.post(&token_path, Some(&bob.token), json!({})).await;
    assert_eq!(status, 200);
    let frame = watcher.next_event().await;
    assert_eq!(
        (
            frame["t"].as_str(),
            frame["d"]["participant"]["user_id"].as_str()
        ),
        (Some("voice_participant_join"), Some(bob.id.as_str())),
        "nothing before the sentinel: {frame}"
    );
    assert_eq!(watcher.next_event().await["t"], "voice_stream_publish");
    let (status, body) = t.post(&token_path, Some(&alice.token), json!({})).await;
    assert_eq!((status, body), (429, json!({"error": "rate_limited"})));
    // The next event is bob's leave: alice's refused join left no trace.
    let (status, _) = t
        .post(
            &voice_path(&guild, &voice, "leave"),
            Some(&bob.token),
            json!(null),
        )
        .await;
    assert_eq!(status, 204);
    assert_eq!(watcher.next_event().await["t"], "voice_stream_unpublish");
    let frame = watcher.next_event().await;
    assert_eq!(frame["t"], "voice_participant_leave");
    assert_eq!(frame["d"]["user_id"], bob.id.as_str());
    t.stack.stop().await.expect("clean shutdown");
}

/// Leaving and joining again at once: the roster shows the new session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fast_rejoin_is_announced_in_order() {
    let t = TestStack::start(Backends::Embedded, 2)
        .await
        .expect("embedded");
    let (alice, bob) = (t.user("alice").await, t.user("bob").await);
    let (guild, voice, _) = voice_guild(&t, &alice).await;
    t.join(&bob, &guild).await;
    let mut watcher = Client::watching(&t, 1, &bob, &guild, &voice).await;
    let token = voice_path(&guild, &voice, "token");
    let leave = voice_path(&guild, &voice, "leave");
    t.post(&token, Some(&alice.token), json!({})).await;
    t.post(&leave, Some(&alice.token), json!(null)).await;
    t.post(&token, Some(&alice.token), json!({})).await;
    watcher
        .expect(&[
            "voice_participant_join",
            "voice_stream_publish",
            "voice_stream_unpublish",
            "voice_participant_leave",
            "voice_participant_join",
            "voice_stream_publish",
        ])
        .await;
    assert_eq!(
        watcher.roster.participants.keys().collect::<Vec<_>>(),
        [&alice.id],
        "alice is in, once"
    );
    t.stack.stop().await.expect("clean shutdown");
}

/// PROTOCOL.md §5.9 across services: when presence sees a user's last connection close
/// (here reported by a stand-in for a gateway, as a gateway does), voice
/// takes them out: unpublish, then leave. A connection that closed before
/// a fresh join does not remove the rejoined user.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_connection_closing_anywhere_leaves_voice() {
    use filament_clients::PresenceClient;
    let t = TestStack::start(Backends::Embedded, 1)
        .await
        .expect("embedded");
    let (alice, bob) = (t.user("alice").await, t.user("bob").await);
    let (guild, voice, _) = voice_guild(&t, &alice).await;
    t.join(&bob, &guild).await;
    let mut watcher = Client::watching(&t, 0, &alice, &guild, &voice).await;
    let gateway = |_: ()| {
        PresenceClient::new(
            &format!("http://{}", t.stack.presence_grpc_addr),
            ulid::Ulid::generate().to_string(),
            std::time::Duration::from_secs(3),
            &filament_runtime::grpc_client::GrpcClientMetrics::new(t.stack.internal_token.clone()),
        )
        .expect("presence url")
    };
    let (first, second) = (gateway(()), gateway(()));
    first.connected(1, &bob.id).await.expect("connected");
    second.connected(1, &bob.id).await.expect("connected");
    take_seat(&t, &guild, &voice, &bob, json!({})).await;
    watcher
        .expect(&["voice_participant_join", "voice_stream_publish"])
        .await;

    // One of two connections closes: bob stays. Alice's join is the sentinel.
    assert!(
        !first
            .disconnected(1)
            .await
            .expect("disconnect")
            .user_offline
    );
    t.post(
        &voice_path(&guild, &voice, "token"),
        Some(&alice.token),
        json!({}),
    )
    .await;
    watcher
        .expect(&[
            "voice_participant_join",
            "voice_stream_publish",
            "voice_participant_sync",
        ])
        .await;
    assert!(watcher.roster.participants.contains_key(&bob.id));

    // The last one closes: bob leaves voice.
    assert!(
        second
            .disconnected(1)
            .await
            .expect("disconnect")
            .user_offline
    );
    let frames = watcher
        .expect(&["voice_stream_unpublish", "voice_participant_leave"])
        .await;
    assert_eq!(frames[1]["d"]["user_id"], bob.id.as_str());
    assert!(!watcher.roster.participants.contains_key(&bob.id));

    // A fast rejoin is announced as a new join.
    take_seat(&t, &guild, &voice, &bob, json!({})).await;
    watcher
        .expect(&["voice_participant_join", "voice_stream_publish"])
        .await;
    t.stack.stop().await.expect("clean shutdown");
}

// ---------------------------------------------------------------------------
// Needs the gateway hooks (presence reports, voice snapshot on subscribe).
// ---------------------------------------------------------------------------

/// PROTOCOL.md §5.5: an accepted subscribe gets `voice_participant_sync` right after
/// `subscribed`, with the roster as it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscribe_gets_the_roster_after_subscribed() {
    let t = TestStack::start(Backends::Embedded, 2)
        .await
        .expect("embedded");
    let (alice, bob) = (t.user("alice").await, t.user("bob").await);
    let (guild, voice, _) = voice_guild(&t, &alice).await;
    t.join(&bob, &guild).await;
    take_seat(&t, &guild, &voice, &alice, json!({})).await;

    let mut b = t.connect(1, &bob).await;
    b.hide_presence = false;
    b.subscribe(&guild, &voice).await;
    let mut types = Vec::new();
    let mut sync = Value::Null;
    while !types.contains(&"voice_participant_sync".to_owned()) {
        let frame = b.next_event().await;
        if frame["t"] == "voice_participant_sync" {
            sync = frame.clone();
        }
        types.push(frame["t"].as_str().unwrap_or_default().to_owned());
    }
    let position = |t: &str| types.iter().position(|x| x == t);
    assert!(position("presence_sync").is_some(), "{types:?}");
    assert!(
        position("presence_sync") < position("subscribed"),
        "{types:?}"
    );
    assert!(
        position("subscribed") < position("voice_participant_sync"),
        "{types:?}"
    );
    let users: Vec<_> = sync["d"]["participants"]
        .as_array()
        .expect("participants")
        .iter()
        .map(|p| p["user_id"].clone())
        .collect();
    assert_eq!(users, [json!(alice.id)]);
    t.stack.stop().await.expect("clean shutdown");
}

/// PROTOCOL.md §5.9: when a user's last socket closes, on whichever gateway, they leave
/// voice (unpublish, then leave); while another socket stays open, they
/// stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_the_last_socket_leaves_voice() {
    let t = TestStack::start(Backends::Embedded, 2)
        .await
        .expect("embedded");
    let (alice, bob) = (t.user("alice").await, t.user("bob").await);
    let (guild, voice, text) = voice_guild(&t, &alice).await;
    t.join(&bob, &guild).await;
    let mut watcher = t.connect(0, &alice).await;
    watcher.subscribed(&guild, &voice).await;
    let mut first = t.connect(0, &bob).await;
    let mut second = t.connect(1, &bob).await;
    first.subscribed(&guild, &text).await;
    second.subscribed(&guild, &text).await;
    t.post(
        &voice_path(&guild, &voice, "token"),
        Some(&bob.token),
        json!({}),
    )
    .await;
    loop {
        if watcher.next_event().await["t"] == "voice_stream_publish" {
            break;
        }
    }

    drop(first);
    // Bob is still connected on gateway 1: nothing may happen. Alice's own
    // state change is the sentinel.
    t.post(
        &voice_path(&guild, &voice, "token"),
        Some(&alice.token),
        json!({}),
    )
    .await;
    loop {
        let frame = watcher.next_event().await;
        assert_ne!(frame["t"], "voice_participant_leave", "{frame}");
        if frame["t"] == "voice_participant_join" {
            assert_eq!(frame["d"]["participant"]["user_id"], alice.id.as_str());
            break;
        }
    }
    drop(second);
    loop {
        let frame = watcher.next_event().await;
        if frame["t"] == "voice_participant_leave" {
            assert_eq!(frame["d"]["user_id"], bob.id.as_str());
            break;
        }
    }
    t.stack.stop().await.expect("clean shutdown");
}

/// A kick takes the member out of voice at once: the others see the streams
/// unpublished and the participant leave, before the token would expire.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kicked_member_leaves_voice() {
    let t = TestStack::start(Backends::Embedded, 1)
        .await
        .expect("embedded");
    let (alice, bob) = (t.user("alice").await, t.user("bob").await);
    let (guild, voice, _) = voice_guild(&t, &alice).await;
    t.join(&bob, &guild).await;
    let mut watcher = Client::watching(&t, 0, &alice, &guild, &voice).await;
    take_seat(&t, &guild, &voice, &bob, json!({})).await;
    watcher
        .expect(&["voice_participant_join", "voice_stream_publish"])
        .await;

    let (status, _) = t
        .post(
            &format!("/guilds/{guild}/members/{}/kick", bob.id),
            Some(&alice.token),
            json!(null),
        )
        .await;
    assert_eq!(status, 200);
    let removed = watcher.socket.next_event().await;
    assert_eq!(removed["t"], "workspace_member_remove", "{removed}");
    let frames = watcher
        .expect(&["voice_stream_unpublish", "voice_participant_leave"])
        .await;
    assert_eq!(frames[1]["d"]["user_id"], bob.id.as_str());
    assert!(!watcher.roster.participants.contains_key(&bob.id));
    t.stack.stop().await.expect("clean shutdown");
}

/// A permission change that leaves a participant's grants uncovered takes
/// them out of voice before the REST call returns: a member override
/// denying `subscribe_streams` removes bob, who was granted subscribing,
/// and leaves carol, who was not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_a_granted_permission_leaves_voice() {
    let t = TestStack::start(Backends::Embedded, 2)
        .await
        .expect("embedded");
    let (alice, bob, carol) = (
        t.user("alice").await,
        t.user("bob").await,
        t.user("carol").await,
    );
    let (guild, voice, _) = voice_guild(&t, &alice).await;
    t.join(&bob, &guild).await;
    t.join(&carol, &guild).await;
    let mut watcher = Client::watching(&t, 1, &alice, &guild, &voice).await;
    let token = voice_path(&guild, &voice, "token");
    let (status, body) = t
        .post(&token, Some(&bob.token), json!({"can_subscribe": true}))
        .await;
    assert_eq!((status, body["can_subscribe"].clone()), (200, json!(true)));
    let (status, _) = t.post(&token, Some(&carol.token), json!({})).await;
    assert_eq!(status, 200);
    watcher
        .expect(&[
            "voice_participant_join",
            "voice_stream_publish",
            "voice_participant_join",
            "voice_stream_publish",
        ])
        .await;

    let deny_path = |user: &User| {
        format!(
            "/guilds/{guild}/channels/{voice}/permission-overrides/member/{}",
            user.id
        )
    };
    let deny_body = json!({"allow": [], "deny": ["subscribe_streams"]});
    let (status, body) = t
        .post(&deny_path(&bob), Some(&alice.token), deny_body.clone())
        .await;
    assert_eq!(status, 200, "{body}");
    let frames = watcher
        .expect(&[
            "workspace_channel_permission_override_update",
            "voice_stream_unpublish",
            "voice_participant_leave",
        ])
        .await;
    assert_eq!(frames[2]["d"]["user_id"], bob.id.as_str());
    let (status, body) = t
        .post(&deny_path(&carol), Some(&alice.token), deny_body)
        .await;
    assert_eq!(status, 200, "{body}");
    watcher
        .expect(&["workspace_channel_permission_override_update"])
        .await;
    // Carol had nothing to lose: a fresh snapshot still holds her, alone.
    watcher.socket.subscribe(&guild, &voice).await;
    watcher
        .expect(&["subscribed", "voice_participant_sync"])
        .await;
    let expected: BTreeSet<String> = [carol.id.clone()].into();
    assert_eq!(watcher.roster.users(), expected);
    t.stack.stop().await.expect("clean shutdown");
}

/// A full channel (512 seats, the default) is larger than one frame; a
/// subscriber still gets all of it, on a queue that could not hold 512
/// frames: `voice_participant_sync` with as many as fit, then a
/// `voice_participant_join` for each of the rest, all before anything else.
/// The seats are taken through the voice service's own gRPC api (the token
/// route would need 512 accounts).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_channel_reaches_a_subscriber_whole() {
    let t = TestStack::start_with(Backends::Embedded, 1, |config| {
        config.tune_gateway = |gateway| gateway.outbound_queue = 16;
    })
    .await
    .expect("embedded");
    let alice = t.user("alice").await;
    let (guild, voice, _) = voice_guild(&t, &alice).await;
    let channel = filament_runtime::grpc_client::connect(
        &format!("http://{}", t.stack.voice_grpc_addr),
        std::time::Duration::from_secs(5),
        None,
        &filament_runtime::grpc_client::GrpcClientMetrics::new(t.stack.internal_token.clone()),
    )
    .expect("voice url");
    let mut seats = filament_proto::v1::voice_client::VoiceClient::new(channel);
    let mut expected = BTreeSet::new();
    for _ in 0..512 {
        let user_id = ulid::Ulid::generate().to_string();
        seats
            .join(filament_proto::v1::VoiceJoinRequest {
                guild_id: guild.clone(),
                channel_id: voice.clone(),
                user_id: user_id.clone(),
                username: "seat".into(),
                can_publish: false,
                can_subscribe: true,
                publish_sources: Vec::new(),
            })
            .await
            .expect("a free seat");
        expected.insert(user_id);
    }

    let mut watcher = Client {
        socket: t.connect(0, &alice).await,
        roster: Roster::default(),
    };
    watcher.socket.subscribe(&guild, &voice).await;
    let frames = watcher
        .expect(&["subscribed", "voice_participant_sync"])
        .await;
    let in_sync = frames[1]["d"]["participants"]
        .as_array()
        .expect("participants")
        .len();
    assert!((1..512).contains(&in_sync), "{in_sync} in the first frame");
    let joins = vec!["voice_participant_join"; 512 - in_sync];
    watcher.expect(&joins).await;
    assert_eq!(watcher.roster.users(), expected);
    t.stack.stop().await.expect("clean shutdown");
}
