"""What the stream roles share: the wire and its settings.

- ``records.py``: the JSON records on the topics (period closed, watermark, dead letter, control; the model
  record is the library's :mod:`asmg.records`) and the blocking Kafka helpers (read a topic, a confirmed producer).
- ``topics.py``: topic names, specs and creation.
- ``kafka_config.py``: how to reach Kafka (``KAFKA_BOOTSTRAP_SERVERS``, SASL/SSL) for every client library.
- ``settings.py``: the roles' options (``StreamSettings``: flag, ``ASMG_*`` variable, default).
- ``period_store.py``: the per-period Parquet samples behind a URI (local, S3, GCS, HDFS via pyarrow).
"""
