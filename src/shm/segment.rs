//! Opening, checking and mapping the segment; claiming, writing and reading slots.
//!
//! # Concurrency
//! Nothing here takes a lock another process could leave held. A slot changes hands by compare-and-swap
//! on its `state`; its figures are written only by its owner under a seqlock (`seq` odd while writing), and
//! a reader copies them and retries if `seq` moved. An owner that dies mid-write leaves `seq` odd: readers
//! give up on that slot after a few tries, and the next claimer sees the dead PID and takes the slot over.

use super::layout::*;
use crate::log::unix_ms;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{fence, AtomicU32, AtomicU64, AtomicU8, Ordering};

pub const ENV_SHM: &str = "VRAMCAP_SHM";
pub const ENV_SHM_MODE: &str = "VRAMCAP_SHM_MODE";

#[derive(Debug, thiserror::Error)]
pub enum ShmError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} belongs to uid {owner}, not to this user (uid {me}); refusing a segment planted by someone else")]
    NotOwner { path: PathBuf, owner: u32, me: u32 },
    #[error("{path} has mode {mode:04o}, more open than {allowed:04o} ({ENV_SHM_MODE})")]
    Mode {
        path: PathBuf,
        mode: u32,
        allowed: u32,
    },
    #[error("{path} is not a vramcap segment (magic {found:#x})")]
    Magic { path: PathBuf, found: u64 },
    #[error("{path} is a vramcap segment of layout version {found}, this build speaks version {VRAMCAP_VERSION}")]
    Version { path: PathBuf, found: u32 },
    #[error("{path} is truncated or of another layout ({len} bytes, header says {header}, slot {slot}, {count} slots)")]
    Layout {
        path: PathBuf,
        len: u64,
        header: u32,
        slot: u32,
        count: u32,
    },
    #[error("{ENV_SHM_MODE}={0:?} is invalid: expected 0600, 0640 or 0660")]
    BadMode(String),
}

/// `VRAMCAP_SHM` (a name under /dev/shm, or a path), default `/dev/shm/vramcap-<uid>`: each user has a
/// segment of their own (another user's default could only be refused). A group of users shares one by
/// naming it, with `VRAMCAP_SHM_MODE=0660`.
pub fn segment_path() -> PathBuf {
    match std::env::var_os(ENV_SHM) {
        Some(v) if v.as_bytes().contains(&b'/') => PathBuf::from(v),
        Some(v) if !v.is_empty() => Path::new("/dev/shm").join(v),
        // SAFETY: getuid has no preconditions.
        _ => PathBuf::from(format!("/dev/shm/vramcap-{}", unsafe { libc::getuid() })),
    }
}

/// `VRAMCAP_SHM_MODE`: 0600 by default, 0640 or 0660 for a group of operators.
pub fn segment_mode() -> Result<u32, ShmError> {
    match std::env::var(ENV_SHM_MODE) {
        Err(_) => Ok(0o600),
        Ok(v) => match v.trim().trim_start_matches("0o") {
            "0600" | "600" => Ok(0o600),
            "0640" | "640" => Ok(0o640),
            "0660" | "660" => Ok(0o660),
            _ => Err(ShmError::BadMode(v)),
        },
    }
}

pub const fn segment_len() -> usize {
    std::mem::size_of::<VramcapHeader>()
        + VRAMCAP_SLOTS as usize * std::mem::size_of::<VramcapSlot>()
}

/// A mapped, checked segment.
pub struct Segment {
    base: *mut u8,
    len: usize,
    slots: usize,
    writable: bool,
    /// The file's owner when it was opened.
    owner: u32,
}

// SAFETY: the mapping is shared memory accessed only through atomics and volatile copies.
unsafe impl Send for Segment {}
// SAFETY: as above.
unsafe impl Sync for Segment {}

impl Drop for Segment {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly what open mapped.
        unsafe { libc::munmap(self.base.cast(), self.len) };
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ShmError + '_ {
    move |source| ShmError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn last_error() -> std::io::Error {
    std::io::Error::last_os_error()
}

/// The passes of [`Segment::claim`], in order.
#[derive(Clone, Copy)]
enum Pass {
    OwnImage,
    Free,
    Gone,
}

/// Who opens a segment, which decides whose segment it may be.
#[derive(Clone, Copy)]
enum Opener {
    /// A capped process, which writes its slot (and may have created the file).
    Worker { created: bool },
    /// The CLI: `status` reads, the unloader also answers requests.
    Reader { writable: bool },
}

impl Segment {
    /// The uid that owned the segment's file when it was opened.
    pub fn owner_uid(&self) -> u32 {
        self.owner
    }

