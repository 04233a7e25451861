//! `filament.v1.Search`: the thin tonic adapter over [`SearchService`].
//! It only converts wire values to domain values and back; errors map to
//! statuses in `error.rs`.

use std::sync::Arc;

use filament_proto::v1 as pb;
use filament_proto::v1::search_server::{Search, SearchServer};
use tonic::{Request, Response, Status};
use ulid::Ulid;

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

fn ulid(raw: &str, what: &'static str) -> Result<Ulid, SearchError> {
    Ulid::from_string(raw).map_err(|_| SearchError::InvalidArgument(what))
}

fn optional_ulid(raw: &str, what: &'static str) -> Result<Option<Ulid>, SearchError> {
    if raw.is_empty() {
        Ok(None)
    } else {
        ulid(raw, what).map(Some)
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
            guild_id: ulid(&request.guild_id, "guild_id must be a ULID")?,
            text: request.query,
            limit: request.limit,
            channel_id: optional_ulid(&request.channel_id, "channel_id must be a ULID")?,
            exclude_channel_ids: request
                .exclude_channel_ids
                .iter()
                .map(|id| ulid(id, "exclude_channel_ids must be ULIDs"))
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
        let guild_id = optional_ulid(&request.into_inner().guild_id, "guild_id must be a ULID")?;
        let indexed = self.service.rebuild(guild_id).await?;
        Ok(Response::new(pb::RebuildResponse { indexed }))
    }

    async fn reconcile(
        &self,
        request: Request<pb::ReconcileRequest>,
    ) -> Result<Response<pb::ReconcileResponse>, Status> {
        let guild_id = ulid(&request.into_inner().guild_id, "guild_id must be a ULID")?;
        let outcome = self.service.reconcile(guild_id).await?;
        Ok(Response::new(pb::ReconcileResponse {
            upserted: outcome.upserted,
            deleted: outcome.deleted,
        }))
    }
}
