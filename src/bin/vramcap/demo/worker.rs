//! `vramcap demo-worker ROLE`: one of `vramcap demo`'s workers. It reaches the driver as PyTorch or CuPy
//! do, by `dlopen("libcuda.so.1")` and `dlsym` (which libvramcap.so answers when it is preloaded), makes
//! device 0's primary context current and allocates with `cuMemAlloc_v2`. It prints one line per event,
//! which the demo relays, and ends when its stdin closes (the demo's way of stopping it), freeing what
//! it holds.
//!
//! - `probe`: device 0's free and total memory (`cuMemGetInfo_v2`), as `free=… total=… name=…`; the
//!   demo runs it without libvramcap.so, to learn whether there is a GPU and how much of it is free;
//! - `fill`: allocations of `--bytes` until one fails, which under a cap is vramcap's refusal;
//! - `hold`: holds `--bytes` (in allocations of `--chunk`) and frees it all on SIGUSR1, the hook that
//!   `vramcap-run --unload-signal USR1` declares to the unloader;
//! - `want`: one allocation of `--bytes`, timed: under `vramcap-run --wait` it waits for the unloader
//!   when the device is full.
//!
//! Exit codes: 0 done; 1 the driver failed (the line says which call and which error), or `want`'s
//! allocation was refused.

use clap::{Parser, ValueEnum};
use std::ffi::{c_char, c_int, c_uint, c_void, CStr};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use vramcap_core::config::size::HumanBytes;

/// The first argument that makes `vramcap` a demo worker.
pub const COMMAND: &str = "demo-worker";

#[derive(Parser, Debug)]
#[command(
    name = "vramcap demo-worker",
    about = "One of `vramcap demo`'s workers, which the demo starts under vramcap-run"
)]
struct Args {
    role: Role,
    /// A size (64MiB): each allocation (fill), what to hold (hold) or to ask for (want).
    #[arg(long, default_value = "64MiB", value_parser = size)]
    bytes: u64,
    /// How much hold allocates at a time.
    #[arg(long, default_value = "64MiB", value_parser = size)]
    chunk: u64,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    /// Device 0's free and total memory.
    Probe,
    /// Allocations of --bytes until one is refused.
    Fill,
    /// Hold --bytes; SIGUSR1 frees it.
    Hold,
    /// One allocation of --bytes, timed.
    Want,
}

/// `--bytes` and `--chunk`: a size of more than 0 bytes.
fn size(text: &str) -> Result<u64, String> {
    match vramcap_core::config::size::parse_size(text) {
        Ok(vramcap_core::config::size::Size::Bytes(b)) if b > 0 => Ok(b),
        _ => Err(format!(
            "{text:?} is not a size of more than 0 bytes, such as 64MiB"
        )),
    }
}

type CuResult = c_int;
const CUDA_SUCCESS: CuResult = 0;
const CUDA_ERROR_OUT_OF_MEMORY: CuResult = 2;

/// At most this many allocations: `fill` without a cap would otherwise stop only at the device's end.
const MOST_ALLOCATIONS: usize = 1 << 16;

/// The driver calls the workers make, resolved once from `libcuda.so.1`.
struct Driver {
    init: unsafe extern "C" fn(c_uint) -> CuResult,
    device_get_count: unsafe extern "C" fn(*mut c_int) -> CuResult,
    device_get: unsafe extern "C" fn(*mut c_int, c_int) -> CuResult,
    device_get_name: Option<unsafe extern "C" fn(*mut c_char, c_int, c_int) -> CuResult>,
    primary_ctx_retain: unsafe extern "C" fn(*mut *mut c_void, c_int) -> CuResult,
    ctx_set_current: unsafe extern "C" fn(*mut c_void) -> CuResult,
    mem_get_info: unsafe extern "C" fn(*mut usize, *mut usize) -> CuResult,
    mem_alloc: unsafe extern "C" fn(*mut u64, usize) -> CuResult,
    mem_free: unsafe extern "C" fn(u64) -> CuResult,
    get_error_name: unsafe extern "C" fn(CuResult, *mut *const c_char) -> CuResult,
    /// Keeps the pointers above valid: the library stays loaded while this lives.
    _library: libloading::Library,
}

/// A driver call that failed: its name and the driver's code.
struct CallError {
    call: &'static str,
    code: CuResult,
}

