//! The outbound entry point: a proto [`Event`] becomes one serialized
//! `{"v":1,"t":"…","d":{…}}` frame.
//!
//! The gateway encodes each event once and shares the resulting [`Bytes`]
//! across every socket in the audience, so all the checks happen here, once:
//! conversion (fail closed), serialization, and the frame size cap that the
//! client enforces too (a frame it would ignore is never sent).

use bytes::Bytes;
use filament_proto::v1::event::Payload;
use filament_proto::v1::{
    Event, PresenceStatus, PresenceSync, PresenceUpdate, VoiceParticipantJoin, VoiceParticipantSync,
};
use serde::Serialize;

use crate::PROTOCOL_VERSION;
use crate::convert::ConvertError;
use crate::payloads::{self, PayloadVisitor, WireEvent};

/// One serialized outbound frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The frame's `t`, for metrics and logs.
    pub event_type: &'static str,
    /// The complete JSON text of the frame; cheap to clone and share.
    pub bytes: Bytes,
}

/// Why an event produced no frame.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    /// The frame is larger than the limit; the client would ignore it.
    #[error("{event_type} frame is {size} bytes, over the {max}-byte limit")]
    Oversized {
        event_type: &'static str,
        size: usize,
        max: usize,
    },
    /// The payload has no valid wire shape, or did not serialize.
    #[error("{event_type} payload cannot be encoded: {source}")]
    Serialize {
        event_type: &'static str,
        source: SerializeError,
    },
    /// A gateway-internal control payload (`access_changed`,
    /// `session_revoked`).
    #[error("control payload is not for clients")]
    NotForClients,
    /// The event carries no payload at all.
    #[error("event has no payload")]
    MissingPayload,
}

