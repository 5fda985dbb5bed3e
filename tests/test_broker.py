"""The local broker and Kafka settings, against a real broker (no mocks)."""

from __future__ import annotations

import socket
import time
import uuid
from pathlib import Path

import pytest
from typer.testing import CliRunner

from streams.local.broker import BrokerConfig, BrokerError, LocalBroker, check_reachable, free_port
from streams.wire.kafka_config import KafkaConfigError, KafkaSettings


def test_settings_default_to_local_broker_port() -> None:
    settings = KafkaSettings.from_env({"ASMG_KAFKA_PORT": "19999"})
    assert settings.bootstrap_servers == "localhost:19999"
    assert not settings.external
    assert settings.confluent_config()["security.protocol"] == "PLAINTEXT"
    assert settings.faust_broker == "kafka://localhost:19999"


def test_settings_external_cluster_with_sasl(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("")
    settings = KafkaSettings.from_env({
        "KAFKA_BOOTSTRAP_SERVERS": "k1:9093,k2:9093",
        "KAFKA_SECURITY_PROTOCOL": "sasl_ssl",
        "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "KAFKA_SASL_USERNAME": "u",
        "KAFKA_SASL_PASSWORD": "secret",
        "KAFKA_SSL_CA_LOCATION": str(ca),
    })
    assert settings.external
    conf = settings.confluent_config(enable_idempotence=True)
    assert conf["bootstrap.servers"] == "k1:9093,k2:9093"
    assert conf["sasl.mechanism"] == "SCRAM-SHA-512"
    assert conf["ssl.ca.location"] == str(ca)
    assert conf["enable.idempotence"] is True
    assert settings.faust_broker == "kafka://k1:9093;kafka://k2:9093"
    assert "secret" not in repr(settings)


@pytest.mark.parametrize(("env", "message"), [
    ({"KAFKA_BOOTSTRAP_SERVERS": "nohost"}, "not host:port"),
    ({"KAFKA_SECURITY_PROTOCOL": "TLS"}, "KAFKA_SECURITY_PROTOCOL"),
    ({"KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT"}, "KAFKA_SASL_USERNAME"),
    ({"KAFKA_SSL_CA_LOCATION": "/no/such/ca.pem"}, "file not found"),
    ({"ASMG_KAFKA_PORT": "x"}, "ASMG_KAFKA_PORT"),
])
def test_settings_errors_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(KafkaConfigError, match=message):
        KafkaSettings.from_env(env)


@pytest.mark.timeout(60)  # a hang is a failure: the probes give up after their own timeouts (3 s and 2 s)
def test_bad_bootstrap_server_fails_fast_with_clear_error() -> None:
    with pytest.raises(BrokerError, match=r"localhost:\d+ did not answer a metadata request within 3s"):
        check_reachable(KafkaSettings.local(free_port()), timeout=3)
    with pytest.raises(BrokerError, match="did not answer"):
        check_reachable(KafkaSettings(bootstrap_servers="no-such-host.invalid:9092"), timeout=2)


def test_start_refuses_a_port_in_use(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        broker = LocalBroker(BrokerConfig(home=tmp_path, port=port, controller_port=free_port()))
        with pytest.raises(BrokerError, match=f"port {port} .* already in use"):
            broker.start(timeout=5)
    assert not broker.status(probe=False).running


@pytest.mark.kafka
def test_cli_start_status_stop_round_trip(tmp_path: Path) -> None:
    from asmg_cli.main import app

    runner = CliRunner()
    port, controller_port = free_port(), free_port()
    args = ["--port", str(port), "--controller-port", str(controller_port), "--dir", str(tmp_path)]
    env = {"KAFKA_BOOTSTRAP_SERVERS": "", "ASMG_KAFKA_HEAP": "256m"}
    broker = LocalBroker(BrokerConfig(home=tmp_path, port=port, controller_port=controller_port))
    try:
        result = runner.invoke(app, ["kafka", "start", *args, "--timeout", "180"], env=env)
        assert result.exit_code == 0, result.output
        assert f"localhost:{port}" in result.output
        pid = int((tmp_path / "kafka.pid").read_text())

        result = runner.invoke(app, ["kafka", "start", *args], env=env)
        assert result.exit_code == 0, result.output
        assert "already running" in result.output
        assert int((tmp_path / "kafka.pid").read_text()) == pid

        result = runner.invoke(app, ["kafka", "status", *args], env=env)
        assert result.exit_code == 0, result.output
        assert "is running" in result.output and "answering" in result.output
        assert check_reachable(KafkaSettings.local(port), timeout=10) == 1

        result = runner.invoke(app, ["kafka", "stop", *args], env=env)
        assert result.exit_code == 0, result.output
        assert "stopped" in result.output
        assert not (tmp_path / "kafka.pid").exists()

        result = runner.invoke(app, ["kafka", "status", *args], env=env)
        assert result.exit_code == 1
        assert "not running" in result.output
    finally:
        broker.stop(timeout=10)
    assert (tmp_path / "logs" / "server.log").stat().st_size > 0


@pytest.mark.kafka
def test_produce_and_consume_a_message(kafka_settings: KafkaSettings) -> None:
    from confluent_kafka import Consumer, Producer

    topic = f"test-roundtrip-{uuid.uuid4().hex[:8]}"
    producer = Producer(kafka_settings.confluent_config(enable_idempotence=True, acks="all"))
    delivered: list[object] = []
    producer.produce(topic, key=b"user-1", value=b'{"hello": "kafka"}',
                     on_delivery=lambda err, msg: delivered.append(err or msg))
    assert producer.flush(30) == 0
    assert delivered and not isinstance(delivered[0], Exception), delivered

    consumer = Consumer(kafka_settings.confluent_config(
        group_id=f"g-{topic}", auto_offset_reset="earliest", enable_auto_commit=False))
    consumer.subscribe([topic])
    try:
        deadline = time.monotonic() + 60
        message = None
        while message is None and time.monotonic() < deadline:
            candidate = consumer.poll(1.0)
            if candidate is not None and candidate.error() is None:
                message = candidate
    finally:
        consumer.close()
    assert message is not None, "nothing consumed within 60 s"
    assert message.key() == b"user-1"
    assert message.value() == b'{"hello": "kafka"}'


@pytest.mark.kafka
def test_startup_failure_points_at_the_log(tmp_path: Path) -> None:
    config = BrokerConfig(home=tmp_path, port=free_port(), controller_port=free_port(), heap="256m")
    config.data_dir.mkdir(parents=True)
    # a log dir formatted for another node: Kafka refuses it and exits during startup
    (config.data_dir / "meta.properties").write_text("version=1\ncluster.id=AAAAAAAAAAAAAAAAAAAAAA\nnode.id=99\n")
    broker = LocalBroker(config)
    with pytest.raises(BrokerError, match=r"Kafka exited with code \d+ while starting; see .*server\.log"):
        broker.start(timeout=120)
    assert broker.pid() is None and not config.pid_file.exists()


def test_random_cluster_ids_never_start_with_a_dash(monkeypatch: pytest.MonkeyPatch) -> None:
    import streams.local.broker as broker_module

    dash_led = uuid.UUID(bytes=bytes([0xF8]) + bytes(15))  # url-safe base64 of 0xF8... starts with "-"
    plain = uuid.UUID(bytes=bytes(range(16)))
    draws = iter([dash_led, dash_led, plain])
    monkeypatch.setattr(broker_module.uuid, "uuid4", lambda: next(draws))
    cluster_id = broker_module.random_cluster_id()
    assert cluster_id == "AAECAwQFBgcICQoLDA0ODw"
    assert len(cluster_id) == 22


@pytest.mark.kafka
def test_storage_formats_with_a_cluster_id_that_starts_with_a_dash(tmp_path: Path) -> None:
    """Kafka's tools parse ``-t -Xy…`` as an option; the id must reach them as ``--cluster-id=…``."""
    import base64

    from streams.local.broker import _format_storage, _write_config, java_executable, resolve_jars

    cluster_id = base64.urlsafe_b64encode(bytes([0xF8]) + bytes(15)).decode().rstrip("=")
    assert cluster_id.startswith("-")
    config = BrokerConfig(home=tmp_path, port=free_port(), controller_port=free_port(), heap="256m",
                          cluster_id=cluster_id)
    _write_config(config)
    _format_storage(config, java_executable(), resolve_jars(config), lambda _: None)
    assert f"cluster.id={cluster_id}" in (config.data_dir / "meta.properties").read_text()


def test_the_broker_runs_c1_only_and_kafka_tools_keep_the_jvm_defaults(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The broker's lean JIT is ours to choose; a user's ASMG_KAFKA_JVM_OPTS must still override it (the JVM takes
    the last flag), and Kafka's own tools (ProducerPerformance: the benches' yardstick) run as shipped."""
    import subprocess

    from streams.local import broker as module

    config = BrokerConfig(home=tmp_path, jvm_opts=("-XX:TieredStopAtLevel=4",))
    command = module._java_cmd(config, "java", tmp_path, "512m", "kafka.Kafka", "server.properties")
    assert set(module.BROKER_JIT) <= set(command)
    assert command.index("-XX:TieredStopAtLevel=4") > command.index(module.BROKER_JIT[0])

    ran: list[list[str]] = []
    monkeypatch.setattr(module, "java_executable", lambda *_: "java")
    monkeypatch.setattr(module, "resolve_jars", lambda _: tmp_path)
    monkeypatch.setattr(module.subprocess, "run",
                        lambda cmd, **_: ran.append(cmd) or subprocess.CompletedProcess(cmd, 0))
    assert LocalBroker(config).run_tool("org.apache.kafka.tools.ProducerPerformance", ["--help"]) == 0
    assert not any(flag.startswith("-XX:TieredStopAtLevel") for flag in ran[0])
