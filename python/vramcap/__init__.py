"""vramcap for Python workers: the unload endpoint, the status of every capped process, a PyTorch unloader.

The wheel also installs the ``vramcap`` and ``vramcap-run`` commands and ``libvramcap.so`` (which
``vramcap-run`` preloads). This package is standard library only, and ``import vramcap`` imports nothing
else: PyTorch is imported by :func:`torch_unloader`'s callable, when it runs.

- :func:`serve_unload` answers the unloader's ``POST`` (``vramcap-run --unload-url``) by calling your
  ``unload()``, and ``POST /reload`` by calling ``reload()``;
- :func:`status` is ``vramcap status --json``, parsed;
- :func:`torch_unloader` and :func:`torch_reloader` make the two callbacks for a model held in an
  attribute (or a dict entry);
- :func:`executable` and :func:`library_path` say where the wheel put the commands and the library.
"""

from ._hooks import UnloadServer, serve_unload
from ._paths import executable, library_path
from ._status import NoSegmentError, VramcapError, status
from ._torch import torch_reloader, torch_unloader

__all__ = [
    "NoSegmentError",
    "UnloadServer",
    "VramcapError",
    "__version__",
    "executable",
    "library_path",
    "serve_unload",
    "status",
    "torch_reloader",
    "torch_unloader",
]


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("vramcap")
    except metadata.PackageNotFoundError:  # a source tree on sys.path, not an install
        return "0+unknown"


__version__ = _version()
