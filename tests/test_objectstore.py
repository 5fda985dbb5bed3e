"""The stores on a real S3-compatible server (S3Proxy, enforced access keys): bundles, period files,
atomic visibility without rename, bounded failures, and URIs confined to the configured store."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from pyarrow import fs

from asmg import objectstore
from asmg.artifacts import ArtifactError, bundle_exists, load_bundle, save_bundle
from streams.wire.period_store import (
    PeriodStore,
    PeriodStoreError,
    ragged_samples_table,
    read_period_record,
    within_store,
)
from streams.wire.records import combined_sha256


def _keys(prefix: str) -> list[str]:
    filesystem, root = objectstore.open_uri(prefix)
    infos = filesystem.get_file_info(fs.FileSelector(root, recursive=True, allow_not_found=True))
    return sorted(info.path[len(root) + 1:] for info in infos if info.type == fs.FileType.File)


def test_bundle_round_trip_on_s3_and_tamper_detection(s3_store: str) -> None:
    uri = f"{s3_store}/models/v000001"
    tensors = {"a": torch.arange(6.0).reshape(2, 3), "b": torch.tensor([1, 2], dtype=torch.int64)}
    assert not bundle_exists(uri)
    sha = save_bundle(uri, tensors, {"kind": "test", "period": 3})
    assert bundle_exists(uri)
    loaded, meta = load_bundle(uri, sha)
    assert torch.equal(loaded["a"], tensors["a"]) and meta["period"] == 3
    # written under the final keys: no temporary objects, no folder markers left behind
    assert _keys(f"{s3_store}/models") == ["v000001/manifest.json", "v000001/tensors.safetensors"]
    filesystem, root = objectstore.open_uri(uri)
    with filesystem.open_output_stream(f"{root}/tensors.safetensors") as stream:
        stream.write(b"not the tensors")
    with pytest.raises(ArtifactError, match="tensors.safetensors sha256"):
        load_bundle(uri, sha)
    with pytest.raises(ArtifactError, match="cannot read"):
        load_bundle(f"{s3_store}/models/missing")


def test_period_files_on_s3_are_read_only_as_their_record_names_them(s3_store: str) -> None:
    store = PeriodStore(f"{s3_store}/periods")
    a = np.array
    tables = [ragged_samples_table([1, 2], [10, 11], [5, 6], [1.0, 0.0], (a([1, 0]), a([7])), (a([0, 1]), a([3])), 4),
              ragged_samples_table([3], [12], [7], [1.0], (a([2]), a([8, 9])), (a([0]), a([], dtype=np.int64)), 4)]
    parts = [store.write_partition(4, p, t) for p, t in enumerate(tables)]
    assert store.describe(4, 2) == parts
    record = {"period": 4, "uri": store.period_uri(4), "partitions": 2, "parts": [dict(p) for p in parts],
              "samples": 3, "sha256": combined_sha256(parts)}
    assert within_store(record["uri"], store.uri)
    frame = read_period_record(record)
    assert isinstance(frame, pd.DataFrame) and frame["user_id"].tolist() == [1, 2, 3]
    assert _keys(store.uri) == ["period-000004/part-00000.parquet", "period-000004/part-00001.parquet"]
    # a part rewritten behind the record's back is refused, not trained on
    filesystem, root = objectstore.open_uri(store.uri)
    with filesystem.open_output_stream(f"{root}/period-000004/part-00001.parquet") as stream:
        stream.write(b"PAR1 tampered")
    with pytest.raises(PeriodStoreError, match="sha256"):
        read_period_record({**record, "parts": [dict(p) for p in parts]})


def test_store_uris_cannot_choose_another_endpoint_or_bucket(s3_store: str) -> None:
    with pytest.raises(PeriodStoreError, match="no query"):
        PeriodStore(f"{s3_store}/p?endpoint_override=evil.example:80").read_bytes(1, 0)
    with pytest.raises(ArtifactError, match="no query"):
        load_bundle(f"{s3_store}/m?scheme=http")
    assert not within_store("s3://other-bucket/x/period-000001", f"{s3_store}/periods")
    assert not within_store(f"{s3_store}/periods/../secrets", f"{s3_store}/periods")
    assert within_store(f"{s3_store}/periods/period-000001", f"{s3_store}/periods")


@pytest.mark.timeout(120)  # bounded: a wrong key or a dead endpoint is an error, never a hang
def test_wrong_secret_and_dead_endpoint_fail_with_an_error(s3_store: str, monkeypatch: pytest.MonkeyPatch) -> None:
    save_bundle(f"{s3_store}/ok", {"a": torch.zeros(2)}, {"kind": "test"})
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret")
    with pytest.raises(ArtifactError, match="cannot read"):
        load_bundle(f"{s3_store}/ok")
    with pytest.raises(OSError, match="(?i)signature|forbidden|access"):
        save_bundle(f"{s3_store}/forged", {"a": torch.ones(2)}, {"kind": "test"})
    from streams.local.broker import free_port

    monkeypatch.setenv("ASMG_S3_ENDPOINT", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("ASMG_S3_CONNECT_TIMEOUT", "1")
    monkeypatch.setenv("ASMG_S3_RETRIES", "1")
    with pytest.raises(ArtifactError, match="cannot read"):
        load_bundle(f"{s3_store}/ok")


def test_endpoint_setting_is_validated() -> None:
    with pytest.raises(objectstore.StoreConfigError, match="ASMG_S3_REQUEST_TIMEOUT"):
        objectstore.s3_filesystem({"ASMG_S3_REQUEST_TIMEOUT": "soon"})
    with pytest.raises(objectstore.StoreConfigError, match="expected http"):
        objectstore.s3_filesystem({"ASMG_S3_ENDPOINT": "ftp://host:21"})
