//! Per-device byte counts with an atomic reserve-then-commit cap check.
//!
//! Every charge is taken with one compare-and-swap that adds the bytes only if the sum stays within the
//! cap, before the driver is called; the [`Reservation`] is committed when the driver succeeds and given back
//! (also on unwind) when it fails. Any number of threads can reserve at once and never jointly cross the
//! cap. Counters saturate at zero: a release can never wrap a counter around.
//!
//! A packed allocation (under 2 MiB, see [`crate::accounting::charge`]) reserves the pages it could touch at worst;
//! once the driver has placed it, the caller commits the pages it really put in use ([`crate::accounting::pages`]).
//!
//! **Stocks.** One counter that every allocation and free of every thread updates is one cache line that
//! all cores fight over. As the Linux memory cgroup does with its per-CPU charge stocks, each thread keeps
//! a small stock of bytes already charged against the cap: while the device is far from its cap, a thread
//! that goes to the shared counter takes [`BATCH`] more than it needs, later reservations come out of the
//! stock, and frees go back into it (beyond [`STOCK_MAX`], the excess goes back to the shared counter). The
//! shared counter still holds everything charged, stocks included, so it still never exceeds the cap;
//! a reservation that would exceed it first drains every thread's stock, then tries once more. Figures
//! shown to people ([`DeviceLedger::snapshot`]) leave the stocks out.
//!
//! **What the process holds, and its peak.** `charged` also holds what is in stocks and in reservations
//! still in flight, so what the process *holds* is `charged` minus both. Each thread keeps its in-flight
//! bytes beside its stock, and moves bytes between the two in an order that can only ever make a reader
//! see less than is held (in-flight first, then the stock). Moves that touch both `charged` and a stock
//! (refills, drains, overflowing stocks) are bracketed by [`DeviceLedger::movers`] and `moves`, and a
//! reader retries while one is under way, so a reading of what is held never shows more than was held.
//! The peak is raised from such readings: at every commit or forced charge that went to the shared
//! counter (every allocation near the cap, where stocks are never taken) and at every snapshot, so it is
//! exact near the cap and sampled (at least every publishing tick) far from it. It never shows more than
//! the process held. Refusals are counted by the caller, once per refused call ([`DeviceLedger::note_refusal`]),
//! since one call may try the counter more than once.

use crate::accounting::charge::Charge;
use crate::accounting::figures::DeviceFigures;
use crate::accounting::striped::{bump, signed_sum, stripe, Padded, Stripe, STRIPES};
use crate::log::unix_ms;
use std::sync::atomic::{
    AtomicU64,
    Ordering::{Relaxed, SeqCst},
};

/// A move between `charged` and a stock under way (see the module doc); ends when dropped.
struct Move<'a>(&'a DeviceLedger);

impl Drop for Move<'_> {
    fn drop(&mut self) {
        self.0.moves.fetch_add(1, SeqCst);
        self.0.movers.fetch_sub(1, SeqCst);
    }
}

/// What a thread takes for its stock when it goes to the shared counter far from the cap.
pub const BATCH: u64 = 32 << 20;
/// The most a thread keeps in stock; frees beyond it go back to the shared counter.
pub const STOCK_MAX: u64 = 2 * BATCH;
/// Stocks are only taken while the cap leaves at least this much after them.
const STOCK_FAR: u64 = 1 << 30;

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
    /// Everything the driver holds for this process on this device, reservations in flight and stocks
    /// included: the counter the cap is checked against, on a cache line of its own.
    charged: Padded<AtomicU64>,
    /// Each thread's share of the figures that only readers sum, on a line of its own.
    shares: [Padded<Share>; STRIPES],
    /// The part of `charged` that is the context's own memory.
    context: AtomicU64,
    peak: Padded<AtomicU64>,
    /// Moves between `charged` and the stocks under way, and how many have ended (see the module doc).
    movers: Padded<AtomicU64>,
    moves: AtomicU64,
    refusals: AtomicU64,
    last_refused_bytes: AtomicU64,
    last_refused_unix_ms: AtomicU64,
}

