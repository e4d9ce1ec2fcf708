"""The operators' kinds that deploy/k8s uses, as JSON Schemas of their real fields.

For every object level that belongs to the operator (a RayCluster's spec, a
worker group, a KafkaUser ACL rule, a ServiceMonitor endpoint...), the schema
lists every field the upstream CRD defines there, with `additionalProperties:
false`: a misspelt or invented field fails, as it would on the cluster (the API
server prunes unknown fields silently, which is worse). Types, enums and
required fields are the CRDs' too. Levels that hold Kubernetes' own types (pod
templates, Services, env entries, label selectors' expressions) are left open
here: test_manifests.py validates the pod templates and object metadata with
kubernetes-validate in strict mode instead.

Read with the search tool from the upstream repositories (vendored by hand,
trimmed to these levels; update them with the versions in deploy/README.md):

- KubeRay v1.7 (ray.io/v1): ray-project/kuberay
  helm-chart/kuberay-operator/crds/ray.io_raycronjobs.yaml at 034971da (its
  jobTemplate embeds the whole RayClusterSpec), and
  ray-operator/controllers/ray/utils/validation.go (the operator's own checks,
  some of which test_manifests.py repeats). dmguard uses the RayCluster only.
- Strimzi 1.0 (kafka.strimzi.io/v1): strimzi/strimzi-kafka-operator
  packaging/install/cluster-operator/040-Crd-kafka.yaml, 043-Crd-kafkatopic.yaml,
  044-Crd-kafkauser.yaml and 04A-Crd-kafkanodepool.yaml (the v1beta2 schema),
  with the changes that make `v1` (strimzi/proposals 113-Strimzi-v1-CRD-API-and-
  1.0.0-release.md and 119): `spec` required; KafkaUser ACL rules lose
  `operation` and require `operations`; Kafka loses `spec.zookeeper`,
  `spec.jmxTrans`, `spec.kafka.resources`, oauth/keycloak/opa, the Entity
  Operator's tlsSidecar and *Seconds intervals; node pools lose storage
  `overrides`. The Kafka levels list the fields dmguard's Kafka could use
  (listeners, authorization, storage, the Entity Operator), not every tuning
  knob (Cruise Control, the exporter, templates are left OPEN).

Why field lists and not the CRD files themselves: no package registry this
project can reach ships KubeRay's or Strimzi's CRDs (Strimzi's `io.strimzi:api`
jar on Maven Central carries classes, not YAML; KubeRay's CRDs are in its Go
module and Helm chart only), so they cannot be vendored pinned and checksummed
the way promtool is (deploy/README.md, "What is not verified").
- Prometheus Operator (monitoring.coreos.com/v1): prometheus-operator/
  prometheus-operator example/prometheus-operator-crd/ ServiceMonitor and
  PodMonitor at v0.87.0, PrometheusRule at v0.76.0 (rule groups: interval,
  limit, name, partial_response_strategy, rules; later versions add fields,
  none of which dmguard uses).
"""

from __future__ import annotations

from typing import Any

Schema = dict[str, Any]

STR: Schema = {"type": "string"}
INT: Schema = {"type": "integer"}
NUM: Schema = {"type": "number"}
BOOL: Schema = {"type": "boolean"}
OPEN: Schema = {"type": "object"}  # a Kubernetes type: checked with kubernetes-validate
ANY: Schema = {}
STR_MAP: Schema = {"type": "object", "additionalProperties": STR}
DURATION: Schema = {
    "type": "string",
    "pattern": r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$",
}


def obj(required: tuple[str, ...] = (), **properties: Schema) -> Schema:
    """An object with exactly these fields (`for_` stands for `for`)."""
    props = {name.rstrip("_"): schema for name, schema in properties.items()}
    return {
        "type": "object",
        "properties": props,
        "required": list(required),
        "additionalProperties": False,
    }


def arr(items: Schema) -> Schema:
    return {"type": "array", "items": items}


def enum(*values: str) -> Schema:
    return {"type": "string", "enum": list(values)}


def kind(api_version: str, kind_name: str, spec: Schema) -> Schema:
    return obj(
        ("apiVersion", "kind", "metadata", "spec"),
        apiVersion={"const": api_version},
        kind={"const": kind_name},
        metadata=OPEN,
        spec=spec,
    )


