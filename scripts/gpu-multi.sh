#!/usr/bin/env bash
# The two-GPU checks of vramcap (issues 6 and 16), in one call on a two-GPU machine (device kind
# nvidia-h200-x2). Builds nothing: run scripts/build-gpu-bundle.sh here first and carry gpu-bundle/. Every
# row checks what nvidia-smi shows for each process on each GPU against that GPU's cap (the cap counts the
# context: the library charges it). Prints a table last and exits non-zero if a row fails.
#
#   device run (kind nvidia-h200-x2): bash scripts/gpu-multi.sh      (carry: gpu-bundle)
#   a subset:   MULTI_ONLY="graphs limits" bash scripts/gpu-multi.sh
#
# Sections, in order (MULTI_ONLY takes any of them, space-separated; unset: all): ddp percap visible graphs
# limits ddpgraph. Every size is derived from each GPU's memory (nvidia-smi's memory.total): the values named
# below are the H200's (143771 MiB), and SIZES= lists the ones this run uses.
# shellcheck disable=SC2317  # the sections (sec_NAME) are called by name
set -u
SECTIONS="ddp percap visible graphs limits ddpgraph"
MULTI_ONLY=${MULTI_ONLY:-}
# shellcheck source=scripts/gpu-common.sh
source "$(dirname "${BASH_SOURCE[0]}")/gpu-common.sh"
check_sections gpu-multi "$MULTI_ONLY"
B=${VRAMCAP_BUNDLE:-$PWD/gpu-bundle}
LOG=$(mktemp -d /tmp/vramcap-multi.XXXX)
RUN=$B/vramcap-run
export PYTHONUNBUFFERED=1 PYTHONPATH=$B/py VRAMCAP_LOG=${VRAMCAP_LOG:-warn} NCCL_NVLS_ENABLE=0
ROWS=(); TIMES=(); FAILED=0
row() { local v=FAIL; [ "$3" = 1 ] && v=PASS || FAILED=1; ROWS+=("$(printf '%-34s %-96s %s' "$1" "$2" "$v")"); echo "ROW $1 | $2 | $v"; }
uuid_of() { nvidia-smi --query-gpu=index,uuid --format=csv,noheader | awk -F', *' -v i="$1" '$1==i{print $2}'; }
# MiB nvidia-smi shows for PID on the GPU with UUID (0 if none).
smi() { nvidia-smi --query-compute-apps=pid,gpu_uuid,used_memory --format=csv,noheader,nounits | awk -F', *' -v p="$1" -v u="$2" '$1==p && $2==u{s+=$3} END{print s+0}'; }
# wait_hold LOG...: until every LOG has its HOLD line. If a job of this shell ends before that, the others
# are stopped: a rank left alone would wait for its peer until its timeout.
wait_hold() {
  local n=$# j
  for _ in $(seq 1 1800); do
    [ "$(grep -l '^HOLD' "$@" 2>/dev/null | wc -l)" = "$n" ] && return 0
    [ "$(jobs -rp | wc -l)" -lt "$n" ] && break
    sleep 0.1
  done
  for j in $(jobs -rp); do kill "$j" 2>/dev/null; done
  return 1
}
pid_of() { grep -m1 -o 'HOLD pid=[0-9]*' "$1" | cut -d= -f2; }
U0=$(uuid_of 0); U1=$(uuid_of 1)
GPUS=$(nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv,noheader | tr '\n' ';')
nvidia-smi -L
echo "GPUs: $GPUS"
# Each GPU's memory (MiB), and the sizes derived from it. on GPU MIB [BASE]: MIB, written for the H200
# (143771 MiB), sized to GPU's memory in steps of 64 MiB: BASE + (MIB - BASE) x total / 143771. BASE is
# what the row's process holds before its scenario (its context; for the DDP+graphs ranks also NCCL, the
# model and the graph), which the card's size does not change; a cap keeps it and scales the rest, so a
# small card still fits the context under a cap (an 80 GB card's 1 GiB would otherwise be below it).
H200_MIB=143771 CTX=640 DG_BASE=1792
total_of() { nvidia-smi --query-gpu=index,memory.total --format=csv,noheader,nounits | awk -F', *' -v i="$1" '$1==i{print $2}'; }
T0=$(total_of 0); T1=$(total_of 1)
int "$T0" || { echo "gpu-multi: no memory.total for GPU 0; sizing for ${H200_MIB}MiB" >&2; T0=$H200_MIB; }
int "$T1" || { echo "gpu-multi: no memory.total for GPU 1; sizing for ${H200_MIB}MiB" >&2; T1=$H200_MIB; }
on() {
  local t=$T0; [ "$1" = 1 ] && t=$T1
  awk -v m="$2" -v b="${3:-0}" -v t="$t" -v r="$H200_MIB" 'BEGIN {printf "%d", 64 * int((b + (m - b) * t / r) / 64 + 0.5)}'
}
# 1. DDP: each rank's cap (on every GPU; the figures are the smaller GPU's so that both hold).
DDP_CAP=$(( $(on 0 3072 $CTX) < $(on 1 3072 $CTX) ? $(on 0 3072 $CTX) : $(on 1 3072 $CTX) ))
# 2. One process on both GPUs: GPU 0 2 GiB, GPU 1 4 GiB.
PC0=$(on 0 2048 $CTX) PC1=$(on 1 4096 $CTX)
# 3. CUDA_VISIBLE_DEVICES=1,0: physical GPU 1 2 GiB, GPU 0 3 GiB; each fill ends within 1 GiB of its cap.
VI1=$(on 1 2048 $CTX) VI0=$(on 0 3072 $CTX) VI_NEAR1=$(on 1 1024) VI_NEAR0=$(on 0 1024)
# 4. Graphs: 8 of GR MiB on GPU 1 under 0=1GiB,1=2GiB (GPU 0: the context, no graph beside it; GPU 1: at
# least one graph, fewer than 8).
GR=$(on 1 512) GR0=$(on 0 1024 $CTX) GR1=$(on 1 2048 $CTX)
# 5. Heap: 4 GiB on GPU 1, refused under 0=8GiB,1=2GiB (larger than GPU 1's cap), granted under
# 0=2GiB,1=8GiB (below GPU 1's cap less the context).
HEAP=$(on 1 4096) HR0=$(on 0 8192 $CTX) HR1=$(on 1 2048 $CTX) HF0=$(on 0 2048 $CTX) HF1=$(on 1 8192 $CTX)
# 6. DDP+graphs: 0=3GiB,1=4GiB for both ranks.
DG0=$(on 0 3072 $DG_BASE) DG1=$(on 1 4096 $DG_BASE)
# The relations the rows rely on, on this card's sizes (the context taken as CTX): printed, for the record.
REL=$(( HEAP > HR1 && HEAP + CTX < HF1 && GR0 < CTX + GR && GR1 >= CTX + GR && GR1 < CTX + 8 * GR && PC1 > PC0 + 256 ))
echo "SIZES= relations $REL; GPU0 ${T0}MiB GPU1 ${T1}MiB (MiB): ddp cap $DDP_CAP; percap 0=$PC0,1=$PC1; visible GPU1 $VI1 (fill above $((VI1 - VI_NEAR1))), GPU0 $VI0 (fill above $((VI0 - VI_NEAR0))); graphs 8x$GR under 0=$GR0,1=$GR1; heap $HEAP refused under 0=$HR0,1=$HR1, granted under 0=$HF0,1=$HF1; ddp+graphs 0=$DG0,1=$DG1"

