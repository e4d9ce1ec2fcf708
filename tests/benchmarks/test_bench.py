"""Short `dmguard bench --json` runs on tiny settings produce every field (numbers not
asserted): --delivery and --engines on the JPEGs, and --mix uploads on a tiny copy of the
upload mix."""

import json
import os
import subprocess
import sys

import pytest

from benchmarks.bench import engine_table
from benchmarks.bench_uploads import load_mix
from services.metrics import STAGES
from tests.conftest import TINY


def bench_json(*flags: str, code: int = 0, env: dict[str, str] | None = None) -> dict:
    """`dmguard bench --json` on the tiny encoder, one worker, 2 s of latency sampling, and
    `flags` (with `env` added to the environment): its JSON object (the last line of
    stdout), once it has exited with `code`."""
    args = ["--json", "--encoder", TINY, "--workers", "1", "--latency-seconds", "2", *flags]
    done = subprocess.run(
        [sys.executable, "-m", "dmguard", "bench", *args],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, **(env or {})},
    )
    assert done.returncode == code, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.broker
@pytest.mark.ray
def test_bench_json_has_every_field(tmp_path):
    """--engines: (c) again on noida; kafka without its jars (an empty DMGUARD_KAFKA_LIBS)
    is one error line, the others are measured, and the exit is 1 as with a failed --peer."""
    result = bench_json(
        *("--images", "20", "--naive-images", "5", "--size", "160x120", "--delivery"),
        *("--engines", "tansu,noida,kafka"),
        code=1,
        env={"DMGUARD_KAFKA_LIBS": str(tmp_path)},
    )
    for key in (
        "cores",
        "encoder",
        "raw_ips",
        "naive_ips",
        "pipeline_ips",
        "pipeline_vs_raw",
        "pipeline_vs_naive",
        "best_batch",
        "stage_share",
        "latency_ms",
    ):
        assert key in result, key
    assert result["encoder"] == TINY and result["cores"] >= 1
    assert all(result[k] > 0 for k in ("raw_ips", "naive_ips", "pipeline_ips"))
    ratio = result["pipeline_ips"] / result["raw_ips"]
    assert result["pipeline_vs_raw"] == pytest.approx(ratio, abs=6e-4)  # rounded to 3 decimals
    assert set(result["stage_share"]) == set(STAGES)
    assert sum(result["stage_share"].values()) == pytest.approx(1.0, abs=0.01)
    assert set(result["latency_ms"]) == {"p50", "p95", "p99"}
    assert result["latency_ms"]["p50"] <= result["latency_ms"]["p95"] <= result["latency_ms"]["p99"]
    d = result["delivery"]  # (d): at least once vs exactly once, on the durable broker
    assert d["at_least_once_ips"] > 0 and d["exactly_once_ips"] > 0
    ratio = d["exactly_once_ips"] / d["at_least_once_ips"]
    assert d["exactly_once_vs_at_least_once"] == pytest.approx(ratio, abs=2e-3)
    for mode in ("at_least_once", "exactly_once"):
        lat = d[f"{mode}_read_latency_ms"]
        assert 0 < lat["p50"] <= lat["p99"]
    assert "mix" not in result and "fetched_mb_per_s" not in result  # jpeg: the keys as before
    tansu, noida, kafka = (result["engines"][e] for e in ("tansu", "noida", "kafka"))
    assert tansu["pipeline_ips"] == result["pipeline_ips"] and tansu["vs_tansu"] == 1.0
    ratio = noida["pipeline_ips"] / tansu["pipeline_ips"]
    assert noida["vs_tansu"] == pytest.approx(ratio, rel=0.01)  # of the unrounded figures
    assert set(noida["latency_ms"]) == {"p50", "p95", "p99"} and noida["read_latency_ms"]["p50"] > 0
    assert set(kafka) == {"error"} and "make kafka" in kafka["error"]
    assert kafka["error"].startswith(f"the Kafka engine's jars are not in {tmp_path}:")


