"""The Grafana dashboard and the alert rules, against a real sidecar and a real Prometheus.

Starts `cdc-cache demo` (embedded mock Kafka with a live `customers` table), drives gRPC traffic
at it with stubs generated from the proto, scrapes it every second with a real Prometheus server
that also loads the alert rules, then evaluates every query of every dashboard panel and asserts
each returns data. Also checks the dashboard's structure (variables, datasource, label matchers)
without any server.

Needs: the binary (CDC_CACHE_BIN, default target/debug/cdc-cache), /usr/bin/prometheus (or
PROMETHEUS_BIN) and the Python packages grpcio, grpcio-tools, pyyaml, pytest.
"""

import json
import math
import os
import re
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml
from sidecar_process import demo, free_port, generate_stubs, http_get, log_tail, stop

REPO = Path(__file__).resolve().parents[2]
FILES = REPO / "helm" / "cdc-cache" / "files"
DASHBOARD = FILES / "cdc-cache-dashboard.json"
RULES = FILES / "cdc-cache-alerts.rules.yaml"

# Static labels the test Prometheus adds, standing in for Kubernetes service discovery.
NAMESPACE = "demo"
POD = "demo-0"
CONTAINER = "cdc-cache"
DEMO_TABLE = "customers"

# Grafana's interval variables, as the test substitutes them: wide enough to hold several 1 s
# scrapes, so rate() has at least two samples once MIN_SCRAPES have happened.
RATE_WINDOW = "30s"
MIN_SCRAPES = 12

# Metrics that carry a `table` label; every dashboard selector on them must filter by $table.
TABLE_METRICS = {
    "cdc_cache_table_ready",
    "cdc_cache_entries",
    "cdc_cache_data_bytes",
    "cdc_cache_stored_bytes",
    "cdc_cache_compression_ratio",
    "cdc_cache_compression_dictionary_generation",
    "cdc_cache_partition_position",
    "cdc_cache_partition_high_watermark",
    "cdc_cache_partition_lag_records",
    "cdc_cache_last_record_timestamp_seconds",
    "cdc_cache_records_total",
    "cdc_cache_decode_errors_total",
    "cdc_cache_bootstrap_duration_seconds",
    "cdc_cache_kafka_brokers_up",
    "cdc_cache_broker_silence_seconds",
    "cdc_cache_partition_resets_total",
    "cdc_cache_partition_rebuilding",
    "cdc_cache_kafka_errors_total",
    "cdc_cache_key_conflicts_total",
    "cdc_cache_end_offset_requests_total",
    "cdc_cache_watchers",
    "cdc_cache_watchers_dropped_total",
    "cdc_cache_watch_events_total",
    "cdc_cache_watch_history_bytes",
    "cdc_cache_table_problem",
    "cdc_cache_bootstrap_source",
    "cdc_cache_bootstrap_fetched_bytes",
    "cdc_cache_snapshot_last_write_timestamp_seconds",
    "cdc_cache_snapshot_writes_total",
}

# Counters whose series exist only once their event happened (a Kafka error code, a partition
# reset): on a healthy demo their panels are empty, and the scrape does not list them.
EVENT_ONLY_METRICS = {
    "cdc_cache_kafka_errors_total",
    "cdc_cache_partition_resets_total",
    # Only with --snapshot-dir, which the demo does not use.
    "cdc_cache_snapshot_last_write_timestamp_seconds",
    "cdc_cache_snapshot_writes_total",
}

SELECTOR = re.compile(r"\b(cdc_cache_[a-z_]+)(\{[^}]*\})?")
VARIABLE = re.compile(r"\$\{(\w+)(?::[\w]+)?\}|\$(\w+)")


# --------------------------------------------------------------------------- helpers


def load_dashboard():
    with open(DASHBOARD) as f:
        return json.load(f)


