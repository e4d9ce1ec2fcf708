"""`dmguard bench`: throughput and latency side by side with the limits, in one run.

Same JPEGs, same machine, one process tree:

  (a) raw: encoder + head on pre-decoded, pre-batched tensors, batch sizes
      swept, all cores to one process: the limit for this encoder here.
  (b) naive: fetch, decode at full size, preprocess and score one image at a
      time in one loop, the way a feature-extraction script does it.
  (c) pipeline: the images as URLs on a local HTTP server, through the
      embedded broker and `serve` (one worker per core): from the first
      record sent to the last verdict read. Stage shares come from the
      service's own dmguard_stage_seconds; then records are sent at half of
      (c)'s rate and the verdicts' end-to-end latency is reported.
  (d) delivery (--delivery): (c) twice on the durable broker, at least once and
      then `--exactly-once`, read as their readers would (read_committed for the
      second): throughput, and the latency at half of the at-least-once rate from
      each record sent to its verdict read, so the wait for the transaction's
      commit counts. Reported with the ratios.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from services.cli.common import offline_weights
from services.config import KafkaSettings, Topics, fetch_policy, serve_settings
from services.http import HttpServer
from services.poll import WaitTimeout, wait_until

LOOPBACK = ("127.0.0.1/32",)
TOPICS = Topics()


# -------------------------------------------------------------------- the command
def add_parser(sub) -> None:
    sp = sub.add_parser(
        "bench", help="throughput of the pipeline side by side with the raw encoder"
    )
    sp.add_argument("--json", action="store_true", help="print one JSON object")
    weights = offline_weights()
    sp.add_argument(
        "--encoder",
        default=f"onnx:{weights}" if weights else "open_clip:dmguard-tiny",
        help="encoder spec (default: %(default)s)",
    )
    sp.add_argument("--images", type=int, default=400, help="records sent through the pipeline")
    sp.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    sp.add_argument("--max-batch", type=int, default=16)
    sp.add_argument("--size", default="640x480", help="test JPEG size WxH")
    sp.add_argument(
        "--naive-images", type=int, default=50, help="images through the one-at-a-time loop"
    )
    sp.add_argument(
        "--latency-seconds", type=float, default=20.0, help="length of the half-load latency run"
    )
    sp.add_argument(
        "--delivery",
        action="store_true",
        help="also measure (d): at least once vs exactly once on the durable broker",
    )
    sp.add_argument(
        "--compare-encoder",
        action="append",
        default=[],
        metavar="SPEC",
        help="also measure (a) for this encoder in the same run (repeatable), "
        "e.g. the float32 copy from `dmguard models --float32`",
    )
    sp.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    w, h = (int(v) for v in args.size.split("x"))
    result = run_bench(encoder_spec=args.encoder, images=args.images, workers=args.workers,
                       max_batch=args.max_batch, size=(w, h), naive_images=args.naive_images,
                       latency_s=args.latency_seconds, compare=args.compare_encoder,
                       delivery=args.delivery)  # fmt: skip
    if args.json:
        print(json.dumps(result))
    else:
        width = max(len(k) for k in result)
        for k, v in result.items():
            print(f"{k:<{width}}  {v}")
    return 0


# -------------------------------------------------------------------- the measurements


def bench_jpegs(n_distinct: int, size: tuple[int, int]) -> list[bytes]:
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n_distinct):
        small = rng.integers(0, 256, size=(size[1] // 16, size[0] // 16, 3), dtype=np.uint8)
        buf = io.BytesIO()
        Image.fromarray(small).resize(size, Image.BILINEAR).save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def _serve_bytes(blobs: list[bytes]) -> HttpServer:
    """GET /<n>.jpg returns blobs[n % len(blobs)] (keep-alive, as a CDN would)."""

    def blob(path: str):
        return 200, blobs[int(path.strip("/").split(".")[0]) % len(blobs)], "image/jpeg"

    return HttpServer(fallback=blob, keep_alive=True, name="bench-images").start()


def _detector(encoder_spec: str, threads: int):
    from training.detector import Detector
    from training.encoders import load_encoder
    from training.head import HeadConfig, MLPHead
    from training.registry import HeadMeta

    encoder = load_encoder(encoder_spec, device="auto", threads=threads)
    meta = HeadMeta(
        version="bench", encoder=encoder_spec, input_dim=encoder.dim, uses_text=False, threshold=0.5
    )
    return Detector(encoder, MLPHead(HeadConfig(input_dim=encoder.dim)), meta)


def raw_throughput(detector, blobs: list[bytes], batches: list[int], repeats: int = 3) -> dict:
    """(a) images/s of encoder + head on ready tensors, per batch size."""
    from services.images import decode

    size = detector.encoder.preprocess.image_size
    pixels = [detector.encoder.preprocess(decode(b, target_size=size)) for b in blobs]
    sweep = {}
    for bs in batches:
        x = np.stack([pixels[i % len(pixels)] for i in range(bs)])
        detector(x)  # warm-up
        t0 = time.perf_counter()
        for _ in range(repeats):
            detector(x)
        sweep[bs] = bs * repeats / (time.perf_counter() - t0)
    best = max(sweep, key=sweep.get)
    return {"ips": sweep[best], "best_batch": best, "sweep": sweep}


def naive_throughput(detector, port: int, n: int) -> float:
    """(b) one image at a time: fetch, full-size decode, preprocess, score."""
    from services.fetch import fetch_bytes
    from services.images import decode

    policy = fetch_policy(allow_network=LOOPBACK)
    t0 = time.perf_counter()
    for i in range(n):
        image = decode(fetch_bytes(f"http://127.0.0.1:{port}/{i}.jpg", policy), target_size=None)
        detector(detector.encoder.preprocess(image)[None])
    return n / (time.perf_counter() - t0)


def register_bench_head(encoder_spec: str, tmp: Path) -> str:
    from training.detector import register_untrained_head
    from training.registry import Registry

    registry = Registry(tmp / "registry")
    register_untrained_head(registry, encoder_spec)
    return str(registry.root)


class _Verdicts:
    """Verdicts as they arrive, from the beginning of the topic."""

    def __init__(self, kafka: KafkaSettings, isolation_level: str = "read_uncommitted") -> None:
        from services.kafka_io import assign_all, make_consumer

        self.consumer = make_consumer(kafka, group=False, isolation_level=isolation_level)
        self.arrived: dict[str, float] = {}  # id -> time.time() when read
        wait_until(lambda: self.consumer.partitions_for_topic(TOPICS.verdicts), 120,
                   what=f"topic {TOPICS.verdicts}")  # fmt: skip
        assign_all(self.consumer, TOPICS.verdicts, from_beginning=True)

    def wait_for(self, prefix: str, n: int, timeout_s: float = 900.0) -> list[dict]:
        got: list[dict] = []

        def more() -> int:
            for msgs in self.consumer.poll(timeout_ms=500).values():
                now = time.time()
                for v in (json.loads(m.value) for m in msgs):
                    if v["id"].startswith(prefix):
                        got.append(v)
                        self.arrived.setdefault(v["id"], now)
            return len(got)

        wait_until(more, timeout_s, interval_s=0, done=lambda k: k >= n,
                   what=f"{n} verdicts of {prefix}* records")  # fmt: skip
        return got


def _send(producer, prefix: str, port: int, n: int, rate: float | None = None) -> dict[str, float]:
    """Send `n` records (at `rate` a second, else at once); returns id -> time.time() sent."""
    start = time.perf_counter()
    sent = {}
    for i in range(n):
        if rate:
            time.sleep(max(0.0, start + i / rate - time.perf_counter()))
        sent[f"{prefix}{i}"] = time.time()
        producer.send(
            TOPICS.images,
            json.dumps({"id": f"{prefix}{i}", "url": f"http://127.0.0.1:{port}/{i}.jpg"}).encode(),
        )
        if rate:
            producer.flush()
    producer.flush()
    return sent


def _wait_reported(metrics, records: int, timeout_s: float = 15.0) -> None:
    """Workers report every second: wait until the driver has counted `records` records."""
    try:
        wait_until(metrics.records_counted, timeout_s, interval_s=0.2, done=lambda k: k >= records,
                   what=f"{records} records counted")  # fmt: skip
    except WaitTimeout:
        pass  # the stage shares of what was counted


def _stage_share(metrics) -> dict[str, float]:
    sums = {}
    for family in metrics.registry.collect():
        if family.name == "dmguard_stage_seconds":
            for s in family.samples:
                if s.name.endswith("_sum"):
                    sums[s.labels["stage"]] = s.value
    total = sum(sums.values()) or 1.0
    return {stage: round(v / total, 3) for stage, v in sums.items()}


def pipeline_run(
    encoder_spec: str, port: int, n: int, workers: int, max_batch: int, latency_s: float,
    *, exactly_once: bool = False, durable: bool = False, latency_rate: float | None = None,
) -> dict:  # fmt: skip
    """(c) throughput through Kafka and Ray workers, stage shares, latency at half load
    (or at `latency_rate`); `durable`: on the durable broker, as (d) measures."""
    from services.broker import EmbeddedBroker, free_port
    from services.cli.serve import running_service
    from services.kafka_io import make_producer
    from services.metrics import DriverMetrics

    with (
        tempfile.TemporaryDirectory() as tmp,
        EmbeddedBroker(durable_dir=Path(tmp) / "broker" if durable else None) as broker,
    ):
        settings = serve_settings(
            bootstrap=broker.bootstrap, client_extra={}, registry=register_bench_head(encoder_spec, Path(tmp)),
            workers=workers, metrics_host="127.0.0.1", metrics_port=free_port(), max_batch=max_batch,
            allow_network=LOOPBACK, exactly_once=exactly_once,
        )  # fmt: skip
        metrics = DriverMetrics()
        with running_service(settings, metrics):
            isolation = "read_committed" if exactly_once else "read_uncommitted"
            verdicts = _Verdicts(settings.worker.kafka, isolation)
            producer = make_producer(settings.worker.kafka)
            _send(producer, "warm-", port, 4 * workers)  # workers up, models warm
            verdicts.wait_for("warm-", 4 * workers)
            t0 = time.perf_counter()
            _send(producer, "bench-", port, n)
            verdicts.wait_for("bench-", n)
            ips = n / (time.perf_counter() - t0)
            _wait_reported(metrics, 4 * workers + n)
            shares = _stage_share(metrics)
            rate = latency_rate or ips / 2
            m = max(4, int(rate * latency_s))
            with ThreadPoolExecutor(1) as reading:  # read while sending: arrival times count
                got = reading.submit(verdicts.wait_for, "half-", m)
                sent = _send(producer, "half-", port, m, rate=rate)
                lat = [v["latency_ms"] for v in got.result()]
            seen_ms = [1000 * (verdicts.arrived[i] - t) for i, t in sent.items()]
            producer.close()
            verdicts.consumer.close()
    p50, p95, p99 = np.percentile(lat, [50, 95, 99])
    seen50, seen99 = np.percentile(seen_ms, [50, 99])
    return {
        "read_latency_ms": {"p50": round(float(seen50), 1), "p99": round(float(seen99), 1)},
        "ips": ips,
        "stage_share": shares,
        "latency_ms": {
            "p50": round(float(p50), 1),
            "p95": round(float(p95), 1),
            "p99": round(float(p99), 1),
        },
        "latency_rate_ips": round(rate, 2),
        "latency_records": m,
    }


def run_bench(
    *, encoder_spec: str, images: int, workers: int, max_batch: int, size: tuple[int, int],
    naive_images: int = 50, latency_s: float = 20.0, compare: list[str] = (),
    delivery: bool = False,
) -> dict:  # fmt: skip
    blobs = bench_jpegs(16, size)
    cores = len(os.sched_getaffinity(0))
    http = _serve_bytes(blobs)
    port = http.port
    try:
        detector = _detector(encoder_spec, threads=cores)
        raw = raw_throughput(detector, blobs, [1, 4, 8, 16, 32])
        others = {}
        for spec in compare:  # the same measurement, same images, right after (a)
            other = raw_throughput(_detector(spec, threads=cores), blobs, [1, 4, 8, 16, 32])
            others[spec] = {"raw_ips": round(other["ips"], 2), "best_batch": other["best_batch"],
                            "vs_default": round(other["ips"] / raw["ips"], 3)}  # fmt: skip
        naive = naive_throughput(detector, port, naive_images)
        del detector
        pipe = pipeline_run(encoder_spec, port, images, workers, max_batch, latency_s)
        modes = (
            delivery_runs(encoder_spec, port, images, workers, max_batch, latency_s)
            if delivery
            else None
        )
    finally:
        http.stop()
    return {
        "cores": cores,
        "encoder": encoder_spec,
        "image_size": list(size),
        "raw_ips": round(raw["ips"], 2),
        "naive_ips": round(naive, 2),
        "pipeline_ips": round(pipe["ips"], 2),
        "pipeline_vs_raw": round(pipe["ips"] / raw["ips"], 3),
        "pipeline_vs_naive": round(pipe["ips"] / naive, 3),
        "best_batch": raw["best_batch"],
        "batch_sweep": {str(k): round(v, 2) for k, v in raw["sweep"].items()},
        "stage_share": pipe["stage_share"],
        "latency_ms": pipe["latency_ms"],
        "latency_at_ips": pipe["latency_rate_ips"],
        "workers": workers,
        "max_batch": max_batch,
        "pipeline_images": images,
        **({"raw_compared": others} if others else {}),
        **({"delivery": modes} if modes else {}),
    }


def delivery_runs(
    encoder_spec: str, port: int, n: int, workers: int, max_batch: int, latency_s: float
) -> dict:
    """(d) at least once, then exactly once, on the durable broker; the latency of both at
    half of the first one's throughput."""
    alo = pipeline_run(encoder_spec, port, n, workers, max_batch, latency_s, durable=True)
    rate = alo["ips"] / 2
    eos = pipeline_run(encoder_spec, port, n, workers, max_batch, latency_s, durable=True,
                       exactly_once=True, latency_rate=rate)  # fmt: skip
    return {
        "at_least_once_ips": round(alo["ips"], 2),
        "exactly_once_ips": round(eos["ips"], 2),
        "exactly_once_vs_at_least_once": round(eos["ips"] / alo["ips"], 3),
        "latency_at_ips": round(rate, 2),
        "at_least_once_read_latency_ms": alo["read_latency_ms"],
        "exactly_once_read_latency_ms": eos["read_latency_ms"],
    }
