"""Getting events into Kafka (confluent-kafka, idempotent, acks=all), beside the stream roles, not inside them.

- ``producer.py``: the producer settings (throughput vs. latency) and delivery accounting.
- ``replay.py``: replay a dataset (or the synthetic drifting stream) in event-time order, optionally paced.
- ``ingest.py``: live ingestion over HTTP (validated, acknowledged after Kafka confirmed).
- ``cli.py``: the ``asmg`` commands of this package.

Imports the library (:mod:`asmg.events`) and the wire (:mod:`streams.wire`), never a stream role.
"""
