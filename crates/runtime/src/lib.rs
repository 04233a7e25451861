//! Process plumbing that every Filament deployable shares: typed config read
//! from an injected environment, tracing set-up, the shutdown signal, the
//! probe endpoints Kubernetes calls, the public HTTP listener with its
//! connection caps, the admin listener that serves metrics away from
//! the public port, what every gRPC server carries (reflection, call
//! metrics, the trace context, the service-token check, the parsing of
//! request ids), and how every
//! gRPC client connects (presenting that token), connection URLs
//! whose `Debug` hides their password, and the life of a binary around
//! its service.
//!
//! Nothing domain-specific lives here.

pub mod admin;
pub mod client_ip;
pub mod env;
pub mod fd_limit;
pub mod grpc;
pub mod grpc_client;
pub mod net;
pub mod probes;
pub mod process;
pub mod public;
pub mod secret;
pub mod service_auth;
pub mod shutdown;
pub mod telemetry;
pub mod trace;

pub use env::{ConfigError, Env};
