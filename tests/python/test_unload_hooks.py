"""The hook contract end to end: Python workers under the installed ``vramcap-run --unload-url`` serve
``vramcap.serve_unload`` with ``vramcap.torch_unloader``, and the installed ``vramcap`` asks them."""

import http.client

from conftest import CONTEXT, MIB, free_port, process, sizes


def charged(card, pid):
    """What the worker's one device is charged, from vramcap.status()."""
    s = card.status()
    [d] = process(s, pid)["devices"]
    return sizes(s)(d, "charged")


def serving_worker(card, name, hold, extra_run=(), extra_worker=()):
    port = free_port()
    w = card.worker(
        ["--limit", "1GiB", "--name", name, "--unload-url", f"http://127.0.0.1:{port}/unload", *extra_run],
        ["--hold", str(hold), "--serve", *extra_worker],
    )
    return w, port


def test_vramcap_unload_reaches_a_python_worker_and_its_memory_falls(card):
    w, port = serving_worker(card, "chat", 256)
    assert f"SERVING http://127.0.0.1:{port}/unload http://127.0.0.1:{port}/reload" in w.lines
    assert charged(card, w.pid) == 256 * MIB + CONTEXT
    out = card.vramcap("unload", "chat", "--hook-timeout", "10s")
    assert out.returncode == 0, out.stderr
    assert "freed 256.00 MiB" in out.stdout, out.stdout
    # The unloader answered once the memory fell: the model was dropped, then the cache emptied.
    assert w.wait_for("FREED") == "FREED mib=256"
    assert w.wait_for("TORCH empty_cache")
    assert charged(card, w.pid) == CONTEXT
    # And back, through the reload endpoint.
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    c.request("POST", "/reload", body=b"")
    assert c.getresponse().status == 200
    c.close()
    assert w.wait_for("LOADED") == "LOADED mib=256"
    assert charged(card, w.pid) == 256 * MIB + CONTEXT
    assert w.stop() == 0


def test_a_failing_unload_is_reported_with_its_reason(card):
    w, port = serving_worker(card, "busy", 128, extra_worker=["--fail-unload", "model is busy"])
    out = card.vramcap("unload", "busy", "--hook-timeout", "5s")
    assert out.returncode != 0
    assert "500 unload failed: RuntimeError: model is busy" in out.stderr, out.stderr
    assert charged(card, w.pid) == 128 * MIB + CONTEXT, "nothing was freed"


def test_the_unloader_makes_room_for_a_higher_priority_worker(small_card):
    card = small_card
    low, _ = serving_worker(card, "low", 600, extra_run=["--priority", "1"])
    card.daemon(["unloader", "--poll", "10ms", "--hook-timeout", "10s"], "watching")
    # 600 MiB more does not fit on the 1 GiB device beside low's 600: the allocation waits for the
    # unloader, which asks low (lower priority) through its endpoint, then retries.
    high = card.worker(
        ["--limit", "1GiB", "--name", "high", "--priority", "5", "--wait", "10s"],
        ["--hold", "0", "--try", "600"],
    )
    assert "TRY code=0" in high.lines, high.lines
    assert low.wait_for("FREED") == "FREED mib=600"
    assert charged(card, low.pid) == 16 * MIB
