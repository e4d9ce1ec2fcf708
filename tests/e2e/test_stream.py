"""End to end: embedded broker, `dmguard serve` with 2 Ray workers, a local
HTTP server of test images, Kafka clients reading the outputs, and scrapes of
the real /metrics."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest
from kafka import KafkaConsumer
from kafka.structs import TopicPartition

from tests.e2e.harness import OutputReader, Service, duplicates, output_key, produce, wait_accounted
from tests.images import encode, jpeg, photo, png_bomb
from training.feature_log import read_feature_log

pytestmark = [pytest.mark.slow, pytest.mark.broker, pytest.mark.ray]

MAX_BYTES = 2_000_000


def good_images() -> dict[str, bytes]:
    base = photo(400, 300, seed=1)
    rgba = base.convert("RGBA")
    return {
        "/img/photo.jpg": jpeg(400, 300, seed=2),
        "/img/big.jpg": jpeg(1800, 1200, seed=3),
        "/img/tall.png": encode(photo(200, 500, seed=4), "PNG"),
        "/img/alpha.png": encode(rgba, "PNG"),
        "/img/pic.webp": encode(photo(300, 300, seed=5), "WEBP"),
        "/img/anim.gif": encode(base.convert("P"), "GIF"),
        "/img/cmyk.jpg": encode(base.convert("CMYK"), "JPEG"),
        "/img/grey.jpg": encode(base.convert("L"), "JPEG"),
    }


def mixed_stream(server, n_good: int = 245) -> tuple[list[bytes], dict[str, str]]:
    """300 records: good URLs plus every kind of failure, and the outcome each must get."""
    server.routes.update(good_images())
    truncated = jpeg(400, 300, seed=9)
    server.routes["/bad/truncated.jpg"] = truncated[: len(truncated) // 2]
    server.routes["/bad/page.html"] = b"<html><body>not an image</body></html>"
    server.routes["/bad/huge.jpg"] = b"\xff\xd8\xff" + os.urandom(MAX_BYTES + 1000)
    server.routes["/bad/bomb.png"] = png_bomb()
    paths = sorted(good_images())
    values: list[bytes] = []
    expected: dict[str, str] = {}

    def add(rid: str, url: str, outcome: str) -> None:
        values.append(json.dumps({"id": rid, "url": url, "meta": {"n": len(values)}}).encode())
        expected[rid] = outcome

    for i in range(n_good):
        add(f"good-{i}", server.url(paths[i % len(paths)] + f"?i={i}"), "verdict")
    for i in range(10):  # not JSON: only the original text identifies them
        raw = f'{{"id": "broken-{i}", "url": '
        values.append(raw.encode())
        expected[f"raw:{raw}"] = "bad_record"
    for i in range(5):
        values.append(json.dumps({"id": f"nourl-{i}"}).encode())
        expected[f"nourl-{i}"] = "bad_record"
    for i in range(5):
        raw = json.dumps({"url": server.url(paths[0]), "n": i})
        values.append(raw.encode())
        expected[f"raw:{raw}"] = "bad_record"
    for i in range(5):
        add(f"missing-{i}", server.url(f"/nope/{i}.jpg"), "fetch_failed")
    for i in range(5):
        add(f"html-{i}", server.url(f"/bad/page.html?{i}"), "not_an_image")
    for i in range(5):
        add(f"trunc-{i}", server.url(f"/bad/truncated.jpg?{i}"), "decode_failed")
    for i in range(5):
        add(f"huge-{i}", server.url(f"/bad/huge.jpg?{i}"), "too_large")
    for i in range(5):
        add(f"bomb-{i}", server.url(f"/bad/bomb.png?{i}"), "too_large")
    for i in range(5):  # loopback, but outside the one network the service allows
        add(f"private-{i}", f"http://127.0.0.2:{server.port}/img/photo.jpg", "blocked_url")
    for i in range(5):
        add(f"scheme-{i}", f"gopher://example.com/{i}", "bad_url")
    assert len(values) == 300
    return values, expected


def outcomes(out) -> dict[str, str]:
    got = {}
    for v in out.verdicts:
        got[output_key(v)] = "verdict"
    for d in out.dead_letters:
        got[output_key(d)] = d["error"]["code"]
    return got


def counter(metrics, name, **labels) -> float:
    return metrics.get((name, tuple(sorted(labels.items()))), 0.0)


def test_every_record_accounted_for_with_the_right_code(
    broker, image_server, tiny_registry, tmp_path
):
    values, expected = mixed_stream(image_server)
    service = Service(
        broker.bootstrap, tiny_registry.root, tmp_path / "serve.log", "--max-bytes", str(MAX_BYTES)
    )
    reader = None
    try:
        service.wait_ready()
        produce(broker.bootstrap, values)
        reader = OutputReader(broker.bootstrap)
        out = wait_accounted(reader, set(expected), timeout=120)
        got = outcomes(out)
        wrong = {
            k: (expected.get(k), got.get(k))
            for k in set(got) | set(expected)
            if got.get(k) != expected.get(k)
        }
        assert not wrong, f"(expected, got) by id: {wrong}"
        assert duplicates(out) == 0
        assert len(out.verdicts) == 245 and len(out.dead_letters) == 55
        for v in out.verdicts:
            assert 0.0 <= v["score"] <= 1.0 and v["verdict"] in ("generated", "real")
            assert v["head_version"] == "v1" and v["encoder"] == "open_clip:dmguard-tiny"
            assert v["meta"]["n"] >= 0
        for d in out.dead_letters:  # the original record comes back untouched
            src = d["source"]
            assert src["topic"] == "dmguard.images" and src["offset"] >= 0
            assert d["record"].encode() in values

        # /metrics agrees with what came out (workers report every second)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            m = service.metrics()
            if (
                counter(m, "dmguard_records_total", outcome="verdict")
                + counter(m, "dmguard_records_total", outcome="dead_letter")
                >= 300
            ):
                break
            time.sleep(0.5)
        assert counter(m, "dmguard_records_total", outcome="verdict") == 245
        assert counter(m, "dmguard_records_total", outcome="dead_letter") == 55
        by_code = {
            c: sum(1 for d in out.dead_letters if d["error"]["code"] == c)
            for c in set(expected.values()) - {"verdict"}
        }
        for code, n in by_code.items():
            assert counter(m, "dmguard_dead_letters_total", code=code) == n, code
        verdict_mix = {
            k: sum(1 for v in out.verdicts if v["verdict"] == k) for k in ("generated", "real")
        }
        for k, n in verdict_mix.items():
            assert counter(m, "dmguard_verdicts_total", verdict=k) == n
        assert counter(m, "dmguard_batch_size_sum") == 245
        assert counter(m, "dmguard_end_to_end_seconds_count") == 300
        assert counter(m, "dmguard_stage_seconds_count", stage="embed") == counter(
            m, "dmguard_batch_size_count"
        )
        assert counter(m, "dmguard_workers") == 2
        assert (
            counter(m, "dmguard_model_info", encoder="open_clip:dmguard-tiny", head_version="v1")
            == 1
        )
        assert service.get("/healthz")[0] == 200
        assert service.stop() == 0
        # Each verdict left its embedding in the feature log (flushed at the latest on stop).
        log = read_feature_log(str(tmp_path / "feature-log"))
        assert sorted(log.column("id").to_pylist()) == sorted(v["id"] for v in out.verdicts)
        assert {len(e) for e in log.column("embedding").to_pylist()} == {64}
        assert set(log.column("head_version").to_pylist()) == {"v1"}
    finally:
        if reader:
            reader.close()
        service.kill()


def good_stream(server, n: int, prefix: str) -> tuple[list[bytes], set[str]]:
    server.routes.update(good_images())
    paths = sorted(good_images())
    values = [
        json.dumps(
            {"id": f"{prefix}-{i}", "url": server.url(paths[i % len(paths)] + f"?{prefix}={i}")}
        ).encode()
        for i in range(n)
    ]
    return values, {f"{prefix}-{i}" for i in range(n)}


def test_sigkill_of_a_worker_loses_no_record(
    broker, image_server, tiny_registry, tmp_path, record_property
):
    values, expected = good_stream(image_server, 300, "crash")
    image_server.delay_s = 0.1  # slow fetches: the kill lands mid-stream
    service = Service(
        broker.bootstrap,
        tiny_registry.root,
        tmp_path / "serve.log",
        "--fetch-threads",
        "2",
        "--max-batch",
        "8",
    )
    reader = None
    try:
        service.wait_ready()
        pids = service.worker_pids()
        assert len(pids) == 2
        produce(broker.bootstrap, values)
        reader = OutputReader(broker.bootstrap)
        while len(reader.read(idle_s=0.2).verdicts) < 30:
            pass
        os.kill(pids[0], signal.SIGKILL)
        killed_at = len(reader.out.verdicts)
        out = wait_accounted(reader, expected, timeout=180)
        seen = {v["id"] for v in out.verdicts}
        assert killed_at < 300, "the kill came after the stream had finished"
        assert expected <= seen, f"lost {len(expected - seen)} records:\n{service.tail()}"
        assert not out.dead_letters
        dups = duplicates(out)
        record_property("duplicates_after_sigkill", dups)
        print(f"\nSIGKILL after {killed_at}/300 verdicts: {dups} duplicates, all 300 ids present")
        # Ray brought the killed worker back: two workers report again, none with the dead pid.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            now = service.worker_pids()
            if len(now) == 2 and pids[0] not in now:
                break
            time.sleep(1)
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
        while len(reader.read(idle_s=0.2).verdicts) < 30:
            pass
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
        assert expected <= {v["id"] for v in out.verdicts}
        print(
            f"\nSIGTERM after {len(after_first)}/300 verdicts; duplicates after restart: {duplicates(out)}"
        )
        assert second.stop() == 0
    finally:
        if reader:
            reader.close()
        first.kill()
        if second:
            second.kill()


def test_workers_swap_to_a_new_head_without_restart(broker, image_server, tiny_registry, tmp_path):
    from tests.conftest import TINY
    from training.detector import register_untrained_head

    service = Service(broker.bootstrap, tiny_registry.root, tmp_path / "serve.log")
    reader = None
    try:
        service.wait_ready()
        pids = service.worker_pids()
        before, before_ids = good_stream(image_server, 40, "before")
        produce(broker.bootstrap, before)
        reader = OutputReader(broker.bootstrap)
        wait_accounted(reader, before_ids, timeout=60)

        v2 = register_untrained_head(tiny_registry, TINY, seed=7)  # registers and promotes
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            heads = {w["head_version"] for w in json.loads(service.get("/status")[1])["workers"]}
            if heads == {v2.version}:
                break
            time.sleep(0.5)
        assert heads == {v2.version}
        after, after_ids = good_stream(image_server, 40, "after")
        produce(broker.bootstrap, after)
        out = wait_accounted(reader, before_ids | after_ids, timeout=60)
        version = {v["id"]: v["head_version"] for v in out.verdicts}
        assert {version[i] for i in before_ids} == {"v1"}
        assert {version[i] for i in after_ids} == {v2.version}
        assert service.worker_pids() == pids  # same processes: swapped, not restarted
        time.sleep(1.5)
        m = service.metrics()
        assert counter(m, "dmguard_head_swaps_total") == 2
        assert counter(m, "dmguard_model_info", encoder=TINY, head_version=v2.version) == 1
        assert service.stop() == 0
    finally:
        if reader:
            reader.close()
        service.kill()
