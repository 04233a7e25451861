//! The gateway's local indexes: connection → outbound queue, and channel →
//! connections, guild → connections, user → connections. Fanout is a lookup
//! per target, never a scan.
//!
//! Every mutation updates all indexes under one write lock, so they never
//! disagree. Delivery holds the read lock only while it pushes shared frames
//! onto bounded queues with `try_send`; a full queue evicts that socket as a
//! slow consumer instead of slowing anyone else down.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, PoisonError, RwLock};

use axum::extract::ws::Utf8Bytes;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::close::CloseReason;
use crate::ids::{ChannelId, ConnectionId, GuildId, UserId};
use crate::metrics::{DropReason, Metrics};

/// Asks a connection task to close its socket, with a reason. The first
/// reason wins.
#[derive(Debug, Default)]
pub(crate) struct Closer {
    token: CancellationToken,
    reason: OnceLock<CloseReason>,
}

impl Closer {
    pub(crate) fn close(&self, reason: CloseReason) {
        let _ = self.reason.set(reason);
        self.token.cancel();
    }

    /// Resolves once [`close`](Self::close) was called, with its reason.
    pub(crate) async fn closed(&self) -> CloseReason {
        self.token.cancelled().await;
        self.reason
            .get()
            .copied()
            .unwrap_or(CloseReason::ServerShutdown)
    }
}

/// Who receives a frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Target {
    Connection(ConnectionId),
    Channel(ChannelId),
    Guild(GuildId),
    /// The sockets of these users and every socket present in these guilds.
    Audience {
        users: Vec<UserId>,
        guilds: Vec<GuildId>,
    },
}

struct Entry {
    user: UserId,
    frames: mpsc::Sender<Utf8Bytes>,
    closer: Arc<Closer>,
    subscriptions: HashSet<(GuildId, ChannelId)>,
}

#[derive(Default)]
struct State {
    connections: HashMap<ConnectionId, Entry>,
    by_channel: HashMap<ChannelId, HashSet<ConnectionId>>,
    /// For each guild, its present connections and how many of the guild's
    /// channels each one subscribed.
    by_guild: HashMap<GuildId, HashMap<ConnectionId, usize>>,
    by_user: HashMap<UserId, HashSet<ConnectionId>>,
    /// Bumped by every revocation. A subscribe authorized before a
    /// revocation must be authorized again: the answer may be stale.
    revocation_epoch: u64,
}

/// The result of [`Index::subscribe`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SubscribeOutcome {
    Subscribed,
    /// Access changed since the authorization; ask again.
    Stale,
    /// The connection is gone.
    Gone,
}

/// What a connection task gets when it registers.
pub(crate) struct Registration {
    pub(crate) id: ConnectionId,
    pub(crate) frames: mpsc::Receiver<Utf8Bytes>,
    pub(crate) closer: Arc<Closer>,
}

pub(crate) struct Index {
    state: RwLock<State>,
    next_id: AtomicU64,
    metrics: Arc<Metrics>,
}

impl Index {
    pub(crate) fn new(metrics: Arc<Metrics>) -> Self {
        Self {
            state: RwLock::new(State::default()),
            next_id: AtomicU64::new(1),
            metrics,
        }
    }

    pub(crate) fn register(&self, user: UserId, queue_capacity: usize) -> Registration {
        let id = ConnectionId(self.next_id.fetch_add(1, Ordering::Relaxed));
        let (tx, rx) = mpsc::channel(queue_capacity);
        let closer = Arc::new(Closer::default());
        let mut state = self.write();
        state.connections.insert(
            id,
            Entry {
                user,
                frames: tx,
                closer: Arc::clone(&closer),
                subscriptions: HashSet::new(),
            },
        );
        state.by_user.entry(user).or_default().insert(id);
        Registration {
            id,
            frames: rx,
            closer,
        }
    }

    pub(crate) fn unregister(&self, id: ConnectionId) {
        let mut state = self.write();
        let Some(entry) = state.connections.remove(&id) else {
            return;
        };
        for (guild, channel) in &entry.subscriptions {
            remove_from(&mut state.by_channel, channel, &id);
            if let Some(present) = state.by_guild.get_mut(guild) {
                present.remove(&id);
                if present.is_empty() {
                    state.by_guild.remove(guild);
                }
            }
        }
        remove_from(&mut state.by_user, &entry.user, &id);
    }

    /// The current revocation epoch; pass it to [`subscribe`](Self::subscribe)
    /// after authorizing.
    pub(crate) fn revocation_epoch(&self) -> u64 {
        self.read().revocation_epoch
    }

