"""Helpers for the framework checks in scripts/gpu-e2e.sh: key=value output and the hold handshake."""
import os
import sys
import time


def say(**kv):
    for k, v in kv.items():
        print(f"{k}={v}", flush=True)


def hold():
    """Keep this process's memory while the script reads nvidia-smi from outside."""
    path = os.environ.get("VRAMCAP_E2E_HOLD")
    print(f"HOLD pid={os.getpid()}", flush=True)
    deadline = time.time() + 120
    while path and not os.path.exists(path) and time.time() < deadline:
        time.sleep(0.02)



CAP = int(os.environ.get("VRAMCAP_E2E_CAP_BYTES", "0"))
