//! A lock-free map from device addresses (or handles) to small records, for the hooks' hot path.
//!
//! Every allocation inserts one record and every free removes one, from any thread, so the map must not
//! serialise threads. It is an open-addressing table of fixed size in static memory: a slot's key word
//! says what the slot holds, and a thread that wants to read or change a record first swaps the key for
//! `key | BUSY` (one compare-and-swap), which makes it the slot's only user until it stores a key back.
//! Nothing is allocated, nothing locks, and two threads meet only on a slot they both want.
//!
//! A removed record leaves a tombstone, which the next insert reuses. Inserting needs no search for an
//! existing key: the driver never hands out an address that is still live, so a new key is never present
//! (a leftover record for the same key, which only a missed free could leave, would be shadowed, not
//! duplicated in use). A lookup stops at an empty slot, because a slot never becomes empty again.
//! Keys whose probe window is full go to a locked [`Tracker`], which is only consulted once it holds
//! anything.

use crate::registry::tracker::Tracker;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::*};

/// A record that packs into two words.
pub trait Pack: Copy {
    fn pack(self) -> [u64; 2];
    fn unpack(words: [u64; 2]) -> Self;
}

const EMPTY: u64 = 0;
const TOMB: u64 = 1;
const BUSY: u64 = 1 << 63;
/// Slots in the table (24 bytes each).
const CAPACITY: usize = 1 << 15;
/// How far from its home slot a key may lie.
const WINDOW: usize = 64;

struct Slot {
    key: AtomicU64,
    words: [AtomicU64; 2],
}

pub struct AddrMap<V> {
    slots: [Slot; CAPACITY],
    /// Records whose window was full; `spilled` says whether to look there at all.
    overflow: Tracker<V>,
    spilled: AtomicUsize,
}

fn home(key: u64) -> usize {
    // Addresses are aligned, so their low bits say little: mix before taking the top bits.
    ((key ^ (key >> 29)).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 49) as usize % CAPACITY
}

fn window(key: u64) -> impl Iterator<Item = usize> {
    let h = home(key);
    (0..WINDOW).map(move |i| (h + i) % CAPACITY)
}

/// What a slot holds for a caller looking for `key`.
enum Seen {
    Mine,
    Free(u64),
    Other,
    End,
}

impl<V: Pack> AddrMap<V> {
    pub const fn new() -> AddrMap<V> {
        AddrMap {
            slots: [const {
                Slot {
                    key: AtomicU64::new(EMPTY),
                    words: [AtomicU64::new(0), AtomicU64::new(0)],
                }
            }; CAPACITY],
            overflow: Tracker::new(),
            spilled: AtomicUsize::new(0),
        }
    }

    fn valid(key: u64) -> bool {
        key > TOMB && key & BUSY == 0
    }

    /// Waits out another thread's claim on slot `i`, and says what it then holds for `key`.
    fn look(&self, i: usize, key: u64) -> Seen {
        let mut spins = 0u32;
        loop {
            let k = self.slots[i].key.load(Acquire);
            match k {
                EMPTY => return Seen::End,
                TOMB => return Seen::Free(TOMB),
                _ if k == key | BUSY => {}
                _ if k == key => return Seen::Mine,
                _ => return Seen::Other,
            }
            spins += 1;
            if spins.is_multiple_of(64) {
                std::thread::yield_now();
            }
            std::hint::spin_loop();
        }
    }

    /// Claims the slot holding `key`: afterwards the slot is ours until `key` or [`TOMB`] is stored.
    fn claim(&self, key: u64) -> Option<usize> {
        if !Self::valid(key) {
            return None;
        }
        for i in window(key) {
            loop {
                match self.look(i, key) {
                    Seen::Mine => {
                        if self.slots[i]
                            .key
                            .compare_exchange(key, key | BUSY, Acquire, Relaxed)
                            .is_ok()
                        {
                            return Some(i);
                        }
                    }
                    Seen::End => return None,
                    Seen::Free(_) | Seen::Other => break,
                }
            }
        }
        None
    }

