"""deploy/k8s rendered (`kubectl kustomize` of deploy/k8s/data and of each overlay) and
checked offline: built-in kinds against Kubernetes' schemas (kubernetes-validate,
strict), the operators' kinds against their CRDs' fields (crd_schemas.py), and one test
per rule deploy/README.md states: supervision of the drivers, retraining that cleans up
and cannot be starved, Kafka's lifecycle, listener and ACLs, credentials without
copies, one image, restricted Pod Security, NetworkPolicy, Ray token authentication,
the head's disruption budget, the operators' values. No cluster is involved: what the
API server, the operators and the scheduler would do is not exercised here."""

from __future__ import annotations

import inspect
import ipaddress
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
from tests.deploy.tools import DATA, DEPLOY, ROOT, render, the

# Kubernetes versions the built-in kinds and pod templates are validated against.
K8S_VERSIONS = ("1.33.0", "1.37.0")
BUILTIN_GROUPS = {"", "apps", "batch", "policy", "autoscaling"}
NAMESPACE = "dmguard"
# KubeRay's default head-service ports, which declaring any head port would drop.
KUBERAY_HEAD_PORTS = {6379, 8265, 10001}
KUBERAY_METRICS_PORT = 8080  # KubeRay adds it to every Ray container, named `metrics`
KUBERAY_METRICS_PORT_NAME = "metrics"
SERVE_METRICS_PORT = 9464
DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
APP_LABEL = ("app.kubernetes.io/name", "dmguard")  # every dmguard pod: Ray pods, drivers
DATA_KINDS = {"Namespace", "Kafka", "KafkaNodePool", "KafkaTopic", "KafkaUser"}
OPERATORS = DEPLOY / "operators"

Doc = dict[str, Any]


# ------------------------------------------------------------------------- helpers
def is_builtin(doc: Doc) -> bool:
    group = doc["apiVersion"].rpartition("/")[0]
    return group in BUILTIN_GROUPS or group.endswith(".k8s.io")


def the_cluster(docs: list[Doc]) -> Doc:
    return the(docs, "RayCluster")


def serve_deployment(docs: list[Doc]) -> Doc:
    return the(docs, "Deployment", "dmguard-serve")


def retrain_cronjob(docs: list[Doc]) -> Doc:
    return the(docs, "CronJob", "dmguard-retrain")


def ray_templates(cluster: Doc) -> list[tuple[str, Doc]]:
    """(where, pod template) of the RayCluster's head and worker groups."""
    spec = cluster["spec"]
    out = [("RayCluster head", spec["headGroupSpec"]["template"])]
    for group in spec.get("workerGroupSpecs", []):
        out.append((f"RayCluster worker group {group['groupName']}", group["template"]))
    return out


def driver_templates(docs: list[Doc]) -> list[tuple[str, Doc]]:
    """(where, pod template) of the serve Deployment and the retrain CronJob."""
    return [
        ("Deployment dmguard-serve", serve_deployment(docs)["spec"]["template"]),
        (
            "CronJob dmguard-retrain",
            retrain_cronjob(docs)["spec"]["jobTemplate"]["spec"]["template"],
        ),
    ]


def all_templates(docs: list[Doc]) -> list[tuple[str, Doc]]:
    """Every pod template dmguard's own objects make (Strimzi's pods are Strimzi's)."""
    return ray_templates(the_cluster(docs)) + driver_templates(docs)


def main_container(template: Doc) -> Doc:
    return template["spec"]["containers"][0]


def env_of(container: Doc) -> dict[str, Doc]:
    return {e["name"]: e for e in container.get("env", [])}


def head_container(cluster: Doc) -> Doc:
    return cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]


def worker_groups(docs) -> list[Doc]:
    return the_cluster(docs)["spec"]["workerGroupSpecs"]


def limits(group: Doc) -> Doc:
    return group["template"]["spec"]["containers"][0]["resources"]["limits"]


def labels_of(template: Doc) -> dict[str, str]:
    return template.get("metadata", {}).get("labels", {})


def selects(selector: Doc, labels: dict[str, str]) -> bool:
    """A LabelSelector (matchLabels only, as deploy/ writes them) against pod labels."""
    assert "matchExpressions" not in selector, "teach this test matchExpressions"
    return selector.get("matchLabels", {}).items() <= labels.items()


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


def driver_argv(template: Doc) -> list[str]:
    """What the driver container runs after its join script: its `args`."""
    return list(main_container(template)["args"])


def serve_args(docs):
    return parse_dmguard(driver_argv(driver_templates(docs)[0][1]), "serve")


def retrain_args(docs):
    _, _, argv = strip_timeout(driver_argv(driver_templates(docs)[1][1]))
    return parse_dmguard(argv, "retrain")


def topic_partitions(docs, name: str) -> int:
    return the(docs, "KafkaTopic", name)["spec"]["partitions"]


def max_serve_workers(docs) -> int:
    args = serve_args(docs)
    return args.max_workers if args.workers == "auto" else int(args.workers)


