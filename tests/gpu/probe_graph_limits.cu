// Measures, on the real driver, what vramcap's graph and limit handling must know (issue 12):
//  cap.*   which driver calls may be made while a stream is capturing in global mode (from the capturing
//          thread, from it after switching to relaxed mode, from another thread, from another thread in
//          relaxed mode): "<call's rc>/<cuStreamEndCapture's rc>" (901 = capture invalidated);
//  gmem.*  what the graph memory attributes, NVML's per-process figure and cuMemGetInfo show through the
//          life of graphs with allocation nodes (instantiate, upload, launch, relaunch, other graphs,
//          other streams, destroy, trim), and the granularity of graph allocations;
//  lim.*   what each context limit really takes, when (at cuCtxSetLimit, at a launch), and what a kernel
//          with large local memory takes on its own.
// Built here with nvcc from PyPI (no libcuda stub: the driver is opened with dlopen); run on the GPU.
#include <cuda.h>
#include <cuda_runtime.h>
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <functional>
#include <vector>

#define MIB (1ull << 20)
static void *lib;
template <class T> static T sym(const char *n) {
  void *p = dlsym(lib, n);
  if (!p) { printf("missing=%s\n", n); exit(3); }
  return (T)p;
}
#define F(name) static decltype(&name) p_##name;
#define R(name) p_##name = sym<decltype(&name)>(#name);
F(cuInit) F(cuDeviceGet) F(cuDevicePrimaryCtxRetain) F(cuCtxSetCurrent) F(cuStreamCreate) F(cuStreamDestroy_v2)
F(cuStreamBeginCapture_v2) F(cuStreamEndCapture) F(cuThreadExchangeStreamCaptureMode) F(cuStreamGetDevice)
F(cuCtxGetDevice) F(cuDeviceGetMemPool) F(cuMemPoolGetAttribute) F(cuDeviceGetGraphMemAttribute)
F(cuMemGetInfo_v2) F(cuDeviceTotalMem_v2) F(cuCtxGetLimit) F(cuCtxSetLimit) F(cuStreamIsCapturing)
F(cuStreamGetCaptureInfo_v3) F(cuStreamSynchronize) F(cuMemAlloc_v2) F(cuMemFree_v2) F(cuMemAllocAsync)
F(cuMemFreeAsync) F(cuMemPoolTrimTo) F(cuDeviceGraphMemTrim) F(cuGraphCreate) F(cuGraphDestroy) F(cuGraphGetNodes)
F(cuGraphAddMemAllocNode) F(cuGraphAddMemFreeNode) F(cuGraphInstantiateWithFlags) F(cuGraphUpload) F(cuGraphLaunch)
F(cuGraphExecDestroy) F(cuGraphNodeGetType) F(cuGraphMemAllocNodeGetParams) F(cuMemsetD8Async) F(cuCtxSynchronize)
F(cuDeviceGetAttribute) F(cuMemsetD8_v2) F(cuMemPoolCreate) F(cuMemAllocFromPoolAsync) F(cuGraphInstantiateWithParams)

typedef int (*nvml_init_t)(void);
typedef int (*nvml_handle_t)(unsigned, void **);
struct nvml_proc { unsigned pid; unsigned long long used; unsigned gi, ci; };
typedef int (*nvml_procs_t)(void *, unsigned *, nvml_proc *);
static nvml_procs_t nvml_procs;
static void *nvml_dev;
static long long nvml_used() {
  if (!nvml_procs) return -1;
  nvml_proc list[64]; unsigned n = 64;
  if (nvml_procs(nvml_dev, &n, list)) return -2;
  for (unsigned i = 0; i < n; i++) if (list[i].pid == (unsigned)getpid()) return (long long)list[i].used;
  return -3;
}

static CUcontext ctx;
static CUstream cap_stream, other_stream;
static CUdeviceptr scratch;
static CUmemoryPool defpool;
static CUgraph spare_graph;

