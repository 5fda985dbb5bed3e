"""A real Prometheus for the monitoring tests: Debian's ``prometheus``/``promtool`` (``apt-get install -y
prometheus``; .ci/run installs it), started on loopback with a generated configuration.

Missing binaries FAIL the tests with a clear message; ``ASMG_SKIP_PROMETHEUS=1`` turns that into a skip
for machines without apt. ``ASMG_PROMETHEUS``/``ASMG_PROMTOOL`` name other binaries.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from streams.local.broker import free_port

ROOT = Path(__file__).resolve().parents[1]
RULES = ROOT / "deploy" / "prometheus" / "rules.yml"
RULES_TEST = ROOT / "deploy" / "prometheus" / "rules_test.yml"
DASHBOARDS = ROOT / "deploy" / "grafana" / "dashboards"
SKIP_ENV = "ASMG_SKIP_PROMETHEUS"

# Grafana's built-in variables, replaced before an expression is handed to Prometheus
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "${__rate_interval}": "1m", "$__interval": "15s",
                     "${__interval}": "15s", "$__range": "1h", "${__range}": "1h", "$__range_s": "3600"}
# series Prometheus makes itself (not scraped from a role)
BUILTIN_SERIES = {"up", "ALERTS", "ALERTS_FOR_STATE", "scrape_duration_seconds", "scrape_samples_scraped"}
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless", "offset",
            "inf", "nan", "atan2", "start", "end"}


def binary(name: str) -> str:
    """Path of ``prometheus`` or ``promtool``; fails (or skips with ASMG_SKIP_PROMETHEUS=1) when missing."""
    path = os.environ.get(f"ASMG_{name.upper()}") or shutil.which(name)
    if path:
        return path
    message = (f"`{name}` is not installed: these tests check the monitoring set-up against a real Prometheus. "
               f"Install Debian's package (`apt-get install -y prometheus`; .ci/run does it), point "
               f"ASMG_{name.upper()} at a binary, or set {SKIP_ENV}=1 to skip them.")
    if os.environ.get(SKIP_ENV, "").strip() in ("1", "true", "yes"):
        pytest.skip(message)
    pytest.fail(message, pytrace=False)


class Prometheus:
    """``prometheus`` on 127.0.0.1:<free port>, scraping ``targets`` (job -> [host:port, ...]) every second."""

    def __init__(self, workdir: Path, targets: dict[str, list[str]] | None = None, rules: Path | None = RULES,
                 interval: str = "1s") -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config: dict[str, Any] = {"global": {"scrape_interval": interval, "evaluation_interval": interval,
                                             "scrape_timeout": interval},
                                  "scrape_configs": [{"job_name": job, "static_configs": [{"targets": hosts}]}
                                                     for job, hosts in (targets or {}).items()]}
        if rules is not None:
            config["rule_files"] = [str(rules)]
        self.config = workdir / "prometheus.yml"
        self.config.write_text(yaml.safe_dump(config))
        self.log = workdir / "prometheus.log"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 30.0, attempts: int = 3) -> Prometheus:
        """Start and wait until ready; on a port another process took meanwhile, again on a fresh port."""
        for attempt in range(attempts):
            if self._start(timeout, last=attempt == attempts - 1):
                return self
            self.port = free_port()
            self.url = f"http://127.0.0.1:{self.port}"
        raise AssertionError("unreachable")

    def _start(self, timeout: float, last: bool) -> bool:
        exe = binary("prometheus")
        self._out = open(self.log, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen([exe, f"--config.file={self.config}",
                                      f"--storage.tsdb.path={self.workdir / 'data'}",
                                      f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
                                     stdout=self._out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self._out.close()
                if not last and "address already in use" in self.tail():
                    return False
                pytest.fail(f"prometheus exited with {self.proc.returncode}:\n{self.tail()}", pytrace=False)
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as response:
                    if response.status == 200:
                        return True
            except OSError:
                pass
            time.sleep(0.2)
        self.stop()
        pytest.fail(f"prometheus not ready within {timeout:.0f}s:\n{self.tail()}", pytrace=False)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if getattr(self, "_out", None) is not None:
            self._out.close()

    def tail(self, n: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-n:] if self.log.exists() else ""

    def __enter__(self) -> Prometheus:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- HTTP API ----------------------------------------------------------------------------------------------
    def api(self, path: str, **params: str) -> dict[str, Any]:
        """GET /api/v1/<path>; returns the JSON body, also for errors (status: error, errorType, error)."""
        url = f"{self.url}/api/v1/{path}" + (f"?{urllib.parse.urlencode(params)}" if params else "")
        try:
            with urllib.request.urlopen(url, timeout=15) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return json.loads(exc.read() or b"{}") | {"http_status": exc.code}

    def query(self, expr: str) -> dict[str, Any]:
        return self.api("query", query=expr)

    def value(self, expr: str) -> float | None:
        """The value of an expression that yields one number now (e.g. ``max(x)``); None while it has no data."""
        result = self.query(expr).get("data", {}).get("result") or []
        return float(result[0]["value"][1]) if result else None

    def history(self, selector: str, seconds: float) -> list[tuple[dict[str, str], list[tuple[float, float]]]]:
        """Every raw sample scraped in the last ``seconds`` of each series a selector matches, as
        (labels, [(unix time, value), ...]): an instant query of a range vector (``selector[Ns]``) returns the
        stored samples themselves, so nothing is lost to query_range's step."""
        answer = self.query(f"{selector}[{max(1, math.ceil(seconds))}s]")
        assert answer.get("status") == "success", answer
        return [(series["metric"], [(float(t), float(v)) for t, v in series["values"]])
                for series in answer["data"]["result"]]

    def names(self) -> set[str]:
        return set(self.api("label/__name__/values")["data"])

    def targets(self) -> list[dict[str, Any]]:
        return self.api("targets")["data"]["activeTargets"]


