//! How a proto payload becomes a wire shape without guessing.
//!
//! Proto3 decodes an unknown enum number as a plain `i32` and a missing
//! sub-message as `None`. Prost's getters would quietly turn both into
//! defaults (`UNSPECIFIED`, an empty message), and the client would then
//! receive a well-formed but wrong payload. Every conversion goes through the
//! helpers here instead, so such a payload is an error and is never sent.

use crate::enums::ProtoEnum;

/// Why a proto payload has no wire shape. `field` names the proto field as
/// `Message.field`, for the log line of the dropped event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConvertError {
    /// An enum value that is unspecified or unknown to this build.
    #[error("{field}: unknown or unspecified enum value {value}")]
    UnknownEnum { field: &'static str, value: i32 },
    /// A sub-message the wire shape requires is absent.
    #[error("{field}: required field is missing")]
    MissingField { field: &'static str },
    /// A number outside the range the protocol allows.
    #[error("{field}: value {value} is out of range")]
    OutOfRange { field: &'static str, value: i64 },
    /// A string that is not one of the values the protocol allows.
    #[error("{field}: value is not allowed by the contract")]
    InvalidValue { field: &'static str },
}

/// A required sub-message, or an error naming it.
pub(crate) fn required<'a, T>(
    field: &'static str,
    value: Option<&'a T>,
) -> Result<&'a T, ConvertError> {
    value.ok_or(ConvertError::MissingField { field })
}

/// A raw enum number as the wire enum `W`; unspecified and unknown numbers
/// are errors.
pub(crate) fn enum_value<W: ProtoEnum>(field: &'static str, raw: i32) -> Result<W, ConvertError> {
    W::Proto::try_from(raw)
        .ok()
        .and_then(W::from_proto)
        .ok_or(ConvertError::UnknownEnum { field, value: raw })
}

/// A repeated enum field, converted element by element; one bad value fails
/// the whole list rather than being skipped, so a permission list is never
/// silently shortened.
pub(crate) fn enum_list<W: ProtoEnum>(
    field: &'static str,
    raw: &[i32],
) -> Result<Vec<W>, ConvertError> {
    raw.iter().map(|&value| enum_value(field, value)).collect()
}

/// A repeated sub-message, converted element by element.
pub(crate) fn convert_all<'a, P, W>(items: &'a [P]) -> Result<Vec<W>, ConvertError>
where
    W: TryFrom<&'a P, Error = ConvertError>,
{
    items.iter().map(W::try_from).collect()
}
