"""The GPU benchmark's result (benchmarks/bench_gpu.py, whose docstring documents the JSON):
its schema and the pieces it is made of (points, stage entries, the whole result), the
time budget every stage measures within, the JSON file and the table printed at the end.

Standard library only: the parent process imports this before it knows whether the
machine has what the stages need.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

SCHEMA = "dmguard-bench-gpu/1"
POINT_KEYS = ("ips", "ms_per_batch", "iters", "max_memory_mib", "nvidia_smi_mib", "note")
STAGE_KEYS = ("status", "reason", "seconds")
STATUSES = ("ok", "skipped", "failed", "timeout")
DTYPES = ("bf16", "fp16", "fp32")


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
def fmt_num(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.0f}" if value >= 100 else f"{value:.1f}"


def _cell(p: dict[str, Any] | None) -> str:
    if not p:
        return "-"
    if p.get("ips") is None:
        return {"budget": "budget", "out of memory": "OOM"}.get(p.get("note") or "", "-")
    return fmt_num(p["ips"])


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
        f"dmguard GPU benchmark: {gpu.get('name') or '?'} ({fmt_num(gpu.get('memory_total_mib'))} MiB, "
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
                *(fmt_num((peak.get(str(b)) or {}).get("max_memory_mib")) for b in batches),
            ]
        )
        lines += _rows(header, rows)
        note = f"  built in {fmt_num(entry.get('build_s'))} s, weights {fmt_num(entry.get('weights_mib'))} MiB"
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
                    f"{size} ({fmt_num(e.get('jpeg_kib'))} KiB)",
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
                    cells.append(fmt_num(e["ips"]) + ("" if e.get("complete") else "*"))
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
