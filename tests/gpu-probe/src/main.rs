//! Synthetic allocation patterns and driver micro-benchmarks for `scripts/gpu-e2e.sh`, through cudarc's
//! driver bindings (which reach libcuda by `dlopen` + `dlsym`, one of the paths vramcap intercepts).
//!
//! - `gpu-probe pattern NAME HOLD_FILE`: allocate with one pattern until the driver (or vramcap) refuses,
//!   write every byte of every buffer with a kernel and verify it on the device, print the figures, then
//!   hold the memory until HOLD_FILE exists so the script can read nvidia-smi from outside.
//!   NAME: small4k, small64k, odd, large, mixed, async, vmm.
//! - `gpu-probe bench-alloc N`: microseconds per 1 MiB cuMemAlloc+cuMemFree pair (fastest of 9 rounds of N).
//! - `gpu-probe bench-launch-ab N`: in one process, alternating rounds of empty-kernel launches through
//!   the `cuLaunchKernel` a program gets and through libcuda's own.
//! - `gpu-probe bench-graph-ab N`: the same for `cuGraphLaunch` of a graph without allocation nodes (one
//!   empty-kernel node), N launches and one stream synchronize a round.
//! - `gpu-probe bench-alloc-ab N [ROUNDS]`: in one process, alternating rounds of N 1 MiB alloc+free pairs
//!   through the pointers a program gets (vramcap's, when preloaded) and through libcuda's own.

use cudarc::driver::sys::{self, CUdeviceptr, CUresult};
use std::ffi::c_void;
use std::time::Instant;

/// fill: w[i] = i * 0x9E3779B1 + seed; check: counts mismatching words and sums them; empty: nothing.
const PTX: &str = r#"
.version 8.0
.target sm_80
.address_size 64

.visible .entry fill(.param .u64 p, .param .u64 n, .param .u32 seed)
{
  .reg .pred %q;
  .reg .b32 %r<8>;
  .reg .b64 %d<10>;
  ld.param.u64 %d1, [p];
  ld.param.u64 %d2, [n];
  ld.param.u32 %r1, [seed];
  cvta.to.global.u64 %d1, %d1;
  mov.u32 %r2, %ctaid.x;
  mov.u32 %r3, %ntid.x;
  mov.u32 %r4, %tid.x;
  mul.wide.u32 %d3, %r2, %r3;
  cvt.u64.u32 %d4, %r4;
  add.u64 %d5, %d3, %d4;
  mov.u32 %r5, %nctaid.x;
  mul.wide.u32 %d6, %r5, %r3;
FILL_LOOP:
  setp.ge.u64 %q, %d5, %d2;
  @%q bra FILL_DONE;
  cvt.u32.u64 %r6, %d5;
  mad.lo.u32 %r7, %r6, 0x9E3779B1, %r1;
  shl.b64 %d7, %d5, 2;
  add.u64 %d8, %d1, %d7;
  st.global.u32 [%d8], %r7;
  add.u64 %d5, %d5, %d6;
  bra FILL_LOOP;
FILL_DONE:
  ret;
}

.visible .entry check(.param .u64 p, .param .u64 n, .param .u32 seed, .param .u64 out)
{
  .reg .pred %q<2>;
  .reg .b32 %r<9>;
  .reg .b64 %d<16>;
  ld.param.u64 %d1, [p];
  ld.param.u64 %d2, [n];
  ld.param.u32 %r1, [seed];
  ld.param.u64 %d9, [out];
  cvta.to.global.u64 %d1, %d1;
  cvta.to.global.u64 %d9, %d9;
  mov.u32 %r2, %ctaid.x;
  mov.u32 %r3, %ntid.x;
  mov.u32 %r4, %tid.x;
  mul.wide.u32 %d3, %r2, %r3;
  cvt.u64.u32 %d4, %r4;
  add.u64 %d5, %d3, %d4;
  mov.u32 %r5, %nctaid.x;
  mul.wide.u32 %d6, %r5, %r3;
  mov.u64 %d10, 0;
  mov.u64 %d11, 0;
CHECK_LOOP:
  setp.ge.u64 %q0, %d5, %d2;
  @%q0 bra CHECK_DONE;
  cvt.u32.u64 %r6, %d5;
  mad.lo.u32 %r7, %r6, 0x9E3779B1, %r1;
  shl.b64 %d7, %d5, 2;
  add.u64 %d8, %d1, %d7;
  ld.global.u32 %r8, [%d8];
  setp.ne.u32 %q1, %r8, %r7;
  selp.u64 %d12, 1, 0, %q1;
  add.u64 %d10, %d10, %d12;
  cvt.u64.u32 %d13, %r8;
  add.u64 %d11, %d11, %d13;
  add.u64 %d5, %d5, %d6;
  bra CHECK_LOOP;
CHECK_DONE:
  atom.global.add.u64 %d14, [%d9], %d10;
  atom.global.add.u64 %d15, [%d9+8], %d11;
  ret;
}

