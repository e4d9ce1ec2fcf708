"""Leave-source-out evaluation: every image is scored by a head that never saw its source.

A held-out split by random rows lets a head score images of a generator (or a
photo collection) it trained on, and a set whose generated images are mostly
portraits lets it score the subject. Here the sources (generator families and
real photo collections) are dealt into `folds` folds; for each fold a head is
trained on the other folds' sources and scores this fold's images, so every
generator and every real collection is, in turn, held out entirely.

Within the training side, one more group of whole sources is held back as the
calibration sources: the head stops early on them and its threshold is chosen
on them (`target_fpr` of their real images overall, in each content group and
in each real collection, the worst case; the abstain band from the pooled
`uncertain_fpr` point: `training.evaluation.evaluate.operating_point`, the rule `dmguard
train` applies to the head it ships). So the "FPR at the shipped threshold" is
measured on real collections that neither the head nor its threshold saw, and
beside the pooled rate each block names its worst held-out real collection.

The figures are pooled over the folds' held-out scores and reported overall,
per content tag (people, animal, ...: "how does it do on people" is the
question a platform asks) and per held-out source, and averaged over seeds
(the seed deals the folds and seeds the training).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from training.evaluation.evaluate import operating_point, roc_auc, tpr_at_fpr, verdict_shares
from training.model.views import as_bytes, combine

# fit(X, y, X_val, y_val, weights) -> score(X) -> P(generated)
Fit = Callable[
    [np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray | None],
    Callable[[np.ndarray], np.ndarray],
]
PEOPLE = "people"
# A held-out real collection needs this many images (in a block) to be named its worst.
MIN_SOURCE_REAL = 5


@dataclass
class BenchmarkData:
    X: np.ndarray  # (N, F) image features
    labels: np.ndarray  # (N,) 1 = generated
    sources: list[str]  # generator family or real collection: whole sources are held out
    contents: list[str]  # content tag per row ("all" when the data has none)
    # Variants of X for the same rows (e.g. "160px q60": each image re-encoded): the
    # heads trained on clean images score them too.
    variants: dict[str, np.ndarray] = field(default_factory=dict)
    # Extra training rows: augmented copies (`aug_X`) of row `aug_of[i]`; used only when
    # their original row is on the training side.
    aug_X: np.ndarray | None = None
    aug_of: np.ndarray | None = None
    # Test-time views of the same rows (training.model.views): when given, a row's score is
    # `training.model.views.combine` of its clean and view scores, as a detector with views serves.
    views: dict[str, np.ndarray] = field(default_factory=dict)
    # File format per row ("jpg", "webp", ...): reported per format when there are several
    # (a set of untouched originals, whose formats differ by class).
    formats: list[str] | None = None

    def scored(self, model: Callable[[np.ndarray], np.ndarray], rows: np.ndarray) -> np.ndarray:
        """The scores of `rows` as served: the clean features' alone, or combined with views."""
        if not self.views:
            return model(self.X[rows])
        each = [model(self.X[rows])] + [model(V[rows]) for V in self.views.values()]
        return combine(np.stack(each, axis=1))


