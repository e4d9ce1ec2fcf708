"""`dmguard produce` and `dmguard tail`: records into a topic, and out of one."""

from __future__ import annotations

import argparse
import base64
import json
import sys
import uuid
from collections.abc import Iterable

from dmguard.common import kafka_args, kafka_from
from services.config import Topics
from services.records import message_key


def add_parser(sub) -> None:
    sp = sub.add_parser("produce", help="send records: JSON lines, or one bare URL per line")
    kafka_args(sp)
    sp.add_argument(
        "--topic", default=Topics().images, help="topic to send to (default %(default)s)"
    )
    sp.add_argument("file", help="a file, or - for standard input")
    sp.set_defaults(func=run_produce)

    sp = sub.add_parser("tail", help="print a topic's records as JSON lines")
    kafka_args(sp)
    sp.add_argument(
        "--topic", default=Topics().verdicts, help="topic to read (default %(default)s)"
    )
    sp.add_argument(
        "--from-beginning",
        action="store_true",
        help="read the topic from its first record (default: only what arrives from now on)",
    )
    sp.add_argument("--max", type=int, default=None, help="stop after N records")
    sp.add_argument(
        "--timeout", type=float, default=None, help="stop after S seconds without a record"
    )
    sp.add_argument(
        "--isolation-level",
        choices=["read_uncommitted", "read_committed"],
        default="read_uncommitted",
        help="read_committed: only records of committed transactions (what a downstream reader "
        "of transactional outputs should use; the broker must honour aborts: the durable one does)",
    )
    sp.set_defaults(func=run_tail)


def messages_from_lines(lines: Iterable[str]) -> list[tuple[bytes | None, bytes]]:
    """(key, value) per non-blank line. JSON lines pass through untouched (bad ones too:
    the service dead-letters them), keyed by their id when they have one; a bare URL
    becomes {"id": <uuid>, "url": URL}."""
    out = []
    for raw in lines:
        line = raw.rstrip("\n")
        if not line.strip():
            continue
        if line.lstrip().startswith(("{", "[")):
            out.append((message_key(line), line.encode()))
        else:
            rid = uuid.uuid4().hex
            out.append((rid.encode(), json.dumps({"id": rid, "url": line.strip()}).encode()))
    return out


def run_produce(args: argparse.Namespace) -> int:
    from services.kafka_io import produce

    stream = sys.stdin if args.file == "-" else open(args.file, encoding="utf-8")
    with stream:
        messages = messages_from_lines(stream)
    sent = produce(kafka_from(args), args.topic, messages)
    print(f"sent {sent} records to {args.topic}", file=sys.stderr)
    return 0


def run_tail(args: argparse.Namespace) -> int:
    from services.kafka_io import assign_all, make_consumer, read_values

    consumer = make_consumer(kafka_from(args), group=False, isolation_level=args.isolation_level)
    try:
        if not assign_all(consumer, args.topic, from_beginning=args.from_beginning):
            print(f"topic {args.topic} does not exist (run `dmguard topics`)", file=sys.stderr)
            return 1
        for value in read_values(consumer, max_records=args.max, idle_timeout_s=args.timeout):
            print(as_text(value), flush=True)
    except KeyboardInterrupt:
        pass
    finally:
        consumer.close()
    return 0


def as_text(value: bytes | None) -> str:
    """A record value as one line: itself when it is UTF-8, else its bytes in base64."""
    if value is None:
        return "null"
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return json.dumps({"undecodable_base64": base64.b64encode(value).decode()})
