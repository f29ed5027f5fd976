"""The alerts and dashboard (``manifests/components/monitoring``), checked with real tools.

The PrometheusRule's ``spec`` is the rule file: it is written out as is and
given to ``promtool check rules`` and ``promtool test rules`` (the cases in
``rules.test.yaml``). Every series the rules and the dashboard query must be
one the server exports, with labels it has (``serving/metrics.py``); the
Prometheus scraping a real ``digits serve`` is in
``tests/serving/test_prometheus.py``.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from serving.metrics import Metrics
from tests.conftest import ROOT, missing_prerequisite
from tests.test_manifests import find, kustomize, pod_spec

COMPONENT = ROOT / "manifests" / "components" / "monitoring"
#: Labels Prometheus adds to every scraped series, and those of histogram buckets.
SCRAPE_LABELS = {"instance", "job", "pod", "namespace", "service", "endpoint", "container"}


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        missing_prerequisite("promtool is not installed (apt-get install prometheus)")
    return path


def rule_file(destination: Path) -> Path:
    """The PrometheusRule's groups as a Prometheus rule file, with the promtool cases."""
    rule = yaml.safe_load((COMPONENT / "prometheusrule.yaml").read_text())
    destination.mkdir(parents=True, exist_ok=True)
    path = destination / "rules.yaml"
    path.write_text(yaml.safe_dump(rule["spec"], sort_keys=False))
    shutil.copy(COMPONENT / "rules.test.yaml", destination / "rules.test.yaml")
    return path


def rules() -> list[dict[str, Any]]:
    spec = yaml.safe_load((COMPONENT / "prometheusrule.yaml").read_text())["spec"]
    return [rule for group in spec["groups"] for rule in group["rules"]]


