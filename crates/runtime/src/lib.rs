//! Process plumbing that every Filament deployable shares: typed config read
//! from an injected environment, tracing set-up, the shutdown signal, the
//! probe endpoints Kubernetes calls, and the admin listener that serves
//! metrics away from the public port.
//!
//! Nothing domain-specific lives here.

pub mod admin;
pub mod client_ip;
pub mod env;
pub mod net;
pub mod probes;
pub mod shutdown;
pub mod telemetry;

pub use env::{ConfigError, Env};
