"""Serve with head v1, send labels, `dmguard retrain --once` promotes v2, and
verdicts switch to v2 without restarting workers; no record lost across the swap."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import pytest
from kafka import KafkaProducer

from tests.e2e.harness import OutputReader, Service, duplicates, produce, wait_accounted
from tests.images import encode, generated_like, real_like
from training.data.feature_log import read_feature_log

pytestmark = [pytest.mark.slow, pytest.mark.broker, pytest.mark.ray]


def test_labels_retrain_promote_and_hot_swap(
    broker, image_server, tiny_registry, tmp_path, record_property
):
    for i in range(40):
        image_server.routes[f"/real/{i}.png"] = encode(real_like(i), "PNG")
        image_server.routes[f"/gen/{i}.png"] = encode(generated_like(i), "PNG")
    service = Service(broker.bootstrap, tiny_registry.root, tmp_path / "serve.log")
    reader = None
    stop_stream = threading.Event()
    try:
        service.wait_ready()
        pids = service.worker_pids()
        # 1. a first stream, judged by the untrained v1
        first = [(f"r{i}", image_server.url(f"/real/{i}.png"), "real") for i in range(40)]
        first += [(f"g{i}", image_server.url(f"/gen/{i}.png"), "generated") for i in range(40)]
        produce(
            broker.bootstrap,
            [json.dumps({"id": rid, "url": url}).encode() for rid, url, _ in first],
        )
        reader = OutputReader(broker.bootstrap)
        wait_accounted(reader, {rid for rid, _, _ in first}, timeout=60)
        # 2. labellers say which were which
        produce(
            broker.bootstrap,
            [json.dumps({"id": rid, "label": lab}).encode() for rid, _, lab in first],
            topic="dmguard.labels",
        )
        labels_sent = time.monotonic()
        deadline = time.monotonic() + 30  # workers flush the feature log every 10 s
        while (
            len(read_feature_log(str(tmp_path / "feature-log"))) < 80
            and time.monotonic() < deadline
        ):
            time.sleep(0.5)
        assert len(read_feature_log(str(tmp_path / "feature-log"))) >= 80

        # 3. a steady stream keeps flowing while retraining runs and the head swaps; it
        # runs until v2 has been seen (a retrain slowed by a busy machine must not
        # find the stream already over), at most 1000 records
        stream_ids: list[str] = []

        def trickle() -> None:
            producer = KafkaProducer(bootstrap_servers=broker.bootstrap)
            for i in range(1000):
                rid, kind = f"s{i}", "real" if i % 2 else "gen"
                url = image_server.url(f"/{kind}/{i % 40}.png?{rid}")
                producer.send("dmguard.images", json.dumps({"id": rid, "url": url}).encode())
                producer.flush(timeout=10)
                stream_ids.append(rid)
                if stop_stream.wait(0.4):
                    break
            producer.close()

        feeder = threading.Thread(target=trickle, daemon=True)
        feeder.start()
        env = {
            **os.environ,
            "DMGUARD_BOOTSTRAP": broker.bootstrap,
            "DMGUARD_REGISTRY": str(tiny_registry.root),
            "DMGUARD_FEATURE_LOG": str(tmp_path / "feature-log"),
        }
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "dmguard",
                "retrain",
                "--once",
                "--min-new-labels",
                "50",
                "--epochs",
                "8",
                "--workers",
                "2",
                "--batch-size",
                "16",
                "--cache",
                str(tmp_path / "cache"),
            ],
            capture_output=True,
            text=True,
            timeout=300,
            env=env,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        summary = json.loads(done.stdout.strip().splitlines()[-1])
        assert summary["trained"] and summary["promoted"], summary
        assert summary["new"] == 80 and summary["version"] == "v2"
        assert (
            summary["new_auc"] >= summary["current_auc"]
        )  # the rule: not worse on the same held-out set

        # 4. verdicts switch to v2 without a restart
        first_v2 = None
        deadline = time.monotonic() + 60
        while first_v2 is None and time.monotonic() < deadline:
            out = reader.read(idle_s=0.2)
            if any(v["head_version"] == "v2" for v in out.verdicts):
                first_v2 = time.monotonic()
        assert first_v2 is not None, f"no verdict from v2\n{service.tail()}"
        time.sleep(4)  # about ten more records after the swap, then the stream ends
        stop_stream.set()
        record_property("label_to_v2_verdict_s", round(first_v2 - labels_sent, 1))
        print(
            f"\nlabels sent -> first v2 verdict: {first_v2 - labels_sent:.1f} s (retrain included)"
        )
        feeder.join()
        out = wait_accounted(reader, set(stream_ids), timeout=90)
        by_id = {v["id"]: v["head_version"] for v in out.verdicts}
        assert set(stream_ids) <= set(by_id), "a record was lost across the swap"
        assert duplicates(out) == 0
        assert by_id[stream_ids[-1]] == "v2"
        # v2 learnt the labels: its verdicts rank the two kinds of image apart (v1 was random)
        from sklearn.metrics import roc_auc_score

        v2 = [v for v in out.verdicts if v["id"] in set(stream_ids) and v["head_version"] == "v2"]
        kinds = [int(v["id"][1:]) % 2 == 0 for v in v2]  # even: generated-like (see trickle)
        assert len(set(kinds)) == 2, "v2 judged only one kind of image"
        assert roc_auc_score(kinds, [v["score"] for v in v2]) >= 0.9
        assert service.worker_pids() == pids
        assert service.stop() == 0
    finally:
        stop_stream.set()
        if reader:
            reader.close()
        service.kill()
