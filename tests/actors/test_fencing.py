"""A fenced exactly-once worker stops for good, without a broker: kafka-python's clients
are fakes whose transaction the broker refuses, at the second commit, with
ProducerFencedError (or InvalidProducerEpochError), as it does once a newer producer
with the same transactional id exists. The worker must not raise (Ray would restart
it, and the new incarnation would fence the newer one in turn), must not build new
clients (that too would fence the newer one) and must not read another record."""

from __future__ import annotations

import logging
import threading
import time

import pytest
from kafka.errors import InvalidProducerEpochError, ProducerFencedError
from kafka.structs import TopicPartition

import actors.stream
import actors.worker
import services.kafka_io
from actors.stream import StreamWorker
from services.config import KafkaSettings, WorkerSettings
from tests.actors.fakes import Message, start_worker

TP = TopicPartition("dmguard.images", 0)
FENCED_AT = 2  # the commit the broker refuses
JOIN_S = 10.0  # a worker that stops as it should does so in well under a second


class Broker:
    """What the fakes share: the transactions tried, the records handed out, the clients
    built. Batch k of input records is handed out only once k commits have been tried,
    so a batch polled after the fenced commit is the worker going on after the fence."""

    def __init__(self, error: type[Exception]) -> None:
        self.error = error
        self.commits = 0
        self.batches = [
            [Message(TP.topic, TP.partition, o, 0, f"bad record {o}".encode()) for o in offsets]
            for offsets in ((0, 1), (2, 3), (4, 5))
        ]
        self.handed_out: list[int] = []
        self.producers: list[FakeProducer] = []
        self.consumers: list[FakeConsumer] = []


class Result:
    def __init__(self, error: Exception | None) -> None:
        self.error = error

    def wait(self, timeout_ms=None) -> bool:
        if self.error is not None:
            raise self.error
        return True


class FakeTransactionManager:
    def __init__(self, broker: Broker) -> None:
        self.broker = broker

    def send_offsets_to_transaction(self, offsets, group_id) -> Result:
        self.broker.commits += 1
        fenced = self.broker.commits >= FENCED_AT
        return Result(self.broker.error() if fenced else None)

    def begin_commit(self) -> Result:
        return Result(None)


class FakeSender:
    def wakeup(self) -> None:
        pass


class FakeProducer:
    def __init__(self, broker: Broker, **configs) -> None:
        assert configs.get("transactional_id"), "exactly-once needs a transactional producer"
        self.configs = configs
        self.sent: list[bytes] = []
        self.closed = False
        self._transaction_manager = FakeTransactionManager(broker)
        self._sender = FakeSender()
        broker.producers.append(self)

    def init_transactions(self) -> None:
        pass

    def begin_transaction(self) -> None:
        pass

    def send(self, topic, value=None, key=None) -> None:
        self.sent.append(value)

    def close(self, timeout=None) -> None:
        self.closed = True


class FakeConsumer:
    def __init__(self, broker: Broker, **configs) -> None:
        self.broker = broker
        self.configs = configs
        self.polls = 0
        self.closed = False
        broker.consumers.append(self)

    def assign(self, partitions) -> None:
        pass

    def position(self, tp) -> int:
        return 0

    def end_offsets(self, tps, timeout_ms=None) -> dict:
        return {tp: 6 for tp in tps}

    def poll(self, timeout_ms=0, max_records=None) -> dict:
        self.polls += 1
        b = self.broker
        k = len(b.handed_out)
        if k < len(b.batches) and b.commits >= k:
            b.handed_out.append(k)
            return {TP: b.batches[k]}
        time.sleep(min(timeout_ms, 20) / 1000)
        return {}

    def close(self, autocommit=True) -> None:
        self.closed = True


@pytest.fixture(params=[ProducerFencedError, InvalidProducerEpochError])
def broker(request, monkeypatch):
    b = Broker(request.param)
    monkeypatch.setattr(services.kafka_io, "KafkaProducer", lambda **kw: FakeProducer(b, **kw))
    monkeypatch.setattr(services.kafka_io, "KafkaConsumer", lambda **kw: FakeConsumer(b, **kw))
    monkeypatch.setattr(actors.stream, "kafka_answers", lambda *a, **kw: True)
    return b


@pytest.fixture
def settings(tiny_registry, tmp_path) -> WorkerSettings:
    return WorkerSettings(
        kafka=KafkaSettings(bootstrap_servers="127.0.0.1:1", group_id="fence-test"),
        registry=str(tiny_registry.root),
        state_dir=str(tmp_path / "state"),
        partitions=(0,),
        exactly_once=True,
        commit_interval_s=0.05,
    )


def assert_stopped_for_good(broker: Broker) -> None:
    assert broker.commits == FENCED_AT  # no commit tried after the fenced one
    assert broker.handed_out == [0, 1]  # the batch after the fence was never read
    assert len(broker.producers) == 1 and len(broker.consumers) == 1  # no new clients
    assert broker.producers[0].closed and broker.consumers[0].closed
    # what the first transaction carried: the first batch's dead letters, not a later one's
    sent = b"".join(broker.producers[0].sent)
    assert b"bad record 4" not in sent and b"bad record 5" not in sent


def test_a_fenced_stream_worker_returns_without_raising_and_reads_nothing_more(broker, settings):
    worker = StreamWorker(settings, worker_id="t")
    stop = threading.Event()  # never set: the fence alone must end the loop
    thread, raised = start_worker(worker, stop)
    thread.join(JOIN_S)
    still_running = thread.is_alive()
    stop.set()
    thread.join(JOIN_S)
    assert not still_running, "the fenced worker kept running"
    assert raised == []
    status = worker.status()
    assert status["fenced"] is True and status["running"] is False
    assert_stopped_for_good(broker)
    polls = broker.consumers[0].polls
    time.sleep(0.2)
    assert broker.consumers[0].polls == polls  # nothing left polling behind its back


@pytest.fixture
def quiet_logging():
    """DetectorWorker sets log levels for its process; this one gets its own back."""
    names = ("", "actors", "services", "training", "kafka.net.selector")
    levels = {n: logging.getLogger(n).level for n in names}
    yield
    for n, level in levels.items():
        logging.getLogger(n).setLevel(level)


def test_a_fenced_detector_worker_does_not_exit_for_ray_to_restart_it(
    broker, settings, monkeypatch, quiet_logging
):
    """The actor, without Ray: its consume loop ends when fenced; the process stays up
    (no os._exit, which Ray would answer with a new incarnation) and says it is fenced."""
    exits: list[int] = []
    monkeypatch.setattr(actors.worker.os, "_exit", exits.append)
    worker = actors.worker.DetectorWorker(settings, "t")
    worker._thread.join(JOIN_S)
    still_running = worker._thread.is_alive()
    if still_running:
        worker._stop.set()
        worker._thread.join(JOIN_S)
    assert not still_running, "the fenced worker kept running"
    assert exits == []
    report = worker.report()
    assert report["status"]["fenced"] is True and report["status"]["running"] is False
    assert report["status"]["delivery"] == "exactly-once"
    assert_stopped_for_good(broker)
    assert worker.stop(timeout_s=5)["drained"] is True  # and `stop` does not restart it
    assert_stopped_for_good(broker)
