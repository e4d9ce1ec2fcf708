"""End to end: the worst inputs found so far, mixed into a stream through
`dmguard serve` (embedded broker, 2 Ray workers, real HTTP fetches, real
/metrics). Every record gets exactly one output, the worker processes are the
ones that started, and good records sent afterwards come out on every
partition. Each of these records once stopped its partition or hung a fetch."""

from __future__ import annotations

import json
import zlib

import pytest

from services.config import KafkaSettings
from services.kafka_io import make_producer
from services.poll import WaitTimeout, wait_until
from services.records import MAX_DEAD_LETTER_RECORD_BYTES
from tests import markers
from tests.e2e.harness import (
    TOPICS,
    OutputReader,
    Service,
    duplicates,
    output_key,
    wait_accounted,
)
from tests.images import encode, jpeg, photo

pytestmark = [pytest.mark.slow, pytest.mark.broker, pytest.mark.ray]

PARTITIONS = 4  # `dmguard topics` default, created by serve


def hostile_records(server) -> tuple[list[bytes | None], dict[str, str]]:
    """(values, {output key: expected outcome}); keys as services.outputs.output_key."""
    server.routes["/ok.jpg"] = jpeg(120, 90, seed=1)
    server.routes["/caf%C3%A9.jpg"] = jpeg(120, 90, seed=2)
    server.routes["/a%20b.jpg"] = jpeg(120, 90, seed=3)
    server.routes["/thin.png"] = encode(photo(1, 16_000, seed=4).convert("L"), "PNG")
    server.routes["/thinner.png"] = encode(photo(1, 100_000, seed=4).convert("L"), "PNG")
    ok = server.url("/ok.jpg")
    values: list[bytes | None] = []
    expected: dict[str, str] = {}

    def raw(value: bytes | None, outcome: str) -> None:
        values.append(value)
        text = None if value is None else value[:MAX_DEAD_LETTER_RECORD_BYTES].decode()
        expected[f"raw:{text}"] = outcome

    def rec(rid: str, outcome: str, **fields) -> None:
        values.append(json.dumps({"id": rid, **fields}).encode())
        expected[rid] = outcome

    # records that killed the worker (a crash loop on their partition)
    raw(b'{"id":"\\ud800","url":5}', "bad_record")  # a lone surrogate in the id
    raw(b'{"id":"a\\udfff","url":"%s"}' % ok.encode(), "bad_record")
    values.append(b'{"id":"sur-meta","url":"%s","meta":{"k":"\\udfff"}}' % ok.encode())
    expected["sur-meta"] = "bad_record"
    values.append(b'{"id":"nan-meta","url":"%s","meta":{"x":NaN}}' % ok.encode())
    expected["nan-meta"] = "bad_record"
    raw(b"\x01" * 1_000_000, "bad_record")  # its dead letter once outgrew the producer's limit
    rec("long-url", "bad_record", url=ok + "?" + '"' * 9000)
    raw(None, "bad_record")  # a tombstone
    # guards that let something through
    rec("thin-png", "verdict", url=server.url("/thin.png"))  # asked for a 3 GB resize
    rec("thinner-png", "too_large", url=server.url("/thinner.png"))  # 18 GiB; now a side cap
    rec("iri", "verdict", url=server.url("/café.jpg"))  # ended as `internal`
    rec("space", "verdict", url=server.url("/a b.jpg"))  # ended as `fetch_failed`
    rec("site-local", "blocked_url", url="http://[fec0::1]:9/x.jpg")
    rec("to-file", "blocked_url", url=server.url("/redirect?to=file:///etc/passwd"))
    rec("crlf", "bad_url", url=ok + "\r\nX-Injected: 1")
    rec("slow-headers", "timeout", url=server.url("/slow-headers"))  # pinned a fetch thread
    rec("short-body", "fetch_failed", url=server.url("/short-body"))  # was accepted
    # provenance markers, honest and hostile (services.provenance): each one verdict
    for rid, data in marker_files().items():
        server.routes[f"/{rid}"] = data
        # Pillow refuses a PNG whose text inflates past 1 MB (provenance read it first, capped)
        rec(
            rid,
            "decode_failed" if rid == "marker-ztxt-bomb" else "verdict",
            url=server.url(f"/{rid}"),
        )
    return values, expected


def marker_files() -> dict[str, bytes]:
    """Files carrying provenance markers; MARKER_DECIDED says which a marker decides."""
    ztxt_bomb = zlib.compress(b"Steps: 1, Seed: 1 " + bytes(16 << 20), 9)
    xml_bomb = b'<x:xmpmeta><!DOCTYPE x [<!ENTITY a "aaaaaaaaaa">]><r a="&a;"/></x:xmpmeta>'
    files = {
        "marker-a1111": markers.a1111_png(),
        "marker-composite": markers.image_with_xmp(
            "JPEG", markers.xmp("compositeWithTrainedAlgorithmicMedia")
        ),
        "marker-camera": markers.camera_jpeg(),
        "marker-after-end": markers.tiny_fake_text(encode(photo(96, 96), "PNG")),
        "marker-ztxt-bomb": markers.png_with_raw_chunk(
            encode(photo(96, 96), "PNG"), b"zTXt", b"parameters\x00\x00" + ztxt_bomb
        ),
        "marker-xml-bomb": markers.image_with_xmp("JPEG", xml_bomb),
    }
    return files


