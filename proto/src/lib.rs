//! Generated protobuf and gRPC code for the `filament.v1` package: the event
//! catalogue, the event stream between services and gateways, and the edge
//! access service. `proto/filament/v1/*.proto` is the single source of truth.

#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod v1 {
    tonic::include_proto!("filament.v1");
}

/// The proto's `LogPosition` is how a position travels between processes;
/// `filament_ids::LogPosition` is the one every process works with.
impl From<filament_ids::LogPosition> for v1::LogPosition {
    fn from(position: filament_ids::LogPosition) -> Self {
        Self {
            scope: position.scope,
            epoch: position.epoch,
            offset: position.offset,
        }
    }
}

impl From<v1::LogPosition> for filament_ids::LogPosition {
    fn from(position: v1::LogPosition) -> Self {
        Self {
            scope: position.scope,
            epoch: position.epoch,
            offset: position.offset,
        }
    }
}

/// The encoded `FileDescriptorSet` of every `filament.v1` file, for gRPC
/// server reflection (`filament_runtime::grpc::reflection`).
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/filament_descriptor_set.bin"));

/// Limits that both sides of a call enforce, stated next to the messages
/// in the `.proto` files.
pub mod limits {
    /// `EdgeAccess.BannedAddresses` takes at most this many addresses.
    pub const MAX_BANNED_ADDRESSES_PER_CALL: usize = 1024;

    /// A message carries at most this many attachments: the api refuses
    /// more, and a gateway refuses a `message_create` with more before it
    /// asks the api (`EdgeCreateMessageRequest.attachment_ids`).
    pub const MAX_ATTACHMENTS_PER_MESSAGE: usize = 5;

    /// A durable service (`Welcome.durable`) publishes an event again until
    /// every gateway holding its audience acknowledged it, and gives up
    /// this long after the event's creation (the time in its ULID id):
    /// then it counts the event as missed for the gateways still without
    /// it. Gateways remember event ids at least this long to drop repeats.
    pub const REPUBLISH_GIVE_UP: std::time::Duration = std::time::Duration::from_secs(60);
}
