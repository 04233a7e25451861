//! The search service's domain: [`SearchService`], the questions the api
//! asks, and [`Engine`], its implementation over the index and the
//! indexer. The gRPC adapter (`grpc.rs`), the all-in-one stack and the
//! tests all go through this trait.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use filament_ids::{ChannelId, GuildId};
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::error::SearchError;
use crate::index::{Hit, MessageIndex, SearchRequest};
use crate::indexer::{Command, IndexerStats, Reconciled};
use crate::metrics::QueryOutcome;

/// Largest page of hits (PROTOCOL.md §4.6).
pub const MAX_LIMIT: u32 = 50;
/// Most channels one query may exclude (a guild lists at most 500; the
/// margin covers channels deleted and recreated between rounds).
pub const MAX_EXCLUDED_CHANNELS: usize = 1000;

/// A query as the api sends it, before any cap is checked.
#[derive(Debug, Clone)]
pub struct QueryRequest {
    pub guild_id: GuildId,
    pub text: String,
    pub limit: u32,
    pub channel_id: Option<ChannelId>,
    pub exclude_channel_ids: Vec<ChannelId>,
}

#[async_trait]
pub trait SearchService: Send + Sync + 'static {
    /// Candidate hits, best first. Never an authorization: the caller
    /// checks each hit's channel.
    async fn query(&self, request: QueryRequest) -> Result<Vec<Hit>, SearchError>;
    /// Re-indexes one guild from the database (or, with `None`, clears the
    /// index and replays the whole log). Returns the documents indexed.
    async fn rebuild(&self, guild_id: Option<GuildId>) -> Result<u64, SearchError>;
    /// Repairs one guild's documents that differ from the database.
    async fn reconcile(&self, guild_id: GuildId) -> Result<Reconciled, SearchError>;
}

/// The service: queries on the blocking pool, at most `max_concurrent` at
/// once and each within `timeout`; maintenance through the indexer.
#[derive(Clone)]
pub struct Engine {
    index: MessageIndex,
    commands: mpsc::Sender<Command>,
    stats: Arc<IndexerStats>,
    queries: Arc<Semaphore>,
    timeout: Duration,
}

impl Engine {
    pub(crate) fn new(
        index: MessageIndex,
        commands: mpsc::Sender<Command>,
        stats: Arc<IndexerStats>,
        max_concurrent: usize,
        timeout: Duration,
    ) -> Self {
        Self {
            index,
            commands,
            stats,
            queries: Arc::new(Semaphore::new(max_concurrent.max(1))),
            timeout,
        }
    }

    /// What the indexer has done so far.
    pub fn stats(&self) -> &IndexerStats {
        &self.stats
    }

    /// Documents searchable now.
    pub fn num_docs(&self) -> u64 {
        self.index.num_docs()
    }

    async fn command<T>(
        &self,
        command: impl FnOnce(oneshot::Sender<Result<T, SearchError>>) -> Command,
    ) -> Result<T, SearchError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(command(reply))
            .await
            .map_err(|_| SearchError::ShuttingDown)?;
        answer.await.map_err(|_| SearchError::ShuttingDown)?
    }
}

fn validate(request: QueryRequest) -> Result<SearchRequest, SearchError> {
    if !(1..=MAX_LIMIT).contains(&request.limit) {
        return Err(SearchError::InvalidArgument("limit must be 1..=50"));
    }
    if request.exclude_channel_ids.len() > MAX_EXCLUDED_CHANNELS {
        return Err(SearchError::InvalidArgument("too many excluded channels"));
    }
    Ok(SearchRequest {
        guild_id: request.guild_id,
        query: crate::query::parse(&request.text)?,
        limit: request.limit as usize,
        channel_id: request.channel_id,
        exclude_channel_ids: request.exclude_channel_ids,
    })
}