MARKER_DECIDED = {"marker-a1111", "marker-composite"}


def produce_raw(bootstrap: str, values: list[bytes | None], partition: int | None = None) -> None:
    producer = make_producer(KafkaSettings(bootstrap_servers=bootstrap), max_request_size=2 << 20)
    for i, v in enumerate(values):
        p = partition if partition is not None else i % PARTITIONS
        key = b"tombstone" if v is None else None  # Kafka needs a key or a value
        producer.send(TOPICS.images, key=key, value=v, partition=p)
    producer.flush()
    producer.close()


def wait_for(predicate, timeout: float, what: str):
    try:
        return wait_until(predicate, timeout, what=what)
    except WaitTimeout as exc:
        raise AssertionError(f"timed out waiting for {what}") from exc


def test_hostile_records_get_one_output_each_and_the_workers_survive(
    broker, image_server, tiny_registry, tmp_path
):
    values, expected = hostile_records(image_server)
    service = Service(
        broker.bootstrap, tiny_registry.root, tmp_path / "serve.log", "--fetch-timeout", "3"
    )
    reader = None
    try:
        service.wait_ready()
        pids = sorted(service.worker_pids())
        produce_raw(broker.bootstrap, values)
        reader = OutputReader(broker.bootstrap)
        out = wait_accounted(reader, set(expected), timeout=120)
        got = {output_key(v): "verdict" for v in out.verdicts}
        got.update({output_key(d): d["error"]["code"] for d in out.dead_letters})
        wrong = {k[:60]: (want, got.get(k)) for k, want in expected.items() if got.get(k) != want}
        assert not wrong, f"(expected, got): {wrong}\n{service.tail()}"
        assert duplicates(out) == 0 and len(out.verdicts) + len(out.dead_letters) == len(values)
        by_id = {v["id"]: v for v in out.verdicts}
        for rid in set(marker_files()) - {"marker-ztxt-bomb"}:
            v = by_id[rid]
            decided = "provenance" if rid in MARKER_DECIDED else "model"
            assert v["decided_by"] == decided, v
            assert v["verdict"] == "generated" or rid not in MARKER_DECIDED, v
        assert by_id["iri"]["evidence"] == [] and by_id["iri"]["decided_by"] == "model"
        assert [e["claim"] for e in by_id["marker-camera"]["evidence"]] == ["capture"]
        assert [e["claim"] for e in by_id["marker-xml-bomb"]["evidence"]] == ["unreadable"]
        big = next(d for d in out.dead_letters if d.get("record_bytes") == 1_000_000)
        assert big["record_truncated"] and len(big["record"]) == MAX_DEAD_LETTER_RECORD_BYTES

        # A registry that cannot be read: workers keep their head, /readyz says why.
        current = tiny_registry.root / "CURRENT"
        current.write_bytes(b"../../etc/passwd")
        status, body = wait_for(
            lambda: (r := service.get("/readyz"))[0] == 503 and r, 30, "/readyz to report it"
        )
        assert b"invalid head version" in body or b"CURRENT" in body, body
        current.write_text("v1\n")
        wait_for(lambda: service.get("/readyz")[0] == 200, 30, "/readyz to recover")

        # Good records afterwards come out, on every partition, from the same processes.
        image_server.routes["/after.jpg"] = jpeg(100, 80, seed=9)
        after = {}
        for p in range(PARTITIONS):
            batch = [
                json.dumps({"id": f"after-{p}-{i}", "url": image_server.url(f"/after.jpg?{p}-{i}")})
                for i in range(5)
            ]
            after.update({f"after-{p}-{i}": p for i in range(5)})
            produce_raw(broker.bootstrap, [b.encode() for b in batch], partition=p)
        out = wait_accounted(reader, set(after), timeout=60)
        verdict_ids = {v["id"] for v in out.verdicts}
        assert set(after) <= verdict_ids, sorted(set(after) - verdict_ids)
        assert sorted(service.worker_pids()) == pids, "a worker was restarted"
        m = wait_for(
            lambda: (
                (m := service.metrics()).get(("dmguard_end_to_end_seconds_count", ()), 0)
                >= len(values) + len(after)
                and m
            ),
            20,
            "the driver to count every record",
        )
        n_verdicts = sum(1 for outcome in expected.values() if outcome == "verdict")
        assert m[("dmguard_records_total", (("outcome", "verdict"),))] == n_verdicts + len(after)
        assert m[("dmguard_records_total", (("outcome", "dead_letter"),))] == (
            len(values) - n_verdicts
        )
        assert m[("dmguard_registry_errors_total", ())] >= 1
        decided = (("kind", "generator_parameters"), ("result", "decided"))
        assert m[("dmguard_provenance_total", decided)] == 1
        assert m[("dmguard_provenance_total", (("kind", "none"), ("result", "none")))] >= 1
        assert service.stop() == 0
    finally:
        if reader:
            reader.close()
        service.kill()
