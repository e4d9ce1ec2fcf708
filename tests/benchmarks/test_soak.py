"""`dmguard soak`'s pure parts: p99 from histogram bucket deltas (against numpy on the
samples themselves), pacing, restart counting, the summary's targets and the plot.
The soak itself runs for tens of minutes and is not part of the suite."""

from __future__ import annotations

import bisect
import io
import json
import math

import numpy as np
import pytest
from PIL import Image

from benchmarks.soak_mix import BAD_KINDS, RecordMix
from benchmarks.soak_plot import PLOT_SIZE, write_plot
from benchmarks.soak_stats import (
    ROW_FIELDS,
    Scrape,
    TokenBucket,
    bucket_deltas,
    count_restarts,
    histogram_quantile,
    make_row,
    parse_scrape,
    summarize,
)
from dmguard import build_parser
from services.metrics import LATENCY_BUCKETS, DriverMetrics, WorkerStats

BOUNDS = (*LATENCY_BUCKETS, math.inf)


def cumulative(samples: np.ndarray) -> dict[float, float]:
    """What a Prometheus histogram with the service's buckets holds after `samples`."""
    return {le: float(np.sum(samples <= le)) for le in BOUNDS}


def width_of_bucket(value: float) -> float:
    """The width of the service's latency bucket `value` falls in."""
    i = bisect.bisect_left(LATENCY_BUCKETS, value)
    return LATENCY_BUCKETS[i] - (LATENCY_BUCKETS[i - 1] if i else 0.0)


@pytest.mark.parametrize("median_s", [0.03, 0.2, 0.8, 3.0])
@pytest.mark.parametrize("q", [0.5, 0.9, 0.99])
def test_quantile_of_buckets_is_within_a_bucket_of_the_samples(median_s, q):
    rng = np.random.default_rng(int(median_s * 1000))
    samples = rng.lognormal(np.log(median_s), 0.6, size=5000)
    samples = samples[samples < LATENCY_BUCKETS[-1]]  # a quantile in +Inf has no width
    got = histogram_quantile(q, sorted(cumulative(samples).items()))
    want = float(np.percentile(samples, q * 100))
    assert abs(got - want) <= width_of_bucket(want)


def test_quantile_interpolates_inside_the_bucket_as_prometheus_does():
    # 100 observations: 50 in (0, 0.1], 50 in (0.1, 0.5]; the 0.75 rank is half-way into
    # the second bucket, the 0.25 rank half-way into the first.
    buckets = [(0.1, 50.0), (0.5, 100.0), (math.inf, 100.0)]
    assert histogram_quantile(0.75, buckets) == pytest.approx(0.3)
    assert histogram_quantile(0.25, buckets) == pytest.approx(0.05)
    # in the +Inf bucket: the highest finite bound
    assert histogram_quantile(0.99, [(0.1, 50.0), (0.5, 90.0), (math.inf, 100.0)]) == 0.5
    assert histogram_quantile(0.99, [(0.1, 0.0), (math.inf, 0.0)]) is None  # nothing observed


def test_p99_of_one_minute_comes_from_the_bucket_deltas_only():
    rng = np.random.default_rng(7)
    slow = rng.uniform(2.0, 4.0, size=3000)  # an earlier minute, much slower
    fast = rng.uniform(0.01, 0.2, size=3000)  # this minute
    before = cumulative(slow)
    after = cumulative(np.concatenate([slow, fast]))
    got = histogram_quantile(0.99, bucket_deltas(before, after))
    want = float(np.percentile(fast, 99))
    assert abs(got - want) <= width_of_bucket(want)
    whole = histogram_quantile(0.99, sorted(after.items()))
    assert whole > 1.0  # the cumulative histogram would have said "slow"


def test_bucket_deltas_after_a_counter_reset_count_from_zero():
    before = {0.1: 80.0, math.inf: 100.0}
    after = {0.1: 5.0, math.inf: 10.0}
    assert bucket_deltas(before, after) == [(0.1, 5.0), (math.inf, 10.0)]
    assert bucket_deltas({}, after) == [(0.1, 5.0), (math.inf, 10.0)]


def test_token_bucket_sends_rate_times_t_by_time_t():
    rate, sent = 7.3, 0
    bucket = TokenBucket(rate)
    rng = np.random.default_rng(1)
    t = 0.0
    for _ in range(2000):  # ticks about every 100 ms, jittered
        t += rng.uniform(0.05, 0.15)
        sent += bucket.take(t)
        assert sent <= rate * t + 1e-6  # never ahead of the schedule
        assert sent >= math.floor(rate * t) - 1  # never more than one record behind
    assert sent == pytest.approx(rate * t, abs=1)


def test_token_bucket_catches_up_after_a_stall_by_at_most_its_capacity():
    bucket = TokenBucket(rate=20.0)  # capacity: one second of records
    assert bucket.take(0.1) == 2
    assert bucket.take(10.0) == 20  # a 10 s stall: 20, not 198
    assert bucket.take(10.1) == 2  # then on schedule again
    assert TokenBucket(rate=0.5).take(1.0) == 0  # below one record a tick: wait
    slow = TokenBucket(rate=0.5)
    assert sum(slow.take(t / 10) for t in range(1, 101)) == 5  # 0.5/s over 10 s


