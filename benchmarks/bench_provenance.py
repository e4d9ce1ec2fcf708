"""What reading provenance costs per image, on `dmguard bench`'s upload mix.

    python -m benchmarks.bench_provenance [--files 100] [--rounds 5] [--json]

For every file of the mix (benchmarks.bench_uploads: camera JPEGs, PNG screenshots, WebP,
AVIF, thumbnails, GIFs, broken uploads, in the mix's own order and shares) it times
`services.provenance.read_provenance` on the bytes, and `services.images.decode` at the
encoder's 224 px for the files that decode: the two steps a fetch thread runs one after
the other. The figure that matters is provenance's time as a share of the fetch thread's
decode time, and of the per-image time of the whole pipeline at the throughput
`dmguard bench --mix uploads` measured (`--pipeline-ips`, the images/s to compare with).

Then the same for the worst case the mix does not hold: a 12 MP camera JPEG with XMP, EXIF
and a C2PA manifest (validated: the whole file is hashed), when c2pa-python and openssl are
there. Each time is the best of `--rounds` runs, so another process on the machine does
not decide it.

Inside `dmguard bench` itself the same cost shows as the "provenance" share of
`stage_share` (dmguard_stage_seconds{stage="provenance"}, observed by every worker).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from benchmarks.bench_uploads import KINDS, load_mix
from services.errors import InputError
from services.images import decode
from services.provenance import ProvenanceSettings, read_provenance


def best_of(rounds: int, fn) -> float:
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def measure_mix(files: int, rounds: int) -> dict:
    mix = load_mix(files=files)
    per_kind: dict[str, list[tuple[float, float | None]]] = defaultdict(list)
    settings = ProvenanceSettings()
    read_provenance(b"\xff\xd8\xff", settings)  # imports, once
    for entry in mix.entries:
        data = mix.data(entry.file)
        t_prov = best_of(rounds, lambda d=data: read_provenance(d, settings))
        t_decode = None
        if KINDS[entry.kind].dead_letter is None:
            try:
                t_decode = best_of(rounds, lambda d=data: decode(d, target_size=224))
            except InputError:
                pass
        per_kind[entry.kind].append((t_prov, t_decode))
    # Weighted as the records cycle over the files (the mix's order).
    prov = [per_file(mix, i, per_kind)[0] for i in range(len(mix.order))]
    dec = [per_file(mix, i, per_kind)[1] or 0.0 for i in range(len(mix.order))]
    return {
        "files": len(mix.entries),
        "provenance_ms_mean": round(1000 * sum(prov) / len(prov), 4),
        "provenance_ms_max": round(1000 * max(prov), 4),
        "decode_ms_mean": round(1000 * sum(dec) / len(dec), 3),
        "provenance_share_of_decode": round(sum(prov) / sum(dec), 5),
        "per_kind_ms": {
            k: {
                "provenance": round(1000 * sum(p for p, _ in v) / len(v), 4),
                "decode": round(1000 * sum(d or 0 for _, d in v) / len(v), 3),
            }
            for k, v in per_kind.items()
        },
    }


def per_file(mix, i: int, per_kind) -> tuple[float, float | None]:
    entry = mix.entry(i)
    kind_files = [e for e in mix.entries if e.kind == entry.kind]
    return per_kind[entry.kind][kind_files.index(entry)]


def measure_c2pa_photo(rounds: int) -> dict | None:
    """A 12 MP camera JPEG with XMP, EXIF and a validated C2PA manifest."""
    try:
        import c2pa  # noqa: F401

        from tests import markers  # the CA and signing helpers the tests use
        from tests.images import encode, photo
    except ImportError:
        return None
    if not markers.openssl_available():
        return None
    with tempfile.TemporaryDirectory() as tmp:
        ca = markers.make_ca(Path(tmp) / "ca", "bench")
        plain = encode(photo(4000, 3000), "JPEG", quality=90, xmp=markers.xmp("digitalCapture"))
        signed = markers.c2pa_signed(plain, "image/jpeg", ca, source_type="digitalCapture")
        settings = ProvenanceSettings(trust_anchors=ca["ca"].read_text())
        t_prov = best_of(rounds, lambda: read_provenance(signed, settings))
        t_decode = best_of(rounds, lambda: decode(signed, target_size=224))
        found = read_provenance(signed, settings).evidence
    return {
        "bytes": len(signed),
        "provenance_ms": round(1000 * t_prov, 3),
        "decode_ms": round(1000 * t_decode, 3),
        "provenance_share_of_decode": round(t_prov / t_decode, 4),
        "evidence": found,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.bench_provenance", description=__doc__)
    ap.add_argument("--files", type=int, default=100, help="files in the upload mix")
    ap.add_argument("--rounds", type=int, default=5, help="runs per file; the best counts")
    ap.add_argument(
        "--pipeline-ips",
        type=float,
        default=None,
        help="images/s of `dmguard bench --mix uploads` on this machine: the share of each "
        "image's pipeline time that provenance takes, with one fetch thread per core",
    )
    ap.add_argument("--json", action="store_true", help="one JSON object instead of a table")
    args = ap.parse_args(argv)
    result = {"mix": measure_mix(args.files, args.rounds), "c2pa_photo": None}
    result["c2pa_photo"] = measure_c2pa_photo(args.rounds)
    if args.pipeline_ips:
        per_image_ms = 1000 / args.pipeline_ips
        result["share_of_pipeline_time"] = round(
            result["mix"]["provenance_ms_mean"] / per_image_ms, 5
        )
    if args.json:
        print(json.dumps(result))
        return 0
    m = result["mix"]
    print(f"upload mix, {m['files']} files, weighted as records cycle over them:")
    print(f"  provenance  {m['provenance_ms_mean']:.4f} ms/image (max {m['provenance_ms_max']} ms)")
    print(f"  decode      {m['decode_ms_mean']:.3f} ms/image")
    print(f"  provenance / decode = {100 * m['provenance_share_of_decode']:.3f}%")
    for kind, v in m["per_kind_ms"].items():
        print(f"    {kind:<12} provenance {v['provenance']:.4f} ms   decode {v['decode']:.3f} ms")
    if "share_of_pipeline_time" in result:
        print(
            f"  share of the pipeline's per-image time: {100 * result['share_of_pipeline_time']:.3f}%"
        )
    c = result["c2pa_photo"]
    if c:
        print(
            f"12 MP JPEG with a C2PA manifest ({c['bytes']} bytes): provenance "
            f"{c['provenance_ms']} ms, decode {c['decode_ms']} ms "
            f"({100 * c['provenance_share_of_decode']:.1f}%)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
