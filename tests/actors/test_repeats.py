"""Repeated uploads (actors.repeats): the feature cache by content hash and shared fetches.

The worker tests fetch from a real local HTTP server through the worker's own fetch pool;
Kafka is replaced by the fake delivery of test_stream_verdicts. What they pin down: a hit
gives the verdict an uncached worker gives (the reference), a head swap changes it as it
changes the uncached one, two records of one URL in flight fetch it once, and the cache
stays within its bound."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from kafka.structs import TopicPartition

from actors.batching import OffsetTracker
from actors.repeats import ENTRY_OVERHEAD, Cached, FeatureCache
from actors.stream import StreamWorker
from services.config import WorkerSettings, fetch_policy
from services.metrics import WorkerStats
from tests.actors.fakes import Message
from tests.actors.test_stream_verdicts import FakeDelivery, verdicts
from tests.images import jpeg

TP = TopicPartition("dmguard.images", 0)


def entry(n_floats: int, fill: float = 0.0) -> Cached:
    return Cached(np.full((1, n_floats), fill, np.float32), cost_s=0.01, size=1000)


def test_the_cache_keeps_the_most_recently_used_within_its_bound():
    one = entry(256).features.nbytes + ENTRY_OVERHEAD
    cache = FeatureCache(max_bytes=3 * one)
    for i in range(3):
        cache.put("sig", bytes([i]), entry(256, i))
    assert cache.get("sig", bytes([0])) is not None  # 0 is now the most recent
    cache.put("sig", b"\x03", entry(256, 3))  # evicts 1, the least recently used
    assert cache.get("sig", b"\x01") is None
    assert [cache.get("sig", bytes([i])).features[0, 0] for i in (0, 2, 3)] == [0, 2, 3]
    assert cache.bytes == 3 * one and len(cache) == 3
    assert cache.get("other encoder", bytes([0])) is None  # keyed by the encoder's signature
    cache.put("sig", b"big", entry(10_000))  # larger than the whole bound: not stored
    assert cache.get("sig", b"big") is None and cache.bytes <= 3 * one


def test_a_stored_entry_is_a_copy():
    cache = FeatureCache(max_bytes=1 << 20)
    mine = entry(8, 1.0)
    cache.put("sig", b"k", mine)
    mine.features[:] = 9.0
    assert cache.get("sig", b"k").features[0, 0] == 1.0


def make_worker(registry, tmp_path, cache_mb: float) -> StreamWorker:
    settings = WorkerSettings(
        registry=str(registry.root),
        state_dir=str(tmp_path / f"state-{cache_mb}"),
        fetch=fetch_policy(allow_network=("127.0.0.1/32",)),
        cache_mb=cache_mb,
        max_batch=8,
        max_wait_ms=1,
    )
    w = StreamWorker(settings, worker_id="t", stats=WorkerStats())
    w.delivery = FakeDelivery()
    w._trackers = {TP: OffsetTracker()}
    return w


def run(worker: StreamWorker, urls: dict[str, str], first: int = 0) -> dict[str, dict]:
    """Each (id -> url) through accept, the fetch pool, collect and one batch; the verdicts."""
    with ThreadPoolExecutor(2) as pool:
        for i, (rid, url) in enumerate(urls.items(), start=first):
            worker._trackers[TP].add(i)
            value = f'{{"id": "{rid}", "url": "{url}"}}'.encode()
            worker._accept(Message(TP.topic, 0, i, int(time.time() * 1000), value), pool)
        while worker._in_flight:
            worker._collect(block=True)
        worker._run_batch(worker._batcher.take(time.monotonic()), pool)
    return {rid: v for rid, v in verdicts(worker).items() if rid in urls}


def counts(worker: StreamWorker, name: str) -> dict[tuple[str, ...], float]:
    return {labels: n for (key, labels), n in worker.stats.drain()["counts"].items() if key == name}


@pytest.fixture
def images(image_server):
    same = jpeg(seed=3)
    image_server.routes.update({"/a.jpg": same, "/b.jpg": same, "/c.jpg": same})
    image_server.routes["/other.jpg"] = jpeg(seed=4)
    return {name: image_server.url(f"/{name}.jpg") for name in ("a", "b", "c", "other")}


def test_a_hit_is_the_uncached_verdict_and_a_head_swap_changes_it(
    images, image_server, tiny_registry, tmp_path
):
    cached = make_worker(tiny_registry, tmp_path, cache_mb=16)
    reference = make_worker(tiny_registry, tmp_path, cache_mb=0)
    first = run(cached, {"r0": images["a"]})
    again = run(cached, {"r1": images["b"]}, first=1)  # same bytes, another URL
    assert counts(cached, "cache_lookups") == {("miss",): 1, ("hit",): 1}
    plain = run(reference, {"r1": images["b"]}, first=1)
    assert again["r1"]["score"] == first["r0"]["score"] == plain["r1"]["score"]
    assert again["r1"]["url"] == images["b"] and again["r1"]["id"] == "r1"

    # A new head on the same encoder: the cached features, scored by the new head.
    head, _ = tiny_registry.load("v1")
    with torch.no_grad():
        for p in head.parameters():
            p.add_(0.5)
    meta = tiny_registry.save(head, encoder=cached.detector.meta.encoder, threshold=0.5)
    tiny_registry.promote(meta.version)
    for w in (cached, reference):
        w._maybe_swap_head()
        assert w.detector.version == meta.version
    after = run(cached, {"r2": images["c"]}, first=2)
    assert counts(cached, "cache_lookups") == {("hit",): 1}
    plain_after = run(reference, {"r2": images["c"]}, first=2)
    assert after["r2"]["score"] == plain_after["r2"]["score"] != first["r0"]["score"]
    assert after["r2"]["head_version"] == meta.version


def test_records_of_one_url_in_flight_share_its_fetch(
    images, image_server, tiny_registry, tmp_path
):
    worker = make_worker(tiny_registry, tmp_path, cache_mb=16)
    image_server.hits.clear()
    out = run(worker, {"s0": images["other"], "s1": images["other"], "s2": images["other"]})
    assert sorted(out) == ["s0", "s1", "s2"]
    assert len({v["score"] for v in out.values()}) == 1
    assert [h for h in image_server.hits if h.startswith("/other")] == ["/other.jpg"]
    assert counts(worker, "cache_lookups") == {("shared_fetch",): 2, ("miss",): 1}
