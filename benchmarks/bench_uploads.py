"""A realistic upload mix for `dmguard bench --mix uploads`, and the server that serves it.

The mix (`MIX`, shares of the files) stands in for what users upload: camera JPEGs of
12 and 8 megapixels at quality 90, some of them stored sideways with an EXIF
orientation (6, 3 or 8) as phones write them; 1080p PNG screenshots (flat panels,
text, a picture here and there); WebP photos; AVIF photos of a phone camera's size (the
stand-in for HEIC, which Pillow does not write); small JPEG thumbnails; short animated
GIFs; and 3% broken uploads (a JPEG cut short, an HTML error page served with status
200, zero bytes), which the pipeline must dead-letter. Photos are "natural" enough for
file sizes and decode times to be realistic: smooth noise over several octaves, shapes
with edges, fine texture and grain (white noise would compress like no photo does, a
flat colour far better).

`load_mix` generates the files once, seeded, and caches them with a manifest
(kind, file, bytes, upright WxH, orientation, Content-Type, sha256) under
DEFAULT_ROOT/uploads-v{GENERATOR_VERSION}; the cache is regenerated when
GENERATOR_VERSION, the seed, the scale or the number of files changes. `scale` shrinks
every side (tests use ~0.05 so that no 12 MP image is made); the shares stay.

`UploadServer` serves any lookup of path -> (body, Content-Type) over HTTP/1.1 with a
delay before each response (`latency_ms`, the time to first byte of a CDN or object
store) and a bandwidth cap per response (`bandwidth_mbps`; 0: none), and counts the body
bytes sent. services.http.HttpServer writes a body in one go; pacing needs its own
handler, kept here since nothing else needs it.
"""

from __future__ import annotations

import hashlib
import io
import json
import random
import shutil
import string
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image, ImageDraw, ImageFilter, ImageFont

from benchmarks.harness import found, say
from services.http import HttpServer, RouteHandler

GENERATOR_VERSION = 1  # bump when what is generated changes: caches of other versions are rebuilt
DEFAULT_ROOT = Path(".cache/bench")
DEFAULT_FILES = 100  # distinct files; records cycle over them (in a seeded order)
DEFAULT_LATENCY_MS = 50.0
DEFAULT_BANDWIDTH_MBPS = 100.0
CAMERA_ORIENTATIONS = (1, 6, 1, 3, 1, 8, 1, 6)  # EXIF orientation of camera JPEG j: j % 8


@dataclass(frozen=True)
class Kind:
    """One kind of upload: its share of the files, what it is and how it is served.
    `dead_letter`: the code the pipeline must give it (broken kinds), else None."""

    name: str
    share: float
    fmt: str  # JPEG, PNG, WEBP, AVIF, GIF; or what a broken file pretends to be
    size: tuple[int, int] | None  # stored WxH at scale 1 (None: no picture)
    content_type: str
    ext: str
    dead_letter: str | None = None


# The proportions, in one place: shares of the distinct files (exact for 100 files), and
# so of the records, which cycle over the files.
MIX: tuple[Kind, ...] = (
    Kind("camera_12mp_jpeg", 0.22, "JPEG", (4032, 3024), "image/jpeg", "jpg"),
    Kind("camera_8mp_jpeg", 0.14, "JPEG", (3264, 2448), "image/jpeg", "jpg"),
    Kind("screenshot_png", 0.14, "PNG", (1920, 1080), "image/png", "png"),
    Kind("photo_webp", 0.14, "WEBP", (1600, 1200), "image/webp", "webp"),
    Kind("camera_avif", 0.10, "AVIF", (4032, 3024), "image/avif", "avif"),
    Kind("thumbnail_jpeg", 0.16, "JPEG", (320, 240), "image/jpeg", "jpg"),
    Kind("animated_gif", 0.07, "GIF", (480, 360), "image/gif", "gif"),
    Kind("broken_truncated_jpeg", 0.01, "JPEG", (3264, 2448), "image/jpeg", "jpg", "decode_failed"),
    Kind("broken_html", 0.01, "HTML", None, "text/html; charset=utf-8", "html", "not_an_image"),
    Kind("broken_empty", 0.01, "EMPTY", None, "application/octet-stream", "bin", "not_an_image"),
)
KINDS = {k.name: k for k in MIX}


