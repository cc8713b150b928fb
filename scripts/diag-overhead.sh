#!/usr/bin/env bash
# Where does vramcap's overhead come from? Times the MLP step and the start to first tensor under variants.
B=${VRAMCAP_BUNDLE:-$PWD/gpu-bundle}; L=$B/libvramcap.so
v() { case $1 in A) "${@:2}";; B) LD_PRELOAD=$L VRAMCAP_NVML=off "${@:2}";; C) LD_PRELOAD=$L "${@:2}";; D) LD_PRELOAD=$L VRAMCAP_LIMIT=60GiB "${@:2}";; esac; }
for round in 1 2 3; do for x in A B C D; do echo "$x $(v $x python3 $B/py/mlp_step.py 5)"; done; done
for round in 1 2 3; do for x in A B C D; do s=$(date +%s%N); v $x python3 $B/py/start_tensor.py; e=$(date +%s%N); echo "$x start_ms=$(((e-s)/1000000))"; done; done
for round in 1 2 3; do for x in A B D; do echo "$x $(v $x $B/gpu-probe bench-launch 50000) $(v $x $B/gpu-probe bench-alloc 10000)"; done; done
