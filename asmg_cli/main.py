"""The ``asmg`` command's root: it assembles the groups of the library (asmg/cli_*.py), the streams
(streams/cli.py), the producers (producers/cli.py) and ``asmg demo`` (asmg_cli/demo.py). Each group lives
beside the code it drives; heavy imports stay inside commands."""

from __future__ import annotations

import typer

from asmg.cli_datasets import app as datasets_app
from asmg.cli_experiment import register as register_experiment
from asmg.cli_report import register as register_report
from asmg.cli_study import register as register_study
from asmg_cli.demo import register as register_demo
from producers.cli import register as register_producers
from streams.cli import register as register_streams

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)
app.add_typer(datasets_app, name="datasets", help="Download and inspect datasets.")
register_demo(app)
register_experiment(app)
register_study(app)
register_report(app)
register_streams(app)
register_producers(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
