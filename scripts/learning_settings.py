"""The learning test's training settings, for the scripts that measure at the learning-test budget.

One definition: ``LEARNING`` in tests/integration/test_learning.py. The scripts read it from there
(scripts/ is not a package; ``python scripts/<name>.py`` puts this folder on ``sys.path``).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def learning_settings() -> dict[str, object]:
    """The learning test's ``LEARNING`` overrides (dotted config keys)."""
    path = ROOT / "tests" / "integration" / "test_learning.py"
    spec = importlib.util.spec_from_file_location("memseg_learning_test", path)
    if spec is None or spec.loader is None:
        msg = f"{path}: cannot load the learning test's settings"
        raise SystemExit(msg)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return dict(module.LEARNING)
