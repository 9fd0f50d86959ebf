"""Helm chart tests: the real `helm` renders the chart and the example parent chart for a matrix
of values; every built-in object is validated strictly against the Kubernetes 1.33 schemas, and the
parsed objects are checked for what the sidecar needs (placement, env, probes, security, secrets).

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

# Kinds kubernetes-validate has no schema for; their structure is asserted in the tests below.
CRD_KINDS = {"PodMonitor", "PrometheusRule"}

# A password that only ever lives in a Secret: it must never reach values output or errors.
SENTINEL = "s3ntinel-Pa55word-do-not-inline"

BASE = {
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
            "queued.max.messages.kbytes": 16384,
            "socket.keepalive.enable": True,
        },
        "secretOptions": [{"option": "sasl.password", "secretName": "kafka-creds", "secretKey": "password"}],
    }
}

TLS = {
    "kafka": {
        "options": {"security.protocol": "SSL"},
        "tls": {
            "enabled": True,
            "secretName": "kafka-client-tls",
            "caKey": "ca.crt",
            "certKey": "tls.crt",
            "keyKey": "tls.key",
        },
        "secretOptions": [{"option": "ssl.key.password", "secretName": "kafka-client-tls", "secretKey": "key-password"}],
    }
}

MONITORING = {
    "monitoring": {
        "podMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
        "prometheusRule": {"enabled": True},
        "dashboard": {"enabled": True, "annotations": {"grafana_folder": "Kafka"}},
    }
}


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


def template(chart, values_path=None, release="r1", check=True, extra=()):
    args = ["template", release, chart, "--namespace", "shop", "--kube-version", KUBE_VERSION, *extra]
    if values_path is not None:
        args += ["--values", values_path]
    return helm(*args, check=check)


@pytest.fixture
def render(values_file):
    """Renders a chart with values; returns the parsed documents, each validated."""

    def run(values, chart=CHART, release="r1"):
        out = template(chart, values_file(values), release=release).stdout
        docs = [d for d in yaml.safe_load_all(out) if d]
        validate(docs)
        return docs

    return run


@pytest.fixture
def refuse(values_file):
    """Renders values that must be refused; returns helm's error output."""

    def run(values, chart=CHART):
        result = template(chart, values_file(values), check=False)
        assert result.returncode != 0, f"accepted:\n{result.stdout[:2000]}"
        return result.stderr

    return run


def validate(docs):
    import kubernetes_validate

    for doc in docs:
        if doc["kind"] in CRD_KINDS:
            check_crd(doc)
        else:
            # strict: unknown fields fail too (a misspelled probe field would otherwise vanish).
            kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)


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
    else:
        assert set(doc["spec"]) == {"groups"}
        for group in doc["spec"]["groups"]:
            assert set(group) <= {"name", "interval", "rules"}
            for rule in group["rules"]:
                assert set(rule) <= {"alert", "record", "expr", "for", "labels", "annotations"}
                assert ("alert" in rule) != ("record" in rule) and rule["expr"]


# ---------------------------------------------------------------------------------------------
# Accessors
# ---------------------------------------------------------------------------------------------


def kinds(docs, kind):
    return [d for d in docs if d["kind"] == kind]


def one(docs, kind):
    found = kinds(docs, kind)
    assert len(found) == 1, f"expected one {kind}, got {[d['metadata']['name'] for d in found]}"
    return found[0]


def pod_spec(docs):
    return one(docs, "Deployment")["spec"]["template"]["spec"]


def sidecar(docs):
    """The cdc-cache container wherever it is, and whether it is an init container."""
    spec = pod_spec(docs)
    found = [(c, True) for c in spec.get("initContainers", []) if c["name"] == "cdc-cache"]
    found += [(c, False) for c in spec["containers"] if c["name"] == "cdc-cache"]
    assert len(found) == 1, f"expected one cdc-cache container, got {len(found)}"
    return found[0]


def env_of(container):
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def app_container(docs, name="app"):
    return next(c for c in pod_spec(docs)["containers"] if c["name"] == name)


# ---------------------------------------------------------------------------------------------
# Lint
# ---------------------------------------------------------------------------------------------


def test_chart_lints_strictly(values_file):
    for values in (BASE, merge(BASE, SASL, MONITORING), merge(BASE, TLS, {"nativeSidecar": False})):
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


def test_image_tag_follows_app_version():
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert (chart["name"], chart["version"], chart["apiVersion"], chart["type"]) == (
        "cdc-cache", "0.1.0", "v2", "application")
    assert values["image"]["tag"] == chart["appVersion"]