# held NAME LIMIT|bare CMD...: runs CMD under vramcap-run --limit LIMIT (or bare, without vramcap), waits
# for its HOLD line, reads nvidia-smi's figure for it on each GPU (G0, G1, MiB), then lets it finish (RC).
held() {
  local name=$1 limit=$2 pid p; shift 2
  rm -f "$LOG/$name.go"
  if [ "$limit" = bare ]; then
    VRAMCAP_E2E_HOLD=$LOG/$name.go timeout 300 "$@" >"$LOG/$name.log" 2>&1 &
  else
    VRAMCAP_E2E_HOLD=$LOG/$name.go timeout 300 "$RUN" --limit "$limit" --name "$name" -- "$@" >"$LOG/$name.log" 2>&1 &
  fi
  pid=$!
  wait_hold "$LOG/$name.log"; sleep 0.5
  p=$(pid_of "$LOG/$name.log"); G0=$(smi "${p:-0}" "$U0"); G1=$(smi "${p:-0}" "$U1")
  touch "$LOG/$name.go"; wait "$pid"; RC=$?
}

# 1. DDP over NCCL: two ranks, each its own process and GPU, each capped at 3 GiB (DDP_CAP) on every GPU.
sec_ddp() {
  local r s0 s1 o0 o1 ok=1 p0 p1
  export MASTER_ADDR=127.0.0.1 MASTER_PORT=29533 WORLD_SIZE=2
  for r in 0 1; do
    rm -f "$LOG/ddp$r.go"
    RANK=$r LOCAL_RANK=$r VRAMCAP_E2E_HOLD=$LOG/ddp$r.go timeout 300 "$RUN" --limit "${DDP_CAP}MiB" --name "rank$r" -- \
      python3 "$B/py/multi.py" ddp >"$LOG/ddp$r.log" 2>&1 &
  done
  wait_hold "$LOG/ddp0.log" "$LOG/ddp1.log"; sleep 0.5
  p0=$(pid_of "$LOG/ddp0.log"); p1=$(pid_of "$LOG/ddp1.log")
  s0=$(smi "${p0:-0}" "$U0"); o0=$(smi "${p0:-0}" "$U1"); s1=$(smi "${p1:-0}" "$U1"); o1=$(smi "${p1:-0}" "$U0")
  touch "$LOG/ddp0.go" "$LOG/ddp1.go"; wait
  for r in 0 1; do [ "$(val allreduce_ok "$LOG/ddp$r.log")" = 1 ] && [ "$(val error "$LOG/ddp$r.log")" = OutOfMemoryError ] || ok=0; done
  le "$s0" "$DDP_CAP" && le "$s1" "$DDP_CAP" && gt "$s0" 0 && gt "$s1" 0 && le "$o0" "$DDP_CAP" && le "$o1" "$DDP_CAP" || ok=0
  row "DDP/NCCL, 2 ranks, ${DDP_CAP}MiB each" "all-reduce ok $(val allreduce_ok "$LOG/ddp0.log")/$(val allreduce_ok "$LOG/ddp1.log"); smi rank0 ${s0}MiB on GPU0 (${o0} on GPU1), rank1 ${s1}MiB on GPU1 (${o1} on GPU0); OOM $(val error "$LOG/ddp0.log")/$(val error "$LOG/ddp1.log")" "$ok"
}