    fn read(&self, i: usize) -> V {
        let w = &self.slots[i].words;
        V::unpack([w[0].load(Relaxed), w[1].load(Relaxed)])
    }

    fn write(&self, i: usize, v: V) {
        let [a, b] = v.pack();
        self.slots[i].words[0].store(a, Relaxed);
        self.slots[i].words[1].store(b, Relaxed);
    }

    fn spilled(&self) -> bool {
        self.spilled.load(Acquire) != 0
    }

    /// Records `key`. A key that is live already is replaced (and its old record returned).
    pub fn insert(&self, key: u64, value: V) -> Option<V> {
        if !Self::valid(key) {
            return self.spill(key, value);
        }
        for i in window(key) {
            loop {
                let seen = match self.look(i, key) {
                    Seen::End => Seen::Free(EMPTY),
                    s => s,
                };
                match seen {
                    Seen::Free(free) => {
                        if self.slots[i]
                            .key
                            .compare_exchange(free, key | BUSY, Acquire, Relaxed)
                            .is_ok()
                        {
                            self.write(i, value);
                            self.slots[i].key.store(key, Release);
                            return None;
                        }
                    }
                    Seen::Mine => {
                        if let Some(old) = self.update(key, |v| std::mem::replace(v, value)) {
                            return Some(old);
                        }
                    }
                    Seen::Other | Seen::End => break,
                }
            }
        }
        self.spill(key, value)
    }

    fn spill(&self, key: u64, value: V) -> Option<V> {
        let old = self.overflow.insert(key, value);
        if old.is_none() {
            self.spilled.fetch_add(1, Release);
        }
        old
    }

    pub fn remove(&self, key: u64) -> Option<V> {
        if let Some(i) = self.claim(key) {
            let v = self.read(i);
            self.slots[i].key.store(TOMB, Release);
            return Some(v);
        }
        if !self.spilled() {
            return None;
        }
        let old = self.overflow.remove(key);
        if old.is_some() {
            self.spilled.fetch_sub(1, Release);
        }
        old
    }

    pub fn get(&self, key: u64) -> Option<V> {
        self.update(key, |v| *v)
    }

    /// Changes the record for `key` in place; returns the closure's answer, or `None` if `key` is unknown.
    pub fn update<R>(&self, key: u64, f: impl FnOnce(&mut V) -> R) -> Option<R> {
        if let Some(i) = self.claim(key) {
            let mut v = self.read(i);
            let r = f(&mut v);
            self.write(i, v);
            self.slots[i].key.store(key, Release);
            return Some(r);
        }
        if !self.spilled() {
            return None;
        }
        self.overflow.update(key, f)
    }

    /// Removes every record (key and value) for which `drop` says so.
    pub fn remove_where(&self, mut drop: impl FnMut(u64, &V) -> bool) {
        for (i, slot) in self.slots.iter().enumerate() {
            loop {
                let k = slot.key.load(Acquire);
                if !Self::valid(k & !BUSY) {
                    break;
                }
                if k & BUSY != 0 {
                    std::hint::spin_loop();
                    continue;
                }
                if slot
                    .key
                    .compare_exchange(k, k | BUSY, Acquire, Relaxed)
                    .is_ok()
                {
                    let gone = drop(k, &self.read(i));
                    slot.key.store(if gone { TOMB } else { k }, Release);
                    break;
                }
            }
        }
        if self.spilled() {
            let mut removed = 0;
            self.overflow.remove_where(|k, v| {
                let gone = drop(k, v);
                removed += usize::from(gone);
                gone
            });
            self.spilled.fetch_sub(removed, Release);
        }
    }

    pub fn len(&self) -> usize {
        let live = self
            .slots
            .iter()
            .filter(|s| Self::valid(s.key.load(Relaxed) & !BUSY))
            .count();
        live + self.overflow.len()
    }

