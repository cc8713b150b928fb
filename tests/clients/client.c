/* A CUDA driver-API client that exercises vramcap through each path a program can take to the driver:
 *   link   calls the exported symbols directly (built with -lcuda);
 *   dlsym  dlopen("libcuda.so.1") + dlsym, as PyTorch, CuPy and cudarc do;
 *   gpa    cuGetProcAddress_v2 by base name, version and flags, as the CUDA runtime does.
 * Usage: client PATH SCENARIO [ARGS]. It prints key=value lines; the Rust tests (and scripts/gpu-e2e.sh)
 * judge them. It never decides pass/fail itself beyond exiting non-zero when a call it needs fails. */
#define _GNU_SOURCE
#include "mini_cuda.h"
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/wait.h>
#include <signal.h>
#include <poll.h>
#include <time.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <sys/socket.h>

#define MIB (1ull << 20)

/* Declared for the link path; the fake and the real driver both export them. */
CUresult cuInit(unsigned);
CUresult cuDeviceGetCount(int *);
CUresult cuDevicePrimaryCtxRetain(CUcontext *, CUdevice);
CUresult cuCtxSetCurrent(CUcontext);
CUresult cuCtxCreate_v2(CUcontext *, unsigned, CUdevice);
CUresult cuCtxDestroy_v2(CUcontext);
CUresult cuMemAlloc_v2(CUdeviceptr *, size_t);
CUresult cuMemFree_v2(CUdeviceptr);
CUresult cuMemGetInfo_v2(size_t *, size_t *);
CUresult cuDeviceTotalMem_v2(size_t *, CUdevice);
CUresult cuMemAllocPitch_v2(CUdeviceptr *, size_t *, size_t, size_t, unsigned);
CUresult cuMemAllocManaged(CUdeviceptr *, size_t, unsigned);
CUresult cuMemAllocAsync(CUdeviceptr *, size_t, CUstream);
CUresult cuMemFreeAsync(CUdeviceptr, CUstream);
CUresult cuStreamSynchronize(CUstream);
CUresult cuMemCreate(CUmemGenericAllocationHandle *, size_t, const CUmemAllocationProp *, unsigned long long);
CUresult cuMemRelease(CUmemGenericAllocationHandle);
CUresult cuMemAddressReserve(CUdeviceptr *, size_t, size_t, CUdeviceptr, unsigned long long);
CUresult cuMemMap(CUdeviceptr, size_t, size_t, CUmemGenericAllocationHandle, unsigned long long);
CUresult cuMemUnmap(CUdeviceptr, size_t);
CUresult cuArrayCreate_v2(CUarray *, const CUDA_ARRAY_DESCRIPTOR *);
CUresult cuArrayDestroy(CUarray);
CUresult cuMemPoolCreate(CUmemoryPool *, const CUmemPoolProps *);
CUresult cuMemAllocFromPoolAsync(CUdeviceptr *, size_t, CUmemoryPool, CUstream);
CUresult cuDeviceGetMemPool(CUmemoryPool *, CUdevice);
/* Graphs, capture and limits: weak, so that a driver without them still runs the other scenarios (the
 * scenarios that need them say missing=NAME and exit 3). */
#define WEAK __attribute__((weak))
WEAK CUresult cuStreamCreate(CUstream *, unsigned);
WEAK CUresult cuStreamDestroy_v2(CUstream);
WEAK CUresult cuStreamBeginCapture_v2(CUstream, int);
WEAK CUresult cuStreamEndCapture(CUstream, CUgraph *);
WEAK CUresult cuStreamIsCapturing(CUstream, int *);
WEAK CUresult cuGraphCreate(CUgraph *, unsigned);
WEAK CUresult cuGraphDestroy(CUgraph);
WEAK CUresult cuGraphAddMemAllocNode(CUgraphNode *, CUgraph, const CUgraphNode *, size_t, CUDA_MEM_ALLOC_NODE_PARAMS *);
WEAK CUresult cuGraphAddMemFreeNode(CUgraphNode *, CUgraph, const CUgraphNode *, size_t, CUdeviceptr);
WEAK CUresult cuGraphAddNode_v2(CUgraphNode *, CUgraph, const CUgraphNode *, const CUgraphEdgeData *, size_t, CUgraphNodeParams *);
WEAK CUresult cuGraphGetNodes(CUgraph, CUgraphNode *, size_t *);
WEAK CUresult cuGraphNodeGetType(CUgraphNode, int *);
WEAK CUresult cuGraphInstantiateWithFlags(CUgraphExec *, CUgraph, unsigned long long);
WEAK CUresult cuGraphInstantiateWithParams(CUgraphExec *, CUgraph, CUDA_GRAPH_INSTANTIATE_PARAMS *);
WEAK CUresult cuGraphUpload(CUgraphExec, CUstream);
WEAK CUresult cuGraphLaunch(CUgraphExec, CUstream);
WEAK CUresult cuGraphExecDestroy(CUgraphExec);
WEAK CUresult cuDeviceGraphMemTrim(CUdevice);
WEAK CUresult cuDeviceGetGraphMemAttribute(CUdevice, int, void *);
WEAK CUresult cuCtxSetLimit(int, size_t);
WEAK CUresult cuCtxGetLimit(size_t *, int);
WEAK CUresult cuLaunchKernel(CUfunction, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, CUstream,
                             void **, void **);

static struct {
  CUresult (*init)(unsigned);
  CUresult (*count)(int *);
  CUresult (*retain)(CUcontext *, CUdevice);
  CUresult (*set_current)(CUcontext);
  CUresult (*ctx_create)(CUcontext *, unsigned, CUdevice);
  CUresult (*ctx_destroy)(CUcontext);
  CUresult (*alloc)(CUdeviceptr *, size_t);
  CUresult (*free)(CUdeviceptr);
  CUresult (*info)(size_t *, size_t *);
  CUresult (*total)(size_t *, CUdevice);
  CUresult (*pitch)(CUdeviceptr *, size_t *, size_t, size_t, unsigned);
  CUresult (*managed)(CUdeviceptr *, size_t, unsigned);
  CUresult (*alloc_async)(CUdeviceptr *, size_t, CUstream);
  CUresult (*free_async)(CUdeviceptr, CUstream);
  CUresult (*sync)(CUstream);
  CUresult (*create)(CUmemGenericAllocationHandle *, size_t, const CUmemAllocationProp *, unsigned long long);
  CUresult (*release)(CUmemGenericAllocationHandle);
  CUresult (*reserve)(CUdeviceptr *, size_t, size_t, CUdeviceptr, unsigned long long);
  CUresult (*map)(CUdeviceptr, size_t, size_t, CUmemGenericAllocationHandle, unsigned long long);
  CUresult (*unmap)(CUdeviceptr, size_t);
  CUresult (*array_create)(CUarray *, const CUDA_ARRAY_DESCRIPTOR *);
  CUresult (*array_destroy)(CUarray);
  CUresult (*pool_create)(CUmemoryPool *, const CUmemPoolProps *);
  CUresult (*alloc_from_pool)(CUdeviceptr *, size_t, CUmemoryPool, CUstream);
  CUresult (*get_mem_pool)(CUmemoryPool *, CUdevice);
  /* Optional (NULL when the driver lacks them). */
  CUresult (*stream_create)(CUstream *, unsigned);
  CUresult (*stream_destroy)(CUstream);
  CUresult (*begin_capture)(CUstream, int);
  CUresult (*end_capture)(CUstream, CUgraph *);
  CUresult (*is_capturing)(CUstream, int *);
  CUresult (*graph_create)(CUgraph *, unsigned);
  CUresult (*graph_destroy)(CUgraph);
  CUresult (*add_alloc_node)(CUgraphNode *, CUgraph, const CUgraphNode *, size_t, CUDA_MEM_ALLOC_NODE_PARAMS *);
  CUresult (*add_free_node)(CUgraphNode *, CUgraph, const CUgraphNode *, size_t, CUdeviceptr);
  CUresult (*add_node)(CUgraphNode *, CUgraph, const CUgraphNode *, const CUgraphEdgeData *, size_t, CUgraphNodeParams *);
  CUresult (*get_nodes)(CUgraph, CUgraphNode *, size_t *);
  CUresult (*node_type)(CUgraphNode, int *);
  CUresult (*instantiate)(CUgraphExec *, CUgraph, unsigned long long);
  CUresult (*instantiate_params)(CUgraphExec *, CUgraph, CUDA_GRAPH_INSTANTIATE_PARAMS *);
  CUresult (*upload)(CUgraphExec, CUstream);
  CUresult (*launch)(CUgraphExec, CUstream);
  CUresult (*exec_destroy)(CUgraphExec);
  CUresult (*graph_trim)(CUdevice);
  CUresult (*graph_attr)(CUdevice, int, void *);
  CUresult (*set_limit)(int, size_t);
  CUresult (*get_limit)(size_t *, int);
  CUresult (*launch_kernel)(CUfunction, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, CUstream,
                            void **, void **);
} cu;

typedef CUresult (*gpa_t)(const char *, void **, int, unsigned long long, int *);
static void *driver;
static gpa_t gpa;

static void *need(void *p, const char *what) {
  if (!p) { printf("missing=%s\n", what); exit(3); }
  return p;
}

static void *by_gpa(const char *name, int version, unsigned long long flags) {
  void *p = NULL;
  int status = -1;
  CUresult r = gpa(name, &p, version, flags, &status);
  if (r || !p) { printf("gpa_failed=%s r=%d status=%d\n", name, r, status); exit(3); }
  return p;
}

/* An entry point a scenario may do without: NULL if the driver does not have it. */
static void *by_gpa_opt(const char *name, int version) {
  void *p = NULL;
  int status = -1;
  return gpa(name, &p, version, 0, &status) == 0 && status == 0 ? p : NULL;
}

