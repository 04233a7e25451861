//! The api's domain: the use cases both adapters call (the REST routes in
//! `http` and the gRPC services in `grpc`), the permission model, and the
//! validated values they take. It imports neither adapter; a request DTO
//! converts into these values with `TryFrom` in its adapter, and past that
//! boundary a `Username` is always a valid username, and so on.

pub mod access;
pub mod attachments;
pub mod audit;
pub mod channels;
pub mod friends;
pub mod guilds;
pub mod idempotency;
pub mod members;
pub mod messages;
pub mod moderation;
pub mod overrides;
pub mod permissions;
pub mod profiles;
pub mod reactions;
pub mod roles;
pub mod search;
pub mod sessions;
pub mod voice;

use ulid::Ulid;

use crate::error::ApiError;

/// Parses a canonical ULID (26 uppercase Crockford base32 characters) into
/// the id it names: `parse_id::<ChannelId>(raw)`, or a plain [`Ulid`] for
/// an id of no entity (an event, a ban, a friend request).
pub fn parse_id<T: From<Ulid>>(raw: &str) -> Result<T, ApiError> {
    filament_ids::canonical_ulid(raw)
        .map(T::from)
        .map_err(|_| ApiError::InvalidRequest)
}

/// Whether every backend can store `raw` as text. U+0000 is the one code
/// point a Rust `String` holds that Postgres `text` cannot (SQLite stores
/// it), so a NUL that got past ingress would be a 500 on one backend and a
/// stored value on the other. Every text field's rule calls this, even
/// where its charset already excludes NUL, so that loosening a charset can
/// never let it in.
pub fn storable_text(raw: &str) -> bool {
    !raw.contains('\0')
}

/// 3–32 bytes of ASCII letters, digits, `_` and `.`. Two usernames that
/// differ only in case name one account (the store enforces it); the
/// account keeps the case it was given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Username(String);

impl Username {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The account this name refers to, as a key: ASCII-lowercased, which
    /// folds a username exactly since it is ASCII.
    pub fn folded(&self) -> String {
        self.0.to_ascii_lowercase()
    }
}

impl TryFrom<String> for Username {
    type Error = ApiError;

    fn try_from(raw: String) -> Result<Self, Self::Error> {
        let valid = (3..=32).contains(&raw.len())
            && storable_text(&raw)
            && raw
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.');
        if valid {
            Ok(Self(raw))
        } else {
            Err(ApiError::InvalidRequest)
        }
    }
}

/// 12–128 bytes, no NUL.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(String);

impl Password {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

impl TryFrom<String> for Password {
    type Error = ApiError;

    fn try_from(raw: String) -> Result<Self, Self::Error> {
        if (12..=128).contains(&raw.len()) && storable_text(&raw) {
            Ok(Self(raw))
        } else {
            Err(ApiError::InvalidRequest)
        }
    }
}

/// A guild or channel name: 1–64 bytes of printable ASCII or space, not
/// blank.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Name(String);

impl Name {
    pub fn into_string(self) -> String {
        self.0
    }
}

impl TryFrom<String> for Name {
    type Error = ApiError;

    fn try_from(raw: String) -> Result<Self, Self::Error> {
        let valid = (1..=64).contains(&raw.len())
            && storable_text(&raw)
            && raw.bytes().all(|b| b == b' ' || b.is_ascii_graphic())
            && !raw.trim().is_empty();
        if valid {
            Ok(Self(raw))
        } else {
            Err(ApiError::InvalidRequest)
        }
    }
}

/// Message content: 1–2000 bytes, no NUL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageContent(String);

impl MessageContent {
    pub const MAX_BYTES: usize = 2000;

    pub fn into_string(self) -> String {
        self.0
    }
}

impl TryFrom<String> for MessageContent {
    type Error = ApiError;

    fn try_from(raw: String) -> Result<Self, Self::Error> {
        if (1..=Self::MAX_BYTES).contains(&raw.len()) && storable_text(&raw) {
            Ok(Self(raw))
        } else {
            Err(ApiError::InvalidRequest)
        }
    }
}

/// A page size within `1..=max`, `default` when absent.
pub fn page_limit(requested: Option<u32>, default: u32, max: u32) -> Result<u32, ApiError> {
    match requested {
        None => Ok(default),
        Some(limit) if (1..=max).contains(&limit) => Ok(limit),
        Some(_) => Err(ApiError::InvalidRequest),
    }
}

/// Strategies for the text rules' property tests, here and in the modules
/// that own a rule of their own.
#[cfg(test)]
pub(crate) mod hostile {
    use proptest::prelude::*;

