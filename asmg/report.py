"""`asmg report RUN_DIR`: one self-contained HTML page of plots for an offline experiment or a streaming run.

Inputs, whichever RUN_DIR holds (the first found wins):

- ``results.json`` of ``asmg experiment`` (asmg/experiment.py): every method and seed, per period;
- ``models.jsonl`` of a streaming run (``asmg demo`` writes one line per model record it saw): the served
  model and its IU shadow per period, and the trainer's seconds per phase (the records' ``phases``);
- ``models/**/manifest.json`` (model artifacts) when there is no ``models.jsonl``: the served model only;
- a folder of runs (e.g. ``runs/demo``): the newest sub-folder holding one of the above.

Plots: AUC and logloss per period per method, the lift over IU (AUC of a method minus IU's, per period),
and the seconds per phase (evaluate, base update, meta training, generation, ...). PNGs are embedded in
the page (base64) and also written beside it.
"""

from __future__ import annotations

import base64
import hashlib
import html
import io
import json
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from asmg.records import ModelRecord, RecordError, parse_model_record

IU = "iu"
SHADOW = "IU shadow"
# stacked in this order; "update" is drawn only for what its finer phases do not explain
PHASE_ORDER = ("read", "evaluate", "pretrain", "meta_training", "base_update", "generation", "update", "artifact",
               "checkpoint", "publish")
SUB_PHASES = ("meta_training", "base_update", "generation")


class ReportError(ValueError):
    """RUN_DIR holds nothing a report can be made from; the message says what was looked for."""


@dataclass
class Point:
    series: str  # a method (experiment) or "served (<method>)" / "IU shadow" (stream)
    seed: int
    period: int
    auc: float | None
    logloss: float | None
    samples: int | None = None
    phases: dict[str, float] = field(default_factory=dict)


@dataclass
class RunData:
    kind: str  # "experiment" or "stream"
    source: Path
    title: str
    points: list[Point]
    baseline: str | None  # the series the lift is measured against
    notes: list[str] = field(default_factory=list)

    def series(self) -> list[str]:
        return list(dict.fromkeys(p.series for p in self.points))

    def periods(self) -> list[int]:
        return sorted({p.period for p in self.points})


# --- loading ------------------------------------------------------------------------------------------------


def load_run(path: Path) -> RunData:
    path = Path(path)
    if path.is_file():
        return _load_file(path)
    if not path.is_dir():
        raise ReportError(f"{path} does not exist")
    for name in ("results.json", "models.jsonl"):
        if (path / name).is_file():
            return _load_file(path / name)
    if list(path.glob("models/**/manifest.json")):
        return _from_manifests(path)
    candidates = [d for d in path.iterdir() if d.is_dir() and ((d / "results.json").is_file()
                  or (d / "models.jsonl").is_file() or any(d.glob("models/**/manifest.json")))]
    if candidates:
        newest = max(candidates, key=lambda d: d.stat().st_mtime)
        run = load_run(newest)
        run.notes.insert(0, f"{path} holds {len(candidates)} runs; this is the newest, {newest.name}.")
        return run
    raise ReportError(f"{path} holds no results.json (asmg experiment), models.jsonl (asmg demo) or "
                      f"models/*/manifest.json (model artifacts)")


def _load_file(path: Path) -> RunData:
    if path.suffix == ".jsonl":
        records = []
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise ReportError(f"{path}:{number}: not JSON ({exc.msg})") from None
        return from_model_records(records, path)
    try:
        results = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ReportError(f"{path}: not JSON ({exc.msg})") from None
    if not isinstance(results, dict) or "runs" not in results:
        raise ReportError(f"{path}: not an `asmg experiment` results.json (no 'runs')")
    return from_results(results, path)