.visible .entry empty()
{
  ret;
}
"#;

fn ok(r: CUresult, what: &str) {
    if r != CUresult::CUDA_SUCCESS {
        eprintln!("gpu-probe: {what} failed: {r:?}");
        std::process::exit(1);
    }
}

struct Gpu {
    fill: sys::CUfunction,
    check: sys::CUfunction,
    empty: sys::CUfunction,
    stream: sys::CUstream,
}

/// Initialises the driver and makes device 0's primary context current.
fn init_context() {
    // SAFETY: plain driver calls with out-pointers we own.
    unsafe {
        ok(sys::cuInit(0), "cuInit");
        let mut dev = 0;
        ok(sys::cuDeviceGet(&mut dev, 0), "cuDeviceGet");
        let mut ctx = std::ptr::null_mut();
        ok(
            sys::cuDevicePrimaryCtxRetain(&mut ctx, dev),
            "cuDevicePrimaryCtxRetain",
        );
        ok(sys::cuCtxSetCurrent(ctx), "cuCtxSetCurrent");
    }
}

fn init() -> Gpu {
    init_context();
    // SAFETY (whole function): plain driver calls with out-pointers we own.
    unsafe {
        let ptx = std::ffi::CString::new(PTX).unwrap();
        let mut module = std::ptr::null_mut();
        ok(
            sys::cuModuleLoadData(&mut module, ptx.as_ptr().cast()),
            "cuModuleLoadData",
        );
        let get = |name: &std::ffi::CStr| {
            let mut f = std::ptr::null_mut();
            ok(
                sys::cuModuleGetFunction(&mut f, module, name.as_ptr()),
                "cuModuleGetFunction",
            );
            f
        };
        let (fill, check, empty) = (get(c"fill"), get(c"check"), get(c"empty"));
        Gpu {
            fill,
            check,
            empty,
            stream: std::ptr::null_mut(),
        }
    }
}

impl Gpu {
    fn launch(&self, f: sys::CUfunction, blocks: u32, args: &mut [*mut c_void]) -> CUresult {
        // SAFETY: args point at live locals of the kernel's parameter types.
        unsafe {
            sys::cuLaunchKernel(
                f,
                blocks,
                1,
                1,
                256,
                1,
                1,
                0,
                self.stream,
                args.as_mut_ptr(),
                std::ptr::null_mut(),
            )
        }
    }

    /// Writes every whole 4-byte word of [ptr, ptr+bytes), then adds to `out` the number of words that do
    /// not read back as written and the sum of the words read, both computed on the device.
    fn fill_and_check(&self, mut ptr: CUdeviceptr, bytes: u64, seed: u32, out: CUdeviceptr) {
        let mut n = bytes / 4;
        let blocks = (n.div_ceil(256)).clamp(1, 4096) as u32;
        let mut seed = seed;
        let mut out = out;
        ok(
            self.launch(
                self.fill,
                blocks,
                &mut [
                    (&mut ptr as *mut u64).cast(),
                    (&mut n as *mut u64).cast(),
                    (&mut seed as *mut u32).cast(),
                ],
            ),
            "launch fill",
        );
        ok(
            self.launch(
                self.check,
                blocks,
                &mut [
                    (&mut ptr as *mut u64).cast(),
                    (&mut n as *mut u64).cast(),
                    (&mut seed as *mut u32).cast(),
                    (&mut out as *mut u64).cast(),
                ],
            ),
            "launch check",
        );
    }
}

fn expected_sum(words: u64, seed: u32) -> u64 {
    (0..words)
        .map(|i| u64::from((i as u32).wrapping_mul(0x9E37_79B1).wrapping_add(seed)))
        .sum()
}

enum Buf {
    Linear(CUdeviceptr),
    Async(CUdeviceptr),
    Vmm(CUdeviceptr, u64),
}

