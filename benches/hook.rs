//! The hook's fast path against the fake driver: a `cuMemAlloc_v2` + `cuMemFree_v2` pair (1 MiB, packed;
//! 4 MiB, whole pages) through libvramcap.so, beside the same pair called on the fake directly, from 1 to
//! 64 threads.
//!
//! The fake runs in bench mode (`FAKECUDA_BENCH=1`: no bookkeeping, no locks, each thread reusing a freed
//! block at once as the real driver does), so the difference between
//! the two is what the hooks add: the current-device query, the ledger's reserve and commit, the pointer
//! record, and the release on free. Times are CPU time per call (summed over threads), so the figure stays
//! comparable when there are more threads than cores.
//!
//! The capped process publishes its figures in the shared segment from a background thread, never from
//! the hook; `VRAMCAP_BENCH_SEGMENT=off cargo bench --bench hook` runs the same with no segment, to show
//! that publishing adds nothing to the hook. Build the libraries first: `cargo build --release`.

#[path = "../tests/common/built.rs"]
mod built;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use libloading::{Library, Symbol};
use std::path::PathBuf;
use std::sync::{Arc, Barrier};
use std::time::Duration;

type Alloc = unsafe extern "C" fn(*mut u64, usize) -> i32;
type Free = unsafe extern "C" fn(u64) -> i32;
type Init = unsafe extern "C" fn(u32) -> i32;
type Retain = unsafe extern "C" fn(*mut usize, i32) -> i32;
type SetCurrent = unsafe extern "C" fn(usize) -> i32;

struct Pair {
    alloc: Alloc,
    free: Free,
}

/// The fake driver and libvramcap.so that `cargo build --release` built (the bench builds nothing).
fn artifacts() -> (PathBuf, PathBuf) {
    (
        built::library("libvramcap_sim.so"),
        built::library("libvramcap.so"),
    )
}

fn cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: writes the calling thread's CPU clock into ts.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// CPU time per call of `iters` alloc+free pairs spread over `threads` threads.
fn run(
    pair: &'static Pair,
    set_current: SetCurrent,
    ctx: usize,
    threads: usize,
    size: usize,
    iters: u64,
) -> Duration {
    let per_thread = iters.div_ceil(threads as u64);
    let start = Arc::new(Barrier::new(threads));
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let start = Arc::clone(&start);
            std::thread::spawn(move || {
                // SAFETY: the fake's (or the hooked) cuCtxSetCurrent with the context retained below.
                unsafe { set_current(ctx) };
                start.wait();
                let t = cpu_ns();
                for _ in 0..per_thread {
                    let mut p = 0u64;
                    // SAFETY: an out-pointer we own; the pointer is freed at once.
                    unsafe {
                        (pair.alloc)(&mut p, size);
                        (pair.free)(p);
                    }
                }
                cpu_ns() - t
            })
        })
        .collect();
    let total: u64 = handles.into_iter().map(|h| h.join().unwrap()).sum();
    // Two calls per pair: report per call.
    Duration::from_nanos(total / 2 * iters / (per_thread * threads as u64).max(1))
}

fn hooks(c: &mut Criterion) {
    let (fake_path, preload_path) = artifacts();
    std::env::set_var("FAKECUDA_BENCH", "1");
    std::env::set_var("VRAMCAP_REAL_LIBCUDA", &fake_path);
    std::env::set_var("VRAMCAP_LIMIT", "1TiB");
    std::env::set_var("FAKECUDA_MEM", "2T");
    std::env::set_var("VRAMCAP_NVML", "off");
    let segment = std::env::var("VRAMCAP_BENCH_SEGMENT").map_or(true, |v| v != "off");
    let shm = format!("/dev/shm/vramcap-bench-hook-{}", std::process::id());
    // A path whose folder does not exist: the segment cannot be opened and is not used.
    std::env::set_var(
        "VRAMCAP_SHM",
        if segment {
            shm.as_str()
        } else {
            "/nonexistent/vramcap"
        },
    );
    // SAFETY: loading our own build artifacts; their initialisers are ours and the fake's.
    let (fake, preload) = unsafe {
        (
            Library::new(&fake_path).unwrap(),
            Library::new(&preload_path).unwrap(),
        )
    };
    let fake: &'static Library = Box::leak(Box::new(fake));
    let preload: &'static Library = Box::leak(Box::new(preload));
    // SAFETY: each symbol's type is its CUDA prototype (see tests/clients/mini_cuda.h).
    let sym = |lib: &'static Library, name: &[u8]| -> *const () {
        // SAFETY: read as an untyped address; typed by the transmutes below.
        let s: Symbol<*const ()> = unsafe { lib.get(name) }.expect("symbol");
        *s
    };
    // SAFETY: as above; function pointers of the stated C types.
    unsafe {
        let init = std::mem::transmute::<*const (), Init>(sym(preload, b"cuInit"));
        let retain =
            std::mem::transmute::<*const (), Retain>(sym(preload, b"cuDevicePrimaryCtxRetain"));
        let set_current =
            std::mem::transmute::<*const (), SetCurrent>(sym(fake, b"cuCtxSetCurrent"));
        assert_eq!(init(0), 0);
        let mut ctx = 0usize;
        assert_eq!(retain(&mut ctx, 0), 0);
        let pair = |lib| Pair {
            alloc: std::mem::transmute::<*const (), Alloc>(sym(lib, b"cuMemAlloc_v2")),
            free: std::mem::transmute::<*const (), Free>(sym(lib, b"cuMemFree_v2")),
        };
        let direct: &'static Pair = Box::leak(Box::new(pair(fake)));
        let hooked: &'static Pair = Box::leak(Box::new(pair(preload)));
        let mut group = c.benchmark_group(if segment {
            "alloc_free_per_call"
        } else {
            "alloc_free_per_call_without_segment"
        });
        group
            .measurement_time(Duration::from_secs(2))
            .warm_up_time(Duration::from_millis(300));
        // 1 MiB is packed into shared pages (charged through the page map); 4 MiB is whole pages.
        let cases = [(1usize, 1usize), (1, 4), (1, 16), (1, 64), (4, 1), (4, 64)];
        for (mib, threads) in cases {
            let id = format!("{mib}MiB/{threads}");
            let size = mib << 20;
            group.bench_with_input(BenchmarkId::new("fake_direct", &id), &threads, |b, &t| {
                b.iter_custom(|iters| run(direct, set_current, ctx, t, size, iters))
            });
            group.bench_with_input(
                BenchmarkId::new("through_vramcap", &id),
                &threads,
                |b, &t| b.iter_custom(|iters| run(hooked, set_current, ctx, t, size, iters)),
            );
        }
        group.finish();
    }
    let _ = std::fs::remove_file(&shm);
}

criterion_group!(benches, hooks);
criterion_main!(benches);
