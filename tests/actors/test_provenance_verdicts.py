"""Provenance on the worker path, without Kafka: files carrying markers go through the fetch
threads' `fetch_and_preprocess` and `StreamWorker._run_batch`, and `dmguard score`'s
`score_one` on the same files says the same (evidence, verdict, decided_by)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pytest
from kafka.structs import TopicPartition

from actors.batching import OffsetTracker
from actors.fetching import Job, fetch_and_preprocess
from actors.single import score_one
from actors.stream import StreamWorker
from services.config import WorkerSettings, fetch_policy
from services.provenance import ProvenanceSettings
from services.records import ImageRecord
from tests import markers
from tests.conftest import TINY
from tests.images import encode, jpeg, photo
from training.data.feature_log import read_feature_log

TP = TopicPartition("dmguard.images", 0)
NEVER = 1.0  # a threshold the untrained head's scores stay under: the model says "real"


@dataclass(frozen=True)
class EvidenceOnly(WorkerSettings):
    """WorkerSettings with the provenance field a serve flag would set (actors.fetching
    reads `settings.provenance` where it exists)."""

    provenance: ProvenanceSettings = field(default_factory=lambda: ProvenanceSettings("evidence"))


class FakeDelivery:
    def __init__(self) -> None:
        self.sent: list[tuple[str, dict]] = []

    def send(self, tp, offset, topic, key, value) -> None:
        self.sent.append((topic, json.loads(value)))


FILES = {
    "camera": markers.camera_jpeg,
    "a1111": markers.a1111_png,
    "xmp-ai": lambda: markers.image_with_xmp("JPEG", markers.xmp("trainedAlgorithmicMedia")),
    "after-end": lambda: markers.after_iend(encode(photo(96, 96), "PNG")),
    "plain": jpeg,
}


@pytest.fixture
def files(tmp_path):
    out = {}
    for name, make in FILES.items():
        path = tmp_path / f"{name}.img"
        path.write_bytes(make())
        out[name] = path
    return out


def make_worker(tiny_registry, tmp_path, settings_type=WorkerSettings) -> StreamWorker:
    head, _ = tiny_registry.load("v1")
    tiny_registry.promote(tiny_registry.save(head, encoder=TINY, threshold=NEVER).version)
    settings = settings_type(
        registry=str(tiny_registry.root),
        state_dir=str(tmp_path / "state"),
        fetch=fetch_policy(allow_file_urls=True),
        feature_log=str(tmp_path / "features"),
    )
    worker = StreamWorker(settings, worker_id="t")
    worker.delivery = FakeDelivery()
    worker._trackers = {TP: OffsetTracker()}
    return worker


def run(worker: StreamWorker, files) -> dict[str, dict]:
    jobs = []
    for i, (name, path) in enumerate(files.items()):
        worker._trackers[TP].add(i)
        job = Job(TP, i, 0, b"{}", ImageRecord(id=name, url=path.as_uri()))
        jobs.append(fetch_and_preprocess(job, worker.settings, worker.detector.encoder.preprocess))
    assert all(j.error is None for j in jobs)
    # the stage the worker reports in dmguard_stage_seconds{stage="provenance"}
    assert all("provenance" in j.timings for j in jobs)
    worker._run_batch(jobs, pool=None)
    return {d["id"]: d for topic, d in worker.delivery.sent if topic == "dmguard.verdicts"}


def test_declared_ai_markers_decide_and_everything_else_is_the_models(
    tiny_registry, tmp_path, files
):
    worker = make_worker(tiny_registry, tmp_path)
    out = run(worker, files)
    assert {k: (d["verdict"], d["decided_by"]) for k, d in out.items()} == {
        "camera": ("real", "model"),
        "a1111": ("generated", "provenance"),
        "xmp-ai": ("generated", "provenance"),
        "after-end": ("real", "model"),  # a marker after the image's end decides nothing
        "plain": ("real", "model"),
    }
    assert all(d["score"] < NEVER for d in out.values())  # the score, reported unchanged
    assert [e["claim"] for e in out["camera"]["evidence"]] == ["capture"]
    assert out["a1111"]["evidence"][0]["detail"]["generator"] == "AUTOMATIC1111"
    assert out["after-end"]["evidence"][0]["after_end"] is True
    assert out["plain"]["evidence"] == []

    counts = worker.stats.drain()["counts"]
    assert (
        counts[("provenance", ("generator_parameters", "ai_generated"))] == 2
    )  # one after the end
    assert counts[("provenance", ("generator_parameters", "decided"))] == 1
    assert counts[("provenance", ("iptc_source_type", "decided"))] == 1
    assert counts[("provenance", ("iptc_source_type", "capture"))] == 1
    assert counts[("provenance", ("none", "none"))] == 1
    worker.features.flush()
    rows = read_feature_log(str(tmp_path / "features")).to_pylist()
    logged = {r["id"]: json.loads(r["evidence"]) for r in rows}
    assert logged == {k: d["evidence"] for k, d in out.items()}


def test_evidence_mode_reports_and_lets_the_model_decide(tiny_registry, tmp_path, files):
    worker = make_worker(tiny_registry, tmp_path, EvidenceOnly)
    out = run(worker, files)
    assert all(d["decided_by"] == "model" and d["verdict"] == "real" for d in out.values())
    assert out["a1111"]["evidence"] and out["xmp-ai"]["evidence"]


def test_dmguard_score_agrees_with_serving(tiny_registry, tmp_path, files):
    worker = make_worker(tiny_registry, tmp_path)
    served = run(worker, files)
    policy = fetch_policy(allow_file_urls=True)
    for name, path in files.items():
        line, failed = score_one(worker.detector, str(path), policy)
        assert not failed
        scored = json.loads(line)
        for key in ("verdict", "decided_by", "evidence", "score"):
            assert scored[key] == served[name][key], (name, key)
    off, _ = score_one(worker.detector, str(files["a1111"]), policy, ProvenanceSettings("off"))
    off = json.loads(off)
    assert off["evidence"] == [] and off["decided_by"] == "model" and off["verdict"] == "real"
