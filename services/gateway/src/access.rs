//! The gateway's questions to the api (`filament.v1.EdgeAccess`): who owns a
//! token, and may a user subscribe to a channel. Every failure to get an
//! answer is an error the caller turns into a refusal: the gateway never
//! guesses.

use std::collections::HashSet;
use std::net::IpAddr;
use std::time::Duration;

use filament_proto::limits::MAX_BANNED_ADDRESSES_PER_CALL;
use filament_proto::v1::edge_access_client::EdgeAccessClient;
use filament_proto::v1::{
    AuthorizeSubscribeRequest, BannedAddressesRequest, EdgeCreateMessageRequest, IdentifyRequest,
};
use filament_runtime::grpc_client::{GrpcChannel, GrpcClientMetrics};
use tonic::Code;

use crate::ids::{ChannelId, GuildId, SessionId, UserId};

/// Who a socket belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Identity {
    pub(crate) user: UserId,
    /// The session the token was issued for; revoking it closes the socket.
    pub(crate) session: SessionId,
    /// When the access token stops being valid (unix seconds).
    pub(crate) expires_at_unix: i64,
}

/// The api's answer to a subscribe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    Allowed,
    /// Ignored, as PROTOCOL.md §5.5 says: the socket stays.
    Denied,
    /// The guild bans the client address: the socket is closed.
    IpBanned,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum AccessError {
    #[error("invalid credentials")]
    Unauthenticated,
    /// The api refused what the client asked for.
    #[error("refused: {0}")]
    Refused(String),
    #[error("api unavailable: {0}")]
    Unavailable(String),
}

#[derive(Clone)]
pub(crate) struct Access {
    client: EdgeAccessClient<GrpcChannel>,
}

impl Access {
    pub(crate) fn new(
        api_url: &str,
        timeout: Duration,
        grpc_clients: &GrpcClientMetrics,
    ) -> anyhow::Result<Self> {
        let channel =
            filament_runtime::grpc_client::connect(api_url, timeout, Some(timeout), grpc_clients)?;
        Ok(Self {
            client: EdgeAccessClient::new(channel),
        })
    }

    pub(crate) async fn identify(&self, access_token: &str) -> Result<Identity, AccessError> {
        let response = self
            .client
            .clone()
            .identify(IdentifyRequest {
                access_token: access_token.to_owned(),
            })
            .await
            .map_err(|status| match status.code() {
                Code::Unauthenticated | Code::InvalidArgument => AccessError::Unauthenticated,
                _ => AccessError::Unavailable(status.to_string()),
            })?
            .into_inner();
        let user = response
            .user_id
            .parse()
            .map_err(|_| AccessError::Unavailable("api returned a malformed user id".into()))?;
        // Without its session a socket could not be closed by a logout:
        // refuse it rather than keep it open for the token's lifetime.
        let session = response
            .session_id
            .parse()
            .map_err(|_| AccessError::Unavailable("api returned a malformed session id".into()))?;
        Ok(Identity {
            user,
            session,
            expires_at_unix: response.expires_at_unix,
        })
    }

    pub(crate) async fn authorize_subscribe(
        &self,
        user: UserId,
        ip: IpAddr,
        guild: GuildId,
        channel: ChannelId,
    ) -> Result<Verdict, AccessError> {
        let response = self
            .client
            .clone()
            .authorize_subscribe(AuthorizeSubscribeRequest {
                user_id: user.to_string(),
                guild_id: guild.to_string(),
                channel_id: channel.to_string(),
                client_ip: ip.to_string(),
            })
            .await
            .map_err(|status| AccessError::Unavailable(status.to_string()))?
            .into_inner();
        Ok(match (response.ip_banned, response.allowed) {
            (true, _) => Verdict::IpBanned,
            (false, true) => Verdict::Allowed,
            (false, false) => Verdict::Denied,
        })
    }

    /// Which of `addresses` the guild bans now.
    pub(crate) async fn banned_addresses(
        &self,
        guild: GuildId,
        addresses: &[IpAddr],
    ) -> Result<HashSet<IpAddr>, AccessError> {
        let mut banned = HashSet::new();
        for chunk in addresses.chunks(MAX_BANNED_ADDRESSES_PER_CALL) {
            let response = self
                .client
                .clone()
                .banned_addresses(BannedAddressesRequest {
                    guild_id: guild.to_string(),
                    client_ips: chunk.iter().map(IpAddr::to_string).collect(),
                })
                .await
                .map_err(|status| AccessError::Unavailable(status.to_string()))?
                .into_inner();
            for raw in response.banned_ips {
                let ip = raw.parse().map_err(|_| {
                    AccessError::Unavailable("api returned a malformed address".into())
                })?;
                banned.insert(ip);
            }
        }
        Ok(banned)
    }

    /// Posts a message for the socket's user; `Refused` when the api turns
    /// it down (bad content, no permission, a banned address, a limit).
    pub(crate) async fn create_message(
        &self,
        user: UserId,
        ip: IpAddr,
        message: NewMessage,
    ) -> Result<(), AccessError> {
        self.client
            .clone()
            .create_message(EdgeCreateMessageRequest {
                user_id: user.to_string(),
                guild_id: message.guild.to_string(),
                channel_id: message.channel.to_string(),
                content: message.content,
                attachment_ids: message.attachment_ids,
                client_ip: ip.to_string(),
            })
            .await
            .map_err(|status| match status.code() {
                Code::InvalidArgument
                | Code::PermissionDenied
                | Code::NotFound
                | Code::ResourceExhausted => AccessError::Refused(status.message().to_owned()),
                _ => AccessError::Unavailable(status.to_string()),
            })?;
        Ok(())
    }
}

/// A message a socket asked to post.
pub(crate) struct NewMessage {
    pub(crate) guild: GuildId,
    pub(crate) channel: ChannelId,
    pub(crate) content: String,
    pub(crate) attachment_ids: Vec<String>,
}
