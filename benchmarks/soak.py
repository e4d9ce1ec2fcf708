"""`dmguard soak`: the service under steady load for a long time, its health each minute.

Same set-up as `dmguard bench` (c): the embedded broker, a local HTTP server of test
images, a registry with an untrained head, and `serve` in this process (one worker per
core). Then:

  1. capacity: a burst of records with the soak's own mix, timed from the first one
     sent to the last output (verdict or dead letter) read back; skipped with --rate;
  2. the soak: records sent at --fraction of that capacity (or at --rate), paced by a
     token bucket in small batches every TICK_S, about 5% of them bad (malformed
     JSON, a non-http URL, a 404, a truncated JPEG, bytes that are no image);
  3. each minute one row: records sent, outputs (from the /metrics counters), worker
     RSS (pids from /status, VmRSS from /proc: the workers are local Ray actors), the
     summed consumer lag, the p99 end-to-end latency of that minute (from the
     histogram's bucket deltas), worker restarts (pids that changed) and the RSS of
     this process (the driver);
  4. a summary against the targets: worker RSS growth under 10% after warm-up, lag
     bounded, no restarts; the rows as CSV, the summary as JSON and the curves as a
     PNG under --out.

Not part of `make test`: a soak runs for tens of minutes.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import random
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.charts import text_chart

TICK_S = 0.1  # the producer sends what the token bucket allows this often
STATUS_EVERY_S = 5.0  # /status is read this often, so that restarts between rows are seen
RSS_GROWTH_TARGET = 0.10
LAG_BOUND_SECONDS = 10.0  # default lag bound: this many seconds of input at the target rate
WARMUP_ROWS = 1  # rows left out of the RSS baseline and the lag check
BASELINE_ROWS = 2  # the RSS baseline is the lowest of the rows right after warm-up
DEFAULT_OUT = ".cache/soak"
BAD_KINDS = ("malformed_json", "bad_scheme", "not_found", "truncated_jpeg", "not_an_image")
ROW_FIELDS = (
    "minute", "elapsed_s", "sent", "outputs", "verdicts", "dead_letters", "sent_per_s",
    "outputs_per_s", "workers", "worker_rss_sum_mib", "worker_rss_max_mib", "lag",
    "p99_ms", "restarts", "driver_rss_mib",
)  # fmt: skip


def say(message: str) -> None:
    print(f"[soak] {message}", file=sys.stderr, flush=True)


# -------------------------------------------------------------------- the pure parts
def parse_steps(text: str) -> list[tuple[float, float]]:
    """ "2x120,10x240" -> [(2.0, 120.0), (10.0, 240.0)]: (records/s, seconds) each."""
    from services.errors import ConfigError

    steps = []
    for part in text.split(","):
        try:
            rate, seconds = (float(v) for v in part.strip().split("x"))
        except ValueError:
            raise ConfigError(f"--steps: {part!r} is not RATExSECONDS, e.g. 10x240") from None
        if rate <= 0 or seconds <= 0:
            raise ConfigError(f"--steps: {part!r}: rate and seconds must be positive")
        steps.append((rate, seconds))
    return steps


def rate_at(steps: Sequence[tuple[float, float]], t: float) -> float:
    """The rate of the step running `t` seconds after the start (the last one after)."""
    end = 0.0
    for rate, seconds in steps:
        end += seconds
        if t < end:
            return rate
    return steps[-1][0]


def histogram_quantile(q: float, buckets: Sequence[tuple[float, float]]) -> float | None:
    """The q-quantile of a histogram given as (upper bound, cumulative count) pairs sorted
    by bound, the last +Inf; interpolated linearly inside its bucket as Prometheus'
    histogram_quantile does (the first bucket starts at 0; a quantile in the +Inf bucket
    is the highest finite bound). None when the histogram holds no observation."""
    if len(buckets) < 2 or not math.isinf(buckets[-1][0]):
        raise ValueError("need at least two buckets, the last one +Inf")
    total = buckets[-1][1]
    if total <= 0:
        return None
    rank = q * total
    b = next(i for i, (_, count) in enumerate(buckets) if count >= rank)
    if b == len(buckets) - 1:
        return buckets[-2][0]
    upper, count = buckets[b]
    if b == 0:
        if upper <= 0:
            return upper
        lower, below = 0.0, 0.0
    else:
        lower, below = buckets[b - 1]
    in_bucket = count - below
    return lower + (upper - lower) * (rank - below) / in_bucket


def bucket_deltas(
    before: Mapping[float, float], after: Mapping[float, float]
) -> list[tuple[float, float]]:
    """The cumulative bucket counts of what was observed between two scrapes, sorted by
    bound. Fewer observations in all than before means the counters were reset (a new
    service): then everything in `after` is new."""
    reset = after.get(math.inf, 0.0) < before.get(math.inf, 0.0)
    return [(le, after[le] - (0.0 if reset else before.get(le, 0.0))) for le in sorted(after)]


class TokenBucket:
    """Pacing: `take(t)` says how many records to send at `t` seconds after the start so
    that `rate` records/s go out on average. Tokens accrue continuously up to `capacity`
    (default one second of records): after a stall of the sender it catches up by at most
    that many, rather than by a burst as long as the stall."""

    def __init__(self, rate: float, capacity: float | None = None) -> None:
        self.rate = rate
        self.capacity = capacity if capacity is not None else max(1.0, rate)
        self.tokens = 0.0
        self.t = 0.0

    def take(self, t: float) -> int:
        self.tokens = min(self.capacity, self.tokens + self.rate * max(0.0, t - self.t))
        self.t = max(self.t, t)
        n = int(self.tokens + 1e-9)
        self.tokens -= n
        return n


def count_restarts(
    known: Mapping[str, int], current: Mapping[str, int]
) -> tuple[int, dict[str, int]]:
    """(workers whose pid changed, the pids now known) between two /status reads. A worker
    missing from `current` (being restarted right then) keeps its last known pid and is
    counted once it is back under a new one; a worker seen for the first time is no
    restart."""
    changed = sum(1 for wid, pid in current.items() if wid in known and known[wid] != pid)
    return changed, {**known, **current}


@dataclass
class Scrape:
    """What one /metrics scrape says that a row needs."""

    records: dict[str, float] = field(default_factory=dict)  # outcome -> count
    latency_buckets: dict[float, float] = field(default_factory=dict)  # le -> cumulative
    lag: float = 0.0


def parse_scrape(text: str) -> Scrape:
    """dmguard_records_total{outcome}, dmguard_end_to_end_seconds_bucket and the summed
    dmguard_consumer_lag out of a /metrics text."""
    from prometheus_client.parser import text_string_to_metric_families

    s = Scrape()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "dmguard_records_total":
                s.records[sample.labels["outcome"]] = sample.value
            elif sample.name == "dmguard_end_to_end_seconds_bucket":
                s.latency_buckets[float(sample.labels["le"])] = sample.value
            elif sample.name == "dmguard_consumer_lag":
                s.lag += sample.value
    return s


def make_row(
    *,
    minute: int,
    elapsed_s: float,
    seconds: float,
    sent: int,
    before: Scrape,
    after: Scrape,
    worker_rss_mib: Sequence[float],
    restarts: int,
    driver_rss_mib: float | None,
) -> dict[str, Any]:
    """One row of the soak: what happened in the `seconds` between two scrapes."""
    delta = {o: after.records.get(o, 0.0) - before.records.get(o, 0.0) for o in after.records}
    verdicts, dead = int(delta.get("verdict", 0)), int(delta.get("dead_letter", 0))
    p99 = (
        histogram_quantile(0.99, bucket_deltas(before.latency_buckets, after.latency_buckets))
        if after.latency_buckets
        else None
    )
    return {
        "minute": minute,
        "elapsed_s": round(elapsed_s, 1),
        "sent": sent,
        "outputs": verdicts + dead,
        "verdicts": verdicts,
        "dead_letters": dead,
        "sent_per_s": round(sent / seconds, 2),
        "outputs_per_s": round((verdicts + dead) / seconds, 2),
        "workers": len(worker_rss_mib),
        "worker_rss_sum_mib": round(sum(worker_rss_mib), 1) if worker_rss_mib else None,
        "worker_rss_max_mib": round(max(worker_rss_mib), 1) if worker_rss_mib else None,
        "lag": int(after.lag),
        "p99_ms": None if p99 is None else round(p99 * 1000, 1),
        "restarts": restarts,
        "driver_rss_mib": None if driver_rss_mib is None else round(driver_rss_mib, 1),
    }


def summarize(rows: Sequence[Mapping[str, Any]], *, lag_bound: float) -> dict[str, Any]:
    """The figures and the targets over the rows.

    * RSS growth: the summed worker RSS of the last row against a baseline, the lowest
      of the BASELINE_ROWS rows after the WARMUP_ROWS first (models load, allocators and
      caches fill during the first minute); with too few rows, the rows there are.
    * lag bounded: every row after warm-up has a summed lag of at most `lag_bound`.
    * no restarts: no worker pid changed during the run.
    """
    if not rows:
        return {"rows": 0, "all_targets_met": False, "targets": {}}
    after_warmup = list(rows[WARMUP_ROWS:]) or list(rows)
    rss = [r["worker_rss_sum_mib"] for r in after_warmup if r["worker_rss_sum_mib"] is not None]
    baseline = min(rss[:BASELINE_ROWS]) if rss else None
    last_rss = rss[-1] if rss else None
    growth = (last_rss - baseline) / baseline if baseline else None
    lags = [r["lag"] for r in after_warmup]
    p99s = [r["p99_ms"] for r in rows if r["p99_ms"] is not None]
    restarts = rows[-1]["restarts"]
    targets = {
        "rss_growth_under_10pct": growth is not None and growth < RSS_GROWTH_TARGET,
        "lag_bounded": max(lags) <= lag_bound,
        "no_restarts": restarts == 0,
    }
    return {
        "rows": len(rows),
        "worker_rss_baseline_mib": baseline,
        "worker_rss_last_mib": last_rss,
        "worker_rss_growth": None if growth is None else round(growth, 4),
        "worker_rss_max_mib": max(
            (r["worker_rss_max_mib"] for r in rows if r["worker_rss_max_mib"] is not None),
            default=None,
        ),
        "driver_rss_first_mib": rows[0]["driver_rss_mib"],
        "driver_rss_last_mib": rows[-1]["driver_rss_mib"],
        "lag_bound": round(lag_bound, 1),
        "lag_max_after_warmup": max(lags),
        "lag_last": rows[-1]["lag"],
        "p99_ms_max": max(p99s, default=None),
        "p99_ms_median": sorted(p99s)[len(p99s) // 2] if p99s else None,
        "sent": sum(r["sent"] for r in rows),
        "outputs": sum(r["outputs"] for r in rows),
        "restarts": restarts,
        "targets": targets,
        "all_targets_met": all(targets.values()),
    }


def step_response(
    rows: Sequence[Mapping[str, Any]], steps: Sequence[tuple[float, float]]
) -> list[dict[str, Any]]:
    """For each change of rate in `steps` after the first: the pool's size before it, and
    how long after it (to the end of the row that first showed it) the pool changed size,
    None if it did not before the next step. Rows are `row_seconds` apart, so the delays
    are rounded up to a row."""
    out, start = [], 0.0
    for k, (rate, seconds) in enumerate(steps):
        end = start + seconds
        if k:
            during = [r for r in rows if start < r["elapsed_s"] <= end + 1e-6]
            before = [r for r in rows if r["elapsed_s"] <= start + 1e-6]
            was = before[-1]["workers"] if before else None
            moved = next((r for r in during if r["workers"] != was), None)
            out.append({
                "at_s": start, "rate": rate, "workers_before": was,
                "resized_after_s": None if moved is None else round(moved["elapsed_s"] - start, 1),
                "workers_after": during[-1]["workers"] if during else None,
            })  # fmt: skip
        start = end
    return out


# -------------------------------------------------------------------- the plot
PLOT_SIZE = (1000, 720)
_PANELS = (
    ("worker RSS (MiB)", (("worker_rss_sum_mib", "sum", (31, 119, 180)),
                          ("worker_rss_max_mib", "max of one", (255, 127, 14)))),
    ("consumer lag (records)", (("lag", "summed over partitions", (31, 119, 180)),)),
    ("p99 end-to-end latency (ms)", (("p99_ms", "p99 of the minute", (31, 119, 180)),)),
    ("throughput (records/s)", (("outputs_per_s", "outputs", (31, 119, 180)),
                                ("sent_per_s", "sent", (150, 150, 150)))),
)  # fmt: skip
# The curves as text (soak.txt, and printed at the end): what docs/benchmarks.md quotes.
TEXT_SERIES = (
    ("sent_per_s", "sent/s"), ("outputs_per_s", "outputs/s"), ("workers", "workers"),
    ("lag", "lag"), ("p99_ms", "p99 ms"), ("worker_rss_sum_mib", "worker RSS MiB"),
)  # fmt: skip
# The step response of `--workers auto`: how many workers, against what came in.
_STEP_PANELS = (
    ("workers", (("workers", "workers", (31, 119, 180)),)),
    _PANELS[1],
    _PANELS[3],
    _PANELS[2],
)


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without the size argument
        return ImageFont.load_default()


def _num(v: float) -> str:
    return f"{v:.0f}" if abs(v) >= 100 else f"{v:.3g}"


def write_plot(
    rows: Sequence[Mapping[str, Any]], path: Path, title: str = "",
    panels=None, x_label: str = "minute",
) -> None:  # fmt: skip
    """Four panels, 2 x 2: worker RSS, lag, p99 latency and throughput against the minute.
    Each y axis runs from 0 to a little above the largest value, with the smallest and
    largest values marked; the x axis from the first to the last row."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", PLOT_SIZE, "white")
    draw = ImageDraw.Draw(img)
    small, big = _font(12), _font(15)
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


