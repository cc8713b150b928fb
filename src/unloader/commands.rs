//! The one-off commands on workers (`vramcap reclaim`, `unload`, `cleanup`, `suspend`, `resume`): which
//! device `--device` names, which workers a command acts on, acting through the [`Unloader`], and
//! judging from the segment what each worker did. Each returns typed results whose `Display` is the
//! line the command prints. Parsing arguments, opening the segment, printing and exit codes are the
//! binary's.

use super::{Seen, Unloader};
use crate::config::canonical_uuid;
use crate::config::size::HumanBytes;
use crate::status::{self, NvmlSource};
use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, Instant};

/// Why a command did not act: bad input, which the binary answers with exit 2.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    #[error("--device {device:?} names no device that a worker uses or NVML lists")]
    UnknownDevice { device: String },
    #[error("--device {device:?} names {} devices ({}); give more of the UUID", .matches.len(), .matches.join(", "))]
    AmbiguousDevice {
        device: String,
        matches: Vec<String>,
    },
    #[error("--device {device:?} is neither an NVML index (0, 1, …) nor a GPU UUID (GPU-…)")]
    NotADevice { device: String },
    #[error(
        "--device {device:?}: device indexes are NVML's, and NVML (libnvidia-ml.so.1) cannot tell \
         which device is {index}: {why}; give its UUID instead (GPU-…, as `vramcap status` shows it)"
    )]
    UnknownIndex {
        device: String,
        index: u32,
        why: String,
    },
    #[error("--for {0:?}: no such worker")]
    NoSuchRequester(String),
    #[error("no worker named {0:?}")]
    NoSuchWorker(String),
    /// The worker, as [`Seen::describe`] names it.
    #[error("{0} is protected; not asking it")]
    Protected(String),
}

/// A duration for people: `71 ms`, `1.4 s`, `12 s`.
pub fn took(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        format!("{ms} ms")
    } else if ms < 10_000 {
        format!("{:.1} s", d.as_secs_f64())
    } else {
        format!("{:.0} s", d.as_secs_f64())
    }
}

/// The device a command acts on, and how its lines name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    pub uuid: String,
    /// `GPU 0` where it was given as an index, else its UUID.
    pub shown: String,
}

/// `--device`: an NVML index, a UUID, or a UUID prefix that names one device of the segment or NVML.
pub fn resolve_device(device: &str, u: &Unloader) -> Result<Device, CommandError> {
    resolve_device_in(
        device,
        || {
            let nvml = NvmlSource::open(true);
            u.workers()
                .iter()
                .flat_map(|w| w.held.keys().cloned())
                .chain(
                    status::collect_from(None, "", &nvml)
                        .devices
                        .into_iter()
                        .map(|d| d.uuid),
                )
                .collect()
        },
        // The unloader's NVML, where it opened one (not with --no-nvml); else NVML just for the index.
        |index| match u.uuid_of(index) {
            Some(uuid) => Ok(uuid),
            None => NvmlSource::open(true).uuid_of(index),
        },
    )
}

/// [`resolve_device`] over the UUIDs a prefix may name (`known`) and NVML's indexes (`by_index`), each
/// asked only when the argument needs it: opening NVML is slow, and a full UUID needs neither.
fn resolve_device_in(
    device: &str,
    known: impl FnOnce() -> Vec<String>,
    by_index: impl FnOnce(u32) -> Result<String, String>,
) -> Result<Device, CommandError> {
    // `vramcap status` cuts long UUIDs with an ellipsis: a copied one still works.
    let d = device.trim().trim_end_matches('…');
    // `get`: a byte slice through a character of a non-ASCII argument would panic.
    let uuid = if d.len() > 4 && d.get(..4).is_some_and(|p| p.eq_ignore_ascii_case("gpu-")) {
        let wanted = canonical_uuid(d);
        if wanted.len() == 40 {
            wanted
        } else {
            let mut matches: Vec<String> = known()
                .into_iter()
                .filter(|u| u.starts_with(&wanted))
                .collect();
            matches.sort();
            matches.dedup();
            match matches.len() {
                1 => matches.remove(0),
                0 => {
                    return Err(CommandError::UnknownDevice {
                        device: device.into(),
                    })
                }
                _ => {
                    return Err(CommandError::AmbiguousDevice {
                        device: device.into(),
                        matches,
                    })
                }
            }
        }
    } else {
        let index: u32 = d.parse().map_err(|_| CommandError::NotADevice {
            device: device.into(),
        })?;
        by_index(index).map_err(|why| CommandError::UnknownIndex {
            device: device.into(),
            index,
            why,
        })?
    };
    // The device as the lines name it: as given where it was an index.
    let shown = match device.trim().parse::<u32>() {
        Ok(i) => format!("GPU {i}"),
        Err(_) => uuid.clone(),
    };
    Ok(Device { uuid, shown })
}

