//! Which 2 MiB device pages hold live packed (sub-2-MiB) allocations, per device.
//!
//! The driver packs small allocations into shared pages and can give a page back only when nothing in it
//! is live. Counting live allocations per page from their real addresses therefore charges exactly the
//! pages the driver must keep, however frees fragment them, where a model of "bytes in use" would not.

use crate::accounting::charge::PAGE;
use crate::registry::tracker::Tracker;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// A slot's word: `(key + 1) << COUNT_BITS | live allocations`; 0 is an empty slot. A key keeps its slot
/// for good (its count may fall to zero and rise again), so two threads touching the same page always meet
/// on the same word, and one compare-and-swap moves a page between charged and free.
const COUNT_BITS: u32 = 20;
const COUNT_MAX: u64 = (1 << COUNT_BITS) - 1;
const CAPACITY: usize = 1 << 14;
const WINDOW: usize = 64;

pub struct PageSet {
    /// (device, page index) -> live packed allocations in that page.
    slots: [AtomicU64; CAPACITY],
    /// Pages whose probe window was full.
    overflow: Tracker<u32>,
}

fn key(dev: i32, page: u64) -> u64 {
    // Device ordinals are below 64 and page indices below 2^37 (a 58-bit address over 2 MiB).
    ((dev as u64 & 0x3f) << 37) | (page & ((1 << 37) - 1))
}

fn dev_of(key: u64) -> u64 {
    key >> 37
}

fn slot_key(word: u64) -> Option<u64> {
    (word >> COUNT_BITS).checked_sub(1)
}

fn pages(addr: u64, size: u64) -> std::ops::RangeInclusive<u64> {
    let last = addr.saturating_add(size.max(1) - 1);
    (addr / PAGE)..=(last / PAGE)
}

fn window(key: u64) -> impl Iterator<Item = usize> {
    let h = (key.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 50) as usize;
    (0..WINDOW).map(move |i| (h + i) % CAPACITY)
}

impl PageSet {
    pub const fn new() -> PageSet {
        PageSet {
            slots: [const { AtomicU64::new(0) }; CAPACITY],
            overflow: Tracker::new(),
        }
    }

    /// Records a packed allocation at `addr`; returns the bytes of pages it put in use.
    pub fn touch(&self, dev: i32, addr: u64, size: u64) -> u64 {
        pages(addr, size)
            .filter(|&p| self.touch_page(key(dev, p)))
            .count() as u64
            * PAGE
    }

    /// Forgets a packed allocation; returns the bytes of pages nothing else holds any more.
    pub fn untouch(&self, dev: i32, addr: u64, size: u64) -> u64 {
        pages(addr, size)
            .filter(|&p| self.untouch_page(key(dev, p)))
            .count() as u64
            * PAGE
    }

    /// Adds one allocation to page `key`; true if the page was free before.
    fn touch_page(&self, key: u64) -> bool {
        let mine = (key + 1) << COUNT_BITS;
        for i in window(key) {
            let slot = &self.slots[i];
            let mut word = slot.load(Relaxed);
            loop {
                let next = match slot_key(word) {
                    None => mine | 1,
                    Some(k) if k == key => mine | ((word & COUNT_MAX) + 1).min(COUNT_MAX),
                    Some(_) => break,
                };
                match slot.compare_exchange_weak(word, next, Relaxed, Relaxed) {
                    Ok(_) => return word & COUNT_MAX == 0,
                    Err(now) => word = now,
                }
            }
        }
        self.overflow.modify(key, |count| {
            let fresh = count.is_none();
            *count = Some(count.unwrap_or(0).saturating_add(1));
            fresh
        })
    }

    /// Takes one allocation off page `key`; true if nothing lives in the page any more.
    fn untouch_page(&self, key: u64) -> bool {
        for i in window(key) {
            let slot = &self.slots[i];
            let mut word = slot.load(Relaxed);
            loop {
                match slot_key(word) {
                    // A slot never empties, so the key was never placed past here (nor spilled).
                    None => return false,
                    Some(k) if k == key => {}
                    Some(_) => break,
                }
                let count = word & COUNT_MAX;
                // Unknown (no live allocation) or saturated: leave it.
                if count == 0 || count == COUNT_MAX {
                    return false;
                }
                match slot.compare_exchange_weak(word, word - 1, Relaxed, Relaxed) {
                    Ok(_) => return count == 1,
                    Err(now) => word = now,
                }
            }
        }
        self.overflow.modify(key, |count| match *count {
            Some(n) if n > 1 => {
                *count = Some(n - 1);
                false
            }
            Some(_) => {
                *count = None;
                true
            }
            None => false,
        })
    }

