"""The rendered overlays (`kubectl kustomize deploy/k8s/overlays/{cpu,gpu}`), checked
offline: built-in kinds against Kubernetes' schemas (kubernetes-validate, strict),
the operators' kinds against their CRDs' fields (crd_schemas.py), and what the
operators and dmguard need of them (KubeRay's own validation rules, the Kafka
wiring, the drain, the scrape targets). No cluster is involved: what the API
server, the operators and the scheduler would do is not exercised here."""

from __future__ import annotations

import inspect
import re
import shlex
from pathlib import PurePosixPath
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from dmguard import build_parser
from services.config import KafkaSettings, Topics, kafka_extra_from_env
from tests.deploy.crd_schemas import SCHEMAS
from tests.deploy.tools import DEPLOY, ROOT, render, the

# Kubernetes versions the built-in kinds and pod templates are validated against.
K8S_VERSIONS = ("1.33.0", "1.37.0")
BUILTIN_GROUPS = {"", "apps", "batch", "policy", "autoscaling"}
APP_NAMESPACE = "dmguard"
# KubeRay's default head-service ports, which declaring any head port would drop.
KUBERAY_HEAD_PORTS = {6379, 8265, 10001}
KUBERAY_METRICS_PORT_NAME = "metrics"  # KubeRay adds it to every Ray container (8080)
SERVE_METRICS_PORT = 9464
DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")

Doc = dict[str, Any]


# ------------------------------------------------------------------------- helpers
def is_builtin(doc: Doc) -> bool:
    group = doc["apiVersion"].rpartition("/")[0]
    return group in BUILTIN_GROUPS or group.endswith(".k8s.io")


def cluster_specs(doc: Doc) -> list[tuple[str, Doc]]:
    """Every RayClusterSpec in a KubeRay object, with where it is."""
    name = f"{doc['kind']} {doc['metadata']['name']}"
    spec = doc["spec"]
    if doc["kind"] == "RayCluster":
        return [(name, spec)]
    job = spec["jobTemplate"] if doc["kind"] == "RayCronJob" else spec
    return [(f"{name} rayClusterSpec", job["rayClusterSpec"])] if "rayClusterSpec" in job else []


def pod_templates(doc: Doc) -> list[tuple[str, Doc]]:
    """Every pod template in a KubeRay object: heads, worker groups, submitters."""
    out = []
    for where, spec in cluster_specs(doc):
        out.append((f"{where} head", spec["headGroupSpec"]["template"]))
        for group in spec.get("workerGroupSpecs", []):
            out.append((f"{where} worker group {group['groupName']}", group["template"]))
    job = doc["spec"].get("jobTemplate", doc["spec"])
    if doc["kind"] != "RayCluster" and "submitterPodTemplate" in job:
        out.append(
            (f"{doc['kind']} {doc['metadata']['name']} submitter", job["submitterPodTemplate"])
        )
    return out


def ray_objects(docs: list[Doc]) -> list[Doc]:
    return [d for d in docs if d["apiVersion"] == "ray.io/v1"]


def env_of(container: Doc) -> dict[str, Doc]:
    return {e["name"]: e for e in container.get("env", [])}


def head_container(spec: Doc) -> Doc:
    return spec["headGroupSpec"]["template"]["spec"]["containers"][0]


def the_cluster(docs: list[Doc]) -> Doc:
    return the(docs, "RayCluster")


def parse_dmguard(argv: list[str], command: str):
    """`argv` (from `dmguard`) parsed by dmguard's own parser: a wrong flag fails here."""
    assert argv[0] == "dmguard", f"expected a dmguard command, got {argv[0]!r}"
    try:
        args = build_parser().parse_args(argv[1:])
    except SystemExit as exc:  # argparse has printed why
        raise AssertionError(f"`{shlex.join(argv)}` is not a valid dmguard command") from exc
    assert args.command == command
    return args


