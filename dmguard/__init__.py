"""The `dmguard` command line: the programs, on top of everything else.

Each command (or group of commands) is one module here with `add_parser(sub)`,
its flags, and `run...(args)`, which turns the flags into settings and calls the
modules that do the work. `main` parses, sets up logging, runs the command and
turns known failures into one line. Settings are read from flags, then
`DMGUARD_*` environment variables (services.config), then defaults.
"""

from __future__ import annotations

import argparse
import logging
import sys
import traceback

from dmguard import (
    bench,
    broker,
    dashboard_png,
    data,
    demo,
    heads,
    score,
    serve,
    soak,
    stream_io,
    topics,
    train,
)
from services.errors import BrokerError, DmguardError, KafkaAccessError

# In `dmguard --help` order.
COMMAND_MODULES = (
    broker,
    topics,
    serve,
    stream_io,
    score,
    heads,
    bench,
    soak,
    train,
    data,
    demo,
    dashboard_png,
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="dmguard",
        description="Detect diffusion-model-generated images in a Kafka stream of image URLs.",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    p.add_argument(
        "--debug",
        action="store_true",
        help="on a known failure, show the Python traceback too (not only the one-line message)",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMAND_MODULES:
        module.add_parser(sub)
    return p


_USER_PATH_ERRORS = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)


def _broker_unreachable(exc: BaseException) -> bool:
    """Whether `exc` (or the Kafka error under a BrokerError) means no broker answered."""
    import kafka.errors

    unreachable = (kafka.errors.KafkaTimeoutError, kafka.errors.KafkaConnectionError)
    if hasattr(kafka.errors, "NoBrokersAvailable"):  # kafka-python 2.x; 3.x times out instead
        unreachable += (kafka.errors.NoBrokersAvailable,)
    if isinstance(exc, BrokerError):
        exc = exc.__cause__
    return isinstance(exc, unreachable)


def describe_failure(exc: BaseException, args: argparse.Namespace) -> str | None:
    """One line saying what went wrong and what to do, for a known kind of failure; None for a bug."""
    from kafka.errors import KafkaError

    bootstrap = getattr(args, "bootstrap", None) or "the bootstrap servers"
    if isinstance(exc, KafkaAccessError):  # the broker is there and said why it refuses
        message = str(exc)
    elif isinstance(exc, (BrokerError, KafkaError)) and _broker_unreachable(exc):
        message = (
            f"no Kafka broker answers at {bootstrap}; start one with `dmguard broker` "
            "or set --bootstrap/DMGUARD_BOOTSTRAP (-v shows the Kafka client's log)"
        )
    elif isinstance(exc, DmguardError):
        message = str(exc)
    elif isinstance(exc, KafkaError):
        message = (
            f"Kafka error from {bootstrap}: {type(exc).__name__}: {exc}; check that the broker "
            "is up and the DMGUARD_KAFKA_* settings (security, SASL, TLS) match it"
        )
    elif isinstance(exc, _USER_PATH_ERRORS):
        what = exc.strerror or type(exc).__name__
        where = f": {exc.filename}" if exc.filename is not None else f": {exc}"
        message = f"{what}{where} (check the path and its permissions)"
    else:
        return None
    return " ".join(message.split()) or type(exc).__name__


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns its exit code.

    A known failure (a DmguardError, an unreachable or failing Kafka broker, a
    missing or unreadable path) prints one line, `dmguard COMMAND: what is
    wrong and what to do`, and returns 1 (`--debug` adds the traceback);
    Ctrl-C returns 130. Anything else is a bug: its traceback is printed, with
    a line saying how to report it, and main returns 1.
    """
    args = build_parser().parse_args(argv)
    # Root at WARNING: open_clip and kafka log chatty INFO lines through it.
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    for name in ("dmguard", "services", "actors", "training"):
        logging.getLogger(name).setLevel(logging.DEBUG if args.verbose else logging.INFO)
    # kafka-python logs every failed connection attempt; the error that ends a command says it
    # in one line. -v (or --debug) shows them.
    logging.getLogger("kafka.net").setLevel(
        logging.NOTSET if args.verbose or args.debug else logging.CRITICAL
    )
    prefix = f"dmguard {args.command}:"
    try:
        return args.func(args)
    except KeyboardInterrupt:
        if args.debug:
            traceback.print_exc()
        print(f"{prefix} interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        message = describe_failure(exc, args)
        if message is None:
            traceback.print_exc()
            print(
                f"{prefix} unexpected {type(exc).__name__}: this is a bug in dmguard; please report "
                "it with the traceback above, the command line and `pip show dmguard`",
                file=sys.stderr,
            )
            return 1
        if args.debug:
            traceback.print_exc()
        print(f"{prefix} {message}", file=sys.stderr)
        return 1
