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
import json
import math
import os
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from actors.supervisor import running_service
from benchmarks.charts import text_chart
from benchmarks.harness import (
    TOPICS,
    Record,
    get_text,
    image_server,
    local_serve_settings,
    register_bench_head,
    say,
    send,
    vm_rss_mib,
    worker_pids,
)
from benchmarks.soak_mix import RecordMix
from benchmarks.soak_plot import STEP_PANELS, TEXT_SERIES, write_plot
from benchmarks.soak_stats import (
    BASELINE_ROWS,
    LAG_BOUND_SECONDS,
    ROW_FIELDS,
    RSS_GROWTH_TARGET,
    WARMUP_ROWS,
    TokenBucket,
    count_restarts,
    make_row,
    parse_scrape,
    rate_at,
    step_response,
    summarize,
)
from services.broker import EmbeddedBroker
from services.config import WorkerSettings
from services.outputs import OutputReader, output_key
from services.poll import wait_until

TICK_S = 0.1  # the producer sends what the token bucket allows this often
STATUS_EVERY_S = 5.0  # /status is read this often, so that restarts between rows are seen
DEFAULT_OUT = ".cache/soak"


# -------------------------------------------------------------------- the soak's parts
def measure_capacity(producer, reader, mix: RecordMix, topic: str, n: int, prefix: str) -> float:
    """Records/s from the first of `n` records sent to the last of their outputs read."""
    expected = set()

    def record(i: int) -> Record:
        key, value, out_key = mix.record(prefix, i)
        expected.add(out_key)
        return key, value

    t0 = time.monotonic()
    send(producer, topic, n, record)
    seen: set[str] = set()
    read = {"verdicts": 0, "dead_letters": 0}  # how far into the reader's lists we looked

    def more() -> int:
        out = reader.read(idle_s=0.05)
        for name in read:
            new = getattr(out, name)[read[name] :]
            read[name] += len(new)
            seen.update(output_key(r) for r in new)
        return len(expected & seen)

    wait_until(
        more,
        max(300.0, 3.0 * n),
        interval_s=0,
        done=lambda k: k >= len(expected),
        what=f"the outputs of {n} {prefix}* records",
    )
    return n / (time.monotonic() - t0)


def _print_row(row: Mapping[str, Any], header: bool) -> None:
    cols = (
        "minute",
        "sent_per_s",
        "outputs_per_s",
        "worker_rss_sum_mib",
        "worker_rss_max_mib",
        "lag",
        "p99_ms",
        "restarts",
        "driver_rss_mib",
    )
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
    before = parse_scrape(get_text(f"{base}/metrics"))
    start = last_row_t = time.monotonic()
    next_tick = next_status = start
    sent_total = sent_in_row = 0
    for minute in range(1, rows + 1):
        row_end = start + minute * row_seconds
        while (now := time.monotonic()) < row_end:
            if steps:
                bucket.rate = rate_at(steps, now - start)
            n = bucket.take(now - start)
            if n:
                send(producer, topic, n, lambda j, at=sent_total: mix.record("soak", at + j)[:2])
            sent_total += n
            sent_in_row += n
            if now >= next_status:
                changed, known = count_restarts(known, worker_pids(base))
                restarts += changed
                next_status = now + STATUS_EVERY_S
            next_tick += TICK_S
            time.sleep(max(0.0, min(next_tick, row_end) - time.monotonic()))
        after = parse_scrape(get_text(f"{base}/metrics"))
        changed, known = count_restarts(known, current := worker_pids(base))
        restarts += changed
        now = time.monotonic()
        rss = [m for m in (vm_rss_mib(pid) for pid in current.values()) if m is not None]
        on_row(
            make_row(
                minute=minute,
                elapsed_s=now - start,
                seconds=now - last_row_t,
                sent=sent_in_row,
                before=before,
                after=after,
                worker_rss_mib=rss,
                restarts=restarts,
                driver_rss_mib=vm_rss_mib(),
            )
        )
        before, last_row_t, sent_in_row = after, now, 0


