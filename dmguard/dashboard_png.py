"""`dmguard dashboard`: the Grafana dashboard's main panels (throughput, end-to-end latency,
lag per partition, verdict mix, dead letters by code, workers) as one PNG, for a README, a
report or an operator without Grafana. `dmguard demo` writes one of its run.

Two sources of the same six panels:

* Prometheus' HTTP API (`--prometheus URL`): the dashboard's own queries, read from
  deploy/grafana/dmguard.json, over a time range: what Grafana draws, windows included
  (rates over 1m and 5m).
* `dmguard serve`'s /metrics, sampled every second over a run (`--metrics URL --seconds N`,
  and `MetricsSampler` in the demo), for operators without Prometheus: the same quantities
  computed from the samples as PromQL would (counter rates, histogram quantiles
  interpolated inside a bucket), over RATE_WINDOW_S so a run of a few minutes shows its
  shape.

Drawn with Pillow (no plotting library): a 3 x 2 grid, seconds since the start on x.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

from benchmarks.soak_plot import font

DASHBOARD = Path(__file__).resolve().parents[1] / "deploy" / "grafana" / "dmguard.json"
# (the dashboard panel's title, the PNG's title)
MAIN_PANELS = (
    ("Throughput by outcome (records/s)", "throughput by outcome (records/s)"),
    ("End-to-end latency", "end-to-end latency (s)"),
    ("Consumer lag by partition", "consumer lag by partition (records)"),
    ("Verdict mix (uncertain: to human review)", "verdict mix (verdicts/s)"),
    ("Dead letters by code", "dead letters by code (records/s)"),
    ("Workers", "workers"),
)
RATE_WINDOW_S = 10.0
SIZE = (1200, 860)
COLOURS = (
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
)

Series = dict[str, list[tuple[float, float]]]  # legend -> [(unix seconds, value)]


@dataclass
class Panel:
    title: str
    series: Series


# ------------------------------------------------------------------ from Prometheus
def panels_from_prometheus(
    url: str,
    start: float,
    end: float,
    step: float | None = None,
    dashboard: Path = DASHBOARD,
    get: Callable[[str], dict] | None = None,
) -> list[Panel]:
    """The main panels over [start, end] (unix seconds), each of its queries as the
    dashboard has it, sent to Prometheus' /api/v1/query_range at `url`."""
    step = step or max(1.0, math.ceil((end - start) / 400))
    get = get or _get_json
    by_title = {p["title"]: p for p in json.loads(Path(dashboard).read_text())["panels"]}
    out = []
    for title, label in MAIN_PANELS:
        series: Series = {}
        for target in by_title[title].get("targets", []):
            query = urllib.parse.urlencode(
                {"query": target["expr"], "start": start, "end": end, "step": step}
            )
            body = get(f"{url.rstrip('/')}/api/v1/query_range?{query}")
            if body.get("status") != "success":
                raise ValueError(f"Prometheus refused {target['expr']!r}: {body.get('error')}")
            for s in body["data"]["result"]:
                legend = _legend(target.get("legendFormat", ""), s["metric"]) or label
                points = [(float(t), float(v)) for t, v in s["values"]]
                series[legend] = [(t, v) for t, v in points if math.isfinite(v)]
        out.append(Panel(label, series))
    return out


def _legend(fmt: str, labels: dict[str, str]) -> str:
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), fmt).strip()


def _get_json(url: str) -> dict:
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as exc:  # Prometheus says why in a JSON body
        return json.loads(exc.read() or b"{}")


# ------------------------------------------------------------------ from /metrics
Sample = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse_metrics(text: str) -> Sample:
    """{(sample name, sorted label items): value} of a /metrics body."""
    from prometheus_client.parser import text_string_to_metric_families

    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


class MetricsSampler:
    """Scrapes a /metrics URL every `interval_s` in a thread (a context manager, or
    start()/stop()); `panels()` turns the samples into the main panels."""

    def __init__(self, url: str, interval_s: float = 1.0) -> None:
        self.url, self.interval_s = url, interval_s
        self.samples: list[tuple[float, Sample]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="metrics-sampler", daemon=True)

    def __enter__(self) -> MetricsSampler:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> MetricsSampler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def sample(self) -> None:
        try:
            with urllib.request.urlopen(self.url, timeout=5) as r:
                text = r.read().decode()
        except OSError:
            return  # a missed scrape is a gap, as in Prometheus
        self.samples.append((time.time(), parse_metrics(text)))

    def _run(self) -> None:
        while not self._stop.is_set():
            t0 = time.monotonic()
            self.sample()
            self._stop.wait(max(0.0, self.interval_s - (time.monotonic() - t0)))

    def panels(self, window_s: float = RATE_WINDOW_S) -> list[Panel]:
        return panels_from_samples(list(self.samples), window_s)


