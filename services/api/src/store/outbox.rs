//! The event outbox: the realtime event of a write, stored in the write's own
//! transaction, so that committing a change and publishing its event are one
//! fact. Before it, a crash (or a request dropped by its timeout) between
//! the commit and `Fanout::publish` lost the event for good: the change was
//! in history and reached no subscriber. See docs/adr/0006-outbox.md.
//!
//! The store only keeps bytes: the api encodes the `filament.v1.Event`, and
//! its relay (`src/outbox.rs`) decodes and publishes it. Each row carries a
//! lease (`claimed_until_unix_ms`): the request path that wrote the row
//! holds it from the insert until the row is deleted once published (by
//! the relay's next turn, with every other row published meanwhile); a relay
//! claims only rows whose lease ran out, so on several replicas each
//! leftover is taken by one relay at a time.

use async_trait::async_trait;
use sqlx::{
    ColumnIndex, Database, Decode, Encode, Executor, IntoArguments, Row, Transaction, Type,
};
use ulid::Ulid;

use super::sql::{SqlStore, decode_id};
use super::{StoreError, StoreResult};

/// Ids one delete of published events takes at most.
const FORGET_CHUNK: usize = 1000;

/// An event to store with a write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxEvent {
    /// Unique; also the order relays publish leftovers in.
    pub event_id: Ulid,
    /// The encoded `filament.v1.Event`.
    pub payload: Vec<u8>,
    pub created_at_unix: i64,
    /// Until when the writer keeps the row to itself (it publishes right
    /// after its commit); a relay takes it only after this.
    pub claimed_until_unix_ms: i64,
}

/// Builds a reaction's event from the emoji's count after the change, which
/// only the reaction's transaction knows.
pub type ReactionOutbox<'a> = &'a (dyn Fn(i64) -> OutboxEvent + Send + Sync);

/// Builds a change's events from what only its transaction knows (a
/// request's parties, a version it bumped, what an update changed). The
/// store calls it at most once, inside the transaction, and only for a
/// write that happens.
pub type OutboxFor<'a, T> = &'a (dyn Fn(&T) -> Vec<OutboxEvent> + Send + Sync);

/// A stored event a relay claimed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxRecord {
    pub event_id: Ulid,
    pub payload: Vec<u8>,
}

#[async_trait]
pub trait OutboxStore: Send + Sync + 'static {
    /// Claims up to `limit` rows whose lease ended at or before `now_unix_ms`
    /// by extending it to `claimed_until_unix_ms`, and returns them oldest
    /// first. Concurrent claimers never get the same row while its new lease
    /// runs: the UPDATE re-checks the lease under the row lock.
    async fn claim_outbox(
        &self,
        now_unix_ms: i64,
        claimed_until_unix_ms: i64,
        limit: u32,
    ) -> StoreResult<Vec<OutboxRecord>>;

    /// Forgets published events. Ids that are already gone are ignored
    /// (another relay, or the request path, published them too).
    async fn outbox_published(&self, event_ids: &[Ulid]) -> StoreResult<()>;
}

