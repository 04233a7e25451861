//! Typed ids. The gateway parses every id once, at its boundary (client
//! frames, service events), and indexes by these `Copy` values.

use std::fmt;
use std::str::FromStr;

use ulid::Ulid;

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub Ulid);

        impl FromStr for $name {
            type Err = ulid::DecodeError;

            /// Accepts only the canonical form: 26 uppercase Crockford
            /// base32 characters, as the server mints them.
            fn from_str(raw: &str) -> Result<Self, Self::Err> {
                let id = Ulid::from_string(raw)?;
                if id.to_string() != raw {
                    return Err(ulid::DecodeError::InvalidChar);
                }
                Ok(Self(id))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }
    };
}

id_type!(
    /// A user account.
    UserId
);
id_type!(
    /// A guild (workspace).
    GuildId
);
id_type!(
    /// A channel of a guild.
    ChannelId
);
id_type!(
    /// A login session: what an access token was issued for, and what a
    /// logout revokes.
    SessionId
);

/// One websocket connection, unique within this gateway process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnectionId(pub u64);

impl fmt::Display for ConnectionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "c{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_canonical_ulids_parse() {
        let id = Ulid::generate().to_string();
        assert!(id.parse::<GuildId>().is_ok());
        assert!(id.to_lowercase().parse::<GuildId>().is_err());
        assert!("not-a-ulid".parse::<GuildId>().is_err());
        assert!("".parse::<GuildId>().is_err());
    }
}