# 2. One process on both GPUs with different caps: past the cap on GPU 0 only, then GPU 1 to its own cap.
both() { # name, CUDA_VISIBLE_DEVICES (or ""), limit
  rm -f "$LOG/$1.go"
  if [ -n "$2" ]; then export CUDA_VISIBLE_DEVICES=$2; else unset CUDA_VISIBLE_DEVICES; fi
  VRAMCAP_E2E_HOLD=$LOG/$1.go timeout 300 "$RUN" --limit "$3" --name "$1" -- python3 "$B/py/multi.py" both >"$LOG/$1.log" 2>&1 &
  unset CUDA_VISIBLE_DEVICES
  wait_hold "$LOG/$1.log"; sleep 0.5
  P=$(pid_of "$LOG/$1.log"); G0=$(smi "${P:-0}" "$U0"); G1=$(smi "${P:-0}" "$U1")
  touch "$LOG/$1.go"; wait
}
sec_percap() {
  local ok=0 f=$LOG/percap.log
  both percap "" "0=${PC0}MiB,1=${PC1}MiB"
  [ "$(val peer_ok "$f")" = 1 ] && [ "$(val e0 "$f")" = OutOfMemoryError ] && [ "$(val e1 "$f")" = OutOfMemoryError ] &&
    le "$G0" "$PC0" && le "$G1" "$PC1" && gt "$(val n1 "$f")" "$(val n0 "$f")" && ok=1
  row "one process, 0=${PC0},1=${PC1}MiB" "peer copy ok $(val peer_ok "$f"); GPU0 ${G0}MiB ($(val n0 "$f") x 256MiB), GPU1 ${G1}MiB ($(val n1 "$f") x 256MiB)" "$ok"
}

