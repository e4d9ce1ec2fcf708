"""`dmguard bench`: throughput side by side with its limit, in one run.

First cut (the full benchmark with the naive loop, stage shares and latency
under load is the demo/bench issue's work):

  (a) raw: encoder + head on pre-decoded, pre-batched tensors, batch sizes
      swept, all cores to one process: the limit for this encoder here.
  (c) pipeline: the same images as URLs on a local HTTP server, through the
      embedded broker and `serve` with one worker per core, from the first
      record sent to the last verdict read.
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
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:  # noqa: N802
            body = blobs[int(self.path.strip("/").split(".")[0].split("?")[0]) % len(blobs)]
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


def raw_throughput(
    encoder_spec: str, blobs: list[bytes], batches: list[int], threads: int, repeats: int = 3
) -> dict:
    from services.images import decode
    from training.detector import Detector
    from training.encoders import load_encoder
    from training.head import HeadConfig, MLPHead
    from training.registry import HeadMeta

    encoder = load_encoder(encoder_spec, device="auto", threads=threads)
    meta = HeadMeta(
        version="bench", encoder=encoder_spec, input_dim=encoder.dim, uses_text=False, threshold=0.5
    )
    detector = Detector(encoder, MLPHead(HeadConfig(input_dim=encoder.dim)), meta)
    pixels = [
        encoder.preprocess(decode(b, target_size=encoder.preprocess.image_size)) for b in blobs
    ]
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


def pipeline_throughput(
    encoder_spec: str, blobs: list[bytes], n: int, workers: int, max_batch: int
) -> dict:
    from kafka import KafkaConsumer, KafkaProducer

    from services.broker import EmbeddedBroker
    from services.config import KafkaSettings, ServeSettings, WorkerSettings
    from services.fetch import FetchPolicy
    from services.serve import run_service
    from training.detector import register_untrained_head
    from training.registry import Registry

    http = _serve_bytes(blobs)
    port = http.server_address[1]
    with tempfile.TemporaryDirectory() as tmp, EmbeddedBroker() as broker:
        registry = Registry(Path(tmp) / "registry")
        register_untrained_head(registry, encoder_spec)
        worker = WorkerSettings(
            kafka=KafkaSettings(bootstrap_servers=broker.bootstrap),
            registry=str(registry.root),
            fetch=FetchPolicy(allowed_networks=("127.0.0.1/32",)),
            max_batch=max_batch,
        )
        settings = ServeSettings(
            worker=worker, workers=workers, metrics_host="127.0.0.1", metrics_port=0
        )
        stop = threading.Event()
        result: dict = {}
        service = threading.Thread(
            target=lambda: result.setdefault("rc", run_service(settings, stop=stop))
        )
        service.start()
        consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap, auto_offset_reset="earliest")
        _wait_for_topic(consumer, "dmguard.verdicts")
        consumer.subscribe(["dmguard.verdicts"])
        _warm_up(broker.bootstrap, consumer, port, workers)
        producer = KafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=5)
        t0 = time.perf_counter()
        for i in range(n):
            rec = {"id": f"bench-{i}", "url": f"http://127.0.0.1:{port}/{i}.jpg"}
            producer.send("dmguard.images", json.dumps(rec).encode())
        producer.flush()
        seen = 0
        while seen < n:
            for msgs in consumer.poll(timeout_ms=500).values():
                seen += sum(1 for m in msgs if json.loads(m.value)["id"].startswith("bench-"))
        elapsed = time.perf_counter() - t0
        consumer.close()
        producer.close()
        stop.set()
        service.join(60)
    http.shutdown()
    return {"ips": n / elapsed, "images": n, "seconds": elapsed}


def _wait_for_topic(consumer, topic: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not consumer.partitions_for_topic(topic):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{topic} never appeared")
        time.sleep(0.5)


def _warm_up(bootstrap: str, consumer, port: int, workers: int) -> None:
    """Send a few records and wait for their verdicts: workers are up, models warm."""
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap)
    for i in range(4 * workers):
        producer.send(
            "dmguard.images",
            json.dumps({"id": f"warm-{i}", "url": f"http://127.0.0.1:{port}/{i}.jpg"}).encode(),
        )
    producer.flush()
    producer.close()
    seen = 0
    while seen < 4 * workers:
        for msgs in consumer.poll(timeout_ms=500).values():
            seen += len(msgs)


def run_bench(
    *, encoder_spec: str, images: int, workers: int, max_batch: int, size: tuple[int, int]
) -> dict:
    blobs = _test_jpegs(16, size)
    cores = len(os.sched_getaffinity(0))
    raw = raw_throughput(encoder_spec, blobs, [1, 4, 8, 16, 32], threads=cores)
    pipe = pipeline_throughput(encoder_spec, blobs, images, workers, max_batch)
    return {
        "cores": cores,
        "encoder": encoder_spec,
        "image_size": list(size),
        "raw_ips": round(raw["ips"], 2),
        "best_batch": raw["best_batch"],
        "batch_sweep": {str(k): round(v, 2) for k, v in raw["sweep"].items()},
        "pipeline_ips": round(pipe["ips"], 2),
        "pipeline_images": pipe["images"],
        "pipeline_vs_raw": round(pipe["ips"] / raw["ips"], 3),
        "workers": workers,
        "max_batch": max_batch,
    }