# -------------------------------------------------------------------- the record mix
def _test_images() -> dict[str, bytes]:
    """Good images of a few sizes and formats, by path."""
    from PIL import Image

    from benchmarks.bench import bench_jpegs

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


# -------------------------------------------------------------------- reading the service
def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.read().decode()


def worker_pids(base: str) -> dict[str, int]:
    """worker_id -> pid of the workers /status lists now."""
    return {
        str(w["worker_id"]): int(w["pid"]) for w in json.loads(_get(f"{base}/status"))["workers"]
    }


def vm_rss_mib(pid: int | str = "self", *, peak: bool = False) -> float | None:
    """VmRSS of a local process in MiB (`peak`: VmHWM, the highest RSS it has had); None
    when it is gone (or not on this machine)."""
    field = "VmHWM:" if peak else "VmRSS:"
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


# -------------------------------------------------------------------- the run
def measure_capacity(producer, reader, mix: RecordMix, topic: str, n: int, prefix: str) -> float:
    """Records/s from the first of `n` records sent to the last of their outputs read."""
    from services.outputs import output_key
    from services.poll import wait_until

    expected = set()
    t0 = time.monotonic()
    for i in range(n):
        key, value, out_key = mix.record(prefix, i)
        producer.send(topic, key=key, value=value)
        expected.add(out_key)
    producer.flush()
    seen: set[str] = set()
    read = {"verdicts": 0, "dead_letters": 0}  # how far into the reader's lists we looked

    def more() -> int:
        out = reader.read(idle_s=0.05)
        for name in read:
            new = getattr(out, name)[read[name] :]
            read[name] += len(new)
            seen.update(output_key(r) for r in new)
        return len(expected & seen)

    wait_until(more, max(300.0, 3.0 * n), interval_s=0, done=lambda k: k >= len(expected),
               what=f"the outputs of {n} {prefix}* records")  # fmt: skip
    return n / (time.monotonic() - t0)