# -------------------------------------------------------------------- the run
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
    cache_mb: float = WorkerSettings.cache_mb,
) -> dict[str, Any]:
    """The whole soak; returns the summary (also written to OUT/soak.json). Everything it
    starts is stopped on the way out, Ctrl-C included; the rows so far are kept then."""
    out.mkdir(parents=True, exist_ok=True)
    info: dict[str, Any] = {
        "encoder": encoder_spec,
        "workers": workers,
        "max_batch": max_batch,
        "cache_mb": cache_mb,
        "cores": len(os.sched_getaffinity(0)),
        "minutes": minutes,
        "row_seconds": row_seconds,
        "fraction": fraction,
        "bad_fraction": bad_fraction,
        "seed": seed,
        **({"workers": "auto", "max_workers": max_workers} if autoscale else {}),
        **({"steps": [list(st) for st in steps]} if steps else {}),
    }
    log = _RowLog(out / "soak.csv")
    completed = False
    try:
        with ExitStack() as stack:
            service = _start_service(
                stack,
                encoder_spec=encoder_spec,
                workers=workers,
                max_batch=max_batch,
                autoscale=autoscale,
                max_workers=max_workers,
                bad_fraction=bad_fraction,
                seed=seed,
                cache_mb=cache_mb,
            )
            rate = _rate(
                service,
                info,
                rate=rate,
                steps=steps,
                fraction=fraction,
                capacity_images=capacity_images,
                workers=workers,
            )
            _soak(
                service,
                info,
                log,
                rate=rate,
                rows=max(1, round(minutes * 60 / row_seconds)),
                row_seconds=row_seconds,
                lag_bound=lag_bound,
                steps=steps,
            )
            completed = True
            say("soak", "soak done; stopping the service")
    finally:
        log.close()
        summary = _finish(
            log.rows,
            info,
            completed=completed,
            lag_bound=lag_bound,
            steps=steps,
            workers=workers,
            out=out,
        )
    return summary


class _RowLog:
    """The rows so far: printed as they come, kept, and written to a CSV file."""

    def __init__(self, path: Path) -> None:
        self.rows: list[dict[str, Any]] = []
        self.file = path.open("w", newline="")
        self.writer = csv.DictWriter(self.file, fieldnames=ROW_FIELDS)
        self.writer.writeheader()

    def __call__(self, row: dict[str, Any]) -> None:
        _print_row(row, header=not self.rows)
        self.rows.append(row)
        self.writer.writerow(row)
        self.file.flush()

    def close(self) -> None:
        self.file.close()


@dataclass
class _Service:
    """What the soak talks to: serve's HTTP base (/metrics, /status), the broker, a
    producer to the input topic and the mix its records come from."""

    base: str
    bootstrap: str
    producer: Any
    mix: RecordMix


def _start_service(
    stack: ExitStack,
    *,
    encoder_spec: str,
    workers: int,
    max_batch: int,
    autoscale: bool,
    max_workers: int,
    bad_fraction: float,
    seed: int,
    cache_mb: float,
) -> _Service:
    """The image server, the embedded broker, serve with an untrained head and a producer,
    each stopped by `stack`."""
    from services.kafka_io import make_producer  # kafka-python: not at the CLI's start-up

    tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="dmguard-soak-")))
    routes: dict[str, bytes] = {}  # the mix's, once it knows the server's URL
    http = image_server(
        lambda p: (routes[p], "image/jpeg") if p in routes else None, name="soak-images"
    )
    stack.callback(http.stop)
    mix = RecordMix(http.url, bad_fraction=bad_fraction, seed=seed)
    routes.update(mix.routes)
    broker = stack.enter_context(EmbeddedBroker())
    say("soak", f"broker on {broker.bootstrap}, images on {http.url}")
    settings = local_serve_settings(
        broker.bootstrap,
        register_bench_head(encoder_spec, tmp),
        workers=workers,
        max_batch=max_batch,
        autoscale=autoscale,
        min_workers=1,
        max_workers=max_workers,
        cache_mb=cache_mb,
    )
    how_many = "auto" if autoscale else workers
    say("soak", f"starting serve: {how_many} workers, encoder {encoder_spec}")
    base = stack.enter_context(running_service(settings))
    say("soak", f"serving; metrics on {base}/metrics")
    producer = make_producer(settings.worker.kafka)
    stack.callback(producer.close)
    return _Service(base=base, bootstrap=broker.bootstrap, producer=producer, mix=mix)


