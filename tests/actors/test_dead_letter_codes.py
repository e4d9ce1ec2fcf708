"""Every dead-letter code, through StreamWorker without Kafka: one input record that
fails with it gives exactly one output record (a dead letter with that code, on the
dead-letter topic) and exactly one increment of `dmguard_dead_letters_total{code}` on
the driver's registry. The failures are real where they can be: the records are
parsed by the worker and fetched and decoded from a local HTTP server (`image_server`),
the timeout included; only `internal` needs faults injected."""

from __future__ import annotations

import json
from concurrent.futures import Future

import numpy as np
import pytest
from kafka.structs import TopicPartition

import actors.fetching
from actors.batching import OffsetTracker
from actors.stream import StreamWorker
from services.config import Topics, WorkerSettings
from services.errors import DEAD_LETTER_CODES
from services.fetch import FetchPolicy
from services.metrics import DriverMetrics
from tests.actors.fakes import Message
from tests.conftest import ImageServer
from tests.images import jpeg, png_bomb

TP = TopicPartition("dmguard.images", 0)
OFFSET = 7
METRIC = "dmguard_dead_letters_total"


class FakeDelivery:
    """Where `actors.delivery` would take the outputs: every one kept, in order."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes | None, dict]] = []

    def send(self, tp, offset, topic, key, value) -> None:
        self.sent.append((topic, key, json.loads(value)))


class SyncPool:
    """The fetch pool, run in the caller's thread: the result is there at once."""

    def submit(self, fn, *args) -> Future:
        future: Future = Future()
        future.set_result(fn(*args))
        return future


@pytest.fixture(scope="module")
def image_server():
    """One local server for the whole module (each one takes half a second to stop)."""
    server = ImageServer()
    yield server
    server.close()


@pytest.fixture
def worker(tiny_registry, tmp_path):
    policy = FetchPolicy(allowed_networks=("127.0.0.1/32",), total_timeout_s=0.6)
    w = StreamWorker(
        WorkerSettings(
            registry=str(tiny_registry.root), state_dir=str(tmp_path / "state"), fetch=policy
        ),
        worker_id="t",
    )
    w.delivery = FakeDelivery()
    w._trackers = {TP: OffsetTracker()}
    return w


def record(rid: str, url: str) -> bytes:
    return json.dumps({"id": rid, "url": url}).encode()


def process(worker: StreamWorker, value: bytes | None) -> None:
    """One polled record through steps 2-5: parse, fetch + decode, batch, score."""
    worker._accept(Message(TP.topic, TP.partition, OFFSET, 0, value), SyncPool())
    worker._collect(block=False)
    assert worker._in_flight == 0
    if len(worker._batcher):
        worker._run_batch(worker._batcher.take(0.0), SyncPool())


def dead_letter_counts(worker: StreamWorker) -> tuple[DriverMetrics, dict[str, float]]:
    """The worker's stats, reported to a driver as `serve` does: every code's count."""
    metrics = DriverMetrics()
    metrics.apply(worker.stats.drain())
    counts = {c: metrics.registry.get_sample_value(METRIC, {"code": c}) for c in DEAD_LETTER_CODES}
    return metrics, counts


def assert_one_dead_letter(worker: StreamWorker, code: str, value: bytes | None) -> dict:
    """Exactly one output, a dead letter with `code`; exactly one count, under `code`."""
    sent = worker.delivery.sent
    assert [(topic, out["error"]["code"]) for topic, _, out in sent] == [
        (Topics().dead_letter, code)
    ], [(topic, out.get("error")) for topic, _, out in sent]
    out = sent[0][2]
    assert out["source"] == {"topic": TP.topic, "partition": TP.partition, "offset": OFFSET}
    if value is not None:
        assert out["record_bytes"] == len(value)
    metrics, counts = dead_letter_counts(worker)
    assert counts == {c: (1.0 if c == code else 0.0) for c in DEAD_LETTER_CODES}
    outcomes = {
        o: metrics.registry.get_sample_value("dmguard_records_total", {"outcome": o})
        for o in ("verdict", "dead_letter")
    }
    assert outcomes == {"verdict": 0.0, "dead_letter": 1.0}
    assert worker._trackers[TP].committable() == OFFSET + 1  # its offset is done, once
    return out


# code -> (path on the image server, or a URL; what the server answers there)
FETCHED = {
    "bad_url": ("ftp://127.0.0.1/a.jpg", None),
    "blocked_url": ("http://10.0.0.1/a.jpg", None),  # private and not allowed
    "fetch_failed": ("/status?code=404", None),
    "timeout": ("/slow-status", None),  # drips its status line past the deadline
    "too_large": ("/bomb.png", png_bomb()),  # 100000 x 100000 in its header
    "not_an_image": ("/page.html", b"<!doctype html><html><body>hello</body></html>"),
    "decode_failed": ("/broken.png", b"\x89PNG\r\n\x1a\n" + b"garbage" * 10),
}


