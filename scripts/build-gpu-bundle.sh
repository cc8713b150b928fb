#!/usr/bin/env bash
# Builds, on this machine, everything scripts/gpu-e2e.sh runs on the GPU machine (which has no cargo), into
# gpu-bundle/ (ignored by git; pass it to the device tool's `carry`).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p vramcap -p vramcap-preload -p fake-cuda -p gpu-probe
out=gpu-bundle
rm -rf "$out" && mkdir -p "$out/link"
cp target/release/libvramcap.so target/release/vramcap target/release/vramcap-run target/release/gpu-probe "$out/"
# Link the C clients against the fake's soname; at run time they bind the real libcuda.so.1.
ln -sf "$PWD/target/release/libcuda.so" "$out/link/libcuda.so"
cc -O2 -Wall -o "$out/client" tests/clients/client.c -L "$out/link" -lcuda -ldl -lpthread
cc -O2 -Wall -o "$out/bench-driver" tests/clients/bench_driver.c -L "$out/link" -lcuda -ldl -lpthread
rm -rf "$out/link"
cp tests/fake-driver/proc-address-table.txt "$out/"
cp -r tests/gpu "$out/py"
for f in tests/gpu/*.cubin.bin tests/gpu/static-cudart; do [ -e "$f" ] && cp "$f" "$out/"; done
ls -la "$out"
