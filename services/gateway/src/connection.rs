//! One websocket connection, from `ready` to its close frame.
//!
//! A single task owns the socket. It waits on, in priority order: a close
//! request (eviction, resync, revocation, the server's shutdown), token
//! expiry, idle timeout, the socket's outbound queue, inbound frames, and the ping timer.
//! Writes race the close request, so a client that stops reading is evicted
//! even while a write to it is stuck; what the queue holds goes out in
//! batches under one flush. A subscribe's snapshots are written ahead of
//! the queue (docs/adr/0003-snapshots.md). Every inbound data frame counts
//! against the socket's ingress window before it is decoded.

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use filament_ids::LogPosition;
use filament_proto::v1::{Event, Pong, Ready, Subscribed, event};
use futures_util::SinkExt as _;
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until};
use tokio_tungstenite::tungstenite;

use crate::Shared;
use crate::access::{AccessError, Identity, NewMessage, Verdict};
use crate::close::CloseReason;
use crate::ids::{ChannelId, GuildId};
use crate::index::{Item, Outbound, Registration, SubscribeOutcome, Target};
use crate::ingress::{self, Command};
use crate::limits::{IngressLimiter, IpPermit};
use crate::metrics::{IngressRejection, Metrics};
use crate::resume::{self, Positions};

/// How many times a subscribe is re-authorized when access changes under it.
const MAX_AUTHORIZE_ATTEMPTS: usize = 3;

/// Serves one upgraded socket. `permit` holds the client IP's connection
/// slot until the socket is gone.
///
/// The awaits that run once per socket (registry, presence, the closing
/// handshake) are boxed: a future is as large as its largest await, and
/// every socket's task would otherwise carry their state for its whole
/// life.
pub(crate) async fn run(
    mut socket: WebSocket,
    shared: Arc<Shared>,
    identity: Identity,
    positioned: bool,
    permit: IpPermit,
) {
    // Counted before the baseline is read, so that every event appended
    // after it is framed with its positions.
    let _counted = positioned.then(|| shared.positioned_sockets.hold());
    // Taken before the socket is in the index: an event appended after
    // this is either written to the socket live or replayed on resume.
    let user_head = if positioned {
        Box::pin(resume::head(&shared, &resume::user_log(identity.user))).await
    } else {
        None
    };
    let mut positions = positioned.then(|| {
        let mut positions = Box::<Positions>::default();
        positions.follow(resume::user_log(identity.user));
        positions
    });
    let mut registration = shared.index.register(
        identity.user,
        identity.session,
        permit.ip(),
        shared.config.outbound_queue,
    );
    shared.metrics.connection_opened();
    let outcome = serve(
        &mut socket,
        &shared,
        &identity,
        &mut registration,
        Session {
            positions: &mut positions,
            user_head,
        },
    )
    .await;
    shared.index.unregister(registration.id);
    shared.metrics.connection_closed();
    // Presence publishes the offline transitions and takes the user out of
    // voice if this was their last connection anywhere.
    Box::pin(shared.peers.disconnected(registration.id)).await;
    if let Some(reason) = outcome {
        shared.metrics.closed(reason);
        let closed = Box::pin(close(&mut socket, reason));
        let _ = tokio::time::timeout(shared.config.close_timeout, closed).await;
    }
}

/// The closing handshake: our close frame, then whatever the client still
/// sends, discarded, up to its close frame. Dropping the socket with unread
/// input would make the kernel reset the connection, which can destroy
/// the close frame before the client reads it.
async fn close(socket: &mut WebSocket, reason: CloseReason) {
    let frame = CloseFrame {
        code: reason.code(),
        reason: Utf8Bytes::from_static(reason.as_str()),
    };
    if socket.send(Message::Close(Some(frame))).await.is_err() {
        return;
    }
    while let Some(Ok(message)) = socket.recv().await {
        if matches!(message, Message::Close(_)) {
            return;
        }
    }
}

/// A socket's replay positions, when it asked for them (see `resume`).
struct Session<'a> {
    positions: &'a mut Option<Box<Positions>>,
    /// The baseline position of the user's log, for `ready`.
    user_head: Option<LogPosition>,
}

