//! `cuInit`: refused while the configuration is invalid; afterwards, the caps are applied to the devices.
//! <https://docs.nvidia.com/cuda/cuda-driver-api/group__CUDA__INITIALIZE.html>

use crate::cuda::*;
use crate::{background, devices, phase};
use std::ffi::c_uint;

pub fn cu_init(pass: impl Fn() -> CUresult, _flags: c_uint) -> CUresult {
    // The shim has run the start (see `crate::startup`): the phase is settled.
    if phase::refusing() {
        return phase::REFUSED_BY_CONFIG;
    }
    let r = pass();
    if r == CUDA_SUCCESS && devices::get().is_some() {
        // The devices can disprove the configuration (a limit for a device not seen).
        if phase::refusing() {
            return phase::REFUSED_BY_CONFIG;
        }
        background::join();
    }
    r
}
