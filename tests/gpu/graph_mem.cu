// Graph memory and context limits on the real driver, for scripts/gpu-e2e.sh: the same program runs bare
// and under vramcap, and the script compares the two. CUDA runtime API, static cudart (as nvcc links by
// default), built here by scripts/build-gpu-bundle.sh. Prints key=value lines, then `HOLD pid=<pid>` and
// waits (120 s at most) for the file named by $VRAMCAP_E2E_HOLD, so that nvidia-smi can be read from
// outside while the memory is held, then frees it and proves the process still works (works_after=).
//
//   graph-mem explicit N MIB [DEV]  N graphs, each an allocation node of MIB MiB (no free node: the
//                              allocation outlives the graph) and a kernel node that writes every byte of it
//   graph-mem captured N MIB [DEV]  the same, made by stream capture: cudaMallocAsync + the fill kernel
//                              With DEV (not 0), the allocations live on device DEV, mapped for device 0
//                              too, while device 0 stays current and its stream and kernels do the work:
//                              explicit nodes located on DEV, or cudaMallocFromPoolAsync from DEV's pool
//   graph-mem heap MIB [KIB [DEV]]  cudaDeviceSetLimit(cudaLimitMallocHeapSize, MIB MiB), then a kernel
//                              whose 256 threads each malloc KIB KiB (8 unless given), write, check and free
//                              it; with DEV, on device DEV only (device 0 has a context too)
//   graph-mem stack KIB        cudaDeviceSetLimit(cudaLimitStackSize, KIB KiB), then one small kernel
//   graph-mem local KIB        what the driver grows on its own: a kernel with KIB KiB of local memory per
//                              thread (4, 8 or 16) makes the driver grow the stack at launch; then an
//                              allocation that would fit under $VRAMCAP_E2E_CAP_BYTES without the growth
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <unistd.h>
#include <vector>

#define MIB (1ull << 20)

__global__ void fill(unsigned *p, size_t words, unsigned seed) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < words; i += (size_t)gridDim.x * blockDim.x)
    p[i] = (unsigned)i * 0x9E3779B1u + seed;
}

__global__ void check(const unsigned *p, size_t words, unsigned seed, unsigned long long *bad) {
  unsigned long long n = 0;
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < words; i += (size_t)gridDim.x * blockDim.x)
    n += p[i] != (unsigned)i * 0x9E3779B1u + seed;
  if (n) atomicAdd(bad, n);
}

// Each thread mallocs `bytes` from the device heap, writes and reads every word, and frees it.
__global__ void k_malloc(size_t bytes, unsigned *failures, unsigned *mismatches) {
  unsigned *p = (unsigned *)malloc(bytes);
  if (!p) { atomicAdd(failures, 1u); return; }
  size_t words = bytes / 4;
  for (size_t i = 0; i < words; i++) p[i] = (unsigned)i ^ threadIdx.x;
  unsigned bad = 0;
  for (size_t i = 0; i < words; i++) bad += p[i] != ((unsigned)i ^ threadIdx.x);
  if (bad) atomicAdd(mismatches, bad);
  free(p);
}

__global__ void k_small(unsigned *out) { out[blockIdx.x * blockDim.x + threadIdx.x] = blockIdx.x + threadIdx.x; }

// Local memory per thread of about KB KiB (a volatile array indexed by data: it cannot live in registers).
template <int KB> __global__ void k_local(int *out, int n) {
  volatile char buf[KB * 1024];
  for (int i = 0; i < n; i++) buf[(i * 7919) % sizeof(buf)] = (char)i;
  out[blockIdx.x * blockDim.x + threadIdx.x] = buf[n % sizeof(buf)];
}

static unsigned long long *bads[8];  // the check kernel's counter, one a device (no peer access needed)

static unsigned long long *bad_here() {
  int d = 0;
  cudaGetDevice(&d);
  return bads[d & 7];
}

static void hold() {
  printf("HOLD pid=%d\n", getpid());
  fflush(stdout);
  const char *path = getenv("VRAMCAP_E2E_HOLD");
  for (int i = 0; path && *path && i < 6000 && access(path, F_OK) != 0; i++) usleep(20000);
}

