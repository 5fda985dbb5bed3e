"""Kafka connection settings: the one place that reads KAFKA_* and ASMG_KAFKA_PORT from the environment.

Every client in the project (confluent-kafka producers and admin, aiokafka, faust) is configured from a
:class:`KafkaSettings`, so pointing the whole system at another cluster, or turning on SASL/SSL, is a
matter of environment variables and nothing else.
"""

from __future__ import annotations

import logging
import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

DEFAULT_PORT = 9092
PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


class KafkaConfigError(ValueError):
    """Inconsistent or invalid Kafka settings; the message names the variable at fault."""


def _env(env: Mapping[str, str], name: str) -> str | None:
    value = env.get(name, "").strip()
    return value or None


@dataclass(frozen=True)
class KafkaSettings:
    """Where Kafka is and how to authenticate to it.

    ``external`` is true when the bootstrap servers came from KAFKA_BOOTSTRAP_SERVERS: the cluster is
    someone else's, so ``asmg kafka start`` must not start a local broker but only check that it answers.
    """

    bootstrap_servers: str = f"localhost:{DEFAULT_PORT}"
    external: bool = False
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: str | None = field(default=None, repr=False)
    ssl_ca_location: str | None = None
    ssl_certificate_location: str | None = None
    ssl_key_location: str | None = None
    ssl_key_password: str | None = field(default=None, repr=False)
    client_id: str = "asmg"

    def __post_init__(self) -> None:
        if not self.bootstrap_servers.strip():
            raise KafkaConfigError("KAFKA_BOOTSTRAP_SERVERS is empty; expected host:port[,host:port...]")
        for server in self.bootstrap_list:
            host, sep, port = server.rpartition(":")
            if not sep or not host or not port.isdigit():
                raise KafkaConfigError(f"KAFKA_BOOTSTRAP_SERVERS: {server!r} is not host:port")
        if self.security_protocol not in PROTOCOLS:
            raise KafkaConfigError(
                f"KAFKA_SECURITY_PROTOCOL={self.security_protocol!r}; expected one of {', '.join(PROTOCOLS)}"
            )
        if self.uses_sasl:
            if self.sasl_mechanism not in SASL_MECHANISMS:
                raise KafkaConfigError(
                    f"KAFKA_SASL_MECHANISM={self.sasl_mechanism!r}; with {self.security_protocol} expected one "
                    f"of {', '.join(SASL_MECHANISMS)}"
                )
            if not (self.sasl_username and self.sasl_password):
                raise KafkaConfigError(
                    f"{self.security_protocol} needs KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD"
                )
        for name in ("ssl_ca_location", "ssl_certificate_location", "ssl_key_location"):
            path = getattr(self, name)
            if path and not os.path.isfile(path):
                raise KafkaConfigError(f"KAFKA_{name.upper()}={path!r}: file not found")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, *, port: int | None = None) -> KafkaSettings:
        """Read KAFKA_* variables; without KAFKA_BOOTSTRAP_SERVERS, the local broker on ``port``.

        ``port`` (else ASMG_KAFKA_PORT, else 9092) only matters for the local broker.
        """
        env = os.environ if env is None else env
        bootstrap = _env(env, "KAFKA_BOOTSTRAP_SERVERS")
        if bootstrap is None:
            if port is None:
                raw = _env(env, "ASMG_KAFKA_PORT") or str(DEFAULT_PORT)
                if not raw.isdigit():
                    raise KafkaConfigError(f"ASMG_KAFKA_PORT={raw!r}; expected a port number")
                port = int(raw)
            bootstrap = f"localhost:{port}"
        protocol = (_env(env, "KAFKA_SECURITY_PROTOCOL") or "PLAINTEXT").upper()
        mechanism = _env(env, "KAFKA_SASL_MECHANISM")
        return cls(
            bootstrap_servers=bootstrap,
            external=_env(env, "KAFKA_BOOTSTRAP_SERVERS") is not None,
            security_protocol=protocol,
            sasl_mechanism=mechanism.upper() if mechanism else ("PLAIN" if protocol.startswith("SASL_") else None),
            sasl_username=_env(env, "KAFKA_SASL_USERNAME"),
            sasl_password=_env(env, "KAFKA_SASL_PASSWORD"),
            ssl_ca_location=_env(env, "KAFKA_SSL_CA_LOCATION"),
            ssl_certificate_location=_env(env, "KAFKA_SSL_CERTIFICATE_LOCATION"),
            ssl_key_location=_env(env, "KAFKA_SSL_KEY_LOCATION"),
            ssl_key_password=_env(env, "KAFKA_SSL_KEY_PASSWORD"),
            client_id=_env(env, "KAFKA_CLIENT_ID") or "asmg",
        )

    @classmethod
    def local(cls, port: int = DEFAULT_PORT, host: str = "localhost") -> KafkaSettings:
        """Plain settings for a broker this process started (tests, ``asmg kafka start``)."""
        return cls(bootstrap_servers=f"{host}:{port}")

    @property
    def bootstrap_list(self) -> list[str]:
        return [s.strip() for s in self.bootstrap_servers.split(",") if s.strip()]

    @property
    def uses_sasl(self) -> bool:
        return self.security_protocol.startswith("SASL_")

    @property
    def uses_ssl(self) -> bool:
        return self.security_protocol in ("SSL", "SASL_SSL")

    def confluent_config(self, *, logger_name: str | None = None, **extra: Any) -> dict[str, Any]:
        """librdkafka configuration for confluent-kafka Producer/Consumer/AdminClient.

        Keyword arguments use librdkafka names with dots replaced by underscores
        (``enable_idempotence=True`` -> ``enable.idempotence``). ``logger_name``: librdkafka's own log lines
        go to that Python logger (so they follow ``--log-format json``) from warning level up; its info
        lines would be printed raw on stderr when a client closes with some still queued.
        """
        conf: dict[str, Any] = {
            "bootstrap.servers": self.bootstrap_servers,
            "client.id": self.client_id,
            "security.protocol": self.security_protocol,
        }
        if self.uses_sasl:
            conf.update({
                "sasl.mechanism": self.sasl_mechanism,
                "sasl.username": self.sasl_username,
                "sasl.password": self.sasl_password,
            })
        for key, value in (
            ("ssl.ca.location", self.ssl_ca_location),
            ("ssl.certificate.location", self.ssl_certificate_location),
            ("ssl.key.location", self.ssl_key_location),
            ("ssl.key.password", self.ssl_key_password),
        ):
            if value:
                conf[key] = value
        conf.update({key.replace("_", "."): value for key, value in extra.items()})
        if logger_name is not None:
            conf.update({"logger": logging.getLogger(logger_name), "log_level": 4})
        return conf

    def ssl_context(self) -> ssl.SSLContext | None:
        """An SSL context for asyncio clients (aiokafka, faust); None without SSL."""
        if not self.uses_ssl:
            return None
        context = ssl.create_default_context(cafile=self.ssl_ca_location)
        if self.ssl_certificate_location:
            context.load_cert_chain(
                self.ssl_certificate_location, self.ssl_key_location, password=self.ssl_key_password
            )
        return context

    def aiokafka_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for aiokafka's AIOKafkaProducer/Consumer/AdminClient."""
        kwargs: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap_list,
            "client_id": self.client_id,
            "security_protocol": self.security_protocol,
        }
        if self.uses_sasl:
            kwargs.update({
                "sasl_mechanism": self.sasl_mechanism,
                "sasl_plain_username": self.sasl_username,
                "sasl_plain_password": self.sasl_password,
            })
        if self.uses_ssl:
            kwargs["ssl_context"] = self.ssl_context()
        return kwargs

    @property
    def faust_broker(self) -> str:
        """Broker URL in faust's form: ``kafka://h1:9092;kafka://h2:9092``."""
        return ";".join(f"kafka://{server}" for server in self.bootstrap_list)

    def faust_app_kwargs(self) -> dict[str, Any]:
        """``broker`` and ``broker_credentials`` for ``faust.App(...)`` (imports faust lazily)."""
        kwargs: dict[str, Any] = {"broker": self.faust_broker}
        if self.uses_sasl:
            import faust

            kwargs["broker_credentials"] = faust.SASLCredentials(
                username=self.sasl_username,
                password=self.sasl_password,
                mechanism=self.sasl_mechanism,
                ssl_context=self.ssl_context(),
            )
        elif self.uses_ssl:
            import faust

            kwargs["broker_credentials"] = faust.SSLCredentials(self.ssl_context())
        return kwargs
