"""What a metadata block declares: IPTC DigitalSourceType and tool names in XMP, the
EXIF Software tag (and AUTOMATIC1111's parameters in EXIF UserComment), and the text
chunks image generators write into PNGs.

No XML parser is used: an XMP packet is searched with bounded regular expressions
(linear, no nested quantifiers) and a packet holding a DTD (`<!DOCTYPE`, `<!ENTITY`,
which XMP forbids and XML bombs need) is refused unread. EXIF is walked by hand
with a cap on entries, every offset checked against the block, and no IFD read
twice. Text is decoded with errors replaced, so no bytes raise.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass, field

from services.provenance.containers import Block

# What a finding declares about how the image was made (docs/provenance.md).
AI_GENERATED = "ai_generated"
AI_COMPOSITE = "ai_composite"
CAPTURE = "capture"
OTHER = "other"
UNREADABLE = "unreadable"
CLAIMS = (AI_GENERATED, AI_COMPOSITE, CAPTURE, OTHER, UNREADABLE)
AI_CLAIMS = (AI_GENERATED, AI_COMPOSITE)

MAX_DETAIL_CHARS = 200  # each detail value; the verdict must stay small


@dataclass(frozen=True)
class Finding:
    """One piece of evidence. `verified` is True only for a C2PA manifest whose signature
    and hashes are valid and whose signer chains to a configured trust anchor;
    `after_end` for a marker found after the image's end (never decides)."""

    kind: (
        str  # "c2pa", "iptc_source_type", "generator_software", "generator_parameters", "metadata"
    )
    claim: str  # one of CLAIMS
    detail: dict[str, str] = field(default_factory=dict)
    verified: bool = False
    after_end: bool = False

    def to_dict(self) -> dict:
        return {
            "kind": self.kind,
            "claim": self.claim,
            "verified": self.verified,
            "after_end": self.after_end,
            "detail": {k: clip(v) for k, v in self.detail.items()},
        }


def clip(value: object, limit: int = MAX_DETAIL_CHARS) -> str:
    """`value` as printable text of at most `limit` characters."""
    text = str(value)
    text = "".join(c if c.isprintable() else "\ufffd" for c in text[: limit + 1])
    return text if len(text) <= limit else text[: limit - 1] + "…"


# IPTC NewsCodes, digitalsourcetype (the 2023 vocabulary and its older aliases).
SOURCE_TYPE_CLAIMS = {
    "trainedalgorithmicmedia": AI_GENERATED,
    "compositewithtrainedalgorithmicmedia": AI_COMPOSITE,
    "digitalcapture": CAPTURE,
    "negativefilm": CAPTURE,
    "positivefilm": CAPTURE,
    "print": CAPTURE,
    "digitalcreation": OTHER,
}

# Tool names that only image generators write (matched case-insensitively in the EXIF
# Software tag, XMP's CreatorTool and softwareAgent, a PNG `Software` text chunk, a C2PA
# claim generator). Editors that have generative features (Photoshop) are not here:
# their AI edits are declared by a DigitalSourceType, which is read separately.
GENERATORS = (
    "AUTOMATIC1111",
    "stable-diffusion-webui",
    "Stable Diffusion",
    "StableDiffusion",
    "SDXL",
    "DreamStudio",
    "ComfyUI",
    "InvokeAI",
    "NovelAI",
    "Fooocus",
    "Midjourney",
    "DALL-E",
    "DALL·E",
    "DALLE",
    "Adobe Firefly",
    "Imagen",
    "Ideogram",
    "Leonardo.Ai",
    "FLUX.1",
    "Black Forest Labs",
    "DiffusionBee",
    "Draw Things",
    "Craiyon",
    "NightCafe",
    "Bing Image Creator",
    "Image Creator from Microsoft Designer",
    "Playground AI",
    "Runway Gen",
    "Krea AI",
)
_GENERATOR_RE = re.compile(
    "|".join(r"(?<![A-Za-z])" + re.escape(g) + r"(?![A-Za-z])" for g in GENERATORS), re.I
)


