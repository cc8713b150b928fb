// A CUDA runtime-API program linked the default way (static cudart), as nvcc builds most CUDA tools.
// cudart resolves every driver entry point through cuGetProcAddress_v2, so this proves that path under a
// cap on the real driver. Allocates 2 MiB+1 blocks until refused, writes them with a kernel, reports, and
// holds its memory until the file named by argv[1] exists (so the script can read nvidia-smi).
// Built here by scripts/build-gpu-bundle.sh with nvcc from PyPI (nvidia-cuda-nvcc 13.0), carried prebuilt.
#include <cstdio>
#include <unistd.h>
#include <vector>

__global__ void fill(unsigned char *p, size_t n, unsigned char v) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) p[i] = v;
}

int main(int argc, char **argv) {
  size_t free0 = 0, total = 0;
  cudaError_t e = cudaMemGetInfo(&free0, &total);
  printf("runtime_meminfo=%d total=%zu free=%zu\n", (int)e, total, free0);
  std::vector<void *> blocks;
  const size_t size = (2u << 20) + 1;
  for (;;) {
    void *p = nullptr;
    e = cudaMalloc(&p, size);
    if (e != cudaSuccess) break;
    fill<<<64, 256>>>((unsigned char *)p, size, (unsigned char)blocks.size());
    blocks.push_back(p);
  }
  cudaGetLastError();  // clear the sticky-free allocation error
  cudaError_t sync = cudaDeviceSynchronize();
  unsigned char last = 0;
  if (!blocks.empty()) cudaMemcpy(&last, (unsigned char *)blocks.back() + size - 1, 1, cudaMemcpyDeviceToHost);
  printf("runtime_blocks=%zu refused=%d (%s) sync=%d last_byte_ok=%d\n", blocks.size(), (int)e, cudaGetErrorName(e), (int)sync,
         blocks.empty() ? 0 : last == (unsigned char)(blocks.size() - 1));
  printf("HOLD pid=%d\n", getpid());
  fflush(stdout);
  for (int i = 0; i < 3000 && argc > 1 && access(argv[1], F_OK) != 0; i++) usleep(20000);
  for (void *p : blocks) cudaFree(p);
  return 0;
}