    /// Opens the segment for a capped process, creating it with `mode` if it does not exist.
    ///
    /// Creation is atomic: the file is made complete (sized, header written) under a name of its own and
    /// only then linked at `path`, so no process ever sees a half-made segment there. One that an older
    /// creator left (killed between its open and its header) is recognised, if it is ours, and replaced
    /// the same way.
    pub fn open_or_create(path: &Path, mode: u32) -> Result<Segment, ShmError> {
        let c = CString::new(path.as_os_str().as_bytes()).map_err(|e| io(path)(e.into()))?;
        // O_NONBLOCK: a FIFO planted at the path must not block the open (it is then refused as no
        // regular file).
        let flags = libc::O_RDWR | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC;
        for _ in 0..4 {
            // SAFETY: a NUL-terminated path and plain flags.
            let fd = unsafe { libc::open(c.as_ptr(), flags) };
            if fd < 0 {
                let e = last_error();
                if e.raw_os_error() != Some(libc::ENOENT) {
                    return Err(io(path)(e));
                }
                match Segment::create_at(path, mode, false) {
                    Err(ShmError::Io { source, .. })
                        if source.raw_os_error() == Some(libc::EEXIST) =>
                    {
                        continue
                    }
                    made => return made,
                }
            }
            let half_made = Segment::half_made(fd);
            let result = Segment::map_fd(path, fd, mode, Opener::Worker { created: false });
            // SAFETY: the mapping (if any) keeps its own reference; the descriptor is ours to close.
            unsafe { libc::close(fd) };
            match result {
                Err(ShmError::Layout { .. } | ShmError::Magic { found: 0, .. }) if half_made => {
                    crate::vlog!(
                        Info,
                        "replacing the half-made segment at {}",
                        path.display()
                    );
                    return Segment::create_at(path, mode, true);
                }
                other => return other,
            }
        }
        Err(io(path)(std::io::Error::from_raw_os_error(libc::EEXIST)))
    }

    /// Whether the file behind `fd` is a segment its creator never finished: ours, and its header was
    /// never written (too short for one, or all zeros).
    fn half_made(fd: i32) -> bool {
        // SAFETY: a zeroed stat is a valid value of this plain C struct; fstat fills it.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: as above, and geteuid has no preconditions.
        let ours =
            unsafe { libc::fstat(fd, &mut st) } == 0 && st.st_uid == unsafe { libc::geteuid() };
        ours && Segment::peek_header(fd).is_none_or(|h| h.magic == 0)
    }

    /// Makes a complete segment under a temporary name beside `path`, then links it at `path` (failing
    /// with `EEXIST` if another creator was first) or, with `replace`, renames it over what is there.
    fn create_at(path: &Path, mode: u32, replace: bool) -> Result<Segment, ShmError> {
        let tmp = PathBuf::from(format!(
            "{}.new-{}-{}",
            path.display(),
            std::process::id(),
            crate::log::monotonic_ns()
        ));
        let ct = CString::new(tmp.as_os_str().as_bytes()).map_err(|e| io(&tmp)(e.into()))?;
        let c = CString::new(path.as_os_str().as_bytes()).map_err(|e| io(path)(e.into()))?;
        let flags =
            libc::O_RDWR | libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_CREAT | libc::O_EXCL;
        // SAFETY: a NUL-terminated path and plain flags.
        let fd = unsafe { libc::open(ct.as_ptr(), flags, mode) };
        if fd < 0 {
            return Err(io(&tmp)(last_error()));
        }
        // The umask may have narrowed the mode; set exactly what was asked.
        // SAFETY: fd is ours.
        unsafe { libc::fchmod(fd, mode) };
        let made = Segment::map_fd(&tmp, fd, mode, Opener::Worker { created: true });
        // SAFETY: the mapping keeps its own reference; the descriptor is ours to close.
        unsafe { libc::close(fd) };
        let published = made.and_then(|seg| {
            // SAFETY: two NUL-terminated paths.
            let r = unsafe {
                if replace {
                    libc::rename(ct.as_ptr(), c.as_ptr())
                } else {
                    libc::link(ct.as_ptr(), c.as_ptr())
                }
            };
            if r == 0 {
                Ok(seg)
            } else {
                Err(io(path)(last_error()))
            }
        });
        // SAFETY: a NUL-terminated path (gone already after a rename).
        unsafe { libc::unlink(ct.as_ptr()) };
        published
    }

    /// Opens an existing segment to read it and answer requests in it (the unloader).
    pub fn open_existing_rw(path: &Path) -> Result<Segment, ShmError> {
        Segment::open_existing_as(path, true)
    }

    /// Opens an existing segment to read it (the CLI).
    pub fn open_existing(path: &Path) -> Result<Segment, ShmError> {
        Segment::open_existing_as(path, false)
    }