fn alloc_vmm(size: u64) -> Result<Buf, CUresult> {
    // SAFETY: standard VMM sequence with out-pointers we own.
    unsafe {
        let mut prop: sys::CUmemAllocationProp = std::mem::zeroed();
        prop.type_ = sys::CUmemAllocationType::CU_MEM_ALLOCATION_TYPE_PINNED;
        prop.location.type_ = sys::CUmemLocationType::CU_MEM_LOCATION_TYPE_DEVICE;
        prop.location.id = 0;
        let mut h = 0;
        let r = sys::cuMemCreate(&mut h, size as usize, &prop, 0);
        if r != CUresult::CUDA_SUCCESS {
            return Err(r);
        }
        let mut va = 0;
        ok(
            sys::cuMemAddressReserve(&mut va, size as usize, 0, 0, 0),
            "cuMemAddressReserve",
        );
        ok(sys::cuMemMap(va, size as usize, 0, h, 0), "cuMemMap");
        let access = sys::CUmemAccessDesc {
            location: prop.location,
            flags: sys::CUmemAccess_flags::CU_MEM_ACCESS_FLAGS_PROT_READWRITE,
        };
        ok(
            sys::cuMemSetAccess(va, size as usize, &access, 1),
            "cuMemSetAccess",
        );
        // Released at once, as CUDA's samples do: the mapping keeps the memory alive.
        ok(sys::cuMemRelease(h), "cuMemRelease");
        Ok(Buf::Vmm(va, size))
    }
}

