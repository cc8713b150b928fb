"""``vramcap.serve_unload``: the endpoint itself, in this process (the unloader's side is in
test_unload_hooks.py)."""

import http.client
import threading
import time

import pytest

import vramcap


def post(url, method="POST"):
    """(status, reason, body) of one request."""
    from urllib.parse import urlsplit

    u = urlsplit(url)
    c = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
    try:
        c.request(method, u.path, body=b"" if method == "POST" else None)
        r = c.getresponse()
        return r.status, r.reason, r.read().decode(), dict(r.getheaders())
    finally:
        c.close()


@pytest.fixture
def calls():
    return []


def test_post_unload_and_reload_call_their_callbacks(calls):
    with vramcap.serve_unload(lambda: calls.append("unload"), lambda: calls.append("reload"), port=0) as s:
        assert s.host == "127.0.0.1" and s.port > 0
        assert s.unload_url == f"http://127.0.0.1:{s.port}/unload"
        assert s.reload_url == f"http://127.0.0.1:{s.port}/reload"
        assert post(s.unload_url)[:3] == (200, "unloaded", "unloaded\n")
        assert calls == ["unload"]
        assert post(s.reload_url)[:3] == (200, "reloaded", "reloaded\n")
        assert calls == ["unload", "reload"]


def test_a_failing_callback_answers_500_with_one_line_and_serving_goes_on(calls):
    def unload():
        calls.append("unload")
        if len(calls) == 1:
            raise KeyError("model\nsecond line")

    with vramcap.serve_unload(unload, port=0) as s:
        code, reason, body, _ = post(s.unload_url)
        assert code == 500
        assert body == "unload failed: KeyError: 'model\\nsecond line'\n"
        assert reason == body.strip(), "the reason is on the status line, which the unloader logs"
        assert post(s.unload_url)[0] == 200
        assert calls == ["unload", "unload"]


def test_other_paths_methods_and_a_missing_reload(calls):
    with vramcap.serve_unload(lambda: calls.append("unload"), port=0) as s:
        code, _, body, _ = post(s.reload_url)
        assert (code, body) == (404, "no reload callback was given to serve_unload\n")
        code, _, body, _ = post(f"http://127.0.0.1:{s.port}/other")
        assert (code, body) == (404, "no hook at /other (POST /unload or /reload)\n")
        code, _, _, headers = post(s.unload_url, method="GET")
        assert code == 405 and headers["Allow"] == "POST"
        assert calls == [], "nothing but a POST on the unload path unloads"


def test_the_port_and_paths_come_from_the_variables_vramcap_run_sets(calls, monkeypatch):
    from conftest import free_port

    port = free_port()
    monkeypatch.setenv("VRAMCAP_UNLOAD_URL", f"http://127.0.0.1:{port}/memory/unload")
    monkeypatch.setenv("VRAMCAP_RELOAD_URL", f"http://127.0.0.1:{port}/memory/reload")
    with vramcap.serve_unload(lambda: calls.append("unload"), lambda: calls.append("reload")) as s:
        assert s.port == port
        assert s.unload_url == f"http://127.0.0.1:{port}/memory/unload"
        assert post(s.unload_url)[0] == 200
        assert post(s.reload_url)[0] == 200
        assert post(f"http://127.0.0.1:{port}/unload")[0] == 404
        assert calls == ["unload", "reload"]


def test_callbacks_run_one_at_a_time():
    running, most = [0], [0]
    lock = threading.Lock()

    def slow():
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.2)
        with lock:
            running[0] -= 1

    with vramcap.serve_unload(slow, slow, port=0) as s:
        answers = []
        threads = [
            threading.Thread(target=lambda u=u: answers.append(post(u)[0]))
            for u in (s.unload_url, s.reload_url, s.unload_url)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert answers == [200, 200, 200]
    assert most[0] == 1


def test_close_stops_listening():
    s = vramcap.serve_unload(lambda: None, port=0)
    assert post(s.unload_url)[0] == 200
    s.close()
    with pytest.raises(ConnectionRefusedError):
        post(s.unload_url)


def test_bad_arguments_name_the_value(monkeypatch):
    monkeypatch.delenv("VRAMCAP_UNLOAD_URL", raising=False)
    with pytest.raises(TypeError, match="unload=None is not callable"):
        vramcap.serve_unload(None, port=0)
    with pytest.raises(TypeError, match="reload=42 is not callable"):
        vramcap.serve_unload(lambda: None, 42, port=0)
    with pytest.raises(ValueError, match="port=70000 is not a port number"):
        vramcap.serve_unload(lambda: None, port=70000)
    with pytest.raises(ValueError, match="port=None and VRAMCAP_UNLOAD_URL is not set"):
        vramcap.serve_unload(lambda: None)
    for bad in ("https://127.0.0.1:8001/unload", "http://127.0.0.1/unload", "http://127.0.0.1:0/x"):
        monkeypatch.setenv("VRAMCAP_UNLOAD_URL", bad)
        with pytest.raises(ValueError, match=f"VRAMCAP_UNLOAD_URL={bad!r} is not an http://HOST:PORT/PATH"):
            vramcap.serve_unload(lambda: None)
    monkeypatch.setenv("VRAMCAP_UNLOAD_URL", "http://127.0.0.1:8001/reload")
    with pytest.raises(ValueError, match="one path, '/reload'"):
        vramcap.serve_unload(lambda: None)


def test_a_port_in_use_is_a_clear_error():
    with vramcap.serve_unload(lambda: None, port=0) as s:
        with pytest.raises(OSError, match=f"cannot listen on 127.0.0.1 port {s.port}"):
            vramcap.serve_unload(lambda: None, port=s.port)