def walk_panels(panels):
    """Every panel, including those nested in (collapsed) rows."""
    for panel in panels:
        yield panel
        yield from walk_panels(panel.get("panels", []))


def dashboard_targets(dashboard):
    """(panel title, refId, expr) for every visible query of every panel."""
    found = []
    for panel in walk_panels(dashboard["panels"]):
        for target in panel.get("targets", []):
            if target.get("hide") or not target.get("expr"):
                continue
            found.append((panel.get("title", "?"), target.get("refId", "?"), target["expr"]))
    return found


def substitute(expr, table):
    """Replaces Grafana variables the way Grafana would for one selection; unknown ones fail."""
    values = {
        "__rate_interval": RATE_WINDOW,
        "__interval": "5s",
        "__range": "1m",
        "namespace": NAMESPACE,
        "pod": POD,
        "table": table,
    }

    def replace(match):
        name = match.group(1) or match.group(2)
        if name not in values:
            raise AssertionError(f"unknown dashboard variable ${name} in: {expr}")
        return values[name]

    return VARIABLE.sub(replace, expr)


class PromAPI:
    def __init__(self, base):
        self.base = base

    def call(self, path, params=None):
        """The decoded JSON answer of a POST to the HTTP API (errors included)."""
        data = urllib.parse.urlencode(params or {}).encode()
        request = urllib.request.Request(f"{self.base}{path}", data=data, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                body = response.read().decode()
        except urllib.error.HTTPError as e:
            body = e.read().decode(errors="replace")
        try:
            return json.loads(body)
        except json.JSONDecodeError:
            return {"status": "error", "error": f"not JSON: {body[:500]}"}

    def query(self, expr):
        return self.call("/api/v1/query", {"query": expr})

    def get(self, path):
        status, body = http_get(f"{self.base}{path}")
        assert status == 200, f"GET {path}: {status} {body[:500]}"
        return json.loads(body)


def sample_values(data):
    """The numeric values of an instant query result, whatever its type."""
    kind, result = data["resultType"], data["result"]
    if kind == "vector":
        return [float(sample["value"][1]) for sample in result]
    if kind == "matrix":
        return [float(v) for series in result for _, v in series["values"]]
    if kind == "scalar":
        return [float(result[1])]
    return []


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def sidecar(tmp_path_factory):
    """A running `cdc-cache demo`, ready; yields (grpc address, admin address)."""
    with demo(tmp_path_factory.mktemp("sidecar"), "--update-interval", "200ms") as addresses:
        yield addresses


@pytest.fixture(scope="module")
def stubs(tmp_path_factory):
    """The generated Python modules for cdc_cache.v1: (cache_pb2, cache_pb2_grpc)."""
    return generate_stubs(tmp_path_factory.mktemp("stubs"))


class Traffic:
    """Calls every method (and an unknown table) in a loop until stopped."""

    KEYS = [f'{{"id":{i}}}'.encode() for i in range(1, 101)]

    def __init__(self, grpc_addr, stubs):
        import grpc

        self.grpc = grpc
        self.pb2, pb2_grpc = stubs
        self.channel = grpc.insecure_channel(grpc_addr)
        self.stub = pb2_grpc.CacheStub(self.channel)
        self.errors = []
        self.calls = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="grpc-traffic", daemon=True)

    def round(self, i=0):
        pb2, stub, grpc = self.pb2, self.stub, self.grpc
        status = stub.Status(pb2.StatusRequest(), timeout=5)
        assert status.ready, "Status says not ready after /readyz answered 200"
        for key in self.KEYS[i % 50 : i % 50 + 5]:
            stub.Get(pb2.GetRequest(table="", key=key), timeout=5)
        stub.Get(pb2.GetRequest(table=DEMO_TABLE, key=b'{"id":42}'), timeout=5)
        response = stub.MultiGet(pb2.MultiGetRequest(table="", keys=self.KEYS), timeout=5)
        assert len(response.results) == len(self.KEYS)
        # Fresh reads from Python: everything the broker acknowledged, then at least as fresh.
        latest = pb2.Consistency(latest=True, include_offsets=True, wait_timeout_ms=4000)
        fresh = stub.Get(pb2.GetRequest(table=DEMO_TABLE, key=b'{"id":42}', consistency=latest), timeout=5)
        assert fresh.applied_offsets, "a latest read with include_offsets returns the offsets applied"
        again = pb2.Consistency(min_offsets=dict(fresh.applied_offsets), wait_timeout_ms=4000)
        stub.Get(pb2.GetRequest(table=DEMO_TABLE, key=b'{"id":42}', consistency=again), timeout=5)
        try:
            stub.Get(pb2.GetRequest(table="no-such-table", key=b"k"), timeout=5)
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.NOT_FOUND, f"unknown table answered {e.code()}"
        else:
            raise AssertionError("Get on an unknown table succeeded")
        self.calls += 1

    def _run(self):
        i = 0
        while not self._stop.is_set():
            try:
                self.round(i)
            except Exception as e:  # reported by the tests, not swallowed
                self.errors.append(repr(e))
                if len(self.errors) > 20:
                    return
            i += 1
            self._stop.wait(0.1)

    def start(self):
        self._thread.start()

    def close(self):
        self._stop.set()
        self._thread.join(timeout=10)
        self.channel.close()


