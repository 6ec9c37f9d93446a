"""Registration and the promotion gate against a real ``mlflow server`` (SQLite backend, artifact proxy).

Two checkpoints of known order: a tiny untrained MemSeg and the same network with its two output
channels swapped, whose anomaly map is exactly ``1 - map``, so its pixel AUROC is ``1 - AUROC``.
Whichever scores higher on the gate data is "better"; no training needed, nothing mocked.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import mlflow
import pytest
import torch

from memseg.config import MemSegConfig, resolve_for_category
from memseg.data.datasets import category_splits, load_memory_images
from memseg.inference import load_checkpoint
from memseg.model import create_model
from memseg.training.checkpoint import load_model_file, save_model
from pipelines import promotion, registry
from tests.helpers.mlflow_server import MlflowServer

pytestmark = [pytest.mark.mlflow]

CATEGORY = "carpet"
POLICY = promotion.PromotionPolicy(metric="pixel_auroc", guard_metrics=(), margin=0.0, floor=0.0, data="val")


def _checkpoints(root: Path, out: Path) -> tuple[Path, Path]:
    torch.manual_seed(0)
    cfg = resolve_for_category(
        MemSegConfig().with_overrides(
            {
                "data.root": str(root), "data.category": CATEGORY, "data.image_size": 64,
                "model.backbone_weights": "none", "model.memory_size": 2, "eval.batch_size": 8,
            }
        )
    )
    model = create_model(cfg)
    _, splits = category_splits(cfg)
    model.build_memory(load_memory_images(splits.memory, 64))
    (out / "a").mkdir()
    plain = save_model(out / "a" / "best_model.pt", model, cfg, 1, {"val_pixel_auroc": 0.5})
    payload = load_model_file(plain)
    for key in ("decoder.final.1.weight", "decoder.final.1.bias"):
        payload["state_dict"][key] = payload["state_dict"][key].flip(0)  # logits swapped: map -> 1 - map
    flipped = out / "b" / "best_model.pt"
    flipped.parent.mkdir(parents=True)
    torch.save(payload, flipped)
    return plain, flipped


@pytest.fixture(scope="module")
def setup(mlflow_server: MlflowServer, synthetic_root: Path, tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("registry")
    a, b = _checkpoints(synthetic_root, tmp)
    cfg = load_checkpoint(a)[1]
    data = promotion.gate_data(cfg, cfg, POLICY)
    score_a = promotion.measure(a, data, device="cpu")["pixel_auroc"]
    score_b = promotion.measure(b, data, device="cpu")["pixel_auroc"]
    assert score_a == pytest.approx(1.0 - score_b, abs=1e-6)
    assert abs(score_a - 0.5) > 1e-3, "the untrained model is exactly at chance; pick another seed"
    better, worse = (a, b) if score_a > score_b else (b, a)
    exp = mlflow.MlflowClient(mlflow_server.uri).create_experiment(f"registry-{uuid.uuid4().hex[:8]}")
    dataset = f"reg{uuid.uuid4().hex[:6]}"  # a fresh registered model per test module run
    return {"better": better, "worse": worse, "experiment": exp, "dataset": dataset,
            "scores": (max(score_a, score_b), min(score_a, score_b))}


def _winner(setup: dict, trial: str, ckpt: Path) -> registry.Winner:
    return registry.Winner(
        sweep_id="s1", category=CATEGORY, trial_id=trial, checkpoint=ckpt, val_metrics={"val_pixel_auroc": 0.5},
        experiment_id=setup["experiment"], dataset=setup["dataset"], dataset_fingerprint="fp",
    )


def test_register_promote_refuse(mlflow_server: MlflowServer, setup: dict) -> None:
    uri = mlflow_server.uri
    client = mlflow.MlflowClient(uri)
    name = registry.model_name(setup["dataset"], CATEGORY)
    best, worst = setup["scores"]

    # 1. The first model becomes champion (floor 0).
    r1 = registry.register_winner(uri, _winner(setup, "w1", setup["worse"]), device="cpu")
    assert r1.created and r1.version == "1"
    assert set(r1.test_metrics) >= {"test_image_auroc", "test_pixel_auroc"}
    v1 = client.get_model_version(name, "1")
    for tag in ("sweep_id", "trial_id", "git_commit", "dataset_fingerprint", "image_size", "backbone_weights",
                "val_pixel_auroc", "test_pixel_auroc"):
        assert v1.tags.get(tag), tag
    assert v1.tags["image_size"] == "64" and v1.tags["backbone_weights"] == "none"
    assert client.get_model_version_by_alias(name, "challenger").version == "1"
    out1 = promotion.promote(uri, name, POLICY, device="cpu")
    assert out1.decision is not None and out1.decision.promote and out1.champion_after == "1"
    assert client.get_model_version_by_alias(name, "champion").version == "1"

    # 2. A better challenger is promoted; both sets of figures are tags of its version.
    r2 = registry.register_winner(uri, _winner(setup, "b1", setup["better"]), device="cpu")
    assert r2.version == "2"
    out2 = promotion.promote(uri, name, POLICY, device="cpu")
    assert out2.decision.promote and out2.champion_before == "1" and out2.champion_after == "2"
    assert client.get_model_version_by_alias(name, "champion").version == "2"
    tags2 = client.get_model_version(name, "2").tags
    assert float(tags2["gate.challenger.pixel_auroc"]) == pytest.approx(best, abs=1e-5)
    assert float(tags2["gate.champion.pixel_auroc"]) == pytest.approx(worst, abs=1e-5)
    assert tags2["gate.decision"] == "promoted" and tags2["gate.data"].startswith("val:")
    assert client.get_model_version(name, "1").tags["gate.replaced_by"] == "2"

    # 3. A worse challenger is refused and the champion stays.
    r3 = registry.register_winner(uri, _winner(setup, "w2", setup["worse"]), device="cpu")
    out3 = promotion.promote(uri, name, POLICY, device="cpu")
    assert not out3.decision.promote
    assert client.get_model_version_by_alias(name, "champion").version == "2"
    assert client.get_model_version_by_alias(name, "challenger").version == r3.version
    tags3 = client.get_model_version(name, r3.version).tags
    assert tags3["gate.decision"] == "refused" and "not > margin" in tags3["gate.reason"]
    assert float(tags3["gate.challenger.pixel_auroc"]) == pytest.approx(worst, abs=1e-5)
    assert float(tags3["gate.champion.pixel_auroc"]) == pytest.approx(best, abs=1e-5)
    assert "REFUSED" in out3.summary()

    # 4. Decided once per version; registration is idempotent.
    again = promotion.promote(uri, name, POLICY, device="cpu")
    assert again.note.startswith("decided earlier") and not again.decision.promote
    assert client.get_model_version(name, r3.version).tags["gate.decided_at"] == tags3["gate.decided_at"]
    same = registry.register_winner(uri, _winner(setup, "b1", setup["better"]), device="cpu")
    assert not same.created and same.version == "2"
    versions = client.search_model_versions(f"name = '{name}'")
    assert sorted(int(v.version) for v in versions) == [1, 2, 3]
    logged = mlflow.search_logged_models(experiment_ids=[setup["experiment"]], output_format="list")
    assert len(logged) == 3
