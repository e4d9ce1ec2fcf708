"""The model registry: a folder of versioned heads and a CURRENT pointer.

    DIR/heads/<version>/head.pt     weights + HeadConfig
    DIR/heads/<version>/meta.json   encoder, input_dim, uses_text, threshold, metrics,
                                    calibration, uncertain_from, ...
    DIR/heads/<version>/PROMOTED    empty marker: this version has been promoted at least once
    DIR/CURRENT                     name of the serving version, replaced atomically

Versions are `v1`, `v2`, ... in creation order (`VERSION_RE`: no leading zero, at
most nine digits, nothing else); creating the folder with mkdir is the lock, so
two trainers never take the same name. Every method that takes or reads a
version name checks it against `VERSION_RE`, so neither a caller nor the
content of CURRENT can point the registry outside `DIR/heads`.

Workers poll `current()` and load a new head between batches. Everything the
registry reads from disk is untrusted: a broken CURRENT, meta.json or head.pt
is a `RegistryError` (never an OSError, UnicodeDecodeError, pickle error, ...).
Callers that must keep running -- the stream worker -- catch `RegistryError`
around `current()` and `load()` and keep serving the head they hold; a worker
that starts while CURRENT is broken can serve `last_good()` instead.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import stat
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from training.errors import EncoderMismatchError, RegistryError
from training.model.calibration import Calibration
from training.model.features import check_kind
from training.model.head import HeadConfig, MLPHead
from training.model.views import check_views

# `v` then 1..999999999 without leading zeros. Checked with fullmatch: `$` would
# also accept a trailing newline.
VERSION_RE = re.compile(r"v[1-9][0-9]{0,8}")
_MAX_VERSION = 999_999_999
_CURRENT_MAX_BYTES = 256  # a version name is at most 10 characters
# threshold_for_fpr may return the float just above 1.0 ("flag nothing") when
# sigmoid scores saturate, so that value is a valid threshold too.
_THRESHOLD_MAX = math.nextafter(1.0, math.inf)
PROMOTED_MARKER = "PROMOTED"


def check_version(version: object) -> str:
    """Return `version` if it is a valid version name (`v1`, `v2`, ...).

    Raises:
        RegistryError: anything else (a path, `..`, a leading zero, a NUL, ...).
    """
    if not isinstance(version, str) or not VERSION_RE.fullmatch(version):
        raise RegistryError(
            f"invalid head version {version!r}: expected v1, v2, ... "
            "('v' and a number without leading zeros, nothing else)"
        )
    return version


@dataclass(frozen=True)
class HeadMeta:
    version: str
    encoder: str
    input_dim: int
    uses_text: bool
    threshold: float
    metrics: dict[str, Any] = field(default_factory=dict)
    trained_on: dict[str, Any] = field(default_factory=dict)
    created_at: str = ""
    parent: str | None = None
    # Calibration.to_dict() (training.model.calibration): raw score -> P(generated); None: none.
    calibration: dict[str, Any] | None = None
    # Lower edge of the abstain band in raw-score units, <= threshold: scores in
    # [uncertain_from, threshold) get the verdict "uncertain". None: no band.
    uncertain_from: float | None = None
    # What the head reads from the image tower (training.model.features): "embedding" (heads
    # saved before there was a choice), "blocks" or "blocks:A-B".
    features: str = "embedding"
    # Test-time views scored beside the centre crop and combined (training.model.views); empty:
    # the centre crop alone. The threshold and band were chosen on the combined score.
    views: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)  # promotion decisions, hyper-parameters

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(d.pop("extra"))
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> HeadMeta:
        known = {f for f in cls.__dataclass_fields__ if f != "extra"}
        return cls(
            **{k: d[k] for k in known if k in d},
            extra={k: v for k, v in d.items() if k not in known},
        )


_META_FIELDS = frozenset(f for f in HeadMeta.__dataclass_fields__ if f != "extra")


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_real(x: object) -> bool:
    """A finite number (JSON may hold ints too big for a float; they are finite)."""
    return _is_int(x) or (isinstance(x, float) and math.isfinite(x))


def _meta_problem(d: object, version: str) -> str | None:
    """What is wrong with a meta.json document for `version`, or None."""
    if not isinstance(d, dict):
        return f"not a JSON object but {type(d).__name__}"
    missing = [
        k for k in ("version", "encoder", "input_dim", "uses_text", "threshold") if k not in d
    ]
    if missing:
        return f"missing field(s) {', '.join(missing)}"
    if d["version"] != version:
        return f"its version is {d['version']!r}, not its folder's name {version!r}"
    if not isinstance(d["encoder"], str) or not d["encoder"]:
        return f"encoder must be a non-empty string, not {d['encoder']!r}"
    if not _is_int(d["input_dim"]) or d["input_dim"] <= 0:
        return f"input_dim must be a positive integer, not {d['input_dim']!r}"
    if not isinstance(d["uses_text"], bool):
        return f"uses_text must be true or false, not {d['uses_text']!r}"
    t = d["threshold"]
    if not _is_real(t) or not 0.0 <= t <= _THRESHOLD_MAX:
        return f"threshold must be a finite number in [0, 1], not {t!r}"
    for key in ("metrics", "trained_on"):
        if key in d and not isinstance(d[key], dict):
            return f"{key} must be a JSON object, not {type(d[key]).__name__}"
    if "created_at" in d and not isinstance(d["created_at"], str):
        return f"created_at must be a string, not {d['created_at']!r}"
    if "parent" in d and d["parent"] is not None and not isinstance(d["parent"], str):
        return f"parent must be a string or null, not {d['parent']!r}"
    if d.get("calibration") is not None:
        try:
            Calibration.from_dict(d["calibration"])
        except ValueError as exc:
            return f"calibration must be null or a valid calibration: {exc}"
    features = d.get("features", "embedding")
    try:
        check_kind(features if isinstance(features, str) else repr(features))
    except ValueError as exc:
        return f"features: {exc}"
    views = d.get("views", [])
    if not isinstance(views, list) or not all(isinstance(v, str) for v in views):
        return f"views must be a list of view names, not {views!r}"
    try:
        check_views(views)
    except ValueError as exc:
        return f"views: {exc}"
    u = d.get("uncertain_from")
    if u is not None and (not _is_real(u) or not 0.0 <= u <= t):
        return (
            f"uncertain_from must be null or a finite number in [0, threshold = {t!r}], not {u!r}"
        )
    return None


def _config_problem(cfg: object) -> str | None:
    """What is wrong with a stored HeadConfig dict, or None."""
    if not isinstance(cfg, dict):
        return f"config is {type(cfg).__name__}, not a dict"
    fields = {f.name for f in dataclasses.fields(HeadConfig)}
    unknown = sorted(str(k) for k in cfg if k not in fields)
    if unknown:
        return f"config has unknown field(s) {', '.join(unknown)}"
    if "input_dim" not in cfg:
        return "config has no input_dim"
    checks = {
        "input_dim": lambda v: _is_int(v) and v > 0,
        "hidden_dim": lambda v: _is_int(v) and v >= 0,
        "blocks": lambda v: _is_int(v) and v >= 0,
        "dropout": lambda v: _is_real(v) and 0.0 <= v <= 1.0,
        "negative_slope": _is_real,
        "tower_blocks": lambda v: _is_int(v) and 0 <= v <= 1024,
        "pool_dim": lambda v: _is_int(v) and 0 < v <= 65536,
        "standardize": lambda v: isinstance(v, bool),
    }
    for key, ok in checks.items():
        if key in cfg and not ok(cfg[key]):
            return f"config {key} = {cfg[key]!r} is out of range"
    return None


def _state_problem(state: object, expected: dict[str, torch.Tensor]) -> str | None:
    """What is wrong with a state_dict for a head whose (meta-device) state is `expected`."""
    if not isinstance(state, dict):
        return f"state_dict is {type(state).__name__}, not a dict"
    if set(state) != set(expected):
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(str(k) for k in set(state) - set(expected))
        return (
            f"state_dict keys do not match its config (missing {missing}, unexpected {unexpected})"
        )
    for name, want in expected.items():
        t = state[name]
        if not isinstance(t, torch.Tensor) or t.layout != torch.strided:
            return f"{name} is not a dense tensor"
        if tuple(t.shape) != tuple(want.shape):
            return f"{name} has shape {tuple(t.shape)}, its config says {tuple(want.shape)}"
        if want.is_floating_point():
            if not t.is_floating_point():
                return f"{name} has dtype {t.dtype}, expected a floating-point tensor"
            if not bool(torch.isfinite(t).all()):
                return f"{name} holds NaN or infinite values"
            if name.endswith("running_var") and bool((t < 0).any()):
                return f"{name} holds negative variances"
        elif t.is_floating_point() or t.is_complex():
            return f"{name} has dtype {t.dtype}, expected {want.dtype}"
    return None


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class Registry:
    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self.heads = self.root / "heads"

    def versions(self) -> list[str]:
        """Complete versions (valid name and a meta.json), oldest first.

        Raises:
            RegistryError: the heads folder exists but cannot be listed.
        """
        try:
            if not self.heads.is_dir():
                return []
            found = [
                p.name
                for p in self.heads.iterdir()
                if VERSION_RE.fullmatch(p.name) and (p / "meta.json").is_file()
            ]
        except OSError as exc:
            raise RegistryError(f"cannot list {self.heads}: {exc}") from exc
        return sorted(found, key=lambda v: int(v[1:]))

    def current(self) -> str | None:
        """The serving version, or None when nothing has been promoted (no CURRENT file).

        Raises:
            RegistryError: CURRENT exists but is unreadable (I/O error, a directory,
                not UTF-8), empty, not a valid version name, or names a version the
                registry does not hold. Callers that must keep running (the stream
                worker) catch it and keep serving the head they have.
        """
        path = self.root / "CURRENT"
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise self._bad_current(f"cannot be read ({exc})") from exc
        try:
            kind = os.fstat(fd).st_mode
            if not stat.S_ISREG(kind):
                what = "a directory" if stat.S_ISDIR(kind) else "not a regular file"
                raise self._bad_current(f"is {what}")
            raw = b""
            while len(raw) <= _CURRENT_MAX_BYTES:
                chunk = os.read(fd, _CURRENT_MAX_BYTES + 1)
                if not chunk:
                    break
                raw += chunk
        except OSError as exc:
            raise self._bad_current(f"cannot be read ({exc})") from exc
        finally:
            os.close(fd)
        if len(raw) > _CURRENT_MAX_BYTES:
            raise self._bad_current(f"is longer than {_CURRENT_MAX_BYTES} bytes")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise self._bad_current(f"is not UTF-8 text ({exc})") from exc
        version = text.strip()
        if not version:
            raise self._bad_current("is empty")
        if not VERSION_RE.fullmatch(version):
            raise self._bad_current(f"holds {version!r}, which is not a version name (v1, v2, ...)")
        if not (self.heads / version / "meta.json").is_file():
            raise self._bad_current(f"names {version}, but the registry holds no such head")
        return version

    def meta(self, version: str) -> HeadMeta:
        """The metadata of `version`, checked.

        Raises:
            RegistryError: invalid version name, no such head, or a meta.json that
                cannot be read, is not a JSON object, names another version, or has
                a missing or ill-typed field (threshold must be finite in [0, 1],
                input_dim a positive integer, encoder a non-empty string,
                calibration null or a valid `Calibration.to_dict()`, uncertain_from
                null or in [0, threshold], ...). Heads saved before calibration
                existed have neither field and load with both None.
        """
        check_version(version)
        path = self.heads / version / "meta.json"
        try:
            d = json.loads(path.read_bytes().decode("utf-8"))
        except FileNotFoundError as exc:
            raise RegistryError(f"no head {version!r} in registry {self.root}") from exc
        except (OSError, ValueError, RecursionError) as exc:  # ValueError: UTF-8 and JSON
            raise RegistryError(f"corrupt {path}: {exc}") from exc
        problem = _meta_problem(d, version)
        if problem:
            raise RegistryError(f"corrupt {path}: {problem}")
        return HeadMeta.from_dict(d)

    def save(
        self,
        head: MLPHead,
        *,
        encoder: str,
        uses_text: bool = False,
        threshold: float = 0.5,
        metrics: dict[str, Any] | None = None,
        trained_on: dict[str, Any] | None = None,
        parent: str | None = None,
        extra: dict[str, Any] | None = None,
        calibration: Calibration | dict[str, Any] | None = None,
        uncertain_from: float | None = None,
        features: str = "embedding",
        views: Sequence[str] = (),
    ) -> HeadMeta:
        """Store `head` as a new version (not promoted; call `promote`).

        `calibration` (a `Calibration` or its `to_dict()`) maps raw scores to
        P(generated); `uncertain_from` (raw-score units, <= threshold) opens the
        abstain band [uncertain_from, threshold) whose verdict is "uncertain".

        Raises:
            RegistryError: the head or its metadata would not load back (non-finite
                weights, threshold outside [0, 1], a malformed calibration, an
                uncertain_from outside [0, threshold], an `extra` key that shadows
                a field, metadata that is not JSON), or no version number is left.
        """
        if isinstance(calibration, Calibration):
            calibration = calibration.to_dict()
        meta = HeadMeta(
            version="v1",  # placeholder until a folder is taken
            encoder=encoder,
            input_dim=head.config.input_dim,
            uses_text=uses_text,
            threshold=float(threshold),
            metrics=metrics or {},
            trained_on=trained_on or {},
            created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            parent=parent,
            calibration=calibration,
            # only numbers become floats: anything else is refused below, by _meta_problem
            uncertain_from=float(uncertain_from) if _is_real(uncertain_from) else uncertain_from,
            features=features,
            views=list(views),
            extra=extra or {},
        )
        shadowed = sorted(set(meta.extra) & _META_FIELDS)
        if shadowed:
            raise RegistryError(f"extra must not override meta fields: {', '.join(shadowed)}")
        problem = _meta_problem(meta.to_dict(), "v1")
        if problem is None:
            with torch.device("meta"):
                expected = MLPHead(head.config).state_dict()
            problem = _state_problem(head.state_dict(), expected)
        if problem is None:
            try:
                json.dumps(meta.to_dict())
            except (TypeError, ValueError) as exc:
                problem = f"metadata is not JSON: {exc}"
        if problem:
            raise RegistryError(f"refusing to save a head that would not load back: {problem}")
        try:
            self.heads.mkdir(parents=True, exist_ok=True)
            n = max((int(v[1:]) for v in self._all_version_dirs()), default=0) + 1
            while True:
                if n > _MAX_VERSION:
                    raise RegistryError(f"registry {self.root} has no version number left")
                version = check_version(f"v{n}")
                try:
                    (self.heads / version).mkdir()
                    break
                except FileExistsError:
                    n += 1
        except OSError as exc:
            raise RegistryError(f"cannot create a version in {self.heads}: {exc}") from exc
        meta = dataclasses.replace(meta, version=version)
        folder = self.heads / version
        torch.save(
            {"config": head.config.to_dict(), "state_dict": head.state_dict()}, folder / "head.pt"
        )
        # meta.json last: a version counts only once its meta exists (see versions()).
        _atomic_write(folder / "meta.json", json.dumps(meta.to_dict(), indent=2).encode())
        return meta

    def promote(self, version: str) -> None:
        """Make `version` the serving head (atomic rename of CURRENT).

        Marks the version PROMOTED first, so `last_good()` finds it even if
        CURRENT is later damaged.

        Raises:
            RegistryError: invalid name, or the head does not load (see `load`).
        """
        self.load(check_version(version))  # refuses what a worker could not serve
        marker = self.heads / version / PROMOTED_MARKER
        if not marker.is_file():
            _atomic_write(marker, b"")
        self.root.mkdir(parents=True, exist_ok=True)
        _atomic_write(self.root / "CURRENT", (version + "\n").encode())

    def is_promoted(self, version: str) -> bool:
        """Whether `version` has ever been promoted.

        True when the PROMOTED marker exists. Heads promoted before the marker
        existed have none; for them the promotion decision that `train_register`
        stores in meta.json (`extra["promotion"]["promoted"] is True`) counts.
        A head with neither (e.g. an untrained head registered before the
        marker existed) is not considered promoted: a head that lost its
        promotion comparison must never be served as a fallback, and from the
        files alone it cannot be told apart from one that was promoted by hand.

        Raises:
            RegistryError: invalid version name.
        """
        check_version(version)
        if (self.heads / version / PROMOTED_MARKER).is_file():
            return True
        try:
            promotion = self.meta(version).extra.get("promotion")
        except RegistryError:
            return False
        return isinstance(promotion, dict) and promotion.get("promoted") is True

    def promoted(self) -> list[str]:
        """Versions that have been promoted (see `is_promoted`), oldest first."""
        return [v for v in self.versions() if self.is_promoted(v)]

    def last_good(
        self, exclude: str | None = None, *, encoder: str | None = None
    ) -> tuple[MLPHead, HeadMeta] | None:
        """The newest promoted head that loads, or None when there is none.

        For a worker that cannot trust CURRENT (it raises `RegistryError`):
        serve the newest head ever promoted that still loads. `exclude` skips
        one version (e.g. the one that just failed); `encoder` skips heads
        trained on another encoder. Never raises `RegistryError` for a broken
        head: it is skipped.
        """
        for version in reversed(self.promoted()):
            if version == exclude:
                continue
            try:
                return self.load(version, encoder=encoder)
            except RegistryError:
                continue
        return None

    def load_serving(self) -> tuple[MLPHead, HeadMeta, str | None]:
        """What a server should serve: the head CURRENT names or, when CURRENT or
        that head cannot be read, the newest promoted head that loads, with the
        problem to report (None when there is none). The worker and the driver
        both start from here, so they always agree.

        Raises:
            RegistryError: neither CURRENT nor any promoted head can be served.
        """
        try:
            head, meta = self.load()
            return head, meta, None
        except RegistryError as exc:
            found = self.last_good()
            if found is None:
                raise
            head, meta = found
            return head, meta, f"{exc}; serving the newest promoted head that loads, {meta.version}"

    def load(
        self, version: str | None = None, *, encoder: str | None = None
    ) -> tuple[MLPHead, HeadMeta]:
        """Load a head (the current one by default) in eval mode.

        Raises:
            RegistryError: invalid version name, no such head, nothing promoted
                yet, a broken CURRENT (see `current`) or meta.json (see `meta`), or
                a head.pt that cannot be used: missing, truncated, corrupt, not a
                head, keys or shapes that do not match its config, non-finite
                weights, an input_dim other than meta.json's.
            EncoderMismatchError: `encoder` is given and differs from the head's.
        """
        if version is None:
            version = self.current()
        if version is None:
            raise RegistryError(
                f"no head registered in {self.root}; train one with "
                "`dmguard train --data SRC` (or point --registry / $DMGUARD_REGISTRY at one)"
            )
        meta = self.meta(version)  # checks the name
        if encoder is not None and encoder != meta.encoder:
            raise EncoderMismatchError(
                f"head {version} was trained on encoder {meta.encoder!r}, not {encoder!r}"
            )
        path = self.heads / version / "head.pt"
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
        except FileNotFoundError as exc:
            raise RegistryError(f"head {version} has no weights ({path} is missing)") from exc
        except Exception as exc:  # zip, pickle, EOF, I/O errors: all mean "corrupt"
            raise RegistryError(
                f"cannot load head {version} from {self.root}: {path} is corrupt "
                f"({type(exc).__name__}: {exc})"
            ) from exc
        problem = self._blob_problem(blob, meta)
        if problem:
            raise RegistryError(f"cannot load head {version} from {self.root}: {problem}")
        try:
            head = MLPHead(HeadConfig(**blob["config"]))
            head.load_state_dict(blob["state_dict"])
        except Exception as exc:  # checked above; belt and braces
            raise RegistryError(f"cannot load head {version} from {self.root}: {exc}") from exc
        return head.eval(), meta

    @staticmethod
    def _blob_problem(blob: object, meta: HeadMeta) -> str | None:
        if not isinstance(blob, dict) or "config" not in blob or "state_dict" not in blob:
            return "head.pt does not hold a {'config', 'state_dict'} dict"
        problem = _config_problem(blob["config"])
        if problem:
            return problem
        config = HeadConfig(**blob["config"])
        if config.input_dim != meta.input_dim:
            return "weights and meta.json disagree on input_dim"
        state = blob["state_dict"]
        # Every block has parameters: more blocks than tensors cannot match, and
        # refusing early keeps a hostile config from building a huge module.
        if isinstance(state, dict) and config.blocks > len(state):
            return f"config has {config.blocks} blocks, state_dict only {len(state)} tensors"
        try:
            with torch.device("meta"):  # shapes only, nothing allocated
                expected = MLPHead(config).state_dict()
        except Exception as exc:  # a config that passed the checks but still fails
            return f"config {blob['config']!r} does not build a head ({exc})"
        return _state_problem(state, expected)

    def _bad_current(self, problem: str) -> RegistryError:
        try:
            have = ", ".join(self.versions()) or "none yet"
        except RegistryError:
            have = "unknown"
        return RegistryError(
            f"{self.root / 'CURRENT'} {problem}; write a valid version into CURRENT "
            f"(heads in this registry: {have}) or retrain with `dmguard train`"
        )

    def _all_version_dirs(self) -> list[str]:
        return [p.name for p in self.heads.iterdir() if VERSION_RE.fullmatch(p.name)]