def _print_row(row: Mapping[str, Any], header: bool) -> None:
    cols = ("minute", "sent_per_s", "outputs_per_s", "worker_rss_sum_mib",
            "worker_rss_max_mib", "lag", "p99_ms", "restarts", "driver_rss_mib")  # fmt: skip
    names = ("min", "sent/s", "out/s", "rss_sum", "rss_max", "lag", "p99_ms", "restarts", "drv_rss")
    if header:
        print(" ".join(f"{n:>9}" for n in names), flush=True)
    print(" ".join(f"{'-' if row[c] is None else row[c]:>9}" for c in cols), flush=True)


def soak_loop(
    *,
    producer,
    topic: str,
    mix: RecordMix,
    base: str,
    rate: float,
    rows: int,
    row_seconds: float,
    on_row: Callable[[dict[str, Any]], None],
    steps: Sequence[tuple[float, float]] | None = None,
) -> None:
    """Send at `rate` (or following `steps`) for `rows` x `row_seconds`, calling `on_row`
    with each row."""
    bucket = TokenBucket(rate, capacity=max(1.0, max(r for r, _ in steps)) if steps else None)
    known = worker_pids(base)
    restarts = 0
    before = parse_scrape(_get(f"{base}/metrics"))
    start = last_row_t = time.monotonic()
    next_tick = next_status = start
    sent_total = sent_in_row = 0
    for minute in range(1, rows + 1):
        row_end = start + minute * row_seconds
        while (now := time.monotonic()) < row_end:
            if steps:
                bucket.rate = rate_at(steps, now - start)
            n = bucket.take(now - start)
            for _ in range(n):
                key, value, _ = mix.record("soak", sent_total)
                producer.send(topic, key=key, value=value)
                sent_total += 1
            sent_in_row += n
            if n:
                producer.flush()
            if now >= next_status:
                changed, known = count_restarts(known, worker_pids(base))
                restarts += changed
                next_status = now + STATUS_EVERY_S
            next_tick += TICK_S
            time.sleep(max(0.0, min(next_tick, row_end) - time.monotonic()))
        after = parse_scrape(_get(f"{base}/metrics"))
        changed, known = count_restarts(known, current := worker_pids(base))
        restarts += changed
        now = time.monotonic()
        rss = [m for m in (vm_rss_mib(pid) for pid in current.values()) if m is not None]
        on_row(make_row(minute=minute, elapsed_s=now - start, seconds=now - last_row_t,
                        sent=sent_in_row, before=before, after=after, worker_rss_mib=rss,
                        restarts=restarts, driver_rss_mib=vm_rss_mib()))  # fmt: skip
        before, last_row_t, sent_in_row = after, now, 0


