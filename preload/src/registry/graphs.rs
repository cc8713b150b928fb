//! Graph memory: what graph allocation nodes hold, per device, and which executable graphs have them.
//! <https://docs.nvidia.com/cuda/cuda-c-programming-guide/index.html#graph-memory-nodes>
//!
//! Measured on an H200 with driver 580 (`docs/probe-graph-limits-h200.txt`): the graph allocator takes
//! memory when an executable graph with allocation nodes is first uploaded or launched, in 32 MiB steps
//! per allocation, and keeps it (relaunches take nothing more, other graphs reuse it) until
//! `cuDeviceGraphMemTrim`; destroying an executable gives nothing back. The device's whole graph memory
//! is `CU_GRAPH_MEM_ATTR_RESERVED_MEM_CURRENT`, which is what we charge: read around every launch or upload
//! of a graph that has allocation nodes, at a trim, and whenever the cap seems reached.
//!
//! The cap check before a launch must bound what the launch can add. An executable's footprint on a
//! device (the sum of its allocations, rounded) bounds it. An executable that was launched since the
//! last trim keeps its memory, so its relaunch adds nothing, unless another graph's allocations that
//! outlive their graph are live on the device (they may hold the memory it had). So a launch reserves
//! nothing for a resident executable and its whole footprint otherwise; the reading after the launch
//! replaces the reservation with the allocator's real growth.

use crate::cuda::*;
use crate::driver::{self, AllocNode, GraphMemory};
use crate::ledger::LEDGER;
use std::sync::atomic::{AtomicUsize, Ordering};
use vramcap_core::accounting::charge::Charge;
use vramcap_core::accounting::ledger::{Reservation, MAX_DEVICES};
use vramcap_core::lock::{Guard, Lock};

/// An executable graph with allocation nodes.
struct Exec {
    handle: usize,
    /// Bytes its allocations take on each device, at most.
    footprint: Vec<(CUdevice, u64)>,
    /// Its allocations that outlive a launch (no free node of the graph gives them back).
    outliving: Vec<AllocNode>,
    /// `CUDA_GRAPH_INSTANTIATE_FLAG_AUTO_FREE_ON_LAUNCH`: a relaunch frees its outliving allocations.
    auto_free: bool,
    /// (device, trim epoch) of its last successful launch or upload there.
    resident: Vec<(CUdevice, u64)>,
}

/// A graph allocation that outlived its launch and is not freed yet.
#[derive(Clone, Copy)]
struct Live {
    va: CUdeviceptr,
    dev: CUdevice,
    exec: usize,
}

#[derive(Clone, Copy, Default)]
struct DeviceGraphs {
    /// What the ledger holds for the graph allocator: its reserved bytes when last read.
    charged: u64,
    /// Counts trims (ours or the driver's): an executable launched in an older epoch lost its memory.
    epoch: u64,
    /// Whether any graph memory was ever seen here (only then is it read again).
    seen: bool,
}

pub struct Graphs {
    execs: Vec<Exec>,
    live: Vec<Live>,
    devices: [DeviceGraphs; MAX_DEVICES],
}

static GRAPHS: Lock<Graphs> = Lock::new(Graphs::new());

impl Graphs {
    const fn new() -> Graphs {
        Graphs {
            execs: Vec::new(),
            live: Vec::new(),
            devices: [DeviceGraphs {
                charged: 0,
                epoch: 0,
                seen: false,
            }; MAX_DEVICES],
        }
    }
}

/// Executables registered, so that launches of graphs without allocation nodes skip the lock.
static EXECS: AtomicUsize = AtomicUsize::new(0);

/// Whether any executable with allocation nodes exists.
pub fn any() -> bool {
    EXECS.load(Ordering::Acquire) != 0
}

pub fn lock() -> Guard<'static, Graphs> {
    GRAPHS.lock()
}