impl<DB> SqlStore<DB>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    for<'q> String: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> Vec<u8>: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
{
    /// Stores `event` inside `tx`: it commits with the write, or not at all.
    pub(super) async fn enqueue_outbox(
        tx: &mut Transaction<'_, DB>,
        event: OutboxEvent,
    ) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO event_outbox \
             (event_id, payload, created_at_unix, claimed_until_unix_ms) \
             VALUES ($1, $2, $3, $4)",
        )
        .bind(event.event_id.to_string())
        .bind(event.payload)
        .bind(event.created_at_unix)
        .bind(event.claimed_until_unix_ms)
        .execute(&mut **tx)
        .await
        .map_err(super::sql::conflict_on("event_id"))?;
        Ok(())
    }

    /// Runs `delete`, a `DELETE … RETURNING` keyed by `$1` and `$2`, and
    /// stores `outbox` with it only if it removed a row: the shape of every
    /// removal that tells someone (a channel, a membership, a friendship).
    /// True if a row went.
    pub(super) async fn delete_with_outbox(
        &self,
        delete: &'static str,
        [first, second]: [String; 2],
        outbox: Vec<OutboxEvent>,
    ) -> StoreResult<bool> {
        let mut tx = self.pool.begin().await?;
        let removed = sqlx::query(delete)
            .bind(first)
            .bind(second)
            .fetch_all(&mut *tx)
            .await?;
        if removed.is_empty() {
            return Ok(false);
        }
        Self::enqueue_outbox_all(&mut tx, outbox).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Runs `delete`, a `DELETE … RETURNING` of at most one row keyed by
    /// `$1` and `$2`; if it removed the row, reads it with `decode` and
    /// stores the events `outbox` builds from that in the same transaction.
    /// `None` if no row went.
    pub(super) async fn delete_one_with_outbox<T: Send>(
        &self,
        delete: &'static str,
        [first, second]: [String; 2],
        decode: impl FnOnce(&DB::Row) -> Result<T, sqlx::Error> + Send,
        outbox: impl FnOnce(&T) -> Vec<OutboxEvent> + Send,
    ) -> StoreResult<Option<T>> {
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query(delete)
            .bind(first)
            .bind(second)
            .fetch_optional(&mut *tx)
            .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let removed = decode(&row)?;
        Self::enqueue_outbox_all(&mut tx, outbox(&removed)).await?;
        tx.commit().await?;
        Ok(Some(removed))
    }

    /// Stores each of `events`, in order, inside `tx`.
    pub(super) async fn enqueue_outbox_all(
        tx: &mut Transaction<'_, DB>,
        events: Vec<OutboxEvent>,
    ) -> StoreResult<()> {
        for event in events {
            Self::enqueue_outbox(tx, event).await?;
        }
        Ok(())
    }
}

