"""CuPy under a cap: starts, sees the cap, raises its own OutOfMemoryError."""
import cupy
from common import CAP, hold, say

free, total = cupy.cuda.runtime.memGetInfo()
say(mem_get_info_total=total, shows_cap=int(total == CAP))
held, error = [], None
try:
    while len(held) < 10_000:
        held.append(cupy.full(16 << 20, len(held) % 251, dtype=cupy.uint32))
except Exception as e:  # noqa: BLE001
    error = e
say(arrays=len(held), error_type=type(error).__name__,
    is_cupy_oom=int(isinstance(error, cupy.cuda.memory.OutOfMemoryError)))
del held[:2]
again = cupy.full(1 << 20, 9, dtype=cupy.uint32)
say(works_after=int(int(again[-1]) == 9))
cupy.cuda.runtime.deviceSynchronize()
hold()
