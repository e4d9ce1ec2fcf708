"""A short `dmguard bench --json --delivery` run on tiny settings produces every field
(numbers not asserted)."""

import json
import subprocess
import sys

import pytest

from services.metrics import STAGES
from tests.conftest import TINY

pytestmark = [pytest.mark.slow, pytest.mark.broker, pytest.mark.ray]


def test_bench_json_has_every_field():
    done = subprocess.run(
        [sys.executable, "-m", "services.cli", "bench", "--json", "--encoder", TINY, "--images", "20",
         "--workers", "1", "--naive-images", "5", "--latency-seconds", "2", "--size", "160x120", "--delivery"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    for key in ("cores", "encoder", "raw_ips", "naive_ips", "pipeline_ips", "pipeline_vs_raw", "pipeline_vs_naive",
                "best_batch", "stage_share", "latency_ms"):  # fmt: skip
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
