"""Shared fixtures: a local HTTP server of test images, the embedded broker,
a registry with a tiny random-init head."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

TINY = "open_clip:dmguard-tiny"
# What `dmguard eval` / training.evaluate.evaluate must report (the list).
EVAL_FIELDS = (
    "n_generated",
    "n_real",
    "auc",
    "ap",
    "accuracy",
    "tpr_at_1fpr",
    "tpr_at_5fpr",
    "ece",
)
ONNX_WEIGHTS = Path(__file__).resolve().parents[1] / ".cache" / "models" / "clip-vit-b16-int8.onnx"


class ImageServer:
    """Serves `routes[path] = bytes` on 127.0.0.1. Special paths:
    /redirect?to=URL (302), /slow/<path> (delay before the body), /chunked/<path>
    (no Content-Length), /drip (sends a byte every 0.2 s, forever)."""

    def __init__(self) -> None:
        self.routes: dict[str, bytes] = {}
        self.delay_s = 0.0
        self.hits: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802
                outer.hits.append(self.path)
                path, _, query = self.path.partition("?")
                if path == "/redirect":
                    self.send_response(302)
                    self.send_header("Location", query.removeprefix("to="))
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if path == "/drip":
                    self.send_response(200)
                    self.send_header("Content-Length", "1000000")
                    self.end_headers()
                    for _ in range(200):
                        try:
                            self.wfile.write(b"\xff")
                            self.wfile.flush()
                        except OSError:
                            return
                        time.sleep(0.2)
                    return
                chunked = path.startswith("/chunked/")
                if chunked:
                    path = path.removeprefix("/chunked")
                if path.startswith("/slow/"):
                    path = path.removeprefix("/slow")
                    time.sleep(1.0)
                body = outer.routes.get(path)
                if body is None:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if outer.delay_s:
                    time.sleep(outer.delay_s)
                self.send_response(200)
                self.send_header(
                    "Content-Type", "text/plain"
                )  # deliberately wrong: sniffing decides
                if chunked:
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    for i in range(0, len(body), 65536):
                        part = body[i : i + 65536]
                        self.wfile.write(f"{len(part):x}\r\n".encode() + part + b"\r\n")
                    self.wfile.write(b"0\r\n\r\n")
                else:
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    try:
                        self.wfile.write(body)
                    except OSError:
                        pass

            def log_message(self, *args) -> None:
                pass

        class Server(ThreadingHTTPServer):
            def handle_error(self, request, client_address) -> None:
                pass  # clients hang up on purpose (byte caps, timeouts): not worth a traceback

        self._server = Server(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def image_server() -> Iterator[ImageServer]:
    server = ImageServer()
    yield server
    server.close()


@pytest.fixture
def broker():
    from services.broker import EmbeddedBroker

    with EmbeddedBroker() as b:
        yield b


@pytest.fixture
def tiny_registry(tmp_path):
    from training.detector import register_untrained_head
    from training.registry import Registry

    registry = Registry(tmp_path / "registry")
    register_untrained_head(registry, TINY)
    return registry
