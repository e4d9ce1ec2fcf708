"""`dmguard soak`'s curves: soak.png (panels of the rows against the minute, drawn with
Pillow) and the series soak.txt shows as text (benchmarks/charts.py draws those)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

PLOT_SIZE = (1000, 720)
_PANELS = (
    (
        "worker RSS (MiB)",
        (
            ("worker_rss_sum_mib", "sum", (31, 119, 180)),
            ("worker_rss_max_mib", "max of one", (255, 127, 14)),
        ),
    ),
    ("consumer lag (records)", (("lag", "summed over partitions", (31, 119, 180)),)),
    ("p99 end-to-end latency (ms)", (("p99_ms", "p99 of the minute", (31, 119, 180)),)),
    (
        "throughput (records/s)",
        (("outputs_per_s", "outputs", (31, 119, 180)), ("sent_per_s", "sent", (150, 150, 150))),
    ),
)
# The curves as text (soak.txt, and printed at the end): what docs/benchmarks.md quotes.
TEXT_SERIES = (
    ("sent_per_s", "sent/s"),
    ("outputs_per_s", "outputs/s"),
    ("workers", "workers"),
    ("lag", "lag"),
    ("p99_ms", "p99 ms"),
    ("worker_rss_sum_mib", "worker RSS MiB"),
)
# The step response of `--workers auto`: how many workers, against what came in.
STEP_PANELS = (
    ("workers", (("workers", "workers", (31, 119, 180)),)),
    _PANELS[1],
    _PANELS[3],
    _PANELS[2],
)


def font(size: int):
    """Pillow's default font at `size` where this Pillow takes one."""
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without the size argument
        return ImageFont.load_default()


def _num(v: float) -> str:
    return f"{v:.0f}" if abs(v) >= 100 else f"{v:.3g}"


def write_plot(
    rows: Sequence[Mapping[str, Any]],
    path: Path,
    title: str = "",
    panels=None,
    x_label: str = "minute",
) -> None:
    """Four panels, 2 x 2: worker RSS, lag, p99 latency and throughput against the minute.
    Each y axis runs from 0 to a little above the largest value, with the smallest and
    largest values marked; the x axis from the first to the last row."""
    img = Image.new("RGB", PLOT_SIZE, "white")
    draw = ImageDraw.Draw(img)
    small, big = font(12), font(15)
    draw.text((10, 6), title, fill="black", font=big)
    top, pw, ph = 30, PLOT_SIZE[0] // 2, (PLOT_SIZE[1] - 30) // 2
    for k, (name, series) in enumerate(panels or _PANELS):
        x0, y0 = (k % 2) * pw, top + (k // 2) * ph
        _panel(draw, (x0, y0, x0 + pw, y0 + ph), name, series, rows, small, big, x_label)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, "PNG")


def _panel(draw, box, name, series, rows, small, big, x_label: str = "minute") -> None:
    left, top, right, bottom = box[0] + 70, box[1] + 28, box[2] - 30, box[3] - 50
    draw.text((box[0] + 70, box[1] + 6), name, fill="black", font=big)
    draw.line([(left, top), (left, bottom), (right, bottom)], fill="black", width=1)
    xs = [r["minute"] for r in rows]
    values = [r[key] for key, _, _ in series for r in rows if r[key] is not None]
    if not xs or not values:
        draw.text((left + 10, top + 10), "no data", fill="grey", font=small)
        return
    lo, hi = min(values), max(values)
    y_top = hi * 1.1 if hi > 0 else 1.0
    x_lo, x_hi = min(xs), max(xs)

    def px(x: float) -> float:
        return left + (right - left) * ((x - x_lo) / (x_hi - x_lo) if x_hi > x_lo else 0.5)

    def py(y: float) -> float:
        return bottom - (bottom - top) * max(0.0, y) / y_top

    # y ticks: 0, the largest and the smallest value (dotted guides at those two); a
    # label too close to one already drawn is left out
    drawn: list[float] = []
    for v in (0.0, hi, lo):
        y = py(v)
        if any(abs(y - other) < 16 for other in drawn):
            continue
        drawn.append(y)
        draw.line([(left - 5, y), (left, y)], fill="black")
        if v:
            for x in range(int(left), int(right), 6):
                draw.point((x, y), fill=(190, 190, 190))
        label = _num(v)
        w = draw.textlength(label, font=small)
        draw.text((left - 8 - w, y - 7), label, fill="black", font=small)
    # x ticks: the first and the last row
    for x in sorted({x_lo, x_hi}):
        draw.line([(px(x), bottom), (px(x), bottom + 5)], fill="black")
        label = f"{x:g}"
        w = draw.textlength(label, font=small)
        draw.text((px(x) - w / 2, bottom + 7), label, fill="black", font=small)
    draw.text(((left + right) / 2 - 20, bottom + 24), x_label, fill="black", font=small)
    legend_x = right
    for key, label, colour in reversed(series):
        pts = [None if r[key] is None else (px(r["minute"]), py(r[key])) for r in rows]
        for a, b in zip(pts[:-1], pts[1:], strict=True):  # a minute without a value: a gap
            if a is not None and b is not None:
                draw.line([a, b], fill=colour, width=2)
        for x, y in (p for p in pts if p is not None):
            draw.ellipse([x - 2.5, y - 2.5, x + 2.5, y + 2.5], fill=colour)
        if len(series) > 1:
            w = draw.textlength(label, font=small)
            legend_x -= w + 22
            draw.rectangle([legend_x, top - 18, legend_x + 10, top - 8], fill=colour)
            draw.text((legend_x + 14, top - 21), label, fill="black", font=small)