// Whether [p, p+bytes) holds fill's pattern for `seed` (checked on the device).
static int verify(const void *p, size_t bytes, unsigned seed, cudaStream_t s) {
  unsigned long long n = ~0ull, *bad = bad_here();
  if (!bad || cudaMemsetAsync(bad, 0, sizeof *bad, s) != cudaSuccess) return 0;
  check<<<1024, 256, 0, s>>>((const unsigned *)p, bytes / 4, seed, bad);
  if (cudaMemcpyAsync(&n, bad, sizeof n, cudaMemcpyDeviceToHost, s) != cudaSuccess) return 0;
  return cudaStreamSynchronize(s) == cudaSuccess && n == 0;
}

// A new 64 MiB allocation, written and checked by kernels.
static int works_after() {
  cudaGetLastError();
  void *p = nullptr;
  if (cudaMalloc(&p, 64 * MIB) != cudaSuccess) return 0;
  fill<<<256, 256>>>((unsigned *)p, 64 * MIB / 4, 77);
  int ok = cudaGetLastError() == cudaSuccess && verify(p, 64 * MIB, 77, 0);
  cudaFree(p);
  return ok;
}

static void meminfo(const char *tag) {
  size_t fr = 0, total = 0;
  cudaMemGetInfo(&fr, &total);
  printf("%s_free_mib=%zu\n%s_total_mib=%zu\n", tag, fr >> 20, tag, total >> 20);
}

// Device DEV's context and check counter, device 0 staying current; whether device 0 can map DEV's memory.
static int use_device(int dev) {
  if (dev == 0) return 1;
  int count = 0, peer = 0;
  cudaGetDeviceCount(&count);
  if (dev < 0 || dev >= count || dev > 7) {
    printf("no_device=%d\n", dev);
    return 0;
  }
  cudaDeviceCanAccessPeer(&peer, 0, dev);
  cudaSetDevice(dev);
  cudaError_t r = cudaFree(0);
  if (r == cudaSuccess) r = cudaMalloc(&bads[dev], sizeof *bads[dev]);
  cudaSetDevice(0);
  printf("dev=%d\ndev_init=%d\npeer_access=%d\n", dev, (int)r, peer);
  return r == cudaSuccess;
}

// works_after, on device DEV (then device 0 is current again).
static int works_after_on(int dev) {
  cudaSetDevice(dev);
  int ok = works_after();
  cudaSetDevice(0);
  return ok;
}

struct Graph {
  cudaGraph_t g = nullptr;
  cudaGraphExec_t e = nullptr;
  void *p = nullptr;
  unsigned seed = 0;
};

static void destroy(Graph &x) {
  if (x.e) cudaGraphExecDestroy(x.e);
  if (x.g) cudaGraphDestroy(x.g);
  x.e = nullptr;
  x.g = nullptr;
}

