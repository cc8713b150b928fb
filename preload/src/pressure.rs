//! The pressure handshake with the unloader (`vramcap unloader`): an allocation that our cap allowed but
//! the driver refused because the device itself is full posts a request (device, bytes) in this process's
//! slot. With `VRAMCAP_WAIT` set, the allocation waits up to that long for the unloader's answer and is
//! retried once if memory was freed; otherwise, or on timeout, the caller gets the driver's
//! `CUDA_ERROR_OUT_OF_MEMORY` as before. The wait holds no lock of ours.

use crate::background::publish;
use crate::cuda::{CUdevice, CUresult, CUDA_ERROR_OUT_OF_MEMORY};
use crate::{devices, phase};
use std::time::{Duration, Instant};
use vramcap_core::config::size::HumanBytes;
use vramcap_core::shm::VRAMCAP_ANSWER_FREED;
use vramcap_core::vlog;

/// How often a waiting allocation looks for the answer.
const POLL: Duration = Duration::from_millis(5);

/// Runs one attempt of an allocating hook and, if the *driver* answered `CUDA_ERROR_OUT_OF_MEMORY` (the
/// device itself is full), asks the unloader for `bytes` on `dev` and runs it once more. An attempt
/// returns `Err` for a refusal of our own (the cap, the configuration), which no unloading elsewhere can
/// cure. The attempt must hold nothing of ours when it returns: the wait holds no lock.
pub fn retry_once(
    dev: CUdevice,
    bytes: u64,
    mut attempt: impl FnMut() -> Result<CUresult, CUresult>,
) -> CUresult {
    match attempt() {
        Ok(CUDA_ERROR_OUT_OF_MEMORY) if relieve(dev, bytes) => {
            attempt().unwrap_or_else(|ours| ours)
        }
        Ok(driver) => driver,
        Err(ours) => ours,
    }
}

/// The device refused `bytes` on `dev`: asks the unloader for them. True if the caller should retry.
fn relieve(dev: CUdevice, bytes: u64) -> bool {
    let Some(uuid) = devices::get().and_then(|d| d.raw_uuids.get(dev as usize).copied()) else {
        return false;
    };
    let Some(ticket) = publish::post_request(uuid, bytes) else {
        return false;
    };
    let Some(wait) = phase::config().and_then(|c| c.wait) else {
        vlog!(
            Info,
            "device {dev} is full: asked the unloader for {}; VRAMCAP_WAIT is unset, so this allocation fails now",
            HumanBytes(bytes)
        );
        return false;
    };
    vlog!(
        Info,
        "device {dev} is full: asked the unloader for {}, waiting up to {wait:?}",
        HumanBytes(bytes)
    );
    let start = Instant::now();
    loop {
        if let Some(answer) = publish::answer_to(&ticket) {
            let freed = answer == VRAMCAP_ANSWER_FREED;
            vlog!(
                Info,
                "the unloader answered after {:?}: {}",
                start.elapsed(),
                if freed {
                    "memory freed, retrying"
                } else {
                    "not enough can be freed"
                }
            );
            return freed;
        }
        if start.elapsed() >= wait {
            vlog!(
                Warn,
                "no answer from the unloader within VRAMCAP_WAIT ({wait:?}); the allocation fails"
            );
            return false;
        }
        std::thread::sleep(POLL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cuda::{CUDA_ERROR_INVALID_VALUE, CUDA_SUCCESS};
    use std::cell::Cell;

    /// Runs `retry_once` with attempts that answer `answers` in turn; returns its answer and the
    /// attempts made.
    fn attempts(answers: &[Result<CUresult, CUresult>]) -> (CUresult, usize) {
        let made = Cell::new(0);
        let r = retry_once(0, 64 << 20, || {
            made.set(made.get() + 1);
            answers[made.get() - 1]
        });
        (r, made.get())
    }

    #[test]
    fn a_driver_answer_other_than_out_of_memory_is_final() {
        assert_eq!(attempts(&[Ok(CUDA_SUCCESS)]), (CUDA_SUCCESS, 1));
        assert_eq!(
            attempts(&[Ok(CUDA_ERROR_INVALID_VALUE)]),
            (CUDA_ERROR_INVALID_VALUE, 1)
        );
    }

    #[test]
    fn a_refusal_of_our_own_is_never_retried() {
        // The cap refused: freeing memory elsewhere cannot help.
        assert_eq!(
            attempts(&[Err(CUDA_ERROR_OUT_OF_MEMORY), Ok(CUDA_SUCCESS)]),
            (CUDA_ERROR_OUT_OF_MEMORY, 1)
        );
    }

    #[test]
    fn a_full_device_without_an_unloader_to_ask_gets_the_drivers_refusal() {
        // No device table here, so no slot to post a request in: the caller gets the driver's answer.
        assert_eq!(
            attempts(&[Ok(CUDA_ERROR_OUT_OF_MEMORY), Ok(CUDA_SUCCESS)]),
            (CUDA_ERROR_OUT_OF_MEMORY, 1)
        );
    }
}