def known_generator(text: str) -> str | None:
    """The generator `text` names, as listed in GENERATORS; None when it names none."""
    m = _GENERATOR_RE.search(text[:4096])
    if m is None:
        return None
    found = m.group(0).lower()
    return next(g for g in GENERATORS if g.lower() == found)


# ----------------------------------------------------------------- XMP
_DTD = re.compile(rb"<!(?:DOCTYPE|ENTITY)", re.I)
# Attribute form (p:DigitalSourceType="..."), element form (<p:DigitalSourceType>...<) and
# resource form (<p:DigitalSourceType rdf:resource="..."/>), whatever the namespace prefix.
# Each starts with a literal and every repeat is bounded, so a search is linear.
_SOURCE_TYPE = re.compile(
    rb'DigitalSourceType(?:\s{0,20}=\s{0,20}["\']([^"\'<>]{1,300})["\']'
    rb"|\s{0,20}>\s{0,20}([^<]{1,300})<"
    rb'|\s{1,20}(?:rdf:)?resource\s{0,20}=\s{0,20}["\']([^"\'<>]{1,300})["\'])'
)
_TOOL = re.compile(
    rb'(?:CreatorTool|softwareAgent)(?:\s{0,20}=\s{0,20}["\']([^"\'<>]{1,300})["\']'
    rb"|\s{0,20}>\s{0,20}([^<]{1,300})<)"
)


def from_xmp(block: Block) -> list[Finding]:
    if _DTD.search(block.data):
        return [
            Finding(
                "metadata",
                UNREADABLE,
                {"where": block.where, "problem": "XMP packet with a DTD (refused: XML bombs)"},
                after_end=block.after_end,
            )
        ]
    findings: list[Finding] = []
    seen: set[str] = set()
    for m in _SOURCE_TYPE.finditer(block.data):
        raw = next(g for g in m.groups() if g is not None)
        value = raw.decode("utf-8", "replace").strip()
        name = value.rstrip("/").rsplit("/", 1)[-1]
        if not name or name.lower() in seen:  # an empty match: a closing tag
            continue
        seen.add(name.lower())
        claim = SOURCE_TYPE_CLAIMS.get(name.lower(), OTHER)
        findings.append(
            Finding(
                "iptc_source_type",
                claim,
                {"value": name, "where": block.where},
                after_end=block.after_end,
            )
        )
        if len(findings) >= 8:
            break
    for m in _TOOL.finditer(block.data):
        raw = next(g for g in m.groups() if g is not None)
        tool = raw.decode("utf-8", "replace").strip()
        generator = known_generator(tool) if tool else None
        if generator is not None and generator not in seen:
            seen.add(generator)
            findings.append(
                Finding(
                    "generator_software",
                    AI_GENERATED,
                    {"generator": generator, "value": tool, "where": block.where},
                    after_end=block.after_end,
                )
            )
    return findings


# ---------------------------------------------------------------- EXIF
_SOFTWARE, _EXIF_IFD, _USER_COMMENT, _XMP_TAG = 0x0131, 0x8769, 0x9286, 700
_MAX_ENTRIES = 512
_ASCII, _UNDEFINED, _BYTE = 2, 7, 1


def read_exif(data: bytes) -> dict[int, bytes]:
    """Software, UserComment and XMP (tag 700) of an EXIF/TIFF block, as raw bytes.
    Raises ValueError on a malformed block."""
    if data[:4] == b"II*\x00":
        order = "<"
    elif data[:4] == b"MM\x00*":
        order = ">"
    else:
        raise ValueError("no TIFF header")
    (ifd,) = struct.unpack(order + "I", data[4:8])
    wanted = {_SOFTWARE, _USER_COMMENT, _XMP_TAG}
    found: dict[int, bytes] = {}
    visited: set[int] = set()
    queue = [ifd]
    while queue:
        offset = queue.pop()
        if offset in visited or not 8 <= offset <= len(data) - 2:
            continue
        visited.add(offset)
        (count,) = struct.unpack(order + "H", data[offset : offset + 2])
        if count > _MAX_ENTRIES:
            raise ValueError(f"an IFD of {count} entries")
        for k in range(count):
            entry = data[offset + 2 + 12 * k : offset + 14 + 12 * k]
            if len(entry) < 12:
                raise ValueError("an IFD runs past the end")
            tag, typ, n = struct.unpack(order + "HHI", entry[:8])
            if tag == _EXIF_IFD and len(visited) < 4:
                queue.append(struct.unpack(order + "I", entry[8:12])[0])
            elif tag in wanted and typ in (_ASCII, _UNDEFINED, _BYTE):
                if n <= 4:
                    found[tag] = entry[8 : 8 + n]
                else:
                    (at,) = struct.unpack(order + "I", entry[8:12])
                    if at + n > len(data):
                        raise ValueError(f"tag {tag} points past the end")
                    found[tag] = data[at : at + n]
    return found


