"""Test helpers for the data layer: tiny MVTec trees, archives, and a loopback HTTP server with Range."""

from __future__ import annotations

import http.server
import re
import tarfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np


def write_png(path: Path, image: np.ndarray) -> Path:
    """Write a uint8 (H, W) or (H, W, 3) RGB array as PNG, creating the folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    bgr = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    assert cv2.imwrite(str(path), bgr), path
    return path


def make_category(
    root: Path, category: str, *, size: int = 32, n_train: int = 3, n_good: int = 1, defects: dict[str, int] | None = None
) -> Path:
    """A minimal valid MVTec category: random RGB images, square masks of 0/255."""
    rng = np.random.default_rng(0)
    defects = {"scratch": 2} if defects is None else defects
    cat = root / category
    for i in range(n_train):
        write_png(cat / "train" / "good" / f"{i:03d}.png", rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
    for i in range(n_good):
        write_png(cat / "test" / "good" / f"{i:03d}.png", rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
    for defect, n in defects.items():
        for i in range(n):
            write_png(cat / "test" / defect / f"{i:03d}.png", rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
            mask = np.zeros((size, size), np.uint8)
            mask[size // 4 : size // 2, size // 4 : size // 2] = 255
            write_png(cat / "ground_truth" / defect / f"{i:03d}_mask.png", mask)
    return cat


def make_tar(src: Path, archive: Path, arcname: str = ".") -> Path:
    """Pack ``src`` into ``archive`` (compression from the suffix: .tar.xz, .tar.gz, .tar)."""
    mode = {".xz": "w:xz", ".gz": "w:gz"}.get(archive.suffix, "w")
    with tarfile.open(archive, mode) as tf:
        for item in sorted(src.iterdir()):
            tf.add(item, arcname=item.name if arcname == "." else f"{arcname}/{item.name}")
    return archive


@dataclass
class ServerLog:
    """What the loopback server saw: the Range header of each request (None when absent)."""

    ranges: list[str | None] = field(default_factory=list)


@contextmanager
def serve_file(
    payload: bytes, *, support_range: bool = True, cut_first_after: int | None = None, name: str = "data.tar.xz"
) -> Iterator[tuple[str, ServerLog]]:
    """Serve ``payload`` at ``http://127.0.0.1:<port>/<name>`` from a thread.

    Args:
        payload: The file content.
        support_range: Answer ``Range: bytes=N-`` with 206 and the tail; otherwise ignore it (200, all).
        cut_first_after: On the first request, announce the full length but close the connection after
            this many bytes (an interrupted download).
    """
    log = ServerLog()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path != f"/{name}":
                self.send_error(404)
                return
            header = self.headers.get("Range")
            log.ranges.append(header)
            start = 0
            match = re.fullmatch(r"bytes=(\d+)-", header or "")
            if support_range and match:
                start = int(match.group(1))
                if start >= len(payload):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(payload)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(payload) - 1}/{len(payload)}")
            else:
                self.send_response(200)
            body = payload[start:]
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if cut_first_after is not None and len(log.ranges) == 1:
                self.wfile.write(body[:cut_first_after])
                self.wfile.flush()
                self.close_connection = True
                return
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            return

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/{name}", log
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
