//! `filament.v1.Search`: the thin tonic adapter over [`SearchService`].
//! It only converts wire values to domain values and back; errors map to
//! statuses in `error.rs`. Ids are parsed into `filament_ids`' typed ids,
//! which accept only canonical ULIDs; anything else is a
//! [`SearchError::InvalidArgument`] (the service's own message and
//! mapping, so not `filament_runtime::grpc::parse_id`'s status).

use std::str::FromStr;
use std::sync::Arc;

use filament_proto::v1 as pb;
use filament_proto::v1::search_server::{Search, SearchServer};
use tonic::{Request, Response, Status};

use crate::error::SearchError;
use crate::service::{QueryRequest, SearchService};

pub struct SearchGrpc {
    service: Arc<dyn SearchService>,
}

impl SearchGrpc {
    pub fn server(service: Arc<dyn SearchService>) -> SearchServer<Self> {
        SearchServer::new(Self { service })
    }
}

/// A typed id, or `what` as the invalid argument.
fn id<T: FromStr>(raw: &str, what: &'static str) -> Result<T, SearchError> {
    raw.parse().map_err(|_| SearchError::InvalidArgument(what))
}

/// An id of an optional field: empty is `None`.
fn optional_id<T: FromStr>(raw: &str, what: &'static str) -> Result<Option<T>, SearchError> {
    if raw.is_empty() {
        Ok(None)
    } else {
        id(raw, what).map(Some)
    }
}

#[tonic::async_trait]
impl Search for SearchGrpc {
    async fn query(
        &self,
        request: Request<pb::QueryRequest>,
    ) -> Result<Response<pb::QueryResponse>, Status> {
        let request = request.into_inner();
        let query = QueryRequest {
            guild_id: id(&request.guild_id, "guild_id must be a ULID")?,
            text: request.query,
            limit: request.limit,
            channel_id: optional_id(&request.channel_id, "channel_id must be a ULID")?,
            exclude_channel_ids: request
                .exclude_channel_ids
                .iter()
                .map(|raw| id(raw, "exclude_channel_ids must be ULIDs"))
                .collect::<Result<_, _>>()?,
        };
        let hits = self.service.query(query).await?;
        Ok(Response::new(pb::QueryResponse {
            hits: hits
                .into_iter()
                .map(|hit| pb::SearchHit {
                    message_id: hit.message_id.to_string(),
                    channel_id: hit.channel_id.to_string(),
                })
                .collect(),
        }))
    }

    async fn rebuild(
        &self,
        request: Request<pb::RebuildRequest>,
    ) -> Result<Response<pb::RebuildResponse>, Status> {
        let guild_id = optional_id(&request.into_inner().guild_id, "guild_id must be a ULID")?;
        let indexed = self.service.rebuild(guild_id).await?;
        Ok(Response::new(pb::RebuildResponse { indexed }))
    }

    async fn reconcile(
        &self,
        request: Request<pb::ReconcileRequest>,
    ) -> Result<Response<pb::ReconcileResponse>, Status> {
        let guild_id = id(&request.into_inner().guild_id, "guild_id must be a ULID")?;
        let outcome = self.service.reconcile(guild_id).await?;
        Ok(Response::new(pb::ReconcileResponse {
            upserted: outcome.upserted,
            deleted: outcome.deleted,
        }))
    }
}

#[cfg(test)]
mod tests {
    use filament_ids::{ChannelId, GuildId};

    use super::*;

    #[test]
    fn only_canonical_ids_pass_and_others_are_invalid_arguments() {
        let guild = GuildId::generate();
        let parsed: Result<GuildId, _> = id(&guild.to_string(), "guild_id must be a ULID");
        assert_eq!(parsed.ok(), Some(guild));
        for bad in [guild.to_string().to_lowercase(), "not-a-ulid".to_owned()] {
            let err = id::<GuildId>(&bad, "guild_id must be a ULID").expect_err("refused");
            let status = Status::from(err);
            assert_eq!(status.code(), tonic::Code::InvalidArgument);
            assert_eq!(
                status.message(),
                "invalid argument: guild_id must be a ULID"
            );
        }
        let none: Option<ChannelId> = optional_id("", "channel_id must be a ULID").expect("empty");
        assert_eq!(none, None);
    }
}