# ------------------------------------------------------------------ the rendering
def test_data_and_app_render_every_piece(docs):
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
    for expected in [
        ("Namespace", NAMESPACE),
        ("PersistentVolumeClaim", "dmguard-registry"),
        ("Kafka", "kafka"),
        ("KafkaNodePool", "controller"),
        ("KafkaNodePool", "broker"),
        ("KafkaUser", "dmguard"),
        *[("KafkaTopic", t) for t in Topics().all()],
        ("RayCluster", "dmguard"),
        ("Deployment", "dmguard-serve"),
        ("CronJob", "dmguard-retrain"),
        ("PodDisruptionBudget", "dmguard-ray-head"),
        ("NetworkPolicy", "default-deny"),
        ("Service", "dmguard"),
        ("ServiceMonitor", "dmguard"),
        ("PodMonitor", "dmguard-ray"),
        ("PrometheusRule", "dmguard"),
        ("ConfigMap", "dmguard-dashboard"),
    ]:
        assert expected in kinds, f"{expected} missing from what is applied"
    assert len(kinds) == len(docs), "two objects share a kind and name"


def test_deleting_the_app_keeps_the_data(app, data):
    """`kubectl delete -k deploy/k8s/overlays/<overlay>` deletes the app's objects only:
    the namespace, Kafka (and so its volumes), the topics, the user and the registry
    volume belong to deploy/k8s/data."""
    for d in app:
        assert d["kind"] not in DATA_KINDS | {"PersistentVolumeClaim"}, (
            f"{d['kind']} {d['metadata']['name']} is data: it belongs to deploy/k8s/{DATA}"
        )
    assert {d["kind"] for d in data} >= DATA_KINDS | {"PersistentVolumeClaim"}


def test_everything_lives_in_one_namespace(docs):
    """Kafka, its Secrets and the app in one namespace: the pods mount the user's and the
    cluster CA's Secrets directly (a pod reads only its own namespace's Secrets)."""
    for d in docs:
        if d["kind"] == "Namespace":
            assert d["metadata"]["name"] == NAMESPACE
            continue
        assert d["metadata"].get("namespace") == NAMESPACE, f"{d['kind']} {d['metadata']['name']}"


# ------------------------------------------------------------------ the schemas
@pytest.mark.parametrize("k8s", K8S_VERSIONS)
def test_builtin_kinds_validate_strictly(docs, k8s):
    builtin = [d for d in docs if is_builtin(d)]
    assert {"Deployment", "CronJob", "NetworkPolicy", "PodDisruptionBudget"} <= {
        d["kind"] for d in builtin
    }
    for d in builtin:
        try:
            kubernetes_validate.validate(d, k8s, strict=True)
        except kubernetes_validate.ValidationError as exc:
            raise AssertionError(f"{d['kind']} {d['metadata']['name']}: {exc.message}") from None


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
def test_pod_templates_in_the_ray_cluster_validate_strictly(docs, k8s):
    for where, template in ray_templates(the_cluster(docs)):
        pod = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "t"}}
        try:
            kubernetes_validate.validate({**pod, "template": template}, k8s, strict=True)
        except kubernetes_validate.ValidationError as exc:
            raise AssertionError(f"{where}: {exc.message}") from None
    # The autoscaler sidecar's securityContext is a Kubernetes SecurityContext too.
    context = the_cluster(docs)["spec"]["autoscalerOptions"].get("securityContext", {})
    container = {"name": "autoscaler", "image": "x", "securityContext": context}
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "t"}}
    kubernetes_validate.validate({**pod, "spec": {"containers": [container]}}, k8s, strict=True)


# ------------------------------------------------------------------ KubeRay
def test_kuberay_generates_the_ray_start_command(docs):
    """No Ray container carries its own command: KubeRay then keeps it and drops the
    one it builds from rayStartParams (ulimit, dashboard on 0.0.0.0, metrics export,
    resources from the limits)."""
    cluster = the_cluster(docs)
    assert "ray.io/overwrite-container-cmd" not in cluster["metadata"].get("annotations", {})
    for where, template in ray_templates(cluster):
        for field in ("command", "args"):
            assert field not in main_container(template), f"{where}: the Ray container sets {field}"
    spec = cluster["spec"]
    for group in [spec["headGroupSpec"], *spec.get("workerGroupSpecs", [])]:
        params = group.get("rayStartParams", {})
        assert all(isinstance(v, str) for v in params.values()), "quote rayStartParams"
        assert "labels" not in params, "use the group's `labels` field"
        assert str(SERVE_METRICS_PORT) not in params.values()
        conflict = {"num-cpus", "num-gpus", "memory", "resources"} & params.keys()
        assert not (conflict and group.get("resources")), "Ray resources given twice"
    assert spec["headGroupSpec"]["rayStartParams"].get("num-cpus") == "0", (
        "the head must run no actor: all of them belong on worker pods"
    )


def test_head_keeps_kuberays_default_ports(docs):
    ports = head_container(the_cluster(docs)).get("ports", [])
    declared = {p["containerPort"] for p in ports}
    assert not ports or KUBERAY_HEAD_PORTS <= declared, (
        f"declaring head ports drops KubeRay's defaults {KUBERAY_HEAD_PORTS}"
    )


def test_autoscaling_is_enabled_with_sane_bounds(docs):
    spec = the_cluster(docs)["spec"]
    assert spec.get("enableInTreeAutoscaling") is True, "min/maxReplicas need it"
    v2 = spec.get("autoscalerOptions", {}).get("version") == "v2"
    groups = spec.get("workerGroupSpecs", [])
    assert groups, "no worker group"
    for g in groups:
        low, high = g["minReplicas"], g["maxReplicas"]
        assert 0 <= low <= g.get("replicas", low) <= high and high >= 1, g["groupName"]
        assert "idleTimeoutSeconds" not in g or v2, "a group's idleTimeoutSeconds needs v2"
    if v2:
        for name, template in ray_templates(the_cluster(docs)):
            assert template["spec"].get("restartPolicy", "Never") == "Never", name


