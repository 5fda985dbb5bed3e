"""`asmg study ablation|sensitivity`: the paper's ablation and sensitivity studies (options as `asmg experiment`)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from asmg.cli_experiment import DEFAULT_DATA_DIR, _env, _ints

if TYPE_CHECKING:
    from asmg.config import RunConfig
    from asmg.prepare import PreparedPeriods

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)

Dataset = Annotated[str, typer.Option(envvar=_env("dataset"), help="dataset name (see `asmg datasets`)")]
DataDir = Annotated[Path, typer.Option(envvar=_env("data-dir"), help="folder with the dataset's files")]
Seeds = Annotated[str, typer.Option(envvar=_env("seeds"))]
Out = Annotated[Path | None, typer.Option(envvar=_env("out"),
                                          help="output folder (default: runs/ablation, runs/sensitivity)")]
Preset = Annotated[str | None, typer.Option(envvar=_env("preset"),
                                            help="hyper-parameter set: authors, or the dataset's tuned one")]
Lr = Annotated[float | None, typer.Option(envvar=_env("lr"), help="base-model learning rate")]
BatchSize = Annotated[int | None, typer.Option(envvar=_env("batch-size"))]
Epochs = Annotated[int | None, typer.Option(envvar=_env("epochs"), help="base epochs per period")]
PretrainEpochs = Annotated[int | None, typer.Option(envvar=_env("pretrain-epochs"))]
K = Annotated[int | None, typer.Option(envvar=_env("k"), help="models in the generator's window")]
Hidden = Annotated[int | None, typer.Option(envvar=_env("hidden"), help="GRU hidden size")]
MetaLr = Annotated[float | None, typer.Option(envvar=_env("meta-lr"))]
MetaEpochs = Annotated[int | None, typer.Option(envvar=_env("meta-epochs"))]
MetaBatch = Annotated[int | None, typer.Option(envvar=_env("meta-batch-size"))]
Output = Annotated[str | None, typer.Option(envvar=_env("output"), help="generator output: direct|residual")]
Periods = Annotated[int | None, typer.Option(envvar=_env("periods"), help="number of periods (paper: 31)")]
Split = Annotated[str | None, typer.Option(envvar=_env("split"),
                                           help="'equal' (equal-count periods) or a duration such as 1D")]
PretrainPeriods = Annotated[int | None, typer.Option(envvar=_env("pretrain-periods"))]
FirstTest = Annotated[int | None, typer.Option(envvar=_env("first-test-period"))]
LastPeriod = Annotated[int | None, typer.Option(envvar=_env("last-period"),
                                                help="stop after this period (validation runs)")]
Device = Annotated[str, typer.Option(envvar=_env("device"), help="auto (CUDA when present), cpu, cuda")]
Workers = Annotated[int, typer.Option(envvar=_env("workers"), help="runs in parallel processes")]
CacheDir = Annotated[Path, typer.Option(envvar=_env("cache-dir"), help="sample cache")]
Baselines = Annotated[str, typer.Option(help="comma-separated methods drawn as reference lines ('' for none)")]


@dataclass(frozen=True)
class Prepared:
    data: PreparedPeriods
    cfg: RunConfig
    seeds: list[int]
    note: str


def _prepare(options: dict[str, Any]) -> Prepared:
    """Preset + explicit flags -> RunConfig (asmg/flags.py), and the dataset cut into periods (as `asmg
    experiment`); ``options``: the command's."""
    from asmg.data.log import DataError
    from asmg.data.registry import load_dataset
    from asmg.flags import pick, run_config
    from asmg.prepare import prepare_periods

    dataset = options["dataset"]
    try:
        cfg, note = run_config(dataset, options["preset"], **pick(options))
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    try:
        data = prepare_periods(load_dataset(dataset, options["data_dir"]), cfg.protocol,
                               cache_dir=options["cache_dir"])
    except DataError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    return Prepared(data, cfg, _ints(options["seeds"]), note)


def _methods(text: str) -> list[str]:
    from asmg.methods import parse_methods

    if not text.strip():
        return []
    try:
        return parse_methods(text)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc


