"""Planning a sweep: per-category configs, spaces, storage layout, the manifest used by --resume."""

from __future__ import annotations

import os
import pickle
import sys
from pathlib import Path
from unittest import mock

import pytest
import ray
import ray.cloudpickle
from ray import tune

from memseg.errors import ConfigError
from memseg.metrics.keys import STEP
from sweeps import driver
from sweeps.spec import ParamValue, load_sweep_spec
from sweeps.trainable import Trainable, make_trainable, trainable_name, trial_config


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


def test_the_memory_cap_is_said_once_per_sweep(spec, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("DEBUG", logger=driver.logger.name)
    driver.plan_sweep(spec, "sid")  # both categories are capped
    capped = [(r.levelname, r.getMessage().split(":")[0]) for r in caplog.records if "capped to" in r.getMessage()]
    assert capped == [("INFO", "bottle"), ("DEBUG", "carpet")]


def test_default_point_reproduces_the_base_config(spec) -> None:
    plan = driver.plan_sweep(spec, "sid", ["bottle"])[0]
    point = plan.space.default_point()
    cfg = trial_config(plan.base_config, {**point, "optim.lr": point["optim.lr[sgd]"]})
    assert cfg.flatten() == plan.base_config.flatten()


def test_missing_category_folder_names_it(spec) -> None:
    with pytest.raises(ConfigError, match="zipper"):
        driver.plan_sweep(spec, "sid", ["zipper"])


@pytest.mark.parametrize("dtd_root", [None, "paper.yaml's"])
def test_paper_sweep_without_dtd_images_stops_at_planning_naming_dtd_root(
    dtd_root: str | None, synthetic_root: Path, tmp_path: Path
) -> None:
    paper = load_sweep_spec("paper").with_changes({"data.root": str(synthetic_root), "storage.path": str(tmp_path)})
    if dtd_root is None:
        paper = paper.with_changes({"base.data.dtd_root": None})
    # This machine has no /mnt/cluster_storage: paper.yaml's DTD root holds no images here.
    assert paper.base_config().data.texture_source == "dtd"
    with pytest.raises(ConfigError, match=r"^data\.dtd_root: .*data\.texture_source=procedural"):
        driver.plan_sweep(paper, "sid", ["bottle"])
    assert not (tmp_path / "sid").exists()


def test_trainables_have_one_name_per_category(spec) -> None:
    plans = driver.plan_sweep(spec, "sid")
    fns = [make_trainable(p.category, p.base_config) for p in plans]
    assert [f.__name__ for f in fns] == ["memseg_bottle", "memseg_carpet"]
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


# --- what the trials run is injected ----------------------------------------------------------------


def simulated_trainable(plan: driver.CategoryPlan, pids: Path | None = None) -> Trainable:
    """A stand-in for training: reports twice, a score that is the trial's Perlin threshold at the end;
    appends its worker's process id to ``pids``."""
    metric, budget = plan.metric, plan.step_budget

    def trial(config: dict[str, ParamValue]) -> None:
        threshold = config["synthesis.perlin_threshold"]
        assert isinstance(threshold, float)
        if pids is not None:
            with pids.open("a") as fh:
                fh.write(f"{os.getpid()}\n")
        for step in (budget // 2, budget):
            tune.report({STEP: step, metric: threshold * step / budget})

    trial.__name__ = trainable_name(plan.category)
    return trial


@pytest.mark.ray
@pytest.mark.parametrize("reuse", [True, False])
def test_trainable_factory_replaces_what_the_trials_run(spec, reuse: bool, tmp_path: Path) -> None:
    spec = spec.with_changes({"scheduler.kind": "fifo", "search.max_concurrent": 1, "cluster.reuse_actors": reuse})
    plans = driver.plan_sweep(spec, "simulated", ["bottle"])
    pids = tmp_path / "pids.txt"
    # The workers unpickle the simulated trainable without importing this test module.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    with mock.patch.dict(os.environ):  # run_sweep sets Tune's variables for the whole process
        ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False)
        try:
            result = driver.run_sweep(spec, plans, trainable_factory=lambda plan: simulated_trainable(plan, pids))
        finally:
            ray.shutdown()
            ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    bottle = result.categories["bottle"]
    assert bottle.error is None and bottle.counts() == {"finished": 3}
    assert all(t.step == 16 and t.checkpoint_path is None for t in bottle.trials)  # nothing was trained
    assert [t.score for t in bottle.trials] == [t.params["synthesis.perlin_threshold"] for t in bottle.trials]
    assert bottle.best is not None and bottle.best.score == max(t.score or 0.0 for t in bottle.trials)
    # One trial at a time: with actor reuse the three ran in one worker process, without it in three.
    assert len(set(pids.read_text().split())) == (1 if reuse else 3)


def test_a_trainable_named_otherwise_is_refused(spec) -> None:
    plan = driver.plan_sweep(spec, "sid", ["bottle"])[0]

    def trial(config: dict[str, ParamValue]) -> None: ...

    with pytest.raises(driver.SweepError, match="'trial'.*'memseg_bottle'"):
        driver.build_tuner(plan, spec, [], trainable_factory=lambda p: trial)
