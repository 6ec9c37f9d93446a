"""``memseg pipeline run`` end to end on the smoke config, against a real ``mlflow server`` and a real Ray.

One module-scoped scenario (CI-sized: 2 categories x 3 tiny trials) that the tests then inspect:

1. run the pipeline; after the first category is registered the tracking server is STOPPED
   (``on_step`` hook), so the run must fail with an error naming the server;
2. restart the server on the same port and database, run again: it must finish without repeating
   the finished sweeps;
3. run a third time: nothing new may appear (runs, model versions, LoggedModels, trials).

The registered champions are then loaded in a fresh interpreter and served over HTTP by
``mlflow models serve``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import mlflow
import numpy as np
import pandas as pd
import pytest

from pipelines import flow, registry, schema
from pipelines.promotion import PromotionPolicy
from pipelines.pyfunc_model import encode_png
from pipelines.tracking import TrackingError
from sweeps.spec import load_sweep_spec
from tests.helpers.mlflow_server import restart_server, start_mlflow_server
from tests.helpers.ray_cluster import free_port
from tests.helpers.scoring_server import scoring_server

pytestmark = [pytest.mark.mlflow, pytest.mark.ray, pytest.mark.slow]

# Untrained smoke models may score below chance; the floor is not what this test is about.
POLICY = PromotionPolicy(floor=0.0)


def _snapshot(uri: str, sweep_id: str, storage: Path) -> dict[str, Any]:
    client = mlflow.MlflowClient(uri)
    exp = client.get_experiment_by_name(f"memseg-sweep-{sweep_id}")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    models = registry.registered_models(client)
    return {
        "runs": sorted(r.info.run_id for r in runs),
        "versions": {m: sorted(v.version for v in client.search_model_versions(f"name = '{m}'")) for m in models},
        "logged_models": len(mlflow.search_logged_models(experiment_ids=[exp.experiment_id], output_format="list")),
        "trial_dirs": sorted(p.name for p in (storage / sweep_id).glob("*/memseg_*")),
    }


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    import ray

    from sweeps.driver import latest_sweep_id

    root = tmp_path_factory.mktemp("pipeline")
    storage = root / "sweeps"
    spec = load_sweep_spec("smoke").with_changes(
        {"data.root": str(root / "data"), "storage.path": str(storage), "search.num_samples": 2}
    )
    ray_was_up = ray.is_initialized()
    saved = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_HTTP_REQUEST_MAX_RETRIES")}
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "2"  # a dead server fails in seconds, not minutes
    held = {"server": start_mlflow_server(root / "mlflow")}
    uri = held["server"].uri
    run = dict(tracking_uri=uri, policy=POLICY, report_dir=root / "report", device="cpu")
    try:
        first = spec.categories[0]

        def stop_after_first_registration(stage: str, category: str | None) -> None:
            if stage == "register" and category == first:
                held["server"].stop()

        with pytest.raises(TrackingError) as failure:
            flow.run_pipeline(spec, on_step=stop_after_first_registration, **run)
        held["server"] = restart_server(held["server"])
        sweep_id = latest_sweep_id(str(storage), spec.name)
        state: dict[str, Any] = {"spec": spec, "root": root, "uri": uri, "sweep_id": sweep_id,
                                 "failure": str(failure.value)}
        state["before_second"] = _snapshot(uri, sweep_id, storage)
        state["second"] = flow.run_pipeline(spec, **run)
        state["after_second"] = _snapshot(uri, sweep_id, storage)
        state["third"] = flow.run_pipeline(spec, **run)
        state["after_third"] = _snapshot(uri, sweep_id, storage)
        yield state
    finally:
        held["server"].stop()
        if not ray_was_up and ray.is_initialized():
            ray.shutdown()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _champion(uri: str, category: str) -> str:
    client = mlflow.MlflowClient(uri)
    return registry.registered_models(client, category=category)[0]


def _test_image(root: Path, category: str) -> np.ndarray:
    """A defective test image, resized to 80 x 48 (not the model's 64 x 64) to check the map's size."""
    path = sorted(p for p in (root / "data" / category / "test").rglob("*.png") if p.parent.name != "good")[0]
    image = cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    return cv2.resize(image, (80, 48), interpolation=cv2.INTER_LINEAR)


def _in_process(uri: str, name: str, image: np.ndarray, params: dict[str, str] | None = None) -> tuple[float, np.ndarray]:
    mlflow.set_tracking_uri(uri)
    model = mlflow.pyfunc.load_model(f"models:/{name}@champion")
    out = model.predict(pd.DataFrame({"image": [encode_png(image)]}), params=params)
    return float(out["score"][0]), np.asarray(out["anomaly_map"][0], np.float32)


# --- the tests ----------------------------------------------------------------------------------------


def test_outage_fails_naming_the_server_and_rerun_skips_finished_sweeps(scenario: dict[str, Any]) -> None:
    assert scenario["uri"] in scenario["failure"] and "not reachable" in scenario["failure"]
    second = scenario["second"]
    categories = scenario["spec"].categories
    assert second.ok and second.sweep_id == scenario["sweep_id"]
    assert second.swept == [] and second.skipped_sweeps == categories
    before, after = scenario["before_second"], scenario["after_second"]
    assert after["runs"] == before["runs"] and after["trial_dirs"] == before["trial_dirs"]
    assert len(before["trial_dirs"]) == 2 * len(categories)
    # The first category was registered before the outage, the second after it.
    assert not second.registrations[categories[0]].created
    assert second.registrations[categories[1]].created


def test_each_category_has_one_registered_model_with_a_champion(scenario: dict[str, Any]) -> None:
    uri = scenario["uri"]
    client = mlflow.MlflowClient(uri)
    versions = scenario["after_third"]["versions"]
    assert len(versions) == len(scenario["spec"].categories)
    for category in scenario["spec"].categories:
        name = _champion(uri, category)
        assert versions[name] == ["1"]
        champion = client.get_model_version_by_alias(name, "champion")
        assert champion.version == "1"
        assert champion.tags["sweep_id"] == scenario["sweep_id"] and champion.tags["category"] == category
        assert champion.tags["gate.decision"] == "promoted"
        assert 0.0 <= float(champion.tags["test_image_auroc"]) <= 1.0


def test_running_again_duplicates_nothing(scenario: dict[str, Any]) -> None:
    assert scenario["after_third"] == scenario["after_second"]
    third = scenario["third"]
    assert third.ok and third.swept == []
    assert not any(r.created for r in third.registrations.values())
    assert all(p.decision is None for p in third.promotions.values())  # champion already: nothing to decide


def test_champion_loads_and_predicts_in_a_fresh_process(scenario: dict[str, Any], tmp_path: Path) -> None:
    uri, category = scenario["uri"], scenario["spec"].categories[0]
    name = _champion(uri, category)
    image = _test_image(scenario["root"], category)
    cv2.imwrite(str(tmp_path / "image.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    script = (
        "import base64, json, sys, mlflow, numpy as np, pandas as pd\n"
        "b64 = base64.b64encode(open('image.png', 'rb').read()).decode()\n"
        f"model = mlflow.pyfunc.load_model('models:/{name}@champion')\n"
        "out = model.predict(pd.DataFrame({'image': [b64]}))\n"
        "m = np.asarray(out['anomaly_map'][0])\n"
        "json.dump({'score': float(out['score'][0]), 'map': m.tolist()}, open('out.json', 'w'))\n"
    )
    # -I: isolated interpreter (no PYTHONPATH, no cwd on sys.path): only what is installed.
    proc = subprocess.run([sys.executable, "-I", "-c", script], cwd=tmp_path, capture_output=True, text=True,
                          env={**os.environ, "MLFLOW_TRACKING_URI": uri}, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads((tmp_path / "out.json").read_text())
    anomaly_map = np.asarray(got["map"], np.float32)
    assert anomaly_map.shape == (64, 64)  # the model's resolution, the pyfunc's default
    assert 0.0 <= got["score"] <= 1.0 and 0.0 <= anomaly_map.min() <= anomaly_map.max() <= 1.0
    score, expected = _in_process(uri, name, image)
    assert got["score"] == pytest.approx(score, abs=1e-5)
    np.testing.assert_allclose(anomaly_map, expected, atol=1e-5)


def test_scoring_server_answers_like_in_process(scenario: dict[str, Any], tmp_path: Path) -> None:
    uri, category = scenario["uri"], scenario["spec"].categories[1]
    name = _champion(uri, category)
    image = _test_image(scenario["root"], category)
    env = {"MLFLOW_TRACKING_URI": uri}
    with scoring_server(f"models:/{name}@champion", free_port(), tmp_path / "serve.log", env) as base:
        body = json.dumps({"dataframe_split": {"columns": ["image"], "data": [[encode_png(image)]]},
                           "params": {"map_size": "input"}}).encode()
        request = urllib.request.Request(f"{base}/invocations", data=body,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=120) as resp:
            answer = json.loads(resp.read())
    (row,) = answer["predictions"]
    served = np.asarray(row["anomaly_map"], np.float32)
    assert served.shape == (48, 80)
    score, expected = _in_process(uri, name, image, {"map_size": "input"})
    assert row["score"] == pytest.approx(score, abs=1e-5)
    np.testing.assert_allclose(served, expected, atol=1e-5)


def test_report_covers_every_category_and_is_logged(scenario: dict[str, Any]) -> None:
    report = scenario["third"].report
    table = pd.read_csv(report.files.csv)
    categories = scenario["spec"].categories
    assert sorted(table["category"]) == sorted([*categories, "mean"])
    rows = table.set_index("category")
    for category in categories:
        assert rows.loc[category, "trials_run"] == 2
        assert 0.0 <= rows.loc[category, "test_image_auroc"] <= 100.0
    # Generated data and a random backbone: nothing to compare with the paper's MVTec AD figures.
    assert not [c for c in table.columns if c.startswith(("paper_", "diff_"))], list(table.columns)
    markdown = report.files.markdown.read_text()
    assert "left out: the data is generated, not MVTec AD, and the backbone is not pretrained" in markdown
    assert "dataset: generated: memseg data synth (size=64" in markdown
    assert "image size (px): 64; training steps: 16" in markdown and "weights none = random init" in markdown
    assert "validation set (the chosen trial's split): " in markdown and "trials: 2 per category" in markdown
    assert report.files.html.read_text().count("data:image/png;base64,") >= len(categories)
    # The smoke spec chooses generated textures explicitly; the report says which source each category used.
    note = next(line for line in report.files.markdown.read_text().splitlines() if "texture source" in line)
    assert note.rsplit(": ", 1)[1] == f"procedural ({', '.join(c.result.category for c in report.categories)})"
    client = mlflow.MlflowClient(scenario["uri"])
    for cat in report.categories:
        logged = {a.path for a in client.list_artifacts(cat.parent_run_id, "report")}
        assert {"report/leaderboard.md", "report/leaderboard.csv", "report/leaderboard.html"} <= logged
        plots = {a.path for a in client.list_artifacts(cat.parent_run_id, "optuna")}
        assert "optuna/optimization_history.png" in plots


def test_report_has_the_sweep_gain_from_the_runs(scenario: dict[str, Any]) -> None:
    """The sweep stage tagged the defaults trial, measured it on test (a Ray task, or registration for the
    winner) and logged the training-free baseline; the report's gain matches the trial runs."""
    report = scenario["third"].report
    rows = pd.read_csv(report.files.csv).set_index("category")
    markdown = report.files.markdown.read_text()
    assert "## Sweep gain" in markdown
    client = mlflow.MlflowClient(scenario["uri"])
    for cat in report.categories:
        parent = client.get_run(cat.parent_run_id)
        tags, metrics = parent.data.tags, parent.data.metrics
        runs = {r.data.tags[schema.TAG_TRIAL]: r.data.metrics for r in client.search_runs(
            [parent.info.experiment_id], f"tags.`{schema.TAG_PARENT}` = '{parent.info.run_id}'")}
        defaults, chosen = runs[tags[schema.TAG_DEFAULTS_TRIAL]], runs[tags[schema.TAG_BEST_TRIAL]]
        gain = chosen["test_pixel_auroc"] - defaults["test_pixel_auroc"]
        row = rows.loc[cat.result.category]
        assert row["defaults_test"] == pytest.approx(100 * defaults["test_pixel_auroc"])
        assert row["gain_test"] == pytest.approx(100 * gain)
        assert row["baseline_test"] == pytest.approx(100 * metrics[f"{schema.BASELINE_PREFIX}test_pixel_auroc"])
        assert metrics[f"{schema.GAIN_PREFIX}test_pixel_auroc"] == pytest.approx(gain)
        assert metrics[schema.BASELINE_WALL_TIME] > 0


def test_cli_pipeline_promote_report(scenario: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from pipelines.cli import main

    uri, root = scenario["uri"], scenario["root"]
    rc = main(["pipeline", "run", "--config", "smoke", "--data-root", str(root / "data"),
               "--storage", str(root / "sweeps"), "--set", "search.num_samples=2", "--tracking-uri", uri,
               "--report-dir", str(tmp_path / "pipeline-report"), "--device", "cpu", "--floor", "0"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert f"sweep {scenario['sweep_id']} (continuing)" in out and "finished already, skipped" in out
    assert "report: " in out and "MLflow UI: " in out
    (link,) = [line for line in out.splitlines() if line.startswith("MLflow UI: ")]
    assert link.endswith("/runs?workflowType=machine_learning")  # the runs table, not the traces overview
    assert link.startswith(f"MLflow UI: {uri.rstrip('/')}/#/experiments/")
    assert "  dataset: generated: memseg data synth" in out and "  The paper's MVTec AD figures" in out
    assert _snapshot(uri, scenario["sweep_id"], root / "sweeps") == scenario["after_third"]

    assert main(["promote", "--all", "--tracking-uri", uri, "--device", "cpu"]) == 0
    assert capsys.readouterr().out.count("is already the champion") == len(scenario["spec"].categories)

    assert main(["report", "--sweep", scenario["sweep_id"], "--out", str(tmp_path / "r"), "--tracking-uri", uri,
                 "--no-mlflow"]) == 0
    assert (tmp_path / "r" / "leaderboard.html").is_file()
    assert "| mean |" in capsys.readouterr().out

    assert main(["report", "--sweep", "no-such-sweep", "--tracking-uri", uri]) == 1
    assert "no-such-sweep" in capsys.readouterr().err
