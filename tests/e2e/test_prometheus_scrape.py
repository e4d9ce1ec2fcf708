"""The dashboard and the alert rules on real data: a real Prometheus (tests/e2e/prometheus.py:
Debian's server binary, scraping and evaluating every second, deploy/prometheus's config and
rules with `for:` cut to a second) scrapes one `dmguard serve` on the embedded broker (the
durable one: the in-memory one's end offsets undercount a backlog sent in batches, so its
lag would not show it, docs/delivery.md) while
a stream runs, then its HTTP API answers every panel's and every alert's expression, each
checked against what the stream implies (the outputs read back from Kafka, with their
timestamps and latencies).

The stream, one serve, about 50 s (after 8 good records, so that verdicts have been seen):
1. bad records, DEAD_LETTERS of each code, alone: the dead-letter share is 100%;
2. good records at STEADY_RATE a second for STEADY_S: throughput, verdict mix, latency;
3. a backlog of BACKLOG good records sent at once while the image server stalls for
   STALL_S (nothing can finish, so the lag holds above 1000), then drained.

Dashboard queries are sent as the JSON has them; template variables would be substituted
(`panel_targets`: the ones the test knows, and an unknown one fails the test). Rates read
over the dashboard's own windows (1m, 5m), which the run fills from Prometheus' first scrape,
so a counter's `rate(x[5m]) * 300` at the end is its count over the run.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections import Counter
from datetime import datetime

import pytest
import yaml

from dmguard.dashboard_png import (
    MetricsSampler,
    panels_from_prometheus,
    panels_from_samples,
    write_png,
)
from services.errors import DEAD_LETTER_CODES
from services.metrics import BROKER_OPS, LATENCY_BUCKETS, STAGES
from services.poll import wait_until
from tests.conftest import TINY
from tests.e2e.harness import (
    OutputReader,
    Service,
    Trickle,
    good_stream,
    output_key,
    produce,
    wait_accounted,
)
from tests.e2e.prometheus import DEPLOY, INTERVAL_S, Prometheus

pytestmark = [pytest.mark.slow, pytest.mark.broker, pytest.mark.ray]

DEAD_LETTERS = {  # code -> how many bad records of it the stream sends
    "bad_record": 3,
    "bad_url": 2,
    "blocked_url": 2,
    "fetch_failed": 3,
    "not_an_image": 2,
    "decode_failed": 2,
}
STEADY_RATE = 10  # good records a second
STEADY_S = 30
BACKLOG = 1200
STALL_S = 4.0
PARTITIONS = 4  # ensure_topics' default
WORKERS = 2
# Grafana's variables, as the test evaluates them (none in the dashboard today): a rate
# interval of four scrapes, Grafana's own rule, and the run as the range.
VARIABLES = {"__rate_interval": f"{4 * INTERVAL_S}s", "__interval": f"{INTERVAL_S}s"}


def panel_targets(dashboard: dict, run_s: float) -> list[tuple[str, str, str]]:
    """(panel title, refId, expression) of every query of the dashboard, its variables
    substituted (VARIABLES, and $__range as the run); an unknown variable fails."""
    values = {**VARIABLES, "__range": f"{math.ceil(run_s)}s"}

    def substitute(expr: str) -> str:
        def one(m: re.Match) -> str:
            name = m.group(1) or m.group(2)
            assert name in values, f"a variable the test cannot fill: ${name} in {expr}"
            return values[name]

        return re.sub(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)", one, expr)

    return [
        (p["title"], t["refId"], substitute(t["expr"]))
        for p in dashboard["panels"]
        for t in p.get("targets", [])
    ]


def alert_rules() -> dict[str, str]:
    groups = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())["groups"]
    return {r["alert"]: r["expr"] for g in groups for r in g["rules"] if "alert" in r}


def bad_records(server) -> tuple[list[bytes], dict[str, str]]:
    """The stream's bad records and {output key: the code each must get}."""
    server.routes["/bad/page.html"] = b"<html><body>not an image</body></html>"
    server.routes["/bad/truncated.jpg"] = good_images_jpeg()[:2000]
    values, codes = [], {}
    for code, n in DEAD_LETTERS.items():
        for i in range(n):
            rid = f"bad-{code}-{i}"
            url = {
                "bad_url": f"gopher://example.com/{i}",
                "blocked_url": f"http://127.0.0.2:{server.port}/img/photo.jpg?{i}",
                "fetch_failed": server.url(f"/nope/{i}.jpg"),
                "not_an_image": server.url(f"/bad/page.html?{i}"),
                "decode_failed": server.url(f"/bad/truncated.jpg?{i}"),
            }.get(code)
            if code == "bad_record":
                value = json.dumps({"id": rid}).encode()  # no url
            else:
                value = json.dumps({"id": rid, "url": url}).encode()
            values.append(value)
            codes[rid] = code
    return values, codes


