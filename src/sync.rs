//! Locking that survives a panic elsewhere.
//!
//! A mutex is poisoned when a thread panics while holding it. The locks that
//! use [`lock`] guard state that every change leaves whole (a queue, a cache,
//! an index updated by one insert), so a poisoned one is still consistent and
//! the daemon keeps serving. The hub's state lock is the exception: it stops
//! the daemon instead (see `application::hub`).

use std::sync::{Mutex, MutexGuard, PoisonError};

/// Takes `m`, whether or not a panicking thread poisoned it.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
