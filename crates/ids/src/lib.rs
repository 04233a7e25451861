//! Typed ids and replay-log positions: the names every Filament service
//! gives to the things it passes around.
//!
//! An id is parsed once, where it enters a process (a request path, a
//! client frame, a gRPC field, a stored row), and is then a `Copy` value
//! whose type says what it names, so that a channel id can never be passed
//! where a guild id is expected.

mod ids;
mod position;

pub use ids::{
    AttachmentId, ChannelId, GuildId, MessageId, RoleId, SessionId, UserId, canonical_ulid,
};
pub use position::{LogPosition, guild_scope, user_scope};
pub use ulid::Ulid;
