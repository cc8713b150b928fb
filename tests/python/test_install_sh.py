"""``scripts/install.sh PREFIX``: the layout it leaves, and a capped worker through PREFIX/bin alone."""

import os
import subprocess

from conftest import CONTEXT, GIB, MIB, process, sizes


def test_install_sh_lays_out_bin_lib_and_share(prefix):
    for name in ("bin/vramcap", "bin/vramcap-run"):
        assert os.access(prefix / name, os.X_OK), name
    assert (prefix / "lib/libvramcap.so").is_file()
    assert "\\-\\-limit" in (prefix / "share/man/man1/vramcap-run.1").read_text()
    assert "check-limit" in (prefix / "share/bash-completion/completions/vramcap").read_text()
    assert (prefix / "share/zsh/site-functions/_vramcap").is_file()
    assert (prefix / "share/fish/vendor_completions.d/vramcap-run.fish").is_file()
    env = {k: v for k, v in os.environ.items() if k not in ("VRAMCAP_LIB", "LD_PRELOAD")}
    out = subprocess.run(
        [prefix / "bin/vramcap-run", "--", "sh", "-c", 'echo "$LD_PRELOAD"'],
        env=env, capture_output=True, text=True, check=True,
    )
    assert out.stdout.strip() == str(prefix / "lib/libvramcap.so")


def test_a_worker_capped_through_the_prefix_shows_in_its_status(card, prefix):
    w = card.worker(["--limit", "1GiB", "--name", "from-prefix"], ["--hold", "192"],
                    vramcap_run=str(prefix / "bin/vramcap-run"))
    s = card.status(executable=str(prefix / "bin/vramcap"))
    [d] = process(s, w.pid)["devices"]
    size = sizes(s)
    assert (size(d, "cap"), size(d, "charged")) == (GIB, 192 * MIB + CONTEXT)
