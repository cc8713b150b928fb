//! What `vramcap status`, `vramcap watch` and `vramcap exporter` show: every capped process's figures from
//! the shared segment, beside NVML's physical and per-process figures where NVML is present.
//!
//! This module owns the view ([`Status`], which is also the versioned `status --json` document: see
//! [`SCHEMA_VERSION`]), the fields that `--query` selects ([`FIELDS`]) and the table and CSV forms. It
//! reads the segment only through `shm`'s public API and never writes it. Everything a slot says is a
//! stranger's input: names come through [`printable`], totals saturate.

use crate::accounting::figures::DeviceFigures;
use crate::config::size::HumanBytes;
use crate::config::{canonical_uuid, format_uuid};
use crate::shm::{live_slots, printable, Segment, VRAMCAP_FLAG_PROTECTED};
use nvml_wrapper::Nvml;
use serde::Serialize;
use std::collections::BTreeMap;

/// The version of the `status --json` document. Fields may be added within a version; a field renamed,
/// removed or changed in meaning makes the next one.
pub const SCHEMA_VERSION: u32 = 1;

/// The widest name the table shows; longer ones are cut, with `…` (the JSON has them whole).
pub const NAME_WIDTH: usize = 30;

/// One process's figures on one device, with where the device is and what NVML says of the process there.
#[derive(Serialize, Debug, Clone)]
pub struct DeviceView {
    pub uuid: String,
    /// NVML's index of the device (nvidia-smi's), where NVML lists it.
    pub index: Option<u32>,
    /// `charged_bytes`, `cap_bytes`, … in the JSON.
    #[serde(flatten)]
    pub figures: DeviceFigures,
    /// NVML's own per-process figure, where NVML is present and lists the process.
    pub nvml_used_bytes: Option<u64>,
}

#[derive(Serialize, Debug, Clone)]
pub struct ProcessView {
    pub slot: usize,
    pub pid: u32,
    /// Its PID in the outermost PID namespace, when it runs in another one.
    pub host_pid: Option<u32>,
    /// Control characters and bidirectional overrides escaped (`\u{1b}`).
    pub name: String,
    pub priority: i32,
    pub protected: bool,
    pub uid: u32,
    pub updated_unix_ms: Option<u64>,
    pub suspended: bool,
    /// Suspended by the unloader since then: its device memory is in host memory.
    pub suspended_since_unix_ms: Option<u64>,
    /// What the suspension moved to host memory.
    pub suspended_bytes: Option<u64>,
    /// Unloaded by the unloader since then, and what it gave back (it may be told to reload).
    pub unloaded_since_unix_ms: Option<u64>,
    pub unloaded_bytes: Option<u64>,
    /// How often the unloader asked it to unload, and to reload.
    pub unloads_asked: u32,
    pub reloads_asked: u32,
    pub devices: Vec<DeviceView>,
}

/// A device as NVML lists it.
#[derive(Serialize, Debug, Clone)]
pub struct PhysicalDevice {
    pub index: u32,
    pub uuid: String,
    pub name: String,
    pub total_bytes: u64,
    pub free_bytes: u64,
}

/// What the running capped processes hold on one device (suspended ones hold nothing there).
#[derive(Serialize, Debug, Clone)]
pub struct Totals {
    pub uuid: String,
    pub index: Option<u32>,
    pub processes: usize,
    pub charged_bytes: u64,
    /// The caps of the capped ones, added up.
    pub caps_bytes: u64,
    pub uncapped_processes: usize,
}

#[derive(Serialize, Debug, Clone)]
pub struct Status {
    pub schema_version: u32,
    pub segment: String,
    /// `false`: no capped process has started yet (and every list is empty).
    pub segment_exists: bool,
    /// Why NVML's figures are missing; `null` when NVML answered.
    pub nvml_error: Option<String>,
    pub devices: Vec<PhysicalDevice>,
    pub processes: Vec<ProcessView>,
    pub totals: Vec<Totals>,
}