def from_results(results: Mapping[str, Any], source: Path) -> RunData:
    points = []
    for run in results["runs"]:
        for entry in [*run.get("validation_periods", []), *run.get("periods", [])]:
            points.append(Point(run["method"], int(run.get("seed", 0)), int(entry["period"]), _num(entry.get("auc")),
                                _num(entry.get("logloss")), entry.get("samples"), _phases(entry.get("seconds"))))
    protocol = results.get("protocol", {})
    first_test = protocol.get("first_test_period")
    notes = []
    if first_test is not None:
        notes.append(f"Test periods start at {first_test}; earlier evaluated periods are validation periods.")
    methods = list(dict.fromkeys(r["method"] for r in results["runs"]))
    if IU not in methods:
        notes.append("No IU run in these results: no lift plot.")
    return RunData("experiment", source, f"{results.get('dataset', 'experiment')}: {', '.join(methods)}", points,
                   IU if IU in methods else None, notes)


def from_model_records(records: Iterable[Mapping[str, Any] | ModelRecord], source: Path) -> RunData:
    parsed: list[ModelRecord] = []
    for record in records:
        if not isinstance(record, ModelRecord):
            try:
                int(record["period"])
            except (AttributeError, KeyError, TypeError, ValueError):
                raise ReportError(f"{source}: a model record without a period: {str(record)[:200]}") from None
            try:
                record = parse_model_record(record)
            except RecordError as exc:
                raise ReportError(f"{source}: an unusable model record ({exc.reason}): {str(record)[:200]}") from None
        parsed.append(record)
    newest: dict[tuple[str, int], ModelRecord] = {}
    for record in parsed:  # a record seen twice (a restart) counts once: the newest version wins
        key = (record.model, record.period)
        if key not in newest or record.version >= newest[key].version:
            newest[key] = record
    if not newest:
        raise ReportError(f"{source}: no model records")
    points = []
    methods = set()
    for (_, period), record in sorted(newest.items(), key=lambda kv: kv[0][1]):
        methods.add(record.method)
        metrics, shadow = record.metrics, record.shadow_metrics
        phases = _phases(record.phases)
        if not phases and _num(record.seconds) is not None:
            phases = {"total": float(record.seconds)}
        points.append(Point(f"served ({record.method})", 0, period, _num(metrics.get("auc")),
                            _num(metrics.get("logloss")), metrics.get("samples"), phases))
        if shadow:
            points.append(Point(SHADOW, 0, period, _num(shadow.get("auc")), _num(shadow.get("logloss")),
                                shadow.get("samples")))
    has_shadow = any(p.series == SHADOW for p in points)
    notes = [] if has_shadow else ["The records carry no IU shadow metrics: no lift plot."]
    models = sorted({k[0] for k in newest})
    return RunData("stream", source, f"streaming run: model {', '.join(models)} ({', '.join(sorted(methods))})",
                   points, SHADOW if has_shadow else None, notes)


def _from_manifests(root: Path) -> RunData:
    records = []
    for manifest in sorted(root.glob("models/**/manifest.json")):
        meta = json.loads(manifest.read_text())
        if meta.get("kind") == "model":
            records.append(ModelRecord(model=manifest.parent.parent.name, version=meta["version"],
                                       period=meta["period"], method=meta.get("method") or "model",
                                       uri=str(manifest.parent),
                                       sha256=hashlib.sha256(manifest.read_bytes()).hexdigest(),
                                       metrics=meta.get("metrics") or {}))
    run = from_model_records(records, root / "models")
    run.notes = ["Read from the model artifacts' manifests (no models.jsonl): they hold the served model's "
                 "metrics only, so there is no IU shadow, lift or timing."]
    return run


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def _phases(raw: Any) -> dict[str, float]:
    if not isinstance(raw, Mapping):
        return {}
    return {str(k): float(v) for k, v in raw.items() if _num(v) is not None}


# --- numbers ------------------------------------------------------------------------------------------------


def per_period(run: RunData, metric: str) -> dict[str, tuple[list[int], np.ndarray, np.ndarray]]:
    """series -> (periods, mean over seeds, std over seeds) of ``metric`` (auc or logloss)."""
    out = {}
    for series in run.series():
        periods, means, stds = [], [], []
        for period in run.periods():
            values = [getattr(p, metric) for p in run.points if p.series == series and p.period == period
                      and getattr(p, metric) is not None]
            if values:
                periods.append(period)
                means.append(float(np.mean(values)))
                stds.append(float(np.std(values)))
        if periods:
            out[series] = (periods, np.array(means), np.array(stds))
    return out


