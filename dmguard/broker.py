"""`dmguard broker`: an embedded Kafka-compatible broker in the foreground, one of three
engines: Tansu in memory (the default), noida-db on disk (--engine noida --data DIR, or
--durable DIR) or Apache Kafka itself (--engine kafka, after `make kafka`)."""

from __future__ import annotations

import argparse
import signal
import sys
import threading

from services.broker import ENGINES, broker_for
from services.errors import ConfigError


def add_parser(sub) -> None:
    sp = sub.add_parser(
        "broker",
        help="run the embedded Kafka-compatible broker in the foreground",
        description="The embedded broker, one of three engines. tansu (the default): in "
        "memory, a restart loses everything. noida (--engine noida --data DIR): noida-db, "
        "whose topics, records, committed offsets and transactions survive a restart on the "
        "same DIR (a SIGKILL loses the last ~1 s of writes). kafka: Apache Kafka, one KRaft "
        "node in a JVM (needs Java 17+ and `make kafka`); with --data DIR it keeps everything "
        "across a restart on DIR, without it its folder is temporary. It prints `ready "
        "HOST:PORT` once it answers; stop it with SIGTERM or Ctrl-C.",
    )
    sp.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default %(default)s)"
    )
    sp.add_argument(
        "--port", type=int, default=9092, help="Kafka port to listen on (default %(default)s)"
    )
    sp.add_argument(
        "--engine",
        choices=ENGINES,
        default=None,
        help="tansu (in memory, the default), noida (on disk, needs --data) or kafka",
    )
    sp.add_argument(
        "--data",
        metavar="DIR",
        default=None,
        help="the engine's state folder (noida, kafka): a restart on DIR loses nothing",
    )
    sp.add_argument(
        "--durable",
        metavar="DIR",
        default=None,
        help="the same as --engine noida --data DIR",
    )
    sp.set_defaults(func=run)


def engine_and_data(args: argparse.Namespace) -> tuple[str, str | None]:
    """The engine and data folder the flags name (--durable DIR: noida on DIR)."""
    engine, data = args.engine, args.data
    if args.durable is not None:
        if engine not in (None, "noida"):
            raise ConfigError(
                f"--durable DIR means --engine noida --data DIR, not --engine {engine}"
            )
        if data is not None and data != args.durable:
            raise ConfigError("give the folder once: --durable DIR or --data DIR, not both")
        engine, data = "noida", args.durable
    return engine or "tansu", data


def run(args: argparse.Namespace) -> int:
    engine, data = engine_and_data(args)
    broker = broker_for(engine, args.host, args.port, data_dir=data)

    # Kafka takes seconds to start: a SIGTERM meanwhile stops it as Ctrl-C would (start()
    # stops the child on the way out) instead of leaving the JVM running without us.
    def interrupted(*_) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)
    broker.start()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    print(f"ready {broker.bootstrap}", flush=True)
    code = broker.run_until(stop.is_set)
    if code is not None:
        print(f"{broker.name} exited with {code}", file=sys.stderr)
        return 1
    return 0
