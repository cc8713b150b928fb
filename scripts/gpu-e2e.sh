#!/usr/bin/env bash
# Every real-GPU check of vramcap, in one call on the device machine. Builds nothing there: run
# scripts/build-gpu-bundle.sh on the build machine first and carry gpu-bundle/. Logs go under $OUT when
# set. Prints one table row per check (figures, PASS/FAIL) last, and exits non-zero if any row fails.
#
#   device run: bash scripts/gpu-e2e.sh            (carry: gpu-bundle)
set -u
B=${VRAMCAP_BUNDLE:-$PWD/gpu-bundle}
LOG=$(mktemp -d /tmp/vramcap-e2e.XXXX)
mkdir -p "${OUT:-/tmp/vramcap-e2e}"
LIB=$B/libvramcap.so
RUN=$B/vramcap-run
export PYTHONUNBUFFERED=1 PYTHONPATH=$B/py VRAMCAP_LOG=${VRAMCAP_LOG:-warn}
ROWS=()
FAILED=0
row() { # check, figures, ok(0/1)
  local verdict=FAIL
  [ "$3" = 1 ] && verdict=PASS || FAILED=1
  ROWS+=("$(printf '%-34s %-72s %s' "$1" "$2" "$verdict")")
  echo "ROW $1 | $2 | $verdict"
}
val() { grep -m1 -o "$1=[^ ]*" "$2" | cut -d= -f2; }  # key file -> value
smi_mib() { nvidia-smi --query-compute-apps=pid,used_memory --format=csv,noheader,nounits | awk -F', *' -v p="$1" '$1==p{print $2}'; }
le() { [ -n "$1" ] && [ -n "$2" ] && [ "$1" -le "$2" ]; }

# held NAME CAP_MIB CMD...: runs CMD under vramcap-run --limit CAP_MIB MiB, waits for its HOLD line, reads
# nvidia-smi's figure for the process from outside, then lets it finish. Sets SMI and RC; log in $LOG/NAME.log.
held() {
  local name=$1 cap=$2; shift 2
  local go=$LOG/$name.go log=$LOG/$name.log pid
  rm -f "$go"
  VRAMCAP_E2E_HOLD=$go VRAMCAP_E2E_CAP_BYTES=$((cap << 20)) timeout 300 "$RUN" --limit "${cap}MiB" --name "$name" -- "$@" >"$log" 2>&1 &
  pid=$!
  for _ in $(seq 1 2400); do grep -q '^HOLD' "$log" && break; kill -0 $pid 2>/dev/null || break; sleep 0.05; done
  sleep 0.5
  SMI=$(smi_mib "$(grep -m1 -o 'HOLD pid=[0-9]*' "$log" | cut -d= -f2)")
  touch "$go"
  wait $pid; RC=$?
  [ -n "$SMI" ] || SMI=0
}

GPU=$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader)
echo "$GPU"

# 1. Synthetic patterns through cudarc (dlopen + dlsym): every byte written and verified on the device.
for spec in small4k:640 small64k:700 odd:2048 large:2048 mixed:2048 async:2048 vmm:2048; do
  name=${spec%%:*} cap=${spec##*:}
  held "pattern-$name" "$cap" "$B/gpu-probe" pattern "$name" "$LOG/pattern-$name.go"
  f=$LOG/pattern-$name.log
  ok=0
  [ "$(val refused "$f")" = 2 ] && [ "$(val checksum_ok "$f")" = 1 ] && le "$SMI" "$cap" && [ $RC = 0 ] && ok=1
  row "pattern $name" "cap ${cap}MiB smi ${SMI}MiB buffers $(val buffers "$f") bytes $(val bytes "$f") checksum_ok $(val checksum_ok "$f")" $ok
done

# 2. PyTorch, three allocator modes, 2 GiB cap, after a matmul (cuBLAS loaded).
for mode in default expandable_segments:True backend:cudaMallocAsync; do
  conf=$mode; [ "$mode" = default ] && conf=
  PYTORCH_CUDA_ALLOC_CONF=$conf held "torch-${mode%%:*}" 2048 python3 "$B/py/torch_cap.py"
  f=$LOG/torch-${mode%%:*}.log
  ok=0
  [ "$(val is_torch_oom "$f")" = 1 ] && [ "$(val works_after "$f")" = 1 ] && [ "$(val shows_cap "$f")" = 1 ] && le "$SMI" 2048 && ok=1
  row "torch $mode" "smi ${SMI}MiB tensors $(val tensors "$f") error $(val error_type "$f") mem_get_info=cap $(val shows_cap "$f")" $ok
done

# 3. CuPy and JAX (default preallocation).
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

# 4. A static-cudart runtime program (cuGetProcAddress_v2) and a -lcuda driver program (exported symbols).
held static-cudart 2048 "$B/static-cudart" "$LOG/static-cudart.go"
f=$LOG/static-cudart.log; ok=0
[ "$(val total "$f")" = $((2048 << 20)) ] && [ "$(val refused "$f")" = 2 ] && [ "$(val last_byte_ok "$f")" = 1 ] && le "$SMI" 2048 && ok=1
row "nvcc static cudart" "smi ${SMI}MiB blocks $(val runtime_blocks "$f") of 2MiB+1 refused $(val refused "$f") total=cap" $ok
held lcuda 2048 "$B/client" link cap
f=$LOG/lcuda.log; ok=0
[ "$(val refused_code "$f")" = 2 ] && [ "$(val info_total "$f")" = $((2048 << 20)) ] && [ "$(val alloc_after "$f")" = 0 ] && le "$SMI" 2048 && ok=1
row "-lcuda driver program" "smi ${SMI}MiB allocated $(val allocated "$f") x 64MiB refused $(val refused_code "$f")" $ok

# 4b. vramcap status beside nvidia-smi, for two capped PyTorch processes holding memory.
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
    ours, nvml, s = d["charged"] >> 20, (d["nvml_used"] or 0) >> 20, smi.get(p["pid"], -1)
    rows.append(f"{p['name']} ours {ours}MiB nvml {nvml}MiB smi {s}MiB")
    ok = ok and abs(ours - s) <= 16 and s <= 2048
print(("1 " if ok else "0 ") + "; ".join(rows))
PY
)
touch "$LOG/w1.go" "$LOG/w2.go"; wait
row "status beside nvidia-smi" "${cmp#* }" "${cmp%% *}"
unset VRAMCAP_SHM

