//! The search service against a fake api feed: freshness (create, edit and
//! delete show in results), recovery (a restart resumes from the position
//! recorded in the index, missing nothing and applying nothing twice), and
//! rebuild and reconcile from the "database".

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use filament_ids::{ChannelId, GuildId, MessageId, UserId};
use filament_proto::v1 as pb;
use filament_proto::v1::message_feed_server::{MessageFeed, MessageFeedServer};
use filament_search::{Engine, IndexLocation, QueryRequest, Reconciled, SearchService};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use ulid::Ulid;

const DEADLINE: Duration = Duration::from_secs(10);

/// The api's side: a message table and a change log over it, served like
/// `services/api/src/feed.rs` serves the real ones (upserts carry the
/// content as it is when read).
#[derive(Clone, Default)]
struct FakeApi {
    state: Arc<Mutex<Db>>,
    committed: Arc<watch::Sender<u64>>,
}

#[derive(Default)]
struct Db {
    messages: BTreeMap<MessageId, pb::IndexedMessage>,
    log: Vec<(MessageId, GuildId, ChannelId)>,
}

impl FakeApi {
    fn db(&self) -> std::sync::MutexGuard<'_, Db> {
        self.state.lock().expect("db")
    }

    /// Creates or edits a message and logs it.
    fn upsert(&self, guild: GuildId, channel: ChannelId, id: MessageId, content: &str) {
        let seq = {
            let mut db = self.db();
            self.write_unlogged(&mut db, guild, channel, id, content);
            db.log.push((id, guild, channel));
            db.log.len() as u64
        };
        self.committed.send_replace(seq);
    }

    fn delete(&self, id: MessageId) {
        let seq = {
            let mut db = self.db();
            let message = db.messages.remove(&id).expect("message exists");
            let guild = message.guild_id.parse().expect("guild id");
            let channel = message.channel_id.parse().expect("channel id");
            db.log.push((id, guild, channel));
            db.log.len() as u64
        };
        self.committed.send_replace(seq);
    }

    /// A change that bypassed the log, which only reconcile or rebuild can
    /// bring into the index.
    fn write_unlogged(
        &self,
        db: &mut Db,
        guild: GuildId,
        channel: ChannelId,
        id: MessageId,
        content: &str,
    ) {
        db.messages.insert(
            id,
            pb::IndexedMessage {
                message_id: id.to_string(),
                guild_id: guild.to_string(),
                channel_id: channel.to_string(),
                author_id: UserId::generate().to_string(),
                content: content.to_owned(),
                created_at_unix: 1,
            },
        );
    }

    fn changes_after(&self, after: u64) -> Vec<pb::MessageChange> {
        let db = self.db();
        db.log
            .iter()
            .enumerate()
            .skip(usize::try_from(after).expect("small"))
            .map(|(n, (id, guild, channel))| {
                let seq = n as u64 + 1;
                match db.messages.get(id) {
                    Some(message) => pb::MessageChange {
                        seq,
                        kind: pb::ChangeKind::Upsert.into(),
                        message: Some(message.clone()),
                    },
                    None => pb::MessageChange {
                        seq,
                        kind: pb::ChangeKind::Delete.into(),
                        message: Some(pb::IndexedMessage {
                            message_id: id.to_string(),
                            guild_id: guild.to_string(),
                            channel_id: channel.to_string(),
                            ..Default::default()
                        }),
                    },
                }
            })
            .collect()
    }

    async fn serve(&self) -> (SocketAddr, CancellationToken) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let stop = CancellationToken::new();
        let server = tonic::transport::Server::builder()
            .add_service(MessageFeedServer::new(self.clone()))
            .serve_with_incoming_shutdown(
                TcpListenerStream::new(listener),
                stop.clone().cancelled_owned(),
            );
        tokio::spawn(server);
        (addr, stop)
    }
}

#[tonic::async_trait]
impl MessageFeed for FakeApi {
    type FollowStream = ReceiverStream<Result<pb::MessageChange, Status>>;

