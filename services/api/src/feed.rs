//! `filament.v1.MessageFeed`: the message change log (`store/message_log.rs`)
//! served to the search service, which follows it to keep its index. A
//! follower names the last position it applied and gets every later change
//! in order, then each new one as it commits: this process's commits wake
//! the stream at once; other replicas' commits are picked up by a re-read
//! every [`REREAD_INTERVAL`]. See docs/adr/0002-search-feed.md.

use std::time::Duration;

use filament_proto::v1 as pb;
use filament_proto::v1::message_feed_server::{MessageFeed, MessageFeedServer};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::domain::parse_id;
use crate::state::AppState;
use crate::store::{LoggedChange, MessageRecord};

/// Changes read from the database per query, and queued per stream.
const BATCH: u32 = 512;
/// How often an idle stream re-reads the log, for changes committed by
/// another api replica (which do not wake this one).
const REREAD_INTERVAL: Duration = Duration::from_millis(500);
/// The largest page of `GuildMessages`.
const MAX_GUILD_PAGE: u32 = 1000;

pub struct MessageFeedService {
    state: AppState,
    /// Ends every stream, so that gRPC can stop at shutdown.
    shutdown: CancellationToken,
}

impl MessageFeedService {
    pub fn server(state: AppState, shutdown: CancellationToken) -> MessageFeedServer<Self> {
        MessageFeedServer::new(Self { state, shutdown })
    }
}

#[tonic::async_trait]
impl MessageFeed for MessageFeedService {
    type FollowStream = ReceiverStream<Result<pb::MessageChange, Status>>;

    async fn follow(
        &self,
        request: Request<pb::FollowRequest>,
    ) -> Result<Response<Self::FollowStream>, Status> {
        let after_seq = request.into_inner().after_seq;
        let (tx, rx) = mpsc::channel(BATCH as usize);
        tokio::spawn(follow(
            self.state.clone(),
            after_seq,
            tx,
            self.shutdown.clone(),
        ));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn guild_messages(
        &self,
        request: Request<pb::GuildMessagesRequest>,
    ) -> Result<Response<pb::GuildMessagesResponse>, Status> {
        let request = request.into_inner();
        let guild_id =
            parse_id(&request.guild_id).map_err(|_| Status::invalid_argument("bad guild_id"))?;
        let after = match request.after_message_id.as_str() {
            "" => None,
            raw => Some(parse_id(raw).map_err(|_| Status::invalid_argument("bad message id"))?),
        };
        if !(1..=MAX_GUILD_PAGE).contains(&request.limit) {
            return Err(Status::invalid_argument("limit must be 1..=1000"));
        }
        let records = self
            .state
            .store()
            .guild_messages_page(guild_id, after, request.limit)
            .await
            .map_err(crate::ApiError::from)?;
        Ok(Response::new(pb::GuildMessagesResponse {
            messages: records.iter().map(indexed_message).collect(),
        }))
    }
}

/// Sends every change after `after_seq`, then waits for more, until the
/// follower goes away or the api shuts down. Ending returns cleanly, so the
/// follower can tell a shutdown from a failure.
async fn follow(
    state: AppState,
    mut after_seq: u64,
    tx: mpsc::Sender<Result<pb::MessageChange, Status>>,
    shutdown: CancellationToken,
) {
    let mut committed = state.store().watch_message_log();
    loop {
        // Marked seen before reading, so a commit landing during the read
        // wakes the wait below instead of being missed.
        committed.borrow_and_update();
        let batch = match state.store().message_changes_after(after_seq, BATCH).await {
            Ok(batch) => batch,
            Err(err) => {
                tracing::warn!(%err, after_seq, "cannot read the message log; ending the feed");
                let _ = tx
                    .send(Err(Status::unavailable("message log unavailable")))
                    .await;
                return;
            }
        };
        let full = batch.len() == BATCH as usize;
        for change in batch {
            after_seq = change.seq;
            tokio::select! {
                sent = tx.send(Ok(message_change(change))) => if sent.is_err() { return },
                () = shutdown.cancelled() => return,
            }
        }
        if full {
            continue;
        }
        tokio::select! {
            changed = committed.changed() => {
                if changed.is_err() {
                    // The store is gone; only the timer can wake us now.
                    tokio::time::sleep(REREAD_INTERVAL).await;
                }
            }
            () = tokio::time::sleep(REREAD_INTERVAL) => {}
            () = tx.closed() => return,
            () = shutdown.cancelled() => return,
        }
    }
}

fn message_change(change: LoggedChange) -> pb::MessageChange {
    let (kind, message) = match &change.message {
        Some(record) => (pb::ChangeKind::Upsert, indexed_message(record)),
        None => (
            pb::ChangeKind::Delete,
            pb::IndexedMessage {
                message_id: change.message_id.to_string(),
                guild_id: change.guild_id.to_string(),
                channel_id: change.channel_id.to_string(),
                ..pb::IndexedMessage::default()
            },
        ),
    };
    pb::MessageChange {
        seq: change.seq,
        kind: kind.into(),
        message: Some(message),
    }
}

fn indexed_message(record: &MessageRecord) -> pb::IndexedMessage {
    pb::IndexedMessage {
        message_id: record.message_id.to_string(),
        guild_id: record.guild_id.to_string(),
        channel_id: record.channel_id.to_string(),
        author_id: record.author_id.to_string(),
        content: record.content.clone(),
        created_at_unix: record.created_at_unix,
    }
}