def lift(run: RunData) -> dict[str, tuple[list[int], np.ndarray]]:
    """series -> (periods, mean over seeds of AUC(series) - AUC(baseline), paired by seed and period)."""
    if run.baseline is None:
        return {}
    base = {(p.seed, p.period): p.auc for p in run.points if p.series == run.baseline and p.auc is not None}
    out = {}
    for series in run.series():
        if series == run.baseline:
            continue
        diffs: dict[int, list[float]] = {}
        for p in run.points:
            if p.series == series and p.auc is not None and (p.seed, p.period) in base:
                diffs.setdefault(p.period, []).append(p.auc - base[(p.seed, p.period)])
        if diffs:
            periods = sorted(diffs)
            out[series] = (periods, np.array([np.mean(diffs[q]) for q in periods]))
    return out


def stacked_phases(phases: Mapping[str, float]) -> dict[str, float]:
    """Phases to stack without double counting: ``update`` keeps only what its finer phases leave over."""
    out = dict(phases)
    if "update" in out and any(k in out for k in SUB_PHASES):
        rest = out["update"] - sum(out.get(k, 0.0) for k in SUB_PHASES)
        if rest > 1e-3:
            out["update (other)"] = rest
        del out["update"]
    return out


def phase_means(run: RunData) -> dict[str, dict[str, float]]:
    """Experiment: method -> phase -> mean seconds per period. Stream: 'period N' -> phase -> seconds."""
    groups: dict[str, list[dict[str, float]]] = {}
    for p in run.points:
        if not p.phases:
            continue
        key = f"p{p.period}" if run.kind == "stream" else p.series
        groups.setdefault(key, []).append(stacked_phases(p.phases))
    out = {}
    for key, rows in groups.items():
        names = list(dict.fromkeys(k for row in rows for k in row))
        out[key] = {k: float(np.mean([row.get(k, 0.0) for row in rows])) for k in names}
    return out


def summary_rows(run: RunData) -> list[dict[str, Any]]:
    rows = []
    lifts = lift(run)
    for series in run.series():
        aucs = [p.auc for p in run.points if p.series == series and p.auc is not None]
        losses = [p.logloss for p in run.points if p.series == series and p.logloss is not None]
        series_lift = lifts.get(series)
        rows.append({"series": series, "periods": len({p.period for p in run.points if p.series == series}),
                     "seeds": len({p.seed for p in run.points if p.series == series}),
                     "auc": float(np.mean(aucs)) if aucs else None,
                     "logloss": float(np.mean(losses)) if losses else None,
                     "lift": float(np.mean(series_lift[1])) if series_lift is not None else None})
    return rows


# --- plots and the page -------------------------------------------------------------------------------------


def _figure(width: float = 8.0, height: float = 4.2):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt, *plt.subplots(figsize=(width, height))


def _png(plt, fig) -> bytes:
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return buffer.getvalue()


def plot_metric(run: RunData, metric: str) -> bytes | None:
    data = per_period(run, metric)
    if not data:
        return None
    plt, fig, ax = _figure()
    for series, (periods, mean, std) in data.items():
        ax.plot(periods, mean, marker="o", markersize=3, label=series,
                linestyle="--" if series in (IU, SHADOW) else "-")
        if np.any(std > 0):
            ax.fill_between(periods, mean - std, mean + std, alpha=0.15)
    ax.set_xlabel("period")
    ax.set_ylabel("AUC" if metric == "auc" else "logloss")
    ax.set_title(f"{'AUC' if metric == 'auc' else 'Logloss'} per period" + (" (mean ± std over seeds)"
                                                                           if _seeds(run) > 1 else ""))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _png(plt, fig)


def plot_lift(run: RunData) -> bytes | None:
    data = lift(run)
    if not data:
        return None
    plt, fig, ax = _figure()
    for series, (periods, values) in data.items():
        ax.plot(periods, values, marker="o", markersize=3, label=series)
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.set_xlabel("period")
    ax.set_ylabel(f"AUC - AUC({run.baseline})")
    ax.set_title(f"Lift over {run.baseline} per period")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _png(plt, fig)


