"""Local broker tooling: a single-node Apache Kafka (KRaft, no Docker) from the release jars (``broker.py``),
behind ``asmg kafka start|stop|status|perf``; tests and the local pipeline harness start it the same way."""
