"""`asmg demo`: the whole system on one machine, from an empty Kafka to live ASMG models.

It drives the local-pipeline harness (asmg_cli/pipeline.py), as bench/bench_streaming.py does.

Starts a local broker (unless KAFKA_BOOTSTRAP_SERVERS names one), the windowing, trainer and scorer
workers as processes, replays MovieLens-100K (or the synthetic drifting stream when no data is found)
with the offline runner's period bounds, shows each model as it goes live and ends with a summary.
Everything it started is stopped on completion, on error and on Ctrl-C.
"""

from __future__ import annotations

import json
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer


@dataclass
class DemoRun:
    """What the demo watches: one line per published model."""

    expected_models: int
    models: dict[int, dict[str, Any]] = field(default_factory=dict)
    live_seconds: dict[int, float] = field(default_factory=dict)


def _summary_table(run: DemoRun, first_test: int):
    from rich import box
    from rich.table import Table

    table = Table(title="Each period's served model, tested on that period (AUC)",
                  caption="lift = served - IU shadow; live = s from period close to model live",
                  box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    # the serving guard's other candidates (the IU candidate is the shadow column already)
    others = list(dict.fromkeys(name for record in run.models.values() for name in (record.get("candidates") or {})
                                if name != "iu"))
    # short headers: the table must fit an 80-column terminal without cutting a figure
    columns = ("period", "model", "samples", "served", "IU\nshadow", "lift",
               *(_short(name) for name in others), *(("serves\nnext",) if others else ()), "live\n(s)")
    for column in columns:
        table.add_column(column, justify="right", no_wrap=True, min_width=7 if column in ("samples", "lift") else 6)
    served, shadow = [], []
    candidates: dict[str, list[float]] = {name: [] for name in others}
    for period in sorted(run.models):
        record = run.models[period]
        metrics, shadow_metrics = record.get("metrics") or {}, record.get("shadow_metrics") or {}
        auc, iu = metrics.get("auc"), shadow_metrics.get("auc")
        tested = record.get("candidates") or {}
        if period >= first_test and auc is not None and iu is not None:
            served.append(auc)
            shadow.append(iu)
            for name in others:
                if (tested.get(name) or {}).get("auc") is not None:
                    candidates[name].append(tested[name]["auc"])
        untested = "pretr." if record.get("pretrained") else "-"
        guard = [_auc((tested.get(name) or {}).get("auc")) for name in others]
        if others:
            guard.append(_short(record.get("candidate") or "-"))
        table.add_row(str(period), str(record["version"]), str(metrics.get("samples", "")),
                      f"{auc:.4f}" if auc is not None else untested, f"{iu:.4f}" if iu is not None else "-",
                      f"{auc - iu:+.4f}" if auc is not None and iu is not None else "-", *guard,
                      f"{run.live_seconds[period]:.1f}" if period in run.live_seconds else "-")
    return table, served, shadow, candidates


def _short(candidate: str) -> str:
    """A candidate's name in a narrow column: 'asmg-gru-multi' -> 'ASMG'."""
    return "ASMG" if candidate.startswith("asmg") else candidate.upper() if candidate == "iu" else candidate


def _auc(value: float | None) -> str:
    return f"{value:.4f}" if value is not None else "-"


def demo(
    data_dir: Annotated[Path, typer.Option(envvar="ASMG_DATA_DIR", help="MovieLens-100K folder")] = Path(
        "data/ml-100k"),
    dataset: Annotated[str, typer.Option(envvar="ASMG_DATASET", help="dataset to replay, or 'synthetic'")] = "ml-100k",
    method: Annotated[str, typer.Option(
        envvar="ASMG_METHOD", help="update method the trainer runs: the serving guard by default; plain ASMG is "
                                   "asmg-gru-multi")] = "asmg-guarded",
    workdir: Annotated[Path, typer.Option(envvar="ASMG_WORKDIR", help="period store, models, logs")] = Path(
        "runs/demo"),
    scorer_port: Annotated[int, typer.Option(envvar="ASMG_SCORER_PORT")] = 8090,
    rate: Annotated[float | None, typer.Option(envvar="ASMG_RATE", help="events/s (default: as fast as Kafka "
                                                                        "takes them)")] = None,
    timeout: Annotated[float, typer.Option(envvar="ASMG_DEMO_TIMEOUT", help="give up after this many seconds")] = (
        1800.0),
    metrics_port: Annotated[int | None, typer.Option(
        envvar="ASMG_METRICS_PORT", help="Prometheus metrics of the windowing worker on this port, the trainer's on "
                                         "the next (the scorer's are on its own port at /metrics) [default: off]")]
    = None,
) -> None:
    """Run the streaming system end to end on a local Kafka and show ASMG models going live."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console(highlight=False)
    started = time.monotonic()
    with ExitStack() as stack:
        try:
            run = _run_demo(console, stack, data_dir, dataset, method, workdir, scorer_port, rate, timeout,
                            metrics_port, Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                     TimeElapsedColumn(), console=console))
        except KeyboardInterrupt:
            console.print("[yellow]Interrupted: stopping everything the demo started.[/]")
            raise typer.Exit(130) from None
        except RuntimeError as exc:
            console.print(f"[bold red]error:[/] {exc}")
            raise typer.Exit(1) from None
    table, served, shadow, candidates = run
    console.print(table)
    if served:
        mean_served, mean_shadow = sum(served) / len(served), sum(shadow) / len(shadow)
        console.print(f"Test periods: served ({method}) mean AUC {mean_served:.4f}, plain IU {mean_shadow:.4f} "
                      f"({(mean_served / mean_shadow - 1) * 100:+.2f}% relative).")
        for name, values in candidates.items():
            if values:
                mean = sum(values) / len(values)
                console.print(f"  candidate {name}: mean AUC {mean:.4f} ({(mean / mean_shadow - 1) * 100:+.2f}% "
                              "relative to IU)")
    console.print(f"Done in {time.monotonic() - started:.0f} s; everything the demo started is stopped.")


def _run_demo(console, stack: ExitStack, data_dir: Path, dataset: str, method: str, workdir: Path,
              scorer_port: int, rate: float | None, timeout: float, metrics_port: int | None, progress):
    from asmg.presets import default_preset, preset
    from asmg_cli import pipeline
    from producers.producer import make_producer
    from producers.replay import Pacing, replay_log
    from streams.windowing.coordinator import send_end_of_stream
    from streams.wire.topics import TopicNames, ensure_topics

    log, synthetic = pipeline.load_log(dataset, data_dir, console.print)
    protocol = preset(default_preset(log.name))[0].protocol
    kafka, _ = pipeline.start_kafka(stack, console.print)
    names = TopicNames(f"asmg.demo-{int(time.time())}.")
    ensure_topics(kafka, names, partitions=4)
    run_dir = workdir / names.prefix.strip(".")
    bounds, _ = pipeline.write_bounds(log, protocol.split, protocol.n_periods, run_dir)
    env = pipeline.stream_env(kafka, names.prefix, run_dir, bounds, log, 4, method=method, scorer_port=scorer_port)
    workers = pipeline.Workers(run_dir / "logs")
    stack.callback(workers.stop)
    ports = {"windowing": metrics_port, "trainer": None if metrics_port is None else metrics_port + 1}
    for role in ("windowing", "trainer", "scorer"):
        workers.start(role, role, env, metrics_port=ports.get(role))
    console.print(f"Workers started (logs in {workers.logs}); topics {names.prefix}*; scorer on :{scorer_port}")
    if metrics_port is not None:
        console.print(f"Prometheus metrics: windowing :{metrics_port}/metrics, trainer :{metrics_port + 1}/metrics, "
                      f"scorer :{scorer_port}/metrics")
    records_file = run_dir / "models.jsonl"  # every model record seen, for `asmg report`
    # the pretrained model (period pretrain) goes live first, then one per later period (streams/trainer/agent.py)
    expected = protocol.n_periods - protocol.pretrain_periods + 1
    run = DemoRun(expected_models=expected)
    watch = pipeline.TopicWatch(kafka, names, f"{names.prefix}demo", stack)
    deadline = time.monotonic() + timeout
    with progress:
        replay_task = progress.add_task(f"replay {log.name}", total=len(log.events))
        producer = make_producer(kafka)
        result = replay_log(log, producer, names.interactions, Pacing(rate=rate),
                            on_progress=lambda n: progress.advance(replay_task, n))
        producer.flush(30)
        del producer  # its client threads must not outlive the broker the demo may stop
        send_end_of_stream(kafka, names)
        progress.console.print(f"Replayed {result.summary()}")
        model_task = progress.add_task("models live", total=expected)
        while len(run.live_seconds) < expected:
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {len(run.live_seconds)} of {expected} models went live within {timeout:.0f}s;"
                                   f" see the worker logs in {workers.logs}")
            workers.check()
            _, records = watch.poll(0.5)
            with records_file.open("a") as out:
                out.writelines(json.dumps(record) + "\n" for record in records)
            run.models = watch.models
            _, served = pipeline.scorer_json(scorer_port, "/model")
            for period in pipeline.newly_live(watch, (served or {}).get("version", -1), run.live_seconds, time.time()):
                record = run.models[period]
                progress.advance(model_task)
                metrics, shadow = record.get("metrics") or {}, record.get("shadow_metrics") or {}
                if metrics.get("auc") is not None and shadow.get("auc") is not None:
                    progress.console.print(f"period {period:>2}: model v{record['version']} live — AUC "
                                           f"{metrics['auc']:.4f} (IU shadow {shadow['auc']:.4f})")
                else:
                    progress.console.print(f"period {period:>2}: model v{record['version']} live (pretrained; "
                                           f"serves period {period + 1}, not tested yet)")
    if synthetic:
        console.print("(synthetic stream: numbers are not comparable with MovieLens)")
    console.print(f"Model records in {records_file}; plots: `asmg report {run_dir}`")
    return _summary_table(run, protocol.first_test_period)


def register(app: typer.Typer) -> None:
    app.command()(demo)
