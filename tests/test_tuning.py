"""Choosing hyper-parameters reads validation periods only, and picks what validated best."""

from __future__ import annotations

from dataclasses import replace

import pytest

from asmg.config import RunConfig
from asmg.data.synthetic import synthetic_log
from asmg.prepare import prepare_periods
from asmg.presets import AUTO, default_preset, preset
from asmg.tuning import BaseCandidate, best_of, choose_base, validation_runs, validation_window

CFG = RunConfig(protocol=replace(RunConfig().protocol, n_periods=12, pretrain_periods=3, first_test_period=10))


@pytest.fixture(scope="module")
def data():
    log = synthetic_log(n_users=100, n_items=60, n_categories=4, n_periods=12, events_per_period=200,
                        implicit=False, seed=5)
    return prepare_periods(log, CFG.protocol)


def test_validation_window_ends_before_the_first_test_period() -> None:
    assert validation_window(RunConfig().protocol) == (18, 23)  # the paper's protocol: tests on D_25..D_31
    assert validation_window(CFG.protocol) == (4, 8)
    with pytest.raises(ValueError, match="no validation periods"):
        validation_window(replace(CFG.protocol, first_test_period=5))


def test_validation_runs_never_test_on_a_test_period(data) -> None:
    runs = validation_runs(data, CFG, ["iu"], [0])
    tested = [p["period"] for p in runs[0]["validation_periods"]] + [p["period"] for p in runs[0]["periods"]]
    assert max(tested) == validation_window(CFG.protocol)[1]
    assert runs[0]["periods"] == []  # no test period at all


def test_choose_base_takes_the_best_validated_candidate(data) -> None:
    grid = [BaseCandidate(1e-4, 1, 1024), BaseCandidate(1e-2, 2, 64)]  # hardly trains vs trains
    chosen, scores = choose_base(data, CFG, (0,), grid)
    assert [c for c, _ in scores] == grid
    best = max(scores, key=lambda pair: pair[1])[0]
    assert best_of(scores)[0] == best
    assert (chosen.train.lr, chosen.train.epochs, chosen.train.batch_size) == (best.lr, best.epochs, best.batch_size)
    assert scores[1][1] > scores[0][1]  # the learning candidate validates better: the choice is not arbitrary
    assert chosen.meta == CFG.meta and chosen.protocol == CFG.protocol


def test_unknown_datasets_default_to_auto_and_known_ones_to_their_preset() -> None:
    assert default_preset("my-own-log") == AUTO
    assert default_preset("ml-100k") == "ml-100k"
    assert preset(AUTO)[0].train.lr == preset("ml-100k")[0].train.lr  # auto starts from the chosen settings
    assert preset("authors")[0].train.lr == 1e-3  # the authors' preset stays as the paper has it
