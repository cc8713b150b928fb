//! Opening and checking the segment, and the only ways its bytes are touched: `pread`, `pwrite` and
//! POSIX record locks on one descriptor. Slots are in `slots`.
//!
//! # Why no mapping
//! The file lives in `/dev/shm`, where its owner (or, for a group segment, any member) can truncate it
//! at any moment. A mapped page past the new end faults with SIGBUS in every process that touches it,
//! which killed every capped program. A `pread` past the end comes back short instead, and a `pwrite`
//! there grows the file again; a reader treats missing bytes as zeros, which no check accepts.
//!
//! # Concurrency
//! Nothing here takes a lock another process could leave held: the kernel drops a process's record locks
//! when it exits or execs. Each part of a slot has one writer and carries a check sum (see
//! `layout::vramcap_check`), so a reader that copied it mid-write retries.

pub use super::identity::*;
use super::layout::*;
pub use super::slots::Request;
use crate::lock::Lock;
use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

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

/// An open, checked segment. Nothing is mapped: see the module's notes.
pub struct Segment {
    pub(super) fd: OwnedFd,
    pub(super) writable: bool,
    /// The file's owner when it was opened.
    owner: u32,
    /// The file's permission bits when it was opened.
    mode: u32,
    /// The file's (device, inode) when it was opened: the path names another file once it is replaced.
    file_id: (u64, u64),
    /// The slots this process holds in the file, with what it wrote there (see `slots`).
    pub(super) held: Lock<Vec<super::slots::Held>>,
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

/// Who opens a segment, which decides whose segment it may be.
#[derive(Clone, Copy)]
enum Opener {
    /// A capped process, which writes its slot (and may have created the file).
    Worker { created: bool },
    /// The CLI: `status` reads, the unloader also answers requests.
    Reader { writable: bool },
}

fn fstat(fd: i32) -> Option<libc::stat> {
    // SAFETY: a zeroed stat is a valid value of this plain C struct; fstat fills it.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    (unsafe { libc::fstat(fd, &mut st) } == 0).then_some(st)
}

impl Segment {
    /// The uid that owned the segment's file when it was opened.
    pub fn owner_uid(&self) -> u32 {
        self.owner
    }

    /// Whether the group may write the file (`VRAMCAP_SHM_MODE=0660`): then any member could have
    /// written any slot, whoever holds it.
    pub fn group_writable(&self) -> bool {
        self.mode & 0o022 != 0
    }

