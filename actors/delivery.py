"""How a worker's outputs and its consumed offsets reach the broker.

At least once (the default): each output is sent as soon as it is built; a
commit first flushes the producer (every output acknowledged) and then commits
the offsets. A worker that dies between two commits outputs again what it had
not committed: duplicates, never losses.

Exactly once (`serve --exactly-once`): Kafka's consume-transform-produce
transaction. Outputs wait in the worker until every record before them on
their partition is finished; a commit sends them, adds the consumed offsets to
the same transaction and commits it. A reader with
isolation_level=read_committed sees each record's output once: a worker that
dies before a commit leaves an open transaction that its successor aborts, and
redoes those records. The transactional id is stable per worker partition set
(`transactional_id`), so a restarted worker fences its predecessor: a zombie
still running can no longer commit.

Either way a commit that fails raises one of three errors, and the worker
decides: `CommitSkipped` (nothing lost, try again at the next commit),
`ClientsBroken` (rebuild the Kafka clients and go back to the last commit) or
`Fenced` (someone else owns these partitions now: stop).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from kafka import KafkaConsumer, KafkaProducer
from kafka.errors import (
    InvalidProducerEpochError,
    KafkaError,
    KafkaTimeoutError,
    ProducerFencedError,
)
from kafka.structs import OffsetAndMetadata, TopicPartition

from services.errors import DmguardError
from services.kafka_io import close_producer, commit_transaction

Output = tuple[int, str, bytes | None, bytes]  # (input offset, topic, key, value)


class CommitSkipped(DmguardError):
    """The broker did not confirm this commit; nothing is lost, the next one tries again."""

    def __init__(self, op: str, message: str) -> None:
        super().__init__(message)
        self.op = op


class ClientsBroken(DmguardError):
    """The producer cannot be trusted any more (an output was refused, a transaction
    failed): the worker must start new clients from its last commit."""

    def __init__(self, op: str, message: str) -> None:
        super().__init__(message)
        self.op = op


class Fenced(DmguardError):
    """A newer producer with this worker's transactional id exists: another incarnation
    (a restarted worker, a second `serve`) owns these partitions now. This one must stop
    for good: starting again would fence the newer one in turn, and so on."""


def transactional_id(group_id: str, topic: str, partitions: Sequence[int]) -> str:
    """The same for every incarnation of the worker that reads `partitions`."""
    return f"dmguard-{group_id}-{topic}-p{'.'.join(str(p) for p in sorted(partitions))}"


def _offsets(offsets: dict[TopicPartition, int]) -> dict[TopicPartition, OffsetAndMetadata]:
    return {tp: OffsetAndMetadata(o, "", -1) for tp, o in offsets.items()}


class AtLeastOnce:
    mode = "at-least-once"

    def __init__(self, producer: KafkaProducer, consumer: KafkaConsumer, timeout_s: float):
        self.producer = producer
        self.consumer = consumer
        self.timeout_s = timeout_s
        self._error: BaseException | None = None

    def send(
        self, tp: TopicPartition, offset: int, topic: str, key: bytes | None, value: bytes
    ) -> None:
        self.producer.send(topic, value=value, key=key).add_errback(self._on_error)

    def _on_error(self, exc: BaseException) -> None:
        self._error = exc

    def commit(self, offsets: dict[TopicPartition, int]) -> None:
        """Flush, then commit `offsets` (each the next record to read)."""
        if self._error is None:
            try:
                self.producer.flush(timeout=self.timeout_s)
            except KafkaTimeoutError:  # still buffered: the producer delivers it when it can
                raise CommitSkipped(
                    "flush", f"outputs not acknowledged within {self.timeout_s}s"
                ) from None
        if self._error is not None:
            raise ClientsBroken(
                "produce", f"the broker refused an output: {self._error}"
            ) from self._error
        try:
            self.consumer.commit(_offsets(offsets))
        except KafkaError as exc:  # the records come back: duplicates allowed, never losses
            raise CommitSkipped("commit", f"offset commit failed: {exc}") from exc

    def close(self, timeout_s: float) -> None:
        close_producer(self.producer, timeout_s)


class ExactlyOnce:
    mode = "exactly-once"

    def __init__(
        self,
        producer: KafkaProducer,
        consumer: KafkaConsumer,
        group_id: str,
        timeout_s: float,
    ):
        """`producer` has a transactional_id; this fences any earlier producer with that id
        and aborts the transaction it left open."""
        self.producer = producer
        self.consumer = consumer
        self.group_id = group_id
        self.timeout_s = timeout_s
        self._held: dict[TopicPartition, list[Output]] = defaultdict(list)
        producer.init_transactions()
        producer.begin_transaction()

    def send(
        self, tp: TopicPartition, offset: int, topic: str, key: bytes | None, value: bytes
    ) -> None:
        self._held[tp].append((offset, topic, key, value))

    @property
    def held(self) -> int:
        return sum(len(v) for v in self._held.values())

    def commit(self, offsets: dict[TopicPartition, int]) -> None:
        """Send the outputs of every record below `offsets`, in input order, and commit them
        with the offsets in one transaction."""
        try:
            for tp, upto in offsets.items():
                outputs = sorted(self._held.pop(tp, []), key=lambda o: o[0])
                self._held[tp] = [o for o in outputs if o[0] >= upto]
                for _, topic, key, value in (o for o in outputs if o[0] < upto):
                    self.producer.send(topic, value=value, key=key)
            commit_transaction(self.producer, _offsets(offsets), self.group_id, self.timeout_s)
            self.producer.begin_transaction()
        except (ProducerFencedError, InvalidProducerEpochError) as exc:
            raise Fenced(
                f"fenced by a newer producer with the same transactional id: {exc}"
            ) from exc
        except KafkaError as exc:
            raise ClientsBroken("transaction", f"transaction failed: {exc!r}") from exc

    def close(self, timeout_s: float) -> None:
        """Outputs still held belong to records that were not committed: they are redone
        by whoever reads these partitions next."""
        self._held.clear()
        close_producer(self.producer, timeout_s)
