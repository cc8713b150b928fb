"""A stand-in for ``torch`` in the tests (no PyTorch, no GPU here): just the four ``torch.cuda`` calls that
``vramcap.torch_unloader`` makes, each recorded in ``calls`` and, with ``$TORCH_STUB_PRINT`` set, printed
(``TORCH empty_cache``), so a worker's output shows them in order. Its memory is the fake driver's: the
worker's model frees its allocations when it is collected, as PyTorch's blocks would be returned by
``empty_cache``."""

import os
import types

calls = []
initialized = True


def _record(name):
    def call():
        calls.append(name)
        if os.environ.get("TORCH_STUB_PRINT"):
            print(f"TORCH {name}", flush=True)

    return call


cuda = types.SimpleNamespace(
    is_available=lambda: True,
    is_initialized=lambda: initialized,
    synchronize=_record("synchronize"),
    empty_cache=_record("empty_cache"),
)
