"""The GPU benchmark's parts that run without a GPU (benchmarks/bench_gpu.py, its
gpu_result, gpu_host and gpu_stages, and benchmarks/gpu.sh): its arguments, the JSON it
writes and the table it prints (on made-up numbers), the time budget, stopping a stage
over its share, the no-GPU exit, and the CPU half of the decode comparison. The GPU
measurements themselves need a GPU and are not run here; no speed is asserted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from benchmarks.bench_gpu import build_parser, plan, run_stages
from benchmarks.gpu_host import MODULE, parse_nvidia_smi, run_child, stage_argv
from benchmarks.gpu_result import (
    PAYLOADS,
    PIPELINE_PAYLOAD,
    POINT_KEYS,
    SCHEMA,
    STAGE_KEYS,
    Deadline,
    allot,
    empty_point,
    format_table,
    make_point,
    new_result,
    point_cost,
    schema_problems,
    settings_of,
    stage_entry,
    timed,
    write_json,
)
from benchmarks.gpu_stages import (
    cpu_decode_point,
    cpu_to_tensor,
    gpu_to_tensor,
    make_jpegs,
    raw_plan,
    raw_stage,
)

REPO = Path(__file__).resolve().parents[2]
NO_GPU = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}


# -------------------------------------------------------------------- arguments
def test_defaults_fit_the_eight_minutes():
    args = build_parser().parse_args([])
    assert args.encoders == ["open_clip:ViT-L-14", "open_clip:ViT-B-16"]
    assert args.batches == [1, 8, 32, 64, 128, 256]
    assert args.workers_per_gpu == [1, 2]
    assert args.decode_sizes == [(4000, 3000), (640, 480)]
    assert args.skip == set() and args.stage_spec is None
    assert args.budget + 15 <= 480  # gpu.sh's install and exit fit in the rest


def test_arguments_parse():
    args = build_parser().parse_args(
        [
            "--encoders",
            "ViT-B-16, open_clip:dmguard-tiny",
            "--batches",
            "4,2",
            "--decode-sizes",
            "100x50",
            "--skip",
            "pipeline,decode",
            "--budget",
            "30",
            "--workers-per-gpu",
            "3",
        ]
    )
    assert args.encoders == ["open_clip:ViT-B-16", "open_clip:dmguard-tiny"]
    assert args.batches == [4, 2] and args.decode_sizes == [(100, 50)]
    assert args.skip == {"pipeline", "decode"} and args.budget == 30.0
    assert args.workers_per_gpu == [3]
    settings = settings_of(args)
    assert settings["decode_sizes"] == ["100x50"] and settings["skip"] == ["decode", "pipeline"]
    json.dumps(settings)  # JSON values only


@pytest.mark.parametrize(
    "argv",
    [
        ["--batches", "1,x"],
        ["--batches", "0"],
        ["--decode-sizes", "100by50"],
        ["--skip", "gpu"],
        ["--budget", "-1"],
        ["--encoders", ","],
    ],
)
def test_bad_arguments_are_refused(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(argv)
    assert exc.value.code == 2


# -------------------------------------------------------------------- the JSON and the table
def _point(ips, mem=None, note=None):
    p = empty_point(note)
    if ips is not None:
        p.update(ips=ips, ms_per_batch=10.0, iters=5, max_memory_mib=mem, nvidia_smi_mib=900)
    return p


def fabricated_result() -> dict:
    args = build_parser().parse_args(["--budget", "420"])
    host = {
        "python": "3.12.3",
        "torch": "2.11.0+cu130",
        "torchvision": "0.26.0",
        "cuda": "13.0",
        "cpu_cores": 16,
        "gpu": {
            "name": "NVIDIA H200",
            "count": 1,
            "capability": "9.0",
            "memory_total_mib": 143771.0,
            "bf16": True,
            "driver": "580",
        },
    }
    result = new_result(args, host)
    result["raw"]["open_clip:ViT-B-16"] = stage_entry(
        "raw",
        "ok",
        None,
        31.5,
        {
            "build_s": 2.5,
            "image_size": 224,
            "serving_dtype": "bf16",
            "weights_mib": 570.2,
            "model": {
                "bf16": {"1": _point(412.3, 600.0), "256": _point(9876.5, 4321.0)},
                "fp16": {
                    "1": _point(None, note="out of memory"),
                    "256": _point(None, note="budget"),
                },
                "fp32": {"32": _point(2345.6, 1500.0)},
            },
            "encode_features": {"bf16": {"1": _point(301.0), "256": _point(7000.0)}},
        },
    )
    result["raw"]["open_clip:ViT-L-14"] = stage_entry(
        "raw", "skipped", "open_clip is not importable here (No module named 'open_clip')"
    )
    result["decode"] = stage_entry(
        "decode",
        "ok",
        None,
        12.0,
        {
            "sizes": {
                "4000x3000": {
                    "jpeg_kib": 3100.5,
                    "distinct": 4,
                    "gpu_batch": 32,
                    "cpu": {"1": _point(61.2), "16": _point(880.0)},
                    "gpu": _point(1500.0, 3000.0),
                },
                "640x480": {
                    "jpeg_kib": 80.0,
                    "distinct": 16,
                    "gpu_batch": 32,
                    "cpu": {"1": _point(350.0), "16": _point(None, note="budget")},
                    "gpu": _point(9000.0),
                },
            }
        },
    )
    result["pipeline"]["open_clip:ViT-B-16"] = {
        "1": stage_entry(
            "pipeline",
            "ok",
            None,
            70.0,
            {
                "workers": 1,
                "gpus_per_worker": 1.0,
                "ips": 1234.4,
                "complete": False,
                "records": 9000,
                "stage_share": {"fetch": 0.5, "embed": 0.5},
                "nvidia_smi_apps": [{"pid": 7, "used_mib": 900}],
            },
        ),
        "2": stage_entry("pipeline", "timeout", "still running at the end of its 80 s share"),
    }
    result["status"] = "partial"
    return result


def test_stage_entries_have_their_kinds_keys_and_nothing_else():
    for kind, payload in PAYLOADS.items():
        entry = stage_entry(kind, "skipped", "why", payload={"not_a_key": 1})
        assert list(entry) == [*STAGE_KEYS, *payload]
        assert entry["status"] == "skipped" and entry["reason"] == "why"
    entry = stage_entry("pipeline", "ok", payload={"ips": 5.0})
    entry["stage_share"]["x"] = 1.0  # the defaults are copied, not shared
    assert PIPELINE_PAYLOAD["stage_share"] == {} and entry["ips"] == 5.0
    with pytest.raises(ValueError):
        stage_entry("raw", "fine")


def test_json_round_trip_keeps_the_schema(tmp_path):
    result = fabricated_result()
    assert schema_problems(result) == []
    path = tmp_path / "out" / "bench-gpu.json"
    write_json(result, path)
    again = json.loads(path.read_text())
    assert again == result and schema_problems(again) == []
    assert not list(path.parent.glob("*.part"))  # written through a temporary, then renamed


def test_schema_check_sees_what_is_missing():
    result = fabricated_result()
    del result["raw"]["open_clip:ViT-B-16"]["model"]["bf16"]["1"]["nvidia_smi_mib"]
    del result["pipeline"]["open_clip:ViT-B-16"]["2"]["ips"]
    result["decode"]["status"] = "fine"
    problems = schema_problems(result)
    assert len(problems) == 3, problems
    assert schema_problems({"schema": SCHEMA}) != []


def test_table_shows_the_numbers_and_the_reasons():
    table = format_table(fabricated_result())
    lines = table.splitlines()
    assert lines[0].startswith("dmguard GPU benchmark: NVIDIA H200 (143771 MiB, cc 9.0)")
    assert "status partial" in lines[0]
    row = next(line for line in lines if line.startswith("model bf16"))
    assert row.split()[2:] == ["412", "-", "9876"]  # one column per batch size: 1, 32, 256
    fp16 = next(line for line in lines if line.startswith("model fp16"))
    assert fp16.split()[2:] == ["OOM", "-", "budget"]
    assert next(line for line in lines if line.startswith("model fp32")).split()[2:] == [
        "-",
        "2346",
        "-",
    ]
    assert any(
        line.startswith("encode_features bf16") and line.split()[-1] == "7000" for line in lines
    )
    assert any(
        line.startswith("peak MiB, model bf16") and line.split()[-1] == "4321" for line in lines
    )
    assert "raw open_clip:ViT-L-14: skipped: open_clip is not importable here" in table
    assert next(line for line in lines if line.startswith("4000x3000")).split()[-3:] == [
        "61.2",
        "880",
        "1500",
    ]
    assert next(line for line in lines if line.startswith("640x480")).split()[-3:] == [
        "350",
        "budget",
        "9000",
    ]
    pipe = next(line for line in lines if line.startswith("open_clip:ViT-B-16"))
    assert pipe.split()[1:] == ["1234*", "timeout"]  # * : not every record answered in time
    assert "  still running at the end of its 80 s share" in lines


def test_nvidia_smi_output_is_parsed():
    got = parse_nvidia_smi("NVIDIA H200, 1234, 143771, 580.159.03\n")
    assert got == {
        "name": "NVIDIA H200",
        "memory_used_mib": 1234,
        "memory_total_mib": 143771,
        "driver": "580.159.03",
    }
    assert parse_nvidia_smi("") is None
    assert parse_nvidia_smi("No devices were found") is None
    assert parse_nvidia_smi("NVIDIA H200, [N/A], 143771, 580") is None


# -------------------------------------------------------------------- the time budget
class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_allot_shares_what_is_left_by_weight():
    assert allot(400.0, [50.0, 40.0, 70.0]) == pytest.approx(125.0)
    assert allot(400.0, [70.0]) == pytest.approx(400.0)  # the last stage gets all that is left
    assert allot(0.0, [1.0]) == 0.0 and allot(-5.0, [1.0]) == 0.0 and allot(5.0, []) == 0.0


def test_stages_share_the_budget_and_pass_on_what_they_leave():
    clock = FakeClock()
    deadline = Deadline.after(103.0, clock)  # 100 s once the final reserve (3 s) is kept
    args = build_parser().parse_args(["--encoders", "A", "--workers-per-gpu", "1,2"])
    stages = plan(args, Path("/nonexistent"), 1, {"pipeline": None})
    assert [s.name for s in stages] == [
        "raw open_clip:A",
        "decode",
        "pipeline open_clip:A x1",
        "pipeline open_clip:A x2",
    ]
    shares = []

    def runner(stage, share):  # raw returns early; the others use their whole share
        shares.append(share)
        used = 10.0 if stage.kind == "raw" else share
        clock.now += used
        return {"status": "ok", "seconds": used, "payload": {}}

    result = new_result(args, {})
    saved = []
    run_stages(stages, result, deadline, runner=runner, save=lambda: saved.append(1))
    # weights 50, 40, 70, 70: raw gets 100 * 50 / 230 and leaves 11.7 s of it unused
    assert shares[0] == pytest.approx(100 * 50 / 230)
    assert shares[1] == pytest.approx(90 * 40 / 180)  # what raw left flows on
    # then 70 s for two pipeline runs: 35 s each is under their 45 s minimum, so the first
    # is skipped and the second gets it all
    left = 90 - shares[1]
    assert shares[2:] == [pytest.approx(left)]
    runs = result["pipeline"]["open_clip:A"]
    assert runs["1"]["status"] == "skipped" and runs["1"]["reason"].startswith("budget: 35 s left")
    assert runs["2"]["status"] == "ok"
    assert result["raw"]["open_clip:A"]["status"] == "ok" and result["status"] == "ok"
    assert len(saved) == 4  # the JSON is rewritten after every stage


def test_a_stage_that_cannot_run_here_is_skipped_and_its_time_goes_to_the_others():
    clock = FakeClock()
    deadline = Deadline.after(103.0, clock)
    args = build_parser().parse_args(["--encoders", "A", "--skip", "decode"])
    why = "ray is not importable here"
    stages = plan(args, Path("/x"), 1, {"pipeline": why})
    shares = []

    def runner(stage, share):
        shares.append(share)
        return {"status": "timeout", "reason": "stopped", "seconds": share}

    result = new_result(args, {})
    run_stages(stages, result, deadline, runner=runner)
    assert shares == [pytest.approx(100.0)]  # raw alone shares out the whole budget
    runs = result["pipeline"]["open_clip:A"]
    assert [runs[k]["status"] for k in ("1", "2")] == ["skipped", "skipped"]
    assert runs["1"]["reason"] == why
    assert result["raw"]["open_clip:A"]["status"] == "timeout" and result["status"] == "partial"
    assert result["decode"]["reason"] == "left out (--skip)"


def test_deadline_and_point_costs():
    clock = FakeClock()
    d = Deadline.after(10.0, clock)
    assert d.left() == 10.0 and d.allows(10.0) and not d.allows(10.1)
    clock.now += 12.0
    assert d.left() == 0.0
    assert point_cost(1.0, 3, None, 64) == 3.0  # nothing measured yet: a guess
    # 0.1 s per batch of 8 -> 0.8 s at 64: 3 warm-up iterations, 1 more, and the minimum time
    assert point_cost(1.0, 3, (8, 0.1), 64) == pytest.approx(1.0 + 4 * 0.8 + 0.25)


def test_timed_runs_warm_up_then_until_the_minimum_time():
    clock = FakeClock()
    calls, syncs = [], []

    def fn():
        calls.append(clock.now)
        clock.now += 0.3

    n, secs = timed(fn, sync=lambda: syncs.append(1), min_time_s=1.0, warmup=2, clock=clock)
    assert n == 4 and secs == pytest.approx(1.2)  # 0.3 s a call: the 4th passes 1 s
    assert len(calls) == 6 and len(syncs) == 5  # warm-up untimed, then one sync per timed call
    n, _ = timed(fn, min_time_s=0.0, warmup=0, min_iters=3, clock=clock)
    assert n == 3
    point = make_point(8, 4, 2.0, max_memory_mib=12.5)
    assert (
        point["ips"] == 16.0 and point["ms_per_batch"] == 500.0 and point["max_memory_mib"] == 12.5
    )
    assert set(point) == set(POINT_KEYS)


def test_raw_plan_measures_the_serving_dtype_first_and_fp32_once():
    order = raw_plan([1, 8], 32, "bf16", bf16=True)
    assert order == [
        ("model", "bf16", 1, None),
        ("model", "bf16", 8, None),
        ("encode_features", "bf16", 1, None),
        ("encode_features", "bf16", 8, None),
        ("model", "fp16", 1, None),
        ("model", "fp16", 8, None),
        ("model", "fp32", 32, None),
    ]
    older = raw_plan([1], 32, "fp16", bf16=False)  # a GPU without bf16: serving is fp16
    assert ("model", "bf16", 1, "bf16 not supported") in older
    assert {dt for _, dt, _, _ in raw_plan([1], 32, "fp32", False, cuda=False)} == {"fp32"}


def test_raw_stage_measures_until_its_deadline_then_skips():
    """The raw stage itself, on CPU with the tiny encoder (fp32 only there): two points
    measured, then the clock jumps past the deadline and the rest are skipped ("budget")."""
    from tests.conftest import TINY

    clock = FakeClock()
    spec = {
        "kind": "raw",
        "device": "cpu",
        "encoder": TINY,
        "batches": [1, 2],
        "fp32_batch": 2,
        "min_time_s": 0.05,
    }
    saved = []

    def checkpoint(payload):
        saved.append(json.loads(json.dumps(payload)))
        if len(saved) == 2:
            clock.now += 1000.0  # out of time from here on

    payload = raw_stage(spec, Deadline.after(100.0, clock), checkpoint)
    model, enc = payload["model"]["fp32"], payload["encode_features"]["fp32"]
    assert model["1"]["ips"] > 0 and model["2"]["ips"] > 0 and model["2"]["iters"] >= 3
    assert enc["1"]["note"] == enc["2"]["note"] == "budget" and enc["1"]["ips"] is None
    assert payload["serving_dtype"] == "fp32" and payload["image_size"] > 0
    assert len(saved) == 2 and saved[-1]["model"]["fp32"]["2"]["ips"] == model["2"]["ips"]
    entry = stage_entry("raw", "ok", payload=payload)
    result = new_result(build_parser().parse_args([]), {})
    result["raw"][TINY] = entry
    assert schema_problems(result) == []


# -------------------------------------------------------------------- child processes
def test_a_stage_over_its_share_is_stopped_with_everything_it_started(tmp_path):
    """The stage starts a grandchild in a session of its own (as the broker's binary is
    started) and sleeps; at the end of its share both are gone, and what it checkpointed
    is kept."""
    pidfile = tmp_path / "grandchild.pid"
    code = (
        "import json, subprocess, sys, time\n"
        "with open(sys.argv[1], 'w') as f:\n"
        "    json.dump({'status': 'timeout', 'payload': {'sizes': {'1x1': 1}}}, f)\n"
        "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'], start_new_session=True)\n"
        f"with open({str(pidfile)!r}, 'w') as f:\n"
        "    f.write(str(p.pid))\n"
        "time.sleep(120)\n"
    )
    t0 = time.monotonic()
    # 8 s: the child (and its grandchild) are well started by then, even on a busy machine
    got = run_child(lambda out: [sys.executable, "-c", code, str(out)], 8.0, grace_s=1.0)
    took = time.monotonic() - t0
    assert got["status"] == "timeout" and "stopped" in got["reason"], got
    assert got["payload"] == {"sizes": {"1x1": 1}}
    assert took < 12.0
    pid = int(pidfile.read_text())
    deadline = time.monotonic() + 5
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.1)  # killed; the zombie is reaped by init
    stat = Path(f"/proc/{pid}/stat")
    assert not stat.exists() or stat.read_text().rsplit(")", 1)[1].split()[0] == "Z"


def test_a_stage_result_is_read_and_a_crash_is_a_failure(tmp_path):
    ok = "import json, sys; json.dump({'status': 'ok', 'reason': None, 'payload': {'x': 1}}, open(sys.argv[1], 'w'))"
    got = run_child(lambda out: [sys.executable, "-c", ok, str(out)], 30.0)
    assert got["status"] == "ok" and got["payload"] == {"x": 1} and got["seconds"] > 0
    got = run_child(lambda out: [sys.executable, "-c", "raise SystemExit(3)"], 30.0)
    assert got["status"] == "failed" and "exited with code 3" in got["reason"]


def test_a_stage_child_runs_the_program_with_its_spec():
    """gpu_host starts each stage as `python -m MODULE --stage-spec ...`: MODULE is the
    program (bench_gpu, whose main runs the stage), not the module that names it."""
    argv = stage_argv({"kind": "raw"})(Path("/x/stage.json"))
    assert argv[0] == sys.executable and argv[1:4] == ["-m", "benchmarks.bench_gpu", "--stage-spec"]
    assert json.loads(argv[4]) == {"kind": "raw", "out": "/x/stage.json"}
    assert MODULE == "benchmarks.bench_gpu" and build_parser().prog == f"python -m {MODULE}"


# -------------------------------------------------------------------- no GPU
def the_one_no_cuda_line(done: subprocess.CompletedProcess) -> str:
    """Exit 2, nothing on stdout, one line on stderr saying there is no CUDA device."""
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("bench-gpu: no CUDA device: "), lines
    return lines[0]


def test_without_a_gpu_it_stops_at_once_with_one_line(tmp_path):
    out = tmp_path / "x.json"
    for extra in ([], ["--check"]):
        done = subprocess.run(
            [sys.executable, "-m", "benchmarks.bench_gpu", "--json", str(out), *extra],
            cwd=REPO,
            env=NO_GPU,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert "CUDA_VISIBLE_DEVICES=''" in the_one_no_cuda_line(done)
        assert not out.exists()


def test_gpu_sh_without_a_gpu_stops_before_installing_anything(tmp_path):
    site = tmp_path / "site"
    env = {
        **NO_GPU,
        "PYTHON": sys.executable,
        "WHEELHOUSE": str(tmp_path / "none"),
        "BENCH_SITE": str(site),
        "BENCH_JSON": str(tmp_path / "b.json"),
    }
    done = subprocess.run(
        ["bash", str(REPO / "benchmarks" / "gpu.sh")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    the_one_no_cuda_line(done)
    assert not site.exists() and not (tmp_path / "b.json").exists()


# -------------------------------------------------------------------- the decode comparison's CPU half
def test_cpu_decode_path_is_the_services_path():
    from services.images import decode
    from training.model.encoders import Preprocess

    small, big = make_jpegs(1, (64, 48))[0], make_jpegs(1, (1000, 700), seed=1)[0]
    for blob in (small, big):
        x = cpu_to_tensor(blob)
        assert x.shape == (3, 224, 224) and x.dtype == np.float32
        # decoded at reduced DCT scale where the image allows it, as the workers decode
        np.testing.assert_array_equal(x, Preprocess()(decode(blob, target_size=224)))
    assert make_jpegs(2, (64, 48)) != make_jpegs(2, (64, 48), seed=5)


def test_cpu_decode_point_counts_images():
    blobs = make_jpegs(2, (64, 48))
    point = cpu_decode_point(blobs, threads=2, min_time_s=0.05)
    assert set(point) == set(POINT_KEYS)
    assert point["ips"] > 0 and point["iters"] >= 1 and point["ms_per_batch"] is None


def test_gpu_half_resizes_crops_and_normalises_as_preprocess_does():
    """The GPU path's tensor maths (decode_jpeg's output -> 224 tensor), run here on CPU
    tensors: within a small error of CLIP's Preprocess on the full-size decode (bicubic in
    torch vs in Pillow), images of two shapes in one batch, in their order."""
    import warnings

    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    from services.images import decode
    from training.model.encoders import Preprocess

    blobs = make_jpegs(2, (640, 480)) + make_jpegs(1, (300, 500), seed=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchvision >= 0.29: decode_jpeg is deprecated
        images = decode_jpeg(
            [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in blobs],
            mode=ImageReadMode.RGB,
        )
    x = gpu_to_tensor(images)
    assert x.shape == (3, 3, 224, 224) and x.dtype == torch.float32
    for i, blob in enumerate(blobs):
        ref = Preprocess()(decode(blob, target_size=None))
        assert float(np.abs(x[i].numpy() - ref).mean()) < 0.02, i


# -------------------------------------------------------------------- the pipeline stage, on CPU
@pytest.mark.slow
@pytest.mark.broker
@pytest.mark.ray
def test_pipeline_stage_runs_serve_within_its_budget(tmp_path):
    """The pipeline stage as a child, on CPU with the tiny encoder (no GPU share): serve
    through the embedded broker, every output back within the budget, serve stopped."""
    from tests.conftest import TINY

    spec = {
        "kind": "pipeline",
        "device": "cpu",
        "encoder": TINY,
        "workers_per_gpu": 1,
        "gpus": 1,
        "size": [160, 120],
        "max_batch": 8,
        "cpus_per_worker": 1.0,
        "fetch_threads": 2,
        "registry_root": str(tmp_path / "enc"),
        "min_time_s": 1.0,
        "budget_s": 100.0,
    }
    got = run_child(stage_argv(spec), 150.0)
    assert got["status"] == "ok", got
    entry = stage_entry("pipeline", got["status"], got["reason"], got["seconds"], got["payload"])
    assert entry["complete"] is True and entry["records"] == entry["sent"] > 0 and entry["ips"] > 0
    assert entry["workers"] == 1 and entry["gpus_per_worker"] == 0.0 and entry["dead_letters"] == 0
    assert entry["ready_s"] > 0 and entry["probe_ips"] > 0
    assert sum(entry["stage_share"].values()) == pytest.approx(1.0, abs=0.01)
    assert got["seconds"] < 150.0
