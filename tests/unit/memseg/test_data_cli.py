"""`memseg data synth|check|download` through the real CLI entry point."""

from __future__ import annotations

from pathlib import Path

import pytest

from memseg.data.mvtec import list_category
from pipelines.cli import main
from tests.helpers.data import make_category, make_tar


def test_synth_then_check_succeeds(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "synthetic"
    argv = ["data", "synth", "--out", str(out), "--size", "64", "--categories", "grid", "cable",
            "--n-train", "5", "--n-test-good", "2", "--n-test-defect", "3", "--seed", "1"]
    assert main(argv) == 0
    assert "wrote 2 categories" in capsys.readouterr().out
    assert len(list_category(out, "grid").train) == 5
    assert main(["data", "check", "--root", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        "cable: train 5, test good 2, test defect 3 (hole, misplaced, missing)",
        "grid: train 5, test good 2, test defect 3 (hole, scratch, stain)",
    ]


def test_check_prints_every_problem_and_fails(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_category(tmp_path, "bottle")
    mask = tmp_path / "bottle" / "ground_truth" / "scratch" / "001_mask.png"
    mask.unlink()
    corrupt = tmp_path / "bottle" / "train" / "good" / "001.png"
    corrupt.write_bytes(b"garbage")
    assert main(["data", "check", "--root", str(tmp_path), "--categories", "bottle", "screw"]) == 1
    out = capsys.readouterr().out
    assert f"{tmp_path / 'bottle' / 'test' / 'scratch' / '001.png'}: test image has no mask" in out
    assert f"{corrupt}: cannot decode image" in out
    assert f"{tmp_path / 'screw'}: category folder is missing" in out
    assert "3 problem(s)" in out
    # --no-decode skips the corrupt-file check only
    assert main(["data", "check", "--root", str(tmp_path), "--categories", "bottle", "--no-decode"]) == 1
    assert "cannot decode" not in capsys.readouterr().out


def test_synth_with_a_bad_category_is_a_clean_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "synth", "--out", str(tmp_path), "--categories", "widget"]) == 1
    assert "unknown ['widget']" in capsys.readouterr().err


def test_download_from_a_file_url(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "src"
    make_category(src, "bottle")
    archive = make_tar(src, tmp_path / "mvtec.tar.xz")
    # A custom URL without --sha256 is downloaded unchecked; a wrong --sha256 fails naming the file.
    bad = ["data", "download", "mvtec", "--to", str(tmp_path / "bad"), "--url", archive.as_uri(),
           "--sha256", "f" * 64, "--no-progress"]
    assert main(bad) == 1
    assert "checksum mismatch" in capsys.readouterr().err
    good = ["data", "download", "mvtec", "--to", str(tmp_path / "good"), "--url", archive.as_uri(),
            "--categories", "bottle", "--no-progress"]
    assert main(good) == 0
    assert f"MVTec AD ready at {tmp_path / 'good'}" in capsys.readouterr().out
    assert len(list_category(tmp_path / "good", "bottle").train) == 3


def test_data_without_action_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data"]) == 2
    assert "synth" in capsys.readouterr().out
