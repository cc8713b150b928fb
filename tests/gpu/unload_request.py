"""The requester of the unloader checks: optionally holds HOLD_GIB first (and does some work), then one
allocation of GIB that finds the device full; with VRAMCAP_WAIT it waits for the unloader. Prints how
long the blocked allocation took. Usage: unload_request.py GIB [HOLD_GIB]"""
import sys
import time
import torch

gib = float(sys.argv[1])
held = torch.ones(int(float(sys.argv[2]) * (1 << 30)) // 4, device="cuda") if len(sys.argv) > 2 else None
w = torch.randn(1024, 1024, device="cuda")
for _ in range(20):
    w = torch.tanh(w @ w)
torch.cuda.synchronize()
t0 = time.time()
print(f"EVENT t={t0:.3f} requester asks for {gib} GiB", flush=True)
try:
    x = torch.ones(int(gib * (1 << 30)) // 4, dtype=torch.float32, device="cuda")
    torch.cuda.synchronize()
    t1 = time.time()
    print(f"EVENT t={t1:.3f} requester got it, sum_ok={int(x[:1 << 20].sum().item() == (1 << 20))}", flush=True)
    print(f"blocked_to_success_s={t1 - t0:.3f}", flush=True)
except torch.OutOfMemoryError as e:
    print(f"EVENT t={time.time():.3f} requester OutOfMemoryError after {time.time() - t0:.3f}s", flush=True)
    print("blocked_to_success_s=fail", flush=True)
