//! Calling the voice service: the gateway asks for the roster snapshot of
//! each accepted subscribe (`voice_participant_sync`); moderation removes
//! users who lost access. The api uses the generated client directly.
//!
//! The channel connects lazily, so callers start even while voice is down.

use std::time::Duration;

use filament_proto::v1::voice_client::VoiceClient as ProtoClient;
use filament_proto::v1::{
    VoiceConnectionClosedRequest, VoiceParticipantSync, VoiceRemoveUserRequest,
    VoiceSnapshotRequest,
};
use filament_runtime::grpc_client::{GrpcChannel, GrpcClientMetrics};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid voice url: {0}")]
    InvalidUrl(#[from] tonic::transport::Error),
    #[error("voice call failed: {0}")]
    Call(#[from] tonic::Status),
}

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
        let channel =
            filament_runtime::grpc_client::connect(url, timeout, Some(timeout), grpc_clients)?;
        Ok(Self {
            client: ProtoClient::new(channel),
        })
    }

    /// The payload of `voice_participant_sync` for a socket whose subscribe
    /// to `channel_id` was accepted (empty for a text channel).
    pub async fn snapshot(
        &self,
        guild_id: &str,
        channel_id: &str,
    ) -> Result<VoiceParticipantSync, ClientError> {
        Ok(self
            .client
            .clone()
            .snapshot(VoiceSnapshotRequest {
                guild_id: guild_id.to_owned(),
                channel_id: channel_id.to_owned(),
            })
            .await?
            .into_inner())
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
            .await?
            .into_inner()
            .removed)
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
            .await?
            .into_inner()
            .removed)
    }
}