/// Runs the socket until it must close. `Some(reason)` asks for a close
/// frame; `None` means the client went away.
async fn serve(
    socket: &mut WebSocket,
    shared: &Shared,
    identity: &Identity,
    registration: &mut Registration,
    session: Session<'_>,
) -> Option<CloseReason> {
    let Session {
        positions,
        user_head,
    } = session;
    if let Err(err) = Box::pin(shared.holdings.hold_user(identity.user)).await {
        // Not a reason to refuse the socket: the sweeps hold the user once
        // the registry answers, and until then producers whose lookups fail
        // send to every gateway, this one included (see `holdings`).
        tracing::warn!(%err, "registry unavailable; the user is held later");
    }
    // A logout between this socket's identify and now found nothing to
    // close here: its `SessionRevoked` was routed before the socket was in
    // the index or its user in the registry. Both are true now, so a later
    // logout reaches the socket, and one look at the revocation list (which
    // a logout writes before it publishes) covers the earlier ones.
    match Box::pin(shared.holdings.session_revoked(identity.session)).await {
        Ok(false) => {}
        Ok(true) => return Some(CloseReason::AccessRevoked),
        Err(err) => {
            // Fail open. This look only guards the race above: `Identify`
            // already read the session from the store (the authority on
            // revocations) and refused it if it was revoked. With Redis
            // down a logout cannot list the session in the registry anyway
            // (the list would answer "not revoked" even if we could read
            // it), while its `SessionRevoked` goes to every gateway (the
            // producer's lookup fails too) and closes any socket already
            // in the index. What remains is a socket identified in the
            // milliseconds before a logout and registered after it, during
            // a Redis outage: it lives until its access token expires.
            // Failing closed instead would refuse every new socket for as
            // long as Redis is down.
            tracing::warn!(%err, "revocation list unavailable; accepting the identified socket");
        }
    }
    Box::pin(shared.peers.connected(registration.id, identity.user)).await;
    let ready = connection_event(event::Payload::Ready(Ready {
        user_id: identity.user.to_string(),
    }));
    let mut frames = shared.encode_for_one(&ready);
    if let (Some(positions), [frame]) = (positions.as_deref_mut(), frames.as_mut_slice()) {
        *frame = resume::with_baseline(shared, positions, frame.clone(), user_head);
    }
    shared
        .index
        .deliver(&Target::Connection(registration.id), &Outbound::of(frames));

    let config = &shared.config;
    let expiry = sleep_until(instant_of_unix(identity.expires_at_unix));
    tokio::pin!(expiry);
    let idle = sleep_until(Instant::now() + config.idle_timeout);
    tokio::pin!(idle);
    let mut ping = tokio::time::interval(config.ping_interval);
    let mut ingress = IngressLimiter::new(config.ingress_events_per_window, config.ingress_window);
    let closer = Arc::clone(&registration.closer);
    // Eviction, resync, revocation or the server's shutdown.
    let closing = closer.closed();
    tokio::pin!(closing);

    loop {
        tokio::select! {
            biased;
            reason = &mut closing => return Some(reason),
            () = &mut expiry => return Some(CloseReason::TokenExpired),
            () = &mut idle => return Some(CloseReason::IdleTimeout),
            item = registration.frames.recv() => {
                let item = item?;
                let queue = Queue { items: &mut registration.frames, positions: positions.as_deref_mut() };
                if let Err(outcome) = write_queued(socket, closing.as_mut(), item, queue, &shared.metrics).await {
                    return outcome;
                }
            }
            inbound = socket.recv() => {
                let now = Instant::now();
                idle.as_mut().reset(now + config.idle_timeout);
                let message = match inbound? {
                    Ok(message) => message,
                    Err(err) => return read_error(shared, err),
                };
                let is_data = matches!(message, Message::Text(_) | Message::Binary(_));
                if is_data && !ingress.admit(now) {
                    return Some(refuse(shared, CloseReason::RateLimited));
                }
                match message {
                    Message::Text(text) => {
                        // Boxed: a subscribe's RPC state is kilobytes that
                        // every idle socket would otherwise carry.
                        let snapshots = match Box::pin(handle_text(shared, identity, registration, positions, &text)).await {
                            Ok(snapshots) => snapshots,
                            Err(reason) => return Some(reason),
                        };
                        if let Err(outcome) = write_frames(socket, closing.as_mut(), snapshots).await {
                            return outcome;
                        }
                    }
                    Message::Binary(_) => return Some(refuse(shared, CloseReason::BinaryFrame)),
                    // Pings are answered by the websocket layer; pongs only
                    // prove liveness.
                    Message::Ping(_) | Message::Pong(_) => {}
                    Message::Close(_) => return None,
                }
            }
            _ = ping.tick() => {
                tokio::select! {
                    result = socket.send(Message::Ping(bytes::Bytes::new())) => result.ok()?,
                    reason = &mut closing => return Some(reason),
                }
            }
        }
    }
}

