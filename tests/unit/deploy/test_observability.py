"""The Prometheus alert rules (deploy/prometheus/alerts.yml) and the Grafana dashboard
(deploy/grafana/gateway-dashboard.json): the rules valid, each one firing on the synthetic series it is for and
quiet below its threshold (promtool's own unit tests, alerts_test.yml); the dashboard's queries valid PromQL; both
naming only metrics the gateway exports. ``.ci/run`` installs Debian's prometheus package, which ships promtool,
when it is missing."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import yaml
from prometheus_client.samples import Sample

from contract.settings import PROJECT_DIR
from gateway.jobs import STATUSES
from gateway.observability import JobsCollector, Metrics
from runtime.metrics import LoadedVersionsCollector, SupervisionCollector

RULES = PROJECT_DIR / "deploy" / "prometheus"
DASHBOARD = PROJECT_DIR / "deploy" / "grafana" / "gateway-dashboard.json"
METRIC = re.compile(r"\b(gateway_[a-z_]+)\b")


def promtool(*args: str, cwd: Path = RULES) -> subprocess.CompletedProcess:
    tool = shutil.which("promtool")
    assert tool, "promtool not found: install Debian's prometheus package (.ci/run does)"
    return subprocess.run([tool, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def alerts() -> list[dict]:
    return [rule for group in yaml.safe_load((RULES / "alerts.yml").read_text())["groups"] for rule in group["rules"]]


def test_the_rules_are_valid_and_pass_their_unit_tests():
    checked = promtool("check", "rules", "alerts.yml")
    assert checked.returncode == 0 and f"SUCCESS: {len(alerts())} rules found" in checked.stdout, checked
    tested = promtool("test", "rules", "alerts_test.yml")
    assert tested.returncode == 0 and "SUCCESS" in tested.stdout, tested.stdout + tested.stderr


def test_every_alert_is_tested_firing_and_quiet():
    tests = yaml.safe_load((RULES / "alerts_test.yml").read_text())["tests"]
    cases = [case for test in tests for case in test["alert_rule_test"]]
    for rule in alerts():
        mine = [case for case in cases if case["alertname"] == rule["alert"]]
        assert any(case["exp_alerts"] for case in mine), f"{rule['alert']} never expected to fire"
        assert any(not case["exp_alerts"] for case in mine), f"{rule['alert']} never expected to stay quiet"


def exported() -> set[str]:
    """The names of every series the gateway's and the model server's /metrics can hold (each family's samples,
    labelled ones too)."""
    metrics = Metrics()
    loops = {"loop": {"restarts": 0, "items_failed": 0, "state": "running"}}
    metrics.add_collector(SupervisionCollector(lambda: loops))
    metrics.add_collector(JobsCollector(lambda: {}, STATUSES))
    # the model server's collectors, as model_server/app.py registers them
    metrics.add_collector(SupervisionCollector(lambda: loops, prefix="model_server"))
    metrics.add_collector(LoadedVersionsCollector(lambda: [{"name": "m", "version": "1", "in_flight": 0}],
                                                  lambda: None))
    names = set()
    for family in metrics.registry.collect():
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"]}.get(family.type, [""])
        names |= {family.name + suffix for suffix in suffixes}
        names |= {sample.name for sample in family.samples if isinstance(sample, Sample)}
    return names


def test_the_rules_name_only_metrics_the_gateway_exports():
    named = {name for rule in alerts() for name in METRIC.findall(rule["expr"])}
    assert named, "no metric found in the rules"
    assert named <= exported(), named - exported()


def queries() -> list[str]:
    return [target["expr"] for panel in json.loads(DASHBOARD.read_text())["panels"] for target in panel["targets"]]


def test_the_dashboards_queries_are_valid_promql_on_metrics_the_gateway_exports(tmp_path):
    # promtool checks PromQL in rule files: each query as a recording rule
    rules = {"groups": [{"name": "dashboard", "rules": [{"record": f"dashboard:query_{i}", "expr": query}
                                                         for i, query in enumerate(queries())]}]}
    (tmp_path / "queries.yml").write_text(yaml.safe_dump(rules))
    checked = promtool("check", "rules", "queries.yml", cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    named = {name for query in queries() for name in METRIC.findall(query)}
    assert named <= exported(), named - exported()


def test_the_dashboard_shows_what_every_alert_watches_each_panel_in_its_own_place():
    panels = json.loads(DASHBOARD.read_text())["panels"]
    assert len({p["id"] for p in panels}) == len({(p["gridPos"]["x"], p["gridPos"]["y"]) for p in panels}) \
        == len(panels)
    shown = {name for query in queries() for name in METRIC.findall(query)}
    watched = {name for rule in alerts() for name in METRIC.findall(rule["expr"])}
    assert watched <= shown, watched - shown


def test_the_compose_prometheus_scrapes_both_services_with_these_rules_and_grafana_loads_this_dashboard():
    checked = promtool("check", "config", "prometheus.yml")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    config = yaml.safe_load((RULES / "prometheus.yml").read_text())
    assert config["rule_files"] == ["alerts.yml"]
    assert [t for job in config["scrape_configs"] for s in job["static_configs"] for t in s["targets"]] \
        == ["gateway:8000", "model-server:5001"]
    services = yaml.safe_load((PROJECT_DIR / "docker-compose.yaml").read_text())["services"]
    assert "./deploy/prometheus:/etc/prometheus:ro" in services["prometheus"]["volumes"]
    mounted = dict(v.rsplit(":", 1)[0].split(":", 1) for v in services["grafana"]["volumes"] if v.startswith("./"))
    provisioning = PROJECT_DIR / "deploy" / "grafana" / "provisioning"
    assert mounted["./deploy/grafana/provisioning"] == "/etc/grafana/provisioning"
    (provider,) = yaml.safe_load((provisioning / "dashboards" / "tabular-classifier.yml").read_text())["providers"]
    assert Path(mounted["./deploy/grafana/gateway-dashboard.json"]).parent == Path(provider["options"]["path"])
    (source,) = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())["datasources"]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090" and source["isDefault"]
