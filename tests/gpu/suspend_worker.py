"""A busy worker with no unload hook, for the suspend/resume check: holds GIB of data with a known
checksum and runs small matmuls without pause until DONE_FILE exists, then verifies its data.
Usage: suspend_worker.py GIB DONE_FILE"""
import os
import sys
import time
import torch

gib, done = float(sys.argv[1]), sys.argv[2]
g = torch.Generator(device="cuda").manual_seed(7)
data = torch.randint(0, 1 << 30, (int(gib * (1 << 30)) // 8,), dtype=torch.int64, device="cuda", generator=g)
checksum = int(data.sum().item())
a = torch.randn(512, 512, device="cuda")
torch.cuda.synchronize()
print(f"READY t={time.time():.3f} lower holds {gib} GiB checksum={checksum} pid={os.getpid()}", flush=True)
iters, longest, last = 0, 0.0, time.time()
while not os.path.exists(done):
    a = torch.tanh(a @ a)
    torch.cuda.synchronize()
    now = time.time()
    if now - last > longest:
        longest = now - last
        if longest > 1:
            print(f"EVENT t={now:.3f} lower ran again after a {longest:.3f}s pause", flush=True)
    last, iters = now, iters + 1
ok = int(data.sum().item()) == checksum
print(f"EVENT t={time.time():.3f} lower verified its data: {'intact' if ok else 'CHANGED'}", flush=True)
print(f"verified_ok={int(ok)}\nlongest_pause_s={longest:.3f}\niterations={iters}", flush=True)