def test_ray_version_matches_the_pinned_ray(docs):
    pins = dict(
        line.split("==", 1)
        for line in (ROOT / "requirements" / "constraints.txt").read_text().splitlines()
        if "==" in line and not line.startswith("#")
    )
    assert the_cluster(docs)["spec"]["rayVersion"] == pins["ray"]


def test_kuberay_names_are_dns_1035_labels(docs):
    name = the_cluster(docs)["metadata"]["name"]
    assert DNS_1035.match(name), name


def test_ray_token_authentication(docs):
    """KubeRay sets RAY_AUTH_MODE/RAY_AUTH_TOKEN on its own containers from the
    Secret authOptions names; the drivers, Ray nodes KubeRay does not make, set the
    same two from the same Secret, or the GCS refuses them."""
    auth = the_cluster(docs)["spec"].get("authOptions", {})
    assert auth.get("mode") == "token", "Ray token authentication is off"
    secret = auth.get("secretName")
    assert secret, "name the token Secret: the drivers need it too"
    kafka_user_secrets = {d["metadata"]["name"] for d in docs if d["kind"] == "KafkaUser"}
    assert secret not in kafka_user_secrets, "the User Operator writes a Secret of that name"
    for where, template in driver_templates(docs):
        env = env_of(main_container(template))
        assert env.get("RAY_AUTH_MODE", {}).get("value") == "token", where
        ref = env.get("RAY_AUTH_TOKEN", {}).get("valueFrom", {}).get("secretKeyRef")
        assert ref == {"name": secret, "key": "auth_token"}, f"{where}: RAY_AUTH_TOKEN {ref}"


# ------------------------------------------------------------------ the drivers
def test_drivers_join_the_cluster_as_ray_nodes(docs):
    """Each driver pod starts a Ray node of its own (no CPUs or GPUs to offer, so no
    actor lands there), on the head KubeRay's Service names, then execs the driver
    with RAY_ADDRESS set: when the pod goes, its node and driver go with it."""
    cluster = the_cluster(docs)["metadata"]["name"]
    for where, template in driver_templates(docs):
        container = main_container(template)
        env = env_of(container)
        assert env["RAY_ADDRESS"]["value"] == f"{cluster}-head-svc:6379", where
        assert env["POD_IP"]["valueFrom"] == {"fieldRef": {"fieldPath": "status.podIP"}}
        command = container["command"]
        assert command[:2] == ["/bin/sh", "-c"] and len(command) == 4, where
        script = command[2]
        start = shlex.split(script.split("ray start", 1)[1].split(";", 1)[0].replace("\\\n", " "))
        assert "--address=$RAY_ADDRESS" in start and "--node-ip-address=$POD_IP" in start, where
        assert {"--num-cpus=0", "--num-gpus=0"} <= set(start), f"{where}: the node offers resources"
        assert script.rstrip().endswith('exec "$@"'), f"{where}: the driver must be exec'd"
        assert template["spec"].get("shareProcessNamespace") is True, (
            f"{where}: pause as PID 1 reaps Ray's daemons; the driver gets SIGTERM"
        )


def test_serve_is_a_deployment_kubernetes_restarts(docs):
    """One serve driver, restarted by Kubernetes: never two at once (Recreate), back
    within a minute of a crash (restartPolicy Always) or a lost node (30 s
    tolerations), restarted when /healthz stops answering, out of the Service while
    /readyz says not ready."""
    deployment = serve_deployment(docs)
    spec = deployment["spec"]
    assert spec["replicas"] == 1, "one driver hands out the partitions"
    assert spec["strategy"]["type"] == "Recreate", "a rolling update would run two drivers"
    pod = spec["template"]["spec"]
    assert pod.get("restartPolicy", "Always") == "Always"
    assert selects(spec["selector"], labels_of(spec["template"]))
    port = serve_args(docs).metrics_port
    container = main_container(spec["template"])
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}

    def probe(name: str, path: str) -> Doc:
        found = container.get(name)
        assert found, f"serve has no {name}"
        target = found["httpGet"]["port"]
        assert ports.get(target, target) == port and found["httpGet"]["path"] == path, name
        return found

    liveness = probe("livenessProbe", "/healthz")
    probe("readinessProbe", "/readyz")
    startup = probe("startupProbe", "/healthz")
    assert liveness["periodSeconds"] * liveness["failureThreshold"] <= 60, "a hung driver lingers"
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300, (
        "the startup probe must outlast the wait for the head"
    )
    for taint in ("node.kubernetes.io/unreachable", "node.kubernetes.io/not-ready"):
        toleration = next((t for t in pod.get("tolerations", []) if t["key"] == taint), None)
        assert toleration and toleration["tolerationSeconds"] <= 30, (
            f"a pod on a lost node waits {taint}'s 300 s default before it is replaced"
        )


def test_pods_outlive_serves_drain(docs):
    """SIGTERM to serve (an upgrade, a drain, a deletion): it drains and commits; its
    pod and the worker pods under it wait longer than that before SIGKILL."""
    drain = drain_bound_s()
    serve_pod = serve_deployment(docs)["spec"]["template"]["spec"]
    assert serve_pod["terminationGracePeriodSeconds"] > drain
    for group in worker_groups(docs):
        assert group["template"]["spec"].get("terminationGracePeriodSeconds", 30) > drain


