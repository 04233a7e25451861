//! Validated values. Request DTOs convert into these with `TryFrom`; past
//! that boundary a `Username` is always a valid username, and so on.

use ulid::Ulid;

use crate::error::ApiError;

/// Parses a canonical ULID (26 uppercase Crockford base32 characters).
pub fn parse_id(raw: &str) -> Result<Ulid, ApiError> {
    let id = Ulid::from_string(raw).map_err(|_| ApiError::InvalidRequest)?;
    if id.to_string() == raw {
        Ok(id)
    } else {
        Err(ApiError::InvalidRequest)
    }
}

/// 3–32 bytes of ASCII letters, digits, `_` and `.`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Username(String);

impl Username {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Username {
    type Error = ApiError;

    fn try_from(raw: String) -> Result<Self, Self::Error> {
        let valid = (3..=32).contains(&raw.len())
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

/// 12–128 bytes.
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
        if (12..=128).contains(&raw.len()) {
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
            && raw.bytes().all(|b| b == b' ' || b.is_ascii_graphic())
            && !raw.trim().is_empty();
        if valid {
            Ok(Self(raw))
        } else {
            Err(ApiError::InvalidRequest)
        }
    }
}

/// Message content: 1–2000 bytes.
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
        if (1..=Self::MAX_BYTES).contains(&raw.len()) {
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

#[cfg(test)]
mod tests {
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
    fn ids_must_be_canonical() {
        let id = Ulid::generate().to_string();
        assert!(parse_id(&id).is_ok());
        assert!(parse_id(&id.to_lowercase()).is_err());
    }
}
