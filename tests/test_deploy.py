"""deploy/: what can be checked without Docker or a cluster.

promtool (Debian package ``prometheus``, installed by ``deploy/services.sh up``) checks the
alert rules, their unit tests, the scrape config and a real ``/metrics`` scrape. Every
PromQL expression in the rules and the Grafana dashboard may name only series the service
exposes (derived from its Prometheus registry) or that the rules record. The compose file
and the Kubernetes manifests must agree with the app: real ``INTENT_*`` settings, its
port, its probe paths, the image's user, a policy the service accepts.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client import REGISTRY
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.parser import text_string_to_metric_families

import app.main
from app.clock import FakeClock
from app.config import Settings
from app.observability import metrics
from app.policy.schema import parse_policy
from tests.support.harness import event, receiver, service

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
RULES = DEPLOY / "prometheus" / "alerts.yml"
RULE_TESTS = DEPLOY / "prometheus" / "alerts.test.yml"
PROM_CONFIG = DEPLOY / "prometheus" / "prometheus.yml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "intent-router.json"
GRAFANA_PROVISIONING = DEPLOY / "grafana" / "provisioning"
COMPOSE = DEPLOY / "docker-compose.yml"
K8S = DEPLOY / "k8s"

# Series Prometheus itself adds to every target; the app does not expose them.
SCRAPE_SERIES = {
    "up",
    "scrape_duration_seconds",
    "scrape_samples_scraped",
    "scrape_samples_post_metric_relabeling",
    "scrape_series_added",
}
# Labels every scraped series carries (target labels), and the histogram bucket bound.
TARGET_LABELS = {"job", "instance"}

# ---------------------------------------------------------------------------------------
# promtool


def promtool() -> str:
    """promtool's path; missing, the test skips locally and fails under CI."""
    path = shutil.which("promtool")
    if path is None:
        message = (
            "promtool not found: `deploy/services.sh up` (make test) installs it from the "
            "Debian package prometheus"
        )
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


