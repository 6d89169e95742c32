"""deploy/prometheus/alerts.yml, deploy/grafana/costproxy.json and docs/monitoring.md name only
metrics the running app's registry exports; the rules are valid (promtool, when installed)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from costproxy.http.state import METRICS
from tests.conftest import ProxyFactory
from tests.docs_support import DOCS, ROOT

ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "costproxy.json"
PROMETHEUS_OWN = {"up"}  # written by Prometheus itself for every scrape target
SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created"),
            "gauge": ("",), "summary": ("_sum", "_count", "_created"), "info": ("_info",)}


def exported(app: Any) -> set[str]:
    """Every sample name the app's /metrics can carry, labelled series not yet seen included."""
    names: set[str] = set()
    for family in app[METRICS].registry.collect():
        names |= {sample.name for sample in family.samples}
        names |= {family.name + suffix for suffix in SUFFIXES.get(family.type, ("",))}
        if family.type == "histogram":
            names.add(family.name)  # a histogram is documented by its base name
    return names


def referenced(expression: str) -> set[str]:
    return set(re.findall(r"\b(costproxy_[a-z0-9_]+)", expression)) | (PROMETHEUS_OWN & set(
        re.findall(r"\b([a-z_]+)\{", expression)))


def alert_expressions() -> list[str]:
    groups = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))["groups"]
    return [rule["expr"] for group in groups for rule in group["rules"]]


def dashboard_expressions() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


async def test_alerts_dashboard_and_doc_name_only_exported_metrics(make_proxy: ProxyFactory) -> None:
    proxy = await make_proxy()
    answer = await proxy.client.get("/metrics")
    assert answer.status == 200
    names = exported(proxy.app) | PROMETHEUS_OWN
    for source, expressions in (("alerts.yml", alert_expressions()), ("costproxy.json", dashboard_expressions()),
                                ("monitoring.md", [(DOCS / "monitoring.md").read_text(encoding="utf-8")])):
        used = set().union(*(referenced(e) for e in expressions))
        assert used, f"{source} names no metric"
        assert used <= names, f"{source} names metrics costproxy does not export: {sorted(used - names)}"


async def test_every_refusal_code_an_alert_counts_is_exported_from_the_start(make_proxy: ProxyFactory) -> None:
    """``increase()`` skips a series' first sample: a refusal counter that appeared only at its first
    increment hid the first burst after a start from the alerts, so those series start at 0."""
    proxy = await make_proxy()
    text = await (await proxy.client.get("/metrics")).text()
    codes = set()
    for expression in alert_expressions():
        for selector in re.findall(r'costproxy_refusals_total\{code=~?"([^"]+)"\}', expression):
            codes |= set(selector.split("|"))
    assert codes
    for code in codes:
        assert f'costproxy_refusals_total{{code="{code}"}} 0.0' in text, code


def test_every_alert_is_explained_in_the_doc() -> None:
    groups = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))["groups"]
    doc = (DOCS / "monitoring.md").read_text(encoding="utf-8")
    alerts = [rule["alert"] for group in groups for rule in group["rules"]]
    assert len(alerts) == len(set(alerts))
    assert [a for a in alerts if f"`{a}`" not in doc] == []
    for group in groups:
        for rule in group["rules"]:
            assert rule["labels"]["severity"] in ("critical", "warning", "info")
            assert rule["annotations"]["summary"]


def test_the_dashboard_is_importable_json() -> None:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert dashboard["uid"] and dashboard["title"] and dashboard["schemaVersion"] >= 30
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids)) and len(ids) >= 10
    for panel in dashboard["panels"]:
        assert panel["targets"] and all(t["refId"] and t["expr"] for t in panel["targets"])
        assert {"h", "w", "x", "y"} <= set(panel["gridPos"])


def test_promtool_accepts_the_rules() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed here (the metric-name and YAML checks above still run)")
    result = subprocess.run([promtool, "check", "rules", str(ALERTS)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_accepts_the_compose_prometheus_config(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed here (tests/unit/test_docs_deploy.py checks the file's YAML)")
    config = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text(encoding="utf-8"))
    config["rule_files"] = [str(ALERTS)]  # the container path, as mounted by deploy/docker-compose.yml
    local = tmp_path / "prometheus.yml"
    local.write_text(yaml.safe_dump(config), encoding="utf-8")
    result = subprocess.run([promtool, "check", "config", str(local)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
