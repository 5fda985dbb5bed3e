"""The ``asmg`` command and the local demo: the one package above ``asmg``, ``streams`` and ``producers``.

- ``asmg_cli/main.py``: the command's root; it assembles the library's groups (``asmg experiment``, ``study``,
  ``report``, ``datasets``), the streams' (``asmg kafka``, ``asmg worker``) and the producers' (``asmg replay``,
  ``ingest``, ...) plus ``asmg demo``.
- ``asmg_cli/pipeline.py``: the local-pipeline harness (broker, topics, period bounds, worker processes, the
  topics and the scorer watched) that ``asmg demo`` and ``bench/bench_streaming.py`` both drive.
- ``asmg_cli/demo.py``: ``asmg demo``.

Nothing below this package imports it.
"""