def run_promtool(*args: str, stdin: str | None = None) -> str:
    proc = subprocess.run(
        [promtool(), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        cwd="/",  # paths inside the files must resolve relative to them, not to the cwd
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"promtool {' '.join(args)} failed:\n{output}"
    return output


def test_promtool_check_rules() -> None:
    out = run_promtool("check", "rules", str(RULES))
    assert "SUCCESS" in out


def test_promtool_check_config_finds_the_rules() -> None:
    out = run_promtool("check", "config", str(PROM_CONFIG))
    assert "1 rule files found" in out
    assert str(RULES) in out  # rule_files resolved beside the config, whatever the cwd


def test_promtool_rule_unit_tests() -> None:
    """Every alert fires as meant, and stays quiet on a healthy service."""
    out = run_promtool("test", "rules", str(RULE_TESTS))
    assert "SUCCESS" in out


def alert_names() -> list[str]:
    doc = yaml.safe_load(RULES.read_text())
    return [r["alert"] for g in doc["groups"] for r in g["rules"] if "alert" in r]


def test_every_alert_has_a_firing_and_a_quiet_unit_test() -> None:
    doc = yaml.safe_load(RULE_TESTS.read_text())
    firing: set[str] = set()
    quiet: set[str] = set()
    for case in doc["tests"]:
        for t in case.get("alert_rule_test", []):
            (firing if t.get("exp_alerts") else quiet).add(t["alertname"])
    names = set(alert_names())
    assert (firing | quiet) <= names, sorted((firing | quiet) - names)  # no stale tests
    assert not names - firing, f"no test where these fire: {sorted(names - firing)}"
    assert not names - quiet, f"no test where these stay quiet: {sorted(names - quiet)}"


def test_the_readme_lists_every_alert() -> None:
    readme = (DEPLOY / "README.md").read_text()
    listed = set(re.findall(r"^\| `(Intent\w+)` \|", readme, re.M))
    assert listed == set(alert_names())


# ---------------------------------------------------------------------------------------
# metric names: what the service exposes


SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "summary": ("", "_count", "_sum", "_created"),
    "info": ("_info",),
    "stateset": ("",),
    "enum": ("",),
    "gaugehistogram": ("_bucket", "_gcount", "_gsum"),
    "unknown": ("",),
}


@cache
def exposed_series() -> dict[str, frozenset[str] | None]:
    """Every series name the service can expose → its label names (None: not known).

    From the Prometheus registry after importing the whole app (so every metric is
    registered): family names, typed suffixes (_total, _bucket, …) and, for the app's own
    metrics, their label names.
    """
    assert app.main  # imported for its side effect: every module's metrics registered
    labels: dict[str, frozenset[str]] = {}
    for obj in vars(metrics).values():
        if isinstance(obj, MetricWrapperBase):
            for name in REGISTRY._collector_to_names[obj]:  # the names it exposes
                labels[name] = frozenset(obj._labelnames)
    out: dict[str, frozenset[str] | None] = {}
    for family in REGISTRY.collect():
        for suffix in SUFFIXES[family.type]:
            name = family.name + suffix
            known = labels.get(name)
            if known is not None and suffix == "_bucket":
                known = known | {"le"}
            out[name] = known
    return out


def recorded_series() -> set[str]:
    """Series the alert rules file records (usable by the dashboard and the alerts)."""
    doc = yaml.safe_load(RULES.read_text())
    return {r["record"] for g in doc["groups"] for r in g["rules"] if "record" in r}


def known_series() -> dict[str, frozenset[str] | None]:
    return {
        **exposed_series(),
        **{name: None for name in recorded_series() | SCRAPE_SERIES},
    }


def test_the_registry_knows_the_documented_metrics() -> None:
    """A guard on exposed_series() itself: it must see the app's metrics and their labels."""
    series = exposed_series()
    assert series["intent_event_to_webhook_seconds_bucket"] == {"le"}
    assert series["intent_events_ingested_total"] == {"source", "type", "transport"}
    assert series["intent_deliveries_total"] == {"destination", "outcome"}
    assert "intent_ingest_queue_events" in series
    assert "intent_events_ingested" not in series  # counters are exposed with _total
    assert series["intent_pipeline_stage_seconds_bucket"] == {"stage", "le"}
    assert series["intent_db_errors_total"] == {"operation"}
    assert series["intent_outbox_deliveries"] == {"status"}
    assert series["intent_outbox_oldest_pending_seconds"] == frozenset()
    assert series["intent_destinations_off"] == frozenset()
    assert series["intent_leads"] == {"band"}
    assert series["intent_kafka_consumer_lag"] == {"topic", "partition"}


# ---------------------------------------------------------------------------------------
# PromQL: the series and labels an expression names


_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_SELECTOR = re.compile(r"(?<![\w:$])([a-zA-Z_:][\w:]*)?\s*\{([^{}]*)\}")
_MATCHER = re.compile(r"([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)\s*\"\"")
_RANGE = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_IDENT = re.compile(r"(?<![\w:.$])([a-zA-Z_:][\w:]*)(?![\w:])(?!\s*\()")
_KEYWORDS = {
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "inf",
    "nan",
    "atan2",
}


@dataclass
class Names:
    series: set[str] = field(default_factory=set)
    matchers: list[tuple[str, str]] = field(default_factory=list)  # (series, label)
    grouping: set[str] = field(default_factory=set)


def promql_names(expr: str) -> Names:
    """The series names, matcher labels and grouping labels a PromQL expression uses."""
    out = Names()
    s = _STRING.sub('""', expr)
    s = re.sub(r"#[^\n]*", "", s)
    for m in _SELECTOR.finditer(s):
        for label in _MATCHER.findall(m.group(2)):
            out.matchers.append((m.group(1) or "", label))
    s = _SELECTOR.sub(lambda m: f" {m.group(1) or ''} ", s)
    s = _RANGE.sub(" ", s)
    for m in _GROUPING.finditer(s):
        out.grouping |= {label.strip() for label in m.group(1).split(",") if label.strip()}
    s = _GROUPING.sub(" ", s)
    out.series = {name for name in _IDENT.findall(s) if name not in _KEYWORDS}
    return out


def promql_problems(expr: str, known: dict[str, frozenset[str] | None]) -> list[str]:
    """What in ``expr`` names a series or a label the service does not have."""
    names = promql_names(expr)
    problems = [f"unknown series {n}" for n in sorted(names.series - known.keys())]
    if not names.series:
        problems.append("names no series at all")
    for series, label in names.matchers:
        if not series and label == "__name__":
            problems.append("selects by __name__: name the series instead")
            continue
        allowed = known.get(series)
        if allowed is not None and label not in allowed | TARGET_LABELS:
            problems.append(f"{series} has no label {label!r}")
    usable: set[str] = set(TARGET_LABELS)
    for series in names.series:
        usable |= known.get(series) or set()
    if all(known.get(s) is not None for s in names.series):
        problems += [f"no series here has label {label!r}" for label in names.grouping - usable]
    return problems


@pytest.mark.parametrize(
    ("expr", "series"),
    [
        (
            'histogram_quantile(0.99, sum by (le) (rate(a_seconds_bucket{le="1.0"}[5m])))',
            {"a_seconds_bucket"},
        ),
        ("x_total unless x_total offset 1h", {"x_total"}),
        (
            "sum(rate(x_total[$__rate_interval])) * 60 / on(job) group_left(k) y_info",
            {"x_total", "y_info"},
        ),
        ('sum by (job) (rate(x_total{a!~"b|c", d="e{f}"}[1d:5m])) or vector(0)', {"x_total"}),
        ("1e3 * max_over_time(g[10m]) > bool 14.4 * 0.01", {"g"}),
        ("intent:slow:ratio_rate5m / 0.01", {"intent:slow:ratio_rate5m"}),
    ],
)
def test_promql_names(expr: str, series: set[str]) -> None:
    assert promql_names(expr).series == series


def test_a_query_naming_a_missing_series_or_label_is_refused() -> None:
    """The check that guards the dashboard and the rules can fail."""
    known = known_series()
    assert promql_problems("rate(intent_events_ingested[5m])", known) == [
        "unknown series intent_events_ingested"
    ]
    assert promql_problems("sum(intent_kafka_lag_records)", known) == [
        "unknown series intent_kafka_lag_records"
    ]
    assert promql_problems('intent_deliveries_total{outcom="failed"}', known) == [
        "intent_deliveries_total has no label 'outcom'"
    ]
    assert promql_problems("sum by (dest) (rate(intent_deliveries_total[5m]))", known) == [
        "no series here has label 'dest'"
    ]
    assert promql_problems("vector(1)", known) == ["names no series at all"]
    assert not promql_problems(
        'sum by (job, destination) (rate(intent_deliveries_total{outcome="failed"}[5m]))', known
    )


# Gauges read from the database: every replica reports the same global figure, so they
# are aggregated with max (or min, avg); a sum would count them once per replica, and an
# alert on the bare series would fire once per replica.
GLOBAL_GAUGES = (
    "intent_outbox_deliveries",
    "intent_outbox_oldest_pending_seconds",
    "intent_destinations_off",
    "intent_leads",
)
_SAME_ON_EVERY_REPLICA = {"max", "min", "avg"}


def global_gauge_problems(expr: str) -> list[str]:
    """Where ``expr`` sums a global gauge over replicas, or does not aggregate it."""
    s = _STRING.sub('""', expr)
    problems = []
    for name in GLOBAL_GAUGES:
        uses = re.findall(rf"(?<![\w:]){name}(?![\w:])", s)
        wrappers = re.findall(
            rf"\b(\w+)\s*(?:(?:by|without)\s*\([^()]*\)\s*)?\(\s*{name}(?![\w:])", s
        )
        problems += [
            f"{name} aggregated with {w}: use max"
            for w in wrappers
            if w not in _SAME_ON_EVERY_REPLICA
        ]
        if len(wrappers) < len(uses):
            problems.append(f"{name} not aggregated: use max")
    return problems


def test_global_gauge_check() -> None:
    assert global_gauge_problems("sum(intent_destinations_off)") == [
        "intent_destinations_off aggregated with sum: use max"
    ]
    assert global_gauge_problems("sum by (status) (intent_outbox_deliveries)") == [
        "intent_outbox_deliveries aggregated with sum: use max"
    ]
    assert global_gauge_problems("intent_outbox_oldest_pending_seconds > 900") == [
        "intent_outbox_oldest_pending_seconds not aggregated: use max"
    ]
    assert not global_gauge_problems('max by (band) (intent_leads{band="hot"})')
    assert not global_gauge_problems("max by (job) (intent_outbox_oldest_pending_seconds) > 900")
    assert not global_gauge_problems("sum(intent_leads_total)")  # another name


# ---------------------------------------------------------------------------------------
# the rules and the dashboard name only real series


def rule_expressions() -> Iterator[tuple[str, str]]:
    doc = yaml.safe_load(RULES.read_text())
    for group in doc["groups"]:
        for rule in group["rules"]:
            yield rule.get("alert") or rule["record"], rule["expr"]


def rule_test_expressions() -> Iterator[tuple[str, str]]:
    doc = yaml.safe_load(RULE_TESTS.read_text())
    for i, case in enumerate(doc["tests"]):
        for s in case.get("input_series", []):
            yield f"tests[{i}] input {s['series']}", s["series"]
        for t in case.get("promql_expr_test", []):
            yield f"tests[{i}] expr", t["expr"]


def dashboard() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return doc


def all_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for p in panels:
        yield p
        yield from all_panels(p.get("panels", []))


def dashboard_expressions() -> Iterator[tuple[str, str]]:
    doc = dashboard()
    for p in all_panels(doc["panels"]):
        for t in p.get("targets", []):
            yield f"panel {p['title']!r} {t['refId']}", t["expr"]
    for var in doc.get("templating", {}).get("list", []):
        if var.get("type") == "query":
            query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            yield f"variable {var['name']}", re.sub(r"^\w+\((.*)\)$", r"\1", query)


def test_rules_name_only_real_series_and_labels() -> None:
    known = known_series()
    problems = [
        f"{where}: {p}" for where, e in rule_expressions() for p in promql_problems(e, known)
    ]
    assert not problems, "\n".join(problems)


def test_rule_unit_tests_feed_real_series() -> None:
    known = known_series()
    problems = [
        f"{where}: {p}" for where, e in rule_test_expressions() for p in promql_problems(e, known)
    ]
    assert not problems, "\n".join(problems)


def test_global_gauges_are_never_summed_over_replicas() -> None:
    tested = [(where, e) for where, e in rule_test_expressions() if where.endswith(" expr")]
    exprs = [*rule_expressions(), *tested, *dashboard_expressions()]
    problems = [f"{where}: {p}" for where, e in exprs for p in global_gauge_problems(e)]
    assert not problems, "\n".join(problems)


def test_dashboard_names_only_real_series_and_labels() -> None:
    known = known_series()
    exprs = list(dashboard_expressions())
    assert len(exprs) >= 10
    problems = [f"{where}: {p}" for where, e in exprs for p in promql_problems(e, known)]
    assert not problems, "\n".join(problems)


def test_dashboard_panels() -> None:
    doc = dashboard()
    assert doc["uid"] == "intent-router"
    panels = [p for p in all_panels(doc["panels"]) if p["type"] != "row"]
    ids = [p["id"] for p in all_panels(doc["panels"])]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for p in panels:
        targets = p.get("targets") or []
        assert targets, f"panel {p['title']!r} has no target"
        assert all(t.get("expr", "").strip() for t in targets), p["title"]
        assert p["datasource"]["uid"] == "${datasource}", p["title"]
    exprs = " ".join(e for _, e in dashboard_expressions())
    # what the issue asks the dashboard to show
    for q in ("0.5", "0.95", "0.99"):
        assert (
            f"histogram_quantile({q}, sum by (le) "
            "(rate(intent_event_to_webhook_seconds_bucket[$__rate_interval])))"
        ) in exprs
    assert "rate(intent_events_ingested_total[" in exprs
    assert 'intent_deliveries_total{outcome="failed"}' in exprs
    assert 'intent_decisions_total{type="lead.routed"}' in exprs  # hot leads per minute
    # Kafka consumer lag, by topic and by partition
    assert "sum by (topic) (intent_kafka_consumer_lag)" in exprs
    assert "by (topic, partition) (intent_kafka_consumer_lag)" in exprs
    # the outbox: oldest pending age, depth (pending / parked), destinations off
    assert "max(intent_outbox_oldest_pending_seconds)" in exprs
    assert "max by (status) (intent_outbox_deliveries)" in exprs
    assert "max(intent_destinations_off)" in exprs
    assert "max by (band) (intent_leads)" in exprs  # leads by band
    assert (  # per-stage p99
        "histogram_quantile(0.99, sum by (stage, le) "
        "(rate(intent_pipeline_stage_seconds_bucket[$__rate_interval])))"
    ) in exprs
    assert "rate(intent_db_errors_total[" in exprs


def test_grafana_provisioning_matches_the_dashboard_and_compose() -> None:
    ds = yaml.safe_load((GRAFANA_PROVISIONING / "datasources" / "prometheus.yml").read_text())
    (source,) = ds["datasources"]
    var = next(v for v in dashboard()["templating"]["list"] if v["name"] == "datasource")
    assert var["current"]["value"] == source["uid"]
    assert source["type"] == var["query"] == "prometheus"
    assert source["url"] == "http://prometheus:9090"
    providers = yaml.safe_load(
        (GRAFANA_PROVISIONING / "dashboards" / "intent-router.yml").read_text()
    )
    (provider,) = providers["providers"]
    grafana = yaml.safe_load(COMPOSE.read_text())["services"]["grafana"]
    mounts = dict(v.split(":")[:2] for v in grafana["volumes"] if v.startswith("./"))
    assert mounts["./grafana/dashboards"] == provider["options"]["path"]
    assert mounts["./grafana/provisioning"] == "/etc/grafana/provisioning"


# ---------------------------------------------------------------------------------------
# compose


def setting_names() -> set[str]:
    return {f"INTENT_{name.upper()}" for name in Settings.model_fields}


def is_setting(var: str) -> bool:
    # nested sections are INTENT_SECTION__FIELD (env_nested_delimiter="__")
    return var in setting_names() or var.split("__")[0] in setting_names()


def default_port() -> int:
    port: int = Settings.model_fields["port"].default
    return port


def test_compose_runs_the_service_with_prometheus_and_grafana() -> None:
    compose = yaml.safe_load(COMPOSE.read_text())
    services = compose["services"]
    assert {"postgres", "kafka", "intent-router", "prometheus", "grafana"} <= services.keys()
    env = services["intent-router"]["environment"]
    assert all(is_setting(k) for k in env if k.startswith("INTENT_")), env
    assert int(env["INTENT_PORT"]) == default_port()
    for name, svc in services.items():
        for volume in svc.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name}: {source} does not exist"
        for dep in svc.get("depends_on", []):
            assert dep in services, f"{name} depends on unknown {dep}"
    for named in (v.split(":")[0] for s in services.values() for v in s.get("volumes", [])):
        assert named.startswith(".") or named in compose["volumes"], named
    # Prometheus scrapes the compose service on the port it listens on
    config = yaml.safe_load(PROM_CONFIG.read_text())
    job = next(j for j in config["scrape_configs"] if j["job_name"] == "intent-router")
    assert job["metrics_path"] == "/metrics"
    (sd,) = job["dns_sd_configs"]
    assert sd["names"] == ["intent-router"] and sd["port"] == default_port()
    assert "/etc/prometheus/alerts.yml" in " ".join(services["prometheus"]["volumes"])


