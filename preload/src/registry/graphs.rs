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
