//! `filament.v1.EdgeAccess`: the gateway's questions, answered with the same
//! token verification and permission checks as REST.

use filament_ids::{ChannelId, GuildId, UserId};
use filament_proto::v1::edge_access_server::{EdgeAccess, EdgeAccessServer};
use std::net::IpAddr;

use filament_proto::limits::MAX_BANNED_ADDRESSES_PER_CALL;
use filament_proto::v1::{
    AuthorizeSubscribeRequest, AuthorizeSubscribeResponse, BannedAddressesRequest,
    BannedAddressesResponse, EdgeCreateMessageRequest, EdgeCreateMessageResponse, IdentifyRequest,
    IdentifyResponse,
};
use tonic::{Request, Response, Status};

use crate::clock::now_unix;
use crate::domain::messages::{NewMessage, post};
use crate::domain::parse_id;
use crate::domain::sessions::authenticate_session;
use crate::error::ApiError;
use crate::state::AppState;

pub struct EdgeAccessService {
    state: AppState,
}

impl EdgeAccessService {
    pub fn server(state: AppState) -> EdgeAccessServer<Self> {
        EdgeAccessServer::new(Self { state })
    }
}

#[tonic::async_trait]
impl EdgeAccess for EdgeAccessService {
    async fn identify(
        &self,
        request: Request<IdentifyRequest>,
    ) -> Result<Response<IdentifyResponse>, Status> {
        let token = request.into_inner().access_token;
        // As REST does: the user is reloaded, so a deleted account's tokens
        // stop working at once, and a logged-out session's are refused.
        let session = authenticate_session(&self.state, &token).await?;
        Ok(Response::new(IdentifyResponse {
            user_id: session.user.user_id.to_string(),
            username: session.user.username,
            expires_at_unix: session.expires_at_unix,
            session_id: session.session_id.to_string(),
        }))
    }

    async fn authorize_subscribe(
        &self,
        request: Request<AuthorizeSubscribeRequest>,
    ) -> Result<Response<AuthorizeSubscribeResponse>, Status> {
        let request = request.into_inner();
        let (user, guild, channel) =
            socket_ids(&request.user_id, &request.guild_id, &request.channel_id)?;
        let ip = parse_ip(&request.client_ip)?;
        // The order of PROTOCOL.md §5.5: an IP-banned socket is disconnected whatever
        // else it may see.
        if banned(&self.state, guild, ip, now_unix()).await? {
            return Ok(Response::new(AuthorizeSubscribeResponse {
                allowed: false,
                ip_banned: true,
            }));
        }
        let allowed = self
            .state
            .authorizer()
            .can_view_channel(guild, channel, user)
            .await?;
        Ok(Response::new(AuthorizeSubscribeResponse {
            allowed,
            ip_banned: false,
        }))
    }

    async fn banned_addresses(
        &self,
        request: Request<BannedAddressesRequest>,
    ) -> Result<Response<BannedAddressesResponse>, Status> {
        let request = request.into_inner();
        let guild =
            parse_id(&request.guild_id).map_err(|_| Status::invalid_argument("bad guild id"))?;
        if request.client_ips.len() > MAX_BANNED_ADDRESSES_PER_CALL {
            return Err(Status::invalid_argument("too many addresses"));
        }
        let addresses = request
            .client_ips
            .iter()
            .map(|raw| parse_ip(raw).map(|ip| (raw, ip)))
            .collect::<Result<Vec<_>, _>>()?;
        let now = now_unix();
        let mut banned_ips = Vec::new();
        for (raw, ip) in addresses {
            if banned(&self.state, guild, ip, now).await? {
                banned_ips.push(raw.clone());
            }
        }
        Ok(Response::new(BannedAddressesResponse { banned_ips }))
    }

    async fn create_message(
        &self,
        request: Request<EdgeCreateMessageRequest>,
    ) -> Result<Response<EdgeCreateMessageResponse>, Status> {
        let request = request.into_inner();
        let (user, guild, channel) =
            socket_ids(&request.user_id, &request.guild_id, &request.channel_id)?;
        let ip = parse_ip(&request.client_ip)?;
        // As the REST route's IP gate: a banned address may not post.
        if banned(&self.state, guild, ip, now_unix()).await? {
            return Err(ApiError::Forbidden.into());
        }
        let new = NewMessage::parse(request.content, &request.attachment_ids)?;
        let message = post(&self.state, user, guild, channel, new, None).await?;
        Ok(Response::new(EdgeCreateMessageResponse {
            message_id: message.message_id,
        }))
    }
}

async fn banned(state: &AppState, guild: GuildId, ip: IpAddr, now: i64) -> Result<bool, Status> {
    let banned = state
        .store()
        .ip_banned(guild, ip, now)
        .await
        .map_err(ApiError::from)?;
    Ok(banned)
}

/// A socket's user and the guild and channel it names.
fn socket_ids(
    user: &str,
    guild: &str,
    channel: &str,
) -> Result<(UserId, GuildId, ChannelId), Status> {
    let invalid = |_| Status::invalid_argument("ids must be ULIDs");
    Ok((
        parse_id(user).map_err(invalid)?,
        parse_id(guild).map_err(invalid)?,
        parse_id(channel).map_err(invalid)?,
    ))
}

fn parse_ip(raw: &str) -> Result<IpAddr, Status> {
    raw.parse()
        .map_err(|_| Status::invalid_argument("client_ip must be an IP address"))
}
