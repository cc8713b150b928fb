//! Diagnostics on stderr, each line prefixed `vramcap:`, filtered by `VRAMCAP_LOG`.
//!
//! Each line is written with one `write(2)`, so lines from many threads never interleave, and nothing here
//! can panic or unwind into a host program.

use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum Level {
    Off = 0,
    Error = 1,
    Warn = 2,
    Info = 3,
    Debug = 4,
}

impl Level {
    pub fn parse(text: &str) -> Option<Level> {
        Some(match text.trim().to_ascii_lowercase().as_str() {
            "off" | "none" => Level::Off,
            "error" => Level::Error,
            "warn" | "warning" => Level::Warn,
            "info" => Level::Info,
            "debug" => Level::Debug,
            _ => return None,
        })
    }
}

static LEVEL: AtomicU8 = AtomicU8::new(Level::Warn as u8);

pub fn set_level(level: Level) {
    LEVEL.store(level as u8, Ordering::Relaxed);
}

pub fn enabled(level: Level) -> bool {
    level != Level::Off && level as u8 <= LEVEL.load(Ordering::Relaxed)
}

/// Writes one line if `level` is enabled. Use the [`crate::vlog!`] macro.
pub fn emit(level: Level, args: fmt::Arguments<'_>) {
    if !enabled(level) {
        return;
    }
    let line = format!("vramcap: {args}\n");
    // SAFETY: writes an initialised buffer of exactly its own length to fd 2; failure is ignored on purpose.
    unsafe {
        libc::write(2, line.as_ptr().cast(), line.len());
    }
}

#[macro_export]
macro_rules! vlog {
    ($level:ident, $($arg:tt)*) => {
        $crate::log::emit($crate::log::Level::$level, format_args!($($arg)*))
    };
}

/// Lets one event through per interval and counts the ones it held back.
pub struct RateLimit {
    last_ns: AtomicU64,
    held_back: AtomicU64,
}

impl RateLimit {
    pub const fn new() -> RateLimit {
        RateLimit {
            last_ns: AtomicU64::new(0),
            held_back: AtomicU64::new(0),
        }
    }

    /// `Some(n)` if the event may be reported now, `n` being how many were held back since the last one.
    pub fn allow(&self, now_ns: u64, interval_ns: u64) -> Option<u64> {
        let last = self.last_ns.load(Ordering::Relaxed);
        if (last == 0 || now_ns.saturating_sub(last) >= interval_ns)
            && self
                .last_ns
                .compare_exchange(last, now_ns.max(1), Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            return Some(self.held_back.swap(0, Ordering::Relaxed));
        }
        self.held_back.fetch_add(1, Ordering::Relaxed);
        None
    }
}

impl Default for RateLimit {
    fn default() -> Self {
        RateLimit::new()
    }
}

/// Milliseconds since the Unix epoch, for timestamps others read (refusals, slot updates).
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Monotonic nanoseconds, for rate limits and durations.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels() {
        assert_eq!(Level::parse("DEBUG"), Some(Level::Debug));
        assert_eq!(Level::parse("off"), Some(Level::Off));
        assert_eq!(Level::parse("verbose"), None);
        assert!(Level::Error < Level::Debug);
    }

    #[test]
    fn rate_limit_holds_back_and_counts() {
        let r = RateLimit::new();
        assert_eq!(r.allow(1_000, 100), Some(0));
        assert_eq!(r.allow(1_050, 100), None);
        assert_eq!(r.allow(1_060, 100), None);
        assert_eq!(r.allow(1_200, 100), Some(2));
    }
}