    fn open_existing_as(path: &Path, writable: bool) -> Result<Segment, ShmError> {
        let c = CString::new(path.as_os_str().as_bytes()).map_err(|e| io(path)(e.into()))?;
        let access = if writable {
            libc::O_RDWR
        } else {
            libc::O_RDONLY
        };
        // O_NONBLOCK: a FIFO planted at the path must not block the open (it is then refused as no
        // regular file).
        // SAFETY: a NUL-terminated path and plain flags.
        let fd = unsafe {
            libc::open(
                c.as_ptr(),
                access | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io(path)(last_error()));
        }
        // A segment of another owner is accepted only where VRAMCAP_SHM_MODE opens it to the group.
        let allowed = segment_mode()?;
        let result = Segment::map_fd(path, fd, allowed, Opener::Reader { writable });
        // SAFETY: the descriptor is ours to close.
        unsafe { libc::close(fd) };
        result
    }

    fn map_fd(path: &Path, fd: i32, allowed: u32, opener: Opener) -> Result<Segment, ShmError> {
        let (writable, created, reader) = match opener {
            Opener::Worker { created } => (true, created, false),
            Opener::Reader { writable } => (writable, false, true),
        };
        // SAFETY: a zeroed stat is a valid value of this plain C struct.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: fstat fills the struct we own.
        if unsafe { libc::fstat(fd, &mut st) } != 0 {
            return Err(io(path)(last_error()));
        }
        // SAFETY: geteuid/getegid have no preconditions.
        let (me, my_group) = unsafe { (libc::geteuid(), libc::getegid()) };
        let group_ok = allowed & 0o060 != 0 && st.st_gid == my_group;
        // Root reads (and serves) any user's segment: the unloader then acts on that user's processes
        // alone (see the CLI's `Trust`). A capped process writes only into its own user's segment.
        let root_reader = reader && me == 0;
        if st.st_uid != me && !group_ok && !root_reader {
            return Err(ShmError::NotOwner {
                path: path.into(),
                owner: st.st_uid,
                me,
            });
        }
        let mode = st.st_mode & 0o7777;
        if mode & !allowed != 0 || (st.st_mode & libc::S_IFMT) != libc::S_IFREG {
            return Err(ShmError::Mode {
                path: path.into(),
                mode,
                allowed,
            });
        }
        let len = segment_len();
        if created {
            // SAFETY: fd is our new, empty file.
            if unsafe { libc::ftruncate(fd, len as libc::off_t) } != 0 {
                return Err(io(path)(last_error()));
            }
        }
        if (st.st_size as u64) < len as u64 && !created {
            let header = Self::peek_header(fd);
            return Err(Self::classify(path, header, st.st_size as u64));
        }
        let prot = if writable {
            libc::PROT_READ | libc::PROT_WRITE
        } else {
            libc::PROT_READ
        };
        // SAFETY: maps len bytes of a file at least that long, shared.
        let base = unsafe { libc::mmap(std::ptr::null_mut(), len, prot, libc::MAP_SHARED, fd, 0) };
        if base == libc::MAP_FAILED {
            return Err(io(path)(last_error()));
        }
        let seg = Segment {
            base: base.cast(),
            len,
            slots: VRAMCAP_SLOTS as usize,
            writable,
            owner: st.st_uid,
        };
        if created {
            seg.init_header();
        } else {
            // Creators publish complete segments (see `open_or_create`): no header yet means none ever.
            let header = seg.header();
            if header.magic != VRAMCAP_MAGIC
                || header.version != VRAMCAP_VERSION
                || header.header_size as usize != std::mem::size_of::<VramcapHeader>()
                || header.slot_size as usize != std::mem::size_of::<VramcapSlot>()
                || header.slot_count != VRAMCAP_SLOTS
            {
                return Err(Self::classify(path, Some(header), st.st_size as u64));
            }
        }
        Ok(seg)
    }

    fn peek_header(fd: i32) -> Option<VramcapHeader> {
        let mut h = std::mem::MaybeUninit::<VramcapHeader>::zeroed();
        let n = std::mem::size_of::<VramcapHeader>();
        // SAFETY: reads at most n bytes into our buffer.
        let got = unsafe { libc::pread(fd, h.as_mut_ptr().cast(), n, 0) };
        // SAFETY: zero-initialised, and every bit pattern is a valid header of integers.
        (got == n as isize).then(|| unsafe { h.assume_init() })
    }

