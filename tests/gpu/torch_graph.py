"""torch.cuda.graph bare and under a cap: K graphs, each computing a static output of MIB MiB from a static
input (out = inp * 2 + 1), the outputs kept alive as real code keeps them. Each graph is warmed up on a side
stream (as torch's docs show), captured, replayed once and its output checked; the first exception stops.
Holds everything (HOLD) for nvidia-smi, then drops half, empties the cache and uses 32 MiB.
Run with PYTORCH_CUDA_ALLOC_CONF=backend:cudaMallocAsync (graph allocation nodes, reserved at replay) and
with the default allocator (the graph's private pool, cudaMalloc during capture).
Usage: torch_graph.py K MIB"""
import gc
import sys

import torch
from common import hold, say

k, mib = int(sys.argv[1]), int(sys.argv[2])
n = mib << 20


def oom_in(e):
    """The type name of the out-of-memory error in e's chain (raised from or during), or None."""
    for _ in range(8):
        if e is None:
            return None
        if isinstance(e, torch.OutOfMemoryError) or "out of memory" in str(e).lower():
            return type(e).__name__
        e = e.__cause__ or e.__context__
    return None


def holds(t, v):
    # Two reductions: no temporary of the tensor's size (which could itself be refused under the cap).
    return int(t.min().item()) == v and int(t.max().item()) == v


graphs, inputs, outputs, values = [], [], [], []
error, where, ok = None, "none", True
for i in range(k):
    v = (i * 7 + 3) % 100
    try:
        where = "input"
        inp = torch.full((n,), v, dtype=torch.uint8, device="cuda")
        where = "warmup"
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            for _ in range(3):
                tmp = inp * 2
                tmp += 1
            del tmp
        torch.cuda.current_stream().wait_stream(s)
        where = "capture"
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            out = inp * 2
            out += 1
        where = "replay"
        g.replay()
        torch.cuda.synchronize()
        where = "check"
        ok = ok and holds(out, 2 * v + 1)
    except Exception as e:  # noqa: BLE001 - we report which type it was
        error = e
        break
    graphs.append(g)
    inputs.append(inp)
    outputs.append(out)
    values.append(2 * v + 1)
# Drop what the failed attempt left (its input, a half-captured graph) before checking the others.
inp = out = g = s = None
err_type = type(error).__name__ if error is not None else "None"
oom_type = oom_in(error) or "None"
message = (str(error).strip().splitlines() or [""])[0][:160] if error is not None else ""
error = None
gc.collect()
try:
    ok = ok and all(holds(o, v) for o, v in zip(outputs, values))
except Exception as e:  # noqa: BLE001
    say(data_check_error=type(e).__name__)
    ok = False
say(graphs=len(graphs), error_type=err_type, oom_type=oom_type, is_oom=int(oom_type != "None"),
    oom_where=where if err_type != "None" else "none", data_ok=int(ok))
say(error_message=message.replace(" ", "_") or "none")
torch.cuda.synchronize()
hold()
half = len(graphs) // 2
del graphs[:half], inputs[:half], outputs[:half], values[:half]
gc.collect()
torch.cuda.synchronize()
torch.cuda.empty_cache()
try:
    again = torch.empty(32 << 20, dtype=torch.uint8, device="cuda").fill_(7)
    works = holds(again, 7) and all(holds(o, v) for o, v in zip(outputs, values))
except Exception as e:  # noqa: BLE001
    say(works_after_error=type(e).__name__)
    works = False
say(works_after=int(works))
