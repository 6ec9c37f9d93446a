"""Registration, the promotion gate and the report against a real ``mlflow server`` (SQLite backend, artifact proxy).

Two checkpoints of known order: a tiny untrained MemSeg and the same network with its two output
channels swapped, whose anomaly map is exactly ``1 - map``, so its pixel AUROC is ``1 - AUROC``.
Whichever scores higher on the gate data is "better"; no training needed, nothing mocked.

The last tests drive the stages after a sweep (register -> promote -> report) on sweeps whose parent
and trial runs are written by the real tracking callback fed with Tune-like events: one selects on
AUPRO, one has enough trials for the rank correlation of validation and test, measured on the trials'
real checkpoints as Ray tasks on a real local Ray instance, and one turns that measurement off in its
spec.
"""

from __future__ import annotations

import csv
import math
import uuid
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest
import ray
import torch

from memseg.config import MemSegConfig, resolve_for_category
from memseg.data.datasets import category_splits, load_memory_images
from memseg.inference import load_checkpoint
from memseg.metrics.rank_correlation import val_test_rank_correlation
from memseg.model import create_model
from memseg.training.checkpoint import load_model_file, save_model
from pipelines import flow, promotion, registry, report, schema, sweep_stage, tracking
from pipelines.schema import PLOTS_ARTIFACT_DIR
from pipelines.sweep_plots import importances_withheld
from sweeps import driver
from sweeps.spec import SweepSpec, load_sweep_spec
from tests.helpers.mlflow_server import MlflowServer
from tests.helpers.trial_record import TrialRecord

pytestmark = [pytest.mark.mlflow]

CATEGORY = "carpet"
POLICY = promotion.PromotionPolicy(metric="pixel_auroc", guard_metrics=(), margin=0.0, floor=0.0, data="val")


def _checkpoints(
    cfg: MemSegConfig, plain: Path, flipped: Path, metrics: tuple[dict[str, float], dict[str, float]], seed: int = 0
) -> tuple[Path, Path]:
    """An untrained model at ``plain`` and its channel-swapped twin at ``flipped``, with the given val metrics."""
    torch.manual_seed(seed)
    model = create_model(cfg)
    _, splits = category_splits(cfg)
    model.build_memory(load_memory_images(splits.memory, cfg.data.image_size))
    plain.parent.mkdir(parents=True)
    save_model(plain, model, cfg, 1, metrics[0])
    payload = load_model_file(plain)
    for key in ("decoder.final.1.weight", "decoder.final.1.bias"):
        payload["state_dict"][key] = payload["state_dict"][key].flip(0)  # logits swapped: map -> 1 - map
    payload["metrics"] = metrics[1]
    flipped.parent.mkdir(parents=True)
    torch.save(payload, flipped)
    return plain, flipped


