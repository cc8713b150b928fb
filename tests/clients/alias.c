/* Opens the driver under the file name given (a symlink or a copy of libcuda), never as libcuda.so.1,
 * and allocates 64 MiB blocks through it until refused: the cap must hold whatever the file is called.
 * Usage: alias PATH. Prints key=value lines. Not linked with -lcuda. */
#define _GNU_SOURCE
#include "mini_cuda.h"
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>

#define MIB (1ull << 20)

static void *need(void *lib, const char *name) {
  void *p = dlsym(lib, name);
  if (!p) { printf("missing=%s\n", name); exit(3); }
  return p;
}

int main(int argc, char **argv) {
  if (argc < 2) return 2;
  void *lib = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
  if (!lib) { printf("dlopen_failed=%s\n", dlerror()); return 3; }
  CUresult (*init)(unsigned) = need(lib, "cuInit");
  CUresult (*retain)(CUcontext *, CUdevice) = need(lib, "cuDevicePrimaryCtxRetain");
  CUresult (*set_current)(CUcontext) = need(lib, "cuCtxSetCurrent");
  CUresult (*alloc)(CUdeviceptr *, size_t) = need(lib, "cuMemAlloc_v2");
  CUresult (*info)(size_t *, size_t *) = need(lib, "cuMemGetInfo_v2");
  printf("init=%d\n", init(0));
  CUcontext ctx;
  printf("retain=%d\n", retain(&ctx, 0));
  printf("set_current=%d\n", set_current(ctx));
  int n = 0;
  CUresult r = 0;
  CUdeviceptr p;
  while (n < 1000 && (r = alloc(&p, 64 * MIB)) == 0) n++;
  size_t free = 0, total = 0;
  info(&free, &total);
  printf("allocated=%d\nrefused_code=%d\ninfo_total=%zu\n", n, r, total);
  return 0;
}
