//! `vramcap watch`: the status table, redrawn every second like `top`; `q` or Ctrl-C quits.

use std::io::Write;
use std::time::Duration;

/// Puts the terminal in non-canonical, no-echo mode while alive (Ctrl-C then arrives as a byte, so the
/// terminal is always restored).
struct RawTerminal(Option<libc::termios>);

impl RawTerminal {
    fn new() -> RawTerminal {
        // SAFETY: isatty/tcgetattr/tcsetattr on fd 0 with a termios we own.
        unsafe {
            if libc::isatty(0) != 1 {
                return RawTerminal(None);
            }
            let mut saved: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(0, &mut saved) != 0 {
                return RawTerminal(None);
            }
            let mut raw = saved;
            raw.c_lflag &= !(libc::ICANON | libc::ECHO | libc::ISIG);
            raw.c_cc[libc::VMIN] = 0;
            raw.c_cc[libc::VTIME] = 0;
            libc::tcsetattr(0, libc::TCSANOW, &raw);
            RawTerminal(Some(saved))
        }
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        if let Some(saved) = &self.0 {
            // SAFETY: restores the settings read in new().
            unsafe { libc::tcsetattr(0, libc::TCSANOW, saved) };
        }
    }
}

/// Waits up to `timeout` for a key; true if it asks to quit.
fn quit_pressed(timeout: Duration) -> bool {
    let mut fds = libc::pollfd {
        fd: 0,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: polls one descriptor we describe.
    let ready = unsafe { libc::poll(&mut fds, 1, timeout.as_millis() as i32) };
    if ready <= 0 {
        return false;
    }
    let mut byte = 0u8;
    // SAFETY: reads at most one byte into ours.
    let n = unsafe { libc::read(0, (&mut byte as *mut u8).cast(), 1) };
    n == 1 && matches!(byte, b'q' | b'Q' | 3)
}

pub fn run(mut frame: impl FnMut() -> String, interval: Duration) {
    let _raw = RawTerminal::new();
    let mut out = std::io::stdout();
    loop {
        let _ = write!(out, "\x1b[H\x1b[2J{}\n(q to quit)\n", frame());
        let _ = out.flush();
        if quit_pressed(interval) {
            break;
        }
    }
}
