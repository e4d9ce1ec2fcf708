"""Record schemas of the four topics (DESIGN.md, "Records").

Input records are parsed with `ImageRecord.from_bytes`, which either returns a
record or raises `RecordError` with the reason a dead-letter record needs; it
never raises anything else, whatever the bytes. Output records are built by
`Verdict` and `DeadLetter` and serialised with `to_bytes`.
"""

from __future__ import annotations

import base64
import json
import math
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

from services.errors import RecordError

MAX_VALUE_BYTES = 1 << 20  # a whole input record
MAX_ID_CHARS = 256
MAX_URL_CHARS = 8192
MAX_TEXT_CHARS = 4096
MAX_META_BYTES = 16 << 10


def utc_now_iso() -> str:
    """Wall-clock time as ISO 8601 UTC with milliseconds, the `ts` of output records."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _dumps(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


@dataclass(frozen=True)
class ImageRecord:
    """One uploaded image to judge: a `dmguard.images` value."""

    id: str
    url: str
    text: str | None = None
    meta: dict[str, Any] | None = None

    @classmethod
    def from_bytes(cls, value: bytes | None) -> ImageRecord:
        """Parse and validate a record value.

        Raises:
            RecordError: the value is not a valid record; the message says why.
        """
        if value is None:
            raise RecordError("empty record (null value)")
        if len(value) > MAX_VALUE_BYTES:
            raise RecordError(f"record is {len(value)} bytes, more than {MAX_VALUE_BYTES}")
        try:
            obj = json.loads(value)
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise RecordError(f"not JSON: {str(exc)[:200]}") from exc
        if not isinstance(obj, dict):
            raise RecordError(f"expected a JSON object, got {type(obj).__name__}")
        return cls.from_dict(obj)

    @classmethod
    def from_dict(cls, obj: dict[str, Any]) -> ImageRecord:
        rid = obj.get("id")
        if not isinstance(rid, str):
            raise RecordError("missing or non-string field 'id'")
        if not 1 <= len(rid) <= MAX_ID_CHARS:
            raise RecordError(f"'id' must have 1..{MAX_ID_CHARS} characters, has {len(rid)}")
        url = obj.get("url")
        if not isinstance(url, str) or not url:
            raise RecordError("missing or non-string field 'url'")
        if len(url) > MAX_URL_CHARS:
            raise RecordError(f"'url' has {len(url)} characters, more than {MAX_URL_CHARS}")
        text = obj.get("text")
        if text is not None:
            if not isinstance(text, str):
                raise RecordError("'text' must be a string")
            if len(text) > MAX_TEXT_CHARS:
                raise RecordError(f"'text' has {len(text)} characters, more than {MAX_TEXT_CHARS}")
        meta = obj.get("meta")
        if meta is not None:
            if not isinstance(meta, dict):
                raise RecordError("'meta' must be a JSON object")
            if len(_dumps(meta)) > MAX_META_BYTES:
                raise RecordError(f"'meta' is larger than {MAX_META_BYTES} bytes")
        return cls(id=rid, url=url, text=text, meta=meta)

    def to_bytes(self) -> bytes:
        return _dumps({k: v for k, v in asdict(self).items() if v is not None})


@dataclass(frozen=True)
class Source:
    """Where an input record came from."""

    topic: str
    partition: int
    offset: int


@dataclass(frozen=True)
class Verdict:
    """A `dmguard.verdicts` value. `latency_ms` runs from the input record's
    Kafka timestamp to the moment the verdict is built."""

    id: str
    url: str
    score: float
    verdict: str
    threshold: float
    encoder: str
    head_version: str
    latency_ms: float
    meta: dict[str, Any] | None = None
    ts: str = field(default_factory=utc_now_iso)

    @classmethod
    def build(
        cls,
        record: ImageRecord,
        *,
        score: float,
        threshold: float,
        encoder: str,
        head_version: str,
        record_ts_ms: float | None,
    ) -> Verdict:
        if not math.isfinite(score):
            raise ValueError(f"score is not finite: {score}")
        score = min(1.0, max(0.0, float(score)))
        latency = 0.0 if record_ts_ms is None else max(0.0, time.time() * 1000 - record_ts_ms)
        return cls(
            id=record.id,
            url=record.url,
            score=round(score, 6),
            verdict="generated" if score >= threshold else "real",
            threshold=threshold,
            encoder=encoder,
            head_version=head_version,
            latency_ms=round(latency, 3),
            meta=record.meta,
        )

    def to_bytes(self) -> bytes:
        return _dumps({k: v for k, v in asdict(self).items() if v is not None})


@dataclass(frozen=True)
class DeadLetter:
    """A `dmguard.dead-letter` value: the original bytes, the reason and the source.

    The original value is kept as text when it is UTF-8, otherwise base64 with
    `record_encoding: "base64"` beside it, so nothing is lost either way.
    """

    code: str
    message: str
    value: bytes | None
    source: Source
    id: str | None = None
    ts: str = field(default_factory=utc_now_iso)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.id is not None:
            out["id"] = self.id
        out["error"] = {"code": self.code, "message": self.message[:2000]}
        if self.value is None:
            out["record"] = None
        else:
            try:
                out["record"] = self.value.decode("utf-8")
            except UnicodeDecodeError:
                out["record"] = base64.b64encode(self.value).decode("ascii")
                out["record_encoding"] = "base64"
        out["source"] = asdict(self.source)
        out["ts"] = self.ts
        return out

    def to_bytes(self) -> bytes:
        return _dumps(self.to_dict())


def best_effort_id(value: bytes | None) -> str | None:
    """The `id` of a record that failed validation, when one can still be read."""
    if not value:
        return None
    try:
        obj = json.loads(value)
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    rid = obj.get("id") if isinstance(obj, dict) else None
    if isinstance(rid, str) and 1 <= len(rid) <= MAX_ID_CHARS:
        return rid
    return None


@dataclass(frozen=True)
class LabelRecord:
    """A `dmguard.labels` value: ground truth for one image id."""

    id: str
    label: str

    @classmethod
    def from_bytes(cls, value: bytes | None) -> LabelRecord:
        try:
            obj = json.loads(value or b"")
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise RecordError(f"not JSON: {str(exc)[:200]}") from exc
        if not isinstance(obj, dict) or not isinstance(obj.get("id"), str):
            raise RecordError("a label needs a string 'id'")
        label = obj.get("label")
        if label in (1, "1", "fake", "ai"):
            label = "generated"
        elif label in (0, "0", "nature"):
            label = "real"
        if label not in ("generated", "real"):
            raise RecordError(f"label must be 'generated' or 'real', got {label!r}")
        return cls(id=obj["id"], label=label)

    def to_bytes(self) -> bytes:
        return _dumps(asdict(self))
