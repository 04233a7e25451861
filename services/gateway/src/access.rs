//! The gateway's questions to the api (`filament.v1.EdgeAccess`): who owns a
//! token, and may a user subscribe to a channel. Every failure to get an
//! answer is an error the caller turns into a refusal: the gateway never
//! guesses.

use std::time::Duration;

use filament_proto::v1::edge_access_client::EdgeAccessClient;
use filament_proto::v1::{AuthorizeSubscribeRequest, IdentifyRequest};
use tonic::Code;
use tonic::transport::{Channel, Endpoint};

use crate::ids::{ChannelId, GuildId, UserId};

/// Who a socket belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Identity {
    pub(crate) user: UserId,
    /// When the access token stops being valid (unix seconds).
    pub(crate) expires_at_unix: i64,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum AccessError {
    #[error("invalid credentials")]
    Unauthenticated,
    #[error("api unavailable: {0}")]
    Unavailable(String),
}

#[derive(Clone)]
pub(crate) struct Access {
    client: EdgeAccessClient<Channel>,
}

impl Access {
    pub(crate) fn new(api_url: &str, timeout: Duration) -> anyhow::Result<Self> {
        let channel = Endpoint::from_shared(api_url.to_owned())?
            .connect_timeout(timeout)
            .timeout(timeout)
            .connect_lazy();
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
        Ok(Identity {
            user,
            expires_at_unix: response.expires_at_unix,
        })
    }

    pub(crate) async fn authorize_subscribe(
        &self,
        user: UserId,
        guild: GuildId,
        channel: ChannelId,
    ) -> Result<bool, AccessError> {
        let response = self
            .client
            .clone()
            .authorize_subscribe(AuthorizeSubscribeRequest {
                user_id: user.to_string(),
                guild_id: guild.to_string(),
                channel_id: channel.to_string(),
            })
            .await
            .map_err(|status| AccessError::Unavailable(status.to_string()))?;
        Ok(response.into_inner().allowed)
    }
}
