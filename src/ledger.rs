//! Per-device byte counts with an atomic reserve-then-commit cap check.
//!
//! Every charge is taken with one compare-and-swap that adds the bytes only if the sum stays within the
//! cap, before the driver is called; the [`Reservation`] is committed when the driver succeeds and given back
//! (also on unwind) when it fails. Any number of threads can reserve at once and never jointly cross the
//! cap. Counters saturate at zero: a release can never wrap a counter around.
//!
//! A packed allocation (under 2 MiB, see [`crate::charge`]) reserves the pages it could touch at worst;
//! once the driver has placed it, the caller commits the pages it really put in use ([`crate::pages`]).

use crate::charge::Charge;
use crate::log::unix_ms;
use crate::striped::{Padded, StripedCounter};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// How many CUDA ordinals a process may use.
pub const MAX_DEVICES: usize = 64;
/// The cap value meaning "count, do not cap".
pub const UNCAPPED: u64 = u64::MAX;

/// Why an allocation was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    /// Bytes the allocation would have added.
    pub bytes: u64,
    /// Bytes charged when it was refused.
    pub in_use: u64,
    pub cap: u64,
}

/// One device's counters.
#[derive(Debug)]
pub struct DeviceLedger {
    cap: AtomicU64,
    /// Everything the driver holds for this process on this device, reservations in flight included.
    /// The one counter every allocation must update atomically, so it has a cache line to itself.
    charged: Padded<AtomicU64>,
    /// The sizes callers asked for, beside what they cost.
    requested: StripedCounter,
    /// The part of `charged` that is the context's own memory.
    context: AtomicU64,
    peak: Padded<AtomicU64>,
    allocations: StripedCounter,
    refusals: AtomicU64,
    last_refused_bytes: AtomicU64,
    last_refused_unix_ms: AtomicU64,
}

/// A charge taken ahead of a driver call. Dropping it gives the bytes back; [`Reservation::commit`] keeps them.
#[must_use = "a reservation is given back when dropped"]
pub struct Reservation<'a> {
    ledger: &'a DeviceLedger,
    charge: Charge,
}

impl Reservation<'_> {
    /// The driver call succeeded: the bytes stay charged, and `requested` bytes are recorded beside them.
    pub fn commit(self, requested: u64) -> Charge {
        let charge = self.charge;
        self.ledger.requested.add(requested);
        self.ledger.allocations.add(1);
        std::mem::forget(self);
        charge
    }
}

impl Reservation<'_> {
    /// Commits what the driver really took, which may differ from the estimate reserved: the difference is
    /// charged without a cap check, since the memory is already taken.
    pub fn commit_as(self, actual: Charge, requested: u64) -> Charge {
        if actual == self.charge {
            return self.commit(requested);
        }
        let ledger = self.ledger;
        let taken = ledger.reserve_uncapped(actual);
        drop(self);
        taken.commit(requested)
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        self.ledger.uncharge(self.charge);
    }
}

impl DeviceLedger {
    pub const fn new() -> DeviceLedger {
        DeviceLedger {
            cap: AtomicU64::new(UNCAPPED),
            charged: Padded(AtomicU64::new(0)),
            requested: StripedCounter::new(),
            context: AtomicU64::new(0),
            peak: Padded(AtomicU64::new(0)),
            allocations: StripedCounter::new(),
            refusals: AtomicU64::new(0),
            last_refused_bytes: AtomicU64::new(0),
            last_refused_unix_ms: AtomicU64::new(0),
        }
    }

    pub fn set_cap(&self, cap: u64) {
        self.cap.store(cap, Relaxed);
    }

    /// What the cap leaves, from two plain loads (no statistics summed): for checks on the hot path.
    pub fn headroom(&self) -> Option<u64> {
        self.cap()
            .map(|c| c.saturating_sub(self.charged.load(Relaxed)))
    }

    pub fn cap(&self) -> Option<u64> {
        Some(self.cap.load(Relaxed)).filter(|&c| c != UNCAPPED)
    }

