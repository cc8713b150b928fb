#!/usr/bin/env bash
# Launch time, then exec: start_tensor.py measures from here to its first CUDA tensor.
VRAMCAP_E2E_LAUNCH_NS=$(date +%s%N) exec python3 "$(dirname "$0")/start_tensor.py"