/// Sums a graph's allocations per device.
pub fn footprint(memory: &GraphMemory) -> Vec<(CUdevice, u64)> {
    let mut per_device: Vec<(CUdevice, u64)> = Vec::new();
    for a in &memory.allocs {
        match per_device.iter_mut().find(|(d, _)| *d == a.dev) {
            Some((_, bytes)) => *bytes = bytes.saturating_add(a.bytes),
            None => per_device.push((a.dev, a.bytes)),
        }
    }
    per_device
}

fn slot(dev: CUdevice) -> Option<usize> {
    usize::try_from(dev).ok().filter(|&d| d < MAX_DEVICES)
}

impl Graphs {
    /// Records a new executable graph (nothing if it has no allocation nodes).
    pub fn register(&mut self, exec: CUgraphExec, memory: &GraphMemory, auto_free: bool) {
        let footprint = footprint(memory);
        if footprint.is_empty() {
            return;
        }
        self.forget(exec);
        for &(dev, _) in &footprint {
            if let Some(d) = slot(dev) {
                self.devices[d].seen = true;
            }
        }
        self.execs.push(Exec {
            handle: exec as usize,
            footprint,
            outliving: memory.outliving().copied().collect(),
            auto_free,
            resident: Vec::new(),
        });
        EXECS.store(self.execs.len(), Ordering::Release);
    }

    /// Forgets a destroyed executable. Its live allocations stay live until freed, and the memory stays
    /// with the graph allocator until a trim.
    pub fn forget(&mut self, exec: CUgraphExec) {
        self.execs.retain(|e| e.handle != exec as usize);
        EXECS.store(self.execs.len(), Ordering::Release);
    }

    /// What a launch or upload of `exec` may add on each device, at worst (see the module doc); `None`
    /// for an executable without allocation nodes.
    pub fn worst_case(&self, exec: CUgraphExec) -> Option<Vec<(CUdevice, u64)>> {
        let e = self.execs.iter().find(|e| e.handle == exec as usize)?;
        Some(
            e.footprint
                .iter()
                .map(|&(dev, bytes)| {
                    let epoch = slot(dev).map_or(u64::MAX, |d| self.devices[d].epoch);
                    let resident = e.resident.contains(&(dev, epoch));
                    let others_live = self.live.iter().any(|l| l.dev == dev && l.exec != e.handle);
                    (dev, if resident && !others_live { 0 } else { bytes })
                })
                .collect(),
        )
    }