def test_engine_table_one_line_an_engine():
    lat = {"p50": 300.0, "p95": 600.0, "p99": 800.0}

    def ran(ips: float, ratio: float) -> dict:
        return {"pipeline_ips": ips, "vs_tansu": ratio, "latency_ms": lat, "read_latency_ms": lat}

    lines = engine_table(
        {"tansu": ran(15, 1), "noida": ran(7.5, 0.5), "kafka": {"error": "no java"}}
    )
    assert lines[0].split()[:3] == ["engine", "records/s", "vs"]
    assert (
        lines[2].split()[:3] == ["noida", "7.50", "0.500"] and "300.0 / 600.0 / 800.0" in lines[2]
    )
    assert lines[3] == "kafka     not measured: no java"


UPLOAD_KEYS = (
    "cores",
    "encoder",
    "image_size",
    "raw_ips",
    "naive_ips",
    "pipeline_ips",
    "pipeline_vs_raw",
    "pipeline_vs_naive",
    "best_batch",
    "batch_sweep",
    "stage_share",
    "latency_ms",
    "latency_at_ips",
    "workers",
    "max_batch",
    "pipeline_images",
    "fetch_latency_ms",
    "bandwidth_mbps",
    "mix",
    "mix_files",
    "mix_scale",
    "mix_kinds",
    "mix_mean_bytes",
    "raw_images",
    "naive_images",
    "naive_skipped",
    "pipeline_dead_letters",
    "fetched_mb_per_s",
    "pipeline_fetched_mb",
    "worker_peak_rss_mib",
    "views",
)


@pytest.mark.slow
@pytest.mark.broker
@pytest.mark.ray
def test_bench_uploads_json_has_every_field(tmp_path):
    """--mix uploads on a tiny copy of the mix: 100 records go once through its 100 files, so
    the broken three end as dead letters (the wait counts them) and every byte is fetched.
    --views: (c) again with a head that scores two test-time views, and the ratio."""
    result = bench_json(
        "--images",
        "100",
        "--naive-images",
        "40",
        "--mix",
        "uploads",
        "--mix-scale",
        "0.05",
        "--mix-cache",
        str(tmp_path),
        "--views",
        "flip,zoom",
    )
    assert set(result) == set(UPLOAD_KEYS)
    mix = load_mix(tmp_path, scale=0.05, log=pytest.fail)  # the run's cache, not made again
    assert result["mix"] == "uploads" and result["image_size"] is None
    assert result["fetch_latency_ms"] == 50 and result["bandwidth_mbps"] == 100  # the defaults
    assert result["mix_kinds"] == mix.summary()
    assert sum(k["share"] for k in result["mix_kinds"].values()) == pytest.approx(1.0)
    assert result["mix_mean_bytes"] == round(sum(e.bytes for e in mix.entries) / 100)
    assert result["raw_images"] == 97
    broken = {"broken_truncated_jpeg", "broken_html", "broken_empty"}
    skipped = sum(mix.entry(i).kind in broken for i in range(40))
    assert result["naive_skipped"] == skipped >= 1  # the seeded order has one there
    assert result["pipeline_dead_letters"] == {"decode_failed": 1, "not_an_image": 2}
    assert result["pipeline_fetched_mb"] == pytest.approx(
        sum(e.bytes for e in mix.entries) / 1e6, abs=1e-3
    )
    assert result["fetched_mb_per_s"] > 0
    assert all(result[k] > 0 for k in ("raw_ips", "naive_ips", "pipeline_ips"))
    assert set(result["stage_share"]) == set(STAGES)
    assert set(result["latency_ms"]) == {"p50", "p95", "p99"}
    peak = result["worker_peak_rss_mib"]
    assert len(peak) == 1 and all(v > 50 for v in peak.values())  # a worker with a model loaded
    looked = result["views"]
    assert looked["views"] == ["flip", "zoom"] and looked["pipeline_ips"] > 0
    ratio = looked["pipeline_ips"] / result["pipeline_ips"]
    assert looked["vs_pipeline"] == pytest.approx(ratio, abs=6e-4)
    assert set(looked["stage_share"]) == set(STAGES)
