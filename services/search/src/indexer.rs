//! The indexer: one task that follows the api's message change log
//! (`MessageFeed.Follow`) and is the only user of the index writer. It
//! applies changes in log order on the blocking pool, commits in batches
//! (see [`IndexerConfig::commit_due`], or every [`COMMIT_BATCH`] changes
//! during a catch-up), and records the log
//! position in each commit. Rebuilds and reconciles are commands to this
//! same task, so they interleave with the feed at a batch boundary and
//! never race it.
//!
//! The feed always carries a message's content as it is at read time, so a
//! rebuild or reconcile that reads the database after the index applied
//! position N, followed by the feed from N, converges on the database.
//!
//! The feed's ids are parsed into `filament_ids`' typed ids, canonically:
//! a change whose ids are not canonical ULIDs is skipped (and logged) like
//! any other malformed change.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use filament_ids::{GuildId, MessageId};
use filament_proto::v1 as pb;
use filament_proto::v1::message_feed_client::MessageFeedClient;
use filament_runtime::grpc_client::GrpcChannel;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_stream::StreamExt as _;
use tokio_util::sync::CancellationToken;
use tonic::Streaming;

use crate::error::SearchError;
use crate::index::{DocChange, IndexedDoc, MessageIndex};

/// Changes handed to the writer at once.
const APPLY_BATCH: usize = 1024;
/// Changes after which a catch-up commits even if more keep coming.
pub const COMMIT_BATCH: usize = 50_000;
/// Messages per `GuildMessages` page.
const GUILD_PAGE: u32 = 1000;
/// Documents a reconcile compares (PROTOCOL.md §4.6).
pub const MAX_RECONCILE_DOCS: usize = 10_000;
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy)]
pub struct IndexerConfig {
    /// How long a change waits to be committed, and so searchable, when
    /// the index has not committed for [`commit_spacing`](Self::commit_spacing).
    pub commit_interval: Duration,
    /// The least time from one commit to the next. A commit costs about
    /// the same however few changes it holds (a new segment, its files, a
    /// reader reload, later merges), so under a steady trickle this bounds
    /// the cost per second, while a change after a quiet spell is still
    /// searchable within `commit_interval`. Zero: every change waits only
    /// `commit_interval`.
    pub commit_spacing: Duration,
}

impl IndexerConfig {
    /// When changes uncommitted since `dirty_since` are committed, given
    /// the last commit (if any): `commit_interval` after the first of
    /// them, but not before `commit_spacing` after the last commit.
    #[must_use]
    pub fn commit_due(&self, dirty_since: Instant, last_commit: Option<Instant>) -> Instant {
        let after_change = dirty_since + self.commit_interval;
        last_commit.map_or(after_change, |last| {
            after_change.max(last + self.commit_spacing)
        })
    }
}

/// What the indexer did, for tests, logs and readiness.
#[derive(Debug, Default)]
pub struct IndexerStats {
    /// Log changes applied since this process started.
    applied_changes: AtomicU64,
    /// The log position of the last commit.
    committed_seq: AtomicU64,
    /// The series served on the admin listener.
    metrics: crate::metrics::SearchMetrics,
}

impl IndexerStats {
    pub fn metrics(&self) -> &crate::metrics::SearchMetrics {
        &self.metrics
    }

    pub fn applied_changes(&self) -> u64 {
        self.applied_changes.load(Ordering::Relaxed)
    }

    pub fn committed_seq(&self) -> u64 {
        self.committed_seq.load(Ordering::Relaxed)
    }
}

/// The outcome of a reconcile.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Reconciled {
    pub upserted: u64,
    pub deleted: u64,
}

pub(crate) enum Command {
    /// Re-index one guild from the database, or with `None` everything
    /// (by following the log again from position 0).
    Rebuild {
        guild_id: Option<GuildId>,
        reply: oneshot::Sender<Result<u64, SearchError>>,
    },
    Reconcile {
        guild_id: GuildId,
        reply: oneshot::Sender<Result<Reconciled, SearchError>>,
    },
}

pub(crate) struct Indexer {
    index: MessageIndex,
    feed: MessageFeedClient<GrpcChannel>,
    commands: mpsc::Receiver<Command>,
    config: IndexerConfig,
    stats: Arc<IndexerStats>,
    /// The last log position handed to the writer.
    applied_seq: u64,
    /// The last log position committed.
    committed_seq: u64,
    /// Received, not yet handed to the writer.
    pending: Vec<DocChange>,
    /// Handed to the writer (or pending) but not committed, and since when.
    uncommitted: usize,
    dirty_since: Option<Instant>,
    /// When the last commit ended.
    last_commit: Option<Instant>,
}

