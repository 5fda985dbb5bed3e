"""`asmg report`: HTML pages of plots from an experiment's results.json and from a streaming run's model records."""

from __future__ import annotations

import base64
import json
import os
import re
from dataclasses import replace
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from asmg.cli_report import register
from asmg.report import ReportError, lift, load_run, phase_means, report

PNG = b"\x89PNG\r\n\x1a\n"


def _images(page: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r'src="data:image/png;base64,([^"]+)"', page)]


def _cli(*args: str):
    app = typer.Typer()
    register(app)
    app.command("noop")(lambda: None)  # a second command keeps `report` a subcommand
    return CliRunner().invoke(app, ["report", *args])


@pytest.fixture(scope="module")
def experiment_dir(tmp_path_factory) -> Path:
    """A real (tiny) `asmg experiment` output: IU and ASMG-GRU, two seeds."""
    from asmg.config import ProtocolConfig
    from asmg.experiment import ExperimentSpec, run_experiment
    from asmg.prepare import prepare_periods
    from asmg.presets import preset
    from tests.helpers import tiny_log

    protocol = ProtocolConfig(n_periods=6, pretrain_periods=2, first_test_period=5)
    cfg, _ = preset("authors")
    cfg = replace(cfg, device="cpu", protocol=protocol, train=replace(cfg.train, pretrain_epochs=1, batch_size=256),
                  meta=replace(cfg.meta, batch_size=256, epochs=1))
    out = tmp_path_factory.mktemp("experiment")
    run_experiment(prepare_periods(tiny_log(n_events=1500), protocol),
                   ExperimentSpec("tiny", ["iu", "asmg-gru-multi"], [0, 1], cfg), out=out, show_progress=False)
    return out


def test_report_of_an_experiment(experiment_dir: Path) -> None:
    result = _cli(str(experiment_dir))
    assert result.exit_code == 0, result.output
    page = (experiment_dir / "report.html").read_text()
    images = _images(page)
    assert len(images) == 4 and all(image.startswith(PNG) for image in images)  # auc, logloss, lift, phases
    for key in ("auc", "logloss", "lift", "phases"):
        assert (experiment_dir / f"report-{key}.png").read_bytes().startswith(PNG)
    run = load_run(experiment_dir)
    assert run.kind == "experiment" and run.series() == ["iu", "asmg-gru-multi"] and run.periods() == [3, 4, 5, 6]
    periods, values = lift(run)["asmg-gru-multi"]
    assert periods == [3, 4, 5, 6] and len(values) == 4
    phases = phase_means(run)["asmg-gru-multi"]
    assert {"evaluate", "meta_training", "base_update", "generation"} <= set(phases)  # the finer ASMG phases
    assert "update" not in phases  # shown as its parts (plus what they leave over)
    assert "asmg-gru-multi" in page and "mean lift over iu" in page


def _record(period: int, version: int, auc: float, shadow: float | None = 0.70, **extra) -> dict:
    record = {"v": 1, "model": "asmg", "version": version, "period": period, "method": "asmg-gru-multi",
              "uri": f"/m/v{version}", "sha256": "0" * 64, "metrics": {"auc": auc, "logloss": 0.6, "samples": 100},
              "shadow_metrics": None if shadow is None else {"auc": shadow, "logloss": 0.62, "samples": 100},
              "created": "2026-01-01T00:00:00+00:00", "seconds": 2.5,
              "phases": {"read": 0.1, "evaluate": 0.2, "update": 2.0, "meta_training": 1.2, "base_update": 0.5,
                         "generation": 0.2, "artifact": 0.1}}
    return {**record, **extra}


def test_report_of_a_streaming_run(tmp_path: Path) -> None:
    run_dir = tmp_path / "asmg.demo-1"
    run_dir.mkdir()
    records = [_record(4, 1, 0.71), _record(5, 2, 0.69), _record(5, 2, 0.69), _record(6, 3, 0.73)]  # 5: seen twice
    (run_dir / "models.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    path, run = report(run_dir)
    assert path == run_dir / "report.html"
    assert run.kind == "stream" and run.periods() == [4, 5, 6]
    assert run.series() == ["served (asmg-gru-multi)", "IU shadow"]
    periods, values = lift(run)["served (asmg-gru-multi)"]
    assert periods == [4, 5, 6] and values == pytest.approx([0.01, -0.01, 0.03])
    assert phase_means(run)["p5"]["meta_training"] == 1.2
    assert len(_images(path.read_text())) == 4


def test_report_picks_the_newest_run_and_reads_manifests(tmp_path: Path) -> None:
    # the newer run has the smaller name: "newest" is by modification time, not by name
    old, new = tmp_path / "asmg.demo-2", tmp_path / "asmg.demo-1"
    for run_dir, auc, mtime in ((old, 0.6, 1_700_000_000), (new, 0.8, 1_700_000_100)):
        manifest = run_dir / "models" / "asmg" / "v000001-p0004" / "manifest.json"
        manifest.parent.mkdir(parents=True)
        manifest.write_text(json.dumps({"format": 1, "kind": "model", "version": 1, "period": 4,
                                        "method": "iu", "metrics": {"auc": auc, "logloss": 0.5}}))
        os.utime(run_dir, (mtime, mtime))
    run = load_run(tmp_path)
    assert run.points[0].auc == 0.8 and "newest" in run.notes[0] and "manifests" in " ".join(run.notes)
    path, _ = report(tmp_path, out=tmp_path / "out" / "page.html", write_pngs=False)
    assert len(_images(path.read_text())) == 2 and not list(path.parent.glob("*.png"))  # no shadow: no lift


def test_report_says_what_is_missing(tmp_path: Path) -> None:
    with pytest.raises(ReportError, match="results.json"):
        load_run(tmp_path)
    result = _cli(str(tmp_path))
    assert result.exit_code == 2 and "models.jsonl" in result.output
    (tmp_path / "models.jsonl").write_text('{"model": "asmg"}\n')
    with pytest.raises(ReportError, match="without a period"):
        load_run(tmp_path)
