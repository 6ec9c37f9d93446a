"""The typed config: YAML and --set overrides in, errors that name the file and the dotted key."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from memseg.config import MemSegConfig, field_names, load_config, read_yaml_mapping, resolve_for_category
from memseg.errors import ConfigError


def test_yaml_round_trip_and_typed_overrides(tmp_path: Path) -> None:
    cfg = load_config(None, ["optim.lr=0.01", "train.steps=50", "data.category=screw"])
    assert cfg.optim.lr == 0.01 and cfg.train.steps == 50 and cfg.data.category == "screw"
    path = tmp_path / "run.yaml"
    path.write_text(cfg.to_yaml())
    assert load_config(path) == cfg
    assert load_config(path, {"optim.lr": 0.02}).optim.lr == 0.02  # --set wins over the file
    assert set(cfg.flatten()) == set(field_names())


def test_unknown_key_lists_the_valid_ones_and_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"optim\.lrr: unknown key \(valid here: .*\blr\b"):
        load_config(None, ["optim.lrr=0.1"])
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  steps: -3\n")
    with pytest.raises(ConfigError, match=rf"{path}: train\.steps: .*\(got -3\)"):
        load_config(path)


def test_file_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"missing\.yaml: cannot read config file"):
        load_config(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match=r"broken\.yaml: not valid YAML"):
        load_config(broken)
    listed = tmp_path / "list.yaml"
    listed.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match=r"list\.yaml: top level of the sweep config must be a mapping, got list"):
        read_yaml_mapping(listed, "sweep config")
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert load_config(empty) == MemSegConfig()  # an empty config file means the defaults
    with pytest.raises(ConfigError, match="got NoneType"):
        read_yaml_mapping(empty, "search space")  # ... but an empty sweep file is a mistake


def test_category_defaults_fill_only_unset_fields() -> None:
    screw = resolve_for_category(MemSegConfig(), "screw")
    toothbrush = resolve_for_category(MemSegConfig(), "toothbrush")
    assert (screw.model.memory_size, toothbrush.model.memory_size) == (120, 10)
    assert resolve_for_category(MemSegConfig(), "carpet").synthesis.use_foreground_mask is False
    pinned = resolve_for_category(load_config(None, ["model.memory_size=7"]), "screw")
    assert pinned.model.memory_size == 7
    with pytest.raises(ValidationError, match="frozen"):
        screw.model.memory_size = 3  # type: ignore[misc]


def test_a_coreset_and_a_window_together_are_refused_naming_both() -> None:
    with pytest.raises(ConfigError, match=r"memory_coreset and memory_window cannot both be set"):
        load_config(None, ["model.memory_match=nearest", "model.memory_coreset=2048", "model.memory_window=3"])
