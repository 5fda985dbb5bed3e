"""`asmg kafka start` with a SASL_SSL listener (SCRAM-SHA-512 over TLS, certificates made here with openssl),
one broker for the module: produce and consume through it; the whole pipeline (producer, windowing, trainer,
scorer) through it with nothing but the KAFKA_* variables; a wrong password and an untrusted certificate are
refused with a message that names the cause, by the connectivity check and by every role at its start."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner

from streams.local.broker import BrokerConfig, BrokerError, LocalBroker, check_reachable, free_port
from streams.wire.kafka_config import KafkaSettings
from streams.wire.topics import TopicNames, ensure_topics

pytestmark = [pytest.mark.kafka,
              pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl makes the test certificates")]
PASSWORD = "s3cret-scram-pass"


def _openssl(*args: str, cwd: Path) -> None:
    done = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr


def make_ca(folder: Path, name: str) -> tuple[Path, Path]:
    key, cert = folder / f"{name}.key", folder / f"{name}.pem"
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2",
             "-subj", f"/CN={name}", cwd=folder)
    return key, cert


def make_keystore(folder: Path, ca_key: Path, ca_cert: Path) -> Path:
    """The broker's PEM keystore: its PKCS#8 key, its certificate for localhost (signed by the CA), the CA."""
    key, csr, cert = folder / "broker.key", folder / "broker.csr", folder / "broker.pem"
    _openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", str(key), cwd=folder)
    _openssl("req", "-new", "-key", str(key), "-out", str(csr), "-subj", "/CN=localhost", cwd=folder)
    ext = folder / "san.ext"
    ext.write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca_cert), "-CAkey", str(ca_key), "-CAcreateserial",
             "-out", str(cert), "-days", "2", "-extfile", str(ext), cwd=folder)
    keystore = folder / "keystore.pem"
    keystore.write_text(key.read_text() + cert.read_text() + ca_cert.read_text())
    keystore.chmod(0o600)
    return keystore


@dataclass(frozen=True)
class SecureBroker:
    """The module's broker: PLAINTEXT on loopback for its own use, SASL_SSL (SCRAM-SHA-512) for the clients."""

    config: BrokerConfig
    ca_cert: Path
    rogue_ca: Path  # a CA that signed nothing the broker holds

    def settings(self, password: str = PASSWORD, ca: Path | None = None) -> KafkaSettings:
        return self.config.sasl_ssl_settings("alice", password, ca or self.ca_cert)

    def env(self, password: str = PASSWORD) -> dict[str, str]:
        """The KAFKA_* variables a role reads to reach the SASL_SSL listener."""
        return {"KAFKA_BOOTSTRAP_SERVERS": f"localhost:{self.config.sasl_ssl_port}",
                "KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
                "KAFKA_SASL_USERNAME": "alice", "KAFKA_SASL_PASSWORD": password,
                "KAFKA_SSL_CA_LOCATION": str(self.ca_cert)}


@pytest.fixture(scope="module")
def secure_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureBroker]:
    """``asmg kafka start --sasl-ssl-port ...`` with certificates made here; stopped with ``asmg kafka stop``."""
    from asmg_cli.main import app

    tmp_path = tmp_path_factory.mktemp("secure")
    certs = tmp_path / "certs"
    certs.mkdir()
    ca_key, ca_cert = make_ca(certs, "asmg-test-ca")
    _, rogue_ca = make_ca(certs, "someone-else-ca")
    keystore = make_keystore(certs, ca_key, ca_cert)
    password_file = certs / "scram-password"
    password_file.write_text(PASSWORD + "\n")

    port, controller_port, secure_port = free_port(), free_port(), free_port()
    home = tmp_path / "kafka"
    args = ["--port", str(port), "--controller-port", str(controller_port), "--dir", str(home)]
    env = {"KAFKA_BOOTSTRAP_SERVERS": "", "ASMG_KAFKA_HEAP": "256m"}
    config = BrokerConfig(home=home, port=port, controller_port=controller_port, sasl_ssl_port=secure_port,
                          ssl_keystore=keystore)
    broker = SecureBroker(config, ca_cert, rogue_ca)
    try:
        result = CliRunner().invoke(app, ["kafka", "start", *args, "--timeout", "180", "--sasl-ssl-port",
                                          str(secure_port), "--ssl-keystore", str(keystore), "--scram-user", "alice",
                                          "--scram-password-file", str(password_file)], env=env)
        assert result.exit_code == 0, result.output
        assert f"SASL_SSL listener (SCRAM-SHA-512) at localhost:{secure_port}" in result.output
        assert PASSWORD not in (home / "server.properties").read_text()
        # SCRAM users reach every listener a moment after the upsert: poll, then go
        deadline = time.monotonic() + 30
        while True:
            try:
                assert check_reachable(broker.settings(), timeout=5) == 1
                break
            except BrokerError:
                if time.monotonic() > deadline:
                    raise
        yield broker
    finally:
        result = CliRunner().invoke(app, ["kafka", "stop", *args], env=env)
        LocalBroker(config).stop(timeout=10)
    assert result.exit_code == 0, result.output


