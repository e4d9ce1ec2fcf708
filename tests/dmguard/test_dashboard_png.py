"""`dmguard dashboard`: the main panels from /metrics samples (rates, quantiles as PromQL
computes them) and from Prometheus' API (the dashboard's queries), drawn into one PNG.
tests/e2e/test_prometheus_scrape.py draws one from a real Prometheus and checks the
sampler's quantiles against Prometheus' own."""

from __future__ import annotations

import json
import math
import urllib.parse

from PIL import Image

from dmguard.dashboard_png import (
    DASHBOARD,
    MAIN_PANELS,
    Panel,
    _runs,
    histogram_quantile,
    panels_from_prometheus,
    panels_from_samples,
    parse_metrics,
    write_png,
)
from services.metrics import DriverMetrics


def test_histogram_quantile_interpolates_inside_the_bucket_as_promql_does():
    buckets = {0.1: 10.0, 1.0: 30.0, 10.0: 40.0, math.inf: 40.0}
    assert histogram_quantile(0.25, buckets) == 0.1  # rank 10: the top of the first bucket
    assert math.isclose(histogram_quantile(0.5, buckets), 0.1 + 0.9 * (20 - 10) / 20)
    assert math.isclose(histogram_quantile(0.99, buckets), 1 + 9 * (39.6 - 30) / 10)
    assert histogram_quantile(0.99, {1.0: 1.0, math.inf: 2.0}) == 1.0  # +Inf: highest bound
    assert histogram_quantile(0.5, {1.0: 0.0, math.inf: 0.0}) is None
    assert histogram_quantile(0.5, {}) is None


def _samples() -> list[tuple[float, dict]]:
    """Ten seconds of a serve: 10 verdicts (real) and 2 dead letters a second, latencies
    of 0.2 s, lag 5 then 0 on partition 0, two workers."""
    metrics, out = DriverMetrics(), []
    metrics.set_fleet(2, {("enc", "v1")})
    for second in range(11):
        metrics.apply(
            {
                "counts": {
                    ("records", ("verdict",)): 10,
                    ("verdicts", ("real",)): 10,
                    ("records", ("dead_letter",)): 2,
                    ("dead_letters", ("bad_url",)): 2,
                },
                "observations": {("end_to_end_seconds", ()): [0.2] * 12},
                "gauges": {("consumer_lag", ("0",)): 5 if second < 5 else 0},
            }
        )
        out.append((1000.0 + second, parse_metrics(metrics.render().decode())))
    return out


def test_panels_from_samples_are_rates_quantiles_and_gauges():
    panels = {p.title: p.series for p in panels_from_samples(_samples(), window_s=4)}
    assert list(panels) == [title for _, title in MAIN_PANELS]
    throughput = panels["throughput by outcome (records/s)"]
    assert {v for _, v in throughput["verdict"]} == {10.0}
    assert {v for _, v in throughput["dead_letter"]} == {2.0}
    assert {v for _, v in panels["verdict mix (verdicts/s)"]["real"]} == {10.0}
    assert {v for _, v in panels["verdict mix (verdicts/s)"]["generated"]} == {0.0}
    dead = panels["dead letters by code (records/s)"]
    assert {v for _, v in dead["bad_url"]} == {2.0} and {v for _, v in dead["timeout"]} == {0.0}
    latency = panels["end-to-end latency (s)"]
    for q in ("p50", "p95", "p99"):  # all in the (0.1, 0.25] bucket
        assert all(0.1 < v <= 0.25 for _, v in latency[q]), latency[q]
    lag = panels["consumer lag by partition (records)"]["partition 0"]
    assert [v for _, v in lag] == [5.0] * 4 + [0.0] * 6
    assert {v for _, v in panels["workers"]["workers"]} == {2.0}
    assert [t for t, _ in lag] == [1000.0 + s for s in range(1, 11)]


def test_a_counter_reset_counts_from_zero():
    (t0, first), (_, second) = _samples()[-1], _samples()[1]
    panels = panels_from_samples([(t0, first), (t0 + 1, second)], window_s=10)
    (verdicts,) = [p.series["verdict"] for p in panels if p.title.startswith("throughput")]
    assert verdicts == [(t0 + 1, 20.0)]  # the new driver's 20, not a negative rate


def test_panels_from_prometheus_send_the_dashboards_queries_and_name_series_by_legend():
    sent = []

    def get(url: str) -> dict:
        query = urllib.parse.parse_qs(urllib.parse.urlparse(url).query)
        sent.append(query["query"][0])
        metric = {"outcome": "verdict", "partition": "3", "code": "bad_url", "verdict": "real"}
        return {
            "status": "success",
            "data": {"result": [{"metric": metric, "values": [[1.0, "2"], [2.0, "NaN"]]}]},
        }

    panels = panels_from_prometheus("http://p:9090/", 0, 60, get=get)
    dashboard = json.loads(DASHBOARD.read_text())
    wanted = {title for title, _ in MAIN_PANELS}
    exprs = [t["expr"] for p in dashboard["panels"] if p["title"] in wanted for t in p["targets"]]
    assert sorted(sent) == sorted(exprs)
    series = {p.title: p.series for p in panels}
    assert series["throughput by outcome (records/s)"] == {"verdict": [(1.0, 2.0)]}
    assert series["consumer lag by partition (records)"] == {"partition 3": [(1.0, 2.0)]}
    assert set(series["end-to-end latency (s)"]) == {"p50", "p95", "p99"}
    assert series["workers"] == {"workers": [(1.0, 2.0)]}  # no legend: the panel's title


def test_write_png_draws_every_panel_and_names_the_empty_ones(tmp_path):
    panels = panels_from_samples(_samples(), window_s=4)
    panels[-1] = Panel("workers", {})
    path = tmp_path / "d.png"
    assert write_png(panels, path, "title") == ["workers"]
    with Image.open(path) as img:
        assert img.size == (1200, 860)
    assert path.stat().st_size < 150_000


def test_a_stretch_without_values_is_drawn_as_a_gap():
    pts = [(0.0, 1.0), (1.0, 1.0), (2.0, 1.0), (30.0, 2.0), (31.0, 2.0)]
    assert _runs(pts) == [pts[:3], pts[3:]]
    assert _runs(pts[:1]) == [pts[:1]]