    /// In a forked child: forgets every record (a slot another thread was writing stays claimed no more).
    ///
    /// # Safety
    /// As [`crate::lock::Lock::reset_after_fork`]: in a forked child, before it starts another thread.
    pub unsafe fn reset_after_fork(&self) {
        for slot in &self.slots {
            slot.key.store(EMPTY, Release);
        }
        // SAFETY: the caller's guarantee.
        unsafe { self.overflow.reset_after_fork() };
        self.spilled.store(0, Release);
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<V: Pack> Default for AddrMap<V> {
    fn default() -> Self {
        AddrMap::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Copy, Debug, PartialEq)]
    struct Rec(u64, u64);
    impl Pack for Rec {
        fn pack(self) -> [u64; 2] {
            [self.0, self.1]
        }
        fn unpack(w: [u64; 2]) -> Rec {
            Rec(w[0], w[1])
        }
    }

    #[test]
    fn insert_get_update_remove() {
        static M: AddrMap<Rec> = AddrMap::new();
        let m = &M;
        for k in 1..2000u64 {
            assert_eq!(m.insert(k << 21, Rec(k, 1)), None);
        }
        assert_eq!(m.len(), 1999);
        assert_eq!(m.get(7 << 21), Some(Rec(7, 1)));
        assert_eq!(m.update(7 << 21, |r| r.1 += 1), Some(()));
        assert_eq!(m.remove(7 << 21), Some(Rec(7, 2)));
        assert_eq!(m.remove(7 << 21), None, "a second free finds nothing");
        assert_eq!(m.get(12345), None);
        // A replaced record comes back, so its charge can be given back.
        assert_eq!(m.insert(8 << 21, Rec(0, 0)), Some(Rec(8, 1)));
        m.remove_where(|_, r| r.0 % 2 == 0);
        assert_eq!(m.len(), 999);
        assert_eq!(m.get(9 << 21), Some(Rec(9, 1)));
    }

    #[test]
    fn keys_past_a_full_window_spill_and_are_still_found() {
        static M: AddrMap<Rec> = AddrMap::new();
        let m = &M;
        // Keys that share one home slot fill its window, then go to the overflow map.
        let same_home: Vec<u64> = (2..u64::MAX)
            .filter(|&k| home(k) == home(2))
            .take(WINDOW + 10)
            .collect();
        for (n, &k) in same_home.iter().enumerate() {
            m.insert(k, Rec(n as u64, 0));
        }
        assert_eq!(m.spilled.load(Relaxed), 10);
        for (n, &k) in same_home.iter().enumerate() {
            assert_eq!(m.get(k), Some(Rec(n as u64, 0)), "key {n}");
        }
        for &k in &same_home {
            assert!(m.remove(k).is_some());
        }
        assert!(m.is_empty());
        assert_eq!(m.spilled.load(Relaxed), 0);
    }

    #[test]
    fn threads_inserting_and_removing_at_once_lose_nothing() {
        static M: AddrMap<Rec> = AddrMap::new();
        let m = &M;
        let handles: Vec<_> = (0..8u64)
            .map(|t| {
                std::thread::spawn(move || {
                    let mut sum = 0;
                    for round in 0..2000u64 {
                        let keys: Vec<u64> = (0..8)
                            .map(|i| ((t << 40) | (round * 8 + i)) << 12)
                            .collect();
                        for &k in &keys {
                            assert_eq!(m.insert(k, Rec(k, t)), None);
                        }
                        for &k in &keys {
                            let r = m.remove(k).expect("inserted by this thread");
                            assert_eq!(r, Rec(k, t));
                            sum += 1;
                        }
                    }
                    sum
                })
            })
            .collect();
        let total: u64 = handles.into_iter().map(|h| h.join().unwrap()).sum();
        assert_eq!(total, 8 * 2000 * 8);
        assert!(m.is_empty());
    }

    #[test]
    fn keys_that_are_not_addresses_still_work() {
        static M: AddrMap<Rec> = AddrMap::new();
        let m = &M;
        for k in [0, 1, BUSY | 5] {
            assert_eq!(m.insert(k, Rec(k, 0)), None);
            assert_eq!(m.remove(k), Some(Rec(k, 0)));
        }
    }
}