/// At most this many queue items go out under one flush, so a socket with
/// a deep queue still checks for a close request between batches.
const MAX_ITEMS_PER_FLUSH: usize = 32;

/// A socket's queue, and its positions when it asked for them.
struct Queue<'a> {
    items: &'a mut mpsc::Receiver<Outbound>,
    positions: Option<&'a mut Positions>,
}

/// Writes `first` and what else is already queued (up to
/// [`MAX_ITEMS_PER_FLUSH`] items), then flushes once: a socket that fell
/// behind catches up in few writes instead of one per frame.
async fn write_queued(
    socket: &mut WebSocket,
    closing: Pin<&mut impl Future<Output = CloseReason>>,
    first: Outbound,
    mut queue: Queue<'_>,
    metrics: &Metrics,
) -> Result<(), Option<CloseReason>> {
    let batch = async {
        let mut next = Some(first);
        let mut items = 0;
        while let Some(item) = next {
            match (item.item(), queue.positions.as_deref_mut()) {
                (Item::Logged(logged), Some(positions)) => {
                    if let Some(frame) = positions.frame_for(logged) {
                        socket.feed(Message::Text(frame.clone())).await?;
                    }
                }
                _ => {
                    for frame in item.frames() {
                        socket.feed(Message::Text(frame.clone())).await?;
                    }
                }
            }
            items += 1;
            next = if items < MAX_ITEMS_PER_FLUSH {
                queue.items.try_recv().ok()
            } else {
                None
            };
        }
        metrics.wrote_batch(items);
        socket.flush().await
    };
    unless_closing(closing, batch).await
}

/// Writes these frames (a subscribe's snapshots) and flushes once.
async fn write_frames(
    socket: &mut WebSocket,
    closing: Pin<&mut impl Future<Output = CloseReason>>,
    frames: Vec<Utf8Bytes>,
) -> Result<(), Option<CloseReason>> {
    let batch = async {
        for frame in frames {
            socket.feed(Message::Text(frame)).await?;
        }
        socket.flush().await
    };
    unless_closing(closing, batch).await
}

/// Runs a write unless the socket must close first, so a client that
/// stopped reading cannot hold the task. `Err(None)`: the client went away.
async fn unless_closing(
    closing: Pin<&mut impl Future<Output = CloseReason>>,
    write: impl Future<Output = Result<(), axum::Error>>,
) -> Result<(), Option<CloseReason>> {
    tokio::select! {
        result = write => result.map_err(|_| None),
        reason = closing => Err(Some(reason)),
    }
}

/// Counts a frame that closes the socket, and returns the reason.
fn refuse(shared: &Shared, reason: CloseReason) -> CloseReason {
    shared.metrics.rejected(IngressRejection::Closed(reason));
    reason
}

/// What a failed read means: a hostile frame the client is told about, or
/// a client that went away (`None`).
fn read_error(shared: &Shared, err: axum::Error) -> Option<CloseReason> {
    let reason = match err.into_inner().downcast::<tungstenite::Error>() {
        Ok(err) => match *err {
            // Over the frame or message cap, fragmented or not.
            tungstenite::Error::Capacity(_) => CloseReason::FrameTooLarge,
            tungstenite::Error::Utf8(_) => CloseReason::InvalidUtf8,
            tungstenite::Error::Protocol(
                tungstenite::error::ProtocolError::ResetWithoutClosingHandshake,
            ) => return None,
            tungstenite::Error::Protocol(err) => {
                tracing::debug!(%err, "websocket protocol violation");
                CloseReason::ProtocolError
            }
            err => {
                tracing::debug!(%err, "socket read failed");
                return None;
            }
        },
        Err(err) => {
            tracing::debug!(%err, "socket read failed");
            return None;
        }
    };
    Some(refuse(shared, reason))
}

