//! Start-up: reads the configuration, opens the real driver and resolves the entry table, once, then
//! installs what the process needs (the fork handler, the asymmetric fence of the in-flight lock). The
//! phases it moves through are explained in [`crate::phase`]. Called by every shim before its hook runs.

use crate::phase::{self, Phase};
use crate::real;
use std::ffi::c_void;
use vramcap_core::config::Config;
use vramcap_core::vlog;

/// Reads the configuration and resolves the driver, once; `resolve` fills the entry table's slots from
/// the driver's handle. Returns the phase reached.
pub fn start(resolve: fn(*mut c_void)) -> Phase {
    let p = phase::current();
    if p != Phase::Fresh {
        return p;
    }
    let _guard = phase::start_lock();
    if phase::current() != Phase::Fresh {
        return phase::current();
    }
    let (next, config) = match Config::from_env() {
        Ok(config) => {
            vramcap_core::log::set_level(config.log);
            open_driver(config.real_libcuda.as_deref(), resolve);
            crate::in_flight::use_membarrier();
            crate::fork::install();
            (Phase::Ready, Some(config))
        }
        Err(e) => {
            vlog!(
                Error,
                "{e}; refusing CUDA initialisation so that nothing runs uncapped"
            );
            open_driver(None, resolve);
            (Phase::Refusing, None)
        }
    };
    phase::started(next, config);
    next
}

fn open_driver(path: Option<&str>, resolve: fn(*mut c_void)) {
    match real::open_driver(path) {
        Ok(handle) => resolve(handle),
        Err(e) => vlog!(Error, "cannot load the CUDA driver: {e}"),
    }
}
