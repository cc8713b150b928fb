"""``serve_unload``: the HTTP endpoint through which vramcap's unloader asks a worker to give its memory
back, for any framework.

The contract (``vramcap-run --unload-url URL``): when the unloader needs this worker's memory it sends
``POST URL`` with an empty body and takes any 2xx answer as "done"; it waits for that answer, and then for
the worker's usage to fall, within its ``--hook-timeout`` (default 30s). So ``unload()`` runs to its end
(memory handed back to the driver) before the answer goes out. ``POST /reload`` (or the path of
``VRAMCAP_RELOAD_URL``) calls ``reload()``, for whoever brings the worker back.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Optional, Tuple
from urllib.parse import urlsplit

log = logging.getLogger("vramcap")

UNLOAD_URL_VAR = "VRAMCAP_UNLOAD_URL"
RELOAD_URL_VAR = "VRAMCAP_RELOAD_URL"

# The unloader's request has no body; anything larger than this is not one of its requests.
_MAX_BODY = 64 << 10


def _reason(error: BaseException) -> str:
    """One line: the exception's type and message, control characters replaced, at most 300 characters."""
    text = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
    text = "".join(c if c.isprintable() else " " for c in text)
    return text if len(text) <= 300 else text[:297] + "..."


def _parse_url(var: str, url: str) -> Tuple[str, int, str]:
    """(host, port, path) of ``http://host:port/path``, or ValueError naming the variable and its value."""
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = -1
    if parts.scheme != "http" or not parts.hostname or port is None or not 0 < port < 65536:
        raise ValueError(
            f"{var}={url!r} is not an http://HOST:PORT/PATH URL with a port from 1 to 65535"
        )
    return parts.hostname, port, parts.path or "/"


class UnloadServer:
    """The running endpoint :func:`serve_unload` returns.

    ``host``, ``port``, ``unload_url`` and ``reload_url`` say where it listens (pass ``unload_url`` to
    ``vramcap-run --unload-url``); ``close()`` (or leaving a ``with`` block) stops it. It serves on a
    daemon thread, so it never keeps the interpreter from exiting.
    """

    def __init__(self, httpd: ThreadingHTTPServer, unload_path: str, reload_path: str):
        self._httpd = httpd
        self.host, self.port = httpd.server_address[:2]
        self.unload_path = unload_path
        self.reload_path = reload_path
        self._thread = threading.Thread(
            target=httpd.serve_forever,
            kwargs={"poll_interval": 0.2},
            name=f"vramcap-unload-{self.port}",
            daemon=True,
        )
        self._thread.start()

    def _url(self, path: str) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}{path}"

    @property
    def unload_url(self) -> str:
        return self._url(self.unload_path)

    @property
    def reload_url(self) -> str:
        return self._url(self.reload_path)

    def close(self) -> None:
        """Stops serving and closes the socket (a callback under way runs to its end)."""
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()

    def __enter__(self) -> "UnloadServer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<UnloadServer {self.unload_url} {self.reload_url}>"


def _handler(routes, lock: threading.Lock):
    class Handler(BaseHTTPRequestHandler):
        server_version = "vramcap-serve-unload"
        timeout = 30  # a client that opens a connection and says nothing is dropped

        def _answer(self, code: int, text: str, extra: Tuple[Tuple[str, str], ...] = ()) -> None:
            body = (text + "\n").encode("utf-8", "replace")
            # The line is also the status line's reason, which is what the unloader logs of an answer.
            self.send_response(code, text.encode("ascii", "replace").decode("ascii"))
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Connection", "close")
            for name, value in extra:
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self) -> None:
            try:
                length = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                length = -1
            if not 0 <= length <= _MAX_BODY:
                self._answer(400, f"bad Content-Length {self.headers.get('Content-Length')!r}")
                return
            if length:
                self.rfile.read(length)
            path = urlsplit(self.path).path
            if path not in routes:
                self._answer(404, f"no hook at {path} (POST {' or '.join(routes)})")
                return
            what, callback = routes[path]
            if callback is None:
                self._answer(404, f"no {what} callback was given to serve_unload")
                return
            # One callback at a time: an unload and a reload never overlap.
            with lock:
                log.info("vramcap: %s asked (POST %s)", what, path)
                try:
                    callback()
                except BaseException as error:  # noqa: B902 - every failure is the caller's answer
                    log.exception("vramcap: %s failed", what)
                    self._answer(500, f"{what} failed: {_reason(error)}")
                    if not isinstance(error, Exception):
                        raise
                    return
            self._answer(200, f"{what}ed")

        def _not_allowed(self) -> None:
            self._answer(405, f"{self.command} is not served: POST only", (("Allow", "POST"),))

        do_GET = do_PUT = do_DELETE = do_PATCH = _not_allowed

        def log_message(self, format: str, *args) -> None:  # noqa: A002 - the base class's name
            log.debug("vramcap: %s %s", self.address_string(), format % args)

    return Handler