/// NVML, opened once for a command that reads it many times (`watch`, `exporter`), or why it is not.
pub struct NvmlSource(Result<Nvml, String>);

impl NvmlSource {
    pub fn open(wanted: bool) -> NvmlSource {
        NvmlSource(if wanted {
            Nvml::init().map_err(|e| e.to_string())
        } else {
            Err("not asked (--no-nvml)".into())
        })
    }

    /// The UUID of NVML's device `index`, or why it cannot be told.
    pub fn uuid_of(&self, index: u32) -> Result<String, String> {
        let nvml = self.0.as_ref().map_err(Clone::clone)?;
        let count = nvml.device_count().map_err(|e| e.to_string())?;
        if index >= count {
            return Err(format!(
                "NVML lists {count} device(s), numbered from 0: no device {index}"
            ));
        }
        let d = nvml.device_by_index(index).map_err(|e| e.to_string())?;
        d.uuid()
            .map(|u| canonical_uuid(&u))
            .map_err(|e| e.to_string())
    }

    pub fn error(&self) -> Option<&str> {
        self.0.as_ref().err().map(String::as_str)
    }
}

/// NVML's per-process figures and physical devices.
struct NvmlView {
    devices: Vec<PhysicalDevice>,
    /// (uuid, pid) -> used bytes.
    used: BTreeMap<(String, u32), u64>,
}

fn nvml_view(nvml: &Nvml) -> Result<NvmlView, String> {
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
            index: i,
            uuid: uuid.clone(),
            // The driver's text, printed like the segment's: escaped.
            name: printable(d.name().unwrap_or_default().as_bytes()),
            total_bytes: mem.total,
            free_bytes: mem.free,
        });
        for p in d.running_compute_processes().unwrap_or_default() {
            if let nvml_wrapper::enums::device::UsedGpuMemory::Used(bytes) = p.used_gpu_memory {
                view.used.insert((uuid.clone(), p.pid), bytes);
            }
        }
    }
    Ok(view)
}

/// The view of `seg`, asking NVML if `with_nvml` (opened for this one reading).
pub fn collect(seg: &Segment, path: &str, with_nvml: bool) -> Status {
    collect_from(Some(seg), path, &NvmlSource::open(with_nvml))
}