    fn classify(path: &Path, header: Option<VramcapHeader>, len: u64) -> ShmError {
        match header {
            Some(h) if h.magic != VRAMCAP_MAGIC => ShmError::Magic {
                path: path.into(),
                found: h.magic,
            },
            Some(h) if h.version != VRAMCAP_VERSION => ShmError::Version {
                path: path.into(),
                found: h.version,
            },
            Some(h) => ShmError::Layout {
                path: path.into(),
                len,
                header: h.header_size,
                slot: h.slot_size,
                count: h.slot_count,
            },
            None => ShmError::Layout {
                path: path.into(),
                len,
                header: 0,
                slot: 0,
                count: 0,
            },
        }
    }

    fn header_ptr(&self) -> *mut VramcapHeader {
        self.base.cast()
    }

    fn magic(&self) -> &AtomicU64 {
        // SAFETY: the header is mapped, 8-aligned, and only ever accessed atomically.
        unsafe { AtomicU64::from_ptr(std::ptr::addr_of_mut!((*self.header_ptr()).magic)) }
    }

    fn init_header(&self) {
        // SAFETY: we created the file: nobody reads the header before the magic is stored (Release).
        unsafe {
            let h = self.header_ptr();
            (*h).version = VRAMCAP_VERSION;
            (*h).header_size = std::mem::size_of::<VramcapHeader>() as u32;
            (*h).slot_size = std::mem::size_of::<VramcapSlot>() as u32;
            (*h).slot_count = VRAMCAP_SLOTS;
        }
        self.magic().store(VRAMCAP_MAGIC, Ordering::Release);
    }

    pub fn header(&self) -> VramcapHeader {
        let magic = self.magic().load(Ordering::Acquire);
        // SAFETY: the header fields after the magic are written before it and never change.
        let mut h = unsafe { std::ptr::read_volatile(self.header_ptr()) };
        h.magic = magic;
        h
    }

    pub fn slot_count(&self) -> usize {
        self.slots
    }

    fn slot(&self, i: usize) -> *mut VramcapSlot {
        assert!(i < self.slots);
        // SAFETY: i is in range; slots follow the header back to back.
        unsafe {
            self.base
                .add(std::mem::size_of::<VramcapHeader>())
                .cast::<VramcapSlot>()
                .add(i)
        }
    }

    fn u32_at(&self, p: *mut u32) -> &AtomicU32 {
        // SAFETY: p points into our mapping, 4-aligned, accessed only atomically.
        unsafe { AtomicU32::from_ptr(p) }
    }

    fn u64_at(&self, p: *mut u64) -> &AtomicU64 {
        // SAFETY: p points into our mapping, 8-aligned, accessed only atomically.
        unsafe { AtomicU64::from_ptr(p) }
    }

    fn state(&self, i: usize) -> &AtomicU32 {
        // SAFETY: in range (slot asserts).
        self.u32_at(unsafe { std::ptr::addr_of_mut!((*self.slot(i)).state) })
    }

    fn seq(&self, i: usize) -> &AtomicU32 {
        // SAFETY: in range (slot asserts).
        self.u32_at(unsafe { std::ptr::addr_of_mut!((*self.slot(i)).seq) })
    }

    /// Takes a free slot, or the slot of a process that is gone, for `who`. `None` if all 1024 are held.
    pub fn claim(&self, who: &Identity) -> Option<usize> {
        if !self.writable {
            return None;
        }
        // A slot of this very process first: it was claimed by the image this one replaced with exec (same
        // PID, same start time), which can never release it. Then free slots; only when none is left,
        // the slots of processes that are gone (which needs a look at /proc for each).
        for pass in [Pass::OwnImage, Pass::Free, Pass::Gone] {
            for i in 0..self.slots {
                let state = self.state(i);
                let current = state.load(Ordering::Acquire);
                let (pid, start) = self.owner(i);
                let takeable = match pass {
                    Pass::OwnImage => {
                        current == VRAMCAP_SLOT_LIVE
                            && pid == who.pid
                            && start == who.start_time
                            && who.start_time != 0
                    }
                    Pass::Free => current == VRAMCAP_SLOT_FREE,
                    Pass::Gone => {
                        current != VRAMCAP_SLOT_FREE && pid != 0 && !process_alive(pid, start)
                    }
                };
                if takeable
                    && state
                        .compare_exchange(
                            current,
                            VRAMCAP_SLOT_CLAIMING,
                            Ordering::AcqRel,
                            Ordering::Relaxed,
                        )
                        .is_ok()
                {
                    self.fill(i, who);
                    state.store(VRAMCAP_SLOT_LIVE, Ordering::Release);
                    return Some(i);
                }
            }
        }
        None
    }

