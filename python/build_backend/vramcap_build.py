"""The wheel's PEP 517 build backend: maturin, after one step maturin cannot take itself.

maturin builds the root package's binaries (``vramcap``, ``vramcap-run``) and packs ``python/vramcap``,
but ``libvramcap.so`` is the cdylib of another package of the workspace (``preload/``). So before maturin
runs, this builds it (``cargo build --release -p vramcap-preload``: the core without the CLI's features,
as the tests build it) and lays out the wheel's data folder, ``target/wheel-data`` (``[tool.maturin]
data``):

- ``data/lib/libvramcap.so``: pip installs it to ``DATA/lib`` (``VENV/lib``, ``~/.local/lib``), which is
  ``../lib`` from the installed binaries, where ``vramcap-run`` looks;
- ``data/lib/vramcap/libvramcap_sim.so``: the simulated device of ``vramcap demo`` (the fake driver,
  ``tests/fake-driver``), in a folder of its own: its soname is ``libcuda.so.1``, and ldconfig reads no
  subfolder (``--user`` puts it under ``~/.local/lib``);
- ``data/share/``: the man pages and shell completions (``tools/gen-docs``).

Everything else is maturin's own (``MATURIN_PEP517_ARGS`` passes it options, as
``scripts/build-wheel.sh`` does for the manylinux tag). ``python build_backend/vramcap_build.py`` stages
alone.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import maturin
from maturin import (  # noqa: F401 - the hooks maturin answers unchanged
    get_requires_for_build_editable,
    get_requires_for_build_sdist,
    get_requires_for_build_wheel,
)

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "target" / "wheel-data"


def stage() -> Path:
    """Builds libvramcap.so, the simulated device, the man pages and the completions into
    ``target/wheel-data``."""
    cargo = os.environ.get("CARGO", "cargo")
    target = Path(os.environ.get("CARGO_TARGET_DIR") or ROOT / "target")
    if not target.is_absolute():
        target = ROOT / target
    data = DATA

    def run(*args: str) -> None:
        print("vramcap_build: " + " ".join(args), file=sys.stderr, flush=True)
        subprocess.run(args, cwd=ROOT, check=True, stdout=sys.stderr)

    run(cargo, "build", "--release", "--locked", "-p", "vramcap-preload", "-p", "fake-cuda")
    shutil.rmtree(data, ignore_errors=True)
    (data / "data" / "lib" / "vramcap").mkdir(parents=True)
    shutil.copy2(target / "release" / "libvramcap.so", data / "data" / "lib" / "libvramcap.so")
    shutil.copy2(target / "release" / "libvramcap_sim.so",
                 data / "data" / "lib" / "vramcap" / "libvramcap_sim.so")
    run(cargo, "run", "--release", "--locked", "-q", "-p", "vramcap-gen-docs", "--",
        str(data / "data" / "share"))
    return data


def prepare_metadata_for_build_wheel(metadata_directory, config_settings=None):
    DATA.mkdir(parents=True, exist_ok=True)  # maturin wants the folder; the metadata needs no content
    return maturin.prepare_metadata_for_build_wheel(metadata_directory, config_settings)


def prepare_metadata_for_build_editable(metadata_directory, config_settings=None):
    DATA.mkdir(parents=True, exist_ok=True)
    return maturin.prepare_metadata_for_build_editable(metadata_directory, config_settings)


def build_sdist(sdist_directory, config_settings=None):
    # maturin's source distribution holds the root package and its dependencies, not preload/, so a
    # wheel built from it would have no libvramcap.so: refused, rather than made and broken.
    raise RuntimeError(
        "vramcap has no source distribution: build the wheel from the repository "
        "(scripts/build-wheel.sh, pip wheel ., or python -m build --wheel)"
    )


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    stage()
    return maturin.build_wheel(wheel_directory, config_settings, metadata_directory)


def build_editable(wheel_directory, config_settings=None, metadata_directory=None):
    stage()
    return maturin.build_editable(wheel_directory, config_settings, metadata_directory)


if __name__ == "__main__":
    print(stage())
