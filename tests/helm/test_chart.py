"""Helm chart tests: the real `helm` renders the chart, the example parent chart and parent charts
written here (two copies in one pod, a pod with its own init containers and volumes) for a matrix
of values; every built-in object is validated strictly against the Kubernetes 1.33 schemas, the
YAML is checked for duplicate keys, and the parsed objects are checked for what a real cluster
needs: placement, env, probes, security, secrets, the socket directory and its group, names that
stay apart, deadlines derived from the bootstrap budget, network policy and monitoring scope.

Run: python -m pytest tests/helm -q   (scripts/test installs helm and the Python packages).
"""

import copy
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "cdc-cache"
EXAMPLE = REPO / "helm" / "examples" / "orders-app"
KUBE_VERSION = "1.33.0"
ADMIN_PORT = 9464
ADMIN_PORT_NAME = "cdc-cache-admin"
BUDGET = 10 * 180  # the default bootstrap budget: probes.startup periodSeconds x failureThreshold
SHUTDOWN_DELAY = 15  # classic mode's default shutdownDelay, in seconds: a 10 s preStop + 5 s drain
SNAPSHOT_ALLOWANCE = 10  # snapshots.shutdownAllowance: the final snapshot at shutdown, in seconds
NO_SNAPSHOTS = {"snapshots": {"enabled": False}}

# Kinds kubernetes-validate has no schema for; their structure is asserted in the tests below.
CRD_KINDS = {"PodMonitor", "PrometheusRule"}

# A password that only ever lives in a Secret: it must never reach values output or errors.
SENTINEL = "s3ntinel-Pa55word-do-not-inline"

# Kubernetes' port name rule (IANA_SVC_NAME): at most 15 characters, lower-case letters, digits and
# single dashes, at least one letter, no dash at either end.
PORT_NAME = re.compile(r"^(?=.*[a-z])(?!.*--)[a-z0-9]([a-z0-9-]{0,13}[a-z0-9])?$")

BASE = {
    "image": {"repository": "registry.example.com/platform/cdc-cache"},
    "kafka": {"brokers": "kafka-1:9092,kafka-2:9092"},
    "topics": [
        {"topic": "dbz.public.orders", "table": "orders", "format": "debezium"},
        {"topic": "customers"},
    ],
    "app": {
        "image": "example/orders:1.0",
        "ports": [{"name": "http", "containerPort": 8080}],
    },
}

SASL = {
    "kafka": {
        "options": {
            "security.protocol": "SASL_SSL",
            "sasl.mechanism": "SCRAM-SHA-512",
            "sasl.username": "orders-reader",
            "fetch.wait.max.ms": 100,
            "socket.keepalive.enable": True,
        },
        "secretOptions": [{"option": "sasl.password", "secretName": "kafka-creds", "secretKey": "password"}],
    }
}

# Mutual TLS to Strimzi: the cluster CA and the KafkaUser certificate live in two Secrets.
TLS = {
    "kafka": {
        "options": {"security.protocol": "SSL"},
        "tls": {
            "enabled": True,
            "ca": {"secretName": "my-cluster-cluster-ca-cert", "key": "ca.crt"},
            "clientCert": {"secretName": "orders-reader", "certKey": "user.crt", "keyKey": "user.key"},
        },
        "secretOptions": [{"option": "ssl.key.password", "secretName": "orders-reader", "secretKey": "user.password"}],
    }
}

MONITORING = {
    "monitoring": {
        "podMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
        "prometheusRule": {"enabled": True},
        "dashboard": {"enabled": True, "annotations": {"grafana_folder": "Kafka"}},
    }
}

UNIX = {"grpcListen": "unix"}  # the default
TCP = {"grpcListen": "127.0.0.1:50051"}  # the alternative, for apps whose gRPC client cannot dial a socket
SOCKET_MOUNT = {"name": "cdc-cache-socket", "mountPath": "/var/run/cdc-cache"}
SOCKET_ADDR = "unix:/var/run/cdc-cache/grpc.sock"
CLASSIC = {"nativeSidecar": False}


def merge(*layers):
    """Deep-merges dicts like Helm does with several -f files (lists replace)."""
    out = {}
    for layer in layers:
        for key, value in layer.items():
            if isinstance(value, dict) and isinstance(out.get(key), dict):
                out[key] = merge(out[key], value)
            else:
                out[key] = copy.deepcopy(value)
    return out


# ---------------------------------------------------------------------------------------------
# helm and kubernetes-validate
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def tools():
    """Fails (never skips) when a tool is missing: a skipped chart test would pass CI silently."""
    if shutil.which("helm") is None:
        pytest.fail("helm is not on PATH; run scripts/test, which installs it")
    try:
        import kubernetes_validate  # noqa: F401
    except ImportError:
        pytest.fail("the kubernetes-validate Python package is missing; run scripts/test")


def helm(*args, check=True):
    result = subprocess.run(["helm", *map(str, args)], capture_output=True, text=True, timeout=120)
    if check:
        assert result.returncode == 0, f"helm {' '.join(map(str, args))} failed:\n{result.stderr}"
    return result


class StrictLoader(yaml.SafeLoader):
    """A duplicate key (two env vars or labels rendered with one name) is an error, not last-wins."""


def _no_duplicates(loader, node, deep=False):
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep)


StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _no_duplicates)


def load_all(text):
    return [d for d in yaml.load_all(text, Loader=StrictLoader) if d]


@pytest.fixture
def values_file(tmp_path):
    """Writes values to a file (as a user would), so types survive exactly; --set would coerce."""
    count = iter(range(1000))

    def write(values):
        path = tmp_path / f"values-{next(count)}.yaml"
        path.write_text(yaml.safe_dump(values, sort_keys=False))
        return path

    return write


@pytest.fixture(scope="module")
def example_chart(tmp_path_factory):
    """The example chart with its dependency built, in a copy: the repository keeps no charts/."""
    root = tmp_path_factory.mktemp("helm")
    shutil.copytree(REPO / "helm", root / "helm", ignore=shutil.ignore_patterns("charts"))
    chart = root / "helm" / "examples" / "orders-app"
    helm("dependency", "build", chart)
    assert (chart / "charts" / "cdc-cache-0.1.0.tgz").is_file()
    return chart


def template(chart, values_path=None, release="r1", check=True, extra=(), kube_version=KUBE_VERSION):
    args = ["template", release, chart, "--namespace", "shop", "--kube-version", kube_version, *extra]
    if values_path is not None:
        args += ["--values", values_path]
    return helm(*args, check=check)


@pytest.fixture
def render(values_file):
    """Renders a chart with values; returns the parsed documents, each validated."""

    def run(values, chart=CHART, release="r1"):
        out = template(chart, values_file(values), release=release).stdout
        docs = load_all(out)
        validate(docs)
        return docs

    return run


@pytest.fixture
def refuse(values_file):
    """Renders values that must be refused; returns helm's error output."""

    def run(values, chart=CHART, kube_version=KUBE_VERSION):
        result = template(chart, values_file(values), check=False, kube_version=kube_version)
        assert result.returncode != 0, f"accepted:\n{result.stdout[:2000]}"
        return result.stderr

    return run


def validate(docs, kube_version=KUBE_VERSION):
    import kubernetes_validate

    for doc in docs:
        if doc["kind"] in CRD_KINDS:
            check_crd(doc)
        else:
            # strict: unknown fields fail too (a misspelled probe field would otherwise vanish).
            kubernetes_validate.validate(doc, kube_version, strict=True)
        for pod in pod_specs_in(doc):
            check_pod_names(pod)


def expected_warning(annotations, labels):
    """A promtool `exp_alerts` entry: a warning with `labels`, its annotations templated with them."""
    rendered = {}
    for key, text in annotations.items():
        for name, value in labels.items():
            text = text.replace("{{ $labels.%s }}" % name, value)
        rendered[key] = text
    return {"exp_labels": {"severity": "warning", **labels}, "exp_annotations": rendered}


