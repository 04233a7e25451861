//! One `d` struct per gateway event (PROTOCOL.md §5.4), and the event table
//! that ties each to its wire type `t` and its proto payload.
//!
//! The table below is the only place that lists the events. The manifest
//! test (`tests/manifest.rs`) checks it against the `(event)` option of every
//! payload in events.proto, and the `match` it generates is exhaustive, so a
//! new payload in the proto fails to compile until it is added here. The
//! JSON Schema of `docs/events.json` ([`crate::schema`]) walks the same
//! table, so an event cannot be encoded without also being described.
//!
//! A field omitted when `None` also carries `#[schemars(with = "T")]`: it is
//! absent or a `T`, never `null`, while schemars would describe any `Option`
//! as nullable. (`RoleFields.color_hex` is the one field that may be absent
//! or `null`.)
//!
//! Named `payloads`, not `events`: the catalogue of events is
//! `proto/filament/v1/events.proto`, and the api has its own module that
//! builds and publishes them; this module holds only their `d`.

mod message;
mod session;
mod social;
mod voice;
mod workspace;

use filament_proto::v1 as proto;
use filament_proto::v1::event::Payload;
use schemars::JsonSchema;
use serde::Serialize;

pub use message::{
    MessageContentFields, MessageCreate, MessageDelete, MessageReaction, MessageUpdate,
};
pub use session::{Pong, PresenceSync, PresenceUpdate, Ready, Resumed, Subscribed};
pub use social::{
    AboutFields, FriendRemove, FriendRequestCreate, FriendRequestDelete, FriendRequestUpdate,
    ProfileAvatarUpdate, ProfileBannerUpdate, ProfileFields, ProfileUpdate,
};
pub use voice::{
    VoiceParticipantJoin, VoiceParticipantLeave, VoiceParticipantSync, VoiceParticipantUpdate,
    VoiceStateFields, VoiceStreamPublish, VoiceStreamUnpublish,
};
pub use workspace::{
    ChannelCreate, ChannelDelete, ChannelFields, ChannelUpdate, CreatedRole, IpBanSummary,
    MemberFields, OverrideFields, RoleFields, WorkspaceChannelPermissionOverrideUpdate,
    WorkspaceChannelRoleOverrideUpdate, WorkspaceFields, WorkspaceIpBanSync, WorkspaceMemberAdd,
    WorkspaceMemberBan, WorkspaceMemberRemove, WorkspaceMemberUpdate, WorkspaceRoleAssignmentAdd,
    WorkspaceRoleAssignmentRemove, WorkspaceRoleCreate, WorkspaceRoleDelete, WorkspaceRoleReorder,
    WorkspaceRoleUpdate, WorkspaceUpdate,
};

use crate::convert::ConvertError;

/// The `d` of one gateway event: its wire type and the proto payload it is
/// built from. Its JSON Schema must say exactly what its `Serialize` emits.
pub trait WireEvent: Serialize + JsonSchema + Sized {
    /// The proto payload message (`filament_proto::v1::…`).
    type Proto;

    /// The wire type `t`, as in the payload's `(event).name` option.
    const EVENT_TYPE: &'static str;

    /// Converts the proto payload, failing closed on bad enums and missing
    /// sub-messages.
    ///
    /// # Errors
    /// [`ConvertError`] when the payload has no valid wire shape.
    fn from_proto(proto: &Self::Proto) -> Result<Self, ConvertError>;
}

/// Something done to a client payload, generic over its wire type: how the
/// one event table serves both naming and encoding.
pub(crate) trait PayloadVisitor {
    type Output;

    fn visit<E: WireEvent>(self, proto: &E::Proto) -> Self::Output;
}

/// Something done once per event type, with no payload at hand: how the
/// schema generator lists every event from the same table.
pub(crate) trait EventTypeVisitor {
    fn visit<E: WireEvent>(&mut self);
}

/// Declares the event table: `WireType => "t"`. The proto payload message and
/// the `Event.payload` variant share the wire type's name.
macro_rules! event_table {
    ($($event:ident => $event_type:literal,)*) => {
        $(
            impl WireEvent for $event {
                type Proto = proto::$event;
                const EVENT_TYPE: &'static str = $event_type;

                fn from_proto(proto: &Self::Proto) -> Result<Self, ConvertError> {
                    Self::try_from(proto)
                }
            }
        )*

        /// Applies `visitor` to a client payload; `None` for control
        /// payloads, which never reach a client.
        pub(crate) fn visit<V: PayloadVisitor>(payload: &Payload, visitor: V) -> Option<V::Output> {
            match payload {
                $(Payload::$event(proto) => Some(visitor.visit::<$event>(proto)),)*
                Payload::AccessChanged(_) | Payload::SessionRevoked(_) => None,
            }
        }

        /// Applies `visitor` to every client event type, in table order.
        pub(crate) fn visit_types<V: EventTypeVisitor>(visitor: &mut V) {
            $(visitor.visit::<$event>();)*
        }
    };
}

event_table! {
    Ready => "ready",
    Subscribed => "subscribed",
    PresenceSync => "presence_sync",
    PresenceUpdate => "presence_update",
    Resumed => "resumed",
    Pong => "pong",
    MessageCreate => "message_create",
    MessageUpdate => "message_update",
    MessageDelete => "message_delete",
    MessageReaction => "message_reaction",
    ChannelCreate => "channel_create",
    ChannelUpdate => "channel_update",
    ChannelDelete => "channel_delete",
    WorkspaceUpdate => "workspace_update",
    WorkspaceMemberAdd => "workspace_member_add",
    WorkspaceMemberUpdate => "workspace_member_update",
    WorkspaceMemberRemove => "workspace_member_remove",
    WorkspaceMemberBan => "workspace_member_ban",
    WorkspaceRoleCreate => "workspace_role_create",
    WorkspaceRoleUpdate => "workspace_role_update",
    WorkspaceRoleDelete => "workspace_role_delete",
    WorkspaceRoleReorder => "workspace_role_reorder",
    WorkspaceRoleAssignmentAdd => "workspace_role_assignment_add",
    WorkspaceRoleAssignmentRemove => "workspace_role_assignment_remove",
    WorkspaceChannelRoleOverrideUpdate => "workspace_channel_role_override_update",
    WorkspaceChannelPermissionOverrideUpdate => "workspace_channel_permission_override_update",
    WorkspaceIpBanSync => "workspace_ip_ban_sync",
    ProfileUpdate => "profile_update",
    ProfileAvatarUpdate => "profile_avatar_update",
    ProfileBannerUpdate => "profile_banner_update",
    FriendRequestCreate => "friend_request_create",
    FriendRequestUpdate => "friend_request_update",
    FriendRequestDelete => "friend_request_delete",
    FriendRemove => "friend_remove",
    VoiceParticipantSync => "voice_participant_sync",
    VoiceParticipantJoin => "voice_participant_join",
    VoiceParticipantLeave => "voice_participant_leave",
    VoiceParticipantUpdate => "voice_participant_update",
    VoiceStreamPublish => "voice_stream_publish",
    VoiceStreamUnpublish => "voice_stream_unpublish",
}