/// The cause of [`EncodeError::Serialize`].
#[derive(Debug, thiserror::Error)]
pub enum SerializeError {
    /// A bad enum value or a missing sub-message in the proto payload.
    #[error(transparent)]
    Convert(#[from] ConvertError),
    /// `serde_json` refused the value.
    #[error(transparent)]
    Json(#[from] serde_json::Error),
}

/// Encodes `event` as one frame of at most `max_frame_bytes` bytes.
///
/// # Errors
/// [`EncodeError`]: no payload, a control payload, a payload that does not
/// convert, or a frame over `max_frame_bytes`.
pub fn encode_event(event: &Event, max_frame_bytes: usize) -> Result<Frame, EncodeError> {
    let payload = event.payload.as_ref().ok_or(EncodeError::MissingPayload)?;
    payloads::visit(payload, Encoder { max_frame_bytes }).ok_or(EncodeError::NotForClients)?
}

/// Encodes `event` as the frames a socket must receive, in order.
///
/// Every event is one frame, except a snapshot whose list does not fit in
/// one: a `presence_sync` or `voice_participant_sync` then carries the
/// longest prefix of its list that fits, and each remaining entry follows
/// as the event that adds one entry (`presence_update` online,
/// `voice_participant_join`), which clients apply as an upsert. So a full
/// voice channel (512 participants, some 300 bytes each) or a crowded guild
/// still reaches a subscriber whole, within the frame cap.
///
/// # Errors
/// As [`encode_event`], for the event or any of its frames.
pub fn encode_frames(event: &Event, max_frame_bytes: usize) -> Result<Vec<Frame>, EncodeError> {
    let result = encode_event(event, max_frame_bytes);
    if !matches!(result, Err(EncodeError::Oversized { .. })) {
        return result.map(|frame| vec![frame]);
    }
    // Not `..event.clone()` below: that would copy the whole list each time.
    let with_payload = |payload: Payload| Event {
        audience: event.audience.clone(),
        published_at_unix_ms: event.published_at_unix_ms,
        event_id: event.event_id.clone(),
        positions: Vec::new(),
        payload: Some(payload),
    };
    match &event.payload {
        Some(Payload::PresenceSync(sync)) => split(
            &sync.user_ids,
            max_frame_bytes,
            |prefix| {
                with_payload(Payload::PresenceSync(PresenceSync {
                    guild_id: sync.guild_id.clone(),
                    user_ids: prefix.to_vec(),
                }))
            },
            |user_id| {
                with_payload(Payload::PresenceUpdate(PresenceUpdate {
                    guild_id: sync.guild_id.clone(),
                    user_id: user_id.clone(),
                    status: PresenceStatus::Online.into(),
                }))
            },
        ),
        Some(Payload::VoiceParticipantSync(sync)) => split(
            &sync.participants,
            max_frame_bytes,
            |prefix| {
                with_payload(Payload::VoiceParticipantSync(VoiceParticipantSync {
                    guild_id: sync.guild_id.clone(),
                    channel_id: sync.channel_id.clone(),
                    participants: prefix.to_vec(),
                    synced_at_unix: sync.synced_at_unix,
                }))
            },
            |participant| {
                with_payload(Payload::VoiceParticipantJoin(VoiceParticipantJoin {
                    guild_id: sync.guild_id.clone(),
                    channel_id: sync.channel_id.clone(),
                    participant: Some(participant.clone()),
                }))
            },
        ),
        _ => result.map(|frame| vec![frame]),
    }
}

/// The snapshot of the longest prefix of `entries` that fits, then one
/// event per remaining entry. A binary search over the prefix length keeps
/// it to a handful of encodes.
fn split<T>(
    entries: &[T],
    max_frame_bytes: usize,
    snapshot_of: impl Fn(&[T]) -> Event,
    one: impl Fn(&T) -> Event,
) -> Result<Vec<Frame>, EncodeError> {
    // Invariant: a prefix of `fits` entries encodes (as `first`), one of
    // `too_many` does not.
    let (mut fits, mut too_many) = (0, entries.len());
    let mut first = encode_event(&snapshot_of(&[]), max_frame_bytes)?;
    while too_many - fits > 1 {
        let middle = fits + (too_many - fits) / 2;
        match encode_event(&snapshot_of(&entries[..middle]), max_frame_bytes) {
            Ok(frame) => {
                fits = middle;
                first = frame;
            }
            Err(EncodeError::Oversized { .. }) => too_many = middle,
            Err(err) => return Err(err),
        }
    }
    let mut frames = Vec::with_capacity(1 + entries.len() - fits);
    frames.push(first);
    for entry in &entries[fits..] {
        frames.push(encode_event(&one(entry), max_frame_bytes)?);
    }
    Ok(frames)
}

/// The wire type `t` of a payload; `None` for control payloads.
#[must_use]
pub fn event_type(payload: &Payload) -> Option<&'static str> {
    payloads::visit(payload, EventTypeOf)
}

/// The envelope, serialized in the order `v`, `t`, `d`.
#[derive(Serialize)]
struct Envelope<'a, D> {
    v: u8,
    t: &'static str,
    d: &'a D,
}

struct EventTypeOf;

impl PayloadVisitor for EventTypeOf {
    type Output = &'static str;

    fn visit<E: WireEvent>(self, _proto: &E::Proto) -> &'static str {
        E::EVENT_TYPE
    }
}

struct Encoder {
    max_frame_bytes: usize,
}

impl PayloadVisitor for Encoder {
    type Output = Result<Frame, EncodeError>;

    fn visit<E: WireEvent>(self, proto: &E::Proto) -> Self::Output {
        let event_type = E::EVENT_TYPE;
        let serialize_error =
            |source: SerializeError| EncodeError::Serialize { event_type, source };
        let d = E::from_proto(proto).map_err(|err| serialize_error(err.into()))?;
        let envelope = Envelope {
            v: PROTOCOL_VERSION,
            t: event_type,
            d: &d,
        };
        let bytes = serde_json::to_vec(&envelope).map_err(|err| serialize_error(err.into()))?;
        if bytes.len() > self.max_frame_bytes {
            return Err(EncodeError::Oversized {
                event_type,
                size: bytes.len(),
                max: self.max_frame_bytes,
            });
        }
        Ok(Frame {
            event_type,
            bytes: Bytes::from(bytes),
        })
    }
}
