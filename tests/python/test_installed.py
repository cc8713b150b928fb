"""The wheel's layout once pip installed it: the commands on PATH, libvramcap.so where vramcap-run finds
it, the package, the man pages and the completions."""

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import vramcap

SCRIPTS = Path(sysconfig.get_path("scripts"))
DATA = Path(sysconfig.get_path("data"))


def test_the_package_is_the_installed_one_not_the_source_tree():
    site = {Path(sysconfig.get_path("purelib")).resolve(), Path(sysconfig.get_path("platlib")).resolve()}
    assert Path(vramcap.__file__).resolve().parent.parent in site, vramcap.__file__
    assert sys.prefix != sys.base_prefix, "the tests run in a virtual environment of their own"


def test_commands_and_library_are_where_pip_put_them():
    assert vramcap.executable() == str(SCRIPTS / "vramcap")
    assert vramcap.executable("vramcap-run") == str(SCRIPTS / "vramcap-run")
    for name in ("vramcap", "vramcap-run"):
        assert os.access(SCRIPTS / name, os.X_OK), name
    assert vramcap.library_path() == str(DATA / "lib" / "libvramcap.so")
    # ../lib from the commands: where vramcap-run looks.
    assert (SCRIPTS.parent / "lib" / "libvramcap.so").resolve() == Path(vramcap.library_path()).resolve()


def test_vramcap_run_preloads_the_installed_library_without_vramcap_lib():
    env = {k: v for k, v in os.environ.items() if k not in ("VRAMCAP_LIB", "LD_PRELOAD", "VRAMCAP_LIMIT")}
    out = subprocess.run(
        [vramcap.executable("vramcap-run"), "--limit", "1GiB", "--", "sh", "-c", 'echo "$LD_PRELOAD|$VRAMCAP_LIMIT"'],
        env=env, capture_output=True, text=True, check=True,
    )
    assert out.stdout.strip() == f"{vramcap.library_path()}|1GiB", out.stderr


def test_the_commands_and_the_package_have_one_version():
    assert vramcap.__version__[0].isdigit(), vramcap.__version__
    for name in ("vramcap", "vramcap-run"):
        out = subprocess.run([vramcap.executable(name), "--version"], capture_output=True, text=True, check=True)
        assert out.stdout.strip() == f"{name} {vramcap.__version__}"


def test_man_pages_and_completions_are_installed():
    man = DATA / "share" / "man" / "man1"
    page = (man / "vramcap-run.1").read_text()
    assert page.startswith(".ie"), page[:80]
    assert "\\-\\-limit" in page and vramcap.__version__ in page
    assert "\\-\\-json" in (man / "vramcap-status.1").read_text()
    assert "check-limit" in (DATA / "share/bash-completion/completions/vramcap").read_text()
    assert "#compdef vramcap-run" in (DATA / "share/zsh/site-functions/_vramcap-run").read_text()
    assert "complete -c vramcap" in (DATA / "share/fish/vendor_completions.d/vramcap.fish").read_text()


def test_import_vramcap_takes_only_the_standard_library(tmp_path):
    # A stand-in torch on the path: importing vramcap must not import it (only the unloader does).
    code = (
        "import sys, json; before = set(sys.modules); import vramcap; "
        "print(json.dumps(sorted(set(sys.modules) - before)))"
    )
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parent / "stub"))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    new = json.loads(out.stdout)
    assert "vramcap" in new
    outside = sorted(
        {m.split(".")[0] for m in new} - set(sys.stdlib_module_names) - {"vramcap"}
    ) if hasattr(sys, "stdlib_module_names") else []
    assert outside == [], f"import vramcap imported {outside}"
    assert "torch" not in new
