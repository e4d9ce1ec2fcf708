"""Which way from image bytes to the encoder's input is fastest, and still right?

Every method turns the same bytes into the encoder's (3, S, S) float32 input;
the reference is Pillow's full decode (`services.images.decode(data,
target_size=None)`) then the encoder's `Preprocess`, which is what training saw.
For each format (`services.images.sniff`) and method, `compare_decoders`
reports the time per image (single thread: the median over repeats of each
image, averaged over the format's images; wall and CPU time), the speed-up over
the reference, and the agreement: the cosine between the encoder's embedding of
the method's input and of the reference's, min and mean over the images (a
method passes at min >= `PASS_COSINE`). Refusals are compared too: a method
that fails an image the reference decodes, or decodes one the reference refuses
(a truncated file, say), is counted, and either fails it.

The methods (`METHODS`):

  reference       Pillow, full decode, then Preprocess (bicubic from full size)
  noise_floor     not a decoder: the reference's input plus uniform +-0.5 pixel-level
                  noise, the calibration of the agreement column (an encoder that moves
                  much under invisible noise cannot tell a good decoder from the reference)
  pillow_draft    decode(target_size=S, reducing_gap=None): JPEG draft mode only
                  (libjpeg-turbo DCT scaling to the smallest 1/2, 1/4, 1/8 that keeps
                  the short side >= S), the other formats at full size
  pillow_reduce   today's path, decode(target_size=S): pillow_draft, then
                  Image.reduce(k) (box filter) to a short side >= `REDUCING_GAP` * S
                  before the bicubic resize (what Pillow's thumbnail/resize(reducing_gap=)
                  do); changes PNG, WebP, AVIF and the largest JPEGs
  simplejpeg      JPEG only: simplejpeg (libjpeg-turbo) scaled decode, short side >= S
  turbojpeg       JPEG only: PyTurboJPEG scaled decode (1/8 steps), short side >= S;
                  needs libturbojpeg (`DMGUARD_TURBOJPEG_LIB`, or the Debian package
                  unpacked under .cache/turbojpeg/root, or the system's)
  vips_shrink     libvips (pyvips): the sniffed format's own loader with shrink-on-load
                  (JPEG shrink, WebP scale; full decode for the others), autorot,
                  sRGB, alpha on white, then Preprocess (bicubic)
  vips_thumbnail  libvips thumbnail_buffer straight to S x S, centre crop (shrink-on-load
                  then lanczos3, all in libvips), then Preprocess (a no-op resize)

The JPEG-only and libvips methods keep `decode`'s guards as far as this file
could: the header's size is checked against the same caps before any pixel,
EXIF orientation is applied, alpha goes on white, and CMYK JPEGs (which
libjpeg-turbo cannot turn into RGB) fall back to Pillow. What each still lacks
to stand behind `decode` is in its `gaps`.

Run standalone: `python -m benchmarks.bench_decode --images DIR --encoder SPEC`
(DIR: a folder of image files; `--images generated` makes a few large ones).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import statistics
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image

from benchmarks.decode_methods import METHODS, Method, Preprocessor
from services.config import offline_weights
from services.errors import NotAnImageError
from services.images import sniff

PASS_COSINE = 0.99
_ENCODE_BATCH = 8


# ------------------------------------------------------------------ the measurement
@dataclass
class _Cell:
    """One method on one format's images."""

    ms: list[float] = field(default_factory=list)  # per image: median wall ms over repeats
    cpu_ms: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # failed where the reference decoded
    accepted_refused: int = 0  # decoded where the reference refused
    refused: int = 0  # refused where the reference refused too


@contextlib.contextmanager
def _single_threaded() -> Iterator[None]:
    """Decoders that thread by default (Pillow's AVIF plugin) on one thread."""
    try:
        from PIL import AvifImagePlugin
    except ImportError:  # a Pillow without AVIF
        yield
        return
    before = AvifImagePlugin.DEFAULT_MAX_THREADS
    AvifImagePlugin.DEFAULT_MAX_THREADS = 1
    try:
        yield
    finally:
        AvifImagePlugin.DEFAULT_MAX_THREADS = before


def _kind(data: bytes) -> str:
    try:
        return sniff(data)
    except NotAnImageError:
        return "not_an_image"