static unsigned long long gattr(CUgraphMem_attribute a) {
  cuuint64_t v = 0; CUresult r = p_cuDeviceGetGraphMemAttribute(0, a, &v); return r ? ~0ull : v;
}
static void snap(const char *tag) {
  size_t fr = 0, t = 0; p_cuMemGetInfo_v2(&fr, &t);
  printf("gmem.%s used=%llu reserved=%llu used_high=%llu reserved_high=%llu nvml=%lld free=%zu\n", tag,
         gattr(CU_GRAPH_MEM_ATTR_USED_MEM_CURRENT) / MIB, gattr(CU_GRAPH_MEM_ATTR_RESERVED_MEM_CURRENT) / MIB,
         gattr(CU_GRAPH_MEM_ATTR_USED_MEM_HIGH) / MIB, gattr(CU_GRAPH_MEM_ATTR_RESERVED_MEM_HIGH) / MIB,
         nvml_used() >> 20, fr >> 20);
}

// ---- capture safety ----
typedef std::function<CUresult()> Call;
struct Job { Call call; int relaxed; CUresult rc; };
static void *other_thread(void *arg) {
  Job *j = (Job *)arg;
  p_cuCtxSetCurrent(ctx);
  CUstreamCaptureMode m = CU_STREAM_CAPTURE_MODE_RELAXED;
  if (j->relaxed) p_cuThreadExchangeStreamCaptureMode(&m);
  j->rc = j->call();
  if (j->relaxed) p_cuThreadExchangeStreamCaptureMode(&m);
  return NULL;
}
static void capture_case(const char *name, Call call) {
  const char *variants[] = {"same", "same_relaxed", "other", "other_relaxed"};
  printf("cap.%s", name);
  for (int v = 0; v < 4; v++) {
    CUresult b = p_cuStreamBeginCapture_v2(cap_stream, CU_STREAM_CAPTURE_MODE_GLOBAL);
    p_cuMemsetD8Async(scratch, 1, 4096, cap_stream);
    CUresult rc;
    if (v < 2) {
      CUstreamCaptureMode m = CU_STREAM_CAPTURE_MODE_RELAXED;
      if (v == 1) p_cuThreadExchangeStreamCaptureMode(&m);
      rc = call();
      if (v == 1) p_cuThreadExchangeStreamCaptureMode(&m);
    } else {
      Job j{call, v == 3, (CUresult)-1};
      pthread_t t; pthread_create(&t, NULL, other_thread, &j); pthread_join(t, NULL);
      rc = j.rc;
    }
    CUgraph g = NULL;
    CUresult e = p_cuStreamEndCapture(cap_stream, &g);
    if (g) p_cuGraphDestroy(g);
    printf(" %s=%d/%d%s", variants[v], rc, e, b ? "(begin failed)" : "");
    p_cuCtxSynchronize();
  }
  printf("\n");
}

// ---- kernels for the limits ----
__global__ void k_empty() {}
__global__ void k_malloc(int n) { void *p = malloc(n); if (p) { ((char *)p)[0] = 1; free(p); } }
__global__ void k_printf() { if (threadIdx.x == 0 && blockIdx.x == 0) printf("printf from the device\n"); }
__global__ void k_local(int *out, int n) {
  volatile char buf[48 * 1024];
  for (int i = 0; i < n; i++) buf[(i * 7919) % sizeof(buf)] = (char)i;
  out[blockIdx.x * blockDim.x + threadIdx.x] = buf[n % sizeof(buf)];
}

static void lim_snap(const char *tag) {
  size_t fr = 0, t = 0; p_cuMemGetInfo_v2(&fr, &t);
  printf("lim.%s nvml=%lld free=%zu\n", tag, nvml_used() >> 20, fr >> 20);
}
static void sync_all() { cudaDeviceSynchronize(); p_cuCtxSynchronize(); }