    fn owner(&self, i: usize) -> (u32, u64) {
        let s = self.slot(i);
        // SAFETY: in-range fields, read atomically.
        unsafe {
            (
                self.u32_at(std::ptr::addr_of_mut!((*s).pid))
                    .load(Ordering::Acquire),
                self.u64_at(std::ptr::addr_of_mut!((*s).start_time))
                    .load(Ordering::Acquire),
            )
        }
    }

    fn fill(&self, i: usize, who: &Identity) {
        let s = self.slot(i);
        // SAFETY: the slot is ours (CLAIMING); readers skip it until it is LIVE (Release below).
        unsafe {
            self.seq(i).store(0, Ordering::Relaxed);
            (*s).host_pid = who.host_pid;
            (*s).uid = who.uid;
            (*s).priority = who.priority;
            (*s).flags = who.flags;
            (*s).unload_kind = who.unload_kind;
            (*s).updated_unix_ms = unix_ms();
            (*s).name = padded(&who.name);
            (*s).unload = padded(&who.unload);
            (*s).devices = [VramcapDevice::default(); VRAMCAP_SLOT_DEVICES];
            (*s).request_uuid = [0; 16];
            (*s).request_bytes = 0;
            (*s).request_unix_ms = 0;
            (*s).answer = VRAMCAP_ANSWER_NONE;
            (*s).reserved_u32 = 0;
            (*s).suspended_unix_ms = 0;
            (*s).suspended_bytes = 0;
            (*s).reserved = [0; 6];
            // No request pending: both sequences equal (whatever a previous owner left).
            let seq = self
                .u32_at(std::ptr::addr_of_mut!((*s).request_seq))
                .load(Ordering::Relaxed);
            self.u32_at(std::ptr::addr_of_mut!((*s).answer_seq))
                .store(seq, Ordering::Relaxed);
            self.u64_at(std::ptr::addr_of_mut!((*s).start_time))
                .store(who.start_time, Ordering::Release);
            self.u32_at(std::ptr::addr_of_mut!((*s).pid))
                .store(who.pid, Ordering::Release);
        }
    }

    /// Frees slot `i` if it still belongs to `pid`.
    pub fn release(&self, i: usize, pid: u32) {
        if i < self.slots && self.owner(i).0 == pid {
            let _ = self.state(i).compare_exchange(
                VRAMCAP_SLOT_LIVE,
                VRAMCAP_SLOT_FREE,
                Ordering::AcqRel,
                Ordering::Relaxed,
            );
        }
    }

    /// Publishes a slot's device figures (its owner only), under the seqlock.
    pub fn write_devices(&self, i: usize, devices: &[VramcapDevice]) {
        let s = self.slot(i);
        let seq = self.seq(i);
        seq.fetch_add(1, Ordering::Relaxed);
        fence(Ordering::Release);
        for (d, dev) in devices.iter().take(VRAMCAP_SLOT_DEVICES).enumerate() {
            // SAFETY: in range; the owner is the only writer, and readers go through the seqlock.
            unsafe {
                let p = std::ptr::addr_of_mut!((*s).devices[d]);
                std::ptr::addr_of_mut!((*p).uuid).write_volatile(dev.uuid);
                for (field, value) in [
                    (std::ptr::addr_of_mut!((*p).charged), dev.charged),
                    (std::ptr::addr_of_mut!((*p).requested), dev.requested),
                    (std::ptr::addr_of_mut!((*p).cap), dev.cap),
                    (std::ptr::addr_of_mut!((*p).peak), dev.peak),
                    (std::ptr::addr_of_mut!((*p).context), dev.context),
                    (std::ptr::addr_of_mut!((*p).allocations), dev.allocations),
                    (std::ptr::addr_of_mut!((*p).refusals), dev.refusals),
                    (
                        std::ptr::addr_of_mut!((*p).last_refused_bytes),
                        dev.last_refused_bytes,
                    ),
                    (
                        std::ptr::addr_of_mut!((*p).last_refused_unix_ms),
                        dev.last_refused_unix_ms,
                    ),
                ] {
                    self.u64_at(field).store(value, Ordering::Relaxed);
                }
            }
        }
        // SAFETY: in range.
        self.u64_at(unsafe { std::ptr::addr_of_mut!((*s).updated_unix_ms) })
            .store(unix_ms(), Ordering::Relaxed);
        seq.fetch_add(1, Ordering::Release);
    }

    fn request_seq(&self, i: usize) -> &AtomicU32 {
        // SAFETY: in range (slot asserts).
        self.u32_at(unsafe { std::ptr::addr_of_mut!((*self.slot(i)).request_seq) })
    }

    fn answer_seq(&self, i: usize) -> &AtomicU32 {
        // SAFETY: in range (slot asserts).
        self.u32_at(unsafe { std::ptr::addr_of_mut!((*self.slot(i)).answer_seq) })
    }

