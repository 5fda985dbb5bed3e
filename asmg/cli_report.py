"""`asmg report RUN_DIR`: an HTML page of plots for an experiment (results.json) or a streaming run (models.jsonl)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def report(
    run_dir: Annotated[Path, typer.Argument(help="an `asmg experiment` --out folder (results.json), a streaming "
                                                 "run folder (models.jsonl, e.g. runs/demo/<prefix>), or a file")],
    out: Annotated[Path | None, typer.Option("--out", envvar="ASMG_REPORT_OUT",
                                             help="HTML file to write [default: RUN_DIR/report.html]")] = None,
    pngs: Annotated[bool, typer.Option("--pngs/--no-pngs", help="also write each plot as a PNG beside the page")]
    = True,
) -> None:
    """Plot AUC and logloss per period per method, the lift over IU, and the seconds per phase."""
    from asmg.report import ReportError
    from asmg.report import report as make_report

    try:
        path, run = make_report(run_dir, out, pngs)
    except ReportError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    for note in run.notes:
        typer.echo(f"note: {note}")
    typer.echo(f"wrote {path} ({run.kind} run, {len(run.series())} series, {len(run.periods())} periods)")


def register(app: typer.Typer) -> None:
    app.command()(report)
