"""`dmguard score`: score images once, without Kafka; one verdict JSON per line."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from dmguard.common import DEVICES, registry_arg
from services.config import fetch_policy
from services.provenance import MODES, ProvenanceSettings


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
        "--provenance",
        choices=MODES,
        default="on",
        help="markers in the file (C2PA, IPTC source type, generator metadata): on = a declared "
        "AI marker makes the verdict 'generated'; evidence = report only; off = not read "
        "(default %(default)s; docs/provenance.md)",
    )
    sp.add_argument(
        "--c2pa-trust-anchors",
        type=Path,
        default=None,
        metavar="PEM",
        help="certificate authorities whose C2PA signers count as verified (a PEM bundle)",
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
    anchors = args.c2pa_trust_anchors.read_text() if args.c2pa_trust_anchors else None
    provenance = ProvenanceSettings(mode=args.provenance, trust_anchors=anchors)
    failures = 0
    for target in args.targets:
        line, failed = score_one(detector, target, policy, provenance)
        print(json.dumps(line) if failed else line)
        failures += failed
    return 1 if failures else 0
