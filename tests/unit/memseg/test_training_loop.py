"""fit(): checkpoints, callbacks and their hooks, divergence, resume after a failure (tiny 64 px runs on the CPU)."""

from __future__ import annotations

import json
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

import numpy as np
import pytest
import torch

from memseg.config import MemSegConfig
from memseg.errors import CheckpointError, ConfigError, TrainingDivergedError
from memseg.inference import load_checkpoint, predict
from memseg.metrics import keys
from memseg.training import Callback, FitResult, TrainingCallback, fit
from memseg.training.checkpoint import (
    BEST_MODEL_FILE,
    HEATMAP_DIR,
    MODEL_FILE,
    TRAIN_STATE_FILE,
    load_model_file,
    load_train_state,
)
from memseg.training.loop import prepare_config
from memseg.training.trainer import Trainer

# 24 train/good images: 2 memory + 4 validation + 18 training = 3 batches of 6 per epoch.
TINY = {
    "data.category": "carpet",
    "data.texture_source": "procedural",
    "data.image_size": 64,
    "data.val_anomalies_per_image": 1,
    "model.backbone_weights": "none",
    "model.memory_size": 2,
    "train.batch_size": 6,
    "train.steps": 6,
    "train.eval_interval": 3,
    "train.log_interval": 1,
    "eval.heatmap_samples": 2,
    "eval.batch_size": 8,
}


def _cfg(root: Path, out: Path, **overrides: object) -> MemSegConfig:
    return MemSegConfig().with_overrides(
        {**TINY, "data.root": str(root), "train.output_dir": str(out), **overrides}
    )


