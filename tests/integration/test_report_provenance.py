"""The report says what produced its figures, compares with the paper only where that is meaningful, and
lists the winner's full configuration: read back from runs the real tracking callback wrote to a real
``mlflow server`` (SQLite backend), fed with Tune-like events for two trials of one category.
"""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path

import mlflow
import pandas as pd
import pytest

from memseg.data.datasets import category_splits
from pipelines import flow, report, schema, tracking
from pipelines.leaderboard import PAPER_DOC, format_value
from pipelines.paper_results import CAVEAT, paper_figures
from pipelines.report import SweepReport
from sweeps import driver
from sweeps.search_space import load_space
from sweeps.spec import load_sweep_spec
from tests.helpers.mlflow_server import MlflowServer
from tests.helpers.trial_record import TrialRecord, default_and_tuned, finish_trials

pytestmark = [pytest.mark.mlflow]

CATEGORY = "carpet"
TUNED = {"optim.lr": 0.054, "synthesis.perlin_threshold": 0.55}


def _sweep(uri: str, data_root: Path, tmp_path: Path, weights: str) -> tuple[driver.CategoryPlan, SweepReport]:
    """Two finished trials of the smoke spec on ``data_root``: the defaults, and the winner with
    :data:`TUNED`, whose run also has test figures; then the report."""
    sweep_id = f"prov-{uuid.uuid4().hex[:8]}"
    spec = load_sweep_spec("smoke").with_changes({
        "data.root": str(data_root), "storage.path": str(tmp_path / "sweeps"),
        "base.model.backbone_weights": weights,
    })
    plan = driver.plan_sweep(spec, sweep_id, [CATEGORY])[0]
    point = plan.space.default_point()
    sweep = tracking.SweepTracking(uri, sweep_id, spec_name=spec.name, commit="abc123")
    callback = sweep.callback(plan)
    configs = default_and_tuned(point, TUNED)
    scores = {"t_default": 0.6, "t_tuned": 0.8}
    finish_trials(callback, configs, scores, plan.step_budget, tmp_path)
    client = mlflow.MlflowClient(uri)
    tuned_run = callback.run_for(TrialRecord("t_tuned", configs["t_tuned"], ""))
    client.log_metric(tuned_run, "test_image_auroc", 0.9)
    client.log_metric(tuned_run, "test_pixel_auroc", 0.95)
    best = driver.TrialSummary("t_tuned", "finished", plan.step_budget, 0.8, configs["t_tuned"], None)
    sweep.finalize(plan, driver.CategoryResult(CATEGORY, plan.experiment_path, best=best))
    return plan, report.write_sweep_report(uri, sweep_id, tmp_path / "report", log_to_mlflow=False)


def test_report_on_generated_data_states_what_produced_it_without_the_paper(
    mlflow_server: MlflowServer, synthetic_root: Path, tmp_path: Path
) -> None:
    plan, written = _sweep(mlflow_server.uri, synthetic_root, tmp_path, "none")
    (category,) = written.categories
    parent = mlflow.MlflowClient(mlflow_server.uri).get_run(category.parent_run_id)
    assert parent.data.tags[schema.TAG_DATASET_KIND] == schema.DATASET_GENERATED

    table = pd.read_csv(written.files.csv)
    assert not [c for c in table.columns if c.startswith(("paper_", "diff_"))], list(table.columns)
    markdown = written.files.markdown.read_text()
    assert "paper I-AUROC" not in markdown and "Δ" not in markdown and "UNVERIFIED" not in markdown
    assert ("The paper's MVTec AD figures and the deltas to them are left out: the data is generated, not MVTec AD, "
            "and the backbone is not pretrained (model.backbone_weights=none).") in markdown
    assert "memseg-spec" not in markdown

    cfg = plan.base_config
    _, splits = category_splits(cfg)  # the trainer's own split of the real files
    good = len(splits.val)
    anomalous = good * cfg.data.val_anomalies_per_image
    header = markdown[: markdown.index("| category |")]
    for fact in (
        "- dataset: generated: memseg data synth (size=64 seed=0 n_train=24 n_test_good=6 n_test_defect=8)",
        f"- dataset fingerprint (file names and sizes): {plan.dataset_fingerprint}",
        "- images per split: train/good 24, test/good 6, test/defect 8",
        f"- image size (px): {cfg.data.image_size}; training steps: {cfg.train.steps}",
        f"- backbone: {cfg.model.backbone}, weights none = random init, not pretrained",
        f"- validation set (the chosen trial's split): {good} good + {anomalous} synthetic anomalous images",
        "- trials: 2 per category, 2 in all",
    ):
        assert fact in header, (fact, header)

    summary = flow.format_summary(flow.PipelineResult(written.sweep_id, mlflow_server.uri, report=written))
    assert "  dataset: generated: memseg data synth" in summary
    assert f"  image size (px): {cfg.data.image_size}; training steps: {cfg.train.steps}" in summary
    assert "  The paper's MVTec AD figures and the deltas to them are left out" in summary
    assert f"optim.lr 0.054 (default {cfg.optim.lr:.4g})" in summary  # the closing "chosen vs default" line


