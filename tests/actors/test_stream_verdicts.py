"""The verdicts StreamWorker writes, without Kafka: a head's calibration and abstain
band ("uncertain") from the registry to the verdict record and the metrics."""

from __future__ import annotations

import json

import numpy as np
import pytest
from kafka.structs import TopicPartition

from actors.batching import OffsetTracker
from actors.stream import Job, StreamWorker
from services.config import WorkerSettings
from services.records import ImageRecord
from tests.conftest import TINY
from training.model.calibration import Calibration

TP = TopicPartition("dmguard.images", 0)
CAL = Calibration(a=0.6, b=-0.4)


class FakeDelivery:
    """Where `actors.delivery` would take the outputs: kept, in order."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, dict]] = []

    def send(self, tp, offset, topic, key, value) -> None:
        self.sent.append((topic, json.loads(value)))


@pytest.fixture
def worker(tiny_registry, tmp_path):
    w = StreamWorker(
        WorkerSettings(registry=str(tiny_registry.root), state_dir=str(tmp_path / "state")),
        worker_id="t",
    )
    w.delivery = FakeDelivery()
    w._trackers = {TP: OffsetTracker()}
    return w


def make_jobs(worker: StreamWorker, n: int, first: int = 0) -> list[Job]:
    rng = np.random.default_rng(first)
    out = []
    for i in range(first, first + n):
        pixels = rng.standard_normal((3, 64, 64)).astype(np.float32)  # the tiny encoder's side
        worker._trackers[TP].add(i)
        out.append(Job(TP, i, 0, b"{}", ImageRecord(id=f"r{i}", url="http://h/x"), pixels))
    return out


def verdicts(worker: StreamWorker) -> dict[str, dict]:
    return {d["id"]: d for topic, d in worker.delivery.sent if topic == "dmguard.verdicts"}


def test_a_head_without_calibration_writes_two_verdicts_and_null_probability(worker):
    worker._run_batch(make_jobs(worker, 6), pool=None)
    out = verdicts(worker)
    assert len(out) == 6
    for d in out.values():
        assert d["probability"] is None and d["uncertain_from"] is None
        assert d["verdict"] == ("generated" if d["score"] >= d["threshold"] else "real")


def test_calibration_and_abstain_band_give_three_verdicts(worker, tiny_registry, monkeypatch):
    # The untrained head's scores on these images, to place the band between them.
    jobs = make_jobs(worker, 12)
    _, scores = worker.detector(np.stack([j.pixels for j in jobs]))
    ranked = np.sort(scores.astype(np.float64))
    assert len(np.unique(ranked)) == len(ranked)
    uncertain_from = float((ranked[3] + ranked[4]) / 2)  # 4 real below the band
    threshold = float((ranked[7] + ranked[8]) / 2)  # 4 uncertain inside, 4 generated above
    head, _ = tiny_registry.load("v1")
    meta = tiny_registry.save(
        head, encoder=TINY, threshold=threshold, calibration=CAL, uncertain_from=uncertain_from
    )
    tiny_registry.promote(meta.version)
    loads = []
    real_from_dict = Calibration.from_dict
    monkeypatch.setattr(
        Calibration, "from_dict", staticmethod(lambda d: loads.append(d) or real_from_dict(d))
    )
    worker._maybe_swap_head()  # the running worker picks up the calibrated head
    assert worker.status()["head_version"] == meta.version
    assert worker.detector.calibration == CAL
    assert loads  # read when the head was loaded (checked by the registry, built by Detector)
    n_loads = len(loads)

    worker._run_batch(jobs, pool=None)
    worker._run_batch(make_jobs(worker, 3, first=100), pool=None)
    assert len(loads) == n_loads  # not per batch, not per record
    out = verdicts(worker)
    assert len(out) == 15
    by_verdict: dict[str, int] = {}
    for job, score in zip(jobs, scores, strict=True):
        d = out[job.record.id]
        expected = (
            "generated"
            if score >= threshold
            else "uncertain"
            if score >= uncertain_from
            else "real"
        )
        assert d["verdict"] == expected
        assert d["score"] == pytest.approx(float(score), abs=1e-6)  # still the raw score
        assert d["threshold"] == threshold and d["uncertain_from"] == uncertain_from
        assert d["probability"] == pytest.approx(float(CAL(np.float64(score))), abs=1e-6)
        assert d["head_version"] == meta.version
        by_verdict[d["verdict"]] = by_verdict.get(d["verdict"], 0) + 1
    assert by_verdict == {"real": 4, "uncertain": 4, "generated": 4}
    counts = worker.stats.drain()["counts"]
    total = {v: counts.get(("verdicts", (v,)), 0) for v in ("real", "uncertain", "generated")}
    assert total["uncertain"] >= 4 and sum(total.values()) == 15
    assert total == {
        v: sum(1 for d in out.values() if d["verdict"] == v)
        for v in ("real", "uncertain", "generated")
    }
