//! The JSON shapes of Filament's gateway protocol, in one place.
//!
//! Clients see `{"v":1,"t":"<type>","d":{…}}` frames (PROTOCOL.md §5.2) and
//! validate every field strictly. Services describe events as typed protobuf
//! messages (`filament_proto::v1`); this crate is the only code that turns
//! them into the JSON clients see, so each shape exists exactly once:
//!
//! - the shared shapes of PROTOCOL.md §1.9 ([`Message`], [`Channel`], [`Role`],
//!   …), which the api also returns from REST routes;
//! - [`payloads`]: one `d` struct per gateway event (PROTOCOL.md §5.4);
//! - [`encode_event`]: a proto `Event` to one shared, size-checked [`Frame`].
//!
//! Conversions fail closed: an unknown or unspecified enum value, or a
//! missing sub-message, is an error and never a default, because a
//! well-formed but wrong payload is worse than a dropped one.
//!
//! `docs/events.json` and `docs/GATEWAY_EVENTS.md` are generated from the proto
//! event catalogue by `tests/manifest.rs`; the JSON Schema of every payload
//! in events.json comes from these types ([`schema`]), which also derive
//! `utoipa::ToSchema` for the api's OpenAPI document.

mod convert;
mod enums;
mod frame;
mod markdown;
pub mod payloads;
mod positions;
pub mod schema;
mod shapes;

pub use convert::ConvertError;
pub use enums::{
    ChannelKind, FriendRequestState, IpBanAction, LegacyRole, MemberRemoveReason,
    OverrideTargetKind, Permission, PresenceStatus, ReactionOperation, Visibility, VoiceStream,
};
pub use frame::{EncodeError, Frame, SerializeError, encode_event, encode_frames, event_type};
pub use markdown::MarkdownToken;
pub use payloads::WireEvent;
pub use positions::{POSITIONS_HEADROOM_BYTES, with_positions};
pub use shapes::{Attachment, Channel, Guild, Message, Profile, Reaction, Role, VoiceParticipant};

/// The envelope's `v`.
pub const PROTOCOL_VERSION: u8 = 1;

/// The frame size limit of PROTOCOL.md §4.7 (64 KiB), in both directions. The
/// web client ignores larger frames, so the gateway never sends one.
pub const MAX_FRAME_BYTES: usize = 64 * 1024;
