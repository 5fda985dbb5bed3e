"""Fetch public dataset archives from their official sites, verify them, and unpack them safely.

Nothing is redistributed: archives come straight from the publisher. Verification uses what can't be
wrong: the byte count the server announces, a checksum the publisher serves beside the archive (when
reachable), checksums of unpacked files recorded in the registry, and the expected files being present
and non-empty. Unpacking rejects absolute paths, ``..`` and links, so an archive can't write outside
its destination. ``install_archive`` is the offline half, testable on a local file.
"""

from __future__ import annotations

import gzip
import hashlib
import re
import shutil
import stat
import tarfile
import urllib.error
import urllib.request
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from asmg.data.log import DataError
from asmg.data.registry import Dataset, get_dataset

CHUNK = 1 << 20
USER_AGENT = "asmg-stream dataset downloader"
TIMEOUT_S = 60


class ArchiveError(DataError):
    """An archive that is corrupt, unsafe, or lacks the dataset's files."""


class DownloadError(DataError):
    """The archive could not be fetched or failed verification."""


class ManualDownloadRequired(DataError):
    """The dataset sits behind a login/portal; the message says where to get it and where to put it."""


# ---------------------------------------------------------------- unpacking


def _safe_relative(name: str, archive: Path) -> PurePosixPath:
    """A member name as a relative path that stays inside the destination, or an ArchiveError."""
    normal = name.replace("\\", "/")
    path = PurePosixPath(normal)
    if normal.startswith("/") or re.match(r"^[A-Za-z]:", normal) or ".." in path.parts:
        raise ArchiveError(f"{archive}: unsafe member {name!r} (absolute path or '..'); refusing to unpack")
    return path


