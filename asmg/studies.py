"""The paper's ablation and sensitivity studies, on top of :func:`asmg.experiment.run_experiment`.

- ablation: the GRU generator's training strategies (full, zero, unif, single, multi) side by side;
- sensitivity: asmg-gru-multi over the window k (1..6) and the GRU hidden size (4, 8, 12, 16).
Each writes ``<study>.json``, ``<study>.md`` and PNG plots (AUC, LogLoss; baselines such as IU as
horizontal lines, as in the paper's figures); the per-run results.json/md of every setting are kept too.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from asmg.config import RunConfig
from asmg.experiment import ExperimentSpec, run_experiment, write_outputs
from asmg.prepare import PreparedPeriods

ABLATION_VARIANTS = ("full", "zero", "unif", "single", "multi")
SENSITIVITY_KS = (1, 2, 3, 4, 5, 6)
SENSITIVITY_HIDDENS = (4, 8, 12, 16)
SENSITIVITY_METHOD = "asmg-gru-multi"
METRICS = (("auc", "AUC"), ("logloss", "LogLoss"))


def run_ablation(data: PreparedPeriods, dataset: str, cfg: RunConfig, seeds: Sequence[int], out: Path | None = None,
                 workers: int = 1, variants: Sequence[str] = ABLATION_VARIANTS, baselines: Sequence[str] = ("iu",),
                 last_period: int | None = None, note: str = "", show_progress: bool = True) -> dict[str, Any]:
    """Every variant and baseline in one experiment (same pretrained model, same seeds)."""
    methods = [*baselines, *(f"asmg-gru-{v}" for v in variants)]
    spec = ExperimentSpec(dataset, methods, list(seeds), cfg, last_period=last_period, note=note)
    results = run_experiment(data, spec, show_progress=show_progress, workers=workers)
    summary = results["summary"]
    study = {"study": "ablation", "dataset": dataset, "seeds": list(seeds), "protocol": results["protocol"],
             "variants": [{"variant": v, **summary[f"asmg-gru-{v}"]} for v in variants],
             "baselines": {b: summary[b] for b in baselines}, "results": results}
    if out is not None:
        write_outputs(results, out)
        _write(study, out, "ablation", ablation_markdown(study))
        plot_ablation(study, out / "ablation.png")
    return study


def run_sensitivity(data: PreparedPeriods, dataset: str, cfg: RunConfig, seeds: Sequence[int],
                    out: Path | None = None, workers: int = 1, ks: Sequence[int] = SENSITIVITY_KS,
                    hiddens: Sequence[int] = SENSITIVITY_HIDDENS, method: str = SENSITIVITY_METHOD,
                    baselines: Sequence[str] = ("iu",), last_period: int | None = None, note: str = "",
                    show_progress: bool = True) -> dict[str, Any]:
    """k swept at the configured hidden size, hidden swept at the configured k; the shared setting runs once."""
    settings = list(dict.fromkeys([(k, cfg.meta.hidden) for k in ks] + [(cfg.meta.k, h) for h in hiddens]))
    by_setting: dict[tuple[int, int], dict[str, Any]] = {}
    for k, hidden in settings:
        run_cfg = replace(cfg, meta=replace(cfg.meta, k=k, hidden=hidden))
        spec = ExperimentSpec(dataset, [method], list(seeds), run_cfg, last_period=last_period, note=note)
        sub = out / "runs" / f"k{k}-h{hidden}" if out is not None else None
        by_setting[(k, hidden)] = run_experiment(data, spec, out=sub, show_progress=show_progress, workers=workers)
    base_results = None
    if baselines:
        spec = ExperimentSpec(dataset, list(baselines), list(seeds), cfg, last_period=last_period, note=note)
        sub = out / "runs" / "baselines" if out is not None else None
        base_results = run_experiment(data, spec, out=sub, show_progress=show_progress, workers=workers)
    first = next(iter(by_setting.values()))

    def row(k: int, hidden: int) -> dict[str, Any]:
        return {"k": k, "hidden": hidden, **by_setting[(k, hidden)]["summary"][method]}

    study = {"study": "sensitivity", "dataset": dataset, "method": method, "seeds": list(seeds),
             "protocol": first["protocol"], "defaults": {"k": cfg.meta.k, "hidden": cfg.meta.hidden},
             "k": [row(k, cfg.meta.hidden) for k in ks], "hidden": [row(cfg.meta.k, h) for h in hiddens],
             "baselines": base_results["summary"] if base_results else {},
             "runs": [r for res in [*by_setting.values(), *([base_results] if base_results else [])]
                      for r in res["runs"]]}
    if out is not None:
        _write(study, out, "sensitivity", sensitivity_markdown(study))
        plot_sensitivity(study, "k", "window k (models)", out / "sensitivity_k.png")
        plot_sensitivity(study, "hidden", "GRU hidden size", out / "sensitivity_hidden.png")
    return study


# -- writers ------------------------------------------------------------------------------------------
def _cell(stats: dict[str, Any], metric: str) -> str:
    return f"{stats[f'{metric}_mean']:.4f} ± {stats[f'{metric}_std']:.4f}"


def _impr(stats: dict[str, Any]) -> str:
    value = stats.get("auc_rel_impr_vs_iu", float("nan"))
    return "-" if math.isnan(value) else f"{value:+.2f}%"


def _header(study: dict[str, Any]) -> str:
    protocol = study["protocol"]
    return (f"mean over test periods {protocol['first_test_period']}..{protocol['n_periods']}, "
            f"seeds {', '.join(map(str, study['seeds']))}")


def ablation_markdown(study: dict[str, Any]) -> str:
    lines = [f"# {study['dataset']}: ablation of the GRU generator's training ({_header(study)})", "",
             "| variant | AUC | LogLoss | AUC impr. vs IU | seconds/run | update s/period |",
             "|---|---|---|---|---|---|"]
    rows = [(name, stats) for name, stats in study["baselines"].items()]
    rows += [(row["variant"], row) for row in study["variants"]]
    for name, s in rows:
        lines.append(f"| {name} | {_cell(s, 'auc')} | {_cell(s, 'logloss')} | {'-' if name == 'iu' else _impr(s)} "
                     f"| {s['seconds_mean']:.1f} | {s.get('update_seconds_per_period', float('nan')):.2f} |")
    return "\n".join(lines) + "\n"


def sensitivity_markdown(study: dict[str, Any]) -> str:
    iu = study["baselines"].get("iu", {}).get("auc_mean")
    lines = [f"# {study['dataset']}: sensitivity of {study['method']} ({_header(study)})", ""]
    for axis, label, other in (("k", "k", "hidden"), ("hidden", "hidden size", "k")):
        lines += [f"## {label} (at {other} = {study['defaults'][other]})", "",
                  f"| {label} | AUC | LogLoss | AUC impr. vs IU | seconds/run |", "|---|---|---|---|---|"]
        for row in study[axis]:
            impr = f"{(row['auc_mean'] / iu - 1) * 100:+.2f}%" if iu else "-"
            lines.append(f"| {row[axis]} | {_cell(row, 'auc')} | {_cell(row, 'logloss')} | {impr} | "
                         f"{row['seconds_mean']:.1f} |")
        lines.append("")
    if study["baselines"]:
        lines += ["## baselines (independent of k and hidden size)", "", "| method | AUC | LogLoss |", "|---|---|---|"]
        lines += [f"| {name} | {_cell(s, 'auc')} | {_cell(s, 'logloss')} |" for name, s in study["baselines"].items()]
    return "\n".join(lines) + "\n"


def _write(study: dict[str, Any], out: Path, name: str, markdown: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(study, indent=2, allow_nan=True))
    (out / f"{name}.md").write_text(markdown)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _baseline_lines(ax, baselines: dict[str, Any], metric: str) -> None:
    styles = ["--", ":", "-.", (0, (5, 1))]
    for i, (name, stats) in enumerate(baselines.items()):
        ax.axhline(stats[f"{metric}_mean"], color=f"C{i + 1}", linestyle=styles[i % len(styles)], label=name)


def plot_sensitivity(study: dict[str, Any], axis: str, label: str, path: Path) -> None:
    """AUC and LogLoss against one hyper-parameter (mean ± std over seeds), baselines as horizontal lines."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    rows = study[axis]
    xs = [r[axis] for r in rows]
    for ax, (metric, title) in zip(axes, METRICS, strict=True):
        ax.errorbar(xs, [r[f"{metric}_mean"] for r in rows], yerr=[r[f"{metric}_std"] for r in rows], marker="o",
                    capsize=3, color="C0", label=study["method"])
        _baseline_lines(ax, study["baselines"], metric)
        ax.set_xticks(xs)
        ax.set_xlabel(label)
        ax.set_ylabel(title)
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle(f"{study['dataset']}: {study['method']} vs {label}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_ablation(study: dict[str, Any], path: Path) -> None:
    """One bar per training strategy (mean ± std over seeds), baselines as horizontal lines."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    rows = study["variants"]
    names = [r["variant"] for r in rows]
    for ax, (metric, title) in zip(axes, METRICS, strict=True):
        means = [r[f"{metric}_mean"] for r in rows]
        ax.bar(names, means, yerr=[r[f"{metric}_std"] for r in rows], capsize=3, color="C0", alpha=0.8)
        _baseline_lines(ax, study["baselines"], metric)
        values = [*means, *(s[f"{metric}_mean"] for s in study["baselines"].values())]
        finite = [v for v in values if math.isfinite(v)]
        if finite:
            spread = max(finite) - min(finite) or abs(max(finite)) * 0.01 or 0.01
            ax.set_ylim(min(finite) - 1.5 * spread, max(finite) + 1.5 * spread)
        ax.set_ylabel(title)
        ax.grid(alpha=0.3, axis="y")
    if study["baselines"]:
        axes[0].legend()
    fig.suptitle(f"{study['dataset']}: ablation of asmg-gru training")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
