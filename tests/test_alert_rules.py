"""deploy/prometheus/rules.yml with Debian's promtool: the rules load, and each alert fires in the unit tests of
deploy/prometheus/rules_test.yml when its condition is made true (and stays quiet otherwise)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml

from tests.prom_server import ROOT, RULES, RULES_TEST, binary, load_rules, metric_names, recorded_names

SCRAPE_CONFIG = ROOT / "deploy" / "prometheus.yml"


def _promtool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([binary("promtool"), *args], capture_output=True, text=True, timeout=60, cwd=ROOT)


def test_promtool_check_rules() -> None:
    result = _promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_unit_tests_fire_every_alert() -> None:
    result = _promtool("test", "rules", str(RULES_TEST))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout
    # every alert of rules.yml is shown firing by at least one unit test
    alerts = {rule["alert"] for rule in load_rules() if "alert" in rule}
    fired = {case["alertname"] for test in yaml.safe_load(RULES_TEST.read_text())["tests"]
             for case in test.get("alert_rule_test", []) if case.get("exp_alerts")}
    assert alerts <= fired, f"alerts no unit test makes fire: {sorted(alerts - fired)}"


def test_promtool_catches_a_broken_expectation(tmp_path: Path) -> None:
    """Guard against a unit-test file that passes whatever the rules do."""
    broken = yaml.safe_load(RULES_TEST.read_text())
    broken["rule_files"] = [str(RULES)]
    case = next(c for t in broken["tests"] for c in t.get("alert_rule_test", []) if c.get("exp_alerts"))
    case["exp_alerts"] = []
    (tmp_path / "broken.yml").write_text(yaml.safe_dump(broken))
    result = _promtool("test", "rules", str(tmp_path / "broken.yml"))
    assert result.returncode != 0 and "FAILED" in result.stdout + result.stderr


def test_scrape_config_loads_the_rules() -> None:
    result = _promtool("check", "config", "--syntax-only", str(SCRAPE_CONFIG))
    assert result.returncode == 0, result.stdout + result.stderr
    config = yaml.safe_load(SCRAPE_CONFIG.read_text())
    assert any(path.endswith("/rules.yml") for path in config["rule_files"])
    jobs = {job["job_name"] for job in config["scrape_configs"]}
    assert {"asmg-windowing", "asmg-trainer", "asmg-scorer"} <= jobs
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    assert any(v.startswith("./deploy/prometheus:") for v in compose["prometheus"]["volumes"])


def test_thresholds_are_settings_and_used() -> None:
    settings = {name for name in recorded_names() if name.startswith("asmg:alert_setting:")}
    used = set()
    for rule in load_rules():
        if "alert" in rule:
            used |= metric_names(rule["expr"])
    assert settings and settings <= used, f"settings no alert reads: {sorted(settings - used)}"
