"""`dmguard init-head` and `dmguard models`: an untrained head to try the pipeline with,
and the offline CLIP weights."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from dmguard.common import registry_arg
from services.config import default_models_dir


def add_parser(sub) -> None:
    sp = sub.add_parser(
        "init-head", help="register an UNTRAINED head (random weights) to try the pipeline"
    )
    registry_arg(sp)
    sp.add_argument(
        "--encoder", required=True, help="encoder spec, e.g. open_clip:dmguard-tiny or onnx:PATH"
    )
    sp.add_argument("--seed", type=int, default=0, help="seed of the untrained head's weights")
    sp.add_argument("--no-promote", action="store_true", help="register without making it CURRENT")
    sp.set_defaults(func=run_init_head)

    sp = sub.add_parser(
        "models", help="fetch and verify the offline CLIP weights; prints their encoder spec"
    )
    sp.add_argument(
        "--name", default="clip-vit-b16-int8", help="known weights to fetch (default: %(default)s)"
    )
    sp.add_argument("--cache", default=default_models_dir(), help="cache folder")
    sp.add_argument(
        "--float32",
        action="store_true",
        help="also write a float32 copy of the INT8 tower (slower here: docs/operations.md); needs onnx",
    )
    sp.set_defaults(func=run_models)


def run_init_head(args: argparse.Namespace) -> int:
    from training.model.detector import register_untrained_head
    from training.model.registry import Registry

    meta = register_untrained_head(
        Registry(args.registry), args.encoder, seed=args.seed, promote=not args.no_promote
    )
    print(json.dumps(meta.to_dict()))
    return 0


def run_models(args: argparse.Namespace) -> int:
    from training.model.weights import KNOWN, fetch_weights, float32_weights

    path = fetch_weights(args.name, Path(args.cache)).resolve()  # refuses unknown names
    known = KNOWN[args.name]
    out = {
        "name": args.name,
        "encoder": f"onnx:{path}",
        "sha256": known.sha256,
        "licence": known.licence,
    }
    if args.float32:
        out["float32_encoder"] = f"onnx:{float32_weights(Path(args.cache)).resolve()}"
    print(json.dumps(out))
    return 0
