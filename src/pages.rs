//! Which 2 MiB device pages hold live packed (sub-2-MiB) allocations, per device.
//!
//! The driver packs small allocations into shared pages and can give a page back only when nothing in it
//! is live. Counting live allocations per page from their real addresses therefore charges exactly the
//! pages the driver must keep, however frees fragment them, where a model of "bytes in use" would not.

use crate::charge::PAGE;
use crate::tracker::Tracker;

pub struct PageSet {
    /// (device, page index) -> live packed allocations in that page.
    live: Tracker<u32>,
}

fn key(dev: i32, page: u64) -> u64 {
    // Device ordinals are below 64 and page indices below 2^43 (a 64-bit address over 2 MiB).
    ((dev as u64 & 0x3f) << 48) | (page & ((1 << 48) - 1))
}

fn pages(addr: u64, size: u64) -> std::ops::RangeInclusive<u64> {
    let last = addr.saturating_add(size.max(1) - 1);
    (addr / PAGE)..=(last / PAGE)
}

impl PageSet {
    pub const fn new() -> PageSet {
        PageSet {
            live: Tracker::new(),
        }
    }

    /// Records a packed allocation at `addr`; returns the bytes of pages it put in use.
    pub fn touch(&self, dev: i32, addr: u64, size: u64) -> u64 {
        pages(addr, size)
            .filter(|&p| {
                self.live.modify(key(dev, p), |count| {
                    let fresh = count.is_none();
                    *count = Some(count.unwrap_or(0).saturating_add(1));
                    fresh
                })
            })
            .count() as u64
            * PAGE
    }

    /// Forgets a packed allocation; returns the bytes of pages nothing else holds any more.
    pub fn untouch(&self, dev: i32, addr: u64, size: u64) -> u64 {
        pages(addr, size)
            .filter(|&p| {
                self.live.modify(key(dev, p), |count| match *count {
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
            })
            .count() as u64
            * PAGE
    }

    /// Forgets every page of a device.
    pub fn forget_device(&self, dev: i32) {
        let tag = (dev as u64 & 0x3f) << 48;
        self.live.remove_where(|k, _| k & !((1 << 48) - 1) == tag);
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
}
