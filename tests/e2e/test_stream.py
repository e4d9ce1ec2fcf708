"""End to end: embedded broker, `dmguard serve` with 2 Ray workers, a local
HTTP server of test images, Kafka clients reading the outputs, and scrapes of
the real /metrics.

The tests that kill, stop or restart the service start their own broker and
service; the others share one (`shared_stream`, tests/e2e/conftest.py), keep to
their own ids and compare metrics as deltas. They come last in the file, so the
shared service is not idling beside the others."""

from __future__ import annotations

import json
import os
import signal
from collections import Counter

import numpy as np
import pytest
from kafka import KafkaConsumer
from kafka.structs import TopicPartition

from services.config import WorkerSettings
from services.poll import wait_until
from tests.e2e.harness import (
    MAX_BYTES,
    OutputReader,
    Service,
    counter,
    duplicates,
    good_images,
    good_stream,
    only,
    output_key,
    produce,
    read_verdicts,
    wait_accounted,
)
from tests.images import encode, jpeg, photo, png_bomb
from training.data.feature_log import read_feature_log

pytestmark = [pytest.mark.slow, pytest.mark.broker, pytest.mark.ray]

# Offline vs served, same encoder and head, one image at a time vs the worker's batches.
# Measured on the tiny model (CPU, 1 thread): batch size moves embeddings by <= 9e-8 and
# scores by <= 6e-8; verdict scores are rounded to 6 decimals (services.records.Verdict),
# which adds up to 5e-7. The tiny head's scores of different images differ by ~1e-4
# (spread ~7e-4 over 245 images), embeddings by > 2e-2 (max abs), so a record given
# another record's score or embedding is far outside these tolerances.
SCORE_TOL = 1e-6
EMBEDDING_TOL = 1e-5


# Every kind of good image, each record its own picture (seeded by its index).
IMAGE_KINDS = (
    ("jpg", lambda s: jpeg(400, 300, seed=s)),
    ("jpg", lambda s: jpeg(1800, 1200, seed=s)),
    ("png", lambda s: encode(photo(200, 500, seed=s), "PNG")),
    ("png", lambda s: encode(photo(400, 300, seed=s).convert("RGBA"), "PNG")),
    ("webp", lambda s: encode(photo(300, 300, seed=s), "WEBP")),
    ("gif", lambda s: encode(photo(400, 300, seed=s).convert("P"), "GIF")),
    ("jpg", lambda s: encode(photo(400, 300, seed=s).convert("CMYK"), "JPEG")),
    ("jpg", lambda s: encode(photo(400, 300, seed=s).convert("L"), "JPEG")),
)


