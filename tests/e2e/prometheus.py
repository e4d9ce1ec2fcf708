"""A real Prometheus for the end-to-end tests: the server binary from Debian's `prometheus`
package (`make prometheus` unpacks it into .cache/deploy-tools, pinned and checksummed,
the same .deb as promtool), scraping one `dmguard serve` with deploy/prometheus's config
and alert rules, and its HTTP API.

What the test changes in the shipped files, and nothing else: the scrape and evaluation
intervals (15 s -> 1 s), the target (the test's serve), the rules' path, and the alerts'
`for:` durations (2 to 15 minutes -> `FOR_S`), so a condition true for one evaluation is
seen pending and, a second later, firing. The expressions, labels and job name are the
shipped ones; promtool's unit tests (tests/deploy) check the durations.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from services.broker import free_port
from services.poll import WaitTimeout, wait_until

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
INTERVAL_S = 1
FOR_S = 1


def prometheus_binary() -> Path:
    """$PROMETHEUS (`make test` sets it), else .cache/deploy-tools/prometheus-*, else PATH.
    Missing: the test fails under CI (`make test` unpacks it first) and skips elsewhere."""
    from tests.conftest import _skip_or_fail

    candidates = [Path(os.environ["PROMETHEUS"])] if os.environ.get("PROMETHEUS") else []
    cached = (ROOT / ".cache" / "deploy-tools").glob("prometheus-*")
    candidates += sorted((p for p in cached if p.suffix != ".part"), reverse=True)
    if shutil.which("prometheus"):
        candidates.append(Path(shutil.which("prometheus")))
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return path
    _skip_or_fail("the Prometheus server is missing: run `make prometheus`")
    raise AssertionError("unreachable")


def test_rules(path: Path) -> Path:
    """deploy/prometheus/alerts.yml with every `for:` cut to FOR_S, written to `path`."""
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = f"{FOR_S}s"
    path.write_text(yaml.safe_dump(rules, sort_keys=False))
    return path


test_rules.__test__ = False  # a helper, not a test


class Prometheus:
    """The Prometheus server in a subprocess, scraping `target` (host:port of a serve)."""

    def __init__(self, root: Path, target: str) -> None:
        root.mkdir(parents=True, exist_ok=True)
        config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
        interval = f"{INTERVAL_S}s"
        config["global"] = {
            "scrape_interval": interval,
            "scrape_timeout": interval,
            "evaluation_interval": interval,
        }
        config["rule_files"] = [str(test_rules(root / "alerts.yml"))]
        (job,) = config["scrape_configs"]  # the shipped job, its name and path unchanged
        job["static_configs"] = [{"targets": [target]}]
        (root / "prometheus.yml").write_text(yaml.safe_dump(config, sort_keys=False))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = root / "prometheus.log"
        self._log_file = self.log.open("ab")
        self.proc = subprocess.Popen(
            [
                str(prometheus_binary()),
                f"--config.file={root / 'prometheus.yml'}",
                f"--storage.tsdb.path={root / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ],
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
        )

    def wait_ready(self, timeout: float = 60.0) -> None:
        def ready() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"prometheus exited {self.proc.returncode}:\n{self.tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as r:
                    return r.status == 200
            except OSError:
                return False

        try:
            wait_until(ready, timeout, what="prometheus to be ready")
        except WaitTimeout:
            raise AssertionError(f"prometheus not ready in {timeout}s:\n{self.tail()}") from None

    def api(self, path: str, **params: Any) -> Any:
        """GET /api/v1/<path>; its `data`, or AssertionError with Prometheus' error."""
        query = urllib.parse.urlencode({k: v for k, v in params.items() if v is not None})
        url = f"{self.url}/api/v1/{path}" + (f"?{query}" if query else "")
        try:
            with urllib.request.urlopen(url, timeout=30) as r:
                body = json.loads(r.read())
        except urllib.error.HTTPError as exc:
            body = json.loads(exc.read() or b"{}")
        if body.get("status") != "success":
            raise AssertionError(f"{path} {params}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict]:
        """Instant vector at `at` (unix seconds; now when None): [{metric, value: (t, v)}]."""
        data = self.api("query", query=expr, time=at)
        assert data["resultType"] == "vector", (expr, data["resultType"])
        return [{"metric": s["metric"], "value": float(s["value"][1])} for s in data["result"]]

    def query_range(self, expr: str, start: float, end: float, step: float = 1.0) -> list[dict]:
        """[{metric, values: [(t, v), ...]}] from `start` to `end`."""
        data = self.api("query_range", query=expr, start=start, end=end, step=step)
        return [
            {"metric": s["metric"], "values": [(float(t), float(v)) for t, v in s["values"]]}
            for s in data["result"]
        ]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log_file.close()

    def tail(self, n: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