    /// After the driver's answer to a launch (`launched`) or upload of `exec`: replaces each device's
    /// reservation with what the graph allocator holds now, and records what the launch left resident
    /// and live.
    pub fn settle(
        &mut self,
        exec: CUgraphExec,
        ok: bool,
        launched: bool,
        reservations: Vec<(CUdevice, Reservation<'static>)>,
    ) {
        for (dev, reservation) in reservations {
            self.resync(dev, Some(reservation));
        }
        if !ok {
            return;
        }
        let Some(i) = self.execs.iter().position(|e| e.handle == exec as usize) else {
            return;
        };
        let handle = self.execs[i].handle;
        if launched {
            if self.execs[i].auto_free {
                self.live.retain(|l| l.exec != handle);
            }
            let outliving: Vec<Live> = self.execs[i]
                .outliving
                .iter()
                .map(|a| Live {
                    va: a.va,
                    dev: a.dev,
                    exec: handle,
                })
                .collect();
            self.live.extend(outliving);
        }
        let resident: Vec<(CUdevice, u64)> = self.execs[i]
            .footprint
            .iter()
            .map(|&(dev, _)| (dev, slot(dev).map_or(0, |d| self.devices[d].epoch)))
            .collect();
        self.execs[i].resident = resident;
    }

    /// Brings `dev`'s graph charge to the allocator's reading, settling `reservation` (a launch's) into
    /// it. Without a reading, a launch's reservation stays charged whole (fail closed).
    fn resync(&mut self, dev: CUdevice, reservation: Option<Reservation<'static>>) {
        let (Some(d), Some(ledger)) = (slot(dev), LEDGER.device(dev)) else {
            return;
        };
        let state = &mut self.devices[d];
        state.seen = true;
        match driver::graph_reserved(dev) {
            Ok(now) => {
                let grew = now.saturating_sub(state.charged);
                match reservation {
                    Some(r) => r.settle(Charge::Pages(grew)),
                    None if grew > 0 => ledger.force(grew),
                    None => {}
                }
                if now < state.charged {
                    ledger.give_back(state.charged - now);
                    // Memory went back without a trim of ours: residency is unknown now.
                    state.epoch += 1;
                }
                state.charged = now;
            }
            Err(_) => {
                if let Some(r) = reservation {
                    let kept = r.bytes();
                    r.settle(Charge::Pages(kept));
                    state.charged = state.charged.saturating_add(kept);
                }
            }
        }
    }

    /// After a successful `cuDeviceGraphMemTrim(dev)`: the allocator kept only live allocations, and
    /// every executable there has to map its memory again.
    pub fn trimmed(&mut self, dev: CUdevice) {
        if let Some(d) = slot(dev) {
            self.devices[d].epoch += 1;
        }
        self.resync(dev, None);
    }
}

/// A free of an address no allocation of ours holds: if it was a live graph allocation, it is not live
/// any more (its memory stays with the graph allocator).
pub fn freed(va: CUdeviceptr) {
    GRAPHS.lock().live.retain(|l| l.va != va);
}

/// Re-reads `dev`'s graph memory (when the cap seems reached, and at each measurement). Skipped while a
/// graph hook holds the registry: it re-reads by itself.
pub fn refresh(dev: CUdevice) {
    let Some(d) = slot(dev) else { return };
    if let Some(mut graphs) = GRAPHS.try_lock() {
        if graphs.devices[d].seen {
            graphs.resync(dev, None);
        }
    }
}

/// The device's last context is gone, and its graph memory with it.
pub fn forget_device(dev: CUdevice) {
    let Some(d) = slot(dev) else { return };
    let mut graphs = GRAPHS.lock();
    graphs.devices[d] = DeviceGraphs::default();
    graphs.live.retain(|l| l.dev != dev);
    graphs
        .execs
        .retain(|e| e.footprint.iter().all(|&(fd, _)| fd != dev));
    EXECS.store(graphs.execs.len(), Ordering::Release);
}

/// In a forked child: no graph of the parent's is ours.
///
/// # Safety
/// Only from the fork child handler (`crate::fork`): one thread, no guard of these locks held.
pub unsafe fn reset_after_fork() {
    // SAFETY: the caller's guarantee.
    unsafe { GRAPHS.reset_after_fork(Graphs::new()) };
    EXECS.store(0, Ordering::Release);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::unused_device;

    const MIB: u64 = 1 << 20;

    fn node(dev: CUdevice, mib: u64, va: CUdeviceptr) -> AllocNode {
        AllocNode {
            dev,
            bytes: mib * MIB,
            va,
        }
    }

    fn memory(allocs: &[AllocNode], freed: &[CUdeviceptr]) -> GraphMemory {
        GraphMemory {
            allocs: allocs.to_vec(),
            freed: freed.to_vec(),
        }
    }

    fn exec(handle: usize) -> CUgraphExec {
        handle as CUgraphExec
    }

    /// A launch (or upload) as `hooks::graph` makes it: reserve the worst case, call, settle. Returns
    /// what was reserved.
    fn map(g: &mut Graphs, e: CUgraphExec, launched: bool, ok: bool) -> Vec<(CUdevice, u64)> {
        let worst = g
            .worst_case(e)
            .expect("an executable with allocation nodes");
        let reservations = worst
            .iter()
            .map(|&(dev, bytes)| {
                let r = LEDGER.device(dev).unwrap().reserve(Charge::Pages(bytes));
                (dev, r.unwrap())
            })
            .collect();
        g.settle(e, ok, launched, reservations);
        worst
    }

    #[test]
    fn a_footprint_adds_up_each_devices_allocations() {
        let m = memory(&[node(0, 32, 1), node(1, 64, 2), node(0, 96, 3)], &[]);
        assert_eq!(footprint(&m), vec![(0, 128 * MIB), (1, 64 * MIB)]);
        let huge = memory(
            &[
                node(0, 32, 1),
                AllocNode {
                    dev: 0,
                    bytes: u64::MAX,
                    va: 2,
                },
            ],
            &[],
        );
        assert_eq!(footprint(&huge), vec![(0, u64::MAX)], "saturates");
    }

    #[test]
    fn a_graph_without_allocation_nodes_is_not_recorded() {
        let mut g = Graphs::new();
        g.register(exec(0x10), &memory(&[], &[0x1000]), false);
        assert_eq!(g.worst_case(exec(0x10)), None);
        assert!(g.execs.is_empty());
    }

    #[test]
    fn a_first_launch_reserves_the_footprint_and_a_relaunch_nothing() {
        let dev = unused_device();
        let mut g = Graphs::new();
        // Freed by the graph itself: nothing outlives a launch.
        g.register(exec(0x20), &memory(&[node(dev, 512, 0xa0)], &[0xa0]), false);
        assert_eq!(map(&mut g, exec(0x20), true, true), vec![(dev, 512 * MIB)]);
        assert_eq!(map(&mut g, exec(0x20), true, true), vec![(dev, 0)]);
        assert_eq!(LEDGER.device(dev).unwrap().snapshot().charged, 512 * MIB);
    }

    #[test]
    fn a_launch_whose_graph_memory_cannot_be_read_keeps_its_reservation_charged() {
        // No driver: CU_GRAPH_MEM_ATTR_RESERVED_MEM_CURRENT cannot be read after the launch.
        let dev = unused_device();
        let mut g = Graphs::new();
        g.register(
            exec(0x30),
            &memory(&[node(dev, 32, 0xb0), node(dev, 64, 0xb1)], &[]),
            false,
        );
        map(&mut g, exec(0x30), true, true);
        let d = g.devices[dev as usize];
        assert_eq!(d.charged, 96 * MIB);
        assert!(d.seen);
        assert_eq!(LEDGER.device(dev).unwrap().snapshot().charged, 96 * MIB);
        g.trimmed(dev);
        assert_eq!(
            g.devices[dev as usize].charged,
            96 * MIB,
            "nor can a trim be read"
        );
    }

    #[test]
    fn a_failed_launch_leaves_the_executable_not_resident() {
        let dev = unused_device();
        let mut g = Graphs::new();
        g.register(exec(0x40), &memory(&[node(dev, 256, 0xc0)], &[]), false);
        map(&mut g, exec(0x40), true, false);
        assert_eq!(g.worst_case(exec(0x40)), Some(vec![(dev, 256 * MIB)]));
        assert!(g.live.is_empty(), "nothing it allocates is live");
    }

    #[test]
    fn another_graphs_live_allocation_makes_a_relaunch_reserve_again() {
        let dev = unused_device();
        let mut g = Graphs::new();
        let (a, b) = (exec(0x50), exec(0x51));
        g.register(a, &memory(&[node(dev, 512, 0xd0)], &[0xd0]), false);
        g.register(b, &memory(&[node(dev, 128, 0xd1)], &[]), false);
        map(&mut g, a, true, true);
        map(&mut g, b, true, true);
        // B's allocation outlives B and may sit in the memory A had.
        assert_eq!(g.worst_case(a), Some(vec![(dev, 512 * MIB)]));
        assert_eq!(
            g.worst_case(b),
            Some(vec![(dev, 0)]),
            "its own live allocation"
        );
    }

    #[test]
    fn a_freed_live_allocation_no_longer_costs_other_graphs_a_reservation() {
        let dev = unused_device();
        let (a, b) = (exec(0x60), exec(0x61));
        {
            let mut g = lock();
            g.register(a, &memory(&[node(dev, 512, 0x6a0)], &[0x6a0]), false);
            g.register(b, &memory(&[node(dev, 128, 0x6a1)], &[]), false);
            map(&mut g, a, true, true);
            map(&mut g, b, true, true);
        }
        freed(0x6a1);
        assert_eq!(lock().worst_case(a), Some(vec![(dev, 0)]));
    }

    #[test]
    fn an_upload_makes_an_executable_resident_without_live_allocations() {
        let dev = unused_device();
        let mut g = Graphs::new();
        g.register(exec(0x70), &memory(&[node(dev, 64, 0xe0)], &[]), true);
        map(&mut g, exec(0x70), false, true);
        assert!(g.live.is_empty());
        assert_eq!(g.worst_case(exec(0x70)), Some(vec![(dev, 0)]));
        // Auto-free: each launch frees what the last one left, so one allocation stays live.
        map(&mut g, exec(0x70), true, true);
        map(&mut g, exec(0x70), true, true);
        assert_eq!(g.live.len(), 1);
    }

    #[test]
    fn a_trim_makes_every_executable_reserve_its_footprint_again() {
        let dev = unused_device();
        let mut g = Graphs::new();
        g.register(exec(0x80), &memory(&[node(dev, 96, 0xf0)], &[0xf0]), false);
        map(&mut g, exec(0x80), true, true);
        assert_eq!(g.worst_case(exec(0x80)), Some(vec![(dev, 0)]));
        g.trimmed(dev);
        assert_eq!(g.worst_case(exec(0x80)), Some(vec![(dev, 96 * MIB)]));
    }

    #[test]
    fn a_destroyed_executable_is_forgotten_and_a_new_one_replaces_its_handle() {
        let mut g = Graphs::new();
        g.register(exec(0x90), &memory(&[node(1, 32, 0x100)], &[]), false);
        g.register(exec(0x90), &memory(&[node(2, 64, 0x101)], &[]), false);
        assert_eq!(g.execs.len(), 1);
        assert_eq!(g.worst_case(exec(0x90)), Some(vec![(2, 64 * MIB)]));
        g.forget(exec(0x90));
        assert_eq!(g.worst_case(exec(0x90)), None);
    }

    #[test]
    fn forgetting_a_device_drops_the_executables_and_live_allocations_on_it() {
        let (gone, kept) = (unused_device(), unused_device());
        let (both, other) = (exec(0xa0), exec(0xa1));
        {
            let mut g = lock();
            g.register(
                both,
                &memory(&[node(gone, 32, 0xa00), node(kept, 32, 0xa01)], &[]),
                false,
            );
            g.register(other, &memory(&[node(kept, 64, 0xa02)], &[]), false);
            map(&mut g, both, true, true);
        }
        forget_device(gone);
        let g = lock();
        assert_eq!(g.worst_case(both), None);
        assert_eq!(g.worst_case(other), Some(vec![(kept, 64 * MIB)]));
        assert!(g.live.iter().all(|l| l.dev != gone));
        assert!(
            g.live.iter().any(|l| l.va == 0xa01),
            "the other device's stays"
        );
        assert!(!g.devices[gone as usize].seen);
    }

    #[test]
    fn on_a_device_outside_the_ledger_an_executable_is_never_resident() {
        let mut g = Graphs::new();
        let far = MAX_DEVICES as CUdevice;
        g.register(
            exec(0xb0),
            &memory(&[node(far, 32, 0xb00)], &[0xb00]),
            false,
        );
        g.settle(exec(0xb0), true, true, Vec::new());
        assert_eq!(g.worst_case(exec(0xb0)), Some(vec![(far, 32 * MIB)]));
    }
}
