"""Search spaces: every key is a config field, every sample builds a valid config, defaults go first."""

from __future__ import annotations

import pickle
from pathlib import Path

import optuna
import pytest

from memseg.config import MemSegConfig, field_names, resolve_for_category
from memseg.data.categories import CATEGORIES, category_defaults
from memseg.errors import ConfigError
from sweeps.search_space import (
    SPACES_DIR,
    CategorySpace,
    branch_name,
    load_space,
    max_memory_size,
    overrides_from_params,
)
from sweeps.trainable import trial_config

SPACES = sorted(p.stem for p in SPACES_DIR.glob("*.yaml"))
optuna.logging.set_verbosity(optuna.logging.WARNING)


def _study(space: CategorySpace, seed: int = 0) -> optuna.Study:
    return optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=seed))


def _sample(space: CategorySpace, trial: optuna.trial.BaseTrial) -> dict:
    """What Ray's OptunaSearch puts into the trial config: the sampled names plus the returned values."""
    returned = space(trial)
    return {**trial.params, **returned}


def test_paper_and_wide_exist() -> None:
    assert {"paper", "wide"} <= set(SPACES)


@pytest.mark.parametrize("name", SPACES)
def test_every_key_is_a_config_field(name: str) -> None:
    space = load_space(name)
    known = set(field_names())
    assert space.fields(), name
    assert set(space.fields()) <= known, set(space.fields()) - known


@pytest.mark.parametrize("name", SPACES)
@pytest.mark.parametrize("category", ["bottle", "screw", "toothbrush", "transistor"])
def test_sampled_params_build_valid_configs(name: str, category: str) -> None:
    base = resolve_for_category(MemSegConfig(), category)
    space = load_space(name).for_category(base, memory_pool=40)
    study = _study(space, seed=len(category))
    seen_optimizers = set()
    for _ in range(40):
        trial = study.ask()
        params = _sample(space, trial)
        cfg = trial_config(base, params)  # raises ConfigError when a sample is invalid
        assert cfg.model.memory_size <= 40
        assert cfg.loss.l1_weight + cfg.loss.focal_weight == pytest.approx(1.0)
        seen_optimizers.add(cfg.optim.optimizer)
        for key, value in overrides_from_params(params).items():
            got = cfg.flatten()[key]
            assert got == pytest.approx(value) if isinstance(value, float) else got == value, key
        study.tell(trial, 0.5)
    assert seen_optimizers == {"sgd", "adamw"}


def test_conditional_lr_ranges_follow_the_optimizer() -> None:
    base = resolve_for_category(MemSegConfig(), "bottle")
    space = load_space("paper").for_category(base, memory_pool=50)
    study = _study(space, seed=3)
    for _ in range(60):
        trial = study.ask()
        cfg = trial_config(base, _sample(space, trial))
        if cfg.optim.optimizer == "sgd":
            assert 0.01 <= cfg.optim.lr <= 0.08 and cfg.optim.weight_decay == 3e-5
            assert branch_name("optim.lr", "sgd") in trial.params
        else:
            assert 0.001 <= cfg.optim.lr <= 0.01 and cfg.optim.weight_decay == 5e-4
            assert cfg.optim.warmup_fraction == 0.1
        study.tell(trial, 0.1)


def test_wide_space_tries_exact_and_coreset_nearest_matching_and_no_coreset_with_aligned() -> None:
    # Nearest-matching trials try exact matching and two coreset sizes; an aligned trial never
    # carries a coreset size.
    base = resolve_for_category(MemSegConfig(), "carpet")
    space = load_space("wide").for_category(base, memory_pool=50)
    study = _study(space, seed=5)
    matches, coresets = set(), set()
    for _ in range(40):
        trial = study.ask()
        cfg = trial_config(base, _sample(space, trial))
        matches.add(cfg.model.memory_match)
        if cfg.model.memory_match == "nearest":
            coresets.add(cfg.model.memory_coreset)
        else:
            assert cfg.model.memory_coreset is None
        study.tell(trial, 0.1)
    assert matches == {"aligned", "nearest"}
    assert coresets == {None, 2048, 8192}


@pytest.mark.parametrize("category", CATEGORIES)
def test_authors_defaults_are_the_first_point_and_in_the_paper_space(category: str, caplog) -> None:
    base = resolve_for_category(MemSegConfig(), category)
    with caplog.at_level("INFO", logger="sweeps.search_space"):
        space = load_space("paper").for_category(base, memory_pool=500)
    assert not [r for r in caplog.records if "widening" in r.message or "adding" in r.message]
    study = _study(space)
    study.enqueue_trial(space.points_to_evaluate()[0])
    trial = study.ask()
    cfg = trial_config(base, _sample(space, trial))
    assert cfg.flatten() == base.flatten()  # the first trial is exactly the authors' config
    assert cfg.model.memory_size == category_defaults(category).memory_size


def test_memory_size_is_capped_by_the_pool() -> None:
    base = resolve_for_category(MemSegConfig(), "screw")  # authors: 120
    space = load_space("paper").for_category(base, memory_pool=25)
    assert space.default_point()["model.memory_size"] == 25
    spec = dict(space.entries)["model.memory_size"]
    assert spec.choices == [10, 25]


