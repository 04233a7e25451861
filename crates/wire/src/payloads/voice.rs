//! Voice payloads: participants joining, leaving and changing state, and the
//! media streams they publish.

use filament_proto::v1 as proto;
use schemars::JsonSchema;
use serde::Serialize;

use crate::convert::{ConvertError, enum_value, required};
use crate::enums::VoiceStream;
use crate::shapes::VoiceParticipant;

/// `voice_participant_sync`: everyone in the channel, for one socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
pub struct VoiceParticipantSync {
    pub guild_id: String,
    pub channel_id: String,
    pub participants: Vec<VoiceParticipant>,
    pub synced_at_unix: i64,
}

impl TryFrom<&proto::VoiceParticipantSync> for VoiceParticipantSync {
    type Error = ConvertError;

    fn try_from(sync: &proto::VoiceParticipantSync) -> Result<Self, Self::Error> {
        Ok(Self {
            guild_id: sync.guild_id.clone(),
            channel_id: sync.channel_id.clone(),
            participants: sync
                .participants
                .iter()
                .map(VoiceParticipant::from)
                .collect(),
            synced_at_unix: sync.synced_at_unix,
        })
    }
}

/// `voice_participant_join`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
pub struct VoiceParticipantJoin {
    pub guild_id: String,
    pub channel_id: String,
    pub participant: VoiceParticipant,
}

impl TryFrom<&proto::VoiceParticipantJoin> for VoiceParticipantJoin {
    type Error = ConvertError;

    fn try_from(join: &proto::VoiceParticipantJoin) -> Result<Self, Self::Error> {
        let participant = required(
            "VoiceParticipantJoin.participant",
            join.participant.as_ref(),
        )?;
        Ok(Self {
            guild_id: join.guild_id.clone(),
            channel_id: join.channel_id.clone(),
            participant: VoiceParticipant::from(participant),
        })
    }
}

/// `voice_participant_leave`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
pub struct VoiceParticipantLeave {
    pub guild_id: String,
    pub channel_id: String,
    pub user_id: String,
    pub identity: String,
    pub left_at_unix: i64,
}

impl TryFrom<&proto::VoiceParticipantLeave> for VoiceParticipantLeave {
    type Error = ConvertError;

    fn try_from(leave: &proto::VoiceParticipantLeave) -> Result<Self, Self::Error> {
        Ok(Self {
            guild_id: leave.guild_id.clone(),
            channel_id: leave.channel_id.clone(),
            user_id: leave.user_id.clone(),
            identity: leave.identity.clone(),
            left_at_unix: leave.left_at_unix,
        })
    }
}

/// `voice_participant_update`: only the flags that changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
pub struct VoiceParticipantUpdate {
    pub guild_id: String,
    pub channel_id: String,
    pub user_id: String,
    pub identity: String,
    pub updated_fields: VoiceStateFields,
    pub updated_at_unix: i64,
}

/// What changed in `voice_participant_update`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema)]
pub struct VoiceStateFields {
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(with = "bool")]
    pub is_muted: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(with = "bool")]
    pub is_deafened: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(with = "bool")]
    pub is_speaking: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(with = "bool")]
    pub is_video_enabled: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(with = "bool")]
    pub is_screen_share_enabled: Option<bool>,
}

impl TryFrom<&proto::VoiceParticipantUpdate> for VoiceParticipantUpdate {
    type Error = ConvertError;

    fn try_from(update: &proto::VoiceParticipantUpdate) -> Result<Self, Self::Error> {
        let fields = required(
            "VoiceParticipantUpdate.updated_fields",
            update.updated_fields.as_ref(),
        )?;
        Ok(Self {
            guild_id: update.guild_id.clone(),
            channel_id: update.channel_id.clone(),
            user_id: update.user_id.clone(),
            identity: update.identity.clone(),
            updated_fields: VoiceStateFields {
                is_muted: fields.is_muted,
                is_deafened: fields.is_deafened,
                is_speaking: fields.is_speaking,
                is_video_enabled: fields.is_video_enabled,
                is_screen_share_enabled: fields.is_screen_share_enabled,
            },
            updated_at_unix: update.updated_at_unix,
        })
    }
}

/// `voice_stream_publish`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
pub struct VoiceStreamPublish {
    pub guild_id: String,
    pub channel_id: String,
    pub user_id: String,
    pub identity: String,
    pub stream: VoiceStream,
    pub published_at_unix: i64,
}

impl TryFrom<&proto::VoiceStreamPublish> for VoiceStreamPublish {
    type Error = ConvertError;

    fn try_from(publish: &proto::VoiceStreamPublish) -> Result<Self, Self::Error> {
        Ok(Self {
            guild_id: publish.guild_id.clone(),
            channel_id: publish.channel_id.clone(),
            user_id: publish.user_id.clone(),
            identity: publish.identity.clone(),
            stream: enum_value("VoiceStreamPublish.stream", publish.stream)?,
            published_at_unix: publish.published_at_unix,
        })
    }
}

/// `voice_stream_unpublish`: precedes a leave.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
pub struct VoiceStreamUnpublish {
    pub guild_id: String,
    pub channel_id: String,
    pub user_id: String,
    pub identity: String,
    pub stream: VoiceStream,
    pub unpublished_at_unix: i64,
}

impl TryFrom<&proto::VoiceStreamUnpublish> for VoiceStreamUnpublish {
    type Error = ConvertError;

    fn try_from(unpublish: &proto::VoiceStreamUnpublish) -> Result<Self, Self::Error> {
        Ok(Self {
            guild_id: unpublish.guild_id.clone(),
            channel_id: unpublish.channel_id.clone(),
            user_id: unpublish.user_id.clone(),
            identity: unpublish.identity.clone(),
            stream: enum_value("VoiceStreamUnpublish.stream", unpublish.stream)?,
            unpublished_at_unix: unpublish.unpublished_at_unix,
        })
    }
}