#[async_trait]
impl<DB> OutboxStore for SqlStore<DB>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    for<'q> String: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> Vec<u8>: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'i> &'i str: ColumnIndex<DB::Row>,
{
    async fn claim_outbox(
        &self,
        now_unix_ms: i64,
        claimed_until_unix_ms: i64,
        limit: u32,
    ) -> StoreResult<Vec<OutboxRecord>> {
        // The outer lease condition is what makes concurrent claims safe on
        // Postgres without `SKIP LOCKED` (which SQLite does not parse): a
        // claimer that waited on another's row lock re-evaluates it on the
        // row as that one left it, finds the lease extended, and skips the
        // row. SQLite has a single writer, so claims never interleave.
        let rows = sqlx::query(
            "UPDATE event_outbox SET claimed_until_unix_ms = $2 \
             WHERE claimed_until_unix_ms <= $1 AND event_id IN ( \
               SELECT event_id FROM event_outbox WHERE claimed_until_unix_ms <= $1 \
               ORDER BY event_id LIMIT $3) \
             RETURNING event_id, payload",
        )
        .bind(now_unix_ms)
        .bind(claimed_until_unix_ms)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        let mut claimed = rows
            .iter()
            .map(|row| {
                Ok(OutboxRecord {
                    event_id: decode_id(row, "event_id")?,
                    payload: row.try_get("payload")?,
                })
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()
            .map_err(StoreError::from)?;
        // RETURNING promises no order.
        claimed.sort_by_key(|record| record.event_id);
        Ok(claimed)
    }

    async fn outbox_published(&self, event_ids: &[Ulid]) -> StoreResult<()> {
        // One statement per chunk: the relay hands over every id published
        // since its last turn, and a statement's bind parameters are capped
        // (32 766 on SQLite, 65 535 on Postgres).
        for chunk in event_ids.chunks(FORGET_CHUNK) {
            let placeholders = (1..=chunk.len())
                .map(|n| format!("${n}"))
                .collect::<Vec<_>>()
                .join(", ");
            let sql = format!("DELETE FROM event_outbox WHERE event_id IN ({placeholders})");
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
            for id in chunk {
                query = query.bind(id.to_string());
            }
            query.execute(&self.pool).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::sync::Arc;

    use filament_ids::{ChannelId, RoleId, UserId};

    use super::*;
    use crate::store::tests::{TextChannel, conformance, new_id};
    use crate::store::{
        AddMemberOutcome, AssignOutcome, Change, ChannelKind, ChannelRecord, CreateRoleOutcome,
        FriendRequestRecord, MemberRecord, MemberRole, MessageInsert, NewFriendRequest, NewSession,
        NewUser, ProfileChange, ReactionKey, RoleRecord, Store, StoreError,
    };

    conformance!(
        events_commit_with_their_write_and_are_claimed_in_order,
        a_write_that_does_not_happen_stores_no_event,
        a_lease_keeps_a_row_from_relays_until_it_ends,
        concurrent_claims_never_share_a_row,
        reactions_store_their_event_built_from_the_new_count,
        every_write_stores_its_events_and_a_refused_one_none,
    );

    /// A fixed clock, in milliseconds.
    const NOW_MS: i64 = 1_700_000_000_000;

    /// An event held by its writer until `NOW_MS + lease_ms`.
    fn event(generator: &mut ulid::Generator, lease_ms: i64) -> OutboxEvent {
        let event_id = generator.generate().expect("id");
        OutboxEvent {
            event_id,
            payload: event_id.to_string().into_bytes(),
            created_at_unix: 1,
            claimed_until_unix_ms: NOW_MS + lease_ms,
        }
    }

    fn ids(records: &[OutboxRecord]) -> Vec<Ulid> {
        records.iter().map(|r| r.event_id).collect()
    }

    async fn events_commit_with_their_write_and_are_claimed_in_order(store: Arc<dyn Store>) {
        let place = TextChannel::create(&*store).await;
        let mut generator = ulid::Generator::new();
        let (created, edited, deleted, attached) = (
            event(&mut generator, 0),
            event(&mut generator, 0),
            event(&mut generator, 0),
            event(&mut generator, 0),
        );
        let first = place.message("hello");
        let (g, c, m) = (place.guild_id, place.channel_id, first.message_id);
        store
            .create_message(first, Some(created.clone()))
            .await
            .expect("create");
        assert!(
            store
                .edit_message(g, c, m, "edited", Some(edited.clone()))
                .await
                .expect("edit")
        );
        assert!(
            store
                .delete_message(g, c, m, Some(deleted.clone()))
                .await
                .expect("delete")
                .is_some()
        );
        let inserted = store
            .create_message_with_attachments(
                place.message("hello"),
                &[],
                Some(attached.clone()),
                None,
            )
            .await
            .expect("create");
        assert_eq!(inserted, MessageInsert::Created);

        // Oldest first, with the bytes as written.
        let claimed = store
            .claim_outbox(NOW_MS, NOW_MS + 1000, 10)
            .await
            .expect("claim");
        assert_eq!(
            ids(&claimed),
            [
                created.event_id,
                edited.event_id,
                deleted.event_id,
                attached.event_id
            ]
        );
        assert_eq!(claimed[1].payload, edited.payload);
        // Claimed rows are held for the new lease.
        assert!(
            store
                .claim_outbox(NOW_MS + 999, NOW_MS + 2000, 10)
                .await
                .expect("claim")
                .is_empty()
        );
        // Published rows are gone; the others come back once the lease ends.
        store
            .outbox_published(&[created.event_id, deleted.event_id, new_id()])
            .await
            .expect("published");
        let again = store
            .claim_outbox(NOW_MS + 1000, NOW_MS + 2000, 1)
            .await
            .expect("claim");
        assert_eq!(ids(&again), [edited.event_id], "the limit holds");
        let rest = store
            .claim_outbox(NOW_MS + 1000, NOW_MS + 2000, 10)
            .await
            .expect("claim");
        assert_eq!(ids(&rest), [attached.event_id]);
        store
            .outbox_published(&[edited.event_id, attached.event_id])
            .await
            .expect("published");
        store.outbox_published(&[]).await.expect("nothing");
        assert!(
            store
                .claim_outbox(i64::MAX, i64::MAX, 10)
                .await
                .expect("claim")
                .is_empty()
        );
    }

    async fn a_write_that_does_not_happen_stores_no_event(store: Arc<dyn Store>) {
        let place = TextChannel::create(&*store).await;
        let mut generator = ulid::Generator::new();
        let (g, c) = (place.guild_id, place.channel_id);
        let missing = new_id();
        assert!(
            !store
                .edit_message(g, c, missing, "x", Some(event(&mut generator, 0)))
                .await
                .expect("edit")
        );
        assert!(
            store
                .delete_message(g, c, missing, Some(event(&mut generator, 0)))
                .await
                .expect("delete")
                .is_none()
        );
        // Rolled back with its message: the upload is not the author's.
        let refused = store
            .create_message_with_attachments(
                place.message("hello"),
                &[new_id()],
                Some(event(&mut generator, 0)),
                None,
            )
            .await
            .expect("create");
        assert_eq!(refused, MessageInsert::AttachmentUnavailable);
        // A failed insert takes its event with it.
        let record = place.message("hello");
        store
            .create_message(record.clone(), None)
            .await
            .expect("create");
        assert!(
            store
                .create_message(record, Some(event(&mut generator, 0)))
                .await
                .is_err()
        );
        assert!(
            store
                .claim_outbox(i64::MAX, i64::MAX, 10)
                .await
                .expect("claim")
                .is_empty()
        );
    }

    async fn a_lease_keeps_a_row_from_relays_until_it_ends(store: Arc<dyn Store>) {
        let place = TextChannel::create(&*store).await;
        let mut generator = ulid::Generator::new();
        let held = event(&mut generator, 5000);
        store
            .create_message(place.message("hello"), Some(held.clone()))
            .await
            .expect("create");
        // The writer still holds it: no relay takes it.
        assert!(
            store
                .claim_outbox(NOW_MS + 4999, NOW_MS + 9999, 10)
                .await
                .expect("claim")
                .is_empty()
        );
        // Its writer died: the lease ends and a relay takes it, once.
        let claimed = store
            .claim_outbox(NOW_MS + 5000, NOW_MS + 6000, 10)
            .await
            .expect("claim");
        assert_eq!(ids(&claimed), [held.event_id]);
        assert!(
            store
                .claim_outbox(NOW_MS + 5999, NOW_MS + 7000, 10)
                .await
                .expect("claim")
                .is_empty()
        );
        // That relay died too: the next one takes it after the new lease.
        let reclaimed = store
            .claim_outbox(NOW_MS + 6000, NOW_MS + 7000, 10)
            .await
            .expect("claim");
        assert_eq!(ids(&reclaimed), [held.event_id]);
    }

    async fn concurrent_claims_never_share_a_row(store: Arc<dyn Store>) {
        let place = TextChannel::create(&*store).await;
        let mut generator = ulid::Generator::new();
        let mut written = HashSet::new();
        for _ in 0..40 {
            let row = event(&mut generator, 0);
            written.insert(row.event_id);
            store
                .create_message(place.message("hello"), Some(row))
                .await
                .expect("create");
        }
        // Eight relays on one database, each claiming small batches until
        // nothing is left, all within one lease.
        let relays: Vec<_> = (0..8)
            .map(|_| {
                let store = Arc::clone(&store);
                tokio::spawn(async move {
                    let mut mine = Vec::new();
                    loop {
                        let claimed = store
                            .claim_outbox(NOW_MS, NOW_MS + 60_000, 3)
                            .await
                            .expect("claim");
                        if claimed.is_empty() {
                            return mine;
                        }
                        mine.extend(ids(&claimed));
                    }
                })
            })
            .collect();
        let mut seen = Vec::new();
        for relay in relays {
            seen.extend(relay.await.expect("relay"));
        }
        let unique: HashSet<_> = seen.iter().copied().collect();
        assert_eq!(unique.len(), seen.len(), "a row was claimed twice");
        assert_eq!(unique, written);
    }

    async fn reactions_store_their_event_built_from_the_new_count(store: Arc<dyn Store>) {
        let place = TextChannel::create(&*store).await;
        let target = place.message("hello");
        store
            .create_message(target.clone(), None)
            .await
            .expect("create");
        let key = ReactionKey {
            guild_id: place.guild_id,
            channel_id: place.channel_id,
            message_id: target.message_id,
            emoji: "👍".to_owned(),
            user_id: place.author,
        };
        // The payload records the count the transaction saw.
        let built = |event_id: Ulid| {
            move |count: i64| OutboxEvent {
                event_id,
                payload: count.to_string().into_bytes(),
                created_at_unix: 1,
                claimed_until_unix_ms: NOW_MS,
            }
        };
        let (added, repeated, removed, absent) = (new_id(), new_id(), new_id(), new_id());
        store
            .add_reaction(key.clone(), 1, Some(&built(added)))
            .await
            .expect("add");
        // Changes nothing, so stores nothing.
        store
            .add_reaction(key.clone(), 1, Some(&built(repeated)))
            .await
            .expect("add");
        store
            .remove_reaction(key.clone(), Some(&built(removed)))
            .await
            .expect("remove");
        store
            .remove_reaction(key, Some(&built(absent)))
            .await
            .expect("remove");
        let mut claimed = store
            .claim_outbox(NOW_MS, NOW_MS + 1, 10)
            .await
            .expect("claim");
        claimed.sort_by_key(|r| r.payload.clone());
        let seen: Vec<_> = claimed
            .iter()
            .map(|r| (r.event_id, String::from_utf8_lossy(&r.payload).into_owned()))
            .collect();
        assert_eq!(seen, [(removed, "0".to_owned()), (added, "1".to_owned())]);
    }

    /// Beyond messages: channel, member, role, session, friend and profile
    /// writes store the rows they are given, or that their transaction
    /// builds, with the change; a refused write (a duplicate, something
    /// missing, a cap, a taken name) stores none.
    async fn every_write_stores_its_events_and_a_refused_one_none(store: Arc<dyn Store>) {
        let place = TextChannel::create(&*store).await;
        let (g, owner) = (place.guild_id, place.author);
        let mut generator = ulid::Generator::new();
        let mut stored = Vec::new();

        // Channels: created once; a duplicate id rolls its row back.
        let channel = ChannelRecord {
            channel_id: ChannelId::generate(),
            guild_id: g,
            name: "new".to_owned(),
            kind: ChannelKind::Text,
            created_at_unix: 1,
        };
        let created = event(&mut generator, 0);
        store
            .create_channel(channel.clone(), vec![created.clone()])
            .await
            .expect("create");
        stored.push(created.event_id);
        let duplicate = store
            .create_channel(channel.clone(), vec![event(&mut generator, 0)])
            .await;
        assert!(matches!(duplicate, Err(StoreError::Conflict(_))));
        // A rename builds its row from what its transaction saw; a rename
        // of no channel builds nothing.
        let renamed = event(&mut generator, 0);
        let build = |change: &Change<ChannelRecord>| {
            assert_eq!(
                (change.before.name.as_str(), change.after.name.as_str()),
                ("new", "renamed")
            );
            vec![renamed.clone()]
        };
        let change = store
            .rename_channel(g, channel.channel_id, "renamed".to_owned(), &build)
            .await
            .expect("rename");
        assert!(change.is_some());
        stored.push(renamed.event_id);
        let missing = store
            .rename_channel(g, new_id(), "x".to_owned(), &build)
            .await
            .expect("rename");
        assert!(missing.is_none());
        let unknown_channel = new_id();
        let gone = store
            .delete_channel(g, unknown_channel, vec![event(&mut generator, 0)])
            .await
            .expect("delete");
        assert!(!gone);

        // Members: only a new membership stores its row, and a kick only
        // once.
        let user = new_id();
        store
            .create_user(NewUser {
                user_id: user,
                username: "second".to_owned(),
                password_hash: "x".to_owned(),
                created_at_unix: 1,
            })
            .await
            .expect("user");
        let member = MemberRecord {
            guild_id: g,
            user_id: user,
            role: MemberRole::Member,
            joined_at_unix: 1,
        };
        let added = event(&mut generator, 0);
        let outcome = store
            .add_member_unless_banned(member.clone(), vec![added.clone()])
            .await
            .expect("add");
        assert_eq!(outcome, AddMemberOutcome::Added);
        stored.push(added.event_id);
        let outcome = store
            .add_member_unless_banned(member, vec![event(&mut generator, 0)])
            .await
            .expect("add");
        assert_eq!(outcome, AddMemberOutcome::AlreadyMember);
        let kicked = event(&mut generator, 0);
        let removed = store
            .remove_member(g, user, vec![kicked.clone()])
            .await
            .expect("kick");
        assert!(removed);
        stored.push(kicked.event_id);
        let removed = store
            .remove_member(g, user, vec![event(&mut generator, 0)])
            .await
            .expect("kick");
        assert!(!removed);

        // Roles: over the cap, or assigned to a non-member, nothing.
        let role = RoleRecord {
            role_id: RoleId::generate(),
            guild_id: g,
            name: "crew".to_owned(),
            position: 5,
            builtin: None,
            permissions: 0,
            color_hex: None,
            created_at_unix: 1,
        };
        let outcome = store
            .create_role(role.clone(), 0, vec![event(&mut generator, 0)])
            .await
            .expect("create");
        assert_eq!(outcome, CreateRoleOutcome::QuotaExceeded);
        let role_created = event(&mut generator, 0);
        let outcome = store
            .create_role(role.clone(), 64, vec![role_created.clone()])
            .await
            .expect("create");
        assert_eq!(outcome, CreateRoleOutcome::Created);
        stored.push(role_created.event_id);
        let outcome = store
            .assign_role(g, user, role.role_id, 1, 16, vec![event(&mut generator, 0)])
            .await
            .expect("assign");
        assert_eq!(outcome, AssignOutcome::NotMember);

        // Sessions: the revoking transaction names the session's user; a
        // wrong hash revokes, and stores, nothing.
        let session_id = new_id();
        store
            .create_session(NewSession {
                session_id,
                user_id: owner,
                refresh_token_hash: "h".to_owned(),
                expires_at_unix: i64::MAX,
            })
            .await
            .expect("session");
        let revoked = event(&mut generator, 0);
        let build = |user_id: &UserId| {
            assert_eq!(*user_id, owner);
            vec![revoked.clone()]
        };
        let refused = store
            .revoke_session(session_id, "wrong", &build)
            .await
            .expect("revoke");
        assert_eq!(refused, None);
        let ended = store
            .revoke_session(session_id, "h", &build)
            .await
            .expect("revoke");
        assert_eq!(ended, Some(owner));
        stored.push(revoked.event_id);

        // Friends: a request to nobody, or unfriending a stranger, nothing.
        let request_row = event(&mut generator, 0);
        let build = |_: &FriendRequestRecord| vec![request_row.clone()];
        let request = NewFriendRequest {
            request_id: new_id(),
            sender_user_id: owner,
            recipient_user_id: UserId::generate(),
            created_at_unix: 1,
        };
        let sent = store
            .create_friend_request(request, &build)
            .await
            .expect("request");
        assert!(sent.is_none());
        let unfriended = store
            .remove_friend(owner, user, vec![event(&mut generator, 0)])
            .await
            .expect("unfriend");
        assert!(!unfriended);

        // Profiles: a taken name rolls the change back with its row.
        let rename = ProfileChange {
            username: Some("SECOND".to_owned()),
            about_markdown: None,
        };
        let taken = store
            .update_profile(owner, rename, vec![event(&mut generator, 0)])
            .await;
        assert!(matches!(taken, Err(StoreError::Conflict(_))));

        let claimed = store
            .claim_outbox(i64::MAX, i64::MAX, 100)
            .await
            .expect("claim");
        assert_eq!(ids(&claimed), stored);
        assert_eq!(claimed[0].payload, created.payload);
    }
}
