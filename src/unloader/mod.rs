//! The priority unloader: asks lower-priority workers to give their memory back when another worker needs
//! more than its device has free. Whom to ask is `crate::policy`; this module reads the segment and
//! the device's free memory, asks workers through their declared hooks, watches their usage fall, and
//! answers the requester (the pressure handshake of `crate::shm`).
//!
//! It acts only on a worker it can verify: a slot held by the process it names (the kernel's record lock
//! says so), whose PID still has the start time the slot recorded and belongs to the segment's user (as
//! `/proc` says). URLs must be loopback unless `--allow-remote`; every hook is bounded by
//! `--hook-timeout`. Requests are served one at a time.
//!
//! It serves one segment, or as root with `--all-users` every user's default segment at once, with one
//! priority order across them. Segments that appear, vanish or are replaced are followed: the daemon
//! looks again every second, so it may start before any worker.
//!
//! [`commands`] holds the one-off commands (`vramcap reclaim`, `unload`, `suspend`…) built on it.

pub mod ask;
pub mod checkpoint;
pub mod commands;

use crate::config::size::HumanBytes;
use crate::config::{canonical_uuid, format_uuid};
use crate::policy::{plan_reclaim, reclaim_order, Worker};
use crate::shm::{
    live_slots, printable, text, Segment, VramcapDevice, VramcapSlot, VRAMCAP_ANSWER_CANNOT,
    VRAMCAP_ANSWER_FREED, VRAMCAP_FLAG_PROTECTED, VRAMCAP_FLAG_SUSPENDABLE, VRAMCAP_UNLOAD_NONE,
};
use ask::{ask, WorkerHook};
use checkpoint::{host_available, Checkpoint};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct Options {
    pub poll: Duration,
    pub hook_timeout: Duration,
    pub allow_remote: bool,
    pub nvml: bool,
    /// Host memory to leave free after a checkpoint.
    pub min_host_free: u64,
}

/// Room left on a device beyond a resumed worker's memory, so a resume does not leave it full.
const RESUME_MARGIN: u64 = 128 << 20;

/// The checkpoint API, opened on first use (most unloaders never suspend anyone).
#[derive(Default)]
struct Suspender {
    api: std::cell::OnceCell<Result<Checkpoint, String>>,
}

impl Suspender {
    fn api(&self) -> Result<&Checkpoint, String> {
        self.api
            .get_or_init(Checkpoint::open)
            .as_ref()
            .map_err(Clone::clone)
    }
}

/// The log's clock: seconds since the unloader started.
struct Log(Instant);

impl Log {
    fn new() -> Log {
        Log(Instant::now())
    }

    fn line(&self, text: impl std::fmt::Display) {
        eprintln!(
            "vramcap unloader [{:8.3}s] {text}",
            self.0.elapsed().as_secs_f64()
        );
    }
}

/// Each device's free memory, from NVML (absent: unknown, and the unloader frees what was asked).
struct Memory {
    nvml: Option<nvml_wrapper::Nvml>,
}

impl Memory {
    fn open(use_nvml: bool, log: &Log) -> Memory {
        let nvml = use_nvml
            .then(|| match nvml_wrapper::Nvml::init() {
                Ok(n) => Some(n),
                Err(e) => {
                    log.line(format_args!(
                        "NVML unavailable ({e}): freeing the bytes asked for, without looking at free memory"
                    ));
                    None
                }
            })
            .flatten();
        Memory { nvml }
    }

    fn free(&self, uuid: &str) -> Option<u64> {
        let nvml = self.nvml.as_ref()?;
        let d = nvml.device_by_uuid(uuid).ok()?;
        d.memory_info().ok().map(|m| m.free)
    }

    /// The UUID of NVML's device `index`.
    fn uuid_of(&self, index: u32) -> Option<String> {
        let nvml = self.nvml.as_ref()?;
        let uuid = nvml.device_by_index(index).ok()?.uuid().ok()?;
        Some(canonical_uuid(&uuid))
    }
}

/// A worker as the segment shows it.
#[derive(Debug, Clone)]
pub struct Seen {
    /// The [`Source`] it was seen in.
    pub source: u64,
    pub slot: usize,
    pub pid: u32,
    pub start_time: u64,
    pub name: String,
    pub priority: i32,
    pub protected: bool,
    pub hook: Option<WorkerHook>,
    /// How it is told that it may load again, after an unload.
    pub reload: Option<WorkerHook>,
    /// (since, bytes it held) while unloaded by this or an earlier unloader.
    pub unloaded: Option<(u64, u64)>,
    /// Per device UUID: what it holds beyond its context (what unloading can free); nothing while
    /// suspended.
    pub held: BTreeMap<String, u64>,
    /// Per device UUID: everything it holds there, context included (what a suspension moves).
    pub charged: BTreeMap<String, u64>,
    pub suspendable: bool,
    /// (since, bytes in host memory) while suspended.
    pub suspended: Option<(u64, u64)>,
    /// Its PID in the outermost namespace, if it runs in another PID namespace.
    pub host_pid: u32,
}

