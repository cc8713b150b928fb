"""``vramcap.status()`` over capped Python workers started by the installed ``vramcap-run`` on the fake
driver."""

import json

import pytest

import vramcap
from conftest import CONTEXT, GIB, MIB, process, sizes


def test_status_lists_a_capped_python_worker_with_its_figures(card):
    w = card.worker(["--limit", "1GiB", "--name", "py-worker", "--priority", "3"], ["--hold", "256"])
    s = card.status()
    size = sizes(s)
    assert s["segment"] == str(card.shm)
    p = process(s, w.pid)
    assert (p["name"], p["priority"], p["protected"]) == ("py-worker", 3, False)
    [d] = p["devices"]
    assert size(d, "cap") == GIB
    assert size(d, "charged") == 256 * MIB + CONTEXT
    assert size(d, "context") == CONTEXT
    assert size(d, "peak") == 256 * MIB + CONTEXT
    assert (d["allocations"], d["refusals"]) == (1, 0)
    [t] = s["totals"]
    assert (t["uuid"], size(t, "charged"), size(t, "caps"), t["processes"]) == (
        d["uuid"], size(d, "charged"), GIB, 1)


def test_status_is_the_data_of_vramcap_status_json(card):
    w = card.worker(["--limit", "2GiB", "--name", "twin", "--protect"], ["--hold", "128"])
    ours = card.status(nvml=False)
    theirs = json.loads(card.vramcap("status", "--json", "--no-nvml").stdout)
    for s in (ours, theirs):
        for p in s["processes"]:
            p.pop("updated_unix_ms")
    assert ours == theirs
    assert process(ours, w.pid)["protected"] is True


def test_a_refusal_past_the_cap_shows_in_status(card):
    w = card.worker(["--limit", "1GiB", "--name", "greedy"], ["--hold", "256", "--try", "1024"])
    assert "TRY code=2" in w.lines, w.lines  # CUDA_ERROR_OUT_OF_MEMORY
    s = card.status()
    [d] = process(s, w.pid)["devices"]
    assert sizes(s)(d, "charged") == 256 * MIB + CONTEXT, "the refused allocation is not charged"
    assert d["refusals"] == 1
    assert d["last_refused_bytes"] == 1024 * MIB
    assert d["last_refused_unix_ms"] > 0


def test_two_workers_two_rows_and_their_sum(card):
    a = card.worker(["--limit", "1GiB", "--name", "a"], ["--hold", "64"])
    b = card.worker(["--limit", "1500MiB", "--name", "b"], ["--hold", "128"])
    s = card.status()
    assert {p["name"] for p in s["processes"]} == {"a", "b"}
    size = sizes(s)
    [t] = s["totals"]
    assert t["processes"] == 2
    assert size(t, "charged") == 64 * MIB + 128 * MIB + 2 * CONTEXT
    assert size(t, "caps") == GIB + 1500 * MIB
    a.stop()
    b.stop()
    assert card.status()["processes"] == [], "a worker's row goes when it exits"


def test_no_segment_is_a_no_segment_error_or_the_empty_view(tmp_path):
    # vramcap status exits 1 without a segment (NoSegmentError), or, from schema_version 1 on, shows the
    # empty view and exits 0.
    missing = f"/dev/shm/vramcap-pytest-missing-{tmp_path.name}"
    try:
        s = vramcap.status(shm=missing)
    except vramcap.NoSegmentError as e:
        assert e.returncode == 1
        assert f"no segment at {missing}" in str(e)
        assert isinstance(e, vramcap.VramcapError)
    else:
        assert s["schema_version"] >= 1
        assert (s["segment"], s["segment_exists"], s["processes"]) == (missing, False, [])


def test_a_missing_command_and_bad_arguments_say_which(tmp_path):
    with pytest.raises(vramcap.VramcapError, match="cannot run /no/such/vramcap"):
        vramcap.status(executable="/no/such/vramcap")
    with pytest.raises(ValueError, match="timeout=0"):
        vramcap.status(timeout=0)
    with pytest.raises(TypeError, match="nvml='no'"):
        vramcap.status(nvml="no")
    with pytest.raises(ValueError, match="executable: name='nvidia-smi'"):
        vramcap.executable("nvidia-smi")


def test_a_failing_vramcap_is_a_vramcap_error_with_its_message(tmp_path):
    # A segment path that is a directory: vramcap refuses it with exit 2 and one line.
    with pytest.raises(vramcap.VramcapError) as e:
        vramcap.status(shm=str(tmp_path))
    assert e.value.returncode == 2
    assert e.value.stderr and str(e.value) == e.value.stderr
    assert not isinstance(e.value, vramcap.NoSegmentError)
