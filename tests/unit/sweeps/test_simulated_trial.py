"""The simulated trial's curve, checkpoint layout and naming (no Ray needed: pure functions)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np

from sweeps.driver import CategoryPlan
from sweeps.simulated_trial import (
    STATE_FILE,
    SimulatedTrial,
    curve,
    final_level,
    make_simulated_trainable,
    png_bytes,
    simulated_factory,
    write_checkpoint,
)
from sweeps.spec import load_sweep_spec
from sweeps.trainable import trainable_name


def test_level_peaks_at_the_sweet_learning_rate_per_optimiser() -> None:
    at_sweet = final_level({"optim.optimizer": "sgd", "optim.lr": 0.04}, "t1")
    far = final_level({"optim.optimizer": "sgd", "optim.lr": 0.005}, "t1")
    adam_sweet = final_level({"optim.optimizer": "adamw", "optim.lr": 0.003}, "t1")
    adam_far = final_level({"optim.optimizer": "adamw", "optim.lr": 0.04}, "t1")
    assert at_sweet - far > 0.05
    assert adam_sweet - adam_far > 0.05
    # Same parameters, same trial id: the same level (the noise is seeded by the trial id).
    assert final_level({"optim.lr": 0.04}, "x") == final_level({"optim.lr": 0.04}, "x")


def test_curve_rises_towards_the_level() -> None:
    values = [curve(0.95, step, 100, "t") for step in range(0, 101, 10)]
    assert values[0] < 0.55
    assert values[-1] > 0.92
    assert values[5] < values[-1]


def test_checkpoint_has_the_real_layout_and_decodable_heatmaps(tmp_path: Path) -> None:
    sim = SimulatedTrial(steps=6, eval_interval=2, selection_metric="val_pixel_auroc", heatmaps=3, step_seconds=0.0)
    first = tmp_path / "a"
    write_checkpoint(first, sim, {"step": 2, "best": 0.7, "score": 0.7}, True, None)
    second = tmp_path / "b"
    write_checkpoint(second, sim, {"step": 4, "best": 0.7, "score": 0.6}, False, first)
    for folder in (first, second):
        assert {p.name for p in folder.iterdir()} == {"model.pt", "best_model.pt", "train_state.pt", STATE_FILE,
                                                       "heatmaps"}
        assert sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) < 20_000
    assert (second / "best_model.pt").read_bytes() == (first / "best_model.pt").read_bytes()  # not a new best
    assert json.loads((second / STATE_FILE).read_text())["step"] == 4
    images = sorted((second / "heatmaps").iterdir())
    assert len(images) == 3
    decoded = cv2.imdecode(np.frombuffer(images[0].read_bytes(), np.uint8), cv2.IMREAD_COLOR)
    assert decoded is not None and decoded.shape == (16, 16, 3)
    assert cv2.imdecode(np.frombuffer(png_bytes(4, 2, (1, 2, 3)), np.uint8), cv2.IMREAD_COLOR).shape == (2, 4, 3)


def test_factory_names_the_trainable_as_the_real_one(tmp_path: Path) -> None:
    spec = load_sweep_spec("smoke")
    cfg = spec.base_config()
    plan = CategoryPlan(sweep_id="s", category="bottle", base_config=cfg, space=None,  # type: ignore[arg-type]
                        storage_path=str(tmp_path), metric="best_val_pixel_auroc", step_budget=cfg.train.steps,
                        seed=0, dataset_fingerprint="f")
    fn = simulated_factory(0.1, str(tmp_path))(plan)
    assert fn.__name__ == trainable_name("bottle")
    assert make_simulated_trainable("memseg_x", SimulatedTrial(1, 1, "val_pixel_auroc", 0, 0.0)).__name__ == "memseg_x"


def test_module_loads_without_torch() -> None:
    code = "import sys, sweeps.simulated_trial; print('torch' in sys.modules, 'memseg.model' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.split() == ["False", "False"]