static int graphs(bool captured, int n, size_t mib, int dev) {
  const size_t bytes = mib * MIB;
  size_t words = bytes / 4;
  if (!use_device(dev)) return 1;
  cudaStream_t s;
  cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking);
  // An allocation on another device is mapped for device 0, whose kernels write and check it.
  cudaMemAccessDesc peer = {};
  peer.location.type = cudaMemLocationTypeDevice;
  peer.location.id = 0;
  peer.flags = cudaMemAccessFlagsProtReadWrite;
  cudaMemPool_t pool = nullptr;
  if (captured && dev != 0) {
    cudaError_t r = cudaDeviceGetDefaultMemPool(&pool, dev);
    // A captured allocation node records the pool's peer access at capture.
    if (r == cudaSuccess) r = cudaMemPoolSetAccess(pool, &peer, 1);
    printf("pool_access=%d\n", (int)r);
  }
  meminfo("start");
  std::vector<Graph> launched;
  int capture_errors = 0;
  cudaError_t err = cudaSuccess;
  const char *where = "none";
  for (int i = 0; i < n; i++) {
    Graph x;
    x.seed = 1000u + 17u * i;
    cudaError_t r;
    if (!captured) {
      cudaGraphCreate(&x.g, 0);
      cudaMemAllocNodeParams ap;
      memset(&ap, 0, sizeof ap);
      ap.poolProps.allocType = cudaMemAllocationTypePinned;
      ap.poolProps.location.type = cudaMemLocationTypeDevice;
      ap.poolProps.location.id = dev;
      ap.bytesize = bytes;
      if (dev != 0) {
        ap.accessDescs = &peer;
        ap.accessDescCount = 1;
      }
      cudaGraphNode_t a, k;
      r = cudaGraphAddMemAllocNode(&a, x.g, nullptr, 0, &ap);
      if (r != cudaSuccess) { err = r; where = "add_alloc_node"; destroy(x); break; }
      x.p = ap.dptr;
      void *args[] = {&x.p, &words, &x.seed};
      cudaKernelNodeParams kp = {};
      kp.func = (void *)fill;
      kp.gridDim = dim3(1024);
      kp.blockDim = dim3(256);
      kp.kernelParams = args;
      r = cudaGraphAddKernelNode(&k, x.g, &a, 1, &kp);
      if (r != cudaSuccess) { err = r; where = "add_kernel_node"; destroy(x); break; }
    } else {
      r = cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal);
      if (r != cudaSuccess) { err = r; where = "begin_capture"; capture_errors++; break; }
      cudaError_t ra = pool ? cudaMallocFromPoolAsync(&x.p, bytes, pool, s) : cudaMallocAsync(&x.p, bytes, s);
      if (ra == cudaSuccess) fill<<<1024, 256, 0, s>>>((unsigned *)x.p, words, x.seed);
      cudaError_t re = cudaStreamEndCapture(s, &x.g);
      if (re != cudaSuccess || !x.g) capture_errors++;
      if (ra != cudaSuccess || re != cudaSuccess || !x.g) {
        err = ra != cudaSuccess ? ra : re != cudaSuccess ? re : cudaErrorUnknown;
        where = ra != cudaSuccess ? "capture_malloc" : "end_capture";
        cudaGetLastError();
        destroy(x);
        break;
      }
    }
    r = cudaGraphInstantiate(&x.e, x.g, 0);
    if (r != cudaSuccess) { err = r; where = "instantiate"; cudaGetLastError(); destroy(x); break; }
    r = cudaGraphLaunch(x.e, s);
    if (r != cudaSuccess) { err = r; where = "launch"; cudaGetLastError(); destroy(x); break; }
    r = cudaStreamSynchronize(s);
    if (r != cudaSuccess) { err = r; where = "sync"; cudaGetLastError(); destroy(x); break; }
    launched.push_back(x);
  }
  printf("launched=%zu\nerror=%d\nerror_name=%s\nfailed_at=%s\ncapture_errors=%d\n", launched.size(), (int)err,
         cudaGetErrorName(err), where, capture_errors);
  int ok = 1;
  for (Graph &x : launched) ok &= verify(x.p, bytes, x.seed, s);
  printf("data_ok=%d\n", ok);
  unsigned long long reserved = 0, used = 0;  // cudaDeviceGetGraphMemAttribute writes a uint64
  cudaDeviceGetGraphMemAttribute(dev, cudaGraphMemAttrReservedMemCurrent, &reserved);
  cudaDeviceGetGraphMemAttribute(dev, cudaGraphMemAttrUsedMemCurrent, &used);
  printf("graph_reserved_mib=%llu\ngraph_used_mib=%llu\n", (unsigned long long)reserved >> 20,
         (unsigned long long)used >> 20);
  meminfo("held");
  if (dev != 0) {
    cudaSetDevice(dev);
    meminfo("held_dev");
    cudaSetDevice(0);
  }
  hold();
  cudaError_t freed = cudaSuccess;
  for (Graph &x : launched) {
    cudaError_t r = cudaFree(x.p);
    if (freed == cudaSuccess) freed = r;
    destroy(x);
  }
  cudaError_t trim = cudaDeviceGraphMemTrim(dev);
  printf("freed=%d\ntrim=%d\n", (int)freed, (int)trim);
  printf("works_after=%d\n", works_after());
  if (dev != 0) printf("works_after_dev=%d\n", works_after_on(dev));
  cudaStreamDestroy(s);
  return 0;
}

