"""``vramcap demo --simulated`` as installed: the wheel's commands with the simulated device pip put in
``lib/vramcap/``, and install.sh's PREFIX likewise. No fake driver from the build tree is on any path:
the demo finds the one it ships, and leaves nothing behind."""

import os
import subprocess
import sysconfig
import time
from pathlib import Path

import pytest
import vramcap

LABEL = "(simulated device)"
DATA = Path(sysconfig.get_path("data"))


def installs(prefix):
    return {
        "wheel": (Path(vramcap.executable()), DATA / "lib" / "vramcap" / "libvramcap_sim.so"),
        "install.sh": (prefix / "bin" / "vramcap", prefix / "lib" / "vramcap" / "libvramcap_sim.so"),
    }


def leftovers(pid, tmp):
    segment = f"vramcap-demo-{pid}"
    left = [f"/dev/shm/{n}" for n in os.listdir("/dev/shm") if n == segment or n.startswith(segment + ".")]
    left += [str(p) for p in tmp.iterdir()]
    marks = (f"VRAMCAP_SHM={segment}\0".encode(), f"{tmp}/vramcap-demo-{pid}-".encode())
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            environ = Path("/proc", entry, "environ").read_bytes()
        except OSError:
            continue
        if any(m in environ for m in marks):
            left.append(f"process {entry}")
    return left


@pytest.mark.parametrize("install", ["wheel", "install.sh"])
def test_the_installed_demo_runs_on_the_simulated_device_it_ships(install, prefix, tmp_path):
    exe, sim = installs(prefix)[install]
    assert sim.is_file(), f"{sim} is not installed"
    # Nothing named like the driver beside the commands or the library.
    for folder in (exe.parent, exe.parent.parent / "lib", sim.parent):
        assert not [n for n in os.listdir(folder) if n.startswith("libcuda")], folder
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("VRAMCAP_", "FAKECUDA_")) and k not in ("LD_LIBRARY_PATH", "LD_PRELOAD")
    }
    env["TMPDIR"] = str(tmp)
    start = time.monotonic()
    child = subprocess.Popen(
        [str(exe), "demo", "--simulated"],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    out, err = child.communicate(timeout=120)
    took = time.monotonic() - start
    assert child.returncode == 0, out + err
    lines = out.splitlines()
    assert lines and all(l.startswith(LABEL) for l in lines + err.splitlines()), out + err
    text = " ".join(l[len(LABEL):].strip() for l in lines)
    # The device it ran on is the one installed beside the commands.
    assert f"the fake driver vramcap's tests use ({sim})" in text, text
    assert "was refused: CUDA_ERROR_OUT_OF_MEMORY (2)" in text, text
    assert "vramcap status, before video asks:" in text and "vramcap status, after:" in text, text
    assert "asking chat" in text and "chat | SIGUSR1: unloaded" in text, text
    assert "video | got " in text, text
    assert "Cleaned up: stopped video (pid " in text, text
    assert took < 60, f"{took:.1f} s"
    assert leftovers(child.pid, tmp) == []