@pytest.mark.timeout(300)
def test_sasl_ssl_listener_round_trip_and_refusals(secure_broker: SecureBroker) -> None:
    from confluent_kafka import Consumer, Producer

    secure = secure_broker.settings()
    names = TopicNames(prefix=f"sec-{uuid.uuid4().hex[:8]}.")
    ensure_topics(secure, names, partitions=2)
    producer = Producer(secure.confluent_config(enable_idempotence=True, acks="all"))
    values = [f"event-{i}".encode() for i in range(200)]
    for value in values:
        producer.produce(names.interactions, value=value)
    assert producer.flush(60) == 0
    del producer  # closed before the broker stops (no reconnect noise)
    consumer = Consumer(secure.confluent_config(group_id=f"g-{uuid.uuid4().hex[:6]}", auto_offset_reset="earliest"))
    consumer.subscribe([names.interactions])
    got: list[bytes] = []
    deadline = time.monotonic() + 60
    while len(got) < len(values) and time.monotonic() < deadline:
        got += [m.value() for m in consumer.consume(200, timeout=1.0) if m.error() is None]
    consumer.close()
    assert sorted(got) == sorted(values)

    with pytest.raises(BrokerError, match="(?i)authentication failed.*invalid credentials|SASL authentication"):
        check_reachable(secure_broker.settings(password="not-the-password"), timeout=8)
    with pytest.raises(BrokerError, match="(?i)certificate verify failed"):
        check_reachable(secure_broker.settings(ca=secure_broker.rogue_ca), timeout=8)


def test_sasl_ssl_listener_needs_a_keystore(tmp_path: Path) -> None:
    with pytest.raises(BrokerError, match="needs --ssl-keystore"):
        BrokerConfig(home=tmp_path, port=free_port(), controller_port=free_port(), sasl_ssl_port=free_port())


# --- the whole pipeline through the SASL_SSL listener --------------------------------------------------------

SYNTH = {"users": 40, "items": 60, "categories": 6, "periods": 8, "events_per_period": 400, "seed": 0}