static int heap(size_t mib, size_t kib, int dev) {
  size_t before = 0, now = 0, before0 = 0, now0 = 0;
  if (!use_device(dev)) return 1;
  cudaDeviceGetLimit(&before0, cudaLimitMallocHeapSize);
  cudaSetDevice(dev);
  cudaDeviceGetLimit(&before, cudaLimitMallocHeapSize);
  meminfo("start");
  cudaError_t set = cudaDeviceSetLimit(cudaLimitMallocHeapSize, mib * MIB);
  cudaGetLastError();
  cudaDeviceGetLimit(&now, cudaLimitMallocHeapSize);
  printf("set=%d\nset_name=%s\nheap_before=%zu\nheap_now=%zu\n", (int)set, cudaGetErrorName(set), before, now);
  unsigned *counters = nullptr;
  cudaMalloc(&counters, 2 * sizeof(unsigned));
  cudaMemset(counters, 0, 2 * sizeof(unsigned));
  k_malloc<<<1, 256>>>(kib << 10, counters, counters + 1);
  cudaError_t k = cudaGetLastError();
  if (k == cudaSuccess) k = cudaDeviceSynchronize();
  unsigned c[2] = {~0u, ~0u};
  cudaMemcpy(c, counters, sizeof c, cudaMemcpyDeviceToHost);
  printf("kernel=%d\nkernel_name=%s\ndevice_malloc_failures=%u\ndevice_mismatches=%u\nper_thread_kib=%zu\n", (int)k,
         cudaGetErrorName(k), c[0], c[1], kib);
  // Device 0's own heap, which a limit set on another device leaves alone.
  if (dev != 0) {
    cudaSetDevice(0);
    cudaDeviceGetLimit(&now0, cudaLimitMallocHeapSize);
    cudaSetDevice(dev);
    printf("heap0_before=%zu\nheap0_now=%zu\n", before0, now0);
  }
  meminfo("held");
  hold();
  cudaFree(counters);
  printf("works_after=%d\n", works_after());
  if (dev != 0) printf("works_after_dev0=%d\n", works_after_on(0));
  return 0;
}

static int stack(size_t kib) {
  size_t before = 0, now = 0;
  cudaDeviceGetLimit(&before, cudaLimitStackSize);
  meminfo("start");
  cudaError_t set = cudaDeviceSetLimit(cudaLimitStackSize, kib << 10);
  cudaGetLastError();
  cudaDeviceGetLimit(&now, cudaLimitStackSize);
  printf("set=%d\nset_name=%s\nstack_before=%zu\nstack_now=%zu\n", (int)set, cudaGetErrorName(set), before, now);
  unsigned *out = nullptr;
  cudaMalloc(&out, 1024 * 256 * sizeof(unsigned));
  k_small<<<1024, 256>>>(out);
  cudaError_t k = cudaGetLastError();
  if (k == cudaSuccess) k = cudaDeviceSynchronize();
  unsigned last = 0;
  cudaMemcpy(&last, out + 1024 * 256 - 1, sizeof last, cudaMemcpyDeviceToHost);
  printf("kernel=%d\nkernel_name=%s\nkernel_ok=%d\n", (int)k, cudaGetErrorName(k), (int)(last == 1023u + 255u));
  meminfo("held");
  hold();
  cudaFree(out);
  printf("works_after=%d\n", works_after());
  return 0;
}

template <int KB> static cudaError_t launch_local(int *out, int blocks, size_t *local_bytes) {
  cudaFuncAttributes fa;
  memset(&fa, 0, sizeof fa);
  cudaFuncGetAttributes(&fa, k_local<KB>);
  *local_bytes = fa.localSizeBytes;
  k_local<KB><<<blocks, 256>>>(out, 1000);
  cudaError_t k = cudaGetLastError();
  return k == cudaSuccess ? cudaDeviceSynchronize() : k;
}