def test_the_codes_under_test_are_every_code_there_is():
    assert set(FETCHED) | {"bad_record", "internal"} == set(DEAD_LETTER_CODES)
    assert "timeout" in DEAD_LETTER_CODES


def test_every_code_is_exposed_at_zero_before_any_dead_letter():
    """A dashboard or alert on a code sees 0, not a missing series, until the first one."""
    metrics = DriverMetrics()
    text = metrics.render().decode()
    for code in DEAD_LETTER_CODES:
        assert metrics.registry.get_sample_value(METRIC, {"code": code}) == 0.0
        assert f'{METRIC}{{code="{code}"}} 0.0' in text


@pytest.mark.parametrize("code", sorted(FETCHED))
def test_a_record_that_fails_to_fetch_or_decode_gives_one_dead_letter_and_one_count(
    worker, image_server, code
):
    where, body = FETCHED[code]
    if body is not None:
        image_server.routes[where] = body
    url = where if "://" in where else image_server.url(where)
    value = record(f"r-{code}", url)
    process(worker, value)
    out = assert_one_dead_letter(worker, code, value)
    assert out["id"] == f"r-{code}"
    assert out["record"] == value.decode()


@pytest.mark.parametrize(
    "value",
    [b"not json", b"[1, 2]", b'{"id": "r"}', b'{"id": "r", "url": NaN}', None],
    ids=["not-json", "not-an-object", "no-url", "nan", "tombstone"],
)
def test_a_bad_record_gives_one_dead_letter_and_one_count(worker, value):
    process(worker, value)
    assert_one_dead_letter(worker, "bad_record", value)


def test_an_unexpected_error_while_fetching_is_internal(worker, monkeypatch):
    def broken_fetch(url, policy):
        raise RuntimeError("a library surprise")

    monkeypatch.setattr(actors.fetching, "fetch_bytes", broken_fetch)
    value = record("r-internal", "http://127.0.0.1/a.jpg")
    process(worker, value)
    out = assert_one_dead_letter(worker, "internal", value)
    assert "RuntimeError: a library surprise" in out["error"]["message"]


class BrokenModel:
    """The detector, except that it raises, or scores NaN."""

    def __init__(self, real, *, nan: bool) -> None:
        self.real, self.nan = real, nan

    def embed(self, pixels, *, timings=None):
        if not self.nan:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return self.real.embed(pixels, timings=timings)

    def score_features(self, view_features, texts=None, *, timings=None):
        embeddings, scores = self.real.score_features(view_features, texts, timings=timings)
        return embeddings, np.full_like(scores, np.nan)

    def __getattr__(self, name):
        return getattr(self.real, name)


@pytest.mark.parametrize("nan", [False, True], ids=["model-raises", "nan-score"])
def test_a_record_the_model_fails_on_is_internal(worker, image_server, monkeypatch, nan):
    image_server.routes["/ok.jpg"] = jpeg(64, 64)
    worker.detector = BrokenModel(worker.detector, nan=nan)
    value = record("r-model", image_server.url("/ok.jpg"))
    process(worker, value)
    assert_one_dead_letter(worker, "internal", value)


def test_a_poisoned_record_is_internal_and_not_processed(worker, tmp_path, monkeypatch):
    """The crash-loop breaker's verdict on an offset: dead-lettered without parsing it."""

    class PoisonGuard:
        def poison_reason(self, partition, offset):
            return "killed the worker twice while alone" if offset == OFFSET else None

    def no_fetch(*args):
        raise AssertionError("a poisoned record must not be fetched")

    monkeypatch.setattr(actors.fetching, "fetch_bytes", no_fetch)
    worker.guard = PoisonGuard()
    value = record("r-poison", "http://127.0.0.1/a.jpg")
    process(worker, value)
    out = assert_one_dead_letter(worker, "internal", value)
    assert "killed the worker twice" in out["error"]["message"]


def test_a_good_record_gives_one_verdict_and_no_dead_letter(worker, image_server):
    """The control: the same path with a record that is fine counts no dead letter."""
    image_server.routes["/ok.jpg"] = jpeg(64, 64)
    process(worker, record("r-ok", image_server.url("/ok.jpg")))
    assert [topic for topic, _, _ in worker.delivery.sent] == [Topics().verdicts]
    _, counts = dead_letter_counts(worker)
    assert counts == {c: 0.0 for c in DEAD_LETTER_CODES}