def strip_timeout(argv: list[str]) -> tuple[float | None, float, list[str]]:
    """(deadline s, kill-after s, command) of `timeout [--kill-after=N] DURATION CMD...`."""
    if argv[0] != "timeout":
        return None, 0.0, argv
    rest, kill_after = argv[1:], 0.0
    while rest[0].startswith("-"):
        option = rest.pop(0)
        if option.startswith(("--kill-after=", "-k")):
            kill_after = seconds(option.split("=", 1)[-1] if "=" in option else rest.pop(0))
    return seconds(rest[0]), kill_after, rest[1:]


def seconds(text: str) -> float:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    return float(text[:-1]) * units[text[-1]] if text[-1] in units else float(text)


def cron_interval_s(schedule: str) -> int:
    """Seconds between runs of a `*/N * * * *` schedule (the only form used here)."""
    fields = schedule.split()
    assert len(fields) == 5 and "TZ" not in schedule, f"not a plain 5-field cron: {schedule!r}"
    minute = re.fullmatch(r"\*/([0-9]+)", fields[0])
    assert minute and fields[1:] == ["*"] * 4, f"teach this test the schedule {schedule!r}"
    return int(minute.group(1)) * 60


def quantity(value: Any) -> float:
    """A CPU quantity ("500m", "2", 4) in cores."""
    text = str(value)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


def drain_bound_s() -> float:
    """The longest `serve` can take to stop: WorkerPool.stop waits `timeout_s` for reports
    already asked for, then `timeout_s + 10` for the workers' drain (actors/pool.py)."""
    from actors.pool import WorkerPool

    default = inspect.signature(WorkerPool.stop).parameters.get("timeout_s")
    assert default is not None and isinstance(default.default, int | float), (
        "WorkerPool.stop lost its timeout_s default: update the drain assumptions of deploy/"
    )
    return 2 * default.default + 10


# ------------------------------------------------------------------ the rendering
def test_overlays_render_every_piece(docs):
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
    for expected in [
        ("Namespace", APP_NAMESPACE),
        ("PersistentVolumeClaim", "dmguard-registry"),
        ("RayCluster", "dmguard"),
        ("RayJob", "dmguard-serve"),
        ("RayCronJob", "dmguard-retrain"),
        ("Service", "dmguard"),
        ("ServiceMonitor", "dmguard"),
        ("PodMonitor", "dmguard-ray"),
        ("PrometheusRule", "dmguard"),
        ("ConfigMap", "dmguard-dashboard"),
        ("KafkaUser", "dmguard"),
        *[("KafkaTopic", t) for t in Topics().all()],
    ]:
        assert expected in kinds, f"{expected} missing from the rendered overlay"
    assert len(kinds) == len(docs), "two objects share a kind and name"


def test_application_objects_live_in_the_dmguard_namespace(docs):
    for d in docs:
        if d["kind"] == "Namespace" or d["apiVersion"].startswith("kafka.strimzi.io/"):
            continue
        assert d["metadata"].get("namespace") == APP_NAMESPACE, d["metadata"]["name"]


# ------------------------------------------------------------------ the schemas
@pytest.mark.parametrize("k8s", K8S_VERSIONS)
def test_builtin_kinds_validate_strictly(docs, k8s):
    builtin = [d for d in docs if is_builtin(d)]
    assert builtin
    for d in builtin:
        kubernetes_validate.validate(d, k8s, strict=True)


def test_custom_kinds_match_the_operators_schemas(docs):
    for d in docs:
        if is_builtin(d):
            continue
        key = (d["apiVersion"], d["kind"])
        assert key in SCHEMAS, f"{key} is no kind of the operator versions checked (crd_schemas.py)"
        where = f"{d['kind']} {d['metadata']['name']}"
        try:
            jsonschema.validate(d, SCHEMAS[key])
        except jsonschema.ValidationError as exc:
            path = "/".join(str(p) for p in exc.absolute_path)
            raise AssertionError(f"{where}: {path}: {exc.message}") from None
        # Their metadata is a plain ObjectMeta: validate it as a ConfigMap's.
        meta = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": d["metadata"]}
        kubernetes_validate.validate(meta, K8S_VERSIONS[-1], strict=True)


