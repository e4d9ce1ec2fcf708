"""The model registry: a folder of versioned heads and a CURRENT pointer.

    DIR/heads/<version>/head.pt     weights + HeadConfig
    DIR/heads/<version>/meta.json   encoder, input_dim, uses_text, threshold, metrics, ...
    DIR/CURRENT                     name of the serving version, replaced atomically

Versions are `v1`, `v2`, ... in creation order; creating the folder with
mkdir is the lock, so two trainers never take the same name. Workers poll
`current()` and load a new head between batches.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from training.errors import EncoderMismatchError, RegistryError
from training.head import HeadConfig, MLPHead

_VERSION = re.compile(r"^v(\d+)$")


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
        if not self.heads.is_dir():
            return []
        found = [
            p.name
            for p in self.heads.iterdir()
            if _VERSION.match(p.name) and (p / "meta.json").is_file()
        ]
        return sorted(found, key=lambda v: int(v[1:]))

    def current(self) -> str | None:
        """The serving version, or None when nothing has been promoted."""
        try:
            version = (self.root / "CURRENT").read_text().strip()
        except FileNotFoundError:
            return None
        return version or None

    def meta(self, version: str) -> HeadMeta:
        path = self.heads / version / "meta.json"
        try:
            return HeadMeta.from_dict(json.loads(path.read_text()))
        except FileNotFoundError as exc:
            raise RegistryError(f"no head {version!r} in registry {self.root}") from exc
        except (ValueError, TypeError) as exc:
            raise RegistryError(f"corrupt {path}: {exc}") from exc

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
    ) -> HeadMeta:
        """Store `head` as a new version (not promoted; call `promote`)."""
        self.heads.mkdir(parents=True, exist_ok=True)
        n = max((int(v[1:]) for v in self._all_version_dirs()), default=0) + 1
        while True:
            version = f"v{n}"
            try:
                (self.heads / version).mkdir()
                break
            except FileExistsError:
                n += 1
        meta = HeadMeta(
            version=version,
            encoder=encoder,
            input_dim=head.config.input_dim,
            uses_text=uses_text,
            threshold=float(threshold),
            metrics=metrics or {},
            trained_on=trained_on or {},
            created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            parent=parent,
            extra=extra or {},
        )
        folder = self.heads / version
        torch.save(
            {"config": head.config.to_dict(), "state_dict": head.state_dict()}, folder / "head.pt"
        )
        # meta.json last: a version counts only once its meta exists (see versions()).
        _atomic_write(folder / "meta.json", json.dumps(meta.to_dict(), indent=2).encode())
        return meta

    def promote(self, version: str) -> None:
        """Make `version` the serving head (atomic rename of CURRENT)."""
        self.meta(version)  # exists and is readable
        self.root.mkdir(parents=True, exist_ok=True)
        _atomic_write(self.root / "CURRENT", (version + "\n").encode())

    def load(
        self, version: str | None = None, *, encoder: str | None = None
    ) -> tuple[MLPHead, HeadMeta]:
        """Load a head (the current one by default) in eval mode.

        Raises:
            RegistryError: no such head, or nothing promoted yet.
            EncoderMismatchError: `encoder` is given and differs from the head's.
        """
        version = version or self.current()
        if version is None:
            raise RegistryError(
                f"no head registered in {self.root}; train one with "
                "`dmguard train --data SRC` (or point --registry / $DMGUARD_REGISTRY at one)"
            )
        meta = self.meta(version)
        if encoder is not None and encoder != meta.encoder:
            raise EncoderMismatchError(
                f"head {version} was trained on encoder {meta.encoder!r}, not {encoder!r}"
            )
        try:
            blob = torch.load(
                self.heads / version / "head.pt", map_location="cpu", weights_only=True
            )
            head = MLPHead(HeadConfig(**blob["config"]))
            head.load_state_dict(blob["state_dict"])
        except (OSError, KeyError, RuntimeError, TypeError) as exc:
            raise RegistryError(f"cannot load head {version} from {self.root}: {exc}") from exc
        if head.config.input_dim != meta.input_dim:
            raise RegistryError(f"head {version}: weights and meta.json disagree on input_dim")
        return head.eval(), meta

    def _all_version_dirs(self) -> list[str]:
        return [p.name for p in self.heads.iterdir() if _VERSION.match(p.name)]
