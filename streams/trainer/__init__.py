"""The trainer role: period-closed records in, model versions out (``asmg worker trainer``).

- ``agent.py``: :class:`Trainer`, which runs the library's per-period update (:mod:`asmg.updater`) and
  publishes model records, and the faust agent around it.
- ``app.py``: the faust app factory and worker runner.
"""
