"""What a trial reports to Tune at each evaluation."""

from __future__ import annotations

import math

from sweeps.tune_callback import tune_metrics


def test_numeric_metrics_and_step() -> None:
    out = tune_metrics(8, {"val_pixel_auroc": 0.8, "lr": 0.01, "best_val_pixel_auroc": 0.8, "note": "x",
                           "flag": True, "step": 8.0})
    assert out == {"val_pixel_auroc": 0.8, "lr": 0.01, "best_val_pixel_auroc": 0.8, "step": 8}
    assert isinstance(out["step"], int)


def test_nan_is_kept() -> None:
    assert math.isnan(tune_metrics(1, {"val_pixel_auroc": float("nan")})["val_pixel_auroc"])