def serve_unload(
    unload: Callable[[], object],
    reload: Optional[Callable[[], object]] = None,
    port: Optional[int] = None,
    host: Optional[str] = None,
) -> UnloadServer:
    """Starts the unload endpoint on a thread of its own and returns it (an :class:`UnloadServer`).

    ``POST`` on the unload path calls ``unload()``; on the reload path, ``reload()``. A callback that
    returns answers ``200``; one that raises answers ``500`` with one line (``unload failed: KeyError:
    'model'``), and the traceback goes to the ``vramcap`` logger. Callbacks run one at a time. Other paths
    answer 404, other methods 405.

    Where it listens:

    - ``port=None`` (the default): where ``VRAMCAP_UNLOAD_URL`` says, the variable ``vramcap-run
      --unload-url URL`` gives the worker, so the port is written once, on the command line; the unload
      path is that URL's path, the reload path ``VRAMCAP_RELOAD_URL``'s if it is set, else ``/reload``;
    - ``port=N`` (``0``: any free port): on ``host`` (default ``127.0.0.1``), paths ``/unload`` and
      ``/reload``; pass ``server.unload_url`` to ``vramcap-run --unload-url``.
    """
    if not callable(unload):
        raise TypeError(f"serve_unload: unload={unload!r} is not callable")
    if reload is not None and not callable(reload):
        raise TypeError(f"serve_unload: reload={reload!r} is not callable (or None)")
    unload_path, reload_path = "/unload", "/reload"
    if port is None:
        url = os.environ.get(UNLOAD_URL_VAR)
        if not url:
            raise ValueError(
                f"serve_unload: port=None and {UNLOAD_URL_VAR} is not set: start the worker with "
                "vramcap-run --unload-url http://127.0.0.1:PORT/unload, or pass port="
            )
        url_host, port, unload_path = _parse_url(UNLOAD_URL_VAR, url)
        host = host or url_host
        reload_url = os.environ.get(RELOAD_URL_VAR)
        if reload_url:
            reload_path = _parse_url(RELOAD_URL_VAR, reload_url)[2]
    elif isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ValueError(f"serve_unload: port={port!r} is not a port number from 0 to 65535")
    host = host or "127.0.0.1"
    if unload_path == reload_path:
        raise ValueError(
            f"serve_unload: the unload and the reload URL have one path, {unload_path!r}"
        )
    routes = {unload_path: ("unload", unload), reload_path: ("reload", reload)}
    try:
        family, _, _, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICSERV
        )[0]
    except socket.gaierror as e:
        raise ValueError(f"serve_unload: host={host!r} does not resolve: {e}") from e

    class Server(ThreadingHTTPServer):
        address_family = family
        daemon_threads = True
        allow_reuse_address = True

    try:
        httpd = Server(address[:2], _handler(routes, threading.Lock()))
    except OSError as e:
        raise OSError(e.errno, f"serve_unload: cannot listen on {host} port {port}: {e.strerror}") from e
    server = UnloadServer(httpd, unload_path, reload_path)
    log.info("vramcap: unload endpoint at %s", server.unload_url)
    return server
