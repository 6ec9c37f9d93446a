"""Planning a sweep: per-category configs, spaces, storage layout, the manifest used by --resume."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from memseg.errors import ConfigError
from sweeps import driver
from sweeps.spec import load_sweep_spec
from sweeps.trainable import make_trainable, trial_config


@pytest.fixture
def spec(synthetic_root: Path, tmp_path: Path):
    return load_sweep_spec("smoke").with_changes(
        {"data.root": str(synthetic_root), "storage.path": str(tmp_path / "store")}
    )


def test_plan_resolves_each_category(spec) -> None:
    plans = driver.plan_sweep(spec, "sid")
    assert [p.category for p in plans] == ["bottle", "carpet"]
    bottle, carpet = plans
    assert bottle.base_config.data.category == "bottle"
    assert Path(bottle.base_config.data.root).is_absolute()
    assert bottle.base_config.synthesis.use_foreground_mask is True  # resolved: the authors' bottle default
    assert carpet.base_config.synthesis.use_foreground_mask is False
    assert bottle.experiment_path.endswith("/store/sid/bottle")
    assert bottle.metric == "best_val_pixel_auroc"
    assert bottle.step_budget == 16
    assert bottle.seed != carpet.seed
    assert bottle.dataset_fingerprint != carpet.dataset_fingerprint
    # 24 images, val_min_images 2: the authors' 30 memory images are capped to the pool.
    assert bottle.space.default_point()["model.memory_size"] == 20
    assert bottle.base_config.model.memory_size == 20


def test_default_point_reproduces_the_base_config(spec) -> None:
    plan = driver.plan_sweep(spec, "sid", ["bottle"])[0]
    point = plan.space.default_point()
    cfg = trial_config(plan.base_config, {**point, "optim.lr": point["optim.lr[sgd]"]})
    assert cfg.flatten() == plan.base_config.flatten()


def test_missing_category_folder_names_it(spec) -> None:
    with pytest.raises(ConfigError, match="zipper"):
        driver.plan_sweep(spec, "sid", ["zipper"])


def test_trainables_have_one_name_per_category(spec) -> None:
    plans = driver.plan_sweep(spec, "sid")
    fns = [make_trainable(p.category, p.base_config) for p in plans]
    assert [f.__name__ for f in fns] == ["memseg_bottle", "memseg_carpet"]
    import ray.cloudpickle

    assert ray.cloudpickle.loads(ray.cloudpickle.dumps(fns[0])).__name__ == "memseg_bottle"


def test_manifest_roundtrip_and_latest(spec, tmp_path: Path) -> None:
    assert driver.latest_sweep_id(spec.storage.path, "smoke") is None
    driver.write_manifest(spec, "smoke-1", ["bottle"])
    driver.write_manifest(spec, "smoke-2", ["carpet"])
    driver.write_manifest(spec.with_changes({"name": "other"}), "other-1", ["carpet"])
    assert driver.latest_sweep_id(spec.storage.path, "smoke") == "smoke-2"
    read, cats = driver.read_manifest(spec.storage.path, "smoke-1")
    assert read == spec and cats == ["bottle"]
    assert driver.read_manifest(spec.storage.path, "nope") is None


def test_storage_paths() -> None:
    assert driver.absolute_storage("s3://bucket/x") == "s3://bucket/x"
    assert Path(driver.absolute_storage("runs/x")).is_absolute()


def test_tuner_builds_and_pickles(spec) -> None:
    # Tuner() writes tuner.pkl (searcher, scheduler, callbacks) without needing a cluster.
    plan = driver.plan_sweep(spec, "sid", ["bottle"])[0]
    driver.build_tuner(plan, spec, callbacks=[])
    assert (Path(plan.experiment_path) / "tuner.pkl").is_file()
    assert pickle.loads(pickle.dumps(plan.space)).space_name == "paper"
