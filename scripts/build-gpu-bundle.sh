#!/usr/bin/env bash
# Builds, on this machine, everything scripts/gpu-e2e.sh runs on the GPU machine (which has no cargo and
# must build nothing): the release libvramcap.so and tools, the C driver-API client, the cudarc probe, and
# CUDA runtime programs linked with static cudart (nvcc 13.0 from PyPI, kept in target/nvcc-env): static-cudart
# and graph-mem.
# Output: gpu-bundle/ (ignored by git); pass it to the device tool's `carry`.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p vramcap-core -p vramcap-preload -p fake-cuda -p gpu-probe
out=gpu-bundle
rm -rf "$out" && mkdir -p "$out/link"
cp target/release/libvramcap.so target/release/libvramcap_sim.so target/release/vramcap target/release/vramcap-run \
  target/release/gpu-probe "$out/"
# Link the C client against the fake's soname (libcuda.so.1); at run time it binds the real driver.
ln -sf "$PWD/target/release/libvramcap_sim.so" "$out/link/libcuda.so"
cc -O2 -Wall -o "$out/client" tests/clients/client.c -L "$out/link" -lcuda -ldl -lpthread
rm -rf "$out/link"
cp tests/fake-driver/proc-address-table.txt "$out/"
cp -r tests/gpu "$out/py"

env=target/nvcc-env
nvidia="$env/lib/python3.11/site-packages/nvidia/cu13"
if [ ! -x "$nvidia/bin/nvcc" ]; then
  python3 -m venv "$env"
  "$env/bin/pip" install -q nvidia-cuda-nvcc==13.0.88 nvidia-cuda-runtime==13.0.88 nvidia-cuda-crt==13.0.88 \
    nvidia-nvvm==13.0.88
fi
PATH="$nvidia/bin:$PATH" nvcc -arch=sm_90 -L"$nvidia/lib" -o "$out/static-cudart" tests/gpu/static_cudart.cu
# Graph memory nodes, captured cudaMallocAsync, context limits and driver-grown local memory (gpu-e2e.sh).
PATH="$nvidia/bin:$PATH" nvcc -arch=sm_90 -L"$nvidia/lib" -o "$out/graph-mem" tests/gpu/graph_mem.cu
du -sh "$out"
