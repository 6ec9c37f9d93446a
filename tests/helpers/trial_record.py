"""A stand-in for the fields of a Ray Tune ``Trial`` that the MLflow tracking callback reads.

Tests that write runs through the real callback (pipelines.tracking) against a real mlflow server
drive it with these records instead of running Tune trials, so they control the reported figures.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class TrialRecord:
    """The fields of a Tune ``Trial`` the tracking callback reads."""

    trial_id: str
    config: dict[str, Any]
    path: str
    status: str = "RUNNING"
    last_result: dict[str, Any] = field(default_factory=dict)
    num_failures: int = 0
    error_file: str | None = None

    def get_error(self) -> None:
        return None
