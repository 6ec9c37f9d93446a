"""The sweep-scale bench's arithmetic: sizes, timelines, crash counts, MLflow completeness, projection."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from memseg.errors import ConfigError
from pipelines.bench_sweep_scale import (
    DriverRun,
    Invocation,
    ScaleSettings,
    ScaleSize,
    TrialRun,
    TuneTrial,
    crash_figures,
    driver_figures,
    parse_size,
    projection,
    read_invocations,
    request_figures,
    scale_spec,
    timeline_figures,
    tracking_check,
)


def test_parse_size() -> None:
    assert parse_size("2x16x8") == ScaleSize(2, 16, 8)
    for bad in ("2x16", "ax1x1", "0x1x1", "16x8x8"):
        with pytest.raises(ConfigError, match="--sizes"):
            parse_size(bad)


@pytest.mark.parametrize(
    ("changes", "flag"),
    [({"steps": 0}, "--steps"), ({"eval_interval": 20}, "--eval-interval"), ({"step_seconds": 0.0}, "--step-seconds"),
     ({"heatmaps": -1}, "--heatmaps")],
)
def test_bad_settings_name_the_flag(changes: dict[str, float], flag: str) -> None:
    with pytest.raises(ConfigError, match=flag):
        ScaleSettings(sizes=(), **changes)  # type: ignore[arg-type]


def test_spec_is_paper_shrunk(tmp_path: Path) -> None:
    spec = scale_spec(ScaleSize(3, 16, 5), ScaleSettings(sizes=(), steps=12, eval_interval=2), tmp_path)
    assert spec.categories == ["carpet", "grid", "leather"]
    assert spec.search.num_samples == 5 and spec.search.max_concurrent == 8
    assert spec.scheduler.kind == "asha"
    assert (spec.resources.cpu, spec.resources.gpu) == (1, 1)
    assert spec.budget.measure_trials_on_test is False
    assert spec.storage.prune_finished is True
    assert spec.base_config().train.steps == 12
    assert spec.cluster.reuse_actors is False  # the paper spec's
    on = scale_spec(ScaleSize(3, 16, 5), ScaleSettings(sizes=(), reuse_actors=True), tmp_path)
    assert on.cluster.reuse_actors is True


def _write(folder: Path, trial: str, events: list[dict[str, object]]) -> None:
    folder.mkdir(exist_ok=True)
    (folder / f"{trial}.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events) + '{"event": "rep')


def test_timeline_busy_utilisation_and_tails(tmp_path: Path) -> None:
    _write(tmp_path, "a", [{"event": "start", "t": 10.0, "step": 0}, {"event": "report", "t": 14.0, "step": 2},
                           {"event": "persisted", "t": 14.5, "step": 2}, {"event": "end", "t": 14.0, "step": 2}])
    _write(tmp_path, "b", [{"event": "start", "t": 12.0, "step": 0}, {"event": "report", "t": 20.0, "step": 2}])
    runs = read_invocations(tmp_path)  # the cut last line is skipped
    assert [(r.ended, r.persisted_step) for r in runs["a"]] == [(True, 2)]
    fig = timeline_figures(runs, started=0.0, slots=2, trials=2, full_trial_s=8.0)
    assert fig["busy_slot_s"] == 12.0
    assert fig["wall_s"] == 20.0
    assert fig["slot_utilisation"] == pytest.approx(12.0 / 40.0)
    assert fig["time_to_first_trial_s"] == 10.0
    assert fig["idle_tail_s"] == 8.0
    assert fig["ideal_s"] == 6.0
    assert fig["idle_slot_s_per_trial"] == 14.0
    assert fig["step_budget_share"] == pytest.approx(12.0 / 16.0)


def test_driver_figures_stop_at_the_last_trial() -> None:
    run = DriverRun(started=0.0, ended=30.0, cpu_total_s=9.0, peak_rss_total_mb=900.0,
                    samples=[(1.0, 1.0, 100.0), (10.0, 4.0, 300.0), (25.0, 8.0, 800.0)])
    fig = driver_figures(run, until=20.0, trials=50)
    assert fig["driver_cpu_s"] == 4.0
    assert fig["driver_cpu_s_per_100_trials"] == 8.0
    assert fig["driver_peak_rss_mb"] == 300.0
    assert fig["driver_cpu_s_total"] == 9.0


def _tune(trial: str, status: str = "TERMINATED", steps: tuple[int, ...] = (2, 4)) -> TuneTrial:
    return TuneTrial("carpet", trial, status, "finished", steps)


def test_tracking_check_counts_missing_unfinished_and_duplicates() -> None:
    tune = [_tune("a"), _tune("b"), _tune("c"), _tune("d")]
    mlflow = {
        ("carpet", "a"): [TrialRun("r1", "FINISHED", (2, 4))],
        ("carpet", "b"): [TrialRun("r2", "RUNNING", (2, 4, 4))],
        ("carpet", "c"): [TrialRun("r3", "FINISHED", (2,)), TrialRun("r4", "FINISHED", (2, 4))],
    }
    assert tracking_check(tune, mlflow) == {
        "mlflow_missing_runs": 1, "mlflow_unfinished_runs": 1, "mlflow_trials_missing_points": 1,
        "mlflow_duplicated_runs": 1, "mlflow_repeated_points": 1,
    }


def test_crash_figures() -> None:
    tune = [_tune("a"), _tune("b"), _tune("c", status="RUNNING")]
    mlflow = {(t.category, t.trial_id): [TrialRun(t.trial_id, "FINISHED", (2, 4))] for t in tune}
    invocations = {
        # resumed from its checkpoint at step 2 after the kill: neither lost nor rerun
        "a": [Invocation("a", 1.0, 0, 5.0, 2, persisted_step=2), Invocation("a", 20.0, 2, 30.0, 4, ended=True)],
        # restarted from 0 although its checkpoint of step 4 was stored: rerun
        "b": [Invocation("b", 1.0, 0, 5.0, 4, persisted_step=4), Invocation("b", 20.0, 0, 30.0, 4, ended=True)],
        # its first report was cut by the kill (nothing stored): starting from 0 again is no rerun
        "d": [Invocation("d", 1.0, 0, 5.0, 2), Invocation("d", 20.0, 0, 30.0, 4, ended=True)],
        # ended before, replayed from its pruned checkpoint: not rerun
        "c": [Invocation("c", 1.0, 0, 5.0, 4, ended=True), Invocation("c", 20.0, -1, 20.0, -1, True, True)],
    }
    fig = crash_figures(tune, mlflow, invocations, killed_at=10.0, trials_per_category=3, categories=1)
    assert fig["trials_lost"] == 1  # c never ended in Tune's records
    assert fig["trials_rerun"] == 1
    assert fig["trials_duplicated"] == 0
    assert fig["trials_resumed_after_kill"] == 3
    assert fig["steps_redone"] == 4
    more = [*tune, _tune("d"), _tune("e")]
    mlflow |= {(t.category, t.trial_id): [TrialRun(t.trial_id, "FINISHED", (2, 4))] for t in more}
    assert crash_figures(more, mlflow, {}, 10.0, 3, 1)["trials_duplicated"] == 2


def test_request_figures() -> None:
    records = [("POST", "/api/2.0/mlflow/runs/log-batch", 200, s / 1000) for s in range(1, 101)]
    records.append(("GET", "/api/2.0/mlflow/runs/get", 500, 0.5))
    fig = request_figures(records, trials=10)
    assert fig["mlflow_requests"] == 101
    assert fig["mlflow_requests_per_trial"] == pytest.approx(10.1)
    assert fig["mlflow_p50_ms"] == pytest.approx(51.0)
    assert fig["mlflow_p95_ms"] == pytest.approx(96.0)
    assert fig["mlflow_server_errors"] == 1


def test_projection_scales_with_gpus() -> None:
    figures = {"step_budget_share": 0.5, "idle_slot_s_per_trial": 10.0}
    proj = projection(figures, None, step_s=0.02)
    ours = proj["ours"]
    assert isinstance(ours, dict)
    busy = 0.5 * 2700 * 0.02
    assert ours["busy_s_per_trial"] == pytest.approx(busy)
    assert ours["wall_h_16_gpus"] == pytest.approx(480 * (busy + 10.0) / 16 / 3600)
    assert ours["wall_h_32_gpus"] == pytest.approx(ours["wall_h_16_gpus"] / 2)
    assert ours["gpu_hours_16_gpus"] == pytest.approx(ours["gpu_hours_32_gpus"])
    assert "baseline" not in proj
