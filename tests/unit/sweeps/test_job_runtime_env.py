"""connect_ray must not re-send variables that the enclosing Ray job's runtime_env already sets."""

from __future__ import annotations

import json

import pytest

from sweeps.driver import _job_runtime_env_vars


def test_outside_a_job_nothing_is_inherited(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAY_JOB_CONFIG_JSON_ENV_VAR", raising=False)
    assert _job_runtime_env_vars() == {}


def test_job_env_vars_are_read_from_the_job_config(monkeypatch: pytest.MonkeyPatch) -> None:
    config = {"runtime_env": {"env_vars": {"MLFLOW_TRACKING_URI": "http://mlflow:5000"}}, "metadata": {}}
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", json.dumps(config))
    assert _job_runtime_env_vars() == {"MLFLOW_TRACKING_URI": "http://mlflow:5000"}


def test_unparsable_job_config_is_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", "not json")
    assert _job_runtime_env_vars() == {}
