"""faust-streaming (on aiokafka) against the session broker: the check that justifies Kafka 4.x.

Kafka 4.0 dropped old protocol versions (KIP-896). This runs a real faust worker in a subprocess (faust
owns the event loop and signals) that creates a table changelog topic itself, joins a consumer group,
consumes records produced by confluent-kafka, updates a table and commits.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest

from streams.wire.kafka_config import KafkaSettings

N_MESSAGES = 5

APP = textwrap.dedent('''
    import os, sys
    import faust
    from streams.wire.kafka_config import KafkaSettings

    settings = KafkaSettings(bootstrap_servers=os.environ["BOOTSTRAP"])
    app = faust.App(os.environ["APP_ID"], **settings.faust_app_kwargs(), store="memory://",
                    web_enabled=False, topic_partitions=2, datadir=os.environ["DATADIR"])
    topic = app.topic(os.environ["TOPIC"], value_serializer="json")
    counts = app.Table("counts", default=int, partitions=2)
    seen = []

    @app.agent(topic)
    async def consume(stream):
        async for event in stream.group_by(lambda e: str(e["user"]), name="by-user"):
            seen.append(event)
            counts[str(event["user"])] += 1
            if len(seen) >= int(os.environ["EXPECT"]):
                with open(os.environ["RESULT"], "w") as out:  # faust redirects print() to its log
                    out.write(f"{len(seen)} {sum(counts.values())}")
                os._exit(0)

    if __name__ == "__main__":
        sys.argv = [sys.argv[0], "worker", "-l", "warn", "--without-web"]
        app.main()
''')


@pytest.mark.kafka
@pytest.mark.timeout(180)
def test_faust_worker_consumes_from_this_broker(kafka_settings: KafkaSettings, tmp_path: Path) -> None:
    if kafka_settings.security_protocol != "PLAINTEXT":
        pytest.skip("the compat check runs against plaintext brokers")
    from confluent_kafka import Producer
    from confluent_kafka.admin import AdminClient, NewTopic

    topic = f"test-faust-{uuid.uuid4().hex[:8]}"
    admin = AdminClient(kafka_settings.confluent_config())
    admin.create_topics([NewTopic(topic, 2, 1)])[topic].result(timeout=30)
    producer = Producer(kafka_settings.confluent_config(enable_idempotence=True, acks="all"))
    for i in range(N_MESSAGES):
        producer.produce(topic, key=str(i % 2).encode(), value=json.dumps({"user": i % 2, "i": i}).encode())
    assert producer.flush(30) == 0

    script = tmp_path / "faust_app.py"
    script.write_text(APP)
    env = {
        "BOOTSTRAP": kafka_settings.bootstrap_servers, "APP_ID": f"compat-{uuid.uuid4().hex[:8]}",
        "TOPIC": topic, "EXPECT": str(N_MESSAGES), "DATADIR": str(tmp_path / "faust"),
        "RESULT": str(tmp_path / "result.txt"),
        "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "PATH": "/usr/bin:/bin",
    }
    try:  # a hang is a failure (the timeout), its duration otherwise no concern of this test
        done = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True,
                              timeout=150, check=False)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"faust consumed nothing within 150 s:\n{(exc.stdout or b'')[-3000:]!r}\n"
                    f"{(exc.stderr or b'')[-3000:]!r}")
    output = done.stdout + done.stderr
    result = tmp_path / "result.txt"
    assert result.exists(), f"faust exited {done.returncode} without consuming:\n{output[-4000:]}"
    assert result.read_text() == f"{N_MESSAGES} {N_MESSAGES}"
