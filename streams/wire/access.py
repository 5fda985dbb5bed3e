"""Fail fast on refused credentials: a role started with a wrong SASL password or an untrusted certificate.

librdkafka treats a refused login or a failed TLS handshake like a broker that is down: it logs and retries
forever, so a misconfigured role would sit there looking healthy. Before a role builds its clients it asks
the cluster for metadata once; an authentication or certificate error ends the role with the reason and the
variables to check. A cluster that merely does not answer yet is left to the role's own waiting.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from streams.wire.kafka_config import KafkaSettings

# librdkafka's wording for a refused login and an untrusted or unreadable certificate
REFUSALS = ("SASL authentication", "Authentication failed", "certificate verify failed", "SSL handshake",
            "ssl.ca.location")


class KafkaAccessRefused(RuntimeError):
    """The cluster refused these credentials or its certificate was not trusted; the message says which."""


def probe_client(settings: KafkaSettings, logger_name: str) -> tuple[Any, list[str]]:
    """A metadata-only admin client that logs nowhere and collects every error librdkafka reports, so a
    probe can name the cause (a refused password, an untrusted certificate, a refused connection)."""
    from confluent_kafka.admin import AdminClient

    quiet = logging.getLogger(logger_name)
    quiet.propagate = False
    if not quiet.handlers:
        quiet.addHandler(logging.NullHandler())
    errors: list[str] = []
    conf = settings.confluent_config(logger=quiet, socket_connection_setup_timeout_ms=5000)
    conf["error_cb"] = lambda error: errors.append(error.str())
    return AdminClient(conf), errors


def _hint(settings: KafkaSettings, reason: str) -> str:
    if "certificate" in reason or "SSL" in reason:
        return "check KAFKA_SSL_CA_LOCATION (the CA that signed the brokers' certificates)"
    return f"check KAFKA_SASL_USERNAME ({settings.sasl_username!r}), KAFKA_SASL_PASSWORD and KAFKA_SASL_MECHANISM"


def check_access(settings: KafkaSettings, timeout: float = 15.0) -> None:
    """Raise KafkaAccessRefused when the cluster refuses ``settings``' credentials or certificate; return when
    it answers or when ``timeout`` passes without a verdict. No-op for PLAINTEXT (nothing to refuse)."""
    if not (settings.uses_sasl or settings.uses_ssl):
        return
    from confluent_kafka import KafkaException

    admin, errors = probe_client(settings, "asmg.kafka.access")
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            try:
                admin.list_topics(timeout=1.0)
                return
            except KafkaException:
                admin.poll(0.1)  # serve the error callbacks queued meanwhile
            refused = [e for e in errors if any(needle in e for needle in REFUSALS)]
            if refused:
                raise KafkaAccessRefused(f"Kafka at {settings.bootstrap_servers} refused this client "
                                         f"({settings.security_protocol}): {refused[0]}; {_hint(settings, refused[0])}")
    finally:
        del admin  # no client left retrying in the background