@pytest.fixture(scope="module")
def traffic(sidecar, stubs):
    grpc_addr, _ = sidecar
    t = Traffic(grpc_addr, stubs)
    # One synchronous round first: any failure here is reported plainly.
    t.round()
    t.start()
    yield t
    t.close()


@pytest.fixture(scope="module")
def prometheus(sidecar, traffic, tmp_path_factory):
    """A Prometheus server scraping the sidecar every second with the alert rules loaded."""
    binary = os.environ.get("PROMETHEUS_BIN") or (
        "/usr/bin/prometheus" if os.path.exists("/usr/bin/prometheus") else shutil.which("prometheus")
    )
    if not binary or not os.access(binary, os.X_OK):
        pytest.fail("prometheus server not found (apt-get install prometheus, or set PROMETHEUS_BIN)")
    _, admin_addr = sidecar
    tmp = tmp_path_factory.mktemp("prometheus")
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [
            {
                "job_name": "cdc-cache",
                "scrape_interval": "1s",
                "scrape_timeout": "1s",
                "static_configs": [
                    {
                        "targets": [admin_addr],
                        "labels": {"namespace": NAMESPACE, "pod": POD, "container": CONTAINER},
                    }
                ],
            }
        ],
    }
    config_path = tmp / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(config))
    port = free_port()
    log = tmp / "prometheus.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [
                binary,
                f"--config.file={config_path}",
                f"--storage.tsdb.path={tmp / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=tmp,
        )
    api = PromAPI(f"http://127.0.0.1:{port}")
    try:
        deadline = time.monotonic() + 90
        scrapes = 0
        while scrapes < MIN_SCRAPES:
            if process.poll() is not None:
                pytest.fail(f"prometheus exited with {process.returncode}:\n{log_tail(log)}")
            if time.monotonic() > deadline:
                targets = api.get("/api/v1/targets") if scrapes else "(API not up)"
                pytest.fail(
                    f"prometheus did not scrape the sidecar {MIN_SCRAPES} times within 90 s "
                    f"(got {scrapes}); targets: {targets}\n{log_tail(log)}"
                )
            try:
                # Successful scrapes only: a failed one records up=0 but no cdc_cache sample.
                answer = api.query('count_over_time(cdc_cache_ready{job="cdc-cache"}[5m])')
                up = api.query('up{job="cdc-cache"}')
            except OSError:
                time.sleep(0.5)
                continue
            if answer.get("status") == "success" and answer["data"]["result"]:
                healthy = up.get("status") == "success" and any(
                    s["value"][1] == "1" for s in up["data"]["result"]
                )
                scrapes = int(float(answer["data"]["result"][0]["value"][1])) if healthy else 0
            time.sleep(0.5)
        yield api
    finally:
        stop(process)