# ---------------------------------------------------------------------------------------
# Kubernetes


def k8s_docs() -> dict[str, list[dict[str, Any]]]:
    docs = {}
    for path in sorted(K8S.glob("*.yaml")):
        if path.name != "kustomization.yaml":
            docs[path.name] = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    return docs


def k8s_object(kind: str, name: str | None = None) -> dict[str, Any]:
    found = [
        d
        for docs in k8s_docs().values()
        for d in docs
        if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)
    ]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def test_k8s_manifests_parse_and_are_all_in_the_kustomization() -> None:
    docs = k8s_docs()
    assert docs
    for file, objects in docs.items():
        assert objects, f"{file} is empty"
        for obj in objects:
            assert obj.get("apiVersion") and obj.get("kind"), file
            assert obj.get("metadata", {}).get("name"), file
            assert obj["kind"] != "Secret", f"{file}: no Secret is committed, only referenced"
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == sorted(docs)
    kinds = {o["kind"] for objects in docs.values() for o in objects}
    assert {
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "ConfigMap",
    } <= kinds


def container_env(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


def check_env_refs(container: dict[str, Any]) -> None:
    """Every variable is a real setting; its ConfigMap key exists; secrets are refs only."""
    for name, entry in container_env(container).items():
        assert is_setting(name), f"{name} is not a field of app.config.Settings"
        source = entry.get("valueFrom", {})
        if "configMapKeyRef" in source:
            ref = source["configMapKeyRef"]
            data = k8s_object("ConfigMap", ref["name"])["data"]
            assert ref["key"] in data, f"{name}: ConfigMap {ref['name']} has no {ref['key']}"
        elif "secretKeyRef" in source:
            assert source["secretKeyRef"]["name"] == "intent-router-secrets"
        else:
            assert "value" in entry, name
    assert "secretKeyRef" in container_env(container)["INTENT_DATABASE_URL"]["valueFrom"]


def dockerfile() -> str:
    return (ROOT / "Dockerfile").read_text()


def test_deployment_matches_the_app() -> None:
    deployment = k8s_object("Deployment")
    pod = deployment["spec"]["template"]
    assert (
        deployment["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    )
    (container,) = pod["spec"]["containers"]
    check_env_refs(container)
    env = container_env(container)
    port = default_port()
    assert int(env["INTENT_PORT"]["value"]) == port
    assert env["INTENT_HOST"]["value"] == "0.0.0.0"  # reachable from outside the pod
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": port}
    assert re.search(rf"^EXPOSE {port}$", dockerfile(), re.M), "the image exposes another port"
    annotations = pod["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(port)
    assert annotations["prometheus.io/path"] == "/metrics"
    # probes hit routes the app has, on its port
    paths = set(app.main.create_app(Settings()).openapi()["paths"])
    assert {"/healthz", "/readyz", "/metrics"} <= paths
    probes = {k: container[k]["httpGet"] for k in ("livenessProbe", "readinessProbe")}
    assert probes["livenessProbe"]["path"] == "/healthz"
    assert probes["readinessProbe"]["path"] == "/readyz"
    assert container["startupProbe"]["httpGet"]["path"] in paths
    for probe in (*probes.values(), container["startupProbe"]["httpGet"]):
        assert probe["port"] in ports or probe["port"] == port
    resources = container["resources"]
    assert {"cpu", "memory"} <= resources["requests"].keys()
    assert {"cpu", "memory"} <= resources["limits"].keys()
    # non-root, as the image's user
    user = re.search(r"useradd .*--uid (\d+)", dockerfile())
    assert user, "the Dockerfile creates its user with useradd --uid"
    security = pod["spec"]["securityContext"]
    assert security["runAsNonRoot"] is True and security["runAsUser"] == int(user.group(1))
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    # PostgreSQL needs the secret key; it comes from the Secret like the database URL.
    assert "secretKeyRef" in env["INTENT_SECRET_KEY"]["valueFrom"]


def probe_paths() -> set[str]:
    (container,) = k8s_object("Deployment")["spec"]["template"]["spec"]["containers"]
    probes = ("startupProbe", "livenessProbe", "readinessProbe")
    return {container[p]["httpGet"]["path"] for p in probes}


def test_service_hpa_and_pdb_point_at_the_deployment() -> None:
    deployment = k8s_object("Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    port_names = {p["name"] for p in container["ports"]}

    service = k8s_object("Service")
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert all(p["targetPort"] in port_names for p in service["spec"]["ports"])

    pdb = k8s_object("PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    # The HPA owns the count: a replicas field would reset it on every kubectl apply.
    assert "replicas" not in deployment["spec"]

    hpa = k8s_object("HorizontalPodAutoscaler")
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert pdb["spec"]["minAvailable"] < hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    # a replica beyond the topic's partitions would consume nothing
    partitions = container_env(container)["INTENT_KAFKA_PARTITIONS"]["valueFrom"]
    ref = partitions["configMapKeyRef"]
    assert hpa["spec"]["maxReplicas"] <= int(
        k8s_object("ConfigMap", ref["name"])["data"][ref["key"]]
    )


def test_policy_configmap_is_a_valid_policy_the_job_applies() -> None:
    data = k8s_object("ConfigMap", "intent-router-policy")["data"]
    doc, errors = parse_policy(yaml.safe_load(data["policy.yaml"]))
    assert doc is not None, [str(e) for e in errors]

    job = k8s_object("Job")
    spec = job["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    check_env_refs(container)
    command = container["command"]
    assert command[:3] == ["intent-router", "policy", "apply"]
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == "policy"]
    (volume,) = [v for v in spec["volumes"] if v["name"] == "policy"]
    assert volume["configMap"]["name"] == "intent-router-policy"
    assert command[3] == f"{mount['mountPath']}/policy.yaml"


def test_pods_mount_no_service_account_token_and_the_job_is_cleaned_up() -> None:
    for kind in ("Deployment", "Job"):
        pod = k8s_object(kind)["spec"]["template"]["spec"]
        assert pod["automountServiceAccountToken"] is False, kind
    # A finished Job (and its pod) is removed, not kept forever.
    assert k8s_object("Job")["spec"]["ttlSecondsAfterFinished"] > 0


def rule_ports(rule: dict[str, Any]) -> set[tuple[int | str, str]]:
    return {(p["port"], p.get("protocol", "TCP")) for p in rule["ports"]}


def test_network_policy_allows_the_service_port_in_and_only_what_it_needs_out() -> None:
    policy = k8s_object("NetworkPolicy")
    spec = policy["spec"]
    selected = spec["podSelector"]["matchLabels"].items()
    for kind in ("Deployment", "Job"):  # the server and the policy Job alike
        assert selected <= k8s_object(kind)["spec"]["template"]["metadata"]["labels"].items()
    assert sorted(spec["policyTypes"]) == ["Egress", "Ingress"]
    # In: the port the Service sends to, nothing else.
    (ingress,) = spec["ingress"]
    (target,) = {p["targetPort"] for p in k8s_object("Service")["spec"]["ports"]}
    assert rule_ports(ingress) == {(target, "TCP")}
    # Out: every rule names its ports (none allows everything).
    assert all(rule.get("ports") for rule in spec["egress"])
    ports = set().union(*(rule_ports(rule) for rule in spec["egress"]))
    data = k8s_object("ConfigMap", "intent-router-config")["data"]
    kafka_port = int(data["kafka-bootstrap"].rsplit(":", 1)[1])
    assert ports == {(53, "UDP"), (53, "TCP"), (5432, "TCP"), (kafka_port, "TCP"), (443, "TCP")}
    (dns,) = [r for r in spec["egress"] if (53, "UDP") in rule_ports(r)]
    (peer,) = dns["to"]
    assert peer["podSelector"]["matchLabels"] == {"k8s-app": "kube-dns"}


# ---------------------------------------------------------------------------------------
# The image: base by digest, dependencies from the lock, a small build context

DIGEST = re.compile(r"@sha256:[0-9a-f]{64}(\s|$)")


def test_the_base_image_is_pinned_by_digest() -> None:
    stages: set[str] = set()
    bases = []
    for line in dockerfile().splitlines():
        found = re.match(r"FROM\s+(\S+)(?:\s+AS\s+(\S+))?", line, re.I)
        if found:
            image, stage = found.groups()
            if image not in stages:
                bases.append(image)
            if stage:
                stages.add(stage)
    assert bases, "no FROM line"
    for image in bases:
        assert DIGEST.search(image + " "), f"{image} is not pinned by digest"
    assert len(set(bases)) == 1, "build and runtime start from the same image"


def lock_pins() -> dict[str, str]:
    from packaging.utils import canonicalize_name

    pins = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        found = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)", line)
        if found:
            pins[canonicalize_name(found[1])] = found[2]
    return pins


def test_the_lock_pins_every_dependency_with_hashes() -> None:
    """Each dependency of pyproject.toml, and each of theirs (extras included), is pinned
    in requirements.lock to a version its specifier allows, with at least one hash."""
    import tomllib
    from importlib.metadata import PackageNotFoundError, requires

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    text = (ROOT / "requirements.lock").read_text()
    pins = lock_pins()
    blocks = re.split(r"\n(?=[A-Za-z0-9])", text)
    unhashed = [b.split("==")[0] for b in blocks if "==" in b and "--hash=sha256:" not in b]
    assert not unhashed, f"pinned without a hash: {unhashed}"

    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    wanted = [(Requirement(d), "") for d in declared]
    seen: set[tuple[str, str]] = set()
    while wanted:
        req, extra = wanted.pop()
        if req.marker is not None and not req.marker.evaluate({"extra": extra}):
            continue
        name = canonicalize_name(req.name)
        assert name in pins, f"{req} (pyproject.toml or a dependency's) is not in the lock"
        assert req.specifier.contains(pins[name], prereleases=True), (str(req), pins[name])
        for chosen in ("", *req.extras):
            if (name, chosen) in seen:
                continue
            seen.add((name, chosen))
            try:
                reqs = requires(name) or []
            except PackageNotFoundError:  # not installed here: only its own pin is checked
                continue
            wanted += [(Requirement(r), chosen) for r in reqs]


def test_the_dockerfile_installs_the_lock_with_hashes_then_the_package_alone() -> None:
    text = dockerfile()
    assert re.search(r"^COPY requirements\.lock ", text, re.M)
    lock = re.search(r"pip install .*--require-hashes.* -r requirements\.lock", text)
    package = re.search(r"pip install (?=.*--no-deps).* \.$", text, re.M)
    assert lock and "--no-deps" in lock[0], "the lock is installed with hashes, as is"
    assert package and package.start() > lock.start(), "then the package, resolving nothing"


def docker_ignored(path: str, patterns: list[str]) -> bool:
    """As Docker reads .dockerignore: a pattern excludes the path or any of its parents."""
    from fnmatch import fnmatchcase

    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in patterns:
        pattern = pattern.strip("/")
        tail = pattern.removeprefix("**/")
        for prefix in prefixes:
            names = [prefix]
            if tail != pattern:  # **/x: x at any depth
                names += ["/".join(prefix.split("/")[i:]) for i in range(prefix.count("/") + 1)]
            if any(fnmatchcase(n, tail if tail != pattern else pattern) for n in names):
                return True
    return False


def test_dockerignore_keeps_local_state_out_and_what_the_image_needs_in() -> None:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    patterns = [ln.strip() for ln in lines if ln.strip() and not ln.startswith("#")]
    assert not [p for p in patterns if p.startswith("!")], "no exceptions to reason about"
    for path in (
        ".venv/bin/python",
        ".data/intent-router.db",
        ".data/secret.key",
        ".git/HEAD",
        "tests/clients/node_modules/@segment/analytics-node/package.json",
        ".services/postgres/data",
        "app/__pycache__/main.cpython-311.pyc",
        ".pytest_cache/v",
        ".mypy_cache/3.11",
        ".ruff_cache/x",
        ".hypothesis/examples",
        ".env",
    ):
        assert docker_ignored(path, patterns), f"{path} would be sent to the build"
    copied = re.findall(r"^COPY (?!--from)(.+) \S+$", dockerfile(), re.M)
    for sources in copied:
        for source in sources.split():
            assert (ROOT / source).exists(), f"COPY {source}: no such file"
            assert not docker_ignored(source, patterns), f"COPY {source} is ignored"
    assert not docker_ignored("app/main.py", patterns)
    assert not docker_ignored("migrations/env.py", patterns)


# ---------------------------------------------------------------------------------------
# a real scrape of a running service


async def test_a_live_scrape_passes_promtool_and_matches_the_registry(tmp_path: Path) -> None:
    """Traffic through the real service (HTTP in, signed webhook out), then /metrics."""
    promtool()
    settings = Settings(
        database_url=f"sqlite+aiosqlite:///{tmp_path}/intent.db",
        delivery_allowed_hosts=["127.0.0.1"],
        sqlite_synchronous="NORMAL",
        kafka_bootstrap=None,
    )
    clock = FakeClock(time.time())
    acme = {"domain": "acme.com", "industry": "software", "employees": 1200, "country": "US"}
    async with receiver() as hook, service(settings, clock) as svc:
        r = await svc.client.post("/v1/destinations", json={"name": "crm", "url": hook.url})
        assert r.status_code == 201, r.text
        t = clock.now()
        hot = [
            event(
                "m-1", "pricing_page_view", t, email="vp@acme.com", title="VP Sales", account=acme
            ),
            event("m-2", "demo_request", t, email="vp@acme.com"),
            event("m-3", "demo_request", t, email="vp@acme.com"),
        ]
        r = await svc.client.post("/v1/events", json={"events": hot})
        assert r.status_code == 202, r.text
        await hook.wait_for(1)
        # a duplicate and a rejected event, so those labelled series appear too
        r = await svc.client.post(
            "/v1/events", json={"events": [hot[0], {**hot[1], "event_id": "m-4", "type": ""}]}
        )
        assert r.status_code == 202, r.text
        async with httpx.AsyncClient(base_url=svc.url) as anonymous:
            for path in probe_paths():  # the Deployment's probes answer on a healthy service
                r = await anonymous.get(path)
                assert r.status_code == 200, (path, r.text)
            scrape = await anonymous.get("/metrics")
        assert scrape.status_code == 200
        body = scrape.text

    run_promtool("check", "metrics", stdin=body)

    families = list(text_string_to_metric_families(body))
    seen = {s.name for f in families for s in f.samples}
    assert seen <= exposed_series().keys(), sorted(seen - exposed_series().keys())
    values = {s.name: s.value for f in families for s in f.samples if not s.labels}
    assert values["intent_event_to_webhook_seconds_count"] >= 1
    assert {
        "intent_events_ingested_total",
        "intent_events_duplicate_total",
        "intent_events_rejected_total",
        "intent_deliveries_total",
        "intent_decisions_total",
        "intent_event_to_webhook_seconds_bucket",
        "intent_pipeline_stage_seconds_bucket",
        "intent_outbox_oldest_pending_seconds",
        "intent_destinations_off",
    } <= seen
