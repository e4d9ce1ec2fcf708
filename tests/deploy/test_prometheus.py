"""promtool on deploy/prometheus: the standalone config, the alert rules, and their
unit tests (every alert has a case where it fires and one where it does not);
and the PrometheusRule generated from alerts.yml is current."""

from __future__ import annotations

import re
import subprocess
import sys

import yaml

from tests.deploy.tools import DEPLOY, run, tool

PROM = DEPLOY / "prometheus"


def promtool(*args) -> subprocess.CompletedProcess[str]:
    return run([tool("promtool"), *args], cwd=PROM)


def alert_names() -> set[str]:
    rules = yaml.safe_load((PROM / "alerts.yml").read_text())
    return {r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r}


def test_promtool_checks_the_standalone_config():
    done = promtool("check", "config", "prometheus.yml")  # loads alerts.yml too
    assert done.returncode == 0, done.stdout + done.stderr


def test_promtool_checks_the_rules():
    done = promtool("check", "rules", "alerts.yml")
    assert done.returncode == 0, done.stdout + done.stderr


def test_promtool_unit_tests_pass():
    tests = sorted((PROM / "tests").glob("*.yml"))
    assert tests
    done = promtool("test", "rules", *[t.relative_to(PROM) for t in tests])
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_alert_is_tested_firing_and_not_firing():
    firing, silent = set(), set()
    for path in (PROM / "tests").glob("*.yml"):
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                (firing if check.get("exp_alerts") else silent).add(check["alertname"])
    names = alert_names()
    assert names - firing == set(), "alerts never tested firing"
    assert names - silent == set(), "alerts never tested staying silent"
    assert (firing | silent) - names == set(), "tests of alerts that do not exist"


def test_prometheus_rule_is_generated_from_alerts_yml():
    done = run([sys.executable, PROM / "make_rule.py", "--check"])
    assert done.returncode == 0, done.stderr


def _queries() -> list[str]:
    import json

    dashboard = json.loads((DEPLOY / "grafana" / "dmguard.json").read_text())
    rules = yaml.safe_load((PROM / "alerts.yml").read_text())
    return [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])] + [
        r["expr"] for g in rules["groups"] for r in g["rules"]
    ]


def _seconds(duration: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
    parts = re.findall(r"(\d+)(ms|s|m|h|d)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, duration
    return sum(int(n) * units[u] for n, u in parts)


def test_every_range_covers_four_scrapes():
    """A rate over a window with fewer than two scrapes is empty, and one missed scrape
    empties a window of two: every [range] in the dashboard and the rules spans at least
    four scrape intervals of the shipped config (Grafana's $__rate_interval rule).
    tests/e2e/test_prometheus_scrape.py runs the queries against a real Prometheus, but
    scraping every second, where a too-short window still fills."""
    scrape = _seconds(
        yaml.safe_load((PROM / "prometheus.yml").read_text())["global"]["scrape_interval"]
    )
    ranges = [(q, r) for q in _queries() for r in re.findall(r"\[([^\]:]+)\]", q)]
    assert ranges
    short = [(q, r) for q, r in ranges if _seconds(r) < 4 * scrape]
    assert not short, f"windows shorter than 4 x {scrape:g} s: {short}"


def test_every_histogram_quantile_reads_the_buckets_by_le():
    """histogram_quantile over buckets summed without `le` (or over a _sum/_count) is
    empty: each call reads *_bucket aggregated by le."""
    calls = [q for q in _queries() if "histogram_quantile" in q]
    assert calls
    for q in calls:
        assert re.search(
            r"histogram_quantile\(\s*0?\.\d+,\s*sum by \(le\b[^)]*\)\s*\(\s*rate\(\w+_bucket\[", q
        ), q