@pytest.mark.parametrize("k8s", K8S_VERSIONS)
def test_pod_templates_in_kuberay_objects_validate_strictly(docs, k8s):
    templates = [t for d in ray_objects(docs) for t in pod_templates(d)]
    assert len(templates) >= 2
    for where, template in templates:
        pod = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "t"}}
        try:
            kubernetes_validate.validate({**pod, "template": template}, k8s, strict=True)
        except kubernetes_validate.ValidationError as exc:
            raise AssertionError(f"{where}: {exc.message}") from None


# ------------------------------------------------------------------ KubeRay
def test_kuberay_generates_the_ray_start_command(docs):
    """No Ray container carries its own command: KubeRay then keeps it and drops the
    one it builds from rayStartParams (ulimit, dashboard on 0.0.0.0, metrics export,
    resources from the limits)."""
    for d in ray_objects(docs):
        assert "ray.io/overwrite-container-cmd" not in d["metadata"].get("annotations", {})
        for where, template in pod_templates(d):
            if where.endswith("submitter"):
                continue
            ray = template["spec"]["containers"][0]
            for field in ("command", "args"):
                assert field not in ray, f"{where}: the Ray container sets {field}"
        for where, spec in cluster_specs(d):
            groups = [spec["headGroupSpec"], *spec.get("workerGroupSpecs", [])]
            for group in groups:
                params = group.get("rayStartParams", {})
                assert all(isinstance(v, str) for v in params.values()), (
                    f"{where}: quote rayStartParams"
                )
                assert "labels" not in params, f"{where}: use the group's `labels` field"
                assert str(SERVE_METRICS_PORT) not in params.values(), (
                    f"{where}: {SERVE_METRICS_PORT} is serve's metrics port, not Ray's"
                )
                conflict = {"num-cpus", "num-gpus", "memory", "resources"} & params.keys()
                assert not (conflict and group.get("resources")), (
                    f"{where}: Ray resources in both rayStartParams and `resources`"
                )
            assert (
                spec["headGroupSpec"].get("rayStartParams", {}).get("dashboard-host", "0.0.0.0")
                == "0.0.0.0"
            ), f"{where}: the Jobs API (RayJob) needs the dashboard on 0.0.0.0"


def test_head_keeps_kuberays_default_ports(docs):
    for d in ray_objects(docs):
        for where, spec in cluster_specs(d):
            ports = head_container(spec).get("ports", [])
            declared = {p["containerPort"] for p in ports}
            assert not ports or KUBERAY_HEAD_PORTS <= declared, (
                f"{where}: declaring head ports drops KubeRay's defaults {KUBERAY_HEAD_PORTS}"
            )
            for p in ports:
                if p.get("name") == KUBERAY_METRICS_PORT_NAME:
                    assert p["containerPort"] != SERVE_METRICS_PORT


def test_autoscaling_is_enabled_with_sane_bounds(docs):
    for where, spec in cluster_specs(the_cluster(docs)):
        assert spec.get("enableInTreeAutoscaling") is True, f"{where}: min/maxReplicas need it"
        v2 = spec.get("autoscalerOptions", {}).get("version") == "v2"
        groups = spec.get("workerGroupSpecs", [])
        assert groups, f"{where}: no worker group"
        for g in groups:
            low, high = g["minReplicas"], g["maxReplicas"]
            assert 0 <= low <= g.get("replicas", low) <= high and high >= 1, (
                f"{where} {g['groupName']}: min {low} <= replicas <= max {high}"
            )
            assert "idleTimeoutSeconds" not in g or v2, "a group's idleTimeoutSeconds needs v2"
        if v2:
            for name, template in pod_templates(the_cluster(docs)):
                assert template["spec"].get("restartPolicy", "Never") == "Never", (
                    f"{name}: autoscaler v2 needs restartPolicy Never or unset"
                )


