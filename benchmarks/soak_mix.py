"""`dmguard soak`'s records: good images of a few sizes and formats, and about 5% bad
records of five kinds (malformed JSON, a non-http URL, a 404, a truncated JPEG, bytes that
are no image), each with the key its output will have."""

from __future__ import annotations

import io
import json
import random

from PIL import Image

from benchmarks.harness import bench_jpegs

BAD_KINDS = ("malformed_json", "bad_scheme", "not_found", "truncated_jpeg", "not_an_image")


def _test_images() -> dict[str, bytes]:
    """Good images of a few sizes and formats, by path."""
    images = {}
    for w, h in ((320, 240), (640, 480), (1024, 768), (1600, 1200)):
        for i, blob in enumerate(bench_jpegs(4, (w, h))):
            images[f"/img/{w}x{h}-{i}.jpg"] = blob
    base = Image.open(io.BytesIO(images["/img/640x480-1.jpg"]))
    for fmt, ext in (("PNG", "png"), ("WEBP", "webp")):
        buf = io.BytesIO()
        base.save(buf, fmt)
        images[f"/img/640x480.{ext}"] = buf.getvalue()
    return images


class RecordMix:
    """The soak's records: unique ids, ~`bad_fraction` of them bad, spread over BAD_KINDS;
    `record(prefix, i)` gives the Kafka key, the value and the key its output will have
    (`services.outputs.output_key`: the id, or for malformed JSON the text itself)."""

    def __init__(self, base_url: str, *, bad_fraction: float = 0.05, seed: int = 0) -> None:
        self.base_url = base_url
        self.bad_fraction = bad_fraction
        self.rng = random.Random(seed)
        self.images = _test_images()
        self.paths = sorted(self.images)
        truncated = self.images["/img/640x480-0.jpg"]
        self.routes = {
            **self.images,
            "/bad/truncated.jpg": truncated[: len(truncated) // 2],
            "/bad/noise.jpg": random.Random(seed).randbytes(20_000),
        }
        self.kinds: dict[str, int] = {}

    def kind(self) -> str:
        if self.rng.random() < self.bad_fraction:
            return BAD_KINDS[self.rng.randrange(len(BAD_KINDS))]
        return "good"

    def record(self, prefix: str, i: int) -> tuple[bytes | None, bytes, str]:
        kind = self.kind()
        self.kinds[kind] = self.kinds.get(kind, 0) + 1
        rid = f"{prefix}-{i}"
        if kind == "malformed_json":
            text = f'{{"id": "{rid}", "url": '
            return None, text.encode(), f"raw:{text}"
        url = {
            "good": f"{self.base_url}{self.paths[self.rng.randrange(len(self.paths))]}?{rid}",
            "bad_scheme": f"ftp://example.com/{rid}.jpg",
            "not_found": f"{self.base_url}/missing/{rid}.jpg",
            "truncated_jpeg": f"{self.base_url}/bad/truncated.jpg?{rid}",
            "not_an_image": f"{self.base_url}/bad/noise.jpg?{rid}",
        }[kind]
        return rid.encode(), json.dumps({"id": rid, "url": url}).encode(), rid
