//! The enum values of PROTOCOL.md, as the `snake_case` strings clients see.
//!
//! Each wire enum maps from its proto enum through [`ProtoEnum`], whose
//! `UNSPECIFIED` value maps to nothing: a producer that forgot to set a
//! field must not reach a client as some default. A test checks every
//! mapping against the proto value names (`PRESENCE_STATUS_ONLINE` is
//! `"online"`), so the two cannot drift apart.

use filament_proto::v1 as proto;
use schemars::JsonSchema;
use serde::Serialize;
use utoipa::ToSchema;

/// A wire enum with a proto counterpart.
pub(crate) trait ProtoEnum: Sized {
    type Proto: TryFrom<i32>;

    /// `None` for the `UNSPECIFIED` value.
    fn from_proto(proto: Self::Proto) -> Option<Self>;
}

/// A channel's kind (PROTOCOL.md §1.9).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, JsonSchema, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ChannelKind {
    Text,
    Voice,
}

impl ProtoEnum for ChannelKind {
    type Proto = proto::ChannelKind;

    fn from_proto(proto: Self::Proto) -> Option<Self> {
        match proto {
            proto::ChannelKind::Unspecified => None,
            proto::ChannelKind::Text => Some(Self::Text),
            proto::ChannelKind::Voice => Some(Self::Voice),
        }
    }
}

/// Whether a guild is listed in the public directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, JsonSchema, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Visibility {
    Private,
    Public,
}

impl ProtoEnum for Visibility {
    type Proto = proto::Visibility;

    fn from_proto(proto: Self::Proto) -> Option<Self> {
        match proto {
            proto::Visibility::Unspecified => None,
            proto::Visibility::Private => Some(Self::Private),
            proto::Visibility::Public => Some(Self::Public),
        }
    }
}

/// The legacy membership role (PROTOCOL.md §3.3), ranked owner > moderator >
/// member.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, JsonSchema, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum LegacyRole {
    Owner,
    Moderator,
    Member,
}

impl ProtoEnum for LegacyRole {
    type Proto = proto::LegacyRole;

    fn from_proto(proto: Self::Proto) -> Option<Self> {
        match proto {
            proto::LegacyRole::Unspecified => None,
            proto::LegacyRole::Owner => Some(Self::Owner),
            proto::LegacyRole::Moderator => Some(Self::Moderator),
            proto::LegacyRole::Member => Some(Self::Member),
        }
    }
}

/// A permission, by name. Declared in bit order (PROTOCOL.md §3.1), so
/// [`Permission::ALL`] and a derived ordering both follow the bits.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, JsonSchema, ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Permission {
    ManageRoles,
    ManageMemberRoles,
    ManageWorkspaceRoles,
    ManageChannelOverrides,
    DeleteMessage,
    BanMember,
    ViewAuditLog,
    ManageIpBans,
    CreateMessage,
    PublishVideo,
    PublishScreenShare,
    SubscribeStreams,
}

impl Permission {
    /// Every permission, in bit order.
    pub const ALL: [Self; 12] = [
        Self::ManageRoles,
        Self::ManageMemberRoles,
        Self::ManageWorkspaceRoles,
        Self::ManageChannelOverrides,
        Self::DeleteMessage,
        Self::BanMember,
        Self::ViewAuditLog,
        Self::ManageIpBans,
        Self::CreateMessage,
        Self::PublishVideo,
        Self::PublishScreenShare,
        Self::SubscribeStreams,
    ];

    /// The permission's bit in the internal u64 mask.
    #[must_use]
    pub const fn mask(self) -> u64 {
        1 << self as u32
    }

    /// The proto enum value: the bit index plus one.
    #[must_use]
    pub const fn proto(self) -> i32 {
        self as i32 + 1
    }

    /// Parses a wire name such as `"create_message"`. The names are the
    /// proto catalogue's (`PERMISSION_CREATE_MESSAGE`), which serialization
    /// also follows, so they are spelled in one place.
    #[must_use]
    pub fn from_name(name: &str) -> Option<Self> {
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') {
            return None;
        }
        let proto =
            proto::Permission::from_str_name(&format!("PERMISSION_{}", name.to_ascii_uppercase()))?;
        Self::from_proto(proto)
    }
}