# --- expressions --------------------------------------------------------------------------------------------


def grafana_to_promql(expr: str) -> str:
    for variable, value in sorted(GRAFANA_VARIABLES.items(), key=lambda kv: -len(kv[0])):
        expr = expr.replace(variable, value)
    return expr


_STRINGS = re.compile(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`')
_BRACES = re.compile(r"\{[^{}]*\}")
_RANGES = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENT = re.compile(r"(?<![\w:.])([A-Za-z_:][\w:]*)(?![\w:])(\s*\()?")
_NUMBER = re.compile(r"^\d")


def metric_names(expr: str) -> set[str]:
    """Metric (and recording-rule) names an expression reads: identifiers that are not functions, keywords,
    label names in matchers or grouping clauses, durations or numbers."""
    text = _STRINGS.sub('""', grafana_to_promql(expr))
    text = _BRACES.sub("{}", text)
    text = _RANGES.sub("", text)
    text = _GROUPING.sub(" ", text)
    names = set()
    for match in _IDENT.finditer(text):
        name, call = match.group(1), match.group(2)
        if call or name.lower() in KEYWORDS or _NUMBER.match(name):
            continue
        names.add(name)
    return names


def load_rules(path: Path = RULES) -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(path.read_text())["groups"] for rule in group["rules"]]


def recorded_names(path: Path = RULES) -> set[str]:
    return {rule["record"] for rule in load_rules(path) if "record" in rule}


def rule_expressions(path: Path = RULES) -> dict[str, str]:
    return {rule.get("alert") or rule["record"]: rule["expr"] for rule in load_rules(path)}


def dashboards() -> list[Path]:
    return sorted(DASHBOARDS.glob("*.json"))


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, rows' collapsed children included."""
    out = []
    for panel in dashboard.get("panels", []):
        out.append(panel)
        out.extend(panel.get("panels", []))
    return out


def dashboard_expressions(path: Path) -> list[tuple[str, str]]:
    """(panel title / refId, expr) of every Prometheus target of a dashboard JSON."""
    dashboard = json.loads(path.read_text())
    return [(f"{panel.get('title', '?')} / {target.get('refId', '?')}", target["expr"])
            for panel in panels(dashboard) for target in panel.get("targets", []) if target.get("expr")]


def referenced_names() -> set[str]:
    """Every scraped metric name the dashboards and the rules read (recording rules and builtins excluded)."""
    names = set()
    for expr in rule_expressions().values():
        names |= metric_names(expr)
    for path in dashboards():
        for _, expr in dashboard_expressions(path):
            names |= metric_names(expr)
    return {n for n in names if n not in recorded_names() and n not in BUILTIN_SERIES}