/// What to do with the feed after a command.
enum AfterCommand {
    Continue,
    Refollow,
}

impl Indexer {
    pub(crate) fn new(
        index: MessageIndex,
        feed: MessageFeedClient<GrpcChannel>,
        commands: mpsc::Receiver<Command>,
        config: IndexerConfig,
        stats: Arc<IndexerStats>,
    ) -> Result<Self, SearchError> {
        let committed_seq = index.committed_seq()?;
        stats.committed_seq.store(committed_seq, Ordering::Relaxed);
        Ok(Self {
            index,
            feed,
            commands,
            config,
            stats,
            applied_seq: committed_seq,
            committed_seq,
            pending: Vec::new(),
            uncommitted: 0,
            dirty_since: None,
            last_commit: None,
        })
    }

    /// Follows the feed until `shutdown`, then commits what it applied.
    pub(crate) async fn run(mut self, shutdown: CancellationToken) {
        tracing::info!(
            position = self.committed_seq,
            "indexer resuming from the recorded log position"
        );
        let mut stream: Option<Streaming<pb::MessageChange>> = None;
        let mut reconnect_at = Instant::now();
        let mut backoff = MIN_BACKOFF;
        loop {
            let commit_at = self
                .dirty_since
                .map(|since| self.config.commit_due(since, self.last_commit));
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                Some(command) = self.commands.recv() => {
                    if let AfterCommand::Refollow = self.handle(command).await {
                        stream = None;
                        reconnect_at = Instant::now();
                    }
                }
                () = sleep_until_opt(commit_at) => {
                    if let Err(err) = self.commit().await {
                        self.recover(&err).await;
                        stream = None;
                    }
                }
                () = tokio::time::sleep_until(reconnect_at), if stream.is_none() => {
                    match self.feed.follow(pb::FollowRequest { after_seq: self.applied_seq }).await {
                        Ok(response) => {
                            tracing::info!(after_seq = self.applied_seq, "following the message feed");
                            stream = Some(response.into_inner());
                            backoff = MIN_BACKOFF;
                        }
                        Err(status) => {
                            tracing::warn!(%status, "message feed unavailable; retrying");
                            reconnect_at = Instant::now() + backoff;
                            backoff = (backoff * 2).min(MAX_BACKOFF);
                        }
                    }
                }
                next = next_change(&mut stream) => match next {
                    Some(Ok(change)) => {
                        if let Err(err) = self.receive(change).await {
                            self.recover(&err).await;
                            stream = None;
                        }
                    }
                    Some(Err(status)) => {
                        tracing::warn!(%status, "message feed broke; reconnecting");
                        stream = None;
                        reconnect_at = Instant::now() + backoff;
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                    }
                    None => {
                        // A clean end: the api is shutting down or restarting.
                        stream = None;
                        reconnect_at = Instant::now() + MIN_BACKOFF;
                    }
                },
            }
        }
        if let Err(err) = self.commit().await {
            tracing::error!(%err, "cannot commit the index at shutdown; the next start replays");
        }
        let index = self.index.clone();
        if let Err(err) = blocking(move || index.close_writer()).await {
            tracing::error!(%err, "cannot close the index writer");
        }
        tracing::info!(position = self.committed_seq, "indexer stopped");
    }

    /// Takes one change from the feed.
    async fn receive(&mut self, change: pb::MessageChange) -> Result<(), SearchError> {
        if change.seq <= self.applied_seq {
            // Already applied (a replay after a reconnect).
            return Ok(());
        }
        self.applied_seq = change.seq;
        self.stats
            .metrics
            .positions(self.applied_seq, self.committed_seq);
        if let Some(doc) = doc_change(&change) {
            self.pending.push(doc);
        } else {
            tracing::warn!(seq = change.seq, "skipping a malformed change");
        }
        self.uncommitted += 1;
        self.dirty_since.get_or_insert_with(Instant::now);
        self.stats.applied_changes.fetch_add(1, Ordering::Relaxed);
        if self.uncommitted >= COMMIT_BATCH {
            self.commit().await
        } else if self.pending.len() >= APPLY_BATCH {
            self.flush().await
        } else {
            Ok(())
        }
    }

    /// Hands the pending changes to the writer.
    async fn flush(&mut self) -> Result<(), SearchError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let batch = std::mem::take(&mut self.pending);
        let index = self.index.clone();
        blocking(move || index.apply(&batch)).await
    }

    /// Makes everything received searchable and durable at `applied_seq`.
    async fn commit(&mut self) -> Result<(), SearchError> {
        self.flush().await?;
        if self.dirty_since.is_none() && self.committed_seq == self.applied_seq {
            return Ok(());
        }
        let (index, seq) = (self.index.clone(), self.applied_seq);
        let started = Instant::now();
        blocking(move || index.commit(seq)).await?;
        self.stats
            .metrics
            .committed_in(started.elapsed().as_secs_f64());
        self.committed_seq = seq;
        self.stats.committed_seq.store(seq, Ordering::Relaxed);
        self.stats.metrics.positions(self.applied_seq, seq);
        self.uncommitted = 0;
        self.dirty_since = None;
        self.last_commit = Some(Instant::now());
        Ok(())
    }

    /// After a failed write: drop everything uncommitted and go back to the
    /// last commit, from where the feed is followed again.
    async fn recover(&mut self, err: &SearchError) {
        tracing::error!(%err, position = self.committed_seq, "index write failed; rolling back");
        let index = self.index.clone();
        if let Err(err) = blocking(move || index.rollback()).await {
            tracing::error!(%err, "index rollback failed");
        }
        self.pending.clear();
        self.uncommitted = 0;
        self.dirty_since = None;
        self.applied_seq = self.committed_seq;
    }

    async fn handle(&mut self, command: Command) -> AfterCommand {
        match command {
            Command::Rebuild {
                guild_id: Some(guild_id),
                reply,
            } => {
                let result = self.rebuild_guild(guild_id).await;
                let after = self.settle(&result).await;
                let _ = reply.send(result);
                after
            }
            Command::Rebuild {
                guild_id: None,
                reply,
            } => {
                let result = self.clear_all().await;
                self.settle(&result).await;
                let _ = reply.send(result.map(|()| 0));
                // Position 0 now: the whole log is followed again.
                AfterCommand::Refollow
            }
            Command::Reconcile { guild_id, reply } => {
                let result = self.reconcile(guild_id).await;
                let after = self.settle(&result).await;
                let _ = reply.send(result);
                after
            }
        }
    }

    /// After a command: a failure rolls back to the last commit, and the
    /// feed must then be followed again from there.
    async fn settle<T>(&mut self, result: &Result<T, SearchError>) -> AfterCommand {
        match result {
            Ok(_) => AfterCommand::Continue,
            Err(err) => {
                self.recover(err).await;
                AfterCommand::Refollow
            }
        }
    }

    /// Drops the guild's documents and indexes its messages as the database
    /// has them now.
    async fn rebuild_guild(&mut self, guild_id: GuildId) -> Result<u64, SearchError> {
        self.commit().await?;
        let index = self.index.clone();
        blocking(move || index.delete_guild(guild_id)).await?;
        let mut indexed = 0;
        let mut after = None;
        loop {
            let page = self.guild_page(guild_id, after).await?;
            let Some(last) = page.last() else { break };
            after = Some(last.message_id);
            indexed += page.len() as u64;
            let full = page.len() == GUILD_PAGE as usize;
            let changes = page.into_iter().map(DocChange::Upsert).collect::<Vec<_>>();
            let index = self.index.clone();
            blocking(move || index.apply(&changes)).await?;
            if !full {
                break;
            }
        }
        self.dirty_since.get_or_insert_with(Instant::now);
        self.commit().await?;
        tracing::info!(%guild_id, indexed, "guild rebuilt");
        Ok(indexed)
    }

    /// Empties the index at position 0; the feed then replays the whole log.
    async fn clear_all(&mut self) -> Result<(), SearchError> {
        self.pending.clear();
        let index = self.index.clone();
        blocking(move || {
            index.delete_all()?;
            index.commit(0)
        })
        .await?;
        self.applied_seq = 0;
        self.committed_seq = 0;
        self.stats.committed_seq.store(0, Ordering::Relaxed);
        self.uncommitted = 0;
        self.dirty_since = None;
        tracing::info!("index cleared; replaying the message log from the start");
        Ok(())
    }

    /// Repairs the guild's documents that differ from the database: missing
    /// or stale ones are upserted, ones whose message is gone deleted.
    async fn reconcile(&mut self, guild_id: GuildId) -> Result<Reconciled, SearchError> {
        self.commit().await?;
        let mut source = Vec::new();
        let mut after = None;
        loop {
            let page = self.guild_page(guild_id, after).await?;
            let Some(last) = page.last() else { break };
            after = Some(last.message_id);
            let full = page.len() == GUILD_PAGE as usize;
            source.extend(page);
            if source.len() > MAX_RECONCILE_DOCS {
                return Err(SearchError::TooManyDocs(MAX_RECONCILE_DOCS));
            }
            if !full {
                break;
            }
        }
        let index = self.index.clone();
        let mut indexed: HashMap<MessageId, u64> =
            blocking(move || index.guild_docs(guild_id, MAX_RECONCILE_DOCS)).await?;
        let mut changes = Vec::new();
        let mut outcome = Reconciled::default();
        for doc in source {
            let current = crate::index::content_hash(&doc.content);
            if indexed.remove(&doc.message_id) != Some(current) {
                outcome.upserted += 1;
                changes.push(DocChange::Upsert(doc));
            }
        }
        for message_id in indexed.into_keys() {
            outcome.deleted += 1;
            changes.push(DocChange::Delete(message_id));
        }
        if !changes.is_empty() {
            let index = self.index.clone();
            blocking(move || index.apply(&changes)).await?;
            self.dirty_since.get_or_insert_with(Instant::now);
            self.commit().await?;
        }
        tracing::info!(%guild_id, ?outcome, "guild reconciled");
        Ok(outcome)
    }

    async fn guild_page(
        &mut self,
        guild_id: GuildId,
        after: Option<MessageId>,
    ) -> Result<Vec<IndexedDoc>, SearchError> {
        let response = self
            .feed
            .guild_messages(pb::GuildMessagesRequest {
                guild_id: guild_id.to_string(),
                after_message_id: after.map(|id| id.to_string()).unwrap_or_default(),
                limit: GUILD_PAGE,
            })
            .await
            .map_err(|status| SearchError::FeedUnavailable(status.to_string()))?;
        Ok(response
            .into_inner()
            .messages
            .iter()
            .filter_map(indexed_doc)
            .collect())
    }
}