/// One thread's share of a device's counters.
#[derive(Debug)]
struct Share {
    /// Bytes in `charged` that no allocation uses yet (see "Stocks" above).
    stock: AtomicU64,
    /// Bytes of this thread's reservations in flight (in `charged`, not yet held). Only its thread
    /// writes it.
    inflight: AtomicU64,
    /// The sizes callers asked for, beside what they cost; may wrap (a free on another thread).
    requested: AtomicU64,
    allocations: AtomicU64,
}

impl Share {
    const fn new() -> Share {
        Share {
            stock: AtomicU64::new(0),
            inflight: AtomicU64::new(0),
            requested: AtomicU64::new(0),
            allocations: AtomicU64::new(0),
        }
    }
}

/// A charge taken ahead of a driver call. Dropping it gives the bytes back; [`Reservation::commit`] keeps them.
#[must_use = "a reservation is given back when dropped"]
pub struct Reservation<'a> {
    ledger: &'a DeviceLedger,
    /// The stripe of the thread that took it, which it commits to (so it stays on that thread).
    stripe: Stripe,
    charge: Charge,
    /// The device's charge right after this reservation was taken.
    total: u64,
    /// Whether it went to the shared counter (then its commit raises the peak).
    slow: bool,
}

impl Reservation<'_> {
    /// The driver call succeeded: the bytes stay charged, and `requested` bytes are recorded beside them.
    pub fn commit(self, requested: u64) -> Charge {
        let (ledger, s, charge, slow) = (self.ledger, self.stripe, self.charge, self.slow);
        ledger.count(s, requested, 1);
        ledger.end_flight(s, charge.worst_case());
        std::mem::forget(self);
        if slow {
            ledger.note_peak();
        }
        charge
    }
}

impl Reservation<'_> {
    /// What the cap left right after this reservation was taken (`None`: no cap): the caller learns how
    /// close the device is to its cap without reading the shared counter again.
    pub fn headroom_after(&self) -> Option<u64> {
        self.ledger.cap().map(|c| c.saturating_sub(self.total))
    }

    /// Commits what the driver really took, which may differ from the estimate reserved: the difference is
    /// charged without a cap check, since the memory is already taken, or given back.
    pub fn commit_as(self, actual: Charge, requested: u64) -> Charge {
        self.finish(actual, Some(requested))
    }

    /// Keeps what the driver really took for memory that is no allocation of the program's (a graph's
    /// memory, a context limit), like [`Reservation::commit_as`] but without counting an allocation.
    pub fn settle(self, actual: Charge) {
        self.finish(actual, None);
    }

    fn finish(mut self, actual: Charge, requested: Option<u64>) -> Charge {
        let (ledger, s) = (self.ledger, self.stripe);
        let (reserved, used) = (self.charge.worst_case(), actual.worst_case());
        if used < reserved {
            // The part not used goes back before the rest is held, so no reading counts it.
            ledger.to_stock(s, reserved - used);
            ledger.end_flight(s, reserved - used);
            self.charge = Charge::Pages(used);
        } else if used > reserved {
            ledger.force(used - reserved);
        }
        match requested {
            Some(requested) => {
                self.commit(requested);
            }
            None => {
                let (charge, slow) = (self.charge, self.slow);
                ledger.end_flight(s, charge.worst_case());
                std::mem::forget(self);
                if slow {
                    ledger.note_peak();
                }
            }
        }
        actual
    }

    /// The bytes reserved.
    pub fn bytes(&self) -> u64 {
        self.charge.worst_case()
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        // Into the stock first, then out of flight: a reader never sees the bytes as held.
        self.ledger.to_stock(self.stripe, self.charge.worst_case());
        self.ledger
            .end_flight(self.stripe, self.charge.worst_case());
    }
}