def mixed_stream(
    server, prefix: str, n_good: int = 245
) -> tuple[list[bytes], dict[str, str], dict[str, dict]]:
    """300 records: `n_good` distinct good images plus every kind of failure; returns the
    values, the outcome each key must get, and for each good id what was sent
    ({"url", "meta"})."""
    server.routes.update(good_images())
    truncated = jpeg(400, 300, seed=9)
    server.routes["/bad/truncated.jpg"] = truncated[: len(truncated) // 2]
    server.routes["/bad/page.html"] = b"<html><body>not an image</body></html>"
    server.routes["/bad/huge.jpg"] = b"\xff\xd8\xff" + os.urandom(MAX_BYTES + 1000)
    server.routes["/bad/bomb.png"] = png_bomb()
    values: list[bytes] = []
    expected: dict[str, str] = {}
    sent: dict[str, dict] = {}

    def add(rid: str, url: str, outcome: str) -> None:
        meta = {"n": len(values), "for": rid}
        values.append(json.dumps({"id": rid, "url": url, "meta": meta}).encode())
        expected[rid] = outcome
        sent[rid] = {"url": url, "meta": meta}

    for i in range(n_good):
        ext, make = IMAGE_KINDS[i % len(IMAGE_KINDS)]
        path = f"/img/{prefix}-{i}.{ext}"
        server.routes[path] = make(1000 + i)
        add(f"{prefix}-good-{i}", server.url(path), "verdict")
    for i in range(10):  # not JSON: only the original text identifies them
        raw = f'{{"id": "{prefix}-broken-{i}", "url": '
        values.append(raw.encode())
        expected[f"raw:{raw}"] = "bad_record"
    for i in range(5):
        values.append(json.dumps({"id": f"{prefix}-nourl-{i}"}).encode())
        expected[f"{prefix}-nourl-{i}"] = "bad_record"
    for i in range(5):
        raw = json.dumps({"url": server.url("/img/photo.jpg"), "n": i, "test": prefix})
        values.append(raw.encode())
        expected[f"raw:{raw}"] = "bad_record"
    for i in range(5):
        add(f"{prefix}-missing-{i}", server.url(f"/nope/{i}.jpg"), "fetch_failed")
    for i in range(5):
        add(f"{prefix}-html-{i}", server.url(f"/bad/page.html?{i}"), "not_an_image")
    for i in range(5):
        add(f"{prefix}-trunc-{i}", server.url(f"/bad/truncated.jpg?{i}"), "decode_failed")
    for i in range(5):
        add(f"{prefix}-huge-{i}", server.url(f"/bad/huge.jpg?{i}"), "too_large")
    for i in range(5):
        add(f"{prefix}-bomb-{i}", server.url(f"/bad/bomb.png?{i}"), "too_large")
    for i in range(5):  # loopback, but outside the one network the service allows
        add(f"{prefix}-private-{i}", f"http://127.0.0.2:{server.port}/img/photo.jpg", "blocked_url")
    for i in range(5):
        add(f"{prefix}-scheme-{i}", f"gopher://example.com/{i}", "bad_url")
    assert len(values) == 300
    good = {rid: s for rid, s in sent.items() if expected[rid] == "verdict"}
    return values, expected, good


def outcomes(out) -> dict[str, str]:
    got = {}
    for v in out.verdicts:
        got[output_key(v)] = "verdict"
    for d in out.dead_letters:
        got[output_key(d)] = d["error"]["code"]
    return got


def test_sigkill_of_a_worker_loses_no_record(
    broker, image_server, tiny_registry, tmp_path, record_property
):
    values, expected = good_stream(image_server, 300, "crash")
    delay_s, fetch_threads, max_batch = 0.1, 2, 4
    image_server.delay_s = delay_s  # slow fetches: the kill lands mid-stream
    service = Service(
        broker.bootstrap,
        tiny_registry.root,
        tmp_path / "serve.log",
        "--fetch-threads",
        str(fetch_threads),
        "--max-batch",
        str(max_batch),
    )
    # What the killed worker can have output without committing it, and so outputs again
    # once Ray restarts it from the group's committed offsets (actors.stream):
    #  * records polled but not finished at its last commit: the committed offset is the
    #    lowest one still pending, and polling stops at `in_flight_cap` (4 x --max-batch)
    #    fetches in flight, plus at most one open batch (--max-batch) collected but not
    #    yet scored;
    #  * records finished since that commit: commits come every `commit_interval_s`, and
    #    the worker cannot finish more than its fetch threads fetch, each fetch taking
    #    at least the server's delay.
    # The surviving worker reads other partitions and is not interrupted: no duplicates.
    settings = WorkerSettings(max_batch=max_batch, fetch_threads=fetch_threads)
    max_duplicates = (
        settings.in_flight_cap
        + settings.max_batch
        + int(settings.fetch_threads / delay_s * settings.commit_interval_s)
    )  # 16 + 4 + 20 = 40
    reader = None
    try:
        service.wait_ready()
        pids = service.worker_pids()
        assert len(pids) == 2
        produce(broker.bootstrap, values)
        reader = OutputReader(broker.bootstrap)
        # Late enough that a worker restarted from offset 0 would redo more than the bound.
        read_verdicts(reader, 120, timeout=120)
        os.kill(pids[0], signal.SIGKILL)
        killed_at = len(reader.out.verdicts)
        out = wait_accounted(reader, expected, timeout=180)
        seen = {v["id"] for v in out.verdicts}
        assert killed_at < 300, "the kill came after the stream had finished"
        assert expected <= seen, f"lost {len(expected - seen)} records:\n{service.tail()}"
        assert seen == expected
        assert not out.dead_letters
        dups = duplicates(out)
        record_property("duplicates_after_sigkill", dups)
        assert dups <= max_duplicates, (
            f"SIGKILL after {killed_at}/300 verdicts: {dups} duplicates, more than the "
            f"{max_duplicates} the killed worker can have had uncommitted"
        )
        # Ray brought the killed worker back: two workers report again, none with the dead pid.
        now = wait_until(
            service.worker_pids,
            60,
            interval_s=1,
            what="the killed worker to come back",
            done=lambda now: len(now) == 2 and pids[0] not in now,
        )
        assert len(now) == 2 and pids[0] not in now
        assert service.stop() == 0
    finally:
        if reader:
            reader.close()
        service.kill()


def committed_total(bootstrap: str) -> int:
    """Sum over input partitions of the group's committed offsets (without joining the group)."""
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap, group_id="dmguard", enable_auto_commit=False
    )
    try:
        parts = consumer.partitions_for_topic("dmguard.images")
        return sum(consumer.committed(TopicPartition("dmguard.images", p)) or 0 for p in parts)
    finally:
        consumer.close(autocommit=False)


