//! The gateway's local indexes: connection → outbound queue, and channel →
//! connections, guild → connections, user → connections. Fanout is a lookup
//! per target, never a scan.
//!
//! Every mutation updates all indexes under one write lock, so they never
//! disagree. Delivery holds the read lock only while it pushes shared frames
//! onto bounded queues with `try_send`; a full queue evicts that socket as a
//! slow consumer instead of slowing anyone else down.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, PoisonError, RwLock};
use std::task::Poll;

use axum::extract::ws::Utf8Bytes;
use futures_util::task::AtomicWaker;
use tokio::sync::mpsc;

use crate::close::CloseReason;
use crate::ids::{ChannelId, ConnectionId, GuildId, SessionId, UserId};
use crate::metrics::{DropReason, Metrics};

/// Asks a connection task to close its socket, with a reason. The first
/// reason wins. Only the connection's own task waits on it, and it looks
/// at it on every wake-up, so it is two atomics and one waker slot, no
/// lock.
#[derive(Debug, Default)]
pub(crate) struct Closer {
    reason: OnceLock<CloseReason>,
    waker: AtomicWaker,
}

impl Closer {
    pub(crate) fn close(&self, reason: CloseReason) {
        let _ = self.reason.set(reason);
        self.waker.wake();
    }

    #[cfg(test)]
    pub(crate) fn is_closed(&self) -> bool {
        self.reason.get().is_some()
    }

    /// Resolves once [`close`](Self::close) was called, with its reason.
    /// One task at a time may wait on it.
    pub(crate) fn closed(&self) -> impl Future<Output = CloseReason> + '_ {
        std::future::poll_fn(|cx| {
            if let Some(reason) = self.reason.get() {
                return Poll::Ready(*reason);
            }
            self.waker.register(cx.waker());
            // A close between the first look and the registration woke
            // no one: look again.
            self.reason
                .get()
                .map_or(Poll::Pending, |reason| Poll::Ready(*reason))
        })
    }
}

/// What a socket's queue holds, shared by every socket it goes to. One
/// pointer wide: each socket's queue allocates room for a block of items
/// up front, idle or not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Outbound(Arc<Item>);

/// One frame, or frames that must go out back to back (a snapshot split to
/// fit the frame cap, see [`filament_wire::encode_frames`]). A batch takes
/// one slot, so a large snapshot cannot overflow a queue by itself.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Item {
    Frame(Utf8Bytes),
    Batch(Box<[Utf8Bytes]>),
    /// An event from the replay logs (docs/adr/0011-resume.md): sockets
    /// that asked for positions write its positioned frame.
    Logged(Logged),
}

/// One logged event's frames and positions.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Logged {
    pub(crate) plain: Utf8Bytes,
    pub(crate) positioned: Utf8Bytes,
    pub(crate) positions: Vec<filament_ids::LogPosition>,
    pub(crate) event_id: String,
}

impl Outbound {
    /// One queue item for these frames.
    pub(crate) fn of(mut frames: Vec<Utf8Bytes>) -> Self {
        if frames.len() == 1
            && let Some(frame) = frames.pop()
        {
            return Self(Arc::new(Item::Frame(frame)));
        }
        Self(Arc::new(Item::Batch(frames.into_boxed_slice())))
    }

    pub(crate) fn logged(logged: Logged) -> Self {
        Self(Arc::new(Item::Logged(logged)))
    }

    pub(crate) fn item(&self) -> &Item {
        &self.0
    }

    /// The frames, in order.
    pub(crate) fn frames(&self) -> &[Utf8Bytes] {
        match self.item() {
            Item::Frame(frame) => std::slice::from_ref(frame),
            Item::Batch(frames) => frames,
            Item::Logged(logged) => std::slice::from_ref(&logged.plain),
        }
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
    /// The login session the socket's token was issued for.
    session: SessionId,
    /// The client address, as resolved at the upgrade.
    ip: IpAddr,
    frames: mpsc::Sender<Outbound>,
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
    /// Set by [`Index::shut_down`]: a socket registered from then on is
    /// asked to close at once.
    shut_down: bool,
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

/// One subscription of one socket, as access re-checks see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Held {
    pub(crate) connection: ConnectionId,
    pub(crate) ip: IpAddr,
    pub(crate) guild: GuildId,
    pub(crate) channel: ChannelId,
}

/// A socket that lost its last subscription in a guild: it is no longer
/// present there, and presence must be told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Departure {
    pub(crate) connection: ConnectionId,
    pub(crate) guild: GuildId,
}

/// One socket, as [`Index::roll`] lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RollEntry {
    pub(crate) connection: ConnectionId,
    pub(crate) user: UserId,
    pub(crate) subscriptions: Vec<(GuildId, ChannelId)>,
}