class Recorder:
    """A TrainingCallback that keeps what it was given and checks the checkpoint while it is valid."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, dict[str, float], set[str]]] = []

    def on_eval(self, step: int, metrics: dict[str, float], checkpoint_dir: Path) -> None:
        files = {str(p.relative_to(checkpoint_dir)) for p in checkpoint_dir.rglob("*") if p.is_file()}
        # Documented layout, every file readable with weights_only=True.
        model = torch.load(checkpoint_dir / MODEL_FILE, map_location="cpu", weights_only=True)
        assert model["step"] == step
        assert set(model) == {"schema_version", "config", "state_dict", "step", "metrics"}
        torch.load(checkpoint_dir / BEST_MODEL_FILE, map_location="cpu", weights_only=True)
        state = torch.load(checkpoint_dir / TRAIN_STATE_FILE, map_location="cpu", weights_only=True)
        assert state["step"] == step
        self.calls.append((step, dict(metrics), files))


class StepCounter(Callback):
    """Records every step the run starts."""

    def __init__(self, steps: list[int]) -> None:
        self.steps = steps

    def on_step(self, step: int) -> None:
        self.steps.append(step)


class FailAt(Callback):
    """A test-only fault: raises at the start of step ``fail_at`` unless the run was resumed."""

    def __init__(self, fail_at: int) -> None:
        self.fail_at = fail_at
        self.begins: list[int] = []
        self.steps: list[int] = []

    def on_train_begin(self, start_step: int) -> None:
        self.begins.append(start_step)

    def on_step(self, step: int) -> None:
        self.steps.append(step)
        if step == self.fail_at and self.begins[-1] == 0:
            msg = f"injected failure at step {step}"
            raise RuntimeError(msg)


@pytest.mark.usefixtures("torch_threads")
def test_fit_checkpoints_calls_back_and_reports_val_and_test(synthetic_root: Path, tmp_path: Path) -> None:
    recorder = Recorder()
    assert isinstance(recorder, TrainingCallback)
    result = fit(_cfg(synthetic_root, tmp_path / "run"), callbacks=[recorder], progress=False, eval_at_start=True)

    assert isinstance(result, FitResult)
    assert [c[0] for c in recorder.calls] == [0, 3, 6]
    for step, metrics, files in recorder.calls:
        assert {MODEL_FILE, BEST_MODEL_FILE, TRAIN_STATE_FILE} <= files
        assert len([f for f in files if f.startswith(f"{HEATMAP_DIR}/") and f.endswith(".png")]) == 2
        for key in (keys.VAL_IMAGE_AUROC, keys.VAL_PIXEL_AUROC, keys.VAL_PIXEL_AUPRO, keys.TRAIN_LOSS, "lr"):
            assert key in metrics
        assert metrics[keys.STEP] == step
        assert f"best_{keys.VAL_PIXEL_AUROC}" in metrics
        assert 0.0 <= metrics[keys.VAL_PIXEL_AUROC] <= 1.0
    assert [h[keys.STEP] for h in result.history] == [0, 3, 6]
    best_so_far = [c[1][f"best_{keys.VAL_PIXEL_AUROC}"] for c in recorder.calls]
    assert best_so_far == sorted(best_so_far)  # the best never gets worse
    assert result.best_metrics[keys.VAL_PIXEL_AUROC] == max(h[keys.VAL_PIXEL_AUROC] for h in result.history)
    assert result.best_step in (0, 3, 6)

    # One log entry per step (log_interval=1), with the loss parts; lr follows the cosine to 0.
    assert [e[keys.STEP] for e in result.train_log] == [1, 2, 3, 4, 5, 6]
    assert {"loss", "l1", "focal", "lr"} <= set(result.train_log[0])
    assert result.train_log[-1]["lr"] == pytest.approx(0.0, abs=1e-12)

    # Test metrics of the best checkpoint, side by side with validation in metrics.json.
    assert {keys.TEST_IMAGE_AUROC, keys.TEST_PIXEL_AUROC, keys.TEST_PIXEL_AUPRO} <= set(result.test_metrics)
    summary = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert summary["best_step"] == result.best_step
    assert summary[keys.VAL_PIXEL_AUROC] == result.best_metrics[keys.VAL_PIXEL_AUROC]
    assert summary[keys.TEST_IMAGE_AUROC] == result.test_metrics[keys.TEST_IMAGE_AUROC]

    # The best model file: the documented payload, config stored resolved, weights load back.
    payload = load_model_file(result.best_checkpoint)
    assert payload["step"] == result.best_step
    assert payload["metrics"][keys.VAL_PIXEL_AUROC] == result.best_metrics[keys.VAL_PIXEL_AUROC]
    stored = MemSegConfig.model_validate(payload["config"])
    assert stored.model.memory_size == 2 and Path(stored.data.root).is_absolute()
    from memseg.inference import load_checkpoint

    model, _ = load_checkpoint(result.best_checkpoint)
    assert model.memory_size == 2


def test_training_without_dtd_images_fails_at_start_naming_dtd_root(synthetic_root: Path, tmp_path: Path) -> None:
    # A paper-like config: the default texture source (DTD) and no data.dtd_root, or one without images.
    paper_like = {k: v for k, v in TINY.items() if k != "data.texture_source"}
    for name, root in (("unset", None), ("empty", str(tmp_path / "no_dtd_here"))):
        out = tmp_path / name
        cfg = MemSegConfig().with_overrides(
            {**paper_like, "data.root": str(synthetic_root), "train.output_dir": str(out), "data.dtd_root": root}
        )
        assert cfg.data.texture_source == "dtd"
        steps: list[int] = []
        with pytest.raises(ConfigError, match=r"^data\.dtd_root: .*memseg data download dtd.*data\.texture_source=procedural"):
            fit(cfg, callbacks=[StepCounter(steps)], progress=False)
        assert steps == [] and not (out / "checkpoints").exists()


@pytest.mark.usefixtures("torch_threads")
def test_non_finite_loss_stops_training_naming_the_step(synthetic_root: Path, tmp_path: Path) -> None:
    # diff_scale=1e30 makes the unnormalised spatial attention overflow float32 at the first step.
    cfg = _cfg(synthetic_root, tmp_path / "nan", **{"model.diff_scale": 1e30, "train.log_interval": 1})
    with pytest.raises(TrainingDivergedError, match=r"at step 1 \(focal=nan, l1=nan\)"):
        fit(cfg, progress=False, evaluate_test=False)
    # Caught at the evaluation when that comes before the next log interval.
    cfg = cfg.with_overrides({"train.log_interval": 5, "train.eval_interval": 2})
    with pytest.raises(TrainingDivergedError, match="at step 1 "):
        fit(cfg, progress=False, evaluate_test=False)


@pytest.mark.usefixtures("torch_threads")
def test_a_failing_callback_stops_the_run_and_resume_matches_an_uninterrupted_run(
    synthetic_root: Path, tmp_path: Path
) -> None:
    full = fit(_cfg(synthetic_root, tmp_path / "full"), progress=False, evaluate_test=False)

    crashing = _cfg(synthetic_root, tmp_path / "crash")
    fault = FailAt(3)
    with pytest.raises(RuntimeError, match="injected failure at step 3"):
        fit(crashing, callbacks=[fault], progress=False, evaluate_test=False)
    assert fault.begins == [0] and fault.steps == [0, 1, 2, 3]  # hooks: once at the start, then every step
    latest = tmp_path / "crash" / "checkpoints" / "latest"
    assert load_train_state(latest / TRAIN_STATE_FILE)["step"] == 3  # the eval at step 3 ran first

    recorder = Recorder()  # on_eval only: a callback without the optional hooks still works
    resumed = fit(crashing, resume_from=latest, callbacks=[recorder, fault], progress=False, evaluate_test=False)
    assert fault.begins == [0, 3] and fault.steps[4:] == [3, 4, 5]  # told where the resumed run starts
    assert [c[0] for c in recorder.calls] == [6]  # continued at the saved step, no re-run of 1-3
    assert [h[keys.STEP] for h in resumed.history] == [3, 6]
    assert [e[keys.STEP] for e in resumed.train_log] == [1, 2, 3, 4, 5, 6]
    assert "train.fail_at_step" not in resumed.config.flatten()  # fault injection is no config field

    # Same weights, optimizer state and metrics as the run that never stopped.
    a = load_model_file(full.checkpoint_dir / MODEL_FILE)["state_dict"]
    b = load_model_file(resumed.checkpoint_dir / MODEL_FILE)["state_dict"]
    assert a.keys() == b.keys()
    for name in a:
        assert torch.allclose(a[name].float(), b[name].float(), atol=1e-5), name
    assert resumed.history[-1][keys.VAL_PIXEL_AUROC] == pytest.approx(full.history[-1][keys.VAL_PIXEL_AUROC])
    sa = load_train_state(full.checkpoint_dir / TRAIN_STATE_FILE)["optimizer"]["state"]
    sb = load_train_state(resumed.checkpoint_dir / TRAIN_STATE_FILE)["optimizer"]["state"]
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.allclose(sa[k]["momentum_buffer"], sb[k]["momentum_buffer"], atol=1e-5)


def test_resume_names_a_missing_or_incomplete_checkpoint(synthetic_root: Path, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(CheckpointError, match="nowhere"):
        fit(_cfg(synthetic_root, tmp_path / "x"), resume_from=missing, progress=False)
    half = tmp_path / "half"
    half.mkdir()
    (half / MODEL_FILE).write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=TRAIN_STATE_FILE):
        fit(_cfg(synthetic_root, tmp_path / "y"), resume_from=half, progress=False)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fit_on_cuda_uses_bf16_autocast_and_saves_cpu_tensors(synthetic_root: Path, tmp_path: Path) -> None:
    cfg = _cfg(synthetic_root, tmp_path / "cuda", **{"train.device": "cuda", "train.amp": True})
    result = fit(cfg, progress=False)
    assert all(torch.isfinite(torch.tensor(e["loss"])) for e in result.train_log)
    assert keys.TEST_PIXEL_AUROC in result.test_metrics
    payload = load_model_file(result.best_checkpoint)
    assert all(t.device.type == "cpu" for t in payload["state_dict"].values())


def _validation_maps_and_predicts(
    cfg: MemSegConfig, around: AbstractContextManager[object]
) -> tuple[np.ndarray, np.ndarray]:
    """The validation maps a trainer computes (inside ``around``) after 2 steps, and ``memseg
    predict``'s fp32 maps of the same images from the checkpoint written for those weights."""
    trainer = Trainer(prepare_config(cfg), progress=False)
    trainer.train()  # 2 steps, then the validation that writes the checkpoint
    with around:
        evaluation = trainer.evaluate()
    model, model_cfg = load_checkpoint(trainer.checkpoint_dir / MODEL_FILE, device=trainer.device)
    images = [(image.permute(1, 2, 0).numpy() * 255.0).round().astype(np.uint8) for image in trainer.val_set.images]
    served = np.stack([p.anomaly_map for p in predict(model, images, model_cfg, precision="fp32")])
    return evaluation.maps, served


@pytest.mark.usefixtures("torch_threads")
def test_validation_maps_equal_predicts_fp32_maps_on_cpu(synthetic_root: Path, tmp_path: Path) -> None:
    cfg = _cfg(synthetic_root, tmp_path / "run", **{"train.amp": True, "train.steps": 2, "train.eval_interval": 2})
    # train.amp never autocasts on the CPU; a bf16 autocast around the evaluation stands in for it.
    maps, served = _validation_maps_and_predicts(cfg, torch.autocast("cpu", dtype=torch.bfloat16))
    assert maps.dtype == np.float32 and maps.shape == served.shape
    np.testing.assert_allclose(maps, served, rtol=0.0, atol=1e-5)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_validation_maps_equal_predicts_fp32_maps_on_cuda_with_amp(synthetic_root: Path, tmp_path: Path) -> None:
    cfg = _cfg(
        synthetic_root, tmp_path / "cuda",
        **{"train.device": "cuda", "train.amp": True, "train.steps": 2, "train.eval_interval": 2},
    )
    maps, served = _validation_maps_and_predicts(cfg, nullcontext())
    assert maps.dtype == np.float32 and maps.shape == served.shape
    np.testing.assert_allclose(maps, served, rtol=0.0, atol=1e-5)
