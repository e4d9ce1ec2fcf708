"""`dmguard demo` end to end on a handful of images: the real demo code path (embedded
broker, local Ray, HTTP image server, Ray Train, serve with 2 workers, labels, retrain,
hot swap, /metrics), on a small demo set built here instead of the downloaded one."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time

import pytest

from dmguard import demo
from services.outputs import Outputs
from tests.images import encode, generated_like, real_like
from training.data.demo_data import RawImage, build_demo_set
from training.model.registry import Registry


def _small_set() -> list[RawImage]:
    items = []
    for i in range(24):
        items.append(RawImage(f"real-{i}", encode(real_like(i, 128), "PNG"), 0, f"photos-{i % 4}"))
        items.append(
            RawImage(
                f"gen-{i}",
                encode(generated_like(i, 128), "WEBP"),
                1,
                f"gen-{i % 4}",
                f"Model {i % 4}",
            )
        )
    return items


@pytest.mark.slow
@pytest.mark.broker
@pytest.mark.ray
@pytest.mark.weights
def test_demo_runs_to_its_summary_and_leaves_a_head(tmp_path, onnx_weights):
    data = tmp_path / "set"
    summary = build_demo_set(_small_set(), data, seed=0)
    held = summary["heldout"]["real"] + summary["heldout"]["generated"]
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "dmguard",
            "demo",
            "--data",
            str(data),
            "--registry",
            str(tmp_path / "registry"),
            "--cache",
            str(tmp_path / "cache"),
            "--epochs",
            "6",
            "--workers",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    out = done.stdout
    # the dashboard's main panels over the run, every one with data
    png = tmp_path / "cache" / "demo" / "dashboard.png"
    assert f"== dashboard\n{png}\n" in out and png.stat().st_size > 10_000
    # stream 1: every held-out image judged, the seven bad records dead-lettered, none lost
    assert f"records in            {held + 7}" in out
    assert f"verdicts out          {held}" in out
    assert "lost / duplicated     0 / 0" in out
    for code in (
        "bad_record=2",
        "bad_url=1",
        "blocked_url=1",
        "decode_failed=1",
        "fetch_failed=1",
        "not_an_image=1",
    ):
        assert code in out
    assert "TPR @ 5% FPR" in out
    # the printed AUC is computed from the verdicts: on classes this different (smooth and
    # bluish vs noisy and reddish) a working head ranks them apart; swapped labels or
    # scores matched to the wrong images would print far less
    auc1 = float(re.search(r"^AUC +([0-9.]+)", out.split("== stream 1")[1], re.M).group(1))
    assert auc1 >= 0.9, out
    # the leave-source-out table: heads trained (6 epochs, a few dozen rows) with each
    # source held out in turn, every image of the set scored once; the two kinds of image
    # differ the same way in every source, so held-out sources rank apart better than
    # chance (swapped labels or scores would print under 0.5)
    table = out.split("== leave-source-out benchmark")[1].split("==")[0]
    n_real = summary["train"]["real"] + summary["heldout"]["real"]
    n_gen = summary["train"]["generated"] + summary["heldout"]["generated"]
    overall = re.search(rf"^overall +([0-9.]+) .* {n_real} / {n_gen} ", table, re.M)
    assert overall and float(overall.group(1)) > 0.6, table
    # beside the rates: the worst held-out real collection and the verdict mix, whose
    # three shares of the real images add up to 100% (to rounding)
    mix = re.search(r"^overall +(\d+)% / (\d+)% / (\d+)% +(\d+)%$", table, re.M)
    assert mix and 98 <= sum(int(mix.group(i)) for i in (1, 2, 3)) <= 102, table
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
    v1 = json.loads((registry.heads / "v1" / "meta.json").read_text())
    assert v1["encoder"].startswith("onnx:")
    # the demo's recipe: the head reads blocks 8-11's class tokens through a 512-wide MLP,
    # and so does its retrained v2
    assert v1["features"] == "blocks:8-11" and v1["input_dim"] == 4 * 768
    v2 = json.loads((registry.heads / "v2" / "meta.json").read_text())
    assert v2["features"] == "blocks:8-11" and v2["train_config"]["hidden_dim"] == 512


# ------------------------------------------------ the exit code when a record is lost
class _Reader:
    """Stands in for OutputReader: the outputs the workers wrote, all at once."""

    def __init__(self, out: Outputs) -> None:
        self.out, self.reads = out, 0

    def read(self, idle_s: float = 0.5) -> Outputs:
        self.reads += 1
        return self.out


def _streamed(monkeypatch, out: Outputs, keys: list[str]) -> demo.StreamResult:
    """demo.stream on records with `keys` (the produce call faked), reading `out`."""
    import services.kafka_io

    sent = []
    monkeypatch.setattr(services.kafka_io, "produce", lambda kafka, topic, msgs: sent.extend(msgs))
    records = [(key, json.dumps({"id": key, "url": "http://h/x.jpg"}).encode()) for key in keys]
    t0 = time.monotonic()
    result = demo.stream(None, _Reader(out), records, timeout_s=1.0)
    assert time.monotonic() - t0 < 10  # gave up at its deadline
    assert [value for _, value in sent] == [value for _, value in records]
    return result


def test_a_lost_record_makes_the_demo_exit_1_naming_it(monkeypatch, capsys):
    keys = ["held-0", "held-1", "held-2", "raw:{not json"]
    out = Outputs(
        verdicts=[
            {"id": "held-0", "score": 0.1},
            {"id": "held-2", "score": 0.9},
            {"id": "other-stream", "score": 0.5},
        ],
        dead_letters=[{"record": "{not json", "error": {"code": "bad_record"}}],
    )
    result = _streamed(monkeypatch, out, keys)
    assert result.lost == {"held-1"}  # the dead letter without an id counts, by its record
    assert result.sent == 4 and len(result.outputs.verdicts) == 2  # not the other stream's

    assert demo._lost(result) == 1
    err = capsys.readouterr().err
    assert "1 records were neither judged nor dead-lettered" in err and "'held-1'" in err
    assert "held-0" not in err and "held-2" not in err


def test_nothing_lost_when_every_record_has_an_output(monkeypatch):
    out = Outputs(verdicts=[{"id": "held-0"}], dead_letters=[{"id": "bad-404"}])
    result = _streamed(monkeypatch, out, ["held-0", "bad-404"])
    assert result.lost == set()