def panels_from_samples(samples: list[tuple[float, Sample]], window_s: float) -> list[Panel]:
    """The main panels from timed /metrics samples: counters as rates over `window_s` (the
    earliest sample at least that old, else the first), latency quantiles from the
    buckets' increase over it, gauges as they are."""
    titles = dict(MAIN_PANELS)
    series: dict[str, Series] = {t: {} for t in titles}

    def add(panel: str, legend: str, t: float, v: float | None) -> None:
        if v is not None and math.isfinite(v):
            series[panel].setdefault(legend, []).append((t, v))

    for i in range(1, len(samples)):
        t, now = samples[i]
        j = i - 1
        while j > 0 and t - samples[j - 1][0] <= window_s:
            j -= 1
        t0, before = samples[j]
        dt = t - t0
        for key, value in now.items():
            name, labels = key
            label = dict(labels)
            if name in ("dmguard_records_total", "dmguard_verdicts_total"):
                panel = MAIN_PANELS[0][0] if name == "dmguard_records_total" else MAIN_PANELS[3][0]
                legend = label.get("outcome") or label.get("verdict", "")
                add(panel, legend, t, _increase(before.get(key), value) / dt)
            elif name == "dmguard_dead_letters_total":
                add(MAIN_PANELS[4][0], label["code"], t, _increase(before.get(key), value) / dt)
            elif name == "dmguard_consumer_lag":
                add(MAIN_PANELS[2][0], f"partition {label['partition']}", t, value)
            elif name == "dmguard_workers":
                add(MAIN_PANELS[5][0], "workers", t, value)
        buckets = {
            float(dict(labels)["le"]): _increase(before.get((name, labels)), v)
            for (name, labels), v in now.items()
            if name == "dmguard_end_to_end_seconds_bucket"
        }
        for q in (0.5, 0.95, 0.99):
            add(MAIN_PANELS[1][0], f"p{round(q * 100)}", t, histogram_quantile(q, buckets))
    return [Panel(titles[t], series[t]) for t, _ in MAIN_PANELS]


def _increase(before: float | None, now: float) -> float:
    """A counter's increase; a reset (a new driver) counts from 0, as rate() does."""
    if before is None or now < before:
        return now
    return now - before


def histogram_quantile(q: float, buckets: dict[float, float]) -> float | None:
    """PromQL's histogram_quantile on cumulative {upper bound: count}: linear inside the
    bucket that holds rank q * count, the highest finite bound when that is +Inf's; None
    with no observations."""
    bounds = sorted(buckets)
    if not bounds or bounds[-1] != math.inf:
        return None
    total = buckets[math.inf]
    if total <= 0:
        return None
    rank = q * total
    lower, below = 0.0, 0.0
    for upper in bounds:
        count = buckets[upper]
        if count >= rank:
            if upper == math.inf:
                return bounds[-2] if len(bounds) > 1 else None
            if count == below:
                return upper
            return lower + (upper - lower) * (rank - below) / (count - below)
        lower, below = upper, count
    return None