def test_shared_volume_is_defined_and_read_write_many(docs):
    """The registry volume: mounted at the same path by every pod that reads or writes
    the registry (workers and both drivers), ReadWriteMany, from a named class."""
    claims = {d["metadata"]["name"]: d for d in docs if d["kind"] == "PersistentVolumeClaim"}
    mounts = set()
    for where, template in [*ray_templates(the_cluster(docs))[1:], *driver_templates(docs)]:
        volumes = {
            v["name"]: v["persistentVolumeClaim"]["claimName"]
            for v in template["spec"].get("volumes", [])
            if "persistentVolumeClaim" in v
        }
        assert volumes, f"{where}: no registry volume"
        for name in volumes.values():
            assert name in claims, f"{where}: claim {name} is defined nowhere"
        mounted = [
            (volumes[m["name"]], m["mountPath"])
            for m in main_container(template).get("volumeMounts", [])
            if m["name"] in volumes
        ]
        assert mounted, f"{where}: the registry volume is not mounted"
        mounts.update(mounted)
    assert len(mounts) == 1, f"one volume at one path everywhere: {mounts}"
    ((claim_name, path),) = mounts
    claim = claims[claim_name]["spec"]
    assert claim["accessModes"] == ["ReadWriteMany"], claim_name
    assert claim.get("storageClassName"), f"{claim_name}: the default class may not offer RWX"
    for where, template in driver_templates(docs):
        env = env_of(main_container(template))
        for name in ("DMGUARD_REGISTRY", "DMGUARD_FEATURE_LOG", "DMGUARD_STATE_DIR"):
            value = PurePosixPath(env[name]["value"])
            assert value.is_relative_to(path), f"{where}: {name} is off the shared volume"


def test_serve_reads_the_input_topic(docs):
    args = serve_args(docs)
    service = the(docs, "Service", "dmguard")
    assert args.metrics_port == SERVE_METRICS_PORT == service["spec"]["ports"][0]["port"]
    top = max_serve_workers(docs)
    assert top and top <= topic_partitions(docs, Topics().images), (
        "more workers than input partitions would idle"
    )
    assert args.group_id in (None, KafkaSettings().group_id), "the KafkaUser's group ACL"
    assert not args.exactly_once or any(
        acl["resource"]["type"] == "transactionalId"
        for acl in the(docs, "KafkaUser", "dmguard")["spec"]["authorization"]["acls"]
    ), "--exactly-once needs Write on the transactional ids"


def test_serve_fits_the_worker_groups(docs, overlay):
    args = serve_args(docs)
    groups = worker_groups(docs)
    top = max_serve_workers(docs)
    if overlay == "gpu":
        assert args.gpus_per_worker and args.gpus_per_worker >= 1 and args.device == "cuda"
    else:
        assert args.gpus_per_worker == 0 and args.device in ("cpu", "auto")
        assert all("nvidia.com/gpu" not in limits(g) for g in groups)
    per_pod = max(quantity(limits(g)["cpu"]) for g in groups)
    assert args.cpus_per_worker <= per_pod, "a worker asks for more CPUs than a pod has"
    cpus = sum(quantity(limits(g)["cpu"]) * g["maxReplicas"] for g in groups)
    assert cpus >= top * args.cpus_per_worker, "the worker groups cannot hold --max-workers"


def test_serve_cannot_starve_retrain(docs, overlay):
    """The GPU (and CPU) budget: the worker groups can grow to hold serve at
    --max-workers and a retraining round's Ray Train workers at once, so serving at its
    peak never leaves a round waiting for its GPUs until its deadline."""
    serve, retrain = serve_args(docs), retrain_args(docs)
    groups = worker_groups(docs)
    top = max_serve_workers(docs)
    gpus = sum(int(limits(g).get("nvidia.com/gpu", 0)) * g["maxReplicas"] for g in groups)
    train_gpus = retrain.workers if retrain.use_gpu else 0
    assert gpus >= top * (serve.gpus_per_worker or 0) + train_gpus, (
        f"{gpus} GPUs cannot hold serve's {top} workers and retrain's {train_gpus}"
    )
    cpus = sum(quantity(limits(g)["cpu"]) * g["maxReplicas"] for g in groups)
    assert cpus >= top * serve.cpus_per_worker + retrain.workers, "no CPUs left for a round"


def test_worker_start_timeout_is_set_for_the_nodes(docs, overlay):
    """A new worker may wait for a new node (and on GPUs, a CUDA image pull) before it
    loads its model: the timeout is set explicitly, longer on GPU nodes."""
    argv = driver_argv(driver_templates(docs)[0][1])
    assert any(a.startswith("--worker-start-timeout") for a in argv), "set it explicitly"
    least = 600 if overlay == "gpu" else 120
    assert serve_args(docs).worker_start_timeout_s >= least


def test_one_image_per_overlay(docs, overlay):
    """Ray refuses a node whose Python or Ray differs from the head's: every container
    of every Ray node (head, workers, both drivers) runs one image."""
    images = {
        c["image"] for _, template in all_templates(docs) for c in template["spec"]["containers"]
    }
    assert len(images) == 1, f"more than one image: {images}"
    (image,) = images
    assert image.endswith("cuda" if overlay == "gpu" else "cpu"), image
    upgrade = the_cluster(docs)["spec"].get("upgradeStrategy", {}).get("type")
    assert upgrade == "Recreate", "a new image would never reach the running Ray pods"


