//! What `vramcap status` and `vramcap watch` show: every capped process's figures from the shared
//! segment, beside NVML's physical and per-process figures where NVML is present.

use crate::config::{canonical_uuid, format_uuid};
use crate::shm::{live_slots, printable, Segment, VRAMCAP_FLAG_PROTECTED};
use crate::size::HumanBytes;
use nvml_wrapper::Nvml;
use serde::Serialize;
use std::collections::BTreeMap;

#[derive(Serialize, Debug, Clone)]
pub struct DeviceView {
    pub uuid: String,
    pub charged: u64,
    pub requested: u64,
    pub cap: Option<u64>,
    pub peak: u64,
    pub context: u64,
    pub allocations: u64,
    pub refusals: u64,
    pub last_refused_bytes: u64,
    pub last_refused_unix_ms: u64,
    /// NVML's own per-process figure, where NVML is present.
    pub nvml_used: Option<u64>,
}

#[derive(Serialize, Debug, Clone)]
pub struct ProcessView {
    pub slot: usize,
    pub pid: u32,
    pub host_pid: u32,
    pub name: String,
    pub priority: i32,
    pub protected: bool,
    pub uid: u32,
    pub updated_unix_ms: u64,
    /// Suspended by the unloader since then (Unix ms): its device memory is in host memory.
    pub suspended_unix_ms: Option<u64>,
    /// What the suspension moved to host memory.
    pub suspended_bytes: u64,
    pub devices: Vec<DeviceView>,
}

#[derive(Serialize, Debug, Clone)]
pub struct PhysicalDevice {
    pub uuid: String,
    pub name: String,
    pub total: u64,
    pub free: u64,
}

#[derive(Serialize, Debug, Clone)]
pub struct Totals {
    pub uuid: String,
    pub charged: u64,
    pub caps: u64,
    pub processes: usize,
}

#[derive(Serialize, Debug, Clone)]
pub struct Status {
    pub segment: String,
    pub nvml: Option<String>,
    pub devices: Vec<PhysicalDevice>,
    pub processes: Vec<ProcessView>,
    pub totals: Vec<Totals>,
}

/// NVML's per-process figures and physical devices, or why there are none.
struct NvmlView {
    devices: Vec<PhysicalDevice>,
    /// (uuid, pid) -> used bytes.
    used: BTreeMap<(String, u32), u64>,
}

fn nvml_view() -> Result<NvmlView, String> {
    let nvml = Nvml::init().map_err(|e| e.to_string())?;
    let count = nvml.device_count().map_err(|e| e.to_string())?;
    let mut view = NvmlView {
        devices: Vec::new(),
        used: BTreeMap::new(),
    };
    for i in 0..count {
        let d = nvml.device_by_index(i).map_err(|e| e.to_string())?;
        let uuid = canonical_uuid(&d.uuid().map_err(|e| e.to_string())?);
        let mem = d.memory_info().map_err(|e| e.to_string())?;
        view.devices.push(PhysicalDevice {
            uuid: uuid.clone(),
            name: d.name().unwrap_or_default(),
            total: mem.total,
            free: mem.free,
        });
        for p in d.running_compute_processes().unwrap_or_default() {
            if let nvml_wrapper::enums::device::UsedGpuMemory::Used(bytes) = p.used_gpu_memory {
                view.used.insert((uuid.clone(), p.pid), bytes);
            }
        }
    }
    Ok(view)
}