impl DeviceLedger {
    pub const fn new() -> DeviceLedger {
        DeviceLedger {
            cap: AtomicU64::new(UNCAPPED),
            charged: Padded(AtomicU64::new(0)),
            shares: [const { Padded(Share::new()) }; STRIPES],
            context: AtomicU64::new(0),
            peak: Padded(AtomicU64::new(0)),
            movers: Padded(AtomicU64::new(0)),
            moves: AtomicU64::new(0),
            refusals: AtomicU64::new(0),
            last_refused_bytes: AtomicU64::new(0),
            last_refused_unix_ms: AtomicU64::new(0),
        }
    }

    pub fn set_cap(&self, cap: u64) {
        self.cap.store(cap, Relaxed);
    }

    /// What the cap leaves, from two plain loads (no statistics summed, stocks counted as used): for
    /// checks on the hot path.
    pub fn headroom(&self) -> Option<u64> {
        self.cap()
            .map(|c| c.saturating_sub(self.charged.load(Relaxed)))
    }

    pub fn cap(&self) -> Option<u64> {
        Some(self.cap.load(Relaxed)).filter(|&c| c != UNCAPPED)
    }

    /// Adds `bytes` to `charged` if the sum stays within the cap, in one compare-and-swap loop: the counter
    /// itself never shows more than the cap. The charge comes out of the thread's stock (on stripe `s`)
    /// when it can, and refills the stock when far from the cap. On success the bytes are in flight on
    /// `s`; returns the new total and whether the shared counter was touched.
    fn try_add(&self, s: Stripe, bytes: u64) -> Result<(u64, bool), Refusal> {
        let share = &self.shares[s.index()];
        if bytes == 0 {
            return Ok((self.charged.load(Relaxed), false));
        }
        let cap = self.cap.load(Relaxed);
        let own = &share.stock;
        // A stock is only good while everything charged fits the cap: memory charged after the fact
        // (`force`: a pool that grew, a measured context) can push the total past it, and then every
        // reservation must face the cap again.
        let total = self.charged.load(Relaxed);
        if total <= cap {
            // In flight first, then out of the stock (a reader may see it in both, never in neither).
            bump(&share.inflight, s, bytes);
            if own
                .fetch_update(Relaxed, Relaxed, |s| s.checked_sub(bytes))
                .is_ok()
            {
                return Ok((total, false));
            }
            bump(&share.inflight, s, bytes.wrapping_neg());
        }
        let refill = |next: u64| {
            if next.saturating_add(BATCH + STOCK_FAR) <= cap {
                BATCH
            } else {
                0
            }
        };
        let mut drained = false;
        loop {
            let moving = self.begin_move();
            let taken = self.charged.fetch_update(Relaxed, Relaxed, |cur| {
                let next = cur.checked_add(bytes).filter(|&next| next <= cap)?;
                Some(next + refill(next))
            });
            match taken {
                Ok(before) => {
                    let extra = refill(before + bytes);
                    if extra > 0 {
                        own.fetch_add(extra, Relaxed);
                    }
                    bump(&share.inflight, s, bytes);
                    drop(moving);
                    return Ok((before + bytes + extra, true));
                }
                // Other threads' stocks may hold what this charge needs.
                Err(_) if !drained => {
                    drop(moving);
                    self.drain_stocks();
                    drained = true;
                }
                Err(cur) => {
                    return Err(Refusal {
                        bytes,
                        in_use: cur,
                        cap,
                    });
                }
            }
        }
    }

    /// Counts one refused call (once, however often it tried the counter).
    pub fn note_refusal(&self, refusal: &Refusal) {
        self.refusals.fetch_add(1, Relaxed);
        self.last_refused_bytes.store(refusal.bytes, Relaxed);
        self.last_refused_unix_ms.store(unix_ms(), Relaxed);
    }

