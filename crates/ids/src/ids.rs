//! The id types. Every one wraps a ULID and reads and writes it only in its
//! canonical form: 26 uppercase Crockford base32 characters, as the server
//! mints them.

use std::fmt;
use std::str::FromStr;

use ulid::Ulid;

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub Ulid);

        impl $name {
            /// A new id, ordered after the ids minted before it.
            #[must_use]
            pub fn generate() -> Self {
                Self(Ulid::generate())
            }

            /// The ULID this id wraps.
            #[must_use]
            pub const fn ulid(self) -> Ulid {
                self.0
            }
        }

        impl From<Ulid> for $name {
            fn from(id: Ulid) -> Self {
                Self(id)
            }
        }

        impl From<$name> for Ulid {
            fn from(id: $name) -> Self {
                id.0
            }
        }

        impl FromStr for $name {
            type Err = ulid::DecodeError;

            /// Accepts only the canonical form, so that one id has one
            /// spelling on the wire and in storage.
            fn from_str(raw: &str) -> Result<Self, Self::Err> {
                canonical_ulid(raw).map(Self)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }
    };
}

/// Parses `raw` as a ULID in its canonical spelling only: what every id
/// type here accepts, and what an id of another kind minted as a ULID (a
/// gateway's, say) should accept too.
pub fn canonical_ulid(raw: &str) -> Result<Ulid, ulid::DecodeError> {
    let id = Ulid::from_string(raw)?;
    if id.to_string() == raw {
        Ok(id)
    } else {
        Err(ulid::DecodeError::InvalidChar)
    }
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
    /// A message in a channel.
    MessageId
);
id_type!(
    /// A role of a guild.
    RoleId
);
id_type!(
    /// An uploaded file, before and after a message uses it.
    AttachmentId
);
id_type!(
    /// A login session: what an access token was issued for, and what a
    /// logout revokes.
    SessionId
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_canonical_ulids_parse() {
        let id = Ulid::generate().to_string();
        assert_eq!(id.parse::<GuildId>().map(|g| g.to_string()), Ok(id.clone()));
        assert!(id.to_lowercase().parse::<GuildId>().is_err());
        assert!(format!(" {id}").parse::<GuildId>().is_err());
        assert!("not-a-ulid".parse::<GuildId>().is_err());
        assert!("".parse::<GuildId>().is_err());
    }

    #[test]
    fn an_id_converts_to_and_from_its_ulid() {
        let raw = Ulid::generate();
        let user = UserId::from(raw);
        assert_eq!(Ulid::from(user), raw);
        assert_eq!(user.ulid(), raw);
    }
}
