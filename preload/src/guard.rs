//! The shim around every hook: re-entry guard and panic fence.
//!
//! **Re-entry.** A hook calls the driver through real pointers, never through our exports, but the driver
//! (or a library it loads) may call an exported entry point of its own through the dynamic linker, which
//! lands in our shim again. Counting that inner call would charge memory twice, so each thread carries an
//! "inside a hook" flag: the outer shim sets it, and a shim that finds it set calls the real function and
//! nothing else. The flag is part of the thread's one state (`vramcap_core::thread_state`), which needs
//! no allocation and no destructor.
//!
//! **Panics.** A panic must never unwind into the host program. The shim catches it and logs it. If the
//! hook had already called the driver, the driver's last answer stands (calling it again would allocate
//! twice and leak the first). Otherwise a call that takes device memory is refused (`fail`: passing it on
//! would let it through uncounted) and any other goes to the driver, so the program sees the driver's own
//! behaviour.

use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use vramcap_core::thread_state;

/// Runs `hook` as the outermost hook of this thread, handing it `real` as the call to pass on; runs `real`
/// alone if a hook is already running here. If `hook` panics, returns the driver's last answer to it, or,
/// if it had not called it, `fail` where given, else what `real` answers.
pub fn run<R: Copy>(
    name: &str,
    fail: Option<R>,
    hook: impl FnOnce(&dyn Fn() -> R) -> R,
    real: impl Fn() -> R,
) -> R {
    let outer = thread_state::with(|t| !t.in_hook.replace(true));
    if !outer {
        return real();
    }
    let answered = Cell::new(None);
    let pass = || {
        let r = real();
        answered.set(Some(r));
        r
    };
    let result = catch_unwind(AssertUnwindSafe(|| hook(&pass)));
    thread_state::with(|t| t.in_hook.set(false));
    match (result, answered.get()) {
        (Ok(r), _) => r,
        (Err(_), Some(r)) => {
            vramcap_core::vlog!(
                Error,
                "internal error in the {name} hook after the driver's call; its answer stands"
            );
            r
        }
        (Err(_), None) => match fail {
            Some(refusal) => {
                vramcap_core::vlog!(
                    Error,
                    "internal error in the {name} hook; refusing the call rather than letting it \
                     through uncounted"
                );
                refusal
            }
            None => {
                vramcap_core::vlog!(
                    Error,
                    "internal error in the {name} hook; passing the call to the driver"
                );
                real()
            }
        },
    }
}

/// Runs `f` with the flag set, so driver calls made from our own threads are not counted as the program's.
pub fn quiet<R>(f: impl FnOnce() -> R) -> R {
    let was = thread_state::with(|t| t.in_hook.replace(true));
    let r = f();
    thread_state::with(|t| t.in_hook.set(was));
    r
}

/// For unit tests: a driver call that answers `answer` and counts its calls in `calls`.
#[cfg(test)]
pub(crate) fn counting(calls: &Cell<u32>, answer: i32) -> impl Fn() -> i32 + Copy + '_ {
    move || {
        calls.set(calls.get() + 1);
        answer
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hook_that_panics_after_the_driver_call_does_not_call_it_again() {
        let calls = Cell::new(0);
        let r = run(
            "test",
            Some(2),
            |pass| {
                pass();
                panic!("after the call");
            },
            counting(&calls, 7),
        );
        assert_eq!((r, calls.get()), (7, 1), "one driver call, its answer");
    }

    #[test]
    fn a_hook_that_panics_before_the_driver_call_passes_it_on() {
        let calls = Cell::new(0);
        let r = run(
            "test",
            None,
            |_| panic!("before the call"),
            counting(&calls, 5),
        );
        assert_eq!((r, calls.get()), (5, 1));
        assert!(!thread_state::with(|t| t.in_hook.get()), "guard released");
    }

    #[test]
    fn a_call_that_takes_memory_is_refused_when_its_hook_panics_before_the_driver_call() {
        let calls = Cell::new(0);
        let r = run(
            "test",
            Some(2),
            |_| panic!("before the call"),
            counting(&calls, 0),
        );
        assert_eq!(
            (r, calls.get()),
            (2, 0),
            "refused, never let through uncounted"
        );
        assert!(!thread_state::with(|t| t.in_hook.get()), "guard released");
    }

    #[test]
    fn a_call_inside_a_hook_goes_straight_to_the_driver() {
        let calls = Cell::new(0);
        let inner = Cell::new(0);
        let r = run(
            "outer",
            Some(2),
            |pass| {
                let nested = run(
                    "inner",
                    Some(2),
                    |_| unreachable!("not hooked twice"),
                    counting(&inner, 3),
                );
                pass() + nested
            },
            counting(&calls, 4),
        );
        assert_eq!((r, calls.get(), inner.get()), (7, 1, 1));
    }
}
