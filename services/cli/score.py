"""`dmguard score`: score images once, without Kafka; one verdict JSON per line."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from services.cli.common import DEVICES, registry_arg
from services.config import fetch_policy
from services.fetch import FetchPolicy


def add_parser(sub) -> None:
    sp = sub.add_parser("score", help="score images once, without Kafka; one verdict JSON per line")
    registry_arg(sp)
    sp.add_argument("targets", nargs="+", metavar="PATH_OR_URL")
    sp.add_argument("--version", default=None, help="head version (default: CURRENT)")
    sp.add_argument("--allow-private-urls", action="store_true")
    sp.add_argument("--device", choices=DEVICES, default="auto")
    sp.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from training.detector import Detector
    from training.registry import Registry

    detector = Detector.from_registry(Registry(args.registry), args.version, device=args.device)
    policy = fetch_policy(allow_private_urls=args.allow_private_urls, allow_file_urls=True)
    failures = 0
    for target in args.targets:
        line, failed = score_one(detector, target, policy)
        print(json.dumps(line) if failed else line)
        failures += failed
    return 1 if failures else 0


def score_one(detector, target: str, policy: FetchPolicy) -> tuple[str | dict, bool]:
    """(the verdict's JSON text, False), or ({id, url, error: {code, message}}, True) when
    the image cannot be scored. A target without "://" is a local path."""
    from actors.stream import fetch_pixels
    from services.errors import InputError
    from services.records import ImageRecord, Verdict

    url = target if "://" in target else Path(target).resolve().as_uri()
    start = time.time() * 1000
    try:
        pixels, _ = fetch_pixels(url, policy, detector.encoder.preprocess, views=detector.views)
        _, scores = detector(pixels[None])
    except InputError as exc:
        return {"id": target, "url": url, "error": {"code": exc.code, "message": str(exc)}}, True
    meta = detector.meta
    verdicts, probabilities = detector.judge(scores)
    verdict = Verdict.build(
        ImageRecord(id=target, url=url),
        score=float(scores[0]),
        threshold=meta.threshold,
        encoder=meta.encoder,
        head_version=meta.version,
        record_ts_ms=start,
        verdict=verdicts[0],
        probability=probabilities[0],
        uncertain_from=meta.uncertain_from,
    )
    return verdict.to_bytes().decode(), False
