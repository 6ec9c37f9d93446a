"""A sweep whose category failed: the pipeline finds it and says how to retry or start anew."""

from __future__ import annotations

from pathlib import Path

from pipelines import flow, tracking
from pipelines.sweep_stage import retry_hint
from sweeps import driver
from sweeps.spec import load_sweep_spec


def test_failed_parent_is_found_and_the_hint_names_both_ways(synthetic_root: Path, tmp_path: Path) -> None:
    spec = load_sweep_spec("smoke").with_changes({"data.root": str(synthetic_root), "storage.path": str(tmp_path)})
    plans = driver.plan_sweep(spec, "s-1", ["bottle", "carpet"])
    uri = tracking.local_store_uri(tmp_path)
    sweep = tracking.SweepTracking(uri, "s-1", spec_name="smoke", commit="abc")
    best = driver.TrialSummary("t1", "finished", 16, 0.8, {}, None)
    sweep.finalize(plans[0], driver.CategoryResult("bottle", plans[0].experiment_path, best=best))
    failed = driver.CategoryResult("carpet", plans[1].experiment_path,
                                   error="no trial scored; trial t2 failed: RuntimeError: boom")
    sweep.finalize(plans[1], failed)

    assert flow.category_states(uri, "s-1", ["bottle", "carpet"]) == (["bottle"], ["carpet"])
    hint = retry_hint("smoke", "s-1", ["carpet"], command="pipeline")
    assert "memseg pipeline run --config smoke --sweep-id s-1 --retry-failed" in hint
    assert "memseg pipeline run --config smoke --new" in hint
    assert "memseg sweep --config smoke --resume --sweep-id s-1 --retry-failed" in retry_hint(
        "smoke", "s-1", ["carpet"], command="sweep")