#[async_trait]
impl SearchService for Engine {
    async fn query(&self, request: QueryRequest) -> Result<Vec<Hit>, SearchError> {
        // Every cap is checked here, before tantivy sees anything.
        let request = validate(request)?;
        let index = self.index.clone();
        let queries = Arc::clone(&self.queries);
        let run = async move {
            // Waiting for a slot counts against the budget too.
            let permit = queries
                .acquire_owned()
                .await
                .map_err(|_| SearchError::ShuttingDown)?;
            tokio::task::spawn_blocking(move || {
                // The permit lives as long as the search, even one that
                // outlived its caller's timeout.
                let _permit = permit;
                index.search(&request)
            })
            .await
            .map_err(|err| {
                SearchError::Index(crate::index::IndexError::Io(std::io::Error::other(
                    err.to_string(),
                )))
            })?
            .map_err(SearchError::from)
        };
        let started = std::time::Instant::now();
        let result = tokio::time::timeout(self.timeout, run)
            .await
            .map_err(|_| SearchError::Timeout(self.timeout))
            .and_then(|result| result);
        let outcome = match &result {
            Ok(_) => QueryOutcome::Ok,
            Err(SearchError::Timeout(_)) => QueryOutcome::Timeout,
            Err(_) => QueryOutcome::Error,
        };
        self.stats
            .metrics()
            .query_ran(outcome, started.elapsed().as_secs_f64());
        result
    }

    async fn rebuild(&self, guild_id: Option<GuildId>) -> Result<u64, SearchError> {
        self.command(|reply| Command::Rebuild { guild_id, reply })
            .await
    }

    async fn reconcile(&self, guild_id: GuildId) -> Result<Reconciled, SearchError> {
        self.command(|reply| Command::Reconcile { guild_id, reply })
            .await
    }
}

#[cfg(test)]
mod tests {
    use filament_ids::MessageId;

    use super::*;
    use crate::index::{DocChange, IndexLocation, IndexedDoc, WriterConfig};

    fn engine(timeout: Duration) -> (Engine, GuildId) {
        let index =
            MessageIndex::open(&IndexLocation::Ram, WriterConfig::default()).expect("index");
        let guild_id = GuildId::generate();
        index
            .apply(&[DocChange::Upsert(IndexedDoc {
                message_id: MessageId::generate(),
                guild_id,
                channel_id: ChannelId::generate(),
                content: "hello there".to_owned(),
            })])
            .expect("apply");
        index.commit(1).expect("commit");
        let (commands, _) = mpsc::channel(1);
        let stats = Arc::new(IndexerStats::default());
        (Engine::new(index, commands, stats, 2, timeout), guild_id)
    }

    fn request(guild_id: GuildId, text: &str, limit: u32) -> QueryRequest {
        QueryRequest {
            guild_id,
            text: text.to_owned(),
            limit,
            channel_id: None,
            exclude_channel_ids: Vec::new(),
        }
    }

    #[tokio::test]
    async fn queries_answer_within_their_budget_or_time_out() {
        let (engine, guild) = engine(Duration::from_secs(5));
        assert_eq!(
            engine
                .query(request(guild, "hello", 20))
                .await
                .expect("hits")
                .len(),
            1
        );

        // Every search slot busy past the budget: a timeout, which gRPC
        // reports as a deadline (the api's 400).
        let (engine, guild) = self::tests::engine(Duration::from_millis(50));
        let mut held = Vec::new();
        while let Ok(permit) = Arc::clone(&engine.queries).try_acquire_owned() {
            held.push(permit);
        }
        let err = engine
            .query(request(guild, "hello", 20))
            .await
            .expect_err("timeout");
        assert!(matches!(err, SearchError::Timeout(_)));
        assert_eq!(
            tonic::Status::from(err).code(),
            tonic::Code::DeadlineExceeded
        );
        drop(held);
        assert_eq!(
            engine
                .query(request(guild, "hello", 20))
                .await
                .expect("hits")
                .len(),
            1
        );
    }

    #[tokio::test]
    async fn limits_and_caps_are_invalid_arguments() {
        let (engine, guild) = engine(Duration::from_secs(5));
        for bad in [
            request(guild, "hello", 0),
            request(guild, "hello", MAX_LIMIT + 1),
            request(guild, "a:b", 20),
            request(guild, &"x".repeat(300), 20),
            QueryRequest {
                exclude_channel_ids: vec![ChannelId::generate(); MAX_EXCLUDED_CHANNELS + 1],
                ..request(guild, "hello", 20)
            },
        ] {
            let err = engine.query(bad).await.expect_err("refused");
            assert_eq!(
                tonic::Status::from(err).code(),
                tonic::Code::InvalidArgument
            );
        }
        // Maintenance without an indexer: unavailable, not a hang.
        let err = engine.reconcile(guild).await.expect_err("no indexer");
        assert_eq!(tonic::Status::from(err).code(), tonic::Code::Unavailable);
    }
}
