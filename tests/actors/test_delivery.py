"""The commit, at least once and exactly once (actors.delivery): an offset is committed
only with, or after, the outputs below it; what the broker did not confirm is not
marked committed. Exactly-once runs against the durable embedded broker (noida-db,
which honours transactions) with real Kafka clients."""

from __future__ import annotations

import pytest
from kafka.errors import KafkaTimeoutError
from kafka.structs import TopicPartition

from actors.batching import OffsetTracker
from actors.crash_guard import CrashGuard, StateStore
from actors.delivery import (
    AtLeastOnce,
    ClientsBroken,
    ExactlyOnce,
    Fenced,
    transactional_id,
)
from actors.stream import StreamWorker
from services.config import KafkaSettings, Topics, WorkerSettings

TP = TopicPartition("dmguard.images", 0)


class FakeProducer:
    def __init__(self, *, flush_times_out: bool = False) -> None:
        self.flushed = 0
        self.flush_times_out = flush_times_out

    def flush(self, timeout=None) -> None:
        self.flushed += 1
        if self.flush_times_out:
            raise KafkaTimeoutError("Timeout waiting for future")


class FakeConsumer:
    def __init__(self) -> None:
        self.commits: list[dict] = []

    def commit(self, offsets) -> None:
        self.commits.append({tp: om.offset for tp, om in offsets.items()})


@pytest.fixture
def worker(tiny_registry, tmp_path):
    """A worker whose partition 0 has seen offsets 0-4, with 2 still in flight."""
    w = StreamWorker(WorkerSettings(registry=str(tiny_registry.root)), worker_id="t")
    w._trackers = {TP: OffsetTracker()}
    w.guard = CrashGuard(StateStore(tmp_path, "g"), TP.topic, margin=4)
    w.guard.start(0, 0)
    for offset in range(5):
        w._trackers[TP].add(offset)
    for offset in (0, 1, 3):
        w._trackers[TP].done(offset)
    return w


def at_least_once(worker, producer: FakeProducer) -> FakeConsumer:
    consumer = FakeConsumer()
    worker.delivery = AtLeastOnce(producer, consumer, timeout_s=1)
    return consumer


def test_the_commit_stops_below_the_oldest_record_still_in_flight(worker):
    producer = FakeProducer()
    consumer = at_least_once(worker, producer)
    worker._commit()
    assert producer.flushed == 1  # outputs acknowledged before the commit
    assert consumer.commits == [{TP: 2}]
    worker._trackers[TP].done(2)
    worker._trackers[TP].done(4)
    worker._commit()
    assert consumer.commits[-1] == {TP: 5}


def test_a_refused_output_means_no_commit(worker):
    consumer = at_least_once(worker, FakeProducer())
    worker.delivery._on_error(RuntimeError("MessageSizeTooLargeError"))  # the send's errback
    with pytest.raises(ClientsBroken, match="refused an output"):
        worker._commit()
    assert consumer.commits == []  # the records come back to the rebuilt clients


def test_a_flush_the_broker_does_not_confirm_is_tried_again_at_the_next_commit(worker):
    producer = FakeProducer(flush_times_out=True)
    consumer = at_least_once(worker, producer)
    worker._commit()  # the broker is away: no exception, no commit, counted
    assert consumer.commits == []
    assert worker.stats.drain()["counts"][("broker_errors", ("flush",))] == 1
    producer.flush_times_out = False
    worker._commit()
    assert consumer.commits == [{TP: 2}]


def test_the_transactional_id_is_stable_per_partition_set():
    tid = transactional_id("dmguard", "dmguard.images", (2, 0))
    assert tid == transactional_id("dmguard", "dmguard.images", [0, 2])
    assert tid != transactional_id("dmguard", "dmguard.images", (0,))
    assert tid != transactional_id("other", "dmguard.images", (0, 2))


# ---------------------------------------------------------- exactly once, real broker
@pytest.fixture(scope="module")
def noida(tmp_path_factory):
    from services.broker import EmbeddedBroker
    from services.kafka_io import ensure_topics

    with EmbeddedBroker(durable_dir=tmp_path_factory.mktemp("noida")) as broker:
        kafka = KafkaSettings(bootstrap_servers=broker.bootstrap, group_id="eos-test")
        ensure_topics(kafka, Topics(), partitions=1)
        yield kafka


def exactly_once(kafka: KafkaSettings, tid: str) -> ExactlyOnce:
    from services.kafka_io import make_consumer, make_producer

    consumer = make_consumer(kafka, isolation_level="read_committed")
    return ExactlyOnce(make_producer(kafka, transactional_id=tid), consumer, kafka.group_id, 10)


def committed_outputs(kafka: KafkaSettings) -> list[bytes]:
    from services.kafka_io import assign_all, make_consumer, read_values

    reader = make_consumer(kafka, group=False, isolation_level="read_committed")
    assign_all(reader, Topics().verdicts)
    try:
        return list(read_values(reader, idle_timeout_s=1.5))
    finally:
        reader.close()


def committed_offset(kafka: KafkaSettings) -> int | None:
    from services.kafka_io import make_consumer

    consumer = make_consumer(kafka)
    try:
        return consumer.committed(TP)
    finally:
        consumer.close()


@pytest.mark.broker
def test_exactly_once_commits_outputs_with_their_offsets_in_input_order(noida):
    delivery = exactly_once(noida, "eos-order")
    try:
        for offset in (3, 0, 1):  # finished out of order; 2 is still in flight
            delivery.send(TP, offset, Topics().verdicts, None, f"out-{offset}".encode())
        delivery.commit({TP: 2})
        assert committed_outputs(noida) == [b"out-0", b"out-1"]  # not 3: 2 comes first
        assert committed_offset(noida) == 2
        assert delivery.held == 1
        delivery.send(TP, 2, Topics().verdicts, None, b"out-2")
        delivery.commit({TP: 4})
        assert committed_outputs(noida) == [b"out-0", b"out-1", b"out-2", b"out-3"]
        assert committed_offset(noida) == 4
    finally:
        delivery.close(timeout_s=5)


@pytest.mark.broker
def test_a_restarted_worker_fences_its_predecessor_and_aborts_its_transaction(noida):
    old = exactly_once(noida, "eos-fence")
    new = None
    try:
        before = committed_outputs(noida)
        # The old worker was inside a commit when it stalled: an output already sent.
        old.producer.send(Topics().verdicts, value=b"zombie-output")
        old.producer.flush()
        new = exactly_once(noida, "eos-fence")  # same partitions, same id: fences `old`
        assert committed_outputs(noida) == before  # the open transaction was aborted
        old.send(TP, 10, Topics().verdicts, None, b"zombie-commit")
        with pytest.raises(Fenced):
            old.commit({TP: 11})
        assert b"zombie-commit" not in committed_outputs(noida)
    finally:
        old.close(timeout_s=0)
        if new is not None:
            new.close(timeout_s=5)
