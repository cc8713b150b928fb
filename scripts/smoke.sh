#!/usr/bin/env bash
# Quick first look at libvramcap.so on the real driver (superseded by gpu-e2e.sh).
set -u
B=gpu-bundle
export LD_PRELOAD=$PWD/$B/libvramcap.so
for p in link dlsym gpa; do echo "== $p cap"; VRAMCAP_LIMIT=2GiB $B/client $p cap; done
echo "== table"; VRAMCAP_LIMIT=2GiB $B/client dlsym table $B/proc-address-table.txt | tail -5
echo "== identity"; VRAMCAP_LIMIT=2GiB $B/client gpa identity
echo "== kinds"; VRAMCAP_LIMIT=2GiB $B/client gpa kinds
echo "== rounding"; VRAMCAP_LIMIT=2GiB $B/client link rounding
echo "== threads"; VRAMCAP_LIMIT=2GiB $B/client link threads 16
unset LD_PRELOAD
cat > /tmp/t.py <<'PY'
import os, subprocess, torch, time
x = torch.randn(1024, 1024, device='cuda'); y = x @ x; torch.cuda.synchronize()
free, total = torch.cuda.mem_get_info(); print("mem_get_info", free, total)
ts = []
try:
    while True: ts.append(torch.empty(64 << 20, dtype=torch.uint8, device='cuda'))
except torch.OutOfMemoryError as e: print("OOM after", len(ts), type(e).__name__)
time.sleep(1)
print(subprocess.run(['nvidia-smi','--query-compute-apps=pid,used_memory','--format=csv,noheader'],capture_output=True,text=True).stdout, "mypid", os.getpid())
del ts[:4]; z = torch.empty(32 << 20, dtype=torch.uint8, device='cuda'); print("works after")
PY
for conf in "" "expandable_segments:True" "backend:cudaMallocAsync"; do echo "== torch $conf"; PYTORCH_CUDA_ALLOC_CONF=$conf VRAMCAP_LOG=info $B/vramcap-run --limit 2GiB -- python3 /tmp/t.py 2>&1 | tail -8; done
