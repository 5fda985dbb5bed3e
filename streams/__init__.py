"""The stream roles around the library: Kafka in, :mod:`asmg` in the middle, Kafka out. Thin on purpose.

Roles (one sub-package each):

- ``streams.windowing``: events -> per-period samples files, and the period coordinator;
- ``streams.trainer``: period records -> the library's per-period update -> model artifacts and records;
- ``streams.scorer``: model records -> the served model (HTTP scores) and its online evaluation.

Shared by the roles:

- ``streams.wire``: record schemas, topics, Kafka settings, role settings, the period store;
- ``streams.local``: a local Kafka broker without Docker;
- ``streams/metrics.py``: the roles' Prometheus metrics; ``streams/worker.py``: process helpers (fail-stop);
- ``streams/cli.py``: the ``asmg kafka`` and ``asmg worker`` command groups.

Imports point down only: roles import ``streams.wire`` and ``asmg``, never each other's internals; nothing
here imports ``producers`` or ``asmg_cli``.
"""