@pytest.fixture(scope="module")
def setup(mlflow_server: MlflowServer, synthetic_root: Path, tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("registry")
    cfg = resolve_for_category(
        MemSegConfig().with_overrides(
            {
                "data.root": str(synthetic_root), "data.category": CATEGORY, "data.image_size": 64,
                "data.texture_source": "procedural", "model.backbone_weights": "none", "model.memory_size": 2, "eval.batch_size": 8,
            }
        )
    )
    val = {"val_pixel_auroc": 0.5}
    a, b = _checkpoints(cfg, tmp / "a" / "best_model.pt", tmp / "b" / "best_model.pt", (val, val))
    cfg = load_checkpoint(a)[1]
    data = promotion.gate_data(cfg, cfg, POLICY)
    score_a = promotion.measure(a, data, rule=cfg.eval, device="cpu")["pixel_auroc"]
    score_b = promotion.measure(b, data, rule=cfg.eval, device="cpu")["pixel_auroc"]
    # 1 - map exactly, up to the map blur's float rounding, which can reorder pixels that tie within 1e-7.
    assert score_a == pytest.approx(1.0 - score_b, abs=1e-4)
    assert abs(score_a - 0.5) > 1e-3, "the untrained model is exactly at chance; pick another seed"
    better, worse = (a, b) if score_a > score_b else (b, a)
    exp = mlflow.MlflowClient(mlflow_server.uri).create_experiment(f"registry-{uuid.uuid4().hex[:8]}")
    dataset = f"reg{uuid.uuid4().hex[:6]}"  # a fresh registered model per test module run
    return {"better": better, "worse": worse, "experiment": exp, "dataset": dataset,
            "scores": (max(score_a, score_b), min(score_a, score_b))}


def _winner(setup: dict, trial: str, ckpt: Path) -> registry.Winner:
    return registry.Winner(
        sweep_id="s1", category=CATEGORY, trial_id=trial, checkpoint=ckpt, val_metrics={"val_pixel_auroc": 0.5},
        experiment_id=setup["experiment"], selection_metric="val_pixel_auroc", dataset=setup["dataset"],
        dataset_fingerprint="fp",
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
                "val_pixel_auroc", "test_pixel_auroc", "selection_metric"):
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


# --- a sweep that selects on AUPRO: registration, gate and report follow it ------------------------------


def test_aupro_selection_reaches_registration_gate_and_report(
    mlflow_server: MlflowServer, synthetic_root: Path, tmp_path: Path
) -> None:
    uri = mlflow_server.uri
    sweep_id = f"aupro-{uuid.uuid4().hex[:8]}"
    spec = load_sweep_spec("smoke").with_changes({
        "data.root": str(synthetic_root), "storage.path": str(tmp_path / "sweeps"),
        "base.eval.selection_metric": "val_pixel_aupro",
    })
    plan = driver.plan_sweep(spec, sweep_id, [CATEGORY])[0]
    assert plan.metric == "best_val_pixel_aupro"

    # Two finished trials whose AUPRO and AUROC disagree: ranked on AUROC, "t_auroc" would win.
    figures = {
        "t_aupro": {"val_pixel_aupro": 0.9, "val_pixel_auroc": 0.2},
        "t_auroc": {"val_pixel_aupro": 0.3, "val_pixel_auroc": 0.95},
    }
    trial_dirs = {t: Path(plan.experiment_path) / f"memseg_{CATEGORY}_{t}" for t in figures}
    _checkpoints(plan.base_config, *(trial_dirs[t] / "checkpoint_000000" / "best_model.pt" for t in figures),
                 (figures["t_aupro"], figures["t_auroc"]))
    point = plan.space.default_point()
    sweep = tracking.SweepTracking(uri, sweep_id, spec_name=spec.name, commit="abc123")
    callback = sweep.callback(plan)
    for trial_id, values in figures.items():
        trial = TrialRecord(trial_id, {**point, "optim.lr": point["optim.lr[sgd]"]}, str(trial_dirs[trial_id]))
        callback.on_trial_start(0, [], trial)
        result = {"step": plan.step_budget, **values, **{f"best_{k}": v for k, v in values.items()}}
        callback.on_trial_result(0, [], trial, result)
        trial.last_result, trial.status = result, "TERMINATED"
        callback.on_trial_complete(0, [], trial)
    # The study "crashed" before naming its best trial: registration must rank on the parent's
    # tune_metric (AUPRO), not on a default.
    sweep.finalize(plan, driver.CategoryResult(CATEGORY, plan.experiment_path))

    winner = registry.find_winner(uri, sweep_id, CATEGORY, workdir=tmp_path / "work")
    assert (winner.trial_id, winner.selection_metric) == ("t_aupro", "val_pixel_aupro")
    reg = registry.register_winner(uri, winner, device="cpu")
    client = mlflow.MlflowClient(uri)
    version = schema.RegisteredVersion.from_version(client.get_model_version(reg.name, reg.version))
    assert version.selection_metric == "val_pixel_aupro" and version.trial_id == "t_aupro"
    assert version.val_metrics["val_pixel_aupro"] == pytest.approx(0.9)
    # The description's URI is the real one (Markdown eats a <name>), with a request ready to paste.
    description = client.get_registered_model(reg.name).description
    assert f"models:/{reg.name}@champion" in description and "<name>" not in description
    assert '"dataframe_split"' in description and "/invocations" in description
    # The parent run holds the winner's test figures under best.*, not the trials' test_* keys.
    parent_metrics = client.get_run(sweep.parent_run_id(plan)).data.metrics
    assert parent_metrics["best.test_pixel_aupro"] == pytest.approx(reg.test_metrics["test_pixel_aupro"])
    assert "test_pixel_aupro" not in parent_metrics

    # No metric in the policy: the gate compares the model's selection metric.
    outcome = promotion.promote(uri, reg.name, promotion.PromotionPolicy(floor=0.0), device="cpu")
    assert outcome.decision is not None and outcome.decision.metric == "pixel_aupro"
    assert outcome.decision.challenger_value == pytest.approx(outcome.challenger_metrics["pixel_aupro"])
    tags = client.get_model_version(reg.name, reg.version).tags
    assert tags[schema.GATE_METRIC] == "pixel_aupro" and "pixel_aupro" in tags[schema.GATE_REASON]
    assert schema.RegisteredVersion.from_version(client.get_model_version(reg.name, reg.version)).gate is not None

    written = report.write_sweep_report(uri, sweep_id, tmp_path / "report")
    (category,) = written.categories
    assert category.selection_metric == "val_pixel_aupro" and category.result.best_trial == "t_aupro"
    assert "selected on val_pixel_aupro" in written.files.markdown.read_text()
    # Two trials: the importances are a sentence in MLflow too, not a picture.
    plots = {a.path for a in client.list_artifacts(category.parent_run_id, PLOTS_ARTIFACT_DIR)}
    assert "optuna/optimization_history.png" in plots and "optuna/param_importances.png" not in plots
    withheld = Path(client.download_artifacts(category.parent_run_id, "optuna/param_importances.txt",
                                              str(tmp_path))).read_text()
    assert withheld == f"parameter importances, 2 finished trials: {importances_withheld(2)}\n"
    # Two trials: no rank correlation, and the reason says why (the study ended without test_figures
    # here, so the report says it was not recorded; a finalize with them records the reason).
    assert "not recorded" in category.result.val_test_reason
    # Two trials: nothing to measure, so the measurement never reaches for a cluster.
    measure = sweep_stage.RayTestMeasurement(data_root=str(synthetic_root), cpu=1.0, gpu=0.0, tracking_uri=uri)
    sweep.finalize(plan, driver.CategoryResult(CATEGORY, plan.experiment_path), test_figures=measure)
    parent = schema.ParentRun.from_run(client.get_run(sweep.parent_run_id(plan)))
    (only,) = parent.val_test.items()  # selected on AUPRO: its test counterpart is the test AUPRO
    runs = registry.trial_runs(client, sweep.experiment_id, parent.run_id)
    computed = val_test_rank_correlation(
        [(r.metrics["best_val_pixel_aupro"], r.metrics.get("test_pixel_aupro", math.nan)) for r in runs]
    )
    # Only the registered winner was measured on test (at registration): 1 pair of the 2 trials.
    assert computed.n == 1 and math.isnan(computed.rho)
    assert only[0] == "test_pixel_aupro" and math.isnan(only[1].rho) and only[1].n == computed.n
    assert only[1].reason == "fewer than 3 trials with a validation figure: 2"
    assert schema.VAL_TEST_SPEARMAN + "test_pixel_aupro" not in client.get_run(parent.run_id).data.metrics
    again = report.write_sweep_report(uri, sweep_id, tmp_path / "report", log_to_mlflow=False)
    row = again.categories[0].result
    assert math.isnan(row.val_test_rho) and math.isnan(row.val_test_rho_aupro)
    assert row.val_test_reason == only[1].reason
    assert f"ρ undefined for {CATEGORY}: {only[1].reason}" in again.files.markdown.read_text()
    summary = flow.format_summary(flow.PipelineResult(sweep_id, uri, report=written,
                                                      promotions={CATEGORY: outcome}))
    # The closing table: one row per category, the chosen trial's validation figure in %, its model.
    assert "selected on val_pixel_aupro" in summary
    (row,) = [line for line in summary.splitlines() if line.startswith(f"  {CATEGORY} ")]
    assert row.split()[2] == "90.00" and "t_aupro" in row.split() and reg.name in row
    assert summary.count("MLflow UI:") == 1 and "/runs?workflowType=machine_learning" in summary


def test_a_parent_run_without_its_tune_metric_is_an_error_naming_it(mlflow_server: MlflowServer) -> None:
    uri = mlflow_server.uri
    sweep_id = f"untagged-{uuid.uuid4().hex[:8]}"
    client = mlflow.MlflowClient(uri)
    experiment = client.create_experiment(schema.experiment_name(sweep_id))
    run = client.create_run(experiment, tags={schema.TAG_SWEEP: sweep_id, schema.TAG_CATEGORY: CATEGORY,
                                              schema.TAG_ROLE: schema.ROLE_PARENT})
    with pytest.raises(schema.SchemaError, match=rf"parent run {run.info.run_id} has no 'tune_metric' tag"):
        registry.find_winner(uri, sweep_id, CATEGORY, workdir=Path("unused"))


@pytest.fixture
def ray_disconnected(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No Ray connection and no ``RAY_ADDRESS``: whatever connects starts a real local instance, shut down after."""
    if ray.is_initialized():
        ray.shutdown()
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    try:
        yield
    finally:
        ray.shutdown()


def _four_trial_sweep(
    uri: str, synthetic_root: Path, tmp_path: Path, **changes: object
) -> tuple[SweepSpec, driver.CategoryPlan, tracking.SweepTracking, dict[str, float]]:
    """A smoke-spec sweep of one category whose 4 trials ended, each with a real ``best_model.pt`` on storage.

    Trials t0/t1 and t2/t3 are channel-swapped twins, so their test pixel AUROCs sum to 1.
    """
    sweep_id = f"valtest-{uuid.uuid4().hex[:8]}"
    spec = load_sweep_spec("smoke").with_changes({
        "data.root": str(synthetic_root), "storage.path": str(tmp_path / "sweeps"),
        "base.eval.selection_metric": "val_pixel_auroc", **changes,
    })
    plan = driver.plan_sweep(spec, sweep_id, [CATEGORY])[0]
    assert plan.metric == "best_val_pixel_auroc"
    val = {"t0": 0.55, "t1": 0.7, "t2": 0.65, "t3": 0.9}
    dirs = {t: Path(plan.experiment_path) / f"memseg_{CATEGORY}_{t}" / "checkpoint_000000" for t in val}
    for seed, (a, b) in enumerate((("t0", "t1"), ("t2", "t3"))):
        _checkpoints(plan.base_config, dirs[a] / "best_model.pt", dirs[b] / "best_model.pt",
                     ({"val_pixel_auroc": val[a]}, {"val_pixel_auroc": val[b]}), seed=seed)
    point = plan.space.default_point()
    sweep = tracking.SweepTracking(uri, sweep_id, spec_name=spec.name, commit="abc123")
    callback = sweep.callback(plan)
    for trial_id, value in val.items():
        trial = TrialRecord(trial_id, {**point, "optim.lr": point["optim.lr[sgd]"]}, str(dirs[trial_id].parent))
        callback.on_trial_start(0, [], trial)
        result = {"step": plan.step_budget, "val_pixel_auroc": value, "best_val_pixel_auroc": value}
        callback.on_trial_result(0, [], trial, result)
        trial.last_result, trial.status = result, "TERMINATED"
        callback.on_trial_complete(0, [], trial)
    return spec, plan, sweep, val


@pytest.mark.ray
def test_val_test_rank_correlation_reaches_the_parent_run_and_the_report(
    mlflow_server: MlflowServer, synthetic_root: Path, tmp_path: Path, ray_disconnected: None
) -> None:
    """Four trials whose checkpoints differ on test, measured as Ray tasks: rho on the parent and in the
    report is the Spearman rho of the trial runs' validation figures and their measured test figures."""
    uri = mlflow_server.uri
    spec, plan, sweep, val = _four_trial_sweep(uri, synthetic_root, tmp_path)
    sweep_id = sweep.sweep_id
    results = {CATEGORY: driver.CategoryResult(CATEGORY, plan.experiment_path)}
    assert not ray.is_initialized()
    sweep_stage.close_tracked_sweep(sweep, spec, [plan], results, data_root=str(synthetic_root))
    # Not connected when the study ended: the measurement started Ray itself, as the sweep does.
    assert ray.is_initialized()

    client = mlflow.MlflowClient(uri)
    parent_id = sweep.parent_run_id(plan)
    trials = registry.trial_runs(client, sweep.experiment_id, parent_id)
    assert sorted(t.trial_id for t in trials) == sorted(val)
    expected = {
        test: val_test_rank_correlation([(t.metrics["best_val_pixel_auroc"], t.metrics[test]) for t in trials])
        for test in ("test_pixel_auroc", "test_pixel_aupro")
    }
    # The test figures are real measurements: plain and channel-swapped twins sum to 1 in pixel AUROC.
    test_auroc = {t.trial_id: t.metrics["test_pixel_auroc"] for t in trials}
    assert test_auroc["t0"] + test_auroc["t1"] == pytest.approx(1.0, abs=1e-4)
    assert test_auroc["t2"] + test_auroc["t3"] == pytest.approx(1.0, abs=1e-4)
    assert all(c.defined and c.n == 4 for c in expected.values()), expected
    parent_run = client.get_run(parent_id)
    for test, corr in expected.items():
        assert parent_run.data.metrics[f"val_test_spearman.{test}"] == pytest.approx(corr.rho)
        assert parent_run.data.metrics[f"val_test_trials.{test}"] == 4
        assert f"val_test_reason.{test}" not in parent_run.data.tags
    assert schema.ParentRun.from_run(parent_run).val_test == expected

    # A resumed sweep finalizes again: nothing is measured or logged twice.
    sweep_stage.close_tracked_sweep(sweep, spec, [plan], results, data_root=str(synthetic_root))
    assert len(client.get_metric_history(trials[0].run_id, "test_pixel_auroc")) == 1
    assert len(client.get_metric_history(parent_id, "val_test_spearman.test_pixel_auroc")) == 1

    written = report.write_sweep_report(uri, sweep_id, tmp_path / "report", log_to_mlflow=False)
    row = written.categories[0].result
    assert row.val_test_rho == pytest.approx(expected["test_pixel_auroc"].rho)
    assert row.val_test_rho_aupro == pytest.approx(expected["test_pixel_aupro"].rho)
    assert (row.val_test_trials, row.val_test_reason) == (4, "")
    with written.files.csv.open() as f:
        (line,) = list(csv.DictReader(f))
    assert float(line["val_test_rho"]) == pytest.approx(expected["test_pixel_auroc"].rho)
    assert float(line["val_test_rho_aupro"]) == pytest.approx(expected["test_pixel_aupro"].rho)
    assert int(line["val_test_trials"]) == 4
    markdown = written.files.markdown.read_text()
    assert "how well validation ranking predicts test ranking across this category's trials" in markdown
    summary = flow.format_summary(flow.PipelineResult(sweep_id, uri, report=written))
    (row,) = [line for line in summary.splitlines() if line.startswith(f"  {CATEGORY} ")]
    assert row.split()[5] == f"{expected['test_pixel_auroc'].rho:.2f}"  # the closing table's rho column
    assert f"| {expected['test_pixel_auroc'].rho:.2f} | {expected['test_pixel_aupro'].rho:.2f} | 4 |" in markdown


def test_the_switch_off_measures_no_trial_and_says_why(
    mlflow_server: MlflowServer, synthetic_root: Path, tmp_path: Path
) -> None:
    uri = mlflow_server.uri
    spec, plan, sweep, val = _four_trial_sweep(uri, synthetic_root, tmp_path,
                                               **{"budget.measure_trials_on_test": False})
    assert not spec.budget.measure_trials_on_test
    results = {CATEGORY: driver.CategoryResult(CATEGORY, plan.experiment_path)}
    sweep_stage.close_tracked_sweep(sweep, spec, [plan], results, data_root=str(synthetic_root))

    client = mlflow.MlflowClient(uri)
    parent_run = client.get_run(sweep.parent_run_id(plan))
    assert parent_run.info.status == "FINISHED"
    trials = registry.trial_runs(client, sweep.experiment_id, parent_run.info.run_id)
    assert sorted(t.trial_id for t in trials) == sorted(val)
    assert all(not k.startswith("test_") for t in trials for k in t.metrics), [t.metrics for t in trials]
    reason = "trials not measured on test (budget.measure_trials_on_test: false)"
    for test in ("test_pixel_auroc", "test_pixel_aupro"):
        assert parent_run.data.tags[f"val_test_reason.{test}"] == reason
        assert parent_run.data.metrics[f"val_test_trials.{test}"] == 0
        assert f"val_test_spearman.{test}" not in parent_run.data.metrics
    parent = schema.ParentRun.from_run(parent_run)
    assert {m: (math.isnan(c.rho), c.n, c.reason) for m, c in parent.val_test.items()} == {
        "test_pixel_auroc": (True, 0, reason), "test_pixel_aupro": (True, 0, reason)}
    row = report.write_sweep_report(uri, sweep.sweep_id, tmp_path / "report", log_to_mlflow=False).categories[0].result
    assert math.isnan(row.val_test_rho) and row.val_test_reason == reason
