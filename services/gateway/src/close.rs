//! Why the gateway closes a socket: one enum, with the websocket close code
//! and reason that clients see. docs/ARCHITECTURE.md ("Close codes")
//! lists the same table; a test keeps the two equal.

/// A reason to close a socket, as a close code and a short reason string.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CloseReason {
    /// The server is shutting down; reconnect elsewhere.
    ServerShutdown,
    /// The client did not read its frames fast enough.
    SlowConsumer,
    /// An inbound frame exceeded the size cap.
    FrameTooLarge,
    /// A binary frame; the protocol is JSON text.
    BinaryFrame,
    /// A text frame that is not valid UTF-8.
    InvalidUtf8,
    /// A frame that breaks the websocket protocol (reserved bits, a stray
    /// continuation, a fragmented control frame).
    ProtocolError,
    /// Not a `{v,t,d}` envelope: bad JSON, a bad `t`, or extra keys.
    InvalidEnvelope,
    /// A `v` other than 1.
    UnsupportedVersion,
    /// A `t` the gateway does not accept from clients.
    UnknownEvent,
    /// A known `t` with a `d` that does not decode.
    InvalidPayload,
    /// Too many frames in the ingress window.
    RateLimited,
    /// The access token expired; reconnect with a fresh one.
    TokenExpired,
    /// Nothing received for longer than the idle timeout.
    IdleTimeout,
    /// The gateway may have missed events for this socket; reconnect to
    /// resynchronise.
    Resync,
    /// The session behind this socket ended: its user logged out, or a
    /// replayed refresh token revoked it.
    AccessRevoked,
    /// The guild bans the socket's client address (PROTOCOL.md §5.8).
    IpBanned,
    /// The api refused a `message_create` sent over the socket (PROTOCOL.md §5.3).
    MessageRejected,
    /// An upstream service could not answer.
    UpstreamUnavailable,
}

impl CloseReason {
    pub const ALL: [Self; 18] = [
        Self::ServerShutdown,
        Self::SlowConsumer,
        Self::FrameTooLarge,
        Self::BinaryFrame,
        Self::InvalidUtf8,
        Self::ProtocolError,
        Self::InvalidEnvelope,
        Self::UnsupportedVersion,
        Self::UnknownEvent,
        Self::InvalidPayload,
        Self::RateLimited,
        Self::TokenExpired,
        Self::IdleTimeout,
        Self::Resync,
        Self::AccessRevoked,
        Self::IpBanned,
        Self::MessageRejected,
        Self::UpstreamUnavailable,
    ];

    pub fn code(self) -> u16 {
        match self {
            Self::ServerShutdown => 1001,
            Self::ProtocolError => 1002,
            Self::BinaryFrame => 1003,
            Self::InvalidUtf8 => 1007,
            Self::SlowConsumer => 1008,
            Self::FrameTooLarge => 1009,
            Self::UpstreamUnavailable => 1011,
            Self::InvalidEnvelope => 4001,
            Self::UnknownEvent => 4002,
            Self::InvalidPayload => 4003,
            Self::UnsupportedVersion => 4004,
            Self::RateLimited => 4008,
            Self::IdleTimeout => 4009,
            Self::TokenExpired => 4010,
            Self::Resync => 4011,
            Self::AccessRevoked => 4012,
            Self::IpBanned => 4013,
            Self::MessageRejected => 4014,
        }
    }

    /// The close reason string; also the metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ServerShutdown => "server_shutdown",
            Self::SlowConsumer => "slow_consumer",
            Self::FrameTooLarge => "frame_too_large",
            Self::BinaryFrame => "binary_frame",
            Self::InvalidUtf8 => "invalid_utf8",
            Self::ProtocolError => "protocol_error",
            Self::InvalidEnvelope => "invalid_envelope",
            Self::UnsupportedVersion => "unsupported_version",
            Self::UnknownEvent => "unknown_event",
            Self::InvalidPayload => "invalid_payload",
            Self::RateLimited => "rate_limited",
            Self::TokenExpired => "token_expired",
            Self::IdleTimeout => "idle_timeout",
            Self::Resync => "resync",
            Self::AccessRevoked => "access_revoked",
            Self::IpBanned => "ip_banned",
            Self::MessageRejected => "message_rejected",
            Self::UpstreamUnavailable => "upstream_unavailable",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_reasons_are_unique() {
        let mut codes: Vec<_> = CloseReason::ALL.iter().map(|r| r.code()).collect();
        let mut names: Vec<_> = CloseReason::ALL.iter().map(|r| r.as_str()).collect();
        codes.sort_unstable();
        codes.dedup();
        names.sort_unstable();
        names.dedup();
        assert_eq!(codes.len(), CloseReason::ALL.len());
        assert_eq!(names.len(), CloseReason::ALL.len());
    }

    #[test]
    fn the_architecture_doc_lists_every_close_code() {
        let doc = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../docs/ARCHITECTURE.md"
        ))
        .expect("docs/ARCHITECTURE.md is readable");
        let section = doc
            .split("\n## ")
            .find(|s| s.starts_with("Close codes"))
            .expect("a Close codes section");
        let rows = section
            .lines()
            .filter(|line| {
                line.starts_with("| ") && line.as_bytes().get(2).is_some_and(u8::is_ascii_digit)
            })
            .count();
        for reason in CloseReason::ALL {
            let row = format!("| {} | `{}` |", reason.code(), reason.as_str());
            assert!(section.contains(&row), "docs/ARCHITECTURE.md lacks {row}");
        }
        assert_eq!(
            rows,
            CloseReason::ALL.len(),
            "no close code the gateway lacks"
        );
    }
}
