"""C2PA manifests, read and validated with c2pa-python (the Content Authenticity
Initiative's bindings to c2pa-rs), an optional dependency: `pip install
'dmguard[provenance]'`. Without it a manifest store is still reported, as not
checked.

Only called when the container walk found a manifest store inside the image's
structure (services.provenance.containers), and only under the size cap. The
reader never goes to the network: remote manifests and OCSP are off, so a
hostile file cannot make a worker fetch a URL. A manifest is `verified` only when
c2pa-rs says "Trusted": its signature and hashes are valid and its signing
certificate chains to one of the trust anchors the operator configured
(`ProvenanceSettings.trust_anchors`); "Valid" (a sound signature by an unknown
key: anyone can make one) and "Invalid" are reported, unverified.
"""

from __future__ import annotations

import io
from typing import Any

from services.provenance.markers import (
    AI_COMPOSITE,
    AI_GENERATED,
    CAPTURE,
    OTHER,
    SOURCE_TYPE_CLAIMS,
    UNREADABLE,
    Finding,
    known_generator,
)

MAX_ACTIONS = 64  # actions looked at in the active manifest
_RANK = {AI_GENERATED: 3, AI_COMPOSITE: 2, CAPTURE: 1, OTHER: 0}


def available() -> bool:
    try:
        import c2pa  # noqa: F401
    except ImportError:
        return False
    return True


def read_manifest(data: bytes, mime: str, where: str, trust_anchors: str | None) -> Finding:
    """The active manifest of `data` as one finding. Never raises."""
    try:
        import c2pa
    except ImportError:
        return Finding(
            "c2pa",
            OTHER,
            {"where": where, "validation": "not checked: c2pa-python is not installed"},
        )
    settings: dict[str, Any] = {
        "verify": {"verify_trust": True, "remote_manifest_fetch": False, "ocsp_fetch": False}
    }
    if trust_anchors:
        settings["trust"] = {"trust_anchors": trust_anchors}
    try:
        with c2pa.Context.from_dict(settings) as context:
            with c2pa.Reader(mime, io.BytesIO(data), context=context) as reader:
                state = reader.get_validation_state() or "unknown"
                manifest = reader.get_active_manifest() or {}
                results = reader.get_validation_results() or {}
    except Exception as exc:  # c2pa.C2paError and its kinds; anything the binding raises
        return Finding(
            "c2pa", UNREADABLE, {"where": where, "problem": f"{type(exc).__name__}: {exc}"}
        )
    return _finding(manifest, state, results, where)


def _finding(manifest: dict, state: str, results: dict, where: str) -> Finding:
    claim, source_type, action = OTHER, "", ""
    actions = []
    for assertion in manifest.get("assertions") or []:
        if isinstance(assertion, dict) and str(assertion.get("label", "")).startswith(
            "c2pa.actions"
        ):
            data = assertion.get("data")
            if isinstance(data, dict) and isinstance(data.get("actions"), list):
                actions += data["actions"][:MAX_ACTIONS]
    for a in actions[:MAX_ACTIONS]:
        if not isinstance(a, dict):
            continue
        dst = str(a.get("digitalSourceType", "")).rstrip("/").rsplit("/", 1)[-1]
        c = SOURCE_TYPE_CLAIMS.get(dst.lower(), OTHER)
        if _RANK.get(c, 0) > _RANK[claim]:
            claim, source_type, action = c, dst, str(a.get("action", ""))
    generator = _generator(manifest)
    if claim == OTHER and known_generator(generator):
        claim = AI_GENERATED
    detail = {"where": where, "validation": state}
    signature = manifest.get("signature_info") or {}
    if isinstance(signature, dict):
        signer = signature.get("common_name") or ""
        issuer = signature.get("issuer") or ""
        if signer or issuer:
            detail["signer"] = f"{signer} ({issuer})" if issuer else str(signer)
    if generator:
        detail["generator"] = generator
    if source_type:
        detail["source_type"] = source_type
        detail["action"] = action
    failures = (results.get("activeManifest") or {}).get("failure") if results else None
    if isinstance(failures, list) and failures and isinstance(failures[0], dict):
        detail["problem"] = str(failures[0].get("code", ""))
    return Finding("c2pa", claim, detail, verified=state == "Trusted")


def _generator(manifest: dict) -> str:
    info = manifest.get("claim_generator_info")
    if isinstance(info, list) and info and isinstance(info[0], dict):
        name, version = info[0].get("name", ""), info[0].get("version", "")
        return f"{name} {version}".strip()
    return str(manifest.get("claim_generator") or "")