/// The view of `seg` (`None`: there is no segment yet, and the view is empty but for NVML's devices).
pub fn collect_from(seg: Option<&Segment>, path: &str, nvml: &NvmlSource) -> Status {
    let view = match &nvml.0 {
        Ok(n) => nvml_view(n),
        Err(e) => Err(e.clone()),
    };
    let (nvml_error, devices, used) = match view {
        Ok(v) => (None, v.devices, v.used),
        Err(e) => (Some(e), Vec::new(), BTreeMap::new()),
    };
    let index_of = |uuid: &str| devices.iter().find(|d| d.uuid == uuid).map(|d| d.index);
    let nonzero = |v: u64| (v != 0).then_some(v);
    let slots = seg.map(live_slots).unwrap_or_default();
    let processes: Vec<ProcessView> = slots
        .into_iter()
        .map(|(slot, s)| {
            let pid_for_nvml = if s.host_pid != 0 { s.host_pid } else { s.pid };
            let suspended = s.suspended_unix_ms != 0;
            ProcessView {
                slot,
                pid: s.pid,
                host_pid: nonzero(u64::from(s.host_pid)).map(|_| s.host_pid),
                name: printable(&s.name),
                priority: s.priority,
                protected: s.flags & VRAMCAP_FLAG_PROTECTED != 0,
                uid: s.uid,
                updated_unix_ms: nonzero(s.updated_unix_ms),
                suspended,
                suspended_since_unix_ms: nonzero(s.suspended_unix_ms),
                suspended_bytes: suspended.then_some(s.suspended_bytes),
                unloaded_since_unix_ms: nonzero(s.unloaded_unix_ms),
                unloaded_bytes: (s.unloaded_unix_ms != 0).then_some(s.unloaded_bytes),
                unloads_asked: s.unloads,
                reloads_asked: s.reloads,
                devices: s
                    .devices
                    .iter()
                    .filter(|d| d.uuid != [0; 16])
                    .map(|d| {
                        let uuid = format_uuid(&d.uuid);
                        DeviceView {
                            nvml_used_bytes: used.get(&(uuid.clone(), pid_for_nvml)).copied(),
                            index: index_of(&uuid),
                            uuid,
                            figures: d.figures(),
                        }
                    })
                    .collect(),
            }
        })
        .collect();
    let mut totals: BTreeMap<String, Totals> = BTreeMap::new();
    // A suspended worker holds nothing on its devices (its memory is in host memory).
    for p in processes.iter().filter(|p| !p.suspended) {
        for d in &p.devices {
            let t = totals.entry(d.uuid.clone()).or_insert_with(|| Totals {
                uuid: d.uuid.clone(),
                index: d.index,
                processes: 0,
                charged_bytes: 0,
                caps_bytes: 0,
                uncapped_processes: 0,
            });
            // Figures come from the segment, anyone's input: they add up without ever wrapping.
            t.charged_bytes = t.charged_bytes.saturating_add(d.figures.charged);
            match d.figures.cap {
                Some(c) => t.caps_bytes = t.caps_bytes.saturating_add(c),
                None => t.uncapped_processes = t.uncapped_processes.saturating_add(1),
            }
            t.processes = t.processes.saturating_add(1);
        }
    }
    Status {
        schema_version: SCHEMA_VERSION,
        segment: path.to_string(),
        segment_exists: seg.is_some(),
        nvml_error,
        devices,
        processes,
        totals: totals.into_values().collect(),
    }
}

// ---- fields, the table and CSV ----

/// One row of the table: a process on one of its devices (or on none, before its first device call).
pub struct Row<'a> {
    pub process: &'a ProcessView,
    pub device: Option<&'a DeviceView>,
    /// How the table names the device: NVML's index, else the shortest UUID prefix that tells the
    /// devices apart.
    pub gpu: String,
    pub gpu_name: Option<&'a str>,
}

/// A field's value, which the table and CSV write each their own way.
pub enum Value {
    Text(String),
    Number(i64),
    Count(u64),
    Bytes(u64),
    Flag(bool),
    Nothing,
}

impl Value {
    fn bytes(v: Option<u64>) -> Value {
        v.map_or(Value::Nothing, Value::Bytes)
    }

    fn count(v: Option<u64>) -> Value {
        v.map_or(Value::Nothing, Value::Count)
    }

    fn numeric(&self) -> bool {
        matches!(self, Value::Number(_) | Value::Count(_) | Value::Bytes(_))
    }

    /// For people: sizes in binary units, `-` for nothing.
    pub fn human(&self) -> String {
        match self {
            Value::Text(t) => t.clone(),
            Value::Number(n) => n.to_string(),
            Value::Count(n) => n.to_string(),
            Value::Bytes(b) => HumanBytes(*b).to_string(),
            Value::Flag(true) => "yes".into(),
            Value::Flag(false) => "no".into(),
            Value::Nothing => "-".into(),
        }
    }

    /// For CSV: sizes in bytes, nothing as an empty field.
    pub fn raw(&self) -> String {
        match self {
            Value::Text(t) => t.clone(),
            Value::Number(n) => n.to_string(),
            Value::Count(n) | Value::Bytes(n) => n.to_string(),
            Value::Flag(f) => f.to_string(),
            Value::Nothing => String::new(),
        }
    }
}

/// A field `--query` can name.
#[derive(Clone, Copy)]
pub struct Field {
    pub name: &'static str,
    pub header: &'static str,
    pub about: &'static str,
    pub get: fn(&Row) -> Value,
}