def _run_cli(args: list[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    """``asmg <args>`` in a subprocess with only ``env``'s KAFKA_* variables (none of this shell's)."""
    from tests.test_windowing import REPO

    base = {k: v for k, v in os.environ.items() if not k.startswith(("ASMG_", "KAFKA_"))}
    return subprocess.run([sys.executable, "-m", "asmg_cli.main", *args], env={**base, "PYTHONPATH": str(REPO), **env},
                          cwd=REPO, capture_output=True, text=True, timeout=timeout, check=False)


@pytest.mark.timeout(240)
def test_every_role_runs_through_sasl_ssl(secure_broker: SecureBroker, tmp_path: Path) -> None:
    """Producer (``asmg synth``), windowing, trainer and scorer get nothing but the KAFKA_* variables of the
    SASL_SSL listener: every period closes once with the offline samples, one model per period is published
    and served, and the scorer counts every produced event once."""
    from asmg.data.synthetic import synthetic_log
    from asmg.prepare import prepare_periods
    from streams.windowing.coordinator import send_end_of_stream
    from tests.test_multihost import quality, version, wait_for
    from tests.test_trainer import MODEL_PERIODS, TRAIN
    from tests.test_windowing import PROTOCOL, Worker, read_json, stream_settings

    secure, env = secure_broker.settings(), secure_broker.env()
    names = TopicNames(prefix=f"secpipe-{uuid.uuid4().hex[:8]}.")
    log = synthetic_log(n_users=SYNTH["users"], n_items=SYNTH["items"], n_categories=SYNTH["categories"],
                        n_periods=SYNTH["periods"], events_per_period=SYNTH["events_per_period"], seed=SYNTH["seed"],
                        implicit=False)
    prepared = prepare_periods(log, PROTOCOL)
    settings = stream_settings(names, tmp_path, period_bounds=json.dumps(prepared.bounds.to_list()),
                               **{**TRAIN, "method": "iu"})
    port = free_port()
    roles = [Worker("windowing", settings, secure, tmp_path, **env),
             Worker("trainer", settings, secure, tmp_path, **env),
             Worker("scorer", settings, secure, tmp_path, **env, ASMG_SCORER_PORT=str(port),
                    ASMG_LOG_LEVEL="warning")]
    url = f"http://127.0.0.1:{port}"
    try:
        synth = _run_cli(["synth", "--explicit", "--max", "--topic-prefix", names.prefix, "--partitions", "3",
                          *(f"--{k.replace('_', '-')}={v}" for k, v in SYNTH.items())], env, timeout=120)
        assert synth.returncode == 0, synth.stdout + synth.stderr
        assert f"at localhost:{secure_broker.config.sasl_ssl_port}" in " ".join(synth.stdout.split())
        send_end_of_stream(secure, names)
        wait_for(lambda: len(read_json(secure, names.models)) >= len(MODEL_PERIODS), 180, roles, "every model")
        newest = read_json(secure, names.models)[-1]["version"]
        wait_for(lambda: version(url) == newest, 60, roles, "the scorer on the newest model")
        wait_for(lambda: (q := quality(url)) and q["events"].get("events", 0) >= len(log.events), 60, roles,
                 "the scorer to see every event")
        served = quality(url)
        periods, models = read_json(secure, names.periods), read_json(secure, names.models)
    finally:
        for role in roles:
            role.stop()

    assert [p["period"] for p in periods] == list(range(1, PROTOCOL.n_periods + 1)), "every period closed once"
    assert [p["samples"] for p in periods] == [len(prepared.periods[p]) for p in range(1, PROTOCOL.n_periods + 1)]
    assert [m["period"] for m in models] == MODEL_PERIODS, "one model per period"
    assert served is not None and served["events"]["events"] == len(log.events), "every event counted once"


@pytest.mark.timeout(120)
@pytest.mark.parametrize(("role", "fault"), [("windowing", "password"), ("trainer", "password"),
                                             ("scorer", "password"), ("synth", "password"), ("trainer", "ca")])
def test_a_refused_role_exits_with_the_reason(secure_broker: SecureBroker, role: str, fault: str,
                                              tmp_path: Path) -> None:
    """A role given a wrong SCRAM password, or a CA that did not sign the broker's certificate, exits at start
    (librdkafka alone would retry forever) and names the cause and the variables to check."""
    names = TopicNames(prefix=f"secbad-{uuid.uuid4().hex[:8]}.")
    env = {**secure_broker.env(password="not-the-password" if fault == "password" else PASSWORD),
           "ASMG_TOPIC_PREFIX": names.prefix, "ASMG_WORKER_DIR": str(tmp_path / "state"),
           "ASMG_PERIOD_BOUNDS": "[0, 10, 20]", "ASMG_SCORER_PORT": str(free_port())}
    if fault == "ca":
        env["KAFKA_SSL_CA_LOCATION"] = str(secure_broker.rogue_ca)
    args = ["synth", "--events-per-period", "10"] if role == "synth" else ["worker", role]
    done = _run_cli(args, env, timeout=90)
    output = " ".join((done.stdout + done.stderr).split())
    assert done.returncode == 1, output
    expected = (r"refused this client \(SASL_SSL\).*(Authentication failed|invalid credentials).*KAFKA_SASL_PASSWORD"
                if fault == "password" else r"refused this client \(SASL_SSL\).*certificate verify failed.*"
                                            r"KAFKA_SSL_CA_LOCATION")
    assert re.search(expected, output), output
    assert "not-the-password" not in output