/// The sum of a per-device map on `uuid`, or on every device where `None`.
fn on(m: &BTreeMap<String, u64>, uuid: Option<&str>) -> u64 {
    m.iter()
        .filter(|(k, _)| uuid.is_none_or(|u| u == k.as_str()))
        .map(|(_, v)| *v)
        .fold(0, u64::saturating_add)
}

/// What `w` holds on `uuid` (every device where `None`), its context included.
pub fn charged_of(w: &Seen, uuid: Option<&str>) -> u64 {
    on(&w.charged, uuid)
}

/// `w` as the segment shows it now (the same slot and PID), `None` if it is gone.
fn now_of(u: &Unloader, w: &Seen) -> Option<Seen> {
    u.workers()
        .into_iter()
        .find(|n| n.slot == w.slot && n.pid == w.pid)
}

/// (charged, context) of a worker as seen now.
fn holds(now: &Seen, uuid: Option<&str>) -> (u64, u64) {
    let charged = on(&now.charged, uuid);
    let held = on(&now.held, uuid);
    (charged, charged.saturating_sub(held))
}

/// What a worker holds now on `uuid` (every device where `None`): (charged, context), `None` if gone.
pub fn holds_now(u: &Unloader, w: &Seen, uuid: Option<&str>) -> Option<(u64, u64)> {
    now_of(u, w).map(|n| holds(&n, uuid))
}

/// What became of a worker that was asked, as the segment shows it now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Became {
    /// Suspended by this command (it was not before): `moved` bytes are in host memory.
    Suspended { moved: u64 },
    /// Still running, holding `charged`, `context` of it its CUDA context (which only its exit gives
    /// back).
    Running { charged: u64, context: u64 },
    /// Gone, and all it held with it.
    Exited,
}

/// One worker that was asked to give memory back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Asked {
    /// As [`Seen::describe`] names it.
    pub who: String,
    /// What it held before it was asked (on the device, or on all of them).
    pub before: u64,
    pub became: Became,
    /// How long asking it took, where its line says.
    pub elapsed: Option<Duration>,
}

impl Asked {
    /// What it gave back: a suspension or an exit frees all it held.
    pub fn freed(&self) -> u64 {
        match self.became {
            Became::Running { charged, .. } => self.before.saturating_sub(charged),
            Became::Suspended { .. } | Became::Exited => self.before,
        }
    }
}

impl fmt::Display for Asked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let who = &self.who;
        let when = self
            .elapsed
            .map_or(String::new(), |d| format!(" in {}", took(d)));
        match self.became {
            Became::Suspended { moved } => write!(
                f,
                "{who}: suspended{when}: {} moved to host memory",
                HumanBytes(moved)
            ),
            Became::Running { charged, context } => {
                write!(f, "{who}: freed {}{when}; ", HumanBytes(self.freed()))?;
                if charged == 0 {
                    write!(f, "holds nothing now")
                } else if charged <= context {
                    write!(f, "holds {} now, its CUDA context", HumanBytes(charged))
                } else {
                    write!(
                        f,
                        "holds {} now, {} of it its CUDA context",
                        HumanBytes(charged),
                        HumanBytes(context)
                    )
                }
            }
            Became::Exited => write!(
                f,
                "{who}: exited{when}, giving back all {}",
                HumanBytes(self.before)
            ),
        }
    }
}

/// What asking `w` did, judged from its figures before (`w`) and now: what it gave back, what it still
/// holds, and how much of that is its CUDA context.
pub fn after_asking(
    u: &Unloader,
    w: &Seen,
    uuid: Option<&str>,
    elapsed: Option<Duration>,
) -> Asked {
    let before = charged_of(w, uuid);
    let became = match now_of(u, w) {
        Some(Seen {
            suspended: Some((_, moved)),
            ..
        }) if w.suspended.is_none() => Became::Suspended { moved },
        Some(n) => {
            let (charged, context) = holds(&n, uuid);
            Became::Running { charged, context }
        }
        None => Became::Exited,
    };
    Asked {
        who: w.describe(),
        before,
        became,
        elapsed,
    }
}

/// What `vramcap reclaim` did, or with a dry run would do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reclaimed {
    pub device: Device,
    /// The bytes asked for.
    pub bytes: u64,
    /// Whether the device has them free now (with a dry run: would have).
    pub enough: bool,
    pub elapsed: Duration,
    pub work: Work,
}

/// Whom a reclaim asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Work {
    /// Nobody, and the device has the room.
    NobodyAsked,
    /// A dry run: each worker it would ask, with what it holds on the device beyond its context, and
    /// what asking them would free.
    WouldAsk {
        asked: Vec<(String, u64)>,
        freed: u64,
    },
    /// What each worker it asked did.
    Asked(Vec<Asked>),
}

impl Reclaimed {
    /// What was freed (with a dry run: would be).
    pub fn freed(&self) -> u64 {
        match &self.work {
            Work::NobodyAsked => 0,
            Work::WouldAsk { freed, .. } => *freed,
            Work::Asked(asked) => asked.iter().map(Asked::freed).fold(0, u64::saturating_add),
        }
    }
}