# 4c. The priority unloader, scaled to the card: image (protected, 20 GiB), chat (priority 1, 24 GiB) and
# video (priority 2, 24 GiB) hold tensors, each with an HTTP unload endpoint; a requester of priority 5
# asks for 40 GiB, which needs chat and video to unload (chat first), never image.
export VRAMCAP_SHM=vramcap-e2e-unload-$$
uw() { # name priority GiB port flags...
  local name=$1 prio=$2 gib=$3 port=$4; shift 4
  "$RUN" --limit 30GiB --name "$name" --priority "$prio" "$@" --unload-url "http://127.0.0.1:$port/memory/unload" -- \
    python3 "$B/py/unload_worker.py" "$name" "$gib" "$port" >"$LOG/unload-$name.log" 2>&1 &
}
uw image 3 20 8101 --protect; uw chat 1 24 8102; uw video 2 24 8103
for _ in $(seq 1 900); do [ "$(grep -l '^READY' "$LOG"/unload-{image,chat,video}.log 2>/dev/null | wc -l)" = 3 ] && break; sleep 0.1; done
sleep 0.5
"$B/vramcap" unloader --poll 20ms --hook-timeout 30s 2>"$LOG/unloader.log" &
UNLOADER=$!
sleep 0.5
"$RUN" --limit 45GiB --name burst --priority 5 --wait 60s -- python3 "$B/py/unload_request.py" 40 >"$LOG/unload-request.log" 2>&1
kill -TERM $UNLOADER; wait $UNLOADER; urc=$?
pkill -f unload_worker.py; wait 2>/dev/null
{ grep -h '^EVENT\|^READY' "$LOG"/unload-*.log | sort -t= -k2 -n; cat "$LOG/unloader.log"; } >"$LOG/unload-timeline.txt"
cat "$LOG/unload-timeline.txt"
took=$(val blocked_to_success_s "$LOG/unload-request.log")
order=0; c=$(grep -n 'asking chat' "$LOG/unloader.log" | head -1 | cut -d: -f1); v=$(grep -n 'asking video' "$LOG/unloader.log" | head -1 | cut -d: -f1)
[ -n "$c" ] && [ -n "$v" ] && [ "$c" -lt "$v" ] && order=1
kept=0; grep -q 'asking image' "$LOG/unloader.log" || grep -q 'image unloaded' "$LOG"/unload-image.log || kept=1
intact=$(grep -c 'data_ok=1' "$LOG"/unload-chat.log "$LOG"/unload-video.log | awk -F: '{s+=$2} END {print s+0}')
ok=0; [ "$took" != fail ] && [ -n "$took" ] && [ $order = 1 ] && [ $kept = 1 ] && [ "$urc" = 0 ] && ok=1
row "unloader: 40GiB for prio 5" "blocked->success ${took}s; chat then video: $order; image kept: $kept; unloaded intact $intact/2; clean stop rc $urc" $ok
unset VRAMCAP_SHM

# 4d. Suspend and resume without the worker's help (the driver's checkpoint API): a busy lower worker with
# no hook holds 12 GiB; a higher one holds 30 GiB, then asks for 40 GiB more. The lower one is suspended,
# the higher one's allocation succeeds, the higher one exits, the lower one is resumed and checks its data.
export VRAMCAP_SHM=vramcap-e2e-suspend-$$
rm -f "$LOG/lower.done"
"$RUN" --limit 20GiB --name lower --priority 1 --on-pressure suspend -- \
  python3 "$B/py/suspend_worker.py" 12 "$LOG/lower.done" >"$LOG/suspend-lower.log" 2>&1 &