def test_gpu_workers_get_gpu_nodes(docs, overlay):
    for g in worker_groups(docs):
        spec = g["template"]["spec"]
        if overlay == "gpu":
            assert limits(g).get("nvidia.com/gpu"), f"{g['groupName']}: no GPU limit"
            assert spec.get("nodeSelector"), f"{g['groupName']}: no node selector"
            assert any(t.get("key") == "nvidia.com/gpu" for t in spec.get("tolerations", []))
        else:
            assert "nvidia.com/gpu" not in limits(g)


def test_retrain_is_a_cron_job_that_cleans_up(docs, overlay):
    """A plain CronJob (no operator feature gate): rounds never overlap, a hung round
    ends before the next one is due, finished Jobs and their pods are deleted."""
    cron = retrain_cronjob(docs)["spec"]
    assert cron["concurrencyPolicy"] == "Forbid"
    assert 0 < cron["successfulJobsHistoryLimit"] <= 5
    assert 0 < cron["failedJobsHistoryLimit"] <= 10
    job = cron["jobTemplate"]["spec"]
    assert 0 < job["ttlSecondsAfterFinished"] <= 7 * 86400, "finished Jobs must go away"
    assert job["backoffLimit"] == 0, "the next schedule is the retry"
    every = cron_interval_s(cron["schedule"])
    deadline = job.get("activeDeadlineSeconds")
    assert deadline and deadline < every, "a hung round must end before the next one starts"
    assert cron.get("startingDeadlineSeconds", every) < every
    template = job["template"]
    assert template["spec"]["restartPolicy"] == "Never"
    own, kill_after, _ = strip_timeout(driver_argv(template))
    assert own is not None and own + kill_after < deadline, "the driver should stop itself first"
    assert template["spec"]["terminationGracePeriodSeconds"] >= kill_after
    args = retrain_args(docs)
    assert args.once
    assert args.use_gpu == (overlay == "gpu")
    mounts = [m["mountPath"] for m in main_container(template)["volumeMounts"]]
    assert any(PurePosixPath(args.cache).is_relative_to(m) for m in mounts if m == "/registry"), (
        "Ray Train's storage (--cache) must be on the shared volume"
    )


# ------------------------------------------------------------------ Kafka
def kafka_of(docs) -> Doc:
    return the(docs, "Kafka")


def tls_listener(docs) -> Doc:
    listeners = kafka_of(docs)["spec"]["kafka"]["listeners"]
    assert len(listeners) == 1, "one listener for clients: TLS with SCRAM"
    return listeners[0]


def test_kafka_is_kraft_with_node_pools_that_keep_their_volumes(docs):
    kafka = kafka_of(docs)
    name = kafka["metadata"]["name"]
    pools = [d for d in docs if d["kind"] == "KafkaNodePool"]
    for pool in pools:
        assert pool["metadata"]["labels"].get("strimzi.io/cluster") == name
    roles = {
        role: sum(p["spec"]["replicas"] for p in pools if role in p["spec"]["roles"])
        for role in ("controller", "broker")
    }
    assert roles["controller"] >= 3 and roles["controller"] % 2 == 1, "a KRaft quorum survives one"
    replicas = {t["spec"]["replicas"] for t in docs if t["kind"] == "KafkaTopic"}
    assert roles["broker"] >= max(replicas), "fewer brokers than a topic's replicas"
    for pool in pools:
        storage = pool["spec"]["storage"]
        volumes = storage.get("volumes", [storage])
        for volume in volumes:
            assert volume["type"] == "persistent-claim", f"{pool['metadata']['name']}: not kept"
            assert volume.get("deleteClaim") is False, (
                f"{pool['metadata']['name']}: deleting Kafka would delete its data"
            )
    config = kafka["spec"]["kafka"].get("config", {})
    assert config.get("auto.create.topics.enable") is False, "topics come from KafkaTopics only"


def test_kafka_listener_is_tls_with_scram_and_simple_authorization(docs):
    """The one client listener: TLS, SCRAM-SHA-512 logins, ACLs decided by Kafka's
    authorizer; the bootstrap the drivers use is that listener's."""
    listener = tls_listener(docs)
    assert listener["tls"] is True and listener["type"] == "internal"
    assert listener["authentication"]["type"] == "scram-sha-512"
    kafka = kafka_of(docs)
    assert kafka["spec"]["kafka"]["authorization"]["type"] == "simple"
    assert kafka["spec"]["entityOperator"].keys() >= {"topicOperator", "userOperator"}
    for where, template in driver_templates(docs):
        bootstrap = env_of(main_container(template))["DMGUARD_BOOTSTRAP"]["value"]
        assert bootstrap == f"{kafka['metadata']['name']}-kafka-bootstrap:{listener['port']}", where


def test_kafka_listener_admits_dmguards_pods_only(docs):
    """networkPolicyPeers: Strimzi's NetworkPolicy for the listener lets in the pods
    that open Kafka clients (both drivers and the workers), and no one else."""
    peers = tls_listener(docs).get("networkPolicyPeers")
    assert peers, "without peers Strimzi opens the listener to every pod"
    policy = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "peers"},
        "spec": {"podSelector": {}, "ingress": [{"from": peers}]},
    }
    kubernetes_validate.validate(policy, K8S_VERSIONS[-1], strict=True)
    for peer in peers:
        assert set(peer) == {"podSelector"}, "peers from this namespace only"
    clients = [
        (where, t)
        for where, t in all_templates(docs)
        if any(
            m["mountPath"] == "/etc/dmguard/kafka-ca"
            for m in main_container(t).get("volumeMounts", [])
        )
    ]
    assert len(clients) >= 3, "the drivers and the workers open Kafka clients"
    for where, template in clients:
        assert any(selects(p["podSelector"], labels_of(template)) for p in peers), where


