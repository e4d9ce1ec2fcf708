"""A worker that starts while the broker is away waits for it (docs/delivery.md, "When
the broker goes away"), without a broker: `kafka_answers` (services.broker) is replaced
by a script of answers, kafka-python's clients by fakes. Until the broker answers, the
worker neither crashes (Ray would restart it, over and over: a crash loop) nor builds
clients; it tries again, backing off to BROKER_RETRY_MAX_S, and counts each miss in
`dmguard_broker_errors_total{op="connect"}`. Once it answers, the worker builds its
clients once and reads. Told to stop while it waits, it returns at once."""

from __future__ import annotations

import threading
import time

import pytest
from kafka.errors import KafkaConnectionError

import actors.stream
import services.kafka_io
from actors.stream import BROKER_RETRY_MAX_S, StreamWorker
from services.config import KafkaSettings, WorkerSettings
from services.metrics import DriverMetrics
from tests.actors.fakes import FakeFuture, start_worker

JOIN_S = 10.0  # generous: a worker that does what it should is far quicker
PROMPT_S = 1.0  # a stop while waiting ends `run` within this (the wait it cuts short: 2 s)


class Clients:
    """The broker's answers to `kafka_answers`, in order (then always the last one), and
    the fake clients built. `ready` is set once a consumer has been polled."""

    def __init__(self, answers: list[bool], *, producer_failures: int = 0) -> None:
        self.answers = list(answers)
        self.asked = 0
        self.built_when_asked: list[int] = []  # clients built by the time of each question
        self.status_when_asked: list[dict] = []
        self.producer_failures = producer_failures
        self.producers: list[FakeProducer] = []
        self.consumers: list[FakeConsumer] = []
        self.worker: StreamWorker | None = None
        self.ready = threading.Event()
        self.asked_event = threading.Event()

    def kafka_answers(self, bootstrap, **extra) -> bool:
        assert bootstrap == "127.0.0.1:1"
        self.built_when_asked.append(len(self.producers) + len(self.consumers))
        if self.worker is not None:
            self.status_when_asked.append(self.worker.status())
        answer = self.answers[min(self.asked, len(self.answers) - 1)]
        self.asked += 1
        self.asked_event.set()
        return answer

    def producer(self, **configs) -> FakeProducer:
        if self.producer_failures > 0:  # answered a moment ago, gone again
            self.producer_failures -= 1
            raise KafkaConnectionError("gone again")
        return FakeProducer(self, **configs)


class FakeProducer:
    def __init__(self, clients: Clients, **configs) -> None:
        self.configs = configs
        self.closed = False
        clients.producers.append(self)

    def send(self, topic, value=None, key=None) -> FakeFuture:
        return FakeFuture()

    def flush(self, timeout=None) -> None:
        pass

    def close(self, timeout=None) -> None:
        self.closed = True


class FakeConsumer:
    def __init__(self, clients: Clients, **configs) -> None:
        self.clients = clients
        self.configs = configs
        self.assigned: list = []
        self.polls = 0
        self.closed = False
        clients.consumers.append(self)

    def assign(self, partitions) -> None:
        self.assigned = list(partitions)

    def position(self, tp) -> int:
        return 0

    def end_offsets(self, tps, timeout_ms=None) -> dict:
        return {tp: 0 for tp in tps}

    def poll(self, timeout_ms=0, max_records=None) -> dict:
        self.polls += 1
        self.clients.ready.set()
        time.sleep(min(timeout_ms, 20) / 1000)
        return {}

    def commit(self, offsets) -> None:
        pass

    def close(self, autocommit=True) -> None:
        self.closed = True


class QuickStop(threading.Event):
    """A stop event whose waits return at once (saying whether it is set) and are
    recorded: the worker's backoff without the seconds it would take."""

    def __init__(self) -> None:
        super().__init__()
        self.waits: list[float] = []

    def wait(self, timeout=None) -> bool:
        self.waits.append(timeout)
        time.sleep(0.001)
        return self.is_set()


def install(monkeypatch, clients: Clients) -> Clients:
    monkeypatch.setattr(actors.stream, "kafka_answers", clients.kafka_answers)
    monkeypatch.setattr(services.kafka_io, "KafkaProducer", clients.producer)
    monkeypatch.setattr(
        services.kafka_io, "KafkaConsumer", lambda **kw: FakeConsumer(clients, **kw)
    )
    return clients