# ---------------------------------------------------------------------------------------------
# Every scenario renders valid Kubernetes objects with the invariants that always hold
# ---------------------------------------------------------------------------------------------

SCENARIOS = {
    "native-one-topic": merge(BASE, {"topics": [{"topic": "customers"}]}),
    "native-several-topics": BASE,
    "classic": merge(BASE, {"nativeSidecar": False}),
    "native-sasl-secret": merge(BASE, SASL),
    "classic-sasl-secret": merge(BASE, SASL, {"nativeSidecar": False}),
    "native-tls-files": merge(BASE, TLS),
    "classic-tls-monitoring": merge(BASE, TLS, MONITORING, {"nativeSidecar": False}),
    "native-monitoring": merge(BASE, MONITORING),
    "unix-socket": merge(BASE, {"grpcListen": "unix:/var/run/cdc-cache/grpc.sock"}),
    "digest-pull-secrets": merge(BASE, {
        "image": {"digest": "sha256:" + "a" * 64},
        "imagePullSecrets": [{"name": "registry"}],
        "extraEnv": [{"name": "RUST_BACKTRACE", "value": "1"}],
        "logFilter": "info,cdc_cache=debug",
    }),
}


@pytest.mark.parametrize("name", SCENARIOS)
def test_scenario_is_valid_and_hardened(render, name):
    docs = render(SCENARIOS[name])
    container, _ = sidecar(docs)
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

    # The admin port is the only port the sidecar opens to the pod network.
    assert container["ports"] == [{"name": "metrics", "containerPort": ADMIN_PORT, "protocol": "TCP"}]
    env = env_of(container)
    assert env["CDC_CACHE_METRICS_LISTEN"] == f"0.0.0.0:{ADMIN_PORT}"
    assert env["CDC_CACHE_GRPC_LISTEN"].startswith(("127.0.0.1:", "unix:/"))
    assert "CDC_CACHE_ALLOW_REMOTE" not in env
    assert all(p["containerPort"] != 50051 for c in spec["containers"] for p in c.get("ports", []))

    # Liveness never depends on readiness: /healthz answers during bootstrap.
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": ADMIN_PORT}
    assert container["readinessProbe"]["grpc"] == {"port": ADMIN_PORT, "service": ""}

    assert spec["automountServiceAccountToken"] is False
    assert spec["enableServiceLinks"] is False
    assert one(docs, "ServiceAccount")["automountServiceAccountToken"] is False
    assert spec["terminationGracePeriodSeconds"] >= 10 + 12

    # Every env var carries a literal value or a secretKeyRef, never both; secrets only by reference.
    for item in container["env"]:
        assert ("value" in item) != ("valueFrom" in item), item
        if re.search("PASSWORD|SECRET", item["name"]):
            assert "secretKeyRef" in item["valueFrom"], item


# ---------------------------------------------------------------------------------------------
# Placement and probes
# ---------------------------------------------------------------------------------------------


def test_native_sidecar_is_a_restartable_init_container_gating_the_app(render):
    docs = render(BASE)
    container, is_init = sidecar(docs)
    assert is_init and container["restartPolicy"] == "Always"
    assert [c["name"] for c in pod_spec(docs)["containers"]] == ["app"]
    startup = container["startupProbe"]
    assert startup["grpc"] == {"port": ADMIN_PORT, "service": ""}
    # A long bootstrap is allowed before kubelet gives up: 30 minutes by default.
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 30 * 60