def run_soak(
    *,
    encoder_spec: str,
    workers: int,
    max_batch: int,
    minutes: float,
    autoscale: bool = False,
    max_workers: int = 0,
    steps: Sequence[tuple[float, float]] | None = None,
    rate: float | None,
    fraction: float,
    capacity_images: int,
    bad_fraction: float,
    row_seconds: float,
    lag_bound: float | None,
    seed: int,
    out: Path,
) -> dict[str, Any]:
    """The whole soak; returns the summary (also written to OUT/soak.json). Everything it
    starts is stopped on the way out, Ctrl-C included; the rows so far are kept then."""
    from actors.supervisor import running_service
    from benchmarks.bench import LOOPBACK, TOPICS, register_bench_head
    from services.broker import EmbeddedBroker, free_port
    from services.config import serve_settings
    from services.http import NOT_FOUND, HttpServer
    from services.kafka_io import make_producer
    from services.outputs import OutputReader

    out.mkdir(parents=True, exist_ok=True)
    n_rows = max(1, round(minutes * 60 / row_seconds))
    rows: list[dict[str, Any]] = []
    info: dict[str, Any] = {
        "encoder": encoder_spec, "workers": workers, "max_batch": max_batch,
        "cores": len(os.sched_getaffinity(0)), "minutes": minutes, "row_seconds": row_seconds,
        "fraction": fraction, "bad_fraction": bad_fraction, "seed": seed,
        **({"workers": "auto", "max_workers": max_workers} if autoscale else {}),
        **({"steps": [list(st) for st in steps]} if steps else {}),
    }  # fmt: skip
    csv_file = (out / "soak.csv").open("w", newline="")
    writer = csv.DictWriter(csv_file, fieldnames=ROW_FIELDS)
    writer.writeheader()

    def on_row(row: dict[str, Any]) -> None:
        _print_row(row, header=not rows)
        rows.append(row)
        writer.writerow(row)
        csv_file.flush()

    summary: dict[str, Any] = {}
    completed = False
    try:
        with ExitStack() as stack:
            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="dmguard-soak-")))
            mix_routes: dict[str, bytes] = {}
            http = stack.enter_context(HttpServer(
                fallback=lambda p: (200, mix_routes[p], "image/jpeg") if p in mix_routes else NOT_FOUND,
                keep_alive=True, name="soak-images",
            ))  # fmt: skip
            mix = RecordMix(http.url, bad_fraction=bad_fraction, seed=seed)
            mix_routes.update(mix.routes)
            broker = stack.enter_context(EmbeddedBroker())
            say(f"broker on {broker.bootstrap}, images on {http.url}")
            settings = serve_settings(
                bootstrap=broker.bootstrap, client_extra={}, registry=register_bench_head(encoder_spec, tmp),
                workers=workers, metrics_host="127.0.0.1", metrics_port=free_port(),
                max_batch=max_batch, allow_network=LOOPBACK, autoscale=autoscale,
                min_workers=1, max_workers=max_workers,
            )  # fmt: skip
            say(
                f"starting serve: {'auto' if autoscale else workers} workers, encoder {encoder_spec}"
            )
            base = stack.enter_context(running_service(settings))
            say(f"serving; metrics on {base}/metrics")
            producer = make_producer(settings.worker.kafka)
            stack.callback(producer.close)
            reader = OutputReader(broker.bootstrap)
            try:
                measure_capacity(producer, reader, mix, TOPICS.images, 4 * workers, "warm")
                if rate is None and not steps:
                    say(f"measuring capacity: {capacity_images} records at once")
                    capacity = measure_capacity(
                        producer, reader, mix, TOPICS.images, capacity_images, "capacity"
                    )
                    rate = fraction * capacity
                    info["capacity_per_s"] = round(capacity, 2)
                    say(f"capacity {capacity:.2f} records/s; soak at {fraction:g} x = {rate:.2f}/s")
            finally:
                reader.close()
            time.sleep(2.5)  # workers report every second: the burst is counted before the soak
            info["rate_per_s"] = round(rate, 2)
            bound = lag_bound if lag_bound is not None else LAG_BOUND_SECONDS * rate
            info["lag_bound"] = round(bound, 1)
            mix.kinds.clear()
            say(f"soak: {rate:.2f} records/s for {n_rows} rows of {row_seconds:g} s "
                f"({bad_fraction:.0%} bad); rows in {out / 'soak.csv'}")  # fmt: skip
            soak_loop(producer=producer, topic=TOPICS.images, mix=mix, base=base, rate=rate,
                      rows=n_rows, row_seconds=row_seconds, on_row=on_row,
                      steps=steps)  # fmt: skip
            info["kinds_sent"] = dict(sorted(mix.kinds.items()))
            completed = True
            say("soak done; stopping the service")
    finally:
        csv_file.close()
        bound = info.get("lag_bound", lag_bound if lag_bound is not None else math.inf)
        summary = {**info, "completed": completed, **summarize(rows, lag_bound=bound)}
        summary["all_targets_met"] &= completed  # a run stopped early proves nothing
        if steps:  # the targets are a steady soak's; a step run reports how the pool followed
            summary.update(targets={}, all_targets_met=None,
                           step_response=step_response(rows, steps))  # fmt: skip
        (out / "soak.json").write_text(json.dumps(summary, indent=2) + "\n")
        if rows:
            encoder_name = Path(encoder_spec.split(":", 1)[-1]).name
            if steps:
                title = (
                    f"dmguard --workers auto, steps "
                    f"{' > '.join(f'{r:g}/s' for r, _ in steps)}, {encoder_name}"
                )
                write_plot(
                    rows,
                    out / "soak.png",
                    title,
                    panels=_STEP_PANELS,
                    x_label=f"row ({row_seconds:g} s)",
                )
            else:
                title = (
                    f"dmguard soak: {info.get('rate_per_s', '?')} records/s, {workers} "
                    f"workers, {encoder_name}"
                )
                write_plot(rows, out / "soak.png", title)  # fmt: skip
            chart = text_chart(rows, TEXT_SERIES, x_key="elapsed_s", x_label="elapsed s")
            (out / "soak.txt").write_text(chart + "\n")
        if rows or completed:
            _print_summary(summary, out)
            if rows:
                print(f"\n{chart}")
    return summary


