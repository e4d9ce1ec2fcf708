"""`dmguard broker`: the embedded Kafka-compatible broker (Tansu) in the foreground."""

from __future__ import annotations

import argparse
import signal
import sys
import threading


def add_parser(sub) -> None:
    sp = sub.add_parser(
        "broker", help="run the embedded Kafka-compatible broker (Tansu) in the foreground"
    )
    sp.add_argument("--host", default="127.0.0.1")
    sp.add_argument("--port", type=int, default=9092)
    sp.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from services.broker import EmbeddedBroker

    broker = EmbeddedBroker(args.host, args.port).start()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    print(f"ready {broker.bootstrap}", flush=True)
    code = broker.run_until(stop.is_set)
    if code is not None:
        print(f"broker exited with {code}", file=sys.stderr)
        return 1
    return 0