impl Seen {
    fn of(source: u64, slot: usize, s: &VramcapSlot) -> Seen {
        Seen {
            source,
            slot,
            pid: s.pid,
            start_time: s.start_time,
            name: printable(&s.name),
            priority: s.priority,
            protected: s.flags & VRAMCAP_FLAG_PROTECTED != 0,
            hook: (s.unload_kind != VRAMCAP_UNLOAD_NONE)
                .then(|| WorkerHook::of(s.unload_kind, &text(&s.unload))),
            reload: (s.reload_kind != VRAMCAP_UNLOAD_NONE)
                .then(|| WorkerHook::of(s.reload_kind, &text(&s.reload))),
            unloaded: (s.unloaded_unix_ms != 0).then_some((s.unloaded_unix_ms, s.unloaded_bytes)),
            held: s
                .devices
                .iter()
                .filter(|d| d.uuid != [0; 16])
                .map(|d| (format_uuid(&d.uuid), held(s, d)))
                .collect(),
            charged: s
                .devices
                .iter()
                .filter(|d| d.uuid != [0; 16] && d.charged > 0)
                .map(|d| (format_uuid(&d.uuid), d.charged))
                .collect(),
            suspendable: s.flags & VRAMCAP_FLAG_SUSPENDABLE != 0,
            suspended: (s.suspended_unix_ms != 0)
                .then_some((s.suspended_unix_ms, s.suspended_bytes)),
            host_pid: s.host_pid,
        }
    }

    /// Why the unloader will not act on this worker, if it will not: everything is checked in `/proc`
    /// (see `crate::process`), nothing taken from the slot but the claims to check.
    pub fn unverified(&self, trust: &Trust) -> Option<String> {
        crate::process::unverified(self.pid, self.start_time, trust.uid, &trust.segment)
    }

    pub fn describe(&self) -> String {
        format!(
            "{} (pid {}, priority {})",
            self.name, self.pid, self.priority
        )
    }
}

/// What `s` holds on device `d` beyond its context (what unloading can free); nothing while suspended.
fn held(s: &VramcapSlot, d: &VramcapDevice) -> u64 {
    if s.suspended_unix_ms != 0 {
        0
    } else {
        d.charged.saturating_sub(d.context)
    }
}

/// The figures of `s` on the device `uuid`, if it has any there.
fn device_of<'a>(s: &'a VramcapSlot, uuid: &str) -> Option<&'a VramcapDevice> {
    s.devices.iter().find(|d| format_uuid(&d.uuid) == uuid)
}

/// What one reclaim did.
#[derive(Debug, Default)]
pub struct Outcome {
    pub enough: bool,
    pub freed: u64,
    pub asked: Vec<String>,
}

/// Whose processes the unloader may act on, and how it recognises a worker.
pub struct Trust {
    /// The real uid a worker must have: ours, or as root the segment's owner (a user's segment can
    /// never make root act on anyone else's process).
    pub uid: u32,
    /// The segment's path, which a worker has open.
    pub segment: std::path::PathBuf,
    /// The group may write the segment: a slot's hook may be another member's words, so no command
    /// from it is run (see [`Unloader::refuse_hook`]).
    pub group_writable: bool,
}

impl Trust {
    pub fn for_segment(seg: &Segment, path: &std::path::Path) -> Trust {
        // SAFETY: getuid has no preconditions.
        let me = unsafe { libc::getuid() };
        Trust {
            uid: if me == 0 { seg.owner_uid() } else { me },
            segment: path.to_path_buf(),
            group_writable: seg.group_writable(),
        }
    }
}

/// One segment the unloader serves.
pub struct Source {
    id: u64,
    pub seg: Segment,
    pub trust: Trust,
}

/// Where the unloader finds its segments.
#[derive(Debug, Clone)]
pub enum Finder {
    /// One path (`VRAMCAP_SHM`, or this user's default).
    One(std::path::PathBuf),
    /// Every user's default segment, `/dev/shm/vramcap-<uid>` (root only).
    AllUsers,
}