    /// Posts a request for `bytes` on the device `uuid` in slot `i` (its owner only); returns the
    /// request's sequence number, which [`Segment::answer_to`] waits for.
    pub fn post_request(&self, i: usize, uuid: [u8; 16], bytes: u64) -> u32 {
        if !self.writable {
            return 0;
        }
        let s = self.slot(i);
        // SAFETY: in range; the owner is the only writer of the request fields, and publishes them with
        // the Release increment below (the unloader reads them after an Acquire load of the sequence).
        unsafe {
            for (k, b) in uuid.iter().enumerate() {
                AtomicU8::from_ptr(std::ptr::addr_of_mut!((*s).request_uuid[k]))
                    .store(*b, Ordering::Relaxed);
            }
            self.u64_at(std::ptr::addr_of_mut!((*s).request_bytes))
                .store(bytes, Ordering::Relaxed);
            self.u64_at(std::ptr::addr_of_mut!((*s).request_unix_ms))
                .store(unix_ms(), Ordering::Relaxed);
            self.u32_at(std::ptr::addr_of_mut!((*s).answer))
                .store(VRAMCAP_ANSWER_NONE, Ordering::Relaxed);
        }
        self.request_seq(i)
            .fetch_add(1, Ordering::Release)
            .wrapping_add(1)
    }

    /// The unloader's answer to request `seq` of slot `i`, or to a later request of the slot (which, posted
    /// while `seq` was unanswered, covers it: see the preload's `publish::post_request`), once given.
    pub fn answer_since(&self, i: usize, seq: u32) -> Option<u32> {
        let answered = self.answer_seq(i).load(Ordering::Acquire);
        // Sequence numbers wrap: "at or after seq" is within half the range after it.
        if answered == 0 || answered.wrapping_sub(seq) >= 1 << 31 {
            return None;
        }
        // SAFETY: in range; written before the Release store of answer_seq.
        Some(
            self.u32_at(unsafe { std::ptr::addr_of_mut!((*self.slot(i)).answer) })
                .load(Ordering::Relaxed),
        )
    }

    /// The unloader's answer to request `seq` of slot `i`, once given.
    pub fn answer_to(&self, i: usize, seq: u32) -> Option<u32> {
        if self.answer_seq(i).load(Ordering::Acquire) != seq {
            return None;
        }
        // SAFETY: in range; written before the Release store of answer_seq.
        Some(
            self.u32_at(unsafe { std::ptr::addr_of_mut!((*self.slot(i)).answer) })
                .load(Ordering::Relaxed),
        )
    }

    /// The request pending in slot `i`, if any.
    pub fn pending_request(&self, i: usize) -> Option<Request> {
        let seq = self.request_seq(i).load(Ordering::Acquire);
        if self.answer_seq(i).load(Ordering::Acquire) == seq {
            return None;
        }
        let s = self.slot(i);
        // SAFETY: in range; the fields were written before the Release increment we loaded.
        let (uuid, bytes, unix_ms) = unsafe {
            let mut uuid = [0u8; 16];
            for (k, b) in uuid.iter_mut().enumerate() {
                *b = AtomicU8::from_ptr(std::ptr::addr_of_mut!((*s).request_uuid[k]))
                    .load(Ordering::Relaxed);
            }
            (
                uuid,
                self.u64_at(std::ptr::addr_of_mut!((*s).request_bytes))
                    .load(Ordering::Relaxed),
                self.u64_at(std::ptr::addr_of_mut!((*s).request_unix_ms))
                    .load(Ordering::Relaxed),
            )
        };
        // A newer request overwrote the fields while we read them: take it on the next look.
        (self.request_seq(i).load(Ordering::Acquire) == seq).then_some(Request {
            seq,
            uuid,
            bytes,
            unix_ms,
        })
    }

    /// Records that the unloader suspended slot `i`'s process `pid` (moved `bytes` to host), or, with
    /// `bytes == None`, that it resumed it. Ignored if the slot no longer belongs to `pid`.
    pub fn mark_suspended(&self, i: usize, pid: u32, bytes: Option<u64>) {
        if !self.writable || i >= self.slots || self.owner(i).0 != pid {
            return;
        }
        let s = self.slot(i);
        // SAFETY: in range; these two fields are written only by the unloader, read atomically.
        unsafe {
            self.u64_at(std::ptr::addr_of_mut!((*s).suspended_bytes))
                .store(bytes.unwrap_or(0), Ordering::Relaxed);
            self.u64_at(std::ptr::addr_of_mut!((*s).suspended_unix_ms))
                .store(
                    if bytes.is_some() { unix_ms() } else { 0 },
                    Ordering::Release,
                );
        }
    }

