//! Who a slot says holds it, and how its text fields are read back and printed.

use super::layout::*;
use crate::log::unix_ms;

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
    pub reload_kind: u32,
    pub reload: String,
}

impl Identity {
    /// Records how the unloader may treat this worker.
    pub fn declaring(
        mut self,
        protect: bool,
        suspendable: bool,
        hook: &crate::config::UnloadHook,
    ) -> Identity {
        if protect {
            self.flags |= VRAMCAP_FLAG_PROTECTED;
        }
        if suspendable {
            self.flags |= VRAMCAP_FLAG_SUSPENDABLE;
        }
        (self.unload_kind, self.unload) = hook_fields(hook);
        self
    }

    /// Records how the unloader tells this worker that it may load again.
    pub fn reloading(mut self, hook: &crate::config::UnloadHook) -> Identity {
        (self.reload_kind, self.reload) = hook_fields(hook);
        self
    }

    /// The owner's part of a slot for this identity, `state` live, no figures yet.
    pub fn slot(&self) -> VramcapSlot {
        VramcapSlot {
            check: 0,
            state: VRAMCAP_SLOT_LIVE,
            pid: self.pid,
            host_pid: self.host_pid,
            uid: self.uid,
            start_time: self.start_time,
            priority: self.priority,
            flags: self.flags,
            unload_kind: self.unload_kind,
            reload_kind: self.reload_kind,
            updated_unix_ms: unix_ms(),
            name: padded(&self.name),
            unload: padded(&self.unload),
            reload: padded(&self.reload),
            devices: [VramcapDevice::default(); VRAMCAP_SLOT_DEVICES],
            request_check: 0,
            request_seq: 0,
            reserved_request: 0,
            request_uuid: [0; 16],
            request_bytes: 0,
            request_unix_ms: 0,
            answer_check: 0,
            answer_seq: 0,
            answer: VRAMCAP_ANSWER_NONE,
            suspended_unix_ms: 0,
            suspended_bytes: 0,
            unloaded_unix_ms: 0,
            unloaded_bytes: 0,
            unloads: 0,
            reloads: 0,
            reserved: [0; 4],
        }
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

fn hook_fields(hook: &crate::config::UnloadHook) -> (u32, String) {
    use crate::config::UnloadHook;
    match hook {
        UnloadHook::None => (VRAMCAP_UNLOAD_NONE, String::new()),
        UnloadHook::Url(u) => (VRAMCAP_UNLOAD_URL, u.clone()),
        UnloadHook::Signal(_, name) => (VRAMCAP_UNLOAD_SIGNAL, name.clone()),
        UnloadHook::Cmd(c) => (VRAMCAP_UNLOAD_CMD, c.clone()),
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

/// The first (outermost visible) PID in `/proc/self/status`'s NSpid line.
fn host_pid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("NSpid:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}