def test_sigterm_drains_and_a_restart_finishes_the_rest(
    broker, image_server, tiny_registry, tmp_path
):
    values, expected = good_stream(image_server, 300, "term")
    image_server.delay_s = 0.1
    args = ("--fetch-threads", "2", "--max-batch", "8")
    first = Service(broker.bootstrap, tiny_registry.root, tmp_path / "serve1.log", *args)
    second = None
    reader = None
    try:
        first.wait_ready()
        produce(broker.bootstrap, values)
        reader = OutputReader(broker.bootstrap)
        read_verdicts(reader, 30, timeout=120)
        assert first.stop(signal.SIGTERM) == 0, first.tail()
        after_first = {v["id"] for v in reader.read().verdicts}
        assert 0 < len(after_first) < 300, "stop should land mid-stream"
        assert "stopping: draining" in first.log.read_text()
        # Drained and committed: every record consumed got its verdict, and the
        # group's committed offsets cover exactly those records, no more, no fewer.
        assert committed_total(broker.bootstrap) == len(after_first)

        second = Service(broker.bootstrap, tiny_registry.root, tmp_path / "serve2.log", *args)
        second.wait_ready()
        out = wait_accounted(reader, expected, timeout=180)
        assert {v["id"] for v in out.verdicts} == expected
        # A clean stop committed everything it output: the restart redoes nothing.
        assert duplicates(out) == 0, f"SIGTERM after {len(after_first)}/300 verdicts"
        assert len(out.verdicts) == 300 and not out.dead_letters
        assert second.stop() == 0
    finally:
        if reader:
            reader.close()
        first.kill()
        if second:
            second.kill()


# ------------------------------------------------- on the shared service (no kill/stop)