# ----------------------------------------------------------------------- KubeRay
POD_TEMPLATE = OPEN
AUTOSCALER_OPTIONS = obj(
    args=arr(STR),
    command=arr(STR),
    env=arr(OPEN),
    envFrom=arr(OPEN),
    idleTimeoutSeconds=INT,
    image=STR,
    imagePullPolicy=STR,
    resources=OPEN,
    securityContext=OPEN,
    upscalingMode=enum("Default", "Aggressive", "Conservative"),
    version=enum("v1", "v2"),
    volumeMounts=arr(OPEN),
)
HEAD_GROUP_SPEC = obj(
    ("template",),
    enableIngress=BOOL,
    headService=OPEN,
    ingressOptions=OPEN,
    labels=STR_MAP,
    rayStartParams=STR_MAP,
    resources=STR_MAP,
    serviceType=STR,
    template=POD_TEMPLATE,
)
WORKER_GROUP_SPEC = obj(
    ("groupName", "maxReplicas", "minReplicas", "template"),
    groupName=STR,
    idleTimeoutSeconds=INT,
    labels=STR_MAP,
    maxReplicas=INT,
    minReplicas=INT,
    numOfHosts=INT,
    priority=INT,
    rayStartParams=STR_MAP,
    replicas=INT,
    resources=STR_MAP,
    scaleStrategy=obj(workersToDelete=arr(STR)),
    suspend=BOOL,
    template=POD_TEMPLATE,
)
RAY_CLUSTER_SPEC = obj(
    ("headGroupSpec",),
    authOptions=obj(enableK8sTokenAuth=BOOL, mode=enum("disabled", "token"), secretName=STR),
    autoscalerOptions=AUTOSCALER_OPTIONS,
    enableInTreeAutoscaling=BOOL,
    gcsFaultToleranceOptions=OPEN,
    headGroupSpec=HEAD_GROUP_SPEC,
    headServiceAnnotations=STR_MAP,
    historyServerOptions=OPEN,
    managedBy=enum("ray.io/kuberay-operator", "kueue.x-k8s.io/multikueue"),
    networkPolicy=OPEN,
    rayVersion=STR,
    suspend=BOOL,
    tlsOptions=obj(enabled=BOOL),
    upgradeStrategy=obj(type=enum("Recreate", "None")),
    workerGroupSpecs=arr(WORKER_GROUP_SPEC),
)

