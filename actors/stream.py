"""The detector's consume loop, a plain class: Kafka in, verdicts out.

One iteration of `StreamWorker.run`:

  1. poll      take records while fewer than `in_flight_cap` fetches are running
  2. parse     a bad record becomes a dead letter at once
  3. fetch     good records go to a thread pool: fetch → sniff → decode → preprocess
               (I/O and decoding overlap with the model running in this thread)
  4. batch     finished fetches join a dynamic batch (max_batch / max_wait_ms)
  5. score     encoder + head on the batch; one verdict per image: "generated",
               "uncertain" (the head's abstain band) or "real", with the head's
               calibrated probability when it has a calibration
  6. produce   verdicts and dead letters go to the delivery (`actors.delivery`);
               an offset is marked done once its output has been handed over
  7. commit    every `commit_interval_s`, per partition, up to the lowest offset
               still pending: at least once, flush the producer then commit the
               offsets; exactly once, send the held outputs and commit them with
               the offsets in one transaction
  8. swap      between batches, load a newer head if the registry's CURRENT moved

Whatever a record holds, it gets exactly one output and the loop goes on:
a record that breaks parsing, fetching, decoding or output building becomes
a dead letter; a batch on which the model fails is split in halves and
retried, so only the records that fail alone are dead-lettered; a
non-finite score is a dead letter, never a verdict. A record that kills the
whole process is caught by the crash-loop breaker (`actors.crash_guard`): after
an unclean death the records the dead worker had polled are processed one at a
time, and one that kills the worker twice while alone is dead-lettered. A
registry that cannot be read never stops the loop: the worker keeps its head
(or, at start, the newest promoted head that loads) and says so in /status,
/readyz and the metrics.

Each worker reads the partitions the pool gave it (`settings.partitions`)
and commits under the shared group id, so a worker that Ray restarts after a
crash resumes exactly where the last commit left its partitions. On stop: no
more polling, finish what is in flight, produce, flush, commit.

The broker going away does not stop the worker. Until it answers, the worker
waits (at start too, so a restart during an outage does not crash-loop); a
commit the broker does not confirm is tried again at the next interval; when
the producer can no longer be trusted (an output refused, a transaction
failed) the worker drops what it did since its last commit, builds new
clients once the broker answers, and goes on from the committed offsets.
Every such event counts in `dmguard_broker_errors_total{op}`.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from kafka.errors import KafkaError
from kafka.structs import TopicPartition

from actors.batching import Batcher, OffsetTracker
from actors.crash_guard import CrashGuard, StateStore
from actors.delivery import (
    AtLeastOnce,
    ClientsBroken,
    CommitSkipped,
    ExactlyOnce,
    Fenced,
    transactional_id,
)
from actors.fetching import Job, count_provenance, evidence_json, fetch_and_preprocess
from actors.repeats import FeatureCache, SharedFetches, count_repeats
from actors.scoring import score_jobs
from services.broker import kafka_answers
from services.config import WorkerSettings
from services.errors import BrokerError, InputError
from services.kafka_diagnosis import authorization_problem
from services.kafka_io import make_consumer, make_producer
from services.metrics import WorkerStats
from services.records import (
    MAX_OUTPUT_BYTES,
    DeadLetter,
    ImageRecord,
    Verdict,
    best_effort_id,
)
from training.data.feature_log import FeatureLogWriter
from training.errors import RegistryError
from training.model.detector import Detector
from training.model.registry import Registry

log = logging.getLogger(__name__)

LAG_INTERVAL_S = 2.0
REGISTRY_RETRY_S = 30.0  # a head that failed to load is tried again after this long
BROKER_TIMEOUT_S = 10.0  # longest a commit waits for the broker before giving up on it
BROKER_RETRY_MAX_S = 5.0  # longest wait between two tries to reach a broker that is away
ACCESS_RETRY_S = 5.0  # wait between two tries after an ACL refusal (until someone grants it)


def _ray_node_id() -> str | None:
    """The Ray node this worker runs on (None outside Ray, as in unit tests)."""
    import ray

    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else None


class StreamWorker:
    def __init__(
        self, settings: WorkerSettings, *, worker_id: str, stats: WorkerStats | None = None
    ) -> None:
        self.settings = settings
        self.worker_id = worker_id
        self.stats = stats or WorkerStats()
        self.registry = Registry(settings.registry)
        self._lock = threading.Lock()  # guards the status fields read from other threads
        self._registry_problem: str | None = None
        self._failed_head: tuple[str, float] | None = None  # (version, when it failed to load)
        self.detector = self._load_first_head()
        self._trackers: dict[TopicPartition, OffsetTracker] = {}
        self._done: queue.SimpleQueue[Job] = queue.SimpleQueue()
        self._in_flight = 0
        self._batcher: Batcher[Job] = Batcher(settings.max_batch, settings.max_wait_ms / 1000)
        self._running = False
        self._broker_connected = False
        self._fenced = False
        self._last_refusal: str | None = None  # the ACL refusal last logged
        # Repeated uploads (actors.repeats): features by content hash, and shared fetches.
        mb = settings.cache_mb
        self.cache = FeatureCache(int(mb * 1024 * 1024)) if mb > 0 else None
        self._shared = SharedFetches()
        self.consumer = None
        self.delivery: AtLeastOnce | ExactlyOnce | None = None
        self.guard: CrashGuard | None = None
        self.features = (
            FeatureLogWriter(settings.feature_log, worker_id) if settings.feature_log else None
        )

    def _load_first_head(self) -> Detector:
        """The head the registry says to serve (`Registry.load_serving`); a problem
        with CURRENT is said in the log, /status and /readyz."""
        s = self.settings
        head, meta, problem = self.registry.load_serving()
        try:
            detector = Detector.from_head(head, meta, device=s.device, threads=s.threads)
        except ValueError as exc:  # the head and its encoder disagree on the input width
            found = self.registry.last_good(exclude=meta.version)
            if found is None:
                raise
            detector = Detector.from_head(*found, device=s.device, threads=s.threads)
            problem = f"{exc}; serving the newest promoted head that loads, {found[1].version}"
        if problem is not None:
            self._set_registry_problem(problem)
        return detector

    # ---------------------------------------------------------------- status
    def status(self) -> dict:
        with self._lock:
            return {
                "worker_id": self.worker_id,
                "pid": os.getpid(),
                "node_id": _ray_node_id(),
                "running": self._running,
                "head_version": self.detector.version,
                "encoder": self.detector.encoder.spec,
                "partitions": list(self.settings.partitions),
                "in_flight": self._in_flight,
                "isolating": self.guard is not None and self.guard.isolating(),
                "delivery": "exactly-once" if self.settings.exactly_once else "at-least-once",
                "broker_connected": self._broker_connected,
                "fenced": self._fenced,
                "registry_problem": self._registry_problem,
            }

    # ------------------------------------------------------------------ loop
    def run(self, stop: threading.Event) -> None:
        s = self.settings
        self.stats.clear_gauge("consumer_lag")  # of partitions read before an `assign`
        with self._lock:
            self._fenced = False
        if not s.partitions:  # more workers than partitions, or between assignments
            with self._lock:
                self._running = True
            stop.wait()
            with self._lock:
                self._running = False
            return
        with self._lock:
            self._running = True
        if not self._connect(stop):
            with self._lock:
                self._running = False
            return
        self.guard = CrashGuard(
            StateStore(s.state_dir or Path(s.registry) / "worker-state", s.kafka.group_id),
            s.topics.images,
            margin=2 * s.in_flight_cap,
        )
        for tp in self._trackers:
            self.guard.start(tp.partition, self.consumer.position(tp))
        pool = ThreadPoolExecutor(s.fetch_threads, thread_name_prefix=f"fetch-{self.worker_id}")
        clean = False
        try:
            clean = self._loop(stop, pool)
        finally:
            with self._lock:
                self._running = False
            pool.shutdown(wait=True, cancel_futures=True)
            if self.features is not None:
                self.features.flush()
            if clean:
                self.guard.clean()
            self._close()

    def _loop(self, stop: threading.Event, pool: ThreadPoolExecutor) -> bool:
        """Steps 1-8 until `stop` and drained; False when stopped while the broker was away,
        or fenced (what was not committed is redone by whoever reads these partitions)."""
        while True:
            try:
                self._steps(stop, pool)
                self._commit()
                return True
            except Fenced as exc:
                log.error("worker %s stops: %s", self.worker_id, exc)
                with self._lock:
                    self._fenced = True
                self._drop_uncommitted()
                return False
            except (KafkaError, ClientsBroken) as exc:
                op = getattr(exc, "op", "client")
                refused = self._access_refused(exc)
                if refused is None:
                    log.warning("broker trouble (%s: %s); going back to the last commit", op, exc)
                self.stats.inc("broker_errors", op)
                self._drop_uncommitted()
                self._close()
                if refused is not None and stop.wait(ACCESS_RETRY_S):
                    return False
                if not self._connect(stop):
                    return False

    def _steps(self, stop: threading.Event, pool: ThreadPoolExecutor) -> None:
        s = self.settings
        next_commit = next_swap_check = next_lag = time.monotonic()
        while True:
            stopping = stop.is_set()
            idle = self._in_flight == 0 and len(self._batcher) == 0
            if stopping and idle:
                return
            # After an unclean death, one record at a time (see actors.crash_guard).
            serial = self.guard.isolating()
            # 1-3. poll, parse, hand good records to the fetch pool
            room = (1 if idle else 0) if serial else s.in_flight_cap - self._in_flight
            if not stopping and room > 0:
                t_poll = time.monotonic()
                polled = self.consumer.poll(timeout_ms=0 if not idle else 100, max_records=room)
                if idle:  # waiting with nothing to do: what `serve --workers auto` reads
                    self.stats.inc("idle_seconds", n=time.monotonic() - t_poll)
                for messages in polled.values():
                    for m in messages:
                        self._accept(m, pool, serial=serial)
            # 4. collect finished fetches into the batch
            self._collect(block=self._in_flight > 0)
            # 5-6. score and produce a batch when it is due
            now = time.monotonic()
            if self._batcher.ready(now) or (
                (stopping or serial) and self._in_flight == 0 and len(self._batcher)
            ):
                self._run_batch(self._batcher.take(now), pool)
            now = time.monotonic()
            # 7. commit what the broker has acknowledged (in isolation: every record)
            if now >= next_commit or (serial and self._in_flight == 0):
                self._commit()
                if self.features is not None:
                    self.features.flush_if_due()
                next_commit = now + s.commit_interval_s
            # 8. hot-swap the head between batches
            if now >= next_swap_check:
                self._maybe_swap_head()
                next_swap_check = now + s.registry_poll_s
            if now >= next_lag:
                self._report_lag()
                next_lag = now + LAG_INTERVAL_S

    # ---------------------------------------------------------- the broker
    def _access_refused(self, exc: BaseException) -> str | None:
        """The grant an ACL refusal asks for, logged once per refusal (it repeats at every
        retry until someone grants it); None for any other broker trouble."""
        cause = exc.__cause__ if isinstance(exc, ClientsBroken) else exc
        operation = "Write" if isinstance(exc, ClientsBroken) else "Read"
        refused = authorization_problem(cause, self.settings.kafka, operation)
        if refused is not None and refused != self._last_refusal:
            log.error(
                "worker %s: %s; retrying every %ss, nothing is committed meanwhile",
                self.worker_id,
                refused,
                ACCESS_RETRY_S,
            )
        self._last_refusal = refused
        return refused

    def _connect(self, stop: threading.Event) -> bool:
        """Wait until the broker answers, then open the consumer and the delivery, with
        every assigned partition at its committed offset; False if `stop` came first."""
        s = self.settings
        assigned = [TopicPartition(s.topics.images, p) for p in s.partitions]
        delay = 0.5
        while not stop.is_set():
            try:
                if kafka_answers(s.kafka.bootstrap_servers, **s.kafka.client_extra):
                    self._open_clients(assigned)
                    with self._lock:
                        self._broker_connected = True
                    return True
            except (BrokerError, KafkaError) as exc:
                log.warning("cannot open Kafka clients yet: %s", exc)
                self._close()
            with self._lock:
                self._broker_connected = False
            self.stats.inc("broker_errors", "connect")
            stop.wait(delay)
            delay = min(2 * delay, BROKER_RETRY_MAX_S)
        return False

    def _open_clients(self, assigned: list[TopicPartition]) -> None:
        s = self.settings
        isolation = "read_committed" if s.exactly_once else "read_uncommitted"
        self.consumer = make_consumer(
            s.kafka, max_poll_records=s.in_flight_cap, isolation_level=isolation
        )
        self.consumer.assign(assigned)  # positions start at the group's committed offsets
        self._trackers = {tp: OffsetTracker() for tp in assigned}
        if s.exactly_once:
            tid = transactional_id(s.kafka.group_id, s.topics.images, s.partitions)
            producer = make_producer(s.kafka, transactional_id=tid)
            self.delivery = ExactlyOnce(producer, self.consumer, s.kafka.group_id, BROKER_TIMEOUT_S)
        else:
            producer = make_producer(s.kafka)
            self.delivery = AtLeastOnce(producer, self.consumer, BROKER_TIMEOUT_S)

    def _drop_uncommitted(self) -> None:
        """Forget every record since the last commit (the next consumer reads them again):
        wait for the fetches in flight, drop them and the open batch."""
        while self._in_flight > 0:
            self._in_flight -= 1 + len(self._shared.finished(self._done.get()))
        self._batcher = Batcher(self.settings.max_batch, self.settings.max_wait_ms / 1000)
        with self._lock:
            self._broker_connected = False

    def _close(self) -> None:
        delivery, consumer = self.delivery, self.consumer
        self.delivery, self.consumer = None, None
        try:
            if delivery is not None:
                delivery.close(timeout_s=BROKER_TIMEOUT_S if self._broker_connected else 0)
        finally:
            if consumer is not None:
                consumer.close(autocommit=False)

    # --------------------------------------------------------------- steps
    def _accept(self, m, pool: ThreadPoolExecutor, *, serial: bool = False) -> None:
        tp = TopicPartition(m.topic, m.partition)
        self._trackers[tp].add(m.offset)
        job = Job(tp, m.offset, m.timestamp, m.value)
        poison = self.guard.poison_reason(m.partition, m.offset) if self.guard else None
        if poison is not None:
            job.error = InputError(poison, code="internal")
            self._emit_dead_letter(job)
            return
        if serial:
            self.guard.before_dispatch(m.partition, m.offset)
            self.stats.inc("isolated")
        try:
            job.record = ImageRecord.from_bytes(m.value)
        except InputError as exc:
            job.error = exc
            self._emit_dead_letter(job)
            return
        self._submit(job, pool)

    def _submit(self, job: Job, pool: ThreadPoolExecutor) -> None:
        self._in_flight += 1
        if self._shared.join(job):  # its URL is on its way already: wait for that fetch
            return
        future = pool.submit(
            fetch_and_preprocess,
            job,
            self.settings,
            self.detector.encoder.preprocess,
            self.detector.views,
            self.cache,
            self.detector.signature,
        )
        future.add_done_callback(lambda f: self._done.put(f.result()))

    def _collect(self, *, block: bool) -> None:
        timeout = None
        if block:
            left = self._batcher.time_left(time.monotonic())
            timeout = 0.05 if left is None else min(left, 0.05)
        while True:
            try:
                job = self._done.get(timeout=timeout) if timeout else self._done.get_nowait()
            except queue.Empty:
                return
            timeout = None  # after the first result, take only what is already there
            followers = self._shared.finished(job)
            self._in_flight -= 1 + len(followers)
            for stage, seconds in job.timings.items():
                self.stats.observe("stage_seconds", seconds, stage)
            count_repeats(self.stats, self.cache is not None, job, followers)
            for each in (job, *followers):
                if each.error is not None:
                    self._emit_dead_letter(each)
                else:
                    self._batcher.add(each, time.monotonic())

    def _run_batch(self, jobs: list[Job], pool: ThreadPoolExecutor) -> None:
        shape, signature = self.detector.pixel_shape, self.detector.signature

        def fresh(j: Job) -> bool:  # still right for the head that serves now
            return j.signature == signature if j.cached else j.pixels.shape == shape

        for job in (j for j in jobs if not fresh(j)):  # encoder or views changed
            self._submit(job, pool)
        jobs = [j for j in jobs if fresh(j)]
        if not jobs:
            return
        scored, embeddings, scores = self._score(jobs)
        if not scored:
            return
        t_produce = time.perf_counter()  # the feature-log append counts as produce, as before
        meta = self.detector.meta
        if self.features is not None:  # what retraining learns from, without recomputing CLIP
            self.features.append(
                [j.record.id for j in scored],
                [j.record.url for j in scored],
                meta.encoder,
                embeddings,
                scores,
                meta.version,
                features=meta.features,
                evidence=[evidence_json(j) for j in scored],
            )
        # The head's abstain band and calibration (built once, when the head was loaded).
        verdicts, probabilities = self.detector.judge(scores)
        for i, (job, score) in enumerate(zip(scored, scores, strict=True)):
            # A declared AI marker makes it "generated" whatever the score (services.provenance).
            verdict = Verdict.build(
                job.record,
                score=float(score),
                threshold=meta.threshold,
                encoder=meta.encoder,
                head_version=meta.version,
                record_ts_ms=job.timestamp_ms,
                verdict="generated" if job.decided_by == "provenance" else verdicts[i],
                probability=probabilities[i],
                uncertain_from=meta.uncertain_from,
                evidence=job.provenance.evidence if job.provenance else (),
                decided_by=job.decided_by,
            )
            try:
                value = verdict.to_bytes()
            except ValueError as exc:  # UnicodeEncodeError included; the parser should stop these
                job.error = InputError(f"the verdict cannot be written as JSON: {exc}")
                self._emit_dead_letter(job)
                continue
            if len(value) > MAX_OUTPUT_BYTES:
                job.error = InputError(f"the verdict would be {len(value)} bytes")
                self._emit_dead_letter(job)
                continue
            self._send(self.settings.topics.verdicts, value, job.record.id, job)
            self.stats.inc("records", "verdict")
            self.stats.inc("verdicts", verdict.verdict)
            count_provenance(self.stats, job)
        self.stats.observe("stage_seconds", time.perf_counter() - t_produce, "produce")

    def _score(self, jobs: list[Job]) -> tuple[list[Job], np.ndarray, np.ndarray]:
        """Embed and score `jobs` (actors.scoring): (the jobs scored, embeddings, scores)."""
        return score_jobs(
            self.detector, jobs, cache=self.cache, stats=self.stats, reject=self._emit_dead_letter
        )

    def _emit_dead_letter(self, job: Job) -> None:
        err = job.error
        assert err is not None
        rid = job.record.id if job.record else best_effort_id(job.value)
        letter = DeadLetter(
            code=err.code, message=str(err), value=job.value, source=job.source, id=rid
        )
        value = letter.to_bytes()  # bounded and strict by construction (services.records)
        self._send(self.settings.topics.dead_letter, value, rid, job)
        self.stats.inc("records", "dead_letter")
        self.stats.inc("dead_letters", err.code)

    def _send(self, topic: str, value: bytes, key: str | None, job: Job) -> None:
        # Keys come from validated ids; backslashreplace only makes sure an encoding
        # error can never take the worker down on the way out.
        key_bytes = key.encode("utf-8", "backslashreplace") if key else None
        self.delivery.send(job.tp, job.offset, topic, key_bytes, value)
        self._trackers[job.tp].done(job.offset)
        if job.timestamp_ms is not None and job.timestamp_ms > 0:
            self.stats.observe(
                "end_to_end_seconds", max(0.0, time.time() - job.timestamp_ms / 1000)
            )

    def _commit(self) -> None:
        """Commit, per partition, up to the lowest offset still pending, with the outputs
        before it (`actors.delivery`). Raises ClientsBroken when the clients must go."""
        offsets = {}
        for tp, tracker in self._trackers.items():
            offset = tracker.committable()
            if offset is not None:
                offsets[tp] = offset
        if not offsets:
            return
        try:
            self.delivery.commit(offsets)
        except CommitSkipped as exc:
            log.warning("%s; trying again at the next commit", exc)
            self.stats.inc("broker_errors", exc.op)
            return
        for tp, offset in offsets.items():
            tracker = self._trackers[tp]
            tracker.mark_committed(offset)
            self.guard.committed(tp.partition, offset, polled=tracker.polled_until or 0)

    # ------------------------------------------------------------- registry
    def _set_registry_problem(self, problem: str | None) -> None:
        if problem is not None and problem != self._registry_problem:
            log.error("registry: %s", problem)
            self.stats.inc("registry_errors")
        elif problem is None and self._registry_problem is not None:
            log.info("registry readable again; serving %s", self.detector.version)
        with self._lock:
            self._registry_problem = problem

    def _maybe_swap_head(self) -> None:
        serving = self.detector.version
        try:
            current = self.registry.current()
        except RegistryError as exc:  # keep serving what is loaded rather than stop
            self._set_registry_problem(f"{exc}; still serving {serving}")
            return
        if current is None:
            self._set_registry_problem(f"nothing is promoted any more; still serving {serving}")
            return
        if current == serving:
            self._set_registry_problem(None)
            return
        failed = self._failed_head
        if failed and failed[0] == current and time.monotonic() - failed[1] < REGISTRY_RETRY_S:
            return
        try:
            detector = Detector.from_registry(
                self.registry,
                current,
                device=self.settings.device,
                threads=self.settings.threads,
                reuse=self.detector,
            )
        except Exception as exc:  # keep serving the old head rather than stop
            self._failed_head = (current, time.monotonic())
            self._set_registry_problem(
                f"cannot load head {current}: {exc}; still serving {serving}"
            )
            return
        self._failed_head = None
        with self._lock:
            self.detector = detector
        self._set_registry_problem(None)
        self.stats.inc("head_swaps")
        log.info("worker %s now serves head %s", self.worker_id, current)

    def _report_lag(self) -> None:
        if self.cache is not None:
            self.stats.set_gauge("cache_memory_bytes", self.cache.bytes, self.worker_id)
            self.stats.set_gauge("cache_entries", len(self.cache), self.worker_id)
        tps = list(self._trackers)
        if not tps:
            return
        try:
            ends = self.consumer.end_offsets(tps, timeout_ms=1000)
        except KafkaError:  # the broker is away: the gauge keeps its last value
            self.stats.inc("broker_errors", "lag")
            return
        for tp in tps:
            try:
                position = self.consumer.position(tp)
            except (KafkaError, AssertionError):  # partition moved away meanwhile
                continue
            if position is not None and tp in ends:
                self.stats.set_gauge(
                    "consumer_lag",
                    max(0, ends[tp] - position) + self._trackers[tp].pending,
                    str(tp.partition),
                )
