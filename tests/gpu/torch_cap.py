"""PyTorch under a cap: OOM is torch.OutOfMemoryError, the process keeps working, mem_get_info shows the
cap, and (checked by the script) nvidia-smi's figure stays under the cap after cuBLAS has loaded."""
import torch
from common import CAP, hold, say

a = torch.randn(1024, 1024, device="cuda")
b = (a @ a).sum().item()  # loads cuBLAS and its workspace first
free, total = torch.cuda.mem_get_info()
say(mem_get_info_total=total, mem_get_info_free=free, shows_cap=int(total == CAP))
held, error = [], None
try:
    while len(held) < 10_000:
        held.append(torch.empty(64 << 20, dtype=torch.uint8, device="cuda"))
        held[-1].fill_(len(held) % 251)
except Exception as e:  # noqa: BLE001 - we report which type it was
    error = e
say(tensors=len(held), error_type=type(error).__name__, is_torch_oom=int(isinstance(error, torch.OutOfMemoryError)))
ok = all(int(t[-1].item()) == (i + 1) % 251 for i, t in enumerate(held[-3:], start=len(held) - 3))
del held[:4]
again = torch.empty(32 << 20, dtype=torch.uint8, device="cuda").fill_(7)
say(works_after=int(ok and int(again[-1].item()) == 7))
torch.cuda.synchronize()
hold()