impl fmt::Display for Reclaimed {
    /// The command's lines: one per worker, then the verdict.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (gpu, bytes) = (&self.device.shown, HumanBytes(self.bytes));
        let verdict = if self.enough { "enough" } else { "not enough" };
        match &self.work {
            Work::NobodyAsked => write!(
                f,
                "enough: {gpu} has the {bytes} asked for free already; nobody asked"
            ),
            Work::WouldAsk { asked, freed } => {
                for (who, held) in asked {
                    writeln!(
                        f,
                        "would ask {who}: it holds {} on {gpu} beyond its context",
                        HumanBytes(*held)
                    )?;
                }
                write!(
                    f,
                    "{verdict}: would free {} of the {bytes} asked for, by asking {} worker(s)",
                    HumanBytes(*freed),
                    asked.len()
                )
            }
            Work::Asked(asked) => {
                for a in asked {
                    writeln!(f, "{a}")?;
                }
                write!(
                    f,
                    "{verdict}: freed {} on {gpu} in {} for the {bytes} asked for",
                    HumanBytes(self.freed()),
                    took(self.elapsed)
                )
            }
        }
    }
}

/// `vramcap reclaim`: frees `bytes` on `device` as the unloader would for a request, for the worker
/// `for_name` (only workers of lower priority are asked) or for anyone (any unprotected worker).
pub fn reclaim(
    u: &Unloader,
    device: &Device,
    bytes: u64,
    for_name: Option<&str>,
    dry_run: bool,
) -> Result<Reclaimed, CommandError> {
    let before = u.workers();
    let (priority, requester) = match for_name {
        None => (i32::MAX, None),
        Some(name) => {
            let w = before
                .iter()
                .find(|w| w.name == name)
                .ok_or_else(|| CommandError::NoSuchRequester(name.into()))?;
            (w.priority, Some((w.source, w.slot)))
        }
    };
    let start = Instant::now();
    let outcome = u.reclaim(&device.uuid, bytes, priority, requester, dry_run);
    let elapsed = start.elapsed();
    // The asked as they were before, to judge what each gave back.
    let asked: Vec<&Seen> = outcome
        .asked
        .iter()
        .filter_map(|who| before.iter().find(|w| &w.describe() == who))
        .collect();
    let work = if outcome.asked.is_empty() && outcome.enough {
        Work::NobodyAsked
    } else if dry_run {
        Work::WouldAsk {
            asked: asked
                .iter()
                .map(|w| {
                    let held = w.held.get(&device.uuid).copied().unwrap_or(0);
                    (w.describe(), held)
                })
                .collect(),
            freed: outcome.freed,
        }
    } else {
        Work::Asked(
            asked
                .iter()
                .map(|w| after_asking(u, w, Some(&device.uuid), None))
                .collect(),
        )
    };
    Ok(Reclaimed {
        device: device.clone(),
        bytes,
        enough: outcome.enough,
        elapsed,
        work,
    })
}

/// How many workers a command acted on, and how many of them it failed with.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    pub done: usize,
    pub failed: usize,
}

/// What `vramcap unload` / `cleanup` found to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unloading {
    /// `cleanup`: of the `running` workers, none is unprotected with a way to unload.
    NobodyToAsk {
        running: usize,
    },
    Asked(Tally),
}

/// `vramcap unload NAME` (`Some`: the workers of that name) and `vramcap cleanup` (`None`: every
/// unprotected worker with a hook). `each` hears of every worker as soon as it is done with (what it
/// gave back, or why asking failed), so a long cleanup shows its progress.
pub fn unload(
    u: &Unloader,
    name: Option<&str>,
    mut each: impl FnMut(Result<Asked, String>),
) -> Result<Unloading, CommandError> {
    let all = u.workers();
    let chosen: Vec<&Seen> = all
        .iter()
        .filter(|w| match name {
            Some(n) => w.name == n,
            None => !w.protected && w.hook.is_some(),
        })
        .collect();
    if let Some(n) = name {
        if chosen.is_empty() {
            return Err(CommandError::NoSuchWorker(n.into()));
        }
        if let Some(w) = chosen.iter().find(|w| w.protected) {
            return Err(CommandError::Protected(w.describe()));
        }
    } else if chosen.is_empty() {
        return Ok(Unloading::NobodyToAsk { running: all.len() });
    }
    let mut tally = Tally::default();
    for w in chosen {
        let start = Instant::now();
        match u.unload_one(w) {
            Ok(_) => {
                tally.done += 1;
                each(Ok(after_asking(u, w, None, Some(start.elapsed()))));
            }
            Err(e) => {
                tally.failed += 1;
                each(Err(e));
            }
        }
    }
    Ok(Unloading::Asked(tally))
}

/// Which way `vramcap suspend` / `resume` moves a worker's memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Move {
    /// From the device to host memory.
    Suspend,
    /// Back onto the device.
    Resume,
}

