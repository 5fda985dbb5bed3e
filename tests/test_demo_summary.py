"""The demo's summary table: what a user reads at the end of ``make demo``."""

from __future__ import annotations

from rich.console import Console

from asmg_cli.demo import DemoRun, _summary_table


def _record(version: int, auc: float | None, iu: float | None, asmg: float | None, serves: str,
            samples: int = 3228, pretrained: bool = False) -> dict:
    tested = {} if auc is None else {"iu": {"auc": iu}, "asmg-gru-multi": {"auc": asmg}}
    return {"version": version, "pretrained": pretrained, "candidate": serves, "candidates": tested,
            "metrics": {} if auc is None else {"auc": auc, "samples": samples},
            "shadow_metrics": {} if iu is None else {"auc": iu}}


def test_summary_fits_80_columns_and_keeps_every_figure() -> None:
    run = DemoRun(expected_models=4)
    run.models = {10: _record(1, None, None, None, "iu", pretrained=True),
                  11: _record(2, 0.68801, 0.68801, 0.68012, "iu"),
                  25: _record(16, 0.73612, 0.72731, 0.73612, "asmg-gru-multi", samples=100_000),
                  26: _record(17, 0.67661, 0.67332, 0.67661, "asmg-gru-multi")}
    run.live_seconds = {10: 20.1, 11: 1124.9, 25: 47.5, 26: 49.1}
    table, served, shadow, candidates = _summary_table(run, first_test=25)
    console = Console(width=80, record=True, color_system=None)
    console.print(table)
    text = console.export_text()
    assert max(len(line) for line in text.splitlines()) <= 80
    assert "…" not in text, f"a figure was cut:\n{text}"
    for figure in ("0.7361", "0.7273", "+0.0088", "0.6801", "1124.9", "100000", "pretr.", "ASMG"):
        assert figure in text
    assert served == [0.73612, 0.67661] and shadow == [0.72731, 0.67332]  # test periods only
    assert candidates == {"asmg-gru-multi": [0.73612, 0.67661]}
