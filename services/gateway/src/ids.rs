//! Typed ids. The gateway parses every id once, at its boundary (client
//! frames, service events), and indexes by these `Copy` values: the shared
//! ones of `filament-ids`, and its own connection ids.

use std::fmt;

pub use filament_ids::{ChannelId, GuildId, SessionId, UserId};

/// One websocket connection, unique within this gateway process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnectionId(pub u64);

impl fmt::Display for ConnectionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "c{}", self.0)
    }
}
