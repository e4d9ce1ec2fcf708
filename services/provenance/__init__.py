"""Provenance beside the pixels: what an image file declares about how it was made.

`read_provenance(data, settings)` reads the fetched bytes (no second fetch, no
decode) and returns the evidence: C2PA manifests (validated with c2pa-python
when it is installed), IPTC DigitalSourceType in XMP, the EXIF Software tag,
and the text chunks image generators write (AUTOMATIC1111, ComfyUI, InvokeAI,
NovelAI). It never raises: a block it cannot read becomes an "unreadable"
finding or a note, and the whole read stops at the first cap it meets
(`Limits`, `ProvenanceSettings.max_seconds`).

`decides(findings, mode)` is the policy (docs/provenance.md): under mode "on",
a declared AI marker (a C2PA AI action, an AI DigitalSourceType, a known
generator's name or parameters) found inside the image's structure makes the
verdict "generated" whatever the score; nothing else changes a verdict, and the
absence of markers never lowers a score (markers are trivially stripped).

    >>> report = read_provenance(data, ProvenanceSettings())
    >>> [f.to_dict() for f in report.findings]
    [{'kind': 'iptc_source_type', 'claim': 'ai_generated', 'verified': False, ...}]
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from services.provenance import c2pa_manifest
from services.provenance.containers import Limits, Scan, scan
from services.provenance.markers import (
    AI_CLAIMS,
    AI_COMPOSITE,
    AI_GENERATED,
    CAPTURE,
    CLAIMS,
    OTHER,
    UNREADABLE,
    Finding,
    from_block,
)

__all__ = [
    "AI_CLAIMS",
    "AI_COMPOSITE",
    "AI_GENERATED",
    "CAPTURE",
    "CLAIMS",
    "MODES",
    "OTHER",
    "UNREADABLE",
    "Finding",
    "Limits",
    "ProvenanceSettings",
    "Report",
    "decides",
    "read_provenance",
]

MODES = ("off", "evidence", "on")
MAX_FINDINGS = 16  # per image: the verdict stays small whatever the file holds
_MIME = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp", "TIFF": "image/tiff"}


@dataclass(frozen=True)
class ProvenanceSettings:
    """`mode`: "on" (read, and a declared AI marker decides the verdict), "evidence" (read
    and report, the model decides) or "off" (read nothing; `evidence` is empty).
    `trust_anchors`: PEM text of the certificate authorities whose C2PA signers count
    as verified (None: no manifest is verified, however sound its signature)."""

    mode: str = "on"
    trust_anchors: str | None = None
    limits: Limits = field(default_factory=Limits)
    max_seconds: float = 0.25  # the walk stops between blocks once this is spent

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(
                f"provenance mode must be one of {', '.join(MODES)}, not {self.mode!r}"
            )


@dataclass
class Report:
    mode: str = "on"  # the mode it was read under; "off": nothing was read
    findings: list[Finding] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # caps met, truncated blocks: for logs
    seconds: float = 0.0
    decisive: Finding | None = None  # the finding that decides the verdict (`decides`)

    @property
    def evidence(self) -> list[dict]:
        return [f.to_dict() for f in self.findings]


def read_provenance(data: bytes, settings: ProvenanceSettings = ProvenanceSettings()) -> Report:
    """The evidence in `data` (an empty report under mode "off") and the finding that
    decides the verdict under `settings.mode`, if any. Never raises."""
    report = Report(mode=settings.mode)
    if settings.mode == "off":
        return report
    t0 = time.perf_counter()
    try:
        _read(data, settings, report, t0)
    except Exception as exc:  # a bug on odd bytes must cost the evidence, never the record
        report.findings.append(
            Finding("metadata", UNREADABLE, {"problem": f"{type(exc).__name__}: {exc}"})
        )
    report.findings = _dedupe(report.findings)[:MAX_FINDINGS]
    report.decisive = decides(report.findings, settings.mode)
    report.seconds = time.perf_counter() - t0
    return report


def _read(data: bytes, settings: ProvenanceSettings, report: Report, t0: float) -> None:
    found: Scan = scan(data, settings.limits)
    report.notes += found.problems
    if found.c2pa_bytes:
        if found.c2pa_bytes > settings.limits.max_c2pa_bytes:
            report.findings.append(
                Finding(
                    "c2pa",
                    UNREADABLE,
                    {
                        "where": found.c2pa_where,
                        "problem": f"manifest store of {found.c2pa_bytes} bytes, over the "
                        f"{settings.limits.max_c2pa_bytes}-byte cap; not validated",
                    },
                )
            )
        else:
            mime = _MIME.get(found.format) or _isobmff_mime(data)
            report.findings.append(
                c2pa_manifest.read_manifest(data, mime, found.c2pa_where, settings.trust_anchors)
            )
    for block in found.kept:
        if time.perf_counter() - t0 > settings.max_seconds:
            report.notes.append(f"time cap of {settings.max_seconds} s met; blocks left unread")
            break
        report.findings += from_block(block)


def _isobmff_mime(data: bytes) -> str:
    return "image/avif" if data[8:12] in (b"avif", b"avis") else "image/heic"


def _dedupe(findings: list[Finding]) -> list[Finding]:
    """One finding per (kind, claim, detail): the same XMP in two places counts once."""
    seen, out = set(), []
    for f in findings:
        key = (f.kind, f.claim, f.after_end, tuple(sorted(f.detail.items())))
        if key not in seen:
            seen.add(key)
            out.append(f)
    return out


def decides(findings: list[Finding], mode: str) -> Finding | None:
    """The finding that makes the verdict "generated" under `mode`, or None (the model
    decides): under "on", the first declared AI marker inside the image's structure,
    a verified one first."""
    if mode != "on":
        return None
    ai = [f for f in findings if f.claim in AI_CLAIMS and not f.after_end]
    if not ai:
        return None
    return next((f for f in ai if f.verified), ai[0])
