"""``memseg sweep`` argument handling and the errors it gives before any cluster work."""

from __future__ import annotations

from pathlib import Path

import pytest

from memseg.config import parse_overrides
from memseg.errors import ConfigError
from pipelines import tracking
from pipelines.cli import build_parser, main
from pipelines.sweep_stage import run_tracked_sweep
from pipelines.tracking import TrackingError
from sweeps.driver import SweepError
from sweeps.spec import load_sweep_spec
from tests.helpers.ray_cluster import free_port


def test_sweep_subcommand_flags() -> None:
    args = build_parser().parse_args(
        ["sweep", "--config", "smoke", "--categories", "bottle", "carpet", "--resume", "--sweep-id", "x",
         "--data-root", "/d", "--storage", "s3://b/p", "--set", "search.num_samples=4"]
    )
    assert (args.config, args.categories, args.resume, args.sweep_id) == ("smoke", ["bottle", "carpet"], True, "x")
    assert (args.data_root, args.storage, args.overrides) == ("/d", "s3://b/p", ["search.num_samples=4"])


def test_set_values_are_yaml_scalars() -> None:
    assert parse_overrides(["search.num_samples=4", "scheduler.kind=fifo", "budget.time_budget_s=null"]) == {
        "search.num_samples": 4, "scheduler.kind": "fifo", "budget.time_budget_s": None}
    with pytest.raises(ConfigError, match="section.field=value"):
        parse_overrides(["oops"])


def test_unknown_config_is_a_clean_cli_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sweep", "--config", "nope"]) == 1
    assert "no built-in sweep config" in capsys.readouterr().err


def test_resume_without_a_sweep_says_so(tmp_path: Path) -> None:
    spec = load_sweep_spec("smoke").with_changes({"storage.path": str(tmp_path)})
    with pytest.raises(SweepError, match="no sweep of config 'smoke'"):
        run_tracked_sweep(spec, tracking_uri=tracking.local_store_uri(tmp_path), resume=True)


def test_dead_tracking_server_fails_before_any_work(tmp_path: Path) -> None:
    uri = f"http://127.0.0.1:{free_port()}"
    spec = load_sweep_spec("smoke").with_changes(
        {"storage.path": str(tmp_path / "s"), "data.root": str(tmp_path / "data")}
    )
    with pytest.raises(TrackingError, match=uri.replace(".", r"\.")):
        run_tracked_sweep(spec, tracking_uri=uri, sweep_id="x")
    assert not (tmp_path / "data").exists()  # nothing generated, no cluster started


def test_one_tracking_uri_resolution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking.resolve_tracking_uri("http://x:5000", str(tmp_path)) == "http://x:5000"
    assert tracking.resolve_tracking_uri(None, str(tmp_path / "s")) == f"sqlite:///{tmp_path / 's' / 'mlflow.db'}"
    monkeypatch.chdir(tmp_path)
    assert tracking.resolve_tracking_uri(None, "s3://bucket/sweeps") == f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://env:5000")
    assert tracking.resolve_tracking_uri(None, str(tmp_path)) == "http://env:5000"
    assert tracking.resolve_tracking_uri("http://flag:5000", str(tmp_path)) == "http://flag:5000"