def test_restarts_are_workers_whose_pid_changed():
    known = {"0": 100, "1": 101}
    assert count_restarts(known, {"0": 100, "1": 101}) == (0, known)
    n, known2 = count_restarts(known, {"0": 100, "1": 555})
    assert n == 1 and known2 == {"0": 100, "1": 555}
    # worker 1 is being restarted: missing now, counted when it is back under a new pid
    n, known3 = count_restarts(known2, {"0": 100})
    assert n == 0 and known3 == known2
    n, _ = count_restarts(known3, {"0": 100, "1": 777})
    assert n == 1
    # a worker seen for the first time is no restart; both restarted: two
    assert count_restarts({}, {"0": 1, "1": 2})[0] == 0
    assert count_restarts(known, {"0": 1, "1": 2})[0] == 2


def test_a_scrape_of_the_real_metrics_reads_records_buckets_and_lag():
    driver, stats = DriverMetrics(), WorkerStats()
    stats.inc("records", "verdict", n=9)
    stats.inc("records", "dead_letter", n=2)
    for v in (0.02, 0.3, 0.3):
        stats.observe("end_to_end_seconds", v)
    stats.set_gauge("consumer_lag", 4, "0")
    stats.set_gauge("consumer_lag", 6, "3")
    stats.set_gauge("cache_memory_bytes", 3 * 2**20, "0")
    stats.set_gauge("cache_memory_bytes", 5 * 2**20, "1")
    driver.apply(stats.drain())
    s = parse_scrape(driver.render().decode())
    assert s.records == {"verdict": 9, "dead_letter": 2}
    assert s.lag == 10
    assert s.cache_bytes_max == 5 * 2**20  # the fullest worker's, not the sum
    assert set(s.latency_buckets) == set(BOUNDS)
    assert s.latency_buckets[0.025] == 1 and s.latency_buckets[math.inf] == 3


def test_a_row_is_the_difference_of_two_scrapes():
    before = Scrape({"verdict": 100, "dead_letter": 5}, {0.1: 10.0, 1.0: 10.0, math.inf: 10.0}, 3)
    after = Scrape({"verdict": 157, "dead_letter": 8}, {0.1: 10.0, 1.0: 110.0, math.inf: 110.0}, 7)
    row = make_row(
        minute=2,
        elapsed_s=120.04,
        seconds=60.0,
        sent=60,
        before=before,
        after=after,
        worker_rss_mib=[400.0, 420.26],
        restarts=1,
        driver_rss_mib=300.0,
    )
    assert set(row) == set(ROW_FIELDS)
    assert (row["verdicts"], row["dead_letters"], row["outputs"]) == (57, 3, 60)
    assert row["outputs_per_s"] == 1.0 and row["sent_per_s"] == 1.0
    assert row["p99_ms"] == pytest.approx(991.0)  # 0.1 + 0.9 * 0.99, all 100 in (0.1, 1]
    assert (row["worker_rss_sum_mib"], row["worker_rss_max_mib"]) == (820.3, 420.3)
    assert (row["lag"], row["restarts"], row["workers"]) == (7, 1, 2)


def rows_with(rss: list[float], lag: list[int] | None = None, restarts: int = 0) -> list[dict]:
    lag = lag or [5] * len(rss)
    return [
        {
            "minute": i + 1,
            "elapsed_s": 60.0 * (i + 1),
            "sent": 600,
            "outputs": 600,
            "verdicts": 570,
            "dead_letters": 30,
            "sent_per_s": 10.0,
            "outputs_per_s": 10.0,
            "workers": 2,
            "worker_rss_sum_mib": r,
            "worker_rss_max_mib": r / 2,
            "lag": g,
            "p99_ms": 250.0 + i,
            "restarts": restarts if i == len(rss) - 1 else 0,
            "driver_rss_mib": 300.0,
        }
        for i, (r, g) in enumerate(zip(rss, lag, strict=True))
    ]


def test_summary_leaves_the_first_minute_out_of_the_rss_baseline():
    # 1000 -> 1500 MiB in minute 1 (models load): not growth; then 1500 -> 1575 is 5%.
    s = summarize(rows_with([1000, 1500, 1520, 1540, 1575]), lag_bound=100)
    assert s["worker_rss_baseline_mib"] == 1500 and s["worker_rss_growth"] == pytest.approx(0.05)
    assert s["targets"] == {
        "rss_growth_under_10pct": True,
        "lag_bounded": True,
        "no_restarts": True,
    }
    assert s["all_targets_met"]
    # the baseline is the lower of minutes 2 and 3
    assert (
        summarize(rows_with([900, 1600, 1500, 1600]), lag_bound=100)["worker_rss_baseline_mib"]
        == 1500
    )


