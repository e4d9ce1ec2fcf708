"""StreamWorker's own fault handling, without Kafka: a model that fails on some
records, non-finite scores, and a registry that cannot be read."""

from __future__ import annotations

import numpy as np
import pytest
from kafka.structs import TopicPartition

from actors.stream import Job, StreamWorker
from services.config import WorkerSettings
from services.records import ImageRecord
from training.model.detector import Detector

TP = TopicPartition("dmguard.images", 0)
BREAKS_MODEL = 99.0  # a pixel value that makes the fake model raise
NAN_SCORE = 77.0  # a pixel value that makes it return NaN


class FlakyDetector:
    """The real detector, except on marked images: its encoder raises for any batch holding
    one, or its head gives it a NaN score."""

    def __init__(self, real: Detector) -> None:
        self.real = real
        self.calls: list[int] = []
        self._marks = np.zeros(0)

    def embed(self, pixels, *, timings=None):
        self.calls.append(len(pixels))
        self._marks = pixels[:, 0, 0, 0]
        if (self._marks == BREAKS_MODEL).any():
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return self.real.embed(pixels, timings=timings)

    def score_features(self, view_features, texts=None, *, timings=None):
        embeddings, scores = self.real.score_features(view_features, texts, timings=timings)
        scores = scores.copy()
        scores[self._marks == NAN_SCORE] = np.nan
        return embeddings, scores

    def __getattr__(self, name):
        return getattr(self.real, name)


@pytest.fixture
def worker(tiny_registry, tmp_path):
    w = StreamWorker(
        WorkerSettings(registry=str(tiny_registry.root), state_dir=str(tmp_path / "state")),
        worker_id="t",
    )
    w.dead = []
    w._emit_dead_letter = lambda job: w.dead.append((job.record.id, job.error.code, str(job.error)))
    return w


def jobs(n: int, marks: dict[int, float], size: int = 64) -> list[Job]:
    """`size`: the tiny test encoder's input side."""
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        pixels = rng.standard_normal((3, size, size)).astype(np.float32)
        if i in marks:
            pixels[0, 0, 0] = marks[i]
        out.append(Job(TP, i, 0, b"{}", ImageRecord(id=f"r{i}", url="http://h/x"), pixels))
    return out


def test_a_record_that_breaks_the_model_costs_only_itself(worker):
    real = worker.detector
    flaky = worker.detector = FlakyDetector(real)
    batch = jobs(16, {5: BREAKS_MODEL, 11: BREAKS_MODEL})
    scored, embeddings, scores = worker._score(batch)
    assert [j.record.id for j in scored] == [f"r{i}" for i in range(16) if i not in (5, 11)]
    assert [(rid, code) for rid, code, _ in worker.dead] == [
        ("r5", "internal"),
        ("r11", "internal"),
    ]
    assert "model failed: RuntimeError: CUDA error" in worker.dead[0][2]
    # the innocent records' scores are theirs: the same as scored alone
    for job, score, emb in zip(scored, scores, embeddings, strict=True):
        alone_emb, alone = real(job.pixels[None])
        assert score == pytest.approx(float(alone[0]), abs=1e-5)
        assert np.allclose(emb, alone_emb[0], atol=1e-5)
    assert len(flaky.calls) <= 2 * len(batch)  # halving, not one call per record from the start


def test_non_finite_scores_become_dead_letters_not_verdicts(worker):
    worker.detector = FlakyDetector(worker.detector)
    scored, embeddings, scores = worker._score(jobs(6, {2: NAN_SCORE}))
    assert [j.record.id for j in scored] == ["r0", "r1", "r3", "r4", "r5"]
    assert np.isfinite(scores).all() and len(embeddings) == 5
    assert [(rid, code) for rid, code, _ in worker.dead] == [("r2", "internal")]
    assert "non-finite" in worker.dead[0][2]


def test_a_model_that_fails_on_everything_dead_letters_everything_once(worker):
    worker.detector = FlakyDetector(worker.detector)
    scored, _, _ = worker._score(jobs(4, {i: BREAKS_MODEL for i in range(4)}))
    assert scored == []
    assert sorted(rid for rid, _, _ in worker.dead) == ["r0", "r1", "r2", "r3"]


def test_an_unreadable_current_keeps_the_loaded_head_and_says_so(worker, tiny_registry):
    (tiny_registry.root / "CURRENT").write_bytes(b"\xff\xfe not a version")
    worker._maybe_swap_head()  # no exception
    status = worker.status()
    assert status["head_version"] == "v1"
    assert status["registry_problem"] and "still serving v1" in status["registry_problem"]
    assert worker.stats.drain()["counts"][("registry_errors", ())] == 1
    (tiny_registry.root / "CURRENT").write_text("v1\n")
    worker._maybe_swap_head()
    assert worker.status()["registry_problem"] is None


@pytest.mark.parametrize(
    "current", [b"../../etc/passwd", b"/tmp/x", b"v1/../v1", b"", b"v7", b"v1\x00"]
)
def test_a_bad_current_never_stops_the_worker(worker, tiny_registry, current):
    (tiny_registry.root / "CURRENT").write_bytes(current)
    worker._maybe_swap_head()
    assert worker.status()["head_version"] == "v1"
    assert worker.status()["registry_problem"]


def test_a_corrupt_new_head_is_not_retried_on_every_poll(worker, tiny_registry):
    from training.model.detector import register_untrained_head

    meta = register_untrained_head(tiny_registry, "open_clip:dmguard-tiny", seed=1)
    (tiny_registry.heads / meta.version / "head.pt").write_bytes(b"PK\x03\x04 truncated")
    worker._maybe_swap_head()
    problem = worker.status()["registry_problem"]
    assert f"cannot load head {meta.version}" in problem and "still serving v1" in problem
    worker._maybe_swap_head()
    worker._maybe_swap_head()
    assert worker.stats.drain()["counts"][("registry_errors", ())] == 1  # logged once, not per poll
    assert worker.status()["head_version"] == "v1"


def test_a_restart_with_a_corrupt_current_serves_the_newest_promoted_head_that_loads(
    tiny_registry, tmp_path
):
    from training.model.detector import register_untrained_head

    v2 = register_untrained_head(tiny_registry, "open_clip:dmguard-tiny", seed=2)
    v3 = register_untrained_head(tiny_registry, "open_clip:dmguard-tiny", seed=3)
    (tiny_registry.heads / v3.version / "head.pt").write_bytes(b"")  # promoted, then corrupted
    (tiny_registry.root / "CURRENT").write_bytes(b"../" + v3.version.encode())
    w = StreamWorker(WorkerSettings(registry=str(tiny_registry.root)), worker_id="t")
    assert w.status()["head_version"] == v2.version
    assert (
        f"serving the newest promoted head that loads, {v2.version}"
        in (w.status()["registry_problem"])
    )
