//! The optional LiveKit webhook receiver (`POST /livekit/webhook` on
//! `FILAMENT_VOICE_WEBHOOK_ADDR`). LiveKit reports participants joining and
//! leaving rooms and tracks being published; each verified report updates
//! the observed roster.
//!
//! Nothing in a request is read before [`livekit::LiveKit::verify_webhook`] accepted
//! it: the signature, the issuer, the validity window and the body hash.
//! Refusals are 401 with a JSON error; the token is never logged. The body
//! is bounded; unknown event kinds and rooms that are not ours are accepted
//! and ignored, as LiveKit expects a 2xx for every delivery it should not
//! retry.

use std::time::{SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde::Deserialize;

use crate::livekit;
use crate::roster::{ObservedTrack, Stream};
use crate::service::{Observed, VoiceService};

/// LiveKit webhook bodies are a few kilobytes.
pub const MAX_WEBHOOK_BYTES: usize = 64 * 1024;

pub fn router(service: VoiceService) -> Router {
    Router::new()
        .route("/livekit/webhook", post(receive))
        .layer(DefaultBodyLimit::max(MAX_WEBHOOK_BYTES))
        .with_state(service)
}

/// The parts of LiveKit's `WebhookEvent` (protobuf JSON) the roster uses.
/// Unknown fields are expected: LiveKit sends many.
#[derive(Debug, Deserialize)]
struct WebhookEvent {
    event: String,
    #[serde(default)]
    room: Option<Room>,
    #[serde(default)]
    participant: Option<Participant>,
    #[serde(default)]
    track: Option<Track>,
    /// Protobuf JSON writes int64 as a string; accept a number too.
    #[serde(default, rename = "createdAt")]
    created_at: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
struct Room {
    #[serde(default)]
    name: String,
}

#[derive(Debug, Deserialize)]
struct Participant {
    #[serde(default)]
    sid: String,
    #[serde(default)]
    identity: String,
}

#[derive(Debug, Deserialize)]
struct Track {
    #[serde(default)]
    source: Option<String>,
    #[serde(default)]
    muted: bool,
}

async fn receive(State(service): State<VoiceService>, headers: HeaderMap, body: Bytes) -> Response {
    let now = now_unix();
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if let Err(reason) = service.livekit().verify_webhook(authorization, &body, now) {
        service.metrics().webhook_rejected();
        tracing::warn!(%reason, "LiveKit webhook refused");
        return error(StatusCode::UNAUTHORIZED, "invalid_credentials");
    }
    let Ok(event) = serde_json::from_slice::<WebhookEvent>(&body) else {
        return error(StatusCode::BAD_REQUEST, "invalid_request");
    };
    if let Some((channel, user_id, observed)) = interpret(&event, now) {
        match service.observe(&channel, &user_id, &observed).await {
            Ok(applied) => tracing::debug!(kind = %event.event, applied, "LiveKit webhook applied"),
            // Not a 2xx: LiveKit delivers it again later.
            Err(err) => {
                tracing::warn!(%err, kind = %event.event, "LiveKit webhook not applied");
                return error(StatusCode::SERVICE_UNAVAILABLE, "unavailable");
            }
        }
    }
    (
        StatusCode::OK,
        axum::Json(serde_json::json!({"accepted": true})),
    )
        .into_response()
}

/// What a verified event says about one of our participants, if anything.
fn interpret(
    event: &WebhookEvent,
    now: i64,
) -> Option<(crate::roster::ChannelKey, String, Observed)> {
    let room = event.room.as_ref()?;
    let participant = event.participant.as_ref()?;
    let (user_id, channel) = livekit::parse_identity(&participant.identity, &room.name)?;
    let sid = participant.sid.clone();
    let observed = match event.event.as_str() {
        "participant_joined" => Observed::Joined { sid },
        "participant_left" | "participant_connection_aborted" => Observed::Left {
            sid,
            at_unix: created_at(event).unwrap_or(now),
        },
        kind @ ("track_published" | "track_unpublished") => {
            let track = event.track.as_ref()?;
            let stream = match track.source.as_deref()? {
                "MICROPHONE" => Stream::Microphone,
                "CAMERA" => Stream::Camera,
                "SCREEN_SHARE" => Stream::ScreenShare,
                _ => return None,
            };
            Observed::Track(ObservedTrack {
                stream,
                published: kind == "track_published",
                muted: track.muted,
            })
        }
        _ => return None,
    };
    Some((channel, user_id, observed))
}

fn created_at(event: &WebhookEvent) -> Option<i64> {
    match event.created_at.as_ref()? {
        serde_json::Value::String(s) => s.parse().ok(),
        serde_json::Value::Number(n) => n.as_i64(),
        _ => None,
    }
}

fn error(status: StatusCode, code: &'static str) -> Response {
    (status, axum::Json(serde_json::json!({ "error": code }))).into_response()
}

fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}