    /// Records a subscription that was authorized at `authorized_at` (a
    /// [`revocation_epoch`](Self::revocation_epoch)), unless a revocation
    /// happened since.
    pub(crate) fn subscribe(
        &self,
        id: ConnectionId,
        guild: GuildId,
        channel: ChannelId,
        authorized_at: u64,
    ) -> SubscribeOutcome {
        let mut state = self.write();
        if state.revocation_epoch != authorized_at {
            return SubscribeOutcome::Stale;
        }
        let Some(entry) = state.connections.get_mut(&id) else {
            return SubscribeOutcome::Gone;
        };
        if !entry.subscriptions.insert((guild, channel)) {
            return SubscribeOutcome::Subscribed;
        }
        state.by_channel.entry(channel).or_default().insert(id);
        *state
            .by_guild
            .entry(guild)
            .or_default()
            .entry(id)
            .or_default() += 1;
        SubscribeOutcome::Subscribed
    }

    /// Drops every subscription of `user`'s sockets in `guild`. Returns the
    /// number of subscriptions removed.
    pub(crate) fn revoke_guild(&self, guild: GuildId, user: UserId) -> usize {
        self.remove_subscriptions(user, |g, _| g == guild)
    }

    /// Drops the subscriptions of `user`'s sockets to these channels.
    pub(crate) fn revoke_channels(
        &self,
        user: UserId,
        channels: &HashSet<(GuildId, ChannelId)>,
    ) -> usize {
        self.remove_subscriptions(user, |g, c| channels.contains(&(g, c)))
    }

    fn remove_subscriptions(
        &self,
        user: UserId,
        matches: impl Fn(GuildId, ChannelId) -> bool,
    ) -> usize {
        let mut state = self.write();
        let State {
            connections,
            by_channel,
            by_guild,
            by_user,
            revocation_epoch,
        } = &mut *state;
        *revocation_epoch += 1;
        let mut removed = 0;
        for id in by_user.get(&user).into_iter().flatten() {
            let Some(entry) = connections.get_mut(id) else {
                continue;
            };
            let doomed: Vec<_> = entry
                .subscriptions
                .iter()
                .copied()
                .filter(|&(g, c)| matches(g, c))
                .collect();
            for (guild, channel) in doomed {
                entry.subscriptions.remove(&(guild, channel));
                remove_from(by_channel, &channel, id);
                if let Some(present) = by_guild.get_mut(&guild) {
                    if let Some(count) = present.get_mut(id) {
                        *count -= 1;
                        if *count == 0 {
                            present.remove(id);
                        }
                    }
                    if present.is_empty() {
                        by_guild.remove(&guild);
                    }
                }
                removed += 1;
            }
        }
        removed
    }

    /// The subscriptions of `user`'s sockets within `guild`.
    pub(crate) fn subscriptions_of(
        &self,
        user: UserId,
        guild: GuildId,
    ) -> HashSet<(GuildId, ChannelId)> {
        let state = self.read();
        state
            .by_user
            .get(&user)
            .into_iter()
            .flatten()
            .filter_map(|id| state.connections.get(id))
            .flat_map(|entry| entry.subscriptions.iter().copied())
            .filter(|&(g, _)| g == guild)
            .collect()
    }

    /// Users with a socket present in `guild`.
    pub(crate) fn users_in_guild(&self, guild: GuildId) -> Vec<UserId> {
        let state = self.read();
        let mut users: Vec<_> = state
            .by_guild
            .get(&guild)
            .into_iter()
            .flat_map(HashMap::keys)
            .filter_map(|id| state.connections.get(id).map(|entry| entry.user))
            .collect();
        users.sort_unstable();
        users.dedup();
        users
    }

    /// Guilds and users that have at least one socket here.
    pub(crate) fn holdings(&self) -> (HashSet<GuildId>, HashSet<UserId>) {
        let state = self.read();
        (
            state.by_guild.keys().copied().collect(),
            state.by_user.keys().copied().collect(),
        )
    }

    pub(crate) fn connection_count(&self) -> usize {
        self.read().connections.len()
    }

    /// Queues `frame` on every socket of `target`. Returns how many got it.
    pub(crate) fn deliver(&self, target: &Target, frame: &Utf8Bytes) -> usize {
        let state = self.read();
        let mut delivered = 0;
        let mut push = |id: &ConnectionId| {
            if let Some(entry) = state.connections.get(id)
                && self.push(entry, frame.clone())
            {
                delivered += 1;
            }
        };
        match target {
            Target::Connection(id) => push(id),
            Target::Channel(channel) => state
                .by_channel
                .get(channel)
                .into_iter()
                .flatten()
                .for_each(push),
            Target::Guild(guild) => state
                .by_guild
                .get(guild)
                .into_iter()
                .flat_map(HashMap::keys)
                .for_each(push),
            Target::Audience { users, guilds } => {
                let mut seen = HashSet::new();
                let from_users = users.iter().filter_map(|u| state.by_user.get(u)).flatten();
                let from_guilds = guilds
                    .iter()
                    .filter_map(|g| state.by_guild.get(g))
                    .flat_map(HashMap::keys);
                for id in from_users.chain(from_guilds) {
                    if seen.insert(*id) {
                        push(id);
                    }
                }
            }
        }
        delivered
    }

    /// Asks every socket to close.
    pub(crate) fn close_all(&self, reason: CloseReason) {
        for entry in self.read().connections.values() {
            entry.closer.close(reason);
        }
    }

