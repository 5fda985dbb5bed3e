"""The Grafana dashboard (deploy/grafana/dashboards/*.json): it loads, its panels use the provisioned data source,
and every panel query parses in a real Prometheus (/api/v1/query on a live server)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.prom_server import (
    ROOT,
    Prometheus,
    dashboard_expressions,
    dashboards,
    grafana_to_promql,
    panels,
)

PROVISIONING = ROOT / "deploy" / "grafana" / "provisioning"
SECTIONS = ("Ingest", "Dead-letter queue", "Watermarks and lag", "Periods", "Trainer", "Model quality over periods",
            "Scorer")


def _datasource_uid() -> str:
    sources = yaml.safe_load((PROVISIONING / "datasources" / "prometheus.yml").read_text())["datasources"]
    return next(s["uid"] for s in sources if s["type"] == "prometheus")


def test_dashboards_load_and_use_the_provisioned_datasource() -> None:
    paths = dashboards()
    assert paths, "no dashboard JSON in deploy/grafana/dashboards"
    uid = _datasource_uid()
    for path in paths:
        dashboard = json.loads(path.read_text())
        assert dashboard["uid"] and dashboard["title"] and dashboard["schemaVersion"] >= 36, path
        all_panels = panels(dashboard)
        ids = [p["id"] for p in all_panels]
        assert len(ids) == len(set(ids)), f"{path.name}: duplicate panel ids"
        rows = {p["title"] for p in all_panels if p["type"] == "row"}
        assert set(SECTIONS) <= rows, f"{path.name}: missing sections {set(SECTIONS) - rows}"
        for panel in all_panels:
            if panel["type"] == "row":
                continue
            assert panel.get("title") and panel.get("targets"), f"{path.name}: panel {panel.get('id')} is empty"
            assert {"h", "w", "x", "y"} <= set(panel["gridPos"]) and panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
            for target in [panel, *panel["targets"]]:
                assert target["datasource"] == {"type": "prometheus", "uid": uid}, panel["title"]


def test_provisioning_points_at_the_dashboards() -> None:
    provider = yaml.safe_load((PROVISIONING / "dashboards" / "asmg.yml").read_text())["providers"][0]
    mounts = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["grafana"]["volumes"]
    mounted = {m.split(":")[1]: m.split(":")[0] for m in mounts}
    assert mounted[provider["options"]["path"]] == "./deploy/grafana/dashboards"


@pytest.mark.timeout(90)
def test_every_panel_query_parses_in_prometheus(tmp_path: Path) -> None:
    queries = [(f"{path.name}: {where}", expr) for path in dashboards() for where, expr in dashboard_expressions(path)]
    assert len(queries) >= 30
    with Prometheus(tmp_path / "prometheus") as prometheus:
        bad = []
        for where, expr in queries:
            answer = prometheus.query(grafana_to_promql(expr))
            if answer.get("status") != "success":
                bad.append(f"{where}: {expr}\n    -> {answer.get('errorType')}: {answer.get('error')}")
        # the check itself: a broken expression is refused
        assert prometheus.query("sum(rate(x[1m])").get("status") == "error"
    assert not bad, "panel queries Prometheus refuses:\n" + "\n".join(bad)
