"""What the benchmarks share (`dmguard bench`, `dmguard soak`, benchmarks/bench_gpu.py): test
JPEGs and a local server for them, an untrained head to serve, records sent to the input
topic, the outputs read back, the service's stage shares, and the RSS of its workers.

kafka-python and the model's modules (torch) are imported where they are used: the CLI
imports the benchmarks at start-up for every command, and bench_gpu's parent process runs
where kafka-python may be missing.
"""

from __future__ import annotations

import io
import json
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from services.broker import EmbeddedBroker, KafkaBroker, broker_for, free_port
from services.config import KafkaSettings, ServeSettings, Topics, serve_settings
from services.http import HttpServer, Response
from services.poll import WaitTimeout, wait_until

LOOPBACK = ("127.0.0.1/32",)  # the only network the service may fetch from: the test server
TOPICS = Topics()
UrlOf = Callable[[int], str]  # record number -> the URL it asks for
Lookup = Callable[[str], tuple[bytes, str] | None]  # path -> (body, Content-Type), or None
Record = tuple[bytes | None, bytes]  # a Kafka key and value


def say(prefix: str, message: str, *, since: float | None = None) -> None:
    """A progress line on stderr, "[PREFIX] MESSAGE"; with `since` (a time.time()), the
    seconds since then too: "[PREFIX   12.3s] MESSAGE"."""
    stamp = "" if since is None else f" {time.time() - since:6.1f}s"
    print(f"[{prefix}{stamp}] {message}", file=sys.stderr, flush=True)


