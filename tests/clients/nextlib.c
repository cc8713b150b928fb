/* A second preloaded library that uses dlsym(RTLD_NEXT, ...) the way interposers do. With libvramcap.so
 * before it in LD_PRELOAD, a dlsym that forwarded by a call (not a jump) would make glibc search "after
 * libvramcap.so" and find this library's own getuid. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <string.h>
#include <unistd.h>

uid_t getuid(void) { return 4242; }

int next_getuid_is_libc(void) {
  void *p = dlsym(RTLD_NEXT, "getuid");
  Dl_info info;
  if (!p || p == (void *)getuid || !dladdr(p, &info) || !info.dli_fname) return 0;
  return strstr(info.dli_fname, "libc.so") != NULL;
}