    /// Asks every socket of `user` to close.
    pub(crate) fn close_user(&self, user: UserId, reason: CloseReason) {
        let state = self.read();
        for id in state.by_user.get(&user).into_iter().flatten() {
            if let Some(entry) = state.connections.get(id) {
                entry.closer.close(reason);
            }
        }
    }

    fn push(&self, entry: &Entry, frame: Utf8Bytes) -> bool {
        match entry.frames.try_send(frame) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.metrics.dropped(DropReason::FullQueue);
                entry.closer.close(CloseReason::SlowConsumer);
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.metrics.dropped(DropReason::Closed);
                false
            }
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(PoisonError::into_inner)
    }
}

fn remove_from<K, V>(map: &mut HashMap<K, HashSet<V>>, key: &K, value: &V)
where
    K: std::hash::Hash + Eq,
    V: std::hash::Hash + Eq,
{
    if let Some(set) = map.get_mut(key) {
        set.remove(value);
        if set.is_empty() {
            map.remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ulid::Ulid;

    fn ids() -> (UserId, GuildId, ChannelId) {
        (
            UserId(Ulid::generate()),
            GuildId(Ulid::generate()),
            ChannelId(Ulid::generate()),
        )
    }

    fn frame(text: &'static str) -> Utf8Bytes {
        Utf8Bytes::from_static(text)
    }

    #[test]
    fn delivers_by_channel_guild_and_user_only() {
        let index = Index::new(Arc::default());
        let (alice, guild, channel) = ids();
        let (bob, other_guild, other_channel) = ids();
        let mut a = index.register(alice, 8);
        let mut b = index.register(bob, 8);
        let epoch = index.revocation_epoch();
        assert_eq!(
            index.subscribe(a.id, guild, channel, epoch),
            SubscribeOutcome::Subscribed
        );
        assert_eq!(
            index.subscribe(b.id, other_guild, other_channel, epoch),
            SubscribeOutcome::Subscribed
        );

        assert_eq!(index.deliver(&Target::Channel(channel), &frame("c")), 1);
        assert_eq!(index.deliver(&Target::Guild(guild), &frame("g")), 1);
        let audience = Target::Audience {
            users: vec![alice, bob],
            guilds: vec![guild],
        };
        assert_eq!(index.deliver(&audience, &frame("u")), 2);

        let got: Vec<_> = std::iter::from_fn(|| a.frames.try_recv().ok()).collect();
        assert_eq!(got, [frame("c"), frame("g"), frame("u")]);
        let got: Vec<_> = std::iter::from_fn(|| b.frames.try_recv().ok()).collect();
        assert_eq!(got, [frame("u")]);
    }

    #[test]
    fn unregister_and_revoke_clean_every_index() {
        let index = Index::new(Arc::default());
        let (alice, guild, channel) = ids();
        let second = ChannelId(Ulid::generate());
        let a = index.register(alice, 8);
        index.subscribe(a.id, guild, channel, 0);
        index.subscribe(a.id, guild, second, 0);
        assert_eq!(index.users_in_guild(guild), [alice]);

        assert_eq!(index.revoke_guild(guild, alice), 2);
        // An authorization from before the revocation no longer counts.
        assert_eq!(
            index.subscribe(a.id, guild, channel, 0),
            SubscribeOutcome::Stale
        );
        assert_eq!(index.deliver(&Target::Channel(channel), &frame("x")), 0);
        assert_eq!(index.deliver(&Target::Guild(guild), &frame("x")), 0);
        assert!(index.users_in_guild(guild).is_empty());

        let epoch = index.revocation_epoch();
        assert_eq!(
            index.subscribe(a.id, guild, channel, epoch),
            SubscribeOutcome::Subscribed
        );
        index.unregister(a.id);
        let (guilds, users) = index.holdings();
        assert!(guilds.is_empty() && users.is_empty());
        let state = index.read();
        assert!(state.by_channel.is_empty() && state.connections.is_empty());
    }

    #[tokio::test]
    async fn a_full_queue_evicts_only_that_socket() {
        let metrics = Arc::new(Metrics::default());
        let index = Index::new(Arc::clone(&metrics));
        let (alice, guild, channel) = ids();
        let (bob, _, _) = ids();
        let slow = index.register(alice, 1);
        let mut fast = index.register(bob, 8);
        index.subscribe(slow.id, guild, channel, 0);
        index.subscribe(fast.id, guild, channel, 0);

        assert_eq!(index.deliver(&Target::Channel(channel), &frame("1")), 2);
        assert_eq!(index.deliver(&Target::Channel(channel), &frame("2")), 1);
        assert_eq!(slow.closer.closed().await, CloseReason::SlowConsumer);
        assert_eq!(metrics.dropped_count(DropReason::FullQueue), 1);
        assert_eq!(fast.frames.try_recv().ok(), Some(frame("1")));
        assert_eq!(fast.frames.try_recv().ok(), Some(frame("2")));
    }
}