# ----------------------------------------------------------------------- Strimzi
KRAFT_METADATA = enum("shared")
PERSISTENT_CLAIM_FIELDS: dict[str, Schema] = {
    "class": STR,
    "deleteClaim": BOOL,
    "kraftMetadata": KRAFT_METADATA,
    "selector": STR_MAP,
    "size": STR,
}
SINGLE_VOLUME = obj(
    ("type",),
    type=enum("ephemeral", "persistent-claim"),
    sizeLimit=STR,
    **PERSISTENT_CLAIM_FIELDS,
)
STORAGE = obj(
    ("type",),
    type=enum("ephemeral", "persistent-claim", "jbod"),
    sizeLimit=STR,
    volumes={
        **arr(obj(("type",), id={"type": "integer", "minimum": 0}, **SINGLE_VOLUME["properties"])),
        "minItems": 1,
    },
    **PERSISTENT_CLAIM_FIELDS,
)
LISTENER = obj(
    ("name", "port", "tls", "type"),
    name={"type": "string", "pattern": "^[a-z0-9]{1,11}$"},
    port={"type": "integer", "minimum": 9092},
    type=enum("internal", "route", "loadbalancer", "nodeport", "ingress", "cluster-ip"),
    tls=BOOL,
    authentication=obj(
        ("type",),
        type=enum("tls", "scram-sha-512", "custom"),
        sasl=BOOL,
        listenerConfig=OPEN,
    ),
    configuration=OPEN,
    networkPolicyPeers=arr(OPEN),  # Kubernetes NetworkPolicyPeers: test_manifests.py
)
KAFKA_CLUSTER_SPEC = obj(
    ("listeners",),
    version=STR,
    metadataVersion=STR,
    image=STR,
    listeners={**arr(LISTENER), "minItems": 1},
    config=OPEN,
    authorization=obj(
        ("type",),
        type=enum("simple", "custom"),
        superUsers=arr(STR),
        authorizerClass=STR,
        supportsAdminApi=BOOL,
    ),
    rack=OPEN,
    brokerRackInitImage=STR,
    livenessProbe=OPEN,
    readinessProbe=OPEN,
    jvmOptions=OPEN,
    jmxOptions=OPEN,
    metricsConfig=OPEN,
    logging=OPEN,
    template=OPEN,
    tieredStorage=OPEN,
    quotas=OPEN,
)
_OPERATOR_FIELDS: dict[str, Schema] = {
    "watchedNamespace": STR,
    "image": STR,
    "reconciliationIntervalMs": INT,
    "resources": OPEN,
    "livenessProbe": OPEN,
    "readinessProbe": OPEN,
    "startupProbe": OPEN,
    "logging": OPEN,
    "jvmOptions": OPEN,
}
KAFKA_SPEC = obj(
    ("kafka",),
    kafka=KAFKA_CLUSTER_SPEC,
    entityOperator=obj(
        topicOperator=obj(**_OPERATOR_FIELDS),
        userOperator=obj(secretPrefix=STR, **_OPERATOR_FIELDS),
        template=OPEN,
    ),
    clusterCa=OPEN,
    clientsCa=OPEN,
    cruiseControl=OPEN,
    kafkaExporter=OPEN,
    maintenanceTimeWindows=arr(STR),
)
KAFKA_NODE_POOL_SPEC = obj(
    ("replicas", "roles", "storage"),
    replicas={"type": "integer", "minimum": 0},
    roles={**arr(enum("controller", "broker")), "minItems": 1},
    storage=STORAGE,
    resources=OPEN,
    jvmOptions=OPEN,
    template=OPEN,
)
KAFKA_TOPIC_SPEC = obj(
    topicName=STR,
    partitions={"type": "integer", "minimum": 1},
    replicas={"type": "integer", "minimum": 1, "maximum": 32767},
    config=OPEN,  # any Kafka topic config (x-kubernetes-preserve-unknown-fields)
)
ACL_OPERATION = enum(
    "Read",
    "Write",
    "Create",
    "Delete",
    "Alter",
    "Describe",
    "ClusterAction",
    "AlterConfigs",
    "DescribeConfigs",
    "IdempotentWrite",
    "All",
)
ACL_RULE = obj(
    ("resource", "operations"),
    type=enum("allow", "deny"),
    resource=obj(
        ("type",),
        name=STR,
        patternType=enum("literal", "prefix"),
        type=enum("topic", "group", "cluster", "transactionalId"),
    ),
    host=STR,
    operations={**arr(ACL_OPERATION), "minItems": 1},
)
KAFKA_USER_SPEC = obj(
    authentication=obj(
        ("type",),
        password=obj(
            ("valueFrom",),
            valueFrom=obj(secretKeyRef=obj(key=STR, name=STR, optional=BOOL)),
        ),
        type=enum("tls", "tls-external", "scram-sha-512"),
    ),
    authorization=obj(("acls", "type"), acls=arr(ACL_RULE), type=enum("simple")),
    quotas=obj(
        producerByteRate={"type": "integer", "minimum": 0},
        consumerByteRate={"type": "integer", "minimum": 0},
        requestPercentage={"type": "integer", "minimum": 0},
        controllerMutationRate={"type": "number", "minimum": 0},
    ),
    template=obj(secret=obj(metadata=obj(labels=STR_MAP, annotations=STR_MAP))),
)

