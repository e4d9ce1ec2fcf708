"""Record schemas of the four topics (docs/architecture.md, "Records").

Input records are parsed with `ImageRecord.from_bytes`, which either returns a
record or raises `RecordError` with the reason a dead-letter record needs; it
never raises anything else, whatever the bytes. Output records are built by
`Verdict` and `DeadLetter` and serialised with `to_bytes`.

Every output must be sendable, whatever the input was, or the worker could
not move past the record that caused it. So:

* input is strict JSON: `NaN`/`Infinity` (which Python's parser accepts) and
  strings holding lone surrogates such as `"\ud800"` (valid JSON escapes that
  no UTF-8 encoder can write back) make the record a `bad_record`;
* outputs are written with `allow_nan=False`, so a non-finite number can never
  reach a consumer as a bare `NaN`;
* a dead letter carries at most `MAX_DEAD_LETTER_RECORD_BYTES` of the original
  value plus its full size and SHA-256, so it stays far below
  `MAX_OUTPUT_BYTES` (the producer's request limit) even when every byte of
  the prefix needs a six-byte JSON escape.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

from services.errors import RecordError

MAX_VALUE_BYTES = 1 << 20  # a whole input record
MAX_ID_CHARS = 256
MAX_URL_CHARS = 8192
MAX_TEXT_CHARS = 4096
MAX_META_BYTES = 16 << 10
MAX_DEAD_LETTER_RECORD_BYTES = 64 << 10  # prefix of the original value kept in a dead letter
MAX_MESSAGE_CHARS = 2000
# Every output value stays below this; the producer's max_request_size is 1 MiB
# and a record batch adds its own overhead.
MAX_OUTPUT_BYTES = 900 << 10


def utc_now_iso() -> str:
    """Wall-clock time as ISO 8601 UTC with milliseconds, the `ts` of output records."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _dumps(obj: dict[str, Any]) -> bytes:
    """Strict JSON as UTF-8. Raises ValueError for non-finite numbers and
    UnicodeEncodeError for lone surrogates."""
    text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return text.encode("utf-8")


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def strict_loads(value: bytes | str) -> Any:
    """`json.loads` without Python's extensions: NaN, Infinity and -Infinity are errors."""
    return json.loads(value, parse_constant=_refuse_constant)


def _encodable(text: str) -> bool:
    """False when `text` holds a lone surrogate (it cannot be written as UTF-8)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def printable(text: str) -> str:
    """`text` with anything UTF-8 cannot hold escaped, for messages that quote input."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


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
            obj = strict_loads(value)
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise RecordError(f"not JSON: {printable(str(exc))[:200]}") from exc
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
        if not _encodable(rid):
            raise RecordError("'id' holds a lone surrogate: not valid Unicode text")
        url = obj.get("url")
        if not isinstance(url, str) or not url:
            raise RecordError("missing or non-string field 'url'")
        if len(url) > MAX_URL_CHARS:
            raise RecordError(f"'url' has {len(url)} characters, more than {MAX_URL_CHARS}")
        if not _encodable(url):
            raise RecordError("'url' holds a lone surrogate: not valid Unicode text")
        text = obj.get("text")
        if text is not None:
            if not isinstance(text, str):
                raise RecordError("'text' must be a string")
            if len(text) > MAX_TEXT_CHARS:
                raise RecordError(f"'text' has {len(text)} characters, more than {MAX_TEXT_CHARS}")
            if not _encodable(text):
                raise RecordError("'text' holds a lone surrogate: not valid Unicode text")
        meta = obj.get("meta")
        if meta is not None:
            if not isinstance(meta, dict):
                raise RecordError("'meta' must be a JSON object")
            try:
                size = len(_dumps(meta))
            except UnicodeEncodeError as exc:
                raise RecordError("'meta' holds a lone surrogate: not valid Unicode text") from exc
            except (ValueError, RecursionError) as exc:
                raise RecordError(f"'meta' cannot be written back as JSON: {exc}") from exc
            if size > MAX_META_BYTES:
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


VERDICTS = ("real", "uncertain", "generated")
# Who made the verdict: the model's score, or a declared AI marker in the file
# (services.provenance, docs/provenance.md); the score is reported either way.
DECIDERS = ("model", "provenance")


