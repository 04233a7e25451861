//! `filament.v1.EdgeAccess`: the gateway's questions, answered with the same
//! token verification and permission checks as REST.

use filament_proto::v1::edge_access_server::{EdgeAccess, EdgeAccessServer};
use filament_proto::v1::{
    AuthorizeSubscribeRequest, AuthorizeSubscribeResponse, IdentifyRequest, IdentifyResponse,
};
use tonic::{Request, Response, Status};

use crate::domain::parse_id;
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
        let claims = self
            .state
            .tokens()
            .verify(&token)
            .ok_or_else(|| Status::unauthenticated("invalid credentials"))?;
        // Reload the user: a deleted account's tokens stop working at once.
        let user = crate::http::authenticate(&self.state, &token).await?;
        Ok(Response::new(IdentifyResponse {
            user_id: user.user_id.to_string(),
            username: user.username,
            expires_at_unix: claims.exp,
        }))
    }

    async fn authorize_subscribe(
        &self,
        request: Request<AuthorizeSubscribeRequest>,
    ) -> Result<Response<AuthorizeSubscribeResponse>, Status> {
        let request = request.into_inner();
        let invalid = |_| Status::invalid_argument("ids must be ULIDs");
        let user = parse_id(&request.user_id).map_err(invalid)?;
        let guild = parse_id(&request.guild_id).map_err(invalid)?;
        let channel = parse_id(&request.channel_id).map_err(invalid)?;
        let allowed = self
            .state
            .authorizer()
            .can_view_channel(guild, channel, user)
            .await?;
        Ok(Response::new(AuthorizeSubscribeResponse { allowed }))
    }
}