def test_topics_are_the_ones_dmguard_uses(docs):
    topics = [d for d in docs if d["kind"] == "KafkaTopic"]
    user = the(docs, "KafkaUser", "dmguard")
    assert {t["metadata"]["name"] for t in topics} == set(Topics().all())
    clusters = {d["metadata"]["labels"].get("strimzi.io/cluster") for d in [*topics, user]}
    assert clusters == {kafka_of(docs)["metadata"]["name"]}, "one Strimzi cluster for all"
    for t in topics:
        spec = t["spec"]
        misr = spec.get("config", {}).get("min.insync.replicas")
        assert isinstance(misr, int), f"{t['metadata']['name']}: set min.insync.replicas"
        assert 2 <= misr < spec["replicas"], (
            f"{t['metadata']['name']}: acks=all needs 2 <= min.insync.replicas < replicas"
        )


def test_kafka_user_may_do_exactly_what_docs_list(docs):
    """docs/delivery.md ("A locked-down Kafka") lists what serve and retrain need, as
    tests/e2e/test_kafka_security.py grants it on a real Kafka: those grants, nothing
    more (Read and Write imply Describe; Write implies IdempotentWrite)."""
    user = the(docs, "KafkaUser", "dmguard")
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
    expected = {
        ("topic", t.images, "literal"): {"Read"},
        ("topic", t.verdicts, "literal"): {"Write"},
        ("topic", t.dead_letter, "literal"): {"Write"},
        ("topic", t.labels, "literal"): {"Read"},
        ("group", KafkaSettings().group_id, "literal"): {"Read"},
    }
    if serve_args(docs).exactly_once:
        from actors.delivery import transactional_id

        prefix = transactional_id(KafkaSettings().group_id, t.images, [0]).split("-")[0] + "-"
        expected[("transactionalId", prefix, "prefix")] = {"Write"}
    assert rules == expected


def test_clients_use_the_users_secret_and_the_cluster_ca(docs):
    """The drivers' DMGUARD_KAFKA_* settings are kafka-python settings every client
    accepts; the password comes from the Secret the User Operator writes, the CA file
    from the cluster CA Secret the Cluster Operator writes, both in this namespace, and
    the CA is mounted at the same path on every pod that opens a Kafka client."""
    user = the(docs, "KafkaUser", "dmguard")
    kafka = kafka_of(docs)["metadata"]["name"]
    cafiles = set()
    for where, template in driver_templates(docs):
        env = env_of(main_container(template))
        kafka_env = {
            k: v.get("value", "from-a-secret")
            for k, v in env.items()
            if k.startswith("DMGUARD_KAFKA_")
        }
        settings = kafka_extra_from_env(kafka_env)  # raises ConfigError on a wrong name or value
        assert settings["security_protocol"] == "SASL_SSL", where
        assert settings["sasl_mechanism"] == "SCRAM-SHA-512", where
        assert settings["sasl_plain_username"] == user["metadata"]["name"], where
        secret = env["DMGUARD_KAFKA_SASL_PLAIN_PASSWORD"]["valueFrom"]["secretKeyRef"]
        assert secret == {"name": user["metadata"]["name"], "key": "password"}, where
        cafiles.add(settings["ssl_cafile"])
    assert len(cafiles) == 1
    cafile = PurePosixPath(cafiles.pop())
    clients = [*driver_templates(docs), *ray_templates(the_cluster(docs))[1:]]
    for where, template in clients:
        mount = next(
            (
                m
                for m in main_container(template).get("volumeMounts", [])
                if PurePosixPath(m["mountPath"]) == cafile.parent
            ),
            None,
        )
        assert mount, f"{where}: {cafile} is not mounted (the workers open Kafka clients too)"
        volume = next(v for v in template["spec"]["volumes"] if v["name"] == mount["name"])
        assert volume["secret"]["secretName"] == f"{kafka}-cluster-ca-cert", where
        items = {i["key"]: i["path"] for i in volume["secret"].get("items", [])}
        assert items.get("ca.crt", "ca.crt") == cafile.name, where
        assert "subPath" not in mount, f"{where}: a subPath mount misses the CA's renewal"


