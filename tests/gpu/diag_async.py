# Diagnostic: how our count, NVML's per-process figure and torch's pool figures move together under
# PYTORCH_CUDA_ALLOC_CONF=backend:cudaMallocAsync.
import os, torch, pynvml
pynvml.nvmlInit(); h = pynvml.nvmlDeviceGetHandleByIndex(0)
def nv():
    for p in pynvml.nvmlDeviceGetComputeRunningProcesses(h):
        if p.pid == os.getpid(): return p.usedGpuMemory >> 20
x = torch.randn(1024, 1024, device='cuda'); y = x @ x; torch.cuda.synchronize()
ts = []
for i in range(40):
    try: ts.append(torch.empty(64 << 20, dtype=torch.uint8, device='cuda'))
    except torch.OutOfMemoryError: print("OOM at", i); break
    f, t = torch.cuda.mem_get_info()
    print(i, "ours", (t - f) >> 20, "nvml", nv(), "torch_reserved", torch.cuda.memory_reserved() >> 20)