    /// Brackets a move between `charged` and a stock (see the module doc).
    fn begin_move(&self) -> Move<'_> {
        self.movers.fetch_add(1, SeqCst);
        Move(self)
    }

    /// The reservation of `bytes` on stripe `s` has ended (committed or given back).
    fn end_flight(&self, s: Stripe, bytes: u64) {
        if bytes > 0 {
            bump(&self.shares[s.index()].inflight, s, bytes.wrapping_neg());
        }
    }

    /// Gives every thread's stock back to the shared counter.
    fn drain_stocks(&self) {
        let _moving = self.begin_move();
        let stocked: u64 = self.shares.iter().map(|s| s.stock.swap(0, Relaxed)).sum();
        if stocked > 0 {
            self.sub(stocked);
        }
    }

    /// Bytes in `charged` that the process does not hold: stocks and reservations in flight (a moment's
    /// sum; in-flight counts are signed per stripe, as a thread may commit on its own stripe only).
    fn unheld(&self) -> u64 {
        let stocks: u64 = self.shares.iter().map(|s| s.stock.load(Relaxed)).sum();
        stocks.saturating_add(signed_sum(self.shares.iter().map(|s| &s.inflight)))
    }

    /// What the process holds now, read so that it never shows more than was held: retried while a
    /// move between `charged` and a stock is under way. `None` if moves kept coming.
    fn held(&self) -> Option<u64> {
        for _ in 0..16 {
            let moves = self.moves.load(SeqCst);
            if self.movers.load(SeqCst) == 0 {
                let charged = self.charged.load(SeqCst);
                let unheld = self.unheld();
                if self.movers.load(SeqCst) == 0 && self.moves.load(SeqCst) == moves {
                    return Some(charged.saturating_sub(unheld));
                }
            }
            std::hint::spin_loop();
        }
        None
    }

    /// Returns `bytes` of a capped charge: into the thread's stock, keeping it under [`STOCK_MAX`].
    fn to_stock(&self, s: Stripe, bytes: u64) {
        let own = &self.shares[s.index()].stock;
        let now = own.fetch_add(bytes, Relaxed).wrapping_add(bytes);
        if now > STOCK_MAX {
            let _moving = self.begin_move();
            if let Ok(had) =
                own.fetch_update(Relaxed, Relaxed, |s| (s > STOCK_MAX).then_some(BATCH))
            {
                self.sub(had - BATCH);
            }
        }
    }

    /// Gives back `bytes` of a charge that was taken with [`DeviceLedger::force`].
    pub fn give_back(&self, bytes: u64) {
        self.sub(bytes);
    }

    /// Reserves the context's memory (an estimate until measured) against the cap.
    pub fn reserve_context(&self, bytes: u64) -> Result<(), Refusal> {
        let s = stripe();
        self.try_add(s, bytes)?;
        self.context.fetch_add(bytes, Relaxed);
        self.end_flight(s, bytes);
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

    /// Reserves `charge` against the cap.
    pub fn reserve(&self, charge: Charge) -> Result<Reservation<'_>, Refusal> {
        self.reserve_on(stripe(), charge)
    }

    /// [`DeviceLedger::reserve`] for a caller that already holds its thread's stripe.
    pub fn reserve_on(&self, s: Stripe, charge: Charge) -> Result<Reservation<'_>, Refusal> {
        let (total, slow) = self.try_add(s, charge.worst_case())?;
        Ok(Reservation {
            ledger: self,
            stripe: s,
            charge,
            total,
            slow,
        })
    }

    /// Counts an allocation of `requested` bytes whose memory is charged elsewhere (a pool's reserve,
    /// charged as the pool grows), so allocations and requested bytes still cover it.
    pub fn count_allocation(&self, requested: u64) {
        self.count(stripe(), requested, 1);
    }

    /// Adds to the requested bytes and the allocations (wrapping: a release adds negatives).
    fn count(&self, s: Stripe, requested: u64, allocations: u64) {
        let share = &self.shares[s.index()];
        bump(&share.requested, s, requested);
        bump(&share.allocations, s, allocations);
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
        let s = stripe();
        self.to_stock(s, charge.worst_case());
        self.count(s, requested.wrapping_neg(), 1u64.wrapping_neg());
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
        for s in &self.shares {
            for counter in [&s.stock, &s.inflight, &s.requested, &s.allocations] {
                counter.store(0, Relaxed);
            }
        }
    }

    /// In a forked child: nothing of the parent's is held here, and no figure of the parent's is ours.
    /// The cap stays.
    pub fn reset_after_fork(&self) {
        self.reset();
        for counter in [
            &*self.peak,
            &*self.movers,
            &self.moves,
            &self.refusals,
            &self.last_refused_bytes,
            &self.last_refused_unix_ms,
        ] {
            counter.store(0, Relaxed);
        }
    }

    /// Raises the peak to what the process holds now.
    fn note_peak(&self) {
        if let Some(held) = self.held() {
            self.peak.fetch_max(held, Relaxed);
        }
    }

    pub fn snapshot(&self) -> DeviceFigures {
        let charged = match self.held() {
            Some(held) => {
                self.peak.fetch_max(held, Relaxed);
                held
            }
            None => self.charged.load(Relaxed).saturating_sub(self.unheld()),
        };
        DeviceFigures {
            cap: self.cap(),
            charged,
            requested: signed_sum(self.shares.iter().map(|s| &s.requested)),
            context: self.context.load(Relaxed),
            peak: self.peak.load(Relaxed),
            allocations: signed_sum(self.shares.iter().map(|s| &s.allocations)),
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
    use std::sync::atomic::AtomicU64;
    use std::sync::Arc;

    const MIB: u64 = 1 << 20;

    #[test]
    fn stocks_never_cost_a_reservation_that_fits() {
        const GIB: u64 = 1 << 30;
        let l = Arc::new(DeviceLedger::new());
        l.set_cap(4 * GIB);
        // Far from the cap, a thread's reservation takes a stock beside it, and frees feed the stock.
        let held: Vec<_> = (0..4)
            .map(|_| {
                let l = Arc::clone(&l);
                std::thread::spawn(move || {
                    let r = l.reserve(Charge::Pages(4 * MIB)).unwrap();
                    r.commit(4 * MIB);
                    let r = l.reserve(Charge::Pages(2 * MIB)).unwrap();
                    r.commit(2 * MIB);
                    l.release(Charge::Pages(2 * MIB), 2 * MIB);
                })
            })
            .collect();
        for h in held {
            h.join().unwrap();
        }
        let shown = l.snapshot();
        assert_eq!(shown.charged, 16 * MIB, "figures leave stocks out");
        assert!(shown.peak >= 16 * MIB && shown.peak <= 4 * GIB);
        assert!(
            l.headroom().unwrap() < 4 * GIB - 16 * MIB,
            "the threads' stocks are charged"
        );
        // Everything the cap leaves beside what is really held can still be reserved in one piece.
        let rest = 4 * GIB - 16 * MIB;
        let r = l
            .reserve(Charge::Pages(rest))
            .expect("stocks drained for it");
        assert_eq!(l.headroom(), Some(0));
        assert!(l.reserve(Charge::Pages(2 * MIB)).is_err());
        drop(r);
        assert_eq!(l.snapshot().charged, 16 * MIB);
    }

    #[test]
    fn a_stock_is_no_pass_once_forced_charges_pass_the_cap() {
        const GIB: u64 = 1 << 30;
        let l = DeviceLedger::new();
        l.set_cap(2 * GIB);
        // As a pool allocation does: reserve what the pool may need, charge its real growth, give the
        // reservation back (into the stock).
        let mut taken = 0;
        for _ in 0..200 {
            let Ok(r) = l.reserve(Charge::Pages(32 * MIB)) else {
                break;
            };
            l.force(32 * MIB);
            drop(r);
            taken += 32 * MIB;
        }
        assert!(
            taken <= 2 * GIB,
            "took {} MiB under a 2 GiB cap",
            taken >> 20
        );
        assert!(l.snapshot().charged <= 2 * GIB);
    }

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
        assert_eq!(l.snapshot().refusals, 0, "the caller counts a refused call");
        l.note_refusal(&r);
        assert_eq!(l.snapshot().refusals, 1);
        assert_eq!(l.snapshot().last_refused_bytes, 4 * MIB);
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
            assert_eq!(
                l.headroom(),
                Some(0),
                "a reservation counts against the cap"
            );
            assert_eq!(l.snapshot().charged, 0, "but is not held yet");
        }
        assert_eq!(l.snapshot().charged, 0);
        assert!(
            l.reserve(Charge::Pages(4 * MIB)).is_ok(),
            "the bytes are free again"
        );
    }

    #[test]
    fn packed_reserves_the_worst_case_and_commits_what_was_touched() {
        let l = DeviceLedger::new();
        l.set_cap(8 * MIB);
        let r = l.reserve(Charge::Packed(64 << 10)).unwrap();
        assert_eq!(l.headroom(), Some(4 * MIB), "up to two pages until placed");
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
        let refused = Arc::new(AtomicU64::new(0));
        let handles: Vec<_> = (0..32)
            .map(|t| {
                let l = Arc::clone(&l);
                let start = Arc::clone(&start);
                let refused = Arc::clone(&refused);
                std::thread::spawn(move || {
                    start.wait();
                    let mut held = Vec::new();
                    for i in 0..5_000u64 {
                        let charge = Charge::Pages(2 * MIB * (1 + (i + t) % 3));
                        match l.reserve(charge) {
                            Ok(r) => {
                                assert!(l.snapshot().charged <= cap);
                                held.push(r.commit(1));
                            }
                            Err(_) => {
                                refused.fetch_add(1, Relaxed);
                            }
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
        assert!(refused.load(Relaxed) > 0, "the test must reach the cap");
    }

    #[test]
    fn reservations_never_raise_the_peak_and_a_grown_pool_counts_once() {
        const GIB: u64 = 1 << 30;
        let l = DeviceLedger::new();
        l.set_cap(GIB);
        // A pool allocation reserves its worst case (a whole growth step), then the pool's real growth
        // replaces the reservation: the peak is what was held, never the two together.
        let mut held = 0;
        while let Ok(r) = l.reserve(Charge::Pages(64 * MIB)) {
            r.commit_as(Charge::Pages(32 * MIB), 32 * MIB);
            held += 32 * MIB;
            let s = l.snapshot();
            assert_eq!(s.charged, held);
            assert!(s.peak <= held, "peak {} over held {held}", s.peak);
        }
        assert!(l.snapshot().peak <= GIB);
        // A reservation refused or given back leaves no trace in the peak.
        let before = l.snapshot().peak;
        if let Ok(r) = l.reserve(Charge::Pages(32 * MIB)) {
            drop(r);
        }
        assert_eq!(l.snapshot().peak, before);
    }

    #[test]
    fn the_peak_far_from_the_cap_never_counts_stocks_or_flights() {
        const GIB: u64 = 1 << 30;
        let l = Arc::new(DeviceLedger::new());
        l.set_cap(64 * GIB);
        // Eight threads take stocks far from the cap and hold 2 MiB each at most.
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let l = Arc::clone(&l);
                std::thread::spawn(move || {
                    for _ in 0..2_000 {
                        let c = l.reserve(Charge::Pages(2 * MIB)).unwrap().commit(2 * MIB);
                        l.release(c, 2 * MIB);
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        let s = l.snapshot();
        assert_eq!(s.charged, 0);
        assert!(s.peak <= 16 * MIB, "peak {} MiB", s.peak >> 20);
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
