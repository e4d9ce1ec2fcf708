import threading
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from services.metrics import DriverMetrics, MetricsServer, WorkerStats


def samples(metrics: DriverMetrics) -> dict:
    out = {}
    for fam in text_string_to_metric_families(metrics.render().decode()):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_worker_reports_add_up_in_the_driver():
    stats = WorkerStats()
    driver = DriverMetrics()
    stats.inc("records", "verdict", n=3)
    stats.inc("verdicts", "real", n=3)
    stats.inc("dead_letters", "timeout")
    stats.observe("batch_size", 3)
    stats.observe("stage_seconds", 0.2, "embed")
    stats.set_gauge("consumer_lag", 7, "1")
    driver.apply(stats.drain())
    stats.inc("records", "verdict", n=2)
    driver.apply(stats.drain())
    driver.apply(stats.drain())  # nothing new: nothing added twice
    s = samples(driver)
    assert s[("dmguard_records_total", (("outcome", "verdict"),))] == 5
    assert s[("dmguard_verdicts_total", (("verdict", "real"),))] == 3
    assert s[("dmguard_dead_letters_total", (("code", "timeout"),))] == 1
    assert (
        s[("dmguard_dead_letters_total", (("code", "bad_url"),))] == 0
    )  # every code exists from the start
    assert s[("dmguard_batch_size_sum", ())] == 3
    assert s[("dmguard_stage_seconds_count", (("stage", "embed"),))] == 1
    assert s[("dmguard_consumer_lag", (("partition", "1"),))] == 7
    driver.set_fleet(2, {("onnx:/m.onnx", "v4")})
    s = samples(driver)
    assert s[("dmguard_workers", ())] == 2
    assert s[("dmguard_model_info", (("encoder", "onnx:/m.onnx"), ("head_version", "v4")))] == 1


def test_worker_stats_are_thread_safe():
    stats = WorkerStats()

    def hammer():
        for _ in range(2000):
            stats.inc("records", "verdict")

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert stats.drain()["counts"][("records", ("verdict",))] == 8000


def test_http_endpoints():
    state = {"ready": (False, "0/2 workers ready")}
    server = MetricsServer(
        DriverMetrics(),
        lambda: state["ready"],
        host="127.0.0.1",
        port=0,
        status=lambda: {"workers": [{"pid": 1}]},
    ).start()
    base = f"http://127.0.0.1:{server.port}"
    try:
        assert urllib.request.urlopen(base + "/healthz").status == 200
        body = urllib.request.urlopen(base + "/metrics").read().decode()
        assert "dmguard_records_total" in body and "_created" not in body
        try:
            urllib.request.urlopen(base + "/readyz")
            raise AssertionError("expected 503")
        except urllib.error.HTTPError as err:
            assert err.code == 503 and b"0/2" in err.read()
        state["ready"] = (True, "ready")
        assert urllib.request.urlopen(base + "/readyz").status == 200
        assert b'"pid": 1' in urllib.request.urlopen(base + "/status").read()
    finally:
        server.stop()


def test_every_verdict_label_exists_from_the_start():
    """A dashboard or alert on "uncertain" must see 0, not no series, before the first one."""
    from services.records import VERDICTS

    driver = DriverMetrics()
    s = samples(driver)
    assert {"real", "uncertain", "generated"} == set(VERDICTS)
    for v in VERDICTS:
        assert s[("dmguard_verdicts_total", (("verdict", v),))] == 0
    stats = WorkerStats()
    stats.inc("verdicts", "uncertain", n=2)
    driver.apply(stats.drain())
    assert samples(driver)[("dmguard_verdicts_total", (("verdict", "uncertain"),))] == 2


def test_the_dashboard_plots_every_verdict():
    """The verdict panel groups by the label, so "uncertain" shows next to real and
    generated, each with its own colour."""
    import json
    from pathlib import Path

    from services.records import VERDICTS

    dash = json.loads(
        (Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "dmguard.json").read_text()
    )
    panels = [
        p
        for p in dash["panels"]
        if any("dmguard_verdicts_total" in t["expr"] for t in p.get("targets", []))
    ]
    assert len(panels) == 1
    (panel,) = panels
    assert any(
        "by (verdict)" in t["expr"] and t.get("legendFormat") == "{{verdict}}"
        for t in panel["targets"]
    )
    coloured = {o["matcher"]["options"] for o in panel["fieldConfig"]["overrides"]}
    assert coloured == set(VERDICTS)
