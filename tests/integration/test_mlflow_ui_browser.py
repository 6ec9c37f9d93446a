"""The link the pipeline prints opens the sweep's runs table in a real browser, not MLflow 3's GenAI
traces overview: headless Chromium renders the MLflow UI of a real ``mlflow server`` and the test reads
the page it ends on.

Needs a Chromium binary (``scripts/browser_tools.sh``, run by the test command, installs Debian's
``chromium``; or ``$MEMSEG_BROWSER``); skipped, with that said, where there is none.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from pathlib import Path

import mlflow
import pytest

from pipelines import tracking
from tests.helpers.mlflow_server import MlflowServer

pytestmark = [pytest.mark.mlflow]

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
RUN_NAMES = ("bottle", "grid trial 1 (pruned)")
# The runs table's column header and footer; the traces overview has neither.
RUNS_TABLE = ("Run Name", "matching runs")
# The GenAI overview an experiment link without the runs route opens on.
TRACES_OVERVIEW = ("Detect Issues", "No data available")


def _browser() -> str:
    chosen = os.environ.get("MEMSEG_BROWSER") or next((b for b in BROWSERS if shutil.which(b)), None)
    if chosen is None:
        pytest.skip(f"no headless browser ({', '.join(BROWSERS)}, or $MEMSEG_BROWSER); Debian: apt-get install chromium")
    return chosen


def _rendered(browser: str, url: str, profile: Path) -> str:
    """The page's DOM once the UI has loaded: a fresh profile, so no remembered view decides the page;
    virtual time runs only while no request is pending, so the UI's API calls have returned."""
    out = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         f"--user-data-dir={profile}", "--virtual-time-budget=60000", "--dump-dom", url],
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert out.returncode == 0 and out.stdout, f"{browser} failed on {url}: {out.stderr[-2000:]}"
    return out.stdout


def test_the_printed_link_opens_the_runs_table(mlflow_server: MlflowServer, tmp_path: Path) -> None:
    browser = _browser()
    sweep = tracking.SweepTracking(mlflow_server.uri, f"ui-{uuid.uuid4().hex[:8]}", spec_name="demo", commit="abc123")
    client = mlflow.MlflowClient(mlflow_server.uri)
    for name in RUN_NAMES:
        run = client.create_run(sweep.experiment_id, run_name=name)
        client.log_metric(run.info.run_id, "best_val_pixel_auroc", 0.8)
        client.set_terminated(run.info.run_id)
    link = tracking.ui_hint(mlflow_server.uri, sweep.experiment_id)

    page = _rendered(browser, link, tmp_path / "profile-link")
    for text in (*RUNS_TABLE, *RUN_NAMES):
        assert text in page, f"{link}: {text!r} not on the page"
    assert not [t for t in TRACES_OVERVIEW if t in page], f"{link} opened the traces overview"

    # The same experiment without the runs route is what the check tells apart: MLflow's GenAI overview.
    bare = f"{mlflow_server.uri}/#/experiments/{sweep.experiment_id}"
    page = _rendered(browser, bare, tmp_path / "profile-bare")
    assert all(t in page for t in TRACES_OVERVIEW) and not any(n in page for n in RUN_NAMES), bare
