//! The process's open-file limit.
//!
//! Every socket is a descriptor, and many distributions start services with
//! a soft limit of 1024 while allowing far more. Each binary raises its soft
//! limit to the hard limit at start-up and logs what it got, so that an
//! operator who sees connections refused knows the ceiling without guessing.

/// Raises the soft open-file limit to the hard limit and logs the result.
/// Returns the limit now in force, if the platform has one.
pub fn raise() -> Option<u64> {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => {
            tracing::info!(open_files = limit, "open-file limit");
            Some(limit)
        }
        Err(err) => {
            tracing::warn!(%err, "cannot raise the open-file limit");
            current()
        }
    }
}

/// The soft open-file limit in force.
pub fn current() -> Option<u64> {
    rlimit::Resource::NOFILE.get_soft().ok()
}