@app.command()
def ablation(
    dataset: Dataset = "ml-100k", data_dir: DataDir = Path(DEFAULT_DATA_DIR), seeds: Seeds = "0,1,2",
    out: Out = None, preset: Preset = None, lr: Lr = None, batch_size: BatchSize = None, epochs: Epochs = None,
    pretrain_epochs: PretrainEpochs = None, k: K = None, hidden: Hidden = None, meta_lr: MetaLr = None,
    meta_epochs: MetaEpochs = None, meta_batch_size: MetaBatch = None, output: Output = None,
    periods: Periods = None, split: Split = None, pretrain_periods: PretrainPeriods = None,
    first_test_period: FirstTest = None, last_period: LastPeriod = None, device: Device = "auto",
    workers: Workers = min(2, os.cpu_count() or 1),
    cache_dir: CacheDir = Path(".cache/samples"),
    variants: Annotated[str, typer.Option(help="GRU training strategies to compare")] = "full,zero,unif,single,multi",
    baselines: Baselines = "iu",
) -> None:
    """ASMG-GRU trained full / zero / unif / single / multi, with IU as reference (the paper's ablation)."""
    from asmg.methods.registry import GRU_VARIANTS
    from asmg.studies import ablation_markdown, run_ablation

    names = [v.strip() for v in variants.split(",") if v.strip()]
    if not names or any(v not in GRU_VARIANTS for v in names):
        raise typer.BadParameter(f"--variants must be among {', '.join(GRU_VARIANTS)}")
    base = _methods(baselines)
    prep = _prepare(locals())
    out = out or Path("runs/ablation")
    study = run_ablation(prep.data, dataset, prep.cfg, prep.seeds, out=out, workers=workers, variants=names,
                         baselines=base, last_period=last_period, note=prep.note)
    typer.echo(ablation_markdown(study))
    typer.echo(f"wrote {out / 'ablation.json'}, {out / 'ablation.md'}, {out / 'ablation.png'}")


@app.command()
def sensitivity(
    dataset: Dataset = "ml-100k", data_dir: DataDir = Path(DEFAULT_DATA_DIR), seeds: Seeds = "0,1,2",
    out: Out = None, preset: Preset = None, lr: Lr = None, batch_size: BatchSize = None, epochs: Epochs = None,
    pretrain_epochs: PretrainEpochs = None, k: K = None, hidden: Hidden = None, meta_lr: MetaLr = None,
    meta_epochs: MetaEpochs = None, meta_batch_size: MetaBatch = None, output: Output = None,
    periods: Periods = None, split: Split = None, pretrain_periods: PretrainPeriods = None,
    first_test_period: FirstTest = None, last_period: LastPeriod = None, device: Device = "auto",
    workers: Workers = min(2, os.cpu_count() or 1),
    cache_dir: CacheDir = Path(".cache/samples"),
    ks: Annotated[str, typer.Option(help="window sizes k to sweep (at the configured hidden size)")] = "1,2,3,4,5,6",
    hiddens: Annotated[str, typer.Option(help="hidden sizes to sweep (at the configured k)")] = "4,8,12,16",
    method: Annotated[str, typer.Option(help="the generator method swept")] = "asmg-gru-multi",
    baselines: Baselines = "iu",
) -> None:
    """AUC / LogLoss of ASMG-GRU multi against k and against the hidden size (the paper's sensitivity study)."""
    from asmg.studies import run_sensitivity, sensitivity_markdown

    swept = _methods(method)
    if len(swept) != 1 or not swept[0].startswith("asmg-"):
        raise typer.BadParameter("--method must be one asmg-* method")
    k_values, h_values = _ints(ks), _ints(hiddens)
    if not k_values or not h_values or min(k_values + h_values) < 1:
        raise typer.BadParameter("--ks and --hiddens need positive integers")
    base = _methods(baselines)
    prep = _prepare(locals())
    out = out or Path("runs/sensitivity")
    study = run_sensitivity(prep.data, dataset, prep.cfg, prep.seeds, out=out, workers=workers, ks=k_values,
                            hiddens=h_values, method=swept[0], baselines=base, last_period=last_period,
                            note=prep.note)
    typer.echo(sensitivity_markdown(study))
    typer.echo(f"wrote {out / 'sensitivity.json'}, {out / 'sensitivity.md'}, {out / 'sensitivity_k.png'}, "
               f"{out / 'sensitivity_hidden.png'}")


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="study", help="The paper's ablation and sensitivity studies.")