    /// Adds `bytes` to `charged` if the sum stays within the cap (or always, for memory already taken),
    /// in one compare-and-swap loop: the counter itself never shows more than the cap.
    fn try_add(&self, bytes: u64, capped: bool) -> Result<(), Refusal> {
        if bytes == 0 {
            return Ok(());
        }
        let cap = if capped {
            self.cap.load(Relaxed)
        } else {
            u64::MAX
        };
        self.charged
            .fetch_update(Relaxed, Relaxed, |cur| {
                cur.checked_add(bytes).filter(|&next| next <= cap)
            })
            .map(|before| self.note_total(before + bytes))
            .map_err(|cur| {
                self.refusals.fetch_add(1, Relaxed);
                self.last_refused_bytes.store(bytes, Relaxed);
                self.last_refused_unix_ms.store(unix_ms(), Relaxed);
                Refusal {
                    bytes,
                    in_use: cur,
                    cap,
                }
            })
    }

    /// Gives back `bytes` of a charge that was taken with [`DeviceLedger::force`].
    pub fn give_back(&self, bytes: u64) {
        self.sub(bytes);
    }

    /// Reserves the context's memory (an estimate until measured) against the cap.
    pub fn reserve_context(&self, bytes: u64) -> Result<(), Refusal> {
        self.try_add(bytes, true)?;
        self.context.fetch_add(bytes, Relaxed);
        self.note_peak();
        Ok(())
    }

    /// Takes `bytes` off `charged`, saturating at zero: one `fetch_sub`, and a repair in the case that
    /// should never happen (more given back than held), so the counter can never wrap.
    fn sub(&self, bytes: u64) {
        let before = self.charged.fetch_sub(bytes, Relaxed);
        if before < bytes {
            self.charged.fetch_add(bytes - before, Relaxed);
        }
    }

    /// Bookkeeping after `charged` reached `total`: the peak, and whether the device is near its cap.
    fn note_total(&self, total: u64) {
        if total > self.peak.load(Relaxed) {
            self.peak.fetch_max(total, Relaxed);
        }
    }

    /// Reserves `charge` against the cap.
    pub fn reserve(&self, charge: Charge) -> Result<Reservation<'_>, Refusal> {
        self.add(charge, true)
    }

    /// Charges memory the driver has already handed out, cap or not, as a reservation to commit.
    pub fn reserve_uncapped(&self, charge: Charge) -> Reservation<'_> {
        match self.add(charge, false) {
            Ok(r) => r,
            // Unreachable: without a cap nothing is refused. Charge nothing rather than panic.
            Err(_) => Reservation {
                ledger: self,
                charge: Charge::Pages(0),
            },
        }
    }

    fn add(&self, charge: Charge, capped: bool) -> Result<Reservation<'_>, Refusal> {
        self.try_add(charge.worst_case(), capped)?;
        Ok(Reservation {
            ledger: self,
            charge,
        })
    }

    /// Charges memory the driver has already handed out (it cannot be refused any more).
    pub fn force(&self, bytes: u64) {
        let _ = self
            .charged
            .fetch_update(Relaxed, Relaxed, |cur| Some(cur.saturating_add(bytes)));
        self.note_peak();
    }

    /// Gives back a committed charge whose memory the driver has freed.
    pub fn release(&self, charge: Charge, requested: u64) {
        self.uncharge(charge);
        self.requested.sub(requested);
        self.allocations.sub(1);
    }

    fn uncharge(&self, charge: Charge) {
        self.sub(charge.worst_case());
    }

    /// Moves the context's share of `charged` to `bytes` (a measurement replacing an estimate).
    pub fn set_context(&self, bytes: u64) {
        let old = self.context.swap(bytes, Relaxed);
        if bytes >= old {
            self.force(bytes - old);
        } else {
            self.sub(old - bytes);
        }
    }

    /// Forgets everything (the device's last context is gone, and its memory with it).
    pub fn reset(&self) {
        for counter in [&*self.charged, &self.context] {
            counter.store(0, Relaxed);
        }
        self.requested.clear();
        self.allocations.clear();
    }

    /// Raises the peak to the current charge.
    fn note_peak(&self) {
        self.note_total(self.charged.load(Relaxed));
    }

    pub fn snapshot(&self) -> DeviceUsage {
        DeviceUsage {
            cap: self.cap(),
            charged: self.charged.load(Relaxed),
            requested: self.requested.get(),
            context: self.context.load(Relaxed),
            peak: self.peak.load(Relaxed),
            allocations: self.allocations.get(),
            refusals: self.refusals.load(Relaxed),
            last_refused_bytes: self.last_refused_bytes.load(Relaxed),
            last_refused_unix_ms: self.last_refused_unix_ms.load(Relaxed),
        }
    }
}