impl ProtoEnum for Permission {
    type Proto = proto::Permission;

    fn from_proto(proto: Self::Proto) -> Option<Self> {
        use proto::Permission as P;
        match proto {
            P::Unspecified => None,
            P::ManageRoles => Some(Self::ManageRoles),
            P::ManageMemberRoles => Some(Self::ManageMemberRoles),
            P::ManageWorkspaceRoles => Some(Self::ManageWorkspaceRoles),
            P::ManageChannelOverrides => Some(Self::ManageChannelOverrides),
            P::DeleteMessage => Some(Self::DeleteMessage),
            P::BanMember => Some(Self::BanMember),
            P::ViewAuditLog => Some(Self::ViewAuditLog),
            P::ManageIpBans => Some(Self::ManageIpBans),
            P::CreateMessage => Some(Self::CreateMessage),
            P::PublishVideo => Some(Self::PublishVideo),
            P::PublishScreenShare => Some(Self::PublishScreenShare),
            P::SubscribeStreams => Some(Self::SubscribeStreams),
        }
    }
}

/// A user's presence in a guild.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, JsonSchema, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PresenceStatus {
    Online,
    Offline,
}

impl ProtoEnum for PresenceStatus {
    type Proto = proto::PresenceStatus;

    fn from_proto(proto: Self::Proto) -> Option<Self> {
        match proto {
            proto::PresenceStatus::Unspecified => None,
            proto::PresenceStatus::Online => Some(Self::Online),
            proto::PresenceStatus::Offline => Some(Self::Offline),
        }
    }
}

/// Whether a reaction was added or removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, JsonSchema, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReactionOperation {
    Add,
    Remove,
}

impl ProtoEnum for ReactionOperation {
    type Proto = proto::ReactionOperation;

    fn from_proto(proto: Self::Proto) -> Option<Self> {
        match proto {
            proto::ReactionOperation::Unspecified => None,
            proto::ReactionOperation::Add => Some(Self::Add),
            proto::ReactionOperation::Remove => Some(Self::Remove),
        }
    }
}

/// Why a member left a guild.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, JsonSchema, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum MemberRemoveReason {
    Kick,
    Ban,
    Leave,
}

impl ProtoEnum for MemberRemoveReason {
    type Proto = proto::MemberRemoveReason;

    fn from_proto(proto: Self::Proto) -> Option<Self> {
        match proto {
            proto::MemberRemoveReason::Unspecified => None,
            proto::MemberRemoveReason::Kick => Some(Self::Kick),
            proto::MemberRemoveReason::Ban => Some(Self::Ban),
            proto::MemberRemoveReason::Leave => Some(Self::Leave),
        }
    }
}

/// What a channel permission override targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, JsonSchema, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OverrideTargetKind {
    Role,
    Member,
}

impl ProtoEnum for OverrideTargetKind {
    type Proto = proto::OverrideTargetKind;

    fn from_proto(proto: Self::Proto) -> Option<Self> {
        match proto {
            proto::OverrideTargetKind::Unspecified => None,
            proto::OverrideTargetKind::Role => Some(Self::Role),
            proto::OverrideTargetKind::Member => Some(Self::Member),
        }
    }
}

/// Whether IP bans were added or removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, JsonSchema, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum IpBanAction {
    Upsert,
    Remove,
}

impl ProtoEnum for IpBanAction {
    type Proto = proto::IpBanAction;

    fn from_proto(proto: Self::Proto) -> Option<Self> {
        match proto {
            proto::IpBanAction::Unspecified => None,
            proto::IpBanAction::Upsert => Some(Self::Upsert),
            proto::IpBanAction::Remove => Some(Self::Remove),
        }
    }
}

/// A media source a voice participant publishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, JsonSchema, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum VoiceStream {
    Microphone,
    Camera,
    ScreenShare,
}

