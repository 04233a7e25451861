//! The gateway's calls to the presence and voice services: reporting its
//! sockets to presence, and fetching the snapshots (`presence_sync`,
//! `voice_participant_sync`) that an accepted subscribe sends.
//!
//! Both services are optional (no URL: no presence, empty voice rosters),
//! and a failed call never closes a socket: presence and rosters are views
//! that repair themselves (presence leases, voice TTLs, the next subscribe's
//! snapshot), while access decisions stay with the api.

use std::time::Duration;

use filament_clients::{LeaseStatus, PresenceClient, VoiceClient};
use filament_proto::v1::{PresenceSync, VoiceParticipantSync};
use filament_runtime::grpc_client::GrpcClientMetrics;

use crate::ids::{ChannelId, ConnectionId, GuildId, UserId};

pub(crate) struct Peers {
    presence: Option<PresenceClient>,
    voice: Option<VoiceClient>,
}

impl Peers {
    pub(crate) fn new(
        presence_url: Option<&str>,
        voice_url: Option<&str>,
        gateway_id: &str,
        timeout: Duration,
        grpc_clients: &GrpcClientMetrics,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            presence: presence_url
                .map(|url| PresenceClient::new(url, gateway_id, timeout, grpc_clients))
                .transpose()?,
            voice: voice_url
                .map(|url| VoiceClient::new(url, timeout, grpc_clients))
                .transpose()?,
        })
    }

    /// Renews this gateway's presence lease. True when presence had let the
    /// lease lapse: its view of this gateway's sockets is gone, and they
    /// must be reported again (`connection::reannounce_presence`).
    pub(crate) async fn heartbeat(&self) -> bool {
        let Some(presence) = &self.presence else {
            return false;
        };
        match presence.heartbeat().await {
            Ok(LeaseStatus::Lapsed) => true,
            Ok(LeaseStatus::Held) => false,
            Err(err) => {
                tracing::warn!(%err, "presence heartbeat failed");
                false
            }
        }
    }

    pub(crate) async fn connected(&self, connection: ConnectionId, user: UserId) {
        if let Some(presence) = &self.presence
            && let Err(err) = presence.connected(connection.0, &user.to_string()).await
        {
            tracing::warn!(%err, "cannot report a connect to presence");
        }
    }

    /// Records the socket as present in `guild`; returns its `presence_sync`.
    pub(crate) async fn entered(
        &self,
        connection: ConnectionId,
        user: UserId,
        guild: GuildId,
    ) -> Option<PresenceSync> {
        let presence = self.presence.as_ref()?;
        presence
            .enter_guild(connection.0, &user.to_string(), &guild.to_string())
            .await
            .map_err(|err| tracing::warn!(%err, "cannot report a subscribe to presence"))
            .ok()
    }

    /// The socket lost its last subscription in `guild` (access revoked):
    /// it is no longer present there.
    pub(crate) async fn left(&self, connection: ConnectionId, guild: GuildId) {
        if let Some(presence) = &self.presence
            && let Err(err) = presence.leave_guild(connection.0, &guild.to_string()).await
        {
            tracing::warn!(%err, "cannot report a revoked guild to presence");
        }
    }

    pub(crate) async fn disconnected(&self, connection: ConnectionId) {
        if let Some(presence) = &self.presence
            && let Err(err) = presence.disconnected(connection.0).await
        {
            tracing::warn!(%err, "cannot report a disconnect to presence");
        }
    }

    /// The voice roster of a channel, as its `voice_participant_sync`.
    pub(crate) async fn voice_roster(
        &self,
        guild: GuildId,
        channel: ChannelId,
    ) -> Option<VoiceParticipantSync> {
        let voice = self.voice.as_ref()?;
        voice
            .snapshot(&guild.to_string(), &channel.to_string())
            .await
            .map_err(|err| tracing::warn!(%err, "cannot fetch a voice roster"))
            .ok()
    }
}
