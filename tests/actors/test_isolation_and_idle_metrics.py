"""Two of docs/metrics.md's counters, through StreamWorker.run without Kafka (fake
kafka-python clients) and read where operators read them, from DriverMetrics after the
worker's stats reach the driver as `serve` hands them over (`WorkerStats.drain`):

* `dmguard_isolated_records_total`: records processed one at a time after a worker died
  uncleanly (actors.crash_guard). Counted for each such record; zero after a clean stop.
* `dmguard_worker_idle_seconds_total`: seconds the workers sat idle, what `--workers auto`
  reads (DriverMetrics.idle_total, actors.scaling). Counted for the time spent waiting for
  records with nothing in the pipeline; not for polls made while fetches are running."""

from __future__ import annotations

import json
import threading
import time

import pytest
from kafka.structs import TopicPartition

import actors.stream
import services.kafka_io
from actors.crash_guard import PartitionState, StateStore
from actors.stream import StreamWorker
from services.config import KafkaSettings, WorkerSettings
from services.errors import InputError
from services.metrics import DriverMetrics
from tests.actors.fakes import FakeFuture, Message, start_worker

TP = TopicPartition("dmguard.images", 0)
GROUP = "metrics-test"
IN_FLIGHT = 2  # in_flight_cap; the crash guard isolates 2 x this past what was polled
JOIN_S = 10.0


class FakeProducer:
    def __init__(self, broker: Broker, **configs) -> None:
        self.broker = broker

    def send(self, topic, value=None, key=None) -> FakeFuture:
        self.broker.sent.append(value)
        return FakeFuture()

    def flush(self, timeout=None) -> None:
        pass

    def close(self, timeout=None) -> None:
        pass


class Broker:
    """One input partition of `values`; the fakes' record of what happened. Polls made
    with nothing in the worker's pipeline (timeout_ms > 0) sleep `idle_poll_s`, the others
    `busy_poll_s`; the seconds each kind took are summed as the fake measured them."""

    def __init__(self, values: list[bytes], *, idle_poll_s=0.01, busy_poll_s=0.0) -> None:
        self.values = values
        self.idle_poll_s, self.busy_poll_s = idle_poll_s, busy_poll_s
        self.position = 0
        self.committed = 0
        self.sent: list[bytes] = []
        self.max_records: list[int] = []  # asked for by each poll that got a record
        self.idle_s = self.busy_s = 0.0
        self.busy_polls = 0

    def poll(self, timeout_ms, max_records) -> dict:
        idle = timeout_ms > 0
        t0 = time.monotonic()
        time.sleep(self.idle_poll_s if idle else self.busy_poll_s)
        out = {}
        if self.position < len(self.values):
            end = min(len(self.values), self.position + max_records)
            out = {
                TP: [
                    Message(TP.topic, TP.partition, o, 0, self.values[o])
                    for o in range(self.position, end)
                ]
            }
            self.max_records.append(max_records)
            self.position = end
        took = time.monotonic() - t0
        if idle:
            self.idle_s += took
        else:
            self.busy_s += took
            self.busy_polls += 1
        return out


class FakeConsumer:
    def __init__(self, broker: Broker, **configs) -> None:
        self.broker = broker

    def assign(self, partitions) -> None:
        assert list(partitions) == [TP]

    def position(self, tp) -> int:
        return self.broker.position

    def end_offsets(self, tps, timeout_ms=None) -> dict:
        return {tp: len(self.broker.values) for tp in tps}

    def poll(self, timeout_ms=0, max_records=None) -> dict:
        return self.broker.poll(timeout_ms, max_records)

    def commit(self, offsets) -> None:
        self.broker.committed = offsets[TP].offset

    def close(self, autocommit=True) -> None:
        pass


def install(monkeypatch, broker: Broker) -> Broker:
    monkeypatch.setattr(services.kafka_io, "KafkaProducer", lambda **kw: FakeProducer(broker))
    monkeypatch.setattr(services.kafka_io, "KafkaConsumer", lambda **kw: FakeConsumer(broker))
    monkeypatch.setattr(actors.stream, "kafka_answers", lambda *a, **kw: True)
    return broker


@pytest.fixture
def settings(tiny_registry, tmp_path) -> WorkerSettings:
    return WorkerSettings(
        kafka=KafkaSettings(bootstrap_servers="127.0.0.1:1", group_id=GROUP),
        registry=str(tiny_registry.root),
        state_dir=str(tmp_path / "state"),
        partitions=(TP.partition,),
        max_in_flight=IN_FLIGHT,
        commit_interval_s=0.05,
    )


