//! Synchronisation helpers: locks that survive a panicking holder, and [`Versioned`], a value
//! threads share while it is replaced.
//!
//! Every critical section in the Director leaves its data consistent at each step, so a lock
//! poisoned by a panic elsewhere is still safe to use, and a metrics scrape or a shutdown must not
//! fail because some other thread panicked.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// Locks `mutex`, poisoned or not.
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Read-locks `rwlock`, poisoned or not.
pub fn read<T>(rwlock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    rwlock.read().unwrap_or_else(PoisonError::into_inner)
}

/// Write-locks `rwlock`, poisoned or not.
pub fn write<T>(rwlock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    rwlock.write().unwrap_or_else(PoisonError::into_inner)
}

/// A value that can be replaced while threads use it; each replacement bumps the generation.
pub struct Versioned<T> {
    generation: AtomicU64,
    value: RwLock<Arc<T>>,
}

impl<T> Versioned<T> {
    /// Generation 0 holding `value`.
    pub fn new(value: T) -> Versioned<T> {
        Versioned::shared(Arc::new(value))
    }

    /// Generation 0 holding a value already shared elsewhere.
    pub fn shared(value: Arc<T>) -> Versioned<T> {
        Versioned {
            generation: AtomicU64::new(0),
            value: RwLock::new(value),
        }
    }

    /// The current generation, cheap enough to check before every match.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The current value and its generation.
    pub fn current(&self) -> (u64, Arc<T>) {
        let value = read(&self.value);
        (self.generation(), Arc::clone(&value))
    }

    /// Publishes a new value.
    pub fn replace(&self, value: T) {
        let mut current = write(&self.value);
        *current = Arc::new(value);
        self.generation.fetch_add(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versioned_bumps_generation_on_replace() {
        let value = Versioned::new(1);
        assert_eq!(value.current(), (0, Arc::new(1)));
        value.replace(2);
        assert_eq!(value.generation(), 1);
        assert_eq!(*value.current().1, 2);
    }
}