def _run_once(method: Method, data: bytes, preprocess: Preprocessor):
    """(input or None, error or None, wall s, cpu s)."""
    wall, cpu = time.perf_counter(), time.process_time()
    try:
        out = method.run(data, preprocess)
        err = None
    except Exception as exc:  # any decoder's failure is a result here, not a crash
        out, err = None, f"{type(exc).__name__}: {str(exc)[:120]}"
    return out, err, time.perf_counter() - wall, time.process_time() - cpu


def _embed(encoder, inputs: list[np.ndarray]) -> np.ndarray:
    rows = [
        encoder.encode_images(np.stack(inputs[i : i + _ENCODE_BATCH]))
        for i in range(0, len(inputs), _ENCODE_BATCH)
    ]
    out = np.concatenate(rows).astype(np.float64)
    return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine of two (N, D) embedding arrays."""
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return np.sum(a * b, axis=1)


def compare_decoders(
    images: list[tuple[str, bytes]],
    encoder_spec: str,
    repeats: int = 3,
    *,
    methods: Sequence[Method] = METHODS,
) -> dict:
    """Time every method on every image and measure its agreement with the reference.

    Args:
        images: (name, bytes); the format (kind) of each is `sniff`'s, "not_an_image"
            when it has none. Images the reference refuses are only checked for
            refusal by the others.
        encoder_spec: the encoder whose input is made and whose embeddings are
            compared (load_encoder(spec, device="cpu", threads=1)).
        repeats: timed runs of each method on each image (after one untimed warm-up
            of each method on each format).
        methods: the methods; the first is the reference.

    Returns a JSON-able dict: "kinds" -> kind -> "methods" -> name -> {"ms", "cpu_ms",
    "speedup", "cos_min", "cos_mean", "pixel_mae", "images", "errors",
    "accepted_refused", "passes"} for the methods that ran, {"status":
    "unavailable"} for those that could not, and nothing for formats a method does
    not take; "methods" -> name -> {"available", "reason", "description", "gaps"}.
    """
    from training.model.encoders import load_encoder  # torch: only when a comparison runs

    encoder = load_encoder(encoder_spec, device="cpu", threads=1)
    preprocess = encoder.preprocess
    reasons = {m.name: m.unavailable() for m in methods}
    runnable = [m for m in methods if reasons[m.name] is None]
    if not runnable or runnable[0] is not methods[0]:
        raise RuntimeError(f"the reference method {methods[0].name!r} cannot run: {reasons}")
    reference = methods[0]
    by_kind: dict[str, list[tuple[str, bytes]]] = {}
    for name, data in images:
        by_kind.setdefault(_kind(data), []).append((name, data))

    def takes(method: Method, kind: str) -> bool:
        return method.formats is None or kind in method.formats

    result: dict = {
        "encoder": encoder_spec,
        "image_size": int(preprocess.image_size),
        "repeats": repeats,
        "threads": 1,
        "pass_cosine": PASS_COSINE,
        "methods": {
            m.name: {
                "available": reasons[m.name] is None,
                "reason": reasons[m.name],
                "description": m.description,
                "gaps": m.gaps,
            }
            for m in methods
        },
        "kinds": {},
    }
    with _single_threaded():
        for kind, group in by_kind.items():
            cells = {m.name: _Cell() for m in runnable if takes(m, kind)}
            for m in runnable:  # warm-up: first calls load libraries and build tables
                if m.name in cells:
                    _run_once(m, group[0][1], preprocess)
            inputs: dict[str, list[np.ndarray | None]] = {n: [] for n in cells}
            for _, data in group:
                walls: dict[str, list[float]] = {n: [] for n in cells}
                cpus: dict[str, list[float]] = {n: [] for n in cells}
                outs: dict[str, np.ndarray | None] = {}
                errs: dict[str, str | None] = {}
                for _ in range(max(1, repeats)):  # interleaved, so a load spike hits all alike
                    for m in runnable:
                        if m.name in cells:
                            out, err, wall, cpu = _run_once(m, data, preprocess)
                            walls[m.name].append(wall * 1e3)
                            cpus[m.name].append(cpu * 1e3)
                            outs[m.name], errs[m.name] = out, err
                ref_ok = outs[reference.name] is not None
                for n, cell in cells.items():
                    if ref_ok:
                        cell.ms.append(statistics.median(walls[n]))
                        cell.cpu_ms.append(statistics.median(cpus[n]))
                        if outs[n] is None:
                            cell.errors.append(str(errs[n]))
                    elif outs[n] is not None:
                        cell.accepted_refused += 1
                    else:
                        cell.refused += 1
                    inputs[n].append(outs[n] if ref_ok else None)
            result["kinds"][kind] = _summarise(
                kind, group, cells, inputs, reference.name, encoder, methods, reasons, takes
            )
    return result


def _summarise(kind, group, cells, inputs, ref_name, encoder, methods, reasons, takes) -> dict:
    ref_inputs = inputs[ref_name]
    decoded = [i for i, x in enumerate(ref_inputs) if x is not None]
    ref_emb = _embed(encoder, [ref_inputs[i] for i in decoded]) if decoded else None
    ref_ms = float(np.mean(cells[ref_name].ms)) if decoded else None
    out: dict = {"images": len(group), "decoded_by_reference": len(decoded), "methods": {}}
    for m in methods:
        if not takes(m, kind):
            continue
        if reasons[m.name] is not None:
            out["methods"][m.name] = {"status": "unavailable", "reason": reasons[m.name]}
            continue
        cell = cells[m.name]
        both = [i for i in decoded if inputs[m.name][i] is not None]
        entry: dict = {
            "status": "ran",
            "images": len(decoded),
            "errors": len(cell.errors),
            "error_examples": sorted(set(cell.errors))[:3],
            "accepted_refused": cell.accepted_refused,
            "ms": None,
            "cpu_ms": None,
            "speedup": None,
            "cos_min": None,
            "cos_mean": None,
            "pixel_mae": None,
        }
        if decoded:
            ms = float(np.mean(cell.ms))
            entry.update(ms=round(ms, 3), cpu_ms=round(float(np.mean(cell.cpu_ms)), 3))
            entry["speedup"] = round(ref_ms / ms, 3) if ms > 0 and ref_ms else None
        if both and ref_emb is not None:
            mine = _embed(encoder, [inputs[m.name][i] for i in both])
            cos = cosines(mine, ref_emb[[decoded.index(i) for i in both]])
            std = np.asarray(encoder.preprocess.std, np.float32)[:, None, None]
            mae = [  # back to 0..255 pixel units
                float(np.mean(np.abs((inputs[m.name][i] - ref_inputs[i]) * std)) * 255.0)
                for i in both
            ]
            entry.update(
                cos_min=round(float(np.min(cos)), 5),
                cos_mean=round(float(np.mean(cos)), 5),
                pixel_mae=round(float(np.mean(mae)), 3),
            )
        agrees = entry["cos_min"] is not None and entry["cos_min"] >= PASS_COSINE
        entry["passes"] = bool(
            (agrees or not decoded) and entry["errors"] == 0 and entry["accepted_refused"] == 0
        )
        out["methods"][m.name] = entry
    return out


def format_table(result: dict) -> str:
    """The result as a markdown table, one row per format and method."""
    lines = [
        f"Encoder `{result['encoder']}` ({result['image_size']} px input), one thread, "
        f"median of {result['repeats']} runs per image; agreement: cosine of the "
        f"embeddings with the reference's (passes at min >= {result['pass_cosine']}); "
        "noise_floor is the reference plus invisible noise: the agreement any "
        "pipeline whose pixels differ at all can expect.",
        "",
        "| format | images | method | ms/image | CPU ms | speed-up | cos min | cos mean "
        "| pixel MAE | errors | passes |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]

    def num(value, fmt: str) -> str:
        return "-" if value is None else format(value, fmt)

    for kind, info in result["kinds"].items():
        for name, e in info["methods"].items():
            count = f"{info['decoded_by_reference']}/{info['images']}"
            if e["status"] != "ran":
                lines.append(f"| {kind} | {count} | {name} | unavailable | | | | | | | |")
                continue
            if not info["decoded_by_reference"]:  # only refusals to compare
                verdict = "no" if e["accepted_refused"] else "yes"
                lines.append(
                    f"| {kind} | {count} | {name} | refused by the reference | | | | | "
                    f"| {e['accepted_refused']} decoded | {verdict} |"
                )
                continue
            errors = str(e["errors"])
            if e["accepted_refused"]:
                errors += f" (+{e['accepted_refused']} decoded that the reference refused)"
            lines.append(
                f"| {kind} | {count} | {name} | {num(e['ms'], '.1f')} | {num(e['cpu_ms'], '.1f')} "
                f"| {num(e['speedup'], '.2f')}x | {num(e['cos_min'], '.4f')} "
                f"| {num(e['cos_mean'], '.4f')} | {num(e['pixel_mae'], '.2f')} | {errors} "
                f"| {'yes' if e['passes'] else 'no'} |"
            )
    missing = [
        f"- `{n}`: unavailable: {m['reason']}"
        for n, m in result["methods"].items()
        if not m["available"]
    ]
    if missing:
        lines += ["", *missing]
    return "\n".join(lines)


# ------------------------------------------------------------------ images and the command
def generate_images(seed: int = 0) -> list[tuple[str, bytes]]:
    """A few large uploads: 4 camera JPEGs (12 MP, EXIF-rotated), 2 1080p PNG screenshots,
    2 WebP and 2 AVIF photos (3 MP), seeded."""
    rng = np.random.default_rng(seed)
    out: list[tuple[str, bytes]] = []
    for i in range(4):
        img = _photo(rng, 4032, 3024)
        exif = Image.Exif()
        exif[ExifTags.Base.Orientation] = (1, 6, 8, 3)[i]
        out.append((f"camera{i}.jpg", _save(img, "JPEG", quality=92, exif=exif.tobytes())))
    for i in range(2):
        out.append((f"screen{i}.png", _save(_screenshot(rng, 1920, 1080), "PNG")))
    for i in range(2):
        out.append((f"photo{i}.webp", _save(_photo(rng, 2048, 1536), "WEBP", quality=85)))
    for i in range(2):
        out.append((f"photo{i}.avif", _save(_photo(rng, 2048, 1536), "AVIF", quality=70, speed=8)))
    return out


def _photo(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    """Smooth shapes at several scales plus sensor-like grain: compresses like a photo."""
    acc = np.zeros((h, w, 3), np.float32)
    for cells, weight in ((6, 90.0), (40, 40.0), (300, 18.0)):
        small = rng.normal(0, 1, size=(max(2, cells * h // w), cells, 3)).astype(np.float32)
        layer = Image.fromarray(((small - small.min()) / np.ptp(small) * 255).astype(np.uint8))
        acc += (np.asarray(layer.resize((w, h), Image.BICUBIC), np.float32) - 128) * weight / 128
    acc += rng.normal(0, 4, size=acc.shape).astype(np.float32)
    return Image.fromarray(np.clip(acc + 128, 0, 255).astype(np.uint8))


def _screenshot(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    """Flat panels and rows of 'text' (sharp 1-2 px strokes)."""
    arr = np.full((h, w, 3), 245, np.uint8)
    for _ in range(12):
        x, y = int(rng.integers(0, w - 200)), int(rng.integers(0, h - 100))
        arr[y : y + int(rng.integers(50, 400)), x : x + int(rng.integers(100, 800))] = rng.integers(
            0, 256, 3
        )
    for row in range(40, h - 20, 22):
        strokes = rng.random((12, w)) < 0.25
        strokes[:, : int(rng.integers(40, 200))] = False
        strokes[:, int(rng.integers(w // 2, w)) :] = False
        arr[row : row + 12][strokes] = (30, 30, 30)
    return Image.fromarray(arr)


def _save(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def read_folder(folder: str | Path) -> list[tuple[str, bytes]]:
    """Every file of `folder` (not recursive), by name."""
    paths = sorted(p for p in Path(folder).iterdir() if p.is_file())
    return [(p.name, p.read_bytes()) for p in paths]


def main(argv: Sequence[str] | None = None) -> int:
    weights = offline_weights()
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_decode",
        description="Time ways of decoding images to the encoder's input, against the reference.",
    )
    p.add_argument(
        "--images",
        default="generated",
        help="a folder of image files, or 'generated' for a few large ones (default)",
    )
    p.add_argument(
        "--encoder",
        default=f"onnx:{weights}" if weights else "open_clip:dmguard-tiny",
        help="encoder spec (default: %(default)s)",
    )
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", action="store_true", help="print one JSON object, not the table")
    args = p.parse_args(argv)
    images = generate_images() if args.images == "generated" else read_folder(args.images)
    result = compare_decoders(images, args.encoder, args.repeats)
    print(json.dumps(result) if args.json else format_table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