    /// Up to 80 characters mixing NUL, other C0 and C1 controls, line and
    /// paragraph separators, path separators, spaces, ASCII and multi-byte
    /// characters: everything a text rule has to decide about.
    pub fn text() -> impl Strategy<Value = String> {
        let char = prop_oneof![
            1 => Just('\0'),
            2 => proptest::char::range('\u{1}', '\u{1f}'),
            1 => proptest::char::range('\u{7f}', '\u{9f}'),
            1 => prop::sample::select(vec![' ', '/', '\\', '\u{2028}', '\u{feff}']),
            6 => proptest::char::range('!', '~'),
            2 => prop::sample::select(vec!['é', 'ß', '中', '👍']),
        ];
        prop::collection::vec(char, 0..80).prop_map(|chars| chars.into_iter().collect())
    }

    /// 12–24 letters and digits with one NUL among them: text every rule
    /// would take but for the NUL, so a rule refusing it refuses the NUL.
    pub fn plain_with_nul() -> impl Strategy<Value = String> {
        ("[a-z0-9]{6,12}", "[a-z0-9]{6,12}")
            .prop_map(|(before, after)| format!("{before}\0{after}"))
    }

    /// Hostile text with at least one NUL in it, anywhere.
    pub fn with_nul() -> impl Strategy<Value = String> {
        (text(), text()).prop_map(|(before, after)| format!("{before}\0{after}"))
    }
}

#[cfg(test)]
mod tests {
    use filament_ids::ChannelId;

    use super::*;

    #[test]
    fn usernames() {
        assert!(Username::try_from("ab".to_owned()).is_err());
        assert!(Username::try_from("a".repeat(33)).is_err());
        assert!(Username::try_from("bad name".to_owned()).is_err());
        assert!(Username::try_from("good.name_1".to_owned()).is_ok());
    }

    #[test]
    fn names_and_content() {
        assert!(Name::try_from(" ".to_owned()).is_err());
        assert!(Name::try_from("tab\there".to_owned()).is_err());
        assert!(Name::try_from("é".to_owned()).is_err());
        assert!(Name::try_from("General Chat".to_owned()).is_ok());
        assert!(MessageContent::try_from(String::new()).is_err());
        assert!(MessageContent::try_from("x".repeat(2000)).is_ok());
        assert!(MessageContent::try_from("x".repeat(2001)).is_err());
        // Bytes, not characters.
        assert!(MessageContent::try_from("é".repeat(1001)).is_err());
    }

    #[test]
    fn nul_is_refused_where_the_charset_would_allow_it() {
        assert!(!storable_text("a\0b"));
        assert!(storable_text("tab\there, é and \u{7f}"));
        assert!(Password::try_from("long enough pass\0".to_owned()).is_err());
        assert!(MessageContent::try_from("a\0b".to_owned()).is_err());
    }

    proptest::proptest! {
        #[test]
        fn text_rules_never_panic_and_never_pass_a_nul(raw in hostile::text()) {
            let accepted = [
                Username::try_from(raw.clone()).is_ok(),
                Password::try_from(raw.clone()).is_ok(),
                Name::try_from(raw.clone()).is_ok(),
                MessageContent::try_from(raw.clone()).is_ok(),
            ];
            if accepted.contains(&true) {
                proptest::prop_assert!(storable_text(&raw), "{raw:?} accepted");
            }
        }

        #[test]
        fn a_nul_anywhere_is_refused(
            anywhere in hostile::with_nul(),
            plain in hostile::plain_with_nul(),
        ) {
            for raw in [anywhere, plain] {
                proptest::prop_assert!(!storable_text(&raw));
                proptest::prop_assert!(Username::try_from(raw.clone()).is_err());
                proptest::prop_assert!(Password::try_from(raw.clone()).is_err());
                proptest::prop_assert!(Name::try_from(raw.clone()).is_err());
                proptest::prop_assert!(MessageContent::try_from(raw).is_err());
            }
        }
    }

    #[test]
    fn ids_must_be_canonical() {
        let id = Ulid::generate().to_string();
        assert!(parse_id::<Ulid>(&id).is_ok());
        assert!(parse_id::<ChannelId>(&id).is_ok());
        assert!(parse_id::<Ulid>(&id.to_lowercase()).is_err());
        assert!(parse_id::<ChannelId>(&id.to_lowercase()).is_err());
    }
}