# 3. CUDA_VISIBLE_DEVICES=1,0 under per-UUID caps: cuda:0 is physical GPU 1.
sec_visible() {
  local ok=0 f=$LOG/visible.log
  both visible "1,0" "$U1=${VI1}MiB,$U0=${VI0}MiB"
  [ "$(val e0 "$f")" = OutOfMemoryError ] && [ "$(val e1 "$f")" = OutOfMemoryError ] &&
    le "$G1" "$VI1" && le "$G0" "$VI0" && gt "$G1" $((VI1 - VI_NEAR1)) && gt "$G0" $((VI0 - VI_NEAR0)) && ok=1
  row "VISIBLE=1,0, caps by UUID" "physical GPU1 (cuda:0, cap ${VI1}MiB) ${G1}MiB; physical GPU0 (cuda:1, cap ${VI0}MiB) ${G0}MiB; peer ok $(val peer_ok "$f")" "$ok"
}

# 4. Graph memory nodes on GPU 1 from a process whose current device is 0 (gpu-bundle/graph-mem MODE 8 GR 1:
# eight graphs of one GR MiB allocation each (512 on the H200), located on GPU 1 and mapped for GPU 0, whose
# stream and kernels write and check them; explicit: allocation nodes; captured: cudaMallocFromPoolAsync
# from GPU 1's pool on a GPU 0 stream). Bare shows the pressure on GPU 1; under 0=GR0,1=GR1 (1 and 2 GiB on
# the H200) the launches stop at GPU 1's cap (charged to GPU 0, where no graph fits beside the context, none
# would launch), what was launched holds its data, and both GPUs work afterwards.
graph_dev_row() { # label, mode
  local label=$1 mode=$2 b c bok=0 cok=0 bg0 bg1 brc
  held "gdev-$mode-bare" bare "$B/graph-mem" "$mode" 8 "$GR" 1; bg0=$G0 bg1=$G1 brc=$RC
  held "gdev-$mode" "0=${GR0}MiB,1=${GR1}MiB" "$B/graph-mem" "$mode" 8 "$GR" 1
  b=$LOG/gdev-$mode-bare.log c=$LOG/gdev-$mode.log
  [ "$(kv launched "$b")" = 8 ] && [ "$(kv error "$b")" = 0 ] && [ "$(kv data_ok "$b")" = 1 ] &&
    [ "$(kv capture_errors "$b")" = 0 ] && [ "$(kv works_after "$b")" = 1 ] && [ "$(kv works_after_dev "$b")" = 1 ] &&
    gt "$bg1" "$GR1" && [ "$brc" = 0 ] && bok=1
  ge "$(kv launched "$c")" 1 && lt "$(kv launched "$c")" 8 && [ "$(kv error "$c")" = 2 ] &&
    [[ $(kv failed_at "$c") =~ ^(launch|sync|instantiate)$ ]] && [ "$(kv capture_errors "$c")" = 0 ] &&
    [ "$(kv data_ok "$c")" = 1 ] && [ "$(kv works_after "$c")" = 1 ] && [ "$(kv works_after_dev "$c")" = 1 ] &&
    gt "$(kv graph_reserved_mib "$c")" 0 && le "$G0" "$GR0" && le "$G1" "$GR1" && [ "$RC" = 0 ] && cok=1
  row "$label" "bare $(kv launched "$b")/8 x ${GR}MiB, smi GPU0 ${bg0} GPU1 ${bg1}MiB (pressure $bok); 0=${GR0},1=${GR1}MiB: $(kv launched "$c") launched, then $(kv error_name "$c") at $(kv failed_at "$c"), GPU1 graph memory $(kv graph_reserved_mib "$c")MiB, smi GPU0 ${G0} GPU1 ${G1}MiB, data_ok $(kv data_ok "$c"), works_after $(kv works_after "$c")/$(kv works_after_dev "$c")" $((bok & cok))
}
sec_graphs() {
  graph_dev_row "graph nodes on GPU1, GPU0 current" explicit
  graph_dev_row "captured FromPool on GPU1, GPU0 cur." captured
}

