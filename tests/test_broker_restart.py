"""Roles across a broker crash and restart (SIGKILL, then a start on the same ports and data folder).

The scorer's online counts: no event is counted twice, none is lost, even when the outage outlasts its
consumers' session (they rejoin and resume at their own bookmark).

These tests run their own single-node broker (streams/local/broker.py) on free ports, so stopping it does
not disturb the session broker the other tests share.
"""

from __future__ import annotations

import gc
import json
import logging
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from asmg.data.periods import PeriodScheme
from streams.local.broker import BrokerConfig, LocalBroker, free_port
from streams.scorer.service import ScorerOptions, ScorerService, running
from streams.wire.records import read_topic
from streams.wire.topics import TopicNames, ensure_topics
from tests.test_scorer import call, make_model, publish, publish_records, served_version, wait_for


def _events(n: int, start_ts: int, seed: int) -> list[tuple[bytes, bytes]]:
    out = []
    for i in range(n):
        user, item = 1 + (i + seed) % 10, 100 + (i * 7 + seed) % 21
        value = {"user_id": user, "item_id": item, "ts": start_ts + i, "label": (i + seed) % 2}
        out.append((str(user).encode(), json.dumps(value).encode()))
    return out


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalBroker]:
    """A broker of this module's own, up at the start of each test (a test may kill and restart it)."""
    port, controller_port = free_port(), free_port()
    while controller_port == port:
        controller_port = free_port()
    broker = LocalBroker(BrokerConfig(home=tmp_path_factory.mktemp("kafka-restart"), port=port,
                                      controller_port=controller_port, heap="384m"))
    broker.start(timeout=180, die_with_parent=True)
    try:
        yield broker
    finally:
        gc.collect()  # drop clients left by the tests first
        broker.stop(timeout=30)


@pytest.mark.kafka
@pytest.mark.timeout(300)
def test_scorer_counts_every_event_once_across_a_broker_restart(broker: LocalBroker, tmp_path: Path) -> None:
    broker.start(timeout=180, die_with_parent=True)  # no-op when it runs
    settings = broker.config.settings()
    names = TopicNames("restart.")
    ensure_topics(settings, names, partitions=1)  # one partition: events are evaluated in produced order
    store = tmp_path / "models"
    v1 = make_model(store, 1, period=1)
    service = ScorerService(settings, names, ScorerOptions(
        periods=PeriodScheme(bounds=[0, 1000, 2000, 3000]), artifact_store=str(store), wait_models=20,
        batch_size=50, batch_seconds=0.1, session_timeout=6.0))
    first, second = _events(400, 1000, 0), _events(300, 2000, 3)  # period 2, then period 3
    publish_records(settings, names, v1)
    with running(service) as url:
        wait_for(lambda: served_version(url) == 1, what="v1 served")
        publish(settings, names.interactions, first)
        wait_for(lambda: call(f"{url}/quality")[1]["events"].get("scored") == len(first),
                 what="the first events evaluated")
        # a crash, and an outage longer than the consumers' session: they give up their partitions and
        # rejoin when the broker is back (without a bookmark they would start over at the earliest offset)
        revocations = service.interactions.revocations
        broker.kill()
        wait_for(lambda: service.interactions.revocations > revocations, 120,
                 "the interactions consumer's session to time out")
        broker.start(timeout=180, die_with_parent=True)
        publish(settings, names.interactions, second)

        def third_period_done() -> bool:
            row = call(f"{url}/quality")[1]["periods"].get("3")
            return row is not None and row["n"] == len(second)

        # one partition, read in order: once period 3 is complete, any re-read of period 2 came before it
        wait_for(third_period_done, 120, "the events after the restart evaluated")
        quality = call(f"{url}/quality")[1]
    assert quality["periods"]["2"]["n"] == len(first)
    assert quality["events"]["events"] == quality["events"]["scored"] == len(first) + len(second)
    assert service.interactions.assignments >= 2  # it did rejoin, and resumed at its bookmark


@pytest.mark.kafka
@pytest.mark.timeout(300)
def test_a_topic_read_waits_out_the_broker_instead_of_raising(broker: LocalBroker, tmp_path: Path,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    """The trainer reads the models topic when it starts; a broker killed under that read made it exit (CI,
    the multihost test: ``_DESTROY_BROKER`` from a watermark query). A read begun while the broker is down
    reads every record once it is back."""
    broker.start(timeout=180, die_with_parent=True)
    settings = broker.config.settings()
    names = TopicNames(f"read-{tmp_path.name[-12:]}.")
    ensure_topics(settings, names, partitions=3)
    records = _events(60, 1000, 5)
    publish(settings, names.models, records)
    caplog.set_level(logging.WARNING, logger="streams.wire.records")
    broker.kill()
    outcome: dict[str, object] = {}

    def read() -> None:
        try:
            outcome["records"] = read_topic(settings, names.models, timeout=2.0)
        except Exception as exc:  # noqa: BLE001 - the assertions below name it
            outcome["error"] = exc

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    wait_for(lambda: "error" in outcome or any("reading it again" in r.getMessage() for r in caplog.records), 120,
             "the read to meet the outage")
    assert "error" not in outcome, f"the read gave up while the broker was down: {outcome['error']!r}"
    broker.start(timeout=180, die_with_parent=True)
    reader.join(150)
    assert not reader.is_alive() and "error" not in outcome, outcome.get("error")
    got = outcome["records"]
    assert sorted(r.value for r in got) == sorted(value for _, value in records)  # each record once
    assert len({(r.partition, r.offset) for r in got}) == len(records)
