//! What `/proc` says about a process, for the unloader to verify before it acts: the segment's slots are
//! anyone's input, so a slot's PID, uid and start time are claims, and only `/proc` can confirm them.
//!
//! A process is a verified worker when it exists and is not a zombie, has the start time its slot
//! records, belongs to the expected (real) uid, and has libvramcap.so mapped or the segment open (a
//! worker has both; a bystander whose PID was written into a slot has neither).

use std::path::Path;

/// The facts read from `/proc/PID`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Facts {
    /// The real uid and gid (first fields of `Uid:` and `Gid:` in `status`).
    pub uid: u32,
    pub gid: u32,
    /// Clock ticks since boot (`stat` field 22).
    pub start_time: u64,
    /// `stat`'s state is `Z`: killed, not reaped; it holds no memory and answers nothing.
    pub zombie: bool,
}

/// `pid`'s (start time, zombie) from `/proc/PID/stat`, if it exists: all that liveness needs.
pub fn stat(pid: u32) -> Option<(u64, bool)> {
    if pid == 0 {
        return None;
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold anything: the fields follow the last ')'.
    let mut fields = stat.rsplit_once(')')?.1.split_whitespace();
    let zombie = fields.next()? == "Z";
    let start_time = fields.nth(18)?.parse().ok()?;
    Some((start_time, zombie))
}

/// The facts of `pid`, if it exists.
pub fn facts(pid: u32) -> Option<Facts> {
    let (start_time, zombie) = stat(pid)?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let id = |key: &str| -> Option<u32> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    };
    Some(Facts {
        uid: id("Uid:")?,
        gid: id("Gid:")?,
        start_time,
        zombie,
    })
}

/// Whether `pid` maps libvramcap.so or has the segment at `segment` open.
pub fn maps_vramcap(pid: u32, segment: &Path) -> bool {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default();
    let library = maps.lines().any(|l| {
        let file = l.split_whitespace().nth(5).unwrap_or("");
        file.rsplit('/')
            .next()
            .unwrap_or("")
            .starts_with("libvramcap")
    });
    library
        || std::fs::read_dir(format!("/proc/{pid}/fd")).is_ok_and(|fds| {
            fds.flatten()
                .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|target| target == segment))
        })
}

/// Why `pid` is not the worker a slot says it is (or `None` if it is): it must exist, not be a zombie,
/// have `start_time`, belong to `uid` and map vramcap.
pub fn unverified(pid: u32, start_time: u64, uid: u32, segment: &Path) -> Option<String> {
    let Some(f) = facts(pid) else {
        return Some(format!("pid {pid} does not exist"));
    };
    if f.zombie {
        return Some(format!("pid {pid} has exited (a zombie)"));
    }
    if start_time == 0 || f.start_time != start_time {
        return Some(format!(
            "pid {pid} does not have the start time its slot records"
        ));
    }
    if f.uid != uid {
        return Some(format!(
            "pid {pid} belongs to uid {}, not to uid {uid}",
            f.uid
        ));
    }
    if !maps_vramcap(pid, segment) {
        return Some(format!(
            "pid {pid} has neither libvramcap.so mapped nor the segment open"
        ));
    }
    None
}

/// The supplementary groups of `uid`'s user (for a hook run as that user), from the user database.
pub fn groups_of(uid: u32, gid: u32) -> Vec<u32> {
    // SAFETY: getpwuid_r fills our passwd and buffer; nothing outlives this call.
    unsafe {
        let mut pw: libc::passwd = std::mem::zeroed();
        let mut buf = vec![0 as libc::c_char; 16 << 10];
        let mut out: *mut libc::passwd = std::ptr::null_mut();
        if libc::getpwuid_r(uid, &mut pw, buf.as_mut_ptr(), buf.len(), &mut out) != 0
            || out.is_null()
        {
            return vec![gid];
        }
        let mut groups = vec![0 as libc::gid_t; 256];
        let mut n = groups.len() as libc::c_int;
        if libc::getgrouplist(pw.pw_name, gid, groups.as_mut_ptr(), &mut n) < 0 {
            return vec![gid];
        }
        groups.truncate(n.max(0) as usize);
        groups
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_must_prove_each_claim() {
        let me = std::process::id();
        let f = facts(me).unwrap();
        assert!(!f.zombie);
        // SAFETY: getuid has no preconditions.
        assert_eq!(f.uid, unsafe { libc::getuid() });
        // The test binary maps no libvramcap.so and no segment.
        let why = unverified(me, f.start_time, f.uid, Path::new("/dev/shm/none")).unwrap();
        assert!(why.contains("neither"), "{why}");
        let why = unverified(me, f.start_time + 1, f.uid, Path::new("/dev/shm/none")).unwrap();
        assert!(why.contains("start time"), "{why}");
        let why = unverified(me, f.start_time, f.uid + 1, Path::new("/dev/shm/none")).unwrap();
        assert!(why.contains("belongs to uid"), "{why}");
        assert!(facts(0).is_none());
    }

    #[test]
    fn a_zombie_is_no_worker() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        // Not reaped yet: a zombie once it has exited.
        for _ in 0..200 {
            if facts(pid).is_some_and(|f| f.zombie) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let f = facts(pid).unwrap();
        assert!(f.zombie);
        assert!(unverified(pid, f.start_time, f.uid, Path::new("/x"))
            .unwrap()
            .contains("zombie"));
        child.wait().unwrap();
    }
}
