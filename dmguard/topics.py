"""`dmguard topics`: create the four topics where missing."""

from __future__ import annotations

import argparse

from dmguard.common import kafka_args, kafka_from
from services.config import Topics


def add_parser(sub) -> None:
    sp = sub.add_parser("topics", help="create the four dmguard topics where missing")
    kafka_args(sp)
    sp.add_argument(
        "--partitions",
        type=int,
        default=4,
        help="partitions of the images topic: the most workers that can share it (default %(default)s)",
    )
    sp.add_argument(
        "--replication", type=int, default=1, help="replication factor (3 on a real cluster)"
    )
    sp.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from services.kafka_io import ensure_topics

    topics = Topics()
    created = ensure_topics(
        kafka_from(args), topics, partitions=args.partitions, replication=args.replication
    )
    for name in topics.all():
        print(f"{name}: {'created' if name in created else 'exists'}")
    return 0