# ------------------------------------------------------------------ Pod Security
def test_every_pod_is_restricted(docs):
    """The `restricted` Pod Security Standard on every pod dmguard makes (and on the
    autoscaler sidecar KubeRay adds), and the namespace enforcing it."""
    namespace = the(docs, "Namespace", NAMESPACE)["metadata"]["labels"]
    assert namespace.get("pod-security.kubernetes.io/enforce") == "restricted"
    autoscaler = the_cluster(docs)["spec"]["autoscalerOptions"].get("securityContext", {})
    containers_seen = 0
    for where, template in all_templates(docs):
        pod = template["spec"]
        pod_context = pod.get("securityContext", {})
        for flag in ("hostNetwork", "hostPID", "hostIPC"):
            assert not pod.get(flag), f"{where}: {flag}"
        assert not any("hostPath" in v for v in pod.get("volumes", [])), f"{where}: hostPath"
        for container in [*pod.get("initContainers", []), *pod["containers"]]:
            containers_seen += 1
            context = container.get("securityContext", {})
            name = f"{where} {container['name']}"
            assert context.get("runAsNonRoot", pod_context.get("runAsNonRoot")) is True, name
            assert context.get("runAsUser", pod_context.get("runAsUser", 1)) != 0, name
            assert context.get("allowPrivilegeEscalation") is False, name
            assert context.get("capabilities", {}).get("drop") == ["ALL"], name
            assert not context.get("capabilities", {}).get("add"), name
            assert not context.get("privileged"), name
            seccomp = context.get("seccompProfile", pod_context.get("seccompProfile", {}))
            assert seccomp.get("type") in ("RuntimeDefault", "Localhost"), name
    assert containers_seen >= 4
    assert autoscaler.get("allowPrivilegeEscalation") is False, "the autoscaler sidecar"
    assert autoscaler.get("capabilities", {}).get("drop") == ["ALL"], "the autoscaler sidecar"
    assert autoscaler.get("runAsNonRoot") is True, "the autoscaler sidecar"
    assert autoscaler.get("seccompProfile", {}).get("type") == "RuntimeDefault"


# ------------------------------------------------------------------ NetworkPolicy
def policies(docs) -> list[Doc]:
    return [d for d in docs if d["kind"] == "NetworkPolicy"]


def applying(docs, labels: dict[str, str], direction: str) -> list[Doc]:
    return [
        p
        for p in policies(docs)
        if direction in p["spec"].get("policyTypes", ["Ingress"])
        and selects(p["spec"]["podSelector"], labels)
    ]


def is_app_peer(peer: Doc) -> bool:
    return set(peer) == {"podSelector"} and selects(peer["podSelector"], dict([APP_LABEL]))


def test_namespace_denies_ingress_by_default(docs):
    default = [p for p in policies(docs) if p["spec"]["podSelector"] == {}]
    assert any(
        "Ingress" in p["spec"]["policyTypes"] and not p["spec"].get("ingress") for p in default
    ), "no default-deny ingress policy for the namespace"


def test_ray_ports_answer_dmguards_pods_only(docs):
    """Ingress to dmguard's pods: from dmguard's pods (Ray's own traffic) on any port,
    from Prometheus on the two metrics ports, from nothing else. So the head's GCS,
    Jobs API and client port are out of reach of every other pod."""
    for where, template in all_templates(docs):
        labels = labels_of(template)
        assert selects({"matchLabels": dict([APP_LABEL])}, labels), f"{where}: unlabelled"
        for policy in applying(docs, labels, "Ingress"):
            for rule in policy["spec"].get("ingress", []):
                peers = rule.get("from", [])
                assert peers, f"{policy['metadata']['name']}: a rule from everywhere"
                if all(is_app_peer(p) for p in peers):
                    continue
                ports = {p["port"] for p in rule.get("ports", [])}
                assert ports and ports <= {SERVE_METRICS_PORT, KUBERAY_METRICS_PORT}, (
                    f"{policy['metadata']['name']}: {ports} open to {peers}"
                )
                assert not ports & KUBERAY_HEAD_PORTS


def test_dmguards_pods_reach_only_what_they_need(docs):
    """Egress of dmguard's pods is denied but for: each other, the cluster DNS, Kafka's
    TLS listener; the workers public HTTP(S) (the images), the head the API server."""
    listener_port = tls_listener(docs)["port"]
    kafka = kafka_of(docs)["metadata"]["name"]
    private = [
        ipaddress.ip_network(n)
        for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16")
    ]
    for where, template in all_templates(docs):
        labels = labels_of(template)
        egress = applying(docs, labels, "Egress")
        assert egress, f"{where}: egress is not restricted"
        kinds = set()
        for policy in egress:
            for rule in policy["spec"].get("egress", []):
                peers = rule.get("to", [])
                ports = {(p.get("protocol", "TCP"), p["port"]) for p in rule.get("ports", [])}
                assert peers, f"{policy['metadata']['name']}: a rule to everywhere"
                if all(is_app_peer(p) for p in peers):
                    kinds.add("ray")
                elif all(
                    p.get("podSelector", {}).get("matchLabels", {}).get("k8s-app") == "kube-dns"
                    for p in peers
                ):
                    assert {port for _, port in ports} == {53}
                    kinds.add("dns")
                elif all(
                    p.get("podSelector", {}).get("matchLabels", {}).get("strimzi.io/cluster")
                    == kafka
                    for p in peers
                ):
                    assert ports == {("TCP", listener_port)}, "Kafka's client listener only"
                    kinds.add("kafka")
                else:
                    blocks = [p["ipBlock"] for p in peers]
                    assert blocks and len(blocks) == len(peers), f"{where}: {peers}"
                    component = labels.get("app.kubernetes.io/component")
                    if ports == {("TCP", 80), ("TCP", 443)}:
                        assert component == "ray-worker", f"{where} fetches images"
                        for block in blocks:
                            excepted = [ipaddress.ip_network(n) for n in block.get("except", [])]
                            assert all(n in excepted for n in private), f"{where}: private ranges"
                        kinds.add("fetch")
                    else:
                        assert component == "ray-head" and ports <= {("TCP", 443), ("TCP", 6443)}
                        kinds.add("apiserver")
        assert {"ray", "dns"} <= kinds, f"{where}: {kinds}"
        if where.startswith("Deployment") or where.startswith("CronJob") or "worker" in where:
            assert "kafka" in kinds, f"{where} opens Kafka clients"