impl std::fmt::Debug for Field {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name)
    }
}

macro_rules! device_field {
    ($row:ident, $d:ident => $e:expr) => {
        |$row: &Row| match $row.device {
            Some($d) => $e,
            None => Value::Nothing,
        }
    };
}

/// Every field, in the order `--help` lists them.
pub const FIELDS: &[Field] = &[
    Field {
        name: "name",
        header: "NAME",
        about: "the worker's name (escaped; cut in the table)",
        get: |r| Value::Text(r.process.name.clone()),
    },
    Field {
        name: "pid",
        header: "PID",
        about: "its PID (in its own PID namespace)",
        get: |r| Value::Count(r.process.pid.into()),
    },
    Field {
        name: "host_pid",
        header: "HOST PID",
        about: "its PID on the host, when it runs in another PID namespace",
        get: |r| Value::count(r.process.host_pid.map(u64::from)),
    },
    Field {
        name: "priority",
        header: "PRIO",
        about: "its priority (higher keeps its memory longer)",
        get: |r| Value::Number(r.process.priority.into()),
    },
    Field {
        name: "protected",
        header: "PROTECTED",
        about: "never asked to unload",
        get: |r| Value::Flag(r.process.protected),
    },
    Field {
        name: "state",
        header: "STATE",
        about: "running, suspended (its device memory in host memory), or unloaded (until told to reload)",
        get: |r| {
            Value::Text(
                if r.process.suspended {
                    "suspended"
                } else if r.process.unloaded_since_unix_ms.is_some() {
                    "unloaded"
                } else {
                    "running"
                }
                .into(),
            )
        },
    },
    Field {
        name: "gpu",
        header: "GPU",
        about: "the device: NVML's index, else the shortest UUID prefix that tells devices apart",
        get: |r| {
            if r.device.is_some() {
                Value::Text(r.gpu.clone())
            } else {
                Value::Nothing
            }
        },
    },
    Field {
        name: "gpu_name",
        header: "GPU NAME",
        about: "the device's name, from NVML",
        get: |r| r.gpu_name.map_or(Value::Nothing, |n| Value::Text(n.into())),
    },
    Field {
        name: "uuid",
        header: "UUID",
        about: "the device's UUID",
        get: device_field!(r, d => Value::Text(d.uuid.clone())),
    },
    Field {
        name: "charged",
        header: "USED",
        about: "what vramcap charges it on the device, its context included",
        get: device_field!(r, d => Value::Bytes(d.figures.charged)),
    },
    Field {
        name: "requested",
        header: "REQUESTED",
        about: "what it asked for (before the driver's rounding)",
        get: device_field!(r, d => Value::Bytes(d.figures.requested)),
    },
    Field {
        name: "cap",
        header: "CAP",
        about: "its cap on the device (none: counted, not capped)",
        get: device_field!(r, d => Value::bytes(d.figures.cap)),
    },
    Field {
        name: "peak",
        header: "PEAK",
        about: "the most it held on the device",
        get: device_field!(r, d => Value::Bytes(d.figures.peak)),
    },
    Field {
        name: "context",
        header: "CONTEXT",
        about: "its CUDA context's share (measured through NVML, else estimated)",
        get: device_field!(r, d => Value::Bytes(d.figures.context)),
    },
    Field {
        name: "allocations",
        header: "ALLOCS",
        about: "how many allocations it holds there",
        get: device_field!(r, d => Value::Count(d.figures.allocations)),
    },
    Field {
        name: "refusals",
        header: "REFUSED",
        about: "how many calls were refused at the cap",
        get: device_field!(r, d => Value::Count(d.figures.refusals)),
    },
    Field {
        name: "last_refused",
        header: "LAST REFUSED",
        about: "the size of the last refused request",
        get: device_field!(r, d => Value::bytes(d.figures.last_refused())),
    },
    Field {
        name: "nvml_used",
        header: "NVML",
        about: "NVML's own figure for the process on the device",
        get: device_field!(r, d => Value::bytes(d.nvml_used_bytes)),
    },
    Field {
        name: "suspended",
        header: "SUSPENDED",
        about: "what a suspension moved to host memory",
        get: |r| Value::bytes(r.process.suspended_bytes),
    },
    Field {
        name: "slot",
        header: "SLOT",
        about: "its slot in the segment",
        get: |r| Value::Count(r.process.slot as u64),
    },
    Field {
        name: "uid",
        header: "UID",
        about: "the user it runs as",
        get: |r| Value::Count(r.process.uid.into()),
    },
    Field {
        name: "updated_unix_ms",
        header: "UPDATED",
        about: "when it last published its figures (Unix ms)",
        get: |r| Value::count(r.process.updated_unix_ms),
    },
];

