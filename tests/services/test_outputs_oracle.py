"""The end-to-end oracle (`services.outputs`) on outputs built by hand, with known
duplicates and known losses: `duplicates` counts exactly the extra outputs,
`wait_accounted` does not call a stream with a lost record accounted for (nor let a
duplicate stand in for it), and `OutputReader` files every record it reads, from every
partition of both output topics, under the right list. The end-to-end tests and the
demo trust these numbers; a wrong one would hide losses or duplicates there."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

import pytest
from kafka.structs import TopicPartition

import services.kafka_io
from services.config import Topics
from services.outputs import OutputReader, Outputs, duplicates, output_key, wait_accounted


def verdict(rid: str) -> dict:
    return {"id": rid, "verdict": "real", "score": 0.1}


def dead_letter(rid: str | None = None, record: str | None = "{}") -> dict:
    out = {"error": {"code": "bad_record", "message": "x"}, "record": record}
    if rid is not None:
        out["id"] = rid
    return out


def keys(out: Outputs) -> set[str]:
    return {output_key(r) for r in out.verdicts + out.dead_letters}


# ------------------------------------------------------------------ output_key
def test_the_key_of_an_output_is_its_id_or_the_original_text():
    assert output_key(verdict("a")) == "a"
    assert output_key(dead_letter("b")) == "b"
    assert output_key(dead_letter(record="not json")) == "raw:not json"
    assert output_key(dead_letter("", record="{}")) == "raw:{}"  # an empty id is no id
    assert output_key(dead_letter(record="x")) != output_key(dead_letter(record="y"))


# ------------------------------------------------------------------ duplicates
@pytest.mark.parametrize(
    ("out", "expected"),
    [
        pytest.param(Outputs(), 0, id="nothing"),
        pytest.param(Outputs([verdict("a"), verdict("b")], [dead_letter("c")]), 0, id="none"),
        pytest.param(Outputs([verdict("a"), verdict("a")]), 1, id="a-verdict-twice"),
        pytest.param(Outputs([verdict("a")] * 3), 2, id="a-verdict-three-times"),
        pytest.param(
            Outputs([], [dead_letter("d"), dead_letter("d")]), 1, id="a-dead-letter-twice"
        ),
        pytest.param(Outputs([verdict("e")], [dead_letter("e")]), 1, id="verdict-and-dead-letter"),
        pytest.param(
            Outputs(
                [verdict("a"), verdict("b"), verdict("b"), verdict("c"), verdict("c")]
                + [verdict("c"), verdict("e"), verdict("f")],
                [dead_letter("d"), dead_letter(record="raw"), dead_letter("e")],
            ),
            1 + 2 + 1,  # b once more, c twice more, e as verdict and dead letter
            id="mixed",
        ),
    ],
)
def test_duplicates_counts_exactly_the_extra_outputs(out, expected):
    assert duplicates(out) == expected


def test_duplicates_does_not_change_what_it_counts():
    out = Outputs([verdict("a"), verdict("a")], [dead_letter("b")])
    duplicates(out)
    assert [r["id"] for r in out.verdicts] == ["a", "a"] and len(out.dead_letters) == 1


# -------------------------------------------------------------- wait_accounted
class ScriptedReader:
    """An OutputReader whose topics fill up as scripted: read k returns everything of
    the first k+1 steps (the last step again once the script ends)."""

    def __init__(self, steps: list[Outputs]) -> None:
        self.steps = steps
        self.reads = 0

    def read(self, idle_s: float = 0.5) -> Outputs:
        upto = self.steps[: self.reads + 1]
        self.reads += 1
        return Outputs(
            [r for s in upto for r in s.verdicts], [r for s in upto for r in s.dead_letters]
        )


def test_a_stream_is_accounted_for_once_every_record_has_an_output():
    expected = {"a", "b", "raw:not json"}
    reader = ScriptedReader(
        [
            Outputs([verdict("a")]),
            Outputs([], [dead_letter(record="not json")]),
            Outputs([], [dead_letter("b")]),  # a dead letter accounts for its record
            Outputs([verdict("late")]),
        ]
    )
    seen = []
    start = time.monotonic()
    out = wait_accounted(reader, expected, timeout=5, on_progress=seen.append)
    assert time.monotonic() - start < 4  # returned when done, not at the timeout
    assert reader.reads == 3 and len(seen) == 3
    assert expected <= keys(out)
    assert expected - keys(out) == set()  # nothing lost
    assert duplicates(out) == 0


@pytest.mark.parametrize(
    ("steps", "lost"),
    [
        pytest.param([Outputs([verdict("a")])], {"b"}, id="one-lost"),
        pytest.param([Outputs()], {"a", "b"}, id="all-lost"),
        pytest.param(
            [Outputs([verdict("a")]), Outputs([verdict("a")], [dead_letter("a")])],
            {"b"},
            id="duplicates-do-not-make-up-for-a-loss",
        ),
        pytest.param(
            [Outputs([verdict("a"), verdict("someone-else")])], {"b"}, id="another-id-is-no-help"
        ),
    ],
)
def test_a_lost_record_is_never_accounted_for(steps, lost):
    expected = {"a", "b"}
    reader = ScriptedReader(steps)
    start = time.monotonic()
    out = wait_accounted(reader, expected, timeout=0.3)
    assert time.monotonic() - start >= 0.3  # it waited the whole timeout for the lost ones
    assert reader.reads > len(steps)  # and kept reading meanwhile
    assert expected - keys(out) == lost  # what it returns shows exactly which are missing


# ------------------------------------------------------------------ OutputReader
@dataclass
class Message:
    value: bytes


class FakeConsumer:
    """Two partitions per topic; `batches` are what successive polls return."""

    def __init__(self, batches: list[dict]) -> None:
        self.batches = batches
        self.assigned: list[TopicPartition] = []
        self.sought: list[TopicPartition] = []

    def partitions_for_topic(self, topic):
        return {0, 1}

    def assign(self, tps) -> None:
        self.assigned = list(tps)

    def seek_to_beginning(self, *tps) -> None:
        self.sought = list(tps)

    def poll(self, timeout_ms=0):
        return self.batches.pop(0) if self.batches else {}

    def close(self) -> None:
        pass


def messages(*records: dict) -> list[Message]:
    return [Message(json.dumps(r).encode()) for r in records]


def test_the_reader_reads_every_partition_of_both_topics_from_the_start(monkeypatch):
    topics = Topics()
    consumer = FakeConsumer([])
    monkeypatch.setattr(services.kafka_io, "make_consumer", lambda *a, **kw: consumer)
    OutputReader("127.0.0.1:1", topics)
    wanted = {TopicPartition(t, p) for t in (topics.verdicts, topics.dead_letter) for p in (0, 1)}
    assert set(consumer.assigned) == wanted
    assert set(consumer.sought) == wanted


def test_the_reader_files_verdicts_and_dead_letters_apart_and_keeps_duplicates(monkeypatch):
    topics = Topics()
    v0, v1 = TopicPartition(topics.verdicts, 0), TopicPartition(topics.verdicts, 1)
    d1 = TopicPartition(topics.dead_letter, 1)
    consumer = FakeConsumer(
        [
            {v0: messages(verdict("a"), verdict("b")), d1: messages(dead_letter("c"))},
            {v1: messages(verdict("b"))},  # b again, from a worker that redid it
            {},  # quiet: the first read ends here
            {d1: messages(dead_letter(record="not json"))},
        ]
    )
    monkeypatch.setattr(services.kafka_io, "make_consumer", lambda *a, **kw: consumer)
    reader = OutputReader("127.0.0.1:1", topics)
    out = reader.read(idle_s=0.01)
    assert [r["id"] for r in out.verdicts] == ["a", "b", "b"]
    assert [r["id"] for r in out.dead_letters] == ["c"]
    assert duplicates(out) == 1
    out = reader.read(idle_s=0.01)  # incremental: what is new, added to what was read
    assert [r["id"] for r in out.verdicts] == ["a", "b", "b"]
    assert [output_key(r) for r in out.dead_letters] == ["c", "raw:not json"]
    assert keys(out) == {"a", "b", "c", "raw:not json"}
    assert duplicates(out) == 1