def from_exif(block: Block) -> list[Finding]:
    try:
        tags = read_exif(block.data)
    except (ValueError, struct.error) as exc:
        return [
            Finding(
                "metadata",
                UNREADABLE,
                {"where": block.where, "problem": f"EXIF: {exc}"},
                after_end=block.after_end,
            )
        ]
    findings: list[Finding] = []
    software = tags.get(_SOFTWARE, b"").split(b"\x00", 1)[0].decode("utf-8", "replace").strip()
    generator = known_generator(software) if software else None
    if generator is not None:
        findings.append(
            Finding(
                "generator_software",
                AI_GENERATED,
                {"generator": generator, "value": software, "where": f"{block.where} Software"},
                after_end=block.after_end,
            )
        )
    comment = tags.get(_USER_COMMENT, b"")
    if comment:
        # 8 bytes of character code, then the text (AUTOMATIC1111 writes UNICODE, UTF-16).
        code, body = comment[:8], comment[8:]
        text = body.decode("utf-16-be" if b"UNICODE" in code else "utf-8", "replace")
        if b"UNICODE" in code and text and "Steps" not in text:
            text = body.decode("utf-16-le", "replace")
        generator = a1111_parameters(text)
        if generator is not None:
            findings.append(
                Finding(
                    "generator_parameters",
                    AI_GENERATED,
                    {"generator": generator, "where": f"{block.where} UserComment"},
                    after_end=block.after_end,
                )
            )
    if tags.get(_XMP_TAG):
        findings += from_xmp(
            Block("xmp", f"XMP in {block.where}", tags[_XMP_TAG], after_end=block.after_end)
        )
    return findings


# ------------------------------------------------------ PNG text chunks
_A1111_FIELDS = ("Steps: ", "Sampler: ", "CFG scale: ", "Seed: ")


def a1111_parameters(text: str) -> str | None:
    """ "AUTOMATIC1111" when `text` has the shape of its `parameters` (prompt, then a line
    with at least two of Steps/Sampler/CFG scale/Seed), else None."""
    head = text[:65536]
    if sum(f in head for f in _A1111_FIELDS) >= 2:
        return "AUTOMATIC1111"
    return None


def from_text(block: Block) -> list[Finding]:
    """A PNG text chunk: the generators' own keywords, checked for their content's shape."""
    key = block.key
    text = block.data[:65536].decode("utf-8", "replace")
    generator: str | None = None
    kind = "generator_parameters"
    if key == "parameters":
        generator = a1111_parameters(text)
    elif key in ("prompt", "workflow"):
        if '"class_type"' in text or '"nodes"' in text:
            generator = "ComfyUI"
    elif key in ("invokeai_metadata", "invokeai_graph", "sd-metadata", "Dream"):
        generator = "InvokeAI"
    elif key == "Comment" and '"steps"' in text and ('"sampler"' in text or '"seed"' in text):
        generator = "NovelAI"
    elif key in ("Software", "Source"):
        generator = known_generator(text)
        kind = "generator_software"
    if generator is None:
        return []
    return [
        Finding(
            kind,
            AI_GENERATED,
            {"generator": generator, "where": block.where},
            after_end=block.after_end,
        )
    ]


def from_block(block: Block) -> list[Finding]:
    if block.kind == "xmp":
        return from_xmp(block)
    if block.kind == "exif":
        return from_exif(block)
    if block.kind == "text":
        return from_text(block)
    return []
