"""At-least-once at the commit: an offset is committed only after the outputs
below it were acknowledged; a refused output means no commit at all."""

from __future__ import annotations

import pytest
from kafka.structs import TopicPartition

from actors.batching import OffsetTracker
from actors.crash_guard import CrashGuard, StateStore
from actors.stream import ProduceError, StreamWorker
from services.config import WorkerSettings

TP = TopicPartition("dmguard.images", 0)


class FakeProducer:
    def __init__(self, refuse: bool) -> None:
        self.refuse, self.flushed = refuse, 0

    def flush(self) -> None:
        self.flushed += 1


class FakeConsumer:
    def __init__(self) -> None:
        self.commits: list[dict] = []

    def commit(self, offsets) -> None:
        self.commits.append({tp: om.offset for tp, om in offsets.items()})


@pytest.fixture
def worker(tiny_registry, tmp_path):
    w = StreamWorker(WorkerSettings(registry=str(tiny_registry.root)), worker_id="t")
    w.consumer = FakeConsumer()
    w._trackers = {TP: OffsetTracker()}
    w.guard = CrashGuard(StateStore(tmp_path, "g"), TP.topic, margin=4)
    w.guard.start(0, 0)
    for offset in range(5):
        w._trackers[TP].add(offset)
    for offset in (0, 1, 3):  # 2 is still in flight
        w._trackers[TP].done(offset)
    return w


def test_the_commit_stops_below_the_oldest_record_still_in_flight(worker):
    worker.producer = FakeProducer(refuse=False)
    worker._commit()
    assert worker.producer.flushed == 1  # outputs acknowledged before the commit
    assert worker.consumer.commits == [{TP: 2}]
    worker._trackers[TP].done(2)
    worker._trackers[TP].done(4)
    worker._commit()
    assert worker.consumer.commits[-1] == {TP: 5}


def test_a_refused_output_means_no_commit(worker):
    worker.producer = FakeProducer(refuse=True)
    worker._on_produce_error(RuntimeError("MessageSizeTooLargeError"))  # the send's errback
    with pytest.raises(ProduceError, match="refused an output"):
        worker._commit()
    assert worker.consumer.commits == []  # the records come back to the restarted worker
