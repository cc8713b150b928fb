//! Stream-ordered memory pools: what each pool we know of is charged on its device, which is what the
//! driver said it reserved (`CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT`) when last read. The pool hooks
//! (`hooks::pool`) hold [`lock`] across a pool's read-reserve-allocate-read sequence; the cap check, the
//! measurement and the memory-information hooks re-read a device's pools through [`refresh`].

use crate::cuda::*;
use crate::driver;
use crate::ledger::LEDGER;
use std::sync::atomic::AtomicU64;
use vramcap_core::lock::{Guard, Lock};

/// How much a pool grows at a time. On an H100 with driver 580 a pool grew by 32 MiB for 1 MiB, by 64 MiB
/// for 33 MiB and by 128 MiB for 130 MiB: whole 32 MiB steps. Raised if a pool is seen to grow by more.
pub static POOL_STEP: AtomicU64 = AtomicU64::new(32 << 20);

#[derive(Debug, Clone, Copy)]
pub struct PoolCharge {
    pub pool: usize,
    pub dev: CUdevice,
    /// What the device ledger holds for this pool: its reserved bytes when last read.
    pub charged: u64,
}

impl PoolCharge {
    /// Brings the charge of this pool to what the driver says it reserves now.
    pub fn resync(&mut self) {
        let Ok((reserved, _)) = driver::pool_usage(self.pool as CUmemoryPool) else {
            return;
        };
        let Some(ledger) = LEDGER.device(self.dev) else {
            return;
        };
        if reserved > self.charged {
            ledger.force(reserved - self.charged);
        } else {
            ledger.give_back(self.charged - reserved);
        }
        self.charged = reserved;
    }
}

/// Every pool we know of.
pub struct Pools(Vec<PoolCharge>);

static POOLS: Lock<Pools> = Lock::new(Pools(Vec::new()));

/// The pools, for a hook's whole read-reserve-allocate-read sequence.
pub fn lock() -> Guard<'static, Pools> {
    POOLS.lock()
}

impl Pools {
    /// The record of `pool`, made (charged nothing yet) on `dev` if it is new.
    pub fn entry(&mut self, pool: usize, dev: CUdevice) -> &mut PoolCharge {
        let i = match self.0.iter().position(|p| p.pool == pool) {
            Some(i) => i,
            None => {
                self.0.push(PoolCharge {
                    pool,
                    dev,
                    charged: 0,
                });
                self.0.len() - 1
            }
        };
        &mut self.0[i]
    }

    /// The device of a pool we know of.
    pub fn device_of(&self, pool: usize) -> Option<CUdevice> {
        self.0.iter().find(|p| p.pool == pool).map(|p| p.dev)
    }

    /// Re-reads every pool of `dev`.
    pub fn resync_device(&mut self, dev: CUdevice) {
        for entry in self.0.iter_mut().filter(|p| p.dev == dev) {
            entry.resync();
        }
    }

    /// Forgets a destroyed pool and gives back what it was charged.
    pub fn destroyed(&mut self, pool: usize) {
        if let Some(i) = self.0.iter().position(|p| p.pool == pool) {
            let gone = self.0.swap_remove(i);
            if let Some(ledger) = LEDGER.device(gone.dev) {
                ledger.give_back(gone.charged);
            }
        }
    }
}

/// Re-reads one pool (after a free or a trim).
pub fn sync(pool: usize) {
    let mut pools = POOLS.lock();
    if let Some(entry) = pools.0.iter_mut().find(|p| p.pool == pool) {
        entry.resync();
    }
}

/// Re-reads every pool of `dev`: called when the cap seems reached, since pools trim themselves at
/// synchronisation points we do not see.
pub fn refresh(dev: CUdevice) {
    // try_lock: a pool hook calls the cap check while holding the lock, and has re-read the device's
    // pools itself just before; any other holder is a pool hook that re-reads them too.
    if let Some(mut pools) = POOLS.try_lock() {
        pools.resync_device(dev);
    }
}

/// Forgets the pools of a device whose last context is gone.
pub fn forget_device(dev: CUdevice) {
    POOLS.lock().0.retain(|p| p.dev != dev);
}