def _print_summary(s: Mapping[str, Any], out: Path) -> None:
    def yes(ok: bool | None) -> str:
        return "n/a" if ok is None else "met" if ok else "NOT met"

    t = s.get("targets", {})
    growth = s.get("worker_rss_growth")
    lines = [
        "",
        f"rows                    {s['rows']}" + ("" if s["completed"] else " (stopped early)"),
        f"rate                    {s.get('rate_per_s')} records/s"
        + (
            f" ({s['fraction']:g} x capacity {s['capacity_per_s']}/s)"
            if "capacity_per_s" in s
            else ""
        ),
        f"sent / outputs          {s.get('sent')} / {s.get('outputs')}",
        f"worker RSS growth       {'-' if growth is None else f'{growth:+.1%}'} "
        f"({s.get('worker_rss_baseline_mib')} -> {s.get('worker_rss_last_mib')} MiB, baseline: "
        f"lowest of minutes {WARMUP_ROWS + 1}..{WARMUP_ROWS + BASELINE_ROWS})"
        f"  target < {RSS_GROWTH_TARGET:.0%}: {yes(t.get('rss_growth_under_10pct'))}",
        f"lag max after warm-up   {s.get('lag_max_after_warmup')} (last {s.get('lag_last')}, "
        f"bound {s.get('lag_bound')})  bounded: {yes(t.get('lag_bounded'))}",
        f"p99 latency             max {s.get('p99_ms_max')} ms, median of minutes "
        f"{s.get('p99_ms_median')} ms",
        f"driver RSS              {s.get('driver_rss_first_mib')} -> {s.get('driver_rss_last_mib')} MiB",
        f"restarts                {s.get('restarts')}  none: {yes(t.get('no_restarts'))}",
        f"all targets             {yes(s['all_targets_met'])}"
        + ("" if s["completed"] else " (the run stopped early)"),
        *(
            f"step to {st['rate']:g}/s at {st['at_s']:g} s  workers {st['workers_before']} -> "
            f"{st['workers_after']}, resized after "
            + ("no resize" if st["resized_after_s"] is None else f"{st['resized_after_s']:g} s")
            for st in s.get("step_response", ())
        ),
        f"written                 {out / 'soak.csv'}, {out / 'soak.json'}, {out / 'soak.png'}, "
        f"{out / 'soak.txt'}",
    ]
    print("\n".join(lines), flush=True)
