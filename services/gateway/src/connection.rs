//! One websocket connection, from `ready` to its close frame.
//!
//! A single task owns the socket. It waits on, in priority order: a close
//! request (eviction, resync, revocation), shutdown, token expiry, idle
//! timeout, the socket's outbound queue, inbound frames, and the ping timer.
//! Writes race the close request, so a client that stops reading is evicted
//! even while a write to it is stuck.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use filament_proto::v1::{Event, Ready, Subscribed, event};
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;

use crate::Shared;
use crate::access::Identity;
use crate::close::CloseReason;
use crate::ids::{ChannelId, GuildId};
use crate::index::{Registration, SubscribeOutcome, Target};
use crate::ingress::{self, Command};

/// How long a close frame may take to send before the socket is dropped.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);
/// How many times a subscribe is re-authorized when access changes under it.
const MAX_AUTHORIZE_ATTEMPTS: usize = 3;

pub(crate) async fn run(
    mut socket: WebSocket,
    shared: Arc<Shared>,
    identity: Identity,
    shutdown: CancellationToken,
) {
    let mut registration = shared
        .index
        .register(identity.user, shared.config.outbound_queue);
    shared.metrics.connection_opened();
    let outcome = serve(
        &mut socket,
        &shared,
        &identity,
        &mut registration,
        &shutdown,
    )
    .await;
    shared.index.unregister(registration.id);
    shared.metrics.connection_closed();
    if let Some(reason) = outcome {
        shared.metrics.closed(reason);
        let frame = CloseFrame {
            code: reason.code(),
            reason: Utf8Bytes::from_static(reason.as_str()),
        };
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, socket.send(Message::Close(Some(frame)))).await;
    }
}

/// Runs the socket until it must close. `Some(reason)` asks for a close
/// frame; `None` means the client went away.
async fn serve(
    socket: &mut WebSocket,
    shared: &Shared,
    identity: &Identity,
    registration: &mut Registration,
    shutdown: &CancellationToken,
) -> Option<CloseReason> {
    if let Err(err) = shared.holdings.hold_user(identity.user).await {
        tracing::warn!(%err, "registry unavailable; refusing socket");
        return Some(CloseReason::UpstreamUnavailable);
    }
    let ready = connection_event(event::Payload::Ready(Ready {
        user_id: identity.user.to_string(),
    }));
    shared.send(&Target::Connection(registration.id), &ready);

    let config = &shared.config;
    let expiry = sleep_until(instant_of_unix(identity.expires_at_unix));
    tokio::pin!(expiry);
    let idle = sleep_until(Instant::now() + config.idle_timeout);
    tokio::pin!(idle);
    let mut ping = tokio::time::interval(config.ping_interval);
    let closer = Arc::clone(&registration.closer);

    loop {
        tokio::select! {
            biased;
            reason = closer.closed() => return Some(reason),
            () = shutdown.cancelled() => return Some(CloseReason::ServerShutdown),
            () = &mut expiry => return Some(CloseReason::TokenExpired),
            () = &mut idle => return Some(CloseReason::IdleTimeout),
            frame = registration.frames.recv() => {
                let frame = frame?;
                tokio::select! {
                    result = socket.send(Message::Text(frame)) => result.ok()?,
                    reason = closer.closed() => return Some(reason),
                    () = shutdown.cancelled() => return Some(CloseReason::ServerShutdown),
                }
            }
            inbound = socket.recv() => {
                idle.as_mut().reset(Instant::now() + config.idle_timeout);
                match inbound? {
                    Ok(Message::Text(text)) => {
                        if let Err(reason) = handle_text(shared, identity, registration, &text).await {
                            return Some(reason);
                        }
                    }
                    Ok(Message::Binary(_)) => {
                        shared.metrics.rejected(CloseReason::BinaryFrame.as_str());
                        return Some(CloseReason::BinaryFrame);
                    }
                    // Pings are answered by the websocket layer; pongs only
                    // prove liveness.
                    Ok(Message::Ping(_) | Message::Pong(_)) => {}
                    Ok(Message::Close(_)) => return None,
                    Err(err) => return read_error(shared, &err),
                }
            }
            _ = ping.tick() => {
                tokio::select! {
                    result = socket.send(Message::Ping(bytes::Bytes::new())) => result.ok()?,
                    reason = closer.closed() => return Some(reason),
                }
            }
        }
    }
}

fn read_error(shared: &Shared, err: &axum::Error) -> Option<CloseReason> {
    // axum wraps tungstenite's error; a capacity error is the only one the
    // client can still be told about.
    let text = err.to_string();
    if text.contains("Space limit exceeded")
        || text.contains("too long")
        || text.contains("Message too big")
    {
        shared.metrics.rejected(CloseReason::FrameTooLarge.as_str());
        return Some(CloseReason::FrameTooLarge);
    }
    tracing::debug!(%err, "socket read failed");
    None
}

async fn handle_text(
    shared: &Shared,
    identity: &Identity,
    registration: &Registration,
    text: &str,
) -> Result<(), CloseReason> {
    let command = ingress::decode(text).map_err(|err| {
        let reason = err.close_reason();
        shared.metrics.rejected(reason.as_str());
        reason
    })?;
    match command {
        Command::Subscribe { guild, channel } => {
            subscribe(shared, identity, registration, guild, channel).await
        }
    }
}

async fn subscribe(
    shared: &Shared,
    identity: &Identity,
    registration: &Registration,
    guild: GuildId,
    channel: ChannelId,
) -> Result<(), CloseReason> {
    for _ in 0..MAX_AUTHORIZE_ATTEMPTS {
        let epoch = shared.index.revocation_epoch();
        let allowed = shared
            .access
            .authorize_subscribe(identity.user, guild, channel)
            .await
            .map_err(|err| {
                tracing::warn!(%err, "cannot authorize subscribe");
                CloseReason::UpstreamUnavailable
            })?;
        if !allowed {
            // The contract: a subscribe the user may not make is ignored.
            shared.metrics.rejected("subscribe_denied");
            return Ok(());
        }
        match shared
            .index
            .subscribe(registration.id, guild, channel, epoch)
        {
            SubscribeOutcome::Subscribed => {
                shared.holdings.hold_guild(guild).await.map_err(|err| {
                    tracing::warn!(%err, "registry unavailable");
                    CloseReason::UpstreamUnavailable
                })?;
                let subscribed = connection_event(event::Payload::Subscribed(Subscribed {
                    guild_id: guild.to_string(),
                    channel_id: channel.to_string(),
                }));
                shared.send(&Target::Connection(registration.id), &subscribed);
                return Ok(());
            }
            SubscribeOutcome::Stale => continue,
            SubscribeOutcome::Gone => return Ok(()),
        }
    }
    shared.metrics.rejected("subscribe_contended");
    Ok(())
}

fn connection_event(payload: event::Payload) -> Event {
    Event {
        audience: None,
        published_at_unix_ms: 0,
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
