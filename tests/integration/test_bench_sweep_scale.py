"""``memseg bench sweep-scale`` end to end at CI size: 2 categories on 8 simulated GPU slots, 4 short trials each.

The real command starts its own simulated Ray cluster and ``mlflow server``, runs bare Tune, our sweep
stage, and our sweep stage killed with SIGKILL at half-time then resumed. Behaviour, not speed: every
figure is in the JSON, and across the kill no trial is lost, rerun or duplicated, and MLflow holds
every point Tune recorded.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

RUN_FIGURES = {
    "wall_s", "ideal_s", "slot_utilisation", "time_to_first_trial_s", "idle_tail_s", "busy_slot_s",
    "driver_cpu_s", "driver_cpu_s_per_100_trials", "driver_peak_rss_mb", "storage_bytes_per_trial",
    "trials_finished", "trials_pruned",
}
OURS_FIGURES = RUN_FIGURES | {
    "mlflow_requests_per_trial", "mlflow_p50_ms", "mlflow_p95_ms", "mlflow_missing_runs", "mlflow_unfinished_runs",
    "mlflow_trials_missing_points", "mlflow_duplicated_runs",
}
CRASH_FIGURES = {"trials_lost", "trials_rerun", "trials_duplicated", "trials_resumed_after_kill", "killed_after_s",
                 "mlflow_requests_per_trial"}


def test_sweep_scale_ci_size(tmp_path: Path) -> None:
    out = tmp_path / "scale.json"
    proc = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "bench", "sweep-scale", "--sizes", "2x8x4", "--steps", "6",
         "--eval-interval", "2", "--step-seconds", "0.4", "--workdir", str(tmp_path / "work"), "--json", str(out)],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    report = json.loads(out.read_text())
    [size] = report["sizes"]
    assert size["size"] == {"categories": 2, "slots": 8, "trials": 4}
    ours, base, crash = size["ours"], size["baseline"], size["crash"]

    for name, figures, expected in (("ours", ours, OURS_FIGURES), ("baseline", base, RUN_FIGURES),
                                    ("crash", crash, CRASH_FIGURES)):
        missing = expected - figures.keys()
        assert not missing, f"{name} lacks {sorted(missing)}"
        for key in expected:
            assert isinstance(figures[key], int | float), (name, key, figures[key])
    for figures in (ours, base):
        assert figures["trials_finished"] + figures["trials_pruned"] == 8
        assert 0 < figures["slot_utilisation"] <= 1
        assert figures["wall_s"] >= figures["ideal_s"] > 0
        assert figures["driver_cpu_s"] > 0 and figures["driver_peak_rss_mb"] > 0
    assert ours["mlflow_requests_per_trial"] > 0
    assert ours["ok"] is True and ours["untracked"] == []
    for key in ("mlflow_missing_runs", "mlflow_unfinished_runs", "mlflow_trials_missing_points",
                "mlflow_duplicated_runs"):
        assert ours[key] == 0, key
        assert crash[key] == 0, key

    # The kill really happened mid-sweep, and the resume continued trials rather than starting anew.
    assert 0 < crash["killed_after_s"] < ours["wall_s"]
    assert len(crash["logs"]) == 2
    assert (crash["trials_lost"], crash["trials_rerun"], crash["trials_duplicated"]) == (0, 0, 0)
    assert crash["trials_finished"] + crash["trials_pruned"] == 8

    assert set(size["ours_over_baseline"]) >= {"slot_utilisation", "driver_cpu_s", "wall_s"}
    proj = report["projection"]
    for kind in ("ours", "baseline"):
        for gpus in (16, 32):
            assert proj[kind][f"wall_h_{gpus}_gpus"] > 0
            assert proj[kind][f"gpu_hours_{gpus}_gpus"] > 0
    assert "slot_utilisation" in proc.stdout  # the table