# 5. cudaDeviceSetLimit(cudaLimitMallocHeapSize, HEAP MiB: 4 GiB on the H200) on GPU 1 only (gpu-bundle/
# graph-mem heap HEAP 8 1: GPU 0 has a context and stays as it was), then a kernel on GPU 1 whose 256 threads
# malloc 8 KiB each. Bare: the heap is taken on GPU 1 at the kernel. Under 0=HR0,1=HR1 (8 and 2 GiB) it is
# refused (GPU 1's cap) and the kernel runs with the heap it had; under 0=HF0,1=HF1 (2 and 8 GiB) it is
# granted and taken on GPU 1 (charged to GPU 0, it would be refused there).
heap_ok() { # log: the kernel ran, nothing went wrong, GPU 0's heap untouched, both GPUs work afterwards
  [ "$(kv kernel "$1")" = 0 ] && [ "$(kv device_mismatches "$1")" = 0 ] && [ "$(kv heap0_now "$1")" = "$(kv heap0_before "$1")" ] &&
    [ "$(kv works_after "$1")" = 1 ] && [ "$(kv works_after_dev0 "$1")" = 1 ]
}
sec_limits() {
  local b=$LOG/lheap-bare.log r=$LOG/lheap-refused.log f=$LOG/lheap-fits.log bok=0 rok=0 fok=0 bg1 brc rg0 rg1
  held lheap-bare bare "$B/graph-mem" heap "$HEAP" 8 1; bg1=$G1 brc=$RC
  [ "$(kv set "$b")" = 0 ] && [ "$(kv heap_now "$b")" = $((HEAP << 20)) ] && heap_ok "$b" && gt "$bg1" "$HEAP" && [ "$brc" = 0 ] && bok=1
  held lheap-refused "0=${HR0}MiB,1=${HR1}MiB" "$B/graph-mem" heap "$HEAP" 8 1; rg0=$G0 rg1=$G1
  [ "$(kv set "$r")" = 2 ] && [ "$(kv heap_now "$r")" = "$(kv heap_before "$r")" ] && heap_ok "$r" &&
    { [ "$(kv device_malloc_failures "$r")" = 0 ] || gt "$(kv device_malloc_failures "$b")" 0; } &&
    le "$rg0" "$HR0" && le "$rg1" "$HR1" && [ "$RC" = 0 ] && rok=1
  row "heap ${HEAP}MiB on GPU1, refused" "bare set $(kv set "$b"), smi GPU1 ${bg1}MiB (pressure $bok); 0=${HR0},1=${HR1}MiB: set $(kv set_name "$r"), heap $(mib "$(kv heap_now "$r")")MiB, kernel $(kv kernel "$r"), failures $(kv device_malloc_failures "$r"), GPU0 heap $(kv heap0_now "$r"), smi GPU0 ${rg0} GPU1 ${rg1}MiB" $((bok & rok))
  held lheap-fits "0=${HF0}MiB,1=${HF1}MiB" "$B/graph-mem" heap "$HEAP" 8 1
  [ "$(kv set "$f")" = 0 ] && [ "$(kv heap_now "$f")" = $((HEAP << 20)) ] && heap_ok "$f" &&
    [ "$(kv device_malloc_failures "$f")" = 0 ] && ge "$G1" "$HEAP" && le "$G1" "$HF1" && le "$G0" "$HF0" && [ "$RC" = 0 ] && fok=1
  row "heap ${HEAP}MiB on GPU1, granted" "0=${HF0},1=${HF1}MiB: set $(kv set_name "$f"), heap $(mib "$(kv heap_now "$f")")MiB, kernel $(kv kernel "$f"), failures $(kv device_malloc_failures "$f"), GPU0 heap $(kv heap0_now "$f"), smi GPU0 ${G0} GPU1 ${G1}MiB" "$fok"
}

