"""Reading what the workers wrote: verdicts and dead letters, from the start of their
topics, incrementally. Used by `dmguard demo` to account for every record it sent,
and by the end-to-end tests for the same purpose."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from services.config import KafkaSettings, Topics
from services.poll import WaitTimeout, wait_until


@dataclass
class Outputs:
    verdicts: list[dict] = field(default_factory=list)
    dead_letters: list[dict] = field(default_factory=list)


class OutputReader:
    """Reads verdicts and dead letters from the beginning, incrementally."""

    def __init__(self, bootstrap: str, topics: Topics | None = None, **client) -> None:
        """`client`: extra Kafka client settings (TLS, SASL), as in KafkaSettings.client_extra."""
        from kafka.structs import TopicPartition

        from services.kafka_io import make_consumer

        self.topics = topics = topics or Topics()
        kafka = KafkaSettings(bootstrap_servers=bootstrap, client_extra=client)
        self.consumer = make_consumer(kafka, group=False)
        tps = [
            TopicPartition(t, p)
            for t in (topics.verdicts, topics.dead_letter)
            for p in (self.consumer.partitions_for_topic(t) or [])
        ]
        self.consumer.assign(tps)
        self.consumer.seek_to_beginning(*tps)
        self.out = Outputs()

    def read(self, idle_s: float = 0.5) -> Outputs:
        """Everything new until the topics stay quiet for `idle_s`; returns all read so far."""
        while True:
            batch = self.consumer.poll(timeout_ms=int(idle_s * 1000))
            if not batch:
                return self.out
            for tp, messages in batch.items():
                is_verdict = tp.topic == self.topics.verdicts
                target = self.out.verdicts if is_verdict else self.out.dead_letters
                target.extend(json.loads(m.value) for m in messages)

    def close(self) -> None:
        self.consumer.close()


def output_key(record: dict) -> str:
    """The id of an output, or for a dead letter without one, its original record text."""
    return record.get("id") or f"raw:{record.get('record')}"


def wait_accounted(
    reader: OutputReader,
    expected: set[str],
    timeout: float,
    on_progress: Callable[[Outputs], None] | None = None,
) -> Outputs:
    """Read until every key in `expected` has a verdict or a dead letter, or `timeout` passes;
    returns all read either way (the caller compares)."""

    def read() -> Outputs:
        out = reader.read()
        if on_progress:
            on_progress(out)
        return out

    def accounted(out: Outputs) -> bool:
        return expected <= {output_key(r) for r in out.verdicts + out.dead_letters}

    try:
        return wait_until(read, timeout, interval_s=0, done=accounted, what="every output")
    except WaitTimeout as exc:
        return exc.last


def duplicates(out: Outputs) -> int:
    counts = Counter(output_key(r) for r in out.verdicts + out.dead_letters)
    return sum(n - 1 for n in counts.values() if n > 1)