# -------------------------------------------------------------------- images to serve
def bench_jpegs(n_distinct: int, size: tuple[int, int]) -> list[bytes]:
    """`n_distinct` JPEGs of `size` (smooth noise, quality 90), the same on every call."""
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n_distinct):
        small = rng.integers(0, 256, size=(size[1] // 16, size[0] // 16, 3), dtype=np.uint8)
        buf = io.BytesIO()
        Image.fromarray(small).resize(size, Image.BILINEAR).save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def numbered(blobs: list[bytes]) -> Lookup:
    """GET /<n>.jpg -> blobs[n % len(blobs)], as JPEG; anything else is not found."""

    def lookup(path: str) -> tuple[bytes, str] | None:
        n = path.strip("/").split(".")[0]
        return (blobs[int(n) % len(blobs)], "image/jpeg") if n.isdigit() else None

    return lookup


def found(lookup: Lookup) -> Callable[[str], Response | None]:
    """An HttpServer fallback out of a lookup: 200 with its body, or None (404)."""

    def answer(path: str) -> Response | None:
        hit = lookup(path)
        return None if hit is None else (200, hit[0], hit[1])

    return answer


def image_server(lookup: Lookup, *, name: str) -> HttpServer:
    """The test images on 127.0.0.1, keep-alive as a CDN would serve them, each body in one
    write; started (`stop()` it)."""
    return HttpServer(fallback=found(lookup), keep_alive=True, name=name).start()


def bench_broker(engine: str, folder: Path) -> EmbeddedBroker:
    """The broker of `engine` (services.broker.ENGINES) for a benchmark's serve, not yet
    started; noida's and Kafka's state in `folder`. Kafka runs with its own JVM choices (G1,
    both compilers), as its scripts start it, not the quick-start ones of `dmguard broker`:
    once warm, C1-only code would count against Kafka."""
    if engine == "kafka":
        return KafkaBroker(data_dir=folder, jvm_options=())
    return broker_for(engine, data_dir=None if engine == "tansu" else folder)


def local_serve_settings(bootstrap: str, registry: str, **flags) -> ServeSettings:
    """`serve`'s settings for a benchmark: this machine's broker (none of the
    DMGUARD_KAFKA_* client extras), /metrics on a free loopback port, images fetched from
    the loopback test server only; `flags` as `serve_settings` takes them."""
    return serve_settings(
        bootstrap=bootstrap,
        client_extra={},
        registry=registry,
        metrics_host="127.0.0.1",
        metrics_port=free_port(),
        allow_network=LOOPBACK,
        **flags,
    )


def register_bench_head(encoder_spec: str, tmp: Path, views: tuple[str, ...] = ()) -> str:
    """A registry under `tmp` holding an untrained head for `encoder_spec` (speed does not
    depend on the weights); returns its root for `serve --registry`."""
    from training.model.detector import register_untrained_head
    from training.model.registry import Registry

    registry = Registry(tmp / "registry")
    register_untrained_head(registry, encoder_spec, views=views)
    return str(registry.root)


# -------------------------------------------------------------------- records in, outputs out
def send(
    producer, topic: str, n: int, record: Callable[[int], Record], *, rate: float | None = None
) -> list[float]:
    """Send `record(0)` ... `record(n - 1)` (at `rate` a second, else at once); returns the
    time.time() each was sent."""
    start = time.perf_counter()
    sent = []
    for i in range(n):
        if rate:
            time.sleep(max(0.0, start + i / rate - time.perf_counter()))
        key, value = record(i)
        sent.append(time.time())
        producer.send(topic, key=key, value=value)
        if rate:
            producer.flush()
    producer.flush()
    return sent


def send_urls(
    producer, prefix: str, url_of: UrlOf, n: int, *, rate: float | None = None, topic: str = ""
) -> dict[str, float]:
    """Send `n` records {"id": PREFIX + i, "url": url_of(i)} to `topic` (default: the input
    topic) as `send` does; returns id -> time.time() sent."""

    def record(i: int) -> Record:
        return None, json.dumps({"id": f"{prefix}{i}", "url": url_of(i)}).encode()

    times = send(producer, topic or TOPICS.images, n, record, rate=rate)
    return {f"{prefix}{i}": t for i, t in enumerate(times)}


class OutputTopics:
    """Verdicts and dead letters from the beginning of both topics, as they arrive, for
    records whose ids are a prefix ("bench-") and a number: when each id was first read,
    how many distinct ids of each prefix have been read, and how many were dead letters.

    Not services.outputs.OutputReader (the demo's): that one reads until the topics go
    quiet, at one isolation level, and keeps neither arrival times nor counts."""

    def __init__(
        self,
        kafka: KafkaSettings,
        topics: Topics = TOPICS,
        *,
        isolation_level: str = "read_uncommitted",
        topic_wait_s: float = 120.0,
        poll_ms: int = 500,
    ) -> None:
        from kafka.structs import TopicPartition

        from services.kafka_io import make_consumer

        self.consumer = make_consumer(kafka, group=False, isolation_level=isolation_level)
        self.verdicts_topic = topics.verdicts
        self.poll_ms = poll_ms
        self.arrived: dict[str, float] = {}  # id -> time.time() when first read
        self.counts: dict[str, int] = {}  # prefix ("bench-") -> distinct ids read
        self.dead = 0  # distinct ids read as dead letters
        tps = []
        for topic in (topics.verdicts, topics.dead_letter):
            parts = wait_until(
                lambda t=topic: self.consumer.partitions_for_topic(t),
                topic_wait_s,
                what=f"topic {topic}",
            )
            tps += [TopicPartition(topic, p) for p in sorted(parts)]
        self.consumer.assign(tps)
        self.consumer.seek_to_beginning(*tps)

    def count(self, prefix: str) -> int:
        return self.counts.get(prefix, 0)

    def wait_for(
        self, prefix: str, n: int, timeout_s: float = 900.0, *, keep: bool = True
    ) -> tuple[list, list]:
        """Read until `n` distinct ids of `prefix` have an output (WaitTimeout after
        `timeout_s`); returns the verdicts and the dead letters of `prefix` read meanwhile,
        as read (a duplicate of at least once included), or with `keep` false, nothing:
        only the counts."""
        verdicts: list[dict] = []
        dead: list[dict] = []

        def more() -> int:
            for tp, msgs in self.consumer.poll(timeout_ms=self.poll_ms).items():
                now = time.time()
                is_verdict = tp.topic == self.verdicts_topic
                for v in (json.loads(m.value) for m in msgs):
                    rid = str(v.get("id", ""))
                    if keep and rid.startswith(prefix):
                        (verdicts if is_verdict else dead).append(v)
                    if not rid or rid in self.arrived:
                        continue  # a dead letter without an id, or a duplicate: counted
                    self.arrived[rid] = now
                    key = rid.rsplit("-", 1)[0] + "-"
                    self.counts[key] = self.counts.get(key, 0) + 1
                    self.dead += not is_verdict
            return self.count(prefix)

        wait_until(
            more,
            timeout_s,
            interval_s=0,
            done=lambda k: k >= n,
            what=f"{n} outputs of {prefix}* records",
        )
        return verdicts, dead

    def close(self) -> None:
        self.consumer.close()


# -------------------------------------------------------------------- the service's figures
def wait_reported(metrics, records: int, timeout_s: float = 15.0) -> None:
    """Workers report every second: wait until the driver has counted `records` records, or
    `timeout_s` (then the figures are those of what was counted)."""
    try:
        wait_until(
            metrics.records_counted,
            timeout_s,
            interval_s=0.2,
            done=lambda k: k >= records,
            what=f"{records} records counted",
        )
    except WaitTimeout:
        pass


def stage_share(metrics) -> dict[str, float]:
    """Each stage's share of the seconds in dmguard_stage_seconds."""
    sums = {}
    for family in metrics.registry.collect():
        if family.name == "dmguard_stage_seconds":
            for s in family.samples:
                if s.name.endswith("_sum"):
                    sums[s.labels["stage"]] = s.value
    total = sum(sums.values()) or 1.0
    return {stage: round(v / total, 3) for stage, v in sums.items()}


def get_text(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.read().decode()


def worker_pids(base: str) -> dict[str, int]:
    """worker_id -> pid of the workers the service's /status (at `base`) lists now."""
    workers = json.loads(get_text(f"{base}/status"))["workers"]
    return {str(w["worker_id"]): int(w["pid"]) for w in workers}


def vm_rss_mib(pid: int | str = "self", *, peak: bool = False) -> float | None:
    """VmRSS of a local process in MiB (`peak`: VmHWM, the highest RSS it has had); None
    when it is gone (or not on this machine)."""
    field = "VmHWM:" if peak else "VmRSS:"
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None