# 6. DDP/NCCL with CUDA graphs: two ranks, each capturing its whole step (forward, backward with NCCL's
# all-reduce, SGD) in a torch.cuda.graph and replaying it 50 times, under 0=DG0,1=DG1 (3 and 4 GiB on the
# H200) for both; then each fills its GPU to the cap and replays once more there. Both ranks agree on the
# parameters, replays do not grow the charge (within 32 MiB), rank 1 (the larger cap) holds more, and
# nvidia-smi stays within each GPU's cap for each rank.
ddp_graph_row() { # label, PYTORCH_CUDA_ALLOC_CONF, tag, port
  local label=$1 conf=$2 tag=$3 r f s0 s1 o0 o1 p0 p1 ok=1 grew=
  export MASTER_ADDR=127.0.0.1 MASTER_PORT=$4 WORLD_SIZE=2
  for r in 0 1; do
    rm -f "$LOG/dg-$tag$r.go"
    PYTORCH_CUDA_ALLOC_CONF=$conf RANK=$r LOCAL_RANK=$r REPLAYS=50 VRAMCAP_E2E_HOLD=$LOG/dg-$tag$r.go timeout 240 \
      "$RUN" --limit "0=${DG0}MiB,1=${DG1}MiB" --name "graph-rank$r" -- python3 "$B/py/multi.py" ddp_graph >"$LOG/dg-$tag$r.log" 2>&1 &
  done
  wait_hold "$LOG/dg-${tag}0.log" "$LOG/dg-${tag}1.log"; sleep 0.5
  p0=$(pid_of "$LOG/dg-${tag}0.log"); p1=$(pid_of "$LOG/dg-${tag}1.log")
  s0=$(smi "${p0:-0}" "$U0"); o0=$(smi "${p0:-0}" "$U1"); s1=$(smi "${p1:-0}" "$U1"); o1=$(smi "${p1:-0}" "$U0")
  touch "$LOG/dg-${tag}0.go" "$LOG/dg-${tag}1.go"; wait
  for r in 0 1; do
    f=$LOG/dg-$tag$r.log
    [ "$(kv replays "$f")" = 50 ] && [ "$(kv loss_finite "$f")" = 1 ] && [ "$(kv params_moved "$f")" = 1 ] &&
      [ "$(kv params_agree "$f")" = 1 ] && [ "$(kv error "$f")" = OutOfMemoryError ] && [ "$(kv replay_at_cap_ok "$f")" = 1 ] &&
      int "$(kv charged_first_mib "$f")" && le "$(kv charged_replays_mib "$f")" $(( $(kv charged_first_mib "$f") + 32 )) || ok=0
    grew="$grew $(kv charged_first_mib "$f")->$(kv charged_replays_mib "$f")"
  done
  gt "$(kv tensors "$LOG/dg-${tag}1.log")" "$(kv tensors "$LOG/dg-${tag}0.log")" || ok=0
  le "$s0" "$DG0" && le "$o0" "$DG1" && le "$s1" "$DG1" && le "$o1" "$DG0" && gt "$s0" 0 && gt "$s1" 0 || ok=0
  row "$label" "params agree $(kv params_agree "$LOG/dg-${tag}0.log")/$(kv params_agree "$LOG/dg-${tag}1.log"); charge after 1->50 replays (MiB)$grew; at cap: $(kv error "$LOG/dg-${tag}0.log")/$(kv error "$LOG/dg-${tag}1.log"), $(kv tensors "$LOG/dg-${tag}0.log")/$(kv tensors "$LOG/dg-${tag}1.log") x 256MiB, replay ok $(kv replay_at_cap_ok "$LOG/dg-${tag}0.log")/$(kv replay_at_cap_ok "$LOG/dg-${tag}1.log"); smi rank0 GPU0 ${s0} (GPU1 ${o0}), rank1 GPU1 ${s1} (GPU0 ${o1})MiB" "$ok"
}
sec_ddpgraph() {
  ddp_graph_row "DDP+graphs, cudaMallocAsync" backend:cudaMallocAsync async 29534
  ddp_graph_row "DDP+graphs, default allocator" "" default 29535
}

run_sections "$MULTI_ONLY"

for f in "$LOG"/*.log; do echo "=== $f"; head -n 40 "$f"; echo "..."; tail -n 25 "$f"; done >"${OUT:-/tmp}/multi-logs.txt" 2>/dev/null
rm -rf "$LOG"
{
  echo
  echo "vramcap two-GPU checks ($GPUS)${MULTI_ONLY:+, sections: $MULTI_ONLY}"
  printf '%-34s %-96s %s\n' check figures result
  printf '%s\n' ${ROWS[@]+"${ROWS[@]}"}
  echo "section times: ${TIMES[*]-}"
} | tee "${OUT:-/tmp}/multi-table.txt"
exit $FAILED
