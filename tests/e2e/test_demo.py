"""`dmguard demo` end to end on a handful of images: the real demo code path (embedded
broker, local Ray, HTTP image server, Ray Train, serve with 2 workers, labels, retrain,
hot swap, /metrics), on a small demo set built here instead of the downloaded one."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from tests.conftest import ONNX_WEIGHTS
from tests.images import encode, generated_like, real_like
from training.demo_data import RawImage, build_demo_set
from training.registry import Registry

pytestmark = [pytest.mark.slow, pytest.mark.broker, pytest.mark.ray, pytest.mark.weights]


def _small_set() -> list[RawImage]:
    items = []
    for i in range(24):
        items.append(RawImage(f"real-{i}", encode(real_like(i, 128), "PNG"), 0, f"photos-{i % 4}"))
        items.append(RawImage(f"gen-{i}", encode(generated_like(i, 128), "WEBP"), 1, f"gen-{i % 4}",
                              f"Model {i % 4}"))  # fmt: skip
    return items


@pytest.mark.skipif(
    not ONNX_WEIGHTS.exists(), reason="offline CLIP weights not fetched (make models)"
)
def test_demo_runs_to_its_summary_and_leaves_a_head(tmp_path):
    data = tmp_path / "set"
    summary = build_demo_set(_small_set(), data, seed=0)
    held = summary["heldout"]["real"] + summary["heldout"]["generated"]
    done = subprocess.run(
        [sys.executable, "-m", "services.cli", "demo", "--data", str(data), "--registry", str(tmp_path / "registry"),
         "--cache", str(tmp_path / "cache"), "--epochs", "6", "--workers", "2"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    out = done.stdout
    # stream 1: every held-out image judged, the seven bad records dead-lettered, none lost
    assert f"records in            {held + 7}" in out
    assert f"verdicts out          {held}" in out
    assert "lost / duplicated     0 / 0" in out
    for code in ("bad_record=2", "bad_url=1", "blocked_url=1", "decode_failed=1", "fetch_failed=1",
                 "not_an_image=1"):  # fmt: skip
        assert code in out
    assert "AUC" in out and "TPR @ 5% FPR" in out
    # labels, one retrain, the hot swap: stream 2 judged by v2 alone, workers not restarted
    assert "new head              v2" in out and "promoted              True" in out
    assert "hot swap              every worker on v2" in out
    stream2 = out.split("== stream 2")[1]
    again = int(re.search(r"verdicts out +(\d+)", stream2).group(1))
    assert (
        again > 0 and f"(head v2: {again})" in stream2 and "lost / duplicated     0 / 0" in stream2
    )
    # the /metrics lines are the live endpoint's counters: they add up to both streams
    assert f'dmguard_records_total{{outcome="verdict"}} {float(held + again)}' in out
    assert 'dmguard_records_total{outcome="dead_letter"} 7.0' in out
    assert 'head_version="v2"' in out.split("== key lines of /metrics")[1]
    # the demo's head stays registered, so eval/score/serve work right after
    registry = Registry(tmp_path / "registry")
    assert registry.current() == "v2"
    assert json.loads((registry.heads / "v1" / "meta.json").read_text())["encoder"].startswith(
        "onnx:"
    )