LOWER=$!
for _ in $(seq 1 600); do grep -q '^READY' "$LOG/suspend-lower.log" && break; sleep 0.1; done
"$B/vramcap" unloader --poll 20ms --hook-timeout 60s 2>"$LOG/suspend-unloader.log" &
UNLOADER=$!
sleep 0.5
"$RUN" --limit 75GiB --name higher --priority 5 --wait 120s -- python3 "$B/py/unload_request.py" 40 30 \
  >"$LOG/suspend-higher.log" 2>&1
for _ in $(seq 1 600); do grep -q 'resumed lower' "$LOG/suspend-unloader.log" && break; sleep 0.1; done
sleep 1
touch "$LOG/lower.done"; wait $LOWER
kill -TERM $UNLOADER; wait $UNLOADER
{ grep -h '^EVENT\|^READY' "$LOG"/suspend-lower.log "$LOG"/suspend-higher.log | sort -t= -k2 -n; cat "$LOG/suspend-unloader.log"; } | tee "$LOG/suspend-timeline.txt"
took=$(val blocked_to_success_s "$LOG/suspend-higher.log")
t_free=$(grep -o 'suspended lower.* in [0-9.]*s' "$LOG/suspend-unloader.log" | grep -o '[0-9.]*s$')
t_back=$(grep -o 'resumed lower.* in [0-9.]*s' "$LOG/suspend-unloader.log" | grep -o '[0-9.]*s$')
moved=$(grep -o 'suspended lower.*: [0-9.]* [KMGT]iB moved' "$LOG/suspend-unloader.log" | grep -o '[0-9.]* [KMGT]iB')
intact=$(val verified_ok "$LOG/suspend-lower.log")
ok=0; [ -n "$took" ] && [ "$took" != fail ] && [ -n "$t_free" ] && [ -n "$t_back" ] && [ "$intact" = 1 ] && ok=1
row "suspend/resume: no-hook worker" "moved ${moved:-?} to host in ${t_free:-?}, back in ${t_back:-?}; higher waited ${took}s; data intact $intact" $ok
unset VRAMCAP_SHM

# 5. Concurrency: 4 processes x 16 threads allocating and freeing at random, 768 MiB cap each.
rm -f "$LOG/conc.stop"
pids=()
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

# 6. Overhead, as ratios against the same workload without vramcap, measured in this run. Each process
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
  local with=(env LD_PRELOAD=$LIB VRAMCAP_LIMIT=60GiB $PIN "$@") without=($PIN "$@")
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
# cuLaunchKernel is not wrapped: the program gets libcuda's own pointer, so no instruction of ours runs per
# launch. Measured in one process: launches through the pointer the program got against libcuda's own.
la=$(LD_PRELOAD=$LIB VRAMCAP_LIMIT=60GiB $PIN "$B/gpu-probe" bench-launch-ab 20000)
echo "$la" >>"$LOG/overhead.txt"
r=$(echo "$la" | grep -o 'launch_ratio=[0-9.]*' | cut -d= -f2)
same=$(echo "$la" | grep -o 'same_pointer=[01]' | cut -d= -f2)
to=$(echo "$la" | grep -o 'launch_resolves_to=[^ ]*' | cut -d= -f2)
ok=0; [ "$same" = 1 ] && [[ "$to" == libcuda.so* ]] && awk -v r="$r" 'BEGIN {exit !(r <= 1.01)}' && ok=1
row "overhead: empty kernel launch" "$(echo "$la" | tr ' ' '\n' | grep -E 'launch_(seen|own)_us' | tr '\n' ' ')= ${r}x (target 1.00x); same pointer $same, from $to" "$ok"
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
# Whole starts spread by hundreds of ms (mostly importing torch); the CUDA part alone (first tensor after
# the import), where our hooks run, is printed beside it.
ab start 13 bash "$B/py/start_tensor.sh"
figures start cuda_init_ms
cuda="CUDA part ${WITH} vs ${WITHOUT}ms, median difference ${MEDDIFF}ms"
figures start start_ms
ok=$(awk -v d="$MEDDIFF" 'BEGIN {print (d != "NA" && d <= 50) ? 1 : 0}')
row "overhead: start to first tensor" "13 pairs: ${WITH} vs ${WITHOUT}ms, median difference ${MEDDIFF}ms (target <= +50ms); $cuda" "$ok"

# Logs come back as one file (the device tool returns few files).
for f in "$LOG"/*.log "$LOG"/*.txt; do echo "=== $f"; head -n 30 "$f"; echo "..."; tail -n 12 "$f"; done >"${OUT:-/tmp/vramcap-e2e}/e2e-logs.txt" 2>/dev/null
rm -rf "$LOG"

echo
echo "vramcap GPU end-to-end ($GPU)"
printf '%-34s %-72s %s\n' check figures result
printf '%s\n' "${ROWS[@]}"
exit $FAILED
