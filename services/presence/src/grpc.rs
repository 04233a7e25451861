//! `filament.v1.Presence`: the thin tonic adapter over [`PresenceService`].
//! It parses every id at the boundary into `filament_ids`' typed ids
//! (canonical ULIDs only, [`parse_id`]) and maps store errors to statuses
//! in one place. The service and its store keep ids as the canonical
//! strings their Redis keys and events are made of.

use filament_ids::{GuildId, UserId};
use filament_proto::v1::presence_server::{Presence, PresenceServer};
use filament_proto::v1::{
    PresenceConnectedRequest, PresenceConnection, PresenceDisconnectedRequest,
    PresenceDisconnectedResponse, PresenceEnterGuildRequest, PresenceEnterGuildResponse,
    PresenceHeartbeatRequest, PresenceLease, PresenceLeaveGuildRequest, PresenceLeaveGuildResponse,
    PresenceSnapshotRequest, PresenceSync,
};
use filament_registry::GatewayId;
use filament_runtime::grpc::parse_id;
use tonic::{Request, Response, Status};

use crate::service::PresenceService;
use crate::store::{ConnectionKey, Lease, StoreError};

pub(crate) struct PresenceGrpc {
    service: PresenceService,
}

impl PresenceGrpc {
    pub(crate) fn server(service: PresenceService) -> PresenceServer<Self> {
        PresenceServer::new(Self { service })
            // Every request is a few ids; nothing legitimate comes near this.
            .max_decoding_message_size(16 * 1024)
    }
}

#[tonic::async_trait]
impl Presence for PresenceGrpc {
    async fn heartbeat(
        &self,
        request: Request<PresenceHeartbeatRequest>,
    ) -> Result<Response<PresenceLease>, Status> {
        let gateway = gateway_id(&request.into_inner().gateway_id)?;
        let lease = self.service.heartbeat(&gateway).await.map_err(status)?;
        Ok(Response::new(lease_of(lease)))
    }

    async fn connected(
        &self,
        request: Request<PresenceConnectedRequest>,
    ) -> Result<Response<PresenceLease>, Status> {
        let request = request.into_inner();
        let connection = connection_key(request.connection)?;
        let user_id: UserId = parse_id("user_id", &request.user_id)?;
        let lease = self
            .service
            .connected(&connection, &user_id.to_string())
            .await
            .map_err(status)?;
        Ok(Response::new(lease_of(lease)))
    }

    async fn enter_guild(
        &self,
        request: Request<PresenceEnterGuildRequest>,
    ) -> Result<Response<PresenceEnterGuildResponse>, Status> {
        let request = request.into_inner();
        let connection = connection_key(request.connection)?;
        let user_id: UserId = parse_id("user_id", &request.user_id)?;
        let guild_id: GuildId = parse_id("guild_id", &request.guild_id)?;
        let (lease, came_online, sync) = self
            .service
            .enter_guild(&connection, &user_id.to_string(), &guild_id.to_string())
            .await
            .map_err(status)?;
        Ok(Response::new(PresenceEnterGuildResponse {
            lease: Some(lease_of(lease)),
            came_online,
            sync: Some(sync),
        }))
    }

    async fn leave_guild(
        &self,
        request: Request<PresenceLeaveGuildRequest>,
    ) -> Result<Response<PresenceLeaveGuildResponse>, Status> {
        let request = request.into_inner();
        let connection = connection_key(request.connection)?;
        let guild_id: GuildId = parse_id("guild_id", &request.guild_id)?;
        let went_offline = self
            .service
            .leave_guild(&connection, &guild_id.to_string())
            .await
            .map_err(status)?;
        Ok(Response::new(PresenceLeaveGuildResponse { went_offline }))
    }

    async fn disconnected(
        &self,
        request: Request<PresenceDisconnectedRequest>,
    ) -> Result<Response<PresenceDisconnectedResponse>, Status> {
        let connection = connection_key(request.into_inner().connection)?;
        let departure = self
            .service
            .disconnected(&connection)
            .await
            .map_err(status)?;
        Ok(Response::new(match departure {
            Some(departure) => PresenceDisconnectedResponse {
                known: true,
                user_offline: departure.user_offline,
                went_offline_guild_ids: departure.went_offline_in,
            },
            None => PresenceDisconnectedResponse::default(),
        }))
    }

    async fn snapshot(
        &self,
        request: Request<PresenceSnapshotRequest>,
    ) -> Result<Response<PresenceSync>, Status> {
        let guild_id: GuildId = parse_id("guild_id", &request.into_inner().guild_id)?;
        let sync = self
            .service
            .snapshot(&guild_id.to_string())
            .await
            .map_err(status)?;
        Ok(Response::new(sync))
    }
}

fn lease_of(lease: Lease) -> PresenceLease {
    PresenceLease {
        was_live: lease.was_live,
    }
}

/// A gateway names itself by a fresh canonical ULID; nothing else is one.
fn gateway_id(raw: &str) -> Result<GatewayId, Status> {
    parse_id("gateway_id", raw)
}

fn connection_key(connection: Option<PresenceConnection>) -> Result<ConnectionKey, Status> {
    let connection =
        connection.ok_or_else(|| Status::invalid_argument("connection is required"))?;
    Ok(ConnectionKey {
        gateway: gateway_id(&connection.gateway_id)?,
        connection: connection.connection_id,
    })
}

fn status(err: StoreError) -> Status {
    match err {
        StoreError::ConnectionOwnedByAnotherUser => Status::failed_precondition(err.to_string()),
        StoreError::TooManyGuilds { .. } => Status::resource_exhausted(err.to_string()),
        StoreError::Redis(_) | StoreError::Protocol(_) => {
            tracing::warn!(%err, "presence store failed");
            Status::unavailable("presence store unavailable")
        }
    }
}