    /// Opens the segment for a capped process, creating it with `mode` if it does not exist.
    ///
    /// Creation is atomic: the file is made complete (sized, header written) under a name of its own and
    /// only then linked at `path`, so no process ever sees a half-made segment there. One that is ours
    /// but was never finished (a creator killed between its open and its header) or was cut short
    /// (truncated) is replaced the same way.
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
            // SAFETY: fd is a descriptor we just opened and own alone.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            let broken = Segment::broken_and_ours(fd.as_raw_fd());
            match Segment::checked(path, fd, mode, Opener::Worker { created: false }) {
                Err(ShmError::Layout { .. } | ShmError::Magic { found: 0, .. }) if broken => {
                    crate::vlog!(
                        Info,
                        "replacing the unfinished or truncated segment at {}",
                        path.display()
                    );
                    return Segment::create_at(path, mode, true);
                }
                other => return other,
            }
        }
        Err(io(path)(std::io::Error::from_raw_os_error(libc::EEXIST)))
    }

    /// Whether the file behind `fd` is ours and no usable segment: shorter than one, or its header was
    /// never written (all zeros).
    fn broken_and_ours(fd: i32) -> bool {
        let Some(st) = fstat(fd) else { return false };
        // SAFETY: geteuid has no preconditions.
        let ours = st.st_uid == unsafe { libc::geteuid() };
        ours && ((st.st_size as u64) < segment_len() as u64
            || Segment::peek_header(fd).is_none_or(|h| h.magic == 0))
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
        // SAFETY: fd is a descriptor we just opened and own alone.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // The umask may have narrowed the mode; set exactly what was asked.
        // SAFETY: fd is ours.
        unsafe { libc::fchmod(fd.as_raw_fd(), mode) };
        let made = Segment::checked(&tmp, fd, mode, Opener::Worker { created: true });
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
        // SAFETY: fd is a descriptor we just opened and own alone.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // A segment of another owner is accepted only where VRAMCAP_SHM_MODE opens it to the group.
        let allowed = segment_mode()?;
        Segment::checked(path, fd, allowed, Opener::Reader { writable })
    }

    /// Checks the open file (owner, mode, type, size, header) and makes it a segment (writing the
    /// header of a file we just created).
    fn checked(
        path: &Path,
        fd: OwnedFd,
        allowed: u32,
        opener: Opener,
    ) -> Result<Segment, ShmError> {
        let (writable, created, reader) = match opener {
            Opener::Worker { created } => (true, created, false),
            Opener::Reader { writable } => (writable, false, true),
        };
        let Some(st) = fstat(fd.as_raw_fd()) else {
            return Err(io(path)(last_error()));
        };
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
            if unsafe { libc::ftruncate(fd.as_raw_fd(), len as libc::off_t) } != 0 {
                return Err(io(path)(last_error()));
            }
        } else if (st.st_size as u64) < len as u64 {
            let header = Self::peek_header(fd.as_raw_fd());
            return Err(Self::classify(path, header, st.st_size as u64));
        }
        let seg = Segment {
            fd,
            writable,
            owner: st.st_uid,
            mode,
            file_id: (st.st_dev, st.st_ino),
            held: Lock::new(Vec::new()),
        };
        if created {
            seg.init_header().map_err(io(path))?;
        } else if let Err(()) = seg.header_valid() {
            // Creators publish complete segments (see `open_or_create`): no header yet means none ever.
            return Err(Self::classify(path, Some(seg.header()), st.st_size as u64));
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

    fn init_header(&self) -> std::io::Result<()> {
        let h = VramcapHeader {
            magic: VRAMCAP_MAGIC,
            version: VRAMCAP_VERSION,
            header_size: std::mem::size_of::<VramcapHeader>() as u32,
            slot_size: std::mem::size_of::<VramcapSlot>() as u32,
            slot_count: VRAMCAP_SLOTS,
            reserved: [0; 5],
        };
        // SAFETY: the header is plain integers without padding (see layout's size checks).
        let bytes = unsafe { plain_bytes(&h) };
        if self.write_at(bytes, 0) {
            Ok(())
        } else {
            Err(last_error())
        }
    }

    /// The header as the file holds it now (zeros where the file is shorter).
    pub fn header(&self) -> VramcapHeader {
        Segment::peek_header(self.fd.as_raw_fd()).unwrap_or(VramcapHeader {
            magic: 0,
            version: 0,
            header_size: 0,
            slot_size: 0,
            slot_count: 0,
            reserved: [0; 5],
        })
    }

    fn header_valid(&self) -> Result<(), ()> {
        let h = self.header();
        let fits = h.magic == VRAMCAP_MAGIC
            && h.version == VRAMCAP_VERSION
            && h.header_size as usize == std::mem::size_of::<VramcapHeader>()
            && h.slot_size as usize == std::mem::size_of::<VramcapSlot>()
            && h.slot_count == VRAMCAP_SLOTS;
        if fits {
            Ok(())
        } else {
            Err(())
        }
    }

    /// Whether `path` still names this file and the file is still a whole segment: false once it was
    /// deleted, replaced, truncated or overwritten, when a worker should move to what is there now.
    pub fn is_at(&self, path: &Path) -> bool {
        let same = std::fs::symlink_metadata(path).is_ok_and(|m| {
            use std::os::unix::fs::MetadataExt;
            (m.dev(), m.ino()) == self.file_id
        });
        same && self.header_valid().is_ok()
            && fstat(self.fd.as_raw_fd())
                .is_some_and(|st| st.st_size as u64 >= segment_len() as u64)
    }

    pub fn slot_count(&self) -> usize {
        VRAMCAP_SLOTS as usize
    }

    /// Reads `buf.len()` bytes at `offset`; what lies past the end of the file reads as zeros.
    pub(super) fn read_at(&self, buf: &mut [u8], offset: usize) {
        let mut done = 0;
        while done < buf.len() {
            // SAFETY: reads into the unread rest of our buffer.
            let got = unsafe {
                libc::pread(
                    self.fd.as_raw_fd(),
                    buf[done..].as_mut_ptr().cast(),
                    buf.len() - done,
                    (offset + done) as libc::off_t,
                )
            };
            if got < 0 && last_error().raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            if got <= 0 {
                break;
            }
            done += got as usize;
        }
        buf[done..].fill(0);
    }

    /// Writes all of `buf` at `offset`; false if the file refused it.
    pub(super) fn write_at(&self, buf: &[u8], offset: usize) -> bool {
        let mut done = 0;
        while done < buf.len() {
            // SAFETY: writes from the unwritten rest of our buffer.
            let put = unsafe {
                libc::pwrite(
                    self.fd.as_raw_fd(),
                    buf[done..].as_ptr().cast(),
                    buf.len() - done,
                    (offset + done) as libc::off_t,
                )
            };
            if put < 0 && last_error().raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            if put <= 0 {
                return false;
            }
            done += put as usize;
        }
        true
    }

    /// Sets (`F_WRLCK`) or drops (`F_UNLCK`) this process's lock on `len` bytes at `offset`, without
    /// waiting; false if another process holds a lock there.
    pub(super) fn set_lock(&self, kind: libc::c_int, offset: usize, len: usize) -> bool {
        let mut lock = flock(kind, offset, len);
        loop {
            // SAFETY: F_SETLK with a flock we own, on our descriptor.
            if unsafe { libc::fcntl(self.fd.as_raw_fd(), libc::F_SETLK, &mut lock) } == 0 {
                return true;
            }
            if last_error().raw_os_error() != Some(libc::EINTR) {
                return false;
            }
        }
    }

    /// The first lock another process holds in `len` bytes at `offset`: (its start, its length, 0 for
    /// "to the end", and its holder's PID as our namespace sees it, 0 if it cannot).
    pub(super) fn first_lock(&self, offset: usize, len: usize) -> Option<(usize, usize, u32)> {
        // F_RDLCK: conflicts with the write locks that workers hold, and asks nothing of the open mode.
        let mut lock = flock(libc::F_RDLCK, offset, len);
        // SAFETY: F_GETLK fills the flock we own.
        if unsafe { libc::fcntl(self.fd.as_raw_fd(), libc::F_GETLK, &mut lock) } != 0
            || i32::from(lock.l_type) == libc::F_UNLCK
        {
            return None;
        }
        Some((
            lock.l_start.max(0) as usize,
            lock.l_len.max(0) as usize,
            lock.l_pid.max(0) as u32,
        ))
    }

    /// In a forked child: the parent's slots are not the child's (record locks are not inherited).
    ///
    /// # Safety
    /// Only from a fork child handler, before the child starts another thread.
    pub unsafe fn reset_after_fork(&self) {
        // SAFETY: the caller's guarantee.
        unsafe { self.held.reset_after_fork(Vec::new()) };
    }
}

fn flock(kind: libc::c_int, offset: usize, len: usize) -> libc::flock {
    // SAFETY: an all-zero flock is a valid value of this plain C struct.
    let mut lock: libc::flock = unsafe { std::mem::zeroed() };
    lock.l_type = kind as _;
    lock.l_whence = libc::SEEK_SET as _;
    lock.l_start = offset as libc::off_t;
    lock.l_len = len as libc::off_t;
    lock
}

/// The bytes of a value of a plain `#[repr(C)]` layout type.
///
/// # Safety
/// `T` must be made of integers (and arrays of them) without padding.
pub(super) unsafe fn plain_bytes<T>(value: &T) -> &[u8] {
    // SAFETY: the caller's guarantee: every byte is initialised.
    unsafe { std::slice::from_raw_parts((value as *const T).cast(), std::mem::size_of::<T>()) }
}