def good_images_jpeg() -> bytes:
    from tests.images import jpeg

    return jpeg(400, 300, seed=9)


def when(record: dict) -> float:
    """An output's `ts` as unix seconds."""
    return datetime.fromisoformat(record["ts"].replace("Z", "+00:00")).timestamp()


def bucket_of(seconds: float) -> tuple[float, float]:
    """The histogram bucket (lower, upper] that holds `seconds`."""
    lower = 0.0
    for upper in (*LATENCY_BUCKETS, math.inf):
        if seconds <= upper:
            return lower, upper
        lower = upper
    raise AssertionError("unreachable")


def near(value: float, expected: float, rel: float, absolute: float) -> bool:
    return abs(value - expected) <= rel * expected + absolute


def by(result: list[dict], label: str) -> dict[str, float]:
    """{label value: sample value} of an instant query's result."""
    return {s["metric"].get(label, ""): s["value"] for s in result}


def test_prometheus_scrapes_serve_and_every_panel_and_alert_has_the_streams_series(
    tmp_path, image_server, durable_broker, tiny_registry
):
    broker = durable_broker  # exact end offsets: the in-memory one undercounts a batched backlog
    t_start = time.monotonic()
    service = Service(broker.bootstrap, tiny_registry.root, tmp_path / "serve.log")
    prometheus = reader = sampler = None
    try:
        service.wait_ready()
        # Prometheus after serve is ready: started first, WorkersDown would rightly pend
        # while the target is down.
        prometheus = Prometheus(tmp_path / "prometheus", f"127.0.0.1:{service.port}")
        prometheus.wait_ready()
        wait_until(
            lambda: prometheus.query('sum(dmguard_workers) == 2 and sum(up{job="dmguard"}) == 1'),
            60,
            what="Prometheus to scrape serve's workers",
        )
        # A few verdicts first, as from a service that has been judging for a while:
        # otherwise the first records waiting after idleness meet DmguardNoVerdicts' "no
        # verdict in 10 minutes and records waiting" (its real `for: 10m` absorbs that).
        reader = OutputReader(broker.bootstrap)
        warm, warm_ids = good_stream(image_server, 8, "warm")
        produce(broker.bootstrap, warm)
        wait_accounted(reader, warm_ids, 60)
        wait_until(
            lambda: prometheus.query("sum(rate(dmguard_verdicts_total[10m])) > 0"),
            30,
            what="Prometheus to see the first verdicts",
        )
        wait_until(lambda: not prometheus.api("alerts")["alerts"], 30, what="no alert active")
        t_begin = time.time()
        sampler = MetricsSampler(f"http://127.0.0.1:{service.port}/metrics").start()

        # 1. bad records alone
        bad_values, bad_codes = bad_records(image_server)
        produce(broker.bootstrap, bad_values)
        out = wait_accounted(reader, set(bad_codes), 60)
        # 2. a steady stream of good records
        steady, steady_ids = good_stream(image_server, STEADY_RATE * STEADY_S, "steady")
        trickle = Trickle(broker.bootstrap, steady, per_tick=STEADY_RATE // 2, tick_s=0.5)
        wait_until(lambda: trickle.sent == len(steady), STEADY_S + 30, what="the trickle")
        trickle.stop()
        out = wait_accounted(reader, set(bad_codes) | steady_ids, 60)
        t_steady = time.time()
        # 3. a backlog, held while the images stall, then drained
        backlog, backlog_ids = good_stream(image_server, BACKLOG, "backlog")
        image_server.delay_s = STALL_S
        t_backlog = time.time()
        produce(broker.bootstrap, backlog)
        wait_until(
            lambda: prometheus.query("sum(dmguard_consumer_lag) > 1000"),
            30,
            what="the backlog in Prometheus' lag",
        )
        image_server.delay_s = 0
        everything = warm_ids | set(bad_codes) | steady_ids | backlog_ids
        out = wait_accounted(reader, everything, 240)
        t_drained = time.time()
        keys = [output_key(r) for r in out.verdicts + out.dead_letters]
        assert set(keys) == everything and len(keys) == len(everything), "lost or duplicated"
        wait_until(
            lambda: prometheus.query(
                f"sum(dmguard_records_total) == {len(everything)} and sum(dmguard_consumer_lag) == 0"
            ),
            30,
            what="Prometheus to see every record counted and no lag",
        )
        time.sleep(2 * INTERVAL_S)
        t_end = time.time()
        sampler.stop()
        stream_s = time.monotonic() - t_start
        check_panels(prometheus, out, bad_codes, tiny_registry, t_begin, t_steady, t_backlog, t_end)
        check_alerts(prometheus, out, t_begin, t_end)
        check_pictures(prometheus, sampler, tmp_path, t_begin, t_end)
        print(
            f"stream {t_end - t_begin:.0f} s (backlog drained in {t_drained - t_backlog:.0f} s), "
            f"with serve and Prometheus {stream_s:.0f} s"
        )
    except BaseException:
        if prometheus is not None:
            print("prometheus log:\n" + prometheus.tail())
        print("serve log:\n" + service.tail())
        raise
    finally:
        if reader is not None:
            reader.close()
        if sampler is not None:
            sampler.stop()
        if prometheus is not None:
            prometheus.stop()
        service.kill()


def check_panels(prom, out, bad_codes, registry, t_begin, t_steady, t_backlog, t_end) -> None:
    """Every panel's queries return series over the run, and the values the stream implies."""
    dashboard = json.loads((DEPLOY / "grafana" / "dmguard.json").read_text())
    targets = panel_targets(dashboard, t_end - t_begin)
    empty = [
        f"{title} [{ref}]: {expr}"
        for title, ref, expr in targets
        if not prom.query_range(expr, t_begin, t_end)
    ]
    assert not empty, "panels without series over the run:\n" + "\n".join(empty)
    exprs = {(title, ref): expr for title, ref, expr in targets}

    def q(title: str, ref: str = "A", at: float = t_end) -> list[dict]:
        return prom.query(exprs[(title, ref)], at)

    outputs = out.verdicts + out.dead_letters

    def finished(lo: float, hi: float, pick=lambda r: True) -> int:
        return sum(1 for r in outputs if lo < when(r) <= hi and pick(r))

    # Workers and head
    assert [s["value"] for s in q("Workers")] == [WORKERS]
    (head,) = q("Head version")
    assert head["metric"]["head_version"] == registry.current()
    assert head["metric"]["encoder"] == TINY
    # Throughput just after the steady stream (the backlog's images stall STALL_S, so
    # nothing finishes meanwhile, and every output of the stream is scraped by then): the
    # outputs of the last minute
    at = t_steady + 3
    lo, hi = at - 60, at
    is_verdict = lambda r: "verdict" in r  # noqa: E731
    expected = {
        "verdict": finished(lo, hi, is_verdict) / 60,
        "dead_letter": finished(lo, hi, lambda r: not is_verdict(r)) / 60,
    }
    (total,) = q("Images/s", at=at)
    assert near(total["value"], sum(expected.values()), 0.15, 0.5), (total, expected)
    assert sum(expected.values()) > STEADY_RATE / 3, expected  # the trickle is in the window
    outcome = by(q("Throughput by outcome (records/s)", at=at), "outcome")
    assert outcome.keys() == expected.keys()
    for name, rate in expected.items():
        assert near(outcome[name], rate, 0.15, 0.5), (name, outcome, expected)
    # Verdict mix and dead letters by code over the run (5m windows: the whole run)
    window = 300
    assert t_end - t_begin < window - 30, "the run outgrew the dashboard's 5m windows"
    mix = by(q("Verdict mix (uncertain: to human review)"), "verdict")
    sent = Counter(v["verdict"] for v in out.verdicts)
    assert mix.keys() == {"real", "uncertain", "generated"}
    for verdict, rate in mix.items():
        assert near(rate * window, sent[verdict], 0.03, 1), (verdict, rate * window, sent)
    codes = by(q("Dead letters by code"), "code")
    assert codes.keys() == set(DEAD_LETTER_CODES)
    got = Counter(d["error"]["code"] for d in out.dead_letters)
    assert got == Counter(bad_codes.values()) == Counter(DEAD_LETTERS)
    for code, rate in codes.items():
        assert round(rate * window) == DEAD_LETTERS.get(code, 0), (code, rate * window)
    # End-to-end latency: each quantile within the buckets of the verdicts' own quantiles
    # one percentile either side (the histogram also holds the few dead letters)
    latencies = sorted(v["latency_ms"] / 1000 for v in out.verdicts)

    def nth(quantile: float) -> float:
        rank = math.ceil(min(1.0, max(0.0, quantile)) * len(latencies)) - 1
        return latencies[min(len(latencies) - 1, max(0, rank))]

    for ref, quantile in (("A", 0.5), ("B", 0.95), ("C", 0.99)):
        (est,) = q("End-to-end latency", ref)
        low, high = bucket_of(nth(quantile - 0.01))[0], bucket_of(nth(quantile + 0.01))[1]
        assert low <= est["value"] <= high, (quantile, est["value"], nth(quantile), low, high)
    # Stages, batches
    p95 = by(q("Stage time p95"), "stage")
    assert p95.keys() == set(STAGES) and all(0 <= v <= 60 for v in p95.values()), p95
    share = by(q("Stage time share"), "stage")
    assert share.keys() == set(STAGES) and share["embed"] > 0 and share["fetch"] > 0, share
    (mean,) = q("Batch size", "A")
    (batch95,) = q("Batch size", "B")
    assert 1 <= mean["value"] <= 32 and 1 <= batch95["value"] <= 32, (mean, batch95)
    # Lag: near 0 before the backlog, above 1000 under it, 0 after; every partition
    (lag,) = prom.query_range(exprs[("Consumer lag", "A")], t_backlog - 2, t_end)
    values = [v for _, v in lag["values"]]
    peak = values.index(max(values))
    assert values[0] < 100 and max(values) > 1000 and values[-1] == 0, values
    falling = zip(values[peak:], values[peak + 1 :], strict=False)
    assert all(b <= a + 50 for a, b in falling), f"lag rose again after its peak: {values}"
    parts = prom.query_range(exprs[("Consumer lag by partition", "A")], t_backlog - 2, t_end)
    assert {s["metric"]["partition"] for s in parts} == {str(p) for p in range(PARTITIONS)}
    for s in parts:
        part = [v for _, v in s["values"]]
        assert max(part) > BACKLOG / PARTITIONS / 3 and part[-1] == 0, (s["metric"], part)
    # Head swaps, registry errors, isolated records: none in this run
    assert [s["value"] for s in q("Head swaps")] == [0]
    assert [s["value"] for s in q("Registry errors and isolated records", "A")] == [0]
    assert [s["value"] for s in q("Registry errors and isolated records", "B")] == [0]
    broker_ops = by(q("Broker errors by operation"), "op")
    assert broker_ops.keys() == set(BROKER_OPS) and broker_ops["health_check"] == 0, broker_ops
    # Provenance: every verdict's image read, none with a marker
    title = next(t for t, _, _ in targets if t.startswith("Provenance"))
    prov = {(s["metric"]["kind"], s["metric"]["result"]): s["value"] for s in q(title)}
    assert prov.keys() == {("none", "none")}, prov
    assert near(prov[("none", "none")], len(out.verdicts), 0.03, 1), (prov, len(out.verdicts))


def check_alerts(prom, out, t_begin, t_end) -> None:
    """Every rule loads and evaluates; the alerts the stream should raise were pending or
    firing (Prometheus' own ALERTS series), the others never, and those the stream's end
    undoes are inactive again."""
    rules = alert_rules()
    loaded = {
        r["name"]: r
        for g in prom.api("rules", type="alert")["groups"]
        for r in g["rules"]
        if r["type"] == "alerting"
    }
    assert loaded.keys() == rules.keys()
    assert all(r["health"] == "ok" for r in loaded.values()), {
        n: r.get("lastError") for n, r in loaded.items() if r["health"] != "ok"
    }
    alerts = prom.query_range("ALERTS", t_begin, t_end)
    active = {s["metric"]["alertname"] for s in alerts}
    states = sorted({(s["metric"]["alertname"], s["metric"]["alertstate"]) for s in alerts})
    should = {"DmguardDeadLetterRateHigh", "DmguardLagGrowing"}
    unsure = set()
    slow_share = slowest_share(out)
    if slow_share >= 0.02:  # p99 above 10 s, in Prometheus' buckets too
        should.add("DmguardLatencyP99High")
    elif slow_share > 0.005:  # too near the line to say either way
        unsure.add("DmguardLatencyP99High")
    print(f"alerts seen: {states}; share slower than 10 s: {slow_share:.3f}")
    assert active - unsure == should, (states, f"share slower than 10 s: {slow_share:.3f}")
    # Each expression returns series exactly while its alert was active
    for name, expr in rules.items():
        if name not in unsure:
            assert bool(prom.query_range(expr, t_begin, t_end)) == (name in active), (name, expr)
    # After the stream: the dead-letter share is low again and the lag 0, so those two are
    # resolved; a p99 above 10 s stays while its 5m window holds the backlog's records.
    still = {a["labels"]["alertname"] for a in prom.api("alerts")["alerts"]}
    assert still <= {"DmguardLatencyP99High"} & (should | unsure), still


def check_pictures(prom, sampler, tmp_path, t_begin, t_end) -> None:
    """`dmguard dashboard`'s two sources: the PNG from Prometheus' API has every main panel;
    the one from serve's /metrics sampled over the run too, and the sampler's latency
    quantiles over the whole run are Prometheus' own (the same buckets, the same rule)."""
    from_prometheus = panels_from_prometheus(prom.url, t_begin, t_end, step=1)
    assert write_png(from_prometheus, tmp_path / "prometheus.png", "from Prometheus") == []
    assert all(p.series for p in from_prometheus), [p.title for p in from_prometheus]
    assert write_png(sampler.panels(), tmp_path / "metrics.png", "from /metrics") == []
    whole_run = panels_from_samples(sampler.samples, window_s=t_end - t_begin + 60)
    latency = next(p.series for p in whole_run if p.title.startswith("end-to-end"))
    for legend, quantile in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99)):
        expr = (
            f"histogram_quantile({quantile}, sum by (le) "
            f"(increase(dmguard_end_to_end_seconds_bucket[{math.ceil(t_end - t_begin) + 60}s])))"
        )
        (theirs,) = prom.query(expr, t_end)
        assert math.isclose(latency[legend][-1][1], theirs["value"], rel_tol=0.02), legend