impl Finder {
    /// The segment paths to serve now.
    fn paths(&self) -> Vec<std::path::PathBuf> {
        match self {
            Finder::One(p) => vec![p.clone()],
            Finder::AllUsers => {
                use std::os::unix::fs::MetadataExt;
                let mut found: Vec<std::path::PathBuf> = std::fs::read_dir("/dev/shm")
                    .map(|dir| {
                        dir.flatten()
                            .filter(|e| {
                                let name = e.file_name();
                                let name = name.to_string_lossy();
                                // Only `vramcap-<uid>` of a file that uid owns: a name is no claim.
                                name.strip_prefix("vramcap-")
                                    .and_then(|uid| uid.parse::<u32>().ok())
                                    .zip(std::fs::symlink_metadata(e.path()).ok())
                                    .is_some_and(|(uid, m)| m.is_file() && m.uid() == uid)
                            })
                            .map(|e| e.path())
                            .collect()
                    })
                    .unwrap_or_default();
                found.sort();
                found
            }
        }
    }
}

pub struct Unloader {
    sources: Vec<Source>,
    /// The daemon's claims on the paths it serves (see [`Serving`]), and the paths it may not.
    servings: Vec<(std::path::PathBuf, Serving)>,
    refused: Vec<std::path::PathBuf>,
    next_id: u64,
    finder: Finder,
    opts: Options,
    log: Log,
    mem: Memory,
    sus: Suspender,
}

impl Unloader {
    /// An unloader for one-off commands on the segment `seg` at `path`.
    pub fn new(seg: Segment, path: &std::path::Path, opts: Options) -> Unloader {
        let mut u = Unloader::daemon(Finder::One(path.to_path_buf()), opts);
        u.add(seg, path);
        u
    }

    /// The daemon's unloader, with no segment yet: [`Unloader::run`] finds them.
    pub fn daemon(finder: Finder, opts: Options) -> Unloader {
        let log = Log::new();
        let mem = Memory::open(opts.nvml, &log);
        Unloader {
            sources: Vec::new(),
            servings: Vec::new(),
            refused: Vec::new(),
            next_id: 0,
            finder,
            opts,
            log,
            mem,
            sus: Suspender::default(),
        }
    }

    fn add(&mut self, seg: Segment, path: &std::path::Path) {
        self.next_id += 1;
        self.sources.push(Source {
            id: self.next_id,
            trust: Trust::for_segment(&seg, path),
            seg,
        });
    }

    /// Claims `path` for this daemon: one unloader per segment (a second one learns who serves it).
    pub fn serve(&mut self, path: &std::path::Path) -> Result<(), String> {
        if !self.servings.iter().any(|(p, _)| p == path) {
            let serving = Serving::take(path)?;
            self.servings.push((path.to_path_buf(), serving));
        }
        Ok(())
    }

    /// Follows the segments: drops those whose path no longer names them (deleted, replaced, cut
    /// short) and opens those that appeared, each claimed for this daemon.
    fn refresh(&mut self) {
        let paths = self.finder.paths();
        let log = &self.log;
        self.sources.retain(|s| {
            let keep = paths.contains(&s.trust.segment) && s.seg.is_at(&s.trust.segment);
            if !keep {
                log.line(format_args!(
                    "{} is gone or was replaced; looking for it again",
                    s.trust.segment.display()
                ));
            }
            keep
        });
        for path in paths {
            if self.sources.iter().any(|s| s.trust.segment == path) {
                continue;
            }
            let opened = self
                .serve(&path)
                .and_then(|()| match Segment::open_existing_rw(&path) {
                    Ok(seg) => Ok(Some(seg)),
                    Err(crate::shm::ShmError::Io { source, .. })
                        if source.kind() == std::io::ErrorKind::NotFound =>
                    {
                        Ok(None)
                    }
                    Err(e) => Err(e.to_string()),
                });
            match opened {
                Ok(Some(seg)) => {
                    self.log.line(format_args!(
                        "serving {} (uid {})",
                        path.display(),
                        seg.owner_uid()
                    ));
                    self.refused.retain(|p| p != &path);
                    self.add(seg, &path);
                }
                Ok(None) => {}
                // Said once per path; tried again every second (a worker may replace it).
                Err(e) if !self.refused.contains(&path) => {
                    self.log.line(format_args!("not serving: {e}"));
                    self.refused.push(path);
                }
                Err(_) => {}
            }
        }
    }

    fn source(&self, id: u64) -> Option<&Source> {
        self.sources.iter().find(|s| s.id == id)
    }

    fn trust(&self, w: &Seen) -> Option<&Trust> {
        self.source(w.source).map(|s| &s.trust)
    }

    /// Why the unloader will not act on `w`, if it will not (see [`Seen::unverified`]).
    fn unverified(&self, w: &Seen) -> Option<String> {
        match self.trust(w) {
            Some(t) => w.unverified(t),
            None => Some("its segment is gone".into()),
        }
    }

