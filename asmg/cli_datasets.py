"""`asmg datasets ...`: list, download, install and inspect datasets.

Every option can also come from an environment variable of the same name (``--data-dir`` <->
``ASMG_DATA_DIR``). Heavy imports stay inside the commands so ``asmg --help`` stays fast.
"""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(no_args_is_help=True, add_completion=False)

NAME_HELP = "Dataset name (see `asmg datasets list`)."
INFO_NAME_HELP = "Dataset name (see `asmg datasets list`), or csv/parquet for any table."


@app.command("list")
def list_datasets() -> None:
    """Known datasets, where they come from and whether they download automatically."""
    from rich.console import Console
    from rich.table import Table

    from asmg.data.registry import DATASETS

    table = Table("name", "labels", "download", "page", "files")
    for info in DATASETS.values():
        table.add_row(info.name, "implicit" if info.implicit else "explicit (rating >= 4)",
                      "manual" if info.manual else "automatic", info.page, ", ".join(info.files))
    Console().print(table)


@app.command()
def download(
    name: str = typer.Argument(..., help=NAME_HELP),
    dest: Path = typer.Option(Path("data"), "--dest", envvar="ASMG_DEST", help="Folder to install into."),
    force: bool = typer.Option(False, "--force", envvar="ASMG_FORCE", help="Download even if installed."),
    keep_archive: bool = typer.Option(False, "--keep-archive", envvar="ASMG_KEEP_ARCHIVE",
                                      help="Keep the downloaded archive in DEST/.downloads."),
) -> None:
    """Fetch a public dataset from its official site, verify it and unpack it under DEST/NAME.

    Datasets behind a login (tmall, sobazaar) print the official page and where to put the file.
    """
    from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn, TransferSpeedColumn

    from asmg.data.download import ManualDownloadRequired, download_dataset
    from asmg.data.log import DataError

    bar = Progress(BarColumn(), DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn())
    task = bar.add_task(name, total=None)

    def progress(done: int, total: int | None) -> None:
        if not bar.live.is_started:  # started on the first byte, so manual datasets show no bar
            bar.start()
        bar.update(task, completed=done, total=total)

    def say(text: str) -> None:
        bar.console.print(text, markup=False, highlight=False)

    try:
        download_dataset(name, dest, force=force, keep_archive=keep_archive, progress=progress, log=say)
    except ManualDownloadRequired as exc:
        say(str(exc))
        raise typer.Exit(1) from None
    except DataError as exc:
        say(f"error: {exc}")
        raise typer.Exit(1) from None
    finally:
        bar.stop()


@app.command()
def install(
    name: str = typer.Argument(..., help=NAME_HELP),
    archive: Path = typer.Argument(..., help="A downloaded archive (.zip, .tar.gz, .gz) or the data file."),
    dest: Path = typer.Option(Path("data"), "--dest", envvar="ASMG_DEST", help="Folder to install into."),
    force: bool = typer.Option(False, "--force", envvar="ASMG_FORCE", help="Replace an existing install."),
) -> None:
    """Verify and unpack an archive fetched by hand (e.g. Tmall's data_format1.zip)."""
    from asmg.data.download import install_archive
    from asmg.data.log import DataError

    try:
        typer.echo(f"{name}: installed in {install_archive(archive, dest, name, force=force)}")
    except DataError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None


@app.command()
def info(
    name: str = typer.Argument(..., help=INFO_NAME_HELP),
    data_dir: Path = typer.Option(Path("data"), "--data-dir", envvar="ASMG_DATA_DIR",
                                  help="Dataset folder (or its parent), or the file for csv/parquet."),
    user: str = typer.Option("user_id", "--user", envvar="ASMG_USER", help="csv/parquet: user column."),
    item: str = typer.Option("item_id", "--item", envvar="ASMG_ITEM", help="csv/parquet: item column."),
    ts: str = typer.Option("ts", "--ts", envvar="ASMG_TS", help="csv/parquet: time column."),
    label: str | None = typer.Option(None, "--label", envvar="ASMG_LABEL",
                                     help="csv/parquet: label or rating column (absent: implicit)."),
    categories: str | None = typer.Option(None, "--categories", envvar="ASMG_CATEGORIES",
                                          help="csv/parquet: category column ('|'-separated ids)."),
    positive_threshold: float | None = typer.Option(None, "--positive-threshold",
                                                    envvar="ASMG_POSITIVE_THRESHOLD",
                                                    help="csv/parquet: label = rating >= this."),
    ts_format: str | None = typer.Option(None, "--ts-format", envvar="ASMG_TS_FORMAT",
                                         help="csv/parquet: strftime pattern or unit s/ms/us/ns."),
) -> None:
    """Counts of a dataset: events, users, items, categories, time range, positive rate."""
    from asmg.data.log import DataError
    from asmg.data.registry import GENERIC, describe, load_dataset

    mapping = {}
    if name in GENERIC:
        mapping = {"user": user, "item": item, "ts": ts, "label": label, "categories": categories,
                   "positive_threshold": positive_threshold, "ts_format": ts_format}
    try:
        stats = describe(load_dataset(name, data_dir, **mapping))
    except DataError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    for key, value in stats.items():
        shown = f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else value
        shown = f"{value:.4f}" if isinstance(value, float) else shown
        typer.echo(f"{key:>20}: {shown}")