# --------------------------------------------------------------------------- static checks


def test_dashboard_identity_and_variables():
    d = load_dashboard()
    assert d["uid"] == "cdc-cache"
    assert d["title"] == "cdc-cache"
    assert 36 <= d["schemaVersion"] <= 41
    variables = {v["name"]: v for v in d["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for name in ("namespace", "pod", "table"):
        v = variables[name]
        assert v["type"] == "query", name
        assert v["multi"] and v["includeAll"], f"${name} must be multi-value with All"
        assert v["datasource"]["uid"] == "${datasource}", name
        query = v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
        assert re.fullmatch(rf"label_values\(cdc_cache_\w+(\{{.*\}})?, {name}\)", query), query


def test_every_panel_uses_the_datasource_variable_and_has_a_unique_id():
    d = load_dashboard()
    ids = []
    for panel in walk_panels(d["panels"]):
        ids.append(panel["id"])
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel.get("targets"), f"panel {panel['title']!r} has no query"
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
    assert len(ids) == len(set(ids)), f"duplicate panel ids: {sorted(ids)}"


def test_every_selector_filters_by_the_variables():
    problems = []
    for title, ref, expr in dashboard_targets(load_dashboard()):
        selectors = SELECTOR.findall(expr)
        assert selectors, f"{title} {ref}: no cdc_cache metric in {expr}"
        for metric, matchers in selectors:
            base = re.sub(r"_(bucket|sum|count)$", "", metric)
            wanted = ['namespace=~"$namespace"', 'pod=~"$pod"']
            if base in TABLE_METRICS:
                wanted.append('table=~"$table"')
            missing = [w for w in wanted if w not in matchers]
            if missing:
                problems.append(f"{title} [{ref}] {metric}{matchers}: missing {', '.join(missing)}")
    assert not problems, "selectors without the dashboard variables:\n" + "\n".join(problems)


def test_rules_file_has_the_documented_alerts():
    with open(RULES) as f:
        groups = yaml.safe_load(f)["groups"]
    assert [g["name"] for g in groups] == ["cdc-cache"]
    alerts = {r["alert"]: r for r in groups[0]["rules"]}
    assert set(alerts) == {
        "CdcCacheNotReady",
        "CdcCacheLagHigh",
        "CdcCacheStale",
        "CdcCacheBrokerUnreachable",
        "CdcCacheDecodeErrors",
        "CdcCacheGrpcErrorRatioHigh",
        "CdcCachePartitionReset",
        "CdcCacheKafkaErrors",
        "CdcCacheKafkaAccessFailed",
        "CdcCacheMemoryNearLimit",
        "CdcCacheLoadingStopped",
        "CdcCacheTableProblem",
        "CdcCacheSnapshotsStale",
    }
    for name, rule in alerts.items():
        assert rule["labels"]["severity"] in ("warning", "critical"), name
        assert rule["annotations"]["summary"], name
        assert "cdc-cache status" in rule["annotations"]["description"], name


# --------------------------------------------------------------------------- against the servers


def test_traffic_reached_the_sidecar(prometheus, traffic):
    assert traffic.calls >= 2, "the traffic loop made no progress"
    assert not traffic.errors, "gRPC traffic failed:\n" + "\n".join(traffic.errors[:5])


def test_every_exposed_metric_is_on_the_dashboard(sidecar, traffic):
    _, admin_addr = sidecar
    status, scrape = http_get(f"http://{admin_addr}/metrics")
    assert status == 200
    exposed = {
        m.group(1)
        for m in re.finditer(r"^# TYPE (cdc_cache_\w+) ", scrape, re.MULTILINE)
    }
    assert exposed, f"no cdc_cache metric in the scrape:\n{scrape[:2000]}"
    used = {
        re.sub(r"_(bucket|sum|count)$", "", metric)
        for _, _, expr in dashboard_targets(load_dashboard())
        for metric, _ in SELECTOR.findall(expr)
    }
    assert not exposed - used, f"metrics exposed but on no panel: {sorted(exposed - used)}"
    unexposed = used - exposed - EVENT_ONLY_METRICS
    assert not unexposed, f"panels query metrics the sidecar does not expose: {sorted(unexposed)}"


@pytest.mark.parametrize("table", [".*", DEMO_TABLE])
def test_every_dashboard_query_returns_data(prometheus, traffic, table):
    failures = []
    targets = dashboard_targets(load_dashboard())
    assert len(targets) >= 20
    for title, ref, expr in targets:
        query = substitute(expr, table)
        answer = prometheus.query(query)
        if answer.get("status") != "success":
            failures.append(f"{title} [{ref}]: {answer.get('errorType')}: {answer.get('error')}\n    {query}")
            continue
        values = sample_values(answer["data"])
        if not values and {m for m, _ in SELECTOR.findall(expr)} <= EVENT_ONLY_METRICS:
            continue  # no such event on a healthy demo
        if not values:
            failures.append(f"{title} [{ref}]: empty result\n    {query}")
        elif all(math.isnan(v) for v in values):
            failures.append(f"{title} [{ref}]: only NaN ({len(values)} series)\n    {query}")
    assert not failures, f"{len(failures)} of {len(targets)} dashboard queries failed:\n" + "\n".join(failures)


def test_variable_queries_find_the_demo_pod(prometheus):
    d = load_dashboard()
    expected = {"namespace": NAMESPACE, "pod": POD, "table": DEMO_TABLE}
    for variable in d["templating"]["list"]:
        if variable["type"] != "query":
            continue
        query = variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
        match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", query)
        assert match, query
        selector, label = match.group(1), match.group(2)
        selector = substitute(selector, ".*")
        params = urllib.parse.urlencode({"match[]": selector})
        values = prometheus.get(f"/api/v1/label/{label}/values?{params}")["data"]
        assert expected[variable["name"]] in values, f"${variable['name']}: {query} gave {values}"


def test_alert_rule_expressions_are_valid_promql(prometheus):
    with open(RULES) as f:
        rules = yaml.safe_load(f)["groups"][0]["rules"]
    failures = []
    for rule in rules:
        answer = prometheus.query(rule["expr"])
        if answer.get("status") != "success":
            failures.append(f"{rule['alert']}: {answer.get('errorType')}: {answer.get('error')}")
    assert not failures, "\n".join(failures)


def test_prometheus_evaluates_the_rules_without_errors(prometheus):
    never = "0001-01-01T00:00:00Z"
    deadline = time.monotonic() + 30
    while True:
        groups = prometheus.get("/api/v1/rules")["data"]["groups"]
        rules = [r for g in groups for r in g["rules"]]
        if rules and all(r.get("lastEvaluation", never) != never for r in rules):
            break
        assert time.monotonic() < deadline, f"rules not evaluated within 30 s: {groups}"
        time.sleep(1)
    assert {g["name"] for g in groups} == {"cdc-cache"}
    bad = [f"{r['name']}: {r.get('health')} {r.get('lastError', '')}" for r in rules if r.get("health") != "ok"]
    assert not bad, "\n".join(bad)
    states = {r["name"]: r.get("state") for r in rules}
    # The traffic loop sends one unknown-table Get in every nine calls (11% NOT_FOUND), so the
    # error-ratio alert is active (pending: it needs 10 minutes to fire). Nothing else is.
    assert states.pop("CdcCacheGrpcErrorRatioHigh") in ("pending", "firing")
    assert all(state == "inactive" for state in states.values()), f"alerts active on a healthy sidecar: {states}"
