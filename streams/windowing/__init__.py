"""The windowing role: interaction events in, one Parquet samples file per (period, partition) out.

- ``core.py``: :class:`WindowingCore`, the logic, with no Kafka in it (tests drive it on dicts).
- ``facts.py``: the accepted events of open periods as Arrow columns (the state topic's values).
- ``worker.py``: the Kafka loop around the core, one transaction per batch (``asmg worker windowing``).
- ``coordinator.py``: the ONE place that declares a period closed for all partitions (runs in every
  windowing worker; the owner of the watermarks partition coordinates) and the end-of-stream markers.
"""
