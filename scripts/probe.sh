#!/usr/bin/env bash
# One-off exploration of the device machine (kept for reference).
set -u
L=$(ldconfig -p | awk '/libcuda.so.1 /{print $NF; exit}'); echo "libcuda: $L"; readlink -f "$L"
nm -D --defined-only "$L" | awk '{print $3}' | grep -E '^cu(MemAlloc|MemFree|MemCreate|MemRelease|Array|Mipmapped|MemGetInfo|DeviceTotalMem|GetProcAddress|CtxCreate|DevicePrimaryCtx|StreamGetDevice|MemPool|Checkpoint|MemGetAllocationProp|MemRetain|MemMap|MemUnmap)' | sort | tr '\n' ' '; echo
nm -D --defined-only "$L" | wc -l
nvidia-smi --query-gpu=name,memory.total,memory.used --format=csv
python3 - <<'PY'
import os, subprocess, torch, time
x = torch.empty(256<<20, dtype=torch.uint8, device='cuda')
print("mypid", os.getpid(), open('/proc/self/status').read().split('NSpid:')[1].split('\n')[0])
print(subprocess.run(['nvidia-smi','--query-compute-apps=pid,used_memory','--format=csv'],capture_output=True,text=True).stdout)
import pynvml; pynvml.nvmlInit(); h=pynvml.nvmlDeviceGetHandleByIndex(0)
t=time.time(); pynvml.nvmlShutdown(); pynvml.nvmlInit(); print("nvmlInit s", time.time()-t)
t=time.time(); ps=pynvml.nvmlDeviceGetComputeRunningProcesses(h); print("procs", [(p.pid,p.usedGpuMemory) for p in ps], "query s", time.time()-t)
print("torch", torch.__version__, torch.version.cuda)
PY
nvcc --version | tail -2; python3 -c "import cupy, jax; print(cupy.__version__, jax.__version__)"
cat /proc/cpuinfo | grep -m1 'model name'; ldd --version | head -1; cat /etc/os-release | head -2