/// Acts on one client frame. Returns the frames to write to this socket
/// at once, ahead of its queue.
async fn handle_text(
    shared: &Shared,
    identity: &Identity,
    registration: &Registration,
    positions: &mut Option<Box<Positions>>,
    text: &str,
) -> Result<Vec<Utf8Bytes>, CloseReason> {
    let command = ingress::decode(text).map_err(|err| refuse(shared, err.close_reason()))?;
    match command {
        Command::Subscribe { guild, channel } => {
            subscribe(
                shared,
                identity,
                registration,
                positions.as_deref_mut(),
                guild,
                channel,
            )
            .await
        }
        Command::Resume { positions: wanted } => {
            let Some(positions) = positions.as_deref_mut() else {
                return Ok(resume::refuse_all(shared, wanted));
            };
            let viewer = resume::Viewer {
                user: identity.user,
                subscriptions: shared.index.subscriptions(registration.id),
            };
            Ok(resume::resume(shared, &viewer, positions, wanted).await)
        }
        Command::Ping { nonce } => {
            // Through the queue, behind what is there: a pong proves the
            // socket's event path is moving, not only its reader.
            let pong = connection_event(event::Payload::Pong(Pong { nonce }));
            shared.send(&Target::Connection(registration.id), &pong);
            Ok(Vec::new())
        }
        Command::CreateMessage {
            guild,
            channel,
            content,
            attachment_ids,
        } => {
            let message = NewMessage {
                guild,
                channel,
                content,
                attachment_ids,
            };
            // No acknowledgement: the message comes back as the channel's
            // `message_create`, like everyone else's (PROTOCOL.md §5.3).
            match shared
                .access
                .create_message(identity.user, registration.ip, message)
                .await
            {
                Ok(()) => Ok(Vec::new()),
                Err(AccessError::Refused(why)) => {
                    tracing::debug!(%why, "socket message refused");
                    Err(refuse(shared, CloseReason::MessageRejected))
                }
                Err(err) => {
                    tracing::warn!(%err, "cannot post a socket message");
                    Err(CloseReason::UpstreamUnavailable)
                }
            }
        }
    }
}

/// Authorizes and records a subscribe, and returns its snapshots:
/// `presence_sync`, `subscribed`, `voice_participant_sync`.
///
/// The socket joins the indexes before the snapshots are taken, and the
/// snapshots are written ahead of the socket's queue. So every change made
/// after a snapshot reaches the client after it (it is in the queue or not
/// yet delivered), and a change the snapshot already holds, replayed after
/// it, sets what the snapshot says. Pushed through the queue instead, a
/// snapshot could land after a newer update and undo it.
async fn subscribe(
    shared: &Shared,
    identity: &Identity,
    registration: &Registration,
    mut positions: Option<&mut Positions>,
    guild: GuildId,
    channel: ChannelId,
) -> Result<Vec<Utf8Bytes>, CloseReason> {
    let unavailable = |err: &dyn std::fmt::Display| {
        tracing::warn!(%err, "cannot complete a subscribe");
        CloseReason::UpstreamUnavailable
    };
    for _ in 0..MAX_AUTHORIZE_ATTEMPTS {
        let epoch = shared.index.revocation_epoch();
        let verdict = shared
            .access
            .authorize_subscribe(identity.user, registration.ip, guild, channel)
            .await
            .map_err(|err| unavailable(&err))?;
        match verdict {
            Verdict::Allowed => {}
            Verdict::IpBanned => return Err(refuse(shared, CloseReason::IpBanned)),
            Verdict::Denied => {
                // PROTOCOL.md §5.5: a subscribe the user may not make is ignored.
                shared.metrics.rejected(IngressRejection::SubscribeDenied);
                return Ok(Vec::new());
            }
        }
        // A baseline for the guild's log, on the first subscribe there,
        // taken before the socket joins the index (as `user_head` is);
        // none when a `resume` left a position for the guild, whose
        // replay ends with the position it reached.
        let guild_head = match positions.as_deref() {
            Some(known) if !known.knows(&resume::guild_log(guild)) && !known.has_pending(guild) => {
                resume::head(shared, &resume::guild_log(guild)).await
            }
            _ => None,
        };
        match shared
            .index
            .subscribe(registration.id, guild, channel, epoch)
        {
            SubscribeOutcome::Subscribed => {
                if let Err(err) = shared.holdings.hold_guild(guild).await {
                    // Accepted anyway: the guild is in the index, and the
                    // sweeps hold it once the registry answers; meanwhile
                    // producers send to every gateway (see `holdings`).
                    tracing::warn!(%err, "registry unavailable; the guild is held later");
                }
                let mut snapshots = Vec::with_capacity(3);
                if let Some(sync) = shared
                    .peers
                    .entered(registration.id, identity.user, guild)
                    .await
                {
                    snapshots.extend(
                        shared
                            .encode_for_one(&connection_event(event::Payload::PresenceSync(sync))),
                    );
                }
                let subscribed = connection_event(event::Payload::Subscribed(Subscribed {
                    guild_id: guild.to_string(),
                    channel_id: channel.to_string(),
                }));
                for frame in shared.encode_for_one(&subscribed) {
                    snapshots.push(match positions.as_deref_mut() {
                        Some(positions) => {
                            resume::with_baseline(shared, positions, frame, guild_head.clone())
                        }
                        None => frame,
                    });
                }
                if let Some(roster) = shared.peers.voice_roster(guild, channel).await {
                    snapshots.extend(shared.encode_for_one(&connection_event(
                        event::Payload::VoiceParticipantSync(roster),
                    )));
                }
                // The guild's log, if a `resume` named it: now that the
                // socket is in the index, and ahead of its queue. From
                // then on the socket follows the log.
                if let Some(positions) = positions {
                    if let Some(pending) = positions.take_pending(guild) {
                        let viewer = resume::Viewer {
                            user: identity.user,
                            subscriptions: shared.index.subscriptions(registration.id),
                        };
                        snapshots
                            .extend(resume::replay(shared, &viewer, positions, &pending).await);
                    }
                    positions.follow(resume::guild_log(guild));
                }
                return Ok(snapshots);
            }
            SubscribeOutcome::Stale => continue,
            SubscribeOutcome::Gone => return Ok(Vec::new()),
        }
    }
    shared
        .metrics
        .rejected(IngressRejection::SubscribeContended);
    Ok(Vec::new())
}

