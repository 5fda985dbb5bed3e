"""Artifacts: checksummed safetensors bundles; a scorer built from one matches the library's forward."""

import json

import numpy as np
import pytest
import torch

from asmg.artifacts import ArtifactError, load_bundle, load_model, save_bundle, save_model
from asmg.batches import encode_period
from asmg.model import init_params
from asmg.serving import Scorer
from asmg.train import predict
from asmg.vocab import Vocabularies
from tests.helpers import tiny_samples


def test_bundle_round_trip_and_checksums(tmp_path):
    tensors = {"a": torch.arange(6.0).reshape(2, 3), "b": torch.tensor([1, 2], dtype=torch.int64)}
    sha = save_bundle(str(tmp_path / "x"), tensors, {"kind": "test", "period": 3})
    loaded, meta = load_bundle(str(tmp_path / "x"), sha)
    assert torch.equal(loaded["a"], tensors["a"]) and meta["period"] == 3
    with pytest.raises(ArtifactError, match="manifest sha256"):
        load_bundle(str(tmp_path / "x"), "0" * 64)
    blob = (tmp_path / "x" / "tensors.safetensors").read_bytes()
    (tmp_path / "x" / "tensors.safetensors").write_bytes(blob[:-1] + bytes([blob[-1] ^ 1]))
    with pytest.raises(ArtifactError, match="tensors.safetensors sha256"):
        load_bundle(str(tmp_path / "x"))
    with pytest.raises(ArtifactError, match="cannot read"):
        load_bundle(str(tmp_path / "missing"))


def test_model_artifact_scores_like_the_library(tmp_path):
    samples = tiny_samples(n_events=500)
    vocabs = Vocabularies()
    data = encode_period(samples, vocabs, period=1, history_len=30)
    params = init_params(vocabs.sizes(), seed=3)
    sha = save_model(str(tmp_path / "m"), version=4, period=12, method="iu", serving=params, shadow=params,
                     vocabs=vocabs, config={}, metrics={"auc": 0.5})
    manifest = json.loads((tmp_path / "m" / "manifest.json").read_text())
    assert manifest["version"] == 4 and manifest["files"]["tensors.safetensors"]["sha256"]
    scorer = Scorer(load_model(str(tmp_path / "m"), sha))
    expected = predict(params, data, vocabs.item_categories.table)
    got = scorer.score(scorer.encode(samples["user_id"].to_numpy(), samples["item_id"].to_numpy(),
                                     [np.asarray(h) for h in samples["history"]]))
    assert np.allclose(got, expected, atol=1e-6)
    unknown = scorer.score_user(999_999, [1, 2, 888_888], history=[1, 2])
    assert unknown.shape == (3,) and np.isfinite(unknown).all()