#define DL(field, sym) cu.field = need(dlsym(driver, sym), sym)
#define GPA(field, name, ver) cu.field = by_gpa(name, ver, 0)
#define DL_OPT(field, sym) cu.field = dlsym(driver, sym)
#define GPA_OPT(field, name, ver) cu.field = by_gpa_opt(name, ver)
/* What a scenario needs of the optional entry points. */
#define REQ(field)                                                                                                 \
  do {                                                                                                             \
    if (!cu.field) { printf("missing=%s\n", #field); exit(3); }                                                    \
  } while (0)

static void load(const char *path) {
  driver = need(dlopen("libcuda.so.1", RTLD_NOW | RTLD_GLOBAL), "libcuda.so.1");
  gpa = need(dlsym(driver, "cuGetProcAddress_v2"), "cuGetProcAddress_v2");
  if (!strcmp(path, "link")) {
    cu.init = cuInit; cu.count = cuDeviceGetCount; cu.retain = cuDevicePrimaryCtxRetain;
    cu.set_current = cuCtxSetCurrent; cu.ctx_create = cuCtxCreate_v2; cu.ctx_destroy = cuCtxDestroy_v2;
    cu.alloc = cuMemAlloc_v2; cu.free = cuMemFree_v2; cu.info = cuMemGetInfo_v2; cu.total = cuDeviceTotalMem_v2;
    cu.pitch = cuMemAllocPitch_v2; cu.managed = cuMemAllocManaged; cu.alloc_async = cuMemAllocAsync;
    cu.free_async = cuMemFreeAsync; cu.sync = cuStreamSynchronize; cu.create = cuMemCreate;
    cu.release = cuMemRelease; cu.reserve = cuMemAddressReserve; cu.map = cuMemMap; cu.unmap = cuMemUnmap;
    cu.array_create = cuArrayCreate_v2; cu.array_destroy = cuArrayDestroy;
    cu.pool_create = cuMemPoolCreate; cu.alloc_from_pool = cuMemAllocFromPoolAsync;
    cu.get_mem_pool = cuDeviceGetMemPool;
    cu.stream_create = cuStreamCreate; cu.stream_destroy = cuStreamDestroy_v2;
    cu.begin_capture = cuStreamBeginCapture_v2; cu.end_capture = cuStreamEndCapture;
    cu.is_capturing = cuStreamIsCapturing; cu.graph_create = cuGraphCreate; cu.graph_destroy = cuGraphDestroy;
    cu.add_alloc_node = cuGraphAddMemAllocNode; cu.add_free_node = cuGraphAddMemFreeNode;
    cu.add_node = cuGraphAddNode_v2; cu.get_nodes = cuGraphGetNodes; cu.node_type = cuGraphNodeGetType;
    cu.instantiate = cuGraphInstantiateWithFlags; cu.instantiate_params = cuGraphInstantiateWithParams;
    cu.upload = cuGraphUpload; cu.launch = cuGraphLaunch; cu.exec_destroy = cuGraphExecDestroy;
    cu.graph_trim = cuDeviceGraphMemTrim; cu.graph_attr = cuDeviceGetGraphMemAttribute;
    cu.set_limit = cuCtxSetLimit; cu.get_limit = cuCtxGetLimit; cu.launch_kernel = cuLaunchKernel;
  } else if (!strcmp(path, "dlsym")) {
    DL(init, "cuInit"); DL(count, "cuDeviceGetCount"); DL(retain, "cuDevicePrimaryCtxRetain");
    DL(set_current, "cuCtxSetCurrent"); DL(ctx_create, "cuCtxCreate_v2"); DL(ctx_destroy, "cuCtxDestroy_v2");
    DL(alloc, "cuMemAlloc_v2"); DL(free, "cuMemFree_v2"); DL(info, "cuMemGetInfo_v2");
    DL(total, "cuDeviceTotalMem_v2"); DL(pitch, "cuMemAllocPitch_v2"); DL(managed, "cuMemAllocManaged");
    DL(alloc_async, "cuMemAllocAsync"); DL(free_async, "cuMemFreeAsync"); DL(sync, "cuStreamSynchronize");
    DL(create, "cuMemCreate"); DL(release, "cuMemRelease"); DL(reserve, "cuMemAddressReserve");
    DL(map, "cuMemMap"); DL(unmap, "cuMemUnmap"); DL(array_create, "cuArrayCreate_v2");
    DL(array_destroy, "cuArrayDestroy"); DL(pool_create, "cuMemPoolCreate");
    DL(alloc_from_pool, "cuMemAllocFromPoolAsync"); DL(get_mem_pool, "cuDeviceGetMemPool");
    DL_OPT(stream_create, "cuStreamCreate"); DL_OPT(stream_destroy, "cuStreamDestroy_v2");
    DL_OPT(begin_capture, "cuStreamBeginCapture_v2"); DL_OPT(end_capture, "cuStreamEndCapture");
    DL_OPT(is_capturing, "cuStreamIsCapturing"); DL_OPT(graph_create, "cuGraphCreate");
    DL_OPT(graph_destroy, "cuGraphDestroy"); DL_OPT(add_alloc_node, "cuGraphAddMemAllocNode");
    DL_OPT(add_free_node, "cuGraphAddMemFreeNode"); DL_OPT(add_node, "cuGraphAddNode_v2");
    DL_OPT(get_nodes, "cuGraphGetNodes"); DL_OPT(node_type, "cuGraphNodeGetType");
    DL_OPT(instantiate, "cuGraphInstantiateWithFlags"); DL_OPT(instantiate_params, "cuGraphInstantiateWithParams");
    DL_OPT(upload, "cuGraphUpload"); DL_OPT(launch, "cuGraphLaunch"); DL_OPT(exec_destroy, "cuGraphExecDestroy");
    DL_OPT(graph_trim, "cuDeviceGraphMemTrim"); DL_OPT(graph_attr, "cuDeviceGetGraphMemAttribute");
    DL_OPT(set_limit, "cuCtxSetLimit"); DL_OPT(get_limit, "cuCtxGetLimit"); DL_OPT(launch_kernel, "cuLaunchKernel");
  } else if (!strcmp(path, "gpa")) {
    /* cuInit must be resolvable before initialisation, as the runtime does it. */
    GPA(init, "cuInit", 12000); GPA(count, "cuDeviceGetCount", 12000);
    GPA(retain, "cuDevicePrimaryCtxRetain", 12000); GPA(set_current, "cuCtxSetCurrent", 12000);
    GPA(ctx_create, "cuCtxCreate", 11040); GPA(ctx_destroy, "cuCtxDestroy", 12000);
    GPA(alloc, "cuMemAlloc", 12000); GPA(free, "cuMemFree", 12000); GPA(info, "cuMemGetInfo", 12000);
    GPA(total, "cuDeviceTotalMem", 12000); GPA(pitch, "cuMemAllocPitch", 12000);
    GPA(managed, "cuMemAllocManaged", 12000); GPA(alloc_async, "cuMemAllocAsync", 12000);
    GPA(free_async, "cuMemFreeAsync", 12000); GPA(sync, "cuStreamSynchronize", 12000);
    GPA(create, "cuMemCreate", 12000); GPA(release, "cuMemRelease", 12000);
    GPA(reserve, "cuMemAddressReserve", 12000); GPA(map, "cuMemMap", 12000); GPA(unmap, "cuMemUnmap", 12000);
    GPA(array_create, "cuArrayCreate", 12000); GPA(array_destroy, "cuArrayDestroy", 12000);
    GPA(pool_create, "cuMemPoolCreate", 12000); GPA(alloc_from_pool, "cuMemAllocFromPoolAsync", 12000);
    GPA(get_mem_pool, "cuDeviceGetMemPool", 12000);
    GPA_OPT(stream_create, "cuStreamCreate", 12000); GPA_OPT(stream_destroy, "cuStreamDestroy", 12000);
    GPA_OPT(begin_capture, "cuStreamBeginCapture", 12000); GPA_OPT(end_capture, "cuStreamEndCapture", 12000);
    GPA_OPT(is_capturing, "cuStreamIsCapturing", 12000); GPA_OPT(graph_create, "cuGraphCreate", 12000);
    GPA_OPT(graph_destroy, "cuGraphDestroy", 12000); GPA_OPT(add_alloc_node, "cuGraphAddMemAllocNode", 12000);
    GPA_OPT(add_free_node, "cuGraphAddMemFreeNode", 12000); GPA_OPT(add_node, "cuGraphAddNode", 12030);
    GPA_OPT(get_nodes, "cuGraphGetNodes", 12000); GPA_OPT(node_type, "cuGraphNodeGetType", 12000);
    GPA_OPT(instantiate, "cuGraphInstantiateWithFlags", 12000);
    GPA_OPT(instantiate_params, "cuGraphInstantiateWithParams", 12000);
    GPA_OPT(upload, "cuGraphUpload", 12000); GPA_OPT(launch, "cuGraphLaunch", 12000);
    GPA_OPT(exec_destroy, "cuGraphExecDestroy", 12000); GPA_OPT(graph_trim, "cuDeviceGraphMemTrim", 12000);
    GPA_OPT(graph_attr, "cuDeviceGetGraphMemAttribute", 12000); GPA_OPT(set_limit, "cuCtxSetLimit", 12000);
    GPA_OPT(get_limit, "cuCtxGetLimit", 12000); GPA_OPT(launch_kernel, "cuLaunchKernel", 12000);
  } else {
    printf("unknown path %s\n", path);
    exit(2);
  }
}

static CUcontext ctx;

static CUresult start(void) {
  CUresult r = cu.init(0);
  printf("init=%d\n", r);
  if (r) return r;
  r = cu.retain(&ctx, 0);
  printf("retain=%d\n", r);
  if (r) return r;
  return cu.set_current(ctx);
}

/* The process's charge as the capped memory-info shows it: total - free. */
static unsigned long long charged(void) {
  size_t free = 0, total = 0;
  cu.info(&free, &total);
  return total - free;
}

static void report_info(void) {
  size_t free = 0, total = 0, dev_total = 0;
  printf("info=%d\n", cu.info(&free, &total));
  printf("info_free=%zu\ninfo_total=%zu\n", free, total);
  cu.total(&dev_total, 0);
  printf("device_total=%zu\n", dev_total);
}

static unsigned long long (*device_used)(int);
static unsigned long long (*fake_calls)(const char *);
static void *(*fake_symbol)(const char *);

/* What the device holds for us: the fake's own figure, or on the real driver our capped figure. */
static unsigned long long used_now(void) { return device_used ? device_used(0) : charged(); }

/* scripts/gpu-e2e.sh reads nvidia-smi while a client holds its memory. */
static void hold_if_asked(void) {
  const char *path = getenv("VRAMCAP_E2E_HOLD");
  if (!path) return;
  printf("HOLD pid=%d\n", getpid());
  for (int i = 0; i < 6000 && access(path, F_OK) != 0; i++) usleep(20000);
}

/* Fill with 64 MiB allocations until refused. */
static int scenario_cap(void) {
  static CUdeviceptr p[4096];
  int n = 0;
  CUresult r = CUDA_SUCCESS;
  unsigned long long calls_before_refusal = 0;
  while (n < 4096) {
    if (fake_calls) calls_before_refusal = fake_calls("cuMemAlloc_v2");
    r = cu.alloc(&p[n], 64 * MIB);
    if (r) break;
    n++;
  }
  printf("allocated=%d\nrefused_code=%d\n", n, r);
  if (fake_calls) printf("driver_called_on_refusal=%llu\n", fake_calls("cuMemAlloc_v2") - calls_before_refusal);
  printf("device_used_at_cap=%llu\n", used_now());
  report_info();
  hold_if_asked();
  for (int i = 0; i < n; i++) cu.free(p[i]);
  printf("charged_after_free=%llu\n", charged());
  /* The process keeps working after a refusal. */
  CUdeviceptr q;
  printf("alloc_after=%d\n", cu.alloc(&q, 64 * MIB));
  cu.free(q);
  return 0;
}

/* Allocates and frees in a loop, so the figures keep moving and the slot keeps being rewritten, until the
 * hold file appears; then fills its cap as `cap` does. */
static int scenario_churn(void) {
  const char *path = getenv("VRAMCAP_E2E_HOLD");
  if (!path) return 2;
  printf("HOLD pid=%d\n", getpid());
  unsigned long long rounds = 0, failed = 0;
  for (int i = 0; i < 60000 && access(path, F_OK) != 0; i++) {
    CUdeviceptr q;
    if (cu.alloc(&q, 64 * MIB) == CUDA_SUCCESS) cu.free(q); else failed++;
    rounds++;
    usleep(1000);
  }
  printf("rounds=%llu\nfailed_rounds=%llu\n", rounds, failed);
  unsetenv("VRAMCAP_E2E_HOLD");
  return scenario_cap();
}

static int scenario_rounding(void) {
  unsigned long long sizes[] = {2 * MIB + 1, 3 * MIB, 10 * MIB + 7, 64 << 10, 1};
  for (int i = 0; i < 5; i++) {
    unsigned long long before = charged();
    CUdeviceptr p;
    CUresult r = cu.alloc(&p, sizes[i]);
    printf("size_%llu=%llu r=%d\n", sizes[i], charged() - before, r);
    cu.free(p);
  }
  /* 64 KiB allocations share 2 MiB pages (32 a page); freeing every other one frees no page. Our charge
   * and the device's own figure must move together. */
  CUdeviceptr q[64];
  unsigned long long before = charged(), used_before = used_now();
  for (int i = 0; i < 64; i++) cu.alloc(&q[i], 64 << 10);
  printf("packed_64=%llu\npacked_64_device=%llu\n", charged() - before, used_now() - used_before);
  for (int i = 0; i < 64; i += 2) cu.free(q[i]);
  printf("packed_half_freed=%llu\npacked_half_freed_device=%llu\n", charged() - before, used_now() - used_before);
  for (int i = 1; i < 64; i += 2) cu.free(q[i]);
  printf("packed_after_free=%llu\npacked_after_free_device=%llu\n", charged() - before, used_now() - used_before);
  return 0;
}

static int scenario_unknown_free(void) {
  unsigned long long before = fake_calls ? fake_calls("cuMemFree_v2") : 0;
  CUresult r = cu.free(0xdead0000ull);
  printf("unknown_free=%d\n", r);
  if (fake_calls) printf("driver_free_calls=%llu\n", fake_calls("cuMemFree_v2") - before);
  return 0;
}

static unsigned long long cap_bytes;
static volatile unsigned long long max_seen;
static volatile int refusals, other_errors;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_barrier_t barrier;

static int iterations = 400;

static void *worker(void *arg) {
  unsigned seed = (unsigned)(size_t)arg;
  CUdeviceptr held[16];
  int n = 0;
  cu.set_current(ctx);
  pthread_barrier_wait(&barrier);
  /* Everyone fills up at once, so the threads really compete for the cap, then churns. */
  for (int i = 0; i < iterations; i++) {
    if (i == 8) pthread_barrier_wait(&barrier);
    size_t size = ((rand_r(&seed) % 6) + 1) * MIB + (rand_r(&seed) % 3 ? 0 : 12345);
    CUdeviceptr p;
    CUresult r = cu.alloc(&p, size);
    unsigned long long u = used_now();
    pthread_mutex_lock(&lock);
    if (u > max_seen) max_seen = u;
    if (r == CUDA_ERROR_OUT_OF_MEMORY) refusals++;
    else if (r) other_errors++;
    pthread_mutex_unlock(&lock);
    if (!r) held[n++] = p;
    if (i >= 8 && (n >= 8 || (r && n))) cu.free(held[--n]);
  }
  while (n) cu.free(held[--n]);
  return NULL;
}

static int scenario_threads(int threads) {
  pthread_t t[64];
  pthread_barrier_init(&barrier, NULL, threads);
  for (int i = 0; i < threads; i++) pthread_create(&t[i], NULL, worker, (void *)(size_t)(i + 1));
  for (int i = 0; i < threads; i++) pthread_join(t[i], NULL);
  printf("threads=%d\nmax_device_used=%llu\nrefusals=%d\nother_errors=%d\n", threads, max_seen, refusals, other_errors);
  printf("charged_after=%llu\ndevice_used_after=%llu\n", charged(), used_now());
  (void)cap_bytes;
  return 0;
}

static int scenario_kinds(void) {
  unsigned long long base = charged();
  CUdeviceptr p; size_t pitch = 0;
  printf("pitch_r=%d\n", cu.pitch(&p, &pitch, 1000, 3000, 4));
  printf("pitch=%zu\npitch_charge=%llu\n", pitch, charged() - base);
  cu.free(p);
  printf("pitch_freed=%llu\n", charged() - base);

  printf("managed_r=%d\n", cu.managed(&p, 5 * MIB, 1));
  printf("managed_charge=%llu\n", charged() - base);
  cu.free(p);

  CUdeviceptr a[3];
  for (int i = 0; i < 3; i++) printf("async_r=%d\n", cu.alloc_async(&a[i], 3 * MIB, NULL));
  printf("async_charge=%llu\n", charged() - base);
  for (int i = 0; i < 3; i++) cu.free_async(a[i], NULL);
  printf("async_after_free=%llu\n", charged() - base);
  cu.alloc_async(&a[0], 3 * MIB, NULL);
  printf("async_reuse=%llu\n", charged() - base);
  cu.free_async(a[0], NULL);
  cu.sync(NULL);
  /* After the pool trimmed itself, a refused-looking request refreshes the pool's figure; here a small
   * allocation triggers the re-read of the pool through the async path. */
  cu.alloc_async(&a[0], 1 * MIB, NULL);
  cu.free_async(a[0], NULL);
  cu.sync(NULL);
  cu.alloc_async(&a[1], 2 * MIB, NULL);
  printf("async_after_trim=%llu\n", charged() - base);
  cu.free_async(a[1], NULL);
  cu.sync(NULL);

  base = charged();
  CUmemAllocationProp prop;
  memset(&prop, 0, sizeof prop);
  prop.type = 1; prop.location.type = 1; prop.location.id = 0;
  CUmemGenericAllocationHandle h;
  printf("create_r=%d\n", cu.create(&h, 8 * MIB, &prop, 0));
  printf("vmm_charge=%llu\n", charged() - base);
  CUdeviceptr va;
  cu.reserve(&va, 8 * MIB, 0, 0, 0);
  cu.map(va, 8 * MIB, 0, h, 0);
  cu.release(h);
  printf("vmm_released_but_mapped=%llu\n", charged() - base);
  cu.unmap(va, 8 * MIB);
  printf("vmm_unmapped=%llu\n", charged() - base);
  prop.location.type = 2; /* host memory is not counted */
  printf("host_create_r=%d\n", cu.create(&h, 8 * MIB, &prop, 0));
  printf("host_vmm_charge=%llu\n", charged() - base);
  cu.release(h);

  CUDA_ARRAY_DESCRIPTOR d = {1000, 1000, 0x20, 4};
  CUarray arr;
  printf("array_r=%d\n", cu.array_create(&arr, &d));
  printf("array_charge=%llu\n", charged() - base);
  cu.array_destroy(arr);
  printf("array_destroyed=%llu\n", charged() - base);
  return 0;
}

static int scenario_identity(void) {
  /* Unwrapped entry points come back as the driver's own pointer, on every path. */
  void *mine = fake_symbol ? fake_symbol("cuLaunchKernel") : NULL;
  void *via_dlsym = dlsym(driver, "cuLaunchKernel");
  void *via_gpa = NULL, *via_gpa_ptsz = NULL, *export_table = NULL;
  int st;
  gpa("cuLaunchKernel", &via_gpa, 12000, 0, &st);
  gpa("cuLaunchKernel", &via_gpa_ptsz, 12000, 2, &st);
  gpa("cuGetExportTable", &export_table, 12000, 0, &st);
  printf("launch_dlsym_identical=%d\n", via_dlsym && via_dlsym == mine);
  printf("launch_gpa_identical=%d\n", via_gpa && via_gpa == mine);
  printf("launch_ptsz_identical=%d\n", via_gpa_ptsz && fake_symbol && via_gpa_ptsz == fake_symbol("cuLaunchKernel_ptsz"));
  printf("export_table_identical=%d\n", export_table && fake_symbol && export_table == fake_symbol("cuGetExportTable"));
  /* Wrapped ones come back as ours, on every path, including cuGetProcAddress itself. */
  void *ours = dlsym(RTLD_DEFAULT, "cuMemAlloc_v2");
  void *alloc_gpa = NULL, *gpa_self = NULL, *gpa_v1 = NULL;
  gpa("cuMemAlloc", &alloc_gpa, 12000, 2, &st);
  printf("alloc_wrapped_dlsym=%d\n", dlsym(driver, "cuMemAlloc_v2") == ours && ours != (fake_symbol ? fake_symbol("cuMemAlloc_v2") : NULL));
  printf("alloc_wrapped_gpa=%d\n", alloc_gpa == ours);
  gpa("cuGetProcAddress", &gpa_self, 12000, 0, &st);
  gpa("cuGetProcAddress", &gpa_v1, 11030, 0, &st);
  printf("gpa_self_wrapped=%d\n", gpa_self == dlsym(RTLD_DEFAULT, "cuGetProcAddress_v2"));
  printf("gpa_v1_wrapped=%d\n", gpa_v1 == dlsym(RTLD_DEFAULT, "cuGetProcAddress"));
  printf("gpa_dlsym_wrapped=%d\n", (void *)gpa == dlsym(RTLD_DEFAULT, "cuGetProcAddress_v2"));
  return 0;
}

/* Every line of the real driver's table: our cuGetProcAddress_v2 must answer with the wrapper of exactly
 * the variant the driver names, with the driver's symbolStatus, and the driver's pointer otherwise. */
static int scenario_table(const char *file) {
  FILE *f = fopen(file, "r");
  if (!f) { printf("no_table=%s\n", file); return 3; }
  char line[512], name[256], sym[256];
  int checked = 0, mismatched = 0, wrapped = 0;
  while (fgets(line, sizeof line, f)) {
    int ver; unsigned long long fl;
    if (line[0] == '#' || sscanf(line, "%255s %d %llu -> %255s", name, &ver, &fl, sym) != 4) continue;
    void *p = (void *)1; int st = -1;
    CUresult r = gpa(name, &p, ver, fl, &st);
    int ok;
    if (!strcmp(sym, "none")) {
      ok = p == NULL && st == 2;
    } else {
      if (fake_symbol && !fake_symbol(sym)) continue; /* the fake does not implement it */
      void *expected = dlsym(RTLD_DEFAULT, sym); /* ours if we wrap it, else the driver's */
      ok = r == 0 && st == 0 && p == expected;
      Dl_info info;
      if (expected && dladdr(expected, &info) && info.dli_fname && strstr(info.dli_fname, "libvramcap")) wrapped++;
    }
    checked++;
    if (!ok) { mismatched++; if (mismatched < 10) printf("mismatch: %s", line); }
  }
  fclose(f);
  printf("table_checked=%d\ntable_wrapped=%d\ntable_mismatched=%d\n", checked, wrapped, mismatched);
  return 0;
}

static int scenario_nvml(void) {
  void *nvml = need(dlopen("libnvidia-ml.so.1", RTLD_NOW), "libnvidia-ml.so.1");
  int (*init)(void) = need(dlsym(nvml, "nvmlInit_v2"), "nvmlInit_v2");
  int (*handle)(unsigned, void **) = need(dlsym(nvml, "nvmlDeviceGetHandleByIndex_v2"), "handle");
  int (*meminfo)(void *, nvmlMemory_t *) = need(dlsym(nvml, "nvmlDeviceGetMemoryInfo"), "meminfo");
  init();
  void *h;
  handle(0, &h);
  CUdeviceptr p;
  cu.alloc(&p, 100 * MIB);
  nvmlMemory_t m;
  printf("nvml_r=%d\n", meminfo(h, &m));
  printf("nvml_total=%llu\nnvml_used=%llu\nnvml_free=%llu\n", m.total, m.used, m.free);
  printf("charged=%llu\n", charged());
  return 0;
}

/* How much a stream-ordered pool grows for requests of several sizes (the charge follows the pool). */
static int scenario_poolgrowth(void) {
  unsigned long long sizes[] = {1, 3, 8, 20, 33, 64, 100, 130, 64, 64, 64};
  CUdeviceptr p[11];
  for (int i = 0; i < 11; i++) {
    unsigned long long before = charged();
    CUresult r = cu.alloc_async(&p[i], sizes[i] * MIB, NULL);
    printf("pool_growth_%d_%lluMiB=%llu r=%d\n", i, sizes[i], charged() - before, r);
  }
  for (int i = 0; i < 11; i++) cu.free_async(p[i], NULL);
  cu.sync(NULL);
  return 0;
}

/* Stream-ordered allocations of MIB MiB from the default pool until refused; holds them (for a reader of
 * the segment), then frees them. The pool grows in steps, so the cap check reserves whole steps. */
static int scenario_pool_fill(unsigned long long mib) {
  static CUdeviceptr p[4096];
  int n = 0;
  CUresult r = CUDA_SUCCESS;
  while (n < 4096 && (r = cu.alloc_async(&p[n], mib * MIB, NULL)) == CUDA_SUCCESS) n++;
  printf("allocated=%d\nrefused_code=%d\ndevice_used_at_cap=%llu\n", n, r, used_now());
  hold_if_asked();
  for (int i = 0; i < n; i++) cu.free_async(p[i], NULL);
  cu.sync(NULL);
  return 0;
}

static int scenario_ctx(void) {
  /* A second context on the same device, created and destroyed, leaves the primary's charges alone. */
  unsigned long long base = charged();
  CUcontext primary, extra;
  CUdeviceptr p;
  cu.alloc(&p, 4 * MIB);
  printf("ctx_create=%d\n", cu.ctx_create(&extra, 0, 0));
  printf("ctx_destroy=%d\n", cu.ctx_destroy(extra));
  cu.retain(&primary, 0);
  cu.set_current(primary);
  printf("after_ctx_charge=%llu\n", charged() - base);
  return 0;
}

/* Memory charged to the device it lives on, whichever device is current: with device 0 current, fill
 * device 1 by cuMemCreate (location 1), by a thread that has device 1 current, by a pool created on
 * device 1 and by device 1's default pool; each until refused, printing what each device holds. */
static CUcontext ctx1;
static void *alloc_on_1(void *arg) {
  (void)arg;
  cu.set_current(ctx1);
  static CUdeviceptr p[256];
  int n = 0;
  while (n < 256 && cu.alloc(&p[n], 64 * MIB) == 0) n++;
  printf("thread_count=%d\nthread_used1=%llu\n", n, device_used ? device_used(1) : 0);
  for (int i = 0; i < n; i++) cu.free(p[i]);
  /* Managed memory is charged to the device current when it is allocated (all of it can land there). */
  n = 0;
  while (n < 256 && cu.managed(&p[n], 64 * MIB, 1) == 0) n++;
  printf("managed_count=%d\nmanaged_used1=%llu\n", n, device_used ? device_used(1) : 0);
  for (int i = 0; i < n; i++) cu.free(p[i]);
  return NULL;
}

static int fill_pool(const char *what, CUmemoryPool pool) {
  static CUdeviceptr p[256];
  int n = 0;
  while (n < 256 && cu.alloc_from_pool(&p[n], 64 * MIB, pool, NULL) == 0) n++;
  printf("%s_count=%d\n%s_used0=%llu\n%s_used1=%llu\n", what, n, what, device_used(0), what, device_used(1));
  for (int i = 0; i < n; i++) cu.free_async(p[i], NULL);
  cu.sync(NULL);
  return n;
}

static int scenario_cross(void) {
  if (cu.retain(&ctx1, 1)) { printf("no_device_1=1\n"); return 3; }
  cu.set_current(ctx);
  /* cuMemCreate on device 1 with device 0 current. */
  static CUmemGenericAllocationHandle h[256];
  CUmemAllocationProp prop = {0};
  prop.type = 1;
  prop.location.type = 1;
  prop.location.id = 1;
  int n = 0;
  while (n < 256 && cu.create(&h[n], 64 * MIB, &prop, 0) == 0) n++;
  printf("create_count=%d\ncreate_used0=%llu\ncreate_used1=%llu\n", n, device_used(0), device_used(1));
  for (int i = 0; i < n; i++) cu.release(h[i]);
  /* Another thread with device 1 current. */
  pthread_t t;
  pthread_create(&t, NULL, alloc_on_1, NULL);
  pthread_join(t, NULL);
  /* A pool created on device 1, and device 1's own pool, used while device 0 is current. */
  CUmemPoolProps props = {0};
  props.allocType = 1;
  props.location.type = 1;
  props.location.id = 1;
  CUmemoryPool mine, dflt;
  if (cu.pool_create(&mine, &props)) { printf("pool_create_failed=1\n"); return 3; }
  fill_pool("pool", mine);
  if (cu.get_mem_pool(&dflt, 1)) { printf("get_mem_pool_failed=1\n"); return 3; }
  fill_pool("default_pool", dflt);
  /* Device 0 is untouched, and still has its own room. */
  CUdeviceptr q;
  printf("dev0_alloc=%d\n", cu.alloc(&q, 64 * MIB));
  return 0;
}

/* A worker for the unloader's tests: holds MIB in 64 MiB allocations and frees them when asked, by
 * SIGUSR1 or by an HTTP POST on 127.0.0.1:$WORKER_PORT ($WORKER_HANG=1: accepts and never answers). */
static volatile sig_atomic_t asked;
static void on_usr1(int sig) { (void)sig; asked = 1; }
static volatile sig_atomic_t reload_asked;
static void on_usr2(int sig) { (void)sig; reload_asked = 1; }

static unsigned long long want_mib;
static volatile int want_ok;
static void *want_one(void *arg) {
  (void)arg;
  cu.set_current(ctx);
  pthread_barrier_wait(&barrier);
  CUdeviceptr p;
  if (cu.alloc(&p, want_mib * MIB) == CUDA_SUCCESS) __sync_fetch_and_add(&want_ok, 1);
  return NULL;
}

static double now_ms(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}

static int scenario_worker(unsigned long long mib) {
  static CUdeviceptr p[1024];
  int n = 0;
  /* The fake keeps a word of content per allocation: a checksum shows whether it survives suspension. */
  CUresult (*write_word)(CUdeviceptr, unsigned long long) = dlsym(RTLD_DEFAULT, "fakecuda_write");
  unsigned long long (*read_word)(CUdeviceptr) = dlsym(RTLD_DEFAULT, "fakecuda_read");
  for (unsigned long long left = mib; left > 0 && n < 1024; n++) {
    unsigned long long chunk = left < 64 ? left : 64;
    CUresult r = cu.alloc(&p[n], chunk * MIB);
    if (r) { printf("alloc_failed=%d\n", r); return 3; }
    if (write_word) write_word(p[n], (n + 1) * 0x9E3779B97F4A7C15ull);
    left -= chunk;
  }
  signal(SIGUSR1, on_usr1);
  signal(SIGUSR2, on_usr2);
  int listener = -1;
  const char *port = getenv("WORKER_PORT");
  if (port) {
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET;
    a.sin_port = htons(atoi(port));
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int one = 1;
    listener = socket(AF_INET, SOCK_STREAM, 0);
    setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(listener, (struct sockaddr *)&a, sizeof a) || listen(listener, 8)) { perror("listen"); return 3; }
  }
  printf("READY pid=%d held_mib=%llu\n", getpid(), mib);
  int hang = getenv("WORKER_HANG") != NULL;
  /* $WORKER_TICK: a CUDA call every 50 ms, printed, so a test sees when the worker is held up. */
  int tick = getenv("WORKER_TICK") != NULL, ticks = 0;
  double last_tick = now_ms();
  for (;;) {
    if (tick && now_ms() - last_tick >= 50) {
      CUdeviceptr t;
      if (cu.alloc(&t, MIB) == 0) cu.free(t);
      int sum_ok = 1;
      for (int i = 0; read_word && i < n; i++) sum_ok &= read_word(p[i]) == (i + 1) * 0x9E3779B97F4A7C15ull;
      last_tick = now_ms();
      printf("TICK %d at_ms=%.0f sum_ok=%d\n", ++ticks, last_tick, sum_ok);
    }
    if (listener >= 0) {
      struct pollfd pf = {listener, POLLIN, 0};
      if (poll(&pf, 1, 20) > 0) {
        int c = accept(listener, NULL, NULL);
        char buf[1024];
        if (c >= 0 && read(c, buf, sizeof buf) > 0 && !hang) {
          const char *ok = "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
          if (write(c, ok, strlen(ok)) < 0) perror("write");
          close(c);
          asked = 1;
        }
        /* A hanging worker keeps the connection open and never answers. */
      }
    } else {
      usleep(20000);
    }
    if (asked && n > 0) {
      for (int i = 0; i < n; i++) cu.free(p[i]);
      printf("UNLOADED pid=%d at_ms=%.0f\n", getpid(), now_ms());
      n = 0;
    }
    /* SIGUSR2 after an unload: load again (vLLM's /wake_up after /sleep). */
    if (reload_asked && n == 0) {
      reload_asked = 0;
      asked = 0;
      for (unsigned long long left = mib; left > 0 && n < 1024; n++) {
        unsigned long long chunk = left < 64 ? left : 64;
        if (cu.alloc(&p[n], chunk * MIB)) { printf("reload_failed=1\n"); break; }
        left -= chunk;
      }
      printf("RELOADED pid=%d at_ms=%.0f\n", getpid(), now_ms());
    }
  }
}

/* ---- graphs, stream capture and limits ---- */

static CUdeviceptr (*fake_malloc_kernel)(void);
static CUdeviceptr (*fake_local_kernel)(unsigned long long);

static CUstream make_stream(void) {
  REQ(stream_create);
  CUstream st = NULL;
  CUresult r = cu.stream_create(&st, CU_STREAM_NON_BLOCKING);
  if (r) { printf("stream_create_failed=%d\n", r); exit(3); }
  return st;
}

static unsigned long long graph_reserved_on(CUdevice dev) {
  cuuint64_t v = 0;
  cu.graph_attr(dev, CU_GRAPH_MEM_ATTR_RESERVED_MEM_CURRENT, &v);
  return v;
}

static unsigned long long graph_reserved(void) { return graph_reserved_on(0); }

/* A graph of one allocation node of BYTES on device DEV (cuGraphAddMemAllocNode, or cuGraphAddNode with type
 * MEM_ALLOC), and with WITH_FREE a free node of it after it; its address in *VA. An allocation on another
 * device is mapped for device 0 too, whose kernels use it (a peer mapping takes no memory on device 0). */
static CUresult alloc_graph_on(CUdevice dev, CUgraph *g, unsigned long long bytes, int with_free, int addnode,
                               CUdeviceptr *va) {
  REQ(graph_create); REQ(add_alloc_node); REQ(add_free_node);
  CUresult r = cu.graph_create(g, 0);
  if (r) return r;
  CUgraphNode a, f;
  CUmemAccessDesc peer = {{CU_MEM_LOCATION_TYPE_DEVICE, 0}, CU_MEM_ACCESS_FLAGS_PROT_READWRITE};
  CUDA_MEM_ALLOC_NODE_PARAMS ap;
  memset(&ap, 0, sizeof ap);
  ap.poolProps.allocType = CU_MEM_ALLOCATION_TYPE_PINNED;
  ap.poolProps.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
  ap.poolProps.location.id = dev;
  ap.bytesize = bytes;
  if (dev != 0) {
    ap.accessDescs = &peer;
    ap.accessDescCount = 1;
  }
  if (addnode) {
    REQ(add_node);
    CUgraphNodeParams np;
    memset(&np, 0, sizeof np);
    np.type = CU_GRAPH_NODE_TYPE_MEM_ALLOC;
    np.alloc = ap;
    r = cu.add_node(&a, *g, NULL, NULL, 0, &np);
    *va = np.alloc.dptr;
  } else {
    r = cu.add_alloc_node(&a, *g, NULL, 0, &ap);
    *va = ap.dptr;
  }
  if (r || !with_free) return r;
  return cu.add_free_node(&f, *g, &a, 1, *va);
}

static CUresult alloc_graph(CUgraph *g, unsigned long long bytes, int with_free, int addnode, CUdeviceptr *va) {
  return alloc_graph_on(0, g, bytes, with_free, addnode, va);
}

/* N graphs, each one allocation of MIB that outlives it, launched in order until one is refused. */

/* Whether 64 MiB can still be allocated in context C (it is left current): prints TAG=the answer. */
static void alloc_after(const char *tag, CUcontext c) {
  CUdeviceptr q;
  cu.set_current(c);
  CUresult r = cu.alloc(&q, 64 * MIB);
  printf("%s=%d\n", tag, r);
  if (!r) cu.free(q);
}

/* Launches e[0..n) on st until the driver (or vramcap) refuses one; prints how many ran, the refusal's
 * code and, on the fake, whether the refused launch reached the driver. Returns how many ran. */
static int launch_until_refused(CUgraphExec *e, int n, CUstream st) {
  int k = 0;
  CUresult refused = 0;
  unsigned long long calls_before = 0, calls_on_refusal = 0;
  for (; k < n; k++) {
    if (fake_calls) calls_before = fake_calls("cuGraphLaunch");
    CUresult r = cu.launch(e[k], st);
    if (r) {
      refused = r;
      if (fake_calls) calls_on_refusal = fake_calls("cuGraphLaunch") - calls_before;
      break;
    }
  }
  cu.sync(st);
  printf("launched=%d\nlaunch_refused_code=%d\n", k, refused);
  if (fake_calls) printf("driver_called_on_refusal=%llu\n", calls_on_refusal);
  return k;
}
static int scenario_graphs(int n, unsigned long long mib, int addnode) {
  REQ(instantiate); REQ(launch); REQ(exec_destroy); REQ(graph_destroy); REQ(graph_trim); REQ(graph_attr);
  CUstream st = make_stream();
  if (n < 1) n = 1;
  CUgraph *g = calloc(n, sizeof *g);
  CUgraphExec *e = calloc(n, sizeof *e);
  CUdeviceptr *va = calloc(n, sizeof *va);
  for (int i = 0; i < n; i++) {
    CUresult r = alloc_graph(&g[i], mib * MIB, 0, addnode, &va[i]);
    if (r) { printf("graph_build_failed=%d\n", r); return 3; }
    r = cu.instantiate(&e[i], g[i], 0);
    if (r) { printf("instantiate_failed=%d\n", r); return 3; }
  }
  int k = launch_until_refused(e, n, st);
  printf("charged_graphs=%llu\ndevice_used=%llu\ngraph_reserved=%llu\n", charged(), used_now(), graph_reserved());
  hold_if_asked();
  for (int i = 0; i < k; i++) cu.free(va[i]);
  for (int i = 0; i < n; i++) cu.exec_destroy(e[i]);
  printf("charged_after_free=%llu\n", charged());
  cu.graph_trim(0);
  printf("charged_after_trim=%llu\nreserved_after_trim=%llu\n", charged(), graph_reserved());
  for (int i = 0; i < n; i++) cu.graph_destroy(g[i]);
  CUdeviceptr q;
  CUresult r = cu.alloc(&q, 64 * MIB);
  printf("alloc_after=%d\n", r);
  if (!r) cu.free(q);
  return 0;
}

/* One graph that allocates and frees MIB, launched once and then 1000 times more. */
static int scenario_graph_relaunch(unsigned long long mib) {
  REQ(instantiate); REQ(launch);
  CUstream st = make_stream();
  CUgraph g;
  CUgraphExec e;
  CUdeviceptr va;
  CUresult r = alloc_graph(&g, mib * MIB, 1, 0, &va);
  if (r) { printf("graph_build_failed=%d\n", r); return 3; }
  r = cu.instantiate(&e, g, 0);
  if (r) { printf("instantiate_failed=%d\n", r); return 3; }
  unsigned long long before = fake_calls ? fake_calls("cuGraphLaunch") : 0;
  r = cu.launch(e, st);
  cu.sync(st);
  printf("first_launch=%d\ncharged_after_first=%llu\n", r, charged());
  int failures = 0;
  for (int i = 0; i < 1000; i++) failures += cu.launch(e, st) != 0;
  cu.sync(st);
  printf("relaunch_failures=%d\ncharged_after_relaunches=%llu\n", failures, charged());
  if (fake_calls) printf("driver_launches=%llu\n", fake_calls("cuGraphLaunch") - before);
  return 0;
}

/* Upload at instantiation (cuGraphInstantiateWithParams with UPLOAD), then cuGraphUpload of a second
 * graph of the same size. */
static int scenario_graph_upload(unsigned long long mib) {
  REQ(instantiate); REQ(instantiate_params); REQ(upload);
  CUstream st = make_stream();
  CUgraph g1, g2;
  CUgraphExec e1 = NULL, e2 = NULL;
  CUdeviceptr va;
  CUresult r = alloc_graph(&g1, mib * MIB, 1, 0, &va);
  if (r) { printf("graph_build_failed=%d\n", r); return 3; }
  CUDA_GRAPH_INSTANTIATE_PARAMS ip;
  memset(&ip, 0, sizeof ip);
  ip.flags = CUDA_GRAPH_INSTANTIATE_FLAG_UPLOAD;
  ip.hUploadStream = st;
  ip.result_out = -1;
  r = cu.instantiate_params(&e1, g1, &ip);
  cu.sync(st);
  printf("instantiate_upload=%d\nresult_out=%d\ncharged_after_upload=%llu\n", r, ip.result_out, charged());
  r = alloc_graph(&g2, mib * MIB, 1, 0, &va);
  if (r) { printf("graph_build_failed=%d\n", r); return 3; }
  r = cu.instantiate(&e2, g2, 0);
  if (r) { printf("instantiate_failed=%d\n", r); return 3; }
  r = cu.upload(e2, st);
  cu.sync(st);
  printf("upload=%d\ncharged_after_second_upload=%llu\n", r, charged());
  return 0;
}

/* A stream-ordered allocation and free of MIB captured in MODE, with a (hooked) cuMemGetInfo inside the
 * capture; with BUSY the capture stays open 300 ms, so the library's background thread runs during it. */
static int scenario_capture(const char *mode_name, unsigned long long mib, int busy) {
  REQ(begin_capture); REQ(end_capture); REQ(is_capturing); REQ(get_nodes); REQ(node_type); REQ(instantiate);
  REQ(launch); REQ(exec_destroy); REQ(graph_destroy); REQ(graph_trim);
  int mode = !strcmp(mode_name, "thread")    ? CU_STREAM_CAPTURE_MODE_THREAD_LOCAL
             : !strcmp(mode_name, "relaxed") ? CU_STREAM_CAPTURE_MODE_RELAXED
                                             : CU_STREAM_CAPTURE_MODE_GLOBAL;
  CUstream st = make_stream();
  if (busy) {
    /* A pool the library knows and a count that moved: its background reading (every 200 ms while the
     * count moves, every second otherwise) re-reads the pool during the capture below. */
    CUdeviceptr q = 0;
    if (cu.alloc_async(&q, MIB, st) == CUDA_SUCCESS) cu.free_async(q, st);
    cu.sync(st);
  }
  long long base = (long long)charged();
  CUresult r = cu.begin_capture(st, mode);
  if (r) { printf("begin_capture_failed=%d\n", r); return 3; }
  CUdeviceptr p = 0;
  CUresult ra = cu.alloc_async(&p, mib * MIB, st);
  int status = -1;
  cu.is_capturing(st, &status);
  CUresult rf = cu.free_async(p, st);
  size_t fr = 0, total = 0;
  CUresult ri = cu.info(&fr, &total);
  if (busy) usleep(1500000);
  long long during = (long long)charged();
  CUgraph g = NULL;
  CUresult re = cu.end_capture(st, &g);
  printf("alloc_in_capture=%d\nfree_in_capture=%d\ninfo_in_capture=%d\nend_capture=%d\n", ra, rf, ri, re);
  printf("capture_status_after_alloc=%d\ncharged_delta_capture=%lld\n", status, during - base);
  if (re || !g) return 0;
  size_t n = 0;
  cu.get_nodes(g, NULL, &n);
  CUgraphNode *nodes = calloc(n ? n : 1, sizeof *nodes);
  cu.get_nodes(g, nodes, &n);
  int allocs = 0, frees = 0;
  for (size_t i = 0; i < n; i++) {
    int t = -1;
    cu.node_type(nodes[i], &t);
    allocs += t == CU_GRAPH_NODE_TYPE_MEM_ALLOC;
    frees += t == CU_GRAPH_NODE_TYPE_MEM_FREE;
  }
  free(nodes);
  printf("alloc_nodes=%d\nfree_nodes=%d\n", allocs, frees);
  CUgraphExec e = NULL;
  r = cu.instantiate(&e, g, 0);
  if (!r) r = cu.launch(e, st);
  cu.sync(st);
  printf("launch=%d\ncharged_after_launch_delta=%lld\n", r, (long long)charged() - base);
  if (e) cu.exec_destroy(e);
  cu.graph_destroy(g);
  cu.graph_trim(0);
  printf("charged_after_trim_delta=%lld\n", (long long)charged() - base);
  return 0;
}

static CUstream other_stream;
static unsigned long long other_mib;
static CUresult other_alloc_r = -1;
static void *alloc_in_other_thread(void *arg) {
  (void)arg;
  cu.set_current(ctx);
  CUdeviceptr p;
  other_alloc_r = cu.alloc_async(&p, other_mib * MIB, other_stream);
  if (!other_alloc_r) cu.free_async(p, other_stream);
  return NULL;
}

/* The control: a GLOBAL capture on the main thread is invalidated by another thread's (default mode)
 * stream-ordered allocation on another stream, as the driver does. */
static int scenario_capture_other_thread(unsigned long long mib) {
  REQ(begin_capture); REQ(end_capture); REQ(graph_destroy);
  CUstream st = make_stream();
  other_stream = make_stream();
  other_mib = mib;
  CUresult r = cu.begin_capture(st, CU_STREAM_CAPTURE_MODE_GLOBAL);
  if (r) { printf("begin_capture_failed=%d\n", r); return 3; }
  pthread_t t;
  pthread_create(&t, NULL, alloc_in_other_thread, NULL);
  pthread_join(t, NULL);
  CUgraph g = NULL;
  CUresult re = cu.end_capture(st, &g);
  if (g) cu.graph_destroy(g);
  printf("other_alloc=%d\nend_capture=%d\n", other_alloc_r, re);
  return 0;
}

static CUresult launch_fake_kernel(CUdeviceptr f) {
  return cu.launch_kernel((CUfunction)(size_t)f, 1, 1, 1, 32, 1, 1, 0, NULL, NULL, NULL);
}

/* What each limit takes, and when. */
static int scenario_limits(void) {
  REQ(set_limit); REQ(get_limit);
  size_t v = 0;
  cu.get_limit(&v, CU_LIMIT_STACK_SIZE);
  printf("stack_default=%zu\n", v);
  long long c0 = (long long)charged(), d0 = (long long)used_now();
  CUresult r = cu.set_limit(CU_LIMIT_STACK_SIZE, 16384);
  cu.get_limit(&v, CU_LIMIT_STACK_SIZE);
  printf("stack_16k=%d\nstack_after=%zu\n", r, v);
  printf("charged_stack_delta=%lld\ndevice_stack_delta=%lld\n", (long long)charged() - c0, (long long)used_now() - d0);
  r = cu.set_limit(CU_LIMIT_STACK_SIZE, 1024);
  printf("stack_back=%d\ncharged_back_delta=%lld\n", r, (long long)charged() - c0);
  long long c1 = (long long)charged(), d1 = (long long)used_now();
  r = cu.set_limit(CU_LIMIT_MALLOC_HEAP_SIZE, 1ull << 30);
  printf("heap_1g=%d\ncharged_heap_delta=%lld\ndevice_heap_delta=%lld\n", r, (long long)charged() - c1,
         (long long)used_now() - d1);
  if (fake_malloc_kernel && cu.launch_kernel) {
    long long c2 = (long long)charged(), d2 = (long long)used_now();
    r = launch_fake_kernel(fake_malloc_kernel());
    printf("malloc_kernel=%d\ndevice_after_malloc_kernel_delta=%lld\ncharged_after_malloc_kernel_delta=%lld\n", r,
           (long long)used_now() - d2, (long long)charged() - c2);
  } else {
    printf("malloc_kernel=skipped\n");
  }
  printf("heap_after_kernel=%d\n", cu.set_limit(CU_LIMIT_MALLOC_HEAP_SIZE, 2ull << 30));
  long long c3 = (long long)charged();
  r = cu.set_limit(CU_LIMIT_PRINTF_FIFO_SIZE, 256 * MIB);
  printf("printf=%d\ncharged_printf_delta=%lld\n", r, (long long)charged() - c3);
  return 0;
}

/* A number with an optional K, M or G suffix. */
static unsigned long long parse_size(const char *s) {
  char *end;
  unsigned long long v = strtoull(s, &end, 10);
  switch (*end) {
  case 'K': case 'k': return v << 10;
  case 'M': case 'm': return v << 20;
  case 'G': case 'g': return v << 30;
  default: return v;
  }
}

static int limit_named(const char *name) {
  return !strcmp(name, "stack")     ? CU_LIMIT_STACK_SIZE
         : !strcmp(name, "heap")    ? CU_LIMIT_MALLOC_HEAP_SIZE
         : !strcmp(name, "printf")  ? CU_LIMIT_PRINTF_FIFO_SIZE
         : !strcmp(name, "pending") ? CU_LIMIT_DEV_RUNTIME_PENDING_LAUNCH_COUNT
                                    : -1;
}

/* One limit set to VALUE: what it reads back, what it took, and whether the process still allocates. */
static int scenario_limits_one(const char *name, const char *value) {
  REQ(set_limit); REQ(get_limit);
  int limit = limit_named(name);
  if (limit < 0) { printf("unknown_limit=%s\n", name); return 2; }
  long long c0 = (long long)charged(), d0 = (long long)used_now();
  CUresult r = cu.set_limit(limit, parse_size(value));
  size_t v = 0;
  cu.get_limit(&v, limit);
  printf("set=%d\nvalue_after=%zu\n", r, v);
  printf("charged_delta=%lld\ndevice_delta=%lld\n", (long long)charged() - c0, (long long)used_now() - d0);
  CUdeviceptr q;
  r = cu.alloc(&q, 64 * MIB);
  printf("alloc_after=%d\n", r);
  if (!r) cu.free(q);
  return 0;
}

/* The driver grows the stack on its own for a kernel with BYTES of local memory per thread, after MIB was
 * allocated: then an allocation that would have fitted beforehand must not. (Fake only.) */
static int scenario_local_growth(unsigned long long bytes, unsigned long long mib) {
  if (!fake_local_kernel) { printf("local_kernel=skipped\n"); return 0; }
  REQ(launch_kernel);
  CUdeviceptr p, q;
  CUresult r = cu.alloc(&p, mib * MIB);
  if (r) { printf("alloc_failed=%d\n", r); return 3; }
  unsigned long long before = charged();
  long long d0 = (long long)used_now();
  printf("charged_before=%llu\n", before);
  r = launch_fake_kernel(fake_local_kernel(bytes));
  printf("launch=%d\ndevice_after_launch_delta=%lld\n", r, (long long)used_now() - d0);
  usleep(500000);
  printf("charged_after_launch_delta=%lld\n", (long long)charged() - (long long)before);
  size_t fr = 0, cap = 0;
  cu.info(&fr, &cap);
  unsigned long long want = cap > before ? (cap - before) / (2 * MIB) * (2 * MIB) : 0;
  r = cu.alloc(&q, want);
  printf("alloc_after_growth=%d\n", r);
  if (!r) cu.free(q);
  return 0;
}

/* ---- two devices: graph memory, limits and captured steps off device 0 ---- */

/* The charge in context C (the capped memory-info of its device); C stays current. */
static unsigned long long charged_in(CUcontext c) {
  cu.set_current(c);
  return charged();
}

/* What device DEV holds for us: the fake's own figure, or on the real driver our capped figure there. */
static unsigned long long used_on(int dev, CUcontext c) {
  if (device_used) return device_used(dev);
  unsigned long long v = charged_in(c);
  cu.set_current(ctx);
  return v;
}

static void report_two(const char *tag) {
  unsigned long long c0 = charged_in(ctx), c1 = charged_in(ctx1);
  cu.set_current(ctx);
  printf("%s_charged0=%llu\n%s_charged1=%llu\n%s_used0=%llu\n%s_used1=%llu\n", tag, c0, tag, c1, tag,
         used_on(0, ctx), tag, used_on(1, ctx1));
  printf("%s_reserved0=%llu\n%s_reserved1=%llu\n", tag, graph_reserved_on(0), tag, graph_reserved_on(1));
}

/* N graphs, each one allocation of MIB on device 1 that outlives it, built, instantiated and launched in
 * order on a stream of device 0 with device 0 current, until one is refused. BUILD: explicit
 * (cuGraphAddMemAllocNode), addnode (cuGraphAddNode), or captured (cuMemAllocFromPoolAsync from device 1's
 * pool, captured on the device 0 stream: the node takes the pool's device). */
static int scenario_graphs_on_1(int n, unsigned long long mib, const char *build) {
  REQ(instantiate); REQ(launch); REQ(exec_destroy); REQ(graph_destroy); REQ(graph_trim); REQ(graph_attr);
  if (cu.retain(&ctx1, 1)) { printf("no_device_1=1\n"); return 3; }
  cu.set_current(ctx);
  CUstream st = make_stream();
  int captured = !strcmp(build, "captured");
  CUmemoryPool pool1 = NULL;
  if (captured) {
    REQ(begin_capture); REQ(end_capture);
    if (cu.get_mem_pool(&pool1, 1)) { printf("get_mem_pool_failed=1\n"); return 3; }
  }
  if (n < 1) n = 1;
  CUgraph *g = calloc(n, sizeof *g);
  CUgraphExec *e = calloc(n, sizeof *e);
  CUdeviceptr *va = calloc(n, sizeof *va);
  for (int i = 0; i < n; i++) {
    CUresult r;
    if (captured) {
      r = cu.begin_capture(st, CU_STREAM_CAPTURE_MODE_GLOBAL);
      CUresult ra = r ? r : cu.alloc_from_pool(&va[i], mib * MIB, pool1, st);
      CUresult re = r ? r : cu.end_capture(st, &g[i]);
      r = r ? r : ra ? ra : re;
    } else {
      r = alloc_graph_on(1, &g[i], mib * MIB, 0, !strcmp(build, "addnode"), &va[i]);
    }
    if (r) { printf("graph_build_failed=%d\n", r); return 3; }
    r = cu.instantiate(&e[i], g[i], 0);
    if (r) { printf("instantiate_failed=%d\n", r); return 3; }
  }
  printf("built=%s\n", build);
  int k = launch_until_refused(e, n, st);
  report_two("held");
  hold_if_asked();
  for (int i = 0; i < k; i++) cu.free(va[i]);
  for (int i = 0; i < n; i++) cu.exec_destroy(e[i]);
  printf("trim1=%d\n", cu.graph_trim(1));
  report_two("trimmed");
  for (int i = 0; i < n; i++) cu.graph_destroy(g[i]);
  alloc_after("alloc0_after", ctx);
  alloc_after("alloc1_after", ctx1);
  cu.set_current(ctx);
  return 0;
}

/* LIMIT set to VALUE with device 1's context current (device 0 has one too): what each device's limit
 * reads and what each device took, then, for the heap, the first kernel that calls malloc on device 1;
 * then the same value set with device 0's context current. */
static int scenario_limit_on_1(const char *name, const char *value) {
  REQ(set_limit); REQ(get_limit);
  int limit = limit_named(name);
  if (limit < 0) { printf("unknown_limit=%s\n", name); return 2; }
  if (cu.retain(&ctx1, 1)) { printf("no_device_1=1\n"); return 3; }
  long long c0 = (long long)charged_in(ctx), c1 = (long long)charged_in(ctx1);
  long long u0 = (long long)used_on(0, ctx), u1 = (long long)used_on(1, ctx1);
  size_t before0 = 0, before1 = 0, v0 = 0, v1 = 0;
  cu.set_current(ctx);
  cu.get_limit(&before0, limit);
  cu.set_current(ctx1);
  cu.get_limit(&before1, limit);
  CUresult r = cu.set_limit(limit, parse_size(value));
  cu.get_limit(&v1, limit);
  cu.set_current(ctx);
  cu.get_limit(&v0, limit);
  printf("set1=%d\nvalue1_before=%zu\nvalue1=%zu\nvalue0_before=%zu\nvalue0=%zu\n", r, before1, v1, before0, v0);
#define DELTAS(tag)                                                                                                \
  printf(tag "_charged0_delta=%lld\n" tag "_charged1_delta=%lld\n", (long long)charged_in(ctx) - c0,                \
         (long long)charged_in(ctx1) - c1);                                                                        \
  printf(tag "_used0_delta=%lld\n" tag "_used1_delta=%lld\n", (long long)used_on(0, ctx) - u0,                      \
         (long long)used_on(1, ctx1) - u1)
  DELTAS("set");
  if (limit == CU_LIMIT_MALLOC_HEAP_SIZE && fake_malloc_kernel && cu.launch_kernel) {
    cu.set_current(ctx1);
    printf("kernel1=%d\n", launch_fake_kernel(fake_malloc_kernel()));
    DELTAS("kernel");
  }
  /* Device 0's own limit, set to the same value with its context current. */
  c0 = (long long)charged_in(ctx);
  r = cu.set_limit(limit, parse_size(value));
  printf("set0=%d\nset0_charged0_delta=%lld\n", r, (long long)charged_in(ctx) - c0);
#undef DELTAS
  alloc_after("alloc1_after", ctx1);
  cu.set_current(ctx);
  return 0;
}

/* One rank of a two-process job on its own device DEV (the process's current device): its step captured
 * once into a graph and replayed REPLAYS times, then the device filled to its cap with 64 MiB blocks and
 * the step replayed there. STYLE async, as under PyTorch's cudaMallocAsync backend: an eager warm-up step
 * from the default pool, then a capture whose activations (MIB/2, freed inside the graph) and output (MIB,
 * kept: a static output) become graph allocation nodes, instantiated with AUTO_FREE_ON_LAUNCH as PyTorch
 * does; STYLE default, as under the caching allocator: the buffers allocated before the capture, which
 * holds only the kernels. The kernels are the fake's plain ones (fake only). */
static int scenario_graph_step(const char *style, unsigned long long mib, int replays, int dev) {
  if (!fake_local_kernel) { printf("graph_step=skipped\n"); return 0; }
  REQ(begin_capture); REQ(end_capture); REQ(get_nodes); REQ(node_type); REQ(instantiate); REQ(launch);
  REQ(exec_destroy); REQ(graph_destroy); REQ(launch_kernel);
  CUcontext mine = ctx;
  if (dev != 0 && cu.retain(&mine, dev)) { printf("no_device=%d\n", dev); return 3; }
  cu.set_current(mine);
  int async = !strcmp(style, "async");
  int count = 0;
  cu.count(&count);
  CUstream st = make_stream();
  /* 512 bytes of local memory a thread: within the default stack, so the kernel takes nothing. */
  CUfunction k = (CUfunction)(size_t)fake_local_kernel(512);
#define KERNEL() cu.launch_kernel(k, 1, 1, 1, 32, 1, 1, 0, st, NULL, NULL)
  unsigned long long half = mib * MIB / 2, whole = mib * MIB;
  CUdeviceptr act = 0, out = 0;
  CUresult r = 0;
  if (async) {
    r = cu.alloc_async(&act, half, st);
    if (!r) r = KERNEL();
    if (!r) r = cu.free_async(act, st);
    if (!r) r = cu.sync(st);
  } else {
    r = cu.alloc(&act, half);
    if (!r) r = cu.alloc(&out, whole);
  }
  printf("style=%s\nbefore_capture=%d\n", style, r);
  if (r) return 3;
  r = cu.begin_capture(st, CU_STREAM_CAPTURE_MODE_GLOBAL);
  if (!r && async) r = cu.alloc_async(&act, half, st);
  if (!r) r = KERNEL();
  if (!r && async) r = cu.alloc_async(&out, whole, st);
  if (!r) r = KERNEL();
  if (!r && async) r = cu.free_async(act, st);
  CUgraph g = NULL;
  CUresult re = cu.end_capture(st, &g);
  printf("capture=%d\nend_capture=%d\n", r, re);
  if (r || re || !g) return 3;
#undef KERNEL
  size_t n = 0;
  cu.get_nodes(g, NULL, &n);
  CUgraphNode *nodes = calloc(n ? n : 1, sizeof *nodes);
  cu.get_nodes(g, nodes, &n);
  int allocs = 0;
  for (size_t i = 0; i < n; i++) {
    int t = -1;
    cu.node_type(nodes[i], &t);
    allocs += t == CU_GRAPH_NODE_TYPE_MEM_ALLOC;
  }
  free(nodes);
  printf("alloc_nodes=%d\n", allocs);
  CUgraphExec e = NULL;
  r = cu.instantiate(&e, g, async ? CUDA_GRAPH_INSTANTIATE_FLAG_AUTO_FREE_ON_LAUNCH : 0);
  if (r) { printf("instantiate_failed=%d\n", r); return 3; }
  r = cu.launch(e, st);
  cu.sync(st);
  printf("first_launch=%d\ncharged_first=%llu\nused_first=%llu\n", r, charged(), used_on(dev, mine));
  cu.set_current(mine);
  int failures = 0;
  for (int i = 0; i < replays; i++) failures += cu.launch(e, st) != 0;
  cu.sync(st);
  printf("replay_failures=%d\ncharged_after_replays=%llu\nused_after_replays=%llu\n", failures, charged(),
         used_on(dev, mine));
  cu.set_current(mine);
  static CUdeviceptr fill[1024];
  int filled = 0;
  while (filled < 1024 && (r = cu.alloc(&fill[filled], 64 * MIB)) == 0) filled++;
  printf("fill_count=%d\nfill_code=%d\ncharged_at_cap=%llu\nused_at_cap=%llu\n", filled, r, charged(),
         used_on(dev, mine));
  cu.set_current(mine);
  r = cu.launch(e, st);
  cu.sync(st);
  printf("replay_at_cap=%d\ncharged_after_replay_at_cap=%llu\nused_after_replay_at_cap=%llu\n", r, charged(),
         used_on(dev, mine));
  if (device_used && count > 1) printf("used_other=%llu\n", device_used(1 - dev));
  cu.set_current(mine);
  hold_if_asked();
  for (int i = 0; i < filled; i++) cu.free(fill[i]);
  cu.exec_destroy(e);
  cu.graph_destroy(g);
  if (!async) {
    cu.free(act);
    cu.free(out);
  }
  return 0;
}

int main(int argc, char **argv) {
  setvbuf(stdout, NULL, _IOLBF, 0);
  if (argc < 3) { fprintf(stderr, "usage: client link|dlsym|gpa SCENARIO [ARG]\n"); return 2; }
  load(argv[1]);
  device_used = dlsym(RTLD_DEFAULT, "fakecuda_device_used");
  fake_calls = dlsym(RTLD_DEFAULT, "fakecuda_calls");
  fake_symbol = dlsym(RTLD_DEFAULT, "fakecuda_symbol");
  fake_malloc_kernel = dlsym(RTLD_DEFAULT, "fakecuda_malloc_kernel");
  fake_local_kernel = dlsym(RTLD_DEFAULT, "fakecuda_local_kernel");
  const char *s = argv[2];
  if (!strcmp(s, "table")) { cu.init(0); return scenario_table(argc > 3 ? argv[3] : ""); }
  if (!strcmp(s, "identity")) { cu.init(0); return scenario_identity(); }
  if (!strcmp(s, "rtld_next")) {
    int (*probe)(void) = dlsym(RTLD_DEFAULT, "next_getuid_is_libc");
    printf("rtld_next_ok=%d\n", probe ? probe() : -1);
    return 0;
  }
  if (!strcmp(s, "nocontext")) {
    /* An allocation with no current context: the driver's error, nothing charged; then one with. */
    CUdeviceptr p;
    cu.init(0);
    printf("nocontext_r=%d\n", cu.alloc(&p, 64 * MIB));
    if (start()) return 3;
    unsigned long long base = charged();
    CUresult r = cu.alloc(&p, 64 * MIB);
    printf("base=%llu\nalloc_r=%d\ngrew=%llu\n", base, r, charged() - base);
    return 0;
  }
  CUresult r = start();
  if (!strcmp(s, "config")) {
    CUdeviceptr p;
    printf("alloc_r=%d\ndevice_used=%llu\n", cu.alloc(&p, MIB), used_now());
    return 0;
  }
  if (r) { printf("start_failed=%d\n", r); return 0; }
  if (!strcmp(s, "cap")) return scenario_cap();
  if (!strcmp(s, "churn")) return scenario_churn();
  if (!strcmp(s, "fork")) {
    /* A child forked by a CUDA process, using CUDA itself, takes a slot of its own. */
    int ready[2];
    if (pipe(ready) != 0) return 3;
    pid_t child = fork();
    if (child == 0) {
      CUdeviceptr p;
      cu.init(0);
      cu.alloc(&p, 4 * MIB);
      char one = 1;
      if (write(ready[1], &one, 1) != 1) _exit(3);
      setenv("VRAMCAP_E2E_HOLD_QUIET", "1", 1);
      const char *path = getenv("VRAMCAP_E2E_HOLD");
      for (int i = 0; path && i < 6000 && access(path, F_OK) != 0; i++) usleep(20000);
      _exit(0);
    }
    char one;
    if (read(ready[0], &one, 1) != 1) return 3;
    printf("child_pid=%d\n", (int)child);
    hold_if_asked();
    int st;
    waitpid(child, &st, 0);
    return 0;
  }
  if (!strcmp(s, "rounding")) return scenario_rounding();
  if (!strcmp(s, "unknown_free")) return scenario_unknown_free();
  if (!strcmp(s, "threads")) {
    if (argc > 4) iterations = atoi(argv[4]);
    return scenario_threads(argc > 3 ? atoi(argv[3]) : 32);
  }
  if (!strcmp(s, "kinds")) return scenario_kinds();
  if (!strcmp(s, "nvml")) return scenario_nvml();
  if (!strcmp(s, "ctx")) return scenario_ctx();
  if (!strcmp(s, "poolgrowth")) return scenario_poolgrowth();
  if (!strcmp(s, "exec_cap")) {
    /* Claims a slot (cuInit), then replaces itself with exec, as a launcher script's last command does:
     * the new image claims again under the same PID and start time. */
    if (start()) return 3;
    char *next[] = {argv[0], argv[1], "cap", NULL};
    execv(argv[0], next);
    return 3;
  }
  if (!strcmp(s, "pool_fill")) return scenario_pool_fill(argc > 3 ? strtoull(argv[3], NULL, 10) : 1);
  if (!strcmp(s, "hidden")) {
    /* The driver takes 128 MiB on its own (a module load) right between two large allocations near
     * the cap: the cap must still hold on what the device really holds. */
    int (*hidden)(int, unsigned long long) = dlsym(RTLD_DEFAULT, "fakecuda_hidden_alloc");
    CUdeviceptr p[64];
    int n = 0;
    while (n < 6 && cu.alloc(&p[n], 64 * MIB) == 0) n++;
    if (hidden) hidden(0, 128 * MIB);
    unsigned long long peak = used_now();
    while (n < 64 && cu.alloc(&p[n], 64 * MIB) == 0) {
      n++;
      if (used_now() > peak) peak = used_now();
    }
    printf("allocated=%d\npeak_device_used=%llu\n", n, peak);
    return 0;
  }
  if (!strcmp(s, "async_fill")) {
    /* Stream-ordered allocations, never freed, until refused: the pool grows in steps under the cap. */
    static CUdeviceptr p[8192];
    int n = 0;
    CUresult r = 0;
    while (n < 8192 && (r = cu.alloc_async(&p[n], 2 * MIB, NULL)) == 0) n++;
    printf("allocated=%d\nlast_r=%d\ndevice_used=%llu\n", n, r, used_now());
    return 0;
  }
  if (!strcmp(s, "async_cap")) {
    CUdeviceptr a, b;
    printf("first_r=%d\n", cu.alloc_async(&a, 3 * MIB, NULL));
    printf("used_after_first=%llu\n", used_now());
    printf("second_r=%d\n", cu.alloc_async(&b, 3 * MIB, NULL));
    printf("used_after_second=%llu\ncharged=%llu\n", used_now(), charged());
    return 0;
  }
  if (!strcmp(s, "converge")) {
    CUdeviceptr p;
    cu.alloc(&p, 64 * MIB);
    printf("charged_at_start=%llu\n", charged());
    for (int i = 0; i < 30 && charged() == charged(); i++) usleep(100000);
    printf("charged_later=%llu\n", charged());
    return 0;
  }
  if (!strcmp(s, "info")) { report_info(); printf("charged=%llu\n", charged()); return 0; }
  if (!strcmp(s, "cross")) return scenario_cross();
  if (!strcmp(s, "worker")) return scenario_worker(argc > 3 ? strtoull(argv[3], NULL, 10) : 64);
  if (!strcmp(s, "graphs"))
    return scenario_graphs(argc > 3 ? atoi(argv[3]) : 4, argc > 4 ? strtoull(argv[4], NULL, 10) : 512,
                           argc > 5 && !strcmp(argv[5], "addnode"));
  if (!strcmp(s, "graph_relaunch")) return scenario_graph_relaunch(argc > 3 ? strtoull(argv[3], NULL, 10) : 512);
  if (!strcmp(s, "graph_upload")) return scenario_graph_upload(argc > 3 ? strtoull(argv[3], NULL, 10) : 256);
  if (!strcmp(s, "capture"))
    return scenario_capture(argc > 3 ? argv[3] : "global", argc > 4 ? strtoull(argv[4], NULL, 10) : 64,
                            argc > 5 && !strcmp(argv[5], "busy"));
  if (!strcmp(s, "capture_other_thread"))
    return scenario_capture_other_thread(argc > 3 ? strtoull(argv[3], NULL, 10) : 64);
  if (!strcmp(s, "limits")) return scenario_limits();
  if (!strcmp(s, "limits_one")) {
    if (argc < 5) { printf("usage=limits_one LIMIT VALUE\n"); return 2; }
    return scenario_limits_one(argv[3], argv[4]);
  }
  if (!strcmp(s, "local_growth"))
    return scenario_local_growth(argc > 3 ? parse_size(argv[3]) : 49152, argc > 4 ? strtoull(argv[4], NULL, 10) : 64);
  if (!strcmp(s, "graphs_on_1"))
    return scenario_graphs_on_1(argc > 3 ? atoi(argv[3]) : 8, argc > 4 ? strtoull(argv[4], NULL, 10) : 512,
                                argc > 5 ? argv[5] : "explicit");
  if (!strcmp(s, "limit_on_1")) {
    if (argc < 5) { printf("usage=limit_on_1 LIMIT VALUE\n"); return 2; }
    return scenario_limit_on_1(argv[3], argv[4]);
  }
  if (!strcmp(s, "graph_step"))
    return scenario_graph_step(argc > 3 ? argv[3] : "async", argc > 4 ? strtoull(argv[4], NULL, 10) : 256,
                               argc > 5 ? atoi(argv[5]) : 10, argc > 6 ? atoi(argv[6]) : 0);
  if (!strcmp(s, "want_threads")) {
    /* THREADS threads allocate MIB each at once (as a framework's threads meet a full device together):
       each may wait for the unloader with VRAMCAP_WAIT. */
    int n = argc > 3 ? atoi(argv[3]) : 8;
    want_mib = argc > 4 ? strtoull(argv[4], NULL, 10) : 64;
    if (n > 64) n = 64;
    pthread_t t[64];
    pthread_barrier_init(&barrier, NULL, (unsigned)n);
    double t0 = now_ms();
    for (int i = 0; i < n; i++) pthread_create(&t[i], NULL, want_one, NULL);
    for (int i = 0; i < n; i++) pthread_join(t[i], NULL);
    printf("want_ok=%d\nwant_threads=%d\nwant_ms=%.0f\n", want_ok, n, now_ms() - t0);
    return 0;
  }
  if (!strcmp(s, "want")) {
    /* One allocation of MIB (cuMemAlloc, or the path named: async, create), timed: with VRAMCAP_WAIT it
       may wait for the unloader. */
    CUdeviceptr p;
    unsigned long long mib = argc > 3 ? strtoull(argv[3], NULL, 10) : 64;
    const char *path = argc > 4 ? argv[4] : "alloc";
    CUmemAllocationProp prop;
    memset(&prop, 0, sizeof prop);
    prop.type = 1; prop.location.type = 1; prop.location.id = 0;
    CUmemGenericAllocationHandle h;
    double t0 = now_ms();
    CUresult r = !strcmp(path, "async")    ? cu.alloc_async(&p, mib * MIB, NULL)
                 : !strcmp(path, "create") ? cu.create(&h, mib * MIB, &prop, 0)
                                           : cu.alloc(&p, mib * MIB);
    printf("want_r=%d\nwant_ms=%.0f\n", r, now_ms() - t0);
    hold_if_asked();
    return 0;
  }
  printf("unknown scenario %s\n", s);
  return 2;
}
