"""Process start to first CUDA tensor, in three parts. start_tensor.sh records the launch time just before
exec'ing this script. pre_ms: launch to this script's first line (the interpreter's start, with the preload
library's loading and constructor where it is preloaded); import_ms: importing torch (where vramcap runs only
its dlsym forwarding); cuda_init_ms: the first tensor (cuInit, the context, the first allocation: our
hooks)."""
import os
import time

t_script = time.time()
import torch  # noqa: E402

t_cuda = time.time()
torch.zeros(1, device="cuda").add_(1).item()
now = time.time()
launched = int(os.environ["VRAMCAP_E2E_LAUNCH_NS"]) / 1e9
print(
    f"start_ms={(now - launched) * 1000:.0f} pre_ms={(t_script - launched) * 1000:.1f}"
    f" import_ms={(t_cuda - t_script) * 1000:.0f} cuda_init_ms={(now - t_cuda) * 1000:.1f}"
)
