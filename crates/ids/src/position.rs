//! Replay-log positions (docs/adr/0011-resume.md): where one event stands in
//! one log. The registry hands them out, the api stamps them on the event
//! (as the proto's `LogPosition`), the gateway writes them on the envelope
//! as `"<epoch>.<offset>"` tokens, and a resuming client quotes them back.

use std::fmt;

/// Longest scope a position may name: `g:` or `u:` and a ULID.
const MAX_SCOPE_BYTES: usize = 2 + 26;
/// Longest epoch: a log's epoch is 16 hex digits.
const MAX_EPOCH_BYTES: usize = 16;

/// One event's place in one log: the log's scope (`g:<guild>` or
/// `u:<user>`), its epoch, and the event's offset in that epoch.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LogPosition {
    pub scope: String,
    pub epoch: String,
    pub offset: u64,
}

impl LogPosition {
    /// Parses a client's `scope` and `"<epoch>.<offset>"` token, with the
    /// grammar of `filament_wire::POSITION_TOKEN_PATTERN`: a `g:` or `u:`
    /// scope naming a ULID, 1–16 lowercase hex digits, a dot, and a
    /// decimal `u64`. `None` for anything else.
    #[must_use]
    pub fn parse(scope: &str, token: &str) -> Option<Self> {
        let valid_scope = scope.len() <= MAX_SCOPE_BYTES
            && (scope.starts_with("g:") || scope.starts_with("u:"))
            && ulid::Ulid::from_string(&scope[2..]).is_ok();
        let (epoch, offset) = token.split_once('.')?;
        let valid_epoch = !epoch.is_empty()
            && epoch.len() <= MAX_EPOCH_BYTES
            && epoch
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        let valid_offset =
            (1..=20).contains(&offset.len()) && offset.bytes().all(|b| b.is_ascii_digit());
        if !valid_scope || !valid_epoch || !valid_offset {
            return None;
        }
        Some(Self {
            scope: scope.to_owned(),
            epoch: epoch.to_owned(),
            offset: offset.parse().ok()?,
        })
    }

    /// The token a client quotes for this position: `<epoch>.<offset>`.
    #[must_use]
    pub fn token(&self) -> impl fmt::Display + '_ {
        Token(self)
    }
}

struct Token<'a>(&'a LogPosition);

impl fmt::Display for Token<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.0.epoch, self.0.offset)
    }
}

/// The log of a guild's channel and guild events.
#[must_use]
pub fn guild_scope(guild_id: impl fmt::Display) -> String {
    format!("g:{guild_id}")
}

/// The log of the events sent to a user by name.
#[must_use]
pub fn user_scope(user_id: impl fmt::Display) -> String {
    format!("u:{user_id}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_parse_strictly_and_print_back() {
        let scope = user_scope(ulid::Ulid::nil());
        let parsed = LogPosition::parse(&scope, "0a1b.42").expect("valid");
        assert_eq!((parsed.epoch.as_str(), parsed.offset), ("0a1b", 42));
        assert_eq!(parsed.token().to_string(), "0a1b.42");
        for (scope, token) in [
            (scope.as_str(), "0a1b"),
            (scope.as_str(), "zz.1"),
            (scope.as_str(), ".1"),
            (scope.as_str(), "0a.-1"),
            (scope.as_str(), "0a.99999999999999999999999"),
            (scope.as_str(), "0A.1"),
            (scope.as_str(), "0a.+1"),
            (scope.as_str(), "00000000000000000.1"),
            ("x:01", "0a.1"),
            ("g:not-a-ulid", "0a.1"),
        ] {
            assert!(
                LogPosition::parse(scope, token).is_none(),
                "{scope} {token}"
            );
        }
    }
}