@dataclass(frozen=True)
class Upload:
    """One file of the mix, as the manifest lists it. `width` x `height` is the picture
    upright (EXIF orientation applied), as services.images.decode returns it."""

    kind: str
    file: str
    bytes: int
    width: int | None
    height: int | None
    orientation: int
    content_type: str
    sha256: str


class UploadMix:
    """The files of the mix, their manifest, and the order records cycle over them."""

    def __init__(self, folder: Path, manifest: dict) -> None:
        self.folder = folder
        self.manifest = manifest
        self.entries = [Upload(**e) for e in manifest["entries"]]
        self.order: list[int] = manifest["order"]
        self.by_file = {e.file: e for e in self.entries}
        self._blobs: dict[str, bytes] = {}
        self._lock = threading.Lock()

    def data(self, file: str) -> bytes:
        """The bytes of `file`, read once and then kept in memory."""
        with self._lock:
            if file not in self._blobs:
                self._blobs[file] = (self.folder / file).read_bytes()
            return self._blobs[file]

    def entry(self, i: int) -> Upload:
        """The file record `i` asks for."""
        return self.entries[self.order[i % len(self.order)]]

    def lookup(self, path: str) -> tuple[bytes, str] | None:
        """/FILE -> (its bytes, its Content-Type); None for anything else."""
        e = self.by_file.get(path.lstrip("/"))
        return None if e is None else (self.data(e.file), e.content_type)

    def decodable(self) -> list[bytes]:
        """The bytes of every file that is not broken, in manifest order."""
        return [self.data(e.file) for e in self.entries if KINDS[e.kind].dead_letter is None]

    def summary(self) -> dict[str, dict]:
        """Per kind: share of the files, number of files, format, stored WxH, files with
        an EXIF rotation, mean bytes, and what the pipeline must make of it."""
        out = {}
        for k in MIX:
            es = [e for e in self.entries if e.kind == k.name]
            if not es:
                continue
            size = _scaled(k.size, self.manifest["scale"]) if k.size else None
            out[k.name] = {
                "share": round(len(es) / len(self.entries), 4),
                "files": len(es),
                "format": k.fmt,
                "size": f"{size[0]}x{size[1]}" if size else None,
                "rotated": sum(e.orientation != 1 for e in es),
                "mean_bytes": round(sum(e.bytes for e in es) / len(es)),
                "outcome": k.dead_letter or "verdict",
            }
        return out


def mix_folder(
    root: Path | str = DEFAULT_ROOT, *, scale: float = 1.0, files: int = DEFAULT_FILES
) -> Path:
    """Where `load_mix` keeps this mix: uploads-v{GENERATOR_VERSION}, with the scale and
    the number of files in the name when they are not the defaults."""
    name = f"uploads-v{GENERATOR_VERSION}"
    if scale != 1.0 or files != DEFAULT_FILES:
        name += f"-x{scale:g}-n{files}"
    return Path(root) / name


def load_mix(
    root: Path | str = DEFAULT_ROOT,
    *,
    scale: float = 1.0,
    files: int = DEFAULT_FILES,
    seed: int = 0,
    log: Callable[[str], None] | None = None,
) -> UploadMix:
    """The mix under `root`, generated first when it is missing, a file differs from the
    manifest, or it was made by another generator version, seed, scale, number of files
    or table of kinds."""
    folder = mix_folder(root, scale=scale, files=files)
    kinds = json.loads(json.dumps([asdict(k) for k in MIX]))  # as the manifest holds them
    wanted = {
        "version": GENERATOR_VERSION,
        "seed": seed,
        "scale": scale,
        "files": files,
        "kinds": kinds,
    }
    manifest = _read_manifest(folder)
    if manifest is None or any(manifest.get(k) != v for k, v in wanted.items()):
        log = log or partial(say, "bench")
        log(f"generating the upload mix ({files} files, scale {scale:g}) in {folder}")
        t0 = time.perf_counter()
        manifest = generate(folder, scale=scale, files=files, seed=seed)
        log(f"upload mix generated in {time.perf_counter() - t0:.1f} s")
    return UploadMix(folder, manifest)


def _read_manifest(folder: Path) -> dict | None:
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
        if all((folder / e["file"]).stat().st_size == e["bytes"] for e in manifest["entries"]):
            return manifest
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return None