def _rate(
    service: _Service,
    info: dict[str, Any],
    *,
    rate: float | None,
    steps: Sequence[tuple[float, float]] | None,
    fraction: float,
    capacity_images: int,
    workers: int,
) -> float:
    """A warm-up (4 records per worker: workers up, models warm); then, unless `rate` or
    `steps` say otherwise, the capacity (into `info`). Returns the rate to soak at."""
    reader = OutputReader(service.bootstrap)
    producer, mix = service.producer, service.mix
    try:
        measure_capacity(producer, reader, mix, TOPICS.images, 4 * workers, "warm")
        if rate is None and not steps:
            say("soak", f"measuring capacity: {capacity_images} records at once")
            capacity = measure_capacity(
                producer, reader, mix, TOPICS.images, capacity_images, "capacity"
            )
            rate = fraction * capacity
            info["capacity_per_s"] = round(capacity, 2)
            say("soak", f"capacity {capacity:.2f} records/s; soak at {fraction:g} x = {rate:.2f}/s")
    finally:
        reader.close()
    return rate


def _soak(
    service: _Service,
    info: dict[str, Any],
    log: _RowLog,
    *,
    rate: float,
    rows: int,
    row_seconds: float,
    lag_bound: float | None,
    steps: Sequence[tuple[float, float]] | None,
) -> None:
    """The soak proper, after the burst is counted: its rate, lag bound and the kinds of
    records sent go into `info`, its rows to `log`."""
    time.sleep(2.5)  # workers report every second: the burst is counted before the soak
    info["rate_per_s"] = round(rate, 2)
    bound = lag_bound if lag_bound is not None else LAG_BOUND_SECONDS * rate
    info["lag_bound"] = round(bound, 1)
    service.mix.kinds.clear()
    say(
        "soak",
        f"soak: {rate:.2f} records/s for {rows} rows of {row_seconds:g} s "
        f"({info['bad_fraction']:.0%} bad); rows in {log.file.name}",
    )
    soak_loop(
        producer=service.producer,
        topic=TOPICS.images,
        mix=service.mix,
        base=service.base,
        rate=rate,
        rows=rows,
        row_seconds=row_seconds,
        on_row=log,
        steps=steps,
    )
    info["kinds_sent"] = dict(sorted(service.mix.kinds.items()))


def _finish(
    rows: list[dict[str, Any]],
    info: dict[str, Any],
    *,
    completed: bool,
    lag_bound: float | None,
    steps: Sequence[tuple[float, float]] | None,
    workers: int,
    out: Path,
) -> dict[str, Any]:
    """The summary, written to soak.json; the curves (soak.png, soak.txt) where there are
    rows; printed where there is something to say."""
    bound = info.get("lag_bound", lag_bound if lag_bound is not None else math.inf)
    summary = {
        **info,
        "completed": completed,
        **summarize(rows, lag_bound=bound, cache_mb=info.get("cache_mb")),
    }
    summary["all_targets_met"] &= completed  # a run stopped early proves nothing
    if steps:  # the targets are a steady soak's; a step run reports how the pool followed
        summary.update(targets={}, all_targets_met=None, step_response=step_response(rows, steps))
    (out / "soak.json").write_text(json.dumps(summary, indent=2) + "\n")
    chart = _write_curves(rows, info, steps, workers, out) if rows else ""
    if rows or completed:
        _print_summary(summary, out)
        if rows:
            print(f"\n{chart}")
    return summary


def _write_curves(
    rows: list[dict[str, Any]],
    info: dict[str, Any],
    steps: Sequence[tuple[float, float]] | None,
    workers: int,
    out: Path,
) -> str:
    """soak.png, and soak.txt: the curves as text, which it returns."""
    encoder_name = Path(info["encoder"].split(":", 1)[-1]).name
    if steps:
        title = (
            f"dmguard --workers auto, steps "
            f"{' > '.join(f'{r:g}/s' for r, _ in steps)}, {encoder_name}"
        )
        x_label = f"row ({info['row_seconds']:g} s)"
        write_plot(rows, out / "soak.png", title, panels=STEP_PANELS, x_label=x_label)
    else:
        title = (
            f"dmguard soak: {info.get('rate_per_s', '?')} records/s, {workers} "
            f"workers, {encoder_name}"
        )
        write_plot(rows, out / "soak.png", title)
    chart = text_chart(rows, TEXT_SERIES, x_key="elapsed_s", x_label="elapsed s")
    (out / "soak.txt").write_text(chart + "\n")
    return chart


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
