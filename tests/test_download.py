"""Download/unpack on local archives built here from tiny fake files; the network is never touched."""

from __future__ import annotations

import gzip
import hashlib
import io
import socket
import stat
import tarfile
import zipfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from asmg.cli_datasets import app
from asmg.data import download as dl
from asmg.data.download import (
    ArchiveError,
    DownloadError,
    ManualDownloadRequired,
    download_dataset,
    fetch,
    install_archive,
    published_md5,
)
from asmg.data.log import DataError
from asmg.data.registry import load_dataset

RATINGS = "1::10::5::978300760\n2::10::3::978300761\n"
MOVIES = "10::Toy Story (1995)::Animation|Comedy\n"


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_args, **_kwargs):
        raise AssertionError("tests must not open network connections")

    monkeypatch.setattr(socket.socket, "connect", refuse)


def make_zip(path: Path, members: dict[str, str | bytes], method: int = zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", compression=method) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def ml1m_zip(path: Path, root: str = "ml-1m/") -> Path:
    return make_zip(path, {f"{root}ratings.dat": RATINGS, f"{root}movies.dat": MOVIES, f"{root}README": "fake"})


def test_install_zip_then_load(tmp_path: Path) -> None:
    archive = ml1m_zip(tmp_path / "ml-1m.zip")
    folder = install_archive(archive, tmp_path / "data", "ml-1m")
    assert folder == tmp_path / "data" / "ml-1m"
    assert sorted(p.name for p in folder.iterdir()) == ["README", "movies.dat", "ratings.dat"]
    assert not any(p.name.startswith(".") for p in (tmp_path / "data").iterdir())  # staging cleaned up
    assert len(load_dataset("ml-1m", tmp_path / "data").events) == 2
    with pytest.raises(ArchiveError, match="already exists"):
        install_archive(archive, tmp_path / "data", "ml-1m")
    install_archive(archive, tmp_path / "data", "ml-1m", force=True)


def test_install_archive_with_other_root_folder(tmp_path: Path) -> None:
    archive = ml1m_zip(tmp_path / "ml-10m.zip", root="ml-10M100K/")
    folder = install_archive(archive, tmp_path, "ml-10m")
    assert folder.name == "ml-10m" and (folder / "ratings.dat").is_file()


def test_corrupt_archives(tmp_path: Path) -> None:
    junk = tmp_path / "ml-1m.zip"
    junk.write_bytes(b"this is not a zip file at all" * 10)
    with pytest.raises(ArchiveError, match=r"ml-1m\.zip: corrupt or truncated archive"):
        install_archive(junk, tmp_path / "data", "ml-1m")
    # a stored (uncompressed) member with one byte flipped: the CRC check must catch it
    bad_crc = make_zip(tmp_path / "crc.zip", {"ml-1m/ratings.dat": RATINGS, "ml-1m/movies.dat": MOVIES},
                       method=zipfile.ZIP_STORED)
    data = bytearray(bad_crc.read_bytes())
    offset = data.index(b"978300760")
    data[offset] ^= 0x01
    bad_crc.write_bytes(bytes(data))
    with pytest.raises(ArchiveError, match="corrupt or truncated archive"):
        install_archive(bad_crc, tmp_path / "data", "ml-1m")
    truncated = tmp_path / "trunc.zip"
    truncated.write_bytes(ml1m_zip(tmp_path / "ok.zip").read_bytes()[:60])
    with pytest.raises(ArchiveError, match="corrupt or truncated archive"):
        install_archive(truncated, tmp_path / "data", "ml-1m")
    assert not (tmp_path / "data" / "ml-1m").exists()
    assert list((tmp_path / "data").iterdir()) == []  # nothing half-installed


@pytest.mark.parametrize("member", ["../evil.txt", "ml-1m/../../evil.txt", "/tmp/evil.txt", "C:/evil.txt",
                                    "..\\evil.txt"])
def test_zip_path_traversal_rejected(tmp_path: Path, member: str) -> None:
    archive = tmp_path / "ml-1m.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("ml-1m/ratings.dat", RATINGS)
        zf.writestr("ml-1m/movies.dat", MOVIES)
        zf.writestr(zipfile.ZipInfo(member), "gotcha")  # ZipInfo keeps the name as given
    dest = tmp_path / "a" / "b"
    with pytest.raises(ArchiveError, match="unsafe member"):
        install_archive(archive, dest, "ml-1m")
    assert not list(tmp_path.rglob("evil.txt"))
    assert not (dest / "ml-1m").exists()


def test_zip_symlink_rejected(tmp_path: Path) -> None:
    archive = tmp_path / "ml-1m.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("ml-1m/ratings.dat", RATINGS)
        link = zipfile.ZipInfo("ml-1m/movies.dat")
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(link, "/etc/passwd")
    with pytest.raises(ArchiveError, match="symbolic link"):
        install_archive(archive, tmp_path / "data", "ml-1m")


def test_tar_traversal_and_links_rejected(tmp_path: Path) -> None:
    def tar_with(path: Path, info: tarfile.TarInfo, data: bytes = b"") -> Path:
        with tarfile.open(path, "w:gz") as tf:
            for name, text in (("ml-1m/ratings.dat", RATINGS), ("ml-1m/movies.dat", MOVIES)):
                member = tarfile.TarInfo(name)
                member.size = len(text)
                tf.addfile(member, io.BytesIO(text.encode()))
            tf.addfile(info, io.BytesIO(data) if data else None)
        return path

    evil = tarfile.TarInfo("../evil.txt")
    evil.size = 3
    with pytest.raises(ArchiveError, match="unsafe member"):
        install_archive(tar_with(tmp_path / "a.tar.gz", evil, b"bad"), tmp_path / "data", "ml-1m")
    link = tarfile.TarInfo("ml-1m/link")
    link.type = tarfile.SYMTYPE
    link.linkname = "/etc/passwd"
    with pytest.raises(ArchiveError, match="link or special file"):
        install_archive(tar_with(tmp_path / "b.tgz", link), tmp_path / "data", "ml-1m")
    readme = tarfile.TarInfo("ml-1m/README")
    readme.size = 2
    folder = install_archive(tar_with(tmp_path / "c.tar.gz", readme, b"ok"), tmp_path / "data", "ml-1m")
    assert (folder / "README").read_text() == "ok"


def test_archive_without_expected_files(tmp_path: Path) -> None:
    archive = make_zip(tmp_path / "x.zip", {"ml-1m/ratings.dat": RATINGS, "ml-1m/other.txt": "x"})
    with pytest.raises(ArchiveError, match=r"does not contain the ml-1m files \['ratings\.dat', 'movies\.dat'\]"):
        install_archive(archive, tmp_path / "data", "ml-1m")
    empty = make_zip(tmp_path / "y.zip", {"ml-1m/ratings.dat": "", "ml-1m/movies.dat": MOVIES})
    with pytest.raises(DataError, match=r"ratings\.dat: empty file"):
        install_archive(empty, tmp_path / "data", "ml-1m")
    with pytest.raises(ArchiveError, match="archive not found"):
        install_archive(tmp_path / "missing.zip", tmp_path / "data", "ml-1m")
    with pytest.raises(DataError, match="unknown dataset"):
        install_archive(archive, tmp_path / "data", "ml-2m")


def test_recorded_file_checksum_is_enforced(tmp_path: Path) -> None:
    """ml-100k's u.data has a known sha256; a fake one must not pass as the real file."""
    archive = make_zip(tmp_path / "ml-100k.zip", {"ml-100k/u.data": "1\t2\t3\t4\n", "ml-100k/u.item": "x\n"})
    with pytest.raises(DataError, match=r"u\.data: sha256 .* does not match"):
        install_archive(archive, tmp_path / "data", "ml-100k")


def test_gz_data_file_and_single_gz(tmp_path: Path) -> None:
    text = "Action,Timestamp,ItemID,UserID\nx,2014-10-01T00:00:00,i,u\n"
    gz = tmp_path / "Sobazaar-hashID.csv.gz"
    gz.write_bytes(gzip.compress(text.encode()))
    folder = install_archive(gz, tmp_path / "data", "sobazaar")
    assert (folder / "Sobazaar-hashID.csv.gz").is_file()
    assert len(load_dataset("sobazaar", tmp_path / "data").events) == 1
    gz.write_bytes(gzip.compress(text.encode())[:-12])
    with pytest.raises(ArchiveError, match="corrupt or truncated"):
        install_archive(gz, tmp_path / "data", "sobazaar", force=True)
    single = tmp_path / "user_log_format1.csv.gz"
    single.write_bytes(gzip.compress(b"user_id,item_id,cat_id,seller_id,brand_id,time_stamp,action_type\n"
                                     b"1,2,3,4,5,1001,0\n"))
    folder = install_archive(single, tmp_path / "data", "tmall")
    assert (folder / "user_log_format1.csv").is_file()


def test_fetch_file_url_verifies(tmp_path: Path) -> None:
    source = ml1m_zip(tmp_path / "ml-1m.zip")
    body = source.read_bytes()
    seen: list[tuple[int, int | None]] = []
    out = fetch(source.as_uri(), tmp_path / "dl" / "ml-1m.zip", expected_size=len(body),
                expected_sha256=hashlib.sha256(body).hexdigest(), expected_md5=hashlib.md5(body).hexdigest(),
                progress=lambda done, total: seen.append((done, total)))
    assert out.read_bytes() == body and seen[-1][0] == len(body)
    with pytest.raises(DownloadError, match=r"verification failed: got .* bytes, expected 1"):
        fetch(source.as_uri(), tmp_path / "dl" / "again.zip", expected_size=1)
    with pytest.raises(DownloadError, match="sha256 .* != expected"):
        fetch(source.as_uri(), tmp_path / "dl" / "again.zip", expected_sha256="0" * 64)
    with pytest.raises(DownloadError, match="download failed"):
        fetch((tmp_path / "nope.zip").as_uri(), tmp_path / "dl" / "nope.zip")
    assert sorted(p.name for p in (tmp_path / "dl").iterdir()) == ["ml-1m.zip"]  # no .part left behind


def test_published_md5(tmp_path: Path) -> None:
    md5 = tmp_path / "a.zip.md5"
    md5.write_text("9e0b3c4d5e6f7a8b9c0d1e2f3a4b5c6d  a.zip\n")
    assert published_md5(md5.as_uri()) == "9e0b3c4d5e6f7a8b9c0d1e2f3a4b5c6d"
    assert published_md5((tmp_path / "missing.md5").as_uri()) is None
    assert published_md5(None) is None


def test_download_dataset_end_to_end_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = ml1m_zip(tmp_path / "ml-1m.zip")
    messages: list[str] = []
    folder = download_dataset("ml-1m", tmp_path / "data", url=source.as_uri(), log=messages.append)
    assert (folder / "ratings.dat").is_file()
    assert not (tmp_path / "data" / ".downloads" / "ml-1m.zip").exists()  # archive removed by default

    def no_fetch(*_args, **_kwargs):
        raise AssertionError("already installed: must not fetch")

    monkeypatch.setattr(dl, "fetch", no_fetch)
    assert download_dataset("ml-1m", tmp_path / "data", log=messages.append) == folder
    assert any("already installed" in m for m in messages)


def test_manual_datasets_print_instructions(tmp_path: Path) -> None:
    with pytest.raises(ManualDownloadRequired, match=r"tianchi\.aliyun\.com/dataset/dataDetail\?dataId=42"):
        download_dataset("tmall", tmp_path)
    result = CliRunner().invoke(app, ["download", "sobazaar"], env={"ASMG_DEST": str(tmp_path)})
    assert result.exit_code == 1
    assert "github.com/hainguyen-telenor" in result.output
    assert f"Put Sobazaar-hashID.csv.gz in {tmp_path / 'sobazaar'}" in result.output.replace("\n", "")


def test_cli_install(tmp_path: Path) -> None:
    archive = ml1m_zip(tmp_path / "ml-1m.zip")
    result = CliRunner().invoke(app, ["install", "ml-1m", str(archive), "--dest", str(tmp_path / "d")])
    assert result.exit_code == 0, result.output
    bad = tmp_path / "bad.zip"
    bad.write_bytes(b"nope")
    result = CliRunner().invoke(app, ["install", "ml-1m", str(bad), "--dest", str(tmp_path / "e")])
    assert result.exit_code == 1 and "corrupt" in result.output