def file_counts(files: int) -> dict[str, int]:
    """Files per kind: the shares of `files`, largest remainders first, at least one of
    each kind (so a small mix has every kind; 100 files give the shares exactly)."""
    if files < len(MIX):
        raise ValueError(f"a mix needs at least {len(MIX)} files (one per kind), not {files}")
    exact = {k.name: k.share * files for k in MIX}
    counts = {n: max(1, int(v)) for n, v in exact.items()}
    by_remainder = sorted(exact, key=lambda n: (counts[n] - exact[n], MIX.index(KINDS[n])))
    i = 0
    while sum(counts.values()) < files:
        counts[by_remainder[i % len(by_remainder)]] += 1
        i += 1
    while sum(counts.values()) > files:  # the minimums pushed it over: take from the kinds
        over = [n for n in counts if counts[n] > 1]  # furthest above their share
        counts[max(over, key=lambda n: counts[n] - exact[n])] -= 1
    return counts


def generate(
    folder: Path, *, scale: float = 1.0, files: int = DEFAULT_FILES, seed: int = 0
) -> dict:
    """Write the mix into `folder` (replacing it whole) and return its manifest. Each file
    is seeded by (seed, kind, index), so the same arguments give the same bytes."""
    tmp = folder.with_name(f"{folder.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    entries = []
    counts = file_counts(files)
    for kind in MIX:
        for j in range(counts[kind.name]):
            rng = np.random.default_rng([seed, MIX.index(kind), j])
            data, size, orientation = _make(kind, j, rng, scale)
            name = f"{kind.name}-{j:03d}.{kind.ext}"
            (tmp / name).write_bytes(data)
            entries.append(
                Upload(
                    kind=kind.name,
                    file=name,
                    bytes=len(data),
                    width=size[0] if size else None,
                    height=size[1] if size else None,
                    orientation=orientation,
                    content_type=kind.content_type,
                    sha256=hashlib.sha256(data).hexdigest(),
                )
            )
    order = list(range(len(entries)))
    random.Random(seed).shuffle(order)
    manifest = {
        "version": GENERATOR_VERSION,
        "seed": seed,
        "scale": scale,
        "files": files,
        "kinds": [asdict(k) for k in MIX],
        "order": order,
        "entries": [asdict(e) for e in entries],
    }
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    return manifest


# -------------------------------------------------------------------- the pictures
def _scaled(size: tuple[int, int], scale: float) -> tuple[int, int]:
    return max(16, round(size[0] * scale)), max(16, round(size[1] * scale))


def _make(
    kind: Kind, j: int, rng: np.random.Generator, scale: float
) -> tuple[bytes, tuple[int, int] | None, int]:
    """(bytes, upright WxH or None, EXIF orientation) of file `j` of `kind`."""
    if kind.name == "broken_html":
        return _error_page(rng), None, 1
    if kind.name == "broken_empty":
        return b"", None, 1
    w, h = _scaled(kind.size, scale)
    buf = io.BytesIO()
    orientation = 1
    if kind.name == "screenshot_png":
        _screenshot(rng, w, h).save(buf, "PNG")
    elif kind.name == "animated_gif":
        frames = _animation(rng, w, h)
        frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    elif kind.fmt == "WEBP":
        _photo(rng, w, h).save(buf, "WEBP", quality=80)
    elif kind.fmt == "AVIF":
        _photo(rng, w, h).save(buf, "AVIF", quality=70, speed=9)
    else:  # JPEG: camera pictures (with EXIF), thumbnails, and the one to cut short
        camera = kind.name.startswith("camera") or kind.dead_letter is not None
        exif = Image.Exif()
        if camera:
            orientation = CAMERA_ORIENTATIONS[j % len(CAMERA_ORIENTATIONS)]
            exif[ExifTags.Base.Make] = "dmguard"
            exif[ExifTags.Base.Model] = "bench camera"
            exif[ExifTags.Base.DateTime] = "2024:05:01 12:00:00"
            exif[ExifTags.Base.Orientation] = orientation
        _photo(rng, w, h).save(buf, "JPEG", quality=90 if camera else 85, exif=exif)
        if kind.dead_letter:
            return buf.getvalue()[: len(buf.getvalue()) * 2 // 5], None, orientation
    upright = (h, w) if orientation in (5, 6, 7, 8) else (w, h)
    return buf.getvalue(), upright, orientation


def _octaves(
    rng: np.random.Generator, w: int, h: int, cells: tuple[int, ...], channels: int
) -> np.ndarray:
    """Smooth noise: random grids of `cells` across, upsampled bicubically and summed
    with amplitudes falling by octave (float32, h x w x channels, about unit scale)."""
    out = np.zeros((h, w, channels), np.float32)
    amp = 1.0
    for n in cells:
        grid = rng.standard_normal((max(2, n * h // w) + 2, n + 2, channels)).astype(np.float32)
        for c in range(channels):
            out[..., c] += amp * np.asarray(
                Image.fromarray(grid[..., c]).resize((w, h), Image.BICUBIC)
            )
        amp *= 0.55
    return out


def _photo(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    """A photo-like picture: a colour field and detail of several octaves, a brighter or
    darker top, shapes with edges in colours of the scene (built at half size, then
    upsampled), fine texture and sensor grain at full size."""
    lw, lh = max(8, w // 2), max(8, h // 2)
    field = 30 * _octaves(rng, lw, lh, (2, 4, 8), 3) + 45 * _octaves(
        rng, lw, lh, (4, 8, 16, 32, 64, 128), 1
    )
    field += rng.uniform(50, 190, 3).astype(np.float32)
    field += np.linspace(40, -40, lh, dtype=np.float32)[:, None, None] * float(rng.uniform(-1, 1))
    img = Image.fromarray(field.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img, "RGBA")
    for _ in range(int(rng.integers(15, 40))):
        cx, cy = rng.uniform(0, lw), rng.uniform(0.3 * lh, lh)
        n = int(rng.integers(3, 9))
        angles = np.sort(rng.uniform(0, 2 * np.pi, n))
        radii = rng.uniform(0.02, 0.15) * lw * rng.uniform(0.5, 1.0, n)
        points = [
            (float(cx + r * np.cos(a)), float(cy + r * np.sin(a)))
            for r, a in zip(radii, angles, strict=True)
        ]
        colour = field[int(min(cy, lh - 1)), int(min(cx, lw - 1))] * rng.uniform(0.4, 1.3)
        draw.polygon(
            points, fill=(*(int(v) for v in colour.clip(0, 255)), int(rng.integers(140, 256)))
        )
    img = img.filter(ImageFilter.GaussianBlur(0.7))
    texture = rng.standard_normal((lh // 3 + 2, lw // 3 + 2)).astype(np.float32)
    texture = np.asarray(Image.fromarray(texture).resize((lw, lh), Image.BILINEAR))
    half = np.asarray(img).astype(np.int16) + (texture * 9).astype(np.int16)[..., None]
    img = Image.fromarray(half.clip(0, 255).astype(np.uint8)).resize((w, h), Image.BICUBIC)
    grain = rng.integers(-7, 8, size=(h, w, 1), dtype=np.int16)
    return Image.fromarray((np.asarray(img) + grain).clip(0, 255).astype(np.uint8))


def _screenshot(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    """A UI-like screen: a title bar, a sidebar of items, cards of text lines on flat
    panels (light or dark theme), some cards with a picture."""
    bg = [(250, 250, 250), (32, 33, 36), (243, 244, 246)][int(rng.integers(3))]
    dark = sum(bg) < 300
    fg = (230, 230, 230) if dark else (30, 30, 30)
    shade = tuple(max(0, c - 12) for c in bg)
    card_fill = tuple(min(255, c + (12 if dark else 5)) for c in bg)
    img = Image.new("RGB", (w, h), bg)
    draw = ImageDraw.Draw(img)
    bar, side, fs = max(4, h // 18), w // 6, max(6, h // 70)
    draw.rectangle([0, 0, w, bar], fill=tuple(int(v) for v in rng.integers(30, 220, 3)))
    draw.rectangle([0, bar, side, h], fill=shade)
    font = ImageFont.load_default(size=fs)

    def words(n: int, letters: str = string.ascii_lowercase) -> str:
        return " ".join(
            "".join(rng.choice(list(letters), int(rng.integers(2, 10)))) for _ in range(n)
        )

    for y in range(bar + fs, h - fs, int(fs * 2.2)):
        draw.text((fs, y), words(int(rng.integers(1, 3)), string.ascii_letters), fill=fg, font=font)
    x0, y = side + 2 * fs, bar + 2 * fs
    while y < h - 4 * fs:
        ch = int(rng.integers(6, 16)) * fs
        draw.rounded_rectangle(
            [x0, y, w - 2 * fs, min(h - fs, y + ch)],
            radius=max(1, fs // 2),
            fill=card_fill,
            outline=shade,
        )
        tx = x0 + fs
        if rng.random() < 0.4:  # a picture in the card
            pw, ph = int(ch * 1.3), max(8, ch - 2 * fs)
            img.paste(_photo(rng, pw, ph), (x0 + fs, y + fs))
            tx += pw + fs
        for ty in range(y + fs, y + ch - 2 * fs, int(fs * 1.6)):
            draw.text((tx, ty), words(int(rng.integers(4, 18))), fill=fg, font=font)
        y += ch + 2 * fs
    return img


def _animation(rng: np.random.Generator, w: int, h: int, frames: int = 6) -> list[Image.Image]:
    """Frames of a slow pan across a photo-like picture (GIF: a palette per frame)."""
    step = max(1, w // 40)
    scene = _photo(rng, w + step * frames, h)
    return [scene.crop((i * step, 0, i * step + w, h)) for i in range(frames)]


def _error_page(rng: np.random.Generator) -> bytes:
    """What a CDN answers with status 200 when the origin failed: an HTML page."""
    ref = "".join(rng.choice(list("0123456789abcdef"), 16))
    return (
        '<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>503 Service Unavailable'
        "</title><style>body{font-family:sans-serif;margin:4em}h1{color:#b00}</style></head>\n"
        "<body><h1>Service Unavailable</h1><p>The server is temporarily unable to service "
        "your request due to maintenance downtime or capacity problems. Please try again "
        f"later.</p><hr><p>Reference #{ref}</p></body></html>\n"
    ).encode()


# -------------------------------------------------------------------- the server
class _Paced(RouteHandler):
    """Each reply after the server's latency, its body at most at its bandwidth (the
    class attributes, set per server by UploadServer), every byte counted."""

    CHUNK = 64 * 1024
    latency_s: float = 0.0
    bytes_per_s: float = 0.0
    count: Callable[[int], None]

    def reply(self, status: int, body: bytes, content_type: str) -> None:
        if self.latency_s > 0:
            time.sleep(self.latency_s)
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            for chunk in self._paced(body):
                self.count(len(chunk))  # first: a client that has it all sees it counted
                self.wfile.write(chunk)
        except OSError:  # the client gave up (its own timeout): nothing to tell it
            self.close_connection = True

    def _paced(self, body: bytes) -> Iterator[bytes]:
        """`body` in chunks, each released no earlier than the bandwidth allows for the
        bytes up to its end: the last byte leaves at least len/bandwidth after the first."""
        rate = self.bytes_per_s
        if rate <= 0:
            yield body
            return
        start = time.monotonic()
        for offset in range(0, len(body), self.CHUNK):
            chunk = body[offset : offset + self.CHUNK]
            delay = start + (offset + len(chunk)) / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            yield chunk


class UploadServer(HttpServer):
    """GET PATH answered from `lookup(PATH) -> (body, Content-Type)` (else 404) on
    127.0.0.1, after `latency_ms`, at most `bandwidth_mbps` (10^6 bits/s) per response
    (0: unlimited); keep-alive, one thread per connection. `bytes_sent` counts body bytes."""

    def __init__(
        self,
        lookup: Callable[[str], tuple[bytes, str] | None],
        *,
        latency_ms: float = DEFAULT_LATENCY_MS,
        bandwidth_mbps: float = DEFAULT_BANDWIDTH_MBPS,
    ) -> None:
        self._lock = threading.Lock()
        self.bytes_sent = 0
        paced = type(
            "PacedHandler",
            (_Paced,),
            {
                "latency_s": latency_ms / 1000,
                "bytes_per_s": bandwidth_mbps * 1e6 / 8,
                "count": staticmethod(self._count),
            },
        )
        super().__init__(
            fallback=found(lookup), keep_alive=True, name="bench-uploads", handler=paced
        )

    def _count(self, n: int) -> None:
        with self._lock:
            self.bytes_sent += n
