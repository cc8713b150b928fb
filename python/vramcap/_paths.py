"""Where the wheel put the commands and the library, for the interpreter this package runs in.

pip installs the wheel's scripts into the scheme's ``scripts`` folder (``VENV/bin``, ``~/.local/bin``,
``/usr/local/bin``) and its data into the scheme's ``data`` folder (``VENV``, ``~/.local``, ``/usr/local``),
so ``libvramcap.so`` lands in ``DATA/lib``: ``../lib`` from ``vramcap-run``, where it looks.
"""

from __future__ import annotations

import os
import shutil
import sysconfig
from pathlib import Path
from typing import Iterator, Optional

_HERE = Path(__file__).resolve().parent.parent


def _schemes() -> Iterator[dict]:
    """The install schemes whose library folder holds this package (the one pip installed it by) first."""
    found = []
    for name in sysconfig.get_scheme_names():
        try:
            paths = sysconfig.get_paths(name)
        except (KeyError, ValueError):
            continue
        libs = {paths.get("purelib"), paths.get("platlib")}
        if any(lib and Path(lib).resolve() == _HERE for lib in libs):
            found.append(paths)
    yield from found
    yield sysconfig.get_paths()


def executable(name: str = "vramcap") -> str:
    """The path of the installed command ``name`` (``vramcap`` or ``vramcap-run``).

    The one pip installed beside this package comes first, then ``PATH``. Raises ``FileNotFoundError``
    that names both places when neither has it.
    """
    if name not in ("vramcap", "vramcap-run"):
        raise ValueError(f"executable: name={name!r} is not 'vramcap' or 'vramcap-run'")
    looked = []
    for paths in _schemes():
        candidate = Path(paths["scripts"]) / name
        looked.append(str(candidate.parent))
        if os.access(candidate, os.X_OK) and candidate.is_file():
            return str(candidate)
    on_path = shutil.which(name)
    if on_path:
        return on_path
    raise FileNotFoundError(
        f"no {name} command in {' or '.join(dict.fromkeys(looked))} or on PATH "
        f"(install the vramcap wheel, or put {name} on PATH)"
    )


def library_path() -> Optional[str]:
    """The ``libvramcap.so`` the wheel installed (``DATA/lib/libvramcap.so``), or None if it is not there.

    ``vramcap-run`` finds it by itself; this is for launchers that set ``LD_PRELOAD`` on their own.
    """
    for paths in _schemes():
        candidate = Path(paths["data"]) / "lib" / "libvramcap.so"
        if candidate.is_file():
            return str(candidate)
    return None