# ------------------------------------------------------------------ the head's budget
def test_ray_head_has_a_disruption_budget(docs):
    """No voluntary eviction (a drain, an autoscaler's node removal) takes the head,
    whose loss restarts every Ray node and both drivers."""
    head = the_cluster(docs)["spec"]["headGroupSpec"]["template"]
    kuberay_labels = {
        "ray.io/cluster": the_cluster(docs)["metadata"]["name"],
        "ray.io/node-type": "head",
    }
    labels = {**labels_of(head), **kuberay_labels}
    budgets = [
        d
        for d in docs
        if d["kind"] == "PodDisruptionBudget" and selects(d["spec"]["selector"], labels)
    ]
    assert len(budgets) == 1, "the head has no PodDisruptionBudget"
    spec = budgets[0]["spec"]
    assert spec.get("maxUnavailable") == 0 or spec.get("minAvailable") == 1, spec
    workers = [
        {**labels_of(g["template"]), "ray.io/node-type": "worker"} for g in worker_groups(docs)
    ]
    assert not any(selects(spec["selector"], w) for w in workers), "the budget takes in workers"


# ------------------------------------------------------------------ monitoring
def test_driver_metrics_are_scraped_as_job_dmguard(docs):
    service = the(docs, "Service", "dmguard")
    serve = serve_deployment(docs)["spec"]["template"]
    assert selects({"matchLabels": service["spec"]["selector"]}, labels_of(serve)), (
        "the Service does not select the serve pod"
    )
    for where, template in ray_templates(the_cluster(docs)) + driver_templates(docs)[1:]:
        assert not selects({"matchLabels": service["spec"]["selector"]}, labels_of(template)), where
    monitor = the(docs, "ServiceMonitor", "dmguard")
    assert selects(monitor["spec"]["selector"], service["metadata"]["labels"])
    port_names = {p["name"] for p in service["spec"]["ports"]}
    assert {e["port"] for e in monitor["spec"]["endpoints"]} <= port_names
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


def values(name: str) -> Doc:
    return yaml.safe_load((OPERATORS / f"{name}-values.yaml").read_text())


def test_monitoring_objects_carry_the_release_prometheus_selects(docs):
    labels = {
        d["kind"]: d["metadata"]["labels"].get("release")
        for d in docs
        if d["kind"] in ("ServiceMonitor", "PodMonitor", "PrometheusRule")
    }
    assert len(labels) == 3 and set(labels.values()) == {"kube-prometheus-stack"}, labels
    readme = (DEPLOY / "README.md").read_text()
    assert re.search(
        r"helm install kube-prometheus-stack \S+ \\\s+-n monitoring .*kube-prometheus-stack-values",
        readme,
    ), "the README installs another release or namespace than the monitors and policies expect"


def test_prometheus_rule_carries_alerts_yml(docs):
    rule = the(docs, "PrometheusRule", "dmguard")
    source = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    assert rule["spec"]["groups"] == source["groups"], "run `make deploy-generate`"


def test_dashboard_configmap_is_found_by_the_sidecar(docs):
    cm = the(docs, "ConfigMap", "dmguard-dashboard")
    assert cm["data"] == {"dmguard.json": (DEPLOY / "grafana" / "dmguard.json").read_text()}
    sidecar = values("kube-prometheus-stack")["grafana"]["sidecar"]["dashboards"]
    assert sidecar["enabled"] is True
    assert sidecar["searchNamespace"] == "ALL", "the sidecar would not look in dmguard"
    assert cm["metadata"]["labels"][sidecar["label"]] == sidecar["labelValue"]


# ------------------------------------------------------------------ the operators
def test_operator_values_fit_the_manifests(docs):
    strimzi = values("strimzi")
    assert NAMESPACE in strimzi["watchNamespaces"], "Strimzi would not see the Kafka"
    assert strimzi.get("generateNetworkPolicy", True) is True, (
        "default-deny needs Strimzi's own NetworkPolicies"
    )
    env = {e["name"]: e["value"] for e in strimzi.get("extraEnvs", [])}
    assert env.get("STRIMZI_POD_SECURITY_PROVIDER_CLASS") == "restricted", (
        "the namespace enforces restricted: Strimzi's pods must comply"
    )
    kuberay = values("kuberay-operator")
    gates = {g["name"] for g in kuberay.get("featureGates", []) if g.get("enabled")}
    kinds = {d["kind"] for d in docs if d["apiVersion"].startswith("ray.io/")}
    assert kinds == {"RayCluster"}, "RayJob/RayCronJob need gates the values do not set"
    assert "RayCronJob" not in gates
    readme = (DEPLOY / "README.md").read_text()
    for name in ("kuberay-operator", "strimzi", "kube-prometheus-stack"):
        assert f"deploy/operators/{name}-values.yaml" in readme, f"{name}'s values unused"


def test_both_overlays_share_everything_but_the_gpu_choices():
    cpu, gpu = render("cpu"), render("gpu")
    assert [(d["kind"], d["metadata"]["name"]) for d in cpu] == [
        (d["kind"], d["metadata"]["name"]) for d in gpu
    ]
    differs = [d["kind"] for d, e in zip(cpu, gpu, strict=True) if d != e]
    assert sorted(differs) == ["CronJob", "Deployment", "RayCluster"], differs