def test_bootstrap_allowance_is_configurable(render):
    docs = render(merge(BASE, {"probes": {"startup": {"failureThreshold": 720}}}))
    startup = sidecar(docs)[0]["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] == 2 * 60 * 60


def test_classic_sidecar_is_a_regular_container_with_a_readiness_probe(render):
    docs = render(merge(BASE, {"nativeSidecar": False}))
    container, is_init = sidecar(docs)
    assert not is_init
    assert "restartPolicy" not in container and "startupProbe" not in container
    assert "initContainers" not in pod_spec(docs)
    assert [c["name"] for c in pod_spec(docs)["containers"]] == ["cdc-cache", "app"]
    assert container["readinessProbe"]["grpc"] == {"port": ADMIN_PORT, "service": ""}
    # Liveness runs during bootstrap here: a hung process gets a minute before a restart.
    liveness = container["livenessProbe"]
    assert liveness["initialDelaySeconds"] >= 10
    assert liveness["periodSeconds"] * liveness["failureThreshold"] >= 60


# ---------------------------------------------------------------------------------------------
# Configuration through env
# ---------------------------------------------------------------------------------------------


def test_env_carries_the_values(render):
    docs = render(merge(BASE, {"format": "debezium", "shutdownGrace": "20s", "onDecodeError": "fail"}))
    env = env_of(sidecar(docs)[0])
    assert env == {
        "CDC_CACHE_BROKERS": "kafka-1:9092,kafka-2:9092",
        "CDC_CACHE_TOPICS": "dbz.public.orders=orders:debezium,customers",
        "CDC_CACHE_FORMAT": "debezium",
        "CDC_CACHE_GRPC_LISTEN": "127.0.0.1:50051",
        "CDC_CACHE_METRICS_LISTEN": "0.0.0.0:9464",
        "CDC_CACHE_MAX_MULTIGET_KEYS": "10000",
        "CDC_CACHE_GRPC_MAX_MESSAGE_BYTES": "67108864",
        "CDC_CACHE_SHUTDOWN_GRACE": "20s",
        "CDC_CACHE_PARTITION_DISCOVERY_INTERVAL": "30s",
        "CDC_CACHE_ON_DECODE_ERROR": "fail",
        "CDC_CACHE_LOG_FORMAT": "json",
    }
    assert sidecar(docs)[0]["args"] == ["serve"]
    assert env_of(app_container(docs))["CDC_CACHE_ADDR"] == "127.0.0.1:50051"


@pytest.mark.parametrize("topics, expected", [
    ([{"topic": "customers"}], "customers"),
    ([{"topic": "customers", "table": "clients"}], "customers=clients"),
    ([{"topic": "customers", "format": "raw"}], "customers:raw"),
    ([{"topic": "a", "format": "debezium"}, {"topic": "b", "table": "bee"}, {"topic": "c"}], "a:debezium,b=bee,c"),
])
def test_topics_render_as_topic_table_format(render, topics, expected):
    docs = render(merge(BASE, {"topics": topics}))
    assert env_of(sidecar(docs)[0])["CDC_CACHE_TOPICS"] == expected


def test_kafka_options_become_one_env_var_each_and_secrets_come_from_secrets(render):
    docs = render(merge(BASE, SASL))
    env = env_of(sidecar(docs)[0])
    kafka = {k: v for k, v in env.items() if k.startswith("CDC_CACHE_KAFKA_")}
    assert kafka == {
        "CDC_CACHE_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "CDC_CACHE_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "CDC_CACHE_KAFKA_SASL_USERNAME": "orders-reader",
        # Numbers and booleans are rendered as the strings librdkafka parses.
        "CDC_CACHE_KAFKA_QUEUED_MAX_MESSAGES_KBYTES": "16384",
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


def test_tls_files_are_mounted_read_only_from_the_secret(render):
    docs = render(merge(BASE, TLS))
    container, _ = sidecar(docs)
    spec = pod_spec(docs)
    env = env_of(container)
    assert env["CDC_CACHE_KAFKA_SSL_CA_LOCATION"] == "/etc/cdc-cache/tls/ca.crt"
    assert env["CDC_CACHE_KAFKA_SSL_CERTIFICATE_LOCATION"] == "/etc/cdc-cache/tls/tls.crt"
    assert env["CDC_CACHE_KAFKA_SSL_KEY_LOCATION"] == "/etc/cdc-cache/tls/tls.key"
    assert env["CDC_CACHE_KAFKA_SSL_KEY_PASSWORD"] == {
        "secretKeyRef": {"name": "kafka-client-tls", "key": "key-password"}}
    assert container["volumeMounts"] == [
        {"name": "cdc-cache-tls", "mountPath": "/etc/cdc-cache/tls", "readOnly": True}]
    volume = next(v for v in spec["volumes"] if v["name"] == "cdc-cache-tls")
    assert volume["secret"]["secretName"] == "kafka-client-tls"
    assert volume["secret"]["items"] == [
        {"key": "ca.crt", "path": "ca.crt"},
        {"key": "tls.crt", "path": "tls.crt"},
        {"key": "tls.key", "path": "tls.key"},
    ]
    # Only the sidecar sees the client key.
    assert "volumeMounts" not in app_container(docs)


def test_unix_socket_shares_an_emptydir_with_the_app(render):
    docs = render(merge(BASE, {"grpcListen": "unix:/var/run/cdc-cache/grpc.sock"}))
    container, _ = sidecar(docs)
    mount = {"name": "cdc-cache-socket", "mountPath": "/var/run/cdc-cache"}
    assert mount in container["volumeMounts"]
    assert app_container(docs)["volumeMounts"] == [mount]
    assert {"name": "cdc-cache-socket", "emptyDir": {"sizeLimit": "1Mi"}} in pod_spec(docs)["volumes"]
    assert env_of(app_container(docs))["CDC_CACHE_ADDR"] == "unix:/var/run/cdc-cache/grpc.sock"


def test_no_volumes_when_none_are_needed(render):
    docs = render(BASE)
    assert "volumes" not in pod_spec(docs)
    assert "volumeMounts" not in sidecar(docs)[0]


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
# Monitoring
# ---------------------------------------------------------------------------------------------


def test_monitoring_is_off_by_default(render):
    docs = render(BASE)
    assert {d["kind"] for d in docs} == {"Deployment", "ServiceAccount"}


def test_pod_monitor_selects_the_pods_with_the_sidecar(render):
    docs = render(merge(BASE, MONITORING))
    monitor = one(docs, "PodMonitor")
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert monitor["spec"]["podMetricsEndpoints"] == [
        {"port": "metrics", "path": "/metrics", "interval": "30s", "scrapeTimeout": "10s"}]
    pod_labels = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()


def test_prometheus_rule_carries_the_alert_file_unchanged(render):
    docs = render(merge(BASE, MONITORING))
    rules = yaml.safe_load((CHART / "files" / "cdc-cache-alerts.rules.yaml").read_text())
    groups = one(docs, "PrometheusRule")["spec"]["groups"]
    assert groups == rules["groups"]
    assert "cdc-cache" in [g["name"] for g in groups]
    # Prometheus' own templates reach Prometheus, not Helm's template engine.
    assert any("{{ $labels." in str(r.get("annotations")) for g in groups for r in g["rules"])


def test_dashboard_config_map_carries_the_dashboard(render):
    docs = render(merge(BASE, MONITORING))
    config_map = one(docs, "ConfigMap")
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert config_map["metadata"]["annotations"] == {"grafana_folder": "Kafka"}
    dashboard = json.loads((CHART / "files" / "cdc-cache-dashboard.json").read_text())
    assert json.loads(config_map["data"]["cdc-cache.json"]) == dashboard


# ---------------------------------------------------------------------------------------------
# Refused values
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("override, expected", [
    ({"nativeSidcar": True}, ["nativeSidcar", "not allowed"]),
    ({"topics": "orders"}, ["/topics", "want array"]),
    ({"topics": []}, ["/topics", "minItems"]),
    ({"topics": [{"tpoic": "orders"}]}, ["/topics/0", "tpoic"]),
    ({"topics": [{"topic": "orders", "format": "avro"}]}, ["/topics/0/format", "raw", "debezium"]),
    ({"topics": [{"topic": "bad topic"}]}, ["/topics/0/topic"]),
    ({"format": "avro"}, ["/format", "raw", "debezium"]),
    ({"logFormat": "xml"}, ["/logFormat", "json", "text"]),
    ({"onDecodeError": "ignore"}, ["/onDecodeError", "skip", "fail"]),
    ({"kafka": {"brokers": ""}}, ["/kafka/brokers"]),
    ({"kafka": {"brokers": "kafka-1:9092, kafka-2:9092"}}, ["/kafka/brokers"]),
    ({"kafka": {"borkers": "kafka:9092"}}, ["borkers", "not allowed"]),
    ({"kafka": {"options": {"SASL_MECHANISM": "PLAIN"}}}, ["SASL_MECHANISM"]),
    ({"kafka": {"secretOptions": [{"option": "sasl.password", "secretName": "s"}]}},
     ["/kafka/secretOptions/0", "secretKey"]),
    ({"kafka": {"tls": {"enabled": "yes"}}}, ["/kafka/tls/enabled", "want boolean"]),
    ({"nativeSidecar": "true"}, ["/nativeSidecar", "want boolean"]),
    ({"maxMultigetKeys": "many"}, ["/maxMultigetKeys", "want integer"]),
    ({"grpcMaxMessageBytes": 10}, ["/grpcMaxMessageBytes", "minimum"]),
    ({"shutdownGrace": 10}, ["/shutdownGrace", "want string"]),
    ({"shutdownGrace": "10 seconds"}, ["/shutdownGrace"]),
    ({"grpcListen": "0.0.0.0:50051"}, ["/grpcListen"]),
    ({"probes": {"startup": {"failureTreshold": 10}}}, ["/probes/startup", "failureTreshold"]),
    ({"monitoring": {"podMonitor": {"enable": True}}}, ["/monitoring/podMonitor", "enable"]),
    ({"resources": {"limit": {"memory": "1Gi"}}}, ["/resources", "limit"]),
])
def test_schema_refuses_bad_values_naming_them(refuse, override, expected):
    stderr = refuse(merge(BASE, override))
    for text in expected:
        assert text in stderr, stderr


@pytest.mark.parametrize("override, expected", [
    ({"kafka": {"options": {"auto.offset.reset": "latest"}}}, "kafka option auto.offset.reset: set by cdc-cache itself"),
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
    ({"kafka": {"tls": {"enabled": True, "secretName": "tls"}}}, "security.protocol to SSL or SASL_SSL"),
    ({"kafka": {"options": {"security.protocol": "SSL"}, "tls": {"enabled": True}}}, "kafka.tls.secretName"),
    ({"kafka": {"options": {"security.protocol": "SSL", "ssl.ca.location": "/x"},
                "tls": {"enabled": True, "secretName": "tls"}}}, "kafka option ssl.ca.location: set by kafka.tls"),
    ({"app": {"image": ""}}, "app.image"),
    ({"app": {"ports": [{"name": "metrics", "containerPort": 9090}]}}, "app.ports: the port name metrics"),
])
def test_templates_refuse_what_the_schema_cannot_express(refuse, override, expected):
    assert expected in refuse(merge(BASE, override))


# ---------------------------------------------------------------------------------------------
# The example parent chart
# ---------------------------------------------------------------------------------------------


def test_parent_chart_injects_the_sidecar_from_its_values(render, example_chart):
    docs = render({}, chart=example_chart, release="shop")
    assert {d["kind"] for d in docs} == {"Deployment", "Service"}  # no standalone Deployment
    deployment = one(docs, "Deployment")
    assert deployment["metadata"]["name"] == "shop-orders-app"
    container, is_init = sidecar(docs)
    assert is_init and container["restartPolicy"] == "Always"
    assert container["startupProbe"]["grpc"] == {"port": ADMIN_PORT, "service": ""}
    env = env_of(container)
    assert env["CDC_CACHE_BROKERS"] == "kafka-0.kafka:9092,kafka-1.kafka:9092"
    assert env["CDC_CACHE_TOPICS"] == "dbz.public.orders=orders:debezium,customers"
    assert env["CDC_CACHE_KAFKA_SASL_PASSWORD"] == {
        "secretKeyRef": {"name": "orders-app-kafka", "key": "password"}}
    assert env["CDC_CACHE_KAFKA_SSL_CA_LOCATION"] == "/etc/cdc-cache/tls/ca.crt"
    # The subchart's defaults reach the parent's pods (probes, security) merged with its values.
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["resources"]["limits"]["memory"] == "1Gi"
    assert container["ports"] == [{"name": "metrics", "containerPort": ADMIN_PORT, "protocol": "TCP"}]
    app = app_container(docs, "orders-app")
    assert env_of(app)["CDC_CACHE_ADDR"] == "127.0.0.1:50051"
    spec = pod_spec(docs)
    assert spec["automountServiceAccountToken"] is False
    assert [v["name"] for v in spec["volumes"]] == ["cdc-cache-tls"]
    assert deployment["spec"]["template"]["metadata"]["labels"]["cdc-cache/instance"] == "shop"


def test_parent_chart_classic_sidecar_unix_socket_and_monitoring(render, example_chart):
    values = {"cdc-cache": merge(MONITORING, {
        "nativeSidecar": False,
        "grpcListen": "unix:/var/run/cdc-cache/grpc.sock",
    })}
    docs = render(values, chart=example_chart, release="shop")
    container, is_init = sidecar(docs)
    assert not is_init and "initContainers" not in pod_spec(docs)
    assert [c["name"] for c in pod_spec(docs)["containers"]] == ["cdc-cache", "orders-app"]
    app = app_container(docs, "orders-app")
    assert app["volumeMounts"] == [{"name": "cdc-cache-socket", "mountPath": "/var/run/cdc-cache"}]
    assert env_of(app)["CDC_CACHE_ADDR"] == "unix:/var/run/cdc-cache/grpc.sock"
    # The subchart's monitoring objects render in the parent's release and find its pods.
    monitor = one(docs, "PodMonitor")
    pod_labels = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
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
