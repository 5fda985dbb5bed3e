"""Model records signed by the trainer and verified by scorers; artifact URIs held to the artifact store; model
loads bounded in time.

Unit tests need no Kafka; the ``kafka`` tests publish real records to a real broker (tests/conftest.py) and
read what a scorer running in this process serves.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import urllib.request
from dataclasses import replace
from pathlib import Path

import pytest

from asmg.artifacts import MANIFEST, load_model, sha256_hex
from asmg.records import ModelRecord, RecordError, SignatureError, parse_model_record, sign_record
from asmg.report import report
from streams.scorer.command import scorer_command
from streams.scorer.service import running
from streams.scorer.state import MAX_HANGING, ModelHolder
from streams.wire.kafka_config import KafkaSettings
from streams.wire.records import read_topic
from streams.wire.settings import SettingsError, StreamSettings, signing_key
from streams.wire.topics import TopicNames, ensure_topics
from tests.test_scorer import MODEL, call, make_model, publish, publish_records, served_version, service_for, wait_for

KEY = b"k" * 32
OTHER_KEY = b"o" * 32


def signed(record: ModelRecord, key: bytes = KEY) -> ModelRecord:
    return sign_record(record, key)


def full_record() -> ModelRecord:
    """A record with every optional field set, so tampering can reach each of them."""
    return ModelRecord(MODEL, 7, 12, "asmg-guarded", "/store/asmg/v000007-p0012", "a" * 64,
                       {"auc": 0.71, "logloss": 0.6, "samples": 100}, {"auc": 0.7}, "2024-01-01T00:00:00+00:00",
                       pretrained=False, seconds=1.5, phases={"read": 0.1}, candidate="iu",
                       candidates={"iu": {"auc": 0.7, "score": 0.1}, "asmg-gru-multi": {"auc": 0.69}})


# --- sign / verify ------------------------------------------------------------------------------------------


def test_signed_record_round_trips_and_verifies() -> None:
    record = signed(full_record())
    assert record.signature is not None and len(record.signature) == 64
    wire = record.to_json()
    parsed = parse_model_record(wire, MODEL.encode(), KEY)
    assert parsed == record
    assert parse_model_record(wire) == record  # a reader without a key reads it too
    assert signed(parsed) == record  # signing again (a new signature over the same content) is stable


def _tampered(raw: dict, path: tuple[str, ...], value: object) -> dict:
    out = json.loads(json.dumps(raw))
    target = out
    for name in path[:-1]:
        target = target[name]
    target[path[-1]] = value
    return out


def _leaves(raw: dict, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out = []
    for name, value in raw.items():
        if name == "signature":
            continue
        if isinstance(value, dict):
            out.extend(_leaves(value, (*prefix, name)))
        out.append((*prefix, name))
    return out


def test_tampering_with_any_field_breaks_the_signature() -> None:
    raw = json.loads(signed(full_record()).to_json())
    paths = _leaves(raw)
    assert ("uri",) in paths and ("sha256",) in paths and ("candidates", "iu", "auc") in paths
    for path in paths:
        current = raw
        for name in path:
            current = current[name]
        replacement = ("/elsewhere" if path == ("uri",) else "b" * 64 if path == ("sha256",)
                       else current + 1 if isinstance(current, int | float) and not isinstance(current, bool)
                       else None if current is not None else 0.5)
        tampered = _tampered(raw, path, replacement)
        try:
            parse_model_record(json.dumps(tampered).encode(), MODEL.encode(), KEY)
        except SignatureError as exc:
            assert "does not match" in exc.reason
        except RecordError:
            pass  # the schema refused the new value first: refused all the same
        else:
            raise AssertionError(f"changing {'.'.join(path)} kept a valid signature")
    added = {**raw, "extra": 1}  # a field this reader does not know is covered too
    with pytest.raises(SignatureError, match="does not match"):
        parse_model_record(json.dumps(added).encode(), MODEL.encode(), KEY)


@pytest.mark.parametrize(("change", "reason"), [
    (lambda raw: {k: v for k, v in raw.items() if k != "signature"}, "not signed"),
    (lambda raw: {**raw, "signature": raw["signature"].upper()}, "64 lowercase hex"),
    (lambda raw: {**raw, "signature": 12}, "64 lowercase hex"),
    (lambda raw: {**raw, "signature": json.loads(signed(full_record(), OTHER_KEY).to_json())["signature"]},
     "does not match"),
])
def test_unsigned_malformed_and_other_key_signatures_are_refused(change, reason: str) -> None:
    raw = change(json.loads(signed(full_record()).to_json()))
    with pytest.raises(SignatureError, match=reason):
        parse_model_record(json.dumps(raw).encode(), MODEL.encode(), KEY)
    parse_model_record(json.dumps(raw).encode(), MODEL.encode())  # without a key: the field is ignored


def test_signing_key_settings(tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("  " + "s" * 20 + "\n")
    assert signing_key(None, str(key_file)) == b"s" * 20
    assert signing_key("v" * 16, None) == b"v" * 16
    assert signing_key(None, None) is None and signing_key("", " ") is None
    with pytest.raises(SettingsError, match="at least 16"):
        signing_key("short", None)
    with pytest.raises(SettingsError, match="not both"):
        signing_key("v" * 16, str(key_file))
    with pytest.raises(SettingsError, match="ASMG_MODEL_SIGNING_KEY_FILE"):
        signing_key(None, str(tmp_path / "missing"))
    settings = StreamSettings.from_env({"ASMG_MODEL_SIGNING_KEY_FILE": str(key_file)})
    assert settings.signing_key() == b"s" * 20
    secret = StreamSettings.from_env({"ASMG_MODEL_SIGNING_KEY": "secret-value-1234567"})
    assert "secret-value" not in repr(secret)
    with pytest.raises(SettingsError, match="at least 16"):
        StreamSettings.from_env({"ASMG_MODEL_SIGNING_KEY": "short"})


def test_scorer_command_refuses_a_short_key() -> None:
    import typer
    from typer.testing import CliRunner

    app = typer.Typer()
    app.command()(scorer_command)
    result = CliRunner().invoke(app, [], env={"ASMG_MODEL_SIGNING_KEY": "short", "ASMG_PERIOD_BOUNDS": "[0, 1]"})
    assert result.exit_code == 2 and "at least 16" in result.output


def test_report_reads_signed_records(tmp_path: Path) -> None:
    run_dir = tmp_path / "asmg.demo-1"
    run_dir.mkdir()
    records = [signed(replace(full_record(), version=v, period=p)).to_dict() for v, p in ((1, 11), (2, 12))]
    (run_dir / "models.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    _, run = report(run_dir)
    assert run.periods() == [11, 12]


# --- the artifact store and bounded loads (ModelHolder, no Kafka) -------------------------------------------


def test_records_outside_the_artifact_store_are_refused(tmp_path: Path) -> None:
    store, elsewhere = tmp_path / "store", tmp_path / "elsewhere"
    v1 = make_model(store, 1)
    outside = make_model(elsewhere, 2)
    loads: list[str] = []

    def loader(uri: str, sha: str):
        loads.append(uri)
        return load_model(uri, sha)

    holder = ModelHolder(loader=loader, artifact_store=str(store))
    assert holder.offer([v1]) is not None
    bad = [outside, replace(outside, uri=f"{store}/../elsewhere/v2"), replace(outside, uri=f"file://{outside.uri}"),
           replace(outside, uri=f"{store}/v2?x=1"), replace(outside, uri="s3://bucket/v2"),
           replace(outside, uri=str(store) + "x/v2")]
    for record in bad:
        assert holder.offer([record]) is None
    assert holder.counts["records_refused"] == len(bad) and holder.current.version == 1
    assert "outside the artifact store" in holder.last_error
    assert loads == [v1.uri]  # nothing outside the store was opened


@pytest.mark.timeout(60)
def test_a_load_that_never_returns_is_given_up(tmp_path: Path) -> None:
    """The manifest is a FIFO without a writer: reading it blocks forever, like a filesystem that never
    answers. The load is given up after the timeout, the old model serves on, the next version loads."""
    store = tmp_path / "store"
    v1, v2, v3 = (make_model(store, v) for v in (1, 2, 3))
    manifest = Path(v2.uri) / MANIFEST
    manifest.unlink()
    os.mkfifo(manifest)
    holder = ModelHolder(artifact_store=str(store), load_timeout=1.0)
    assert holder.offer([v1]) is not None
    try:
        assert holder.offer([v2]) is None
        assert holder.counts["load_timeouts"] == 1 and holder.counts["load_failures"] == 1
        assert holder.current.version == 1 and "given up" in holder.last_error and holder.hanging == 1
        assert holder.offer([v3]) is not None and holder.current.version == 3
    finally:
        fd = os.open(manifest, os.O_WRONLY | os.O_NONBLOCK)  # let the stuck reader finish (it reads EOF)
        os.close(fd)
    wait_for(lambda: holder.hanging == 0, 30, "the stuck load to return")


def test_stuck_loads_are_bounded() -> None:
    release = threading.Event()

    def stuck(uri: str, sha: str):
        release.wait()
        raise OSError("released")

    holder = ModelHolder(loader=stuck, load_timeout=0.05)
    record = ModelRecord(MODEL, 1, 1, "iu", "/x", "a" * 64)
    try:
        for version in range(1, MAX_HANGING + 3):
            assert holder.offer([replace(record, version=version)]) is None
        assert holder.hanging == MAX_HANGING and holder.counts["load_timeouts"] == MAX_HANGING
        assert "still stuck" in holder.last_error
    finally:
        release.set()
    wait_for(lambda: holder.hanging == 0, 30, "the stuck loads to return")


# --- against the broker -------------------------------------------------------------------------------------


def forged_copy(genuine: ModelRecord, store: Path, version: int) -> ModelRecord:
    """What an attacker with write access to the store and the topic, but not the key, can make: the genuine
    artifact copied under a new name, its manifest changed to the new version, and the record's sha256
    recomputed so the checksum chain holds."""
    target = store / f"forged-v{version}"
    shutil.copytree(genuine.uri, target)
    manifest = json.loads((target / MANIFEST).read_text())
    manifest["version"] = version
    text = json.dumps(manifest, indent=2, sort_keys=True).encode()
    (target / MANIFEST).write_bytes(text)
    return replace(genuine, version=version, uri=str(target), sha256=sha256_hex(text), signature=None)


@pytest.mark.timeout(120)
def test_scorer_with_a_key_serves_only_signed_records(kafka_settings: KafkaSettings, topic_names: TopicNames,
                                                      tmp_path: Path) -> None:
    store = tmp_path / "store"
    v1, v5 = make_model(store, 1), make_model(store, 5)
    forged = forged_copy(v1, store, 2)
    assert load_model(forged.uri, forged.sha256).version == 2  # the forgery passes every checksum
    wrong_key = signed(forged_copy(v1, store, 3), OTHER_KEY)
    outside = signed(make_model(tmp_path / "elsewhere", 4))  # signed, but not in the store
    service = service_for(kafka_settings, topic_names, store, wait_models=0.5, signing_key=KEY)
    with running(service) as url:
        publish_records(kafka_settings, topic_names, v1)  # unsigned: refused too
        publish_records(kafka_settings, topic_names, signed(v1))
        wait_for(lambda: served_version(url) == 1, what="the signed v1 served")
        publish_records(kafka_settings, topic_names, forged, wrong_key)
        publish(kafka_settings, topic_names.models, [(b"asmg", outside.to_json())])
        wait_for(lambda: call(f"{url}/healthz")[1]["records_refused"] == 1, what="the record outside the store")
        health = call(f"{url}/healthz")[1]
        assert health["records_forged"] == 3 and health["models_loaded"] == 1
        assert served_version(url) == 1
        publish_records(kafka_settings, topic_names, signed(v5))
        wait_for(lambda: served_version(url) == 5, what="the genuine v5 served")
        assert call(f"{url}/healthz")[1]["records_forged"] == 3
        metrics = urllib.request.urlopen(f"{url}/metrics", timeout=10).read().decode()
        assert 'asmg_scorer_model_records_total{outcome="records_forged"} 3.0' in metrics
        assert 'asmg_scorer_model_records_total{outcome="records_refused"} 1.0' in metrics


@pytest.mark.timeout(120)
def test_trainer_signs_what_it_publishes(kafka_settings: KafkaSettings, topic_names: TopicNames,
                                         tmp_path: Path) -> None:
    from streams.trainer.agent import Trainer

    ensure_topics(kafka_settings, topic_names, partitions=1)
    key_file = tmp_path / "key"
    key_file.write_bytes(KEY)
    settings = StreamSettings(topic_prefix=topic_names.prefix, model_signing_key_file=str(key_file),
                              artifact_store=str(tmp_path / "models"), checkpoint_store=str(tmp_path / "ckpt"))
    trainer = Trainer(settings, topic_names, kafka_settings)
    record = make_model(tmp_path / "models", 1)
    trainer._publish(record)
    published = [r for r in read_topic(kafka_settings, topic_names.models) if r.key == MODEL.encode()]
    assert len(published) == 1
    parsed = parse_model_record(published[0].value, published[0].key, KEY)
    assert parsed == signed(record)
    with pytest.raises(SignatureError):
        parse_model_record(published[0].value, published[0].key, OTHER_KEY)
