"""`dmguard demo`: the whole system on one machine, on real CLIP weights and real images.

1. the demo set (built and cached on first use: training/data/demo_data.py);
2. the embedded broker, a local Ray, and an HTTP server for the images (real URLs);
3. a head trained with the robust loss on Ray Train on the training split, registered
   in the default registry (so `dmguard eval`, `score` and `serve` work afterwards);
4. `serve` with N workers, in this process, writing the feature log;
5. the held-out images streamed as URL records, with a few bad records mixed in;
   every record accounted for (a verdict or a dead letter), then a summary table;
6. labels for part of the held-out stream (group A: whole sources), one retrain,
   the hot swap seen in the workers' status, and group B streamed again: the new
   head's verdicts beside the old head's on images neither head was trained on;
7. the metrics endpoint's key lines, and the dashboard's main panels over the run as a
   PNG (`<cache>/demo/dashboard.png`, from /metrics sampled every second).

Exits 1 with a message when a record was lost. `--keep` leaves everything running
until Ctrl-C so the broker, /metrics and the image server can be poked at.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import signal
import sys
import threading
import time
import urllib.request
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dmguard.common import registry_arg
from dmguard.dashboard_png import RATE_WINDOW_S, MetricsSampler, write_png
from dmguard.demo_report import (
    StreamResult,
    benchmark_table,
    fmt,
    judged,
    metrics_lines,
    retrain_lines,
    stream_table,
)
from services.config import KafkaSettings, Topics, WorkerSettings
from services.outputs import Outputs, output_key
from services.poll import WaitTimeout, wait_until

LOOPBACK = ("127.0.0.1/32",)
TOPICS = Topics()


# ------------------------------------------------------------------ the command
def add_parser(sub) -> None:
    sp = sub.add_parser(
        "demo",
        help="the whole system on this machine, offline: train, serve, stream, retrain, hot swap",
        description="Builds (once) a demo set of real photos and generated images from PyPI and "
        "Debian packages, starts the embedded broker, Ray and an image server, trains a head with "
        "the robust loss on Ray Train, serves it with N workers, streams the held-out images with "
        "a few bad records, prints a summary, then sends labels, retrains and shows the hot swap. "
        "Exits 1 if any record was lost.",
    )
    registry_arg(sp)
    d = DemoSettings
    sp.add_argument("--data", default=str(d.data), help="demo set folder (built when missing)")
    sp.add_argument("--downloads", default=str(d.downloads), help="package download cache")
    sp.add_argument("--cache", default=str(d.cache), help="embeddings and Ray Train storage")
    sp.add_argument(
        "--encoder", default=d.encoder, help="encoder spec (default: offline CLIP ViT-B/16)"
    )
    sp.add_argument("--workers", type=int, default=d.workers, help="serve workers")
    sp.add_argument("--train-workers", type=int, default=d.train_workers, help="Ray Train workers")
    sp.add_argument(
        "--epochs", type=int, default=d.epochs, help="most training epochs (default %(default)s)"
    )
    sp.add_argument(
        "--benchmark-seeds",
        type=int,
        default=d.benchmark_seeds,
        help="seeds of the leave-source-out benchmark the demo prints (0: skip it)",
    )
    sp.add_argument(
        "--max-batch", type=int, default=d.max_batch, help="largest model batch of a worker"
    )
    sp.add_argument("--metrics-port", type=int, default=d.metrics_port, help="0: any free port")
    sp.add_argument(
        "--seed", type=int, default=d.seed, help="seed of the demo set's split and the head"
    )
    sp.add_argument("--keep", action="store_true", help="leave everything running until Ctrl-C")
    sp.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    return run_demo(
        DemoSettings(
            data=Path(args.data),
            downloads=Path(args.downloads),
            registry=Path(args.registry),
            cache=Path(args.cache),
            encoder=args.encoder,
            workers=args.workers,
            train_workers=args.train_workers,
            epochs=args.epochs,
            max_batch=args.max_batch,
            metrics_port=args.metrics_port,
            keep=args.keep,
            seed=args.seed,
            benchmark_seeds=args.benchmark_seeds,
        )
    )


@dataclass(frozen=True)
class DemoSettings:
    data: Path = Path(".cache/demo/set")
    downloads: Path = Path(".cache/demo/downloads")
    registry: Path = Path("registry")
    cache: Path = Path(".cache")
    encoder: str = ""  # empty: the offline CLIP ViT-B/16 weights
    workers: int = 2
    train_workers: int = 2
    epochs: int = 40
    benchmark_seeds: int = 1
    max_batch: int = WorkerSettings.max_batch
    metrics_port: int = 0  # 0: a free port
    keep: bool = False
    seed: int = 0
    timeout_s: float = 600.0  # for all records of one stream to be accounted for
    train: dict = field(default_factory=dict)  # TrainConfig overrides (of HEAD_RECIPE too)

    def train_config(self):
        from training.learning.config import TrainConfig

        return TrainConfig(
            epochs=self.epochs,
            workers=self.train_workers,
            seed=self.seed,
            **{**HEAD_RECIPE, **self.train},
        )


# The best head measured with the robust loss on the leave-source-out benchmark
# (docs/detection.md): the paper's loss and SAM, an MLP 512 wide on the class tokens of
# blocks 8-11 of the CLIP tower, rows reweighed by content, small batches (a thousand
# images: 256 would be a few steps an epoch).
HEAD_RECIPE = {"features": "blocks:8-11", "hidden_dim": 512, "batch_size": 32, "patience": 8}
# The demo's retrain is promoted when its held-out AUC is within this of the current head's
# on the same rows (`retrain --tolerance`): with about a hundred held-out images one image
# moves AUC by about 0.01, so a stricter rule would decide by noise.
RETRAIN_TOLERANCE = 0.01


def say(message: str) -> None:
    print(f"[demo] {message}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------ the pieces
def image_server(root: Path, truncated: bytes):
    """Files of the demo set, plus /bad/truncated.jpg (half a JPEG) for a dead letter."""
    from services.http import HttpServer

    return HttpServer({"/bad/truncated.jpg": lambda: (200, truncated, "image/jpeg")}, files=root)


def _get_text(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as r:
        return r.read().decode()


# ------------------------------------------------------------------ the steps
def read_split(data: Path, name: str) -> list[dict]:
    with (data / f"{name}.csv").open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def train_head(s: DemoSettings, encoder: str) -> dict:
    """Embed the training split (cached) and train + register a head on Ray Train."""
    from training.data.embeddings import embed_samples
    from training.data.samples import load_samples
    from training.learning.job import train_register
    from training.model.registry import Registry

    cfg = s.train_config()
    samples = load_samples(s.data / "train.csv")
    emb = embed_samples(
        samples,
        encoder,
        cache_dir=s.cache / "embeddings",
        workers=s.train_workers,
        with_text=False,
        features=cfg.features,
    )
    if emb.bad:
        say(f"{len(emb.bad)} training images could not be read: {emb.bad[:3]}")
    t0 = time.monotonic()
    meta = train_register(
        emb.X,
        emb.labels,
        emb.sources,
        encoder=encoder,
        registry=Registry(s.registry),
        cfg=cfg,
        storage=s.cache / "ray-train",
        extra={"data": {"src": str((s.data / "train.csv").resolve())}},
        groups=[x.content for x in emb.samples],
    )
    promotion = meta.extra["promotion"]
    say(
        f"trained {meta.version} in {time.monotonic() - t0:.0f} s on {len(samples)} images; "
        f"promoted: {promotion['promoted']} ({promotion['reason']})"
    )
    return {
        "version": meta.version,
        "metrics": meta.metrics,
        "promotion": promotion,
        "threshold": meta.threshold,
    }


def benchmark_lines(s: DemoSettings, encoder: str) -> str:
    """The leave-source-out figures of the demo's recipe on the whole demo set, for people
    and overall (training.evaluation.benchmark: every source held out in turn)."""
    from training.data.samples import load_samples
    from training.evaluation.benchmark import run_benchmark

    say("leave-source-out benchmark: 5 folds, every source held out in turn")
    out = run_benchmark(
        load_samples(s.data / "manifest.csv"),
        encoder,
        s.train_config(),
        seeds=range(s.seed, s.seed + s.benchmark_seeds),
        cache_dir=s.cache / "embeddings",
        workers=s.train_workers,
        progress=False,
        log=say,
    )
    return "\n".join(benchmark_table(out))


def bad_records(base_url: str) -> list[tuple[str, bytes]]:
    """(expected output key, record value) for records that must become dead letters."""
    bad = [
        ("raw:{not json", b"{not json"),
        ("bad-no-url", json.dumps({"id": "bad-no-url"}).encode()),
    ]
    for rid, url in (
        ("bad-404", f"{base_url}/images/missing.jpg"),
        ("bad-scheme", "ftp://example.com/a.jpg"),
        ("bad-not-image", f"{base_url}/summary.json"),
        ("bad-truncated", f"{base_url}/bad/truncated.jpg"),
        ("bad-private-address", "http://10.0.0.1/a.jpg"),
    ):
        bad.append((rid, json.dumps({"id": rid, "url": url}).encode()))
    return bad


def stream(
    kafka: KafkaSettings, reader, records: list[tuple[str, bytes]], timeout_s: float
) -> StreamResult:
    """Send the records, then read until each has an output (or the timeout passes).
    Keys are unique per stream, so the outputs for `records` are those with their keys."""
    from tqdm import tqdm

    from services.kafka_io import produce
    from services.outputs import wait_accounted

    expected = {key for key, _ in records}
    t0 = time.monotonic()
    produce(kafka, TOPICS.images, [(None, value) for _, value in records])
    with tqdm(total=len(expected), desc="verdicts", unit="rec", file=sys.stderr) as bar:

        def progress(out: Outputs) -> None:
            done = len(expected & {output_key(r) for r in out.verdicts + out.dead_letters})
            bar.update(done - bar.n)

        out = wait_accounted(reader, expected, timeout_s, on_progress=progress)
    seconds = time.monotonic() - t0
    mine = Outputs(
        [v for v in out.verdicts if output_key(v) in expected],
        [d for d in out.dead_letters if output_key(d) in expected],
    )
    return StreamResult(len(records), mine, expected, seconds)


def split_groups(rows: list[dict], seed: int) -> tuple[list[dict], list[dict]]:
    """Held-out rows in two groups that share no source (each with both classes when it can):
    A gets labels and goes into the retrain, B stays unseen by both heads."""
    rng = np.random.default_rng(seed)
    a, b = [], []
    for label in ("0", "1"):
        mine = [r for r in rows if r["label"] == label]
        sources = sorted({r["source"] for r in mine})
        rng.shuffle(sources)
        if len(sources) >= 2:
            to_a = set(sources[0::2])
            a += [r for r in mine if r["source"] in to_a]
            b += [r for r in mine if r["source"] not in to_a]
        else:  # one source: split its images instead
            a += mine[0::2]
            b += mine[1::2]
    return a, b


def wait_feature_log(feature_log: Path, ids: set[str], timeout_s: float = 60.0) -> int:
    """Workers flush the feature log every ~10 s: wait until it holds every id in `ids`;
    returns how many it holds."""
    from training.data.feature_log import read_feature_log

    def logged() -> set[str]:
        return ids & set(read_feature_log(str(feature_log)).column("id").to_pylist())

    try:
        have = wait_until(
            logged, timeout_s, interval_s=1.0, done=ids.__eq__, what="the feature log"
        )
    except WaitTimeout as exc:
        have = exc.last
    return len(have)


def wait_for_head(status_url: str, version: str, timeout_s: float = 60.0) -> float | None:
    """Seconds until every worker reports `version` in /status, or None."""

    def swapped() -> bool:
        workers = json.loads(_get_text(status_url)).get("workers", [])
        return bool(workers) and all(w.get("head_version") == version for w in workers)

    t0 = time.monotonic()
    try:
        wait_until(swapped, timeout_s, interval_s=0.25, what=f"every worker on {version}")
    except WaitTimeout:
        return None
    return time.monotonic() - t0


# ------------------------------------------------------------------ the report
def scrape_when_counted(url: str, metrics, records: int, timeout_s: float = 20.0) -> str:
    """/metrics once the driver has counted `records` records (workers report every second)."""
    try:
        wait_until(
            metrics.records_counted,
            timeout_s,
            done=lambda n: n >= records,
            what=f"{records} records counted",
        )
    except WaitTimeout:
        pass  # show what there is
    return _get_text(url)


def write_dashboard(sampler: MetricsSampler, path: Path) -> None:
    """The dashboard's main panels over the run, from /metrics sampled every second
    (dmguard.dashboard_png: what Grafana would show, without a Prometheus)."""
    sampler.stop()
    title = f"dmguard demo: serve's /metrics over the run (rates over {RATE_WINDOW_S:g} s)"
    empty = write_png(sampler.panels(), path, title)
    show(f"== dashboard\n{path}" + (f" (no data: {', '.join(empty)})" if empty else ""))


# ------------------------------------------------------------------ the whole demo
def run_demo(s: DemoSettings) -> int:
    """The whole demo (the module's docstring lists its steps); 1 when a record was lost."""
    from services.broker import EmbeddedBroker
    from services.outputs import OutputReader
    from services.ray_cluster import init_ray

    t_start = time.monotonic()
    encoder = s.encoder or _offline_encoder()
    held = prepare_demo_set(s)
    feature_log = s.cache / "demo" / "feature-log"
    shutil.rmtree(feature_log, ignore_errors=True)
    with ExitStack() as stack:
        broker = stack.enter_context(EmbeddedBroker())
        say(f"broker on {broker.bootstrap}")
        init_ray(num_cpus=s.workers + s.train_workers + 2, log_to_driver=False)
        truncated = (s.data / held[0]["path"]).read_bytes()[:2000]
        base_url = stack.enter_context(image_server(s.data, truncated)).url
        say(f"images served from {base_url}/images/")
        say(
            f"training a head ({encoder}) with the robust loss on Ray Train, {s.train_workers} workers"
        )
        v1 = train_head(s, encoder)
        if s.benchmark_seeds > 0:
            show(benchmark_lines(s, encoder))
        run = DemoRun(s, broker.bootstrap, base_url, feature_log)
        run.status_base = stack.enter_context(run.serving())
        sampler = stack.enter_context(MetricsSampler(f"{run.status_base}/metrics"))
        run.reader = OutputReader(broker.bootstrap)
        stack.callback(run.reader.close)
        code = run.stream_and_retrain(held, v1["version"])
        write_dashboard(sampler, s.cache / "demo" / "dashboard.png")
        if code:
            return code
        print(
            f"\ndemo finished in {time.monotonic() - t_start:.0f} s; the head stays in {s.registry} "
            f"(try: dmguard eval --data {s.data / 'heldout.csv'})",
            flush=True,
        )
        if s.keep:
            _keep_running(broker.bootstrap, base_url, run.status_base)
    return 0


def prepare_demo_set(s: DemoSettings) -> list[dict]:
    """The demo set (built on first use); returns its held-out rows."""
    from training.data.demo_data import ensure_demo_set

    summary = ensure_demo_set(s.data, s.downloads, seed=s.seed, log=say)
    say(
        f"demo set: {summary['images']} images in {s.data} "
        f"(train {summary['train']['real']} real / {summary['train']['generated']} generated, "
        f"held out {summary['heldout']['real']} real / {summary['heldout']['generated']} generated, "
        f"split {summary['split']})"
    )
    return read_split(s.data, "heldout")


def show(text: str) -> None:
    print("\n" + text, flush=True)


class DemoRun:
    """The demo's streams against one running `serve`: the held-out images with bad
    records, labels and a retrain, then group B again after the hot swap."""

    def __init__(self, s: DemoSettings, bootstrap: str, base_url: str, feature_log: Path) -> None:
        from services.broker import free_port
        from services.config import serve_settings
        from services.metrics import DriverMetrics

        self.s, self.base_url, self.feature_log = s, base_url, feature_log
        self.serve = serve_settings(
            bootstrap=bootstrap,
            client_extra={},
            registry=str(s.registry),
            workers=s.workers,
            metrics_host="127.0.0.1",
            metrics_port=s.metrics_port or free_port(),
            max_batch=s.max_batch,
            feature_log=str(feature_log),
            allow_network=LOOPBACK,
        )
        self.kafka = self.serve.worker.kafka
        self.metrics = DriverMetrics()
        self.status_base = ""
        self.reader = None

    def serving(self):
        from actors.supervisor import running_service

        say(
            f"starting serve: {self.s.workers} workers, metrics on "
            f"http://127.0.0.1:{self.serve.metrics_port}/metrics"
        )
        return running_service(self.serve, self.metrics)

    def records(self, prefix: str, rows: list[dict]) -> dict[str, dict]:
        return {f"{prefix}-{i}": row for i, row in enumerate(rows)}

    def url_records(self, truth: dict[str, dict]) -> list[tuple[str, bytes]]:
        return [
            (rid, json.dumps({"id": rid, "url": f"{self.base_url}/{row['path']}"}).encode())
            for rid, row in truth.items()
        ]

    def stream_and_retrain(self, held: list[dict], v1: str) -> int:
        """Steps 5-7 of the demo; 1 when a record was lost."""
        truth = self.records("held", held)
        first = self.stream_heldout(truth, v1)
        if first.lost:
            return _lost(first)
        group_a, group_b = split_groups(held, self.s.seed)
        self.retrain({rid for rid, row in truth.items() if row in group_a}, truth)
        second = self.stream_again(group_b, first, truth)
        if second.lost:
            return _lost(second)
        text = scrape_when_counted(
            f"{self.status_base}/metrics", self.metrics, first.sent + second.sent
        )
        show("== key lines of /metrics\n" + metrics_lines(text))
        return 0

    def stream_heldout(self, truth: dict[str, dict], version: str) -> StreamResult:
        """The held-out split as a live stream, with bad records mixed in."""
        records = self.url_records(truth)
        records[len(records) // 2 : len(records) // 2] = bad_records(self.base_url)
        say(
            f"streaming {len(records)} records ({len(truth)} held-out images, "
            f"{len(records) - len(truth)} bad)"
        )
        first = stream(self.kafka, self.reader, records, self.s.timeout_s)
        title = f"stream 1: held-out images, head {version}"
        show(stream_table(title, first, judged(first, truth)))
        return first

    def retrain(self, ids_a: set[str], truth: dict[str, dict]) -> None:
        """Labels for group A, one retrain, the hot swap seen in the workers' status."""
        from services.kafka_io import produce
        from training.learning.retrain import RetrainSettings, retrain_once

        labels = [
            json.dumps(
                {"id": rid, "label": "generated" if truth[rid]["label"] == "1" else "real"}
            ).encode()
            for rid in sorted(ids_a)
        ]
        produce(self.kafka, TOPICS.labels, [(None, value) for value in labels])
        t_labels = time.monotonic()
        sources = len({truth[i]["source"] for i in ids_a})
        say(f"sent {len(labels)} labels (group A: {sources} sources); waiting for the feature log")
        logged = wait_feature_log(self.feature_log, ids_a)
        say(f"feature log holds {logged}/{len(ids_a)} labelled ids; retraining")
        settings = RetrainSettings(
            kafka=self.kafka,
            labels_topic=TOPICS.labels,
            registry=str(self.s.registry),
            feature_log=str(self.feature_log),
            cache=self.s.cache,
            min_new_labels=max(1, len(ids_a) // 2),
            tolerance=RETRAIN_TOLERANCE,
            train=self.s.train_config(),
        )
        result = retrain_once(settings)
        swap_s = None
        if result.get("trained") and result.get("promoted"):
            waited = wait_for_head(f"{self.status_base}/status", result["version"])
            swap_s = None if waited is None else time.monotonic() - t_labels
        show(retrain_lines(result, swap_s, RETRAIN_TOLERANCE))

    def stream_again(
        self, group_b: list[dict], first: StreamResult, truth: dict[str, dict]
    ) -> StreamResult:
        """Group B again, as new records: the new head beside the old on unseen sources."""
        truth_b = self.records("again", group_b)
        second = stream(self.kafka, self.reader, self.url_records(truth_b), self.s.timeout_s)
        before = judged(first, {rid: row for rid, row in truth.items() if row in group_b})
        after = judged(second, truth_b)
        show(
            stream_table("stream 2: group B (no labels) again, after the retrain", second, after)
            + f"\n(the same {len(group_b)} images in stream 1: AUC {fmt(before.get('auc'))}, "
            f"head {', '.join(before.get('head_versions', {}))})"
        )
        return second


def _offline_encoder() -> str:
    from training.model.weights import fetch_weights

    return f"onnx:{fetch_weights().resolve()}"


def _lost(result: StreamResult) -> int:
    print(
        f"\nERROR: {len(result.lost)} records were neither judged nor dead-lettered: "
        f"{sorted(result.lost)[:10]}",
        file=sys.stderr,
    )
    return 1


def _keep_running(bootstrap: str, images: str, status_base: str) -> None:
    print(
        f"\n--keep: running until Ctrl-C\n  broker      {bootstrap}\n  metrics     {status_base}/metrics"
        f"\n  status      {status_base}/status\n  images      {images}/images/\n"
        f"  try: DMGUARD_BOOTSTRAP={bootstrap} dmguard tail --topic {TOPICS.verdicts}",
        flush=True,
    )
    # Our own handlers: Ray Train's TorchTrainer leaves a SIGINT handler of its own behind
    # (it aborts a training run, and there is none by now), so Ctrl-C would be swallowed.
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    say("stopping")
