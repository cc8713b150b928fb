/* fork from a busy capped process: 16 threads allocate and free near the cap while the main thread
 * forks children that each allocate and free once (an alarm turns a hang into SIGALRM). Linked with
 * -lcuda. Usage: fork_busy FORKS. Prints key=value lines. */
#define _GNU_SOURCE
#include "mini_cuda.h"
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#define MIB (1ull << 20)
CUresult cuInit(unsigned);
CUresult cuDevicePrimaryCtxRetain(CUcontext *, CUdevice);
CUresult cuCtxSetCurrent(CUcontext);
CUresult cuMemAlloc_v2(CUdeviceptr *, size_t);
CUresult cuMemFree_v2(CUdeviceptr);
CUresult cuMemGetInfo_v2(size_t *, size_t *);

static CUcontext ctx;
static volatile int stop;

static void *churn(void *arg) {
  unsigned seed = (unsigned)(size_t)arg;
  CUdeviceptr held[8];
  int n = 0;
  cuCtxSetCurrent(ctx);
  while (!stop) {
    CUdeviceptr p;
    if (n < 8 && cuMemAlloc_v2(&p, ((rand_r(&seed) % 8) + 1) * MIB) == 0) held[n++] = p;
    else if (n > 0) cuMemFree_v2(held[--n]);
  }
  while (n > 0) cuMemFree_v2(held[--n]);
  return NULL;
}

int main(int argc, char **argv) {
  int forks = argc > 1 ? atoi(argv[1]) : 12;
  if (cuInit(0) || cuDevicePrimaryCtxRetain(&ctx, 0) || cuCtxSetCurrent(ctx)) return 3;
  pthread_t t[16];
  for (int i = 0; i < 16; i++) pthread_create(&t[i], NULL, churn, (void *)(size_t)(i + 1));
  usleep(100000);
  int hung = 0, failed = 0, ok = 0;
  for (int f = 0; f < forks; f++) {
    pid_t pid = fork();
    if (pid == 0) {
      alarm(10);
      CUdeviceptr p;
      size_t free = 0, total = 0;
      CUresult a = cuMemAlloc_v2(&p, 64 * MIB);
      cuMemGetInfo_v2(&free, &total);
      CUresult b = a ? a : cuMemFree_v2(p);
      size_t free2 = 0;
      cuMemGetInfo_v2(&free2, &total);
      /* The child's charge is its own: 64 MiB while it holds its block, nothing after. */
      int own = (total - free) == 64 * MIB && free2 == total;
      _exit(a || b ? 10 : own ? 0 : 11);
    }
    int status = 0;
    waitpid(pid, &status, 0);
    if (WIFSIGNALED(status) && WTERMSIG(status) == SIGALRM) hung++;
    else if (WIFEXITED(status) && WEXITSTATUS(status) == 0) ok++;
    else { failed++; printf("child_status=%d\n", status); }
    usleep(20000);
  }
  stop = 1;
  for (int i = 0; i < 16; i++) pthread_join(t[i], NULL);
  printf("forks=%d\nok=%d\nhung=%d\nfailed=%d\n", forks, ok, hung, failed);
  return 0;
}