static int local(int kib) {
  const unsigned long long cap = strtoull(getenv("VRAMCAP_E2E_CAP_BYTES") ? getenv("VRAMCAP_E2E_CAP_BYTES") : "0", 0, 10);
  int sms = 0, tpm = 0;
  cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0);
  cudaDeviceGetAttribute(&tpm, cudaDevAttrMaxThreadsPerMultiProcessor, 0);
  size_t before = 0, after = 0, local_bytes = 0;
  cudaDeviceGetLimit(&before, cudaLimitStackSize);
  void *first = nullptr;
  cudaError_t a = cudaMalloc(&first, 256 * MIB);
  if (a == cudaSuccess) a = cudaMemset(first, 1, 256 * MIB);
  printf("sms=%d\nthreads_per_sm=%d\ncap_mib=%llu\nfirst_256mib=%d\n", sms, tpm, cap >> 20, (int)a);
  meminfo("before");
  int *out = (int *)first;  // the kernel's output goes into the first 256 MiB (sms*4*256 ints)
  cudaError_t k = kib <= 4 ? launch_local<4>(out, sms * 4, &local_bytes)
                : kib <= 8 ? launch_local<8>(out, sms * 4, &local_bytes)
                           : launch_local<16>(out, sms * 4, &local_bytes);
  cudaDeviceGetLimit(&after, cudaLimitStackSize);
  unsigned long long growth = after > before ? (unsigned long long)(after - before) * sms * tpm : 0;
  printf("kernel=%d\nkernel_name=%s\nkernel_local_bytes=%zu\nstack_before=%zu\nstack_after=%zu\ngrowth_mib=%llu\n",
         (int)k, cudaGetErrorName(k), local_bytes, before, after, growth >> 20);
  sleep(1);
  size_t fr = 0, total = 0;
  cudaMemGetInfo(&fr, &total);
  printf("free_after=%zu\ntotal_after=%zu\n", fr >> 20, total >> 20);
  // What would have fitted under the cap without the growth: cap - the 256 MiB - a context estimate.
  const unsigned long long ctx = 600 * MIB, two = 2 * MIB;
  void *big = nullptr;
  if (cap > 256 * MIB + ctx + two) {
    unsigned long long size = (cap - 256 * MIB - ctx) / two * two;
    cudaError_t r = cudaMalloc(&big, size);
    cudaGetLastError();
    if (r != cudaSuccess) big = nullptr;
    printf("alloc_after_growth=%d\nalloc_after_growth_name=%s\nalloc_after_growth_mib=%llu\n", (int)r,
           cudaGetErrorName(r), size >> 20);
    // Information: what still fits beside the growth (with 128 MiB to spare), so the refusal above is the
    // growth's and not a miscount of everything else.
    if (r != cudaSuccess && cap > 256 * MIB + ctx + growth + 128 * MIB + two) {
      unsigned long long within = (cap - 256 * MIB - ctx - growth - 128 * MIB) / two * two;
      void *w = nullptr;
      cudaError_t rw = cudaMalloc(&w, within);
      cudaGetLastError();
      printf("alloc_within=%d\nalloc_within_mib=%llu\n", (int)rw, within >> 20);
      if (rw == cudaSuccess) cudaFree(w);
    }
  } else {
    printf("alloc_after_growth=skipped\n");
  }
  meminfo("held");
  hold();
  if (big) cudaFree(big);
  cudaFree(first);
  printf("works_after=%d\n", works_after());
  return 0;
}

static int usage() {
  fprintf(stderr, "usage: graph-mem explicit N MIB [DEV] | captured N MIB [DEV] | heap MIB [KIB [DEV]] | stack KIB |"
                  " local KIB\n");
  return 2;
}

int main(int argc, char **argv) {
  setvbuf(stdout, nullptr, _IOLBF, 0);
  if (argc < 3) return usage();
  cudaError_t init = cudaFree(0);
  if (init == cudaSuccess) init = cudaMalloc(&bads[0], sizeof *bads[0]);
  printf("mode=%s\ninit=%d\n", argv[1], (int)init);
  if (init != cudaSuccess) return 1;
  const char *mode = argv[1];
  const int dev = argc > 4 ? atoi(argv[4]) : 0;
  const bool graph_args = argc == 4 || argc == 5;
  if (!strcmp(mode, "explicit") && graph_args) return graphs(false, atoi(argv[2]), strtoull(argv[3], 0, 10), dev);
  if (!strcmp(mode, "captured") && graph_args) return graphs(true, atoi(argv[2]), strtoull(argv[3], 0, 10), dev);
  if (!strcmp(mode, "heap")) return heap(strtoull(argv[2], 0, 10), argc > 3 ? strtoull(argv[3], 0, 10) : 8, dev);
  if (!strcmp(mode, "stack")) return stack(strtoull(argv[2], 0, 10));
  if (!strcmp(mode, "local")) return local(atoi(argv[2]));
  return usage();
}
