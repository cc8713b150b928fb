/* Reads a live vramcap segment through the generated C header only (include/vramcap.h), with the same
 * seqlock protocol as the Rust reader: prints "pid charged cap" per live slot and device. The tests
 * compare it with `vramcap status --json`, so the header and the Rust layout cannot drift apart. */
#include "vramcap.h"
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <sys/mman.h>
#include <unistd.h>

int main(int argc, char **argv) {
  if (argc < 2) return 2;
  int fd = open(argv[1], O_RDONLY);
  if (fd < 0) { perror(argv[1]); return 2; }
  size_t len = sizeof(VramcapHeader) + VRAMCAP_SLOTS * sizeof(VramcapSlot);
  const unsigned char *base = mmap(NULL, len, PROT_READ, MAP_SHARED, fd, 0);
  if (base == MAP_FAILED) { perror("mmap"); return 2; }
  const VramcapHeader *h = (const VramcapHeader *)base;
  if (h->magic != VRAMCAP_MAGIC || h->version != VRAMCAP_VERSION || h->slot_size != sizeof(VramcapSlot)) {
    printf("layout mismatch\n");
    return 3;
  }
  const VramcapSlot *slots = (const VramcapSlot *)(base + h->header_size);
  for (unsigned i = 0; i < h->slot_count; i++) {
    const VramcapSlot *s = &slots[i];
    if (__atomic_load_n(&s->state, __ATOMIC_ACQUIRE) != VRAMCAP_SLOT_LIVE) continue;
    if (kill((pid_t)s->pid, 0) != 0) continue;
    VramcapSlot copy;
    for (int tries = 0; tries < 64; tries++) {
      unsigned before = __atomic_load_n(&s->seq, __ATOMIC_ACQUIRE);
      if (before & 1) continue;
      __builtin_memcpy(&copy, (const void *)s, sizeof copy);
      __atomic_thread_fence(__ATOMIC_ACQUIRE);
      if (__atomic_load_n(&s->seq, __ATOMIC_RELAXED) == before) break;
    }
    for (int d = 0; d < VRAMCAP_SLOT_DEVICES; d++) {
      const VramcapDevice *dev = &copy.devices[d];
      int used = 0;
      for (int b = 0; b < 16; b++) used |= dev->uuid[b];
      if (used) printf("%u %llu %llu %s\n", copy.pid, (unsigned long long)dev->charged, (unsigned long long)dev->cap, copy.name);
    }
  }
  return 0;
}
