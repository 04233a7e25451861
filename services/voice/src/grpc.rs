//! `filament.v1.Voice`: the thin tonic adapter over [`VoiceService`]. Every
//! request is validated here, whole, before anything changes: canonical
//! ULIDs (parsed into `filament_ids`' typed ids by [`parse_id`]; user ids
//! stay the canonical strings the roster and LiveKit identities are made
//! of), a bounded username, distinct known sources, consistent grants.
//! Store errors map to a status in one place ([`status`]): a bound is
//! RESOURCE_EXHAUSTED, a store that cannot answer UNAVAILABLE — it fails
//! closed, never guessing an answer.

use std::collections::BTreeSet;

use filament_ids::{GuildId, UserId};
use filament_proto::v1::voice_server::{Voice, VoiceServer};
use filament_proto::v1::{
    VoiceConnectionClosedRequest, VoiceGuildParticipantsRequest, VoiceGuildParticipantsResponse,
    VoiceJoinRequest, VoiceJoinResponse, VoiceLeaveRequest, VoiceLeaveResponse,
    VoiceParticipantSync, VoiceRemoveUserRequest, VoiceRemoved, VoiceSnapshotRequest,
    VoiceUpdateStateRequest, VoiceUpdateStateResponse,
};
use filament_runtime::grpc::parse_id;
use tonic::{Request, Response, Status};

use crate::roster::{ChannelKey, Stream};
use crate::service::{Join, VoiceService};
use crate::store::StoreError;

/// The largest request accepted: a join with every field at its maximum is
/// well under a kilobyte.
const MAX_REQUEST_BYTES: usize = 4 * 1024;
/// Usernames are 3–32 bytes (PROTOCOL.md §2.2); a little slack, never unbounded.
const MAX_USERNAME_BYTES: usize = 64;

pub(crate) struct VoiceGrpc {
    service: VoiceService,
}

impl VoiceGrpc {
    pub(crate) fn server(service: VoiceService) -> VoiceServer<Self> {
        VoiceServer::new(Self { service }).max_decoding_message_size(MAX_REQUEST_BYTES)
    }
}

#[tonic::async_trait]
impl Voice for VoiceGrpc {
    async fn join(
        &self,
        request: Request<VoiceJoinRequest>,
    ) -> Result<Response<VoiceJoinResponse>, Status> {
        let join = parse_join(request.into_inner())?;
        let grant = self.service.join(join).await.map_err(status)?;
        Ok(Response::new(VoiceJoinResponse {
            token: grant.token,
            livekit_url: grant.livekit_url,
            room: grant.room,
            identity: grant.identity,
            can_publish: grant.can_publish,
            can_subscribe: grant.can_subscribe,
            publish_sources: grant.sources.iter().map(|s| s.to_proto().into()).collect(),
            expires_in_secs: grant.expires_in_secs,
        }))
    }

    async fn leave(
        &self,
        request: Request<VoiceLeaveRequest>,
    ) -> Result<Response<VoiceLeaveResponse>, Status> {
        let request = request.into_inner();
        let channel = channel_key(&request.guild_id, &request.channel_id)?;
        let user_id = parse_user_id(&request.user_id)?;
        let left = self
            .service
            .leave(&channel, &user_id)
            .await
            .map_err(status)?;
        Ok(Response::new(VoiceLeaveResponse { left }))
    }

    async fn update_state(
        &self,
        request: Request<VoiceUpdateStateRequest>,
    ) -> Result<Response<VoiceUpdateStateResponse>, Status> {
        let request = request.into_inner();
        let channel = channel_key(&request.guild_id, &request.channel_id)?;
        let user_id = parse_user_id(&request.user_id)?;
        let fields = request
            .fields
            .filter(|f| {
                [
                    f.is_muted,
                    f.is_deafened,
                    f.is_speaking,
                    f.is_video_enabled,
                    f.is_screen_share_enabled,
                ]
                .iter()
                .any(Option::is_some)
            })
            .ok_or_else(|| Status::invalid_argument("fields must set at least one flag"))?;
        let changed = self
            .service
            .update_state(&channel, &user_id, &fields)
            .await
            .map_err(status)?;
        Ok(Response::new(VoiceUpdateStateResponse { changed }))
    }

