"""The crash-loop breaker against the real broker: a record that kills its
worker process every time costs three restarts, becomes an `internal` dead
letter, and every other record of its partition still gets its output."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from services.config import KafkaSettings, Topics
from services.kafka_io import ensure_topics
from services.outputs import OutputReader, output_key, wait_accounted
from tests.actors.crash_worker import POISON_EXIT
from tests.e2e.harness import produce
from tests.images import jpeg

pytestmark = [pytest.mark.slow, pytest.mark.broker]

ROOT = Path(__file__).resolve().parents[2]


def start_worker(cfg: dict, log: Path) -> subprocess.Popen:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "tests.actors.crash_worker", json.dumps(cfg)],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def test_a_record_that_kills_the_worker_is_dead_lettered_and_the_partition_moves_on(
    broker, image_server, tiny_registry, tmp_path
):
    topics = Topics(
        images="crash.images",
        verdicts="crash.verdicts",
        dead_letter="crash.dead-letter",
        labels="crash.labels",
    )
    ensure_topics(KafkaSettings(bootstrap_servers=broker.bootstrap), topics, partitions=1)
    image_server.routes["/a.jpg"] = jpeg(64, 48, seed=1)
    ids = [f"good-{i}" for i in range(20)] + ["poison-1"] + [f"after-{i}" for i in range(20)]
    values = [
        json.dumps({"id": rid, "url": image_server.url(f"/a.jpg?{rid}")}).encode() for rid in ids
    ]
    produce(broker.bootstrap, values, topic=topics.images)
    cfg = {
        "bootstrap": broker.bootstrap,
        "group": "crash-test",
        "topics": topics.__dict__,
        "registry": str(tiny_registry.root),
        "state_dir": str(tmp_path / "state"),
        "partitions": [0],
    }
    log = tmp_path / "worker.log"
    exits = []
    for _ in range(3):  # Ray would restart it for ever; three deaths are expected
        proc = start_worker(cfg, log)
        try:
            exits.append(proc.wait(90))
        except subprocess.TimeoutExpired:
            exits.append("alive")
            proc.terminate()
            proc.wait(60)
    assert exits == [POISON_EXIT] * 3, (exits, log.read_text()[-3000:])
    last = start_worker(cfg, log)  # the fourth incarnation dead-letters it and carries on
    reader = OutputReader(broker.bootstrap, topics)
    try:
        out = wait_accounted(reader, set(ids), timeout=90)
    finally:
        reader.close()
        last.terminate()
        assert last.wait(60) == 0, log.read_text()[-3000:]  # alive until stopped, then clean
    seen = {output_key(r) for r in out.verdicts + out.dead_letters}
    assert set(ids) <= seen, sorted(set(ids) - seen)
    poison = [d for d in out.dead_letters if d.get("id") == "poison-1"]
    assert len(poison) == 1, poison
    assert poison[0]["error"]["code"] == "internal"
    assert "crashed 2 times" in poison[0]["error"]["message"]
    assert json.loads(poison[0]["record"]) == {
        "id": "poison-1",
        "url": image_server.url("/a.jpg?poison-1"),
    }
    assert {v["id"] for v in out.verdicts} == set(ids) - {"poison-1"}
    assert not [d for d in out.dead_letters if d.get("id") != "poison-1"]
