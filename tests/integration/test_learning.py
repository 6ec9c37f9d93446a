"""The learning test: training teaches MemSeg something, on generated and on realistic data.

An untrained MemSeg already scores well on image AUROC, because comparing frozen features with the
memory bank finds many defects by itself (the training-free baseline below shows how far that goes).
So, on generated 128 px data (one texture and one object category), a seeded CPU run must show that:

(a) the training loss falls well below its starting level;
(b) the best validation pixel AUROC (held-out normal images with the fixed-seed synthetic anomalies)
    is clearly above the same model's at step 0;
(c) on the generated test split, whose defects come from other processes than the training
    synthesis, the best-on-validation checkpoint (never a test-selected one) reaches image AUROC
    >= 0.85 and pixel AUROC >= 0.80.

The same run on the realistic benchmark (:mod:`memseg.data.surface_photos`: crops of real surface
photographs, defects drawn independently of the training synthesis) must show (a) and (b) too. There
the trained model does not yet reach the training-free baseline on every figure, so the test only
reports the two side by side (same memory images, same test split) and asserts no test threshold.

The backbone is randomly initialised (``model.backbone_weights=none``: no download here), built
with ``zero_init_last=False`` by the model factory.

Reproduce the figures (printed as one JSON line per category: the best-on-validation checkpoint's
test figures beside the baseline's)::

    python -m pytest tests/integration/test_learning.py -m slow -s -q

``scripts/realistic_baseline.py`` runs the realistic comparison on more categories and seeds.
"""

from __future__ import annotations

import json
from pathlib import Path
from statistics import mean

import pytest

from memseg.baselines import evaluate_baseline
from memseg.config import MemSegConfig
from memseg.data import surface_photos, synthetic_mvtec
from memseg.metrics import keys
from memseg.training import fit

pytestmark = pytest.mark.slow

SIZE = 128
# The method's settings (SGD, cosine, 4 normal + 4 synthetic per batch, L1 + focal), shrunk to a
# CPU budget: few steps, a small memory, a random frozen backbone.
LEARNING = {
    "data.image_size": SIZE,
    "data.texture_source": "procedural",
    "data.val_min_images": 6,
    "data.val_anomalies_per_image": 2,
    "model.backbone_weights": "none",
    "model.memory_size": 10,
    "train.device": "cpu",
    "train.steps": 300,
    "train.batch_size": 8,
    "train.eval_interval": 50,
    "train.log_interval": 1,
    "train.seed": 42,
    "optim.optimizer": "sgd",
    "optim.lr": 0.04,
    "eval.heatmap_samples": 2,
}
# (a): mean loss of the last LOSS_END_STEPS steps < LOSS_RATIO x mean of the first LOSS_START_STEPS.
# Most of the early drop is the map collapsing from 0.5 everywhere to "normal" (the L1 term, within
# ~5 steps); the focal term then keeps falling slowly, which the end window sees.
LOSS_START_STEPS = 10
LOSS_END_STEPS = 20
LOSS_RATIO = 0.5
VAL_GAIN = 0.05  # (b): best validation pixel AUROC minus the step-0 one
TEST_IMAGE_AUROC_MIN = 0.85  # (c)
TEST_PIXEL_AUROC_MIN = 0.80  # (c)


GENERATED_CATEGORIES = ("carpet", "bottle")
# One realistic texture keeps the test's CI time within a few minutes more; the script above covers
# the others.
REALISTIC_CATEGORIES = ("gravel",)
CASES = [("generated", c) for c in GENERATED_CATEGORIES] + [("realistic", c) for c in REALISTIC_CATEGORIES]


@pytest.fixture(scope="module")
def learning_roots(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return {
        "generated": synthetic_mvtec.generate_dataset(
            tmp_path_factory.mktemp("learning_data"), size=SIZE, categories=GENERATED_CATEGORIES, seed=0
        ),
        "realistic": surface_photos.generate_dataset(
            tmp_path_factory.mktemp("learning_realistic"), size=SIZE, categories=REALISTIC_CATEGORIES, seed=0
        ),
    }


@pytest.mark.parametrize(("dataset", "category"), CASES)
def test_training_teaches_the_model_beyond_the_memory_comparison(
    dataset: str, category: str, learning_roots: dict[str, Path], tmp_path: Path
) -> None:
    root = learning_roots[dataset]
    cfg = MemSegConfig().with_overrides(
        {**LEARNING, "data.root": str(root), "data.category": category, "train.output_dir": str(tmp_path)}
    )
    baseline = evaluate_baseline(cfg, device="cpu")
    result = fit(cfg, eval_at_start=True, progress=False)

    step0 = result.history[0]
    assert step0[keys.STEP] == 0
    losses = [entry["loss"] for entry in result.train_log]
    loss_start, loss_end = mean(losses[:LOSS_START_STEPS]), mean(losses[-LOSS_END_STEPS:])
    figures = {
        "dataset": dataset,
        "category": category,
        "wall_time_s": round(result.wall_time_s, 1),
        "loss_start": round(loss_start, 4),
        "loss_end": round(loss_end, 4),
        "best_step": result.best_step,
        "step0": {k: round(step0[k], 4) for k in (keys.VAL_IMAGE_AUROC, keys.VAL_PIXEL_AUROC, keys.VAL_PIXEL_AUPRO)},
        "trained_val": {k: round(result.best_metrics[k], 4) for k in (keys.VAL_IMAGE_AUROC, keys.VAL_PIXEL_AUROC,
                                                                      keys.VAL_PIXEL_AUPRO)},
        "trained_test": {k: round(result.test_metrics[k], 4) for k in (keys.TEST_IMAGE_AUROC, keys.TEST_PIXEL_AUROC,
                                                                       keys.TEST_PIXEL_AUPRO)},
        "baseline": {k: round(baseline[k], 4) for k in (keys.VAL_PIXEL_AUROC, keys.TEST_IMAGE_AUROC,
                                                        keys.TEST_PIXEL_AUROC, keys.TEST_PIXEL_AUPRO)},
        "trained_minus_baseline": {k: round(result.test_metrics[k] - baseline[k], 4) for k in (
            keys.TEST_IMAGE_AUROC, keys.TEST_PIXEL_AUROC, keys.TEST_PIXEL_AUPRO)},
        "val_curve": [(int(h[keys.STEP]), round(h[keys.VAL_PIXEL_AUROC], 4)) for h in result.history],
    }
    print("LEARNING " + json.dumps(figures))

    # (a) the loss falls well below its starting level.
    assert loss_end < LOSS_RATIO * loss_start, figures
    # (b) training improves the validation pixel AUROC over the same model at step 0.
    assert result.best_metrics[keys.VAL_PIXEL_AUROC] >= step0[keys.VAL_PIXEL_AUROC] + VAL_GAIN, figures
    assert result.best_step > 0, figures
    if dataset == "realistic":
        return  # the gap to the baseline there is open work: reported above, not asserted
    # (c) the best-on-validation checkpoint generalises to the test defects (another process).
    assert result.test_metrics[keys.TEST_IMAGE_AUROC] >= TEST_IMAGE_AUROC_MIN, figures
    assert result.test_metrics[keys.TEST_PIXEL_AUROC] >= TEST_PIXEL_AUROC_MIN, figures
