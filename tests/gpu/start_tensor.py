"""Process start to first CUDA tensor. start_tensor.sh records the launch time just before exec'ing this
script; the CUDA part alone is timed too."""
import os
import time

import torch  # noqa: E402

t_cuda = time.time()
torch.zeros(1, device="cuda").add_(1).item()
now = time.time()
launched = int(os.environ["VRAMCAP_E2E_LAUNCH_NS"]) / 1e9
print(f"start_ms={(now - launched) * 1000:.0f} cuda_init_ms={(now - t_cuda) * 1000:.1f}")
