"""Set-up for the Python tests: they run the *installed* wheel (the commands in this interpreter's
scripts folder, the package in its site-packages) against the fake CUDA driver, as tests/common/mod.rs
does for the Rust tests.

``.ci/python`` provides, through the environment:

- ``VRAMCAP_TEST_FAKE_CUDA``: the fake driver (``target/debug/libvramcap_sim.so`` of ``cargo build -p fake-cuda``),
  laid out here as ``libcuda.so.1`` and ``libnvidia-ml.so.1``;
- ``VRAMCAP_TEST_PREFIX``: a PREFIX that ``scripts/install.sh`` installed into.

A test that cannot run fails (a missing variable, a missing command); a skip is turned into a failure.
"""

import itertools
import os
import queue
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
MIB = 1 << 20
GIB = 1 << 30
# What a context costs in the fake driver, and the estimate the library is given for it.
CONTEXT = 300 * MIB


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.skipped:
        report.outcome = "failed"
        report.longrepr = f"skipped, which fails here (a test that cannot run must fail): {report.longrepr}"


def required_env(name):
    value = os.environ.get(name)
    if not value:
        pytest.fail(f"{name} is not set: run the Python tests through .ci/python", pytrace=False)
    return value


@pytest.fixture(scope="session")
def fake_dir(tmp_path_factory):
    """A folder where libcuda.so.1 and libnvidia-ml.so.1 are the fake driver."""
    fake = Path(required_env("VRAMCAP_TEST_FAKE_CUDA"))
    assert fake.is_file(), f"VRAMCAP_TEST_FAKE_CUDA={str(fake)!r} is not a file"
    d = tmp_path_factory.mktemp("fake-driver")
    for name in ("libcuda.so.1", "libcuda.so", "libnvidia-ml.so.1"):
        (d / name).symlink_to(fake)
    return d


@pytest.fixture(scope="session")
def prefix():
    """The PREFIX scripts/install.sh installed into."""
    p = Path(required_env("VRAMCAP_TEST_PREFIX"))
    assert p.is_dir(), f"VRAMCAP_TEST_PREFIX={str(p)!r} is not a folder"
    return p


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Proc:
    """A child whose output lines (stdout and stderr together) arrive on a queue."""

    def __init__(self, argv, env):
        self.argv = argv
        self.child = subprocess.Popen(
            argv,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines = []
        self._queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.child.stdout:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    @property
    def pid(self):
        return self.child.pid

    def wait_for(self, prefix, timeout=20.0, anywhere=False):
        """The first line (from now on) that starts with ``prefix`` (holds it, with ``anywhere``); fails
        the test after ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            try:
                line = self._queue.get(timeout=max(left, 0.01))
            except queue.Empty:
                line = ""
                if left <= 0:
                    pytest.fail(
                        f"no line {prefix!r} within {timeout} s from {self.argv}:\n" + "\n".join(self.lines)
                    )
                continue
            if line is None:
                pytest.fail(
                    f"{self.argv} ended (exit {self.child.wait()}) before printing {prefix!r}:\n"
                    + "\n".join(self.lines)
                )
            self.lines.append(line)
            if line.startswith(prefix) or (anywhere and prefix in line):
                return line

    def stop(self):
        if self.child.poll() is None:
            try:
                self.child.stdin.write("quit\n")
                self.child.stdin.flush()
                self.child.stdin.close()
                self.child.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                self.child.kill()
                self.child.wait()
        return self.child.returncode


_serial = itertools.count()


class Card:
    """One fake GPU and one segment of this test's own; starts workers and runs vramcap commands."""

    def __init__(self, fake_dir, tmp_path, mem="4G", context=CONTEXT):
        self.shm = Path(f"/dev/shm/vramcap-pytest-{os.getpid()}-{next(_serial)}")
        self.shared = tmp_path / "fake-shared"
        self.shared.mkdir()
        self.env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("VRAMCAP_LIMIT", "VRAMCAP_LIB", "LD_PRELOAD", "VRAMCAP_REAL_LIBCUDA",
                         "VRAMCAP_UNLOAD_URL", "VRAMCAP_RELOAD_URL")
        }
        self.env.update(
            LD_LIBRARY_PATH=str(fake_dir),
            VRAMCAP_SHM=str(self.shm),
            VRAMCAP_CONTEXT_BYTES=str(context),
            FAKECUDA_CONTEXT_BYTES=str(context),
            FAKECUDA_MEM=mem,
            FAKECUDA_SHARED=str(self.shared),
            VRAMCAP_LOG="info",
            PYTHONPATH=str(HERE / "stub"),
            TORCH_STUB_PRINT="1",
            PYTHONUNBUFFERED="1",
        )
        self.procs = []

    def worker(self, run_args, worker_args, vramcap_run=None):
        """``vramcap-run RUN_ARGS -- python worker.py WORKER_ARGS``, once it printed READY."""
        import vramcap

        exe = vramcap_run or vramcap.executable("vramcap-run")
        argv = [exe, *run_args, "--", sys.executable, str(HERE / "worker.py"), *worker_args]
        p = Proc(argv, self.env)
        self.procs.append(p)
        p.wait_for("READY")
        return p

    def daemon(self, args, ready):
        """``vramcap ARGS`` left running, once it printed a line that holds ``ready``."""
        import vramcap

        p = Proc([vramcap.executable(), *args], self.env)
        self.procs.append(p)
        p.wait_for(ready, anywhere=True)
        return p

    def vramcap(self, *args, timeout=30):
        import vramcap

        return subprocess.run(
            [vramcap.executable(), *args],
            env=self.env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def status(self, **kw):
        import vramcap

        # The figures are published by a background thread within 10 ms of a change.
        time.sleep(0.1)
        return vramcap.status(shm=str(self.shm), **kw)

    def close(self):
        for p in self.procs:
            if p.child.poll() is None:
                p.child.terminate()
                try:
                    p.child.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    p.child.kill()
                    p.child.wait()
        for f in self.shm.parent.glob(self.shm.name + "*"):
            f.unlink()


@pytest.fixture
def card(fake_dir, tmp_path):
    c = Card(fake_dir, tmp_path)
    yield c
    c.close()


@pytest.fixture
def small_card(fake_dir, tmp_path):
    """A 1 GiB device whose contexts cost 16 MiB, shared by the workers on it (FAKECUDA_SHARED)."""
    c = Card(fake_dir, tmp_path, mem="1G", context=16 * MIB)
    yield c
    c.close()


def sizes(status):
    """``size(entry, "charged")``: a size field of an entry of ``status`` in bytes. ``status --json`` spells
    them ``charged``, ``cap``… before ``schema_version`` 1 and ``charged_bytes``, ``cap_bytes``… from it on."""
    suffix = "_bytes" if status.get("schema_version", 0) >= 1 else ""

    def size(entry, name):
        return entry[name + suffix]

    return size


def process(status, pid):
    """The one process of ``status`` with this PID."""
    found = [p for p in status["processes"] if p["pid"] == pid]
    assert len(found) == 1, f"pid {pid} in {status['processes']}"
    return found[0]
