"""Drives the real system from outside: `dmguard serve` as a subprocess, the
embedded broker, Kafka clients, and HTTP scrapes of /metrics and /status."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from services.broker import free_port
from services.config import KafkaSettings, Topics
from services.kafka_io import produce as send_messages
from services.outputs import OutputReader, Outputs, duplicates, output_key, wait_accounted  # noqa: F401
from services.poll import WaitTimeout, wait_until
from services.records import message_key
from tests.images import encode, jpeg, photo

TOPICS = Topics()
MAX_BYTES = 2_000_000  # --max-bytes of the services that get the too-large images


class Service:
    """`dmguard serve` in a subprocess, logging to a file."""

    def __init__(
        self,
        bootstrap: str,
        registry: Path,
        log: Path,
        *extra: str,
        workers: int | str = 2,
        env: dict[str, str] | None = None,
    ) -> None:
        """`env`: more environment variables (e.g. RAY_ADDRESS)."""
        self.port = free_port()
        env = {
            **os.environ,
            "DMGUARD_BOOTSTRAP": bootstrap,
            "DMGUARD_REGISTRY": str(registry),
            "DMGUARD_FEATURE_LOG": str(log.parent / "feature-log"),
            **(env or {}),
        }
        cmd = [
            sys.executable,
            "-m",
            "dmguard",
            "serve",
            "--workers",
            str(workers),
            "--metrics-host",
            "127.0.0.1",
            "--metrics-port",
            str(self.port),
            "--allow-network",
            "127.0.0.1/32",
            *extra,
        ]
        self.log = log
        self._log_file = log.open("ab")
        self.proc = subprocess.Popen(cmd, stdout=self._log_file, stderr=subprocess.STDOUT, env=env)

    def get(self, path: str, timeout: float = 3.0) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.port}{path}", timeout=timeout
            ) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def wait_ready(self, timeout: float = 120.0) -> None:
        def ready() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"serve exited with {self.proc.returncode}:\n{self.tail()}")
            try:
                return self.get("/readyz")[0] == 200
            except OSError:
                return False

        try:
            wait_until(ready, timeout, what="serve to be ready")
        except WaitTimeout:
            raise AssertionError(f"serve not ready in {timeout}s:\n{self.tail()}") from None

    def metrics(self) -> dict[tuple[str, tuple], float]:
        """{(sample name, sorted label items): value} from /metrics."""
        _, body = self.get("/metrics")
        out = {}
        for family in text_string_to_metric_families(body.decode()):
            for s in family.samples:
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
        return out

    def worker_pids(self) -> list[int]:
        return [w["pid"] for w in json.loads(self.get("/status")[1])["workers"]]

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 90.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        finally:
            self._log_file.close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._log_file.close()

    def tail(self, n: int = 60) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])


def produce(bootstrap: str, values: list[bytes], topic: str = TOPICS.images) -> None:
    """Send `values`, each keyed by its id where it has one, as `dmguard produce` does."""
    kafka = KafkaSettings(bootstrap_servers=bootstrap)
    send_messages(kafka, topic, [(message_key(v), v) for v in values])


class Trickle:
    """Sends `values` in the background, `per_tick` every `tick_s`, until `stop()`: a stream
    that lasts as long as the test needs it to, however slow the machine. `sent` is how many
    went out (the first `sent` values), `stop()` waits until the broker has them."""

    def __init__(
        self, bootstrap: str, values: list[bytes], per_tick: int = 5, tick_s: float = 0.25
    ):
        self.sent = 0
        self._values, self._per_tick, self._tick_s = values, per_tick, tick_s
        self._stopping = threading.Event()
        kafka = KafkaSettings(bootstrap_servers=bootstrap)
        self._thread = threading.Thread(
            target=send_messages, args=(kafka, TOPICS.images, self._paced()), daemon=True
        )
        self._thread.start()

    def _paced(self):
        for i, value in enumerate(self._values):
            if self._stopping.is_set():
                return
            if i and i % self._per_tick == 0:
                time.sleep(self._tick_s)
            self.sent = i + 1
            yield message_key(value), value

    def stop(self) -> int:
        self._stopping.set()
        self._thread.join(timeout=60)
        assert not self._thread.is_alive(), "the trickle's producer did not flush"
        return self.sent


def only(out: Outputs, keys: set[str]) -> Outputs:
    """The outputs whose key (`output_key`) is in `keys`: one test's records on a shared topic."""
    return Outputs(
        [v for v in out.verdicts if output_key(v) in keys],
        [d for d in out.dead_letters if output_key(d) in keys],
    )


def read_verdicts(
    reader: OutputReader, n: int, timeout: float, keys: set[str] | None = None
) -> Outputs:
    """Read until at least `n` verdicts (of `keys`, when given) are in; WaitTimeout after `timeout`."""

    def count(out: Outputs) -> int:
        return len(only(out, keys).verdicts if keys is not None else out.verdicts)

    # A short idle window: read() returns at the first quiet 50 ms, so the count is checked often.
    return wait_until(
        lambda: reader.read(idle_s=0.05),
        timeout,
        interval_s=0,
        what=f"{n} verdicts",
        done=lambda out: count(out) >= n,
    )


def counter(metrics, name, **labels) -> float:
    """One sample of `Service.metrics()`, 0 when absent."""
    return metrics.get((name, tuple(sorted(labels.items()))), 0.0)


def good_images() -> dict[str, bytes]:
    base = photo(400, 300, seed=1)
    rgba = base.convert("RGBA")
    return {
        "/img/photo.jpg": jpeg(400, 300, seed=2),
        "/img/big.jpg": jpeg(1800, 1200, seed=3),
        "/img/tall.png": encode(photo(200, 500, seed=4), "PNG"),
        "/img/alpha.png": encode(rgba, "PNG"),
        "/img/pic.webp": encode(photo(300, 300, seed=5), "WEBP"),
        "/img/anim.gif": encode(base.convert("P"), "GIF"),
        "/img/cmyk.jpg": encode(base.convert("CMYK"), "JPEG"),
        "/img/grey.jpg": encode(base.convert("L"), "JPEG"),
    }


def good_stream(
    server, n: int, prefix: str, *, slow_every: int = 0
) -> tuple[list[bytes], set[str]]:
    """`n` records of good images, ids `{prefix}-{i}`; with `slow_every` k, every k-th
    image is served a second late, so records finish out of order."""
    server.routes.update(good_images())
    paths = sorted(good_images())

    def url(i: int) -> str:
        slow = "/slow" if slow_every and i % slow_every == 0 else ""
        return server.url(f"{slow}{paths[i % len(paths)]}?{prefix}={i}")

    values = [json.dumps({"id": f"{prefix}-{i}", "url": url(i)}).encode() for i in range(n)]
    return values, {f"{prefix}-{i}" for i in range(n)}