def test_ray_version_matches_the_pinned_ray(docs):
    pins = dict(
        line.split("==", 1)
        for line in (ROOT / "requirements" / "constraints.txt").read_text().splitlines()
        if "==" in line and not line.startswith("#")
    )
    for where, spec in cluster_specs(the_cluster(docs)):
        assert spec["rayVersion"] == pins["ray"], where


def test_pods_outlive_serves_drain(docs):
    """Stopping the serve RayJob: Ray's job supervisor sends SIGTERM and waits
    RAY_JOB_STOP_WAIT_TIME_S before SIGKILL; every Ray pod waits longer still."""
    drain = drain_bound_s()
    cluster = the_cluster(docs)
    for where, spec in cluster_specs(cluster):
        stop_wait = env_of(head_container(spec)).get("RAY_JOB_STOP_WAIT_TIME_S", {})
        assert float(stop_wait.get("value", 3)) >= drain, (
            f"{where}: RAY_JOB_STOP_WAIT_TIME_S must cover serve's drain ({drain:.0f} s)"
        )
        for name, template in pod_templates(cluster):
            grace = template["spec"].get("terminationGracePeriodSeconds", 30)
            assert grace > float(stop_wait["value"]) > 60, f"{name}: grace {grace} s"


def test_shared_volume_is_defined_and_read_write_many(docs):
    claims = {d["metadata"]["name"]: d for d in docs if d["kind"] == "PersistentVolumeClaim"}
    used = set()
    for d in ray_objects(docs):
        for where, template in pod_templates(d):
            for volume in template["spec"].get("volumes", []):
                if "persistentVolumeClaim" in volume:
                    name = volume["persistentVolumeClaim"]["claimName"]
                    assert name in claims, f"{where}: claim {name} is defined nowhere"
                    assert claims[name]["metadata"]["namespace"] == d["metadata"]["namespace"]
                    used.add(name)
    assert used
    for name in used:
        assert claims[name]["spec"]["accessModes"] == ["ReadWriteMany"], name


def test_kuberay_names_are_dns_1035_labels(docs):
    for d in ray_objects(docs):
        assert DNS_1035.match(d["metadata"]["name"]), d["metadata"]["name"]


def test_jobs_target_the_cluster_the_way_kuberay_allows(docs):
    """KubeRay's ValidateRayJobSpec, for RayJobs (and RayCronJob templates) that run on
    an existing cluster through clusterSelector."""
    cluster = the_cluster(docs)
    for d in docs:
        if d["kind"] not in ("RayJob", "RayCronJob"):
            continue
        job = d["spec"]["jobTemplate"] if d["kind"] == "RayCronJob" else d["spec"]
        where = f"{d['kind']} {d['metadata']['name']}"
        assert job.get("clusterSelector", {}).get("ray.io/cluster") == cluster["metadata"]["name"]
        assert d["metadata"]["namespace"] == cluster["metadata"]["namespace"], where
        assert "rayClusterSpec" not in job, f"{where}: runs on the RayCluster, not its own"
        assert not job.get("backoffLimit"), f"{where}: backoffLimit needs a cluster of its own"
        assert not job.get("suspend"), f"{where}: clusterSelector jobs cannot be suspended"
        assert job.get("activeDeadlineSeconds", 1) > 0
        rules = job.get("deletionStrategy", {}).get("deletionRules", [])
        assert not (rules and job.get("shutdownAfterJobFinishes")), where
        for rule in rules:
            assert rule["policy"] in ("DeleteSelf", "DeleteNone"), (
                f"{where}: {rule['policy']} would delete the shared RayCluster"
            )
        assert job.get("ttlSecondsAfterFinished", 0) == 0 or job.get("shutdownAfterJobFinishes")


# ------------------------------------------------------------------ serve and retrain
def serve_args(docs):
    return parse_dmguard(
        shlex.split(the(docs, "RayJob", "dmguard-serve")["spec"]["entrypoint"]), "serve"
    )


def topic_partitions(docs, name: str) -> int:
    return the(docs, "KafkaTopic", name)["spec"]["partitions"]


