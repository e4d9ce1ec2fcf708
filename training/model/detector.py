"""The scorer: a CLIP encoder and an MLP head, pixels in, P(generated) out.

A plain class (no Ray, no Kafka) so it is unit-tested on its own; the
DetectorWorker actor wraps it. Heads swap without rebuilding the encoder
when the encoder spec is unchanged. A detector carries its head's
calibration (`Detector.calibration`), read once when the head is loaded.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import torch

from training.model.calibration import Calibration, verdict_for
from training.model.encoders import Encoder, load_encoder
from training.model.features import encode, width
from training.model.head import HeadConfig, MLPHead, head_input, score
from training.model.registry import HeadMeta, Registry
from training.model.views import combine


class Detector:
    def __init__(self, encoder: Encoder, head: MLPHead, meta: HeadMeta) -> None:
        if meta.encoder != encoder.spec:
            raise ValueError(
                f"head {meta.version} needs encoder {meta.encoder}, got {encoder.spec}"
            )
        expected = width(encoder, meta.features) + (encoder.text_dim if meta.uses_text else 0)
        if head.config.input_dim != expected:
            raise ValueError(
                f"head input_dim {head.config.input_dim} != encoder width {expected} "
                f"({meta.features})"
            )
        # Raw score -> P(generated), built once per head; None when the head has none.
        # A malformed one is a ValueError here (the registry refuses it earlier).
        self.calibration = (
            None if meta.calibration is None else Calibration.from_dict(meta.calibration)
        )
        self.encoder = encoder
        self.head = head.eval().to(encoder.placement.device)
        self.meta = meta

    @classmethod
    def from_registry(
        cls,
        registry: Registry,
        version: str | None = None,
        *,
        device: str = "auto",
        threads: int | None = None,
        reuse: Detector | None = None,
    ) -> Detector:
        """Load a head and its encoder; `reuse` lends its encoder when the spec matches."""
        head, meta = registry.load(version)
        return cls.from_head(head, meta, device=device, threads=threads, reuse=reuse)

    @classmethod
    def from_head(
        cls,
        head: MLPHead,
        meta: HeadMeta,
        *,
        device: str = "auto",
        threads: int | None = None,
        reuse: Detector | None = None,
    ) -> Detector:
        """A detector for a head already loaded; its encoder is loaded (or reused)."""
        if reuse is not None and reuse.encoder.spec == meta.encoder:
            encoder = reuse.encoder
        else:
            encoder = load_encoder(meta.encoder, device=device, threads=threads)
        return cls(encoder, head, meta)

    def judge(self, scores: np.ndarray) -> tuple[list[str], list[float | None]]:
        """Each score's verdict ("real", "uncertain" or "generated": the head's threshold
        and abstain band) and calibrated probability (None without a calibration); the
        one place serving and `dmguard score` turn scores into verdicts."""
        meta = self.meta
        verdicts = [verdict_for(float(s), meta.threshold, meta.uncertain_from) for s in scores]
        if self.calibration is None:
            return verdicts, [None] * len(verdicts)
        return verdicts, [float(p) for p in self.calibration(np.asarray(scores))]

    @property
    def version(self) -> str:
        return self.meta.version

    @property
    def threshold(self) -> float:
        return self.meta.threshold

    def caption_embeddings(self, texts: list[str | None] | None, n: int) -> np.ndarray | None:
        """Caption embeddings of a batch of `n` records, zeros in the rows without a caption;
        None when the head does not use text or no record has a caption. Only non-empty
        captions go through the text tower."""
        if not self.meta.uses_text:
            return None
        idx = [i for i, t in enumerate(texts or []) if t]
        if not idx:
            return None
        text_emb = np.zeros((n, self.encoder.text_dim), np.float32)
        text_emb[idx] = self.encoder.encode_texts([texts[i] for i in idx])  # type: ignore[index]
        return text_emb

    @property
    def views(self) -> tuple[str, ...]:
        """The test-time views this head scores beside the centre crop (training.model.views)."""
        return tuple(self.meta.views)

    @property
    def pixel_shape(self) -> tuple[int, ...]:
        """The shape of one image's pixels (training.model.views.view_pixels with this head's views)."""
        size = self.encoder.preprocess.image_size
        return (3, size, size) if not self.views else (1 + len(self.views), 3, size, size)

    @property
    def signature(self) -> tuple[str, str, tuple[str, ...]]:
        """What the encoder's output depends on: encoder, feature kind, test-time views. Two
        heads with the same signature read the same features (actors.feature_cache)."""
        return (self.meta.encoder, str(self.meta.features), self.views)

    def __call__(
        self,
        pixels: np.ndarray,
        texts: list[str | None] | None = None,
        *,
        timings: dict[str, float] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Embed and score a batch: (B,3,S,S) -> (image features (B,F), scores (B,)). The
        features are what the head reads (`meta.features`: the final embedding, or
        transformer blocks' class tokens); the feature log keeps them for retraining.
        `texts[i]` is record i's caption (None or "" for none), read by a head that uses text.
        `timings`, when given, receives the seconds spent in "embed" and "score".

        Pixels with views, (B, 1+V, 3, S, S) from `training.model.views.view_pixels`, are embedded and scored
        view by view; each image's score is `training.model.views.combine` of its views', and its
        features are the centre crop's (what the head would read without views)."""
        return self.score_features(self.embed(pixels, timings=timings), texts, timings=timings)

    def embed(self, pixels: np.ndarray, *, timings: dict[str, float] | None = None) -> np.ndarray:
        """The encoder's half of `__call__`: (B,3,S,S) or (B,1+V,3,S,S) pixels -> every view's
        image features, (B, 1+V, F) (V = 0 without views)."""
        views = pixels.shape[1] if pixels.ndim == 5 else 1
        t0 = time.perf_counter()
        features = encode(self.encoder, pixels.reshape(-1, *pixels.shape[-3:]), self.meta.features)
        if timings is not None:
            timings["embed"] = time.perf_counter() - t0
        return features.reshape(-1, views, features.shape[-1])

    def score_features(
        self,
        view_features: np.ndarray,
        texts: list[str | None] | None = None,
        *,
        timings: dict[str, float] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """The head's half of `__call__`, on `embed`'s output (B, 1+V, F): (the centre views'
        features (B, F), scores (B,)). A cached image's features are scored here by the head
        that serves now."""
        t1 = time.perf_counter()
        views = view_features.shape[1]
        image_features = view_features.reshape(-1, view_features.shape[-1])
        texts = None if texts is None else [t for t in texts for _ in range(views)]
        features = head_input(
            image_features,
            self.caption_embeddings(texts, len(image_features)),
            uses_text=self.meta.uses_text,
            text_dim=self.encoder.text_dim,
            input_dim=self.head.config.input_dim,
        )
        scores = score(self.head, features, device=self.encoder.placement.device)
        if views > 1:
            scores = combine(scores.reshape(-1, views)).astype(scores.dtype)  # (B,)
        if timings is not None:
            timings["score"] = time.perf_counter() - t1
        return view_features[:, 0], scores


def register_untrained_head(
    registry: Registry,
    encoder_spec: str,
    *,
    seed: int = 0,
    threshold: float = 0.5,
    promote: bool = True,
    views: Sequence[str] = (),
) -> HeadMeta:
    """Register a head with random weights for `encoder_spec`.

    For trying the pipeline before a head is trained (its scores mean
    nothing) and for tests: the streaming pipeline does not care what the
    head learned.
    """
    encoder = load_encoder(encoder_spec, device="cpu", threads=1)
    torch.manual_seed(seed)
    head = MLPHead(HeadConfig(input_dim=encoder.dim))
    meta = registry.save(
        head,
        encoder=encoder_spec,
        threshold=threshold,
        views=views,
        extra={"note": "untrained: random weights"},
    )
    if promote:
        registry.promote(meta.version)
    return meta
