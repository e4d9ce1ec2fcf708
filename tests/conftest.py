"""Shared fixtures: a local HTTP server of test images, the embedded broker,
a registry with a tiny random-init head."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qsl, unquote_to_bytes

import pytest

TINY = "open_clip:dmguard-tiny"
# What `dmguard eval` / training.evaluation.evaluate.evaluate must report (the list).
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


def require_onnx_weights() -> Path:
    """ONNX_WEIGHTS, for a test that needs the offline CLIP weights.

    `make test` fetches them first (`make models`), so under CI (the CI environment
    variable set, as CI services do) a missing file fails the test rather than
    letting it skip quietly; elsewhere the test is skipped, saying how to fetch them."""
    if ONNX_WEIGHTS.is_file():
        return ONNX_WEIGHTS
    message = f"offline CLIP weights missing at {ONNX_WEIGHTS}: run `make models`"
    _skip_or_fail(message)


def require_kafka_jars() -> None:
    """For a test of the Apache Kafka engine: `make test` fetches its jars first (`make
    kafka`), so as for the weights, missing jars fail under CI and skip elsewhere."""
    from services.broker import kafka_libs

    if not any(kafka_libs().glob("kafka_2.13-*.jar")):
        _skip_or_fail(f"Kafka's jars missing at {kafka_libs()}: run `make kafka`")


def _skip_or_fail(message: str) -> None:
    if os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no"):
        pytest.fail(f"{message} (CI is set: what `make test` fetches is missing)")
    pytest.skip(message)


@pytest.fixture
def onnx_weights() -> Path:
    """The offline CLIP weights (see require_onnx_weights: fails under CI when missing)."""
    return require_onnx_weights()


class ImageServer:
    """Serves `routes[path] = bytes` on 127.0.0.1. Special paths:
    /redirect?to=URL (302), /slow/<path> (delay before the body), /chunked/<path>
    (no Content-Length), /drip (sends a byte every 0.2 s, forever).

    Hostile ones, for the fetcher's tests (`drip_s` is their pace):
    /slow-status (drips the status line, then the headers, a byte at a time),
    /slow-headers (a prompt status line, then endless headers, a byte at a time),
    /short-body (Content-Length 100, 10 bytes, close), /cut-chunked (a chunk cut
    off mid-way, close), /garbage-status (not HTTP), /hangup (closes without
    answering), /status?code=N (an empty response with that status),
    /redirect-chain?n=K (K redirects, then `routes["/chain-end"]`, default
    b"chain-end"), /redirect-raw?to=PCT (302 whose Location is the
    percent-decoded bytes of PCT, verbatim: UTF-8, control characters...),
    /redirect-nolocation (302 without Location) and /raw/<name> (writes
    `raw[name]` verbatim, then closes)."""

    def __init__(self) -> None:
        self.routes: dict[str, bytes] = {}
        self.delay_s = 0.0
        self.hits: list[str] = []
        self.raw: dict[str, bytes] = {}
        self.drip_s = 0.25
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802
                outer.hits.append(self.path)
                path, _, query = self.path.partition("?")
                if self._hostile(path, query):
                    return
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

            def _raw(self, data: bytes) -> None:
                self.close_connection = True
                try:
                    self.wfile.write(data)
                    self.wfile.flush()
                except OSError:
                    pass

            def _drip(self, data: bytes) -> bool:
                """Sends `data` a byte at a time; False once the client is gone."""
                self.close_connection = True
                for i in range(len(data)):
                    try:
                        self.wfile.write(data[i : i + 1])
                        self.wfile.flush()
                    except OSError:
                        return False
                    time.sleep(outer.drip_s)
                return True

            def _hostile(self, path: str, query: str) -> bool:
                args = dict(parse_qsl(query, keep_blank_values=True))
                if path == "/slow-status":
                    self._drip(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc")
                elif path == "/slow-headers":
                    self._raw(b"HTTP/1.1 200 OK\r\n")
                    for i in range(100):
                        if not self._drip(f"X-Slow-{i}: 1\r\n".encode()):
                            break
                elif path == "/short-body":
                    self._raw(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"x" * 10)
                elif path == "/cut-chunked":
                    self._raw(
                        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                        b"a\r\n0123456789\r\n64\r\n" + b"y" * 10
                    )
                elif path == "/garbage-status":
                    self._raw(b"SPAM AND EGGS\r\n\r\nhello")
                elif path == "/hangup":
                    self.close_connection = True
                elif path == "/status":
                    code = int(args.get("code", "500"))
                    self._raw(f"HTTP/1.1 {code} Whatever\r\nContent-Length: 0\r\n\r\n".encode())
                elif path == "/redirect-chain":
                    n = int(args.get("n", "0"))
                    if n > 0:
                        location = f"/redirect-chain?n={n - 1}".encode()
                        self._raw(
                            b"HTTP/1.1 302 Found\r\nLocation: "
                            + location
                            + b"\r\nContent-Length: 0\r\n\r\n"
                        )
                    else:
                        body = outer.routes.get("/chain-end", b"chain-end")
                        head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n\r\n"
                        self._raw(head.encode() + body)
                elif path == "/redirect-raw":
                    location = unquote_to_bytes(query.removeprefix("to="))
                    self._raw(
                        b"HTTP/1.1 302 Found\r\nLocation: "
                        + location
                        + b"\r\nContent-Length: 0\r\n\r\n"
                    )
                elif path == "/redirect-nolocation":
                    self._raw(b"HTTP/1.1 302 Found\r\nContent-Length: 0\r\n\r\n")
                elif path.startswith("/raw/") and path.removeprefix("/raw/") in outer.raw:
                    self._raw(outer.raw[path.removeprefix("/raw/")])
                else:
                    return False
                return True

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
    from training.model.detector import register_untrained_head
    from training.model.registry import Registry

    registry = Registry(tmp_path / "registry")
    register_untrained_head(registry, TINY)
    return registry
