"""``vramcap.status()``: what every capped process holds, as ``vramcap status --json`` prints it.

It runs the installed ``vramcap`` command rather than reading the shared segment itself: a capped
process holds POSIX record locks on the segment file, and POSIX drops all of a process's locks on a file
when it closes *any* descriptor of that file, so opening and closing the segment inside a capped worker
would silently give its locks away.
"""

from __future__ import annotations

import json
import os
import subprocess
from typing import Any, Dict, Optional

from ._paths import executable as _executable


class VramcapError(RuntimeError):
    """``vramcap`` failed: ``returncode`` and ``stderr`` are its own (``returncode`` is None when it did
    not run to an end)."""

    def __init__(self, message: str, returncode: Optional[int] = None, stderr: str = ""):
        super().__init__(message)
        self.returncode = returncode
        self.stderr = stderr


class NoSegmentError(VramcapError):
    """There is no segment yet: no capped process has started (or ``VRAMCAP_SHM`` names another)."""


def status(
    *,
    shm: Optional[str] = None,
    nvml: bool = True,
    executable: Optional[str] = None,
    timeout: float = 30.0,
) -> Dict[str, Any]:
    """The data of ``vramcap status --json``, parsed: a dict with ``segment``, ``devices``,
    ``processes`` (each with ``pid``, ``name``, ``priority``, ``protected``, and per device its ``uuid``,
    what it is charged, its cap, peak, context and refusals) and ``totals``; sizes in bytes. The fields
    are exactly ``vramcap status --json``'s.

    ``shm`` names the segment (``VRAMCAP_SHM``; default: the inherited one, else the user's own).
    ``nvml=False`` passes ``--no-nvml``. ``executable`` is the ``vramcap`` to run (default: the one
    installed with this package, else ``PATH``'s).

    Raises :class:`NoSegmentError` where ``vramcap`` exits 1 for want of a segment (no capped process has
    started), :class:`VramcapError` for any other failure (with ``vramcap``'s own message),
    ``FileNotFoundError`` when there is no ``vramcap``.
    """
    if not isinstance(nvml, bool):
        raise TypeError(f"status: nvml={nvml!r} is not True or False")
    if not (isinstance(timeout, (int, float)) and timeout > 0):
        raise ValueError(f"status: timeout={timeout!r} is not a positive number of seconds")
    exe = executable if executable is not None else _executable("vramcap")
    argv = [exe, "status", "--json"] + ([] if nvml else ["--no-nvml"])
    env = dict(os.environ)
    if shm is not None:
        if not str(shm):
            raise ValueError("status: shm='' names no segment")
        env["VRAMCAP_SHM"] = str(shm)
    try:
        done = subprocess.run(
            argv,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as e:
        raise VramcapError(f"{' '.join(argv)}: no answer within {timeout} s") from e
    except OSError as e:
        raise VramcapError(f"cannot run {exe}: {e}") from e
    stderr = done.stderr.decode("utf-8", "replace").strip()
    if done.returncode == 1:
        raise NoSegmentError(stderr or f"{exe}: no segment", 1, stderr)
    if done.returncode != 0:
        raise VramcapError(
            stderr or f"{' '.join(argv)} exited with {done.returncode}", done.returncode, stderr
        )
    try:
        return json.loads(done.stdout)
    except ValueError as e:
        raise VramcapError(f"{' '.join(argv)} printed no JSON: {e}", 0, stderr) from e
