//! Minting ids: one generator per process, shared by every part that mints
//! (the state's typed ids, the [`Publisher`](crate::outbox::Publisher)'s
//! event ids), so that every id this process mints is greater than the ones
//! it minted before, whichever kind it is.

use std::sync::{Arc, Mutex, PoisonError};

use ulid::Ulid;

/// The process's id generator. Cheap to clone: clones share it.
#[derive(Clone)]
pub struct IdGenerator {
    /// Monotonic within a millisecond, so ids created in the same
    /// millisecond still sort in creation order (message pagination relies
    /// on it).
    generator: Arc<Mutex<ulid::Generator>>,
}

impl IdGenerator {
    pub fn new() -> Self {
        Self {
            generator: Arc::new(Mutex::new(ulid::Generator::new())),
        }
    }

    /// A new id of whichever kind the caller needs (a typed id, or a plain
    /// [`Ulid`] for an event), greater than every id this process minted
    /// before.
    pub fn next<T: From<Ulid>>(&self) -> T {
        let mut generator = self
            .generator
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // Overflow needs 2^80 ids in one millisecond; fall back to a random
        // id rather than fail.
        T::from(generator.generate().unwrap_or_else(|_| Ulid::generate()))
    }
}

impl Default for IdGenerator {
    fn default() -> Self {
        Self::new()
    }
}