def worker_groups(docs) -> list[Doc]:
    return the_cluster(docs)["spec"]["workerGroupSpecs"]


def limits(group: Doc) -> Doc:
    return group["template"]["spec"]["containers"][0]["resources"]["limits"]


def test_serve_runs_as_a_long_lived_ray_job_on_the_cluster(docs):
    job = the(docs, "RayJob", "dmguard-serve")["spec"]
    assert "activeDeadlineSeconds" not in job, "serve runs until stopped"
    assert not job.get("shutdownAfterJobFinishes"), "the shared RayCluster must outlive serve"
    args = serve_args(docs)
    service = the(docs, "Service", "dmguard")
    assert args.metrics_port == SERVE_METRICS_PORT == service["spec"]["ports"][0]["targetPort"]
    top = args.max_workers if args.workers == "auto" else args.workers
    assert top and top <= topic_partitions(docs, Topics().images), (
        "more workers than input partitions would idle"
    )


def test_serve_fits_the_worker_groups(docs, overlay):
    args = serve_args(docs)
    groups = worker_groups(docs)
    top = args.max_workers if args.workers == "auto" else args.workers
    if overlay == "gpu":
        assert args.gpus_per_worker and args.gpus_per_worker >= 1 and args.device == "cuda"
        gpus = sum(int(limits(g).get("nvidia.com/gpu", 0)) * g["maxReplicas"] for g in groups)
        assert gpus >= top * args.gpus_per_worker, "the GPU group cannot hold --max-workers"
    else:
        assert args.gpus_per_worker == 0 and args.device in ("cpu", "auto")
        assert all("nvidia.com/gpu" not in limits(g) for g in groups)
    per_pod = max(quantity(limits(g)["cpu"]) for g in groups)
    assert args.cpus_per_worker <= per_pod, "a worker asks for more CPUs than a pod has"
    cpus = sum(quantity(limits(g)["cpu"]) * g["maxReplicas"] for g in groups)
    assert cpus >= top * args.cpus_per_worker, "the worker groups cannot hold --max-workers"


def test_gpu_workers_get_gpu_nodes_and_the_cuda_image(docs, overlay):
    cluster = the_cluster(docs)
    head_image = head_container(cluster["spec"])["image"]
    for g in worker_groups(docs):
        spec = g["template"]["spec"]
        image = spec["containers"][0]["image"]
        if overlay == "gpu":
            assert limits(g).get("nvidia.com/gpu"), f"{g['groupName']}: no GPU limit"
            assert spec.get("nodeSelector"), f"{g['groupName']}: no node selector"
            assert any(t.get("key") == "nvidia.com/gpu" for t in spec.get("tolerations", []))
            assert image != head_image and image.endswith("cuda"), image
        else:
            assert image == head_image and image.endswith("cpu"), image


def test_retrain_is_a_deadlined_ray_cron_job(docs, overlay):
    cron = the(docs, "RayCronJob", "dmguard-retrain")["spec"]
    job = cron["jobTemplate"]
    every = cron_interval_s(cron["schedule"])
    deadline = job.get("activeDeadlineSeconds")
    assert deadline and deadline < every, "a hung round must end before the next one starts"
    own, kill_after, argv = strip_timeout(shlex.split(job["entrypoint"]))
    assert own is not None and own + kill_after < deadline, "the driver should stop itself first"
    args = parse_dmguard(argv, "retrain")
    assert args.once
    assert args.use_gpu == (overlay == "gpu")
    head = the_cluster(docs)["spec"]["headGroupSpec"]["template"]["spec"]
    claims = {v["name"] for v in head["volumes"] if "persistentVolumeClaim" in v}
    shared = [m["mountPath"] for m in head["containers"][0]["volumeMounts"] if m["name"] in claims]
    assert any(PurePosixPath(args.cache).is_relative_to(m) for m in shared), (
        "Ray Train's storage (--cache) must be on the shared volume"
    )


