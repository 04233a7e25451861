//! Hostile clients against the edge, table-driven: every case asserts the
//! exact close code and reason (or HTTP status and error body), that the
//! gateway did not panic (its socket tasks all ended and a fresh socket
//! still works), and that nothing leaked — no internal detail in a reason
//! or body, no frame to a socket that may not see it.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use filament_gateway::{CloseReason, DropReason, IngressRejection, UpgradeRejection};
use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use support::{Backends, DEADLINE, Socket, TOKEN_SECRET, TestStack, User};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::http::{HeaderName, HeaderValue};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

const MAX_FRAME: usize = 64 * 1024;
const ALLOWED_ORIGIN: &str = "https://chat.example";

// ---------------------------------------------------------------------------
// Frames that close the socket.

/// The ids a frame case may use: a channel the user may subscribe to, and
/// one of a guild they are not in.
struct Ids {
    guild: String,
    channel: String,
    foreign_guild: String,
    foreign_channel: String,
}

struct FrameCase {
    name: &'static str,
    frames: fn(&Ids) -> Vec<Message>,
    close: CloseReason,
}

fn text(raw: impl Into<String>) -> Message {
    Message::Text(raw.into().into())
}

fn raw_frame(payload: impl Into<Vec<u8>>, opcode: Data, is_final: bool) -> Message {
    Message::Frame(Frame::message(
        payload.into(),
        OpCode::Data(opcode),
        is_final,
    ))
}

fn subscribe_frame(guild: &str, channel: &str) -> String {
    json!({"v": 1, "t": "subscribe", "d": {"guild_id": guild, "channel_id": channel}}).to_string()
}

fn nested(depth: usize) -> String {
    format!("{}{}", "[".repeat(depth), "]".repeat(depth))
}