impl Driver {
    fn open() -> Result<Driver, String> {
        // SAFETY: loading the CUDA driver runs its initialisers, which make no demands on the caller;
        // every program that uses CUDA loads it so.
        let library = unsafe { libloading::Library::new("libcuda.so.1") }
            .map_err(|e| format!("cannot load libcuda.so.1: {e}"))?;
        macro_rules! get {
            ($name:literal) => {
                // SAFETY: the driver API's documented signature for this symbol is the type of the field
                // it is stored in (cuda.h); the pointer is used only while `library` stays loaded.
                *unsafe { library.get($name) }.map_err(|e| {
                    format!(
                        "libcuda.so.1 has no {}: {e}",
                        String::from_utf8_lossy(&$name[..$name.len() - 1])
                    )
                })?
            };
        }
        Ok(Driver {
            init: get!(b"cuInit\0"),
            device_get_count: get!(b"cuDeviceGetCount\0"),
            device_get: get!(b"cuDeviceGet\0"),
            // SAFETY: as in get! above: cuDeviceGetName(char *name, int len, CUdevice dev).
            device_get_name: unsafe { library.get(b"cuDeviceGetName\0") }
                .ok()
                .map(|s| *s),
            primary_ctx_retain: get!(b"cuDevicePrimaryCtxRetain\0"),
            ctx_set_current: get!(b"cuCtxSetCurrent\0"),
            mem_get_info: get!(b"cuMemGetInfo_v2\0"),
            mem_alloc: get!(b"cuMemAlloc_v2\0"),
            mem_free: get!(b"cuMemFree_v2\0"),
            get_error_name: get!(b"cuGetErrorName\0"),
            _library: library,
        })
    }

    /// `CUDA_ERROR_OUT_OF_MEMORY (2)`: the driver's name for a code, and the code.
    fn describe(&self, code: CuResult) -> String {
        let mut name: *const c_char = std::ptr::null();
        // SAFETY: cuGetErrorName writes a pointer to a static string, or fails and leaves it null.
        let known = unsafe { (self.get_error_name)(code, &mut name) } == CUDA_SUCCESS;
        if !known || name.is_null() {
            return format!("error {code}");
        }
        // SAFETY: the driver's error names are static NUL-terminated strings.
        let text = unsafe { CStr::from_ptr(name) }.to_string_lossy();
        format!("{text} ({code})")
    }

    fn error(&self, e: CallError) -> String {
        format!("{} returned {}", e.call, self.describe(e.code))
    }

    /// cuInit, and device 0's primary context made current on this thread; returns the device.
    fn device_zero(&self) -> Result<c_int, String> {
        let call = |call: &'static str, code: CuResult| match code {
            CUDA_SUCCESS => Ok(()),
            code => Err(self.error(CallError { call, code })),
        };
        // SAFETY: cuInit takes flags by value (0 is the only defined value).
        call("cuInit", unsafe { (self.init)(0) })?;
        let mut count: c_int = 0;
        // SAFETY: the out-pointer is a live c_int.
        call("cuDeviceGetCount", unsafe {
            (self.device_get_count)(&mut count)
        })?;
        if count == 0 {
            return Err("the driver sees no device (cuDeviceGetCount: 0)".into());
        }
        let mut dev: c_int = 0;
        // SAFETY: the out-pointer is a live c_int; ordinal 0 exists (count > 0).
        call("cuDeviceGet", unsafe { (self.device_get)(&mut dev, 0) })?;
        let mut ctx: *mut c_void = std::ptr::null_mut();
        // SAFETY: the out-pointer is a live CUcontext; `dev` came from cuDeviceGet.
        call("cuDevicePrimaryCtxRetain", unsafe {
            (self.primary_ctx_retain)(&mut ctx, dev)
        })?;
        // SAFETY: `ctx` is the primary context just retained, kept until the process exits.
        call("cuCtxSetCurrent", unsafe { (self.ctx_set_current)(ctx) })?;
        Ok(dev)
    }

    fn name(&self, dev: c_int) -> Option<String> {
        let get = self.device_get_name?;
        let mut buf = [0 as c_char; 256];
        // SAFETY: the buffer holds the 256 bytes the call is told of; the driver NUL-terminates it.
        if unsafe { get(buf.as_mut_ptr(), buf.len() as c_int, dev) } != CUDA_SUCCESS {
            return None;
        }
        // SAFETY: NUL-terminated by the driver within the buffer (and zeroed before).
        let name = unsafe { CStr::from_ptr(buf.as_ptr()) }.to_string_lossy();
        Some(name.trim().to_string()).filter(|n| !n.is_empty())
    }

    fn mem_get_info(&self) -> Result<(u64, u64), CallError> {
        let (mut free, mut total) = (0usize, 0usize);
        // SAFETY: both out-pointers are live usizes; a context is current.
        match unsafe { (self.mem_get_info)(&mut free, &mut total) } {
            CUDA_SUCCESS => Ok((free as u64, total as u64)),
            code => Err(CallError {
                call: "cuMemGetInfo_v2",
                code,
            }),
        }
    }

    fn alloc(&self, bytes: u64) -> Result<u64, CuResult> {
        let bytes = usize::try_from(bytes).map_err(|_| CUDA_ERROR_OUT_OF_MEMORY)?;
        let mut ptr = 0u64;
        // SAFETY: the out-pointer is a live CUdeviceptr; a context is current.
        match unsafe { (self.mem_alloc)(&mut ptr, bytes) } {
            CUDA_SUCCESS => Ok(ptr),
            code => Err(code),
        }
    }

    fn free(&self, ptr: u64) {
        // SAFETY: `ptr` came from cuMemAlloc_v2 and is freed once (the callers drain their lists).
        unsafe { (self.mem_free)(ptr) };
    }
}