fn pattern(name: &str, hold: &str) {
    let gpu = init();
    let sizes: Box<dyn Fn(usize) -> u64> = match name {
        "small4k" => Box::new(|_| 4 << 10),
        "small64k" => Box::new(|_| 64 << 10),
        "odd" => Box::new(|_| (2 << 20) + 1),
        "large" => Box::new(|_| 256 << 20),
        "mixed" => Box::new(|i| {
            [
                4 << 10,
                3 << 20,
                64 << 10,
                (10 << 20) + 7,
                1 << 20,
                40 << 20,
            ][i % 6]
        }),
        "async" => Box::new(|i| [(8 << 20) + 5, 32 << 20, 1 << 20][i % 3]),
        "vmm" => Box::new(|_| 64 << 20),
        _ => {
            eprintln!("gpu-probe: unknown pattern {name}");
            std::process::exit(2);
        }
    };
    let mut out: CUdeviceptr = 0;
    // SAFETY: a 16-byte result buffer we free at exit.
    unsafe { ok(sys::cuMemAlloc_v2(&mut out, 16), "result buffer") };
    let mut bufs = Vec::new();
    let mut total = 0u64;
    let refused = loop {
        let size = sizes(bufs.len());
        let mut ptr = 0;
        // SAFETY: out-pointer we own; the stream is the legacy default one.
        let r = match name {
            "async" => unsafe { sys::cuMemAllocAsync(&mut ptr, size as usize, gpu.stream) },
            "vmm" => match alloc_vmm(size) {
                Ok(b) => {
                    bufs.push((b, size));
                    total += size;
                    continue;
                }
                Err(r) => r,
            },
            _ => unsafe { sys::cuMemAlloc_v2(&mut ptr, size as usize) },
        };
        if r != CUresult::CUDA_SUCCESS {
            break r;
        }
        bufs.push((
            if name == "async" {
                Buf::Async(ptr)
            } else {
                Buf::Linear(ptr)
            },
            size,
        ));
        total += size;
        if bufs.len() > 2_000_000 {
            break CUresult::CUDA_SUCCESS;
        }
    };
    let mut expected = 0u64;
    // SAFETY: clears the result buffer.
    unsafe { ok(sys::cuMemsetD8_v2(out, 0, 16), "clear results") };
    for (i, (b, size)) in bufs.iter().enumerate() {
        let ptr = match b {
            Buf::Linear(p) | Buf::Async(p) | Buf::Vmm(p, _) => *p,
        };
        let seed = i as u32 * 7919;
        gpu.fill_and_check(ptr, *size, seed, out);
        expected = expected.wrapping_add(expected_sum(size / 4, seed));
    }
    let mut results = [0u64; 2];
    // SAFETY: copies the 16-byte result buffer into our array after the kernels finished.
    unsafe {
        ok(sys::cuCtxSynchronize(), "synchronize");
        ok(
            sys::cuMemcpyDtoH_v2(results.as_mut_ptr().cast(), out, 16),
            "read results",
        );
    }
    let checksum_ok = results[0] == 0 && results[1] == expected;
    println!(
        "pattern={name} buffers={} bytes={total} refused={} mismatches={} checksum_ok={}",
        bufs.len(),
        refused as i32,
        results[0],
        u8::from(checksum_ok)
    );
    println!("HOLD pid={}", std::process::id());
    let start = Instant::now();
    while !std::path::Path::new(hold).exists() && start.elapsed().as_secs() < 60 {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    for (b, _) in bufs {
        // SAFETY: frees what we allocated, each once.
        unsafe {
            match b {
                Buf::Linear(p) => sys::cuMemFree_v2(p),
                Buf::Async(p) => sys::cuMemFreeAsync(p, gpu.stream),
                Buf::Vmm(va, size) => {
                    sys::cuMemUnmap(va, size as usize);
                    sys::cuMemAddressFree(va, size as usize)
                }
            };
        }
    }
}

/// Which library's code `dlsym(libcuda, name)` hands out (through vramcap's dlsym when preloaded).
fn resolved_in(name: &std::ffi::CStr) -> String {
    // SAFETY: dlopen/dlsym/dladdr with NUL-terminated names; the strings read are the loader's own.
    unsafe {
        let h = libc::dlopen(c"libcuda.so.1".as_ptr(), libc::RTLD_NOW);
        let p = libc::dlsym(h, name.as_ptr());
        let mut info: libc::Dl_info = std::mem::zeroed();
        if p.is_null() || libc::dladdr(p, &mut info) == 0 || info.dli_fname.is_null() {
            return "none".into();
        }
        let file = std::ffi::CStr::from_ptr(info.dli_fname)
            .to_string_lossy()
            .into_owned();
        file.rsplit('/').next().unwrap_or("?").to_string()
    }
}

/// Medians of an A/B comparison: each side's median round, and the median ratio of rounds run next to
/// each other (what drifts over seconds cancels in those).
struct AbMedians {
    a: f64,
    b: f64,
    ratio: f64,
}

/// Runs `a` and `b` (each returns microseconds per operation of one round) in alternating order, ABBA, so
/// neither side always runs first.
fn ab_medians(rounds: usize, mut a: impl FnMut() -> f64, mut b: impl FnMut() -> f64) -> AbMedians {
    a();
    b();
    let (mut ta, mut tb) = (Vec::new(), Vec::new());
    for i in 0..rounds {
        if i % 2 == 0 {
            ta.push(a());
            tb.push(b());
        } else {
            tb.push(b());
            ta.push(a());
        }
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let ratios = ta.iter().zip(&tb).map(|(x, y)| x / y).collect();
    AbMedians {
        ratio: median(ratios),
        a: median(ta),
        b: median(tb),
    }
}

type AllocFn = unsafe extern "C" fn(*mut CUdeviceptr, usize) -> CUresult;
type FreeFn = unsafe extern "C" fn(CUdeviceptr) -> CUresult;

/// `cuMemAlloc_v2`/`cuMemFree_v2` as a program gets them (`dlsym` on libcuda: vramcap's wrappers when it is
/// preloaded) and as libcuda defines them (glibc's own `dlsym`, found with `dlvsym`, which vramcap does not
/// interpose).
fn alloc_pairs() -> ((AllocFn, FreeFn), (AllocFn, FreeFn)) {
    let (alloc_seen, alloc_own) = seen_and_own(c"cuMemAlloc_v2");
    let (free_seen, free_own) = seen_and_own(c"cuMemFree_v2");
    // SAFETY: the pointers are cuMemAlloc_v2/cuMemFree_v2 (or vramcap's wrappers of them), of these types.
    unsafe {
        (
            (
                std::mem::transmute::<*mut c_void, AllocFn>(alloc_seen),
                std::mem::transmute::<*mut c_void, FreeFn>(free_seen),
            ),
            (
                std::mem::transmute::<*mut c_void, AllocFn>(alloc_own),
                std::mem::transmute::<*mut c_void, FreeFn>(free_own),
            ),
        )
    }
}

/// In one process, `rounds` alternating rounds of `n` 1 MiB alloc+free pairs through vramcap's wrappers and
/// straight into libcuda: both sides share the context, the GPU and the machine's moment, so the ratio is
/// not at the mercy of process-to-process noise (processes on the lent H100 fall into a fast or a slow
/// mode at random, 60-70 or 80-95 us a pair). Prints the median round of each and the median ratio of
/// neighbouring rounds.
fn bench_alloc_ab(n: u32, rounds: usize) {
    init_context();
    let (hooked, direct) = alloc_pairs();
    let round = |(alloc, free): (AllocFn, FreeFn)| {
        let t = Instant::now();
        for _ in 0..n {
            let mut p = 0;
            // SAFETY: an out-pointer we own; freed at once by the matching free.
            unsafe {
                ok(alloc(&mut p, 1 << 20), "alloc");
                ok(free(p), "free");
            }
        }
        t.elapsed().as_secs_f64() * 1e6 / f64::from(n)
    };
    let m = ab_medians(rounds, || round(hooked), || round(direct));
    let wrapped = hooked.0 as usize != direct.0 as usize;
    println!(
        "ab_hooked_us={:.4} ab_direct_us={:.4} ab_ratio={:.4} wrapped={}",
        m.a,
        m.b,
        m.ratio,
        u8::from(wrapped)
    );
}

type LaunchFn = unsafe extern "C" fn(
    sys::CUfunction,
    u32,
    u32,
    u32,
    u32,
    u32,
    u32,
    u32,
    sys::CUstream,
    *mut *mut c_void,
    *mut *mut c_void,
) -> CUresult;

/// `name` as a program gets it (`dlsym` on libcuda) and as libcuda defines it (glibc's own `dlsym`).
fn seen_and_own(name: &std::ffi::CStr) -> (*mut c_void, *mut c_void) {
    // SAFETY: dlopen/dlsym/dlvsym with NUL-terminated names.
    unsafe {
        let h = libc::dlopen(c"libcuda.so.1".as_ptr(), libc::RTLD_NOW);
        let glibc_dlsym = libc::dlvsym(
            libc::RTLD_DEFAULT,
            c"dlsym".as_ptr(),
            c"GLIBC_2.34".as_ptr(),
        );
        let glibc_dlsym: unsafe extern "C" fn(*mut c_void, *const std::ffi::c_char) -> *mut c_void =
            std::mem::transmute(glibc_dlsym);
        (libc::dlsym(h, name.as_ptr()), glibc_dlsym(h, name.as_ptr()))
    }
}

/// In one process, alternating rounds of empty-kernel launches through the `cuLaunchKernel` a program
/// gets and through libcuda's own: prints the median round of each, their ratio, and whether the two
/// pointers are the same function.
fn bench_launch_ab(n: u32) {
    let gpu = init();
    let (seen, own) = seen_and_own(c"cuLaunchKernel");
    // SAFETY: both are cuLaunchKernel (or vramcap's answer for it), of this C type.
    let (seen_fn, own_fn) = unsafe {
        (
            std::mem::transmute::<*mut c_void, LaunchFn>(seen),
            std::mem::transmute::<*mut c_void, LaunchFn>(own),
        )
    };
    let round = |launch: LaunchFn| {
        let t = Instant::now();
        for _ in 0..n {
            // SAFETY: the empty kernel takes no parameters; one block of one thread on the null stream.
            ok(
                unsafe {
                    launch(
                        gpu.empty,
                        1,
                        1,
                        1,
                        1,
                        1,
                        1,
                        0,
                        std::ptr::null_mut(),
                        std::ptr::null_mut(),
                        std::ptr::null_mut(),
                    )
                },
                "launch",
            );
        }
        // SAFETY: waits for the launches.
        unsafe { ok(sys::cuCtxSynchronize(), "synchronize") };
        t.elapsed().as_secs_f64() * 1e6 / f64::from(n)
    };
    let m = ab_medians(30, || round(seen_fn), || round(own_fn));
    println!(
        "launch_seen_us={:.4} launch_own_us={:.4} launch_ratio={:.4} same_pointer={} launch_resolves_to={}",
        m.a,
        m.b,
        m.ratio,
        u8::from(seen == own),
        resolved_in(c"cuLaunchKernel")
    );
}

type GraphLaunchFn = unsafe extern "C" fn(sys::CUgraphExec, sys::CUstream) -> CUresult;

/// In one process, alternating rounds of `n` launches of one graph without allocation nodes (a single
/// empty-kernel node) through the `cuGraphLaunch` a program gets (vramcap's, when it wraps it) and through
/// libcuda's own, each round followed by one stream synchronize: prints the median round of each, their
/// median ratio, and whether the two pointers are the same function.
fn bench_graph_ab(n: u32) {
    let gpu = init();
    let (seen, own) = seen_and_own(c"cuGraphLaunch");
    // SAFETY: builds, instantiates and launches a graph of one kernel node, with handles we own; the empty
    // kernel takes no parameters; both pointers are cuGraphLaunch (or vramcap's answer for it).
    unsafe {
        let mut stream = std::ptr::null_mut();
        ok(
            sys::cuStreamCreate(
                &mut stream,
                sys::CUstream_flags::CU_STREAM_NON_BLOCKING as u32,
            ),
            "cuStreamCreate",
        );
        let mut graph = std::ptr::null_mut();
        ok(sys::cuGraphCreate(&mut graph, 0), "cuGraphCreate");
        let mut params: sys::CUDA_KERNEL_NODE_PARAMS = std::mem::zeroed();
        params.func = gpu.empty;
        (params.gridDimX, params.gridDimY, params.gridDimZ) = (1, 1, 1);
        (params.blockDimX, params.blockDimY, params.blockDimZ) = (1, 1, 1);
        let mut node = std::ptr::null_mut();
        ok(
            sys::cuGraphAddKernelNode_v2(&mut node, graph, std::ptr::null(), 0, &params),
            "cuGraphAddKernelNode_v2",
        );
        let mut exec = std::ptr::null_mut();
        ok(
            sys::cuGraphInstantiateWithFlags(&mut exec, graph, 0),
            "cuGraphInstantiateWithFlags",
        );
        let (seen_fn, own_fn) = (
            std::mem::transmute::<*mut c_void, GraphLaunchFn>(seen),
            std::mem::transmute::<*mut c_void, GraphLaunchFn>(own),
        );
        let round = |launch: GraphLaunchFn| {
            let t = Instant::now();
            for _ in 0..n {
                ok(launch(exec, stream), "cuGraphLaunch");
            }
            ok(sys::cuStreamSynchronize(stream), "cuStreamSynchronize");
            t.elapsed().as_secs_f64() * 1e6 / f64::from(n)
        };
        let m = ab_medians(30, || round(seen_fn), || round(own_fn));
        println!(
            "graph_seen_us={:.4} graph_own_us={:.4} graph_ratio={:.4} same_pointer={} graph_resolves_to={}",
            m.a,
            m.b,
            m.ratio,
            u8::from(seen == own),
            resolved_in(c"cuGraphLaunch")
        );
        ok(sys::cuGraphExecDestroy(exec), "cuGraphExecDestroy");
        ok(sys::cuGraphDestroy(graph), "cuGraphDestroy");
        ok(sys::cuStreamDestroy_v2(stream), "cuStreamDestroy");
    }
}

/// Microseconds per 1 MiB cuMemAlloc+cuMemFree pair, each process on its own: the fastest of nine rounds
/// (interference on a shared machine only ever adds time) and their median.
fn bench_alloc(n: u32) {
    init_context();
    let round = || {
        let t = Instant::now();
        for _ in 0..n {
            let mut p = 0;
            // SAFETY: out-pointer we own; freed at once.
            unsafe {
                ok(sys::cuMemAlloc_v2(&mut p, 1 << 20), "alloc");
                ok(sys::cuMemFree_v2(p), "free");
            }
        }
        t.elapsed().as_secs_f64() * 1e6 / f64::from(n)
    };
    round();
    let mut rounds: Vec<f64> = (0..9).map(|_| round()).collect();
    rounds.sort_by(f64::total_cmp);
    println!(
        "bench-alloc_us={:.4} bench-alloc_median_us={:.4}",
        rounds[0], rounds[4]
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("pattern") if args.len() == 4 => pattern(&args[2], &args[3]),
        Some("bench-launch-ab") => {
            bench_launch_ab(args.get(2).and_then(|s| s.parse().ok()).unwrap_or(20_000))
        }
        Some("bench-graph-ab") => {
            bench_graph_ab(args.get(2).and_then(|s| s.parse().ok()).unwrap_or(20_000))
        }
        Some("bench-alloc-ab") => {
            let arg =
                |i: usize, default| args.get(i).and_then(|s| s.parse().ok()).unwrap_or(default);
            bench_alloc_ab(arg(2, 2_000) as u32, arg(3, 30))
        }
        Some("bench-alloc") => {
            bench_alloc(args.get(2).and_then(|s| s.parse().ok()).unwrap_or(5_000))
        }
        _ => {
            eprintln!(
                "usage: gpu-probe pattern NAME HOLD_FILE | bench-alloc N | bench-alloc-ab N [ROUNDS] | bench-launch-ab N | bench-graph-ab N"
            );
            std::process::exit(2);
        }
    }
}