def test_every_record_accounted_for_with_the_right_code(shared_stream):
    from actors.fetching import fetch_pixels
    from services.fetch import FetchPolicy
    from training.model.detector import Detector

    s = shared_stream
    values, expected, good = mixed_stream(s.server, "acct")
    keys = set(expected)
    head = s.registry.current()
    # The served images scored offline, one at a time, with the head the service serves.
    detector = Detector.from_registry(s.registry, head, device="cpu", threads=1)
    policy = FetchPolicy(allowed_networks=("127.0.0.1/32",), max_bytes=MAX_BYTES)
    offline_emb, offline_score = {}, {}
    for rid, sent in good.items():
        pixels, _ = fetch_pixels(sent["url"], policy, detector.encoder.preprocess)
        emb, score = detector(pixels[None])
        offline_emb[rid], offline_score[rid] = emb[0], float(score[0])
    # `dmguard score` (score_one) and `dmguard eval` (the embedding actors' _Embedder, then
    # the head) score the same images as the line above, so all three paths agree.
    from actors.single import score_one
    from services.fetch import fetch_bytes
    from training.data.embeddings import _Embedder
    from training.model.head import score as head_score

    some = list(good)[: len(IMAGE_KINDS) * 2]  # every kind of image, twice
    by_score_cmd = {
        rid: json.loads(score_one(detector, good[rid]["url"], policy)[0]) for rid in some
    }
    blobs = [fetch_bytes(good[rid]["url"], policy) for rid in some]
    embedder = _Embedder("open_clip:dmguard-tiny", threads=1)
    features, errors = embedder.embed(blobs, detector.meta.features)
    assert errors == [None] * len(some)
    by_eval = head_score(detector.head, np.stack(features))
    for rid, eval_score in zip(some, by_eval, strict=True):
        assert abs(by_score_cmd[rid]["score"] - offline_score[rid]) <= SCORE_TOL, rid
        assert abs(float(eval_score) - offline_score[rid]) <= SCORE_TOL, rid
    # The images are told apart by what they are scored: a record given its neighbour's
    # score would be caught by SCORE_TOL nearly always, and by its embedding always.
    ordered = [offline_score[rid] for rid in good]
    close = sum(abs(a - b) <= 2 * SCORE_TOL for a, b in zip(ordered[:-1], ordered[1:], strict=True))
    assert close < len(ordered) // 20, f"{close} neighbours score alike: images too similar"
    embs = np.stack([offline_emb[rid] for rid in good])
    assert all(
        np.abs(embs[i] - embs[i + 1 :]).max(axis=1).min() > 100 * EMBEDDING_TOL
        for i in range(len(embs) - 1)
    )
    # The untrained head's threshold (0.5) may call every image one thing; the same
    # weights with the threshold in the widest gap between neighbouring offline scores
    # in the middle half split them, so both verdicts must come out of the service, each
    # on the right side of the threshold (the gap keeps the verdicts' 6-decimal scores
    # off it).
    ranked = sorted(ordered)
    k = max(range(len(ranked) // 4, 3 * len(ranked) // 4), key=lambda i: ranked[i] - ranked[i - 1])
    assert ranked[k] - ranked[k - 1] > 1e-5, "the scores are too close to split cleanly"
    median = (ranked[k - 1] + ranked[k]) / 2
    head = s.registry.save(
        detector.head, encoder=detector.meta.encoder, threshold=median, parent=head
    ).version
    s.serve_head(head)

    before = s.service.metrics()
    produce(s.bootstrap, values)
    reader = OutputReader(s.bootstrap)
    try:
        out = only(wait_accounted(reader, keys, timeout=120), keys)
    finally:
        reader.close()
    got = outcomes(out)
    wrong = {
        k: (expected.get(k), got.get(k))
        for k in set(got) | set(expected)
        if got.get(k) != expected.get(k)
    }
    assert not wrong, f"(expected, got) by id: {wrong}"
    assert duplicates(out) == 0
    assert len(out.verdicts) == 245 and len(out.dead_letters) == 55
    for v in out.verdicts:  # each verdict is its own record's: its image's score, its meta
        sent = good[v["id"]]
        assert v["url"] == sent["url"] and v["meta"] == sent["meta"], v
        assert abs(v["score"] - offline_score[v["id"]]) <= SCORE_TOL, (v, offline_score[v["id"]])
        assert v["verdict"] == ("generated" if v["score"] >= v["threshold"] else "real"), v
        assert v["head_version"] == head and v["encoder"] == "open_clip:dmguard-tiny"
    verdicts = Counter(v["verdict"] for v in out.verdicts)
    assert verdicts["real"] >= 50 and verdicts["generated"] >= 50, verdicts  # k in the middle half
    assert all(v["threshold"] == pytest.approx(median, abs=1e-6) for v in out.verdicts)
    for d in out.dead_letters:  # the original record comes back untouched
        src = d["source"]
        assert src["topic"] == "dmguard.images" and src["offset"] >= 0
        assert d["record"].encode() in values

    # /metrics agrees with what came out (workers report every second)
    def delta(m, name, **labels) -> float:
        return counter(m, name, **labels) - counter(before, name, **labels)

    m = wait_until(
        s.service.metrics,
        20,
        what="300 records in /metrics",
        done=lambda m: (
            delta(m, "dmguard_records_total", outcome="verdict")
            + delta(m, "dmguard_records_total", outcome="dead_letter")
            >= 300
        ),
    )
    assert delta(m, "dmguard_records_total", outcome="verdict") == 245
    assert delta(m, "dmguard_records_total", outcome="dead_letter") == 55
    by_code = {
        c: sum(1 for d in out.dead_letters if d["error"]["code"] == c)
        for c in set(expected.values()) - {"verdict"}
    }
    for code, n in by_code.items():
        assert delta(m, "dmguard_dead_letters_total", code=code) == n, code
    verdict_mix = {
        k: sum(1 for v in out.verdicts if v["verdict"] == k) for k in ("generated", "real")
    }
    for k, n in verdict_mix.items():
        assert delta(m, "dmguard_verdicts_total", verdict=k) == n
    assert delta(m, "dmguard_batch_size_sum") == 245
    assert delta(m, "dmguard_end_to_end_seconds_count") == 300
    batches = delta(m, "dmguard_batch_size_count")
    for stage in ("embed", "score", "produce"):  # timed once per batch
        assert delta(m, "dmguard_stage_seconds_count", stage=stage) == batches, stage
    for stage in ("fetch", "decode"):  # timed once per image fetched and decoded whole
        assert delta(m, "dmguard_stage_seconds_count", stage=stage) == 245, stage
    # Lag per input partition, reported every 2 s: zero once everything is consumed.
    lag = wait_until(
        s.service.metrics,
        20,
        what="consumer lag 0 on every partition",
        done=lambda m: all(
            counter(m, "dmguard_consumer_lag", partition=str(p)) == 0
            and ("dmguard_consumer_lag", (("partition", str(p)),)) in m
            for p in range(4)
        ),
    )
    assert len([k for k in lag if k[0] == "dmguard_consumer_lag"]) == 4
    assert counter(m, "dmguard_workers") == 2
    assert (
        counter(m, "dmguard_model_info", encoder="open_clip:dmguard-tiny", head_version=head) == 1
    )
    assert s.service.get("/healthz")[0] == 200

    # Each verdict left its embedding in the feature log (flushed every 10 s at the latest):
    # the embedding of its own image, and the score its verdict got.
    def logged() -> dict[str, list[dict]]:
        rows: dict[str, list[dict]] = {}
        for row in read_feature_log(str(s.feature_log)).to_pylist():
            if row["id"] in good:
                rows.setdefault(row["id"], []).append(row)
        return rows

    rows = wait_until(logged, 30, what="the feature log", done=lambda r: set(r) == set(good))
    assert all(len(r) == 1 for r in rows.values()), "an id logged twice"
    score_of = {v["id"]: v["score"] for v in out.verdicts}
    for rid, (row,) in rows.items():
        assert row["url"] == good[rid]["url"] and row["head_version"] == head
        assert len(row["embedding"]) == 64
        np.testing.assert_allclose(row["embedding"], offline_emb[rid], rtol=0, atol=EMBEDDING_TOL)
        assert abs(row["score"] - offline_score[rid]) <= SCORE_TOL, rid
        assert abs(row["score"] - score_of[rid]) <= SCORE_TOL, rid


def test_workers_swap_to_a_new_head_without_restart(shared_stream):
    from tests.conftest import TINY
    from training.model.detector import register_untrained_head

    s = shared_stream
    service = s.service
    old = s.registry.current()
    pids = service.worker_pids()
    before_metrics = service.metrics()
    before, before_ids = good_stream(s.server, 40, "before")
    produce(s.bootstrap, before)
    reader = OutputReader(s.bootstrap)
    try:
        wait_accounted(reader, before_ids, timeout=60)

        v2 = register_untrained_head(s.registry, TINY, seed=7)  # registers and promotes
        heads = wait_until(
            s.served_heads, 30, what=f"workers on {v2.version}", done=lambda h: h == {v2.version}
        )
        assert heads == {v2.version}
        after, after_ids = good_stream(s.server, 40, "after")
        produce(s.bootstrap, after)
        out = only(
            wait_accounted(reader, before_ids | after_ids, timeout=60), before_ids | after_ids
        )
        assert duplicates(out) == 0 and not out.dead_letters
        version = {v["id"]: v["head_version"] for v in out.verdicts}
        assert {version[i] for i in before_ids} == {old}
        assert {version[i] for i in after_ids} == {v2.version}
        assert service.worker_pids() == pids  # same processes: swapped, not restarted

        def swaps(m) -> float:
            return counter(m, "dmguard_head_swaps_total") - counter(
                before_metrics, "dmguard_head_swaps_total"
            )

        m = wait_until(
            service.metrics, 20, what="2 head swaps in /metrics", done=lambda m: swaps(m) >= 2
        )
        assert swaps(m) == 2
        assert counter(m, "dmguard_model_info", encoder=TINY, head_version=v2.version) == 1
    finally:
        reader.close()
        s.serve_head(old)  # the next test on the shared service gets the head it started with
