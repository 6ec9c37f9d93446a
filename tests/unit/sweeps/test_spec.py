"""Sweep spec parsing: the built-in configs, and clear errors naming the file and the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from memseg.errors import ConfigError
from sweeps.spec import builtin_specs, load_sweep_spec, resolve_spec_path


@pytest.mark.parametrize("name", ["smoke", "demo", "paper"])
def test_builtin_specs_load_and_build_a_config(name: str) -> None:
    spec = load_sweep_spec(name)
    cfg = spec.base_config()
    assert spec.name == name
    assert cfg.train.steps >= cfg.train.eval_interval
    assert spec.search.num_samples >= 2


def test_builtin_names_and_paths_name_the_same_file() -> None:
    assert {"smoke", "demo", "paper"} <= set(builtin_specs())
    assert resolve_spec_path("smoke") == resolve_spec_path(str(resolve_spec_path("smoke")))


def test_demo_covers_all_fifteen_categories() -> None:
    from memseg.data.categories import CATEGORIES

    assert sorted(load_sweep_spec("demo").categories) == sorted(CATEGORIES)
    assert sorted(load_sweep_spec("paper").categories) == sorted(CATEGORIES)


def test_paper_spec_uses_gpu_and_imagenet_weights() -> None:
    spec = load_sweep_spec("paper")
    assert spec.resources.gpu == 0.5
    assert spec.base_config().model.backbone_weights == "imagenet"
    assert spec.base_config().data.image_size == 256
    assert spec.search.num_samples >= 32


def test_paper_spec_trains_on_dtd_and_generated_data_specs_choose_procedural_textures() -> None:
    paper = load_sweep_spec("paper").base_config().data
    assert (paper.texture_source, paper.dtd_root) == ("dtd", "/mnt/cluster_storage/datasets/dtd")
    for name in ("smoke", "demo"):
        assert load_sweep_spec(name).base_config().data.texture_source == "procedural"


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "sweep.yaml"
    path.write_text(text)
    return path


MINIMAL = "name: t\ncategories: [bottle]\ndata: {root: /data}\n"


def test_unknown_key_names_file_and_key(tmp_path: Path) -> None:
    path = _write(tmp_path, MINIMAL + "search: {num_sample: 3}\n")
    with pytest.raises(ConfigError, match=r"sweep\.yaml.*search\.num_sample: unknown key"):
        load_sweep_spec(path)


def test_bad_base_key_names_the_base_path(tmp_path: Path) -> None:
    path = _write(tmp_path, MINIMAL + "base: {train: {stepz: 3}}\n")
    with pytest.raises(ConfigError, match=r"base\.train\.stepz: unknown key"):
        load_sweep_spec(path)


def test_out_of_range_base_value(tmp_path: Path) -> None:
    path = _write(tmp_path, MINIMAL + "base: {synthesis: {perlin_threshold: 1.5}}\n")
    with pytest.raises(ConfigError, match=r"synthesis\.perlin_threshold"):
        load_sweep_spec(path)


@pytest.mark.parametrize("gpu", [0.3, 1.5])
def test_gpu_fraction_must_pack(tmp_path: Path, gpu: float) -> None:
    path = _write(tmp_path, MINIMAL + f"resources: {{gpu: {gpu}}}\n")
    with pytest.raises(ConfigError, match=r"resources\.gpu"):
        load_sweep_spec(path)


@pytest.mark.parametrize("gpu", [0.25, 0.5, 1, 2])
def test_gpu_fractions_that_divide_one_are_fine(tmp_path: Path, gpu: float) -> None:
    assert load_sweep_spec(_write(tmp_path, MINIMAL + f"resources: {{gpu: {gpu}}}\n")).resources.gpu == gpu


def test_duplicate_categories_rejected(tmp_path: Path) -> None:
    path = _write(tmp_path, "name: t\ncategories: [bottle, bottle]\ndata: {root: /d}\n")
    with pytest.raises(ConfigError, match="categories"):
        load_sweep_spec(path)


def test_unknown_builtin_lists_the_builtins() -> None:
    with pytest.raises(ConfigError, match="smoke"):
        load_sweep_spec("no-such-sweep")


def test_steps_per_trial_sets_the_step_budget(tmp_path: Path) -> None:
    spec = load_sweep_spec(_write(tmp_path, MINIMAL + "budget: {steps_per_trial: 77}\n"))
    assert spec.base_config().train.steps == 77


def test_with_changes_revalidates() -> None:
    spec = load_sweep_spec("smoke")
    assert spec.with_changes({"base.train.steps": 24}).base_config().train.steps == 24
    assert spec.with_changes({"data.root": "/x"}).data.root == "/x"
    with pytest.raises(ConfigError, match="search.num_samples"):
        spec.with_changes({"search.num_samples": 0})


def test_trials_are_measured_on_test_unless_the_spec_says_no(tmp_path: Path) -> None:
    assert all(load_sweep_spec(name).budget.measure_trials_on_test for name in builtin_specs())
    off = load_sweep_spec(_write(tmp_path, MINIMAL + "budget: {measure_trials_on_test: false}\n"))
    assert off.budget.measure_trials_on_test is False
    with pytest.raises(ConfigError, match=r"budget\.measure_trials_on_test"):
        load_sweep_spec(_write(tmp_path, MINIMAL + "budget: {measure_trials_on_test: sometimes}\n"))
