"""Every metric a dashboard panel or alert rule queries is one the service exports."""

import json
import re
from pathlib import Path

import yaml

from services.metrics import DriverMetrics

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
NAME = re.compile(r"\b(dmguard_[a-z_]+)\b")
SUFFIXES = ("_bucket", "_sum", "_count")


def exported_series() -> set[str]:
    """Series names the service's registry can expose, labelled families without samples included."""
    names = set()
    for family in DriverMetrics().registry.collect():
        names.add(family.name)
        if family.type == "counter":
            names.add(family.name + "_total")
        if family.type == "histogram":
            names.update(family.name + s for s in SUFFIXES)
    return names


def dashboard_exprs() -> list[str]:
    dash = json.loads((DEPLOY / "grafana" / "dmguard.json").read_text())
    return [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]


def alert_exprs() -> list[str]:
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    return [r["expr"] for g in rules["groups"] for r in g["rules"]]


def test_queries_use_only_exported_metrics():
    exported = exported_series()
    exprs = dashboard_exprs() + alert_exprs()
    assert len(exprs) >= 15
    used = {m for e in exprs for m in NAME.findall(e)}
    missing = sorted(m for m in used if m not in exported)
    assert not missing, f"queried but not exported: {missing}"


def test_dashboard_covers_the_design_metrics():
    used = {m for e in dashboard_exprs() for m in NAME.findall(e)}
    for metric in (
        "dmguard_records_total",
        "dmguard_verdicts_total",
        "dmguard_dead_letters_total",
        "dmguard_batch_size",
        "dmguard_stage_seconds",
        "dmguard_end_to_end_seconds",
        "dmguard_consumer_lag",
        "dmguard_workers",
        "dmguard_model_info",
        "dmguard_provenance_total",
    ):
        assert any(u == metric or u.startswith(metric + "_") for u in used), metric


def test_prometheus_config_loads_the_rules():
    cfg = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    assert "alerts.yml" in cfg["rule_files"]
    assert cfg["scrape_configs"][0]["metrics_path"] == "/metrics"


def test_kubernetes_manifests_parse_and_agree_on_the_metrics_port():
    """The kustomize sources, the app's and the data's (tests/deploy checks the rendered
    overlays in depth)."""
    docs = [
        d
        for part in ("base", "data")
        for f in sorted((DEPLOY / "k8s" / part).rglob("*.yaml"))
        if f.name != "kustomization.yaml"
        for d in yaml.safe_load_all(f.read_text())
    ]
    assert docs and all({"apiVersion", "kind", "metadata"} <= set(d) for d in docs)
    kinds = {d["kind"] for d in docs}
    assert {"RayCluster", "Deployment", "CronJob", "KafkaTopic", "KafkaUser", "Service"} <= kinds
    service = next(d for d in docs if d["kind"] == "Service")
    assert service["spec"]["ports"][0]["port"] == 9464  # `dmguard serve --metrics-port` default