@pytest.fixture
def settings(tiny_registry, tmp_path) -> WorkerSettings:
    return WorkerSettings(
        kafka=KafkaSettings(bootstrap_servers="127.0.0.1:1", group_id="away-at-start"),
        registry=str(tiny_registry.root),
        state_dir=str(tmp_path / "state"),
        partitions=(0, 1),
    )


def wait_until_reading(clients: Clients, thread: threading.Thread, raised: list) -> None:
    """Until a consumer has been polled; fails at once if `run` ended (or raised) first."""
    deadline = time.monotonic() + JOIN_S
    while not clients.ready.wait(0.02):
        assert thread.is_alive(), f"run ended before reading (raised: {raised!r})"
        assert time.monotonic() < deadline, "the worker never read once the broker answered"


def connect_errors(worker: StreamWorker) -> float:
    metrics = DriverMetrics()
    metrics.apply(worker.stats.drain())
    return metrics.registry.get_sample_value("dmguard_broker_errors_total", {"op": "connect"})


def test_a_worker_started_while_the_broker_is_away_waits_then_builds_its_clients_once(
    monkeypatch, settings
):
    misses = 6
    clients = install(monkeypatch, Clients([False] * misses + [True]))
    worker = StreamWorker(settings, worker_id="t")
    clients.worker = worker
    stop = QuickStop()
    thread, raised = start_worker(worker, stop)
    wait_until_reading(clients, thread, raised)
    stop.set()
    thread.join(JOIN_S)
    assert not thread.is_alive() and raised == []
    assert clients.asked == misses + 1  # asked until it answered, then no more
    assert clients.built_when_asked == [0] * (misses + 1)  # no client while it was away
    # while waiting: running, not connected (what /status and the driver read)
    assert all(s["running"] and not s["broker_connected"] for s in clients.status_when_asked)
    # backing off from 0.5 s to BROKER_RETRY_MAX_S, one wait per miss
    assert stop.waits == [0.5, 1.0, 2.0, 4.0, BROKER_RETRY_MAX_S, BROKER_RETRY_MAX_S]
    assert len(clients.consumers) == 1 and len(clients.producers) == 1  # built once
    consumer = clients.consumers[0]
    assert sorted(tp.partition for tp in consumer.assigned) == [0, 1]
    assert consumer.polls > 0
    assert consumer.closed and clients.producers[0].closed  # and closed on stop
    assert connect_errors(worker) == misses
    assert worker.status()["running"] is False


def test_clients_that_fail_to_open_after_an_answer_are_closed_and_tried_again(
    monkeypatch, settings
):
    """The broker answers, then is gone before the clients are all open (the producer's
    constructor raises, after the consumer's): the worker does not crash, closes the
    consumer it built, and tries again."""
    clients = install(monkeypatch, Clients([True], producer_failures=2))
    worker = StreamWorker(settings, worker_id="t")
    stop = QuickStop()
    thread, raised = start_worker(worker, stop)
    wait_until_reading(clients, thread, raised)
    stop.set()
    thread.join(JOIN_S)
    assert not thread.is_alive() and raised == []
    assert clients.asked == 3 and stop.waits == [0.5, 1.0]
    assert len(clients.consumers) == 3 and len(clients.producers) == 1
    assert all(c.closed and c.polls == 0 for c in clients.consumers[:2])  # none left open
    assert clients.consumers[2].polls > 0
    assert connect_errors(worker) == 2


def test_a_worker_waiting_for_the_broker_stops_promptly_when_told(monkeypatch, settings):
    """With real waits: stopped during its third wait (2 s), `run` returns at once,
    without raising and without having built a client."""
    clients = install(monkeypatch, Clients([False]))  # never answers
    worker = StreamWorker(settings, worker_id="t")
    stop = threading.Event()
    thread, raised = start_worker(worker, stop)
    deadline = time.monotonic() + JOIN_S
    while clients.asked < 3 and time.monotonic() < deadline:  # 0.5 s + 1 s of waiting
        clients.asked_event.wait(0.05)
    assert clients.asked == 3, "the worker stopped asking whether the broker answers"
    time.sleep(0.05)  # now in its 2 s wait
    assert thread.is_alive() and raised == []  # waiting, not crashed
    status = worker.status()
    assert status["running"] is True and status["broker_connected"] is False
    t0 = time.monotonic()
    stop.set()
    thread.join(JOIN_S)
    took = time.monotonic() - t0
    assert not thread.is_alive() and raised == []
    assert took < PROMPT_S, f"took {took:.2f} s to stop while waiting for the broker"
    assert clients.asked == 3  # no question after the stop
    assert clients.consumers == [] and clients.producers == []
    assert worker.status()["running"] is False
    assert connect_errors(worker) == 3