def test_a_default_outside_the_range_widens_it() -> None:
    base = resolve_for_category(MemSegConfig().with_overrides({"synthesis.perlin_threshold": 0.9}), "bottle")
    space = load_space("paper").for_category(base, memory_pool=50)
    spec = dict(space.entries)["synthesis.perlin_threshold"]
    assert (spec.low, spec.high) == (0.4, 0.9)
    assert space.default_point()["synthesis.perlin_threshold"] == 0.9


def test_category_space_pickles_with_plain_pickle() -> None:
    # OptunaSearch.save() pickles its define-by-run function with the standard pickle module.
    base = resolve_for_category(MemSegConfig(), "bottle")
    space = load_space("wide").for_category(base, memory_pool=50)
    clone = pickle.loads(pickle.dumps(space))
    a = _sample(space, optuna.trial.FixedTrial(space.default_point()))
    b = _sample(clone, optuna.trial.FixedTrial(clone.default_point()))
    assert a == b


def test_extra_points_merge_over_the_defaults_and_reject_unknown_names() -> None:
    base = resolve_for_category(MemSegConfig(), "bottle")
    space = load_space("paper").for_category(base, memory_pool=50)
    points = space.points_to_evaluate([{"synthesis.perlin_threshold": 0.45}])
    assert len(points) == 2 and points[1]["synthesis.perlin_threshold"] == 0.45
    assert points[1]["optim.lr[sgd]"] == points[0]["optim.lr[sgd]"]
    with pytest.raises(ConfigError, match=r"extra_points\[0\].*train\.steps"):
        space.points_to_evaluate([{"train.steps": 3}])


@pytest.mark.parametrize("n_train", range(4, 80, 3))
@pytest.mark.parametrize(("val_fraction", "val_min"), [(0.1, 4), (0.2, 2), (0.0, 1)])
def test_max_memory_size_agrees_with_make_splits(n_train: int, val_fraction: float, val_min: int) -> None:
    from memseg.data.mvtec import CategoryFiles, Sample
    from memseg.data.splits import MIN_TRAIN_IMAGES, make_splits

    files = CategoryFiles(
        root=Path("/x"), category="c",
        train=[Sample(Path(f"/x/{i:03d}.png"), 0, "good", None) for i in range(n_train)], test=[],
    )
    try:
        cap = max_memory_size(n_train, val_fraction, val_min, MIN_TRAIN_IMAGES)
    except ConfigError:
        with pytest.raises(ConfigError):
            make_splits(files, 1, "first", val_fraction, val_min, 0)
        return
    make_splits(files, cap, "first", val_fraction, val_min, 0)  # fits
    with pytest.raises(ConfigError):
        make_splits(files, cap + 1, "first", val_fraction, val_min, 0)


def _space_file(tmp_path: Path, params: str, version: int = 1) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(f"version: {version}\nname: t\nparams:\n{params}")
    return path


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ("  synthesis.perlin_treshold: {type: float, low: 0.1, high: 0.2}\n", "not a MemSegConfig field"),
        ("  loss.focal_weight: {type: complement, of: loss.l1_weight}\n", "earlier float"),
        ("  optim.lr: {type: conditional, depends_on: optim.optimizer, cases: {sgd: {type: const, value: 1}}}\n",
         "earlier categorical"),
        ("  optim.optimizer: {type: categorical, choices: [sgd, adamw]}\n"
         "  optim.lr: {type: conditional, depends_on: optim.optimizer, cases: {sgd: {type: const, value: 1}}}\n",
         "no case for optim.optimizer"),
        ("  optim.lr: {type: float, low: 0.1, high: 0.01}\n", "low"),
        ("  optim.lr: {type: gaussian, mean: 1}\n", "optim.lr"),
        ("  data.val_anomaly_source: {type: categorical, choices: [training_synthesis, held_out]}\n",
         "params.data.val_anomaly_source: defines the validation set"),
        ("  eval.selection_metric: {type: categorical, choices: [val_pixel_auroc, val_pixel_aupro]}\n",
         "params.eval.selection_metric: defines the validation set or the selection metric"),
    ],
)
def test_bad_space_files_name_file_and_param(tmp_path: Path, params: str, match: str) -> None:
    path = _space_file(tmp_path, params)
    with pytest.raises(ConfigError, match=match) as info:
        load_space(path)
    assert str(path) in str(info.value)


def test_unsupported_version_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="version 2"):
        load_space(_space_file(tmp_path, "  optim.lr: {type: float, low: 0.01, high: 0.1}\n", version=2))


def test_boolean_case_keys(tmp_path: Path) -> None:
    path = _space_file(
        tmp_path,
        "  model.memory_pooling: {type: categorical, choices: [true, false]}\n"
        "  model.diff_scale:\n    type: conditional\n    depends_on: model.memory_pooling\n"
        "    cases:\n      true: {type: const, value: 100.0}\n      false: {type: float, low: 1, high: 10}\n",
    )
    base = resolve_for_category(MemSegConfig(), "carpet")
    space = load_space(path).for_category(base)
    fixed = optuna.trial.FixedTrial({"model.memory_pooling": False, "model.diff_scale[false]": 5.0})
    assert trial_config(base, _sample(space, fixed)).model.diff_scale == 5.0
