"""Registry helpers that need no server: model names, locating a trial's checkpoint in Tune storage."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.registry import RegistrationError, dataset_name, locate_checkpoint, model_name


def test_model_name_is_registry_safe() -> None:
    assert model_name("mvtec", "metal_nut") == "memseg-mvtec-metal_nut"
    assert model_name("My Data/v2", "Bottle") == "memseg-my-data-v2-bottle"
    assert dataset_name("/mnt/data/mvtec/") == "mvtec"


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


def test_locate_checkpoint_takes_the_latest_checkpoint_of_the_trial(tmp_path: Path) -> None:
    exp = tmp_path / "sweep" / "bottle"
    _touch(exp / "memseg_bottle_aaa111" / "checkpoint_000001" / "best_model.pt")
    latest = _touch(exp / "memseg_bottle_aaa111" / "checkpoint_000003" / "best_model.pt")
    _touch(exp / "memseg_bottle_bbb222" / "checkpoint_000009" / "best_model.pt")
    (exp / "memseg_bottle_aaa111" / "checkpoint_000004").mkdir()  # being written: no file yet
    assert locate_checkpoint(str(exp), "aaa111", tmp_path / "work") == latest


def test_locate_checkpoint_names_what_it_searched(tmp_path: Path) -> None:
    with pytest.raises(RegistrationError, match=r"trial ccc333: no checkpoint_\*/best_model.pt under .*bottle"):
        locate_checkpoint(str(tmp_path / "bottle"), "ccc333", tmp_path)