const FRAME_CASES: &[FrameCase] = &[
    FrameCase {
        name: "oversized text frame",
        frames: |_| vec![text("x".repeat(MAX_FRAME + 1))],
        close: CloseReason::FrameTooLarge,
    },
    FrameCase {
        name: "oversized binary frame",
        frames: |_| vec![Message::Binary(vec![0; MAX_FRAME + 1].into())],
        close: CloseReason::FrameTooLarge,
    },
    FrameCase {
        name: "fragmented message over the cap, every fragment under it",
        frames: |_| {
            let chunk = vec![b' '; 20 * 1024];
            vec![
                raw_frame(chunk.clone(), Data::Text, false),
                raw_frame(chunk.clone(), Data::Continue, false),
                raw_frame(chunk.clone(), Data::Continue, false),
                raw_frame(chunk, Data::Continue, true),
            ]
        },
        close: CloseReason::FrameTooLarge,
    },
    FrameCase {
        name: "binary frame",
        frames: |ids| {
            vec![Message::Binary(
                subscribe_frame(&ids.guild, &ids.channel)
                    .into_bytes()
                    .into(),
            )]
        },
        close: CloseReason::BinaryFrame,
    },
    FrameCase {
        name: "invalid UTF-8 in a text frame",
        frames: |_| {
            vec![raw_frame(
                b"{\"v\":1,\"t\":\"\xff\xfe\",\"d\":{}}".to_vec(),
                Data::Text,
                true,
            )]
        },
        close: CloseReason::InvalidUtf8,
    },
    FrameCase {
        name: "invalid UTF-8 split across fragments",
        frames: |_| {
            vec![
                raw_frame(b"{\"v\":1,\"t\":\"\xe2".to_vec(), Data::Text, false),
                raw_frame(b"\x28\xa1\"}".to_vec(), Data::Continue, true),
            ]
        },
        close: CloseReason::InvalidUtf8,
    },
    FrameCase {
        name: "continuation frame with nothing to continue",
        frames: |_| vec![raw_frame(b"{}".to_vec(), Data::Continue, true)],
        close: CloseReason::ProtocolError,
    },
    FrameCase {
        name: "compressed (RSV1) frame without a negotiated extension",
        frames: |_| {
            // A deflate bomb would be tiny on the wire; it is refused
            // before anything inflates it.
            let mut frame = Frame::message(
                vec![0x4b, 0x4c, 0x84, 0x01, 0x00],
                OpCode::Data(Data::Text),
                true,
            );
            frame.header_mut().rsv1 = true;
            vec![Message::Frame(frame)]
        },
        close: CloseReason::ProtocolError,
    },
    FrameCase {
        name: "malformed JSON",
        frames: |_| vec![text(r#"{"v":1,"t":"subscribe","d":{"#)],
        close: CloseReason::InvalidEnvelope,
    },
    FrameCase {
        name: "empty text frame",
        frames: |_| vec![text("")],
        close: CloseReason::InvalidEnvelope,
    },
    FrameCase {
        name: "JSON that is not an object",
        frames: |_| vec![text("[1,2,3]")],
        close: CloseReason::InvalidEnvelope,
    },
    FrameCase {
        name: "unknown top-level field",
        frames: |ids| {
            let mut frame: Value = serde_json::from_str(&subscribe_frame(&ids.guild, &ids.channel))
                .unwrap_or_default();
            frame["admin"] = json!(true);
            vec![text(frame.to_string())]
        },
        close: CloseReason::InvalidEnvelope,
    },
    FrameCase {
        name: "missing d",
        frames: |_| vec![text(r#"{"v":1,"t":"subscribe"}"#)],
        close: CloseReason::InvalidEnvelope,
    },
    FrameCase {
        name: "v of the wrong type",
        frames: |_| vec![text(r#"{"v":"1","t":"subscribe","d":{}}"#)],
        close: CloseReason::InvalidEnvelope,
    },
    FrameCase {
        name: "t of the wrong type",
        frames: |_| vec![text(r#"{"v":1,"t":["subscribe"],"d":{}}"#)],
        close: CloseReason::InvalidEnvelope,
    },
    FrameCase {
        name: "t outside [a-z0-9_.]",
        frames: |_| vec![text(r#"{"v":1,"t":"Subscribe","d":{}}"#)],
        close: CloseReason::InvalidEnvelope,
    },
    FrameCase {
        name: "t longer than 64",
        frames: |_| {
            vec![text(format!(
                r#"{{"v":1,"t":"{}","d":{{}}}}"#,
                "a".repeat(65)
            ))]
        },
        close: CloseReason::InvalidEnvelope,
    },
    FrameCase {
        name: "huge number as v",
        frames: |_| {
            vec![text(format!(
                r#"{{"v":1{},"t":"subscribe","d":{{}}}}"#,
                "0".repeat(500)
            ))]
        },
        close: CloseReason::InvalidEnvelope,
    },
    FrameCase {
        name: "v beyond f64",
        frames: |_| vec![text(r#"{"v":1e999,"t":"subscribe","d":{}}"#)],
        close: CloseReason::InvalidEnvelope,
    },
    FrameCase {
        name: "deeply nested JSON",
        frames: |_| vec![text(nested(30_000))],
        close: CloseReason::InvalidEnvelope,
    },
    FrameCase {
        name: "unknown v",
        frames: |ids| {
            vec![text(
                subscribe_frame(&ids.guild, &ids.channel).replace(r#""v":1"#, r#""v":2"#),
            )]
        },
        close: CloseReason::UnsupportedVersion,
    },
    FrameCase {
        name: "unknown t",
        frames: |ids| {
            vec![text(json!({"v": 1, "t": "typing_start", "d": {"guild_id": ids.guild, "channel_id": ids.channel}}).to_string())]
        },
        close: CloseReason::UnknownEvent,
    },
    FrameCase {
        name: "message_create with an extra field",
        frames: |ids| {
            vec![text(json!({"v": 1, "t": "message_create", "d": {"guild_id": ids.guild, "channel_id": ids.channel, "content": "hi", "nonce": 1}}).to_string())]
        },
        close: CloseReason::InvalidPayload,
    },
    FrameCase {
        name: "message_create refused by the api",
        frames: |ids| {
            vec![text(json!({"v": 1, "t": "message_create", "d": {"guild_id": ids.guild, "channel_id": ids.channel, "content": ""}}).to_string())]
        },
        close: CloseReason::MessageRejected,
    },
    FrameCase {
        name: "server-only event sent by a client",
        frames: |ids| {
            vec![text(
                json!({"v": 1, "t": "ready", "d": {"user_id": ids.guild}}).to_string(),
            )]
        },
        close: CloseReason::UnknownEvent,
    },
    FrameCase {
        name: "d of the wrong type",
        frames: |_| vec![text(r#"{"v":1,"t":"subscribe","d":"everything"}"#)],
        close: CloseReason::InvalidPayload,
    },
    FrameCase {
        name: "unknown field in d",
        frames: |ids| {
            vec![text(json!({"v": 1, "t": "subscribe", "d": {"guild_id": ids.guild, "channel_id": ids.channel, "all": true}}).to_string())]
        },
        close: CloseReason::InvalidPayload,
    },
    FrameCase {
        name: "ids of the wrong type",
        frames: |_| {
            vec![text(
                r#"{"v":1,"t":"subscribe","d":{"guild_id":1,"channel_id":2}}"#,
            )]
        },
        close: CloseReason::InvalidPayload,
    },
    FrameCase {
        name: "ids that are not ULIDs",
        frames: |_| vec![text(subscribe_frame("../../admin", "*"))],
        close: CloseReason::InvalidPayload,
    },
    FrameCase {
        name: "non-canonical (lowercase) ULIDs",
        frames: |ids| {
            vec![text(subscribe_frame(
                &ids.guild.to_lowercase(),
                &ids.channel.to_lowercase(),
            ))]
        },
        close: CloseReason::InvalidPayload,
    },
    FrameCase {
        name: "huge number in d",
        frames: |ids| {
            vec![text(format!(
                r#"{{"v":1,"t":"subscribe","d":{{"guild_id":9{},"channel_id":"{}"}}}}"#,
                "9".repeat(1000),
                ids.channel
            ))]
        },
        close: CloseReason::InvalidPayload,
    },
    FrameCase {
        name: "deeply nested d",
        frames: |_| {
            vec![text(format!(
                r#"{{"v":1,"t":"subscribe","d":{}}}"#,
                nested(20_000)
            ))]
        },
        close: CloseReason::InvalidPayload,
    },
    FrameCase {
        name: "flood past the ingress rate limit",
        frames: |ids| {
            // Subscribes the user may not make are ignored, so only the
            // rate limit can close this socket.
            (0..61)
                .map(|_| text(subscribe_frame(&ids.foreign_guild, &ids.foreign_channel)))
                .collect()
        },
        close: CloseReason::RateLimited,
    },
];

/// Sends the frames (ignoring write errors: the server may close before
/// the last one) and returns the close frame.
async fn hostile_close(ws: &mut Ws, frames: Vec<Message>) -> (u16, String) {
    for frame in frames {
        if ws.send(frame).await.is_err() {
            break;
        }
    }
    next_close(ws).await
}

async fn next_close(ws: &mut Ws) -> (u16, String) {
    loop {
        let frame = tokio::time::timeout(DEADLINE, ws.next())
            .await
            .expect("a close frame before the deadline");
        match frame {
            Some(Ok(Message::Close(Some(close)))) => {
                return (close.code.into(), close.reason.to_string());
            }
            Some(Ok(Message::Close(None))) | None => return (1005, String::new()),
            Some(Ok(Message::Text(text))) => {
                // Hostile frames earn nothing but the close.
                panic!("unexpected frame before the close: {text}")
            }
            Some(Ok(_)) => {}
            // The server closed the TCP connection after its close frame
            // while we were still writing.
            Some(Err(err)) => panic!("socket error before the close frame: {err}"),
        }
    }
}

async fn hostile_frames_close_with_their_code(backends: Backends) {
    let Some(ts) = TestStack::start(backends, 1).await else {
        return;
    };
    let owner = ts.user("owner").await;
    let stranger = ts.user("stranger").await;
    let (guild, channel) = ts.guild_with_channel(&owner, "private").await;
    let (foreign_guild, foreign_channel) = ts.guild_with_channel(&stranger, "private").await;
    let ids = Ids {
        guild,
        channel,
        foreign_guild,
        foreign_channel,
    };
    let metrics = ts.gateway_metrics(0);
    assert!(FRAME_CASES.len() >= 30);

    for case in FRAME_CASES {
        let before = metrics.rejected_count(IngressRejection::Closed(case.close));
        let mut socket = ts.connect(0, &owner).await;
        let (code, reason) = hostile_close(&mut socket.ws, (case.frames)(&ids)).await;
        assert_eq!(
            (code, reason.as_str()),
            (case.close.code(), case.close.as_str()),
            "case: {}",
            case.name
        );
        assert_eq!(
            metrics.rejected_count(IngressRejection::Closed(case.close)),
            before + 1,
            "counted: {}",
            case.name
        );
    }
    assert!(metrics.unknown_events_count() >= 2);
    assert_no_panic_and_nothing_left(&ts, &owner).await;
}

#[tokio::test]
async fn hostile_frames_close_with_their_code_embedded() {
    hostile_frames_close_with_their_code(Backends::Embedded).await;
}

#[tokio::test]
async fn hostile_frames_close_with_their_code_external() {
    hostile_frames_close_with_their_code(Backends::External).await;
}

/// Every socket task ended (none panicked holding its connection), and the
/// gateway still serves a fresh socket.
async fn assert_no_panic_and_nothing_left(ts: &TestStack, user: &User) {
    let metrics = ts.gateway_metrics(0);
    eventually("every hostile socket task ended", || {
        metrics.open_connections() == 0
    })
    .await;
    let mut socket = ts.connect(0, user).await;
    socket.ws.close(None).await.expect("close sent");
    eventually("the probe socket ended", || metrics.open_connections() == 0).await;
}

async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not before the deadline: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

// ---------------------------------------------------------------------------
// Upgrades refused with an HTTP error.

fn unix_now() -> i64 {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    i64::try_from(secs).expect("unix time fits i64")
}

fn jwt(secret: &[u8], claims: Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret),
    )
    .expect("token signs")
}

fn claims(sub: &str, iat: i64, exp: i64) -> Value {
    json!({"sub": sub, "username": "mallory", "iat": iat, "nbf": iat, "exp": exp})
}

/// What the upgrade request carries.
struct Upgrade {
    token: Option<String>,
    headers: Vec<(&'static str, String)>,
}

async fn try_upgrade(
    addr: SocketAddr,
    upgrade: Upgrade,
) -> Result<(Ws, tungstenite::handshake::client::Response), (u16, String)> {
    let url = match &upgrade.token {
        Some(token) => format!("ws://{addr}/gateway/ws?access_token={token}"),
        None => format!("ws://{addr}/gateway/ws"),
    };
    let mut request = url.into_client_request().expect("request");
    for (name, value) in upgrade.headers {
        request.headers_mut().insert(
            HeaderName::from_static(name),
            HeaderValue::from_str(&value).expect("header value"),
        );
    }
    match tokio_tungstenite::connect_async(request).await {
        Ok(ok) => Ok(ok),
        Err(tungstenite::Error::Http(response)) => {
            let body = response
                .body()
                .as_deref()
                .map(String::from_utf8_lossy)
                .unwrap_or_default()
                .into_owned();
            Err((response.status().as_u16(), body))
        }
        Err(err) => panic!("upgrade failed below HTTP: {err}"),
    }
}

struct UpgradeCase {
    name: &'static str,
    upgrade: fn(&User) -> Upgrade,
    status: u16,
    error: &'static str,
    counted: UpgradeRejection,
}

fn query(token: impl Into<String>) -> Upgrade {
    Upgrade {
        token: Some(token.into()),
        headers: Vec::new(),
    }
}

const TOKEN_CASES: &[UpgradeCase] = &[
    UpgradeCase {
        name: "no token",
        upgrade: |_| Upgrade {
            token: None,
            headers: Vec::new(),
        },
        status: 401,
        error: "invalid_credentials",
        counted: UpgradeRejection::MissingToken,
    },
    UpgradeCase {
        name: "garbage token",
        upgrade: |_| query("not-a-token-at-all-but-long-enough-to-look-like-one"),
        status: 401,
        error: "invalid_credentials",
        counted: UpgradeRejection::InvalidToken,
    },
    UpgradeCase {
        name: "expired token",
        upgrade: |user| {
            let now = unix_now();
            query(jwt(TOKEN_SECRET, claims(&user.id, now - 3600, now - 60)))
        },
        status: 401,
        error: "invalid_credentials",
        counted: UpgradeRejection::InvalidToken,
    },
    UpgradeCase {
        name: "token not valid yet",
        upgrade: |user| {
            let now = unix_now();
            query(jwt(TOKEN_SECRET, claims(&user.id, now + 600, now + 1200)))
        },
        status: 401,
        error: "invalid_credentials",
        counted: UpgradeRejection::InvalidToken,
    },
    UpgradeCase {
        name: "forged token (another key)",
        upgrade: |user| {
            let now = unix_now();
            query(jwt(
                b"an-attacker-secret-that-is-long-enough-too",
                claims(&user.id, now, now + 600),
            ))
        },
        status: 401,
        error: "invalid_credentials",
        counted: UpgradeRejection::InvalidToken,
    },
    UpgradeCase {
        name: "unsigned token (alg none)",
        upgrade: |user| {
            use base64::Engine as _;
            let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
            let now = unix_now();
            let header = b64.encode(br#"{"alg":"none","typ":"JWT"}"#);
            let body = b64.encode(claims(&user.id, now, now + 600).to_string());
            query(format!("{header}.{body}."))
        },
        status: 401,
        error: "invalid_credentials",
        counted: UpgradeRejection::InvalidToken,
    },
    UpgradeCase {
        name: "token of a user that does not exist (deleted)",
        upgrade: |_| {
            let now = unix_now();
            query(jwt(
                TOKEN_SECRET,
                claims(&ulid::Ulid::generate().to_string(), now, now + 600),
            ))
        },
        status: 401,
        error: "invalid_credentials",
        counted: UpgradeRejection::InvalidToken,
    },
    UpgradeCase {
        name: "token whose sub is not a ULID",
        upgrade: |_| {
            let now = unix_now();
            query(jwt(TOKEN_SECRET, claims("' OR 1=1 --", now, now + 600)))
        },
        status: 401,
        error: "invalid_credentials",
        counted: UpgradeRejection::InvalidToken,
    },
    UpgradeCase {
        name: "oversized token",
        upgrade: |_| query("A".repeat(16 * 1024)),
        status: 401,
        error: "invalid_credentials",
        counted: UpgradeRejection::InvalidToken,
    },
    UpgradeCase {
        name: "token in a non-bearer authorization header",
        upgrade: |user| Upgrade {
            token: None,
            headers: vec![("authorization", format!("Basic {}", user.token))],
        },
        status: 401,
        error: "invalid_credentials",
        counted: UpgradeRejection::MissingToken,
    },
];

const ORIGIN_CASES: &[UpgradeCase] = &[
    UpgradeCase {
        name: "foreign Origin",
        upgrade: |user| Upgrade {
            token: Some(user.token.clone()),
            headers: vec![("origin", "https://evil.example".to_owned())],
        },
        status: 403,
        error: "forbidden",
        counted: UpgradeRejection::OriginForbidden,
    },
    UpgradeCase {
        name: "no Origin while an allowlist is set",
        upgrade: |user| query(user.token.clone()),
        status: 403,
        error: "forbidden",
        counted: UpgradeRejection::OriginForbidden,
    },
    UpgradeCase {
        name: "allowed origin with a different scheme",
        upgrade: |user| Upgrade {
            token: Some(user.token.clone()),
            headers: vec![("origin", ALLOWED_ORIGIN.replace("https", "http"))],
        },
        status: 403,
        error: "forbidden",
        counted: UpgradeRejection::OriginForbidden,
    },
];

async fn assert_upgrade_cases(ts: &TestStack, user: &User, cases: &[UpgradeCase]) {
    let metrics = ts.gateway_metrics(0);
    for case in cases {
        let before = metrics.upgrade_rejected_count(case.counted);
        let refused = try_upgrade(ts.stack.gateway_addrs[0], (case.upgrade)(user)).await;
        let Err((status, body)) = refused else {
            panic!("case {} was upgraded", case.name);
        };
        assert_eq!(status, case.status, "case: {}", case.name);
        // Exactly the error body of PROTOCOL.md §1.3: nothing about why.
        let body: Value = serde_json::from_str(&body).unwrap_or(Value::String(body));
        assert_eq!(body, json!({"error": case.error}), "case: {}", case.name);
        assert_eq!(
            metrics.upgrade_rejected_count(case.counted),
            before + 1,
            "counted: {}",
            case.name
        );
    }
    assert_eq!(metrics.open_connections(), 0);
}

#[tokio::test]
async fn bad_tokens_are_refused_before_the_upgrade() {
    let Some(ts) = TestStack::start(Backends::Embedded, 1).await else {
        return;
    };
    let user = ts.user("mallory").await;
    assert_upgrade_cases(&ts, &user, TOKEN_CASES).await;
    // The same token as a bearer header works: the cases failed for their
    // reason, not the transport.
    let bearer = Upgrade {
        token: None,
        headers: vec![("authorization", format!("Bearer {}", user.token))],
    };
    let (mut ws, _) = try_upgrade(ts.stack.gateway_addrs[0], bearer)
        .await
        .expect("bearer upgrade");
    ws.close(None).await.expect("close sent");
    assert_no_panic_and_nothing_left(&ts, &user).await;
}

#[tokio::test]
async fn foreign_origins_are_refused_at_the_upgrade() {
    let Some(ts) = TestStack::start_with(Backends::Embedded, 1, |config| {
        config.tune_gateway = |gateway| gateway.allowed_origins = vec![ALLOWED_ORIGIN.to_owned()];
    })
    .await
    else {
        return;
    };
    let user = ts.user("mallory").await;
    assert_upgrade_cases(&ts, &user, ORIGIN_CASES).await;
    let allowed = Upgrade {
        token: Some(user.token.clone()),
        headers: vec![("origin", ALLOWED_ORIGIN.to_owned())],
    };
    let (mut ws, _) = try_upgrade(ts.stack.gateway_addrs[0], allowed)
        .await
        .expect("allowed origin upgrades");
    ws.close(None).await.expect("close sent");
}

#[tokio::test]
async fn compression_is_never_negotiated() {
    let Some(ts) = TestStack::start(Backends::Embedded, 1).await else {
        return;
    };
    let user = ts.user("bomber").await;
    let offer = Upgrade {
        token: Some(user.token.clone()),
        headers: vec![(
            "sec-websocket-extensions",
            "permessage-deflate; client_max_window_bits".to_owned(),
        )],
    };
    let (mut ws, response) = try_upgrade(ts.stack.gateway_addrs[0], offer)
        .await
        .expect("upgrade");
    assert!(
        response.headers().get("sec-websocket-extensions").is_none(),
        "{:?}",
        response.headers()
    );
    ws.close(None).await.expect("close sent");
}

// ---------------------------------------------------------------------------
// Per-IP limits.

#[tokio::test]
async fn one_ip_cannot_hold_more_than_its_connections() {
    let Some(ts) = TestStack::start_with(Backends::Embedded, 1, |config| {
        config.tune_gateway = |gateway| gateway.max_connections_per_ip = 3;
    })
    .await
    else {
        return;
    };
    let user = ts.user("hoarder").await;
    let metrics = ts.gateway_metrics(0);
    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(ts.connect(0, &user).await);
    }
    let refused = try_upgrade(ts.stack.gateway_addrs[0], query(user.token.clone())).await;
    let Err((status, body)) = refused else {
        panic!("a fourth socket from one IP was upgraded");
    };
    assert_eq!(
        (status, body.as_str()),
        (429, r#"{"error":"rate_limited"}"#)
    );
    assert_eq!(
        metrics.upgrade_rejected_count(UpgradeRejection::IpConnectionLimit),
        1
    );
    // Closing one frees its slot.
    let mut first = open.remove(0);
    first.ws.close(None).await.expect("close sent");
    eventually("the closed socket released its slot", || {
        metrics.open_connections() == 2
    })
    .await;
    open.push(ts.connect(0, &user).await);
}

#[tokio::test]
async fn a_handshake_flood_is_refused_before_the_token_is_checked() {
    let Some(ts) = TestStack::start_with(Backends::Embedded, 1, |config| {
        config.tune_gateway = |gateway| gateway.handshakes_per_ip_per_minute = 5;
    })
    .await
    else {
        return;
    };
    let metrics = ts.gateway_metrics(0);
    let addr = ts.stack.gateway_addrs[0];
    for _ in 0..5 {
        let refused = try_upgrade(addr, query("flood-flood-flood-flood-flood-flood")).await;
        assert_eq!(refused.err().map(|e| e.0), Some(401));
    }
    let url = format!("ws://{addr}/gateway/ws?access_token=flood");
    let Err(tungstenite::Error::Http(response)) = tokio_tungstenite::connect_async(url).await
    else {
        panic!("the sixth handshake in a burst was not refused");
    };
    assert_eq!(response.status(), 429);
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("seconds");
    assert!((1..=12).contains(&retry_after), "{retry_after}");
    assert_eq!(
        metrics.upgrade_rejected_count(UpgradeRejection::HandshakeRateLimited),
        1
    );
    // The flood never reached the api: only the five got a token check.
    assert_eq!(
        metrics.upgrade_rejected_count(UpgradeRejection::InvalidToken),
        5
    );
}

// ---------------------------------------------------------------------------
// Slow consumers, foreign channels, expiry, idleness.

/// A websocket over a socket with a tiny receive buffer, so the server's
/// writes back up quickly when it does not read.
async fn connect_with_small_window(addr: SocketAddr, user: &User) -> Ws {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("rcvbuf");
    let stream = socket.connect(addr).await.expect("tcp connect");
    let url = format!("ws://{addr}/gateway/ws?access_token={}", user.token);
    let (ws, _) = tokio_tungstenite::client_async(url, MaybeTlsStream::Plain(stream))
        .await
        .expect("ws connects");
    ws
}

#[tokio::test]
async fn a_reader_that_never_reads_is_evicted_and_others_keep_their_frames() {
    let Some(ts) = TestStack::start_with(Backends::Embedded, 1, |config| {
        // The default queue (256): a smaller one would also evict a fast
        // reader that the scheduler leaves behind for a burst.
        config.tune_gateway = |gateway| {
            // Time for the test to start reading once the eviction is seen.
            gateway.close_timeout = DEADLINE;
        };
        config.tune_api = |api| api.rate_limit_per_minute = 100_000;
    })
    .await
    else {
        return;
    };
    let owner = ts.user("owner").await;
    let (guild, channel) = ts.guild_with_channel(&owner, "private").await;
    let metrics = ts.gateway_metrics(0);

    let mut slow = connect_with_small_window(ts.stack.gateway_addrs[0], &owner).await;
    slow.send(text(subscribe_frame(&guild, &channel)))
        .await
        .expect("subscribe sent");
    let mut fast = ts.connect(0, &owner).await;
    fast.subscribed(&guild, &channel).await;
    // The slow socket's `subscribed` is queued before anything published
    // after the fast one's: both are in the channel from here on.
    eventually("both sockets subscribed", || {
        metrics.emitted_count("subscribed") == 2
    })
    .await;

    let fast_reader = tokio::spawn(async move {
        let mut received = Vec::new();
        loop {
            let event = fast.next_event().await;
            if event["t"] == "message_create" {
                let content = event["d"]["content"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                let done = content == "sentinel";
                received.push(content);
                if done {
                    return received;
                }
            }
        }
    });

    let body = "x".repeat(1900);
    let path = format!("/guilds/{guild}/channels/{channel}/messages");
    let mut posted = 0;
    while metrics.closed_count(CloseReason::SlowConsumer) == 0 {
        assert!(posted < 5_000, "no eviction after {posted} messages");
        let (status, _) = ts
            .post(
                &path,
                Some(&owner.token),
                json!({"content": format!("{posted} {body}")}),
            )
            .await;
        assert_eq!(status, 200);
        posted += 1;
    }
    // Frames that kept coming until the socket left the index count too.
    assert!(metrics.dropped_count(DropReason::FullQueue) >= 1);
    let (status, _) = ts
        .post(&path, Some(&owner.token), json!({"content": "sentinel"}))
        .await;
    assert_eq!(status, 200);

    // The fast reader got every message, in order, and the sentinel.
    let received = tokio::time::timeout(DEADLINE, fast_reader)
        .await
        .expect("fast reader done")
        .expect("no panic");
    assert_eq!(received.len(), posted + 1);
    for (n, content) in received.iter().take(posted).enumerate() {
        assert!(
            content.starts_with(&format!("{n} ")),
            "message {n} out of order"
        );
    }
    // The slow one, reading at last, finds its frames cut short by 1008.
    let (code, reason) = drain_to_close(&mut slow).await;
    assert_eq!((code, reason.as_str()), (1008, "slow_consumer"));
}

/// Reads past whatever frames are queued to the close frame.
async fn drain_to_close(ws: &mut Ws) -> (u16, String) {
    loop {
        match tokio::time::timeout(DEADLINE, ws.next())
            .await
            .expect("close before the deadline")
        {
            Some(Ok(Message::Close(Some(close)))) => {
                return (close.code.into(), close.reason.to_string());
            }
            Some(Ok(Message::Close(None))) | None => return (1005, String::new()),
            Some(Ok(_)) => {}
            Some(Err(err)) => panic!("socket error before the close frame: {err}"),
        }
    }
}

#[tokio::test]
async fn subscribing_to_another_guilds_channel_yields_nothing() {
    let Some(ts) = TestStack::start(Backends::Embedded, 1).await else {
        return;
    };
    let alice = ts.user("alice").await;
    let mallory = ts.user("mallory").await;
    let (guild, channel) = ts.guild_with_channel(&alice, "public").await;
    let (own_guild, own_channel) = ts.guild_with_channel(&mallory, "private").await;
    let metrics = ts.gateway_metrics(0);

    let mut socket = ts.connect(0, &mallory).await;
    socket.subscribe(&guild, &channel).await;
    // Frames are ordered: the first answer is to the second subscribe.
    socket.subscribed(&own_guild, &own_channel).await;
    assert_eq!(metrics.rejected_count(IngressRejection::SubscribeDenied), 1);

    let (status, _) = ts
        .post(
            &format!("/guilds/{guild}/channels/{channel}/messages"),
            Some(&alice.token),
            json!({"content": "secret"}),
        )
        .await;
    assert_eq!(status, 200);
    let (status, _) = ts
        .post(
            &format!("/guilds/{own_guild}/channels/{own_channel}/messages"),
            Some(&mallory.token),
            json!({"content": "sentinel"}),
        )
        .await;
    assert_eq!(status, 200);
    let event = socket.next_event().await;
    assert_eq!(event["t"], "message_create");
    assert_eq!(event["d"]["content"], "sentinel", "{event}");
}

#[tokio::test]
async fn ingress_rate_limit_counts_data_frames_only() {
    let Some(ts) = TestStack::start_with(Backends::Embedded, 1, |config| {
        // Pings and data frames would both be counted under any bucket
        // shorter than the test.
        config.tune_gateway = |gateway| gateway.ingress_window = Duration::from_secs(3600);
    })
    .await
    else {
        return;
    };
    let user = ts.user("chatty").await;
    let (guild, channel) = ts.guild_with_channel(&user, "private").await;
    let mut socket = ts.connect(0, &user).await;
    for _ in 0..100 {
        socket
            .ws
            .send(Message::Ping(Vec::new().into()))
            .await
            .expect("ping sent");
    }
    for _ in 0..60 {
        socket.subscribed(&guild, &channel).await;
    }
    socket.subscribe(&guild, &channel).await;
    assert_eq!(socket.next_close().await, (4008, "rate_limited".to_owned()));
}

#[tokio::test]
async fn an_expired_token_closes_the_socket_with_4010() {
    let Some(ts) = TestStack::start_with(Backends::Embedded, 1, |config| {
        config.tune_api = |api| api.access_token_ttl = Duration::from_secs(2);
    })
    .await
    else {
        return;
    };
    let user = ts.user("ephemeral").await;
    let mut socket = ts.connect(0, &user).await;
    assert_eq!(
        socket.next_close().await,
        (4010, "token_expired".to_owned())
    );
    assert_eq!(
        ts.gateway_metrics(0)
            .closed_count(CloseReason::TokenExpired),
        1
    );
}

#[tokio::test]
async fn a_silent_socket_is_closed_after_the_idle_timeout() {
    let Some(ts) = TestStack::start_with(Backends::Embedded, 1, |config| {
        config.tune_gateway = |gateway| {
            gateway.ping_interval = Duration::from_secs(3600);
            gateway.idle_timeout = Duration::from_secs(1);
        };
    })
    .await
    else {
        return;
    };
    let user = ts.user("sleepy").await;
    let mut socket: Socket = ts.connect(0, &user).await;
    assert_eq!(socket.next_close().await, (4009, "idle_timeout".to_owned()));
}

#[tokio::test]
async fn the_server_pings_every_interval() {
    let Some(ts) = TestStack::start_with(Backends::Embedded, 1, |config| {
        config.tune_gateway = |gateway| gateway.ping_interval = Duration::from_millis(200);
    })
    .await
    else {
        return;
    };
    let user = ts.user("pinged").await;
    let mut socket = ts.connect(0, &user).await;
    let mut pings = 0;
    while pings < 3 {
        let frame = tokio::time::timeout(DEADLINE, socket.ws.next())
            .await
            .expect("a ping before the deadline");
        match frame {
            Some(Ok(Message::Ping(_))) => pings += 1,
            other => panic!("expected pings only, got {other:?}"),
        }
    }
}

// ---------------------------------------------------------------------------
// Metrics are private; REST is rate limited.

#[tokio::test]
async fn metrics_are_served_only_on_the_admin_listeners() {
    let Some(ts) = TestStack::start(Backends::Embedded, 1).await else {
        return;
    };
    let user = ts.user("curious").await;
    let public = format!("http://{}/metrics", ts.stack.public_addr);
    let api_direct = format!("http://{}/metrics", ts.stack.api_http_addr);
    let gateway_direct = format!("http://{}/metrics", ts.stack.gateway_addrs[0]);
    for url in [ts.api("/metrics"), public, api_direct, gateway_direct] {
        let response = ts
            .http
            .get(&url)
            .bearer_auth(&user.token)
            .send()
            .await
            .expect("request");
        assert_eq!(response.status(), 404, "{url}");
    }

    let _socket = ts.connect(0, &user).await;
    let gateway_admin = ts.stack.gateway_admin_addrs[0].expect("gateway admin listener");
    let text = ts
        .http
        .get(format!("http://{gateway_admin}/metrics"))
        .send()
        .await
        .expect("scrape")
        .text()
        .await
        .expect("body");
    assert!(text.contains("filament_gateway_connections 1"), "{text}");
    assert!(
        text.contains("filament_gateway_events_emitted_total{event_type=\"ready\"} 1"),
        "{text}"
    );

    let (status, _) = ts
        .get("/auth/me", Some("not-a-valid-token-but-long-enough-for-it"))
        .await;
    assert_eq!(status, 401);
    let api_admin = ts.stack.api_admin_addr.expect("api admin listener");
    let text = ts
        .http
        .get(format!("http://{api_admin}/metrics"))
        .send()
        .await
        .expect("scrape")
        .text()
        .await
        .expect("body");
    assert!(
        text.contains("filament_api_auth_failures_total 1"),
        "{text}"
    );
}

#[tokio::test]
async fn rest_calls_past_the_global_limit_get_429_with_retry_after() {
    let Some(ts) = TestStack::start_with(Backends::Embedded, 1, |config| {
        config.tune_api = |api| api.rate_limit_per_minute = 10;
    })
    .await
    else {
        return;
    };
    // Register + login + me: three calls from the IP, one as the user.
    let alice = ts.user("alice").await;
    let bob = ts.user("bob").await;
    for _ in 0..9 {
        assert_eq!(ts.get("/auth/me", Some(&alice.token)).await.0, 200);
    }
    let response = ts
        .http
        .get(ts.api("/auth/me"))
        .bearer_auth(&alice.token)
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 429);
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("seconds");
    assert!((1..=6).contains(&retry_after), "{retry_after}");
    assert_eq!(
        response.text().await.expect("body"),
        r#"{"error":"rate_limited"}"#
    );
    // Keyed by user: bob is not affected by alice's burst.
    assert_eq!(ts.get("/auth/me", Some(&bob.token)).await.0, 200);
    // Anonymous calls share their IP's bucket, which registration and
    // login already drew down: 2 users × 2 calls, then 6 more.
    for _ in 0..6 {
        assert_eq!(ts.get("/auth/me", None).await.0, 401);
    }
    assert_eq!(ts.get("/auth/me", None).await.0, 429);
}