    /// In a forked child: forgets every page.
    ///
    /// # Safety
    /// As [`crate::lock::Lock::reset_after_fork`]: in a forked child, before it starts another thread.
    pub unsafe fn reset_after_fork(&self) {
        for slot in &self.slots {
            slot.store(0, Relaxed);
        }
        // SAFETY: the caller's guarantee.
        unsafe { self.overflow.reset_after_fork() };
    }

    /// Forgets every page of a device.
    pub fn forget_device(&self, dev: i32) {
        let dev = dev as u64 & 0x3f;
        for slot in &self.slots {
            let _ = slot.fetch_update(Relaxed, Relaxed, |w| {
                slot_key(w)
                    .filter(|&k| dev_of(k) == dev)
                    .map(|_| w & !COUNT_MAX)
            });
        }
        self.overflow.remove_where(|k, _| dev_of(k) == dev);
    }
}

impl Default for PageSet {
    fn default() -> Self {
        PageSet::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn pages_are_charged_while_anything_lives_in_them() {
        let s = PageSet::new();
        let base = 0x7f00_0000_0000u64;
        // 32 x 64 KiB fill one page; the 33rd starts another.
        let charged: u64 = (0..33)
            .map(|i| s.touch(0, base + i * (64 << 10), 64 << 10))
            .sum();
        assert_eq!(charged, 4 * MIB);
        // Freeing all but one allocation of the first page keeps the page.
        let freed: u64 = (1..32)
            .map(|i| s.untouch(0, base + i * (64 << 10), 64 << 10))
            .sum();
        assert_eq!(freed, 0);
        assert_eq!(s.untouch(0, base, 64 << 10), 2 * MIB);
        assert_eq!(s.untouch(0, base + 32 * (64 << 10), 64 << 10), 2 * MIB);
    }

    #[test]
    fn straddling_allocations_touch_both_pages_and_devices_are_apart() {
        let s = PageSet::new();
        let addr = 0x7f00_0000_0000u64 + 2 * MIB - 4096;
        assert_eq!(s.touch(0, addr, 8192), 4 * MIB);
        assert_eq!(s.touch(1, addr, 8192), 4 * MIB);
        s.forget_device(1);
        assert_eq!(s.untouch(1, addr, 8192), 0);
        assert_eq!(s.untouch(0, addr, 8192), 4 * MIB);
        assert_eq!(
            s.untouch(0, addr, 8192),
            0,
            "an unknown free gives nothing back"
        );
    }

    #[test]
    fn crowded_windows_spill_and_stay_exact() {
        let s = PageSet::new();
        // More distinct pages than one window holds, all with the same home slot.
        let keys: Vec<u64> = (0..1u64 << 37)
            .filter(|&p| window(key(0, p)).next() == window(key(0, 0)).next())
            .take(WINDOW + 8)
            .collect();
        for &p in &keys {
            assert_eq!(s.touch(0, p * PAGE, 4096), PAGE);
            assert_eq!(s.touch(0, p * PAGE + 8192, 4096), 0);
        }
        assert_eq!(s.overflow.len(), 8);
        for &p in &keys {
            assert_eq!(s.untouch(0, p * PAGE, 4096), 0);
            assert_eq!(s.untouch(0, p * PAGE + 8192, 4096), PAGE);
        }
        assert!(s.overflow.is_empty());
    }

    #[test]
    fn threads_sharing_pages_charge_each_page_once() {
        static S: PageSet = PageSet::new();
        let charged = std::sync::atomic::AtomicI64::new(0);
        std::thread::scope(|scope| {
            for t in 0..8u64 {
                let charged = &charged;
                scope.spawn(move || {
                    for round in 0..5000u64 {
                        // Every thread's allocations interleave in the same few pages.
                        let addr = 0x7f00_0000_0000 + (round % 4) * PAGE + t * 65536;
                        let got = S.touch(0, addr, 65536) as i64;
                        charged.fetch_add(got, Relaxed);
                        charged.fetch_sub(S.untouch(0, addr, 65536) as i64, Relaxed);
                    }
                });
            }
        });
        assert_eq!(charged.load(Relaxed), 0, "every page given back once");
    }
}
