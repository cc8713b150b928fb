#!/usr/bin/env bash
# Every real-GPU check of vramcap, in one call on the device machine. Builds nothing there: run
# scripts/build-gpu-bundle.sh on the build machine first and carry gpu-bundle/. Logs go under $OUT when
# set. Prints one table row per check (figures, PASS/FAIL) last, and exits non-zero if any row fails.
# Sizes that must create pressure on the whole card (unloader, suspend) are derived from its memory.
#
#   device run: bash scripts/gpu-e2e.sh                        (carry: gpu-bundle)
#   a subset:   E2E_ONLY="graphs limits" bash scripts/gpu-e2e.sh
#
# Sections, in order (E2E_ONLY takes any of them, space-separated; unset: all): patterns torch frameworks
# cudart status demo unloader reload suspend concurrency graphs limits overhead. Each section's time is printed to
# stderr and into the logs, so that the run can be split into device calls of at most 600 s.
# shellcheck disable=SC2317  # the sections (sec_NAME) are called by name
set -u
SECTIONS="patterns torch frameworks cudart status demo unloader reload suspend concurrency graphs limits overhead"
E2E_ONLY=${E2E_ONLY:-}
# shellcheck source=scripts/gpu-common.sh
source "$(dirname "${BASH_SOURCE[0]}")/gpu-common.sh"
check_sections gpu-e2e "$E2E_ONLY"
B=${VRAMCAP_BUNDLE:-$PWD/gpu-bundle}
LOG=$(mktemp -d /tmp/vramcap-e2e.XXXX)
mkdir -p "${OUT:-/tmp/vramcap-e2e}"
LIB=$B/libvramcap.so
RUN=$B/vramcap-run
export PYTHONUNBUFFERED=1 PYTHONPATH=$B/py VRAMCAP_LOG=${VRAMCAP_LOG:-warn}
ROWS=()
TIMES=()
FAILED=0
row() { # check, figures, ok(0/1)
  local verdict=FAIL
  [ "$3" = 1 ] && verdict=PASS || FAILED=1
  ROWS+=("$(printf '%-34s %-72s %s' "$1" "$2" "$verdict")")
  echo "ROW $1 | $2 | $verdict"
}
smi_mib() { nvidia-smi --query-compute-apps=pid,used_memory --format=csv,noheader,nounits | awk -F', *' -v p="$1" '$1==p{print $2}'; }

# run_held NAME CAP_MIB|bare CMD...: runs CMD (under vramcap-run --limit CAP_MIB MiB, or bare: without
# vramcap), waits for its HOLD line, reads nvidia-smi's figure for the process from outside (and, with
# HELD_STATUS set, `vramcap status --json` into $LOG/NAME.status.json), then lets it finish. Sets SMI, RC
# and HPID; log in $LOG/NAME.log.
run_held() {
  local name=$1 cap=$2; shift 2
  local go=$LOG/$name.go log=$LOG/$name.log pid
  rm -f "$go"
  if [ "$cap" = bare ]; then
    VRAMCAP_E2E_HOLD=$go VRAMCAP_E2E_CAP_BYTES=0 timeout 300 "$@" >"$log" 2>&1 &
  else
    VRAMCAP_E2E_HOLD=$go VRAMCAP_E2E_CAP_BYTES=$((cap << 20)) timeout 300 "$RUN" --limit "${cap}MiB" --name "$name" -- "$@" >"$log" 2>&1 &
  fi
  pid=$!
  for _ in $(seq 1 2400); do grep -q '^HOLD' "$log" && break; kill -0 $pid 2>/dev/null || break; sleep 0.05; done
  sleep 0.5
  # Memory the driver takes on its own (a module loaded at the first launch) is read by vramcap's
  # background thread within a second (IDLE_PERIOD): a row comparing its figure waits for that reading.
  [ -n "${HELD_STATUS:-}" ] && sleep 1.5
  HPID=$(grep -m1 -o 'HOLD pid=[0-9]*' "$log" | cut -d= -f2)
  SMI=$(smi_mib "$HPID")
  if [ -n "${HELD_STATUS:-}" ] && [ "$cap" != bare ]; then "$B/vramcap" status --json >"$LOG/$name.status.json" 2>&1; fi
  touch "$go"
  wait $pid; RC=$?
  [ -n "$SMI" ] || SMI=0
}
held() { local name=$1 cap=$2; shift 2; run_held "$name" "$cap" "$@"; }  # NAME CAP_MIB CMD...
bare() { local name=$1; shift; run_held "$name" bare "$@"; }             # NAME CMD...

GPU=$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | head -n 1)
echo "$GPU"
# The card's memory (MiB): the unloader and suspend scenarios keep the proportions they had on an 80 GB
# card (81559 MiB), scaled to this one and rounded to whole GiB.
TOTAL_MIB=$(nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits | head -n 1 | tr -d ' ')
int "$TOTAL_MIB" || TOTAL_MIB=81559
gib() { scaled "$1" "$TOTAL_MIB" 81559; }