/// Which views a service outage may have left stale.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Repair {
    /// Presence let this gateway's lease lapse and forgot its sockets:
    /// report each again, then send its `presence_sync`s.
    PresenceForgot,
    /// A presence or voice event stream broke: updates may have been lost.
    /// Send every socket fresh `presence_sync`s and voice rosters.
    StreamLost,
}

/// Repairs the presence and voice views of every socket here after an
/// outage of those services, instead of closing the sockets: they are
/// views, and a fresh snapshot makes them right again, while a reconnect
/// storm would cost every client a refetch of everything.
///
/// Unlike a subscribe's snapshot (ADR 0003), these go through the socket's
/// queue, behind what is already there: an update published while the
/// snapshot was taken can reach the client before it, and the snapshot
/// then shows the state from just before that update until the next one.
/// Outages are rare; a view a moment old beats a reconnect storm.
pub(crate) async fn repair_views(shared: &Shared, repair: Repair) {
    for socket in shared.index.roll() {
        if repair == Repair::PresenceForgot {
            shared.peers.connected(socket.connection, socket.user).await;
        }
        let mut snapshots = Vec::new();
        for guild in socket.guilds() {
            if let Some(sync) = shared
                .peers
                .entered(socket.connection, socket.user, guild)
                .await
            {
                snapshots.push(event::Payload::PresenceSync(sync));
            }
        }
        if repair == Repair::StreamLost {
            for &(guild, channel) in &socket.subscriptions {
                if let Some(roster) = shared.peers.voice_roster(guild, channel).await {
                    snapshots.push(event::Payload::VoiceParticipantSync(roster));
                }
            }
        }
        for payload in snapshots {
            let frames = shared.encode_for_one(&connection_event(payload));
            if !frames.is_empty() {
                shared.index.deliver(
                    &Target::Connection(socket.connection),
                    &Outbound::of(frames),
                );
            }
        }
    }
}

pub(crate) fn connection_event(payload: event::Payload) -> Event {
    Event {
        audience: None,
        published_at_unix_ms: 0,
        event_id: String::new(),
        positions: Vec::new(),
        payload: Some(payload),
    }
}

/// The tokio instant at which the unix time `unix_secs` is reached.
fn instant_of_unix(unix_secs: i64) -> Instant {
    let now_unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let remaining = u64::try_from(unix_secs)
        .unwrap_or(0)
        .saturating_sub(now_unix);
    Instant::now() + Duration::from_secs(remaining)
}