/// A worker suspended or resumed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Moved {
    pub who: String,
    pub how: Move,
    /// Moved to host memory, or back onto the device.
    pub bytes: u64,
    pub elapsed: Duration,
}

impl fmt::Display for Moved {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (who, took, bytes) = (&self.who, took(self.elapsed), HumanBytes(self.bytes));
        match self.how {
            Move::Suspend => write!(
                f,
                "{who}: suspended in {took}: {bytes} moved to host memory"
            ),
            Move::Resume => write!(f, "{who}: resumed in {took}: {bytes} back on the device"),
        }
    }
}

/// Why a worker was not suspended or resumed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotMoved {
    /// `resume` of a worker that is not suspended.
    NotSuspended { who: String },
    /// Refused (the unloader's reason) or failed (the driver's).
    Failed { who: String, why: String },
}

impl fmt::Display for NotMoved {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NotMoved::NotSuspended { who } => write!(f, "{who} is not suspended"),
            NotMoved::Failed { who, why } => write!(f, "{who}: {why}"),
        }
    }
}

/// `vramcap suspend NAME` / `vramcap resume NAME`, for every worker of that name; `each` hears of each
/// one as soon as it is done with.
pub fn suspend_or_resume(
    u: &Unloader,
    name: &str,
    how: Move,
    mut each: impl FnMut(Result<Moved, NotMoved>),
) -> Result<Tally, CommandError> {
    let chosen: Vec<Seen> = u.workers().into_iter().filter(|w| w.name == name).collect();
    if chosen.is_empty() {
        return Err(CommandError::NoSuchWorker(name.into()));
    }
    let mut tally = Tally::default();
    for w in &chosen {
        let who = w.describe();
        let start = Instant::now();
        let failed = |why| NotMoved::Failed {
            who: who.clone(),
            why,
        };
        let done = match (how, w.suspended) {
            (Move::Suspend, _) => u.suspend_one(w).map_err(failed),
            (Move::Resume, None) => Err(NotMoved::NotSuspended { who: who.clone() }),
            (Move::Resume, Some((_, bytes))) => u.resume_one(w).map(|()| bytes).map_err(failed),
        };
        match &done {
            Ok(_) => tally.done += 1,
            Err(_) => tally.failed += 1,
        }
        each(done.map(|bytes| Moved {
            who,
            how,
            bytes,
            elapsed: start.elapsed(),
        }));
    }
    Ok(tally)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{format_uuid, UnloadHook};
    use crate::shm::{Identity, Segment, VramcapDevice};
    use crate::unloader::Options;
    use std::cell::Cell;
    use std::path::PathBuf;

    const A: [u8; 16] = [0xa; 16];
    const B: [u8; 16] = [0xb; 16];
    const MIB: u64 = 1 << 20;

    /// An unloader on a segment of its own (removed when dropped), whose workers are slots that this
    /// process holds: they pass the unloader's checks in `/proc` as the test process itself.
    struct Fixture {
        u: Unloader,
        path: PathBuf,
    }

    impl Fixture {
        fn new(name: &str) -> Fixture {
            let path = crate::shm::test_path(&format!("commands-{name}"));
            // Opened again by its name: the creator's descriptor names the temporary file it was made
            // as, and the unloader recognises a worker by a descriptor of the segment's path.
            drop(Segment::open_or_create(&path, 0o600).unwrap());
            let seg = Segment::open_existing_rw(&path).unwrap();
            let opts = Options {
                poll: Duration::from_millis(10),
                hook_timeout: Duration::from_secs(10),
                allow_remote: false,
                nvml: false,
                min_host_free: 0,
            };
            Fixture {
                u: Unloader::new(seg, &path, opts),
                path,
            }
        }

        fn seg(&self) -> &Segment {
            &self.u.sources[0].seg
        }

        /// A worker holding `charged` on device A, `context` of it its CUDA context.
        fn worker(&self, who: Identity, charged: u64, context: u64) -> usize {
            let slot = self.seg().claim(&who).unwrap();
            hold(self.seg(), slot, &[(A, charged, context)]);
            slot
        }

        fn seen(&self, slot: usize) -> Seen {
            self.u
                .workers()
                .into_iter()
                .find(|w| w.slot == slot)
                .unwrap()
        }

        /// A file the hook `touch`es, for a test to know that the worker was asked.
        fn marker(&self) -> PathBuf {
            PathBuf::from(format!("{}.asked", self.path.display()))
        }
    }

    impl Drop for Fixture {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.path);
            let _ = std::fs::remove_file(self.marker());
        }
    }

    /// Publishes (device, charged, context) figures in `slot`.
    fn hold(seg: &Segment, slot: usize, devices: &[([u8; 16], u64, u64)]) {
        let devices: Vec<VramcapDevice> = devices
            .iter()
            .map(|&(uuid, charged, context)| VramcapDevice {
                uuid,
                charged,
                context,
                ..Default::default()
            })
            .collect();
        seg.write_devices(slot, &devices);
    }

    fn named(name: &str, priority: i32) -> Identity {
        Identity::of_this_process(Some(name), priority)
    }

    fn with_hook(name: &str, priority: i32, hook: UnloadHook) -> Identity {
        named(name, priority).declaring(false, false, &hook)
    }

    fn protected(name: &str, priority: i32) -> Identity {
        named(name, priority).declaring(true, false, &UnloadHook::Signal(10, "USR1".into()))
    }

    /// What a worker of this process is called in the lines.
    fn who(name: &str, priority: i32) -> String {
        format!("{name} (pid {}, priority {priority})", std::process::id())
    }

    /// Waits for `path` to appear (a hook ran), then runs `then`; fails the test after 10 s.
    fn once_exists(path: &std::path::Path, then: impl FnOnce()) {
        let start = Instant::now();
        while !path.exists() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "the hook never ran"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        then();
    }

    #[test]
    fn durations_are_rounded_for_people() {
        assert_eq!(took(Duration::from_nanos(71_105_259)), "71 ms");
        assert_eq!(took(Duration::from_millis(1449)), "1.4 s");
        assert_eq!(took(Duration::from_millis(12_600)), "13 s");
    }

    #[test]
    fn a_full_uuid_is_taken_as_it_is_without_looking_anything_up() {
        let asked = Cell::new(false);
        let known = || {
            asked.set(true);
            Vec::new()
        };
        let by_index = |_| -> Result<String, String> {
            asked.set(true);
            Err("no".into())
        };
        let full = "gpu-0A1B2C3D-0000-1111-2222-333344445555";
        let canonical = "GPU-0a1b2c3d-0000-1111-2222-333344445555";
        // As typed, and as `vramcap status` may show it, with an ellipsis.
        for given in [full.to_string(), format!(" {full}… ")] {
            assert_eq!(
                resolve_device_in(&given, known, by_index),
                Ok(Device {
                    uuid: canonical.into(),
                    shown: canonical.into()
                }),
                "{given:?}"
            );
        }
        assert!(!asked.get(), "neither the workers nor NVML were needed");
    }

    #[test]
    fn a_uuid_prefix_must_name_exactly_one_device() {
        let one = "GPU-0a1b2c3d-0000-1111-2222-333344445555".to_string();
        let two = "GPU-0a1b9999-0000-1111-2222-333344445555".to_string();
        // A device both a worker uses and NVML lists counts once.
        let known = || vec![two.clone(), one.clone(), one.clone()];
        let no_index = |_| -> Result<String, String> { panic!("not an index") };
        assert_eq!(
            resolve_device_in("GPU-0A1B2C", known, no_index),
            Ok(Device {
                uuid: one.clone(),
                shown: one.clone()
            })
        );
        assert_eq!(
            resolve_device_in("gpu-0a1b9…", known, no_index).map(|d| d.uuid),
            Ok(two.clone())
        );
        let both = resolve_device_in("GPU-0a1b", known, no_index).unwrap_err();
        assert_eq!(
            both,
            CommandError::AmbiguousDevice {
                device: "GPU-0a1b".into(),
                matches: vec![one.clone(), two.clone()]
            }
        );
        assert_eq!(
            both.to_string(),
            format!("--device \"GPU-0a1b\" names 2 devices ({one}, {two}); give more of the UUID")
        );
        let none = resolve_device_in("GPU-ffff", known, no_index).unwrap_err();
        assert_eq!(
            none.to_string(),
            "--device \"GPU-ffff\" names no device that a worker uses or NVML lists"
        );
    }

    #[test]
    fn an_index_is_nvmls_and_the_lines_call_it_gpu_n() {
        let uuid = "GPU-0a1b2c3d-0000-1111-2222-333344445555";
        let no_prefix = || -> Vec<String> { panic!("not a prefix") };
        let asked = Cell::new(None);
        let nvml = |i: u32| {
            asked.set(Some(i));
            if i == 1 {
                Ok(uuid.to_string())
            } else {
                Err(format!(
                    "NVML lists 2 device(s), numbered from 0: no device {i}"
                ))
            }
        };
        assert_eq!(
            resolve_device_in(" 1 ", no_prefix, nvml),
            Ok(Device {
                uuid: uuid.into(),
                shown: "GPU 1".into()
            })
        );
        assert_eq!(asked.get(), Some(1));
        let e = resolve_device_in("7", no_prefix, nvml).unwrap_err();
        assert!(
            matches!(&e, CommandError::UnknownIndex { index: 7, why, .. } if why.contains("no device 7")),
            "{e:?}"
        );
        assert!(
            e.to_string().starts_with(
                "--device \"7\": device indexes are NVML's, and NVML (libnvidia-ml.so.1) cannot tell \
                 which device is 7: NVML lists 2 device(s)"
            ),
            "{e}"
        );
        for bad in [
            "",
            "gpu-",
            "-1",
            "1.5",
            "zero",
            "4294967296",
            "ab€x",
            "€€",
            "gp€-1",
        ] {
            asked.set(None);
            assert_eq!(
                resolve_device_in(bad, no_prefix, nvml),
                Err(CommandError::NotADevice { device: bad.into() }),
                "{bad:?}"
            );
            assert_eq!(asked.get(), None, "{bad:?}");
        }
        assert_eq!(
            CommandError::NotADevice {
                device: "zero".into()
            }
            .to_string(),
            "--device \"zero\" is neither an NVML index (0, 1, …) nor a GPU UUID (GPU-…)"
        );
    }

    #[test]
    fn what_a_worker_holds_is_counted_on_one_device_or_on_all() {
        let f = Fixture::new("holds");
        let slot = f.seg().claim(&named("w", 1)).unwrap();
        hold(
            f.seg(),
            slot,
            &[(A, 300 * MIB, 50 * MIB), (B, 100 * MIB, 20 * MIB)],
        );
        let w = f.seen(slot);
        let (a, b) = (format_uuid(&A), format_uuid(&B));
        assert_eq!(charged_of(&w, Some(&a)), 300 * MIB);
        assert_eq!(charged_of(&w, None), 400 * MIB);
        assert_eq!(charged_of(&w, Some("GPU-elsewhere")), 0);
        // Read again from the slot, not from `w`.
        hold(
            f.seg(),
            slot,
            &[(A, 120 * MIB, 50 * MIB), (B, 100 * MIB, 20 * MIB)],
        );
        assert_eq!(holds_now(&f.u, &w, Some(&a)), Some((120 * MIB, 50 * MIB)));
        assert_eq!(holds_now(&f.u, &w, Some(&b)), Some((100 * MIB, 20 * MIB)));
        assert_eq!(holds_now(&f.u, &w, None), Some((220 * MIB, 70 * MIB)));
        assert_eq!(charged_of(&w, None), 400 * MIB, "what it held before");
        f.seg().release(slot);
        assert_eq!(holds_now(&f.u, &w, None), None, "gone");
    }

    #[test]
    fn sums_saturate() {
        let f = Fixture::new("saturate");
        let slot = f.seg().claim(&named("w", 1)).unwrap();
        hold(f.seg(), slot, &[(A, u64::MAX, 0), (B, u64::MAX, 0)]);
        let w = f.seen(slot);
        assert_eq!(charged_of(&w, None), u64::MAX);
        assert_eq!(holds_now(&f.u, &w, None), Some((u64::MAX, 0)));
    }

    #[test]
    fn after_asking_judges_what_a_worker_gave_back() {
        let f = Fixture::new("after");
        let a = format_uuid(&A);
        let slot = f.worker(named("w", 1), 300 * MIB, 50 * MIB);
        let before = f.seen(slot);
        let judge = |elapsed| after_asking(&f.u, &before, Some(&a), elapsed);

        hold(f.seg(), slot, &[(A, 120 * MIB, 50 * MIB)]);
        let asked = judge(None);
        assert_eq!(
            asked.became,
            Became::Running {
                charged: 120 * MIB,
                context: 50 * MIB
            }
        );
        assert_eq!(asked.freed(), 180 * MIB);
        assert_eq!(
            asked.to_string(),
            format!(
                "{}: freed 180.00 MiB; holds 120.00 MiB now, 50.00 MiB of it its CUDA context",
                who("w", 1)
            )
        );

        // Down to its context, which only its exit gives back.
        hold(f.seg(), slot, &[(A, 50 * MIB, 50 * MIB)]);
        assert_eq!(
            judge(Some(Duration::from_millis(1449))).to_string(),
            format!(
                "{}: freed 250.00 MiB in 1.4 s; holds 50.00 MiB now, its CUDA context",
                who("w", 1)
            )
        );

        hold(f.seg(), slot, &[]);
        let asked = judge(None);
        assert_eq!(asked.freed(), 300 * MIB);
        assert_eq!(
            asked.to_string(),
            format!("{}: freed 300.00 MiB; holds nothing now", who("w", 1))
        );

        // More than before (it allocated meanwhile): it freed nothing.
        hold(f.seg(), slot, &[(A, 400 * MIB, 50 * MIB)]);
        assert_eq!(judge(None).freed(), 0);

        // Suspended by this command: all it held moved, whatever the slot's figures say.
        f.seg().mark_suspended(slot, before.pid, Some(320 * MIB));
        let asked = judge(None);
        assert_eq!(asked.became, Became::Suspended { moved: 320 * MIB });
        assert_eq!(asked.freed(), 300 * MIB);
        assert_eq!(
            asked.to_string(),
            format!(
                "{}: suspended: 320.00 MiB moved to host memory",
                who("w", 1)
            )
        );
        // Suspended already before it was asked: not this command's doing.
        let suspended = f.seen(slot);
        assert!(matches!(
            after_asking(&f.u, &suspended, Some(&a), None).became,
            Became::Running { .. }
        ));

        f.seg().release(slot);
        let asked = judge(Some(Duration::from_millis(71)));
        assert_eq!(asked.became, Became::Exited);
        assert_eq!(asked.freed(), 300 * MIB);
        assert_eq!(
            asked.to_string(),
            format!(
                "{}: exited in 71 ms, giving back all 300.00 MiB",
                who("w", 1)
            )
        );
    }

    #[test]
    fn a_dry_run_names_whom_it_would_ask_and_asks_nobody() {
        let f = Fixture::new("dry-run");
        let signal = || UnloadHook::Signal(10, "USR1".into());
        f.worker(with_hook("low", 1, signal()), 350 * MIB, 50 * MIB);
        f.worker(with_hook("high", 9, signal()), 450 * MIB, 50 * MIB);
        f.worker(protected("guard", 0), 550 * MIB, 50 * MIB);
        let device = Device {
            uuid: format_uuid(&A),
            shown: "GPU 0".into(),
        };
        let dry = |bytes, for_name| reclaim(&f.u, &device, bytes, for_name, true).unwrap();

        // Without NVML the free memory is unknown: all 200 MiB are missing. The lowest priority first,
        // never the protected one, and only as many as it takes.
        let r = dry(200 * MIB, None);
        assert!(r.enough);
        assert_eq!(
            r.work,
            Work::WouldAsk {
                asked: vec![(who("low", 1), 300 * MIB)],
                freed: 300 * MIB
            }
        );
        assert_eq!(
            r.to_string(),
            format!(
                "would ask {}: it holds 300.00 MiB on GPU 0 beyond its context\n\
                 enough: would free 300.00 MiB of the 200.00 MiB asked for, by asking 1 worker(s)",
                who("low", 1)
            )
        );
        let r = dry(500 * MIB, None);
        assert_eq!(r.freed(), 700 * MIB);
        assert!(matches!(&r.work, Work::WouldAsk { asked, .. } if asked.len() == 2));

        // For "low": nobody below it can be asked.
        let r = dry(200 * MIB, Some("low"));
        assert!(!r.enough);
        assert_eq!(
            r.to_string(),
            "not enough: would free 0 B of the 200.00 MiB asked for, by asking 0 worker(s)"
        );
        // For "high": only "low", however much is asked for.
        let r = dry(2000 * MIB, Some("high"));
        assert!(!r.enough);
        assert!(
            matches!(&r.work, Work::WouldAsk { asked, freed } if *asked == [(who("low", 1), 300 * MIB)] && *freed == 300 * MIB),
            "{r:?}"
        );

        assert_eq!(
            dry(0, None).to_string(),
            "enough: GPU 0 has the 0 B asked for free already; nobody asked"
        );
        let e = reclaim(&f.u, &device, MIB, Some("nobody"), true).unwrap_err();
        assert_eq!(e.to_string(), "--for \"nobody\": no such worker");
        // Nobody's memory moved, and nobody was marked.
        for w in f.u.workers() {
            assert_eq!(w.unloaded, None, "{}", w.describe());
            assert_eq!(
                charged_of(&w, None) - w.held.values().sum::<u64>(),
                50 * MIB
            );
        }
    }

    #[test]
    fn a_reclaim_that_cannot_free_enough_asks_and_names_nobody() {
        // Before, the workers of the plan were listed (and shown as having freed 0 B) though none was
        // asked, and the unloader's answer line said the plan's figure was freed.
        let f = Fixture::new("reclaim-short");
        let hook = UnloadHook::Cmd(format!("touch '{}'", f.marker().display()));
        f.worker(with_hook("low", 1, hook), 350 * MIB, 50 * MIB);
        let device = Device {
            uuid: format_uuid(&A),
            shown: "GPU 0".into(),
        };
        let r = reclaim(&f.u, &device, 2000 * MIB, None, false).unwrap();
        assert!(!r.enough);
        assert_eq!(r.work, Work::Asked(vec![]));
        assert_eq!(r.freed(), 0);
        assert!(
            r.to_string()
                .starts_with("not enough: freed 0 B on GPU 0 in "),
            "{r}"
        );
        assert!(!f.marker().exists(), "the hook did not run");
        assert!(f.u.workers().iter().all(|w| w.unloaded.is_none()));
    }

    #[test]
    fn a_reclaim_asks_and_counts_what_was_given_back() {
        let f = Fixture::new("reclaim");
        let hook = UnloadHook::Cmd(format!("touch '{}'", f.marker().display()));
        let slot = f.worker(with_hook("low", 1, hook), 350 * MIB, 50 * MIB);
        let device = Device {
            uuid: format_uuid(&A),
            shown: "GPU 0".into(),
        };
        let (seg, marker) = (f.seg(), f.marker());
        let r = std::thread::scope(|s| {
            // The worker's part: once asked, it frees all but its context.
            s.spawn(|| once_exists(&marker, || hold(seg, slot, &[(A, 50 * MIB, 50 * MIB)])));
            reclaim(&f.u, &device, 200 * MIB, None, false).unwrap()
        });
        assert!(r.enough);
        assert_eq!(r.freed(), 300 * MIB);
        let Work::Asked(asked) = &r.work else {
            panic!("{r:?}")
        };
        assert_eq!(
            asked[..],
            [Asked {
                who: who("low", 1),
                before: 350 * MIB,
                became: Became::Running {
                    charged: 50 * MIB,
                    context: 50 * MIB
                },
                elapsed: None
            }]
        );
        let text = r.to_string();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            format!(
                "{}: freed 300.00 MiB; holds 50.00 MiB now, its CUDA context",
                who("low", 1)
            )
        );
        assert!(
            lines[1].starts_with("enough: freed 300.00 MiB on GPU 0 in ")
                && lines[1].ends_with(" for the 200.00 MiB asked for"),
            "{text}"
        );
        assert_eq!(lines.len(), 2, "{text}");
        assert_eq!(f.seen(slot).unloaded.map(|(_, b)| b), Some(300 * MIB));
    }

    #[test]
    fn unload_picks_by_name_or_every_unprotected_worker_with_a_hook() {
        let f = Fixture::new("unload");
        let mut heard = Vec::new();
        assert_eq!(
            unload(&f.u, None, |r| heard.push(r)),
            Ok(Unloading::NobodyToAsk { running: 0 })
        );
        f.worker(named("plain", 1), 100 * MIB, 50 * MIB);
        f.worker(protected("guard", 5), 100 * MIB, 50 * MIB);
        assert_eq!(
            unload(&f.u, None, |r| heard.push(r)),
            Ok(Unloading::NobodyToAsk { running: 2 })
        );
        let e = unload(&f.u, Some("guard"), |r| heard.push(r)).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("{} is protected; not asking it", who("guard", 5))
        );
        let e = unload(&f.u, Some("nobody"), |r| heard.push(r)).unwrap_err();
        assert_eq!(e, CommandError::NoSuchWorker("nobody".into()));
        assert!(heard.is_empty(), "nobody was asked");

        let ok = UnloadHook::Cmd(format!("touch '{}'", f.marker().display()));
        let ok = f.worker(with_hook("ok", 2, ok), 300 * MIB, 50 * MIB);
        f.worker(
            with_hook("broken", 3, UnloadHook::Cmd("exit 3".into())),
            300 * MIB,
            50 * MIB,
        );
        let (seg, marker) = (f.seg(), f.marker());
        let done = std::thread::scope(|s| {
            s.spawn(|| once_exists(&marker, || hold(seg, ok, &[(A, 50 * MIB, 50 * MIB)])));
            unload(&f.u, None, |r| heard.push(r))
        });
        assert_eq!(done, Ok(Unloading::Asked(Tally { done: 1, failed: 1 })));
        assert_eq!(heard.len(), 2, "{heard:?}");
        let asked = heard[0].as_ref().unwrap();
        assert_eq!(asked.who, who("ok", 2));
        assert_eq!(asked.freed(), 250 * MIB);
        assert!(
            asked.elapsed.is_some(),
            "unload's lines say how long it took"
        );
        let why = heard[1].as_ref().unwrap_err();
        assert!(why.contains("\"exit 3\" exited with"), "{why}");
    }

    #[test]
    fn suspend_and_resume_say_why_they_did_not() {
        let f = Fixture::new("suspend");
        f.worker(named("w", 1), 100 * MIB, 50 * MIB);
        f.worker(protected("guard", 5), 100 * MIB, 50 * MIB);
        let mut heard = Vec::new();
        assert_eq!(
            suspend_or_resume(&f.u, "nobody", Move::Suspend, |r| heard.push(r)),
            Err(CommandError::NoSuchWorker("nobody".into()))
        );
        assert!(heard.is_empty());
        // Refused before the checkpoint API is touched, so no driver is needed.
        assert_eq!(
            suspend_or_resume(&f.u, "w", Move::Resume, |r| heard.push(r)),
            Ok(Tally { done: 0, failed: 1 })
        );
        assert_eq!(
            suspend_or_resume(&f.u, "guard", Move::Suspend, |r| heard.push(r)),
            Ok(Tally { done: 0, failed: 1 })
        );
        let lines: Vec<String> = heard
            .iter()
            .map(|r| r.as_ref().unwrap_err().to_string())
            .collect();
        assert_eq!(
            lines,
            [
                format!("{} is not suspended", who("w", 1)),
                format!("{}: it is protected", who("guard", 5)),
            ]
        );
    }

    #[test]
    fn a_moved_worker_says_where_its_memory_went() {
        let moved = |how| Moved {
            who: "w (pid 7, priority 2)".into(),
            how,
            bytes: 1 << 30,
            elapsed: Duration::from_millis(1449),
        };
        assert_eq!(
            moved(Move::Suspend).to_string(),
            "w (pid 7, priority 2): suspended in 1.4 s: 1.00 GiB moved to host memory"
        );
        assert_eq!(
            moved(Move::Resume).to_string(),
            "w (pid 7, priority 2): resumed in 1.4 s: 1.00 GiB back on the device"
        );
    }
}