    /// Answers request `seq` of slot `i` (the unloader).
    pub fn answer(&self, i: usize, seq: u32, answer: u32) {
        if !self.writable {
            return;
        }
        // SAFETY: in range.
        self.u32_at(unsafe { std::ptr::addr_of_mut!((*self.slot(i)).answer) })
            .store(answer, Ordering::Relaxed);
        self.answer_seq(i).store(seq, Ordering::Release);
    }

    /// A consistent copy of slot `i` if it is live, its owner is alive, and a read got past the seqlock.
    pub fn read(&self, i: usize) -> Option<VramcapSlot> {
        self.read_with(i, &mut pid_exists)
    }

    /// [`Segment::read`] with the liveness check supplied (so a caller reading every slot can remember
    /// the answer per PID). The check is cheap on purpose (one `kill(pid, 0)`): the start time, which
    /// tells a reused PID apart, is checked when a slot is taken over.
    pub fn read_with(&self, i: usize, alive: &mut impl FnMut(u32) -> bool) -> Option<VramcapSlot> {
        if self.state(i).load(Ordering::Acquire) != VRAMCAP_SLOT_LIVE {
            return None;
        }
        if !alive(self.owner(i).0) {
            return None;
        }
        let seq = self.seq(i);
        for _ in 0..64 {
            let before = seq.load(Ordering::Acquire);
            if before % 2 == 1 {
                std::hint::spin_loop();
                continue;
            }
            // SAFETY: a racy copy by design; it is used only if the seqlock shows no write overlapped it.
            let copy = unsafe { std::ptr::read_volatile(self.slot(i)) };
            fence(Ordering::Acquire);
            if seq.load(Ordering::Relaxed) == before
                && self.state(i).load(Ordering::Relaxed) == VRAMCAP_SLOT_LIVE
            {
                return Some(copy);
            }
        }
        None
    }
}

/// A process's request for memory on a device (the pressure handshake).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    pub seq: u32,
    pub uuid: [u8; 16],
    pub bytes: u64,
    pub unix_ms: u64,
}

/// Who holds a slot.
#[derive(Debug, Clone, Default)]
pub struct Identity {
    pub pid: u32,
    pub host_pid: u32,
    pub start_time: u64,
    pub uid: u32,
    pub priority: i32,
    pub flags: u32,
    pub name: String,
    pub unload_kind: u32,
    pub unload: String,
}

impl Identity {
    /// Records how the unloader may treat this worker.
    pub fn declaring(
        mut self,
        protect: bool,
        suspendable: bool,
        hook: &crate::config::UnloadHook,
    ) -> Identity {
        use crate::config::UnloadHook;
        if protect {
            self.flags |= VRAMCAP_FLAG_PROTECTED;
        }
        if suspendable {
            self.flags |= VRAMCAP_FLAG_SUSPENDABLE;
        }
        (self.unload_kind, self.unload) = match hook {
            UnloadHook::None => (VRAMCAP_UNLOAD_NONE, String::new()),
            UnloadHook::Url(u) => (VRAMCAP_UNLOAD_URL, u.clone()),
            UnloadHook::Signal(_, name) => (VRAMCAP_UNLOAD_SIGNAL, name.clone()),
            UnloadHook::Cmd(c) => (VRAMCAP_UNLOAD_CMD, c.clone()),
        };
        self
    }

    /// This process, named `name` (default: its command name).
    pub fn of_this_process(name: Option<&str>, priority: i32) -> Identity {
        let pid = std::process::id();
        let comm = std::fs::read_to_string("/proc/self/comm").unwrap_or_default();
        Identity {
            pid,
            host_pid: host_pid().filter(|&h| h != pid).unwrap_or(0),
            start_time: start_time_of(pid).unwrap_or(0),
            // SAFETY: getuid has no preconditions.
            uid: unsafe { libc::getuid() },
            priority,
            name: name
                .map(str::to_string)
                .unwrap_or_else(|| comm.trim().to_string()),
            ..Identity::default()
        }
    }
}

fn padded<const N: usize>(text: &str) -> [u8; N] {
    let mut out = [0u8; N];
    let bytes = text.as_bytes();
    let n = bytes.len().min(N - 1);
    out[..n].copy_from_slice(&bytes[..n]);
    out
}

/// Text of a NUL-padded field.
pub fn text(field: &[u8]) -> String {
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    String::from_utf8_lossy(&field[..end]).into_owned()
}

/// Text of a NUL-padded field that is safe to print: the segment is anyone's input, so control
/// characters (terminal escape sequences, line breaks, C1 codes) and bidirectional overrides come out as
/// `\u{..}` escapes, never raw.
pub fn printable(field: &[u8]) -> String {
    let mut out = String::new();
    for c in text(field).chars() {
        let bidi = matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
        if c.is_control() || bidi {
            out.push_str(&format!("\\u{{{:x}}}", c as u32));
        } else {
            out.push(c);
        }
    }
    out
}

