"""Downloads over file:// and a real loopback HTTP server: resume, Range fallback, checksum, extraction guard."""

from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path

import pytest

from memseg.data import download as dl
from memseg.data.categories import CATEGORIES
from memseg.data.synthetic_mvtec import generate_dataset
from memseg.errors import DatasetLayoutError, DownloadError
from tests.helpers.data import make_category, make_tar, serve_file


@pytest.fixture(scope="module")
def mvtec_archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny all-15-category MVTec tree packed as .tar.xz, categories at the archive root (as the official one)."""
    src = generate_dataset(
        tmp_path_factory.mktemp("mvtec_src"), size=48, n_train=2, n_test_good=1, n_test_defect=2, seed=0
    )
    return make_tar(src, tmp_path_factory.mktemp("archives") / "mvtec_anomaly_detection.tar.xz")


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_official_sources_are_pinned_in_one_place() -> None:
    assert dl.MVTEC_URL.endswith("/mvtec_anomaly_detection.tar.xz") and dl.MVTEC_URL.startswith("https://")
    assert dl.DTD_URL.endswith("/dtd-r1.0.1.tar.gz")
    assert len(dl.MVTEC_SHA256) == 64 and len(dl.DTD_SHA256) == 64
    assert all(c in "0123456789abcdef" for c in dl.MVTEC_SHA256 + dl.DTD_SHA256)


def test_file_url_download_and_checksum(tmp_path: Path, mvtec_archive: Path) -> None:
    dest = dl.download(mvtec_archive.as_uri(), tmp_path / "a.tar.xz", _sha(mvtec_archive), progress=False)
    assert dest.read_bytes() == mvtec_archive.read_bytes()
    assert not (tmp_path / "a.tar.xz.part").exists()


def test_file_url_resumes_a_partial_file(tmp_path: Path, mvtec_archive: Path) -> None:
    data = mvtec_archive.read_bytes()
    (tmp_path / "a.tar.xz.part").write_bytes(data[:1000])
    dest = dl.download(mvtec_archive.as_uri(), tmp_path / "a.tar.xz", _sha(mvtec_archive), progress=False)
    assert dest.read_bytes() == data


def test_http_download(tmp_path: Path, mvtec_archive: Path) -> None:
    data = mvtec_archive.read_bytes()
    with serve_file(data) as (url, log):
        dest = dl.download(url, tmp_path / "m.tar.xz", _sha(mvtec_archive), progress=True)
    assert dest.read_bytes() == data and log.ranges == [None]


def test_interrupted_http_download_resumes_with_range(tmp_path: Path, mvtec_archive: Path) -> None:
    data = mvtec_archive.read_bytes()
    cut = len(data) // 3
    dest = tmp_path / "m.tar.xz"
    with serve_file(data, cut_first_after=cut) as (url, log):
        with pytest.raises(DownloadError, match=f"after {cut} bytes.*run again to resume"):
            dl.download(url, dest, _sha(mvtec_archive), progress=False)
        assert (tmp_path / "m.tar.xz.part").stat().st_size == cut
        dl.download(url, dest, _sha(mvtec_archive), progress=False)
    assert log.ranges == [None, f"bytes={cut}-"]
    assert dest.read_bytes() == data


def test_server_ignoring_range_restarts_the_download(tmp_path: Path, mvtec_archive: Path) -> None:
    data = mvtec_archive.read_bytes()
    (tmp_path / "m.tar.xz.part").write_bytes(b"x" * 500)  # would corrupt the file if appended to
    with serve_file(data, support_range=False) as (url, log):
        dest = dl.download(url, tmp_path / "m.tar.xz", _sha(mvtec_archive), progress=False)
    assert log.ranges == ["bytes=500-"] and dest.read_bytes() == data


def test_complete_partial_file_gets_416_and_is_kept(tmp_path: Path, mvtec_archive: Path) -> None:
    data = mvtec_archive.read_bytes()
    (tmp_path / "m.tar.xz.part").write_bytes(data)
    with serve_file(data) as (url, log):
        dest = dl.download(url, tmp_path / "m.tar.xz", _sha(mvtec_archive), progress=False)
    assert log.ranges == [f"bytes={len(data)}-"] and dest.read_bytes() == data


def test_wrong_checksum_names_the_file_and_both_hashes(tmp_path: Path, mvtec_archive: Path) -> None:
    wrong = "0" * 64
    dest = tmp_path / "m.tar.xz"
    with serve_file(mvtec_archive.read_bytes()) as (url, _), pytest.raises(DownloadError) as info:
        dl.download(url, dest, wrong, progress=False)
    text = str(info.value)
    assert str(dest) in text and wrong in text and _sha(mvtec_archive) in text
    assert not dest.exists() and not (tmp_path / "m.tar.xz.part").exists()


def test_existing_good_file_is_not_fetched_again(tmp_path: Path, mvtec_archive: Path) -> None:
    dest = tmp_path / "m.tar.xz"
    dest.write_bytes(mvtec_archive.read_bytes())
    with serve_file(b"other") as (url, log):
        dl.download(url, dest, _sha(mvtec_archive), progress=False)
    assert log.ranges == [] and dest.read_bytes() == mvtec_archive.read_bytes()


def test_unreachable_url_and_bad_scheme_name_the_url(tmp_path: Path) -> None:
    with serve_file(b"abc") as (url, _):
        missing = url.replace("data.tar.xz", "nope.tar.xz")
        with pytest.raises(DownloadError, match="nope.tar.xz"):
            dl.download(missing, tmp_path / "x", progress=False)
    with pytest.raises(DownloadError, match="unsupported URL scheme 'ftp'"):
        dl.download("ftp://example.org/a.tar", tmp_path / "y", progress=False)


def test_download_mvtec_over_http_extracts_and_checks(tmp_path: Path, mvtec_archive: Path) -> None:
    with serve_file(mvtec_archive.read_bytes(), name="mvtec_anomaly_detection.tar.xz") as (url, _):
        root = dl.download_mvtec(tmp_path / "mvtec", url=url, sha256=_sha(mvtec_archive), progress=False)
    assert root == tmp_path / "mvtec"
    assert sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")) == sorted(CATEGORIES)
    assert not (root / ".download" / "mvtec_anomaly_detection.tar.xz").exists()  # archive removed after success
    # a second call finds the data and downloads nothing (the URL is now dead)
    assert dl.download_mvtec(root, url="http://127.0.0.1:9/none.tar.xz", sha256=None, progress=False) == root


def test_download_mvtec_from_file_url_into_a_wrapped_archive(tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_category(src, "bottle")
    archive = make_tar(src, tmp_path / "wrapped.tar.gz", arcname="mvtec_anomaly_detection")
    root = dl.download_mvtec(tmp_path / "out", url=archive.as_uri(), sha256=None, categories=["bottle"],
                             keep_archive=True, progress=False)
    assert root == tmp_path / "out" / "mvtec_anomaly_detection"
    assert (tmp_path / "out" / ".download" / "wrapped.tar.gz").exists()


def test_download_mvtec_reports_layout_problems(tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_category(src, "bottle")
    (src / "bottle" / "ground_truth" / "scratch" / "000_mask.png").unlink()
    archive = make_tar(src, tmp_path / "broken.tar.xz")
    with pytest.raises(DatasetLayoutError, match="000.png: test image has no mask"):
        dl.download_mvtec(tmp_path / "out", url=archive.as_uri(), sha256=None, categories=["bottle"],
                          progress=False)


def test_download_dtd_finds_the_images_folder(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "dtd" / "images" / "banded").mkdir(parents=True)
    (src / "dtd" / "images" / "banded" / "banded_0001.jpg").write_bytes(b"jpeg bytes")
    archive = make_tar(src, tmp_path / "dtd-r1.0.1.tar.gz")
    root = dl.download_dtd(tmp_path / "textures", url=archive.as_uri(), sha256=_sha(archive), progress=False)
    assert root == tmp_path / "textures" / "dtd"
    empty = make_tar(tmp_path / "src" / "dtd" / "images", tmp_path / "flat.tar.gz")  # no images/ folder
    with pytest.raises(DatasetLayoutError, match="no images/<class>/\\*.jpg"):
        dl.download_dtd(tmp_path / "t2", url=empty.as_uri(), sha256=None, progress=False)


def _tar_with(tmp_path: Path, info: tarfile.TarInfo, payload: bytes = b"x") -> Path:
    archive = tmp_path / "evil.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        info.size = len(payload) if info.isfile() else 0
        tf.addfile(info, io.BytesIO(payload) if info.isfile() else None)
    return archive


@pytest.mark.parametrize("name", ["../escape.txt", "/abs/escape.txt", "ok/../../escape.txt"])
def test_extract_refuses_path_traversal(tmp_path: Path, name: str) -> None:
    archive = _tar_with(tmp_path, tarfile.TarInfo(name))
    with pytest.raises(DownloadError, match="path traversal"):
        dl.extract(archive, tmp_path / "out")
    assert not (tmp_path / "escape.txt").exists()


def test_extract_refuses_links_out(tmp_path: Path) -> None:
    link = tarfile.TarInfo("inner/link")
    link.type, link.linkname = tarfile.SYMTYPE, "../../outside"
    with pytest.raises(DownloadError, match="inner/link"):
        dl.extract(_tar_with(tmp_path, link), tmp_path / "out")


def test_extract_zip_and_reject_unknown_types(tmp_path: Path) -> None:
    import zipfile

    archive = tmp_path / "a.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("cat/train/good/000.txt", "hello")
    assert (dl.extract(archive, tmp_path / "z") / "cat" / "train" / "good" / "000.txt").read_text() == "hello"
    with zipfile.ZipFile(tmp_path / "evil.zip", "w") as zf:
        zf.writestr("../evil.txt", "x")
    with pytest.raises(DownloadError, match="path traversal"):
        dl.extract(tmp_path / "evil.zip", tmp_path / "z2")
    (tmp_path / "a.rar").write_bytes(b"x")
    with pytest.raises(DownloadError, match="unknown archive type"):
        dl.extract(tmp_path / "a.rar", tmp_path / "z3")
    (tmp_path / "bad.tar.xz").write_bytes(b"not xz")
    with pytest.raises(DownloadError, match="bad.tar.xz: cannot extract"):
        dl.extract(tmp_path / "bad.tar.xz", tmp_path / "z4")