# 1. Synthetic patterns through cudarc (dlopen + dlsym): every byte written and verified on the device.
sec_patterns() {
  local spec name cap f ok
  for spec in small4k:640 small64k:700 odd:2048 large:2048 mixed:2048 async:2048 vmm:2048; do
    name=${spec%%:*} cap=${spec##*:}
    held "pattern-$name" "$cap" "$B/gpu-probe" pattern "$name" "$LOG/pattern-$name.go"
    f=$LOG/pattern-$name.log
    ok=0
    [ "$(val refused "$f")" = 2 ] && [ "$(val checksum_ok "$f")" = 1 ] && le "$SMI" "$cap" && [ $RC = 0 ] && ok=1
    row "pattern $name" "cap ${cap}MiB smi ${SMI}MiB buffers $(val buffers "$f") bytes $(val bytes "$f") checksum_ok $(val checksum_ok "$f")" $ok
  done
}

# 2. PyTorch, three allocator modes, 2 GiB cap, after a matmul (cuBLAS loaded).
sec_torch() {
  local mode conf f ok
  for mode in default expandable_segments:True backend:cudaMallocAsync; do
    conf=$mode; [ "$mode" = default ] && conf=
    PYTORCH_CUDA_ALLOC_CONF=$conf held "torch-${mode%%:*}" 2048 python3 "$B/py/torch_cap.py"
    f=$LOG/torch-${mode%%:*}.log
    ok=0
    [ "$(val is_torch_oom "$f")" = 1 ] && [ "$(val works_after "$f")" = 1 ] && [ "$(val shows_cap "$f")" = 1 ] && le "$SMI" 2048 && ok=1
    row "torch $mode" "smi ${SMI}MiB tensors $(val tensors "$f") error $(val error_type "$f") mem_get_info=cap $(val shows_cap "$f")" $ok
  done
}

# 3. CuPy and JAX (default preallocation).
sec_frameworks() {
  local f ok rc aborted
  held cupy 2048 python3 "$B/py/cupy_cap.py"
  f=$LOG/cupy.log; ok=0
  [ "$(val is_cupy_oom "$f")" = 1 ] && [ "$(val shows_cap "$f")" = 1 ] && [ "$(val works_after "$f")" = 1 ] && le "$SMI" 2048 && ok=1
  row "cupy" "smi ${SMI}MiB arrays $(val arrays "$f") error $(val error_type "$f") sees cap $(val shows_cap "$f")" $ok
  held jax 2048 python3 "$B/py/jax_cap.py"
  f=$LOG/jax.log; ok=0
  [ "$(val is_jax_oom "$f")" = 1 ] && [ "$(val sized_from_cap "$f")" = 1 ] && le "$SMI" 2048 && ok=1
  row "jax" "smi ${SMI}MiB bytes_limit $(val bytes_limit "$f") arrays $(val arrays "$f") error $(val error_type "$f") exit $RC" $ok
  # The README's advice: a pool that fits beside the context under the cap.
  XLA_PYTHON_CLIENT_MEM_FRACTION=0.6 held jax-fraction 2048 python3 "$B/py/jax_cap.py"
  f=$LOG/jax-fraction.log; ok=0
  [ "$(val is_jax_oom "$f")" = 1 ] && [ $RC = 0 ] && le "$SMI" 2048 && ok=1
  row "jax, MEM_FRACTION=0.6" "smi ${SMI}MiB bytes_limit $(val bytes_limit "$f") arrays $(val arrays "$f") exit $RC" $ok
  # Control: the same JAX program without vramcap, its pool sized like under the cap, to tell XLA's own
  # behaviour after its RESOURCE_EXHAUSTED (it has aborted at exit) from anything of ours.
  VRAMCAP_E2E_CAP_BYTES=$((2048 << 20)) XLA_PYTHON_CLIENT_MEM_FRACTION=0.0197 timeout 120 python3 "$B/py/jax_cap.py" >"$LOG/jax-control.log" 2>&1
  rc=$?; grep -q "Check failed" "$LOG/jax-control.log" && aborted=1 || aborted=0
  row "jax control, no vramcap (info)" "exit $rc, XLA check failure at exit: $aborted, error $(val error_type "$LOG/jax-control.log")" 1
}

# 4. A static-cudart runtime program (cuGetProcAddress_v2) and a -lcuda driver program (exported symbols).
sec_cudart() {
  local f ok
  held static-cudart 2048 "$B/static-cudart" "$LOG/static-cudart.go"
  f=$LOG/static-cudart.log; ok=0
  [ "$(val total "$f")" = $((2048 << 20)) ] && [ "$(val refused "$f")" = 2 ] && [ "$(val last_byte_ok "$f")" = 1 ] && le "$SMI" 2048 && ok=1
  row "nvcc static cudart" "smi ${SMI}MiB blocks $(val runtime_blocks "$f") of 2MiB+1 refused $(val refused "$f") total=cap" $ok
  held lcuda 2048 "$B/client" link cap
  f=$LOG/lcuda.log; ok=0
  [ "$(val refused_code "$f")" = 2 ] && [ "$(val info_total "$f")" = $((2048 << 20)) ] && [ "$(val alloc_after "$f")" = 0 ] && le "$SMI" 2048 && ok=1
  row "-lcuda driver program" "smi ${SMI}MiB allocated $(val allocated "$f") x 64MiB refused $(val refused_code "$f")" $ok
}

# 4b. vramcap status beside nvidia-smi, for two capped PyTorch processes holding memory.
sec_status() {
  local w cmp
  export VRAMCAP_SHM=vramcap-e2e-$$
  for w in 1 2; do
    rm -f "$LOG/w$w.go"
    VRAMCAP_E2E_HOLD=$LOG/w$w.go "$RUN" --limit 2GiB --name "worker$w" --priority $w -- \
      python3 "$B/py/torch_hold.py" $((w * 400)) >"$LOG/w$w.log" 2>&1 &
  done
  for _ in $(seq 1 600); do [ "$(grep -l '^HOLD' "$LOG"/w1.log "$LOG"/w2.log 2>/dev/null | wc -l)" = 2 ] && break; sleep 0.1; done
  sleep 0.5
  "$B/vramcap" status | tee "$LOG/status.txt"
  "$B/vramcap" status --json >"$LOG/status.json"
  nvidia-smi --query-compute-apps=pid,used_memory --format=csv,noheader,nounits >"$LOG/status-smi.txt"
  cmp=$(python3 - "$LOG/status.json" "$LOG/status-smi.txt" <<'PY'
import json, sys
status = json.load(open(sys.argv[1]))
smi = {int(l.split(",")[0]): int(l.split(",")[1]) for l in open(sys.argv[2]) if l.strip()}
rows, ok = [], len(status["processes"]) == 2
for p in status["processes"]:
    d = p["devices"][0]
    ours, nvml, s = d["charged_bytes"] >> 20, (d["nvml_used_bytes"] or 0) >> 20, smi.get(p["pid"], -1)
    rows.append(f"{p['name']} ours {ours}MiB nvml {nvml}MiB smi {s}MiB")
    ok = ok and abs(ours - s) <= 16 and s <= 2048
print(("1 " if ok else "0 ") + "; ".join(rows))
PY
)
  touch "$LOG/w1.go" "$LOG/w2.go"; wait
  row "status beside nvidia-smi" "${cmp#* }" "${cmp%% *}"
  unset VRAMCAP_SHM
}

# 4b'. `vramcap demo` on the GPU (it sizes itself from device 0's free memory), and `--simulated` on a
# machine that has one: each shows the cap's refusal and video's memory, in under a minute, and leaves no
# segment or process behind.
demo_row() { # check, log, simulated(0/1), rc
  local f=$2 took shm procs ok=0 label=1
  took=$(sed -n 's/.*Done in \([0-9.]*\) s\./\1/p' "$f" | tail -n 1)
  shm=$(find /dev/shm -maxdepth 1 -name 'vramcap-demo-*' | wc -l)
  procs=$(pgrep -fc 'vramcap demo-worker' || true)
  if [ "$3" = 1 ]; then
    grep -vq '^(simulated device)' "$f" && label=0
  else
    { grep -q simulated "$f" || ! grep -q 'briefly fills' "$f"; } && label=0
  fi
  grep -q 'was refused: CUDA_ERROR_OUT_OF_MEMORY (2)' "$f" && grep -q 'asking chat' "$f" && grep -q 'video | got ' "$f" &&
    [ "$4" = 0 ] && [ $label = 1 ] && [ "$shm" = 0 ] && [ "${procs:-0}" = 0 ] &&
    awk -v t="${took:-99}" 'BEGIN {exit !(t < 60)}' && ok=1
  row "$1" "rc $4 in ${took:-?}s; chat held $(sed -n 's/.* chat | holding \([0-9.]* [GMK]iB\).*/\1/p' "$f" | head -n 1), video $(grep -m1 -o 'got [0-9.]* [GMK]iB after [0-9]* ms' "$f"); left: $shm in /dev/shm, ${procs:-0} workers" $ok
}
sec_demo() {
  local rc
  "$B/vramcap" demo >"$LOG/demo.log" 2>&1; rc=$?
  cat "$LOG/demo.log"
  demo_row "demo on the GPU" "$LOG/demo.log" 0 $rc
  "$B/vramcap" demo --simulated >"$LOG/demo-sim.log" 2>&1; rc=$?
  tail -n 3 "$LOG/demo-sim.log"
  demo_row "demo --simulated beside a GPU" "$LOG/demo-sim.log" 1 $rc
}

# 4c. The priority unloader, scaled to the card (on an 80 GB card: image 20, chat 24, video 24 GiB, worker
# caps 30 GiB, a request of 40 GiB by a worker capped at 45 GiB): image (protected), chat (priority 1) and
# video (priority 2) hold tensors, each with an HTTP unload endpoint; a requester of priority 5 asks for
# more than is free beside chat, so chat and video must both unload (chat first), never image.
uw() { # name priority GiB port flags...
  local name=$1 prio=$2 gib=$3 port=$4; shift 4
  "$RUN" --limit "${U_CAP}GiB" --name "$name" --priority "$prio" "$@" --unload-url "http://127.0.0.1:$port/memory/unload" -- \
    python3 "$B/py/unload_worker.py" "$name" "$gib" "$port" >"$LOG/unload-$name.log" 2>&1 &
}
sec_unloader() {
  local unloader urc took order c v kept intact ok plan
  U_IMAGE=$(gib 20) U_CHAT=$(gib 24) U_VIDEO=$(gib 24) U_CAP=$(gib 30) U_REQ=$(gib 40) U_REQ_CAP=$(gib 45)
  # What the sizes should force, with about 0.6 GiB for each of the four contexts.
  plan=$(awk -v t="$TOTAL_MIB" -v i="$U_IMAGE" -v c="$U_CHAT" -v v="$U_VIDEO" -v r="$U_REQ" 'BEGIN {
    free = t / 1024 - i - c - v - 4 * 0.6
    printf "free before %.1fGiB, needs chat and video %d", free, (r > free + c && r <= free + c + v) }')
  echo "unloader sizes: card ${TOTAL_MIB}MiB image ${U_IMAGE} chat ${U_CHAT} video ${U_VIDEO} GiB (caps ${U_CAP}), request ${U_REQ} (cap ${U_REQ_CAP}); $plan" | tee "$LOG/unload-sizes.txt"
  export VRAMCAP_SHM=vramcap-e2e-unload-$$
  uw image 3 "$U_IMAGE" 8101 --protect; uw chat 1 "$U_CHAT" 8102; uw video 2 "$U_VIDEO" 8103
  for _ in $(seq 1 900); do [ "$(grep -l '^READY' "$LOG"/unload-{image,chat,video}.log 2>/dev/null | wc -l)" = 3 ] && break; sleep 0.1; done
  sleep 0.5
  "$B/vramcap" unloader --poll 20ms --hook-timeout 30s 2>"$LOG/unloader.log" &
  unloader=$!
  sleep 0.5
  "$RUN" --limit "${U_REQ_CAP}GiB" --name burst --priority 5 --wait 60s -- python3 "$B/py/unload_request.py" "$U_REQ" >"$LOG/unload-request.log" 2>&1
  kill -TERM $unloader; wait $unloader; urc=$?
  pkill -f unload_worker.py; wait 2>/dev/null
  { grep -h '^EVENT\|^READY' "$LOG"/unload-*.log | sort -t= -k2 -n; cat "$LOG/unloader.log"; } >"$LOG/unload-timeline.txt"
  cat "$LOG/unload-timeline.txt"
  took=$(val blocked_to_success_s "$LOG/unload-request.log")
  order=0; c=$(grep -n 'asking chat' "$LOG/unloader.log" | head -1 | cut -d: -f1); v=$(grep -n 'asking video' "$LOG/unloader.log" | head -1 | cut -d: -f1)
  [ -n "$c" ] && [ -n "$v" ] && [ "$c" -lt "$v" ] && order=1
  kept=0; grep -q 'asking image' "$LOG/unloader.log" || grep -q 'image unloaded' "$LOG"/unload-image.log || kept=1
  intact=$(grep -c 'data_ok=1' "$LOG"/unload-chat.log "$LOG"/unload-video.log | awk -F: '{s+=$2} END {print s+0}')
  ok=0; [ "$took" != fail ] && [ -n "$took" ] && [ $order = 1 ] && [ $kept = 1 ] && [ "$urc" = 0 ] && ok=1
  row "unloader: ${U_REQ}GiB for prio 5" "image/chat/video ${U_IMAGE}/${U_CHAT}/${U_VIDEO}GiB, $plan; blocked->success ${took}s; chat then video: $order; image kept: $kept; unloaded intact $intact/2; clean stop rc $urc" $ok
  unset VRAMCAP_SHM
}

# 4c'. The seed's full cycle, with the unloader started first (as systemd would, before any segment): image
# (protected) and chat (priority 1, with --reload-url) start after it; video (priority 5) asks for more than
# is free beside chat; chat unloads (/memory/unload), video gets its memory, finishes and exits, and chat is
# told to come back (/memory/reload) by itself once its memory fits again. Sized from the card.
sec_reload() {
  local unloader took back ok plan t_done t_back
  R_IMAGE=$(gib 20) R_CHAT=$(gib 30) R_VIDEO=$(gib 40) R_CAP=$(gib 45)
  plan=$(awk -v t="$TOTAL_MIB" -v i="$R_IMAGE" -v c="$R_CHAT" -v v="$R_VIDEO" 'BEGIN {
    free = t / 1024 - i - c - 3 * 0.6
    printf "free beside chat %.1fGiB, video needs chat out %d", free, (v > free && v <= free + c) }')
  echo "reload sizes: card ${TOTAL_MIB}MiB image ${R_IMAGE} chat ${R_CHAT} GiB, video asks ${R_VIDEO} (caps ${R_CAP}); $plan" | tee "$LOG/reload-sizes.txt"
  export VRAMCAP_SHM=vramcap-e2e-reload-$$
  rm -f "/dev/shm/$VRAMCAP_SHM"
  "$B/vramcap" unloader --poll 20ms --hook-timeout 30s 2>"$LOG/reload-unloader.log" &
  unloader=$!
  sleep 0.5
  "$RUN" --limit "${R_CAP}GiB" --name image --priority 3 --protect --unload-url http://127.0.0.1:8111/memory/unload -- \
    python3 "$B/py/unload_worker.py" image "$R_IMAGE" 8111 >"$LOG/reload-image.log" 2>&1 &
  "$RUN" --limit "${R_CAP}GiB" --name chat --priority 1 --unload-url http://127.0.0.1:8112/memory/unload \
    --reload-url http://127.0.0.1:8112/memory/reload -- \
    python3 "$B/py/unload_worker.py" chat "$R_CHAT" 8112 >"$LOG/reload-chat.log" 2>&1 &
  for _ in $(seq 1 900); do [ "$(grep -l '^READY' "$LOG"/reload-{image,chat}.log 2>/dev/null | wc -l)" = 2 ] && break; sleep 0.1; done
  sleep 1.5
  "$RUN" --limit "${R_CAP}GiB" --name video --priority 5 --wait 60s -- python3 "$B/py/unload_request.py" "$R_VIDEO" \
    >"$LOG/reload-video.log" 2>&1
  t_done=$(date +%s.%N)
  for _ in $(seq 1 300); do grep -q 'chat reloaded' "$LOG/reload-chat.log" && break; sleep 0.1; done
  t_back=$(grep -o 'EVENT t=[0-9.]* chat reloaded' "$LOG/reload-chat.log" | grep -o '[0-9.]*' | head -1)
  kill -TERM $unloader; wait $unloader
  pkill -f unload_worker.py; wait 2>/dev/null
  { grep -h '^EVENT\|^READY' "$LOG"/reload-*.log | sort -t= -k2 -n; cat "$LOG/reload-unloader.log"; } | tee "$LOG/reload-timeline.txt"
  took=$(val blocked_to_success_s "$LOG/reload-video.log")
  back=fail; [ -n "$t_back" ] && back=$(awk -v a="$t_done" -v b="$t_back" 'BEGIN {printf "%.2f", b - a}')
  ok=0; [ "$took" != fail ] && [ -n "$took" ] && [ "$back" != fail ] && grep -q 'waiting for the first worker' "$LOG/reload-unloader.log" \
    && grep -q 'chat unloaded data_ok=1' "$LOG/reload-chat.log" && ! grep -q 'image unloaded' "$LOG/reload-image.log" && ok=1
  row "reload: seed cycle, unloader first" "image/chat ${R_IMAGE}/${R_CHAT}GiB, video ${R_VIDEO}GiB; $plan; video blocked->success ${took}s; chat back ${back}s after video left" $ok
  rm -f "/dev/shm/$VRAMCAP_SHM"
  unset VRAMCAP_SHM
}

# 4d. Suspend and resume without the worker's help (the driver's checkpoint API), scaled to the card (on an
# 80 GB card: the lower worker holds 12 GiB under a 20 GiB cap, the higher one holds 30 GiB, then asks for
# 40 GiB more, under a 75 GiB cap): a busy lower worker with no hook holds its share; the higher one's
# request does not fit beside it. The lower one is suspended, the higher one's allocation succeeds, the
# higher one exits, the lower one is resumed and checks its data.
sec_suspend() {
  local lower unloader took t_free t_back moved intact ok plan
  S_LOWER=$(gib 12) S_LOWER_CAP=$(gib 20) S_HIGH=$(gib 30) S_ASK=$(gib 40) S_HIGH_CAP=$(gib 75)
  plan=$(awk -v t="$TOTAL_MIB" -v l="$S_LOWER" -v h="$S_HIGH" -v a="$S_ASK" 'BEGIN {
    free = t / 1024 - l - h - 3 * 0.6
    printf "free before the ask %.1fGiB, needs lower suspended %d", free, (a > free && a <= free + l + 0.6) }')
  echo "suspend sizes: card ${TOTAL_MIB}MiB lower ${S_LOWER} GiB (cap ${S_LOWER_CAP}), higher ${S_HIGH} + ${S_ASK} GiB (cap ${S_HIGH_CAP}); $plan" | tee "$LOG/suspend-sizes.txt"
  export VRAMCAP_SHM=vramcap-e2e-suspend-$$
  rm -f "$LOG/lower.done"
  "$RUN" --limit "${S_LOWER_CAP}GiB" --name lower --priority 1 --on-pressure suspend -- \
    python3 "$B/py/suspend_worker.py" "$S_LOWER" "$LOG/lower.done" >"$LOG/suspend-lower.log" 2>&1 &
  lower=$!
  for _ in $(seq 1 600); do grep -q '^READY' "$LOG/suspend-lower.log" && break; sleep 0.1; done
  "$B/vramcap" unloader --poll 20ms --hook-timeout 60s 2>"$LOG/suspend-unloader.log" &
  unloader=$!
  sleep 0.5
  "$RUN" --limit "${S_HIGH_CAP}GiB" --name higher --priority 5 --wait 120s -- python3 "$B/py/unload_request.py" "$S_ASK" "$S_HIGH" \
    >"$LOG/suspend-higher.log" 2>&1
  for _ in $(seq 1 600); do grep -q 'resumed lower' "$LOG/suspend-unloader.log" && break; sleep 0.1; done
  sleep 1
  touch "$LOG/lower.done"; wait $lower
  kill -TERM $unloader; wait $unloader
  { grep -h '^EVENT\|^READY' "$LOG"/suspend-lower.log "$LOG"/suspend-higher.log | sort -t= -k2 -n; cat "$LOG/suspend-unloader.log"; } | tee "$LOG/suspend-timeline.txt"
  took=$(val blocked_to_success_s "$LOG/suspend-higher.log")
  t_free=$(grep -o 'suspended lower.* in [0-9.]*s' "$LOG/suspend-unloader.log" | grep -o '[0-9.]*s$')
  t_back=$(grep -o 'resumed lower.* in [0-9.]*s' "$LOG/suspend-unloader.log" | grep -o '[0-9.]*s$')
  moved=$(grep -o 'suspended lower.*: [0-9.]* [KMGT]iB moved' "$LOG/suspend-unloader.log" | grep -o '[0-9.]* [KMGT]iB')
  intact=$(val verified_ok "$LOG/suspend-lower.log")
  ok=0; [ -n "$took" ] && [ "$took" != fail ] && [ -n "$t_free" ] && [ -n "$t_back" ] && [ "$intact" = 1 ] && ok=1
  row "suspend/resume: no-hook worker" "lower ${S_LOWER}GiB, higher ${S_HIGH}+${S_ASK}GiB, $plan; moved ${moved:-?} to host in ${t_free:-?}, back in ${t_back:-?}; higher waited ${took}s; data intact $intact" $ok
  unset VRAMCAP_SHM
}

# 5. Concurrency: 4 processes x 16 threads allocating and freeing at random, 768 MiB cap each.
sec_concurrency() {
  local i p pids=() poller rcs t0 t1 dog peak refusals errors r e ok
  rm -f "$LOG/conc.stop"
  for i in 1 2 3 4; do
    "$RUN" --limit 768MiB --name "conc$i" -- "$B/client" link threads 16 3000 >"$LOG/conc$i.log" 2>&1 &
    pids+=($!)
  done
  python3 "$B/py/pid_nvidia_smi.py" "$LOG/conc.stop" >"$LOG/conc-smi.txt" &
  poller=$!
  rcs=0; t0=$(date +%s)
  # A watchdog turns a hang into a failure instead of a stuck script.
  ( sleep 180; kill "${pids[@]}" 2>/dev/null ) & dog=$!
  for p in "${pids[@]}"; do wait "$p" || rcs=$((rcs + 1)); done
  kill $dog 2>/dev/null
  touch "$LOG/conc.stop"; wait $poller; t1=$(date +%s)
  peak=$(tr ' ' '\n' <"$LOG/conc-smi.txt" | cut -d: -f2 | sort -n | tail -1)
  refusals=0; errors=0
  for i in 1 2 3 4; do
    r=$(val refusals "$LOG/conc$i.log"); e=$(val other_errors "$LOG/conc$i.log")
    refusals=$((refusals + ${r:-0})); errors=$((errors + ${e:-1}))
  done
  ok=0; [ $rcs = 0 ] && [ $errors = 0 ] && [ "$refusals" -gt 0 ] && le "$peak" 768 && ok=1
  row "concurrency 4 proc x 16 thr" "smi peak ${peak}MiB (cap 768) refusals $refusals errors $errors crashes/hangs $rcs in $((t1 - t0))s" $ok
}

# 6. CUDA graphs that allocate. Each scenario runs bare (no vramcap: the same program, the same arguments)
# and capped. Bare must show the pressure (it goes on past the cap: nvidia-smi above it); capped, nvidia-smi
# stays within the cap, the program is refused with the out-of-memory code where bare went on, what was
# launched before holds its data, and the process works afterwards.
#
# graph_row LABEL MODE CAP N MIB: gpu-bundle/graph-mem MODE N MIB (explicit: allocation nodes; captured:
# cudaMallocAsync captured into the graph). Graph memory is reserved at the first launch and, with no free
# node, stays allocated after it: N graphs of MIB each.
graph_row() {
  local label=$1 mode=$2 cap=$3 n=$4 mib=$5 b c bs brc bok=0 cok=0
  bare "graph-$mode-bare" "$B/graph-mem" "$mode" "$n" "$mib"; bs=$SMI brc=$RC
  held "graph-$mode" "$cap" "$B/graph-mem" "$mode" "$n" "$mib"
  b=$LOG/graph-$mode-bare.log c=$LOG/graph-$mode.log
  [ "$(kv launched "$b")" = "$n" ] && [ "$(kv error "$b")" = 0 ] && [ "$(kv data_ok "$b")" = 1 ] &&
    [ "$(kv capture_errors "$b")" = 0 ] && [ "$(kv works_after "$b")" = 1 ] && gt "$bs" "$cap" && [ "$brc" = 0 ] && bok=1
  ge "$(kv launched "$c")" 1 && lt "$(kv launched "$c")" "$(kv launched "$b")" && [ "$(kv error "$c")" = 2 ] &&
    [[ $(kv failed_at "$c") =~ ^(launch|sync|instantiate)$ ]] && [ "$(kv capture_errors "$c")" = 0 ] &&
    [ "$(kv data_ok "$c")" = 1 ] && [ "$(kv works_after "$c")" = 1 ] && le "$SMI" "$cap" && [ "$RC" = 0 ] && cok=1
  row "$label" "bare $(kv launched "$b")/$n launched, smi ${bs}MiB (pressure $bok); cap ${cap}MiB: $(kv launched "$c") launched, then $(kv error_name "$c") at $(kv failed_at "$c"), smi ${SMI}MiB, data_ok $(kv data_ok "$c"), works_after $(kv works_after "$c")" $((bok & cok))
}
# torch_graph_row LABEL ALLOC_CONF TAG [OOM_TYPE]: torch.cuda.graph, K graphs with static outputs of MIB
# each (tests/gpu/torch_graph.py), with the allocator PYTORCH_CUDA_ALLOC_CONF names; OOM_TYPE, when given,
# is the type the out-of-memory error must be (torch's own, for the caching allocator).
torch_graph_row() {
  local label=$1 conf=$2 tag=$3 want=${4:-} k=12 mib=256 cap=2048 b c bs brc bok=0 cok=0
  PYTORCH_CUDA_ALLOC_CONF=$conf bare "tgraph-$tag-bare" python3 "$B/py/torch_graph.py" "$k" "$mib"; bs=$SMI brc=$RC
  PYTORCH_CUDA_ALLOC_CONF=$conf held "tgraph-$tag" "$cap" python3 "$B/py/torch_graph.py" "$k" "$mib"
  b=$LOG/tgraph-$tag-bare.log c=$LOG/tgraph-$tag.log
  [ "$(kv graphs "$b")" = "$k" ] && [ "$(kv error_type "$b")" = None ] && [ "$(kv data_ok "$b")" = 1 ] &&
    [ "$(kv works_after "$b")" = 1 ] && gt "$bs" "$cap" && [ "$brc" = 0 ] && bok=1
  ge "$(kv graphs "$c")" 1 && lt "$(kv graphs "$c")" "$k" && [ "$(kv is_oom "$c")" = 1 ] &&
    { [ -z "$want" ] || [ "$(kv oom_type "$c")" = "$want" ]; } &&
    [ "$(kv data_ok "$c")" = 1 ] && [ "$(kv works_after "$c")" = 1 ] && le "$SMI" "$cap" && [ "$RC" = 0 ] && cok=1
  row "$label" "bare $(kv graphs "$b")/$k x ${mib}MiB, smi ${bs}MiB (pressure $bok); cap ${cap}MiB: $(kv graphs "$c") graphs, then $(kv oom_type "$c") at $(kv oom_where "$c"), smi ${SMI}MiB, data_ok $(kv data_ok "$c"), works_after $(kv works_after "$c")" $((bok & cok))
}
sec_graphs() {
  graph_row "graph mem nodes 8x512MiB" explicit 2048 8 512
  graph_row "captured cudaMallocAsync 8x512MiB" captured 2048 8 512
  torch_graph_row "torch.cuda.graph cudaMallocAsync" backend:cudaMallocAsync async
  torch_graph_row "torch.cuda.graph default" "" default OutOfMemoryError
}

# 7. Context limits. What cuCtxSetLimit makes the driver take (the malloc heap at the first launch of a
# kernel that calls malloc; the stack at once, (new - 1 KiB) x SMs x threads per SM) is refused under a cap
# it does not fit, and counted under one it fits. What the driver grows on its own at a launch (the stack,
# for a kernel with more local memory than the stack limit) cannot be refused: it is counted, and a later
# allocation that only fitted without it is refused instead.
sec_limits() {
  local b c bs brc bok cok status charged gm
  # Heap 4 GiB under a 2 GiB cap: refused, and the kernel runs with the heap it had (its 256 threads x
  # 8 KiB fit in the default 8 MiB).
  bare limit-heap-bare "$B/graph-mem" heap 4096; bs=$SMI brc=$RC
  held limit-heap 2048 "$B/graph-mem" heap 4096
  b=$LOG/limit-heap-bare.log c=$LOG/limit-heap.log bok=0 cok=0
  [ "$(kv set "$b")" = 0 ] && [ "$(kv heap_now "$b")" = $((4096 << 20)) ] && [ "$(kv kernel "$b")" = 0 ] &&
    [ "$(kv works_after "$b")" = 1 ] && gt "$bs" 2048 && [ "$brc" = 0 ] && bok=1
  [ "$(kv set "$c")" = 2 ] && [ "$(kv heap_now "$c")" = "$(kv heap_before "$c")" ] && [ "$(kv kernel "$c")" = 0 ] &&
    { [ "$(kv device_malloc_failures "$c")" = 0 ] || gt "$(kv device_malloc_failures "$b")" 0; } &&
    [ "$(kv device_mismatches "$c")" = 0 ] && [ "$(kv works_after "$c")" = 1 ] && le "$SMI" 2048 && [ "$RC" = 0 ] && cok=1
  row "heap limit 4GiB" "bare set $(kv set "$b"), smi ${bs}MiB, failures $(kv device_malloc_failures "$b"); cap 2048MiB: set $(kv set_name "$c"), heap $(mib "$(kv heap_now "$c")")MiB, kernel $(kv kernel "$c"), failures $(kv device_malloc_failures "$c"), smi ${SMI}MiB, works_after $(kv works_after "$c")" $((bok & cok))

  # Stack 16 KiB: (16384 - 1024) x 132 x 2048 = 3960 MiB on an H200, taken at cuCtxSetLimit.
  bare limit-stack-bare "$B/graph-mem" stack 16; bs=$SMI brc=$RC
  held limit-stack 2048 "$B/graph-mem" stack 16
  b=$LOG/limit-stack-bare.log c=$LOG/limit-stack.log bok=0 cok=0
  [ "$(kv set "$b")" = 0 ] && [ "$(kv stack_now "$b")" = 16384 ] && [ "$(kv kernel "$b")" = 0 ] &&
    [ "$(kv works_after "$b")" = 1 ] && gt "$bs" 2048 && [ "$brc" = 0 ] && bok=1
  [ "$(kv set "$c")" = 2 ] && [ "$(kv stack_now "$c")" = "$(kv stack_before "$c")" ] && [ "$(kv kernel "$c")" = 0 ] &&
    [ "$(kv kernel_ok "$c")" = 1 ] && [ "$(kv works_after "$c")" = 1 ] && le "$SMI" 2048 && [ "$RC" = 0 ] && cok=1
  row "stack limit 16KiB" "bare set $(kv set "$b"), smi ${bs}MiB; cap 2048MiB: set $(kv set_name "$c"), stack $(kv stack_now "$c"), kernel $(kv kernel "$c"), smi ${SMI}MiB, works_after $(kv works_after "$c")" $((bok & cok))

  # The same under 8 GiB, where it fits: granted, and vramcap's charge (vramcap status) is nvidia-smi's.
  export VRAMCAP_SHM=vramcap-e2e-limits-$$
  HELD_STATUS=1 held limit-stack8g 8192 "$B/graph-mem" stack 16
  unset VRAMCAP_SHM
  c=$LOG/limit-stack8g.log status=$LOG/limit-stack8g.status.json cok=0
  charged=$(python3 - "$status" "$HPID" <<'PY'
import json, sys
try:
    procs = json.load(open(sys.argv[1]))["processes"]
    mine = [p for p in procs if str(p["pid"]) == sys.argv[2]] or procs
    print(mine[0]["devices"][0]["charged_bytes"] >> 20)
except Exception:  # no status: the row fails on the empty figure
    print("")
PY
)
  [ "$(kv set "$c")" = 0 ] && [ "$(kv stack_now "$c")" = 16384 ] && [ "$(kv kernel "$c")" = 0 ] &&
    [ "$(kv works_after "$c")" = 1 ] && le "$SMI" 8192 && int "$charged" && gt "$SMI" 0 &&
    le "$(( charged > SMI ? charged - SMI : SMI - charged ))" 64 && [ "$RC" = 0 ] && cok=1
  row "stack limit 16KiB, cap 8GiB" "bare smi ${bs}MiB; cap 8192MiB: set $(kv set "$c"), stack $(kv stack_now "$c"), kernel $(kv kernel "$c"), smi ${SMI}MiB, vramcap charged ${charged:-?}MiB (within 64MiB)" "$cok"

  # Local memory 8 KiB a thread: the driver grows the stack at the launch by (8192 - 1024) x 132 x 2048 =
  # 1848 MiB on an H200. Under 4 GiB the launch goes through; an allocation of cap - 256 MiB - 600 MiB
  # (which would fit without the growth) is refused.
  bare limit-local-bare "$B/graph-mem" local 8; bs=$SMI brc=$RC
  held limit-local 4096 "$B/graph-mem" local 8
  b=$LOG/limit-local-bare.log c=$LOG/limit-local.log bok=0 cok=0
  gm=$(kv growth_mib "$b"); int "$gm" || gm=0
  # Bare, nvidia-smi shows the growth beside the 256 MiB (and the context).
  [ "$(kv kernel "$b")" = 0 ] && ge "$gm" 1024 && ge "$bs" $((256 + gm)) && [ "$brc" = 0 ] && bok=1
  [ "$(kv kernel "$c")" = 0 ] && [ "$(kv alloc_after_growth "$c")" = 2 ] && [ "$(kv works_after "$c")" = 1 ] &&
    le "$SMI" 4096 && [ "$RC" = 0 ] && cok=1
  row "driver-grown local memory" "bare stack $(kv stack_before "$b")->$(kv stack_after "$b") (+$(kv growth_mib "$b")MiB), smi ${bs}MiB; cap 4096MiB: kernel $(kv kernel "$c"), free $(kv free_after "$c")MiB, then $(kv alloc_after_growth_mib "$c")MiB -> $(kv alloc_after_growth_name "$c") ($(kv alloc_within_mib "$c")MiB -> $(kv alloc_within "$c")), smi ${SMI}MiB" $((bok & cok))
}

# 8. Overhead, as ratios against the same workload without vramcap, measured in this run. Each process
# reports its fastest round (interference only ever adds time). The two variants run in pairs, pinned to
# the same CPUs, in ABBA order (which one runs first alternates: the first process of a pair was seen to
# run slower, which a fixed order would charge to one side); the judged figure is the median of the
# pairs' ratios, with the medians of each side beside it. Where the workload can be switched inside one
# process (which pointer it calls), the comparison is made there, in alternating rounds, so
# process-to-process noise cannot enter.
median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR + 1) / 2)]}'; }
PIN="taskset -c 2-5"
ab() { # tag, pairs, command...: runs the pairs; their output lines go to $LOG/ab-TAG-{with,without}
  local tag=$1 n=$2 i; shift 2
  # shellcheck disable=SC2206  # $PIN is a command and its arguments
  local with=(env "LD_PRELOAD=$LIB" VRAMCAP_LIMIT=60GiB $PIN "$@") without=($PIN "$@")
  : >"$LOG/ab-$tag-with"; : >"$LOG/ab-$tag-without"
  for i in $(seq 1 "$n"); do
    if [ $((i % 2)) = 1 ]; then
      "${without[@]}" | tr '\n' ' ' >>"$LOG/ab-$tag-without"; echo >>"$LOG/ab-$tag-without"
      "${with[@]}" | tr '\n' ' ' >>"$LOG/ab-$tag-with"; echo >>"$LOG/ab-$tag-with"
    else
      "${with[@]}" | tr '\n' ' ' >>"$LOG/ab-$tag-with"; echo >>"$LOG/ab-$tag-with"
      "${without[@]}" | tr '\n' ' ' >>"$LOG/ab-$tag-without"; echo >>"$LOG/ab-$tag-without"
    fi
  done
}
figures() { # tag, key: sets WITH and WITHOUT (medians), RATIO and MEDDIFF (medians over the pairs)
  # One value per run (NA where a run printed none, which fails the row).
  local w wo pairs pick='{v = "NA"; for (i = 1; i <= NF; i++) if (index($i, k) == 1) v = substr($i, length(k) + 1); print v}'
  w=$(awk -v k="$2=" "$pick" "$LOG/ab-$1-with"); wo=$(awk -v k="$2=" "$pick" "$LOG/ab-$1-without")
  WITH=$(echo "$w" | median); WITHOUT=$(echo "$wo" | median)
  pairs=$(paste <(echo "$w") <(echo "$wo"))
  if echo "$pairs" | grep -q NA; then RATIO=NA; MEDDIFF=NA; else
    RATIO=$(echo "$pairs" | awk '{printf "%.4f\n", $1 / $2}' | median)
    MEDDIFF=$(echo "$pairs" | awk '{print $1 - $2}' | median)
  fi
  echo "$2 without: $(echo $wo) | with: $(echo $w) | median ratio $RATIO, median difference $MEDDIFF" >>"$LOG/overhead.txt"
}
sec_overhead() {
  local la r same to ok abl inproc wrapped ga gr gsame gto
  # cuLaunchKernel is not wrapped: the program gets libcuda's own pointer, so no instruction of ours runs
  # per launch, and that is what is judged (the pointer, and the library it comes from). The timing of the
  # two identical paths is shown for information only: it is noise (1.0198x was seen on an H200).
  la=$(LD_PRELOAD=$LIB VRAMCAP_LIMIT=60GiB $PIN "$B/gpu-probe" bench-launch-ab 20000)
  echo "$la" >>"$LOG/overhead.txt"
  r=$(echo "$la" | grep -o 'launch_ratio=[0-9.]*' | cut -d= -f2)
  same=$(echo "$la" | grep -o 'same_pointer=[01]' | cut -d= -f2)
  to=$(echo "$la" | grep -o 'launch_resolves_to=[^ ]*' | cut -d= -f2)
  ok=0; [ "$same" = 1 ] && [[ "$to" == libcuda.so* ]] && ok=1
  row "overhead: empty kernel launch" "same pointer ${same:-?}, from ${to:-?}; timing (info) $(echo "$la" | tr ' ' '\n' | grep -E 'launch_(seen|own)_us' | tr '\n' ' ')= ${r}x" "$ok"
  # cuGraphLaunch of a graph without allocation nodes (one empty-kernel node), in one process: through the
  # pointer the program got (vramcap's wrapper: same pointer 0) against libcuda's own, alternating rounds.
  ga=$(LD_PRELOAD=$LIB VRAMCAP_LIMIT=60GiB $PIN "$B/gpu-probe" bench-graph-ab 20000)
  echo "$ga" >>"$LOG/overhead.txt"
  gr=$(echo "$ga" | grep -o 'graph_ratio=[0-9.]*' | cut -d= -f2)
  gsame=$(echo "$ga" | grep -o 'same_pointer=[01]' | cut -d= -f2)
  gto=$(echo "$ga" | grep -o 'graph_resolves_to=[^ ]*' | cut -d= -f2)
  ok=$(awk -v r="$gr" 'BEGIN {print (r != "" && r <= 1.01) ? 1 : 0}')
  row "overhead: graph launch (in one process)" "$(echo "$ga" | tr ' ' '\n' | grep -E 'graph_(seen|own)_us' | tr '\n' ' ')= ${gr}x (target <= 1.01x); same pointer ${gsame:-?}, from ${gto:-?}" "$ok"
  # cuMemAlloc+cuMemFree of 1 MiB. Processes on the lent H100 fall at random into a fast or a slow mode
  # (60-70 or 80-95 us a pair, the same binary, any CPU), so pairs of processes scatter by several percent
  # either way and cannot resolve 1%. Judged: inside one process, vramcap's wrappers against libcuda's own
  # functions in 400 alternating rounds of 100 pairs (the median ratio of neighbouring rounds). Shown beside
  # it: the same program with and without vramcap in 16 pairs of processes.
  ab alloc 16 "$B/gpu-probe" bench-alloc 1000
  figures alloc bench-alloc_us
  abl=$(LD_PRELOAD=$LIB VRAMCAP_LIMIT=60GiB $PIN "$B/gpu-probe" bench-alloc-ab 100 400)
  echo "$abl" >>"$LOG/overhead.txt"
  inproc=$(echo "$abl" | grep -o 'ab_ratio=[0-9.]*' | cut -d= -f2)
  wrapped=$(echo "$abl" | grep -o 'wrapped=[01]' | cut -d= -f2)
  ok=$(awk -v r="$inproc" -v w="$wrapped" 'BEGIN {print (w == 1 && r != "" && r <= 1.01) ? 1 : 0}')
  row "overhead: cuMemAlloc+Free 1MiB" "$(echo "$abl" | tr ' ' '\n' | grep -E 'ab_(hooked|direct)_us' | tr '\n' ' ')= ${inproc}x (target <= 1.01x); 16 process pairs ${WITH} vs ${WITHOUT}us, median ratio ${RATIO}x" "$ok"
  ab mlp 6 python3 "$B/py/mlp_step.py" 15
  figures mlp mlp_step_us
  ok=$(awk -v r="$RATIO" 'BEGIN {print (r != "NA" && r <= 1.005) ? 1 : 0}')
  row "overhead: torch MLP training step" "6 pairs: ${WITH} vs ${WITHOUT}us, median ratio ${RATIO}x (target <= 1.005x)" "$ok"
  # Whole starts spread by hundreds of ms between identical runs (2.9 to 4.2 s on an H200 host, almost all
  # of it importing torch), so 13 pairs of them cannot resolve 50 ms: the whole start is shown, and what is
  # judged is the sum of the median differences of the parts where vramcap's own code runs beyond forwarding
  # dlsym: the interpreter's start up to the script's first line (the library loaded, its constructor run)
  # and the first tensor (cuInit, the context, the first allocation through our hooks).
  ab start 13 bash "$B/py/start_tensor.sh"
  figures start pre_ms
  local pre=$MEDDIFF prefig="start to script ${WITH} vs ${WITHOUT}ms"
  figures start import_ms
  local imp="import torch ${WITH} vs ${WITHOUT}ms (info)"
  figures start cuda_init_ms
  local cud=$MEDDIFF cudfig="first tensor ${WITH} vs ${WITHOUT}ms"
  figures start start_ms
  local sum
  sum=$(awk -v a="$pre" -v b="$cud" 'BEGIN {print (a == "NA" || b == "NA") ? "NA" : a + b}')
  ok=$(awk -v d="$sum" 'BEGIN {print (d != "NA" && d <= 50) ? 1 : 0}')
  row "overhead: start to first tensor" "13 pairs, medians: $prefig (+${pre}), $cudfig (+${cud}): +${sum}ms (target <= +50ms); $imp; whole ${WITH} vs ${WITHOUT}ms (info, median difference ${MEDDIFF})" "$ok"
}

run_sections "$E2E_ONLY" "$LOG/sections.txt"

# Logs come back as one file (the device tool returns few files).
for f in "$LOG"/*.log "$LOG"/*.txt "$LOG"/*.json; do echo "=== $f"; head -n 30 "$f"; echo "..."; tail -n 12 "$f"; done >"${OUT:-/tmp/vramcap-e2e}/e2e-logs.txt" 2>/dev/null
rm -rf "$LOG"

{
  echo
  echo "vramcap GPU end-to-end ($GPU)${E2E_ONLY:+, sections: $E2E_ONLY}"
  printf '%-34s %-72s %s\n' check figures result
  printf '%s\n' ${ROWS[@]+"${ROWS[@]}"}
  echo "section times: ${TIMES[*]-}"
} | tee "${OUT:-/tmp/vramcap-e2e}/e2e-table.txt"
exit $FAILED