/// In a forked child: the parent's pools are not ours.
///
/// # Safety
/// Only from the fork child handler (`crate::fork`): one thread, no guard of these locks held.
pub unsafe fn reset_after_fork() {
    // SAFETY: the caller's guarantee.
    unsafe { POOLS.reset_after_fork(Pools(Vec::new())) };
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::unused_device;

    const MIB: u64 = 1 << 20;

    #[test]
    fn a_pool_is_recorded_once_on_the_device_it_was_first_seen_on() {
        let mut pools = Pools(Vec::new());
        assert_eq!(pools.device_of(0x5000), None);
        let e = pools.entry(0x5000, 2);
        assert_eq!((e.dev, e.charged), (2, 0), "a new pool is charged nothing");
        e.charged = 64 * MIB;
        let again = pools.entry(0x5000, 5);
        assert_eq!((again.dev, again.charged), (2, 64 * MIB));
        assert_eq!(pools.0.len(), 1);
        assert_eq!(pools.device_of(0x5000), Some(2));
    }

    #[test]
    fn a_destroyed_pool_gives_back_its_charge_and_an_unknown_one_nothing() {
        let dev = unused_device();
        let ledger = LEDGER.device(dev).unwrap();
        let mut pools = Pools(Vec::new());
        for (pool, bytes) in [(0x6000, 64 * MIB), (0x7000, 32 * MIB)] {
            ledger.force(bytes);
            pools.entry(pool, dev).charged = bytes;
        }
        pools.destroyed(0x8000);
        assert_eq!(ledger.snapshot().charged, 96 * MIB);
        pools.destroyed(0x6000);
        assert_eq!(ledger.snapshot().charged, 32 * MIB);
        assert_eq!(pools.device_of(0x6000), None);
        pools.destroyed(0x6000);
        assert_eq!(ledger.snapshot().charged, 32 * MIB, "destroyed once");
    }

    #[test]
    fn a_pool_charged_more_than_the_ledger_holds_never_wraps_it() {
        let dev = unused_device();
        let ledger = LEDGER.device(dev).unwrap();
        ledger.force(32 * MIB);
        let mut pools = Pools(Vec::new());
        pools.entry(0x9000, dev).charged = 64 * MIB;
        pools.destroyed(0x9000);
        assert_eq!(ledger.snapshot().charged, 0);
    }

    #[test]
    fn an_unreadable_pool_keeps_its_charge() {
        // No driver: CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT cannot be read.
        let dev = unused_device();
        let ledger = LEDGER.device(dev).unwrap();
        ledger.force(96 * MIB);
        let mut pools = Pools(Vec::new());
        pools.entry(0xa000, dev).charged = 96 * MIB;
        pools.resync_device(dev);
        pools.entry(0xa000, dev).resync();
        assert_eq!(pools.entry(0xa000, dev).charged, 96 * MIB);
        assert_eq!(ledger.snapshot().charged, 96 * MIB);
    }

    #[test]
    fn forgetting_a_device_forgets_only_its_pools() {
        let (gone, kept) = (unused_device(), unused_device());
        {
            let mut pools = lock();
            pools.entry(0xb000, gone);
            pools.entry(0xc000, kept);
        }
        forget_device(gone);
        let pools = lock();
        assert_eq!(pools.device_of(0xb000), None);
        assert_eq!(pools.device_of(0xc000), Some(kept));
    }

    #[test]
    fn a_refresh_while_a_pool_hook_holds_the_pools_returns_at_once() {
        // A pool hook reaches the cap check with the lock held: a refresh must not wait for it.
        let dev = unused_device();
        let held = lock();
        let (done, finished) = std::sync::mpsc::channel();
        let refresher = std::thread::spawn(move || {
            refresh(dev);
            done.send(()).unwrap();
        });
        let answer = finished.recv_timeout(std::time::Duration::from_secs(5));
        drop(held);
        refresher.join().unwrap();
        assert!(answer.is_ok(), "the refresh waited for the pools' lock");
    }
}
