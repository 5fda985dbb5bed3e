"""The offline protocol end to end through the CLI, on ml-100k cut into a few periods."""

import json

import pytest
from typer.testing import CliRunner

from asmg_cli.main import app
from tests.helpers import require_ml100k

SMALL = ["--periods", "8", "--pretrain-periods", "3", "--first-test-period", "6", "--pretrain-epochs", "1"]


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("exp")
    result = CliRunner().invoke(app, ["experiment", "--data-dir", str(require_ml100k()), "--methods",
                                      "iu,bu-2,asmg-linear,asmg-gru-multi", "--seeds", "0,1", "--out", str(out),
                                      "--workers", "1", "--cache-dir", str(out / "cache"), *SMALL])
    assert result.exit_code == 0, result.output
    return out, result.output


def test_experiment_writes_results_table_and_plot(small_run):
    out, output = small_run
    results = json.loads((out / "results.json").read_text())
    assert results["dataset"] == "ml-100k"
    assert results["protocol"]["n_periods"] == 8 and len(results["protocol"]["bounds"]) == 9
    assert len(results["runs"]) == 8
    for run in results["runs"]:
        assert [p["period"] for p in run["periods"]] == [6, 7, 8]
        assert 0.5 < run["mean_auc"] < 0.9 and run["mean_logloss"] > 0
        assert run["mean_auc"] == pytest.approx(sum(p["auc"] for p in run["periods"]) / 3)
    summary = results["summary"]
    assert set(summary) == {"iu", "bu-2", "asmg-linear", "asmg-gru-multi"}
    assert summary["iu"]["auc_rel_impr_vs_iu"] == pytest.approx(0.0)
    multi = summary["asmg-gru-multi"]
    assert multi["auc_rel_impr_vs_iu"] == pytest.approx((multi["auc_mean"] / summary["iu"]["auc_mean"] - 1) * 100)
    table = (out / "results.md").read_text()
    assert "| asmg-gru-multi |" in table and "±" in table
    assert (out / "auc_by_period.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "asmg-gru-multi" in output


def test_seeds_give_different_runs_and_same_seed_repeats(small_run, tmp_path):
    out, _ = small_run
    runs = json.loads((out / "results.json").read_text())["runs"]
    iu = [r for r in runs if r["method"] == "iu"]
    assert iu[0]["mean_auc"] != iu[1]["mean_auc"]
    again = CliRunner().invoke(app, ["experiment", "--data-dir", str(require_ml100k()), "--methods", "iu",
                                     "--seeds", "0",
                                     "--out", str(tmp_path), "--workers", "1", "--cache-dir", str(out / "cache"),
                                     *SMALL])
    assert again.exit_code == 0, again.output
    repeat = json.loads((tmp_path / "results.json").read_text())["runs"][0]
    assert repeat["mean_auc"] == pytest.approx(iu[0]["mean_auc"], abs=1e-9)


def test_unknown_method_is_a_clear_error(tmp_path):
    result = CliRunner().invoke(app, ["experiment", "--data-dir", str(require_ml100k()), "--methods", "iu,magic",
                                      "--out", str(tmp_path)])
    assert result.exit_code != 0
    assert "unknown method 'magic'" in result.output


def test_missing_data_is_a_clear_error(tmp_path):
    result = CliRunner().invoke(app, ["experiment", "--data-dir", str(tmp_path / "nowhere"), "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert "u.data" in result.output and "not found" in result.output