impl ProtoEnum for VoiceStream {
    type Proto = proto::VoiceStream;

    fn from_proto(proto: Self::Proto) -> Option<Self> {
        match proto {
            proto::VoiceStream::Unspecified => None,
            proto::VoiceStream::Microphone => Some(Self::Microphone),
            proto::VoiceStream::Camera => Some(Self::Camera),
            proto::VoiceStream::ScreenShare => Some(Self::ScreenShare),
        }
    }
}

/// The state in `friend_request_update`. The proto carries a string, so the
/// one value the protocol allows is checked here rather than passed through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, JsonSchema, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FriendRequestState {
    Accepted,
}

impl FriendRequestState {
    /// Parses the proto string; anything but `"accepted"` is `None`.
    #[must_use]
    pub fn parse(value: &str) -> Option<Self> {
        (value == "accepted").then_some(Self::Accepted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Checks every value of one proto enum: `UNSPECIFIED` maps to nothing,
    /// every other value to the lowercase rest of its proto name.
    fn check<W>(prefix: &str, name_of: fn(W::Proto) -> &'static str)
    where
        W: ProtoEnum + Serialize,
        W::Proto: Copy,
    {
        let mut seen = 0;
        for raw in 0..64 {
            let Ok(proto) = W::Proto::try_from(raw) else {
                continue;
            };
            seen += 1;
            let name = name_of(proto);
            let rest = name
                .strip_prefix(prefix)
                .expect("proto value names share the prefix");
            match W::from_proto(proto) {
                None => assert_eq!(rest, "UNSPECIFIED", "only UNSPECIFIED may map to nothing"),
                Some(wire) => assert_eq!(
                    serde_json::to_value(wire).expect("serializes"),
                    serde_json::Value::String(rest.to_ascii_lowercase()),
                    "{name}"
                ),
            }
        }
        assert!(seen >= 3, "{prefix}: too few values seen");
    }

    #[test]
    fn wire_names_follow_proto_names() {
        check::<ChannelKind>("CHANNEL_KIND_", |p| p.as_str_name());
        check::<Visibility>("VISIBILITY_", |p| p.as_str_name());
        check::<LegacyRole>("LEGACY_ROLE_", |p| p.as_str_name());
        check::<Permission>("PERMISSION_", |p| p.as_str_name());
        check::<PresenceStatus>("PRESENCE_STATUS_", |p| p.as_str_name());
        check::<ReactionOperation>("REACTION_OPERATION_", |p| p.as_str_name());
        check::<MemberRemoveReason>("MEMBER_REMOVE_REASON_", |p| p.as_str_name());
        check::<OverrideTargetKind>("OVERRIDE_TARGET_KIND_", |p| p.as_str_name());
        check::<IpBanAction>("IP_BAN_ACTION_", |p| p.as_str_name());
        check::<VoiceStream>("VOICE_STREAM_", |p| p.as_str_name());
    }

    #[test]
    fn permissions_are_in_bit_order() {
        let masks: Vec<u64> = Permission::ALL.iter().map(|p| p.mask()).collect();
        let expected: Vec<u64> = (0..12).map(|bit| 1 << bit).collect();
        assert_eq!(masks, expected);
        // The proto numbers a permission as its bit index plus one.
        for (bit, permission) in Permission::ALL.into_iter().enumerate() {
            let raw = i32::try_from(bit + 1).expect("small");
            let proto = proto::Permission::try_from(raw).expect("known");
            assert_eq!(Permission::from_proto(proto), Some(permission));
        }
        let names = serde_json::to_value(Permission::ALL).expect("serializes");
        assert_eq!(names[0], "manage_roles");
        assert_eq!(names[11], "subscribe_streams");
    }

    #[test]
    fn friend_request_state_accepts_only_accepted() {
        assert_eq!(
            FriendRequestState::parse("accepted"),
            Some(FriendRequestState::Accepted)
        );
        assert_eq!(FriendRequestState::parse("Accepted"), None);
        assert_eq!(FriendRequestState::parse(""), None);
    }
}