def test_the_winners_configuration_lists_every_swept_field(
    mlflow_server: MlflowServer, synthetic_root: Path, tmp_path: Path
) -> None:
    plan, written = _sweep(mlflow_server.uri, synthetic_root, tmp_path, "none")
    fields = load_space("paper").fields()
    flat = plan.base_config.flatten()
    parent = mlflow.MlflowClient(mlflow_server.uri).get_run(written.categories[0].parent_run_id)
    recorded = json.loads(parent.data.tags[schema.TAG_SWEPT_DEFAULTS])
    assert recorded == {f: str(flat[f]) for f in fields}

    result = written.categories[0].result
    assert sorted(result.params) == sorted(fields)  # the defaults trial and the winner differ in 2; all are listed
    assert result.defaults == {f: flat[f] for f in TUNED}
    markdown = written.files.markdown.read_text()
    section = markdown[markdown.index("## Chosen configuration"):]
    assert f"### {CATEGORY}: trial t_tuned" in section
    for f in fields:
        expected = f"| {TUNED[f]:.4g} | {flat[f]:.4g} |" if f in TUNED else f"| {format_value(result.params[f])} | (same) |"
        assert f"| {f} {expected}" in section, f
    assert len([line for line in section.splitlines() if line.startswith("| ") and "field" not in line]) == len(fields)


def test_report_on_mvtec_ad_with_a_pretrained_backbone_shows_the_paper(
    mlflow_server: MlflowServer, synthetic_root: Path, tmp_path: Path
) -> None:
    # The same images without the generator's readme: a folder in the MVTec AD layout with an official name.
    mvtec = tmp_path / "mvtec"
    shutil.copytree(synthetic_root / CATEGORY, mvtec / CATEGORY)
    _, written = _sweep(mlflow_server.uri, mvtec, tmp_path, "imagenet")
    table = pd.read_csv(written.files.csv).set_index("category")
    paper = paper_figures(CATEGORY)
    assert paper is not None
    assert table.loc[CATEGORY, "paper_image_auroc"] == paper.image_auroc
    assert table.loc[CATEGORY, "diff_image_auroc"] == pytest.approx(90.0 - paper.image_auroc)
    assert table.loc[CATEGORY, "diff_pixel_auroc"] == pytest.approx(95.0 - paper.pixel_auroc)
    markdown = written.files.markdown.read_text()
    assert "| paper I-AUROC | Δ I-AUROC | paper P-AUROC | Δ P-AUROC |" in markdown
    assert CAVEAT in markdown and f"(see {PAPER_DOC})" in markdown and "UNVERIFIED" in markdown
    assert f"- dataset: MVTec AD: MVTec AD at {mvtec}" in markdown and "weights imagenet" in markdown
    assert "left out" not in markdown and "memseg-spec" not in markdown
