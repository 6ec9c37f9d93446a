"""Downloading and unpacking the datasets: MVTec AD and DTD (the texture source of the anomaly synthesis).

The official URLs and SHA-256 sums live here and nowhere else (the same values anomalib pins).
Downloads go to ``<dest>.part`` first and resume from where they stopped with an HTTP ``Range``
request (or a seek for ``file://``); a server that ignores ``Range`` makes the download restart.
Only the standard library is used (``urllib``), so nothing beyond the base install is needed.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
import tarfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import BinaryIO

from tqdm import tqdm

from memseg.data.categories import CATEGORIES
from memseg.data.mvtec import check_layout
from memseg.errors import DatasetLayoutError, DownloadError

log = logging.getLogger(__name__)

MVTEC_URL = (
    "https://www.mydrive.ch/shares/38536/3830184030e49fe74747669442f0f282/download/420938113-1629952094/"
    "mvtec_anomaly_detection.tar.xz"
)
MVTEC_SHA256 = "cf4313b13603bec67abb49ca959488f7eedce2a9f7795ec54446c649ac98cd3d"
DTD_URL = "https://www.robots.ox.ac.uk/~vgg/data/dtd/download/dtd-r1.0.1.tar.gz"
DTD_SHA256 = "e42855a52a4950a3b59612834602aa253914755c95b0cff9ead6d07395f8e205"

_CHUNK = 1 << 20
_TIMEOUT_S = 60
_ARCHIVE_SUFFIXES = (".tar.xz", ".tar.gz", ".tgz", ".tar", ".zip")


def download(url: str, dest: str | Path, sha256: str | None = None, *, progress: bool = True) -> Path:
    """Fetch ``url`` to the file ``dest``, resuming a previous partial download.

    Args:
        url: ``http://``, ``https://`` or ``file://`` URL.
        dest: Target file; bytes accumulate in ``<dest>.part`` until the download is complete.
        sha256: Expected hex digest; checked when given. An existing ``dest`` that matches is kept.
        progress: Show a progress bar on stderr.

    Returns:
        ``dest``.

    Raises:
        DownloadError: naming the URL and file on a network/IO failure (the partial file is kept
            for the next try) or naming the file and both digests when the checksum differs (the
            bad file is deleted).
    """
    dest = Path(dest)
    scheme = urllib.parse.urlsplit(url).scheme
    if scheme not in ("http", "https", "file"):
        msg = f"{url}: unsupported URL scheme {scheme!r} (use http://, https:// or file://)"
        raise DownloadError(msg)
    if dest.is_file():
        if sha256 is None or _sha256(dest) == sha256.lower():
            log.info("%s: already downloaded", dest)
            return dest
        log.warning("%s: exists but its checksum differs; downloading it again", dest)
        dest.unlink()
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    try:
        if scheme == "file":
            _fetch_file(url, part, progress)
        else:
            _fetch_http(url, part, progress)
    except (OSError, urllib.error.URLError) as exc:
        have = part.stat().st_size if part.exists() else 0
        msg = f"{url}: download to {dest} failed after {have} bytes ({exc}); run again to resume from {part}"
        raise DownloadError(msg) from exc
    if sha256 is not None:
        got = _sha256(part)
        if got != sha256.lower():
            part.unlink()
            msg = f"{dest}: checksum mismatch, expected sha256 {sha256.lower()} but got {got} (file deleted)"
            raise DownloadError(msg)
    os.replace(part, dest)
    return dest


def extract(archive: str | Path, to: str | Path) -> Path:
    """Unpack a ``.tar.xz``/``.tar.gz``/``.tgz``/``.tar``/``.zip`` archive into ``to``.

    Raises:
        DownloadError: naming the archive and the member when a member would land outside ``to``
            (absolute path, ``..``, links pointing out, devices), or when the archive is unreadable.
    """
    archive, to = Path(archive), Path(to)
    to.mkdir(parents=True, exist_ok=True)
    name = archive.name.lower()
    try:
        if name.endswith(".zip"):
            with zipfile.ZipFile(archive) as zf:
                _guard(archive, to, ((m.filename, None) for m in zf.infolist()))
                zf.extractall(to)
        elif name.endswith(_ARCHIVE_SUFFIXES):
            with tarfile.open(archive) as tf:
                members = tf.getmembers()
                for m in members:
                    if not (m.isfile() or m.isdir() or m.issym() or m.islnk()):
                        msg = f"{archive}: member {m.name!r} is a device or fifo; refusing to extract"
                        raise DownloadError(msg)
                _guard(archive, to, ((m.name, m.linkname if (m.issym() or m.islnk()) else None) for m in members))
                tf.extractall(to, members=members, filter="data")
        else:
            msg = f"{archive}: unknown archive type (expected one of {', '.join(_ARCHIVE_SUFFIXES)})"
            raise DownloadError(msg)
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as exc:
        msg = f"{archive}: cannot extract ({exc})"
        raise DownloadError(msg) from exc
    return to


def download_mvtec(
    to: str | Path,
    *,
    url: str = MVTEC_URL,
    sha256: str | None = MVTEC_SHA256,
    categories: Sequence[str] = CATEGORIES,
    cache_dir: str | Path | None = None,
    keep_archive: bool = False,
    progress: bool = True,
) -> Path:
    """Download, verify and unpack MVTec AD into ``to``, then check its layout (decoding every image).

    Nothing is downloaded when ``to`` already holds the categories in a valid layout.

    Args:
        to: Dataset root to create (``<to>/<category>/train/good/...``).
        url, sha256: The archive (defaults: the official ones).
        categories: The categories the archive must hold.
        cache_dir: Where the archive is downloaded (default ``<to>/.download``); a partial download
            there is resumed.
        keep_archive: Keep the (4.9 GB) archive after a successful extraction.
        progress: Show a progress bar.

    Returns:
        The dataset root (``to``, or the folder inside it where the categories are).

    Raises:
        DownloadError: download, checksum or extraction failure.
        DatasetLayoutError: the unpacked tree is not a valid MVTec layout; lists every problem.
    """
    to = Path(to)
    if to.is_dir() and not check_layout(to, categories, decode=False):
        log.info("%s: MVTec AD already present", to)
        return to
    archive = _fetch_archive(url, sha256, to, cache_dir, progress)
    log.info("extracting %s to %s", archive, to)
    extract(archive, to)
    root = _locate(to, lambda p: all((p / c).is_dir() for c in categories))
    log.info("checking the layout of %s (decoding every image)", root)
    problems = check_layout(root, categories, decode=True)
    if problems:
        raise DatasetLayoutError(str(root), problems)
    if not keep_archive:
        archive.unlink()
    return root


def download_dtd(
    to: str | Path,
    *,
    url: str = DTD_URL,
    sha256: str | None = DTD_SHA256,
    cache_dir: str | Path | None = None,
    keep_archive: bool = False,
    progress: bool = True,
) -> Path:
    """Download and unpack the Describable Textures Dataset.

    Returns:
        The DTD root, the folder holding ``images/<class>/*.jpg`` (pass it as ``data.dtd_root``).

    Raises:
        DownloadError: download, checksum or extraction failure.
        DatasetLayoutError: no ``images/<class>/*.jpg`` after unpacking.
    """
    to = Path(to)
    found = _find_dtd(to)
    if found is not None:
        log.info("%s: DTD already present", found)
        return found
    archive = _fetch_archive(url, sha256, to, cache_dir, progress)
    extract(archive, to)
    found = _find_dtd(to)
    if found is None:
        raise DatasetLayoutError(str(to), [f"{to}: no images/<class>/*.jpg found after extracting {archive}"])
    if not keep_archive:
        archive.unlink()
    return found


def _fetch_archive(url: str, sha256: str | None, to: Path, cache_dir: str | Path | None, progress: bool) -> Path:
    cache = Path(cache_dir) if cache_dir is not None else to / ".download"
    name = Path(urllib.parse.unquote(urllib.parse.urlsplit(url).path)).name or "archive"
    return download(url, cache / name, sha256, progress=progress)


def _locate(to: Path, is_root: Callable[[Path], bool]) -> Path:
    """``to`` itself or its single sub-folder that satisfies ``is_root`` (archives that wrap a folder)."""
    if is_root(to):
        return to
    subs = [p for p in to.iterdir() if p.is_dir() and not p.name.startswith(".") and is_root(p)]
    return subs[0] if len(subs) == 1 else to


def _find_dtd(to: Path) -> Path | None:
    for root in (to, to / "dtd"):
        images = root / "images"
        if images.is_dir() and any(images.glob("*/*.jpg")):
            return root
    return None


