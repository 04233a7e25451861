//! The service side of the event stream (`filament.v1.EventStream`).
//!
//! A domain service (api, presence, voice) publishes each event once, after
//! its change committed. [`Fanout`] asks the registry which gateways hold the
//! event's audience and queues the event on the stream of each of those
//! gateways, under a per-stream sequence number.
//!
//! Nothing is silently lost: an event that cannot reach a gateway (no stream,
//! stream too slow, no acknowledgement in time) is counted against that
//! gateway, and the count is sent in the `Welcome` of its next stream so the
//! gateway knows it missed something and resynchronises its sockets. See
//! docs/adr/0001-event-stream.md.
//!
//! A replica is ready to take work only once every live gateway streams
//! from it ([`Coverage`]), so several replicas of one service can be
//! rolled without a gateway missing an event.
//!
//! Presence and voice publish through an [`EventSink`] and serve their
//! stream with [`ProducerServer`].

mod coverage;
mod hub;
mod log;
mod serve;
mod service;
mod sink;

pub use coverage::{COVERAGE_INTERVAL, Coverage};
pub use hub::{Confirmation, Fanout, FanoutConfig, PublishReport};
pub use serve::{ProducerServer, ServeError};
pub use service::EventStreamService;
pub use sink::EventSink;
