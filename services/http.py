"""The one small HTTP server dmguard runs: /metrics and friends in `serve`, the
images of the demo and of the bench.

A ThreadingHTTPServer bound at construction (port 0: any free port, read back
from `.port`), served from a daemon thread between `start()` and `stop()` (or
a `with` block), without a log line per request. GETs are answered from a
table of routes (exact paths, the query string ignored), then by `fallback`
(a function of the path), then from the files under `files` when given, else
404. A subclass of `RouteHandler` given as `handler` changes how replies are
sent (the bench's image server paces them: benchmarks/bench_uploads.py).

    with HttpServer({"/healthz": lambda: (200, b"ok\\n", "text/plain")}) as server:
        urllib.request.urlopen(f"{server.url}/healthz")
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from functools import partial
from http.server import BaseHTTPRequestHandler, SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

Response = tuple[int, bytes, str]  # status, body, Content-Type
NOT_FOUND: Response = (404, b"not found\n", "text/plain")


class RouteHandler(BaseHTTPRequestHandler):
    """Answers GET from the server's routes; anything else about HTTP is http.server's.
    Every answer goes out through `reply`, the one method a subclass overrides."""

    server: _Server

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        answer = self.server.answer(self.path.split("?", 1)[0])
        if answer is None:
            answer = self.not_routed()
        if answer is not None:
            self.reply(*answer)

    def not_routed(self) -> Response | None:
        return NOT_FOUND

    def reply(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:  # scrapes and image GETs all the time: keep logs quiet
        pass


class _RoutesThenFiles(RouteHandler, SimpleHTTPRequestHandler):
    """Routes first, then the files of the folder given as `directory`."""

    def not_routed(self) -> Response | None:
        SimpleHTTPRequestHandler.do_GET(self)
        return None


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    answer: Callable[[str], Response | None]


class HttpServer:
    """GET routes (and optionally files) on HOST:PORT, served from a daemon thread."""

    def __init__(
        self,
        routes: Mapping[str, Callable[[], Response]] | None = None,
        *,
        fallback: Callable[[str], Response | None] | None = None,
        files: Path | str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        keep_alive: bool = False,
        name: str = "http",
        handler: type[RouteHandler] = RouteHandler,
    ) -> None:
        if files is not None and handler is not RouteHandler:
            raise ValueError("a handler of one's own serves no files")
        self.routes = dict(routes or {})
        self.fallback = fallback
        base = handler if files is None else _RoutesThenFiles
        handler = type("Handler", (base,), {"protocol_version": "HTTP/1.1"}) if keep_alive else base
        if files is not None:
            handler = partial(handler, directory=str(files))
        self._server = _Server((host, port), handler)
        self._server.answer = self._answer
        self.host = host
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name=name, daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def _answer(self, path: str) -> Response | None:
        route = self.routes.get(path)
        if route is not None:
            return route()
        return self.fallback(path) if self.fallback is not None else None

    def start(self) -> HttpServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread.is_alive():
            self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> HttpServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
