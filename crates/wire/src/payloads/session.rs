//! Connection and presence payloads: `ready`, `subscribed`, `resumed`,
//! `pong`, `presence_sync`, `presence_update`.

use filament_proto::v1 as proto;
use schemars::JsonSchema;
use serde::Serialize;

use crate::convert::{ConvertError, enum_value};
use crate::enums::PresenceStatus;

/// `ready`: sent once, right after the upgrade.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
pub struct Ready {
    pub user_id: String,
}

impl TryFrom<&proto::Ready> for Ready {
    type Error = ConvertError;

    fn try_from(ready: &proto::Ready) -> Result<Self, Self::Error> {
        Ok(Self {
            user_id: ready.user_id.clone(),
        })
    }
}

/// `subscribed`: a subscribe was accepted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
pub struct Subscribed {
    pub guild_id: String,
    pub channel_id: String,
}

impl TryFrom<&proto::Subscribed> for Subscribed {
    type Error = ConvertError;

    fn try_from(subscribed: &proto::Subscribed) -> Result<Self, Self::Error> {
        Ok(Self {
            guild_id: subscribed.guild_id.clone(),
            channel_id: subscribed.channel_id.clone(),
        })
    }
}

/// `resumed`: the end of one log's replay (docs/adr/0011-resume.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
pub struct Resumed {
    pub scope: String,
    pub replayed: u64,
    pub resync: bool,
}

impl TryFrom<&proto::Resumed> for Resumed {
    type Error = ConvertError;

    fn try_from(resumed: &proto::Resumed) -> Result<Self, Self::Error> {
        Ok(Self {
            scope: resumed.scope.clone(),
            replayed: resumed.replayed,
            resync: resumed.resync,
        })
    }
}

/// `pong`: the answer to a client's `ping`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
pub struct Pong {
    pub nonce: String,
}

impl TryFrom<&proto::Pong> for Pong {
    type Error = ConvertError;

    fn try_from(pong: &proto::Pong) -> Result<Self, Self::Error> {
        Ok(Self {
            nonce: pong.nonce.clone(),
        })
    }
}

/// `presence_sync`: who is present in the guild, for one socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
pub struct PresenceSync {
    pub guild_id: String,
    pub user_ids: Vec<String>,
}

impl TryFrom<&proto::PresenceSync> for PresenceSync {
    type Error = ConvertError;

    fn try_from(sync: &proto::PresenceSync) -> Result<Self, Self::Error> {
        Ok(Self {
            guild_id: sync.guild_id.clone(),
            user_ids: sync.user_ids.clone(),
        })
    }
}

/// `presence_update`: a user came online in, or left, a guild.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
pub struct PresenceUpdate {
    pub guild_id: String,
    pub user_id: String,
    pub status: PresenceStatus,
}

impl TryFrom<&proto::PresenceUpdate> for PresenceUpdate {
    type Error = ConvertError;

    fn try_from(update: &proto::PresenceUpdate) -> Result<Self, Self::Error> {
        Ok(Self {
            guild_id: update.guild_id.clone(),
            user_id: update.user_id.clone(),
            status: enum_value("PresenceUpdate.status", update.status)?,
        })
    }
}