    async fn snapshot(
        &self,
        request: Request<VoiceSnapshotRequest>,
    ) -> Result<Response<VoiceParticipantSync>, Status> {
        let request = request.into_inner();
        let channel = channel_key(&request.guild_id, &request.channel_id)?;
        let sync = self.service.snapshot(&channel).await.map_err(status)?;
        Ok(Response::new(sync))
    }

    async fn connection_closed(
        &self,
        request: Request<VoiceConnectionClosedRequest>,
    ) -> Result<Response<VoiceRemoved>, Status> {
        let request = request.into_inner();
        let user_id = parse_user_id(&request.user_id)?;
        let removed = self
            .service
            .connection_closed(&user_id, request.closed_at_unix_ms)
            .await
            .map_err(status)?;
        Ok(Response::new(VoiceRemoved { removed }))
    }

    async fn remove_user(
        &self,
        request: Request<VoiceRemoveUserRequest>,
    ) -> Result<Response<VoiceRemoved>, Status> {
        let request = request.into_inner();
        let guild_id: GuildId = parse_id("guild_id", &request.guild_id)?;
        let user_id = parse_user_id(&request.user_id)?;
        let removed = self
            .service
            .remove_user(guild_id, &user_id)
            .await
            .map_err(status)?;
        Ok(Response::new(VoiceRemoved { removed }))
    }

    async fn guild_participants(
        &self,
        request: Request<VoiceGuildParticipantsRequest>,
    ) -> Result<Response<VoiceGuildParticipantsResponse>, Status> {
        let guild_id: GuildId = parse_id("guild_id", &request.into_inner().guild_id)?;
        let participants = self
            .service
            .guild_participants(guild_id)
            .await
            .map_err(status)?;
        Ok(Response::new(VoiceGuildParticipantsResponse {
            participants,
        }))
    }
}

fn parse_join(request: VoiceJoinRequest) -> Result<Join, Status> {
    let channel = channel_key(&request.guild_id, &request.channel_id)?;
    let user_id = parse_user_id(&request.user_id)?;
    let username = request.username;
    if username.is_empty()
        || username.len() > MAX_USERNAME_BYTES
        || username.chars().any(char::is_control)
    {
        return Err(Status::invalid_argument(
            "username must be 1-64 bytes without control characters",
        ));
    }
    let mut sources = BTreeSet::new();
    for raw in &request.publish_sources {
        let stream = Stream::from_proto(*raw)
            .ok_or_else(|| Status::invalid_argument("unknown publish source"))?;
        if !sources.insert(stream) {
            return Err(Status::invalid_argument("duplicate publish source"));
        }
    }
    if !request.can_publish && !sources.is_empty() {
        return Err(Status::invalid_argument(
            "publish_sources must be empty without can_publish",
        ));
    }
    if sources.is_empty() && !request.can_subscribe {
        return Err(Status::invalid_argument("the join grants nothing"));
    }
    Ok(Join {
        channel,
        user_id,
        username,
        can_publish: request.can_publish && !sources.is_empty(),
        can_subscribe: request.can_subscribe,
        sources: sources.into_iter().collect(),
    })
}

/// A user id, checked canonical and kept as its text.
fn parse_user_id(raw: &str) -> Result<String, Status> {
    parse_id::<UserId>("user_id", raw).map(|id| id.to_string())
}

fn channel_key(guild_id: &str, channel_id: &str) -> Result<ChannelKey, Status> {
    Ok(ChannelKey {
        guild_id: parse_id("guild_id", guild_id)?,
        channel_id: parse_id("channel_id", channel_id)?,
    })
}

fn status(err: StoreError) -> Status {
    match err {
        StoreError::Refused(refused) => Status::resource_exhausted(refused.to_string()),
        other => {
            tracing::warn!(err = %other, "voice roster store failed; call refused");
            Status::unavailable("the voice roster is unavailable")
        }
    }
}
