//! Calling the voice service: the gateway asks for the roster snapshot of
//! each accepted subscribe (`voice_participant_sync`); the api removes
//! users who lost access, or re-checks who may stay; presence reports users
//! whose last connection closed; the api's voice routes join, leave and
//! update the caller's own participant.
//!
//! The channel connects lazily, so callers start even while voice is down.

use std::time::Duration;

use filament_proto::v1::voice_client::VoiceClient as ProtoClient;
use filament_proto::v1::{
    VoiceConnectionClosedRequest, VoiceGrantHolder, VoiceGuildParticipantsRequest,
    VoiceJoinRequest, VoiceJoinResponse, VoiceLeaveRequest, VoiceParticipantSync,
    VoiceRemoveUserRequest, VoiceSnapshotRequest, VoiceStateFields, VoiceUpdateStateRequest,
};
use filament_runtime::grpc_client::{GrpcChannel, GrpcClientMetrics};

use crate::ClientError;
use crate::error::Answer as _;

/// How this client's errors name the service.
const SERVICE: &str = "voice";

#[derive(Clone)]
pub struct VoiceClient {
    client: ProtoClient<GrpcChannel>,
}

impl VoiceClient {
    /// A client for the voice service at `url` (`http://host:port`); each
    /// call fails after `timeout`; calls are timed in `grpc_clients`. Must
    /// be called inside a tokio runtime.
    pub fn new(
        url: &str,
        timeout: Duration,
        grpc_clients: &GrpcClientMetrics,
    ) -> Result<Self, ClientError> {
        let channel = crate::connect(SERVICE, url, timeout, grpc_clients)?;
        Ok(Self {
            client: ProtoClient::new(channel),
        })
    }

    /// Admits the participant in `request` (grants already limited by their
    /// permissions) and signs their LiveKit token. A full channel or voice
    /// registry is `RESOURCE_EXHAUSTED`.
    pub async fn join(&self, request: VoiceJoinRequest) -> Result<VoiceJoinResponse, ClientError> {
        self.client.clone().join(request).await.answer(SERVICE)
    }

    /// Takes `user_id` out of `channel_id`. Returns whether they were in it.
    pub async fn leave(
        &self,
        guild_id: &str,
        channel_id: &str,
        user_id: &str,
    ) -> Result<bool, ClientError> {
        Ok(self
            .client
            .clone()
            .leave(VoiceLeaveRequest {
                guild_id: guild_id.to_owned(),
                channel_id: channel_id.to_owned(),
                user_id: user_id.to_owned(),
            })
            .await
            .answer(SERVICE)?
            .left)
    }

    /// Sets the fields of `fields` that are present on `user_id`'s
    /// participant in `channel_id`. Returns whether anything changed (false
    /// also when they are not in the channel).
    pub async fn update_state(
        &self,
        guild_id: &str,
        channel_id: &str,
        user_id: &str,
        fields: VoiceStateFields,
    ) -> Result<bool, ClientError> {
        Ok(self
            .client
            .clone()
            .update_state(VoiceUpdateStateRequest {
                guild_id: guild_id.to_owned(),
                channel_id: channel_id.to_owned(),
                user_id: user_id.to_owned(),
                fields: Some(fields),
            })
            .await
            .answer(SERVICE)?
            .changed)
    }

    /// The payload of `voice_participant_sync` for a socket whose subscribe
    /// to `channel_id` was accepted (empty for a text channel).
    pub async fn snapshot(
        &self,
        guild_id: &str,
        channel_id: &str,
    ) -> Result<VoiceParticipantSync, ClientError> {
        self.client
            .clone()
            .snapshot(VoiceSnapshotRequest {
                guild_id: guild_id.to_owned(),
                channel_id: channel_id.to_owned(),
            })
            .await
            .answer(SERVICE)
    }

    /// The user lost access to the guild (kick, ban, lost
    /// `subscribe_streams`): remove them from its voice channels. Returns
    /// how many participants were removed (0 or 1).
    pub async fn remove_user(&self, guild_id: &str, user_id: &str) -> Result<u32, ClientError> {
        Ok(self
            .client
            .clone()
            .remove_user(VoiceRemoveUserRequest {
                guild_id: guild_id.to_owned(),
                user_id: user_id.to_owned(),
            })
            .await
            .answer(SERVICE)?
            .removed)
    }

    /// Who holds a voice grant in `guild_id`, with what their tokens grant:
    /// the api re-checks them after a permission change.
    pub async fn guild_participants(
        &self,
        guild_id: &str,
    ) -> Result<Vec<VoiceGrantHolder>, ClientError> {
        Ok(self
            .client
            .clone()
            .guild_participants(VoiceGuildParticipantsRequest {
                guild_id: guild_id.to_owned(),
            })
            .await
            .answer(SERVICE)?
            .participants)
    }

    /// The user's last connection anywhere closed at `closed_at_unix_ms`.
    /// Presence calls this; a gateway does not need to.
    pub async fn connection_closed(
        &self,
        user_id: &str,
        closed_at_unix_ms: i64,
    ) -> Result<u32, ClientError> {
        Ok(self
            .client
            .clone()
            .connection_closed(VoiceConnectionClosedRequest {
                user_id: user_id.to_owned(),
                closed_at_unix_ms,
            })
            .await
            .answer(SERVICE)?
            .removed)
    }
}
