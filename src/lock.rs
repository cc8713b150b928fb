//! A small mutex that survives `fork`: the preload library's locks are these, not `parking_lot`'s.
//!
//! A child of a multi-threaded process starts with one thread, and a lock that another thread held at
//! the fork stays held there for ever. `parking_lot` cannot be repaired in the child: its waiters sit in
//! a process-wide queue, and unlocking hands the lock to a queued thread that does not exist in the child
//! (seen: every forked child of a busy process hung). This lock keeps all its state in one word, the way
//! a futex mutex does (0 free, 1 held, 2 held with waiters; waiters sleep in the kernel on that word), so
//! the child repairs it by storing 0 ([`Lock::reset_after_fork`]), and what it guarded is replaced
//! without being read.
//!
//! Held only for short bookkeeping (and, for a pool, around one driver call), so a waiter spins briefly
//! before it sleeps.

use std::cell::UnsafeCell;
use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicU32, Ordering};

const FREE: u32 = 0;
const HELD: u32 = 1;
const WAITED: u32 = 2;

pub struct Lock<T> {
    state: AtomicU32,
    data: UnsafeCell<T>,
}

// SAFETY: the data is only reached through a guard, which the lock gives to one thread at a time.
unsafe impl<T: Send> Sync for Lock<T> {}
// SAFETY: as for any mutex, moving the lock moves the data.
unsafe impl<T: Send> Send for Lock<T> {}

/// The lock held; dropping it unlocks. It stays on the thread that locked (not `Send`).
pub struct Guard<'a, T> {
    lock: &'a Lock<T>,
    _here: PhantomData<*const ()>,
}

fn futex(word: &AtomicU32, op: libc::c_int, value: u32) {
    // SAFETY: futex(2) on a word we own, with no timeout; it touches no other memory of ours.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            op | libc::FUTEX_PRIVATE_FLAG,
            value,
            std::ptr::null::<libc::timespec>(),
        );
    }
}

impl<T> Lock<T> {
    pub const fn new(value: T) -> Lock<T> {
        Lock {
            state: AtomicU32::new(FREE),
            data: UnsafeCell::new(value),
        }
    }

    pub fn lock(&self) -> Guard<'_, T> {
        if self
            .state
            .compare_exchange(FREE, HELD, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            self.lock_contended();
        }
        self.guard()
    }

    fn lock_contended(&self) {
        for _ in 0..100 {
            std::hint::spin_loop();
            if self
                .state
                .compare_exchange(FREE, HELD, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
            {
                return;
            }
        }
        while self.state.swap(WAITED, Ordering::Acquire) != FREE {
            futex(&self.state, libc::FUTEX_WAIT, WAITED);
        }
    }

    pub fn try_lock(&self) -> Option<Guard<'_, T>> {
        self.state
            .compare_exchange(FREE, HELD, Ordering::Acquire, Ordering::Relaxed)
            .ok()
            .map(|_| self.guard())
    }

    fn guard(&self) -> Guard<'_, T> {
        Guard {
            lock: self,
            _here: PhantomData,
        }
    }

    /// In a forked child: the lock is free again, whoever held it, and guards `fresh`; what it guarded
    /// is left behind unread (another thread may have been half-way through it).
    ///
    /// # Safety
    /// Only in a forked child before it starts another thread, and while no guard of this lock exists on
    /// the calling thread.
    pub unsafe fn reset_after_fork(&self, fresh: T) {
        self.state.store(FREE, Ordering::Release);
        // SAFETY: the caller guarantees no other thread and no guard: nothing else reaches the data.
        let old = unsafe { std::ptr::replace(self.data.get(), fresh) };
        std::mem::forget(old);
    }
}

impl<T> Deref for Guard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the guard holds the lock, so no other thread reaches the data.
        unsafe { &*self.lock.data.get() }
    }
}

impl<T> DerefMut for Guard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as above, and the guard is borrowed mutably.
        unsafe { &mut *self.lock.data.get() }
    }
}

impl<T> Drop for Guard<'_, T> {
    fn drop(&mut self) {
        if self.lock.state.swap(FREE, Ordering::Release) == WAITED {
            futex(&self.lock.state, libc::FUTEX_WAKE, 1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn threads_take_turns() {
        let lock = Arc::new(Lock::new(0u64));
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let lock = Arc::clone(&lock);
                std::thread::spawn(move || {
                    for _ in 0..20_000 {
                        *lock.lock() += 1;
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        assert_eq!(*lock.lock(), 160_000);
        assert!(lock.try_lock().is_some());
        let held = lock.lock();
        assert!(lock.try_lock().is_none());
        drop(held);
    }

    #[test]
    fn a_lock_left_held_is_repaired_by_a_reset() {
        let lock = Lock::new(vec![1, 2, 3]);
        std::mem::forget(lock.lock());
        assert!(lock.try_lock().is_none());
        // SAFETY: no other thread uses this lock, and no guard of it exists (the one above was forgotten).
        unsafe { lock.reset_after_fork(Vec::new()) };
        assert!(lock.lock().is_empty());
    }
}
