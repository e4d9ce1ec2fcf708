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
"""

from __future__ import annotations

import io
import json
import os
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
from PIL import Image


def _test_jpegs(n_distinct: int, size: tuple[int, int]) -> list[bytes]:
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n_distinct):
        small = rng.integers(0, 256, size=(size[1] // 16, size[0] // 16, 3), dtype=np.uint8)
        buf = io.BytesIO()
        Image.fromarray(small).resize(size, Image.BILINEAR).save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def _serve_bytes(blobs: list[bytes]) -> ThreadingHTTPServer:
    """GET /<n>.jpg returns blobs[n % len(blobs)]."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:  # noqa: N802
            body = blobs[int(self.path.strip("/").split(".")[0]) % len(blobs)]
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


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
    from services.fetch import FetchPolicy, fetch_bytes
    from services.images import decode

    policy = FetchPolicy(allowed_networks=("127.0.0.1/32",))
    t0 = time.perf_counter()
    for i in range(n):
        image = decode(fetch_bytes(f"http://127.0.0.1:{port}/{i}.jpg", policy), target_size=None)
        detector(detector.encoder.preprocess(image)[None])
    return n / (time.perf_counter() - t0)


def _start_service(encoder_spec: str, bootstrap: str, tmp: Path, workers: int, max_batch: int):
    from services.config import KafkaSettings, ServeSettings, WorkerSettings
    from services.fetch import FetchPolicy
    from services.metrics import DriverMetrics
    from services.serve import run_service
    from training.detector import register_untrained_head
    from training.registry import Registry

    registry = Registry(tmp / "registry")
    register_untrained_head(registry, encoder_spec)
    worker = WorkerSettings(
        kafka=KafkaSettings(bootstrap_servers=bootstrap),
        registry=str(registry.root),
        fetch=FetchPolicy(allowed_networks=("127.0.0.1/32",)),
        max_batch=max_batch,
    )
    settings = ServeSettings(
        worker=worker, workers=workers, metrics_host="127.0.0.1", metrics_port=0
    )
    metrics, stop = DriverMetrics(), threading.Event()
    thread = threading.Thread(
        target=run_service, args=(settings,), kwargs={"stop": stop, "metrics": metrics}
    )
    thread.start()
    return metrics, stop, thread


class _Verdicts:
    def __init__(self, bootstrap: str) -> None:
        from kafka import KafkaConsumer

        self.consumer = KafkaConsumer(bootstrap_servers=bootstrap, auto_offset_reset="earliest")
        deadline = time.monotonic() + 120
        while not self.consumer.partitions_for_topic("dmguard.verdicts"):
            if time.monotonic() > deadline:
                raise TimeoutError("dmguard.verdicts never appeared")
            time.sleep(0.5)
        self.consumer.subscribe(["dmguard.verdicts"])

    def wait_for(self, prefix: str, n: int) -> list[dict]:
        got: list[dict] = []
        while len(got) < n:
            for msgs in self.consumer.poll(timeout_ms=500).values():
                got += [
                    v for v in (json.loads(m.value) for m in msgs) if v["id"].startswith(prefix)
                ]
        return got


def _send(producer, prefix: str, port: int, n: int, rate: float | None = None) -> None:
    start = time.perf_counter()
    for i in range(n):
        if rate:
            time.sleep(max(0.0, start + i / rate - time.perf_counter()))
        producer.send(
            "dmguard.images",
            json.dumps({"id": f"{prefix}{i}", "url": f"http://127.0.0.1:{port}/{i}.jpg"}).encode(),
        )
        if rate:
            producer.flush()
    producer.flush()


def _wait_reported(metrics, records: int, timeout_s: float = 15.0) -> None:
    """Workers report every second: wait until the driver has counted `records` records."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        counted = sum(
            s.value for f in metrics.registry.collect() if f.name == "dmguard_records" for s in f.samples
            if s.name == "dmguard_records_total"
        )  # fmt: skip
        if counted >= records:
            return
        time.sleep(0.2)


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
    encoder_spec: str, port: int, n: int, workers: int, max_batch: int, latency_s: float
) -> dict:
    """(c) throughput through Kafka and Ray workers, stage shares, latency at half load."""
    from kafka import KafkaProducer

    from services.broker import EmbeddedBroker

    with tempfile.TemporaryDirectory() as tmp, EmbeddedBroker() as broker:
        metrics, stop, thread = _start_service(
            encoder_spec, broker.bootstrap, Path(tmp), workers, max_batch
        )
        try:
            verdicts = _Verdicts(broker.bootstrap)
            producer = KafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=5)
            _send(producer, "warm-", port, 4 * workers)  # workers up, models warm
            verdicts.wait_for("warm-", 4 * workers)
            t0 = time.perf_counter()
            _send(producer, "bench-", port, n)
            verdicts.wait_for("bench-", n)
            ips = n / (time.perf_counter() - t0)
            _wait_reported(metrics, 4 * workers + n)
            shares = _stage_share(metrics)
            rate = ips / 2
            m = max(4, int(rate * latency_s))
            _send(producer, "half-", port, m, rate=rate)
            lat = [v["latency_ms"] for v in verdicts.wait_for("half-", m)]
            producer.close()
            verdicts.consumer.close()
        finally:
            stop.set()
            thread.join(120)
    p50, p95, p99 = np.percentile(lat, [50, 95, 99])
    return {
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
) -> dict:  # fmt: skip
    blobs = _test_jpegs(16, size)
    cores = len(os.sched_getaffinity(0))
    http = _serve_bytes(blobs)
    port = http.server_address[1]
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
    finally:
        http.shutdown()
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
    }