# ------------------------------------------------------------------ Kafka
def kafka_objects(docs):
    topics = [d for d in docs if d["kind"] == "KafkaTopic"]
    user = the(docs, "KafkaUser", "dmguard")
    return topics, user


def test_topics_are_the_ones_dmguard_uses(docs):
    topics, user = kafka_objects(docs)
    assert {t["metadata"]["name"] for t in topics} == set(Topics().all())
    clusters = {d["metadata"]["labels"].get("strimzi.io/cluster") for d in [*topics, user]}
    namespaces = {d["metadata"]["namespace"] for d in [*topics, user]}
    assert len(clusters) == 1 and None not in clusters, "one Strimzi cluster for all"
    assert len(namespaces) == 1, "the Topic/User Operators watch one namespace"
    for t in topics:
        spec = t["spec"]
        misr = spec.get("config", {}).get("min.insync.replicas")
        assert isinstance(misr, int), f"{t['metadata']['name']}: set min.insync.replicas"
        assert 2 <= misr < spec["replicas"], (
            f"{t['metadata']['name']}: acks=all needs 2 <= min.insync.replicas < replicas"
        )


def test_kafka_user_may_do_exactly_what_dmguard_does(docs):
    _, user = kafka_objects(docs)
    spec = user["spec"]
    assert spec["authentication"]["type"] == "scram-sha-512"
    assert spec["authorization"]["type"] == "simple"
    rules: dict[tuple[str, str | None, str], set[str]] = {}
    for acl in spec["authorization"]["acls"]:
        assert acl.get("type", "allow") == "allow"
        r = acl["resource"]
        key = (r["type"], r.get("name"), r.get("patternType", "literal"))
        assert key not in rules, f"two rules for {key}"
        rules[key] = set(acl["operations"])
    t = Topics()
    read, write = {"Read", "Describe"}, {"Write", "Describe"}
    group = KafkaSettings().group_id
    from actors.delivery import transactional_id

    prefix = [k for k in rules if k[0] == "transactionalId"]
    assert len(prefix) == 1 and prefix[0][2] == "prefix", "one prefix rule for transactional ids"
    assert transactional_id(group, t.images, [0, 3]).startswith(prefix[0][1])
    assert prefix[0][1] == "dmguard-"
    expected = {
        ("topic", t.images, "literal"): read,
        ("topic", t.labels, "literal"): read,
        ("topic", t.verdicts, "literal"): write,
        ("topic", t.dead_letter, "literal"): write,
        ("group", group, "literal"): read,
        prefix[0]: write,
        ("cluster", None, "literal"): {"IdempotentWrite"},
    }
    assert rules == expected


def test_clients_use_the_users_secret_and_the_cluster_ca(docs):
    """The head's DMGUARD_KAFKA_* settings are kafka-python settings every client
    accepts; the password comes from the Secret the User Operator writes, the CA
    file from the cluster CA Secret, mounted at the same path on every Ray pod."""
    _, user = kafka_objects(docs)
    strimzi_cluster = user["metadata"]["labels"]["strimzi.io/cluster"]
    kafka_ns = user["metadata"]["namespace"]
    cluster = the_cluster(docs)
    spec = cluster["spec"]
    env = env_of(head_container(spec))
    bootstrap = env["DMGUARD_BOOTSTRAP"]["value"]
    assert re.fullmatch(
        rf"{strimzi_cluster}-kafka-bootstrap\.{kafka_ns}\.svc(\.cluster\.local)?:9093", bootstrap
    ), f"{bootstrap}: not the TLS listener of Strimzi cluster {strimzi_cluster}"
    kafka_env = {
        k: v.get("value", "from-a-secret") for k, v in env.items() if k.startswith("DMGUARD_KAFKA_")
    }
    settings = kafka_extra_from_env(kafka_env)  # raises ConfigError on a wrong name or value
    assert settings["security_protocol"] == "SASL_SSL"
    assert settings["sasl_mechanism"] == "SCRAM-SHA-512"
    assert settings["sasl_plain_username"] == user["metadata"]["name"]
    secret = env["DMGUARD_KAFKA_SASL_PLAIN_PASSWORD"]["valueFrom"]["secretKeyRef"]
    assert secret == {"name": user["metadata"]["name"], "key": "password"}
    cafile = PurePosixPath(settings["ssl_cafile"])
    for where, template in pod_templates(cluster):
        container = template["spec"]["containers"][0]
        mount = next(
            (
                m
                for m in container.get("volumeMounts", [])
                if PurePosixPath(m["mountPath"]) == cafile.parent
            ),
            None,
        )
        assert mount, f"{where}: {cafile} is not mounted (the workers open Kafka clients too)"
        volume = next(v for v in template["spec"]["volumes"] if v["name"] == mount["name"])
        assert volume["secret"]["secretName"] == f"{strimzi_cluster}-cluster-ca-cert", where
        items = {i["key"]: i["path"] for i in volume["secret"].get("items", [])}
        assert items.get("ca.crt", "ca.crt") == cafile.name, where


