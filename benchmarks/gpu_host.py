"""The GPU benchmark's host and its processes (benchmarks/bench_gpu.py): the progress
lines (timed from the start of the run, in every process), the GPU as nvidia-smi sees
it, what this Python can use (a CUDA device, the stages' packages), and each stage run
as a child process within its share of the budget, stopped with its whole process tree
when it overruns.

torch is imported where it is used: `--check` runs this before anything is installed.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from benchmarks import harness
from benchmarks.gpu_result import STATUSES

MODULE = "benchmarks.bench_gpu"  # the program each stage's child process runs (--stage-spec)
KILL_GRACE_S = 5.0  # SIGTERM to SIGKILL for a child over its share


# -------------------------------------------------------------------- the machine
def cores() -> int:
    return len(os.sched_getaffinity(0))


# -------------------------------------------------------------------- progress and the GPU
# Progress lines count from the start of the run, in the stages' processes too.
_T0_ENV = "DMGUARD_BENCH_GPU_T0"
_T0 = float(os.environ.get(_T0_ENV) or time.time())


say = partial(harness.say, "bench-gpu", since=_T0)


def pass_on_clock() -> None:
    """The processes started from here on (the stages) time their progress lines from
    this process's start, not their own."""
    os.environ[_T0_ENV] = repr(_T0)


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


def smi_used() -> int | None:
    smi = nvidia_smi()
    return smi["memory_used_mib"] if smi else None


def mib(n: float) -> float:
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


# -------------------------------------------------------------------- what this Python can use
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
        "cpu_cores": cores(),
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
            "memory_total_mib": mib(props.total_memory),
            "bf16": torch.cuda.is_bf16_supported(),
            "driver": smi["driver"] if smi else None,
        }
    return info