    /// Why `w`'s hook will not be used, if it will not: a command from a segment that the group may
    /// write could be another member's, and would run as `w`'s user.
    fn refuse_hook(&self, w: &Seen, hook: &WorkerHook) -> Option<String> {
        let group_writable = self.trust(w).is_none_or(|t| t.group_writable);
        (matches!(hook, WorkerHook::Cmd(_)) && group_writable).then(|| {
            "its command hook is in a segment that the group may write (VRAMCAP_SHM_MODE=0660), \
             where any member could have written it: use --unload-url or --unload-signal there"
                .to_string()
        })
    }

    /// Every worker in every segment.
    pub fn workers(&self) -> Vec<Seen> {
        self.sources
            .iter()
            .flat_map(|src| {
                live_slots(&src.seg)
                    .into_iter()
                    .map(|(i, s)| Seen::of(src.id, i, &s))
            })
            .collect()
    }

    /// The UUID of NVML's device `index`.
    pub fn uuid_of(&self, index: u32) -> Option<String> {
        self.mem.uuid_of(index)
    }

    /// Current non-context usage of `w` on `uuid`; 0 if the process is gone.
    fn held_now(&self, w: &Seen, uuid: &str) -> u64 {
        let Some(src) = self.source(w.source) else {
            return 0;
        };
        match src.seg.read(w.slot) {
            Some(s) if s.pid == w.pid => device_of(&s, uuid).map_or(0, |d| held(&s, d)),
            _ => 0,
        }
    }

    /// Frees `bytes` on `uuid` for a requester of `priority` (its own slot `requester` excluded): plans
    /// with `crate::policy`, asks each victim in turn, and stops once the device has room (or, without
    /// NVML, once the victims freed what was missing).
    pub fn reclaim(
        &self,
        uuid: &str,
        bytes: u64,
        priority: i32,
        requester: Option<(u64, usize)>,
        dry_run: bool,
    ) -> Outcome {
        let (mem, log) = (&self.mem, &self.log);
        let free = mem.free(uuid);
        let need = bytes.saturating_sub(free.unwrap_or(0));
        let room = |freed: u64| match mem.free(uuid) {
            Some(f) => f >= bytes,
            None => freed >= need,
        };
        if need == 0 {
            log.line(format_args!(
                "{} free on {uuid} already covers {}",
                HumanBytes(free.unwrap_or(0)),
                HumanBytes(bytes)
            ));
            return Outcome {
                enough: true,
                ..Outcome::default()
            };
        }
        let mut seen: Vec<Seen> = Vec::new();
        for w in self.workers() {
            if Some((w.source, w.slot)) == requester || !w.held.contains_key(uuid) {
                continue;
            }
            match self.unverified(&w) {
                Some(why) => log.line(format_args!("ignoring {}: {why}", w.describe())),
                None => seen.push(w),
            }
        }
        let candidates: Vec<Worker> = seen
            .iter()
            .map(|w| Worker {
                priority: w.priority,
                protected: w.protected,
                held: w.held.get(uuid).copied().unwrap_or(0),
                can_unload: w.hook.is_some() || w.suspendable,
            })
            .collect();
        let plan = plan_reclaim(&candidates, priority, need);
        // All of them, in the policy's order, in case a victim fails to free what it holds.
        let order = reclaim_order(&candidates, priority);
        let names: Vec<String> = plan.victims.iter().map(|&i| seen[i].describe()).collect();
        log.line(format_args!(
            "{} needed on {uuid} ({} free): {} by asking [{}]",
            HumanBytes(bytes),
            free.map_or("unknown".into(), |f| HumanBytes(f).to_string()),
            if plan.enough {
                format!("{} can be freed", HumanBytes(plan.freed))
            } else {
                format!(
                    "only {} of the missing {} can be freed",
                    HumanBytes(plan.freed),
                    HumanBytes(need)
                )
            },
            names.join(", ")
        ));
        let mut outcome = Outcome::default();
        if dry_run {
            // What would be asked and freed, as the plan says.
            outcome.enough = plan.enough;
            outcome.freed = plan.freed;
            outcome.asked = names;
            return outcome;
        }
        if !plan.enough {
            // Nobody is asked, so nobody is named and nothing was freed (the log line above says what
            // could have been).
            return outcome;
        }
        for i in order {
            let w = &seen[i];
            let before = self.held_now(w, uuid);
            if before == 0 {
                continue;
            }
            outcome.asked.push(w.describe());
            let start = Instant::now();
            let mut freed = 0;
            // The worker's own hook first; suspension when it has none, or its memory did not fall in time.
            if let Some(why) = w.hook.as_ref().and_then(|h| self.refuse_hook(w, h)) {
                log.line(format_args!("not asking {}: {why}", w.describe()));
            } else if let Some(hook) = &w.hook {
                log.line(format_args!(
                    "asking {} to unload (holds {} on {uuid}) by {hook}",
                    w.describe(),
                    HumanBytes(before)
                ));
                match ask(hook, w.pid, &w.name, &self.opts) {
                    Err(e) => log.line(format_args!("{}: the hook failed: {e}", w.describe())),
                    Ok(()) => {
                        let after = self.wait_for_fall(w, uuid, before, bytes);
                        freed = before.saturating_sub(after);
                        self.mark_unloaded(w, Some(freed));
                        log.line(format_args!(
                            "{} freed {} in {:.3}s",
                            w.describe(),
                            HumanBytes(freed),
                            start.elapsed().as_secs_f64()
                        ));
                    }
                }
            }
            if freed == 0 && w.suspendable && self.suspend_one(w).is_ok() {
                freed = before;
            }
            outcome.freed += freed;
            if room(outcome.freed) {
                outcome.enough = true;
                break;
            }
        }
        outcome.enough = outcome.enough || room(outcome.freed);
        outcome
    }