/// The table's columns when `--query` names none.
pub const DEFAULT_FIELDS: &[&str] = &[
    "name",
    "pid",
    "priority",
    "protected",
    "state",
    "gpu",
    "charged",
    "cap",
    "peak",
    "context",
    "refusals",
    "nvml_used",
];

/// Every field's name, comma-separated (for errors and help).
pub fn field_names() -> String {
    FIELDS.iter().map(|f| f.name).collect::<Vec<_>>().join(",")
}

/// `--query pid,name,gpu,charged,cap`: the fields, in the order given.
pub fn parse_query(text: &str) -> Result<Vec<&'static Field>, String> {
    let mut fields = Vec::new();
    for name in text.split(',').map(str::trim) {
        if name.is_empty() {
            return Err(format!(
                "{text:?} has an empty field name (fields: {})",
                field_names()
            ));
        }
        let lower = name.to_ascii_lowercase();
        let field = FIELDS
            .iter()
            .find(|f| f.name == lower || format!("{}_bytes", f.name) == lower)
            .ok_or_else(|| {
                format!(
                    "{:?} is not a field (fields: {})",
                    name.escape_debug().to_string(),
                    field_names()
                )
            })?;
        fields.push(field);
    }
    Ok(fields)
}

fn default_fields() -> Vec<&'static Field> {
    DEFAULT_FIELDS
        .iter()
        .filter_map(|n| FIELDS.iter().find(|f| f.name == *n))
        .collect()
}

/// How each device is named: NVML's index where known, else (`short`, for the table) the shortest
/// prefix of its UUID (at least `GPU-` and 8 digits) that no other device shown shares, or its UUID.
fn gpu_labels(s: &Status, short: bool) -> BTreeMap<String, String> {
    let mut uuids: Vec<&str> = s
        .processes
        .iter()
        .flat_map(|p| p.devices.iter().map(|d| d.uuid.as_str()))
        .chain(s.devices.iter().map(|d| d.uuid.as_str()))
        .collect();
    uuids.sort_unstable();
    uuids.dedup();
    let longest = uuids.iter().map(|u| u.len()).max().unwrap_or(0);
    let prefix = |u: &'_ str, n: usize| u.get(..n).unwrap_or(u).to_string();
    let mut len = 12.min(longest);
    while len < longest
        && uuids
            .windows(2)
            .any(|w| prefix(w[0], len) == prefix(w[1], len))
    {
        len += 1;
    }
    uuids
        .iter()
        .map(|u| {
            let label = match s.devices.iter().find(|d| d.uuid == *u) {
                Some(d) => d.index.to_string(),
                None if short && u.len() > len => format!("{}…", prefix(u, len)),
                None => u.to_string(),
            };
            (u.to_string(), label)
        })
        .collect()
}