def predecessor(settings: WorkerSettings, state: PartitionState) -> None:
    """What the worker before this one left in the crash guard's state folder."""
    StateStore(settings.state_dir, GROUP).write(TP.topic, TP.partition, state)


def run_until(worker: StreamWorker, done) -> None:
    """Run the worker until `done()`, then stop it; it must neither hang nor raise."""
    stop = threading.Event()
    thread, raised = start_worker(worker, stop)
    deadline = time.monotonic() + JOIN_S
    while not done() and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    stop.set()
    thread.join(JOIN_S)
    assert not thread.is_alive() and raised == []
    assert done()


def driver_metrics(worker: StreamWorker) -> DriverMetrics:
    """The worker's stats as the driver has them once the worker reported."""
    metrics = DriverMetrics()
    metrics.apply(worker.stats.drain())
    return metrics


def isolated(metrics: DriverMetrics) -> float:
    return metrics.registry.get_sample_value("dmguard_isolated_records_total")


def idle_seconds(metrics: DriverMetrics) -> float:
    return metrics.registry.get_sample_value("dmguard_worker_idle_seconds_total")


BAD_RECORDS = [b"not json %d" % o for o in range(10)]  # each a dead letter at once


def test_records_redone_one_at_a_time_after_an_unclean_death_are_counted(monkeypatch, settings):
    # The predecessor had polled up to offset 3 and died: offsets below 3 + 2 x IN_FLIGHT
    # are processed one at a time, the rest in the usual way.
    until = 3 + 2 * IN_FLIGHT
    predecessor(settings, PartitionState("normal", committed=0, polled=3))
    broker = install(monkeypatch, Broker(BAD_RECORDS))
    worker = StreamWorker(settings, worker_id="t")
    run_until(worker, lambda: broker.committed == len(BAD_RECORDS))
    assert len(broker.sent) == len(BAD_RECORDS)  # one output each
    assert broker.max_records[:until] == [1] * until  # one at a time, while isolating
    assert max(broker.max_records[until:]) == IN_FLIGHT  # then as many as fit
    metrics = driver_metrics(worker)
    assert isolated(metrics) == until
    assert metrics.records_counted() == len(BAD_RECORDS)


@pytest.mark.parametrize("state", [None, PartitionState("clean")], ids=["first", "clean"])
def test_no_record_is_counted_isolated_after_a_clean_stop(monkeypatch, settings, state):
    if state is not None:
        predecessor(settings, state)
    broker = install(monkeypatch, Broker(BAD_RECORDS))
    worker = StreamWorker(settings, worker_id="t")
    run_until(worker, lambda: broker.committed == len(BAD_RECORDS))
    assert len(broker.sent) == len(BAD_RECORDS)
    assert max(broker.max_records) == IN_FLIGHT  # not one at a time
    metrics = driver_metrics(worker)
    assert isolated(metrics) == 0
    assert metrics.records_counted() == len(BAD_RECORDS)


SLACK_S = 0.15  # the worker's clock runs a little around the fake's (2 shared cores)


def test_a_worker_waiting_for_records_counts_its_idle_seconds(monkeypatch, settings):
    broker = install(monkeypatch, Broker([], idle_poll_s=0.05))  # nothing to read
    worker = StreamWorker(settings, worker_id="t")
    run_until(worker, lambda: broker.idle_s >= 0.5)
    assert broker.busy_polls == 0
    metrics = driver_metrics(worker)
    assert broker.idle_s <= idle_seconds(metrics) <= broker.idle_s + SLACK_S
    assert metrics.idle_total() == idle_seconds(metrics)  # what the autoscaler reads


def test_polls_made_while_fetches_run_are_not_idle(monkeypatch, settings):
    """A good record whose fetch takes 0.8 s; meanwhile every poll (the worker's pipeline
    is not empty, so it polls without waiting) takes 0.05 s. Only the polls made with an
    empty pipeline count."""

    def slow_fetch(job, settings, *_):
        time.sleep(0.8)
        job.error = InputError("the server is slow today", code="timeout")
        return job

    monkeypatch.setattr(actors.stream, "fetch_and_preprocess", slow_fetch)
    good = [json.dumps({"id": "r0", "url": "http://127.0.0.1/0.jpg"}).encode()]
    broker = install(monkeypatch, Broker(good, idle_poll_s=0.01, busy_poll_s=0.05))
    worker = StreamWorker(settings, worker_id="t")
    run_until(worker, lambda: broker.committed == len(good) and broker.idle_s >= 0.2)
    assert broker.busy_s >= 0.3  # the polls while the fetch ran
    metrics = driver_metrics(worker)
    assert metrics.records_counted() == len(good)
    assert broker.idle_s <= idle_seconds(metrics) <= broker.idle_s + SLACK_S
