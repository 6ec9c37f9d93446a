"""The pre-flight data check: every file a trial reads decodes, before any Ray work; a user's root is never generated."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pipelines import tracking
from pipelines.cli import main
from pipelines.sweep_stage import run_tracked_sweep
from sweeps.dataset import DataCheckError, preflight_dataset
from sweeps.spec import load_sweep_spec
from tests.helpers.data import make_category


def _corrupt(path: Path) -> None:
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)  # a PNG signature, then nothing decodable


def test_good_data_passes_and_is_remembered(tmp_path: Path) -> None:
    make_category(tmp_path / "d", "bottle")
    cache = tmp_path / "cache"
    preflight_dataset(tmp_path / "d", ["bottle"], cache_dir=cache)
    assert len(list(cache.glob("bottle-*.ok"))) == 1
    preflight_dataset(tmp_path / "d", ["bottle"], cache_dir=cache)  # from the cache
    assert len(list(cache.glob("bottle-*.ok"))) == 1


def test_every_bad_file_is_named_once(tmp_path: Path) -> None:
    root = tmp_path / "d"
    make_category(root, "bottle", n_train=4)
    bad_train = root / "bottle" / "train" / "good" / "002.png"
    bad_mask = root / "bottle" / "ground_truth" / "scratch" / "001_mask.png"
    _corrupt(bad_train)
    _corrupt(bad_mask)
    cache = tmp_path / "cache"
    with pytest.raises(DataCheckError) as failure:
        preflight_dataset(root, ["bottle"], cache_dir=cache)
    assert failure.value.problems == [f"{bad_mask}: cannot decode image (unreadable or corrupt file)",
                                      f"{bad_train}: cannot decode image (unreadable or corrupt file)"]
    assert str(bad_train) in str(failure.value) and "2 problem(s)" in str(failure.value)
    assert not list(cache.glob("*.ok"))  # a failure is never cached


def test_a_file_corrupted_after_a_pass_is_found(tmp_path: Path) -> None:
    root = tmp_path / "d"
    make_category(root, "bottle")
    cache = tmp_path / "cache"
    preflight_dataset(root, ["bottle"], cache_dir=cache)
    image = root / "bottle" / "test" / "good" / "000.png"
    size = image.stat().st_size
    image.write_bytes(b"\0" * size)  # same size: same fingerprint, but a new modification time
    os.utime(image, ns=(image.stat().st_atime_ns, image.stat().st_mtime_ns + 10**9))
    with pytest.raises(DataCheckError, match=str(image)):
        preflight_dataset(root, ["bottle"], cache_dir=cache)


def test_layout_problems_and_missing_root_are_named(tmp_path: Path) -> None:
    with pytest.raises(DataCheckError, match=f"{tmp_path / 'nope'}: dataset root does not exist"):
        preflight_dataset(tmp_path / "nope", ["bottle"], cache_dir=tmp_path / "c")
    make_category(tmp_path / "d", "bottle")
    with pytest.raises(DataCheckError, match="carpet: category folder is missing"):
        preflight_dataset(tmp_path / "d", ["bottle", "carpet"], cache_dir=tmp_path / "c")


def test_corrupt_image_stops_the_sweep_before_ray(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import ray

    monkeypatch.setenv("HOME", str(tmp_path))  # the pre-flight cache goes under ~/.cache
    root = tmp_path / "d"
    make_category(root, "bottle", n_train=6)
    bad = root / "bottle" / "train" / "good" / "003.png"
    _corrupt(bad)
    spec = load_sweep_spec("smoke").with_changes(
        {"data.root": str(root), "storage.path": str(tmp_path / "s"), "categories": ["bottle"]})
    assert not ray.is_initialized()
    with pytest.raises(DataCheckError, match=str(bad)):
        run_tracked_sweep(spec, tracking_uri=tracking.local_store_uri(tmp_path / "s"), sweep_id="x")
    assert not ray.is_initialized()
    assert not (tmp_path / "s" / "x").exists()  # no manifest: the rerun after the fix is a fresh sweep


def test_mistyped_data_root_is_an_error_not_a_generated_dataset(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    typo = tmp_path / "dta"
    rc = main(["sweep", "--config", "smoke", "--data-root", str(typo), "--storage", str(tmp_path / "s")])
    assert rc == 1
    err = capsys.readouterr().err
    assert f"{typo}: dataset root does not exist" in err
    assert not typo.exists()


def test_the_configs_own_root_is_still_generated(tmp_path: Path) -> None:
    from pipelines.cli import build_parser
    from pipelines.commands._common import spec_from_args

    spec, changes = spec_from_args(build_parser().parse_args(["sweep", "--config", "smoke"]))
    assert spec.data.generate is not None and "data.generate" not in changes
    args = build_parser().parse_args(["sweep", "--config", "smoke", "--data-root", str(tmp_path / "mine")])
    spec, changes = spec_from_args(args)
    assert spec.data.generate is None and changes["data.generate"] is None
