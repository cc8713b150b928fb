#!/usr/bin/env bash
# The two-GPU checks of vramcap (issue 6), in one call on a two-GPU machine (device kind nvidia-h100-x2).
# Builds nothing: run scripts/build-gpu-bundle.sh here first and carry gpu-bundle/. Prints a table last and
# exits non-zero if a row fails.
#
#   device run (kind nvidia-h100-x2): bash scripts/gpu-multi.sh      (carry: gpu-bundle)
set -u
B=${VRAMCAP_BUNDLE:-$PWD/gpu-bundle}
LOG=$(mktemp -d /tmp/vramcap-multi.XXXX)
RUN=$B/vramcap-run
export PYTHONUNBUFFERED=1 PYTHONPATH=$B/py VRAMCAP_LOG=${VRAMCAP_LOG:-warn} NCCL_NVLS_ENABLE=0
ROWS=(); FAILED=0
row() { local v=FAIL; [ "$3" = 1 ] && v=PASS || FAILED=1; ROWS+=("$(printf '%-30s %-86s %s' "$1" "$2" "$v")"); echo "ROW $1 | $2 | $v"; }
val() { grep -m1 -o "$1=[^ ]*" "$2" | cut -d= -f2; }
uuid_of() { nvidia-smi --query-gpu=index,uuid --format=csv,noheader | awk -F', *' -v i="$1" '$1==i{print $2}'; }
# MiB nvidia-smi shows for PID on the GPU with UUID (0 if none).
smi() { nvidia-smi --query-compute-apps=pid,gpu_uuid,used_memory --format=csv,noheader,nounits | awk -F', *' -v p="$1" -v u="$2" '$1==p && $2==u{s+=$3} END{print s+0}'; }
wait_hold() { for _ in $(seq 1 1200); do [ "$(grep -l '^HOLD' "$@" 2>/dev/null | wc -l)" = $# ] && return; sleep 0.1; done; }
pid_of() { grep -m1 -o 'HOLD pid=[0-9]*' "$1" | cut -d= -f2; }
U0=$(uuid_of 0); U1=$(uuid_of 1)
nvidia-smi -L

# 1. DDP over NCCL: two ranks, each its own process and GPU, each capped at 3 GiB.
export MASTER_ADDR=127.0.0.1 MASTER_PORT=29533 WORLD_SIZE=2
for r in 0 1; do
  rm -f "$LOG/ddp$r.go"
  RANK=$r LOCAL_RANK=$r VRAMCAP_E2E_HOLD=$LOG/ddp$r.go timeout 300 "$RUN" --limit 3GiB --name "rank$r" -- \
    python3 "$B/py/multi.py" ddp >"$LOG/ddp$r.log" 2>&1 &
done
wait_hold "$LOG/ddp0.log" "$LOG/ddp1.log"; sleep 0.5
s0=$(smi "$(pid_of "$LOG/ddp0.log")" "$U0"); s1=$(smi "$(pid_of "$LOG/ddp1.log")" "$U1")
touch "$LOG/ddp0.go" "$LOG/ddp1.go"; wait
ok=1
for r in 0 1; do [ "$(val allreduce_ok "$LOG/ddp$r.log")" = 1 ] && [ "$(val error "$LOG/ddp$r.log")" = OutOfMemoryError ] || ok=0; done
[ "$s0" -le 3072 ] && [ "$s1" -le 3072 ] && [ "$s0" -gt 0 ] && [ "$s1" -gt 0 ] || ok=0
row "DDP/NCCL, 2 ranks, 3GiB each" "all-reduce ok $(val allreduce_ok "$LOG/ddp0.log")/$(val allreduce_ok "$LOG/ddp1.log"); smi rank0 ${s0}MiB on GPU0, rank1 ${s1}MiB on GPU1; OOM $(val error "$LOG/ddp0.log")/$(val error "$LOG/ddp1.log")" $ok

# 2. One process on both GPUs with different caps: past the cap on GPU 0 only, then GPU 1 to its own cap.
both() { # name, CUDA_VISIBLE_DEVICES (or ""), limit
  rm -f "$LOG/$1.go"
  if [ -n "$2" ]; then export CUDA_VISIBLE_DEVICES=$2; else unset CUDA_VISIBLE_DEVICES; fi
  VRAMCAP_E2E_HOLD=$LOG/$1.go timeout 300 "$RUN" --limit "$3" --name "$1" -- python3 "$B/py/multi.py" both >"$LOG/$1.log" 2>&1 &
  unset CUDA_VISIBLE_DEVICES
  wait_hold "$LOG/$1.log"; sleep 0.5
  P=$(pid_of "$LOG/$1.log"); G0=$(smi "$P" "$U0"); G1=$(smi "$P" "$U1")
  touch "$LOG/$1.go"; wait
}
both percap "" "0=2GiB,1=4GiB"
ok=0; [ "$(val peer_ok "$LOG/percap.log")" = 1 ] && [ "$(val e0 "$LOG/percap.log")" = OutOfMemoryError ] \
  && [ "$(val e1 "$LOG/percap.log")" = OutOfMemoryError ] && [ "$G0" -le 2048 ] && [ "$G1" -le 4096 ] \
  && [ "$(val n1 "$LOG/percap.log")" -gt "$(val n0 "$LOG/percap.log")" ] && ok=1
row "one process, 0=2GiB,1=4GiB" "peer copy ok $(val peer_ok "$LOG/percap.log"); GPU0 ${G0}MiB ($(val n0 "$LOG/percap.log") x 256MiB), GPU1 ${G1}MiB ($(val n1 "$LOG/percap.log") x 256MiB)" $ok

# 3. CUDA_VISIBLE_DEVICES=1,0 under per-UUID caps: cuda:0 is physical GPU 1.
both visible "1,0" "$U1=2GiB,$U0=3GiB"
ok=0; [ "$(val e0 "$LOG/visible.log")" = OutOfMemoryError ] && [ "$(val e1 "$LOG/visible.log")" = OutOfMemoryError ] \
  && [ "$G1" -le 2048 ] && [ "$G0" -le 3072 ] && [ "$G1" -gt 1024 ] && [ "$G0" -gt 2048 ] && ok=1
row "VISIBLE=1,0, caps by UUID" "physical GPU1 (cuda:0, cap 2GiB) ${G1}MiB; physical GPU0 (cuda:1, cap 3GiB) ${G0}MiB; peer ok $(val peer_ok "$LOG/visible.log")" $ok

for f in "$LOG"/*.log; do echo "=== $f"; tail -n 25 "$f"; done >"${OUT:-/tmp}/multi-logs.txt" 2>/dev/null
echo
echo "vramcap two-GPU checks ($(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | head -1))"
printf '%-30s %-86s %s\n' check figures result
printf '%s\n' "${ROWS[@]}"
rm -rf "$LOG"
exit $FAILED