@dataclass(frozen=True)
class Verdict:
    """A `dmguard.verdicts` value. `latency_ms` runs from the input record's
    Kafka timestamp to the moment the verdict is built.

    `score` is the head's raw score and `threshold` its cut for "generated".
    `verdict` is "generated" (score >= threshold), "uncertain" (score in the
    head's abstain band [uncertain_from, threshold): send to human review) or
    "real". `probability` is the calibrated P(generated), null when the head has
    no calibration; `uncertain_from` is the band's lower edge, null when the head
    has no band. Both are always written, null included.

    `evidence` lists what the file declares about its making (services.provenance:
    each item's kind, claim, verified, after_end and detail), empty when nothing;
    `decided_by` is "provenance" when a declared AI marker made the verdict
    "generated" whatever the score, else "model". Both are always written."""

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
    probability: float | None = None
    uncertain_from: float | None = None
    evidence: list[dict[str, Any]] = field(default_factory=list)
    decided_by: str = "model"

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
        verdict: str | None = None,
        probability: float | None = None,
        uncertain_from: float | None = None,
        evidence: Sequence[dict[str, Any]] = (),
        decided_by: str = "model",
    ) -> Verdict:
        """`verdict`, `probability` and `uncertain_from` come from the worker, which
        applies the head's calibration and abstain band (training.model.calibration);
        without `verdict` the verdict is "generated" when score >= threshold, else
        "real". `evidence` and `decided_by` come from the provenance policy
        (services.provenance.decides).

        Raises:
            ValueError: a non-finite score, an unknown verdict, "uncertain" without
                an `uncertain_from`, a probability that is not finite in [0, 1], an
                unknown `decided_by`, or "provenance" deciding anything but "generated".
        """
        if not math.isfinite(score):
            raise ValueError(f"score is not finite: {score}")
        score = min(1.0, max(0.0, float(score)))
        if verdict is None:
            verdict = "generated" if score >= threshold else "real"
        if verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {', '.join(VERDICTS)}, not {verdict!r}")
        if verdict == "uncertain" and uncertain_from is None:
            raise ValueError("an 'uncertain' verdict needs the head's uncertain_from")
        if probability is not None:
            probability = float(probability)
            if not (math.isfinite(probability) and 0.0 <= probability <= 1.0):
                raise ValueError(f"probability must be finite in [0, 1], not {probability}")
            probability = round(probability, 6)
        if decided_by not in DECIDERS:
            raise ValueError(f"decided_by must be one of {', '.join(DECIDERS)}, not {decided_by!r}")
        if decided_by == "provenance" and verdict != "generated":
            raise ValueError("provenance decides only 'generated' verdicts")
        latency = 0.0 if record_ts_ms is None else max(0.0, time.time() * 1000 - record_ts_ms)
        return cls(
            id=record.id,
            url=record.url,
            score=round(score, 6),
            verdict=verdict,
            threshold=threshold,
            encoder=encoder,
            head_version=head_version,
            latency_ms=round(latency, 3),
            meta=record.meta,
            probability=probability,
            uncertain_from=None if uncertain_from is None else float(uncertain_from),
            evidence=list(evidence),
            decided_by=decided_by,
        )

    def to_bytes(self) -> bytes:
        """Strict JSON; `meta` only when the record had one, `probability` and
        `uncertain_from` always (null when the head has none), `evidence` and
        `decided_by` always."""
        d = asdict(self)
        if d["meta"] is None:
            del d["meta"]
        return _dumps(d)


@dataclass(frozen=True)
class DeadLetter:
    """A `dmguard.dead-letter` value: the original bytes, the reason and the source.

    The original value (its first `MAX_DEAD_LETTER_RECORD_BYTES`) is kept as
    text when it is UTF-8, otherwise base64 with `record_encoding: "base64"`
    beside it. `record_bytes` and `record_sha256` describe the whole value and
    `record_truncated` says whether `record` holds all of it; the whole value
    stays in the input topic at `source`.
    """

    code: str
    message: str
    value: bytes | None
    source: Source
    id: str | None = None
    ts: str = field(default_factory=utc_now_iso)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.id is not None and _encodable(self.id):
            out["id"] = self.id
        out["error"] = {"code": self.code, "message": printable(self.message[:MAX_MESSAGE_CHARS])}
        if self.value is None:
            out["record"] = None
        else:
            prefix = self.value[:MAX_DEAD_LETTER_RECORD_BYTES]
            text = _utf8_prefix(prefix, whole=len(prefix) == len(self.value))
            if text is not None:
                out["record"] = text
            else:
                out["record"] = base64.b64encode(prefix).decode("ascii")
                out["record_encoding"] = "base64"
            out["record_bytes"] = len(self.value)
            out["record_sha256"] = hashlib.sha256(self.value).hexdigest()
            out["record_truncated"] = len(prefix) < len(self.value)
        out["source"] = asdict(self.source)
        out["ts"] = self.ts
        return out

    def to_bytes(self) -> bytes:
        return _dumps(self.to_dict())


def _utf8_prefix(prefix: bytes, *, whole: bool) -> str | None:
    """`prefix` as text when it is UTF-8, else None. When `prefix` is a cut of a
    longer value, a last character cut in the middle is dropped."""
    try:
        return prefix.decode("utf-8")
    except UnicodeDecodeError as exc:
        if not whole and exc.reason == "unexpected end of data" and exc.start >= len(prefix) - 3:
            return _utf8_prefix(prefix[: exc.start], whole=True)
        return None


def best_effort_id(value: bytes | None) -> str | None:
    """The `id` of a record that failed validation, when one can still be read."""
    if not value or len(value) > MAX_VALUE_BYTES:
        return None
    try:
        obj = json.loads(value)
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    rid = obj.get("id") if isinstance(obj, dict) else None
    if isinstance(rid, str) and 1 <= len(rid) <= MAX_ID_CHARS and _encodable(rid):
        return rid
    return None


def message_key(value: bytes | str) -> bytes | None:
    """The Kafka key a producer gives a record: its `id`, when the value is a JSON object
    with a string id (so that one id always lands on one partition); else None."""
    try:
        obj = json.loads(value)
        if isinstance(obj, dict) and isinstance(obj.get("id"), str):
            return obj["id"].encode()
    except (ValueError, RecursionError):  # UnicodeDecodeError and UnicodeEncodeError too
        pass
    return None


@dataclass(frozen=True)
class LabelRecord:
    """A `dmguard.labels` value: ground truth for one image id."""

    id: str
    label: str

    @classmethod
    def from_bytes(cls, value: bytes | None) -> LabelRecord:
        try:
            obj = strict_loads(value or b"")
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise RecordError(f"not JSON: {printable(str(exc))[:200]}") from exc
        if not isinstance(obj, dict) or not isinstance(obj.get("id"), str):
            raise RecordError("a label needs a string 'id'")
        if not _encodable(obj["id"]):
            raise RecordError("the label's 'id' holds a lone surrogate")
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
