//! `vramcap watch`: the status view, redrawn every interval like `top`; `q`, Esc or Ctrl-C quits.
//!
//! Where the frames go decides how they are drawn: to a terminal, redrawn in place through crossterm;
//! into a pipe or a file, one plain frame per interval with no escape code. Where the keys come from is
//! separate: a terminal on stdin is read in raw mode (restored on every way out but SIGKILL), a pipe
//! or a file byte by byte on a thread of its own, and once stdin is closed or at its end the loop just
//! sleeps out each interval (it never spins). SIGINT, SIGTERM and SIGHUP end it cleanly, and so does a
//! reader that went away (a closed stdout).

use crossterm::cursor::MoveTo;
use crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use crossterm::terminal::{self, Clear, ClearType};
use crossterm::QueueableCommand;
use std::io::{IsTerminal, Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

/// The longest the loop sleeps before it looks at the stop flag again.
const SLICE: Duration = Duration::from_millis(100);

/// Raw mode on the terminal of stdin while alive.
struct RawMode;

impl RawMode {
    fn enable() -> Option<RawMode> {
        terminal::enable_raw_mode().ok().map(|()| RawMode)
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = terminal::disable_raw_mode();
    }
}

/// Where the keys come from.
enum Keys {
    Terminal(#[allow(dead_code)] RawMode),
    /// Bytes of a pipe or a file, read on a thread; the channel closes at their end.
    Stream(mpsc::Receiver<u8>),
    /// Nothing more to read.
    Closed,
}

impl Keys {
    fn open() -> Keys {
        let stdin = std::io::stdin();
        if stdin.is_terminal() {
            if let Some(raw) = RawMode::enable() {
                return Keys::Terminal(raw);
            }
        }
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut byte = [0u8; 1];
            let mut stdin = std::io::stdin().lock();
            // Ends at the end of the input, on an error, or when nobody listens any more.
            while let Ok(1) = stdin.read(&mut byte) {
                if tx.send(byte[0]).is_err() {
                    break;
                }
            }
        });
        Keys::Stream(rx)
    }

    fn can_quit(&self) -> bool {
        !matches!(self, Keys::Closed)
    }

    /// Waits up to `wait`; true if a key asks to quit.
    fn quit_within(&mut self, wait: Duration) -> bool {
        match self {
            Keys::Terminal(_) => match event::poll(wait) {
                Ok(true) => match event::read() {
                    Ok(Event::Key(k)) if k.kind != KeyEventKind::Release => {
                        matches!(k.code, KeyCode::Char('q' | 'Q') | KeyCode::Esc)
                            || (k.code == KeyCode::Char('c')
                                && k.modifiers.contains(KeyModifiers::CONTROL))
                    }
                    Ok(_) => false,
                    Err(_) => {
                        *self = Keys::Closed;
                        false
                    }
                },
                Ok(false) => false,
                Err(_) => {
                    *self = Keys::Closed;
                    false
                }
            },
            Keys::Stream(rx) => match rx.recv_timeout(wait) {
                Ok(b) => matches!(b, b'q' | b'Q' | 3 | 0x1b),
                Err(mpsc::RecvTimeoutError::Timeout) => false,
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    *self = Keys::Closed;
                    false
                }
            },
            Keys::Closed => {
                std::thread::sleep(wait);
                false
            }
        }
    }
}

/// Draws `frame()` every `interval` until a key, a signal or a closed stdout ends it.
pub fn run(mut frame: impl FnMut() -> String, interval: Duration) {
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGHUP,
    ] {
        let _ = signal_hook::flag::register(signal, Arc::clone(&stop));
    }
    let in_place = std::io::stdout().is_terminal();
    let mut keys = Keys::open();
    // The end of a pipe or file given as stdin shows at once: no hint then that `q` quits.
    if keys.quit_within(Duration::from_millis(20)) {
        return;
    }
    let mut out = std::io::stdout().lock();
    loop {
        let mut text = frame();
        if keys.can_quit() {
            text.push_str("(q to quit)\n");
        }
        let drawn = if in_place {
            draw_in_place(&mut out, &text)
        } else {
            out.write_all(text.as_bytes())
                .and_then(|()| out.write_all(b"\n"))
                .and_then(|()| out.flush())
        };
        if drawn.is_err() {
            return;
        }
        let next = Instant::now() + interval;
        loop {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            let left = next.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            if keys.quit_within(left.min(SLICE)) {
                return;
            }
        }
    }
}

/// Redraws over the previous frame: each line overwritten and its rest cleared, then everything below.
fn draw_in_place(out: &mut impl Write, text: &str) -> std::io::Result<()> {
    out.queue(MoveTo(0, 0))?;
    for line in text.lines() {
        out.write_all(line.as_bytes())?;
        out.queue(Clear(ClearType::UntilNewLine))?;
        // Raw mode turns off the terminal's own carriage return.
        out.write_all(b"\r\n")?;
    }
    out.queue(Clear(ClearType::FromCursorDown))?;
    out.flush()
}
