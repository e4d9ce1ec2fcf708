"""`dmguard soak`'s figures, without a service: the rate of a step run, the pacing, one
row out of two /metrics scrapes and two /status reads, and the summary of the rows against
the targets (benchmarks/soak.py runs the soak; its docstring says what a row holds)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from services.errors import ConfigError

RSS_GROWTH_TARGET = 0.10
LAG_BOUND_SECONDS = 10.0  # default lag bound: this many seconds of input at the target rate
WARMUP_ROWS = 1  # rows left out of the RSS baseline and the lag check
BASELINE_ROWS = 2  # the RSS baseline is the lowest of the rows right after warm-up
ROW_FIELDS = (
    "minute",
    "elapsed_s",
    "sent",
    "outputs",
    "verdicts",
    "dead_letters",
    "sent_per_s",
    "outputs_per_s",
    "workers",
    "worker_rss_sum_mib",
    "worker_rss_max_mib",
    "lag",
    "p99_ms",
    "restarts",
    "driver_rss_mib",
    "cache_mib_max",
)


def parse_steps(text: str) -> list[tuple[float, float]]:
    """ "2x120,10x240" -> [(2.0, 120.0), (10.0, 240.0)]: (records/s, seconds) each."""
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
    cache_bytes_max: float = 0.0  # the fullest worker's feature cache (actors.repeats)


def parse_scrape(text: str) -> Scrape:
    """dmguard_records_total{outcome}, dmguard_end_to_end_seconds_bucket, the summed
    dmguard_consumer_lag and the largest dmguard_cache_memory_bytes out of a /metrics text."""
    s = Scrape()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "dmguard_records_total":
                s.records[sample.labels["outcome"]] = sample.value
            elif sample.name == "dmguard_end_to_end_seconds_bucket":
                s.latency_buckets[float(sample.labels["le"])] = sample.value
            elif sample.name == "dmguard_consumer_lag":
                s.lag += sample.value
            elif sample.name == "dmguard_cache_memory_bytes":
                s.cache_bytes_max = max(s.cache_bytes_max, sample.value)
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
        "cache_mib_max": round(after.cache_bytes_max / 2**20, 3),
    }


def summarize(
    rows: Sequence[Mapping[str, Any]], *, lag_bound: float, cache_mb: float | None = None
) -> dict[str, Any]:
    """The figures and the targets over the rows.

    * RSS growth: the summed worker RSS of the last row against a baseline, the lowest
      of the BASELINE_ROWS rows after the WARMUP_ROWS first (models load, allocators and
      caches fill during the first minute); with too few rows, the rows there are.
    * lag bounded: every row after warm-up has a summed lag of at most `lag_bound`.
    * no restarts: no worker pid changed during the run.
    * with `cache_mb` (the workers' --cache-mb): no worker's feature cache above it.
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
    cache_max = max((r.get("cache_mib_max", 0.0) for r in rows), default=0.0)
    if cache_mb:
        targets["cache_within_setting"] = cache_max <= cache_mb
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
        "cache_mib_max": cache_max,
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
            out.append(
                {
                    "at_s": start,
                    "rate": rate,
                    "workers_before": was,
                    "resized_after_s": None
                    if moved is None
                    else round(moved["elapsed_s"] - start, 1),
                    "workers_after": during[-1]["workers"] if during else None,
                }
            )
        start = end
    return out
