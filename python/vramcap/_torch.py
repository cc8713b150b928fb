"""Callbacks for :func:`vramcap.serve_unload` that drop a PyTorch model and give its memory back.

PyTorch's caching allocator keeps freed blocks for reuse, so dropping the last reference to a model frees
nothing that vramcap (or nvidia-smi) sees until ``torch.cuda.empty_cache()`` returns the cached blocks to
the driver. ``torch`` is imported when the callback runs, never by ``import vramcap``.
"""

from __future__ import annotations

import gc
import importlib
import weakref
from collections.abc import MutableMapping
from typing import Any, Callable


def _check(fn: str, holder: Any, key: Any) -> bool:
    """True for a mapping holder (``holder[key]``), False for an object (``holder.key``)."""
    if holder is None:
        raise TypeError(f"{fn}: holder=None holds nothing (an object or a dict that holds the model)")
    if isinstance(holder, MutableMapping):
        return True
    if not isinstance(key, str) or not key.isidentifier():
        raise TypeError(f"{fn}: attr={key!r} is not an attribute name")
    return False


def _get(holder: Any, key: Any, mapping: bool) -> Any:
    return holder.get(key) if mapping else getattr(holder, key, None)


def _set(holder: Any, key: Any, value: Any, mapping: bool) -> None:
    if mapping:
        holder[key] = value
    else:
        setattr(holder, key, value)


def torch_unloader(holder: Any, attr: Any) -> Callable[[], None]:
    """An ``unload`` callback that drops ``holder.attr`` (or ``holder[attr]`` for a dict) and returns
    PyTorch's cached device memory to the driver.

    When called it sets the attribute to None, collects garbage, and, where CUDA is initialised,
    synchronises and calls ``torch.cuda.empty_cache()``. The attribute must hold the last reference to the
    model: if something else (an optimizer, a closure, a list of outputs) still holds it, the memory cannot
    fall, and the callback raises ``RuntimeError`` saying so (the unloader is told ``500`` with that line).
    Calling it again when the attribute is already None just empties the cache. ::

        server = vramcap.serve_unload(vramcap.torch_unloader(app, "model"),
                                      vramcap.torch_reloader(app, "model", load_model))
    """
    mapping = _check("torch_unloader", holder, attr)

    def unload() -> None:
        model = _get(holder, attr, mapping)
        try:
            alive = weakref.ref(model) if model is not None else None
        except TypeError:  # an object without weak references: nothing to verify
            alive = None
        _set(holder, attr, None, mapping)
        del model
        gc.collect()
        try:
            torch = importlib.import_module("torch")
        except ImportError as e:
            raise ImportError(f"torch_unloader: cannot import torch ({e})") from e
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
        if alive is not None and alive() is not None:
            referrers = len(gc.get_referrers(alive()))
            raise RuntimeError(
                f"torch_unloader: {attr!r} was dropped but the model is still referenced "
                f"({referrers} other referrers); its memory stays"
            )

    unload.__qualname__ = unload.__name__ = f"torch_unloader({attr!r})"
    return unload


def torch_reloader(holder: Any, attr: Any, load: Callable[[], Any]) -> Callable[[], None]:
    """A ``reload`` callback: when ``holder.attr`` (or ``holder[attr]``) is None, sets it to ``load()``
    (for example ``lambda: build_model().to("cuda")``); when it already holds a model, does nothing."""
    mapping = _check("torch_reloader", holder, attr)
    if not callable(load):
        raise TypeError(f"torch_reloader: load={load!r} is not callable")

    def reload() -> None:
        if _get(holder, attr, mapping) is None:
            _set(holder, attr, load(), mapping)

    reload.__qualname__ = reload.__name__ = f"torch_reloader({attr!r})"
    return reload