impl Default for DeviceLedger {
    fn default() -> Self {
        DeviceLedger::new()
    }
}

/// A copy of one device's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DeviceUsage {
    pub cap: Option<u64>,
    pub charged: u64,
    pub requested: u64,
    pub context: u64,
    pub peak: u64,
    pub allocations: u64,
    pub refusals: u64,
    pub last_refused_bytes: u64,
    pub last_refused_unix_ms: u64,
}

impl DeviceUsage {
    /// What the process may still take: the cap minus what it holds.
    pub fn headroom(&self) -> Option<u64> {
        self.cap.map(|c| c.saturating_sub(self.charged))
    }
}

/// All devices of one process.
pub struct Ledger {
    devices: [DeviceLedger; MAX_DEVICES],
}

impl Ledger {
    pub const fn new() -> Ledger {
        Ledger {
            devices: [const { DeviceLedger::new() }; MAX_DEVICES],
        }
    }

    /// The device's ledger; `None` for an ordinal outside `0..MAX_DEVICES`.
    pub fn device(&self, ordinal: i32) -> Option<&DeviceLedger> {
        usize::try_from(ordinal)
            .ok()
            .and_then(|i| self.devices.get(i))
    }
}

impl Default for Ledger {
    fn default() -> Self {
        Ledger::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::sync::Arc;

    const MIB: u64 = 1 << 20;

    #[test]
    fn cap_holds_and_refusal_reports() {
        let l = DeviceLedger::new();
        l.set_cap(10 * MIB);
        let a = l.reserve(Charge::Pages(8 * MIB)).unwrap().commit(7 * MIB);
        let r = l.reserve(Charge::Pages(4 * MIB)).err().unwrap();
        assert_eq!(
            r,
            Refusal {
                bytes: 4 * MIB,
                in_use: 8 * MIB,
                cap: 10 * MIB
            }
        );
        assert_eq!(l.snapshot().refusals, 1);
        l.release(a, 7 * MIB);
        assert_eq!(l.snapshot().charged, 0);
        assert_eq!(l.snapshot().peak, 8 * MIB);
    }

    #[test]
    fn dropped_reservation_is_given_back() {
        let l = DeviceLedger::new();
        l.set_cap(4 * MIB);
        {
            let _r = l.reserve(Charge::Pages(4 * MIB)).unwrap();
            assert_eq!(l.snapshot().charged, 4 * MIB);
        }
        assert_eq!(l.snapshot().charged, 0);
    }

    #[test]
    fn packed_reserves_the_worst_case_and_commits_what_was_touched() {
        let l = DeviceLedger::new();
        l.set_cap(8 * MIB);
        let r = l.reserve(Charge::Packed(64 << 10)).unwrap();
        assert_eq!(
            l.snapshot().charged,
            4 * MIB,
            "up to two pages until placed"
        );
        let c = r.commit_as(Charge::Pages(0), 64 << 10);
        assert_eq!(
            l.snapshot().charged,
            0,
            "it landed in a page already in use"
        );
        assert_eq!(l.snapshot().requested, 64 << 10);
        l.release(c, 64 << 10);
        let r = l.reserve(Charge::Packed(1)).unwrap();
        let c = r.commit_as(Charge::Pages(2 * MIB), 1);
        assert_eq!(l.snapshot().charged, 2 * MIB);
        l.release(c, 1);
        assert_eq!(l.snapshot().charged, 0);
    }

    #[test]
    fn counters_never_underflow() {
        let l = DeviceLedger::new();
        l.release(Charge::Pages(4 * MIB), 123);
        l.release(Charge::Pages(2 * MIB), 1);
        let s = l.snapshot();
        assert_eq!((s.charged, s.requested, s.allocations), (0, 0, 0));
    }

    #[test]
    fn context_measurement_replaces_estimate() {
        let l = DeviceLedger::new();
        l.set_context(512 * MIB);
        l.set_context(530 * MIB);
        assert_eq!(l.snapshot().charged, 530 * MIB);
        l.set_context(500 * MIB);
        assert_eq!(l.snapshot().charged, 500 * MIB);
        assert_eq!(l.snapshot().context, 500 * MIB);
    }

    /// Many threads racing for one cap never cross it, and everything comes back to zero.
    #[test]
    fn threads_never_jointly_cross_the_cap() {
        let l = Arc::new(DeviceLedger::new());
        let cap = 16 * MIB;
        l.set_cap(cap);
        let start = Arc::new(std::sync::Barrier::new(32));
        let handles: Vec<_> = (0..32)
            .map(|t| {
                let l = Arc::clone(&l);
                let start = Arc::clone(&start);
                std::thread::spawn(move || {
                    start.wait();
                    let mut held = Vec::new();
                    for i in 0..5_000u64 {
                        let charge = Charge::Pages(2 * MIB * (1 + (i + t) % 3));
                        if let Ok(r) = l.reserve(charge) {
                            assert!(l.snapshot().charged <= cap);
                            held.push(r.commit(1));
                        }
                        if held.len() > 6 || i % 7 == 0 {
                            if let Some(c) = held.pop() {
                                l.release(c, 1);
                            }
                        }
                    }
                    for c in held {
                        l.release(c, 1);
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        let s = l.snapshot();
        assert!(s.peak <= cap, "peak {} over cap {}", s.peak, cap);
        assert_eq!((s.charged, s.requested, s.allocations), (0, 0, 0));
        assert!(s.refusals > 0, "the test must reach the cap");
    }

    #[derive(Debug, Clone)]
    enum Op {
        Alloc(u64),
        Free(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            ((2u64 << 20)..(12 << 20)).prop_map(Op::Alloc),
            any::<usize>().prop_map(Op::Free),
        ]
    }

    proptest! {
        /// The ledger agrees with a naive model that recomputes the charge from the live set.
        #[test]
        fn matches_naive_model(ops in proptest::collection::vec(op(), 1..200), cap_mib in 1u64..64) {
            let cap = cap_mib * MIB;
            let l = DeviceLedger::new();
            l.set_cap(cap);
            let mut live: Vec<(Charge, u64)> = Vec::new();
            let model = |live: &Vec<(Charge, u64)>| live.iter().map(|(c, _)| c.worst_case()).sum::<u64>();
            for op in ops {
                match op {
                    Op::Alloc(bytes) => {
                        let charge = Charge::for_request(bytes);
                        let mut next = live.clone();
                        next.push((charge, bytes));
                        let fits = model(&next) <= cap;
                        match l.reserve(charge) {
                            Ok(r) => { prop_assert!(fits); r.commit(bytes); live = next; }
                            Err(_) => prop_assert!(!fits),
                        }
                    }
                    Op::Free(i) if !live.is_empty() => {
                        let (c, b) = live.remove(i % live.len());
                        l.release(c, b);
                    }
                    Op::Free(_) => {}
                }
                let s = l.snapshot();
                prop_assert_eq!(s.charged, model(&live));
                prop_assert_eq!(s.requested, live.iter().map(|(_, b)| b).sum::<u64>());
                prop_assert!(s.charged <= cap);
            }
        }
    }
}
