//! The gateway's side of presence: the calls a gateway makes as its sockets
//! connect, subscribe and close, and its lease heartbeat.
//!
//! A gateway creates one [`PresenceClient`] at start-up. The channel
//! connects lazily, so the gateway starts even while presence is down.
//!
//! Lapses: presence removes a gateway's connections when its lease runs
//! out. If that happens to a gateway that is still alive (it lost presence
//! for longer than the TTL, or presence restarted on the memory store),
//! presence no longer matches its sockets. Any call can notice it — the
//! service reports that it held no live lease — and the next
//! [`heartbeat`](PresenceClient::heartbeat) returns [`LeaseStatus::Lapsed`]:
//! the gateway must then resynchronise (close its sockets so that they
//! reconnect and are reported again), exactly as for a registry lapse.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use filament_proto::v1::presence_client::PresenceClient as ProtoClient;
use filament_proto::v1::{
    PresenceConnectedRequest, PresenceConnection, PresenceDisconnectedRequest,
    PresenceEnterGuildRequest, PresenceHeartbeatRequest, PresenceLease, PresenceLeaveGuildRequest,
    PresenceSnapshotRequest, PresenceSync,
};
use filament_runtime::grpc_client::{GrpcChannel, GrpcClientMetrics};

use crate::ClientError;
use crate::error::Answer as _;

/// How this client's errors name the service.
const SERVICE: &str = "presence";

/// What a heartbeat found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseStatus {
    /// Presence holds this gateway's connections.
    Held,
    /// Presence dropped this gateway's connections at some point since the
    /// previous heartbeat: close every socket so they reconnect.
    Lapsed,
}

/// What `disconnected` learned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disconnected {
    /// The user has no open connection left on any gateway.
    pub user_offline: bool,
    /// Guilds where the user is no longer present.
    pub went_offline_guild_ids: Vec<String>,
}

pub struct PresenceClient {
    client: ProtoClient<GrpcChannel>,
    gateway_id: String,
    /// A heartbeat succeeded at least once: a lease that is not live from
    /// now on means a lapse, not a first start.
    established: AtomicBool,
    /// A call saw a lapse that the next heartbeat must report.
    lapsed: AtomicBool,
}

impl PresenceClient {
    /// A client for the presence service at `url` (`http://host:port`), on
    /// behalf of the gateway `gateway_id` (its registry id, a ULID). Each
    /// call fails after `timeout`; calls are timed in `grpc_clients`. Must
    /// be called inside a tokio runtime.
    pub fn new(
        url: &str,
        gateway_id: impl Into<String>,
        timeout: Duration,
        grpc_clients: &GrpcClientMetrics,
    ) -> Result<Self, ClientError> {
        let channel = crate::connect(SERVICE, url, timeout, grpc_clients)?;
        Ok(Self {
            client: ProtoClient::new(channel),
            gateway_id: gateway_id.into(),
            established: AtomicBool::new(false),
            lapsed: AtomicBool::new(false),
        })
    }

    /// Renews this gateway's lease. Call it with the registry heartbeat
    /// (every third of the TTL), also at start-up.
    pub async fn heartbeat(&self) -> Result<LeaseStatus, ClientError> {
        let lease = self
            .client
            .clone()
            .heartbeat(PresenceHeartbeatRequest {
                gateway_id: self.gateway_id.clone(),
            })
            .await
            .answer(SERVICE)?;
        self.observe(&lease);
        self.established.store(true, Ordering::Release);
        Ok(if self.lapsed.swap(false, Ordering::AcqRel) {
            LeaseStatus::Lapsed
        } else {
            LeaseStatus::Held
        })
    }

    /// A socket of `user_id` opened; `connection_id` is the gateway's own
    /// connection number.
    pub async fn connected(&self, connection_id: u64, user_id: &str) -> Result<(), ClientError> {
        let lease = self
            .client
            .clone()
            .connected(PresenceConnectedRequest {
                connection: Some(self.connection(connection_id)),
                user_id: user_id.to_owned(),
            })
            .await
            .answer(SERVICE)?;
        self.observe(&lease);
        Ok(())
    }

    /// A subscribe of the socket to a channel of `guild_id` was accepted.
    /// Returns the payload of the socket's `presence_sync`. Presence
    /// publishes `presence_update online` itself when this made the user
    /// present in the guild.
    pub async fn enter_guild(
        &self,
        connection_id: u64,
        user_id: &str,
        guild_id: &str,
    ) -> Result<PresenceSync, ClientError> {
        let response = self
            .client
            .clone()
            .enter_guild(PresenceEnterGuildRequest {
                connection: Some(self.connection(connection_id)),
                user_id: user_id.to_owned(),
                guild_id: guild_id.to_owned(),
            })
            .await
            .answer(SERVICE)?;
        if let Some(lease) = &response.lease {
            self.observe(lease);
        }
        Ok(response.sync.unwrap_or_else(|| PresenceSync {
            guild_id: guild_id.to_owned(),
            user_ids: Vec::new(),
        }))
    }

    /// The socket lost its last subscription in `guild_id` (access revoked).
    pub async fn leave_guild(&self, connection_id: u64, guild_id: &str) -> Result<(), ClientError> {
        self.client
            .clone()
            .leave_guild(PresenceLeaveGuildRequest {
                connection: Some(self.connection(connection_id)),
                guild_id: guild_id.to_owned(),
            })
            .await
            .answer(SERVICE)?;
        Ok(())
    }

    /// The socket closed. Presence publishes `presence_update offline` where
    /// this was the user's last presence, and takes the user out of voice
    /// when this was their last connection anywhere.
    pub async fn disconnected(&self, connection_id: u64) -> Result<Disconnected, ClientError> {
        let response = self
            .client
            .clone()
            .disconnected(PresenceDisconnectedRequest {
                connection: Some(self.connection(connection_id)),
            })
            .await
            .answer(SERVICE)?;
        Ok(Disconnected {
            user_offline: response.user_offline,
            went_offline_guild_ids: response.went_offline_guild_ids,
        })
    }

    /// Who is present in `guild_id`, as a `presence_sync` payload.
    pub async fn snapshot(&self, guild_id: &str) -> Result<PresenceSync, ClientError> {
        self.client
            .clone()
            .snapshot(PresenceSnapshotRequest {
                guild_id: guild_id.to_owned(),
            })
            .await
            .answer(SERVICE)
    }

    fn connection(&self, connection_id: u64) -> PresenceConnection {
        PresenceConnection {
            gateway_id: self.gateway_id.clone(),
            connection_id,
        }
    }

    fn observe(&self, lease: &PresenceLease) {
        if !lease.was_live && self.established.load(Ordering::Acquire) {
            self.lapsed.store(true, Ordering::Release);
        }
    }
}