impl RollEntry {
    /// The guilds the socket is present in, each once.
    pub(crate) fn guilds(&self) -> Vec<GuildId> {
        let mut guilds: Vec<_> = self.subscriptions.iter().map(|&(guild, _)| guild).collect();
        guilds.dedup();
        guilds
    }
}

/// What a connection task gets when it registers.
pub(crate) struct Registration {
    pub(crate) id: ConnectionId,
    pub(crate) ip: IpAddr,
    pub(crate) frames: mpsc::Receiver<Outbound>,
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

    pub(crate) fn register(
        &self,
        user: UserId,
        session: SessionId,
        ip: IpAddr,
        queue_capacity: usize,
    ) -> Registration {
        let id = ConnectionId(self.next_id.fetch_add(1, Ordering::Relaxed));
        let (tx, rx) = mpsc::channel(queue_capacity);
        let closer = Arc::new(Closer::default());
        let mut state = self.write();
        if state.shut_down {
            closer.close(CloseReason::ServerShutdown);
        }
        state.connections.insert(
            id,
            Entry {
                user,
                session,
                ip,
                frames: tx,
                closer: Arc::clone(&closer),
                subscriptions: HashSet::new(),
            },
        );
        state.by_user.entry(user).or_default().insert(id);
        Registration {
            id,
            ip,
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

    /// Drops every subscription of `user`'s sockets in `guild`.
    pub(crate) fn revoke_guild(&self, guild: GuildId, user: UserId) -> Vec<Departure> {
        self.revoke_user(user, |held| held.guild == guild)
    }

    /// Drops the subscriptions of `user`'s sockets that `doomed` selects.
    pub(crate) fn revoke_user(
        &self,
        user: UserId,
        doomed: impl FnMut(&Held) -> bool,
    ) -> Vec<Departure> {
        let mut state = self.write();
        let ids: Vec<_> = state
            .by_user
            .get(&user)
            .into_iter()
            .flatten()
            .copied()
            .collect();
        remove_subscriptions(&mut state, &ids, doomed)
    }

    /// Drops the subscriptions in `guild` of every socket whose address is
    /// in `banned`, and asks those sockets to close.
    pub(crate) fn revoke_addresses(
        &self,
        guild: GuildId,
        banned: &HashSet<IpAddr>,
    ) -> Vec<Departure> {
        let mut state = self.write();
        let ids: Vec<_> = state
            .by_guild
            .get(&guild)
            .into_iter()
            .flat_map(HashMap::keys)
            .filter(|id| {
                state
                    .connections
                    .get(id)
                    .is_some_and(|entry| banned.contains(&entry.ip))
            })
            .copied()
            .collect();
        for id in &ids {
            if let Some(entry) = state.connections.get(id) {
                entry.closer.close(CloseReason::IpBanned);
            }
        }
        remove_subscriptions(&mut state, &ids, |held| held.guild == guild)
    }

    /// The subscriptions of `user`'s sockets within `guild`.
    pub(crate) fn subscriptions_of(&self, user: UserId, guild: GuildId) -> Vec<Held> {
        let state = self.read();
        let mut held = Vec::new();
        for id in state.by_user.get(&user).into_iter().flatten() {
            let Some(entry) = state.connections.get(id) else {
                continue;
            };
            held.extend(
                entry
                    .subscriptions
                    .iter()
                    .filter(|&&(g, _)| g == guild)
                    .map(|&(guild, channel)| Held {
                        connection: *id,
                        ip: entry.ip,
                        guild,
                        channel,
                    }),
            );
        }
        held
    }

    /// The distinct client addresses of the sockets present in `guild`.
    pub(crate) fn addresses_in_guild(&self, guild: GuildId) -> Vec<IpAddr> {
        let state = self.read();
        let addresses: HashSet<IpAddr> = state
            .by_guild
            .get(&guild)
            .into_iter()
            .flat_map(HashMap::keys)
            .filter_map(|id| state.connections.get(id).map(|entry| entry.ip))
            .collect();
        addresses.into_iter().collect()
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

    /// Every socket with its user and its subscriptions, sorted: what a
    /// presence or voice service that lost track must be told, or asked,
    /// again.
    pub(crate) fn roll(&self) -> Vec<RollEntry> {
        let state = self.read();
        state
            .connections
            .iter()
            .map(|(id, entry)| {
                let mut subscriptions: Vec<_> = entry.subscriptions.iter().copied().collect();
                subscriptions.sort_unstable();
                RollEntry {
                    connection: *id,
                    user: entry.user,
                    subscriptions,
                }
            })
            .collect()
    }

    /// Guilds and users that have at least one socket here.
    pub(crate) fn holdings(&self) -> (HashSet<GuildId>, HashSet<UserId>) {
        let state = self.read();
        (
            state.by_guild.keys().copied().collect(),
            state.by_user.keys().copied().collect(),
        )
    }

    /// The socket's subscriptions now; empty once it is gone.
    pub(crate) fn subscriptions(&self, id: ConnectionId) -> HashSet<(GuildId, ChannelId)> {
        self.read()
            .connections
            .get(&id)
            .map(|entry| entry.subscriptions.clone())
            .unwrap_or_default()
    }

    pub(crate) fn connection_count(&self) -> usize {
        self.read().connections.len()
    }

    /// Queues `item` on every socket of `target`. Returns how many got it.
    pub(crate) fn deliver(&self, target: &Target, item: &Outbound) -> usize {
        let state = self.read();
        let mut delivered = 0;
        let mut push = |id: &ConnectionId| {
            if let Some(entry) = state.connections.get(id)
                && self.push(entry, item.clone())
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

    /// Asks every socket to close for the server's shutdown, and every
    /// socket registered later too.
    pub(crate) fn shut_down(&self) {
        let mut state = self.write();
        state.shut_down = true;
        for entry in state.connections.values() {
            entry.closer.close(CloseReason::ServerShutdown);
        }
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

    /// Asks the sockets of `user` that were identified with `session` to
    /// close; the user's other sessions keep theirs. Returns how many.
    pub(crate) fn close_session(
        &self,
        user: UserId,
        session: SessionId,
        reason: CloseReason,
    ) -> usize {
        let state = self.read();
        let mut closed = 0;
        for id in state.by_user.get(&user).into_iter().flatten() {
            if let Some(entry) = state.connections.get(id)
                && entry.session == session
            {
                entry.closer.close(reason);
                closed += 1;
            }
        }
        closed
    }

    /// Asks these sockets to close.
    pub(crate) fn close_connections(&self, ids: &HashSet<ConnectionId>, reason: CloseReason) {
        let state = self.read();
        for id in ids {
            if let Some(entry) = state.connections.get(id) {
                entry.closer.close(reason);
            }
        }
    }

    fn push(&self, entry: &Entry, item: Outbound) -> bool {
        match entry.frames.try_send(item) {
            Ok(()) => {
                self.metrics
                    .queued(entry.frames.max_capacity() - entry.frames.capacity());
                true
            }
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

/// Drops the subscriptions of the sockets `ids` that `doomed` selects, under
/// the caller's write lock. Bumps the revocation epoch, so subscribes
/// authorized before this must be authorized again.
fn remove_subscriptions(
    state: &mut State,
    ids: &[ConnectionId],
    mut doomed: impl FnMut(&Held) -> bool,
) -> Vec<Departure> {
    let State {
        connections,
        by_channel,
        by_guild,
        revocation_epoch,
        ..
    } = state;
    *revocation_epoch += 1;
    let mut departures = Vec::new();
    for id in ids {
        let Some(entry) = connections.get_mut(id) else {
            continue;
        };
        let selected: Vec<_> = entry
            .subscriptions
            .iter()
            .map(|&(guild, channel)| Held {
                connection: *id,
                ip: entry.ip,
                guild,
                channel,
            })
            .filter(&mut doomed)
            .collect();
        for Held { guild, channel, .. } in selected {
            entry.subscriptions.remove(&(guild, channel));
            remove_from(by_channel, &channel, id);
            let Some(present) = by_guild.get_mut(&guild) else {
                continue;
            };
            if let Some(count) = present.get_mut(id) {
                *count -= 1;
                if *count == 0 {
                    present.remove(id);
                    departures.push(Departure {
                        connection: *id,
                        guild,
                    });
                }
            }
            if present.is_empty() {
                by_guild.remove(&guild);
            }
        }
    }
    departures
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
    use futures_util::FutureExt as _;

    use super::*;
    use ulid::Ulid;

    fn ids() -> (UserId, GuildId, ChannelId) {
        (
            UserId(Ulid::generate()),
            GuildId(Ulid::generate()),
            ChannelId(Ulid::generate()),
        )
    }

    const HOME: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    fn session() -> SessionId {
        SessionId(Ulid::generate())
    }

    fn frame(text: &'static str) -> Outbound {
        Outbound::of(vec![Utf8Bytes::from_static(text)])
    }

    #[test]
    fn delivers_by_channel_guild_and_user_only() {
        let index = Index::new(Arc::default());
        let (alice, guild, channel) = ids();
        let (bob, other_guild, other_channel) = ids();
        let mut a = index.register(alice, session(), HOME, 8);
        let mut b = index.register(bob, session(), HOME, 8);
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
        let a = index.register(alice, session(), HOME, 8);
        index.subscribe(a.id, guild, channel, 0);
        index.subscribe(a.id, guild, second, 0);
        assert_eq!(index.users_in_guild(guild), [alice]);

        // Two subscriptions go, but the socket leaves the guild once.
        assert_eq!(
            index.revoke_guild(guild, alice),
            [Departure {
                connection: a.id,
                guild
            }]
        );
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

    #[test]
    fn losing_one_of_two_channels_keeps_the_socket_present() {
        let index = Index::new(Arc::default());
        let (alice, guild, channel) = ids();
        let second = ChannelId(Ulid::generate());
        let a = index.register(alice, session(), HOME, 8);
        index.subscribe(a.id, guild, channel, 0);
        index.subscribe(a.id, guild, second, 0);

        assert!(
            index
                .revoke_user(alice, |held| held.channel == second)
                .is_empty()
        );
        assert_eq!(index.users_in_guild(guild), [alice]);
        assert_eq!(index.deliver(&Target::Channel(second), &frame("x")), 0);
        assert_eq!(index.deliver(&Target::Channel(channel), &frame("x")), 1);
    }

    #[tokio::test]
    async fn a_banned_address_loses_the_guild_and_its_sockets_close() {
        let index = Index::new(Arc::default());
        let (alice, guild, channel) = ids();
        let (bob, _, _) = ids();
        let banned: IpAddr = "203.0.113.7".parse().expect("address");
        let from_banned = index.register(alice, session(), banned, 8);
        let from_home = index.register(bob, session(), HOME, 8);
        index.subscribe(from_banned.id, guild, channel, 0);
        index.subscribe(from_home.id, guild, channel, 0);
        let mut addresses = index.addresses_in_guild(guild);
        addresses.sort_unstable();
        assert_eq!(addresses, [HOME, banned]);

        let departures = index.revoke_addresses(guild, &HashSet::from([banned]));
        assert_eq!(
            departures,
            [Departure {
                connection: from_banned.id,
                guild
            }]
        );
        assert_eq!(from_banned.closer.closed().await, CloseReason::IpBanned);
        assert!(!from_home.closer.is_closed());
        assert_eq!(index.users_in_guild(guild), [bob]);
    }

    #[tokio::test]
    async fn closing_a_session_closes_only_its_sockets() {
        let index = Index::new(Arc::default());
        let (alice, guild, channel) = ids();
        let (bob, _, _) = ids();
        let (ended, other) = (session(), session());
        let doomed = [
            index.register(alice, ended, HOME, 8),
            index.register(alice, ended, HOME, 8),
        ];
        let same_user = index.register(alice, other, HOME, 8);
        // A session id is only meaningful with its user.
        let other_user = index.register(bob, ended, HOME, 8);
        for socket in doomed.iter().chain([&same_user, &other_user]) {
            index.subscribe(socket.id, guild, channel, 0);
        }

        assert_eq!(
            index.close_session(alice, ended, CloseReason::AccessRevoked),
            2
        );
        for socket in &doomed {
            assert_eq!(socket.closer.closed().await, CloseReason::AccessRevoked);
        }
        assert!(!same_user.closer.is_closed());
        assert!(!other_user.closer.is_closed());
        assert_eq!(
            index.close_session(alice, session(), CloseReason::AccessRevoked),
            0
        );
    }

    #[test]
    fn shutting_down_closes_open_sockets_and_later_ones() {
        let index = Index::new(Arc::default());
        let (alice, _, _) = ids();
        let open = index.register(alice, session(), HOME, 8);
        // The first reason wins: a socket already asked to close keeps it.
        let evicted = index.register(alice, session(), HOME, 8);
        evicted.closer.close(CloseReason::SlowConsumer);

        index.shut_down();
        let late = index.register(alice, session(), HOME, 8);
        let reason = |socket: &Registration| socket.closer.closed().now_or_never();
        assert_eq!(reason(&open), Some(CloseReason::ServerShutdown));
        assert_eq!(reason(&late), Some(CloseReason::ServerShutdown));
        assert_eq!(reason(&evicted), Some(CloseReason::SlowConsumer));
    }

    #[tokio::test]
    async fn a_close_wakes_the_waiting_task() {
        let index = Index::new(Arc::default());
        let (alice, _, _) = ids();
        let socket = index.register(alice, session(), HOME, 8);
        let closer = Arc::clone(&socket.closer);
        let waiting = tokio::spawn(async move { closer.closed().await });
        tokio::task::yield_now().await;
        index.close_user(alice, CloseReason::AccessRevoked);
        let woken = tokio::time::timeout(std::time::Duration::from_secs(10), waiting).await;
        assert_eq!(
            woken.expect("woken").expect("a reason"),
            CloseReason::AccessRevoked
        );
    }

    #[tokio::test]
    async fn a_full_queue_evicts_only_that_socket() {
        let metrics = Arc::new(Metrics::default());
        let index = Index::new(Arc::clone(&metrics));
        let (alice, guild, channel) = ids();
        let (bob, _, _) = ids();
        let slow = index.register(alice, session(), HOME, 1);
        let mut fast = index.register(bob, session(), HOME, 8);
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
