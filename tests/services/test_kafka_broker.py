"""Apache Kafka as the embedded broker (`dmguard broker --engine kafka`, services.broker's
KafkaBroker): one KRaft node from the jars `make kafka` fetches, what a SIGTERM restart on
the same folder keeps, and the one-line errors without Java or the jars.

The broker tests share one history (a module fixture, each Kafka start costs seconds): the
command starts Kafka on a folder, records, a group's commit and two transactions (one
aborted) are written, SIGTERM stops it, and a KafkaBroker started again on the folder is
what the tests read."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from kafka.admin import NewTopic
from kafka.structs import OffsetAndMetadata, TopicPartition

from services.broker import (
    KAFKA_VERSION,
    EmbeddedBroker,
    KafkaBroker,
    broker_for,
    free_port,
    kafka_answers,
    kafka_libs,
)
from services.config import KafkaSettings
from services.errors import BrokerError, ConfigError
from services.kafka_io import (
    commit_transaction,
    make_admin,
    make_consumer,
    make_producer,
    produce,
    read_values,
)
from tests.conftest import require_kafka_jars

ROOT = Path(__file__).resolve().parents[2]
N = 100  # plain records, over PARTS partitions
PARTS = 3
TX_N = 5  # records of the committed transaction
PLAIN, TXOUT, AFTER = "kafka.plain", "kafka.tx-out", "kafka.after"
GROUP, TX_GROUP = "kafka-test", "kafka-test-tx"


# --- fast: versions, flags, errors ------------------------------------------------------


def test_the_makefile_the_pom_and_the_code_name_one_kafka_version(monkeypatch):
    make = re.search(r"^KAFKA_VERSION\s*:=\s*(\S+)", (ROOT / "Makefile").read_text(), re.M)
    pom = re.search(
        r"<kafka.version>([^<]+)</kafka.version>",
        (ROOT / "requirements" / "kafka" / "pom.xml").read_text(),
    )
    assert make and pom
    assert make.group(1) == pom.group(1) == KAFKA_VERSION
    monkeypatch.delenv("DMGUARD_KAFKA_LIBS", raising=False)
    assert kafka_libs() == ROOT / ".cache" / "kafka" / KAFKA_VERSION / "libs"  # where make puts it


def test_without_the_jars_it_says_run_make_kafka(tmp_path):
    broker = KafkaBroker(libs=tmp_path / "empty")
    with pytest.raises(BrokerError, match=r"make kafka") as err:
        broker.start()
    assert "\n" not in str(err.value) and str(tmp_path / "empty") in str(err.value)
    assert broker.process is None and broker.folder is None  # nothing started or created


def test_without_java_it_says_how_to_get_one(tmp_path, monkeypatch):
    libs = tmp_path / "libs"
    libs.mkdir()
    (libs / f"kafka_2.13-{KAFKA_VERSION}.jar").write_bytes(b"")  # jars "present"
    with pytest.raises(BrokerError, match=r"Java 17 .*no-java"):
        KafkaBroker(libs=libs, java=tmp_path / "no-java").start()
    monkeypatch.setenv("PATH", str(tmp_path))  # no java on PATH, none in JAVA_HOME
    monkeypatch.delenv("JAVA_HOME", raising=False)
    broker = KafkaBroker(libs=libs)
    with pytest.raises(BrokerError, match=r"no `java` is on PATH.*openjdk-17"):
        broker.start()
    assert broker.folder is None


def test_the_command_prints_one_line_without_the_jars(tmp_path, monkeypatch, capsys):
    from dmguard import main

    monkeypatch.setenv("DMGUARD_KAFKA_LIBS", str(tmp_path))
    assert main(["broker", "--engine", "kafka", "--port", str(free_port())]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("dmguard broker: the Kafka engine's jars are not in")
    assert "`make kafka`" in err and "\n" not in err


def test_engines_by_name_and_the_durable_alias(tmp_path):
    from dmguard import build_parser
    from dmguard.broker import engine_and_data

    def flags(*argv: str) -> tuple[str, str | None]:
        return engine_and_data(build_parser().parse_args(["broker", *argv]))

    assert flags() == ("tansu", None)
    assert flags("--durable", "D") == ("noida", "D") == flags("--engine", "noida", "--data", "D")
    assert flags("--engine", "kafka") == ("kafka", None)
    assert flags("--engine", "kafka", "--data", "D") == ("kafka", "D")
    with pytest.raises(ConfigError, match="--engine noida"):
        flags("--engine", "kafka", "--durable", "D")
    with pytest.raises(ConfigError, match="once"):
        flags("--durable", "D", "--data", "E")
    assert type(broker_for("tansu")) is EmbeddedBroker
    assert broker_for("noida", data_dir=tmp_path).name == "noida-db"
    kafka = broker_for("kafka", data_dir=tmp_path)
    assert isinstance(kafka, KafkaBroker) and kafka.data_dir == tmp_path
    with pytest.raises(ConfigError, match="in memory"):
        broker_for("tansu", data_dir=tmp_path)
    with pytest.raises(ConfigError, match="--data"):
        broker_for("noida")
    with pytest.raises(ConfigError, match="unknown"):
        broker_for("redpanda")


# --- a real Kafka, started, written, SIGTERMed and started again -------------------------


@dataclass
class Restarted:
    broker: KafkaBroker
    kafka: KafkaSettings
    folder: Path
    ready_line: str
    first_exit: int
    committed: dict[int, int]  # GROUP's offsets on PLAIN, as committed before the restart
    tx_offsets: dict[int, int]  # TX_GROUP's, committed inside the transaction


def _write_history(kafka: KafkaSettings) -> tuple[dict[int, int], dict[int, int]]:
    admin = make_admin(kafka)
    admin.create_topics([NewTopic(PLAIN, PARTS, 1), NewTopic(TXOUT, 1, 1)])
    admin.close()
    produce(kafka, PLAIN, [(f"k{i}".encode(), f"v{i}".encode()) for i in range(N)])
    consumer = make_consumer(kafka)
    consumer.subscribe([PLAIN])
    assert len(list(read_values(consumer, max_records=N, idle_timeout_s=30))) == N
    consumer.commit()
    committed = {p: consumer.committed(TopicPartition(PLAIN, p)) for p in range(PARTS)}
    consumer.close()
    assert sum(committed.values()) == N

    producer = make_producer(kafka, transactional_id="kafka-test-tx", enable_idempotence=True)
    producer.init_transactions()
    producer.begin_transaction()
    producer.send(TXOUT, b"aborted")
    producer.flush()
    producer.abort_transaction()
    producer.begin_transaction()
    for i in range(TX_N):
        producer.send(TXOUT, f"committed{i}".encode())
    # The exactly-once path's commit (actors.delivery): the outputs and the input offsets
    # in one transaction, here half of each partition's records.
    tx_offsets = {p: committed[p] // 2 for p in range(PARTS)}
    offsets = {
        TopicPartition(PLAIN, p): OffsetAndMetadata(o, "", -1) for p, o in tx_offsets.items()
    }
    commit_transaction(producer, offsets, TX_GROUP, timeout_s=60)
    producer.close()
    return committed, tx_offsets


@pytest.fixture(scope="module")
def restarted(tmp_path_factory):
    require_kafka_jars()
    folder = tmp_path_factory.mktemp("kafka") / "state"
    port = free_port()
    cli_err = folder.parent / "cli.err"
    started = time.monotonic()
    with open(cli_err, "wb") as err:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "dmguard",
                "broker",
                "--engine",
                "kafka",
                "--data",
                str(folder),
                "--port",
                str(port),
            ],
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )
    try:
        ready = proc.stdout.readline().strip()
        if not ready.startswith("ready"):
            proc.wait(timeout=90)
            pytest.fail(f"`dmguard broker --engine kafka` said: {cli_err.read_text()}")
        took = time.monotonic() - started
        print(f"kafka {KAFKA_VERSION}: first start (format included) {took:.1f} s")
        kafka = KafkaSettings(bootstrap_servers=f"127.0.0.1:{port}", group_id=GROUP)
        committed, tx_offsets = _write_history(kafka)
        proc.send_signal(signal.SIGTERM)
        first_exit = proc.wait(timeout=90)
    finally:
        if proc.poll() is None:  # SIGTERM first: the command stops its JVM on the way out
            proc.terminate()
            try:
                proc.wait(timeout=90)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    started = time.monotonic()
    broker = KafkaBroker(port=port, data_dir=folder).start()
    print(f"kafka {KAFKA_VERSION}: restart {time.monotonic() - started:.1f} s")
    try:
        yield Restarted(broker, kafka, folder, ready, first_exit, committed, tx_offsets)
    finally:
        broker.stop()


def _values(kafka: KafkaSettings, topic: str, expected: int, **overrides) -> list[bytes]:
    reader = make_consumer(kafka, group=False, **overrides)
    parts = sorted(reader.partitions_for_topic(topic) or [])
    tps = [TopicPartition(topic, p) for p in parts]
    reader.assign(tps)
    reader.seek_to_beginning(*tps)
    values = list(read_values(reader, max_records=expected + 1, idle_timeout_s=2))
    reader.close()
    return values


@pytest.mark.broker
@pytest.mark.slow
def test_the_command_said_ready_and_stopped_cleanly_on_sigterm(restarted):
    assert restarted.ready_line == f"ready {restarted.broker.bootstrap}"
    assert restarted.first_exit == 0
    assert (restarted.folder / "data" / "meta.properties").is_file()
    assert "ERROR" not in (restarted.folder / "broker.log").read_text()


@pytest.mark.broker
@pytest.mark.slow
def test_records_survive_the_restart(restarted):
    values = _values(restarted.kafka, PLAIN, N)
    assert sorted(values) == sorted(f"v{i}".encode() for i in range(N))


@pytest.mark.broker
@pytest.mark.slow
def test_committed_offsets_survive_the_restart(restarted):
    for group, expected in ((GROUP, restarted.committed), (TX_GROUP, restarted.tx_offsets)):
        consumer = make_consumer(restarted.kafka, group_id=group)
        got = {p: consumer.committed(TopicPartition(PLAIN, p)) for p in range(PARTS)}
        consumer.close()
        assert got == expected, group


@pytest.mark.broker
@pytest.mark.slow
def test_read_committed_sees_the_committed_transaction_not_the_aborted_one(restarted):
    committed = [f"committed{i}".encode() for i in range(TX_N)]
    assert _values(restarted.kafka, TXOUT, TX_N, isolation_level="read_committed") == committed
    # The aborted record is in the log all the same: read_uncommitted shows it.
    assert _values(restarted.kafka, TXOUT, TX_N + 1) == [b"aborted", *committed]


@pytest.mark.broker
@pytest.mark.slow
def test_the_restarted_broker_takes_new_groups_and_transactions(restarted):
    """The coordinators came back with their state: the same transactional id starts
    again (fencing the old epoch), and a group joins and reads. (Its own topic: the other
    tests' reads stay as the fixture wrote them.)"""
    kafka = restarted.kafka
    admin = make_admin(kafka)
    admin.create_topics([NewTopic(AFTER, 1, 1)])
    admin.close()
    producer = make_producer(kafka, transactional_id="kafka-test-tx", enable_idempotence=True)
    producer.init_transactions()
    producer.begin_transaction()
    producer.send(AFTER, b"aborted")
    producer.flush()
    producer.abort_transaction()
    producer.begin_transaction()
    producer.send(AFTER, b"after")
    producer.commit_transaction()
    producer.close()
    consumer = make_consumer(kafka, group_id="kafka-test-after", isolation_level="read_committed")
    consumer.subscribe([AFTER])
    # The aborted record comes first in the log: a reader that did not skip it gets it.
    assert list(read_values(consumer, max_records=1, idle_timeout_s=30)) == [b"after"]
    consumer.commit()
    # past "after" (offsets: aborted 0, its abort marker 1, after 2, its commit marker 3)
    assert consumer.committed(TopicPartition(AFTER, 0)) >= 3
    consumer.close()


@pytest.mark.broker
@pytest.mark.slow
def test_without_a_folder_it_runs_in_a_temporary_one_removed_on_stop():
    require_kafka_jars()
    with KafkaBroker() as broker:
        folder = broker.folder
        assert folder is not None and (folder / "data" / "meta.properties").is_file()
        assert kafka_answers(broker.bootstrap)
    assert not folder.exists()