def slowest_share(out) -> float:
    """The largest share, at any output's time, of the outputs so far slower than 10 s
    (DmguardLatencyP99High's line): the run is shorter than its 5m window."""
    verdicts = sorted(out.verdicts, key=when)
    slow = worst = 0.0
    for n, v in enumerate(verdicts, 1):
        slow += v["latency_ms"] > 10_000
        worst = max(worst, slow / (n + len(out.dead_letters)))
    return worst


def test_panel_targets_substitutes_known_variables_and_refuses_others():
    dashboard = {
        "panels": [
            {"title": "a", "targets": [{"refId": "A", "expr": "rate(x[$__rate_interval])"}]},
            {"title": "b", "targets": [{"refId": "A", "expr": "increase(x[${__range}])"}]},
        ]
    }
    assert panel_targets(dashboard, 61.5) == [
        ("a", "A", f"rate(x[{4 * INTERVAL_S}s])"),
        ("b", "A", "increase(x[62s])"),
    ]
    dashboard["panels"][0]["targets"][0]["expr"] = 'x{job="$job"}'
    with pytest.raises(AssertionError, match=r"\$job"):
        panel_targets(dashboard, 1)


def test_the_test_rules_keep_every_expression_and_cut_only_for(tmp_path):
    from tests.e2e.prometheus import FOR_S, test_rules

    shipped = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    cut = yaml.safe_load(test_rules(tmp_path / "alerts.yml").read_text())
    for g_shipped, g_cut in zip(shipped["groups"], cut["groups"], strict=True):
        for a, b in zip(g_shipped["rules"], g_cut["rules"], strict=True):
            assert {k: v for k, v in a.items() if k != "for"} == {
                k: v for k, v in b.items() if k != "for"
            }
            assert ("for" in a) == ("for" in b) and b.get("for", f"{FOR_S}s") == f"{FOR_S}s"
