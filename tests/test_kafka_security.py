"""`asmg kafka start` with a SASL_SSL listener (SCRAM-SHA-512 over TLS, certificates made here with openssl):
produce and consume through it; a wrong password and an untrusted certificate are refused with a message
that names the cause."""

from __future__ import annotations

import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest
from typer.testing import CliRunner

from streams.local.broker import BrokerConfig, BrokerError, LocalBroker, check_reachable, free_port
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


@pytest.mark.timeout(300)
def test_sasl_ssl_listener_round_trip_and_refusals(tmp_path: Path) -> None:
    from confluent_kafka import Consumer, Producer

    from asmg_cli.main import app

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
    try:
        result = CliRunner().invoke(app, ["kafka", "start", *args, "--timeout", "180", "--sasl-ssl-port",
                                          str(secure_port), "--ssl-keystore", str(keystore), "--scram-user", "alice",
                                          "--scram-password-file", str(password_file)], env=env)
        assert result.exit_code == 0, result.output
        assert f"SASL_SSL listener (SCRAM-SHA-512) at localhost:{secure_port}" in result.output
        assert PASSWORD not in (home / "server.properties").read_text()

        secure = config.sasl_ssl_settings("alice", PASSWORD, ca_cert)
        # SCRAM users reach every listener a moment after the upsert: poll, then go
        deadline = time.monotonic() + 30
        while True:
            try:
                assert check_reachable(secure, timeout=5) == 1
                break
            except BrokerError:
                if time.monotonic() > deadline:
                    raise
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
            check_reachable(config.sasl_ssl_settings("alice", "not-the-password", ca_cert), timeout=8)
        with pytest.raises(BrokerError, match="(?i)certificate verify failed"):
            check_reachable(config.sasl_ssl_settings("alice", PASSWORD, rogue_ca), timeout=8)
    finally:
        result = CliRunner().invoke(app, ["kafka", "stop", *args], env=env)
        LocalBroker(config).stop(timeout=10)
    assert result.exit_code == 0, result.output


def test_sasl_ssl_listener_needs_a_keystore(tmp_path: Path) -> None:
    with pytest.raises(BrokerError, match="needs --ssl-keystore"):
        BrokerConfig(home=tmp_path, port=free_port(), controller_port=free_port(), sasl_ssl_port=free_port())
