"""`dmguard broker`: the embedded Kafka-compatible broker in the foreground (Tansu in
memory, or noida-db on disk with --durable)."""

from __future__ import annotations

import argparse
import signal
import sys
import threading


def add_parser(sub) -> None:
    sp = sub.add_parser(
        "broker",
        help="run the embedded Kafka-compatible broker in the foreground",
        description="The embedded broker: Tansu in memory (the default; a restart loses "
        "everything), or with --durable DIR noida-db, whose topics, records, committed offsets "
        "and transactions survive a restart on the same DIR (stop it with SIGTERM or Ctrl-C: "
        "a SIGKILL loses the last ~1 s of writes).",
    )
    sp.add_argument("--host", default="127.0.0.1")
    sp.add_argument("--port", type=int, default=9092)
    sp.add_argument(
        "--durable", metavar="DIR", default=None,
        help="keep the broker's state in DIR (noida-db), so a restart on DIR loses nothing",
    )  # fmt: skip
    sp.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from services.broker import EmbeddedBroker

    broker = EmbeddedBroker(args.host, args.port, durable_dir=args.durable).start()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    print(f"ready {broker.bootstrap}", flush=True)
    code = broker.run_until(stop.is_set)
    if code is not None:
        print(f"broker exited with {code}", file=sys.stderr)
        return 1
    return 0
