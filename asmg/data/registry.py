"""Known datasets: where they come from, what files they unpack to, and how to load them.

One table drives loading (``load_dataset``), downloading (``asmg.data.download``) and the CLI, so a
dataset is added in one place. Checksums are recorded only where they are known for certain; the rest
is verified by the expected files being present and non-empty after unpacking.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from asmg.data.generic import load_table
from asmg.data.log import DataError, InteractionLog
from asmg.data.movielens import load_ml100k, load_ml_colon, load_ml_csv
from asmg.data.sobazaar import PAGE as SOBAZAAR_PAGE
from asmg.data.sobazaar import load_sobazaar
from asmg.data.synthetic import SYNTHETIC_SETTINGS, named_synthetic_log
from asmg.data.tmall import load_tmall

GROUPLENS = "https://files.grouplens.org/datasets/movielens"
GROUPLENS_LICENCE = (
    "GroupLens MovieLens terms: research use; no redistribution without permission; cite "
    "F. M. Harper and J. A. Konstan, ACM TiiS 5(4), 2015. Read the README in the archive."
)
GENERIC = ("csv", "parquet")


@dataclass(frozen=True)
class Dataset:
    """Metadata of one public dataset.

    ``folder`` is where the files live under a download destination; ``archive_root`` the folder the
    official archive unpacks to, when different. ``checksum_url`` points at a checksum the publisher
    serves beside the archive (fetched at download time, never copied here).
    """

    name: str
    loader: Callable[..., InteractionLog]
    files: tuple[str, ...]
    implicit: bool
    page: str
    licence: str
    url: str | None = None
    archive_sha256: str | None = None
    archive_size: int | None = None
    checksum_url: str | None = None
    file_sha256: dict[str, str] = field(default_factory=dict)
    folder: str = ""
    archive_root: str | None = None
    description: str = ""

    @property
    def manual(self) -> bool:
        """Behind a login or portal: we print where to get it instead of downloading."""
        return self.url is None


def _movielens(name: str, loader: Callable[..., InteractionLog], files: tuple[str, ...], slug: str,
               description: str, archive_root: str | None = None,
               file_sha256: dict[str, str] | None = None, download_name: str | None = None) -> Dataset:
    """``download_name``: the GroupLens archive, when the dataset is a slice of another one."""
    url = f"{GROUPLENS}/{download_name or name}.zip"
    page = f"https://grouplens.org/datasets/movielens/{slug}/"
    return Dataset(
        name=name, loader=loader, files=files, implicit=False, page=page, licence=GROUPLENS_LICENCE,
        url=url, checksum_url=f"{url}.md5", file_sha256=file_sha256 or {}, folder=download_name or name,
        archive_root=archive_root, description=description,
    )


DATASETS: dict[str, Dataset] = {d.name: d for d in (
    _movielens("ml-100k", load_ml100k, ("u.data", "u.item"), "100k",
               "100,000 ratings, 943 users, 1,682 movies, 19 genres (1997-98)",
               # Given by the project's shared dataset notes (checked against the GroupLens file).
               file_sha256={"u.data": "06416e597f82b7342361e41163890c81036900f418ad91315590814211dca490"}),
    _movielens("ml-1m", lambda d: load_ml_colon(d, "ml-1m"), ("ratings.dat", "movies.dat"),
               "1m", "1 million ratings from 6,000 users on 4,000 movies"),
    _movielens("ml-10m", lambda d: load_ml_colon(d, "ml-10m"), ("ratings.dat", "movies.dat"),
               "10m", "10 million ratings from 72,000 users on 10,000 movies",
               archive_root="ml-10M100K"),
    _movielens("ml-20m", lambda d: load_ml_csv(d, "ml-20m"), ("ratings.csv", "movies.csv"),
               "20m", "20 million ratings from 138,000 users on 27,000 movies"),
    _movielens("ml-25m", lambda d: load_ml_csv(d, "ml-25m"), ("ratings.csv", "movies.csv"),
               "25m", "25 million ratings from 162,000 users on 62,000 movies"),
    _movielens("ml-25m-2014-2018",
               lambda d: load_ml_csv(d, "ml-25m-2014-2018", since="2014-01-01", until="2019-01-01"),
               ("ratings.csv", "movies.csv"), "25m",
               "the paper's MovieLens: ml-25m ratings from 2014-01-01 through 2018-12-31 UTC (the paper: "
               "43,181 users, 51,142 items, 20 categories, 6,840,091 samples); downloads and reads ml-25m",
               archive_root="ml-25m", download_name="ml-25m"),
    _movielens("ml-latest", lambda d: load_ml_csv(d, "ml-latest"), ("ratings.csv", "movies.csv"),
               "latest", "the full current release (changes over time, so no fixed checksum)"),
    _movielens("ml-latest-small", lambda d: load_ml_csv(d, "ml-latest-small"), ("ratings.csv", "movies.csv"),
               "latest", "about 100,000 ratings from 600 users (changes over time)"),
    Dataset(
        name="tmall", loader=load_tmall, files=("user_log_format1.csv",), implicit=True,
        page="https://tianchi.aliyun.com/dataset/dataDetail?dataId=42",
        licence="Tianchi (Alibaba Cloud) dataset terms: free Tianchi account needed; research use; "
                "no redistribution. Read the terms on the dataset page.",
        folder="tmall", archive_root="data_format1",
        description="IJCAI-15 repeat buyers log (data_format1.zip > user_log_format1.csv); prepared as the "
                    "paper: clicks of Oct 2014, top 50,000 users, items with >= 20 clicks",
    ),
    Dataset(
        name="sobazaar", loader=load_sobazaar, files=("Sobazaar-hashID.csv.gz",), implicit=True,
        page=SOBAZAAR_PAGE,
        licence="Published with the paper's code repository; check that repository's terms before use.",
        folder="sobazaar", description="Sobazaar fashion app interactions: Data/Sobazaar-hashID.csv.gz",
    ),
)}


def get_dataset(name: str) -> Dataset:
    """The registry entry for ``name``; unknown names list the known ones."""
    try:
        return DATASETS[name]
    except KeyError:
        known = ", ".join([*DATASETS, *SYNTHETIC_SETTINGS, *GENERIC])
        raise DataError(f"unknown dataset {name!r}; known datasets: {known}") from None


def resolve_dir(dataset: Dataset, data_dir: str | Path) -> Path:
    """The folder that holds the dataset's files: ``data_dir`` itself or its standard subfolder.

    So both ``--data-dir data/ml-100k`` and ``--data-dir data`` (a download destination) work.
    """
    root = Path(data_dir)
    candidates = [root, root / dataset.folder]
    if dataset.archive_root:
        candidates += [root / dataset.archive_root, root / dataset.folder / dataset.archive_root]
    for candidate in candidates:
        if all((candidate / f).is_file() for f in dataset.files):
            return candidate
    return root


def load_dataset(name: str, data_dir: str | Path, **mapping: Any) -> InteractionLog:
    """Load a registered dataset, or ``csv``/``parquet`` with ``data_dir`` the file and a column mapping.

    For registered datasets ``mapping`` goes to the loader (e.g. ``n_users`` for Tmall).
    """
    if name in GENERIC:
        return load_table(data_dir, **mapping)
    if name in SYNTHETIC_SETTINGS:
        return named_synthetic_log(name)
    dataset = get_dataset(name)
    return dataset.loader(resolve_dir(dataset, data_dir), **mapping)


def describe(log: InteractionLog) -> dict[str, Any]:
    """Headline counts of a log, for ``asmg datasets info`` and sanity checks."""
    events = log.events

    def iso(seconds: int) -> str:
        return datetime.fromtimestamp(seconds, tz=UTC).isoformat()

    empty = events.empty
    return {
        "name": log.name,
        "events": len(events),
        "users": log.n_users,
        "items": log.n_items,
        "categories": int(log.item_categories["category_id"].nunique()),
        "items_with_category": int(log.item_categories["item_id"].nunique()),
        "first_event": None if empty else iso(int(events["ts"].min())),
        "last_event": None if empty else iso(int(events["ts"].max())),
        "positive_rate": None if empty else float(events["label"].astype("float64").mean()),
        "implicit": log.implicit,
    }