def check_crd(doc):
    """What kubernetes-validate cannot check: the Prometheus Operator objects' shape."""
    assert doc["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(doc) == {"apiVersion", "kind", "metadata", "spec"}
    assert doc["metadata"]["name"]
    if doc["kind"] == "PodMonitor":
        assert set(doc["spec"]) == {"selector", "podMetricsEndpoints"}
        assert doc["spec"]["selector"]["matchLabels"]
        for endpoint in doc["spec"]["podMetricsEndpoints"]:
            assert set(endpoint) <= {"port", "path", "interval", "scrapeTimeout"}
            assert PORT_NAME.match(endpoint["port"]), endpoint
    else:
        assert set(doc["spec"]) == {"groups"}
        for group in doc["spec"]["groups"]:
            assert set(group) <= {"name", "interval", "rules"}
            for rule in group["rules"]:
                assert set(rule) <= {"alert", "record", "expr", "for", "labels", "annotations"}
                assert ("alert" in rule) != ("record" in rule) and rule["expr"]


def pod_specs_in(doc):
    if doc["kind"] == "Deployment":
        yield doc["spec"]["template"]["spec"]
    elif doc["kind"] == "Pod":
        yield doc["spec"]


def check_pod_names(spec):
    """What the API server would refuse at apply time but the schema does not check."""
    containers = spec.get("initContainers", []) + spec["containers"]
    names = [c["name"] for c in containers]
    assert len(names) == len(set(names)), f"duplicate container names: {names}"
    volumes = [v["name"] for v in spec.get("volumes", [])]
    assert len(volumes) == len(set(volumes)), f"duplicate volume names: {volumes}"
    ports = [p for c in containers for p in c.get("ports", [])]
    port_names = [p["name"] for p in ports if "name" in p]
    assert len(port_names) == len(set(port_names)), f"duplicate port names: {port_names}"
    assert all(PORT_NAME.match(n) for n in port_names), port_names
    numbers = [p["containerPort"] for p in ports]
    assert len(numbers) == len(set(numbers)), f"duplicate container ports: {numbers}"
    for c in containers:
        env = [e["name"] for e in c.get("env", [])]
        assert len(env) == len(set(env)), f"{c['name']}: duplicate env {env}"
        paths = [m["mountPath"] for m in c.get("volumeMounts", [])]
        assert len(paths) == len(set(paths)), f"{c['name']}: duplicate mountPath {paths}"
        for mount in c.get("volumeMounts", []):
            assert mount["name"] in volumes, f"{c['name']} mounts unknown volume {mount['name']}"


# ---------------------------------------------------------------------------------------------
# Accessors
# ---------------------------------------------------------------------------------------------


def kinds(docs, kind):
    return [d for d in docs if d["kind"] == kind]


def one(docs, kind):
    found = kinds(docs, kind)
    assert len(found) == 1, f"expected one {kind}, got {[d['metadata']['name'] for d in found]}"
    return found[0]


def pod_template(docs):
    return one(docs, "Deployment")["spec"]["template"]


def pod_spec(docs):
    return pod_template(docs)["spec"]


def sidecar(docs, name="cdc-cache"):
    """The cdc-cache container wherever it is, and whether it is an init container."""
    spec = pod_spec(docs)
    found = [(c, True) for c in spec.get("initContainers", []) if c["name"] == name]
    found += [(c, False) for c in spec["containers"] if c["name"] == name]
    assert len(found) == 1, f"expected one {name} container, got {len(found)}"
    return found[0]


def env_of(container):
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def app_container(docs, name="app"):
    return next(c for c in pod_spec(docs)["containers"] if c["name"] == name)


def volume(docs, name):
    return next(v for v in pod_spec(docs)["volumes"] if v["name"] == name)


# ---------------------------------------------------------------------------------------------
# Lint and chart metadata
# ---------------------------------------------------------------------------------------------


def test_chart_lints_strictly(values_file):
    for values in (
        BASE,
        merge(BASE, SASL, MONITORING),
        merge(BASE, TLS, CLASSIC, UNIX),
        merge(BASE, {"networkPolicy": {"enabled": True}, "standalone": {"service": {"enabled": True}}}),
        merge(BASE, SASL, MONITORING, {"snapshots": {"remote": {"url": "s3://orders-snapshots/prod"}},
                                       "publisher": {"enabled": True}}),
    ):
        result = helm("lint", "--strict", CHART, "--values", values_file(values))
        assert "0 chart(s) failed" in result.stdout, result.stdout


def test_example_chart_lints_strictly(example_chart):
    result = helm("lint", "--strict", example_chart)
    assert "0 chart(s) failed" in result.stdout, result.stdout


def test_defaults_alone_are_refused_naming_what_is_missing():
    """No broker or topic has a sensible default: installing without them must say so."""
    result = template(CHART, check=False)
    assert result.returncode != 0
    assert "/kafka/brokers" in result.stderr and "/topics" in result.stderr, result.stderr


def test_image_is_required(refuse):
    """No public image exists, so a default repository could never be pulled."""
    stderr = refuse(merge(BASE, {"image": {"repository": ""}}))
    assert "image.repository" in stderr and "Dockerfile" in stderr, stderr


def test_image_tag_follows_app_version():
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert (chart["name"], chart["version"], chart["apiVersion"], chart["type"]) == (
        "cdc-cache", "0.1.0", "v2", "application")
    assert values["image"]["tag"] == chart["appVersion"]
    assert values["image"]["repository"] == ""


# ---------------------------------------------------------------------------------------------
# Every scenario renders valid Kubernetes objects with the invariants that always hold
# ---------------------------------------------------------------------------------------------

SCENARIOS = {
    "native-one-topic": merge(BASE, {"topics": [{"topic": "customers"}]}),
    "native-several-topics": BASE,
    "classic": merge(BASE, CLASSIC),
    "classic-no-hold": merge(BASE, CLASSIC, {"holdApplicationUntilReady": False}),
    "native-sasl-secret": merge(BASE, SASL),
    "classic-sasl-secret": merge(BASE, SASL, CLASSIC),
    "native-tls-files": merge(BASE, TLS),
    "classic-tls-monitoring": merge(BASE, TLS, MONITORING, CLASSIC),
    "native-monitoring": merge(BASE, MONITORING),
    "monitoring-cluster-scope": merge(BASE, MONITORING, {
        "monitoring": {"prometheusRule": {"scope": "cluster"}, "dashboard": {"scope": "cluster"}}}),
    "tcp-loopback": merge(BASE, TCP),
    "classic-tcp-loopback": merge(BASE, TCP, CLASSIC),
    "network-policy": merge(BASE, {"networkPolicy": {"enabled": True}}),
    "istio": merge(BASE, {"mesh": {"excludePorts": "istio"}}),
    "linkerd": merge(BASE, {"mesh": {"excludePorts": "linkerd"}}),
    "ipv4-admin": merge(BASE, {"admin": {"bindAddress": "0.0.0.0"}}),
    "instance-name": merge(BASE, {"instanceName": "prices-cache"}),
    "digest-pull-secrets": merge(BASE, {
        "image": {"digest": "sha256:" + "a" * 64},
        "imagePullSecrets": [{"name": "registry"}],
        "extraEnv": [{"name": "RUST_BACKTRACE", "value": "1"}],
        "logFilter": "info,cdc_cache=debug",
    }),
}


@pytest.mark.parametrize("name", SCENARIOS)
def test_scenario_is_valid_and_hardened(render, name):
    values = SCENARIOS[name]
    instance = values.get("instanceName", "cdc-cache")
    docs = render(values)
    container, _ = sidecar(docs, instance)
    spec = pod_spec(docs)

    # Secure by default, pod and container.
    pod_sc = spec["securityContext"]
    assert pod_sc["runAsNonRoot"] is True and pod_sc["runAsUser"] == 65532
    assert pod_sc["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = container["securityContext"]
    assert sc["runAsNonRoot"] is True and sc["runAsUser"] == 65532
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}

    # The admin port is the only port the sidecar opens to the pod network, named so that no app
    # port is mistaken for it, and bound where kubelet reaches it.
    [port] = container["ports"]
    assert port["containerPort"] == ADMIN_PORT and port["protocol"] == "TCP"
    assert PORT_NAME.match(port["name"]) and port["name"].endswith("-admin")
    env = env_of(container)
    assert env["CDC_CACHE_ADMIN_LISTEN"] in (f"[::]:{ADMIN_PORT}", f"0.0.0.0:{ADMIN_PORT}")
    assert "CDC_CACHE_METRICS_LISTEN" not in env  # the deprecated name
    assert env["CDC_CACHE_GRPC_LISTEN"].startswith(("127.0.0.1:", "unix:/var/run/"))
    assert "CDC_CACHE_ALLOW_REMOTE" not in env
    assert env["POD_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert all(p["containerPort"] != 50051 for c in spec["containers"] for p in c.get("ports", []))

    # Liveness never depends on readiness: /healthz answers during bootstrap.
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": ADMIN_PORT}
    assert container["readinessProbe"]["grpc"] == {"port": ADMIN_PORT, "service": ""}

    assert spec["automountServiceAccountToken"] is False
    assert spec["enableServiceLinks"] is False
    assert one(docs, "ServiceAccount")["automountServiceAccountToken"] is False
    assert spec["terminationGracePeriodSeconds"] >= SHUTDOWN_DELAY + 10 + 12 + SNAPSHOT_ALLOWANCE

    # kubectl logs/exec default to the app, not to the sidecar.
    annotations = pod_template(docs)["metadata"]["annotations"]
    assert annotations["kubectl.kubernetes.io/default-container"] == "app"

    # Rollouts wait for the bootstrap.
    deployment = one(docs, "Deployment")["spec"]
    assert deployment["progressDeadlineSeconds"] == BUDGET + 600
    assert deployment["strategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}

    # Every env var carries a literal value or a reference, never both; secrets only by reference.
    for item in container["env"]:
        assert ("value" in item) != ("valueFrom" in item), item
        if re.search("PASSWORD|SECRET", item["name"]):
            assert "secretKeyRef" in item["valueFrom"], item


# ---------------------------------------------------------------------------------------------
# Placement, probes and the bootstrap budget
# ---------------------------------------------------------------------------------------------


def test_native_sidecar_is_a_restartable_init_container_gating_the_app(render):
    docs = render(BASE)
    container, is_init = sidecar(docs)
    assert is_init and container["restartPolicy"] == "Always"
    assert [c["name"] for c in pod_spec(docs)["containers"]] == ["app"]
    startup = container["startupProbe"]
    assert startup["grpc"] == {"port": ADMIN_PORT, "service": ""}
    # A long bootstrap is allowed before kubelet gives up: 30 minutes by default.
    assert startup["periodSeconds"] * startup["failureThreshold"] == BUDGET
    # No hook, no delay: kubelet itself orders start and stop.
    assert "lifecycle" not in container
    assert "CDC_CACHE_SHUTDOWN_DELAY" not in env_of(container)


def test_classic_sidecar_comes_first_and_holds_the_app_until_ready(render):
    docs = render(merge(BASE, CLASSIC))
    container, is_init = sidecar(docs)
    assert not is_init
    assert "restartPolicy" not in container and "startupProbe" not in container
    assert "initContainers" not in pod_spec(docs)
    # kubelet starts containers in order and the next only once a postStart hook has returned.
    assert [c["name"] for c in pod_spec(docs)["containers"]] == ["cdc-cache", "app"]
    assert container["lifecycle"] == {"postStart": {"exec": {
        "command": ["/usr/local/bin/cdc-cache", "wait", "--timeout", f"{BUDGET}s"]}}}
    assert container["readinessProbe"]["grpc"] == {"port": ADMIN_PORT, "service": ""}
    # Liveness runs during bootstrap here: a hung process gets a minute before a restart.
    liveness = container["livenessProbe"]
    assert liveness["initialDelaySeconds"] >= 10
    assert liveness["periodSeconds"] * liveness["failureThreshold"] >= 60


def test_classic_sidecar_keeps_answering_while_the_app_drains(render):
    """The default delay outlasts a common app stop: a 10 s preStop sleep (endpoints update) + 5 s drain."""
    docs = render(merge(BASE, CLASSIC))
    container, _ = sidecar(docs)
    assert env_of(container)["CDC_CACHE_SHUTDOWN_DELAY"] == f"{SHUTDOWN_DELAY}s"
    assert SHUTDOWN_DELAY >= 10 + 5
    # The default grace period covers the delay, the drain, the ~12 s of consumers and admin port
    # and the final snapshot.
    assert pod_spec(docs)["terminationGracePeriodSeconds"] == 60 >= SHUTDOWN_DELAY + 10 + 12 + SNAPSHOT_ALLOWANCE
    # A longer app stop: the delay follows it, and the grace period must too (exactly enough here).
    docs = render(merge(BASE, CLASSIC, {"shutdownDelay": "30s", "terminationGracePeriodSeconds": 62}))
    assert env_of(sidecar(docs)[0])["CDC_CACHE_SHUTDOWN_DELAY"] == "30s"


def test_classic_sidecar_without_hold_starts_with_the_app(render):
    docs = render(merge(BASE, CLASSIC, {"holdApplicationUntilReady": False}))
    assert "lifecycle" not in sidecar(docs)[0]


@pytest.mark.parametrize("threshold, period, window", [
    (180, 10, "30m"), (720, 10, "120m"), (60, 30, "30m"), (45, 2, "90s")])
def test_deadlines_follow_the_bootstrap_budget(render, threshold, period, window):
    budget = threshold * period
    values = merge(BASE, MONITORING, CLASSIC,
                   {"probes": {"startup": {"failureThreshold": threshold, "periodSeconds": period}}})
    docs = render(values)
    assert one(docs, "Deployment")["spec"]["progressDeadlineSeconds"] == budget + 600
    hook = sidecar(docs)[0]["lifecycle"]["postStart"]["exec"]["command"]
    assert hook[-2:] == ["--timeout", f"{budget}s"]
    rules = {r["alert"]: r for g in one(docs, "PrometheusRule")["spec"]["groups"] for r in g["rules"]}
    # The alert looks back over the budget (its range and offset), then waits a short `for`.
    not_ready = rules["CdcCacheNotReady"]
    assert not_ready["for"] == "5m"
    assert f"[{window}]" in not_ready["expr"] and f"offset {window}" in not_ready["expr"], not_ready["expr"]
    assert "30m" not in not_ready["expr"] or window == "30m", not_ready["expr"]
    docs = render(merge(BASE, {"probes": {"startup": {"failureThreshold": threshold, "periodSeconds": period}}}))
    startup = sidecar(docs)[0]["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] == budget


def test_progress_deadline_can_be_set(render):
    docs = render(merge(BASE, {"standalone": {"progressDeadlineSeconds": 9000}}))
    assert one(docs, "Deployment")["spec"]["progressDeadlineSeconds"] == 9000


def test_a_grace_period_shorter_than_the_shutdown_is_refused(refuse):
    stderr = refuse(merge(BASE, CLASSIC, {"terminationGracePeriodSeconds": 20}))
    assert "terminationGracePeriodSeconds 20" in stderr and "shutdownDelay 15s" in stderr, stderr
    # 15 s + 10 s + 12 s + 10 s (the final snapshot) = 47 s: one second less is refused.
    stderr = refuse(merge(BASE, CLASSIC, {"terminationGracePeriodSeconds": 46}))
    assert "terminationGracePeriodSeconds 46" in stderr and "47.0 s" in stderr, stderr
    assert "snapshots.shutdownAllowance 10s (the final snapshot)" in stderr, stderr
    stderr = refuse(merge(BASE, CLASSIC, {"shutdownDelay": "30s", "terminationGracePeriodSeconds": 61}))
    assert "shutdownDelay 30s" in stderr, stderr
    stderr = refuse(merge(BASE, {"shutdownGrace": "30s", "terminationGracePeriodSeconds": 30}))
    assert "terminationGracePeriodSeconds 30" in stderr and "shutdownGrace 30s" in stderr, stderr


def test_chart_sets_no_kube_version_so_classic_mode_installs_anywhere():
    """A Chart.yaml kubeVersion would refuse classic mode on 1.28 too; the templates refuse native only."""
    assert "kubeVersion" not in yaml.safe_load((CHART / "Chart.yaml").read_text())


@pytest.mark.parametrize("kube_version", ["1.28.0", "1.27.3", "1.28.5-eks-5e0fdde"])
def test_old_kubernetes_is_refused_for_native_sidecars(refuse, kube_version):
    """Before 1.29 the API server drops restartPolicy and the sidecar would block the pod forever."""
    stderr = refuse(BASE, kube_version=kube_version)
    assert f"nativeSidecar: Kubernetes v{kube_version} has no native sidecars (1.29 or later)" in stderr, stderr
    assert "set nativeSidecar: false" in stderr, stderr


@pytest.mark.parametrize("kube_version", ["1.29.0", "1.29.0-eks-5e0fdde", "1.33.0"])
def test_native_sidecars_render_from_kubernetes_1_29(values_file, kube_version):
    docs = load_all(template(CHART, values_file(BASE), kube_version=kube_version).stdout)
    assert sidecar(docs)[0]["restartPolicy"] == "Always"


def test_classic_mode_renders_on_kubernetes_1_28(values_file):
    for values in (merge(BASE, CLASSIC), merge(BASE, CLASSIC, UNIX, TLS, MONITORING, {"networkPolicy": {"enabled": True}})):
        docs = load_all(template(CHART, values_file(values), kube_version="1.28.0").stdout)
        validate(docs, kube_version="1.28.0")
        container, is_init = sidecar(docs)
        assert not is_init and "restartPolicy" not in container


def test_parent_chart_classic_mode_renders_on_kubernetes_1_28(example_chart, values_file):
    values = values_file({"cdc-cache": {"nativeSidecar": False}})
    docs = load_all(template(example_chart, values, kube_version="1.28.0").stdout)
    validate(docs, kube_version="1.28.0")
    assert [c["name"] for c in pod_spec(docs)["containers"]][0] == "cdc-cache"


# ---------------------------------------------------------------------------------------------
# Configuration through env
# ---------------------------------------------------------------------------------------------


def test_env_carries_the_values(render):
    docs = render(merge(BASE, {"format": "debezium", "shutdownGrace": "20s", "onDecodeError": "fail",
                               "clientId": "orders-prod", "memoryLimitRatio": 0.85}))
    env = env_of(sidecar(docs)[0])
    assert env == {
        "POD_NAME": {"fieldRef": {"fieldPath": "metadata.name"}},
        "CDC_CACHE_BROKERS": "kafka-1:9092,kafka-2:9092",
        "CDC_CACHE_TOPICS": "dbz.public.orders=orders:debezium,customers",
        "CDC_CACHE_FORMAT": "debezium",
        "CDC_CACHE_GRPC_LISTEN": SOCKET_ADDR,
        "CDC_CACHE_GRPC_SOCKET_MODE": "0660",
        "CDC_CACHE_ADMIN_LISTEN": "[::]:9464",
        "CDC_CACHE_CLIENT_ID": "orders-prod",
        "CDC_CACHE_MAX_MULTIGET_KEYS": "10000",
        "CDC_CACHE_GRPC_MAX_MESSAGE_BYTES": "67108864",
        "CDC_CACHE_MAX_WATCHERS": "256",
        "CDC_CACHE_WATCH_HISTORY": "65536",
        "CDC_CACHE_WATCH_HISTORY_BYTES": "64Mi",
        "CDC_CACHE_SHUTDOWN_GRACE": "20s",
        "CDC_CACHE_PARTITION_DISCOVERY_INTERVAL": "30s",
        "CDC_CACHE_ON_DECODE_ERROR": "fail",
        "CDC_CACHE_MEMORY_LIMIT_RATIO": "0.85",
        "CDC_CACHE_LOG_FORMAT": "json",
        "CDC_CACHE_SNAPSHOT_DIR": "/var/lib/cdc-cache",
        "CDC_CACHE_SNAPSHOT_INTERVAL": "10m",
        "CDC_CACHE_SNAPSHOT_KEEP": "2",
        "CDC_CACHE_SNAPSHOT_MAX_AGE": "12h",
        "CDC_CACHE_KAFKA_QUEUED_MAX_MESSAGES_KBYTES": "16384",
    }
    assert sidecar(docs)[0]["args"] == ["serve"]
    assert env_of(app_container(docs))["CDC_CACHE_ADDR"] == SOCKET_ADDR


def test_client_id_defaults_to_the_binary_which_uses_the_pod_name(render):
    env = env_of(sidecar(render(BASE))[0])
    assert "CDC_CACHE_CLIENT_ID" not in env
    assert env["POD_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}


@pytest.mark.parametrize("topics, expected", [
    ([{"topic": "customers"}], "customers"),
    ([{"topic": "customers", "table": "clients"}], "customers=clients"),
    ([{"topic": "customers", "format": "raw"}], "customers:raw"),
    ([{"topic": "a", "format": "debezium"}, {"topic": "b", "table": "bee"}, {"topic": "c"}], "a:debezium,b=bee,c"),
])
def test_topics_render_as_topic_table_format(render, topics, expected):
    docs = render(merge(BASE, {"topics": topics}))
    assert env_of(sidecar(docs)[0])["CDC_CACHE_TOPICS"] == expected


def test_topic_columns_render_as_projections_by_table(render):
    topics = [
        {"topic": "dbz.public.orders", "table": "orders", "format": "debezium", "columns": ["status", "total"]},
        {"topic": "customers", "format": "debezium", "columns": ["email"]},
        {"topic": "prices"},
    ]
    env = env_of(sidecar(render(merge(BASE, {"topics": topics})))[0])
    assert env["CDC_CACHE_PROJECT"] == "orders=status,total;customers=email"
    assert "CDC_CACHE_PROJECT" not in env_of(sidecar(render(BASE))[0])


@pytest.mark.parametrize("columns", [[], ["a,b"], ["a", "a"], ["x=y"]])
def test_bad_topic_columns_are_refused_at_install(refuse, columns):
    error = refuse(merge(BASE, {"topics": [{"topic": "t", "format": "debezium", "columns": columns}]}))
    assert "columns" in error, error


def test_avro_topics_render_the_schema_registry_with_secret_credentials(render):
    values = merge(
        BASE,
        {
            "topics": [{"topic": "dbz.public.customers", "table": "customers", "format": "avro", "columns": ["email"]}],
            "schemaRegistry": {
                "url": "https://registry:8081",
                "credentialsSecret": {"name": "registry-creds", "userKey": "user", "passwordKey": "password"},
                "caFile": "/etc/registry/ca.pem",
            },
        },
    )
    container = sidecar(render(values))[0]
    env = env_of(container)
    assert env["CDC_CACHE_TOPICS"] == "dbz.public.customers=customers:avro"
    assert env["CDC_CACHE_SCHEMA_REGISTRY_URL"] == "https://registry:8081"
    assert env["CDC_CACHE_SCHEMA_REGISTRY_CA_FILE"] == "/etc/registry/ca.pem"
    secrets = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"] if "valueFrom" in e and "secretKeyRef" in e["valueFrom"]}
    assert secrets["CDC_CACHE_SCHEMA_REGISTRY_USER"] == {"name": "registry-creds", "key": "user"}
    assert secrets["CDC_CACHE_SCHEMA_REGISTRY_PASSWORD"] == {"name": "registry-creds", "key": "password"}
    assert "CDC_CACHE_SCHEMA_REGISTRY_TOKEN" not in secrets
    # Nothing of the registry without an avro topic and a URL.
    assert not any(k.startswith("CDC_CACHE_SCHEMA_REGISTRY") for k in env_of(sidecar(render(BASE))[0]))


@pytest.mark.parametrize(
    "registry, message",
    [
        ({}, "schemaRegistry.url"),
        ({"url": "https://user:pw@registry"}, "schemaRegistry"),
        ({"url": "https://r", "credentialsSecret": {"userKey": "u", "passwordKey": "p"}}, "name is empty"),
        ({"url": "https://r", "credentialsSecret": {"name": "s", "userKey": "u"}}, "passwordKey"),
        ({"url": "https://r", "credentialsSecret": {"name": "s", "userKey": "u", "passwordKey": "p", "tokenKey": "t"}}, "not both"),
    ],
)
def test_bad_schema_registry_values_are_refused_at_install(refuse, registry, message):
    error = refuse(merge(BASE, {"topics": [{"topic": "t", "format": "avro"}], "schemaRegistry": registry}))
    assert message in error, error


def test_watch_values_render_as_env(render):
    docs = render(merge(BASE, {"watch": {"maxWatchers": 0, "history": 5000, "historyBytes": "8Mi"}}))
    env = env_of(sidecar(docs)[0])
    assert (env["CDC_CACHE_MAX_WATCHERS"], env["CDC_CACHE_WATCH_HISTORY"], env["CDC_CACHE_WATCH_HISTORY_BYTES"]) == (
        "0", "5000", "8Mi")


def test_kafka_options_become_one_env_var_each_and_secrets_come_from_secrets(render):
    docs = render(merge(BASE, SASL, {"kafka": {"prefetchKbytes": 8192}}))
    env = env_of(sidecar(docs)[0])
    kafka = {k: v for k, v in env.items() if k.startswith("CDC_CACHE_KAFKA_")}
    assert kafka == {
        "CDC_CACHE_KAFKA_QUEUED_MAX_MESSAGES_KBYTES": "8192",
        "CDC_CACHE_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "CDC_CACHE_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "CDC_CACHE_KAFKA_SASL_USERNAME": "orders-reader",
        # Numbers and booleans are rendered as the strings librdkafka parses.
        "CDC_CACHE_KAFKA_FETCH_WAIT_MAX_MS": "100",
        "CDC_CACHE_KAFKA_SOCKET_KEEPALIVE_ENABLE": "true",
        "CDC_CACHE_KAFKA_SASL_PASSWORD": {"secretKeyRef": {"name": "kafka-creds", "key": "password"}},
    }


@pytest.mark.parametrize("option", [
    "sasl.password", "ssl.key.password", "ssl.keystore.password", "sasl.oauthbearer.client.secret",
    "ssl.key.pem", "sasl.oauthbearer.config",
])
def test_a_secret_inlined_in_options_is_refused_without_echoing_it(values_file, option):
    values = merge(BASE, {"kafka": {"options": {"security.protocol": "SASL_SSL", option: SENTINEL}}})
    result = template(CHART, values_file(values), check=False)
    assert result.returncode != 0
    assert f"kafka.options.{option}" in result.stderr and "secretOptions" in result.stderr, result.stderr
    assert SENTINEL not in result.stderr + result.stdout


def test_secret_options_render_only_a_reference(render):
    docs = render(merge(BASE, SASL))
    ref = next(e for e in sidecar(docs)[0]["env"] if e["name"] == "CDC_CACHE_KAFKA_SASL_PASSWORD")
    assert ref == {"name": "CDC_CACHE_KAFKA_SASL_PASSWORD",
                   "valueFrom": {"secretKeyRef": {"name": "kafka-creds", "key": "password"}}}
    # The chart creates no Secret of its own and copies nothing out of one.
    assert kinds(docs, "Secret") == []


# ---------------------------------------------------------------------------------------------
# TLS, extra volumes and env
# ---------------------------------------------------------------------------------------------


def test_tls_ca_and_client_certificate_come_from_separate_secrets(render):
    """Strimzi: the cluster CA Secret and the KafkaUser Secret, one projected volume."""
    docs = render(merge(BASE, TLS))
    container, _ = sidecar(docs)
    env = env_of(container)
    assert env["CDC_CACHE_KAFKA_SSL_CA_LOCATION"] == "/etc/cdc-cache/tls/ca.crt"
    assert env["CDC_CACHE_KAFKA_SSL_CERTIFICATE_LOCATION"] == "/etc/cdc-cache/tls/tls.crt"
    assert env["CDC_CACHE_KAFKA_SSL_KEY_LOCATION"] == "/etc/cdc-cache/tls/tls.key"
    assert env["CDC_CACHE_KAFKA_SSL_KEY_PASSWORD"] == {
        "secretKeyRef": {"name": "orders-reader", "key": "user.password"}}
    assert container["volumeMounts"] == [
        {"name": "cdc-cache-tls", "mountPath": "/etc/cdc-cache/tls", "readOnly": True},
        SOCKET_MOUNT,
        {"name": "cdc-cache-snapshots", "mountPath": "/var/lib/cdc-cache"}]
    projected = volume(docs, "cdc-cache-tls")["projected"]
    assert projected["defaultMode"] == 0o444
    assert projected["sources"] == [
        {"secret": {"name": "my-cluster-cluster-ca-cert", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
        {"secret": {"name": "orders-reader", "items": [
            {"key": "user.crt", "path": "tls.crt"}, {"key": "user.key", "path": "tls.key"}]}},
    ]
    # Only the sidecar sees the client key.
    assert all(m["name"] != "cdc-cache-tls" for m in app_container(docs).get("volumeMounts", []))


def test_tls_ca_from_a_config_map_alone(render):
    """trust-manager publishes the CA bundle as a ConfigMap; no client certificate (SASL_SSL)."""
    docs = render(merge(BASE, SASL, {"kafka": {"tls": {
        "enabled": True, "ca": {"configMapName": "kafka-trust", "key": "trust-bundle.pem"}}}}))
    env = env_of(sidecar(docs)[0])
    assert env["CDC_CACHE_KAFKA_SSL_CA_LOCATION"] == "/etc/cdc-cache/tls/ca.crt"
    assert "CDC_CACHE_KAFKA_SSL_CERTIFICATE_LOCATION" not in env
    assert "CDC_CACHE_KAFKA_SSL_KEY_LOCATION" not in env
    assert volume(docs, "cdc-cache-tls")["projected"]["sources"] == [
        {"configMap": {"name": "kafka-trust", "items": [{"key": "trust-bundle.pem", "path": "ca.crt"}]}}]


def test_tls_client_certificate_alone_trusts_the_system_cas(render):
    docs = render(merge(BASE, {"kafka": {"options": {"security.protocol": "SSL"}, "tls": {
        "enabled": True, "clientCert": {"secretName": "orders-tls"}}}}))
    env = env_of(sidecar(docs)[0])
    assert "CDC_CACHE_KAFKA_SSL_CA_LOCATION" not in env
    assert env["CDC_CACHE_KAFKA_SSL_KEY_LOCATION"] == "/etc/cdc-cache/tls/tls.key"
    assert volume(docs, "cdc-cache-tls")["projected"]["sources"] == [
        {"secret": {"name": "orders-tls", "items": [
            {"key": "tls.crt", "path": "tls.crt"}, {"key": "tls.key", "path": "tls.key"}]}}]


def test_extra_volumes_mounts_and_env_from_reach_the_sidecar(render):
    """A Kerberos keytab and an OAuth token file, and librdkafka options from a Secret wholesale."""
    docs = render(merge(BASE, {
        "extraVolumes": [
            {"name": "keytab", "secret": {"secretName": "orders-keytab"}},
            {"name": "oauth-token", "projected": {"sources": [{"serviceAccountToken": {
                "path": "token", "audience": "kafka", "expirationSeconds": 3600}}]}},
        ],
        "extraVolumeMounts": [
            {"name": "keytab", "mountPath": "/etc/krb5", "readOnly": True},
            {"name": "oauth-token", "mountPath": "/var/run/secrets/kafka", "readOnly": True},
        ],
        "extraEnvFrom": [{"secretRef": {"name": "orders-kafka-env"}}],
    }))
    container, _ = sidecar(docs)
    assert [m["name"] for m in container["volumeMounts"]] == [
        "cdc-cache-socket", "cdc-cache-snapshots", "keytab", "oauth-token"]
    assert container["envFrom"] == [{"secretRef": {"name": "orders-kafka-env"}}]
    names = [v["name"] for v in pod_spec(docs)["volumes"]]
    assert "keytab" in names and "oauth-token" in names
    # The app does not see the sidecar's credentials.
    assert all(m["name"] not in ("keytab", "oauth-token") for m in app_container(docs).get("volumeMounts", []))


# ---------------------------------------------------------------------------------------------
# The unix socket
# ---------------------------------------------------------------------------------------------


def test_unix_socket_lives_in_a_directory_of_its_own_shared_through_the_fs_group(render):
    docs = render(merge(BASE, UNIX, {"app": {"securityContext": {"runAsUser": 10001, "runAsGroup": 10001}}}))
    container, _ = sidecar(docs)
    env = env_of(container)
    assert env["CDC_CACHE_GRPC_LISTEN"] == "unix:/var/run/cdc-cache/grpc.sock"
    assert env["CDC_CACHE_GRPC_SOCKET_MODE"] == "0660"
    mount = {"name": "cdc-cache-socket", "mountPath": "/var/run/cdc-cache"}
    assert mount in container["volumeMounts"]
    app = app_container(docs)
    assert mount in app["volumeMounts"]
    # The app keeps its own /tmp: the socket never hides it.
    assert {"name": "app-tmp", "mountPath": "/tmp"} in app["volumeMounts"]
    assert all(m["mountPath"] != "/tmp" for m in container.get("volumeMounts", []))
    assert volume(docs, "cdc-cache-socket") == {
        "name": "cdc-cache-socket", "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}}
    assert env_of(app)["CDC_CACHE_ADDR"] == "unix:/var/run/cdc-cache/grpc.sock"
    # Another UID than the sidecar's, one group shared by every container of the pod.
    assert app["securityContext"]["runAsUser"] == 10001 != container["securityContext"]["runAsUser"]
    assert pod_spec(docs)["securityContext"]["fsGroup"] == 65532


def test_unix_socket_keeps_a_pod_fs_group_and_sets_one_where_missing(render):
    docs = render(merge(BASE, UNIX, {"podSecurityContext": {"fsGroup": 3000}}))
    assert pod_spec(docs)["securityContext"]["fsGroup"] == 3000
    docs = render(merge(BASE, UNIX, {"podSecurityContext": {"fsGroup": None}}))
    assert pod_spec(docs)["securityContext"]["fsGroup"] == 65532
    # OpenShift assigns the fsGroup itself.
    docs = render(merge(BASE, UNIX, {"podSecurityContext": {"fsGroup": None}, "grpcSocket": {"fsGroup": None}}))
    assert "fsGroup" not in pod_spec(docs)["securityContext"]
    docs = render(merge(BASE, UNIX, {"grpcSocket": {"mode": "0600"}}))
    assert env_of(sidecar(docs)[0])["CDC_CACHE_GRPC_SOCKET_MODE"] == "0600"


def test_no_socket_settings_on_tcp(render):
    docs = render(merge(BASE, TCP, {"podSecurityContext": {"fsGroup": None}}))
    container, _ = sidecar(docs)
    env = env_of(container)
    assert env["CDC_CACHE_GRPC_LISTEN"] == "127.0.0.1:50051"
    assert "CDC_CACHE_GRPC_SOCKET_MODE" not in env
    app = app_container(docs)
    assert env_of(app)["CDC_CACHE_ADDR"] == "127.0.0.1:50051"
    assert [v["name"] for v in pod_spec(docs)["volumes"]] == ["app-tmp", "cdc-cache-snapshots"]
    assert all(m["name"] != "cdc-cache-socket" for c in (container, app) for m in c.get("volumeMounts", []))
    # No socket to share: the chart adds no fsGroup of its own.
    assert "fsGroup" not in pod_spec(docs)["securityContext"]


def test_unix_socket_is_the_default(render):
    """Faster than TCP loopback (1.2-1.5x for Get): the default, with everything the app needs to dial it."""
    docs = render(BASE)  # validated with kubernetes-validate, as every render
    container, is_init = sidecar(docs)
    assert is_init
    env = env_of(container)
    assert env["CDC_CACHE_GRPC_LISTEN"] == SOCKET_ADDR
    assert env["CDC_CACHE_GRPC_SOCKET_MODE"] == "0660"
    assert SOCKET_MOUNT in container["volumeMounts"]
    app = app_container(docs)
    # A gRPC target the app can dial as it is (gRPC's unix:/absolute/path naming).
    assert env_of(app)["CDC_CACHE_ADDR"] == SOCKET_ADDR
    assert SOCKET_MOUNT in app["volumeMounts"]
    assert {"name": "app-tmp", "mountPath": "/tmp"} in app["volumeMounts"]
    assert volume(docs, "cdc-cache-socket") == {
        "name": "cdc-cache-socket", "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}}
    spec = pod_spec(docs)
    assert [v["name"] for v in spec["volumes"]] == ["app-tmp", "cdc-cache-socket", "cdc-cache-snapshots"]
    assert spec["securityContext"]["fsGroup"] == 65532
    # Nothing listens for gRPC on TCP, loopback or otherwise.
    assert all(p["containerPort"] != 50051 for c in spec["containers"] + spec.get("initContainers", [])
               for p in c.get("ports", []))
    # The default comes from values.yaml itself, not from the tests' values.
    assert "grpcListen" not in BASE
    assert yaml.safe_load((CHART / "values.yaml").read_text())["grpcListen"] == "unix"


def test_no_volumes_when_none_are_needed(render):
    docs = render(merge(BASE, TCP, NO_SNAPSHOTS, {"app": {"tmpDir": {"enabled": False}}}))
    assert "volumes" not in pod_spec(docs)
    assert "volumeMounts" not in sidecar(docs)[0]
    assert "volumeMounts" not in app_container(docs)


# ---------------------------------------------------------------------------------------------
# Snapshots: an emptyDir for warm starts after a restart of the sidecar in its pod
# ---------------------------------------------------------------------------------------------


def test_snapshots_are_on_by_default_in_a_writable_volume_of_the_sidecar(render):
    docs = render(BASE)
    container, _ = sidecar(docs)
    env = env_of(container)
    assert {k: v for k, v in env.items() if k.startswith("CDC_CACHE_SNAPSHOT_")} == {
        "CDC_CACHE_SNAPSHOT_DIR": "/var/lib/cdc-cache",
        "CDC_CACHE_SNAPSHOT_INTERVAL": "10m",
        "CDC_CACHE_SNAPSHOT_KEEP": "2",
        "CDC_CACHE_SNAPSHOT_MAX_AGE": "12h",
    }
    # Mounted writable (no readOnly) while the root filesystem stays read-only.
    assert container["volumeMounts"] == [SOCKET_MOUNT, {"name": "cdc-cache-snapshots", "mountPath": "/var/lib/cdc-cache"}]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    # On node disk with a size limit; the app never sees it.
    assert volume(docs, "cdc-cache-snapshots") == {"name": "cdc-cache-snapshots", "emptyDir": {"sizeLimit": "2Gi"}}
    assert all(m["name"] != "cdc-cache-snapshots" for m in app_container(docs).get("volumeMounts", []))
    # The grace period leaves room for the final snapshot.
    assert pod_spec(docs)["terminationGracePeriodSeconds"] >= 10 + 12 + SNAPSHOT_ALLOWANCE


def test_snapshot_values_reach_env_and_volume(render):
    docs = render(merge(BASE, {"snapshots": {
        "interval": "5m", "keep": 3, "maxAge": "6h", "sizeLimit": "5Gi", "medium": "Memory"}}))
    env = env_of(sidecar(docs)[0])
    assert (env["CDC_CACHE_SNAPSHOT_INTERVAL"], env["CDC_CACHE_SNAPSHOT_KEEP"], env["CDC_CACHE_SNAPSHOT_MAX_AGE"]) == (
        "5m", "3", "6h")
    assert volume(docs, "cdc-cache-snapshots")["emptyDir"] == {"medium": "Memory", "sizeLimit": "5Gi"}
    # No size limit asked: a plain emptyDir.
    docs = render(merge(BASE, {"snapshots": {"sizeLimit": ""}}))
    assert volume(docs, "cdc-cache-snapshots")["emptyDir"] == {}
    # Only at shutdown.
    docs = render(merge(BASE, {"snapshots": {"interval": "0s"}}))
    assert env_of(sidecar(docs)[0])["CDC_CACHE_SNAPSHOT_INTERVAL"] == "0s"


@pytest.mark.parametrize("mode", [{}, CLASSIC, UNIX])
def test_snapshots_off_render_no_volume_mount_or_env(render, mode):
    docs = render(merge(BASE, mode, NO_SNAPSHOTS))
    container, _ = sidecar(docs)
    assert not [k for k in env_of(container) if k.startswith("CDC_CACHE_SNAPSHOT")]
    assert all(m["name"] != "cdc-cache-snapshots" for m in container.get("volumeMounts", []))
    assert all(v["name"] != "cdc-cache-snapshots" for v in pod_spec(docs).get("volumes", []))


REMOTE = {"snapshots": {"remote": {
    "url": "s3://orders-snapshots/prod",
    "publish": True,
    "credentialsSecret": "orders-snapshots-s3",
    "env": {"AWS_REGION": "eu-west-1", "AWS_ENDPOINT_URL": "http://minio.storage:9000", "AWS_ALLOW_HTTP": True},
}}}


def test_remote_snapshots_are_off_by_default(render):
    for values in (BASE, merge(BASE, NO_SNAPSHOTS)):
        container, _ = sidecar(render(values))
        env = env_of(container)
        assert "CDC_CACHE_SNAPSHOT_URL" not in env and "CDC_CACHE_SNAPSHOT_PUBLISH" not in env
        assert not [k for k in env if k.startswith(("AWS_", "GOOGLE_", "AZURE_"))]
        assert "envFrom" not in container


@pytest.mark.parametrize("mode", [{}, CLASSIC, UNIX])
def test_remote_snapshot_url_publish_and_env_reach_the_sidecar(render, mode):
    docs = render(merge(BASE, mode, REMOTE))
    container, _ = sidecar(docs)
    env = env_of(container)
    assert env["CDC_CACHE_SNAPSHOT_DIR"] == "/var/lib/cdc-cache"
    assert env["CDC_CACHE_SNAPSHOT_URL"] == "s3://orders-snapshots/prod"
    assert env["CDC_CACHE_SNAPSHOT_PUBLISH"] == "true"
    assert (env["AWS_REGION"], env["AWS_ENDPOINT_URL"], env["AWS_ALLOW_HTTP"]) == (
        "eu-west-1", "http://minio.storage:9000", "true")
    # A reader: no publish, no Secret (the service account's web identity instead).
    docs = render(merge(BASE, {"snapshots": {"remote": {"url": "gs://orders-snapshots"}}}))
    container, _ = sidecar(docs)
    env = env_of(container)
    assert env["CDC_CACHE_SNAPSHOT_URL"] == "gs://orders-snapshots"
    assert "CDC_CACHE_SNAPSHOT_PUBLISH" not in env and "envFrom" not in container


def test_remote_snapshot_credentials_come_from_a_secret_for_the_sidecar_only(render):
    docs = render(merge(BASE, REMOTE, {"extraEnvFrom": [{"secretRef": {"name": "orders-kafka-env"}}]}))
    container, _ = sidecar(docs)
    assert container["envFrom"] == [
        {"secretRef": {"name": "orders-snapshots-s3"}}, {"secretRef": {"name": "orders-kafka-env"}}]
    spec = pod_spec(docs)
    others = [c for c in spec.get("initContainers", []) + spec["containers"] if c["name"] != "cdc-cache"]
    assert others
    for c in others:
        assert "orders-snapshots-s3" not in json.dumps(c), c["name"]
        assert not [e for e in c.get("env", []) if e["name"].startswith("AWS_")], c["name"]


def test_remote_snapshots_without_local_snapshots_are_refused(refuse):
    stderr = refuse(merge(BASE, NO_SNAPSHOTS, {"snapshots": {"remote": {"url": "s3://orders-snapshots/prod"}}}))
    assert "snapshots.remote.url s3://orders-snapshots/prod needs snapshots.enabled: true" in stderr, stderr


@pytest.mark.parametrize("remote, message", [
    ({"publish": True}, "need snapshots.remote.url"),
    ({"credentialsSecret": "orders-snapshots-s3"}, "need snapshots.remote.url"),
    ({"url": "s3://b/p", "env": {"CDC_CACHE_SNAPSHOT_KEEP": "5"}}, "snapshots.remote.env.CDC_CACHE_SNAPSHOT_KEEP"),
    ({"url": "orders-snapshots"}, "/snapshots/remote/url"),
    ({"url": "s3://b/p", "region": "eu-west-1"}, "region"),
    ({"url": "s3://b/p", "env": {"AWS REGION": "eu-west-1"}}, "invalid propertyName 'AWS REGION'"),
])
def test_remote_snapshot_mistakes_are_refused(refuse, remote, message):
    stderr = refuse(merge(BASE, {"snapshots": {"remote": remote}}))
    assert message in stderr, stderr


def test_snapshot_allowance_joins_the_shortest_grace_period(render, refuse):
    # Classic: 15 s + 10 s + 12 s, and 10 s for the final snapshot only while snapshots are on.
    render(merge(BASE, CLASSIC, NO_SNAPSHOTS, {"terminationGracePeriodSeconds": 37}))
    stderr = refuse(merge(BASE, CLASSIC, NO_SNAPSHOTS, {"terminationGracePeriodSeconds": 36}))
    assert "37.0 s" in stderr and "shutdownAllowance" not in stderr, stderr
    render(merge(BASE, CLASSIC, {"terminationGracePeriodSeconds": 47}))
    # Large tables: a few seconds per GB.
    stderr = refuse(merge(BASE, {"snapshots": {"shutdownAllowance": "1m"}, "terminationGracePeriodSeconds": 60}))
    assert "snapshots.shutdownAllowance 1m (the final snapshot) = 82.0 s" in stderr, stderr
    render(merge(BASE, {"snapshots": {"shutdownAllowance": "1m"}, "terminationGracePeriodSeconds": 82}))


def test_snapshot_volume_and_directory_follow_the_instance_name(render):
    docs = render(merge(BASE, {"instanceName": "prices-cache"}))
    container, _ = sidecar(docs, "prices-cache")
    assert env_of(container)["CDC_CACHE_SNAPSHOT_DIR"] == "/var/lib/prices-cache"
    assert {"name": "prices-cache-snapshots", "mountPath": "/var/lib/prices-cache"} in container["volumeMounts"]
    assert volume(docs, "prices-cache-snapshots")["emptyDir"] == {"sizeLimit": "2Gi"}


def test_release_scoped_snapshot_alert_follows_the_snapshot_interval(render, tmp_path):
    """3 intervals (never below the file's 30 minutes), run through promtool at a 20-minute interval."""
    original = next(r for r in rules_file()["groups"][0]["rules"] if r["alert"] == "CdcCacheSnapshotsStale")

    def stale_rule(values):
        docs = render(merge(BASE, MONITORING, values), release="orders")
        groups = one(docs, "PrometheusRule")["spec"]["groups"]
        return groups, next(r for g in groups for r in g["rules"] if r["alert"] == "CdcCacheSnapshotsStale")

    for interval, threshold, window in [("10m", 1800, "30m"), ("1m", 1800, "30m"), ("0s", 1800, "30m"),
                                        ("25m", 4500, "75m"), ("1h", 10800, "180m")]:
        _, rule = stale_rule({"snapshots": {"interval": interval}})
        expected = original["expr"].replace("> 1800\n", f"> {threshold}\n").replace("[30m]", f"[{window}]")
        assert rule["expr"].replace('job="shop/orders-cdc-cache", ', "").replace('{job="shop/orders-cdc-cache"}', "") \
            == expected, (interval, rule["expr"])
        assert rule["for"] == "30m" and rule["annotations"] == original["annotations"]

    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is not on PATH; run scripts/test, which installs it")
    groups, _ = stale_rule({"snapshots": {"interval": "20m"}})
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump({"groups": groups}))
    labels = 'namespace="shop",container="cdc-cache",table="orders"'
    job = "shop/orders-cdc-cache"
    def expected(pod):
        labels = {"namespace": "shop", "pod": pod, "container": "cdc-cache", "table": "orders"}
        return expected_warning(original["annotations"], labels)

    # Written at 20m and 40m, then never again: older than 3 x 20m from 101m, fires at 131m. The
    # same series of another release never fires here.
    stopped = "_x19 1200x19 2400x140"
    tests = {"rule_files": [str(rules)], "evaluation_interval": "1m", "tests": [{
        "interval": "1m",
        "input_series": [
            {"series": f'cdc_cache_snapshot_last_write_timestamp_seconds{{job="{job}",pod="orders-0",{labels}}}',
             "values": stopped},
            {"series": f'cdc_cache_snapshot_last_write_timestamp_seconds{{job="shop/payments-cdc-cache",pod="payments-0",{labels}}}',
             "values": stopped},
            # Failing every 20 minutes: an error within every 60-minute window once the second came.
            {"series": f'cdc_cache_snapshot_writes_total{{job="{job}",pod="orders-1",outcome="error",{labels}}}',
             "values": "_x19 " + " ".join(f"{i}x19" for i in range(1, 8))},
        ],
        "alert_rule_test": [
            {"eval_time": "65m", "alertname": "CdcCacheSnapshotsStale", "exp_alerts": []},
            {"eval_time": "75m", "alertname": "CdcCacheSnapshotsStale", "exp_alerts": [expected("orders-1")]},
            {"eval_time": "125m", "alertname": "CdcCacheSnapshotsStale", "exp_alerts": [expected("orders-1")]},
            {"eval_time": "135m", "alertname": "CdcCacheSnapshotsStale",
             "exp_alerts": [expected("orders-0"), expected("orders-1")]},
        ],
    }]}
    test_file = tmp_path / "test.yaml"
    test_file.write_text(yaml.safe_dump(tests, sort_keys=False))
    result = subprocess.run([promtool, "test", "rules", str(test_file)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_alert_file_passes_its_promtool_unit_tests():
    """files/cdc-cache-alerts.test.yaml: every alert fires where it should and stays quiet elsewhere."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is not on PATH; run scripts/test, which installs it")
    files = CHART / "files"
    check = subprocess.run([promtool, "check", "rules", "cdc-cache-alerts.rules.yaml"], cwd=files,
                           capture_output=True, text=True, timeout=120)
    assert check.returncode == 0, check.stdout + check.stderr
    result = subprocess.run([promtool, "test", "rules", "cdc-cache-alerts.test.yaml"], cwd=files,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    alerts = {r["alert"] for r in rules_file()["groups"][0]["rules"]}
    tested = set(re.findall(r"alertname: (\w+)", (files / "cdc-cache-alerts.test.yaml").read_text()))
    assert alerts <= tested, f"alerts without unit tests: {sorted(alerts - tested)}"


# ---------------------------------------------------------------------------------------------
# The snapshot publisher: a Deployment of the cache container alone, uploading to object storage
# ---------------------------------------------------------------------------------------------

PUBLISHER = {"publisher": {"enabled": True}}
# The app pods' side: they download, never publish (snapshots.remote.publish left at its default).
READER = {"snapshots": {"remote": {
    "url": "s3://orders-snapshots/prod",
    "credentialsSecret": "orders-snapshots-s3",
    "env": {"AWS_REGION": "eu-west-1", "AWS_ENDPOINT_URL": "http://minio.storage:9000"},
}}}
PUBLISHER_COMPONENT = ("app.kubernetes.io/component", "snapshot-publisher")


def is_publisher(doc):
    labels = doc["metadata"].get("labels", {})
    return doc["kind"] == "Deployment" and labels.get(PUBLISHER_COMPONENT[0]) == PUBLISHER_COMPONENT[1]


def publisher_deployment(docs):
    found = [d for d in docs if is_publisher(d)]
    assert len(found) == 1, f"expected one publisher Deployment, got {len(found)}"
    return found[0]


def without_publisher(docs):
    """The documents but the publisher, so the app pod's accessors (one Deployment) apply."""
    return [d for d in docs if not is_publisher(d)]


def publisher_container(docs):
    spec = publisher_deployment(docs)["spec"]["template"]["spec"]
    assert "initContainers" not in spec
    [container] = spec["containers"]
    return container


def matches(selector, labels):
    return selector.items() <= labels.items()


def test_publisher_is_off_by_default(render):
    for values in (BASE, merge(BASE, READER)):
        docs = render(values)
        assert not [d for d in docs if is_publisher(d)]
        assert [d["metadata"]["name"] for d in kinds(docs, "Deployment")] == ["r1-cdc-cache"]
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["publisher"]["enabled"] is False and values["snapshots"]["remote"]["publish"] is False


@pytest.mark.parametrize("mode", [{}, CLASSIC, UNIX, merge(CLASSIC, UNIX)])
def test_sidecar_is_unchanged_with_the_publisher_on(render, mode):
    """Turning the publisher on adds a Deployment and changes nothing in the app's: its sidecars only read."""
    off = render(merge(BASE, SASL, mode, READER))
    on = render(merge(BASE, SASL, mode, READER, PUBLISHER))
    assert without_publisher(on) == off
    container, _ = sidecar(without_publisher(on))
    env = env_of(container)
    assert env["CDC_CACHE_SNAPSHOT_URL"] == "s3://orders-snapshots/prod"
    assert "CDC_CACHE_SNAPSHOT_PUBLISH" not in env
    # Publishing from the app pods as well stays possible, when asked for explicitly.
    docs = render(merge(BASE, mode, READER, PUBLISHER, {"snapshots": {"remote": {"publish": True}}}))
    assert env_of(sidecar(without_publisher(docs))[0])["CDC_CACHE_SNAPSHOT_PUBLISH"] == "true"
    assert env_of(publisher_container(docs))["CDC_CACHE_SNAPSHOT_PUBLISH"] == "true"


@pytest.mark.parametrize("extra", [SASL, TLS], ids=["sasl", "tls"])
def test_publisher_runs_the_sidecars_container_publishing_to_the_url(render, extra):
    # On TCP, so the sidecar's env is the publisher's exactly (in unix mode the publisher alone
    # listens on TCP: see the tests below).
    docs = render(merge(BASE, TCP, extra, READER, PUBLISHER,
                        {"extraEnvFrom": [{"secretRef": {"name": "orders-kafka-env"}}]}))
    deployment = publisher_deployment(docs)
    assert deployment["metadata"]["name"] == "r1-cdc-cache-publisher"
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["progressDeadlineSeconds"] == BUDGET + 600
    assert deployment["spec"]["strategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    container = publisher_container(docs)
    app_side, _ = sidecar(without_publisher(docs))

    # The same Kafka, topics, TLS, SASL, snapshot and storage settings as the sidecar, plus publishing.
    env = env_of(container)
    assert env == {**env_of(app_side), "CDC_CACHE_SNAPSHOT_PUBLISH": "true"}
    assert env["CDC_CACHE_SNAPSHOT_URL"] == "s3://orders-snapshots/prod"
    assert env["CDC_CACHE_TOPICS"] == "dbz.public.orders=orders:debezium,customers"
    assert env["CDC_CACHE_SNAPSHOT_DIR"] == "/var/lib/cdc-cache" and env["CDC_CACHE_SNAPSHOT_INTERVAL"] == "10m"
    assert env["AWS_REGION"] == "eu-west-1"
    # Nobody calls it: gRPC on loopback only; the admin port, named as the PodMonitor expects, is its only port.
    assert env["CDC_CACHE_GRPC_LISTEN"] == "127.0.0.1:50051"
    assert container["ports"] == [{"name": ADMIN_PORT_NAME, "containerPort": ADMIN_PORT, "protocol": "TCP"}]
    # Object storage credentials from the Secret, for this container.
    assert container["envFrom"] == app_side["envFrom"] == [
        {"secretRef": {"name": "orders-snapshots-s3"}}, {"secretRef": {"name": "orders-kafka-env"}}]
    for item in container["env"]:
        if re.search("PASSWORD|SECRET", item["name"]):
            assert "secretKeyRef" in item["valueFrom"], item

    # Probes as the sidecar's, the startup probe (the bootstrap budget) included; no wait hook.
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe] == app_side[probe], probe
    assert "lifecycle" not in container and "restartPolicy" not in container
    for key in ("image", "imagePullPolicy", "args", "securityContext", "resources", "volumeMounts"):
        assert container[key] == app_side[key], key

    # The pod: the same volumes, ServiceAccount and hardening as the app pod.
    spec = deployment["spec"]["template"]["spec"]
    app_spec = pod_spec(without_publisher(docs))
    assert spec["volumes"] == [v for v in app_spec["volumes"] if v["name"].startswith("cdc-cache-")]
    assert {"name": "cdc-cache-snapshots", "emptyDir": {"sizeLimit": "2Gi"}} in spec["volumes"]
    assert spec["serviceAccountName"] == app_spec["serviceAccountName"] == "r1-cdc-cache"
    assert one(docs, "ServiceAccount")["metadata"]["name"] == "r1-cdc-cache"
    assert spec["automountServiceAccountToken"] is False and spec["enableServiceLinks"] is False
    assert spec["securityContext"] == app_spec["securityContext"]
    # No app to wait for: shutdownGrace + 12 s + the final snapshot's allowance.
    assert spec["terminationGracePeriodSeconds"] == 10 + 12 + SNAPSHOT_ALLOWANCE


def test_publisher_by_default_listens_on_loopback_tcp_without_the_socket(render):
    """The default unix mode: the app's sidecar shares the socket; the publisher has no app to share it with."""
    docs = render(merge(BASE, READER, PUBLISHER))
    container = publisher_container(docs)
    env = env_of(container)
    assert env["CDC_CACHE_GRPC_LISTEN"] == "127.0.0.1:50051"
    assert "CDC_CACHE_GRPC_SOCKET_MODE" not in env
    spec = publisher_deployment(docs)["spec"]["template"]["spec"]
    assert [v["name"] for v in spec["volumes"]] == ["cdc-cache-snapshots"]
    assert [m["name"] for m in container["volumeMounts"]] == ["cdc-cache-snapshots"]
    app_side, _ = sidecar(without_publisher(docs))
    assert env_of(app_side)["CDC_CACHE_GRPC_LISTEN"] == SOCKET_ADDR
    assert SOCKET_MOUNT in app_side["volumeMounts"]
    assert env == {k: v for k, v in {**env_of(app_side), "CDC_CACHE_SNAPSHOT_PUBLISH": "true",
                                     "CDC_CACHE_GRPC_LISTEN": "127.0.0.1:50051"}.items()
                   if k != "CDC_CACHE_GRPC_SOCKET_MODE"}


def test_publisher_in_classic_unix_mode_listens_on_loopback_tcp_without_a_delay(render):
    docs = render(merge(BASE, CLASSIC, UNIX, READER, PUBLISHER))
    container = publisher_container(docs)
    env = env_of(container)
    assert env["CDC_CACHE_GRPC_LISTEN"] == "127.0.0.1:50051"
    assert "CDC_CACHE_GRPC_SOCKET_MODE" not in env and "CDC_CACHE_SHUTDOWN_DELAY" not in env
    assert "startupProbe" in container and "lifecycle" not in container
    spec = publisher_deployment(docs)["spec"]["template"]["spec"]
    assert [v["name"] for v in spec["volumes"]] == ["cdc-cache-snapshots"]
    assert [m["name"] for m in container["volumeMounts"]] == ["cdc-cache-snapshots"]
    assert spec["terminationGracePeriodSeconds"] == 10 + 12 + SNAPSHOT_ALLOWANCE
    # The app's sidecar keeps its socket, delay and hold.
    app_env = env_of(sidecar(without_publisher(docs))[0])
    assert app_env["CDC_CACHE_GRPC_LISTEN"] == "unix:/var/run/cdc-cache/grpc.sock"
    assert app_env["CDC_CACHE_SHUTDOWN_DELAY"] == "15s"


def test_publisher_values_reach_its_deployment_and_pod(render):
    docs = render(merge(BASE, READER, {"mesh": {"excludePorts": "istio"}}, {"publisher": {
        "enabled": True,
        "replicas": 2,
        "interval": "5m",
        "resources": {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"memory": "1280Mi"}},
        "terminationGracePeriodSeconds": 90,
        "annotations": {"secret.reloader.stakater.com/reload": "orders-reader"},
        "podAnnotations": {"example.com/team": "orders"},
        "podLabels": {"team": "orders"},
        "nodeSelector": {"node-role/batch": "true"},
        "tolerations": [{"key": "batch", "operator": "Exists", "effect": "NoSchedule"}],
        "affinity": {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
            {"weight": 1, "preference": {"matchExpressions": [
                {"key": "zone", "operator": "In", "values": ["a"]}]}}]}},
    }}))
    deployment = publisher_deployment(docs)
    assert deployment["spec"]["replicas"] == 2
    assert deployment["metadata"]["annotations"] == {"secret.reloader.stakater.com/reload": "orders-reader"}
    template = deployment["spec"]["template"]
    assert template["metadata"]["labels"]["team"] == "orders"
    assert template["metadata"]["annotations"] == {
        "example.com/team": "orders",
        "traffic.sidecar.istio.io/excludeOutboundPorts": "9092",
        "traffic.sidecar.istio.io/excludeInboundPorts": str(ADMIN_PORT),
    }
    spec = template["spec"]
    assert spec["terminationGracePeriodSeconds"] == 90
    assert spec["nodeSelector"] == {"node-role/batch": "true"}
    assert spec["tolerations"][0]["key"] == "batch"
    assert spec["affinity"]["nodeAffinity"]
    container = publisher_container(docs)
    assert container["resources"] == {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"memory": "1280Mi"}}
    assert env_of(container)["CDC_CACHE_SNAPSHOT_INTERVAL"] == "5m"
    # The app pod keeps its own settings.
    app = without_publisher(docs)
    assert env_of(sidecar(app)[0])["CDC_CACHE_SNAPSHOT_INTERVAL"] == "10m"
    assert sidecar(app)[0]["resources"]["limits"] == {"memory": "640Mi"}
    assert "nodeSelector" not in pod_spec(app) and "team" not in pod_template(app)["metadata"]["labels"]


def test_publisher_alone_in_a_release_without_the_app(values_file):
    """standalone.enabled: false (a release of its own, or a parent chart): the publisher still renders."""
    values = merge(BASE, READER, PUBLISHER, {"standalone": {"enabled": False}, "app": {"image": ""},
                                             "serviceAccount": {"annotations": {
                                                 "eks.amazonaws.com/role-arn": "arn:aws:iam::123456789012:role/orders"}}})
    # Native sidecars are not involved: Kubernetes 1.28 is fine.
    for kube_version in (KUBE_VERSION, "1.28.0"):
        docs = load_all(template(CHART, values_file(values), kube_version=kube_version).stdout)
        validate(docs, kube_version)
        assert sorted(d["kind"] for d in docs) == ["Deployment", "ServiceAccount"]
        account = one(docs, "ServiceAccount")
        assert account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].endswith(":role/orders")
        assert publisher_deployment(docs)["spec"]["template"]["spec"]["serviceAccountName"] == account["metadata"]["name"]


def test_publisher_labels_never_overlap_the_app_pods(render):
    """The app's Deployment, Service and PodDisruptionBudget select on name and instance: never the publisher."""
    docs = render(merge(BASE, READER, PUBLISHER, {"standalone": {"service": {"enabled": True}}}))
    publisher = publisher_deployment(docs)
    publisher_labels = publisher["spec"]["template"]["metadata"]["labels"]
    assert publisher["spec"]["selector"]["matchLabels"] == {
        "app.kubernetes.io/instance": "r1", "app.kubernetes.io/component": "snapshot-publisher", "cdc-cache/cdc-cache": "r1"}
    assert matches(publisher["spec"]["selector"]["matchLabels"], publisher_labels)
    app = one(without_publisher(docs), "Deployment")
    app_labels = app["spec"]["template"]["metadata"]["labels"]
    assert not matches(app["spec"]["selector"]["matchLabels"], publisher_labels)
    assert not matches(one(docs, "Service")["spec"]["selector"], publisher_labels)
    assert not matches(one(docs, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"], publisher_labels)
    assert not matches(publisher["spec"]["selector"]["matchLabels"], app_labels)


def test_publishers_of_two_copies_in_one_release_stay_apart(parent):
    values = two_copies()
    for alias in ("orders-cache", "prices-cache"):
        values[alias] = merge(values[alias], READER, PUBLISHER)
    docs = parent(values, deployment=TWO_COPIES, aliases=("orders-cache", "prices-cache"))
    publishers = {d["metadata"]["name"]: d for d in kinds(docs, "Deployment") if is_publisher(d)}
    assert sorted(publishers) == ["shop-orders-cache-publisher", "shop-prices-cache-publisher"]
    orders, prices = publishers["shop-orders-cache-publisher"], publishers["shop-prices-cache-publisher"]
    assert not matches(orders["spec"]["selector"]["matchLabels"], prices["spec"]["template"]["metadata"]["labels"])
    assert not matches(prices["spec"]["selector"]["matchLabels"], orders["spec"]["template"]["metadata"]["labels"])
    assert [c["name"] for c in prices["spec"]["template"]["spec"]["containers"]] == ["prices-cache"]
    assert env_of(prices["spec"]["template"]["spec"]["containers"][0])["CDC_CACHE_TOPICS"] == "prices"
    monitors = {d["metadata"]["name"]: d["spec"]["selector"]["matchLabels"] for d in kinds(docs, "PodMonitor")}
    assert matches(monitors["shop-prices-cache"], prices["spec"]["template"]["metadata"]["labels"])
    assert not matches(monitors["shop-orders-cache"], prices["spec"]["template"]["metadata"]["labels"])


@pytest.mark.parametrize("override, expected", [
    ({"snapshots": {"remote": {"url": "", "credentialsSecret": "", "env": {}}}},
     "publisher.enabled needs snapshots.remote.url (s3://bucket/prefix, gs://, az:// or file:///)"),
    ({"snapshots": {"enabled": False, "remote": {"url": "", "credentialsSecret": "", "env": {}}}},
     "publisher.enabled needs snapshots.enabled: true"),
    ({"snapshots": {"enabled": False}}, "publisher.enabled needs snapshots.enabled: true"),
    ({"snapshots": {"interval": "0s"}},
     "publisher.interval 0s (snapshots.interval; publisher.interval is empty): the publisher would upload only at shutdown"),
    ({"publisher": {"interval": "12h"}}, "publisher.interval 12h is not shorter than snapshots.maxAge 12h"),
    ({"publisher": {"terminationGracePeriodSeconds": 31}},
     "publisher.terminationGracePeriodSeconds 31 is shorter than the publisher needs to stop: shutdownGrace 10s + 12 s "
     "(consumers and admin port) + snapshots.shutdownAllowance 10s (the final snapshot) = 32.0 s"),
    ({"publisher": {"interval": "10 minutes"}}, "/publisher/interval"),
    ({"publisher": {"replica": 2}}, "replica"),
    ({"publisher": {"enabled": "yes"}}, "/publisher/enabled"),
])
def test_publisher_mistakes_are_refused(refuse, override, expected):
    for standalone in (True, False):
        stderr = refuse(merge(BASE, READER, PUBLISHER, {"standalone": {"enabled": standalone}}, override))
        assert expected in stderr, stderr


def test_publisher_grace_period_follows_the_snapshot_allowance(render):
    docs = render(merge(BASE, READER, PUBLISHER, {"snapshots": {"shutdownAllowance": "1m"}, "shutdownGrace": "15s",
                                                  "terminationGracePeriodSeconds": 90}))
    assert publisher_deployment(docs)["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 15 + 12 + 60
    # 0s: only at shutdown for the app's sidecars; the publisher still needs an interval of its own.
    docs = render(merge(BASE, READER, PUBLISHER, {"snapshots": {"interval": "0s"}, "publisher": {"interval": "5m"}}))
    assert env_of(publisher_container(docs))["CDC_CACHE_SNAPSHOT_INTERVAL"] == "5m"
    assert env_of(sidecar(without_publisher(docs))[0])["CDC_CACHE_SNAPSHOT_INTERVAL"] == "0s"


def test_pod_monitor_and_network_policy_select_the_publisher(render):
    docs = render(merge(BASE, READER, PUBLISHER, MONITORING, {"networkPolicy": {"enabled": True}}))
    labels = publisher_deployment(docs)["spec"]["template"]["metadata"]["labels"]
    monitor = one(docs, "PodMonitor")["spec"]
    assert matches(monitor["selector"]["matchLabels"], labels)
    ports = [p["name"] for p in publisher_container(docs)["ports"]]
    assert [e["port"] for e in monitor["podMetricsEndpoints"]] == ports == [ADMIN_PORT_NAME]
    # Still the app pods too.
    assert matches(monitor["selector"]["matchLabels"], pod_template(without_publisher(docs))["metadata"]["labels"])
    assert matches(one(docs, "NetworkPolicy")["spec"]["podSelector"]["matchLabels"], labels)


def test_snapshot_alert_fires_when_the_publisher_stops_writing(render, tmp_path):
    """Release-scoped rules: the publisher's series carry the PodMonitor's job, and the threshold follows
    the longer interval, so an hourly publisher is quiet while it writes and alerts once it stops."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is not on PATH; run scripts/test, which installs it")
    docs = render(merge(BASE, READER, MONITORING, {"publisher": {"enabled": True, "interval": "1h"}}))
    groups = one(docs, "PrometheusRule")["spec"]["groups"]
    rule = next(r for g in groups for r in g["rules"] if r["alert"] == "CdcCacheSnapshotsStale")
    assert "> 10800\n" in rule["expr"] and "[180m]" in rule["expr"], rule["expr"]
    # The publisher's interval only counts while it is on.
    rule_off = next(r for g in one(render(merge(BASE, READER, MONITORING, {"publisher": {"interval": "1h"}})),
                                   "PrometheusRule")["spec"]["groups"] for r in g["rules"]
                    if r["alert"] == "CdcCacheSnapshotsStale")
    assert "> 1800\n" in rule_off["expr"]

    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump({"groups": groups}))
    job = "shop/r1-cdc-cache"
    common = {"namespace": "shop", "container": "cdc-cache", "table": "orders"}
    labels = ",".join(f'{k}="{v}"' for k, v in common.items())
    minutes = range(0, 331)
    # Writes every hour; the stopped one writes at 0 and 60 minutes, then never again.
    healthy = " ".join(str((m // 60) * 3600) for m in minutes)
    stopped = " ".join(str(min(m // 60, 1) * 3600) for m in minutes)
    original = rule["annotations"]

    def expected(pod):
        return expected_warning(original, {**common, "pod": pod})

    tests = {"rule_files": [str(rules)], "evaluation_interval": "1m", "tests": [{
        "interval": "1m",
        "input_series": [
            {"series": f'cdc_cache_snapshot_last_write_timestamp_seconds{{job="{job}",pod="r1-cdc-cache-publisher-a",{labels}}}',
             "values": healthy},
            {"series": f'cdc_cache_snapshot_last_write_timestamp_seconds{{job="{job}",pod="r1-cdc-cache-publisher-b",{labels}}}',
             "values": stopped},
        ],
        "alert_rule_test": [
            # Older than 3 hours from 241 minutes on, for 30 minutes: fires at about 271.
            {"eval_time": "200m", "alertname": "CdcCacheSnapshotsStale", "exp_alerts": []},
            {"eval_time": "260m", "alertname": "CdcCacheSnapshotsStale", "exp_alerts": []},
            {"eval_time": "280m", "alertname": "CdcCacheSnapshotsStale", "exp_alerts": [expected("r1-cdc-cache-publisher-b")]},
            {"eval_time": "330m", "alertname": "CdcCacheSnapshotsStale", "exp_alerts": [expected("r1-cdc-cache-publisher-b")]},
        ],
    }]}
    test_file = tmp_path / "test.yaml"
    test_file.write_text(yaml.safe_dump(tests, sort_keys=False))
    result = subprocess.run([promtool, "test", "rules", str(test_file)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_documented_publisher_command_renders(values_file):
    """The README's copy-paste example: an existing release gets the publisher with --set alone."""
    result = helm("template", "orders", CHART, "--namespace", "shop", "--kube-version", KUBE_VERSION,
                  "--values", values_file(BASE),
                  "--set", "publisher.enabled=true",
                  "--set", "snapshots.remote.url=s3://my-bucket/cdc-cache/orders",
                  "--set", "snapshots.remote.credentialsSecret=orders-snapshots-s3",
                  "--set", "snapshots.remote.env.AWS_REGION=eu-west-1")
    docs = load_all(result.stdout)
    validate(docs)
    env = env_of(publisher_container(docs))
    assert env["CDC_CACHE_SNAPSHOT_URL"] == "s3://my-bucket/cdc-cache/orders"
    assert env["CDC_CACHE_SNAPSHOT_PUBLISH"] == "true" and env["AWS_REGION"] == "eu-west-1"
    assert publisher_deployment(docs)["metadata"]["name"] == "orders-cdc-cache-publisher"
    app_env = env_of(sidecar(without_publisher(docs))[0])
    assert app_env["CDC_CACHE_SNAPSHOT_URL"] == "s3://my-bucket/cdc-cache/orders"
    assert "CDC_CACHE_SNAPSHOT_PUBLISH" not in app_env


def test_notes_name_the_publisher(values_file):
    notes = install_notes(values_file(merge(BASE, READER, PUBLISHER)))
    assert "Snapshot publisher r1-cdc-cache-publisher: writes every table every 10m" in notes, notes
    assert "only download from there" in notes and "rollout status deployment/r1-cdc-cache-publisher" in notes, notes
    assert "publisher" not in install_notes(values_file(merge(BASE, READER)))


# ---------------------------------------------------------------------------------------------
# Standalone mode: what a real app needs
# ---------------------------------------------------------------------------------------------


def test_standalone_app_gets_probes_env_from_lifecycle_and_a_writable_tmp(render):
    probe = {"httpGet": {"path": "/ready", "port": "http"}, "periodSeconds": 5}
    docs = render(merge(BASE, {
        "app": {
            "readinessProbe": probe,
            "livenessProbe": {"httpGet": {"path": "/live", "port": "http"}},
            "startupProbe": {"httpGet": {"path": "/live", "port": "http"}, "failureThreshold": 30},
            "lifecycle": {"preStop": {"sleep": {"seconds": 5}}},
            "envFrom": [{"configMapRef": {"name": "orders-config"}}],
            "volumeMounts": [{"name": "keytab", "mountPath": "/etc/krb5", "readOnly": True}],
            "tmpDir": {"sizeLimit": "1Gi"},
        },
        "extraVolumes": [{"name": "keytab", "secret": {"secretName": "orders-keytab"}}],
    }))
    app = app_container(docs)
    assert app["readinessProbe"] == probe
    assert app["livenessProbe"]["httpGet"]["path"] == "/live"
    assert app["startupProbe"]["failureThreshold"] == 30
    assert app["lifecycle"] == {"preStop": {"sleep": {"seconds": 5}}}
    assert app["envFrom"] == [{"configMapRef": {"name": "orders-config"}}]
    assert app["volumeMounts"] == [
        {"name": "app-tmp", "mountPath": "/tmp"},
        {"name": "keytab", "mountPath": "/etc/krb5", "readOnly": True},
        SOCKET_MOUNT,
    ]
    assert volume(docs, "app-tmp") == {"name": "app-tmp", "emptyDir": {"sizeLimit": "1Gi"}}


def test_standalone_disruption_budget_service_spread_and_strategy(render):
    docs = render(merge(BASE, {
        "standalone": {
            "replicas": 3,
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 2, "maxUnavailable": 0}},
            "service": {"enabled": True},
            "annotations": {"secret.reloader.stakater.com/reload": "orders-reader"},
        },
        "topologySpreadConstraints": [
            {"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "ScheduleAnyway"},
            {"maxSkew": 1, "topologyKey": "kubernetes.io/hostname", "whenUnsatisfiable": "DoNotSchedule",
             "labelSelector": {"matchLabels": {"custom": "yes"}}},
        ],
        "priorityClassName": "business-critical",
    }))
    deployment = one(docs, "Deployment")
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert deployment["spec"]["replicas"] == 3
    assert deployment["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 2, "maxUnavailable": 0}
    assert deployment["metadata"]["annotations"] == {"secret.reloader.stakater.com/reload": "orders-reader"}
    pdb = one(docs, "PodDisruptionBudget")
    assert pdb["spec"] == {"maxUnavailable": 1, "selector": {"matchLabels": selector}}
    service = one(docs, "Service")
    assert service["spec"]["selector"] == selector
    assert service["spec"]["ports"] == [{"name": "http", "port": 8080, "targetPort": "http", "protocol": "TCP"}]
    spread = pod_spec(docs)["topologySpreadConstraints"]
    assert spread[0]["labelSelector"] == {"matchLabels": selector}
    assert spread[1]["labelSelector"] == {"matchLabels": {"custom": "yes"}}
    assert pod_spec(docs)["priorityClassName"] == "business-critical"
    labels = pod_template(docs)["metadata"]["labels"]
    assert selector.items() <= labels.items()


def test_standalone_disruption_budget_min_available_and_off(render):
    docs = render(merge(BASE, {"standalone": {"podDisruptionBudget": {"minAvailable": "50%"}}}))
    assert one(docs, "PodDisruptionBudget")["spec"]["minAvailable"] == "50%"
    assert "maxUnavailable" not in one(docs, "PodDisruptionBudget")["spec"]
    docs = render(merge(BASE, {"standalone": {"podDisruptionBudget": {"enabled": False}}}))
    assert kinds(docs, "PodDisruptionBudget") == []


def test_recreate_strategy_renders_without_rolling_update(render):
    """values.yaml's default rollingUpdate merges into `type: Recreate`; the API server refuses both."""
    docs = render(merge(BASE, {"standalone": {"strategy": {"type": "Recreate"}}}))
    assert one(docs, "Deployment")["spec"]["strategy"] == {"type": "Recreate"}
    # Kept, and typed, with RollingUpdate.
    docs = render(merge(BASE, {"standalone": {"strategy": {"rollingUpdate": {"maxSurge": "50%"}}}}))
    assert one(docs, "Deployment")["spec"]["strategy"] == {
        "type": "RollingUpdate", "rollingUpdate": {"maxSurge": "50%", "maxUnavailable": 0}}


def test_strategy_type_is_checked_by_the_schema(refuse):
    stderr = refuse(merge(BASE, {"standalone": {"strategy": {"type": "Rolling"}}}))
    assert "/standalone/strategy/type" in stderr, stderr


def install_notes(values_path, *extra):
    """The NOTES helm prints after an install (client-side dry run: no cluster)."""
    out = helm("install", "r1", CHART, "--namespace", "shop", "--dry-run=client", "--values", values_path, *extra).stdout
    return out[out.index("NOTES:"):]


@pytest.mark.parametrize("standalone, waves", [
    ({"replicas": 1}, 1),
    ({"replicas": 4}, 4),  # maxSurge 1, maxUnavailable 0: one pod at a time
    ({"replicas": 5, "strategy": {"rollingUpdate": {"maxSurge": 2}}}, 3),
    ({"replicas": 8, "strategy": {"rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}}}, 2),
    ({"replicas": 4, "strategy": {"type": "Recreate"}}, 1),
])
def test_notes_give_a_helm_timeout_for_the_whole_rollout(values_file, standalone, waves):
    notes = install_notes(values_file(merge(BASE, {"standalone": standalone})))
    deadline = BUDGET + 600
    assert f"progressDeadlineSeconds is {deadline}" in notes, notes
    assert f"--timeout {deadline}s" in notes, notes  # install: every pod at once
    assert f"in {waves} wave(s)" in notes and f"--timeout {waves * deadline}s ({waves} x {deadline} s)" in notes, notes


def test_service_account_token_only_when_asked(render):
    docs = render(merge(BASE, {"serviceAccount": {"automountServiceAccountToken": True}}))
    assert pod_spec(docs)["automountServiceAccountToken"] is True
    assert one(docs, "ServiceAccount")["automountServiceAccountToken"] is True
    docs = render(merge(BASE, {"serviceAccount": {"create": False}}))
    assert kinds(docs, "ServiceAccount") == []
    assert pod_spec(docs)["serviceAccountName"] == "default"
    assert pod_spec(docs)["automountServiceAccountToken"] is False


def test_security_context_keys_can_be_dropped_for_platforms_that_assign_uids(render):
    docs = render(merge(BASE, {"securityContext": {"runAsUser": None, "runAsGroup": None}}))
    sc = sidecar(docs)[0]["securityContext"]
    assert "runAsUser" not in sc and sc["runAsNonRoot"] is True and sc["readOnlyRootFilesystem"] is True


# ---------------------------------------------------------------------------------------------
# Reaching the brokers: bind address, network policy, meshes
# ---------------------------------------------------------------------------------------------


def test_admin_listens_dual_stack_by_default(render):
    assert env_of(sidecar(render(BASE))[0])["CDC_CACHE_ADMIN_LISTEN"] == "[::]:9464"
    docs = render(merge(BASE, {"admin": {"bindAddress": "0.0.0.0", "port": 9100}}))
    container = sidecar(docs)[0]
    assert env_of(container)["CDC_CACHE_ADMIN_LISTEN"] == "0.0.0.0:9100"
    assert container["ports"][0]["containerPort"] == 9100
    assert container["readinessProbe"]["grpc"]["port"] == 9100


@pytest.mark.parametrize("address", [
    "127.0.0.1", "127.0.0.53", "127.255.255.254",
    "[::1]", "[0:0:0:0:0:0:0:1]", "[0::1]", "[0000:0000::0001]", "[::0:1]",
    "[::ffff:127.0.0.1]", "[::FFFF:127.1.2.3]", "[::ffff:7f00:1]", "[0:0:0:0:0:ffff:7f00:0001]",
    "[::127.0.0.1]",  # IPv4-compatible (deprecated), never reachable from kubelet either
])
def test_a_loopback_admin_address_is_refused(refuse, address):
    """kubelet probes the pod IP: the pod would never become ready, whatever the spelling."""
    stderr = refuse(merge(BASE, {"admin": {"bindAddress": address}}))
    assert f"admin.bindAddress {address}" in stderr and "pod IP" in stderr, stderr


@pytest.mark.parametrize("address", ["[1::2::3]", "[12345::1]", "[1:2:3:4:5:6:7:8:9]", "[1:2:3:4:5:6:7]",
                                     "[1:2:3:4:5:6:7:8::]", "[::ffff:127.0.0.256]", "300.1.2.3"])
def test_an_admin_address_that_is_no_ip_is_refused(refuse, address):
    stderr = refuse(merge(BASE, {"admin": {"bindAddress": address}}))
    assert f"admin.bindAddress {address}: not an IP address" in stderr, stderr


@pytest.mark.parametrize("address", ["[::]", "[0:0:0:0:0:0:0:0]", "0.0.0.0", "10.1.2.3", "[fd00::1]",
                                     "[2001:db8::7f00:1]", "[::ffff:10.0.0.1]", "[1:2:3:4:5:6::7]"])
def test_unspecified_and_non_loopback_admin_addresses_are_accepted(render, address):
    docs = render(merge(BASE, {"admin": {"bindAddress": address}}))
    assert env_of(sidecar(docs)[0])["CDC_CACHE_ADMIN_LISTEN"] == f"{address}:{ADMIN_PORT}"


def test_network_policy_allows_the_brokers_and_dns_for_the_pods_with_the_sidecar(render):
    docs = render(merge(BASE, {"networkPolicy": {"enabled": True}}))
    policy = one(docs, "NetworkPolicy")
    assert policy["metadata"]["name"] == "r1-cdc-cache"
    spec = policy["spec"]
    assert spec["policyTypes"] == ["Egress"]
    labels = pod_template(docs)["metadata"]["labels"]
    assert spec["podSelector"]["matchLabels"] == {"cdc-cache/cdc-cache": "r1"}
    assert spec["podSelector"]["matchLabels"].items() <= labels.items()
    kafka, dns = spec["egress"]
    assert kafka == {"ports": [{"protocol": "TCP", "port": 9092}]}  # from kafka.brokers, once
    assert dns["ports"] == [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]
    assert dns["to"][0]["podSelector"] == {"matchLabels": {"k8s-app": "kube-dns"}}


def test_network_policy_with_peers_explicit_ports_and_the_apps_egress(render):
    peers = [{"ipBlock": {"cidr": "10.20.0.0/16"}}]
    app_egress = [{"to": [{"podSelector": {"matchLabels": {"app": "postgres"}}}], "ports": [{"port": 5432}]}]
    docs = render(merge(BASE, {
        "kafka": {"ports": [9093, 9094]},
        "networkPolicy": {"enabled": True, "kafkaPeers": peers, "dns": {"peers": []}, "extraEgress": app_egress},
    }))
    kafka, dns, app = one(docs, "NetworkPolicy")["spec"]["egress"]
    assert kafka == {"ports": [{"protocol": "TCP", "port": 9093}, {"protocol": "TCP", "port": 9094}], "to": peers}
    assert "to" not in dns
    assert app == app_egress[0]
    docs = render(merge(BASE, {"networkPolicy": {"enabled": True, "dns": {"enabled": False}}}))
    assert len(one(docs, "NetworkPolicy")["spec"]["egress"]) == 1


@pytest.mark.parametrize("mesh, outbound, inbound", [
    ("istio", "traffic.sidecar.istio.io/excludeOutboundPorts", "traffic.sidecar.istio.io/excludeInboundPorts"),
    ("linkerd", "config.linkerd.io/skip-outbound-ports", "config.linkerd.io/skip-inbound-ports"),
])
def test_mesh_annotations_keep_broker_and_admin_ports_out_of_the_proxy(render, mesh, outbound, inbound):
    docs = render(merge(BASE, {"mesh": {"excludePorts": mesh}, "kafka": {"ports": [9092, 9093]},
                               "podAnnotations": {outbound: "5432"}}))
    annotations = pod_template(docs)["metadata"]["annotations"]
    # Merged into the app's own list, not replacing it.
    assert annotations[outbound] == "5432,9092,9093"
    assert annotations[inbound] == "9464"


def test_no_mesh_annotations_by_default(render):
    annotations = pod_template(render(BASE))["metadata"]["annotations"]
    assert set(annotations) == {"kubectl.kubernetes.io/default-container"}


# ---------------------------------------------------------------------------------------------
# Names
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("instance", [
    "cdc-cache", "prices", "orders-cache", "prices-cache", "cdc-cache-orders", "cdc-cache-customers",
    "a", "x9", "a-very-long-instance-name-for-a-cache-of",
])
def test_port_names_stay_valid_and_distinct(render, instance):
    docs = render(merge(BASE, {"instanceName": instance}))
    container, _ = sidecar(docs, instance)
    name = container["ports"][0]["name"]
    assert len(name) <= 15 and PORT_NAME.match(name), name
    assert env_of(app_container(docs))[instance.upper().replace("-", "_") + "_ADDR"] == (
        f"unix:/var/run/{instance}/grpc.sock")
    if instance == "cdc-cache":
        assert name == ADMIN_PORT_NAME


def test_port_names_of_similar_instances_differ(render):
    names = set()
    for instance in ("cdc-cache-orders", "cdc-cache-orders2", "orders-cache", "orders-cache-2"):
        docs = render(merge(BASE, {"instanceName": instance}))
        names.add(sidecar(docs, instance)[0]["ports"][0]["name"])
    assert len(names) == 4, names


def test_app_ports_may_be_called_metrics_but_not_like_the_admin_port(render, refuse):
    docs = render(merge(BASE, {"app": {"ports": [{"name": "metrics", "containerPort": 9090}]}}))
    assert app_container(docs)["ports"] == [{"name": "metrics", "containerPort": 9090}]
    stderr = refuse(merge(BASE, {"app": {"ports": [{"name": ADMIN_PORT_NAME, "containerPort": 9090}]}}))
    assert "admin.port" in stderr and ADMIN_PORT_NAME in stderr, stderr
    stderr = refuse(merge(BASE, {"app": {"ports": [{"name": "admin", "containerPort": ADMIN_PORT}]}}))
    assert "admin.port" in stderr and "9464" in stderr, stderr


# ---------------------------------------------------------------------------------------------
# Monitoring
# ---------------------------------------------------------------------------------------------


def test_monitoring_is_off_by_default(render):
    docs = render(BASE)
    assert {d["kind"] for d in docs} == {"Deployment", "ServiceAccount", "PodDisruptionBudget"}


def test_pod_monitor_scrapes_the_admin_port_of_the_pods_with_the_sidecar(render):
    docs = render(merge(BASE, MONITORING))
    monitor = one(docs, "PodMonitor")
    assert monitor["metadata"]["name"] == "r1-cdc-cache"
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert monitor["spec"]["podMetricsEndpoints"] == [
        {"port": ADMIN_PORT_NAME, "path": "/metrics", "interval": "30s", "scrapeTimeout": "10s"}]
    pod_labels = pod_template(docs)["metadata"]["labels"]
    assert monitor["spec"]["selector"]["matchLabels"] == {"cdc-cache/cdc-cache": "r1"}
    assert monitor["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()


def rules_file():
    return yaml.safe_load((CHART / "files" / "cdc-cache-alerts.rules.yaml").read_text())


def test_cluster_scoped_rules_carry_the_alert_file_unchanged_under_a_fixed_name(render):
    docs = render(merge(BASE, MONITORING, {"monitoring": {"prometheusRule": {"scope": "cluster"}}}))
    rule = one(docs, "PrometheusRule")
    assert rule["metadata"]["name"] == "cdc-cache-alerts"
    groups = rule["spec"]["groups"]
    assert groups == rules_file()["groups"]
    assert [g["name"] for g in groups] == ["cdc-cache"]
    # Prometheus' own templates reach Prometheus, not Helm's template engine.
    assert any("{{ $labels." in str(r.get("annotations")) for g in groups for r in g["rules"])


def test_release_scoped_rules_select_only_this_release(render):
    docs = render(merge(BASE, MONITORING), release="orders")
    rule = one(docs, "PrometheusRule")
    assert rule["metadata"]["name"] == "orders-cdc-cache"
    [group] = rule["spec"]["groups"]
    assert group["name"] == "cdc-cache/shop/orders-cdc-cache"
    original = {r["alert"]: r for r in rules_file()["groups"][0]["rules"]}
    job = 'job="shop/orders-cdc-cache"'
    for r in group["rules"]:
        # Every selector carries the release's PodMonitor job (namespace/name), and only it changed.
        selectors = re.findall(r"\b((?:cdc_cache|process)_[a-z_]+)(\{[^}]*\})?", r["expr"])
        assert selectors, r["expr"]
        assert all(job in (matchers or "") for _, matchers in selectors), r["expr"]
        assert r["expr"].replace(job + ", ", "").replace("{" + job + "}", "") == original[r["alert"]]["expr"]
        assert r["annotations"] == original[r["alert"]]["annotations"]
    assert one(docs, "PodMonitor")["metadata"]["name"] == "orders-cdc-cache"


def test_release_scoped_not_ready_alert_fires_at_this_releases_budget(render, tmp_path):
    """promtool runs the rendered rules: a 10-minute budget, this release's series only."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is not on PATH; run scripts/test, which installs it")
    docs = render(merge(BASE, MONITORING, {"probes": {"startup": {"failureThreshold": 60}}}), release="orders")
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump({"groups": one(docs, "PrometheusRule")["spec"]["groups"]}))
    original = next(r for r in rules_file()["groups"][0]["rules"] if r["alert"] == "CdcCacheNotReady")

    def expected(pod):
        labels = {"namespace": "shop", "pod": pod, "container": "cdc-cache"}
        return expected_warning(original["annotations"], labels)

    def series(job, pod, values):
        return {"series": f'cdc_cache_ready{{job="{job}",namespace="shop",pod="{pod}",container="cdc-cache"}}',
                "values": values}

    tests = {"rule_files": [str(rules)], "evaluation_interval": "1m", "tests": [{
        "interval": "1m",
        "input_series": [
            series("shop/orders-cdc-cache", "orders-0", "0x30"),                    # never ready
            series("shop/orders-cdc-cache", "orders-1", "0x10 stale _ 0x20"),       # restarted at the budget
            series("shop/orders-cdc-cache", "orders-2", "0x8 1x22"),                # ready within the budget
            series("shop/orders-cdc-cache", "orders-3", "_x8 0x22"),                # 8 minutes younger
            series("shop/payments-cdc-cache", "payments-0", "0x30"),                # another release's pod
        ],
        "alert_rule_test": [
            {"eval_time": "14m", "alertname": "CdcCacheNotReady", "exp_alerts": []},
            {"eval_time": "16m", "alertname": "CdcCacheNotReady",
             "exp_alerts": [expected("orders-0"), expected("orders-1")]},
            {"eval_time": "24m", "alertname": "CdcCacheNotReady",
             "exp_alerts": [expected("orders-0"), expected("orders-1"), expected("orders-3")]},
        ],
    }]}
    test_file = tmp_path / "test.yaml"
    test_file.write_text(yaml.safe_dump(tests, sort_keys=False))
    result = subprocess.run([promtool, "test", "rules", str(test_file)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_release_scoped_monitoring_needs_the_pod_monitor(refuse):
    stderr = refuse(merge(BASE, {"monitoring": {"prometheusRule": {"enabled": True}}}))
    assert "monitoring.prometheusRule.scope release" in stderr and "podMonitor" in stderr, stderr
    stderr = refuse(merge(BASE, {"monitoring": {"dashboard": {"enabled": True}}}))
    assert "monitoring.dashboard.scope release" in stderr, stderr


def dashboard_file():
    return json.loads((CHART / "files" / "cdc-cache-dashboard.json").read_text())


def all_exprs(dashboard):
    def walk(panels):
        for p in panels:
            yield from (t["expr"] for t in p.get("targets", []) if t.get("expr"))
            yield from walk(p.get("panels", []))
    yield from walk(dashboard["panels"])
    for v in dashboard["templating"]["list"]:
        if v["type"] == "query":
            yield v["query"]["query"] if isinstance(v["query"], dict) else v["query"]


def test_cluster_scoped_dashboard_is_the_file_under_fixed_names(render):
    docs = render(merge(BASE, MONITORING, {"monitoring": {"dashboard": {"scope": "cluster"}}}))
    config_map = one(docs, "ConfigMap")
    assert config_map["metadata"]["name"] == "cdc-cache-dashboard"
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert config_map["metadata"]["annotations"] == {"grafana_folder": "Kafka"}
    assert set(config_map["data"]) == {"cdc-cache.json"}
    assert json.loads(config_map["data"]["cdc-cache.json"]) == dashboard_file()


def test_release_scoped_dashboards_never_share_a_file_uid_or_name(render):
    seen = []
    for release in ("orders", "payments"):
        docs = render(merge(BASE, MONITORING), release=release)
        config_map = one(docs, "ConfigMap")
        [(key, text)] = config_map["data"].items()
        dashboard = json.loads(text)
        job = f'job="shop/{release}-cdc-cache"'
        assert all(job in expr for expr in all_exprs(dashboard))
        assert len(dashboard["uid"]) <= 40 and dashboard["uid"] != "cdc-cache"
        assert release in dashboard["title"]
        # Everything else is the shipped dashboard.
        original = dashboard_file()
        assert len(list(all_exprs(dashboard))) == len(list(all_exprs(original)))
        assert dashboard["panels"][0] == original["panels"][0]
        seen.append((config_map["metadata"]["name"], key, dashboard["uid"], dashboard["title"]))
    for a, b in zip(*seen):
        assert a != b, seen


def test_release_scoped_dashboard_queries_differ_from_the_file_only_by_the_job(render):
    docs = render(merge(BASE, MONITORING), release="orders")
    [text] = one(docs, "ConfigMap")["data"].values()
    job = 'job="shop/orders-cdc-cache"'
    scoped = list(all_exprs(json.loads(text)))
    for expr, original in zip(scoped, all_exprs(dashboard_file()), strict=True):
        assert expr.replace(job + ", ", "").replace("{" + job + "}", "") == original


def test_monitoring_only_release_installs_the_cluster_objects_once(render):
    """A release of its own for the cluster-wide rules and dashboard: no sidecar, no topics."""
    docs = render({
        "standalone": {"enabled": False},
        "monitoring": {"prometheusRule": {"enabled": True, "scope": "cluster"},
                       "dashboard": {"enabled": True, "scope": "cluster"}},
    }, release="cdc-cache-monitoring")
    assert sorted(d["kind"] for d in docs) == ["ConfigMap", "PrometheusRule"]
    assert one(docs, "PrometheusRule")["metadata"]["name"] == "cdc-cache-alerts"


# ---------------------------------------------------------------------------------------------
# Refused values
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("override, expected", [
    ({"nativeSidcar": True}, ["nativeSidcar", "not allowed"]),
    ({"topics": "orders"}, ["/topics", "want array"]),
    ({"topics": []}, ["/topics", "minItems"]),
    ({"topics": [{"tpoic": "orders"}]}, ["/topics/0", "tpoic"]),
    ({"topics": [{"topic": "orders", "format": "protobuf"}]}, ["/topics/0/format", "raw", "debezium"]),
    ({"topics": [{"topic": "bad topic"}]}, ["/topics/0/topic"]),
    ({"format": "protobuf"}, ["/format", "raw", "debezium"]),
    ({"logFormat": "xml"}, ["/logFormat", "json", "text"]),
    ({"onDecodeError": "ignore"}, ["/onDecodeError", "skip", "fail"]),
    ({"kafka": {"brokers": ""}}, ["/kafka/brokers"]),
    ({"kafka": {"brokers": "kafka-1:9092, kafka-2:9092"}}, ["/kafka/brokers"]),
    ({"kafka": {"borkers": "kafka:9092"}}, ["borkers", "not allowed"]),
    ({"kafka": {"options": {"SASL_MECHANISM": "PLAIN"}}}, ["SASL_MECHANISM"]),
    ({"kafka": {"secretOptions": [{"option": "sasl.password", "secretName": "s"}]}},
     ["/kafka/secretOptions/0", "secretKey"]),
    ({"kafka": {"tls": {"enabled": "yes"}}}, ["/kafka/tls/enabled", "want boolean"]),
    ({"kafka": {"tls": {"secretName": "old-style"}}}, ["/kafka/tls", "secretName"]),
    ({"kafka": {"tls": {"clientCert": {"keyKey": ""}}}}, ["/kafka/tls/clientCert/keyKey"]),
    ({"kafka": {"tls": {"ca": {"configMapName": "Not A Name"}}}}, ["/kafka/tls/ca/configMapName"]),
    ({"kafka": {"prefetchKbytes": 10}}, ["/kafka/prefetchKbytes", "minimum"]),
    ({"nativeSidecar": "true"}, ["/nativeSidecar", "want boolean"]),
    ({"maxMultigetKeys": "many"}, ["/maxMultigetKeys", "want integer"]),
    ({"grpcMaxMessageBytes": 10}, ["/grpcMaxMessageBytes", "minimum"]),
    ({"shutdownGrace": 10}, ["/shutdownGrace", "want string"]),
    ({"shutdownGrace": "10 seconds"}, ["/shutdownGrace"]),
    ({"shutdownDelay": "soon"}, ["/shutdownDelay"]),
    ({"grpcListen": "0.0.0.0:50051"}, ["/grpcListen"]),
    ({"grpcSocket": {"mode": "rw-rw----"}}, ["/grpcSocket/mode"]),
    ({"admin": {"bindAddress": "localhost"}}, ["/admin/bindAddress"]),
    ({"instanceName": "Orders_Cache"}, ["/instanceName"]),
    ({"mesh": {"excludePorts": "consul"}}, ["/mesh/excludePorts", "istio", "linkerd"]),
    ({"monitoring": {"prometheusRule": {"scope": "namespace"}}}, ["/monitoring/prometheusRule/scope"]),
    ({"inject": {"initContainerPosition": "middle"}}, ["/inject/initContainerPosition"]),
    ({"probes": {"startup": {"failureTreshold": 10}}}, ["/probes/startup", "failureTreshold"]),
    ({"monitoring": {"podMonitor": {"enable": True}}}, ["/monitoring/podMonitor", "enable"]),
    ({"resources": {"limit": {"memory": "1Gi"}}}, ["/resources", "limit"]),
    ({"extraVolumes": [{"secret": {"secretName": "x"}}]}, ["/extraVolumes/0", "name"]),
    ({"snapshots": {"enable": False}}, ["/snapshots", "enable"]),
    ({"snapshots": {"enabled": "false"}}, ["/snapshots/enabled", "want boolean"]),
    ({"snapshots": {"interval": "10 minutes"}}, ["/snapshots/interval"]),
    ({"snapshots": {"maxAge": 3600}}, ["/snapshots/maxAge", "want string"]),
    ({"snapshots": {"keep": 0}}, ["/snapshots/keep", "minimum"]),
    ({"snapshots": {"sizeLimit": "lots"}}, ["/snapshots/sizeLimit"]),
    ({"snapshots": {"medium": "memory"}}, ["/snapshots/medium"]),
    ({"snapshots": {"shutdownAllowance": "a while"}}, ["/snapshots/shutdownAllowance"]),
    ({"snapshots": {"url": "s3://bucket/"}}, ["/snapshots", "url"]),
])
def test_schema_refuses_bad_values_naming_them(refuse, override, expected):
    stderr = refuse(merge(BASE, override))
    for text in expected:
        assert text in stderr, stderr


@pytest.mark.parametrize("override, expected", [
    ({"kafka": {"options": {"auto.offset.reset": "latest"}}}, "kafka option auto.offset.reset: set by cdc-cache itself"),
    ({"kafka": {"options": {"queued.max.messages.kbytes": 1024}}}, "use kafka.prefetchKbytes"),
    ({"kafka": {"secretOptions": [{"option": "bootstrap.servers", "secretName": "s", "secretKey": "k"}]}},
     "kafka option bootstrap.servers: set by cdc-cache itself"),
    ({"kafka": {"options": {"sasl.oauthbearer.client.secret": "x"}}}, "kafka.options.sasl.oauthbearer.client.secret"),
    ({"kafka": {"options": {"sasl.password": "x"},
                "secretOptions": [{"option": "sasl.password", "secretName": "s", "secretKey": "k"}]}},
     "kafka.options.sasl.password"),
    ({"kafka": {"options": {"sasl.username": "x"},
                "secretOptions": [{"option": "sasl.username", "secretName": "s", "secretKey": "k"}]}},
     "kafka option sasl.username: in both"),
    ({"topics": [{"topic": "a"}, {"topic": "a", "table": "b"}]}, 'topic "a" is listed twice'),
    ({"topics": [{"topic": "a", "table": "t"}, {"topic": "b", "table": "t"}]}, 'table name "t" is used twice'),
    ({"kafka": {"tls": {"enabled": True, "ca": {"secretName": "ca"}}}}, "security.protocol to SSL or SASL_SSL"),
    ({"kafka": {"options": {"security.protocol": "SSL"}, "tls": {"enabled": True}}}, "nothing to mount"),
    ({"kafka": {"options": {"security.protocol": "SSL"},
                "tls": {"enabled": True, "ca": {"secretName": "a", "configMapName": "b"}}}}, "not both"),
    ({"kafka": {"options": {"security.protocol": "SSL", "ssl.ca.location": "/x"},
                "tls": {"enabled": True, "ca": {"secretName": "tls"}}}}, "kafka option ssl.ca.location: set by kafka.tls"),
    ({"grpcListen": "unix:/tmp/cdc.sock"}, "set grpcListen: unix"),
    ({"app": {"image": ""}}, "app.image"),
    ({"inject": {"appContainers": ["orders"]}}, 'no app container named "orders"'),
    ({"snapshots": {"interval": "12h"}}, "snapshots.interval 12h is not shorter than snapshots.maxAge 12h"),
    ({"snapshots": {"interval": "2h", "maxAge": "90m"}}, "every snapshot would be too old to load"),
    ({"extraVolumes": [{"name": "data", "emptyDir": {}}],
      "extraVolumeMounts": [{"name": "data", "mountPath": "/var/lib/cdc-cache/"}]},
     "extraVolumeMounts: /var/lib/cdc-cache is the snapshot directory"),
])
def test_templates_refuse_what_the_schema_cannot_express(refuse, override, expected):
    assert expected in refuse(merge(BASE, override))


# ---------------------------------------------------------------------------------------------
# The example parent chart
# ---------------------------------------------------------------------------------------------


def test_parent_chart_injects_the_sidecar_with_one_helper(render, example_chart):
    docs = render({}, chart=example_chart, release="shop")
    assert {d["kind"] for d in docs} == {"Deployment", "Service"}  # no standalone Deployment
    deployment = one(docs, "Deployment")
    assert deployment["metadata"]["name"] == "shop-orders-app"
    assert deployment["spec"]["progressDeadlineSeconds"] == BUDGET + 600
    container, is_init = sidecar(docs)
    assert is_init and container["restartPolicy"] == "Always"
    assert container["startupProbe"]["grpc"] == {"port": ADMIN_PORT, "service": ""}
    assert container["image"] == "ghcr.io/example/cdc-cache:0.1.0"
    env = env_of(container)
    assert env["CDC_CACHE_BROKERS"] == "kafka-0.kafka:9093,kafka-1.kafka:9093"
    assert env["CDC_CACHE_TOPICS"] == "dbz.public.orders=orders:debezium,customers"
    assert env["CDC_CACHE_KAFKA_SASL_PASSWORD"] == {
        "secretKeyRef": {"name": "orders-app-kafka", "key": "password"}}
    assert env["CDC_CACHE_KAFKA_SSL_CA_LOCATION"] == "/etc/cdc-cache/tls/ca.crt"
    # The subchart's defaults reach the parent's pods (probes, security) merged with its values.
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["resources"]["limits"]["memory"] == "800Mi"
    assert container["ports"] == [{"name": ADMIN_PORT_NAME, "containerPort": ADMIN_PORT, "protocol": "TCP"}]
    app = app_container(docs, "orders-app")
    # The default unix socket: its directory mounted into the app, which runs as another user (10001)
    # and shares the socket through the fsGroup the chart sets where the parent has none.
    assert env_of(app)["CDC_CACHE_ADDR"] == SOCKET_ADDR
    assert SOCKET_MOUNT in app["volumeMounts"]
    # The app's own metrics port named "metrics" no longer collides with the sidecar's.
    assert {"name": "metrics", "containerPort": 9090} in app["ports"]
    spec = pod_spec(docs)
    assert spec["automountServiceAccountToken"] is False
    assert spec["enableServiceLinks"] is False
    assert spec["terminationGracePeriodSeconds"] == 60
    assert [v["name"] for v in spec["volumes"]] == ["tmp", "cdc-cache-tls", "cdc-cache-socket", "cdc-cache-snapshots"]
    assert spec["securityContext"]["fsGroup"] == 65532
    metadata = deployment["spec"]["template"]["metadata"]
    assert metadata["labels"]["cdc-cache/cdc-cache"] == "shop"
    assert metadata["annotations"]["kubectl.kubernetes.io/default-container"] == "orders-app"


def test_parent_chart_classic_sidecar_unix_socket_and_monitoring(render, example_chart):
    values = {"cdc-cache": merge(MONITORING, CLASSIC, UNIX)}
    docs = render(values, chart=example_chart, release="shop")
    container, is_init = sidecar(docs)
    assert not is_init and "initContainers" not in pod_spec(docs)
    assert [c["name"] for c in pod_spec(docs)["containers"]] == ["cdc-cache", "orders-app"]
    assert "postStart" in container["lifecycle"]
    app = app_container(docs, "orders-app")
    # The app runs as 10001 and keeps its own /tmp; the socket directory is a volume of its own.
    assert app["volumeMounts"] == [
        {"name": "tmp", "mountPath": "/tmp"},
        {"name": "cdc-cache-socket", "mountPath": "/var/run/cdc-cache"},
    ]
    assert env_of(app)["CDC_CACHE_ADDR"] == "unix:/var/run/cdc-cache/grpc.sock"
    assert pod_spec(docs)["securityContext"]["runAsUser"] == 10001
    assert pod_spec(docs)["securityContext"]["fsGroup"] == 65532  # set: the parent had none
    # The subchart's monitoring objects render in the parent's release and find its pods.
    monitor = one(docs, "PodMonitor")
    pod_labels = pod_template(docs)["metadata"]["labels"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert monitor["spec"]["podMetricsEndpoints"][0]["port"] == ADMIN_PORT_NAME
    assert one(docs, "PrometheusRule")["metadata"]["name"] == "shop-cdc-cache"
    assert one(docs, "ConfigMap")["metadata"]["labels"]["grafana_dashboard"] == "1"


def test_parent_chart_values_are_checked_by_the_subchart_schema(refuse, example_chart):
    stderr = refuse({"cdc-cache": {"nativeSidcar": False}}, chart=example_chart)
    assert "nativeSidcar" in stderr and "cdc-cache" in stderr, stderr
    stderr = refuse({"cdc-cache": {"topics": "orders"}}, chart=example_chart)
    assert "/topics" in stderr, stderr


def test_parent_chart_globals_are_accepted(render, example_chart):
    """Helm copies a parent's `global:` into every subchart; the strict schema must allow it."""
    docs = render({"global": {"imageRegistry": "registry.example"}}, chart=example_chart)
    assert sidecar(docs)[0]["name"] == "cdc-cache"


def test_parent_chart_on_old_kubernetes_is_refused_through_capabilities(refuse, example_chart):
    stderr = refuse({}, chart=example_chart, kube_version="1.28.0")
    assert "nativeSidecar: Kubernetes v1.28.0" in stderr, stderr


# ---------------------------------------------------------------------------------------------
# Parent charts written here: the injection API and two copies in one pod
# ---------------------------------------------------------------------------------------------

CACHE_VALUES = {
    "standalone": {"enabled": False},
    "image": {"repository": "registry.example.com/platform/cdc-cache"},
    "kafka": {"brokers": "kafka-0.kafka:9092"},
}


def parent_chart(root, deployment, values, aliases=("cdc-cache",)):
    """A parent chart with cdc-cache unpacked under charts/ (one dependency per alias)."""
    chart = root / "parent"
    if chart.exists():
        shutil.rmtree(chart)
    (chart / "templates").mkdir(parents=True)
    shutil.copytree(CHART, chart / "charts" / "cdc-cache")
    dependencies = [{"name": "cdc-cache", "version": "0.1.0", "repository": "file://../cdc-cache"}
                    | ({"alias": a} if a != "cdc-cache" else {}) for a in aliases]
    (chart / "Chart.yaml").write_text(yaml.safe_dump(
        {"apiVersion": "v2", "name": "parent", "version": "0.1.0", "dependencies": dependencies}))
    (chart / "values.yaml").write_text(yaml.safe_dump(values))
    (chart / "templates" / "deployment.yaml").write_text(deployment)
    return chart


ONE_COPY = """\
{{- $cdc := dict "Values" (index .Values "cdc-cache") "Release" .Release "Capabilities" .Capabilities }}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: shop
spec:
  progressDeadlineSeconds: {{ include "cdc-cache.progressDeadlineSeconds" $cdc }}
  selector:
    matchLabels: {app: shop}
  template:
    {{- include "cdc-cache.inject" (dict "cdc" $cdc "pod" (.Values.pod | deepCopy)) | nindent 4 }}
"""

EXISTING_POD = {
    "metadata": {"labels": {"app": "shop"}, "annotations": {"prometheus.io/scrape": "true"}},
    "spec": {
        "terminationGracePeriodSeconds": 60,
        "securityContext": {"runAsUser": 10001, "fsGroup": 3000},
        "initContainers": [{"name": "migrate", "image": "shop:1", "args": ["migrate"]}],
        "containers": [
            {"name": "shop", "image": "shop:1", "env": [{"name": "LOG", "value": "info"}],
             "ports": [{"name": "http", "containerPort": 8080}],
             "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}]},
            {"name": "worker", "image": "shop:1"},
        ],
        "volumes": [{"name": "tmp", "emptyDir": {}}],
    },
}


@pytest.fixture
def parent(tmp_path, values_file):
    """Renders a parent chart written here; returns the parsed, validated documents."""

    def run(values, deployment=ONE_COPY, aliases=("cdc-cache",), check=True, kube_version=KUBE_VERSION,
            release="shop"):
        chart = parent_chart(tmp_path, deployment, values, aliases)
        result = helm("template", release, chart, "--namespace", "shop", "--kube-version", kube_version,
                      check=check)
        if not check:
            assert result.returncode != 0, f"accepted:\n{result.stdout[:2000]}"
            return result.stderr
        docs = load_all(result.stdout)
        validate(docs)
        return docs

    return run


def test_inject_merges_into_an_existing_pod_and_keeps_what_it_has(parent):
    docs = parent({"pod": EXISTING_POD, "cdc-cache": merge(CACHE_VALUES, UNIX, {"topics": [{"topic": "orders"}]})})
    template = pod_template(docs)
    spec = template["spec"]
    # Native: after the pod's own init containers (they run first, then the bootstrap).
    assert [c["name"] for c in spec["initContainers"]] == ["migrate", "cdc-cache"]
    assert [c["name"] for c in spec["containers"]] == ["shop", "worker"]
    for name in ("shop", "worker"):
        app = app_container(docs, name)
        assert env_of(app)["CDC_CACHE_ADDR"] == "unix:/var/run/cdc-cache/grpc.sock"
        assert {"name": "cdc-cache-socket", "mountPath": "/var/run/cdc-cache"} in app["volumeMounts"]
    assert env_of(app_container(docs, "shop"))["LOG"] == "info"
    assert [v["name"] for v in spec["volumes"]] == ["tmp", "cdc-cache-socket", "cdc-cache-snapshots"]
    # The pod's own settings win where they suffice.
    assert spec["securityContext"] == {"runAsUser": 10001, "fsGroup": 3000}
    assert spec["terminationGracePeriodSeconds"] == 60
    assert spec["enableServiceLinks"] is False
    assert template["metadata"]["labels"] == {"app": "shop", "cdc-cache/cdc-cache": "shop"}
    assert template["metadata"]["annotations"] == {
        "prometheus.io/scrape": "true", "kubectl.kubernetes.io/default-container": "shop"}
    assert one(docs, "Deployment")["spec"]["progressDeadlineSeconds"] == BUDGET + 600


def test_inject_options_position_app_containers_and_kept_env(parent):
    pod = merge(EXISTING_POD)
    pod["spec"]["containers"][0]["env"].append({"name": "CDC_CACHE_ADDR", "value": "unix:/custom"})
    pod["metadata"]["annotations"]["kubectl.kubernetes.io/default-container"] = "worker"
    docs = parent({"pod": pod, "cdc-cache": merge(CACHE_VALUES, {
        "topics": [{"topic": "orders"}],
        "inject": {"initContainerPosition": "first", "appContainers": ["shop"]}})})
    spec = pod_spec(docs)
    assert [c["name"] for c in spec["initContainers"]] == ["cdc-cache", "migrate"]
    assert env_of(app_container(docs, "shop"))["CDC_CACHE_ADDR"] == "unix:/custom"  # the parent's wins
    assert "env" not in app_container(docs, "worker")
    assert pod_template(docs)["metadata"]["annotations"]["kubectl.kubernetes.io/default-container"] == "worker"


def test_inject_classic_places_the_sidecar_before_the_first_app_container(parent):
    docs = parent({"pod": EXISTING_POD, "cdc-cache": merge(CACHE_VALUES, CLASSIC, {"topics": [{"topic": "orders"}]})})
    spec = pod_spec(docs)
    assert [c["name"] for c in spec["initContainers"]] == ["migrate"]
    assert [c["name"] for c in spec["containers"]] == ["cdc-cache", "shop", "worker"]


@pytest.mark.parametrize("change, expected", [
    (lambda pod: pod["spec"]["volumes"].append({"name": "cdc-cache-socket", "emptyDir": {}}),
     "already has a volume named cdc-cache-socket"),
    (lambda pod: pod["spec"]["volumes"].append({"name": "cdc-cache-snapshots", "emptyDir": {}}),
     "already has a volume named cdc-cache-snapshots"),
    (lambda pod: pod["spec"]["containers"].append({"name": "cdc-cache", "image": "x"}),
     "already has a container named cdc-cache"),
    (lambda pod: pod["spec"]["containers"][0]["volumeMounts"].append(
        {"name": "tmp", "mountPath": "/var/run/cdc-cache"}), "already mounts /var/run/cdc-cache"),
    (lambda pod: pod["spec"].update(terminationGracePeriodSeconds=10), "terminationGracePeriodSeconds 10"),
    (lambda pod: pod["spec"].update(containers=[]), "no containers"),
])
def test_inject_refuses_collisions_naming_them(parent, change, expected):
    pod = merge(EXISTING_POD)
    change(pod)
    stderr = parent({"pod": pod, "cdc-cache": merge(CACHE_VALUES, UNIX, {"topics": [{"topic": "orders"}]})},
                    check=False)
    assert expected in stderr, stderr


TWO_COPIES = """\
{{- $orders := dict "Values" (index .Values "orders-cache") "Release" .Release "Capabilities" .Capabilities }}
{{- $prices := dict "Values" (index .Values "prices-cache") "Release" .Release "Capabilities" .Capabilities }}
{{- $pod := .Values.pod | deepCopy }}
{{- $pod = include "cdc-cache.inject" (dict "cdc" $orders "pod" $pod) | fromYaml }}
{{- $pod = include "cdc-cache.inject" (dict "cdc" $prices "pod" $pod) | fromYaml }}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: shop
spec:
  progressDeadlineSeconds: {{ include "cdc-cache.progressDeadlineSeconds" (list $orders $prices) }}
  selector:
    matchLabels: {app: shop}
  template:
    {{- toYaml $pod | nindent 4 }}
"""


def two_copies(native=True, transport=UNIX, monitoring=MONITORING, prices_port=9465):
    common = merge(CACHE_VALUES, {"nativeSidecar": native}, transport, monitoring,
                   {"networkPolicy": {"enabled": True}})
    return {
        "pod": EXISTING_POD,
        "orders-cache": merge(common, {"instanceName": "orders-cache", "topics": [{"topic": "orders"}]}),
        "prices-cache": merge(common, {"instanceName": "prices-cache", "topics": [{"topic": "prices"}],
                                       "admin": {"port": prices_port},
                                       "probes": {"startup": {"failureThreshold": 360}}}),
    }


@pytest.mark.parametrize("native", [True, False])
def test_two_copies_in_one_pod_keep_every_name_apart(parent, native):
    transport = UNIX if native else {"grpcListen": "127.0.0.1:50051"}
    values = two_copies(native, transport)
    if not native:
        values["prices-cache"]["grpcListen"] = "127.0.0.1:50052"
    docs = parent(values, deployment=TWO_COPIES, aliases=("orders-cache", "prices-cache"))
    spec = pod_spec(docs)  # validate() has already refused duplicate names, ports, env and mounts
    where = spec["initContainers"] if native else spec["containers"]
    caches = [c for c in where if c["name"] in ("orders-cache", "prices-cache")]
    assert [c["name"] for c in caches] == ["orders-cache", "prices-cache"]
    port_names = [c["ports"][0]["name"] for c in caches]
    assert len(set(port_names)) == 2 and all(len(n) <= 15 and PORT_NAME.match(n) for n in port_names)
    app = app_container(docs, "shop")
    env = env_of(app)
    if native:
        assert env["ORDERS_CACHE_ADDR"] == "unix:/var/run/orders-cache/grpc.sock"
        assert env["PRICES_CACHE_ADDR"] == "unix:/var/run/prices-cache/grpc.sock"
        assert [v["name"] for v in spec["volumes"]] == [
            "tmp", "orders-cache-socket", "orders-cache-snapshots", "prices-cache-socket", "prices-cache-snapshots"]
    else:
        assert (env["ORDERS_CACHE_ADDR"], env["PRICES_CACHE_ADDR"]) == ("127.0.0.1:50051", "127.0.0.1:50052")
        # Both classic sidecars come before the app, so both hold it.
        assert [c["name"] for c in spec["containers"]] == ["orders-cache", "prices-cache", "shop", "worker"]
        assert [v["name"] for v in spec["volumes"]] == ["tmp", "orders-cache-snapshots", "prices-cache-snapshots"]
    # Each copy keeps its snapshots in a volume and directory of its own, mounted in itself only.
    snapshot_mounts = {c["name"]: [m for m in c["volumeMounts"] if m["name"].endswith("-snapshots")] for c in caches}
    assert snapshot_mounts == {
        "orders-cache": [{"name": "orders-cache-snapshots", "mountPath": "/var/lib/orders-cache"}],
        "prices-cache": [{"name": "prices-cache-snapshots", "mountPath": "/var/lib/prices-cache"}],
    }
    assert {c["name"]: env_of(c)["CDC_CACHE_SNAPSHOT_DIR"] for c in caches} == {
        "orders-cache": "/var/lib/orders-cache", "prices-cache": "/var/lib/prices-cache"}
    assert not any(m["name"].endswith("-snapshots") for c in spec["containers"] if c["name"] in ("shop", "worker")
                   for m in c.get("volumeMounts", []))
    labels = pod_template(docs)["metadata"]["labels"]
    assert labels["cdc-cache/orders-cache"] == labels["cdc-cache/prices-cache"] == "shop"
    # Monitoring and policy objects: one per copy, distinctly named, each scraping its own port.
    for kind in ("PodMonitor", "PrometheusRule", "ConfigMap", "NetworkPolicy"):
        names = sorted(d["metadata"]["name"] for d in kinds(docs, kind))
        assert len(names) == 2 and len(set(names)) == 2, (kind, names)
    monitors = {d["metadata"]["name"]: d["spec"] for d in kinds(docs, "PodMonitor")}
    assert monitors["shop-orders-cache"]["podMetricsEndpoints"][0]["port"] == port_names[0]
    assert monitors["shop-prices-cache"]["podMetricsEndpoints"][0]["port"] == port_names[1]
    assert monitors["shop-prices-cache"]["selector"]["matchLabels"] == {"cdc-cache/prices-cache": "shop"}
    dashboards = [json.loads(v) for d in kinds(docs, "ConfigMap") for v in d["data"].values()]
    assert len({d["uid"] for d in dashboards}) == 2
    files = [k for d in kinds(docs, "ConfigMap") for k in d["data"]]
    assert len(set(files)) == 2
    # The copies bootstrap one after the other: the pod needs both budgets.
    assert one(docs, "Deployment")["spec"]["progressDeadlineSeconds"] == 10 * 180 + 10 * 360 + 600


def test_two_copies_on_one_admin_port_are_refused(parent):
    values = two_copies(prices_port=ADMIN_PORT)
    stderr = parent(values, deployment=TWO_COPIES, aliases=("orders-cache", "prices-cache"), check=False)
    assert "admin.port: container orders-cache already uses port 9464" in stderr, stderr


def test_two_copies_with_one_instance_name_are_refused(parent):
    values = two_copies()
    values["prices-cache"]["instanceName"] = "orders-cache"
    stderr = parent(values, deployment=TWO_COPIES, aliases=("orders-cache", "prices-cache"), check=False)
    assert "already has a container named orders-cache" in stderr, stderr


DEADLINES = """\
{{- $orders := dict "Values" (index .Values "orders-cache") "Release" .Release "Capabilities" .Capabilities }}
{{- $prices := dict "Values" (index .Values "prices-cache") "Release" .Release "Capabilities" .Capabilities }}
apiVersion: v1
kind: ConfigMap
metadata:
  name: deadlines
data:
  orders: {{ include "cdc-cache.progressDeadlineSeconds" $orders | quote }}
  orders-list: {{ include "cdc-cache.progressDeadlineSeconds" (list $orders) | quote }}
  both: {{ include "cdc-cache.progressDeadlineSeconds" (list $orders $prices) | quote }}
"""


def test_progress_deadline_of_several_copies_is_the_sum_of_their_budgets(parent):
    """A native sidecar's startup probe gates the next init container (a classic one's hold, the next
    container), so two copies bootstrap one after the other."""
    values = two_copies(monitoring={})
    docs = parent(values, deployment=DEADLINES, aliases=("orders-cache", "prices-cache"))
    data = one(docs, "ConfigMap")["data"]
    assert data == {"orders": str(BUDGET + 600), "orders-list": str(BUDGET + 600),
                    "both": str(BUDGET + 10 * 360 + 600)}
    # An explicit deadline in either copy is taken as the Deployment's (the largest, if both set one).
    values["prices-cache"]["standalone"]["progressDeadlineSeconds"] = 9000
    data = one(parent(values, deployment=DEADLINES, aliases=("orders-cache", "prices-cache")), "ConfigMap")["data"]
    assert data["both"] == "9000" and data["orders"] == str(BUDGET + 600)


# Two long instance names (40 characters, the schema's limit) in a long release (53, Helm's limit):
# <release>-<instanceName> is 94 characters and the two differ only in the last one.
LONG_RELEASE = "orders-platform-production-eu-central-1-blue-green-01"
LONG_INSTANCES = ("orders-cache-from-the-primary-cluster-aa", "orders-cache-from-the-primary-cluster-bb")


def test_two_copies_with_long_names_keep_their_objects_apart(parent):
    assert len(LONG_RELEASE) == 53 and all(len(i) == 40 for i in LONG_INSTANCES)
    values = two_copies()
    for alias, instance in zip(("orders-cache", "prices-cache"), LONG_INSTANCES):
        values[alias]["instanceName"] = instance
    docs = parent(values, deployment=TWO_COPIES, aliases=("orders-cache", "prices-cache"), release=LONG_RELEASE)
    for kind in ("PodMonitor", "PrometheusRule", "NetworkPolicy", "ConfigMap"):
        names = [d["metadata"]["name"] for d in kinds(docs, kind)]
        assert len(names) == 2 and len(set(names)) == 2, (kind, names)
        limit = 63 + len("-dashboard") if kind == "ConfigMap" else 63
        assert all(len(n) <= limit and re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", n) for n in names), names
    monitor_names = sorted(d["metadata"]["name"] for d in kinds(docs, "PodMonitor"))
    # Cut to at most 54 characters (no dash at the cut) and suffixed with 8 hex of the full name's hash.
    assert all(n.startswith(LONG_RELEASE) and re.fullmatch(r"[-a-z0-9]{1,54}[a-z0-9]-[0-9a-f]{8}", n)
               for n in monitor_names), monitor_names
    # The release-scoped rules and dashboards select on the PodMonitor's job, so they stay apart too.
    exprs = {d["metadata"]["name"]: str(d["spec"]) for d in kinds(docs, "PrometheusRule")}
    for name, text in exprs.items():
        assert f'job="shop/{name}"' in text


def test_instance_name_contained_in_the_release_name_does_not_shorten_it(parent):
    """`contains` made release orders-cache's copies orders-cache and cache both orders-cache."""
    values = two_copies()
    values["orders-cache"]["instanceName"] = "orders-cache"
    values["prices-cache"]["instanceName"] = "cache"
    docs = parent(values, deployment=TWO_COPIES, aliases=("orders-cache", "prices-cache"), release="orders-cache")
    assert sorted(d["metadata"]["name"] for d in kinds(docs, "PodMonitor")) == ["orders-cache", "orders-cache-cache"]


@pytest.mark.parametrize("release, instance, expected", [
    ("shop", "cdc-cache", "shop-cdc-cache"),
    ("cdc-cache", "cdc-cache", "cdc-cache"),                      # equal: not repeated
    ("orders-cdc-cache", "cdc-cache", "orders-cdc-cache-cdc-cache"),  # a suffix is not enough
    ("cdc-cache-orders", "cdc-cache", "cdc-cache-orders-cdc-cache"),
])
def test_fullname_shortens_only_an_exact_match(render, release, instance, expected):
    docs = render(merge(BASE, {"instanceName": instance}), release=release)
    assert one(docs, "Deployment")["metadata"]["name"] == expected


SMALL_TEMPLATES = """\
{{- $cdc := dict "Values" (index .Values "cdc-cache") "Release" .Release "Capabilities" .Capabilities }}
apiVersion: v1
kind: Pod
metadata:
  name: shop
spec:
  initContainers:
    {{- include "cdc-cache.initContainers" $cdc | nindent 4 }}
  containers:
    - name: shop
      image: shop:1
  volumes:
    {{- include "cdc-cache.volumes" $cdc | nindent 4 }}
"""


def test_old_kubernetes_is_refused_through_the_smaller_templates_too(parent):
    values = {"cdc-cache": merge(CACHE_VALUES, {"topics": [{"topic": "orders"}]})}
    stderr = parent(values, deployment=SMALL_TEMPLATES, check=False, kube_version="1.28.0")
    assert "nativeSidecar: Kubernetes v1.28.0 has no native sidecars" in stderr, stderr
    docs = parent(values, deployment=SMALL_TEMPLATES)
    assert one(docs, "Pod")["spec"]["initContainers"][0]["restartPolicy"] == "Always"


SCOPED = """\
apiVersion: v1
kind: ConfigMap
metadata:
  name: exprs
data:
{{- range $i, $expr := .Values.exprs }}
  e{{ $i }}: {{ include "cdc-cache.scopeExpr" (dict "expr" $expr "matcher" `job="ns/x"`) | quote }}
{{- end }}
"""


def test_scoping_keeps_metric_names_with_digits_and_colons_whole(parent):
    cases = {
        "cdc_cache_p99_latency_seconds > 0": 'cdc_cache_p99_latency_seconds{job="ns/x"} > 0',
        'cdc_cache_records:rate5m{table="a"}': 'cdc_cache_records:rate5m{job="ns/x", table="a"}',
        "rate(process_cpu_seconds_total[5m])": 'rate(process_cpu_seconds_total{job="ns/x"}[5m])',
        "cdc_cache_v2_ready offset 5m": 'cdc_cache_v2_ready{job="ns/x"} offset 5m',
        "max(cdc_cache_ready)": 'max(cdc_cache_ready{job="ns/x"})',
        "cdc_cache_ready": 'cdc_cache_ready{job="ns/x"}',
        "up == 0": "up == 0",
    }
    values = {"exprs": list(cases), "cdc-cache": merge(CACHE_VALUES, {"topics": [{"topic": "orders"}]})}
    data = one(parent(values, deployment=SCOPED), "ConfigMap")["data"]
    assert [data[f"e{i}"] for i in range(len(cases))] == list(cases.values())
