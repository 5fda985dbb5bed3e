"""`asmg experiment`: the paper's protocol on a dataset, every method, several seeds."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

DEFAULT_DATA_DIR = "data/ml-100k"


def _env(flag: str) -> str:
    return "ASMG_" + flag.upper().replace("-", "_")


def _ints(text: str) -> list[int]:
    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError as exc:
        raise typer.BadParameter(f"'{text}' is not a comma-separated list of integers (e.g. 0,1,2)") from exc


def experiment(
    dataset: Annotated[str, typer.Option(envvar=_env("dataset"), help="dataset name")] = "ml-100k",
    data_dir: Annotated[Path, typer.Option(envvar=_env("data-dir"), help="folder with the dataset's files")] = Path(
        DEFAULT_DATA_DIR),
    methods: Annotated[str, typer.Option(envvar=_env("methods"), help="comma-separated method names")] = (
        "iu,bu-3,asmg-linear,asmg-gru-single,asmg-gru-multi"),
    seeds: Annotated[str, typer.Option(envvar=_env("seeds"))] = "0,1,2",
    out: Annotated[Path, typer.Option(envvar=_env("out"), help="folder for results.json/.md and plots")] = Path(
        "runs/experiment"),
    preset: Annotated[str | None, typer.Option(envvar=_env("preset"),
                                               help="hyper-parameter set: authors, a dataset's tuned one, or auto "
                                                    "(base chosen on this dataset's validation periods; the default "
                                                    "for datasets without a preset)")] = None,
    lr: Annotated[float | None, typer.Option(envvar=_env("lr"), help="base-model learning rate")] = None,
    batch_size: Annotated[int | None, typer.Option(envvar=_env("batch-size"))] = None,
    epochs: Annotated[int | None, typer.Option(envvar=_env("epochs"), help="base epochs per period")] = None,
    pretrain_epochs: Annotated[int | None, typer.Option(envvar=_env("pretrain-epochs"))] = None,
    pretrain_mode: Annotated[str | None, typer.Option(
        envvar=_env("pretrain-mode"), help="union (the paper: epochs over all pretraining periods at once) or "
                                           "progressive (epochs over each as it arrives)")] = None,
    k: Annotated[int | None, typer.Option(envvar=_env("k"), help="models in the generator's window")] = None,
    hidden: Annotated[int | None, typer.Option(envvar=_env("hidden"), help="GRU hidden size")] = None,
    meta_lr: Annotated[float | None, typer.Option(envvar=_env("meta-lr"))] = None,
    meta_epochs: Annotated[int | None, typer.Option(envvar=_env("meta-epochs"))] = None,
    meta_batch_size: Annotated[int | None, typer.Option(envvar=_env("meta-batch-size"))] = None,
    output: Annotated[str | None, typer.Option(envvar=_env("output"), help="generator output: direct|residual")] = None,
    periods: Annotated[int | None, typer.Option(envvar=_env("periods"), help="number of periods (paper: 31)")] = None,
    split: Annotated[str | None, typer.Option(envvar=_env("split"),
                                              help="'equal' (equal-count periods) or a duration such as 1D")] = None,
    pretrain_periods: Annotated[int | None, typer.Option(envvar=_env("pretrain-periods"))] = None,
    first_test_period: Annotated[int | None, typer.Option(envvar=_env("first-test-period"))] = None,
    last_period: Annotated[int | None, typer.Option(envvar=_env("last-period"),
                                                    help="stop after this period (validation runs)")] = None,
    device: Annotated[str, typer.Option(envvar=_env("device"), help="auto (CUDA when present), cpu, cuda")] = "auto",
    workers: Annotated[int, typer.Option(envvar=_env("workers"), help="runs in parallel processes")] = min(
        2, os.cpu_count() or 1),
    cache_dir: Annotated[Path, typer.Option(envvar=_env("cache-dir"), help="sample cache")] = Path(".cache/samples"),
    log_format: Annotated[str, typer.Option(envvar=_env("log-format"),
                                            help="text, or json: one JSON object per line (on stderr)")] = "text",
    log_level: Annotated[str | None, typer.Option(envvar=_env("log-level"),
                                                  help="[default: info with --log-format json, else warning]")]
    = None,
) -> None:
    """Pretrain on periods 1-10, update on 11-30, test on D_{t+1} for t = 24..30; mean ± std over seeds."""
    from asmg import logs

    try:
        level = log_level or ("info" if logs.check_format(log_format) == "json" else "warning")
        logs.configure(level, log_format, role="experiment")
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    from asmg.data.log import DataError
    from asmg.data.registry import load_dataset
    from asmg.experiment import ExperimentSpec, markdown_table, run_experiment
    from asmg.flags import pick, run_config
    from asmg.methods import parse_methods
    from asmg.prepare import prepare_periods

    try:
        names = parse_methods(methods)
        cfg, note = run_config(dataset, preset, **pick(locals()))
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    try:
        log = load_dataset(dataset, data_dir)
        data = prepare_periods(log, cfg.protocol, cache_dir=cache_dir)
    except DataError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    from asmg.presets import AUTO, default_preset

    if (preset or default_preset(dataset)) == AUTO:
        if any(value is not None for value in (lr, epochs, batch_size)):
            note += "; base settings from the flags given (no search)"
        else:
            from asmg.tuning import auto_base

            cfg, note = auto_base(data, cfg, _ints(seeds)[:1], workers, say=typer.echo)
    spec = ExperimentSpec(dataset, names, _ints(seeds), cfg, last_period=last_period, note=note,
                          pretrain_cache=str(cache_dir.parent / "pretrained"))
    results = run_experiment(data, spec, out=out, workers=workers)
    typer.echo(markdown_table(results))
    typer.echo(f"wrote {out / 'results.json'}, {out / 'results.md'}, {out / 'auc_by_period.png'}")


def register(app: typer.Typer) -> None:
    app.command()(experiment)
