"""The scorer role: serves the newest model over HTTP and evaluates it online (``asmg worker scorer``).

- ``command.py``: the ``asmg worker scorer`` command (light: heavy imports only when it runs).
- ``service.py``: the two Kafka feeds (models, interactions) and the HTTP views.
- ``state.py``: the served model and its atomic swap, without Kafka or HTTP.
- ``evaluation.py``: per-user histories and the prequential (online) AUC/logloss against the IU shadow.
"""
