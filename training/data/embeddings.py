"""Embeddings of a labelled image set, computed once per (image content,
encoder) with a Ray actor pool and cached on disk as Parquet.

    cache_dir/<encoder key>/part-*.parquet    columns: hash (sha256 of the bytes), embedding

A second run over the same images and encoder reads the cache and never
starts an encoder. Images that cannot be read or decoded are reported with
their reason, not fatal.
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from services.errors import InputError
from services.fetch import FetchPolicy, fetch_bytes
from training.data.samples import Sample

DEFAULT_CACHE = Path(".cache/embeddings")
log = logging.getLogger(__name__)


@dataclass
class EmbeddedSet:
    samples: list[Sample]  # the ones that embedded, in input order
    X: np.ndarray  # (N, D) float32, L2-normalised
    hashes: list[str]
    bad: list[tuple[str, str]] = field(default_factory=list)  # (location, reason)
    computed: int = 0  # images run through the encoder this time (0 when all were cached)
    T: np.ndarray | None = None  # (N, Dt) caption embeddings, zeros where there is no caption

    @property
    def labels(self) -> np.ndarray:
        return np.array([s.label for s in self.samples], dtype=np.int64)

    @property
    def sources(self) -> list[str]:
        return [s.source for s in self.samples]


# Bumped whenever decoding or preprocessing changes what an image's pixels are
# (2: 16-bit greyscale keeps its high byte; images beyond 4:1 are centre-cropped),
# so that cached embeddings never mix two pipelines.
PIXELS_VERSION = 2


def encoder_key(spec: str, features: str = "embedding") -> str:
    """The cache folder's name for an encoder and a kind of image features
    (training.model.features); final embeddings keep the key they always had."""
    kind = "" if features == "embedding" else f"|{features}"
    return hashlib.sha256(f"{spec}|pixels-v{PIXELS_VERSION}{kind}".encode()).hexdigest()[:16]


def read_image_bytes(location: str, policy: FetchPolicy) -> bytes:
    if "://" in location:
        return fetch_bytes(location, policy)
    return fetch_bytes(Path(location).resolve().as_uri(), policy)


def write_cache(
    folder: Path, prefix: str, hashes: list[str], embeddings: list[list[float]]
) -> None:
    if hashes:
        table = pa.table(
            {"hash": hashes, "embedding": pa.array(embeddings, type=pa.list_(pa.float32()))}
        )
        pq.write_table(table, folder / f"{prefix}-{uuid.uuid4().hex}.parquet")


def load_cache(folder: Path, prefix: str = "part") -> dict[str, np.ndarray]:
    cache: dict[str, np.ndarray] = {}
    for part in sorted(folder.glob(f"{prefix}-*.parquet")):
        table = pq.read_table(part)
        for h, e in zip(
            table.column("hash").to_pylist(), table.column("embedding").to_pylist(), strict=True
        ):
            cache[h] = np.asarray(e, dtype=np.float32)
    return cache


class _Embedder:
    """Ray actor: decode + preprocess + encode batches of image bytes."""

    def __init__(self, spec: str, threads: int) -> None:
        from training.model.encoders import load_encoder

        self.encoder = load_encoder(spec, threads=threads)

    def embed_texts(self, texts: list[str]) -> np.ndarray | None:
        if self.encoder.text_dim == 0:
            return None
        return np.concatenate(
            [self.encoder.encode_texts(texts[i : i + 64]) for i in range(0, len(texts), 64)]
        )

    def embed(
        self, blobs: list[bytes], features: str = "embedding"
    ) -> tuple[list[np.ndarray | None], list[str | None]]:
        from services.images import decode
        from training.model.features import encode

        pixels, errors = [], []
        for blob in blobs:
            try:
                image = decode(blob, target_size=self.encoder.preprocess.image_size)
                pixels.append(self.encoder.preprocess(image))
                errors.append(None)
            except InputError as exc:
                pixels.append(None)
                errors.append(f"{exc.code}: {exc}")
        good = [p for p in pixels if p is not None]
        emb = iter(encode(self.encoder, np.stack(good), features) if good else [])
        return [next(emb) if p is not None else None for p in pixels], errors


def embed_samples(
    samples: list[Sample],
    encoder_spec: str,
    *,
    cache_dir: Path = DEFAULT_CACHE,
    workers: int = 1,
    batch_size: int = 32,
    progress: bool = True,
    policy: FetchPolicy | None = None,
    transform: Callable[[bytes], bytes] | None = None,
    with_text: bool = True,
    features: str = "embedding",
) -> EmbeddedSet:
    """Embed `samples` with `encoder_spec`, reading and filling the cache.

    `transform` changes each image's bytes before hashing and embedding (the
    robustness perturbations of `dmguard eval --perturb`). With `with_text`,
    captions are embedded too (through the encoder's text tower, cached by
    text hash) into `EmbeddedSet.T`. `features` is the kind of image features
    in `EmbeddedSet.X` (training.model.features; each kind has its own cache).
    """
    from tqdm import tqdm

    policy = policy or FetchPolicy(allow_file=True, allowed_networks=("127.0.0.0/8",))
    folder = Path(cache_dir) / encoder_key(encoder_spec, features)
    folder.mkdir(parents=True, exist_ok=True)
    cache = load_cache(folder)

    blobs: dict[int, bytes] = {}
    hashes: dict[int, str] = {}
    bad: list[tuple[str, str]] = []

    def read(i: int) -> None:
        try:
            data = read_image_bytes(samples[i].location, policy)
            if transform is not None:
                data = transform(data)
        except (InputError, OSError, ValueError) as exc:
            bad.append((samples[i].location, f"{getattr(exc, 'code', 'decode_failed')}: {exc}"))
            return
        hashes[i] = hashlib.sha256(data).hexdigest()
        if hashes[i] not in cache:
            blobs[i] = data

    with ThreadPoolExecutor(8) as pool:
        list(
            tqdm(
                pool.map(read, range(len(samples))),
                total=len(samples),
                desc="read",
                disable=not progress,
            )
        )

    actors = _EncoderActors(encoder_spec, workers)
    try:
        # one encoder pass per distinct image
        missing = sorted({hashes[i]: i for i in blobs}.values())
        if missing:
            new = _embed_with_ray(
                actors, [blobs[i] for i in missing], batch_size, progress, features
            )
            rows_h, rows_e = [], []
            for i, (emb, _err) in zip(missing, new, strict=True):
                if emb is None:
                    continue
                cache[hashes[i]] = emb
                rows_h.append(hashes[i])
                rows_e.append(emb.tolist())
            write_cache(folder, "part", rows_h, rows_e)
            errors = {hashes[i]: err for i, (_, err) in zip(missing, new, strict=True) if err}
        else:
            errors = {}

        kept, X, kept_hashes = [], [], []
        for i, sample in enumerate(samples):
            h = hashes.get(i)
            if h is None:
                continue
            if h not in cache:
                bad.append((sample.location, errors.get(h, "not embedded")))
                continue
            kept.append(sample)
            X.append(cache[h])
            kept_hashes.append(h)
        dim = len(X[0]) if X else 0
        T = _caption_embeddings(kept, actors, folder) if with_text else None
        return EmbeddedSet(
            samples=kept,
            X=np.stack(X).astype(np.float32) if X else np.zeros((0, dim), np.float32),
            hashes=kept_hashes,
            bad=bad,
            computed=len(missing),
            T=T,
        )
    finally:
        actors.close()


def _caption_embeddings(
    samples: list[Sample], actors: _EncoderActors, folder: Path
) -> np.ndarray | None:
    """Caption embeddings (zeros for samples without one), cached by text hash; None when no
    sample has a caption or the encoder has no text tower."""
    texts = sorted({s.text for s in samples if s.text})
    if not texts:
        return None
    cache = load_cache(folder, "text")
    key = {t: hashlib.sha256(t.encode()).hexdigest() for t in texts}
    missing = [t for t in texts if key[t] not in cache]
    if missing:
        import ray

        embeddings = ray.get(actors.get()[0].embed_texts.remote(missing))
        if embeddings is None:
            log.warning("encoder %s has no text tower: captions are ignored", actors.spec)
            return None
        write_cache(folder, "text", [key[t] for t in missing], [e.tolist() for e in embeddings])
        cache.update({key[t]: e for t, e in zip(missing, embeddings, strict=True)})
    dim = len(next(iter(cache.values())))
    return np.stack(
        [cache[key[s.text]] if s.text else np.zeros(dim, np.float32) for s in samples]
    ).astype(np.float32)


class _EncoderActors:
    """Encoder actors started on first use and shared by the image and caption passes, so
    the encoder is loaded once per run (not at all when everything is cached)."""

    def __init__(self, spec: str, workers: int) -> None:
        self.spec, self.workers, self.actors = spec, workers, []

    def get(self) -> list:
        if not self.actors:
            import ray

            from services.ray_cluster import init_ray

            init_ray()
            cpus = max(1.0, ray.available_resources().get("CPU", 1.0))
            n = max(1, min(self.workers, int(cpus)))
            self.actors = [ray.remote(num_cpus=1)(_Embedder).remote(self.spec, 1) for _ in range(n)]
        return self.actors

    def close(self) -> None:
        import ray

        for actor in self.actors:
            ray.kill(actor)
        self.actors = []


def _embed_with_ray(
    actors: _EncoderActors, blobs: list[bytes], batch_size: int, progress: bool, features: str
) -> list:
    from ray.util import ActorPool
    from tqdm import tqdm

    pool = ActorPool(actors.get())
    batches = [blobs[i : i + batch_size] for i in range(0, len(blobs), batch_size)]
    results = []
    bar = tqdm(total=len(blobs), desc=f"embed ({actors.spec})", disable=not progress)
    for embs, errs in pool.map(lambda a, b: a.embed.remote(b, features), batches):
        results.extend(zip(embs, errs, strict=True))
        bar.update(len(embs))
    bar.close()
    return results