def source_folds(
    labels: np.ndarray, sources: Sequence[str], folds: int, seed: int
) -> dict[str, int]:
    """Each source's fold: the sources of each class are dealt, largest first, to the fold
    with the fewest rows of that class so far (ties broken by the seed)."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    fold_of: dict[str, int] = {}
    for c in (0, 1):
        names = sorted({s for s, y in zip(sources, labels, strict=True) if y == c} - set(fold_of))
        sizes = {n: int(sum(1 for s in sources if s == n)) for n in names}
        rng.shuffle(names)
        names.sort(key=lambda n: -sizes[n])  # stable: equal sizes keep the shuffled order
        load = np.zeros(folds)
        for name in names:
            least = np.flatnonzero(load == load.min())
            f = int(rng.choice(least))
            fold_of[name] = f
            load[f] += sizes[name]
    return fold_of


def calibration_sources(
    labels: np.ndarray, sources: Sequence[str], fraction: float, seed: int
) -> set[str]:
    """About `fraction` of each class's sources (at least one, never all) held back for
    early stopping, the threshold and calibration."""
    groups = max(2, round(1 / fraction))
    fold_of = source_folds(labels, sources, groups, seed)
    held = {s for s, f in fold_of.items() if f == 0}
    for c in (0, 1):
        names = {s for s, y in zip(sources, labels, strict=True) if y == c}
        if names and names <= held:  # one source of a class: it must train
            held -= {min(names)}
        if len(names) >= 2 and not names & held:
            held.add(min(names))
    return held


def leave_source_out(
    data: BenchmarkData,
    fit: Fit,
    *,
    folds: int = 5,
    seeds: Sequence[int] = (0, 1, 2),
    target_fpr: float = 0.05,
    uncertain_fpr: float = 0.2,
    calibration_fraction: float = 0.25,
    balance: Callable[[np.ndarray, list[str]], np.ndarray] | None = None,
    adapt: bool = False,
    progress: Callable[[str], None] = lambda _msg: None,
) -> dict:
    """Figures of heads trained by `fit` on whole-source folds (see the module docstring).

    `balance(labels, contents)` gives the training rows' sampling weights (None: uniform).
    `adapt`: `fit` also gets, unlabelled, the features of the calibration rows and of the
    held-out fold as `unlabelled=` (a head adapts its input statistics to them, as a
    served head could to its own stream's); their labels never reach it.
    """
    y = np.asarray(data.labels).astype(int)
    runs = []
    for seed in seeds:
        fold_of = source_folds(y, data.sources, folds, seed)
        row_fold = np.array([fold_of[s] for s in data.sources])
        held = np.zeros(len(y))
        cut = np.zeros(len(y))
        band = np.full(len(y), np.nan)  # the abstain band's lower edge (NaN: none)
        variant_scores = {name: np.zeros(len(y)) for name in data.variants}
        for f in range(folds):
            test = np.flatnonzero(row_fold == f)
            train = np.flatnonzero(row_fold != f)
            if not len(test):
                continue
            train_sources = [data.sources[i] for i in train]
            cal_names = calibration_sources(y[train], train_sources, calibration_fraction, seed)
            is_cal = np.isin(train_sources, sorted(cal_names))
            fit_rows, cal_rows = train[~is_cal], train[is_cal]
            X_fit, y_fit = data.X[fit_rows], y[fit_rows]
            groups = [data.contents[i] for i in fit_rows]
            if data.aug_X is not None and data.aug_of is not None:
                take = np.isin(data.aug_of, fit_rows)
                X_fit = np.concatenate([X_fit, data.aug_X[take]])
                y_fit = np.concatenate([y_fit, y[data.aug_of[take]]])
                groups += [data.contents[i] for i in data.aug_of[take]]
            weights = balance(y_fit, groups) if balance else None
            extra = {"unlabelled": data.X[np.concatenate([cal_rows, test])]} if adapt else {}
            model = fit(X_fit, y_fit, data.X[cal_rows], y[cal_rows], weights, **extra)
            threshold, uncertain_from = operating_point(
                y[cal_rows],
                data.scored(model, cal_rows),
                target_fpr=target_fpr,
                uncertain_fpr=uncertain_fpr,
                groups=[data.contents[i] for i in cal_rows],
                sources=[data.sources[i] for i in cal_rows],
            )
            held[test] = data.scored(model, test)
            cut[test] = threshold
            band[test] = np.nan if uncertain_from is None else uncertain_from
            for name, Xv in data.variants.items():
                variant_scores[name][test] = model(Xv[test])
            progress(f"seed {seed} fold {f + 1}/{folds}: {len(fit_rows)} train rows")
        runs.append(_figures(y, held, cut, band, data, variant_scores, target_fpr))
    return _average(runs)


def _figures(
    y: np.ndarray,
    scores: np.ndarray,
    thresholds: np.ndarray,
    bands: np.ndarray,
    data: BenchmarkData,
    variants: dict[str, np.ndarray],
    target_fpr: float,
) -> dict:
    contents = np.asarray(data.contents)
    sources = np.asarray(data.sources)
    called = scores >= thresholds

    def block(mask: np.ndarray) -> dict:
        yy, ss, cc = y[mask], scores[mask], called[mask]
        out = {
            "n_real": int((yy == 0).sum()),
            "n_generated": int((yy == 1).sum()),
            "auc": _num(roc_auc(yy, ss)),
            "tpr_at_5fpr": _num(tpr_at_fpr(yy, ss, target_fpr)) if (yy == 0).any() else None,
            "fpr_at_threshold": _num(cc[yy == 0].mean()) if (yy == 0).any() else None,
            "tpr_at_threshold": _num(cc[yy == 1].mean()) if (yy == 1).any() else None,
        }
        out.update(_worst_source(sources[mask & (y == 0)], called[mask & (y == 0)]))
        for label, name in ((0, "real"), (1, "gen")):
            rows = mask & (y == label)
            shares = verdict_shares(scores[rows], thresholds[rows], bands[rows])
            out.update({f"{name}_as_{verdict}": v for verdict, v in shares.items()})
        for name, vs in variants.items():
            out[f"auc {name}"] = _num(roc_auc(yy, vs[mask]))
        return out

    formats = np.asarray(data.formats if data.formats is not None else [""] * len(y))
    by_format = sorted(set(formats.tolist()))
    return {
        "overall": block(np.ones(len(y), bool)),
        "per_content": {c: block(contents == c) for c in sorted(set(contents.tolist()))},
        **(
            {"per_format": {f: block(formats == f) for f in by_format}}
            if len(by_format) > 1
            else {}
        ),
        "per_source": {
            s: {
                "label": int(y[sources == s][0]),
                "n": int((sources == s).sum()),
                "called_generated": _num(called[sources == s].mean()),
                "mean_score": _num(scores[sources == s].mean()),
            }
            for s in sorted(set(sources.tolist()))
        },
    }


def _worst_source(sources: np.ndarray, called: np.ndarray) -> dict:
    """The held-out real collection (with at least MIN_SOURCE_REAL images here) that the
    threshold calls "generated" most often: {"worst_source": "name (n)", "worst_source_fpr"}."""
    rates = {
        s: (float(called[sources == s].mean()), int((sources == s).sum()))
        for s in set(sources.tolist())
        if (sources == s).sum() >= MIN_SOURCE_REAL
    }
    if not rates:
        return {"worst_source": None, "worst_source_fpr": None}
    name = max(sorted(rates), key=lambda s: rates[s][0])
    return {"worst_source": f"{name} ({rates[name][1]})", "worst_source_fpr": rates[name][0]}


def _average(runs: list[dict]) -> dict:
    """Mean over seeds of every number (and its spread for the headline blocks)."""

    def merge(values: list):
        if isinstance(values[0], dict):
            return {k: merge([v[k] for v in values if k in v]) for k in values[0]}
        nums = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
        if not nums:
            names = [v for v in values if isinstance(v, str)]
            return " / ".join(dict.fromkeys(names)) if names else values[0]
        if all(isinstance(v, int) for v in nums):
            return nums[0]  # counts do not change with the seed
        return round(float(np.mean(nums)), 4)

    out = merge(runs)
    out["seeds"] = len(runs)
    headline = {"overall": lambda r: r["overall"]}
    if PEOPLE in runs[0]["per_content"]:
        headline[PEOPLE] = lambda r: r["per_content"][PEOPLE]
    out["spread"] = {name: _spread([block(r) for r in runs]) for name, block in headline.items()}
    return out


def _spread(blocks: list[dict]) -> dict:
    """Standard deviation over seeds of each rate in one block (seeds where it is defined)."""
    return {
        k: round(float(np.std([b[k] for b in blocks if b[k] is not None])), 4)
        for k, v in blocks[0].items()
        if isinstance(v, float)
    }


def _num(x: float) -> float | None:
    x = float(x)
    return None if x != x else x


def head_fit(cfg) -> Fit:
    """The `Fit` of the head `dmguard train` ships: `cfg` (a TrainConfig) in this process,
    early stopping on the calibration sources."""
    from training.learning.train import fit_epochs
    from training.model.head import score

    def fit(X, y, X_val, y_val, weights, unlabelled=None):
        head, _ = fit_epochs(X, y, X_val, y_val, cfg, weights=weights, unlabelled=unlabelled)
        return lambda Z: score(head, Z)

    return fit


REENCODED = "160px q60"  # the variant every benchmark reports: a thumbnail of a re-shared upload


def run_benchmark(
    samples: list,
    encoder: str,
    cfg,
    *,
    augment: int = 0,
    views: Sequence[str] = (),
    folds: int = 5,
    seeds: Sequence[int] = (0, 1, 2),
    cache_dir,
    workers: int = 1,
    progress: bool = True,
    log: Callable[[str], None] = lambda _msg: None,
) -> dict:
    """Embed `samples` (training.data.samples.Sample) with `encoder` as `cfg.features` (clean,
    re-encoded at 160 px JPEG q60, and `augment` laundered copies for training), then
    `leave_source_out` with the head of `cfg` (a TrainConfig; `cfg.balance` reweighs
    training rows by content). Embeddings are cached."""
    from training.data.embeddings import embed_samples
    from training.evaluation.perturb import launder, reencode
    from training.learning.balance import reweigh

    def embed(transform=None):
        return embed_samples(
            samples,
            encoder,
            cache_dir=cache_dir,
            workers=workers,
            progress=progress,
            transform=transform,
            with_text=False,
            features=cfg.features,
        )

    clean = embed()
    row_of = {s.location: i for i, s in enumerate(clean.samples)}

    def aligned(emb) -> np.ndarray:
        """`emb`'s rows in `clean`'s order; a row that failed there is the clean one."""
        X = clean.X.copy()
        for s, x in zip(emb.samples, emb.X, strict=True):
            X[row_of[s.location]] = x
        return X

    variants = {REENCODED: aligned(embed(reencode(160, 60)))}
    side = 224  # CLIP ViT-B/16's input (the offline weights): decoding reduces towards it
    view_X = {name: aligned(embed(as_bytes(name, side))) for name in views}
    aug_X, aug_of = [], []
    for k in range(augment):
        emb = embed(launder(k))
        aug_X.append(emb.X)
        aug_of.extend(row_of[s.location] for s in emb.samples)
    data = BenchmarkData(
        X=clean.X,
        labels=clean.labels,
        sources=clean.sources,
        contents=[s.content or "all" for s in clean.samples],
        variants=variants,
        aug_X=np.concatenate(aug_X) if aug_X else None,
        aug_of=np.array(aug_of) if aug_X else None,
        views=view_X,
        formats=[Path(s.location).suffix.lower().lstrip(".") for s in clean.samples],
    )
    out = leave_source_out(
        data,
        head_fit(cfg),
        folds=folds,
        seeds=seeds,
        target_fpr=cfg.target_fpr,
        uncertain_fpr=cfg.uncertain_fpr,
        balance=reweigh if cfg.balance else None,
        adapt=cfg.adapt,
        progress=log,
    )
    out["setup"] = {
        "encoder": encoder,
        "features": cfg.features,
        "pooled_blocks": cfg.tower_blocks,
        "depth": cfg.depth,
        "hidden_dim": cfg.hidden_dim,
        "standardize": cfg.standardize,
        "adapt": cfg.adapt,
        "views": list(views),
        "loss": cfg.loss,
        "augment": augment,
        "balance": "content" if cfg.balance else None,
        "folds": folds,
        "images": len(clean.samples),
        "skipped": len(clean.bad),
    }
    return out
