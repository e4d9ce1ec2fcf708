"""What Kafka clients a worker builds, without a broker: kafka-python's KafkaProducer and
KafkaConsumer are replaced by fakes that keep their settings. With exactly-once on,
a transactional producer (transactional_id stable per partition set, see
`actors.delivery.transactional_id`) whose transactions are started, and a consumer
that reads only committed records; with it off, neither."""

from __future__ import annotations

import threading

import pytest
from kafka.structs import TopicPartition

import actors.stream
import services.kafka_io
from actors.delivery import AtLeastOnce, ExactlyOnce
from actors.stream import StreamWorker
from services.config import KafkaSettings, WorkerSettings

GROUP = "eos-wiring"
PARTITIONS = (2, 0)
EXPECTED_TID = f"dmguard-{GROUP}-dmguard.images-p0.2"  # sorted partitions: stable


class FakeProducer:
    made: list[FakeProducer] = []

    def __init__(self, **configs) -> None:
        self.configs = configs
        self.calls: list[str] = []
        FakeProducer.made.append(self)

    def init_transactions(self) -> None:
        assert self.configs.get("transactional_id"), "init_transactions on a plain producer"
        self.calls.append("init_transactions")

    def begin_transaction(self) -> None:
        self.calls.append("begin_transaction")

    def close(self, timeout=None) -> None:
        self.calls.append("close")


class FakeConsumer:
    made: list[FakeConsumer] = []

    def __init__(self, *topics, **configs) -> None:
        self.configs = configs
        self.assigned: list[TopicPartition] = []
        FakeConsumer.made.append(self)

    def assign(self, partitions) -> None:
        self.assigned = list(partitions)

    def close(self, autocommit=True) -> None:
        pass


@pytest.fixture
def clients(monkeypatch):
    """The fakes, where `services.kafka_io` builds every client; the broker answers."""
    FakeProducer.made, FakeConsumer.made = [], []
    monkeypatch.setattr(services.kafka_io, "KafkaProducer", FakeProducer)
    monkeypatch.setattr(services.kafka_io, "KafkaConsumer", FakeConsumer)
    monkeypatch.setattr(actors.stream, "kafka_answers", lambda *a, **kw: True)
    return FakeProducer.made, FakeConsumer.made


def connected_worker(tiny_registry, tmp_path, *, exactly_once: bool) -> StreamWorker:
    settings = WorkerSettings(
        kafka=KafkaSettings(bootstrap_servers="127.0.0.1:1", group_id=GROUP),
        registry=str(tiny_registry.root),
        state_dir=str(tmp_path / "state"),
        partitions=PARTITIONS,
        exactly_once=exactly_once,
    )
    worker = StreamWorker(settings, worker_id="t")
    assert worker._connect(threading.Event())
    return worker


def test_exactly_once_builds_a_transactional_producer_and_a_read_committed_consumer(
    clients, tiny_registry, tmp_path
):
    producers, consumers = clients
    worker = connected_worker(tiny_registry, tmp_path, exactly_once=True)
    assert len(producers) == 1 and len(consumers) == 1
    producer, consumer = producers[0], consumers[0]
    assert producer.configs["transactional_id"] == EXPECTED_TID
    assert consumer.configs["isolation_level"] == "read_committed"
    assert consumer.configs["enable_auto_commit"] is False
    assert consumer.configs["group_id"] == GROUP  # offsets go to the group, in the transaction
    assert sorted(consumer.assigned) == [TopicPartition("dmguard.images", p) for p in (0, 2)]
    assert isinstance(worker.delivery, ExactlyOnce)
    assert worker.delivery.producer is producer and worker.delivery.group_id == GROUP
    # fences any predecessor with the same id, then opens the first transaction
    assert producer.calls == ["init_transactions", "begin_transaction"]
    assert worker.status()["delivery"] == "exactly-once"


def test_the_transactional_id_does_not_depend_on_the_partitions_order(
    clients, tiny_registry, tmp_path
):
    producers, _ = clients
    connected_worker(tiny_registry, tmp_path, exactly_once=True)  # on (2, 0)
    settings = WorkerSettings(
        kafka=KafkaSettings(bootstrap_servers="127.0.0.1:1", group_id=GROUP),
        registry=str(tiny_registry.root),
        state_dir=str(tmp_path / "state"),
        partitions=tuple(sorted(PARTITIONS)),
        exactly_once=True,
    )
    StreamWorker(settings, worker_id="t2")._connect(threading.Event())
    assert [p.configs["transactional_id"] for p in producers] == [EXPECTED_TID] * 2


def test_at_least_once_builds_neither(clients, tiny_registry, tmp_path):
    producers, consumers = clients
    worker = connected_worker(tiny_registry, tmp_path, exactly_once=False)
    assert len(producers) == 1 and len(consumers) == 1
    producer, consumer = producers[0], consumers[0]
    assert producer.configs.get("transactional_id") is None
    assert producer.calls == []  # no transactions
    assert consumer.configs.get("isolation_level", "read_uncommitted") == "read_uncommitted"
    assert isinstance(worker.delivery, AtLeastOnce)
    assert worker.status()["delivery"] == "at-least-once"


def test_clients_rebuilt_after_broker_trouble_keep_the_same_wiring(
    clients, tiny_registry, tmp_path
):
    """After `_close` and a new `_connect` (what the loop does when the clients broke) the
    new producer has the same transactional id, so it fences the old one."""
    producers, consumers = clients
    worker = connected_worker(tiny_registry, tmp_path, exactly_once=True)
    worker._close()
    assert producers[0].calls[-1] == "close"
    assert worker._connect(threading.Event())
    assert [p.configs["transactional_id"] for p in producers] == [EXPECTED_TID] * 2
    assert [c.configs["isolation_level"] for c in consumers] == ["read_committed"] * 2
    assert producers[1].calls == ["init_transactions", "begin_transaction"]
