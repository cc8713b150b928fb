/* Reads a live vramcap segment through the generated C header only (include/vramcap.h), the way the Rust
 * reader does: no mapping (a truncated file must not fault us), a slot counts only when the process that
 * holds its record lock (F_GETLK) is the PID it names, and its owner's part passes its check sum. Prints
 * "pid charged cap name" per live slot and device. The tests compare it with `vramcap status --json`, so the
 * header and the Rust layout cannot drift apart. */
#include "vramcap.h"
#include <fcntl.h>
#include <sched.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static uint64_t check_of(const unsigned char *part, size_t len) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (size_t i = 8; i < len; i++) { h ^= part[i]; h *= 0x100000001b3ull; }
  return h;
}

int main(int argc, char **argv) {
  if (argc < 2) return 2;
  int fd = open(argv[1], O_RDONLY | O_NOFOLLOW | O_NONBLOCK);
  if (fd < 0) { perror(argv[1]); return 2; }
  VramcapHeader h;
  if (pread(fd, &h, sizeof h, 0) != (ssize_t)sizeof h || h.magic != VRAMCAP_MAGIC ||
      h.version != VRAMCAP_VERSION || h.slot_size != sizeof(VramcapSlot)) {
    printf("layout mismatch\n");
    return 3;
  }
  const size_t owner_part = offsetof(VramcapSlot, request_check);
  for (unsigned i = 0; i < h.slot_count && i < VRAMCAP_SLOTS; i++) {
    off_t at = (off_t)h.header_size + (off_t)i * sizeof(VramcapSlot);
    struct flock lk = {.l_type = F_RDLCK, .l_whence = SEEK_SET, .l_start = at, .l_len = sizeof(VramcapSlot)};
    if (fcntl(fd, F_GETLK, &lk) != 0 || lk.l_type == F_UNLCK) continue;
    VramcapSlot s;
    int whole = 0;
    for (int tries = 0; tries < 32 && !whole; tries++) {
      memset(&s, 0, sizeof s);
      if (pread(fd, &s, sizeof s, at) != (ssize_t)sizeof s) break;
      whole = s.check == check_of((const unsigned char *)&s, owner_part);
      if (!whole) sched_yield();
    }
    if (!whole || s.state != VRAMCAP_SLOT_LIVE || (pid_t)s.pid != lk.l_pid) continue;
    s.name[VRAMCAP_NAME_LEN - 1] = 0;
    for (int d = 0; d < VRAMCAP_SLOT_DEVICES; d++) {
      const VramcapDevice *dev = &s.devices[d];
      int used = 0;
      for (int b = 0; b < 16; b++) used |= dev->uuid[b];
      if (used) printf("%u %llu %llu %s\n", s.pid, (unsigned long long)dev->charged, (unsigned long long)dev->cap, (const char *)s.name);
    }
  }
  return 0;
}
