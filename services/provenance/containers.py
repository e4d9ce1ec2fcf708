"""Where markers live in an image file: a bounded walk of its container.

`scan(data, limits)` walks the structure of a JPEG, PNG, WebP, AVIF/HEIF, GIF,
TIFF or BMP file without decoding a pixel and returns the metadata blocks it
found: XMP packets, EXIF blocks, PNG text chunks, and whether a C2PA manifest
store (JUMBF) is there and how big it is. It never raises: a truncated chunk,
a declared length past the end, too many chunks or a block over its cap end
the walk or skip that block, and each such event is said in `Scan.problems`.

What a block's position means: metadata inside the image's structure (before
a PNG's IEND, before a JPEG's first scan, inside a WebP's RIFF or an ISOBMFF
file's boxes) is what the tool that wrote the file put there; bytes after the
image's end are ignored by every decoder and can be appended by anyone, so
blocks found there carry `after_end=True` and never decide a verdict
(docs/provenance.md).

Bounds: only the headers of image data are read (a JPEG's scan data and a PNG's
IDAT contents are skipped by their lengths), at most `Limits.max_chunks`
chunks or segments are walked, a block over `Limits.max_block_bytes` is
skipped, at most `Limits.max_blocks` blocks are kept, and compressed PNG text
is inflated to at most `Limits.max_block_bytes` (decompression bombs).
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field

XMP_START = b"<x:xmpmeta"
XMP_END = b"</x:xmpmeta>"
XMP_APP1 = b"http://ns.adobe.com/xap/1.0/\x00"
EXIF_APP1 = b"Exif\x00\x00"
# The ISOBMFF `uuid` box C2PA stores its manifest store in (C2PA spec, A.4).
C2PA_UUID = bytes.fromhex("d8fec3d61b0e483c92975828877ec481")


@dataclass(frozen=True)
class Limits:
    """Caps on what one file may cost. The defaults keep the scan of a 20 MB upload
    well under a millisecond of Python per chunk walked."""

    max_block_bytes: int = 1 << 20  # one XMP packet, EXIF block or text chunk (inflated)
    max_blocks: int = 64  # blocks kept per file
    max_chunks: int = 20_000  # chunks, segments or boxes walked per file
    max_c2pa_bytes: int = 16 << 20  # a manifest store larger than this is not validated
    max_trailing_scan: int = 4 << 20  # bytes after the image's end searched for markers


@dataclass(frozen=True)
class Block:
    """One metadata block: `kind` "xmp", "exif" or "text" (a PNG text chunk, `key` its
    keyword); `where` says where it was found, for the evidence."""

    kind: str
    where: str
    data: bytes
    key: str = ""
    after_end: bool = False


@dataclass
class Scan:
    format: str  # "JPEG", "PNG", "WEBP", "ISOBMFF", "GIF", "TIFF", "BMP" or "unknown"
    blocks: list[Block] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    c2pa_bytes: int = 0  # size of the C2PA manifest store seen; 0: none
    c2pa_where: str = ""

    def add(self, block: Block, limits: Limits) -> None:
        if len(block.data) > limits.max_block_bytes:
            self.problems.append(
                f"{block.where}: {len(block.data)} bytes, over the {limits.max_block_bytes}-byte cap; not read"
            )
        elif len(self.blocks) >= limits.max_blocks:
            if len(self.blocks) == limits.max_blocks:
                self.problems.append(
                    f"more than {limits.max_blocks} metadata blocks; the rest not read"
                )
                self.blocks.append(Block("skip", "", b""))  # a sentinel: say it once
        else:
            self.blocks.append(block)

    @property
    def kept(self) -> list[Block]:
        return [b for b in self.blocks if b.kind != "skip"]


def scan(data: bytes, limits: Limits = Limits()) -> Scan:
    """The metadata blocks of `data` (see the module docstring). Never raises."""
    fmt = _format(data)
    out = Scan(fmt)
    walker = _WALKERS.get(fmt)
    try:
        if walker is not None:
            walker(data, out, limits)
        else:
            _find_xmp(data, 0, len(data), "XMP packet", out, limits, after_end=False)
    except (struct.error, IndexError, ValueError, zlib.error) as exc:  # a walker's bug on odd bytes
        out.problems.append(f"{fmt} structure unreadable: {type(exc).__name__}: {exc}"[:200])
    return out


def _format(data: bytes) -> str:
    if data[:3] == b"\xff\xd8\xff":
        return "JPEG"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "PNG"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    if data[4:8] == b"ftyp":
        return "ISOBMFF"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return "TIFF"
    if data[:2] == b"BM":
        return "BMP"
    return "unknown"


# ------------------------------------------------------------------ JPEG
def _jpeg(data: bytes, out: Scan, limits: Limits) -> None:
    """APPn segments up to the first scan (SOS); then what follows the last EOI."""
    pos, n, chunks = 2, len(data), 0
    c2pa_parts = 0
    while pos + 4 <= n:
        chunks += 1
        if chunks > limits.max_chunks:
            out.problems.append(f"JPEG: more than {limits.max_chunks} segments; the rest not read")
            return
        if data[pos] != 0xFF:
            out.problems.append(f"JPEG: no marker at byte {pos}; metadata walk stopped")
            return
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0x01, 0xD8) or 0xD0 <= marker <= 0xD7:  # no length field
            pos += 2
            continue
        if marker in (0xD9, 0xDA):  # EOI, or SOS: entropy-coded data follows
            break
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        end = pos + 2 + length
        if length < 2 or end > n:
            out.problems.append(f"JPEG: segment FF{marker:02X} at byte {pos} runs past the end")
            return
        body = data[pos + 4 : end]
        if marker == 0xE1 and body.startswith(XMP_APP1):
            out.add(Block("xmp", "XMP in JPEG APP1", body[len(XMP_APP1) :]), limits)
        elif marker == 0xE1 and body.startswith(EXIF_APP1):
            out.add(Block("exif", "EXIF in JPEG APP1", body[len(EXIF_APP1) :]), limits)
        elif marker == 0xEB and body[:2] == b"JP" and b"c2pa" in body[:64]:
            c2pa_parts += 1
            out.c2pa_bytes += len(body)
            out.c2pa_where = "JUMBF in JPEG APP11"
        pos = end
    eoi = data.rfind(b"\xff\xd9")
    if eoi >= pos:
        _trailing(data, eoi + 2, out, limits, "JPEG")


# ------------------------------------------------------------------- PNG
_PNG_TEXT = {b"tEXt", b"zTXt", b"iTXt"}


def _png(data: bytes, out: Scan, limits: Limits) -> None:
    """Every chunk header; text, eXIf and caBX chunks read. Chunks after IEND are read
    too, marked `after_end`; bytes there that are not chunks are searched for XMP."""
    pos, n, chunks, after_end = 8, len(data), 0, False
    while pos + 12 <= n:
        chunks += 1
        if chunks > limits.max_chunks:
            out.problems.append(f"PNG: more than {limits.max_chunks} chunks; the rest not read")
            return
        length, ctype = struct.unpack(">I4s", data[pos : pos + 8])
        end = pos + 12 + length
        if end > n or not ctype.isalpha():
            if after_end:  # not chunks: look for markers in what is there
                _trailing(data, pos, out, limits, "PNG")
            else:
                out.problems.append(
                    f"PNG: chunk {ctype!r} at byte {pos} declares {length} bytes, past the end"
                )
            return
        body = data[pos + 8 : pos + 8 + length]
        where = "after the PNG's IEND" if after_end else "PNG"
        if ctype in _PNG_TEXT:
            block = _png_text(ctype, body, where, out, limits)
            if block is not None:
                out.add(Block(**block, after_end=after_end), limits)
        elif ctype == b"eXIf":
            out.add(Block("exif", f"EXIF in {where} eXIf", body, after_end=after_end), limits)
        elif ctype == b"caBX" and not after_end:
            out.c2pa_bytes += length
            out.c2pa_where = "JUMBF in PNG caBX"
        elif ctype == b"IEND":
            after_end = True
        pos = end
    if after_end and pos < n:
        _trailing(data, pos, out, limits, "PNG")
    elif not after_end:
        out.problems.append("PNG: no IEND chunk (truncated file)")


def _png_text(ctype: bytes, body: bytes, where: str, out: Scan, limits: Limits) -> dict | None:
    """One tEXt/zTXt/iTXt chunk as a block's fields: the keyword and its text (inflated
    to at most `max_block_bytes`), or None when it cannot be read (said in problems)."""
    name = ctype.decode()
    key_end = body.find(b"\x00", 0, 80)
    if key_end < 1:
        out.problems.append(f"{where} {name}: no keyword")
        return None
    key = body[:key_end].decode("latin-1")
    rest = body[key_end + 1 :]
    compressed = False
    if ctype == b"zTXt":
        compressed, rest = True, rest[1:]  # compression method byte (0: zlib)
    elif ctype == b"iTXt":
        if len(rest) < 2:
            out.problems.append(f"{where} iTXt {key!r}: truncated")
            return None
        compressed = rest[0] == 1
        lang_end = rest.find(b"\x00", 2)
        tkey_end = rest.find(b"\x00", lang_end + 1) if lang_end >= 0 else -1
        if tkey_end < 0:
            out.problems.append(f"{where} iTXt {key!r}: truncated")
            return None
        rest = rest[tkey_end + 1 :]
    if compressed:
        inflater = zlib.decompressobj()
        try:
            text = inflater.decompress(rest, limits.max_block_bytes + 1)
        except zlib.error as exc:
            out.problems.append(f"{where} {name} {key!r}: bad compressed text ({exc})")
            return None
        if len(text) > limits.max_block_bytes or inflater.unconsumed_tail:
            out.problems.append(
                f"{where} {name} {key!r}: inflates past the {limits.max_block_bytes}-byte cap; not read"
            )
            return None
        rest = text
    if key == "XML:com.adobe.xmp":
        return {"kind": "xmp", "where": f"XMP in {where} {name}", "data": rest}
    return {"kind": "text", "where": f"{where} {name} {key!r}", "data": rest, "key": key}


# ------------------------------------------------------------------ WebP
def _webp(data: bytes, out: Scan, limits: Limits) -> None:
    (riff_size,) = struct.unpack("<I", data[4:8])
    end_of_riff = min(len(data), 8 + riff_size)
    pos, chunks = 12, 0
    while pos + 8 <= end_of_riff:
        chunks += 1
        if chunks > limits.max_chunks:
            out.problems.append(f"WebP: more than {limits.max_chunks} chunks; the rest not read")
            return
        fourcc, size = struct.unpack("<4sI", data[pos : pos + 8])
        end = pos + 8 + size
        if end > end_of_riff:
            out.problems.append(f"WebP: chunk {fourcc!r} at byte {pos} runs past the end")
            return
        body = data[pos + 8 : end]
        if fourcc == b"XMP ":
            out.add(Block("xmp", "XMP in WebP", body), limits)
        elif fourcc == b"EXIF":
            exif = body[len(EXIF_APP1) :] if body.startswith(EXIF_APP1) else body
            out.add(Block("exif", "EXIF in WebP", exif), limits)
        elif fourcc == b"C2PA":
            out.c2pa_bytes += size
            out.c2pa_where = "JUMBF in WebP C2PA chunk"
        pos = end + (size & 1)
    if 8 + riff_size < len(data):
        _trailing(data, 8 + riff_size, out, limits, "WebP")


# --------------------------------------------------------- AVIF / HEIF
def _isobmff(data: bytes, out: Scan, limits: Limits) -> None:
    """Top-level boxes; XMP and EXIF items are found by a bounded search of the
    `meta` and `mdat` boxes (their item locations are not resolved)."""
    pos, n, chunks = 0, len(data), 0
    while pos + 8 <= n:
        chunks += 1
        if chunks > limits.max_chunks:
            out.problems.append(f"ISOBMFF: more than {limits.max_chunks} boxes; the rest not read")
            return
        size, btype = struct.unpack(">I4s", data[pos : pos + 8])
        header = 8
        if size == 1:
            if pos + 16 > n:
                break
            (size,) = struct.unpack(">Q", data[pos + 8 : pos + 16])
            header = 16
        elif size == 0:
            size = n - pos
        if size < header or pos + size > n:
            out.problems.append(f"ISOBMFF: box {btype!r} at byte {pos} runs past the end")
            return
        if btype in (b"meta", b"mdat"):
            _find_xmp(
                data, pos + header, pos + size, "XMP in ISOBMFF", out, limits, after_end=False
            )
            _find_exif(data, pos + header, pos + size, out, limits)
        elif btype == b"uuid" and data[pos + 8 : pos + 24] == C2PA_UUID:
            out.c2pa_bytes += size
            out.c2pa_where = "JUMBF in ISOBMFF uuid box"
        pos += size
    if pos < n:
        _trailing(data, pos, out, limits, "ISOBMFF")


def _find_exif(data: bytes, start: int, end: int, out: Scan, limits: Limits) -> None:
    for magic in (EXIF_APP1 + b"MM\x00*", EXIF_APP1 + b"II*\x00"):
        i = data.find(magic, start, end)
        if i >= 0:
            stop = min(end, i + len(EXIF_APP1) + limits.max_block_bytes)
            out.add(Block("exif", "EXIF in ISOBMFF", data[i + len(EXIF_APP1) : stop]), limits)
            return


# ------------------------------------------------------------ GIF, BMP
def _whole_file(data: bytes, out: Scan, limits: Limits) -> None:
    _find_xmp(data, 0, len(data), f"XMP in {out.format}", out, limits, after_end=False)


def _tiff(data: bytes, out: Scan, limits: Limits) -> None:
    # A TIFF file is an EXIF block: its IFD0 holds Software, and XMP (tag 700).
    out.add(Block("exif", "TIFF tags", data[: limits.max_block_bytes]), limits)
    _find_xmp(data, 0, len(data), "XMP in TIFF", out, limits, after_end=False)


# --------------------------------------------------------------- shared
def _find_xmp(
    data: bytes, start: int, end: int, where: str, out: Scan, limits: Limits, *, after_end: bool
) -> None:
    """Each XMP packet (`<x:xmpmeta ... </x:xmpmeta>`) in data[start:end]."""
    pos = start
    while pos < end:
        i = data.find(XMP_START, pos, end)
        if i < 0:
            return
        j = data.find(XMP_END, i, min(end, i + limits.max_block_bytes + len(XMP_END)))
        if j < 0:
            out.problems.append(f"{where}: an XMP packet with no end within the cap; not read")
            return
        out.add(Block("xmp", where, data[i : j + len(XMP_END)], after_end=after_end), limits)
        pos = j + len(XMP_END)


_TEXT_KEYS = (b"parameters", b"prompt", b"workflow", b"invokeai", b"sd-metadata", b"Software")


def _trailing(data: bytes, start: int, out: Scan, limits: Limits, fmt: str) -> None:
    """Bytes after the image's end: PNG chunks there are read by the PNG walker; here,
    any XMP packet and any PNG-style text chunk, all marked `after_end`."""
    if start >= len(data):
        return
    end = min(len(data), start + limits.max_trailing_scan)
    where = f"after the {fmt} image's end"
    _find_xmp(data, start, end, f"XMP {where}", out, limits, after_end=True)
    tail = data[start:end]
    for key in _TEXT_KEYS:
        i = tail.find(key + b"\x00")
        if i >= 0:
            text = tail[i + len(key) + 1 : i + len(key) + 1 + limits.max_block_bytes]
            out.add(
                Block("text", f"{where} {key.decode()!r}", text, key=key.decode(), after_end=True),
                limits,
            )


_WALKERS = {
    "JPEG": _jpeg,
    "PNG": _png,
    "WEBP": _webp,
    "ISOBMFF": _isobmff,
    "GIF": _whole_file,
    "BMP": _whole_file,
    "TIFF": _tiff,
}
