"""``memseg train`` end to end on a tiny run, and its errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipelines.cli import main


@pytest.mark.usefixtures("torch_threads")
def test_train_command_trains_and_says_where_the_results_are(
    synthetic_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    sets = [
        f"data.root={synthetic_root}", "data.category=bottle", "data.image_size=64", "data.val_anomalies_per_image=1",
        "data.texture_source=procedural", "model.backbone_weights=none", "model.memory_size=2", "train.batch_size=4", "train.steps=2",
        "train.eval_interval=2", "eval.heatmap_samples=1",
    ]
    argv = ["train", "--output-dir", str(out), "--no-progress"]
    for item in sets:
        argv += ["--set", item]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "step 2 | train_loss" in printed  # the console callback's line
    assert f"best checkpoint: {out / 'best_model.pt'}" in printed
    assert f"metrics:         {out / 'metrics.json'}" in printed
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["category"] == "bottle" and summary["steps"] == 2
    assert "test_image_auroc" in summary and "val_pixel_auroc" in summary

    # Resume a finished run: nothing left to train, the final test still runs.
    assert main([*argv, "--resume", str(out / "checkpoints" / "latest")]) == 0


def test_train_command_names_a_bad_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--set", "optim.learning_rate=0.1", "--output-dir", str(tmp_path)]) == 1
    assert "optim.learning_rate: unknown key" in capsys.readouterr().err


def test_train_command_without_dtd_names_dtd_root(
    synthetic_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sets = [f"data.root={synthetic_root}", "data.category=bottle", "data.image_size=64", "model.backbone_weights=none"]
    argv = ["train", "--output-dir", str(tmp_path), "--no-progress"]
    for item in sets:
        argv += ["--set", item]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "data.dtd_root: not set" in err and "data.texture_source=procedural" in err


def test_train_help_lists_the_useful_keys(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    for key in ("data.root", "data.category", "train.steps", "optim.lr", "model.backbone_weights", "--resume"):
        assert key in text