pub fn collect(seg: &Segment, path: &str, with_nvml: bool) -> Status {
    let nvml = if with_nvml {
        nvml_view()
    } else {
        Err("not asked".into())
    };
    let (nvml_note, devices, used) = match nvml {
        Ok(v) => (None, v.devices, v.used),
        Err(e) => (Some(e), Vec::new(), BTreeMap::new()),
    };
    let processes: Vec<ProcessView> = live_slots(seg)
        .into_iter()
        .map(|(slot, s)| {
            let pid_for_nvml = if s.host_pid != 0 { s.host_pid } else { s.pid };
            ProcessView {
                slot,
                pid: s.pid,
                host_pid: s.host_pid,
                name: printable(&s.name),
                priority: s.priority,
                protected: s.flags & VRAMCAP_FLAG_PROTECTED != 0,
                uid: s.uid,
                updated_unix_ms: s.updated_unix_ms,
                suspended_unix_ms: (s.suspended_unix_ms != 0).then_some(s.suspended_unix_ms),
                suspended_bytes: s.suspended_bytes,
                devices: s
                    .devices
                    .iter()
                    .filter(|d| d.uuid != [0; 16])
                    .map(|d| {
                        let uuid = format_uuid(&d.uuid);
                        DeviceView {
                            nvml_used: used.get(&(uuid.clone(), pid_for_nvml)).copied(),
                            uuid,
                            charged: d.charged,
                            requested: d.requested,
                            cap: (d.cap != u64::MAX).then_some(d.cap),
                            peak: d.peak,
                            context: d.context,
                            allocations: d.allocations,
                            refusals: d.refusals,
                            last_refused_bytes: d.last_refused_bytes,
                            last_refused_unix_ms: d.last_refused_unix_ms,
                        }
                    })
                    .collect(),
            }
        })
        .collect();
    let mut totals: BTreeMap<String, Totals> = BTreeMap::new();
    // A suspended worker holds nothing on its devices (its memory is in host memory).
    for p in processes.iter().filter(|p| p.suspended_unix_ms.is_none()) {
        for d in &p.devices {
            let t = totals.entry(d.uuid.clone()).or_insert_with(|| Totals {
                uuid: d.uuid.clone(),
                charged: 0,
                caps: 0,
                processes: 0,
            });
            // Figures come from the segment, anyone's input: they add up without ever wrapping.
            t.charged = t.charged.saturating_add(d.charged);
            t.caps = t.caps.saturating_add(d.cap.unwrap_or(0));
            t.processes = t.processes.saturating_add(1);
        }
    }
    Status {
        segment: path.to_string(),
        nvml: nvml_note,
        devices,
        processes,
        totals: totals.into_values().collect(),
    }
}

fn short(uuid: &str) -> &str {
    &uuid[..uuid.len().min(12)]
}

/// The human table.
pub fn render(s: &Status) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(128 * (s.processes.len() + 4));
    let _ = writeln!(
        out,
        "{:<16} {:>8} {:>5} {:<13} {:>23} {:>11} {:>11} {:>7} {:>11}",
        "NAME", "PID", "PRIO", "DEVICE", "USED / CAP", "PEAK", "CONTEXT", "REFUSED", "NVML"
    );
    let mut cell = String::new();
    for p in &s.processes {
        for d in &p.devices {
            cell.clear();
            let _ = write!(cell, "{} / ", HumanBytes(d.charged));
            match d.cap {
                Some(c) => {
                    let _ = write!(cell, "{}", HumanBytes(c));
                }
                None => cell.push_str("none"),
            }
            let _ = write!(
                out,
                "{:<16}{} {:>8} {:>5} {:<13} {:>23} {:>11} {:>11} {:>7} ",
                p.name,
                if p.protected { "*" } else { "" },
                p.pid,
                p.priority,
                short(&d.uuid),
                cell,
                HumanBytes(d.peak),
                HumanBytes(d.context),
                d.refusals,
            );
            match d.nvml_used {
                Some(n) => {
                    let _ = writeln!(out, "{:>11}", HumanBytes(n));
                }
                None => {
                    let _ = writeln!(out, "{:>11}", "-");
                }
            }
        }
    }
    if s.processes.is_empty() {
        out.push_str("(no capped process is running)\n");
    }
    for p in &s.processes {
        if let Some(since) = p.suspended_unix_ms {
            let _ = writeln!(
                out,
                "{} (pid {}) is suspended: {} in host memory, for {}s",
                p.name,
                p.pid,
                HumanBytes(p.suspended_bytes),
                crate::log::unix_ms().saturating_sub(since) / 1000
            );
        }
    }
    out.push('\n');
    for t in &s.totals {
        let _ = write!(
            out,
            "{}: {} processes hold {} (caps add up to {})",
            t.uuid,
            t.processes,
            HumanBytes(t.charged),
            HumanBytes(t.caps)
        );
        if let Some(d) = s.devices.iter().find(|d| d.uuid == t.uuid) {
            let _ = write!(
                out,
                ", device {} total, {} free",
                HumanBytes(d.total),
                HumanBytes(d.free)
            );
        }
        out.push('\n');
    }
    if let Some(why) = &s.nvml {
        let _ = writeln!(
            out,
            "NVML: not available ({why}); figures are vramcap's own"
        );
    }
    out
}