    /// Waits until `w`'s usage on `uuid` has fallen (to a tenth, or it stopped falling for half a second
    /// after a drop), the device has room for `wanted`, or the hook timeout passed; returns its usage then.
    fn wait_for_fall(&self, w: &Seen, uuid: &str, before: u64, wanted: u64) -> u64 {
        let start = Instant::now();
        let mut last = before;
        let mut still_since = Instant::now();
        loop {
            let now = self.held_now(w, uuid);
            if now != last {
                last = now;
                still_since = Instant::now();
            }
            let fell = now < before;
            if now <= before / 10
                || (fell && still_since.elapsed() > Duration::from_millis(500))
                || (fell && self.mem.free(uuid).is_some_and(|f| f >= wanted))
                || start.elapsed() >= self.opts.hook_timeout
            {
                return now;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The daemon: serves requests until SIGTERM or SIGINT.
    pub fn run(&mut self) {
        // SAFETY: installs a handler that only stores to an atomic (async-signal-safe).
        unsafe {
            libc::signal(libc::SIGTERM, on_stop as *const () as libc::sighandler_t);
            libc::signal(libc::SIGINT, on_stop as *const () as libc::sighandler_t);
        }
        let mut served: Vec<Served> = Vec::new();
        self.log.line(format_args!(
            "watching (poll {:?}, hook timeout {:?}{})",
            self.opts.poll,
            self.opts.hook_timeout,
            if self.opts.allow_remote {
                ", remote URLs allowed"
            } else {
                ""
            }
        ));
        self.refresh();
        if let (Finder::One(path), true) = (&self.finder, self.sources.is_empty()) {
            self.log.line(format_args!(
                "no segment at {} yet: waiting for the first worker",
                path.display()
            ));
        }
        let mut looked = Instant::now();
        while !STOP.load(Ordering::SeqCst) {
            if looked.elapsed() >= Duration::from_secs(1) {
                self.refresh();
                looked = Instant::now();
            }
            self.serve_requests(&mut served);
            served.retain(|r| !r.settled(self));
            self.resume_ready(&served);
            self.reload_ready(&served);
            std::thread::sleep(self.opts.poll);
        }
        self.log.line("stopping");
    }

    /// Serves every pending request of every segment, once.
    fn serve_requests(&self, served: &mut Vec<Served>) {
        let log = &self.log;
        for src in &self.sources {
            let seg = &src.seg;
            for (slot, s) in live_slots(seg) {
                let Some(req) = seg.pending_request(slot) else {
                    continue;
                };
                let uuid = format_uuid(&req.uuid);
                let who = Seen::of(src.id, slot, &s);
                // A request is served only for a verified worker (a forged one could make us ask real
                // workers to unload).
                if let Some(why) = who.unverified(&src.trust) {
                    log.line(format_args!(
                        "ignoring a request from {}: {why}",
                        who.describe()
                    ));
                    seg.answer(slot, req.seq, VRAMCAP_ANSWER_CANNOT);
                    continue;
                }
                log.line(format_args!(
                    "request from {} for {} on {uuid}",
                    who.describe(),
                    HumanBytes(req.bytes)
                ));
                let start = Instant::now();
                let outcome =
                    self.reclaim(&uuid, req.bytes, s.priority, Some((src.id, slot)), false);
                let answer = if outcome.enough {
                    VRAMCAP_ANSWER_FREED
                } else {
                    VRAMCAP_ANSWER_CANNOT
                };
                seg.answer(slot, req.seq, answer);
                if outcome.enough {
                    served.push(Served {
                        uuid: uuid.clone(),
                        source: src.id,
                        slot,
                        pid: s.pid,
                        charged_before: charged_on(&s, &uuid),
                        bytes: req.bytes,
                        at: Instant::now(),
                    });
                }
                log.line(format_args!(
                    "answered {}: {} after {:.3}s ({} freed by asking {})",
                    who.describe(),
                    if outcome.enough {
                        "memory freed, retry"
                    } else {
                        "cannot free enough"
                    },
                    start.elapsed().as_secs_f64(),
                    HumanBytes(outcome.freed),
                    if outcome.asked.is_empty() {
                        "nobody".into()
                    } else {
                        outcome.asked.join(", ")
                    }
                ));
            }
        }
    }

    /// Why worker `w` cannot be suspended now, if it cannot.
    fn unsuspendable(&self, w: &Seen) -> Option<String> {
        if w.protected {
            return Some("it is protected".into());
        }
        if let Some(why) = self.unverified(w) {
            return Some(why);
        }
        if w.suspended.is_some() {
            return Some("it is suspended already".into());
        }
        if w.host_pid != 0 {
            return Some(format!(
                "it runs in another PID namespace (host PID {}), which the checkpoint API cannot reach from here",
                w.host_pid
            ));
        }
        let moving: u64 = w.charged.values().sum();
        let keep = self.opts.min_host_free;
        match host_available() {
            None => Some("host memory is unknown (/proc/meminfo)".into()),
            Some(avail) if avail < moving.saturating_add(keep) => Some(format!(
                "its {} would not fit in host memory: {} available, keeping {} free",
                HumanBytes(moving),
                HumanBytes(avail),
                HumanBytes(keep)
            )),
            Some(_) => None,
        }
    }

    /// Suspends `w` (lock + checkpoint) and marks its slot; returns the bytes moved to host memory.
    pub fn suspend_one(&self, w: &Seen) -> Result<u64, String> {
        let log = &self.log;
        let refuse = |why: String| {
            log.line(format_args!("not suspending {}: {why}", w.describe()));
            Err(why)
        };
        if let Some(why) = self.unsuspendable(w) {
            return refuse(why);
        }
        let api = match self.sus.api() {
            Ok(api) => api,
            Err(why) => return refuse(why),
        };
        let moving: u64 = w.charged.values().sum();
        log.line(format_args!(
            "suspending {}: moving {} to host memory",
            w.describe(),
            HumanBytes(moving)
        ));
        let start = Instant::now();
        if let Err(why) = api.suspend(w.pid, self.opts.hook_timeout) {
            return refuse(why);
        }
        if let Some(src) = self.source(w.source) {
            src.seg.mark_suspended(w.slot, w.pid, Some(moving));
        }
        log.line(format_args!(
            "suspended {} in {:.3}s: {} moved to host",
            w.describe(),
            start.elapsed().as_secs_f64(),
            HumanBytes(moving)
        ));
        Ok(moving)
    }

    /// Resumes `w` (restore + unlock) and clears the mark in its slot.
    pub fn resume_one(&self, w: &Seen) -> Result<(), String> {
        if let Some(why) = self.unverified(w) {
            return Err(why);
        }
        let api = self.sus.api()?;
        let start = Instant::now();
        self.log.line(format_args!("resuming {}", w.describe()));
        if let Err(why) = api.resume(w.pid) {
            self.log
                .line(format_args!("cannot resume {}: {why}", w.describe()));
            return Err(why);
        }
        if let Some(src) = self.source(w.source) {
            src.seg.mark_suspended(w.slot, w.pid, None);
        }
        self.log.line(format_args!(
            "resumed {} in {:.3}s: {} back on the device",
            w.describe(),
            start.elapsed().as_secs_f64(),
            HumanBytes(w.suspended.map_or(0, |(_, b)| b))
        ));
        Ok(())
    }

    /// The devices where a request waits, or where room made for a request was not taken yet: nobody is
    /// brought back onto them.
    fn busy_devices(&self, all: &[Seen], served: &[Served]) -> Vec<String> {
        all.iter()
            .filter_map(|w| self.source(w.source)?.seg.pending_request(w.slot))
            .map(|r| format_uuid(&r.uuid))
            .chain(served.iter().map(|r| r.uuid.clone()))
            .collect()
    }

    /// Whether `bytes` fit on `uuid` beside everyone's memory, with a margin, and nobody waits there.
    fn room_for(&self, uuid: &str, bytes: u64, busy: &[String]) -> bool {
        !busy.iter().any(|b| b == uuid)
            && self
                .mem
                .free(uuid)
                .is_some_and(|f| f >= bytes.saturating_add(RESUME_MARGIN))
    }

    /// Brings suspended workers back, highest priority first, while their memory fits beside everyone's
    /// (so no running worker is pushed out) and no request is waiting on their devices.
    fn resume_ready(&self, served: &[Served]) {
        let all = self.workers();
        let mut suspended: Vec<&Seen> = all.iter().filter(|w| w.suspended.is_some()).collect();
        if suspended.is_empty() {
            return;
        }
        let busy = self.busy_devices(&all, served);
        suspended.sort_by_key(|w| std::cmp::Reverse(w.priority));
        for w in suspended {
            if self.unverified(w).is_some() {
                continue;
            }
            let fits = w
                .charged
                .iter()
                .all(|(uuid, bytes)| self.room_for(uuid, *bytes, &busy));
            // Strictly by priority: a lower one never goes ahead of a higher one still waiting for room.
            if !fits || self.resume_one(w).is_err() {
                return;
            }
        }
    }

    /// Records in `w`'s slot that it gave `freed` bytes back (it may want them back: see
    /// [`Unloader::reload_ready`]), or with `None` that it was told to load again.
    fn mark_unloaded(&self, w: &Seen, freed: Option<u64>) {
        if freed == Some(0) {
            return;
        }
        if let Some(src) = self.source(w.source) {
            src.seg.mark_unloaded(w.slot, w.pid, freed);
        }
    }

    /// Tells unloaded workers that declared a reload hook to load again, highest priority first, once
    /// what they gave back fits beside everyone's memory again: the rule of resume, so a reload never
    /// pushes a running worker out. Strictly by priority: a lower one never goes ahead of a higher one
    /// still waiting for room.
    fn reload_ready(&self, served: &[Served]) {
        let all = self.workers();
        let mut waiting: Vec<&Seen> = all
            .iter()
            .filter(|w| w.unloaded.is_some() && w.reload.is_some() && w.suspended.is_none())
            .collect();
        if waiting.is_empty() {
            return;
        }
        let busy = self.busy_devices(&all, served);
        waiting.sort_by_key(|w| std::cmp::Reverse(w.priority));
        for w in waiting {
            let (Some(hook), Some((_, wants))) = (&w.reload, w.unloaded) else {
                continue;
            };
            if self.unverified(w).is_some() {
                continue;
            }
            // Its devices: where its context still is.
            let fits = !w.charged.is_empty()
                && w.charged
                    .keys()
                    .all(|uuid| self.room_for(uuid, wants, &busy));
            if !fits {
                return;
            }
            // Told once: whatever the hook answers, the mark goes (a worker that cannot reload now is
            // asked again only after its next unload).
            self.mark_unloaded(w, None);
            if let Some(why) = self.refuse_hook(w, hook) {
                self.log
                    .line(format_args!("not reloading {}: {why}", w.describe()));
                continue;
            }
            self.log.line(format_args!(
                "{} fits again beside everyone: telling {} to reload by {hook}",
                HumanBytes(wants),
                w.describe()
            ));
            if let Err(e) = ask(hook, w.pid, &w.name, &self.opts) {
                self.log.line(format_args!(
                    "{}: the reload hook failed: {e}",
                    w.describe()
                ));
            }
        }
    }

    /// Asks one verified worker to unload and waits for its usage to fall on every device; returns the
    /// bytes freed.
    pub fn unload_one(&self, w: &Seen) -> Result<u64, String> {
        if let Some(why) = self.unverified(w) {
            return Err(format!("not asking {}: {why}", w.describe()));
        }
        let hook = w
            .hook
            .as_ref()
            .ok_or_else(|| format!("{} declared no way to unload", w.describe()))?;
        if let Some(why) = self.refuse_hook(w, hook) {
            return Err(format!("not asking {}: {why}", w.describe()));
        }
        self.log
            .line(format_args!("asking {} to unload by {hook}", w.describe()));
        let before: BTreeMap<String, u64> = w
            .held
            .keys()
            .map(|u| (u.clone(), self.held_now(w, u)))
            .collect();
        ask(hook, w.pid, &w.name, &self.opts)?;
        let mut freed = 0;
        for (uuid, b) in before {
            let after = self.wait_for_fall(w, &uuid, b, u64::MAX);
            freed += b.saturating_sub(after);
        }
        self.mark_unloaded(w, Some(freed));
        self.log
            .line(format_args!("{} freed {}", w.describe(), HumanBytes(freed)));
        Ok(freed)
    }
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stop(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// A request the unloader made room for: until the requester has taken that room (or gave up, or left),
/// no suspended worker is resumed onto its device, or the room would go to the wrong process.
struct Served {
    uuid: String,
    source: u64,
    slot: usize,
    pid: u32,
    charged_before: u64,
    bytes: u64,
    at: Instant,
}

/// How long a requester has to take the room made for it.
const TAKE_ROOM: Duration = Duration::from_secs(5);

impl Served {
    fn settled(&self, u: &Unloader) -> bool {
        match u
            .source(self.source)
            .and_then(|src| src.seg.read(self.slot))
        {
            Some(s) if s.pid == self.pid => {
                charged_on(&s, &self.uuid) >= self.charged_before.saturating_add(self.bytes / 2)
                    || self.at.elapsed() > TAKE_ROOM
            }
            _ => true,
        }
    }
}

fn charged_on(s: &VramcapSlot, uuid: &str) -> u64 {
    device_of(s, uuid).map_or(0, |d| d.charged)
}

/// The claim of one unloader on one segment, held while the daemon runs: a POSIX lock on a file beside
/// the segment (`PATH.unloader`), which the kernel drops when the process ends, however it ends. A second
/// unloader learns the holder's PID from the lock itself.
pub struct Serving(#[allow(dead_code)] std::fs::File);

impl Serving {
    pub fn take(segment: &std::path::Path) -> Result<Serving, String> {
        use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
        use std::os::unix::io::AsRawFd;
        let path = std::path::PathBuf::from(format!("{}.unloader", segment.display()));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(&path)
            .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        let meta = file
            .metadata()
            .map_err(|e| format!("{}: {e}", path.display()))?;
        // SAFETY: geteuid has no preconditions.
        let me = unsafe { libc::geteuid() };
        if !meta.file_type().is_file() || meta.uid() != me {
            return Err(format!(
                "{} is not a regular file of uid {me} (it belongs to uid {}); remove it",
                path.display(),
                meta.uid()
            ));
        }
        // SAFETY: an all-zero flock is a valid value of this plain C struct.
        let mut lock: libc::flock = unsafe { std::mem::zeroed() };
        lock.l_type = libc::F_WRLCK as _;
        lock.l_whence = libc::SEEK_SET as _;
        // SAFETY: F_SETLK with a flock we own, on our descriptor.
        if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETLK, &lock) } == 0 {
            return Ok(Serving(file));
        }
        // SAFETY: F_GETLK fills the flock we own with the conflicting lock.
        let holder = if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETLK, &mut lock) } == 0
            && i32::from(lock.l_type) != libc::F_UNLCK
        {
            format!("pid {}", lock.l_pid)
        } else {
            "another process".into()
        };
        Err(format!(
            "another unloader ({holder}) already serves {}",
            segment.display()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn every_users_segments_are_the_default_names_their_user_owns() {
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        let theirs = std::path::PathBuf::from("/dev/shm/vramcap-54321");
        let claimed = std::path::PathBuf::from("/dev/shm/vramcap-54322");
        let other =
            std::path::PathBuf::from(format!("/dev/shm/vramcap-test-{}", std::process::id()));
        for p in [&theirs, &claimed, &other] {
            std::fs::write(p, b"").unwrap();
        }
        // A name is no claim: vramcap-54322 belongs to whoever made it, not to uid 54322.
        if root {
            std::os::unix::fs::chown(&theirs, Some(54321), Some(54321)).unwrap();
        }
        let found = Finder::AllUsers.paths();
        let me = std::fs::metadata(&claimed).unwrap().uid();
        assert_eq!(found.contains(&theirs), root, "{found:?}");
        assert_eq!(found.contains(&claimed), me == 54322, "{found:?}");
        assert!(
            !found.contains(&other),
            "not a user's default name: {found:?}"
        );
        assert!(found
            .iter()
            .all(|p| !p.to_string_lossy().ends_with(".unloader")));
        assert_eq!(Finder::One(other.clone()).paths(), vec![other.clone()]);
        for p in [&theirs, &claimed, &other] {
            let _ = std::fs::remove_file(p);
        }
    }

    #[test]
    fn a_slot_names_its_hooks_by_kind() {
        use crate::shm::{VRAMCAP_UNLOAD_CMD, VRAMCAP_UNLOAD_SIGNAL, VRAMCAP_UNLOAD_URL};
        assert_eq!(
            WorkerHook::of(VRAMCAP_UNLOAD_URL, "http://127.0.0.1:1/u"),
            WorkerHook::Url("http://127.0.0.1:1/u".into())
        );
        assert_eq!(
            WorkerHook::of(VRAMCAP_UNLOAD_SIGNAL, "USR1"),
            WorkerHook::Signal("USR1".into())
        );
        assert_eq!(
            WorkerHook::of(VRAMCAP_UNLOAD_CMD, "true"),
            WorkerHook::Cmd("true".into())
        );
        assert_eq!(WorkerHook::of(77, "x"), WorkerHook::Unknown(77));
    }
}
