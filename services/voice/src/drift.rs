//! The LiveKit drift check (PROTOCOL.md §6.6): every
//! `FILAMENT_VOICE_DRIFT_CHECK_SECS` (15 s) the roster is compared with what
//! LiveKit itself lists, through its server API (`twirp/livekit.RoomService`):
//!
//! - a participant LiveKit does not list leaves (`voice_stream_unpublish`,
//!   `voice_participant_leave`), unless their token is younger than
//!   [`GRACE`] and they may still be connecting;
//! - a participant the roster thinks muted whose microphone LiveKit shows
//!   live is un-muted (`voice_participant_update`);
//! - someone in one of our rooms whom the roster does not hold is removed
//!   from the room.
//!
//! It runs only where `FILAMENT_LIVEKIT_API_URL` is set: without a LiveKit
//! to ask, every participant would look gone. The url is LiveKit's
//! in-cluster `http://` address; this build carries no TLS client.

use std::time::Duration;

use reqwest::StatusCode;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::livekit::{self, LiveKit, ServerScope};
use crate::metrics::DriftKind;
use crate::roster::{Clock, LiveParticipant};
use crate::service::VoiceService;
use crate::store::StoreError;

/// A token younger than this is spared: its holder may not have reached
/// LiveKit yet.
pub const GRACE: Duration = Duration::from_secs(30);
/// The largest server-API answer read; a room list or a full room is far
/// smaller.
const MAX_RESPONSE_BYTES: usize = 4 * 1024 * 1024;
/// Every server-API call fails after this.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum DriftError {
    #[error("LiveKit server API unreachable: {0}")]
    Http(#[from] reqwest::Error),
    #[error("LiveKit server API answered {0}")]
    Status(StatusCode),
    #[error("LiveKit server API answer over {MAX_RESPONSE_BYTES} bytes")]
    TooLarge,
    #[error("LiveKit server API answer does not parse: {0}")]
    Json(#[from] serde_json::Error),
    #[error("the voice roster: {0}")]
    Store(#[from] StoreError),
}

/// LiveKit's `RoomService`, as far as the drift check needs it.
pub struct RoomService {
    http: reqwest::Client,
    base: String,
    livekit: LiveKit,
}

impl RoomService {
    /// `base_url`: `http://host:port` of LiveKit's server API.
    pub fn new(base_url: &str, livekit: LiveKit) -> Result<Self, DriftError> {
        let http = reqwest::Client::builder().timeout(CALL_TIMEOUT).build()?;
        Ok(Self {
            http,
            base: base_url.trim_end_matches('/').to_owned(),
            livekit,
        })
    }

    /// The names of LiveKit's rooms.
    pub async fn rooms(&self) -> Result<Vec<String>, DriftError> {
        let listed: RoomList = self
            .call("ListRooms", ServerScope::ListRooms, json!({}))
            .await?;
        Ok(listed.rooms.into_iter().map(|room| room.name).collect())
    }

    pub async fn participants(&self, room: &str) -> Result<Vec<LiveParticipant>, DriftError> {
        let listed: ParticipantList = self
            .call(
                "ListParticipants",
                ServerScope::Room(room),
                json!({ "room": room }),
            )
            .await?;
        Ok(listed
            .participants
            .into_iter()
            .map(|p| LiveParticipant {
                live_microphone: p.tracks.iter().any(Track::is_live_microphone),
                identity: p.identity,
            })
            .collect())
    }

    pub async fn remove(&self, room: &str, identity: &str) -> Result<(), DriftError> {
        let _: serde_json::Value = self
            .call(
                "RemoveParticipant",
                ServerScope::Room(room),
                json!({ "room": room, "identity": identity }),
            )
            .await?;
        Ok(())
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: &str,
        scope: ServerScope<'_>,
        body: serde_json::Value,
    ) -> Result<T, DriftError> {
        let token = self
            .livekit
            .server_token(scope, Clock::now().unix_ms / 1000);
        let mut response = self
            .http
            .post(format!("{}/twirp/livekit.RoomService/{method}", self.base))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await?;
        if !response.status().is_success() {
            return Err(DriftError::Status(response.status()));
        }
        let mut bytes = Vec::new();
        while let Some(chunk) = response.chunk().await? {
            if bytes.len() + chunk.len() > MAX_RESPONSE_BYTES {
                return Err(DriftError::TooLarge);
            }
            bytes.extend_from_slice(&chunk);
        }
        Ok(serde_json::from_slice(&bytes)?)
    }
}

// LiveKit's answers, reduced to what is read. Unknown fields are LiveKit's
// business and ignored; absent ones take their proto defaults.

#[derive(Deserialize)]
struct RoomList {
    #[serde(default)]
    rooms: Vec<Room>,
}

#[derive(Deserialize)]
struct Room {
    #[serde(default)]
    name: String,
}

#[derive(Deserialize)]
struct ParticipantList {
    #[serde(default)]
    participants: Vec<Participant>,
}

#[derive(Deserialize)]
struct Participant {
    #[serde(default)]
    identity: String,
    #[serde(default)]
    tracks: Vec<Track>,
}

#[derive(Deserialize)]
struct Track {
    #[serde(default, rename = "type")]
    kind: String,
    #[serde(default)]
    source: String,
    #[serde(default)]
    muted: bool,
}

impl Track {
    fn is_live_microphone(&self) -> bool {
        let microphone = match self.source.as_str() {
            "MICROPHONE" => true,
            // Older servers do not say; any audio track is the microphone.
            "" | "UNKNOWN" => self.kind == "AUDIO",
            _ => false,
        };
        microphone && !self.muted
    }
}

/// One drift check over every room either side knows, sparing tokens
/// younger than `grace`. A room LiveKit could not be asked about is left
/// alone until the next check.
pub async fn check_once(
    service: &VoiceService,
    rooms: &RoomService,
    grace: Duration,
) -> Result<(), DriftError> {
    let mut keys = service.voice_channels().await?;
    for key in rooms
        .rooms()
        .await?
        .iter()
        .filter_map(|r| livekit::parse_room(r))
    {
        if !keys.contains(&key) {
            keys.push(key);
        }
    }
    let metrics = service.metrics();
    for key in keys {
        let room = livekit::room_name(&key);
        let live = match rooms.participants(&room).await {
            Ok(live) => live,
            Err(err) => {
                tracing::warn!(%err, room, "cannot list a LiveKit room; skipped");
                continue;
            }
        };
        let done = match service.reconcile(&key, &live, grace).await {
            Ok(done) => done,
            Err(err) => {
                tracing::warn!(%err, room, "cannot reconcile a room; skipped");
                continue;
            }
        };
        metrics.drift_corrected(DriftKind::Left, done.left);
        metrics.drift_corrected(DriftKind::Unmuted, done.unmuted);
        for identity in done.strays {
            match rooms.remove(&room, &identity).await {
                Ok(()) => metrics.drift_corrected(DriftKind::Removed, 1),
                Err(err) => tracing::warn!(%err, room, "cannot remove a stray participant"),
            }
        }
    }
    Ok(())
}

/// Runs [`check_once`] every `interval` until `shutdown`.
pub async fn run(
    service: VoiceService,
    rooms: RoomService,
    interval: Duration,
    shutdown: CancellationToken,
) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticks.tick() => {
                if let Err(err) = check_once(&service, &rooms, GRACE).await {
                    tracing::warn!(%err, "LiveKit drift check failed");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "a failed call is a failed test")]

    use std::collections::BTreeMap;
    use std::sync::{Arc, Mutex};

    use axum::extract::{Path, State};
    use axum::http::HeaderMap;
    use axum::routing::post;
    use axum::{Json, Router};
    use serde_json::Value;

    use super::*;
    use crate::metrics::DriftKind;
    use crate::roster::ChannelKey;
    use crate::service::Join;
    use crate::service::tests::{join, service};

    const SECRET: &[u8] = b"a-unit-test-secret-of-32-bytes-or-more";

    /// A LiveKit server API that checks each call's token and grant, serves
    /// fixed rooms, and records removals.
    #[derive(Default)]
    struct FakeLiveKit {
        rooms: BTreeMap<String, Value>,
        removed: Vec<(String, String)>,
        failing: bool,
    }

    type Shared = Arc<Mutex<FakeLiveKit>>;

    async fn twirp(
        State(fake): State<Shared>,
        Path(method): Path<String>,
        headers: HeaderMap,
        Json(body): Json<Value>,
    ) -> Result<Json<Value>, axum::http::StatusCode> {
        let unauthorized = axum::http::StatusCode::UNAUTHORIZED;
        let token = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or(unauthorized)?;
        let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
        validation.required_spec_claims = ["exp", "iss"].into_iter().map(String::from).collect();
        validation.set_issuer(&["key"]);
        let claims = jsonwebtoken::decode::<Value>(
            token,
            &jsonwebtoken::DecodingKey::from_secret(SECRET),
            &validation,
        )
        .map_err(|_| unauthorized)?
        .claims;
        let room = body["room"].as_str().unwrap_or_default().to_owned();
        let granted = match method.as_str() {
            "ListRooms" => claims["video"]["roomList"] == true,
            _ => claims["video"]["roomAdmin"] == true && claims["video"]["room"] == room.as_str(),
        };
        if !granted {
            return Err(axum::http::StatusCode::FORBIDDEN);
        }
        let mut fake = fake.lock().unwrap();
        if fake.failing {
            return Err(axum::http::StatusCode::INTERNAL_SERVER_ERROR);
        }
        let answer = match method.as_str() {
            "ListRooms" => {
                let rooms: Vec<Value> = fake
                    .rooms
                    .keys()
                    .map(|name| json!({"name": name}))
                    .collect();
                json!({ "rooms": rooms })
            }
            "ListParticipants" => json!({
                "participants": fake.rooms.get(&room).cloned().unwrap_or_else(|| json!([]))
            }),
            "RemoveParticipant" => {
                let identity = body["identity"].as_str().unwrap_or_default().to_owned();
                fake.removed.push((room, identity));
                json!({})
            }
            _ => return Err(axum::http::StatusCode::NOT_FOUND),
        };
        Ok(Json(answer))
    }

    async fn fake_livekit(fake: Shared) -> RoomService {
        let app = Router::new()
            .route("/twirp/livekit.RoomService/{method}", post(twirp))
            .with_state(fake);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        let livekit = LiveKit::new("key", SECRET.to_vec(), "ws://lk").unwrap();
        RoomService::new(&format!("http://{addr}"), livekit).unwrap()
    }

    fn channel() -> ChannelKey {
        ChannelKey {
            guild_id: filament_ids::GuildId::generate(),
            channel_id: filament_ids::ChannelId::generate(),
        }
    }

    fn seat(channel: &ChannelKey, user: &str) -> Join {
        Join {
            channel: channel.clone(),
            user_id: user.to_owned(),
            ..join(user)
        }
    }

    fn listed(identity: &str, microphone_muted: bool) -> Value {
        json!({
            "sid": "PA_x",
            "identity": identity,
            "tracks": [{"type": "AUDIO", "source": "MICROPHONE", "muted": microphone_muted}],
            "someFieldWeIgnore": 1
        })
    }

    #[tokio::test]
    async fn one_check_corrects_both_sides() {
        let (service, recorder) = service();
        let (here, elsewhere) = (channel(), channel());
        let [gone, muted, stray, squatter] = [(); 4].map(|()| ulid::Ulid::generate().to_string());
        service.join(seat(&here, &gone)).await.unwrap();
        service.join(seat(&here, &muted)).await.unwrap();
        let mute = filament_proto::v1::VoiceStateFields {
            is_muted: Some(true),
            ..Default::default()
        };
        service.update_state(&here, &muted, &mute).await.unwrap();
        recorder.kinds();

        let fake = Shared::default();
        {
            let mut fake = fake.lock().unwrap();
            fake.rooms.insert(
                livekit::room_name(&here),
                json!([
                    listed(&livekit::identity(&muted, &here), false),
                    listed(&livekit::identity(&stray, &elsewhere), false),
                ]),
            );
            // A room of ours that the roster has no one in.
            fake.rooms.insert(
                livekit::room_name(&elsewhere),
                json!([listed(&livekit::identity(&squatter, &elsewhere), true)]),
            );
            // Someone else's room is none of our business.
            fake.rooms
                .insert("another.app".to_owned(), json!([listed("whoever", false)]));
        }
        let rooms = fake_livekit(Arc::clone(&fake)).await;

        check_once(&service, &rooms, Duration::ZERO).await.unwrap();
        assert_eq!(recorder.kinds(), ["update", "unpublish", "leave"]);
        let removed: BTreeMap<_, _> = fake.lock().unwrap().removed.iter().cloned().collect();
        let expected: BTreeMap<_, _> = [
            (
                livekit::room_name(&here),
                livekit::identity(&stray, &elsewhere),
            ),
            (
                livekit::room_name(&elsewhere),
                livekit::identity(&squatter, &elsewhere),
            ),
        ]
        .into_iter()
        .collect();
        assert_eq!(removed, expected);
        let metrics = service.metrics();
        assert_eq!(metrics.drift_corrections(DriftKind::Left), 1);
        assert_eq!(metrics.drift_corrections(DriftKind::Unmuted), 1);
        assert_eq!(metrics.drift_corrections(DriftKind::Removed), 2);

        // A second check finds nothing left to do.
        fake.lock().unwrap().removed.clear();
        fake.lock()
            .unwrap()
            .rooms
            .remove(&livekit::room_name(&elsewhere));
        fake.lock().unwrap().rooms.insert(
            livekit::room_name(&here),
            json!([listed(&livekit::identity(&muted, &here), false)]),
        );
        check_once(&service, &rooms, Duration::ZERO).await.unwrap();
        assert!(recorder.kinds().is_empty());
        assert!(fake.lock().unwrap().removed.is_empty());
    }

    #[tokio::test]
    async fn fresh_tokens_are_spared_and_a_failing_livekit_changes_nothing() {
        let (service, recorder) = service();
        let here = channel();
        let user = ulid::Ulid::generate().to_string();
        service.join(seat(&here, &user)).await.unwrap();
        recorder.kinds();
        let fake = Shared::default();
        let rooms = fake_livekit(Arc::clone(&fake)).await;

        // Not in LiveKit yet, but the token is seconds old.
        check_once(&service, &rooms, GRACE).await.unwrap();
        assert!(recorder.kinds().is_empty());

        fake.lock().unwrap().failing = true;
        assert!(matches!(
            check_once(&service, &rooms, Duration::ZERO).await,
            Err(DriftError::Status(_))
        ));
        assert!(recorder.kinds().is_empty(), "no answer, no change");
    }

    #[tokio::test]
    async fn a_token_without_the_grant_is_refused_by_livekit() {
        let fake = Shared::default();
        let rooms = fake_livekit(fake).await;
        let wrong = LiveKit::new(
            "key",
            b"another-secret-of-at-least-32-bytes!".to_vec(),
            "ws://lk",
        )
        .unwrap();
        let forged = RoomService {
            livekit: wrong,
            ..rooms
        };
        assert!(matches!(
            forged.rooms().await,
            Err(DriftError::Status(StatusCode::UNAUTHORIZED))
        ));
    }
}