# ------------------------------------------------------------------ the picture
def _num(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 100:
        return f"{v:.0f}"
    return f"{v:.2g}" if abs(v) < 1 else f"{v:.3g}"


def write_png(panels: list[Panel], path: Path, title: str = "") -> list[str]:
    """Draws `panels` (3 x 2) into `path`; returns the titles of the panels without data.
    A series that is 0 throughout is left out (nine dead-letter codes, most of them 0)."""
    img = Image.new("RGB", SIZE, "white")
    draw = ImageDraw.Draw(img)
    small, big = font(12), font(15)
    draw.text((12, 8), title, fill="black", font=big)
    starts = [pts[0][0] for p in panels for pts in p.series.values() if pts]
    t0 = min(starts) if starts else 0.0
    ends = [pts[-1][0] for p in panels for pts in p.series.values() if pts]
    t1 = max(ends) if ends else 1.0
    top, cols, rows = 34, 2, math.ceil(len(panels) / 2)
    pw, ph = SIZE[0] // cols, (SIZE[1] - top) // rows
    empty = []
    for k, panel in enumerate(panels):
        box = (
            (k % cols) * pw,
            top + (k // cols) * ph,
            (k % cols + 1) * pw,
            top + (k // cols + 1) * ph,
        )
        if not _panel(draw, box, panel, (t0, t1), small, big):
            empty.append(panel.title)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.convert("P", palette=Image.Palette.ADAPTIVE, colors=32).save(path, "PNG", optimize=True)
    return empty


def _panel(draw, box, panel: Panel, span, small, big) -> bool:
    left, top, right, bottom = box[0] + 62, box[1] + 44, box[2] - 24, box[3] - 40
    draw.text((left, box[1] + 6), panel.title, fill="black", font=big)
    draw.line([(left, top), (left, bottom), (right, bottom)], fill="black")
    shown = {k: v for k, v in panel.series.items() if v and any(y != 0 for _, y in v)}
    if not shown:
        has_data = any(panel.series.values())
        note = "0 throughout" if has_data else "no data"
        draw.text((left + 10, top + 10), note, fill="grey", font=small)
        return has_data
    t0, t1 = span
    hi = max(y for pts in shown.values() for _, y in pts)
    y_top = hi * 1.1 if hi > 0 else 1.0

    def px(t: float) -> float:
        return left + (right - left) * ((t - t0) / (t1 - t0) if t1 > t0 else 0.5)

    def py(y: float) -> float:
        return bottom - (bottom - top) * max(0.0, y) / y_top

    for v in (0.0, hi / 2, hi):
        y = py(v)
        draw.line([(left - 4, y), (left, y)], fill="black")
        if v:
            for x in range(int(left) + 2, int(right), 6):
                draw.point((x, y), fill=(200, 200, 200))
        label = _num(v)
        draw.text(
            (left - 8 - draw.textlength(label, font=small), y - 7), label, fill="black", font=small
        )
    for t in (t0, (t0 + t1) / 2, t1):
        draw.line([(px(t), bottom), (px(t), bottom + 4)], fill="black")
        label = f"{t - t0:.0f}"
        draw.text(
            (px(t) - draw.textlength(label, font=small) / 2, bottom + 6),
            label,
            fill="black",
            font=small,
        )
    draw.text(((left + right) / 2 - 10, bottom + 22), "s", fill="black", font=small)
    legend_x, legend_y = left + 6, top - 18
    for n, (legend, pts) in enumerate(sorted(shown.items())):
        colour = COLOURS[n % len(COLOURS)]
        for run in _runs(pts):  # a stretch without values (no observations) is a gap
            line = [(px(t), py(y)) for t, y in run]
            if len(line) == 1:
                x, y = line[0]
                draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=colour)
            else:
                draw.line(line, fill=colour, width=2)
        w = draw.textlength(legend, font=small)
        if legend_x + w + 20 > right:
            legend_x, legend_y = left + 6, legend_y + 14
        draw.rectangle([legend_x, legend_y + 3, legend_x + 9, legend_y + 11], fill=colour)
        draw.text((legend_x + 13, legend_y), legend, fill="black", font=small)
        legend_x += w + 26
    return True


def _runs(pts: list[tuple[float, float]]) -> list[list[tuple[float, float]]]:
    """`pts` cut where two neighbours are more than three usual steps apart."""
    steps = sorted(b[0] - a[0] for a, b in zip(pts, pts[1:], strict=False))
    limit = 3 * steps[len(steps) // 2] if steps else math.inf
    runs = [[pts[0]]]
    for a, b in zip(pts, pts[1:], strict=False):
        if b[0] - a[0] > limit:
            runs.append([])
        runs[-1].append(b)
    return runs


# ------------------------------------------------------------------ the command
def add_parser(sub) -> None:
    sp = sub.add_parser(
        "dashboard",
        help="the dashboard's main panels as one PNG, from Prometheus or from /metrics",
        description="Draws throughput, end-to-end latency, lag per partition, the verdict mix, "
        "dead letters by code and workers into one PNG: from Prometheus' HTTP API with the "
        "Grafana dashboard's own queries (--prometheus), or by sampling a running serve's "
        "/metrics every second for --seconds (--metrics), where there is no Prometheus.",
    )
    source = sp.add_mutually_exclusive_group(required=True)
    source.add_argument("--prometheus", metavar="URL", help="e.g. http://localhost:9090")
    source.add_argument("--metrics", metavar="URL", help="e.g. http://localhost:9464/metrics")
    sp.add_argument("--minutes", type=float, default=15, help="with --prometheus: the last N")
    sp.add_argument("--seconds", type=float, default=60, help="with --metrics: sample for N")
    sp.add_argument("--dashboard", default=str(DASHBOARD), help="the Grafana dashboard JSON")
    sp.add_argument("--out", default="dashboard.png", help="the PNG to write")
    sp.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.prometheus:
        end = time.time()
        panels = panels_from_prometheus(
            args.prometheus, end - 60 * args.minutes, end, dashboard=Path(args.dashboard)
        )
        title = f"dmguard, the last {args.minutes:g} minutes ({args.prometheus})"
    else:
        with MetricsSampler(args.metrics) as sampler:
            time.sleep(args.seconds)
        panels = sampler.panels()
        title = f"dmguard, {args.seconds:g} s of {args.metrics} (rates over {RATE_WINDOW_S:g} s)"
    empty = write_png(panels, Path(args.out), title)
    print(f"wrote {args.out}" + (f"; no data: {', '.join(empty)}" if empty else ""))
    return 0
