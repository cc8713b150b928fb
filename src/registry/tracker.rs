//! Maps from a driver handle (device pointer, VMM handle, array) to what we charged for it.
//!
//! Sharded by a multiplicative hash of the key so that threads allocating at once rarely meet on one lock;
//! each shard is a plain `HashMap` behind a [`Lock`], which needs no initialisation at run time and which
//! a forked child can repair.

use crate::accounting::striped::Padded;
use crate::lock::Lock;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

const SHARDS: usize = 64;

/// Keys are addresses and handles: already well spread, so one multiply is enough hashing.
#[derive(Default)]
pub struct AddrHasher(u64);

impl Hasher for AddrHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3);
        }
    }
    fn write_u64(&mut self, key: u64) {
        self.0 = (key ^ (key >> 29)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

/// A shard on a cache line of its own; its table is sized up front on first use (see `insert`), so the
/// tables of different shards are not small neighbouring heap blocks that threads would fight over.
type Shard<V> = Padded<Lock<HashMap<u64, V, BuildHasherDefault<AddrHasher>>>>;
const SHARD_CAPACITY: usize = 64;

pub struct Tracker<V> {
    shards: [Shard<V>; SHARDS],
}

impl<V: Copy> Tracker<V> {
    pub const fn new() -> Tracker<V> {
        Tracker {
            shards: [const { Padded(Lock::new(HashMap::with_hasher(BuildHasherDefault::new()))) };
                SHARDS],
        }
    }

    fn shard(&self, key: u64) -> &Shard<V> {
        let mut h = AddrHasher::default();
        h.write_u64(key);
        &self.shards[(h.finish() >> 58) as usize % SHARDS]
    }

    /// Records `key`; returns what it replaced, if anything.
    pub fn insert(&self, key: u64, value: V) -> Option<V> {
        let mut shard = self.shard(key).lock();
        if shard.capacity() == 0 {
            shard.reserve(SHARD_CAPACITY);
        }
        shard.insert(key, value)
    }

    pub fn remove(&self, key: u64) -> Option<V> {
        self.shard(key).lock().remove(&key)
    }

    pub fn get(&self, key: u64) -> Option<V> {
        self.shard(key).lock().get(&key).copied()
    }

    /// Changes the record for `key` in place; returns the closure's answer, or `None` if `key` is unknown.
    pub fn update<R>(&self, key: u64, f: impl FnOnce(&mut V) -> R) -> Option<R> {
        self.shard(key).lock().get_mut(&key).map(f)
    }

    /// Reads and changes the record for `key` under its lock, in one step: `f` sees `None` for an unknown
    /// key, and leaving `None` removes the record.
    pub fn modify<R>(&self, key: u64, f: impl FnOnce(&mut Option<V>) -> R) -> R {
        let mut shard = self.shard(key).lock();
        let mut value = shard.remove(&key);
        let r = f(&mut value);
        if let Some(v) = value {
            if shard.capacity() == 0 {
                shard.reserve(SHARD_CAPACITY);
            }
            shard.insert(key, v);
        }
        r
    }

    /// Removes every record (key and value) for which `drop` says so.
    pub fn remove_where(&self, mut drop: impl FnMut(u64, &V) -> bool) {
        for shard in &self.shards {
            shard.lock().retain(|k, v| !drop(*k, v));
        }
    }

    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// In a forked child: every shard is free and empty again; the old tables are left behind unread.
    ///
    /// # Safety
    /// As [`Lock::reset_after_fork`]: in a forked child, before it starts another thread.
    pub unsafe fn reset_after_fork(&self) {
        for shard in &self.shards {
            // SAFETY: the caller's guarantee.
            unsafe {
                shard
                    .0
                    .reset_after_fork(HashMap::with_hasher(BuildHasherDefault::new()))
            };
        }
    }
}

impl<V: Copy> Default for Tracker<V> {
    fn default() -> Self {
        Tracker::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_remove_update() {
        let t: Tracker<(i32, u64)> = Tracker::new();
        for k in 0..1000u64 {
            assert_eq!(t.insert(k << 21, (0, k)), None);
        }
        assert_eq!(t.len(), 1000);
        assert_eq!(
            t.update(5 << 21, |v| {
                v.1 += 1;
                v.1
            }),
            Some(6)
        );
        assert_eq!(t.remove(5 << 21), Some((0, 6)));
        assert_eq!(t.remove(5 << 21), None);
        t.remove_where(|_, v| v.1 % 2 == 0);
        assert_eq!(t.len(), 499);
        assert!(t.shards.iter().filter(|s| !s.lock().is_empty()).count() > SHARDS / 2);
    }
}
