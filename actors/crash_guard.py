"""Crash-loop breaker: a record that kills its worker must not halt its partition.

Ray restarts a crashed DetectorWorker and the new incarnation resumes from the
last committed offset. A record that crashes the process itself (a native
crash in a decoder or the model, an out-of-memory kill, a bug that escapes
every `except`) would then crash each new incarnation again, for ever, and
nothing behind it on its partition would get an output.

What survives the process is one small JSON file per input partition, written
atomically in the state folder (`--state-dir`; by default `worker-state/`
inside the registry, because the registry is already a folder every node sees
and Ray may restart a worker on another node). Kafka's commit metadata would
be the natural home, but the embedded broker does not keep it.

Per partition, the file says what the last incarnation was doing:

* `normal`: written at start and at every commit, with the committed offset
  and the offset after the highest one polled. Finding `normal` at start means
  the predecessor died without a clean stop, and any record it had polled may
  be the culprit. So the new incarnation **isolates** them: offsets below
  `until` (the predecessor's highest polled offset plus a margin for what it
  polled after its last commit) are processed one record at a time, across
  the whole worker, and committed one by one.
* `isolating`: before each isolated record the file names it (`in_flight`);
  after its output is acknowledged and committed the name is cleared. Finding
  `in_flight` equal to the committed offset at start means that record was
  alone in the pipeline when the process died. The first time it is tried
  again (`strikes` 1: a node lost for another reason must not cost an
  innocent record); the second time it becomes an `internal` dead letter with
  the reason, and the partition moves on.
* `clean`: written by a clean stop. Nothing to suspect.

So a poison record costs three crashes (one in normal mode, two alone) and
never blames another record, and every crash in isolation commits progress.
The file is advisory: if it cannot be read or written the worker logs it and
keeps streaming (without the breaker), rather than stop.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

log = logging.getLogger(__name__)

MAX_STRIKES = 2  # deaths with a record alone in flight before it is dead-lettered


@dataclass(frozen=True)
class PartitionState:
    mode: str  # "normal" | "isolating" | "clean"
    committed: int | None = None
    polled: int | None = None  # offset after the highest one polled (normal)
    until: int | None = None  # isolate offsets below this (isolating)
    in_flight: int | None = None  # the one record in the pipeline (isolating)
    strikes: int = 0  # earlier deaths with `in_flight` alone in the pipeline

    def to_json(self) -> bytes:
        return json.dumps(asdict(self)).encode()

    @classmethod
    def from_json(cls, data: bytes) -> PartitionState:
        obj = json.loads(data)
        if not isinstance(obj, dict) or obj.get("mode") not in ("normal", "isolating", "clean"):
            raise ValueError("not a partition state")
        fields = {}
        for name in ("committed", "polled", "until", "in_flight"):
            value = obj.get(name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
                raise ValueError(f"{name} is not an offset")
            fields[name] = value
        strikes = obj.get("strikes", 0)
        if not isinstance(strikes, int) or strikes < 0:
            raise ValueError("strikes is not a count")
        return cls(mode=obj["mode"], strikes=strikes, **fields)


class StateStore:
    """One JSON file per (group, topic, partition) in `folder`, replaced atomically."""

    def __init__(self, folder: str | os.PathLike, group: str) -> None:
        self.folder = Path(folder)
        self.group = group

    def path(self, topic: str, partition: int) -> Path:
        safe = re.sub(r"[^A-Za-z0-9._-]", "_", f"{self.group}.{topic}.{partition}")
        return self.folder / f"{safe}.json"

    def read(self, topic: str, partition: int) -> PartitionState | None:
        path = self.path(topic, partition)
        try:
            return PartitionState.from_json(path.read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.warning("ignoring unreadable worker state %s: %s", path, exc)
            return None

    def write(self, topic: str, partition: int, state: PartitionState) -> None:
        path = self.path(topic, partition)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.folder, prefix=f".{path.name}.")
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(state.to_json())
                os.replace(tmp, path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except OSError as exc:
            log.warning("cannot write worker state %s (crash-loop breaker off): %s", path, exc)


@dataclass
class _Plan:
    until: int | None = None  # isolate offsets below this; None: not isolating
    in_flight: int | None = None
    strikes: int = 0
    poison: int | None = None  # dead-letter this offset without processing it
    poison_reason: str = ""


class CrashGuard:
    """Decides, per partition, whether records run batched, one at a time, or
    not at all (poison), from what the previous incarnation left behind."""

    def __init__(self, store: StateStore, topic: str, *, margin: int) -> None:
        self.store = store
        self.topic = topic
        self.margin = margin
        self._plans: dict[int, _Plan] = {}

    # ------------------------------------------------------------- start
    def start(self, partition: int, committed: int) -> None:
        """Read the partition's state and plan this incarnation's work on it."""
        state = self.store.read(self.topic, partition)
        plan = _Plan()
        if state is None or state.mode == "clean":
            pass
        elif state.mode == "normal":
            polled = max(state.polled or 0, state.committed or 0, committed)
            plan.until = polled + self.margin
            log.warning(
                "partition %d: the previous worker died uncleanly; isolating offsets %d..%d",
                partition,
                committed,
                plan.until - 1,
            )
        else:  # isolating
            plan.until = state.until if state.until is not None else committed + self.margin
            if state.in_flight == committed:
                deaths = state.strikes + 1
                plan.in_flight, plan.strikes = committed, deaths  # kept until it is committed
                if deaths >= MAX_STRIKES:
                    plan.poison = committed
                    plan.poison_reason = (
                        f"the worker crashed {deaths} times while processing this record alone "
                        "(a crash loop); dead-lettered so that the partition can move on"
                    )
                    log.error(
                        "partition %d offset %d: %s", partition, committed, plan.poison_reason
                    )
                else:
                    log.warning(
                        "partition %d offset %d: the worker died while processing it alone; "
                        "trying once more",
                        partition,
                        committed,
                    )
        if plan.until is not None and committed >= plan.until and plan.poison is None:
            plan.until = None
        self._plans[partition] = plan
        self._write(partition, committed, polled=committed)

    # ------------------------------------------------------------- queries
    def isolating(self) -> bool:
        return any(p.until is not None for p in self._plans.values())

    def poison_reason(self, partition: int, offset: int) -> str | None:
        plan = self._plans.get(partition)
        if plan is not None and plan.poison == offset:
            return plan.poison_reason
        return None

    # ------------------------------------------------------------- events
    def before_dispatch(self, partition: int, offset: int) -> None:
        """In isolation: name the record about to run alone, before it runs."""
        plan = self._plans.get(partition)
        if plan is None or plan.until is None or offset >= plan.until:
            return
        if plan.in_flight != offset:
            plan.in_flight, plan.strikes = offset, 0
        self.store.write(
            self.topic,
            partition,
            PartitionState("isolating", until=plan.until, in_flight=offset, strikes=plan.strikes),
        )

    def committed(self, partition: int, committed: int, *, polled: int) -> None:
        """After a commit: the records below `committed` are safely behind us."""
        plan = self._plans.get(partition)
        if plan is None:
            return
        if plan.poison is not None and committed > plan.poison:
            plan.poison = None
        if plan.in_flight is not None and committed > plan.in_flight:
            plan.in_flight, plan.strikes = None, 0
        if plan.until is not None and committed >= plan.until:
            log.info("partition %d: isolation over at offset %d", partition, committed)
            plan.until = None
        self._write(partition, committed, polled=polled)

    def clean(self) -> None:
        """A clean stop: nothing in flight, nothing to suspect next time."""
        for partition in self._plans:
            self.store.write(self.topic, partition, PartitionState("clean"))

    def _write(self, partition: int, committed: int, *, polled: int) -> None:
        plan = self._plans[partition]
        if plan.until is None:
            state = PartitionState("normal", committed=committed, polled=max(polled, committed))
        else:
            state = PartitionState(
                "isolating",
                committed=committed,
                until=plan.until,
                in_flight=plan.in_flight,
                strikes=plan.strikes,
            )
        self.store.write(self.topic, partition, state)
