//! Figures spread over cache lines, one stripe per thread, that many threads bump at once but that only
//! readers sum.
//!
//! A thread owns a stripe of its own while it lives (claimed on first use and kept in the thread's state,
//! `thread_state`; given back by a thread-local destructor), so it updates its stripe with a plain load and store: no read-modify-write, no shared
//! cache line. Threads beyond [`OWNED`] share the last few stripes and update them atomically.

use crate::thread_state::{self, NO_STRIPE};
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::*};

/// Stripes a thread can own.
pub const OWNED: usize = 64;
/// Stripes shared by threads that found none to own.
const SHARED: usize = 8;
pub const STRIPES: usize = OWNED + SHARED;

/// Keeps a value on a cache line of its own (128 bytes: adjacent-line prefetch pairs lines on x86).
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct Padded<T>(pub T);

impl<T> std::ops::Deref for Padded<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

thread_local! {
    /// Gives an owned stripe back when the thread ends.
    static OWNER: Owner = const { Owner };
}

/// Which owned stripes are taken.
static TAKEN: AtomicU64 = AtomicU64::new(0);
static NEXT_SHARED: AtomicUsize = AtomicUsize::new(0);

struct Owner;

impl Drop for Owner {
    fn drop(&mut self) {
        let s = thread_state::with(|t| t.stripe.replace(shared_stripe()));
        if s < OWNED {
            TAKEN.fetch_and(!(1 << s), Release);
        }
    }
}

fn shared_stripe() -> usize {
    OWNED + NEXT_SHARED.fetch_add(1, Relaxed) % SHARED
}

/// A thread's stripe, from [`stripe`]. It stays on that thread (it is not `Send`): a stripe the thread
/// owns is written with plain stores, which only its owner may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stripe {
    index: usize,
    _here: PhantomData<*const ()>,
}

impl Stripe {
    fn new(index: usize) -> Stripe {
        Stripe {
            index,
            _here: PhantomData,
        }
    }

    /// Which cell of a striped figure belongs to it.
    pub fn index(self) -> usize {
        self.index
    }

    /// Whether the calling thread owns it (else it is shared and needs atomic updates).
    pub fn owned(self) -> bool {
        self.index < OWNED
    }
}

/// This thread's stripe: one it owns if any was free, else a shared one.
pub fn stripe() -> Stripe {
    let s = thread_state::with(|t| t.stripe.get());
    if s != NO_STRIPE {
        return Stripe::new(s);
    }
    let s = claim();
    thread_state::with(|t| t.stripe.set(s));
    Stripe::new(s)
}

fn claim() -> usize {
    // Register the destructor first: if this thread is already past its thread-locals' destruction, own
    // nothing (nothing would give the stripe back).
    if OWNER.try_with(|_| ()).is_err() {
        return shared_stripe();
    }
    let mut taken = TAKEN.load(Relaxed);
    while taken != u64::MAX {
        let bit = (!taken).trailing_zeros() as usize;
        match TAKEN.compare_exchange_weak(taken, taken | 1 << bit, Acquire, Relaxed) {
            Ok(_) => return bit,
            Err(now) => taken = now,
        }
    }
    shared_stripe()
}

/// In a forked child: the stripes of the parent's other threads are free again (those threads do not
/// exist here); the calling thread keeps its own.
pub fn reset_after_fork() {
    let own = thread_state::with(|t| t.stripe.get());
    TAKEN.store(if own < OWNED { 1 << own } else { 0 }, Release);
}

/// Adds `n` (wrapping) to `cell`, the cell of stripe `s` in a striped figure: a plain load and store on a
/// stripe the thread owns, an atomic add on a shared one.
pub fn bump(cell: &AtomicU64, s: Stripe, n: u64) {
    if s.owned() {
        cell.store(cell.load(Relaxed).wrapping_add(n), Relaxed);
    } else {
        cell.fetch_add(n, Relaxed);
    }
}

/// The sum of a striped figure's cells, read as signed so that a free counted before its allocation never
/// shows as a huge number.
pub fn signed_sum<'a>(cells: impl Iterator<Item = &'a AtomicU64>) -> u64 {
    let sum = cells.fold(0u64, |acc, c| acc.wrapping_add(c.load(Relaxed)));
    u64::try_from(sum as i64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn sums_across_threads_and_never_shows_negative() {
        let c = Arc::new([const { Padded(AtomicU64::new(0)) }; STRIPES]);
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let c = Arc::clone(&c);
                std::thread::spawn(move || {
                    let s = stripe();
                    for _ in 0..1000 {
                        bump(&c[s.index()], s, 3);
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        assert_eq!(signed_sum(c.iter().map(|p| &p.0)), 24_000);
        let c2 = [AtomicU64::new(0), AtomicU64::new(0)];
        bump(&c2[0], Stripe::new(0), 5u64.wrapping_neg());
        assert_eq!(signed_sum(c2.iter()), 0);
        bump(&c2[1], Stripe::new(1), 7);
        assert_eq!(signed_sum(c2.iter()), 2);
    }

    #[test]
    fn threads_own_stripes_and_give_them_back() {
        let mine = stripe();
        assert!(mine.owned());
        let other = std::thread::spawn(|| stripe().index()).join().unwrap();
        assert_ne!(other, mine.index());
        // Ended threads give their stripes back: far more threads than stripes, one after another, all own one.
        for _ in 0..4 * OWNED {
            assert!(std::thread::spawn(|| stripe().owned()).join().unwrap());
        }
        // More threads alive than stripes to own: the rest share, and sums stay exact.
        let c = Arc::new([const { Padded(AtomicU64::new(0)) }; STRIPES]);
        let barrier = Arc::new(std::sync::Barrier::new(OWNED + 8));
        let handles: Vec<_> = (0..OWNED + 8)
            .map(|_| {
                let (c, barrier) = (Arc::clone(&c), Arc::clone(&barrier));
                std::thread::spawn(move || {
                    let s = stripe();
                    barrier.wait();
                    for _ in 0..1000 {
                        bump(&c[s.index()], s, 2);
                        bump(&c[s.index()], s, 1u64.wrapping_neg());
                    }
                    s.owned()
                })
            })
            .collect();
        let owned: Vec<bool> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        assert!(owned.iter().any(|&o| !o));
        assert_eq!(
            signed_sum(c.iter().map(|p| &p.0)),
            (OWNED as u64 + 8) * 1000
        );
    }

    #[test]
    fn padded_is_a_line_of_its_own() {
        assert_eq!(std::mem::align_of::<Padded<AtomicU64>>(), 128);
        assert_eq!(std::mem::size_of::<Padded<AtomicU64>>(), 128);
    }
}
