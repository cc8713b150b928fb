"""JAX with its default preallocation under a cap: starts, sizes its pool from the capped memory, and
raises its own RESOURCE_EXHAUSTED past it."""
import jax
import jax.numpy as jnp
from common import CAP, hold, say

dev = jax.devices()[0]
stats = dev.memory_stats() or {}
limit = stats.get("bytes_limit", 0)
say(platform=dev.platform, bytes_limit=limit, sized_from_cap=int(0 < limit <= CAP))
held, error = [], None
try:
    while len(held) < 10_000:
        x = jnp.full((16 << 20,), len(held) % 251, dtype=jnp.uint32)
        x.block_until_ready()
        held.append(x)
except Exception as e:  # noqa: BLE001
    error = e
text = str(error)
say(arrays=len(held), error_type=type(error).__name__,
    is_jax_oom=int("RESOURCE_EXHAUSTED" in text or "out of memory" in text.lower()))
hold()
