"""`dmguard score`: score images once, without Kafka; one verdict JSON per line."""

from __future__ import annotations

import argparse
import json

from dmguard.common import DEVICES, registry_arg
from services.config import fetch_policy


def add_parser(sub) -> None:
    sp = sub.add_parser("score", help="score images once, without Kafka; one verdict JSON per line")
    registry_arg(sp)
    sp.add_argument(
        "targets", nargs="+", metavar="PATH_OR_URL", help="image files or http(s) URLs to score"
    )
    sp.add_argument("--version", default=None, help="head version (default: CURRENT)")
    sp.add_argument(
        "--allow-private-urls",
        action="store_true",
        help="fetch from loopback/private/link-local addresses too",
    )
    sp.add_argument(
        "--device",
        choices=DEVICES,
        default="auto",
        help="where the encoder runs: auto picks CUDA when there is a GPU (default %(default)s)",
    )
    sp.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from actors.single import score_one  # not at import: it loads torch (CLI start-up)
    from training.model.detector import Detector
    from training.model.registry import Registry

    detector = Detector.from_registry(Registry(args.registry), args.version, device=args.device)
    policy = fetch_policy(allow_private_urls=args.allow_private_urls, allow_file_urls=True)
    failures = 0
    for target in args.targets:
        line, failed = score_one(detector, target, policy)
        print(json.dumps(line) if failed else line)
        failures += failed
    return 1 if failures else 0
