//! Calling the search service: the api asks it for candidate hits on behalf
//! of REST callers, and has it rebuild or reconcile a guild's index.
//!
//! Unlike the other clients, the channel has no call timeout of its own:
//! a query must answer within a few hundred milliseconds while a rebuild
//! walks a whole guild, so each call takes its deadline. The service hears
//! it (`grpc-timeout`) and stops there; the client stops waiting at the
//! same moment, with `DEADLINE_EXCEEDED`, even when the service is stuck.
//! The channel connects lazily, so the caller starts while search is down.

use std::time::Duration;

use filament_proto::v1::search_client::SearchClient as ProtoClient;
use filament_proto::v1::{
    QueryRequest, RebuildRequest, ReconcileRequest, ReconcileResponse, SearchHit,
};
use filament_runtime::grpc_client::{GrpcChannel, GrpcClientMetrics};

use crate::ClientError;
use crate::error::Answer as _;

/// How this client's errors name the service.
const SERVICE: &str = "search";

#[derive(Clone)]
pub struct SearchClient {
    client: ProtoClient<GrpcChannel>,
}

impl SearchClient {
    /// A client for the search service at `url` (`http://host:port`);
    /// connecting fails after `connect_timeout`, each call after the
    /// deadline it is given; calls are timed in `grpc_clients`. Must be
    /// called inside a tokio runtime.
    pub fn new(
        url: &str,
        connect_timeout: Duration,
        grpc_clients: &GrpcClientMetrics,
    ) -> Result<Self, ClientError> {
        let channel =
            filament_runtime::grpc_client::connect(url, connect_timeout, None, grpc_clients)
                .map_err(|source| ClientError::InvalidUrl {
                    service: SERVICE,
                    source,
                })?;
        Ok(Self {
            client: ProtoClient::new(channel),
        })
    }

    /// Candidate hits for `request`, best first, within `deadline`. They
    /// are candidates only: the caller re-reads and authorizes each one.
    pub async fn query(
        &self,
        request: QueryRequest,
        deadline: Duration,
    ) -> Result<Vec<SearchHit>, ClientError> {
        let mut client = self.client.clone();
        Ok(within(deadline, request, |call| client.query(call))
            .await?
            .hits)
    }

    /// Re-indexes `guild_id` (everything, when empty) within `deadline`.
    /// Returns how many documents the rebuilt scope holds.
    pub async fn rebuild(&self, guild_id: &str, deadline: Duration) -> Result<u64, ClientError> {
        let mut client = self.client.clone();
        let request = RebuildRequest {
            guild_id: guild_id.to_owned(),
        };
        Ok(within(deadline, request, |call| client.rebuild(call))
            .await?
            .indexed)
    }

    /// Repairs the differences between `guild_id`'s index and the database
    /// within `deadline`, and says what it changed.
    pub async fn reconcile(
        &self,
        guild_id: &str,
        deadline: Duration,
    ) -> Result<ReconcileResponse, ClientError> {
        let mut client = self.client.clone();
        let request = ReconcileRequest {
            guild_id: guild_id.to_owned(),
        };
        within(deadline, request, |call| client.reconcile(call)).await
    }
}

/// Makes `call` with `message`, telling the service `deadline` and giving
/// up at it.
async fn within<M, T, F>(
    deadline: Duration,
    message: M,
    call: impl FnOnce(tonic::Request<M>) -> F,
) -> Result<T, ClientError>
where
    F: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    let mut request = tonic::Request::new(message);
    request.set_timeout(deadline);
    match tokio::time::timeout(deadline, call(request)).await {
        Ok(Err(status)) if timed_out(&status) => Err(missed(deadline)),
        Ok(answer) => answer.answer(SERVICE),
        Err(_elapsed) => Err(missed(deadline)),
    }
}

/// Tonic's channel enforces `grpc-timeout` on its side too, and reports it
/// as `CANCELLED`; whichever timer fires first, the caller must see the
/// same missed deadline.
fn timed_out(status: &tonic::Status) -> bool {
    let mut source = std::error::Error::source(status);
    while let Some(err) = source {
        if err.is::<tonic::TimeoutExpired>() {
            return true;
        }
        source = err.source();
    }
    false
}

fn missed(deadline: Duration) -> ClientError {
    ClientError::Call {
        service: SERVICE,
        status: tonic::Status::deadline_exceeded(format!("no answer within {deadline:?}")),
    }
}