int main() {
  setvbuf(stdout, NULL, _IOLBF, 0);
  lib = dlopen("libcuda.so.1", RTLD_NOW);
  if (!lib) { printf("no driver\n"); return 3; }
  R(cuInit) R(cuDeviceGet) R(cuDevicePrimaryCtxRetain) R(cuCtxSetCurrent) R(cuStreamCreate) R(cuStreamDestroy_v2)
  R(cuStreamBeginCapture_v2) R(cuStreamEndCapture) R(cuThreadExchangeStreamCaptureMode) R(cuStreamGetDevice)
  R(cuCtxGetDevice) R(cuDeviceGetMemPool) R(cuMemPoolGetAttribute) R(cuDeviceGetGraphMemAttribute)
  R(cuMemGetInfo_v2) R(cuDeviceTotalMem_v2) R(cuCtxGetLimit) R(cuCtxSetLimit) R(cuStreamIsCapturing)
  R(cuStreamGetCaptureInfo_v3) R(cuStreamSynchronize) R(cuMemAlloc_v2) R(cuMemFree_v2) R(cuMemAllocAsync)
  R(cuMemFreeAsync) R(cuMemPoolTrimTo) R(cuDeviceGraphMemTrim) R(cuGraphCreate) R(cuGraphDestroy) R(cuGraphGetNodes)
  R(cuGraphAddMemAllocNode) R(cuGraphAddMemFreeNode) R(cuGraphInstantiateWithFlags) R(cuGraphUpload) R(cuGraphLaunch)
  R(cuGraphExecDestroy) R(cuGraphNodeGetType) R(cuGraphMemAllocNodeGetParams) R(cuMemsetD8Async) R(cuCtxSynchronize)
  R(cuDeviceGetAttribute) R(cuMemsetD8_v2) R(cuMemPoolCreate) R(cuMemAllocFromPoolAsync) R(cuGraphInstantiateWithParams)
  void *nv = dlopen("libnvidia-ml.so.1", RTLD_NOW);
  if (nv) {
    ((nvml_init_t)dlsym(nv, "nvmlInit_v2"))();
    ((nvml_handle_t)dlsym(nv, "nvmlDeviceGetHandleByIndex_v2"))(0, &nvml_dev);
    nvml_procs = (nvml_procs_t)dlsym(nv, "nvmlDeviceGetComputeRunningProcesses_v3");
  }
  // The runtime's primary context is the driver's primary context: kernels and driver calls share it.
  cudaFree(0);
  CUdevice dev; p_cuInit(0); p_cuDeviceGet(&dev, 0); p_cuDevicePrimaryCtxRetain(&ctx, dev); p_cuCtxSetCurrent(ctx);
  p_cuStreamCreate(&cap_stream, CU_STREAM_NON_BLOCKING); p_cuStreamCreate(&other_stream, CU_STREAM_NON_BLOCKING);
  p_cuMemAlloc_v2(&scratch, 4 * MIB);
  p_cuDeviceGetMemPool(&defpool, 0);
  p_cuGraphCreate(&spare_graph, 0);
  int sms = 0, tpm = 0;
  p_cuDeviceGetAttribute(&sms, CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, 0);
  p_cuDeviceGetAttribute(&tpm, CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_MULTIPROCESSOR, 0);
  printf("device sms=%d threads_per_sm=%d\n", sms, tpm);

  // 1. Capture safety of each call vramcap might make.
  capture_case("cuStreamGetDevice", [] { CUdevice d; return p_cuStreamGetDevice(cap_stream, &d); });
  capture_case("cuCtxGetDevice", [] { CUdevice d; return p_cuCtxGetDevice(&d); });
  capture_case("cuDeviceGetMemPool", [] { CUmemoryPool p; return p_cuDeviceGetMemPool(&p, 0); });
  capture_case("cuMemPoolGetAttribute", [] { cuuint64_t v; return p_cuMemPoolGetAttribute(defpool, CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT, &v); });
  capture_case("cuDeviceGetGraphMemAttribute", [] { cuuint64_t v; return p_cuDeviceGetGraphMemAttribute(0, CU_GRAPH_MEM_ATTR_RESERVED_MEM_CURRENT, &v); });
  capture_case("cuMemGetInfo", [] { size_t a, b; return p_cuMemGetInfo_v2(&a, &b); });
  capture_case("cuDeviceTotalMem", [] { size_t a; return p_cuDeviceTotalMem_v2(&a, 0); });
  capture_case("cuCtxGetLimit", [] { size_t a; return p_cuCtxGetLimit(&a, CU_LIMIT_MALLOC_HEAP_SIZE); });
  capture_case("cuCtxSetLimit_printf_same", [] { size_t a; p_cuCtxGetLimit(&a, CU_LIMIT_PRINTF_FIFO_SIZE); return p_cuCtxSetLimit(CU_LIMIT_PRINTF_FIFO_SIZE, a); });
  capture_case("cuStreamIsCapturing", [] { CUstreamCaptureStatus s; return p_cuStreamIsCapturing(cap_stream, &s); });
  capture_case("cuStreamGetCaptureInfo_v3", [] { CUstreamCaptureStatus s; return p_cuStreamGetCaptureInfo_v3(cap_stream, &s, NULL, NULL, NULL, NULL, NULL); });
  capture_case("cuStreamSynchronize_legacy", [] { return p_cuStreamSynchronize(NULL); });
  capture_case("cuStreamSynchronize_other", [] { return p_cuStreamSynchronize(other_stream); });
  capture_case("cuMemAlloc_Free", [] { CUdeviceptr p; CUresult r = p_cuMemAlloc_v2(&p, MIB); if (!r) p_cuMemFree_v2(p); return r; });
  capture_case("cuMemAllocAsync_other", [] { CUdeviceptr p; CUresult r = p_cuMemAllocAsync(&p, MIB, other_stream); if (!r) p_cuMemFreeAsync(p, other_stream); return r; });
  capture_case("cuMemPoolTrimTo", [] { return p_cuMemPoolTrimTo(defpool, 1ull << 40); });
  capture_case("cuDeviceGraphMemTrim", [] { return p_cuDeviceGraphMemTrim(0); });
  capture_case("cuGraphGetNodes_spare", [] { size_t n = 0; return p_cuGraphGetNodes(spare_graph, NULL, &n); });
  capture_case("cuCtxSynchronize", [] { return p_cuCtxSynchronize(); });
  capture_case("cuDeviceGetAttribute", [] { int v; return p_cuDeviceGetAttribute(&v, CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, 0); });

  // 2. Graph memory through the life of graphs.
  p_cuDeviceGraphMemTrim(0);
  snap("start");
  auto alloc_graph = [](size_t bytes, bool with_free, CUdeviceptr *va) {
    CUgraph g; p_cuGraphCreate(&g, 0);
    CUDA_MEM_ALLOC_NODE_PARAMS ap; memset(&ap, 0, sizeof ap);
    ap.poolProps.allocType = CU_MEM_ALLOCATION_TYPE_PINNED;
    ap.poolProps.location.type = CU_MEM_LOCATION_TYPE_DEVICE; ap.poolProps.location.id = 0;
    ap.bytesize = bytes;
    CUgraphNode a, f; CUresult r = p_cuGraphAddMemAllocNode(&a, g, NULL, 0, &ap);
    if (r) printf("gmem.add_alloc_failed=%d\n", r);
    if (with_free) p_cuGraphAddMemFreeNode(&f, g, &a, 1, ap.dptr);
    if (va) *va = ap.dptr;
    return g;
  };
  CUgraph g1 = alloc_graph(512 * MIB, true, NULL);
  snap("g1_created");
  CUgraphExec e1; p_cuGraphInstantiateWithFlags(&e1, g1, 0);
  snap("g1_instantiated");
  p_cuGraphUpload(e1, cap_stream); p_cuStreamSynchronize(cap_stream);
  snap("g1_uploaded");
  p_cuGraphLaunch(e1, cap_stream); p_cuStreamSynchronize(cap_stream);
  snap("g1_launched");
  p_cuGraphLaunch(e1, cap_stream); p_cuStreamSynchronize(cap_stream);
  snap("g1_relaunched");
  // A graph with allocation nodes may have one exec at a time; a second one of an identical graph is
  // a graph of its own.
  CUgraphExec e1b = NULL; CUresult r1b = p_cuGraphInstantiateWithFlags(&e1b, g1, 0);
  printf("gmem.second_exec_same_graph_rc=%d\n", r1b);
  if (r1b) { CUgraph g1b = alloc_graph(512 * MIB, true, NULL); r1b = p_cuGraphInstantiateWithFlags(&e1b, g1b, 0); }
  printf("gmem.second_graph_exec_rc=%d\n", r1b);
  p_cuGraphLaunch(e1b, cap_stream); p_cuStreamSynchronize(cap_stream);
  snap("g1b_same_stream");
  p_cuGraphLaunch(e1b, other_stream); p_cuStreamSynchronize(other_stream);
  snap("g1b_other_stream");
  // Both execs in flight at once on two streams.
  p_cuGraphLaunch(e1, cap_stream); p_cuGraphLaunch(e1b, other_stream);
  snap("g1_g1b_both_in_flight");
  p_cuStreamSynchronize(cap_stream); p_cuStreamSynchronize(other_stream);
  snap("g1_g1b_both_done");
  p_cuGraphLaunch(e1, cap_stream); p_cuStreamSynchronize(cap_stream);
  snap("g1_again_after_both");
  CUgraph g2 = alloc_graph(256 * MIB, true, NULL);
  CUgraphExec e2; p_cuGraphInstantiateWithFlags(&e2, g2, 0);
  p_cuGraphLaunch(e2, cap_stream); p_cuStreamSynchronize(cap_stream);
  snap("g2_256_same_stream");
  p_cuGraphLaunch(e1, cap_stream); p_cuStreamSynchronize(cap_stream);
  snap("g1_after_g2");
  p_cuDeviceGraphMemTrim(0);
  snap("trim_with_execs_alive");
  p_cuGraphLaunch(e1, cap_stream); p_cuStreamSynchronize(cap_stream);
  snap("g1_after_trim");
  p_cuGraphExecDestroy(e1b);
  snap("e1b_destroyed");
  p_cuGraphExecDestroy(e1); p_cuGraphExecDestroy(e2);
  snap("all_execs_destroyed");
  p_cuDeviceGraphMemTrim(0);
  snap("trimmed");
  // Upload at instantiation.
  CUgraphExec eu = NULL; CUresult ru = p_cuGraphInstantiateWithFlags(&eu, g1, CUDA_GRAPH_INSTANTIATE_FLAG_UPLOAD);
  p_cuCtxSynchronize();
  printf("gmem.instantiate_upload_flag_rc=%d\n", ru);
  snap("instantiated_with_upload_flag");
  CUDA_GRAPH_INSTANTIATE_PARAMS ip; memset(&ip, 0, sizeof ip);
  ip.flags = CUDA_GRAPH_INSTANTIATE_FLAG_UPLOAD; ip.hUploadStream = other_stream;
  CUgraphExec ew = NULL; CUresult rw = p_cuGraphInstantiateWithParams(&ew, g2, &ip);
  p_cuCtxSynchronize();
  printf("gmem.instantiate_with_params_upload_rc=%d result=%d\n", rw, (int)ip.result_out);
  snap("instantiated_with_params_upload");
  if (eu) p_cuGraphExecDestroy(eu);
  if (ew) p_cuGraphExecDestroy(ew);
  p_cuDeviceGraphMemTrim(0);
  snap("trimmed2");
  // An allocation that outlives its graph, freed outside it.
  CUdeviceptr va3; CUgraph g3 = alloc_graph(128 * MIB, false, &va3);
  CUgraphExec e3; p_cuGraphInstantiateWithFlags(&e3, g3, 0);
  p_cuGraphLaunch(e3, cap_stream); p_cuStreamSynchronize(cap_stream);
  snap("g3_no_free_launched");
  CUresult relaunch = p_cuGraphLaunch(e3, cap_stream); p_cuStreamSynchronize(cap_stream);
  printf("gmem.relaunch_unfreed_rc=%d\n", relaunch);
  CUresult fr = p_cuMemFreeAsync(va3, cap_stream); p_cuStreamSynchronize(cap_stream);
  printf("gmem.free_outside_rc=%d\n", fr);
  snap("g3_freed_outside");
  p_cuGraphExecDestroy(e3); p_cuDeviceGraphMemTrim(0);
  snap("g3_gone_trimmed");
  // Granularity: one graph per size, launched alone after a trim.
  size_t sizes[] = {1, 4096, MIB, 2 * MIB, 2 * MIB + 1, 3 * MIB, 33 * MIB, 100 * MIB, 1000 * MIB};
  for (size_t s : sizes) {
    CUgraph g = alloc_graph(s, true, NULL); CUgraphExec e; p_cuGraphInstantiateWithFlags(&e, g, 0);
    unsigned long long before = gattr(CU_GRAPH_MEM_ATTR_RESERVED_MEM_CURRENT);
    p_cuGraphLaunch(e, cap_stream); p_cuStreamSynchronize(cap_stream);
    unsigned long long after = gattr(CU_GRAPH_MEM_ATTR_RESERVED_MEM_CURRENT);
    unsigned long long used = gattr(CU_GRAPH_MEM_ATTR_USED_MEM_CURRENT);
    printf("gmem.size bytes=%zu reserved_grew=%llu used=%llu\n", s, after - before, used);
    p_cuGraphExecDestroy(e); p_cuGraphDestroy(g); p_cuDeviceGraphMemTrim(0);
  }
  // Two alloc nodes of 100 MiB in one graph, both live at once, and two in sequence (reusable).
  {
    CUgraph g; p_cuGraphCreate(&g, 0);
    CUDA_MEM_ALLOC_NODE_PARAMS ap; memset(&ap, 0, sizeof ap);
    ap.poolProps.allocType = CU_MEM_ALLOCATION_TYPE_PINNED;
    ap.poolProps.location.type = CU_MEM_LOCATION_TYPE_DEVICE; ap.poolProps.location.id = 0; ap.bytesize = 100 * MIB;
    CUgraphNode a1, f1, a2, f2;
    p_cuGraphAddMemAllocNode(&a1, g, NULL, 0, &ap); CUdeviceptr d1 = ap.dptr;
    p_cuGraphAddMemFreeNode(&f1, g, &a1, 1, d1);
    p_cuGraphAddMemAllocNode(&a2, g, &f1, 1, &ap); CUdeviceptr d2 = ap.dptr;
    p_cuGraphAddMemFreeNode(&f2, g, &a2, 1, d2);
    CUgraphExec e; p_cuGraphInstantiateWithFlags(&e, g, 0);
    p_cuGraphLaunch(e, cap_stream); p_cuStreamSynchronize(cap_stream);
    printf("gmem.two_sequential_100 reserved=%llu same_va=%d\n", gattr(CU_GRAPH_MEM_ATTR_RESERVED_MEM_CURRENT) / MIB, d1 == d2);
    p_cuGraphExecDestroy(e); p_cuGraphDestroy(g); p_cuDeviceGraphMemTrim(0);
  }
  // Captured stream-ordered allocation: which nodes, which parameters, what a launch takes.
  {
    CUdeviceptr p;
    p_cuStreamBeginCapture_v2(cap_stream, CU_STREAM_CAPTURE_MODE_GLOBAL);
    CUresult ra = p_cuMemAllocAsync(&p, 64 * MIB, cap_stream);
    p_cuMemsetD8Async(p, 7, 64 * MIB, cap_stream);
    CUresult rf = p_cuMemFreeAsync(p, cap_stream);
    CUgraph g = NULL; CUresult re = p_cuStreamEndCapture(cap_stream, &g);
    size_t n = 0; p_cuGraphGetNodes(g, NULL, &n);
    std::vector<CUgraphNode> nodes(n); p_cuGraphGetNodes(g, nodes.data(), &n);
    printf("gmem.captured alloc_rc=%d free_rc=%d end_rc=%d nodes=%zu types=", ra, rf, re, n);
    for (auto nd : nodes) { CUgraphNodeType t; p_cuGraphNodeGetType(nd, &t); printf("%d,", (int)t);
      if (t == CU_GRAPH_NODE_TYPE_MEM_ALLOC) { CUDA_MEM_ALLOC_NODE_PARAMS q; p_cuGraphMemAllocNodeGetParams(nd, &q);
        printf("[bytes=%zu loc=%d/%d]", q.bytesize, q.poolProps.location.type, q.poolProps.location.id); } }
    printf("\n");
    CUgraphExec e; p_cuGraphInstantiateWithFlags(&e, g, 0);
    p_cuGraphLaunch(e, cap_stream); p_cuStreamSynchronize(cap_stream);
    snap("captured_launched");
    p_cuGraphExecDestroy(e); p_cuGraphDestroy(g); p_cuDeviceGraphMemTrim(0);
    // From a pool of one's own.
    CUmemPoolProps pp; memset(&pp, 0, sizeof pp); pp.allocType = CU_MEM_ALLOCATION_TYPE_PINNED;
    pp.location.type = CU_MEM_LOCATION_TYPE_DEVICE; pp.location.id = 0;
    CUmemoryPool mine; p_cuMemPoolCreate(&mine, &pp);
    p_cuStreamBeginCapture_v2(cap_stream, CU_STREAM_CAPTURE_MODE_GLOBAL);
    ra = p_cuMemAllocFromPoolAsync(&p, 64 * MIB, mine, cap_stream);
    rf = p_cuMemFreeAsync(p, cap_stream);
    re = p_cuStreamEndCapture(cap_stream, &g);
    cuuint64_t pr = 0; p_cuMemPoolGetAttribute(mine, CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT, &pr);
    printf("gmem.captured_from_pool alloc_rc=%d end_rc=%d pool_reserved=%llu\n", ra, re, (unsigned long long)pr);
    p_cuGraphInstantiateWithFlags(&e, g, 0);
    p_cuGraphLaunch(e, cap_stream); p_cuStreamSynchronize(cap_stream);
    p_cuMemPoolGetAttribute(mine, CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT, &pr);
    printf("gmem.captured_from_pool_launched pool_reserved=%llu\n", (unsigned long long)pr);
    snap("captured_from_pool_launched");
    p_cuGraphExecDestroy(e); p_cuGraphDestroy(g); p_cuDeviceGraphMemTrim(0);
  }

  // 3. Limits.
  int *out; cudaMalloc(&out, 1 << 24);
  sync_all();
  for (int l = 0; l <= 6; l++) { size_t v = 0; CUresult r = p_cuCtxGetLimit(&v, (CUlimit)l); printf("lim.default.%d=%zu rc=%d\n", l, v, r); }
  lim_snap("base");
  k_empty<<<1, 1>>>(); sync_all(); lim_snap("base_after_empty");
  struct { const char *name; CUlimit lim; size_t value; } cases[] = {
      {"printf_256M", CU_LIMIT_PRINTF_FIFO_SIZE, 256 * MIB},
      {"heap_1G", CU_LIMIT_MALLOC_HEAP_SIZE, 1024 * MIB},
      {"stack_16K", CU_LIMIT_STACK_SIZE, 16 * 1024},
      {"stack_64K", CU_LIMIT_STACK_SIZE, 64 * 1024},
      {"pending_1M", CU_LIMIT_DEV_RUNTIME_PENDING_LAUNCH_COUNT, 1 << 20},
      {"syncdepth_8", CU_LIMIT_DEV_RUNTIME_SYNC_DEPTH, 8},
      {"persisting_l2_4M", CU_LIMIT_PERSISTING_L2_CACHE_SIZE, 4 * MIB},
  };
  char tag[128];
  for (auto &c : cases) {
    size_t old = 0; p_cuCtxGetLimit(&old, c.lim);
    snprintf(tag, sizeof tag, "%s.before", c.name); lim_snap(tag);
    CUresult r = p_cuCtxSetLimit(c.lim, c.value);
    size_t now = 0; p_cuCtxGetLimit(&now, c.lim);
    printf("lim.%s.set_rc=%d old=%zu now=%zu\n", c.name, r, old, now);
    snprintf(tag, sizeof tag, "%s.after_set", c.name); lim_snap(tag);
    k_empty<<<1, 1>>>(); sync_all();
    snprintf(tag, sizeof tag, "%s.after_empty_launch", c.name); lim_snap(tag);
    if (c.lim == CU_LIMIT_MALLOC_HEAP_SIZE) {
      k_malloc<<<1, 32>>>(1024); sync_all();
      snprintf(tag, sizeof tag, "%s.after_malloc_kernel", c.name); lim_snap(tag);
      CUresult r2 = p_cuCtxSetLimit(c.lim, 2048 * MIB);
      printf("lim.heap_after_malloc_kernel.set_rc=%d\n", r2);
      snprintf(tag, sizeof tag, "%s.after_second_set", c.name); lim_snap(tag);
    }
    if (c.lim == CU_LIMIT_PRINTF_FIFO_SIZE) {
      k_printf<<<1, 1>>>(); sync_all();
      snprintf(tag, sizeof tag, "%s.after_printf_kernel", c.name); lim_snap(tag);
    }
    CUresult rb = p_cuCtxSetLimit(c.lim, old);
    k_empty<<<1, 1>>>(); sync_all();
    snprintf(tag, sizeof tag, "%s.back_to_default_rc%d", c.name, rb); lim_snap(tag);
  }
  // A kernel whose local memory exceeds the current stack: the driver grows it on its own.
  lim_snap("local.before");
  cudaFuncAttributes fa; cudaFuncGetAttributes(&fa, k_local);
  printf("lim.local.kernel_local_bytes=%zu\n", fa.localSizeBytes);
  k_local<<<sms * 4, 256>>>(out, 1000); cudaError_t le = cudaDeviceSynchronize();
  printf("lim.local.launch=%d\n", (int)le);
  lim_snap("local.after_launch");
  size_t st = 0; p_cuCtxGetLimit(&st, CU_LIMIT_STACK_SIZE);
  printf("lim.local.stack_limit_now=%zu\n", st);
  sleep(1); lim_snap("local.after_1s");
  printf("done=1\n");
  return 0;
}
