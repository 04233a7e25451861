//! Process plumbing that every Filament deployable shares: typed config read
//! from an injected environment, tracing set-up, the shutdown signal, and the
//! probe endpoints Kubernetes calls.
//!
//! Nothing domain-specific lives here.

pub mod env;
pub mod probes;
pub mod shutdown;
pub mod telemetry;

pub use env::{ConfigError, Env};