fn rows<'a>(s: &'a Status, labels: &BTreeMap<String, String>) -> Vec<Row<'a>> {
    let name_of = |uuid: &str| {
        s.devices
            .iter()
            .find(|d| d.uuid == uuid && !d.name.is_empty())
            .map(|d| d.name.as_str())
    };
    let mut out = Vec::new();
    for p in &s.processes {
        if p.devices.is_empty() {
            out.push(Row {
                process: p,
                device: None,
                gpu: String::new(),
                gpu_name: None,
            });
        }
        for d in &p.devices {
            out.push(Row {
                process: p,
                device: Some(d),
                gpu: labels
                    .get(&d.uuid)
                    .cloned()
                    .unwrap_or_else(|| d.uuid.clone()),
                gpu_name: name_of(&d.uuid),
            });
        }
    }
    out
}

/// `text` cut to `width` characters, the last one `…` if anything was cut.
pub fn cut(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        return text.to_string();
    }
    let mut out: String = text.chars().take(width.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// An aligned table of `fields` (numbers to the right), one row per process and device.
pub fn render_table(s: &Status, fields: &[&Field]) -> String {
    use comfy_table::{presets::NOTHING, CellAlignment, ContentArrangement, Table};
    let labels = gpu_labels(s, true);
    let rows = rows(s, &labels);
    let mut table = Table::new();
    table
        .load_preset(NOTHING)
        .set_content_arrangement(ContentArrangement::Disabled)
        .set_header(fields.iter().map(|f| f.header).collect::<Vec<_>>());
    let mut numeric = vec![false; fields.len()];
    for r in &rows {
        let cells: Vec<String> = fields
            .iter()
            .enumerate()
            .map(|(i, f)| {
                let v = (f.get)(r);
                numeric[i] |= v.numeric();
                match (f.name, v) {
                    ("name", Value::Text(t)) => cut(&t, NAME_WIDTH),
                    (_, v) => v.human(),
                }
            })
            .collect();
        table.add_row(cells);
    }
    for (i, column) in table.column_iter_mut().enumerate() {
        column.set_padding((0, 2));
        if numeric.get(i).copied().unwrap_or(false) {
            column.set_cell_alignment(CellAlignment::Right);
        }
    }
    let mut out = String::with_capacity(128 * (rows.len() + 2));
    for line in table.lines() {
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// CSV of `fields`: a header of the field names, then one line per process and device; sizes in bytes,
/// nothing as an empty field.
pub fn render_csv(s: &Status, fields: &[&Field]) -> String {
    let labels = gpu_labels(s, false);
    let mut out = String::new();
    let line = |values: Vec<String>, out: &mut String| {
        let quoted: Vec<String> = values.iter().map(|v| csv_field(v)).collect();
        out.push_str(&quoted.join(","));
        out.push('\n');
    };
    line(
        fields.iter().map(|f| f.name.to_string()).collect(),
        &mut out,
    );
    for r in rows(s, &labels) {
        line(fields.iter().map(|f| (f.get)(&r).raw()).collect(), &mut out);
    }
    out
}

/// One CSV field (RFC 4180): quoted where it holds a comma, a quote, a line break or edge spaces.
fn csv_field(v: &str) -> String {
    let needs = v.contains([',', '"', '\n', '\r']) || v.starts_with(' ') || v.ends_with(' ');
    if needs {
        format!("\"{}\"", v.replace('"', "\"\""))
    } else {
        v.to_string()
    }
}

/// The human view: the table of the default fields, suspended workers, each device's totals, and why
/// NVML's figures are missing.
pub fn render(s: &Status) -> String {
    use std::fmt::Write;
    let mut out = if s.processes.is_empty() {
        if s.segment_exists {
            "(no capped process is running)\n".to_string()
        } else {
            format!(
                "(no capped process has started: no segment at {} yet)\n",
                s.segment
            )
        }
    } else {
        render_table(s, &default_fields())
    };
    for p in &s.processes {
        if let Some(since) = p.suspended_since_unix_ms {
            let _ = writeln!(
                out,
                "{} (pid {}) is suspended: {} in host memory, for {}s",
                p.name,
                p.pid,
                HumanBytes(p.suspended_bytes.unwrap_or(0)),
                crate::log::unix_ms().saturating_sub(since) / 1000
            );
        }
    }
    out.push('\n');
    let labels = gpu_labels(s, true);
    let describe = |uuid: &str| {
        let label = labels.get(uuid).map_or(uuid, String::as_str);
        match s.devices.iter().find(|d| d.uuid == uuid) {
            Some(d) if !d.name.is_empty() => format!("GPU {label} {} ({uuid})", d.name),
            _ if label != uuid => format!("GPU {label} ({uuid})"),
            _ => format!("GPU {uuid}"),
        }
    };
    let physical = |uuid: &str, out: &mut String| {
        if let Some(d) = s.devices.iter().find(|d| d.uuid == uuid) {
            let _ = write!(
                out,
                ", device {} total, {} free",
                HumanBytes(d.total_bytes),
                HumanBytes(d.free_bytes)
            );
        }
    };
    for t in &s.totals {
        let _ = write!(
            out,
            "{}: {} {} {} (caps add up to {}",
            describe(&t.uuid),
            t.processes,
            if t.processes == 1 {
                "process holds"
            } else {
                "processes hold"
            },
            HumanBytes(t.charged_bytes),
            HumanBytes(t.caps_bytes)
        );
        if t.uncapped_processes > 0 {
            let _ = write!(out, "; {} uncapped", t.uncapped_processes);
        }
        out.push(')');
        physical(&t.uuid, &mut out);
        out.push('\n');
    }
    for d in s
        .devices
        .iter()
        .filter(|d| !s.totals.iter().any(|t| t.uuid == d.uuid))
    {
        let _ = write!(out, "{}: no capped process", describe(&d.uuid));
        physical(&d.uuid, &mut out);
        out.push('\n');
    }
    if let Some(why) = &s.nvml_error {
        let _ = writeln!(
            out,
            "NVML: not available ({why}); figures are vramcap's own"
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(uuid: &str, index: Option<u32>, charged: u64, cap: Option<u64>) -> DeviceView {
        DeviceView {
            uuid: uuid.into(),
            index,
            figures: DeviceFigures {
                charged,
                requested: charged,
                cap,
                peak: charged,
                context: 300 << 20,
                allocations: 1,
                ..DeviceFigures::default()
            },
            nvml_used_bytes: None,
        }
    }

    fn process(name: &str, pid: u32, protected: bool, devices: Vec<DeviceView>) -> ProcessView {
        ProcessView {
            slot: 0,
            pid,
            host_pid: None,
            name: name.into(),
            priority: 1,
            protected,
            uid: 0,
            updated_unix_ms: None,
            suspended: false,
            suspended_since_unix_ms: None,
            suspended_bytes: None,
            unloaded_since_unix_ms: None,
            unloaded_bytes: None,
            unloads_asked: 0,
            reloads_asked: 0,
            devices,
        }
    }

    fn status(processes: Vec<ProcessView>) -> Status {
        Status {
            schema_version: SCHEMA_VERSION,
            segment: "/dev/shm/x".into(),
            segment_exists: true,
            nvml_error: Some("not asked".into()),
            devices: Vec::new(),
            processes,
            totals: Vec::new(),
        }
    }

    const A: &str = "GPU-fa4e0000-0000-0000-0000-000000000000";
    const B: &str = "GPU-fa4e0000-0000-0000-0000-000000000001";

    /// The column where `needle` starts on the line that holds `row`.
    fn column(table: &str, row: &str, needle: &str) -> usize {
        let line = table.lines().find(|l| l.contains(row)).unwrap();
        let byte = line.find(needle).unwrap();
        line[..byte].chars().count()
    }

    #[test]
    fn columns_line_up_whatever_the_protected_flag_and_the_name() {
        let s = status(vec![
            process(
                "chat",
                10,
                false,
                vec![device(A, None, 1 << 30, Some(2 << 30))],
            ),
            process(
                "image worker with a very long name indeed, longer than any column",
                2_000_000,
                true,
                vec![device(A, None, 216 << 20, None)],
            ),
        ]);
        let t = render_table(&s, &default_fields());
        assert_eq!(column(&t, "chat", "no"), column(&t, "image", "yes"), "{t}");
        // Right-aligned numbers end in the same column.
        let end = |row: &str, v: &str| column(&t, row, v) + v.chars().count();
        assert_eq!(end("chat", "1.00 GiB"), end("image", "216.00 MiB"), "{t}");
        assert!(
            t.contains(&cut(
                "image worker with a very long name indeed",
                NAME_WIDTH
            )),
            "{t}"
        );
        assert!(!t.contains("longer than any column"), "cut: {t}");
        assert!(t.lines().nth(2).unwrap().contains("  -  "), "no cap: {t}");
    }

    #[test]
    fn devices_that_share_a_uuid_prefix_get_labels_of_their_own() {
        let s = status(vec![
            process("a", 1, false, vec![device(A, None, 1, None)]),
            process("b", 2, false, vec![device(B, None, 1, None)]),
        ]);
        let labels = gpu_labels(&s, true);
        assert_eq!(
            (labels[A].as_str(), labels[B].as_str()),
            (A, B),
            "they differ last"
        );
        const C: &str = "GPU-fa4e0000-1111-0000-0000-000000000000";
        let apart = status(vec![
            process("a", 1, false, vec![device(A, None, 1, None)]),
            process("c", 2, false, vec![device(C, None, 1, None)]),
        ]);
        let labels = gpu_labels(&apart, true);
        assert_eq!(labels[A], "GPU-fa4e0000-0…");
        assert_eq!(labels[C], "GPU-fa4e0000-1…");
        let one = status(vec![process("a", 1, false, vec![device(A, None, 1, None)])]);
        assert_eq!(gpu_labels(&one, true)[A], "GPU-fa4e0000…");
        let mut with_nvml = s.clone();
        with_nvml.devices = vec![PhysicalDevice {
            index: 3,
            uuid: B.into(),
            name: "NVIDIA H200".into(),
            total_bytes: 1 << 40,
            free_bytes: 1 << 39,
        }];
        assert_eq!(gpu_labels(&with_nvml, true)[B], "3");
        assert_eq!(gpu_labels(&s, false)[A], A, "CSV has the whole UUID");
    }

    #[test]
    fn queries_name_fields_and_refuse_others() {
        let f = parse_query("pid, name,GPU,charged_bytes,cap").unwrap();
        let names: Vec<&str> = f.iter().map(|f| f.name).collect();
        assert_eq!(names, ["pid", "name", "gpu", "charged", "cap"]);
        let e = parse_query("pid,mem").unwrap_err();
        assert!(
            e.contains("\"mem\" is not a field") && e.contains("charged"),
            "{e}"
        );
        assert!(parse_query("pid,,name").is_err());
        assert!(parse_query("").is_err());
    }

    #[test]
    fn csv_has_bytes_and_empty_fields_and_quotes_what_needs_it() {
        let s = status(vec![process(
            "a, \"quoted\" name",
            7,
            false,
            vec![device(A, None, 3 << 20, None)],
        )]);
        let csv = render_csv(&s, &parse_query("pid,name,charged,cap").unwrap());
        assert_eq!(
            csv,
            "pid,name,charged,cap\n7,\"a, \"\"quoted\"\" name\",3145728,\n"
        );
    }

    #[test]
    fn json_has_units_in_its_keys_and_nulls_for_nothing() {
        let s = status(vec![process("a", 1, false, vec![device(A, None, 1, None)])]);
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(v["schema_version"], SCHEMA_VERSION);
        let d = &v["processes"][0]["devices"][0];
        assert_eq!(d["charged_bytes"], 1);
        assert!(d["cap_bytes"].is_null() && d["last_refused_bytes"].is_null());
        assert!(v["processes"][0]["host_pid"].is_null());
    }
}