def _copy_member(source: BinaryIO, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    with target.open("wb") as out:
        shutil.copyfileobj(source, out, CHUNK)


def _check_space(total: int, dest: Path, archive: Path) -> None:
    free = shutil.disk_usage(dest).free
    if total > free:
        raise ArchiveError(f"{archive}: unpacks to {total:,} bytes but {dest} has only {free:,} free")


def _extract_zip(archive: Path, staging: Path) -> None:
    with zipfile.ZipFile(archive) as zf:
        members = zf.infolist()
        paths = [_safe_relative(m.filename, archive) for m in members]
        for member in members:
            if stat.S_ISLNK(member.external_attr >> 16):
                raise ArchiveError(
                    f"{archive}: member {member.filename!r} is a symbolic link; refusing to unpack")
        _check_space(sum(m.file_size for m in members), staging, archive)
        for member, rel in zip(members, paths, strict=True):
            target = staging / rel
            if member.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            with zf.open(member) as source:
                _copy_member(source, target)


def _extract_tar(archive: Path, staging: Path) -> None:
    with tarfile.open(archive) as tf:
        members = tf.getmembers()
        for member in members:
            _safe_relative(member.name, archive)
            if not (member.isfile() or member.isdir()):
                raise ArchiveError(f"{archive}: member {member.name!r} is a link or special file; "
                                   "refusing to unpack")
        _check_space(sum(m.size for m in members), staging, archive)
        for member in members:
            target = staging / _safe_relative(member.name, archive)
            if member.isdir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            source = tf.extractfile(member)
            if source is None:
                raise ArchiveError(f"{archive}: cannot read member {member.name!r}")
            with source:
                _copy_member(source, target)


def _gunzip(archive: Path, staging: Path) -> None:
    with gzip.open(archive, "rb") as source:
        _copy_member(source, staging / archive.name[: -len(".gz")])


def _check_gzip(path: Path) -> None:
    """Read a .gz to the end so a truncated or corrupt file fails now, not halfway through a load."""
    with gzip.open(path, "rb") as source:
        while source.read(CHUNK):
            pass


def _unpack(archive: Path, staging: Path, dataset: Dataset) -> None:
    name = archive.name.lower()
    try:
        if archive.name in dataset.files:  # the archive is itself the dataset file (e.g. Sobazaar's .csv.gz)
            if name.endswith(".gz"):
                _check_gzip(archive)
            shutil.copyfile(archive, staging / archive.name)
        elif name.endswith(".zip"):
            _extract_zip(archive, staging)
        elif name.endswith((".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")):
            _extract_tar(archive, staging)
        elif name.endswith(".gz"):
            _gunzip(archive, staging)
        else:
            raise ArchiveError(f"{archive}: unknown archive type; expected .zip, .tar(.gz) or .gz")
    except (zipfile.BadZipFile, tarfile.TarError, zlib.error, EOFError, gzip.BadGzipFile) as exc:
        raise ArchiveError(
            f"{archive}: corrupt or truncated archive ({exc}); delete it and download again") from exc


def _find_root(staging: Path, dataset: Dataset, archive: Path) -> Path:
    """The unpacked folder holding all expected files (the archive's top folder, usually)."""
    folders = [staging, *sorted((p for p in staging.rglob("*") if p.is_dir()), key=lambda p: len(p.parts))]
    for folder in folders:
        if all((folder / f).is_file() for f in dataset.files):
            return folder
    found = sorted(str(p.relative_to(staging)) for p in staging.rglob("*") if p.is_file())[:20]
    raise ArchiveError(f"{archive}: does not contain the {dataset.name} files {list(dataset.files)} "
                       f"(together in one folder); it has {found}")


def verify_files(dataset: Dataset, folder: Path) -> None:
    """Expected files exist and are non-empty; recorded checksums of unpacked files match."""
    for name in dataset.files:
        path = folder / name
        if not path.is_file():
            raise DataError(f"{path}: missing; expected the {dataset.name} files {list(dataset.files)}")
        if path.stat().st_size == 0:
            raise DataError(f"{path}: empty file; expected {dataset.name} data")
    for name, expected in dataset.file_sha256.items():
        actual = sha256_of(folder / name)
        if actual != expected:
            raise DataError(f"{folder / name}: sha256 {actual} does not match the published {expected}")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def install_archive(archive_path: str | Path, dest: str | Path, dataset: str, force: bool = False) -> Path:
    """Unpack ``archive_path`` into ``dest/<dataset folder>`` after safety and content checks.

    Works for archives fetched by hand too (Tmall's data_format1.zip). Unpacks into a staging folder
    first, so a bad archive never leaves a half-installed dataset. Returns the installed folder.
    """
    info = get_dataset(dataset)
    archive = Path(archive_path)
    if not archive.is_file():
        raise ArchiveError(f"{archive}: archive not found")
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    target = dest / info.folder
    if target.exists() and not force:
        raise ArchiveError(f"{target}: already exists; remove it or pass force=True (--force)")
    staging = dest / f".{info.folder}.unpacking"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        staging.mkdir()
        _unpack(archive, staging, info)
        root = _find_root(staging, info, archive)
        verify_files(info, root)
        if target.exists():
            shutil.rmtree(target)
        root.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


# ---------------------------------------------------------------- fetching

Progress = Callable[[int, int | None], None]


def _open(url: str, timeout: float = TIMEOUT_S):
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    return urllib.request.urlopen(request, timeout=timeout)


def fetch(url: str, target: Path, expected_size: int | None = None, expected_sha256: str | None = None,
          expected_md5: str | None = None, progress: Progress | None = None) -> Path:
    """Stream ``url`` to ``target`` (via a .part file), checking size and any given checksums."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".part")
    sha, md5, written = hashlib.sha256(), hashlib.md5(usedforsecurity=False), 0
    try:
        with _open(url) as response, partial.open("wb") as out:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else expected_size
            while block := response.read(CHUNK):
                out.write(block)
                sha.update(block)
                md5.update(block)
                written += len(block)
                if progress:
                    progress(written, total)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        partial.unlink(missing_ok=True)
        raise DownloadError(f"{url}: download failed ({exc})") from exc
    problems = []
    if length and length.isdigit() and written != int(length):
        problems.append(f"got {written:,} bytes, server announced {int(length):,}")
    if expected_size is not None and written != expected_size:
        problems.append(f"got {written:,} bytes, expected {expected_size:,}")
    if expected_sha256 and sha.hexdigest() != expected_sha256.lower():
        problems.append(f"sha256 {sha.hexdigest()} != expected {expected_sha256}")
    if expected_md5 and md5.hexdigest() != expected_md5.lower():
        problems.append(f"md5 {md5.hexdigest()} != published {expected_md5}")
    if problems:
        partial.unlink(missing_ok=True)
        raise DownloadError(f"{url}: verification failed: {'; '.join(problems)}")
    partial.replace(target)
    return target


def published_md5(checksum_url: str | None) -> str | None:
    """The md5 the publisher serves beside an archive, or None when it can't be fetched."""
    if not checksum_url:
        return None
    try:
        with _open(checksum_url, timeout=20) as response:
            text = response.read(4096).decode("ascii", errors="replace")
    except (urllib.error.URLError, OSError, ValueError):
        return None
    match = re.search(r"\b[0-9a-fA-F]{32}\b", text)
    return match.group(0).lower() if match else None


def manual_instructions(info: Dataset, dest: Path) -> str:
    """Where to get a dataset that needs a login, and where to put it."""
    return (f"{info.name} is not downloaded automatically (login, portal or third-party host).\n"
            f"  Official page: {info.page}\n"
            f"  Get: {info.description or ', '.join(info.files)}\n"
            f"  Put {', '.join(info.files)} in {dest / info.folder}/ "
            f"(or run `asmg datasets install {info.name} ARCHIVE --dest {dest}`)\n"
            f"  Licence: {info.licence}")


def download_dataset(name: str, dest: str | Path, force: bool = False, keep_archive: bool = False,
                     url: str | None = None, progress: Progress | None = None,
                     log: Callable[[str], None] = print) -> Path:
    """Download, verify and install ``name`` under ``dest``; returns the dataset folder.

    Already installed and verified: nothing is fetched unless ``force``. Datasets behind a login raise
    ManualDownloadRequired with instructions (unless the files are already in place).
    """
    info = get_dataset(name)
    dest = Path(dest)
    target = dest / info.folder
    if not force and target.is_dir():
        try:
            verify_files(info, target)
            log(f"{info.name}: already installed in {target}")
            return target
        except DataError:
            pass
    url = url or info.url
    if url is None:
        raise ManualDownloadRequired(manual_instructions(info, dest))
    archive = dest / ".downloads" / url.rstrip("/").rsplit("/", 1)[-1]
    md5 = published_md5(info.checksum_url) if url == info.url else None
    if info.checksum_url and url == info.url:
        log(f"{info.name}: publisher md5 {md5}" if md5 else
            f"{info.name}: publisher checksum not reachable; verifying size and unpacked files only")
    log(f"{info.name}: downloading {url}")
    fetch(url, archive, expected_size=info.archive_size, expected_sha256=info.archive_sha256,
          expected_md5=md5, progress=progress)
    installed = install_archive(archive, dest, info.name, force=True)
    if not keep_archive:
        archive.unlink(missing_ok=True)
    log(f"{info.name}: installed in {installed}")
    return installed