def test_promtool_checks_the_rules(tmp_path):
    path = rule_file(tmp_path)
    check = subprocess.run([promtool(), "check", "rules", str(path)], capture_output=True,
                           text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    assert f"SUCCESS: {len(rules())} rules found" in check.stdout


def test_promtool_unit_tests_every_alert(tmp_path):
    path = rule_file(tmp_path)
    result = subprocess.run([promtool(), "test", "rules", "rules.test.yaml"], cwd=path.parent,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    cases = yaml.safe_load((COMPONENT / "rules.test.yaml").read_text())["tests"]
    tested = {case["alertname"] for test in cases for case in test["alert_rule_test"]
              if case["exp_alerts"]}
    assert tested == {rule["alert"] for rule in rules()}, "an alert no test sees firing"


def test_promtool_tests_can_fail(tmp_path):
    """A case expecting the wrong thing must fail: the runner is not a rubber stamp."""
    path = rule_file(tmp_path)
    cases = yaml.safe_load((path.parent / "rules.test.yaml").read_text())
    cases["tests"][0]["alert_rule_test"][0]["exp_alerts"] = []
    (path.parent / "rules.test.yaml").write_text(yaml.safe_dump(cases))
    result = subprocess.run([promtool(), "test", "rules", "rules.test.yaml"], cwd=path.parent,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "FAILED" in result.stdout + result.stderr


# --------------------------------------------------------------------------- names and labels


def exported() -> dict[str, set[str]]:
    """Every series name the server exports, with the labels it may carry."""
    metrics = Metrics()
    series: dict[str, set[str]] = {}
    for wrapper in vars(metrics).values():
        if not hasattr(wrapper, "_type"):
            continue
        name, labels = wrapper._name, set(wrapper._labelnames) | {"pid"}
        suffixes = {"counter": ["_total"], "gauge": [""], "histogram": ["_bucket", "_sum",
                                                                          "_count"],
                    "summary": ["_sum", "_count"]}[wrapper._type]
        for suffix in suffixes:
            series[name + suffix] = labels | ({"le"} if suffix == "_bucket" else set())
    return series


def queried(expression: str) -> list[tuple[str, set[str]]]:
    """``(series name, label names it is selected by)`` for each selector in a query."""
    found = []
    for name, matchers in re.findall(r"\b(digits_\w+)(\{[^}]*\})?", expression):
        found.append((name, set(re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", matchers or ""))))
    return found


def grouped_by(expression: str) -> set[str]:
    return {label.strip() for group in re.findall(r"\b(?:by|on|ignoring)\s*\(([^)]*)\)",
                                                  expression)
            for label in group.split(",") if label.strip()}


def dashboard() -> dict[str, Any]:
    return json.loads((COMPONENT / "dashboard.json").read_text())


def dashboard_queries() -> list[str]:
    return [target["expr"] for panel in dashboard()["panels"] for target in panel["targets"]]


@pytest.mark.parametrize("source", ["rules", "dashboard"])
def test_every_query_names_series_and_labels_the_server_exports(source):
    series = exported()
    expressions = ([rule["expr"] for rule in rules()] if source == "rules"
                   else dashboard_queries())
    assert expressions
    for expression in expressions:
        selectors = queried(expression)
        assert selectors, expression
        allowed = set().union(*(series.get(name, set()) for name, _ in selectors))
        for name, labels in selectors:
            assert name in series, f"{name} is not exported by the server ({expression})"
            assert labels <= series[name] | SCRAPE_LABELS, (name, labels - series[name])
        assert grouped_by(expression) <= allowed | SCRAPE_LABELS, expression


def test_alerts_say_what_and_how_bad():
    for rule in rules():
        assert re.fullmatch(r"Digits[A-Z]\w+", rule["alert"])
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]


# --------------------------------------------------------------------------- the manifests


@pytest.fixture(scope="module")
def rendered(manifests_dir) -> list[dict[str, Any]]:
    return kustomize(manifests_dir / "overlays" / "monitoring")


def test_the_service_monitor_scrapes_each_serving_pods_metrics_port(rendered):
    monitor = find(rendered, "ServiceMonitor", "digits-serving")
    service = find(rendered, "Service", "digits-serving-metrics")
    deployment = find(rendered, "Deployment", "digits-serving")
    selector = monitor["spec"]["selector"]["matchLabels"]
    services = [d for d in rendered if d["kind"] == "Service"
                and selector.items() <= d["metadata"]["labels"].items()]
    assert services == [service], "selects the metrics Service only, not the public one"
    assert service["spec"]["clusterIP"] == "None"  # every pod, not one behind a VIP
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    [endpoint] = monitor["spec"]["endpoints"]
    [port] = [p for p in service["spec"]["ports"] if p["name"] == endpoint["port"]]
    container_ports = {p["name"]: p["containerPort"]
                       for p in pod_spec(deployment)["containers"][0]["ports"]}
    assert container_ports[port["targetPort"]] == port["port"] == 9090
    assert endpoint["path"] == "/metrics"


def test_the_rule_and_dashboard_are_deployed_from_the_tested_files(rendered):
    rule = find(rendered, "PrometheusRule", "digits-serving")
    assert rule["spec"] == yaml.safe_load((COMPONENT / "prometheusrule.yaml").read_text())["spec"]
    config = find(rendered, "ConfigMap", "digits-dashboard")
    assert config["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(config["data"]["digits.json"]) == dashboard()
    assert dashboard()["uid"] and {p["id"] for p in dashboard()["panels"]} == set(
        range(1, len(dashboard()["panels"]) + 1))


def test_the_monitor_cronjob_runs_digits_monitor_hourly(rendered):
    cron = find(rendered, "CronJob", "digits-monitor")
    [container] = pod_spec(cron)["containers"]
    assert container["command"][:2] == ["digits", "monitor"]
    assert cron["spec"]["schedule"].split()[1:] == ["*", "*", "*", "*"]
    policy = find(rendered, "NetworkPolicy", "digits-monitor")
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= (
        cron["spec"]["jobTemplate"]["spec"]["template"]["metadata"]["labels"].items())