def test_summary_fails_each_target_on_its_own():
    grew = summarize(rows_with([1000, 1500, 1520, 1600, 1700]), lag_bound=100)  # +13%
    assert grew["targets"]["rss_growth_under_10pct"] is False and not grew["all_targets_met"]
    assert grew["targets"]["lag_bounded"] and grew["targets"]["no_restarts"]
    lagging = summarize(rows_with([1000] * 4, lag=[5000, 10, 101, 10]), lag_bound=100)
    assert lagging["targets"]["lag_bounded"] is False and lagging["lag_max_after_warmup"] == 101
    # a lag in the warm-up minute (the capacity burst draining) does not count
    assert summarize(rows_with([1000] * 4, lag=[5000, 10, 10, 10]), lag_bound=100)["targets"][
        "lag_bounded"
    ]
    restarted = summarize(rows_with([1000] * 4, restarts=1), lag_bound=100)
    assert restarted["targets"]["no_restarts"] is False and restarted["restarts"] == 1
    assert summarize([], lag_bound=100)["all_targets_met"] is False
    cached = rows_with([1000] * 4)
    cached[2]["cache_mib_max"] = 2.5
    assert summarize(cached, lag_bound=100, cache_mb=2.5)["targets"]["cache_within_setting"]
    over = summarize(cached, lag_bound=100, cache_mb=2.0)
    assert over["targets"]["cache_within_setting"] is False and over["cache_mib_max"] == 2.5


def test_plot_is_a_png_of_the_stated_size(tmp_path):
    rows = rows_with([1000, 1500, 1520, 1540], lag=[3, 0, 12, 4])
    rows[2]["p99_ms"] = None  # a minute without verdicts
    path = tmp_path / "out" / "soak.png"
    write_plot(rows, path, "a title")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    img = Image.open(io.BytesIO(data))
    img.verify()
    assert img.format == "PNG" and img.size == PLOT_SIZE
    pixels = np.asarray(Image.open(path).convert("RGB"))
    assert (pixels != 255).any(axis=2).mean() > 0.01  # something was drawn


def test_the_mix_is_about_five_percent_bad_over_every_kind_with_unique_ids():
    mix = RecordMix("http://127.0.0.1:1", bad_fraction=0.05, seed=3)
    records = [mix.record("soak", i) for i in range(4000)]
    assert sum(n for k, n in mix.kinds.items() if k != "good") / 4000 == pytest.approx(
        0.05, abs=0.01
    )
    assert set(mix.kinds) == {"good", *BAD_KINDS}
    out_keys = [out_key for _, _, out_key in records]
    assert len(set(out_keys)) == len(out_keys)  # one output key per record: unique ids
    for key, value, out_key in records:
        if out_key.startswith("raw:"):  # malformed JSON: the dead letter keeps the text
            assert key is None and out_key == "raw:" + value.decode()
        else:
            assert json.loads(value)["id"] == out_key == key.decode()
    good_paths = {
        json.loads(v)["url"].split("/", 3)[3].split("?")[0]
        for _, v, k in records
        if not k.startswith("raw:") and "/img/" in json.loads(v)["url"]
    }
    assert len(good_paths) >= 10  # images of several sizes and formats
    assert all("/" + p in mix.routes for p in good_paths)


def test_the_command_is_registered_with_its_defaults(capsys):
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["soak", "--help"])
    assert exit_.value.code == 0
    assert "--capacity-images" in capsys.readouterr().out
    args = build_parser().parse_args(["soak"])
    assert (args.minutes, args.rate, args.fraction, args.bad_fraction) == (30.0, None, 0.8, 0.05)
    assert args.out == ".cache/soak" and args.row_seconds == 60.0


def test_steps_parse_and_say_the_rate_at_each_moment():
    from benchmarks.soak_stats import parse_steps, rate_at
    from services.errors import ConfigError

    steps = parse_steps("2x120, 10x240,2x60")
    assert steps == [(2.0, 120.0), (10.0, 240.0), (2.0, 60.0)]
    assert [rate_at(steps, t) for t in (0, 119.9, 120, 359.9, 360, 1000)] == [2, 2, 10, 10, 2, 2]
    for bad in ("10", "10x", "ax5", "0x10", "5x-1"):
        with pytest.raises(ConfigError):
            parse_steps(bad)


def test_step_response_says_when_the_pool_followed_each_step():
    from benchmarks.soak_stats import step_response

    # Rows every 10 s; 1 worker until 150 s, 2 until 400 s, then 1; steps at 120 s and 360 s.
    workers = {t: 1 if t < 150 or t >= 400 else 2 for t in range(10, 490, 10)}
    rows = [{"elapsed_s": t, "workers": w} for t, w in workers.items()]
    up, down = step_response(rows, [(2, 120), (10, 240), (2, 120)])
    assert up == {
        "at_s": 120,
        "rate": 10,
        "workers_before": 1,
        "resized_after_s": 30,
        "workers_after": 2,
    }
    assert down["workers_before"] == 2 and down["resized_after_s"] == 40
    assert down["workers_after"] == 1
    # No resize before the next step: None, not the later one's delay.
    late = [{"elapsed_s": t, "workers": 1 if t < 300 else 2} for t in range(10, 370, 10)]
    first, second = step_response(late, [(2, 120), (10, 120), (2, 120)])
    assert first["resized_after_s"] is None and second["resized_after_s"] == 60