def plot_phases(run: RunData) -> bytes | None:
    data = phase_means(run)
    if not data:
        return None
    groups = sorted(data, key=lambda g: int(g[1:])) if run.kind == "stream" else list(data)
    names = list(dict.fromkeys(k for g in groups for k in data[g]))
    names.sort(key=lambda k: PHASE_ORDER.index(k) if k in PHASE_ORDER else len(PHASE_ORDER))
    plt, fig, ax = _figure(max(8.0, 0.35 * len(groups) + 3), 4.5)
    bottom = np.zeros(len(groups))
    for name in names:
        values = np.array([data[g].get(name, 0.0) for g in groups])
        ax.bar(range(len(groups)), values, bottom=bottom, label=name)
        bottom += values
    ax.set_xticks(range(len(groups)), groups, rotation=45 if len(groups) > 6 else 0, ha="right" if len(groups) > 6
                  else "center", fontsize=8)
    ax.set_ylabel("seconds")
    ax.set_title("Seconds per period by phase" + (" (mean over periods and seeds)" if run.kind == "experiment"
                                                  else ""))
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8)
    return _png(plt, fig)


def _seeds(run: RunData) -> int:
    return len({p.seed for p in run.points})


def _fmt(value: float | None, digits: int = 4, signed: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


PLOTS = (("auc", "AUC per period", lambda run: plot_metric(run, "auc")),
         ("logloss", "Logloss per period", lambda run: plot_metric(run, "logloss")),
         ("lift", "Lift over IU", plot_lift),
         ("phases", "Timing per phase", plot_phases))


def render(run: RunData, out: Path, write_pngs: bool = True) -> Path:
    """Write the HTML page ``out`` (and ``<stem>-<plot>.png`` beside it); returns ``out``."""
    out.parent.mkdir(parents=True, exist_ok=True)
    sections = []
    for key, title, make in PLOTS:
        png = make(run)
        if png is None:
            continue
        if write_pngs:
            (out.parent / f"{out.stem}-{key}.png").write_bytes(png)
        data = base64.b64encode(png).decode()
        sections.append(f'<h2 id="{key}">{html.escape(title)}</h2>\n<img alt="{html.escape(title)}" '
                        f'src="data:image/png;base64,{data}">')
    rows = "\n".join(
        f"<tr><td>{html.escape(r['series'])}</td><td>{r['periods']}</td><td>{r['seeds']}</td>"
        f"<td>{_fmt(r['auc'])}</td><td>{_fmt(r['logloss'])}</td><td>{_fmt(r['lift'], signed=True)}</td></tr>"
        for r in summary_rows(run))
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in run.notes)
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(run.title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 60em; color: #222; }}
table {{ border-collapse: collapse; }} td, th {{ border: 1px solid #ccc; padding: .3em .6em; text-align: right; }}
td:first-child, th:first-child {{ text-align: left; }} img {{ max-width: 100%; }}
.meta {{ color: #666; font-size: .9em; }}
</style></head><body>
<h1>{html.escape(run.title)}</h1>
<p class="meta">{html.escape(run.kind)} run from {html.escape(str(run.source))}; rendered
{time.strftime("%Y-%m-%d %H:%M:%S")} by <code>asmg report</code>.</p>
<ul>{notes}</ul>
<h2>Summary</h2>
<table><tr><th>series</th><th>periods</th><th>seeds</th><th>mean AUC</th><th>mean logloss</th>
<th>mean lift over {html.escape(run.baseline or "-")}</th></tr>
{rows}
</table>
{chr(10).join(sections)}
</body></html>
"""
    out.write_text(page)
    return out


def report(path: Path, out: Path | None = None, write_pngs: bool = True) -> tuple[Path, RunData]:
    run = load_run(path)
    base = run.source.parent if run.source.is_file() or run.source.name == "models" else run.source
    target = out or base / "report.html"
    return render(run, target, write_pngs), run


__all__: Sequence[str] = ("ReportError", "RunData", "load_run", "render", "report")
