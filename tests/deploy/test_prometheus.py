"""promtool on deploy/prometheus: the standalone config, the alert rules, and their
unit tests (every alert has a case where it fires and one where it does not);
and the PrometheusRule generated from alerts.yml is current."""

from __future__ import annotations

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
