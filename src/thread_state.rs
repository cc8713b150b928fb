//! Everything a capped process keeps per thread, in one place: the thread's stripe of the striped
//! counters (`accounting::striped`) and whether one of the preload's hooks is running on it (its re-entry
//! guard). Bytehound's `ThreadData` is the model: one handle, not a thread-local per concern.
//!
//! The state is one `const`-initialised thread-local without destructor, so it needs no allocation, no
//! lazy initialisation and no registration, and it stays readable at any time, even while the thread's
//! other thread-locals are being destroyed (a CUDA call from a destructor still finds its guard). The one
//! thing that must happen at a thread's end, giving an owned stripe back, is a separate destructor in
//! `striped`, which reads this state.

use std::cell::Cell;

/// No stripe claimed yet.
pub const NO_STRIPE: usize = usize::MAX;

/// One thread's state.
pub struct ThreadState {
    /// The index of this thread's stripe, [`NO_STRIPE`] before its first use.
    pub stripe: Cell<usize>,
    /// Whether a hook runs on this thread (its calls into the driver are not the program's).
    pub in_hook: Cell<bool>,
}

thread_local! {
    static THREAD: ThreadState = const {
        ThreadState {
            stripe: Cell::new(NO_STRIPE),
            in_hook: Cell::new(false),
        }
    };
}

/// Runs `f` with the calling thread's state.
pub fn with<R>(f: impl FnOnce(&ThreadState) -> R) -> R {
    THREAD.with(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_thread_starts_with_its_own_state() {
        with(|t| {
            t.in_hook.set(true);
            t.stripe.set(3);
        });
        let other = std::thread::spawn(|| with(|t| (t.in_hook.get(), t.stripe.get())))
            .join()
            .unwrap();
        assert_eq!(other, (false, NO_STRIPE));
        assert_eq!(with(|t| (t.in_hook.get(), t.stripe.get())), (true, 3));
        with(|t| t.in_hook.set(false));
    }
}