def _guard(archive: Path, to: Path, members: Iterable[tuple[str, str | None]]) -> None:
    """Refuse members (and link targets) that would resolve outside ``to``."""
    base = to.resolve()
    for name, link in members:
        target = (base / name).resolve()
        bad = Path(name).is_absolute() or not target.is_relative_to(base)
        if link is not None and not bad:
            bad = Path(link).is_absolute() or not (target.parent / link).resolve().is_relative_to(base)
        if bad:
            msg = f"{archive}: member {name!r} would be written outside {to} (path traversal); refusing to extract"
            raise DownloadError(msg)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def _fetch_file(url: str, part: Path, progress: bool) -> None:
    src = Path(urllib.request.url2pathname(urllib.parse.urlsplit(url).path))
    total = src.stat().st_size
    offset = part.stat().st_size if part.exists() else 0
    if offset > total:  # not a prefix of this file
        offset = 0
    with src.open("rb") as fin, part.open("r+b" if offset else "wb") as fout:
        fin.seek(offset)
        fout.seek(offset)
        fout.truncate()
        _copy(fin, fout, offset, total, url, progress)


def _fetch_http(url: str, part: Path, progress: bool) -> None:
    offset = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "memseg-downloader"})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        response = urllib.request.urlopen(request, timeout=_TIMEOUT_S)  # the scheme is checked above
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:
            # Range starts at or past the end: the partial file is complete (or stale) on this server.
            size = _content_range_total(exc.headers.get("Content-Range"))
            if size == offset:
                return
            part.unlink()
            _fetch_http(url, part, progress)
            return
        raise
    with response:
        if offset and response.status != 206:
            log.info("%s: server ignored the Range request; restarting the download", url)
            offset = 0
        length = response.headers.get("Content-Length")
        total = offset + int(length) if length is not None else None
        with part.open("r+b" if offset else "wb") as fout:
            fout.seek(offset)
            fout.truncate()
            _copy(response, fout, offset, total, url, progress)


def _content_range_total(header: str | None) -> int | None:
    if not header or "/" not in header:
        return None
    tail = header.rsplit("/", 1)[1].strip()
    return int(tail) if tail.isdigit() else None


def _copy(src: BinaryIO, dst: BinaryIO, done: int, total: int | None, url: str, progress: bool) -> None:
    bar = None
    if progress:
        bar = tqdm(total=total, initial=done, unit="B", unit_scale=True, desc=Path(url).name, file=sys.stderr)
    try:
        while chunk := src.read(_CHUNK):
            dst.write(chunk)
            done += len(chunk)
            if bar is not None:
                bar.update(len(chunk))
    finally:
        if bar is not None:
            bar.close()
        dst.flush()
    if total is not None and done < total:
        # urllib returns b"" instead of raising when the connection drops early.
        msg = f"connection closed after {done} of {total} bytes"
        raise OSError(msg)