# ------------------------------------------------------------------ monitoring
def test_driver_metrics_are_scraped_as_job_dmguard(docs):
    service = the(docs, "Service", "dmguard")
    cluster = the_cluster(docs)
    assert service["spec"]["selector"] == {
        "ray.io/cluster": cluster["metadata"]["name"],
        "ray.io/node-type": "head",  # the labels KubeRay puts on the head pod
    }, "the serve driver runs on the head pod"
    monitor = the(docs, "ServiceMonitor", "dmguard")
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= service["metadata"]["labels"].items()
    port_names = {p["name"] for p in service["spec"]["ports"]}
    assert {e["port"] for e in monitor["spec"]["endpoints"]} <= port_names
    assert monitor["metadata"]["namespace"] == service["metadata"]["namespace"]
    # The job label is the Service's name; the standalone config and the alerts agree.
    standalone = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    assert standalone["scrape_configs"][0]["job_name"] == service["metadata"]["name"]
    assert (
        f'up{{job="{service["metadata"]["name"]}"}}'
        in (DEPLOY / "prometheus" / "alerts.yml").read_text()
    )


def test_ray_metrics_are_scraped_from_every_ray_pod(docs):
    monitor = the(docs, "PodMonitor", "dmguard-ray")
    cluster = the_cluster(docs)
    assert monitor["spec"]["selector"]["matchLabels"] == {
        "ray.io/cluster": cluster["metadata"]["name"]
    }
    assert [e["port"] for e in monitor["spec"]["podMetricsEndpoints"]] == [
        KUBERAY_METRICS_PORT_NAME
    ]


def test_monitoring_objects_carry_the_same_prometheus_selector_label(docs):
    labels = {
        d["kind"]: d["metadata"]["labels"].get("release")
        for d in docs
        if d["kind"] in ("ServiceMonitor", "PodMonitor", "PrometheusRule")
    }
    assert len(labels) == 3 and len(set(labels.values())) == 1 and None not in labels.values(), (
        labels
    )


def test_prometheus_rule_carries_alerts_yml(docs):
    rule = the(docs, "PrometheusRule", "dmguard")
    source = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    assert rule["spec"]["groups"] == source["groups"], "run `make deploy-generate`"


def test_dashboard_configmap_is_dmguard_json_for_the_sidecar(docs):
    cm = the(docs, "ConfigMap", "dmguard-dashboard")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["data"] == {"dmguard.json": (DEPLOY / "grafana" / "dmguard.json").read_text()}


def test_both_overlays_share_everything_but_the_gpu_choices():
    cpu, gpu = render("cpu"), render("gpu")
    assert [(d["kind"], d["metadata"]["name"]) for d in cpu] == [
        (d["kind"], d["metadata"]["name"]) for d in gpu
    ]
    differs = [d["kind"] for d, e in zip(cpu, gpu, strict=True) if d != e]
    assert sorted(differs) == ["RayCluster", "RayCronJob", "RayJob"], differs