    async fn follow(
        &self,
        request: Request<pb::FollowRequest>,
    ) -> Result<Response<Self::FollowStream>, Status> {
        let mut after = request.into_inner().after_seq;
        let (tx, rx) = mpsc::channel(64);
        let api = self.clone();
        tokio::spawn(async move {
            let mut committed = api.committed.subscribe();
            loop {
                committed.borrow_and_update();
                for change in api.changes_after(after) {
                    after = change.seq;
                    if tx.send(Ok(change)).await.is_err() {
                        return;
                    }
                }
                tokio::select! {
                    changed = committed.changed() => if changed.is_err() { return },
                    () = tx.closed() => return,
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn guild_messages(
        &self,
        request: Request<pb::GuildMessagesRequest>,
    ) -> Result<Response<pb::GuildMessagesResponse>, Status> {
        let request = request.into_inner();
        let db = self.db();
        let messages = db
            .messages
            .values()
            .filter(|m| m.guild_id == request.guild_id && m.message_id > request.after_message_id)
            .take(request.limit as usize)
            .cloned()
            .collect();
        Ok(Response::new(pb::GuildMessagesResponse { messages }))
    }
}

struct RunningSearch {
    engine: Engine,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

async fn start_search(feed: SocketAddr, index: IndexLocation) -> RunningSearch {
    let mut config =
        filament_search::Config::new(([127, 0, 0, 1], 0).into(), format!("http://{feed}"));
    config.index = index;
    config.indexer.commit_interval = Duration::from_millis(20);
    let bound = filament_search::bind(config).await.expect("search binds");
    let engine = bound.engine();
    let stop = CancellationToken::new();
    let task = tokio::spawn(bound.run(stop.clone()));
    RunningSearch { engine, stop, task }
}

impl RunningSearch {
    async fn stop(self) {
        self.stop.cancel();
        self.task
            .await
            .expect("joined")
            .expect("search stops cleanly");
    }
}

async fn hits(engine: &Engine, guild: GuildId, text: &str) -> Vec<MessageId> {
    let mut ids: Vec<_> = engine
        .query(QueryRequest {
            guild_id: guild,
            text: text.to_owned(),
            limit: 50,
            channel_id: None,
            exclude_channel_ids: Vec::new(),
        })
        .await
        .expect("query")
        .into_iter()
        .map(|hit| hit.message_id)
        .collect();
    ids.sort();
    ids
}

/// Polls until `text` finds exactly `expected` in `guild`.
async fn eventually_hits(engine: &Engine, guild: GuildId, text: &str, expected: &[MessageId]) {
    let mut expected = expected.to_vec();
    expected.sort();
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let got = hits(engine, guild, text).await;
        if got == expected {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{text:?}: expected {expected:?}, still {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn eventually_committed(engine: &Engine, seq: u64) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while engine.stats().committed_seq() < seq {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never committed {seq}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn create_edit_and_delete_show_in_results() {
    let api = FakeApi::default();
    let (addr, _stop) = api.serve().await;
    let search = start_search(addr, IndexLocation::Ram).await;
    let (guild, channel) = (GuildId::generate(), ChannelId::generate());
    let (a, b) = (MessageId::generate(), MessageId::generate());

    api.upsert(guild, channel, a, "first draft about apples");
    api.upsert(guild, channel, b, "apples and pears");
    eventually_hits(&search.engine, guild, "apples", &[a, b]).await;

    api.upsert(guild, channel, a, "final version about oranges");
    eventually_hits(&search.engine, guild, "oranges", &[a]).await;
    assert_eq!(hits(&search.engine, guild, "apples").await, [b]);

    api.delete(b);
    eventually_hits(&search.engine, guild, "pears", &[]).await;
    assert!(hits(&search.engine, guild, "apples").await.is_empty());
    search.stop().await;
}

#[tokio::test]
async fn a_restart_resumes_from_the_recorded_position_without_loss_or_duplicates() {
    let api = FakeApi::default();
    let (addr, _stop) = api.serve().await;
    let dir = std::env::temp_dir().join(format!("filament-search-restart-{}", Ulid::generate()));
    let (guild, channel) = (GuildId::generate(), ChannelId::generate());
    let ids: Vec<MessageId> = (0..3).map(|_| MessageId::generate()).collect();
    for id in &ids {
        api.upsert(guild, channel, *id, "original words");
    }

    let search = start_search(addr, IndexLocation::Dir(dir.clone())).await;
    eventually_committed(&search.engine, 3).await;
    eventually_hits(&search.engine, guild, "original", &ids).await;
    search.stop().await;

    // Missed while the search service was down: an edit, a delete and a
    // create.
    let new = MessageId::generate();
    api.upsert(guild, channel, ids[0], "edited words");
    api.delete(ids[1]);
    api.upsert(guild, channel, new, "brand new words");

    let search = start_search(addr, IndexLocation::Dir(dir.clone())).await;
    eventually_committed(&search.engine, 6).await;
    // Exactly the three missed changes were applied: nothing was replayed
    // from before the recorded position...
    assert_eq!(search.engine.stats().applied_changes(), 3);
    eventually_hits(&search.engine, guild, "words", &[ids[0], ids[2], new]).await;
    assert_eq!(hits(&search.engine, guild, "original").await, [ids[2]]);
    assert_eq!(hits(&search.engine, guild, "edited").await, [ids[0]]);
    // ...and no document is there twice.
    assert_eq!(search.engine.num_docs(), 3);
    search.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn reconcile_and_rebuild_bring_a_guild_back_to_the_database() {
    let api = FakeApi::default();
    let (addr, _stop) = api.serve().await;
    let search = start_search(addr, IndexLocation::Ram).await;
    let (guild, other_guild, channel) = (
        GuildId::generate(),
        GuildId::generate(),
        ChannelId::generate(),
    );
    let (kept, changed, removed) = (
        MessageId::generate(),
        MessageId::generate(),
        MessageId::generate(),
    );
    let elsewhere = MessageId::generate();
    api.upsert(guild, channel, kept, "steady words");
    api.upsert(guild, channel, changed, "old words");
    api.upsert(guild, channel, removed, "doomed words");
    api.upsert(other_guild, channel, elsewhere, "other words");
    eventually_committed(&search.engine, 4).await;

    // The database drifts from the log: an edit, a delete and a create
    // that were never logged.
    let added = MessageId::generate();
    {
        let mut db = api.db();
        api.write_unlogged(&mut db, guild, channel, changed, "new words");
        db.messages.remove(&removed);
        api.write_unlogged(&mut db, guild, channel, added, "added words");
    }
    assert_eq!(
        search.engine.reconcile(guild).await.expect("reconcile"),
        Reconciled {
            upserted: 2,
            deleted: 1
        }
    );
    assert_eq!(hits(&search.engine, guild, "words").await, {
        let mut ids = vec![kept, changed, added];
        ids.sort();
        ids
    });
    assert_eq!(hits(&search.engine, guild, "old").await, []);
    // A second pass finds nothing left to repair.
    assert_eq!(
        search.engine.reconcile(guild).await.expect("reconcile"),
        Reconciled::default()
    );

    // More drift, repaired by a rebuild of the guild; the other guild is
    // untouched.
    {
        let mut db = api.db();
        db.messages.remove(&kept);
        api.write_unlogged(&mut db, guild, channel, changed, "rebuilt words");
    }
    assert_eq!(
        search.engine.rebuild(Some(guild)).await.expect("rebuild"),
        2
    );
    assert_eq!(hits(&search.engine, guild, "words").await, {
        let mut ids = vec![changed, added];
        ids.sort();
        ids
    });
    assert_eq!(hits(&search.engine, guild, "rebuilt").await, [changed]);
    assert_eq!(
        hits(&search.engine, other_guild, "words").await,
        [elsewhere]
    );

    // The feed still flows after both.
    let later = MessageId::generate();
    api.upsert(guild, channel, later, "later words");
    eventually_hits(&search.engine, guild, "later", &[later]).await;

    // A whole-index rebuild replays the log from the start.
    search.engine.rebuild(None).await.expect("rebuild all");
    eventually_hits(&search.engine, other_guild, "other", &[elsewhere]).await;
    eventually_hits(&search.engine, guild, "later", &[later]).await;
    search.stop().await;
}