/// Set when stdin reaches its end: the demo closed it, or went away.
fn stop_on_eof() -> Arc<AtomicBool> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink());
        flag.store(true, Ordering::SeqCst);
    });
    stop
}

fn wait_for_eof(stop: &AtomicBool) {
    while !stop.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn free_all(driver: &Driver, held: &mut Vec<u64>) {
    for p in held.drain(..) {
        driver.free(p);
    }
}

/// `vramcap demo-worker ROLE [--bytes SIZE] [--chunk SIZE]`.
pub fn main() -> ExitCode {
    let args = match Args::try_parse_from(std::env::args_os().skip(1)) {
        Ok(args) => args,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    match work(args.role, args.bytes, args.chunk) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vramcap demo-worker: {e}");
            ExitCode::from(1)
        }
    }
}

fn work(role: Role, bytes: u64, chunk: u64) -> Result<(), String> {
    // Before anything else: a SIGUSR1 that came before the handler would end the process.
    let unload = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGUSR1, Arc::clone(&unload))
        .map_err(|e| format!("cannot handle SIGUSR1: {e}"))?;
    let stop = stop_on_eof();
    let driver = Driver::open()?;
    let dev = driver.device_zero()?;
    match role {
        Role::Probe => {
            let (free, total) = driver.mem_get_info().map_err(|e| driver.error(e))?;
            let name = driver.name(dev).unwrap_or_default();
            println!("free={free} total={total} name={name}");
        }
        Role::Fill => {
            let mut held = Vec::new();
            let refused = loop {
                if held.len() == MOST_ALLOCATIONS {
                    break None;
                }
                match driver.alloc(bytes) {
                    Ok(p) => held.push(p),
                    Err(code) => break Some(code),
                }
            };
            let got = held.len() as u64;
            let total = HumanBytes(got.saturating_mul(bytes));
            match refused {
                Some(code) => println!(
                    "{got} allocations of {} succeeded ({total}); allocation {} was refused: {}",
                    HumanBytes(bytes),
                    got + 1,
                    driver.describe(code)
                ),
                None => println!(
                    "{got} allocations of {} succeeded ({total}), and none was refused",
                    HumanBytes(bytes)
                ),
            }
            println!("holding {total} until the demo moves on");
            wait_for_eof(&stop);
            free_all(&driver, &mut held);
        }
        Role::Hold => {
            let mut held = Vec::new();
            let mut left = bytes;
            while left > 0 {
                let n = left.min(chunk);
                let p = driver.alloc(n).map_err(|code| {
                    format!(
                        "cuMemAlloc_v2 of {} returned {} after {} of {}",
                        HumanBytes(n),
                        driver.describe(code),
                        HumanBytes(bytes - left),
                        HumanBytes(bytes)
                    )
                })?;
                held.push(p);
                left -= n;
            }
            println!(
                "holding {} in {} allocations; SIGUSR1 makes it unload",
                HumanBytes(bytes),
                held.len()
            );
            while !stop.load(Ordering::SeqCst) {
                if unload.swap(false, Ordering::SeqCst) && !held.is_empty() {
                    let start = Instant::now();
                    free_all(&driver, &mut held);
                    println!(
                        "SIGUSR1: unloaded, freed {} in {} ms",
                        HumanBytes(bytes),
                        start.elapsed().as_millis()
                    );
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            free_all(&driver, &mut held);
        }
        Role::Want => {
            println!("asking for {} in one cuMemAlloc_v2", HumanBytes(bytes));
            let start = Instant::now();
            let answer = driver.alloc(bytes);
            let ms = start.elapsed().as_millis();
            match answer {
                Ok(p) => {
                    println!("got {} after {ms} ms", HumanBytes(bytes));
                    wait_for_eof(&stop);
                    driver.free(p);
                }
                Err(code) => {
                    return Err(format!(
                        "cuMemAlloc_v2 of {} was refused after {ms} ms: {}",
                        HumanBytes(bytes),
                        driver.describe(code)
                    ))
                }
            }
        }
    }
    Ok(())
}