/// Start time of `pid` in clock ticks since boot (`/proc/PID/stat` field 22).
pub fn start_time_of(pid: u32) -> Option<u64> {
    crate::process::stat(pid).map(|(start, _)| start)
}

/// Whether a process with this PID exists (it may have been reused: see [`process_alive`]).
pub fn pid_exists(pid: u32) -> bool {
    // SAFETY: signal 0 only checks that the process exists and may be signalled.
    pid != 0
        && (unsafe { libc::kill(pid as i32, 0) } == 0
            || last_error().raw_os_error() == Some(libc::EPERM))
}

/// Whether `pid` is still the process that claimed with `start_time`: it exists with that start time and
/// has not exited (a zombie holds no memory and answers nothing).
pub fn process_alive(pid: u32, start_time: u64) -> bool {
    crate::process::stat(pid)
        .is_some_and(|(start, zombie)| !zombie && (start_time == 0 || start == start_time))
}

/// The first (outermost visible) PID in `/proc/self/status`'s NSpid line.
fn host_pid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("NSpid:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> PathBuf {
        let p = PathBuf::from(format!(
            "/dev/shm/vramcap-unit-{}-{name}",
            std::process::id()
        ));
        let _ = std::fs::remove_file(&p);
        p
    }

    /// A PID that existed and is gone.
    fn dead_pid() -> u32 {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        pid
    }

    #[test]
    fn a_process_that_claims_again_gets_its_own_slot_back() {
        let path = temp("own-image");
        let seg = Segment::open_or_create(&path, 0o600).unwrap();
        let me = Identity::of_this_process(Some("before exec"), 0);
        let first = seg.claim(&me).unwrap();
        let after = Identity::of_this_process(Some("after exec"), 0);
        assert_eq!(
            seg.claim(&after),
            Some(first),
            "the same PID and start time"
        );
        assert_eq!(
            seg.read(first).map(|s| text(&s.name)),
            Some("after exec".into())
        );
        seg.release(first, me.pid);
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn slots_of_dead_processes_are_taken_over_when_the_segment_is_full() {
        let path = temp("reclaim");
        let seg = Segment::open_or_create(&path, 0o600).unwrap();
        let me = Identity::of_this_process(Some("me"), 0);
        let ghost = Identity {
            pid: dead_pid(),
            start_time: 1,
            name: "ghost".into(),
            ..me.clone()
        };
        let ghost_slot = seg.claim(&ghost).unwrap();
        assert!(
            seg.read(ghost_slot).is_none(),
            "a dead owner's slot is not shown"
        );
        // A reused PID (alive, other start time) is no owner either.
        let impostor = Identity {
            start_time: me.start_time + 1,
            ..me.clone()
        };
        assert!(!process_alive(impostor.pid, impostor.start_time));
        // Live owners that are not this image (no start time recorded: alive while the PID is).
        let live = Identity {
            start_time: 0,
            ..me.clone()
        };
        for _ in 1..VRAMCAP_SLOTS {
            seg.claim(&live).unwrap();
        }
        assert_eq!(
            seg.claim(&live),
            Some(ghost_slot),
            "full: the dead process's slot is reclaimed"
        );
        assert_eq!(seg.claim(&live), None, "every slot held by a live process");
        seg.release(ghost_slot, me.pid);
        assert_eq!(seg.claim(&me), Some(ghost_slot));
        drop(seg);
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn readers_see_whole_updates_only() {
        let path = temp("seqlock");
        let seg = std::sync::Arc::new(Segment::open_or_create(&path, 0o600).unwrap());
        let slot = seg.claim(&Identity::of_this_process(Some("w"), 0)).unwrap();
        let writer = {
            let seg = std::sync::Arc::clone(&seg);
            std::thread::spawn(move || {
                for n in 0..20_000u64 {
                    let d = VramcapDevice {
                        uuid: [1; 16],
                        charged: n,
                        requested: n,
                        peak: n,
                        ..Default::default()
                    };
                    seg.write_devices(slot, &[d]);
                }
            })
        };
        let mut seen = 0;
        while !writer.is_finished() {
            if let Some(s) = seg.read(slot) {
                let d = s.devices[0];
                assert!(
                    d.charged == d.requested && d.requested == d.peak,
                    "torn read: {d:?}"
                );
                seen += 1;
            }
        }
        writer.join().unwrap();
        assert!(seen > 0);
        std::fs::remove_file(&path).unwrap();
    }
}