async fn next_change(
    stream: &mut Option<Streaming<pb::MessageChange>>,
) -> Option<Result<pb::MessageChange, tonic::Status>> {
    match stream {
        Some(stream) => stream.next().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Runs index work on the blocking pool.
async fn blocking<T, F>(work: F) -> Result<T, SearchError>
where
    F: FnOnce() -> Result<T, crate::index::IndexError> + Send + 'static,
    T: Send + 'static,
{
    match tokio::task::spawn_blocking(work).await {
        Ok(result) => result.map_err(SearchError::from),
        Err(join) => Err(SearchError::Index(crate::index::IndexError::Io(
            std::io::Error::other(join.to_string()),
        ))),
    }
}

fn doc_change(change: &pb::MessageChange) -> Option<DocChange> {
    let message = change.message.as_ref()?;
    match pb::ChangeKind::try_from(change.kind).ok()? {
        pb::ChangeKind::Upsert => indexed_doc(message).map(DocChange::Upsert),
        pb::ChangeKind::Delete => message.message_id.parse().ok().map(DocChange::Delete),
        pb::ChangeKind::Unspecified => None,
    }
}

fn indexed_doc(message: &pb::IndexedMessage) -> Option<IndexedDoc> {
    Some(IndexedDoc {
        message_id: message.message_id.parse().ok()?,
        guild_id: message.guild_id.parse().ok()?,
        channel_id: message.channel_id.parse().ok()?,
        content: message.content.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_commit_waits_the_interval_and_keeps_its_spacing() {
        let policy = IndexerConfig {
            commit_interval: Duration::from_millis(100),
            commit_spacing: Duration::from_secs(1),
        };
        let t0 = Instant::now();
        let ms = |n: u64| Duration::from_millis(n);
        // First change ever, or after a quiet spell: the interval.
        assert_eq!(policy.commit_due(t0, None), t0 + ms(100));
        assert_eq!(policy.commit_due(t0 + ms(5000), Some(t0)), t0 + ms(5100));
        // Right after a commit: not before the spacing.
        assert_eq!(policy.commit_due(t0 + ms(50), Some(t0)), t0 + ms(1000));
        assert_eq!(policy.commit_due(t0 + ms(950), Some(t0)), t0 + ms(1050));
        // No spacing: only the interval counts.
        let eager = IndexerConfig {
            commit_spacing: Duration::ZERO,
            ..policy
        };
        assert_eq!(eager.commit_due(t0 + ms(50), Some(t0)), t0 + ms(150));
    }
}
