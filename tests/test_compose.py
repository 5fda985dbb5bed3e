"""docker-compose.yml against the CLI: every `asmg ...` command, flag and ASMG_*/KAFKA_* variable must exist.

No Docker needed: the file is parsed with PyYAML and each service's command is resolved on the click
command tree of ``asmg_cli.main.app`` (typer.main.get_command; duck-typed, as typer >= 0.19 ships its own
click). A role that is not wired into the CLI yet FAILS here on purpose.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import typer.main
import yaml

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
VARIABLE = re.compile(r"^(ASMG|KAFKA)_[A-Z0-9_]+$")
ROLES = {
    ("kafka", "topics"): "topic set-up",
    ("worker", "windowing"): "windowing role",
    ("worker", "trainer"): "trainer role",
    ("worker", "scorer"): "scorer role",
    ("replay",): "dataset replay",
}


def _compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def _command(service: dict[str, Any]) -> list[str]:
    command = service.get("command") or []
    return shlex.split(command) if isinstance(command, str) else [str(part) for part in command]


def _environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def _asmg_services() -> dict[str, list[str]]:
    return {name: _command(svc)[1:] for name, svc in _compose()["services"].items()
            if _command(svc)[:1] == ["asmg"]}


def _settings_variables() -> set[str]:
    """KAFKA_*/ASMG_* names read straight from the environment by KafkaSettings and the object store (not CLI
    options)."""
    source = (ROOT / "streams" / "wire" / "kafka_config.py").read_text()
    source += (ROOT / "asmg" / "objectstore.py").read_text()
    return set(re.findall(r'"((?:KAFKA|ASMG)_[A-Z0-9_]+)"', source))


def _is_group(command: Any) -> bool:
    return hasattr(command, "commands")


def _resolve(args: list[str]) -> tuple[Any, list[str], list[str]]:
    """(the click command, the path of subcommand names, the remaining arguments)."""
    from asmg_cli.main import app

    command = typer.main.get_command(app)
    path: list[str] = []
    rest = list(args)
    while _is_group(command) and rest and not rest[0].startswith("-"):
        sub = command.commands.get(rest[0])
        if sub is None:
            break
        command, path = sub, [*path, rest.pop(0)]
    return command, path, rest


def _envvars(command: Any) -> set[str]:
    out: set[str] = set()
    for param in command.params:
        envvar = getattr(param, "envvar", None)
        if isinstance(envvar, str):
            out.add(envvar)
        elif envvar:
            out.update(envvar)
    return out


def _flags(command: Any) -> set[str]:
    return {opt for param in command.params for opt in (*param.opts, *getattr(param, "secondary_opts", ()))}


def test_compose_runs_every_part_of_the_system() -> None:
    compose = _compose()
    services = compose["services"]
    commands = {tuple(args[:len(key)]) for args in _asmg_services().values() for key in ROLES}
    missing = [what for key, what in ROLES.items() if key not in commands]
    assert not missing, f"docker-compose.yml runs no {missing}"
    for node in ("kafka-1", "kafka-2", "kafka-3"):
        assert services[node]["image"].split(":-")[-1].startswith("apache/kafka")
        assert "broker,controller" in services[node]["environment"]["KAFKA_PROCESS_ROLES"]
    assert {"prometheus", "grafana"} <= set(services)
    for name in _asmg_services():
        build = services[name].get("build") or {}
        assert build.get("dockerfile") == "deploy/Dockerfile", name
    assert (ROOT / "deploy" / "Dockerfile").is_file()
    replay_mounts = [str(v) for v in services["replay"]["volumes"]]
    assert any(v.startswith("${") and v.endswith(":ro") for v in replay_mounts), "dataset mounted read-only"


def test_monitoring_configuration() -> None:
    services = _compose()["services"]
    mounts = " ".join(services["prometheus"]["volumes"])
    assert "./deploy/prometheus.yml:/etc/prometheus/prometheus.yml" in mounts
    targets = [t for job in yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())["scrape_configs"]
               for config in job["static_configs"] for t in config["targets"]]
    assert "scorer:8090" in targets
    grafana = " ".join(services["grafana"]["volumes"])
    assert "./deploy/grafana/provisioning:/etc/grafana/provisioning" in grafana
    for sub in ("datasources", "dashboards"):
        assert list((ROOT / "deploy" / "grafana" / "provisioning" / sub).glob("*.yml")), sub


def test_interpolated_variables_have_defaults() -> None:
    """`docker compose up` must work without a .env file."""
    text = COMPOSE.read_text()
    bare = sorted({m for m in re.findall(r"\$\{([^}]*)\}", text) if not re.match(r"^[A-Za-z0-9_]+:?-", m)})
    assert not bare, f"variables without a default: {bare}"


@pytest.mark.parametrize("service", sorted(_asmg_services()))
def test_service_command_and_environment_exist_in_the_cli(service: str) -> None:
    args = _asmg_services()[service]
    command, path, rest = _resolve(args)
    where = f"service {service!r}: `asmg {' '.join(args)}`"
    assert not _is_group(command), f"{where}: no command `asmg {' '.join(path + rest[:1])}` in the CLI"
    flags = _flags(command)
    problems = [f"unknown option {arg.split('=', 1)[0]}" for arg in rest
                if arg.startswith("--") and arg.split("=", 1)[0] not in flags]
    known = _envvars(command) | _settings_variables()
    env = _environment(_compose()["services"][service])
    problems += [f"environment variable {name} is read by no option of `asmg {' '.join(path)}`"
                 for name in sorted(env) if VARIABLE.match(name) and name not in known]
    assert not problems, f"{where}:\n  " + "\n  ".join(problems)


def test_the_check_itself_catches_mistakes() -> None:
    """Guard against a checker that passes everything (e.g. a click API change)."""
    command, path, rest = _resolve(["worker", "no-such-role"])
    assert _is_group(command) and path == ["worker"] and rest == ["no-such-role"]
    command, path, _ = _resolve(["worker", "scorer", "--port", "1"])
    assert path == ["worker", "scorer"] and not _is_group(command)
    assert {"ASMG_PERIOD_BOUNDS", "KAFKA_BOOTSTRAP_SERVERS"} <= _envvars(command)
    assert "ASMG_NO_SUCH_SETTING" not in _envvars(command) | _settings_variables()
    assert "--port" in _flags(command) and "--no-such-flag" not in _flags(command)
    assert {"KAFKA_BOOTSTRAP_SERVERS", "KAFKA_SECURITY_PROTOCOL"} <= _settings_variables()


def test_compose_has_the_several_machines_shape() -> None:
    """Three Kafka nodes in one quorum with replicated topics, an S3 store, two windowing workers and two
    scorers; the roles' stores are on S3, not on a volume they would have to share."""
    services = _compose()["services"]
    nodes = {name: _environment(services[name]) for name in ("kafka-1", "kafka-2", "kafka-3")}
    assert sorted(env["KAFKA_NODE_ID"] for env in nodes.values()) == ["1", "2", "3"]
    assert {env["KAFKA_CONTROLLER_QUORUM_VOTERS"] for env in nodes.values()} == {
        "1@kafka-1:9093,2@kafka-2:9093,3@kafka-3:9093"}
    assert len({env["CLUSTER_ID"] for env in nodes.values()}) == 1
    for env in nodes.values():
        assert env["KAFKA_DEFAULT_REPLICATION_FACTOR"] == "3" and env["KAFKA_MIN_INSYNC_REPLICAS"] == "2"
        assert env["KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR"] == "3"
        assert env["KAFKA_TRANSACTION_STATE_LOG_MIN_ISR"] == "2"
    published = [str(port) for svc in services.values() for port in svc.get("ports", [])]
    assert all(port.startswith("127.0.0.1:") for port in published), "no port beyond the host's loopback"
    assert "s3" in services and "S3PROXY_CREDENTIAL" in _environment(services["s3"])
    roles = {name: _command(svc)[1:3] for name, svc in services.items() if _command(svc)[:1] == ["asmg"]}
    assert [n for n, r in roles.items() if r == ["worker", "scorer"]] == ["scorer", "scorer-2"]
    windowing = [n for n, r in roles.items() if r == ["worker", "windowing"]]
    assert len(windowing) == 2
    assert len({_environment(services[n])["ASMG_WORKER_NAME"] for n in windowing}) == 2, "unique transactional ids"
    for name, role in roles.items():
        if role[1:] not in (["windowing"], ["trainer"], ["scorer"]):
            continue
        env = _environment(services[name])
        assert env["KAFKA_BOOTSTRAP_SERVERS"].count(",") == 2, name
        stores = [env[k] for k in ("ASMG_PERIOD_STORE", "ASMG_ARTIFACT_STORE", "ASMG_CHECKPOINT_STORE") if k in env]
        assert stores and all(v.startswith("s3://") for v in stores), (name, stores)
        assert env["ASMG_S3_ENDPOINT"] and env["AWS_ACCESS_KEY_ID"] and env["AWS_SECRET_ACCESS_KEY"], name
