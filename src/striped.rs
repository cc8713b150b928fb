//! Counters spread over cache lines, one stripe per thread (round-robin), for figures that many threads
//! bump at once but that only readers sum. A stripe is written by few threads, so allocation-heavy
//! programs do not fight over one cache line for statistics the cap check never needs.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};

pub const STRIPES: usize = 32;

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
    static STRIPE: Cell<usize> = const { Cell::new(usize::MAX) };
}
static NEXT_STRIPE: AtomicUsize = AtomicUsize::new(0);

/// This thread's stripe, assigned round-robin on first use.
pub fn stripe() -> usize {
    STRIPE.with(|s| {
        let mut i = s.get();
        if i == usize::MAX {
            i = NEXT_STRIPE.fetch_add(1, Relaxed) % STRIPES;
            s.set(i);
        }
        i
    })
}

/// A counter summed over stripes. Each stripe may go below zero on its own (a free on another thread
/// than the allocation), so stripes wrap and only the sum, saturated at zero, is meaningful.
#[derive(Debug)]
pub struct StripedCounter {
    stripes: [Padded<AtomicU64>; STRIPES],
}

impl StripedCounter {
    pub const fn new() -> StripedCounter {
        StripedCounter {
            stripes: [const { Padded(AtomicU64::new(0)) }; STRIPES],
        }
    }

    pub fn add(&self, n: u64) {
        self.stripes[stripe()].0.fetch_add(n, Relaxed);
    }

    pub fn sub(&self, n: u64) {
        self.stripes[stripe()].0.fetch_sub(n, Relaxed);
    }

    /// The sum, read as signed so a free counted before its allocation never shows as a huge number.
    pub fn get(&self) -> u64 {
        let sum = self
            .stripes
            .iter()
            .fold(0u64, |acc, s| acc.wrapping_add(s.0.load(Relaxed)));
        u64::try_from(sum as i64).unwrap_or(0)
    }

    pub fn clear(&self) {
        for s in &self.stripes {
            s.0.store(0, Relaxed);
        }
    }
}

impl Default for StripedCounter {
    fn default() -> Self {
        StripedCounter::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn sums_across_threads_and_never_shows_negative() {
        let c = Arc::new(StripedCounter::new());
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let c = Arc::clone(&c);
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        c.add(3);
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        assert_eq!(c.get(), 24_000);
        let c2 = StripedCounter::new();
        c2.sub(5);
        assert_eq!(c2.get(), 0);
        c2.add(7);
        assert_eq!(c2.get(), 2);
    }

    #[test]
    fn padded_is_a_line_of_its_own() {
        assert_eq!(std::mem::align_of::<Padded<AtomicU64>>(), 128);
        assert_eq!(std::mem::size_of::<Padded<AtomicU64>>(), 128);
    }
}