# ----------------------------------------------------------- Prometheus Operator
RELABEL_CONFIG = obj(
    action=enum(
        *(
            name
            for pair in (
                ("replace", "Replace"),
                ("keep", "Keep"),
                ("drop", "Drop"),
                ("hashmod", "HashMod"),
                ("labelmap", "LabelMap"),
                ("labeldrop", "LabelDrop"),
                ("labelkeep", "LabelKeep"),
                ("lowercase", "Lowercase"),
                ("uppercase", "Uppercase"),
                ("keepequal", "KeepEqual"),
                ("dropequal", "DropEqual"),
            )
            for name in pair
        )
    ),
    modulus=INT,
    regex=STR,
    replacement=STR,
    separator=STR,
    sourceLabels=arr(STR),
    targetLabel=STR,
)
_ENDPOINT_FIELDS: dict[str, Schema] = {
    "authorization": OPEN,
    "basicAuth": OPEN,
    "bearerTokenSecret": OPEN,
    "enableHttp2": BOOL,
    "filterRunning": BOOL,
    "followRedirects": BOOL,
    "honorLabels": BOOL,
    "honorTimestamps": BOOL,
    "interval": DURATION,
    "metricRelabelings": arr(RELABEL_CONFIG),
    "noProxy": STR,
    "oauth2": OPEN,
    "params": OPEN,
    "path": STR,
    "port": STR,
    "proxyConnectHeader": OPEN,
    "proxyFromEnvironment": BOOL,
    "proxyUrl": STR,
    "relabelings": arr(RELABEL_CONFIG),
    "scheme": enum("http", "https", "HTTP", "HTTPS"),
    "scrapeTimeout": DURATION,
    "targetPort": {"type": ["integer", "string"]},
    "tlsConfig": OPEN,
    "trackTimestampsStaleness": BOOL,
}
SERVICE_MONITOR_ENDPOINT = obj(bearerTokenFile=STR, **_ENDPOINT_FIELDS)
POD_METRICS_ENDPOINT = obj(
    portNumber={"type": "integer", "minimum": 1, "maximum": 65535}, **_ENDPOINT_FIELDS
)
LABEL_SELECTOR = obj(matchExpressions=arr(OPEN), matchLabels=STR_MAP)
_MONITOR_FIELDS: dict[str, Schema] = {
    "attachMetadata": obj(node=BOOL),
    "bodySizeLimit": STR,
    "convertClassicHistogramsToNHCB": BOOL,
    "fallbackScrapeProtocol": STR,
    "jobLabel": STR,
    "keepDroppedTargets": INT,
    "labelLimit": INT,
    "labelNameLengthLimit": INT,
    "labelValueLengthLimit": INT,
    "namespaceSelector": obj(any=BOOL, matchNames=arr(STR)),
    "nativeHistogramBucketLimit": INT,
    "nativeHistogramMinBucketFactor": ANY,
    "podTargetLabels": arr(STR),
    "sampleLimit": INT,
    "scrapeClass": STR,
    "scrapeClassicHistograms": BOOL,
    "scrapeProtocols": arr(STR),
    "selector": LABEL_SELECTOR,
    "selectorMechanism": enum("RelabelConfig", "RoleSelector"),
    "targetLimit": INT,
}
SERVICE_MONITOR_SPEC = obj(
    ("endpoints", "selector"),
    endpoints=arr(SERVICE_MONITOR_ENDPOINT),
    serviceDiscoveryRole=enum("Endpoints", "EndpointSlice"),
    targetLabels=arr(STR),
    **_MONITOR_FIELDS,
)
POD_MONITOR_SPEC = obj(
    ("selector",), podMetricsEndpoints=arr(POD_METRICS_ENDPOINT), **_MONITOR_FIELDS
)
PROMETHEUS_RULE_SPEC = obj(
    groups=arr(
        obj(
            ("name",),
            interval=DURATION,
            limit=INT,
            name={"type": "string", "minLength": 1},
            partial_response_strategy=STR,
            rules=arr(
                obj(
                    ("expr",),
                    alert=STR,
                    annotations=STR_MAP,
                    expr={"type": ["integer", "string"]},
                    for_=DURATION,
                    keep_firing_for={**DURATION, "minLength": 1},
                    labels=STR_MAP,
                    record=STR,
                )
            ),
        )
    )
)

# (apiVersion, kind) -> schema of the whole object
SCHEMAS: dict[tuple[str, str], Schema] = {
    ("ray.io/v1", "RayCluster"): kind("ray.io/v1", "RayCluster", RAY_CLUSTER_SPEC),
    ("kafka.strimzi.io/v1", "Kafka"): kind("kafka.strimzi.io/v1", "Kafka", KAFKA_SPEC),
    ("kafka.strimzi.io/v1", "KafkaNodePool"): kind(
        "kafka.strimzi.io/v1", "KafkaNodePool", KAFKA_NODE_POOL_SPEC
    ),
    ("kafka.strimzi.io/v1", "KafkaTopic"): kind(
        "kafka.strimzi.io/v1", "KafkaTopic", KAFKA_TOPIC_SPEC
    ),
    ("kafka.strimzi.io/v1", "KafkaUser"): kind("kafka.strimzi.io/v1", "KafkaUser", KAFKA_USER_SPEC),
    ("monitoring.coreos.com/v1", "ServiceMonitor"): kind(
        "monitoring.coreos.com/v1", "ServiceMonitor", SERVICE_MONITOR_SPEC
    ),
    ("monitoring.coreos.com/v1", "PodMonitor"): kind(
        "monitoring.coreos.com/v1", "PodMonitor", POD_MONITOR_SPEC
    ),
    ("monitoring.coreos.com/v1", "PrometheusRule"): kind(
        "monitoring.coreos.com/v1", "PrometheusRule", PROMETHEUS_RULE_SPEC
    ),
}
