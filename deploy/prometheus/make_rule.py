"""Write prometheusrule.yaml, a Prometheus Operator `PrometheusRule`, from alerts.yml.

alerts.yml is the one source of dmguard's alert rules: plain Prometheus loads it
(prometheus.yml) and promtool tests it (tests/). The PrometheusRule carries the
same text, indented under `spec:`, so the two cannot drift: `make
deploy-generate` rewrites it, and `python deploy/prometheus/make_rule.py
--check` (run by tests/deploy) fails while it is stale.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "alerts.yml"
TARGET = HERE / "prometheusrule.yaml"
HEADER = """\
# GENERATED from alerts.yml by `make deploy-generate` (make_rule.py): edit alerts.yml instead.
# The Prometheus Operator loads it when its Prometheus selects this label
# (kube-prometheus-stack's default: release=<helm release name>).
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: dmguard
  labels:
    release: kube-prometheus-stack
spec:
"""


def render(alerts: str) -> str:
    """The PrometheusRule for the rule file text `alerts` (its top level is `groups:`);
    the file's opening comment, about the file itself, is left out."""
    lines = alerts.splitlines(keepends=True)
    while lines and lines[0].startswith("#"):
        lines.pop(0)
    return HEADER + "".join("  " + line if line.strip() else line for line in lines)


def main(argv: list[str]) -> int:
    wanted = render(SOURCE.read_text())
    if "--check" in argv:
        if not TARGET.exists() or TARGET.read_text() != wanted:
            print(f"{TARGET} is stale: run `make deploy-generate`", file=sys.stderr)
            return 1
        return 0
    TARGET.write_text(wanted)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
