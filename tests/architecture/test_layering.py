"""The layers point one way: memseg <- sweeps <- pipelines; the CLI's command modules hang off the CLI only."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN = {
    "memseg": {"ray", "mlflow", "optuna", "sweeps", "pipelines"},
    "sweeps": {"mlflow", "pipelines"},
}


def _imported_roots(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_forbidden_import_statements(package: str) -> None:
    offenders = []
    for path in sorted((ROOT / package).rglob("*.py")):
        bad = _imported_roots(path) & FORBIDDEN[package]
        if bad:
            offenders.append(f"{path.relative_to(ROOT)} imports {sorted(bad)}")
    assert not offenders, "\n".join(offenders)


def test_layering_scan_catches_an_offender(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    import mlflow.pyfunc\n    from ray import tune\n")
    assert {"mlflow", "ray"} <= _imported_roots(bad)


def test_importing_memseg_loads_no_ray_or_mlflow() -> None:
    code = (
        "import sys, pkgutil, importlib, memseg\n"
        "for m in pkgutil.walk_packages(memseg.__path__, 'memseg.'):\n"
        "    importlib.import_module(m.name)\n"
        "bad = sorted(n for n in sys.modules if n.split('.')[0] in {'ray', 'mlflow', 'optuna'})\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "", f"memseg pulled in: {out.stdout.strip()}"


def _imported_modules(path: Path) -> set[str]:
    """Every absolute module an ``import``/``from ... import`` names, with ``from pkg import mod`` as ``pkg.mod``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _module_name(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts)


def test_command_modules_are_imported_only_by_the_cli() -> None:
    """``pipelines.commands.*`` parse flags and call library code; no library module and no other
    command depends on them (their shared flags live in ``pipelines.commands._common``)."""
    offenders = []
    for package in ("memseg", "sweeps", "pipelines"):
        for path in sorted((ROOT / package).rglob("*.py")):
            importer = _module_name(path)
            if importer == "pipelines.cli":
                continue
            for name in _imported_modules(path):
                parts = name.split(".")
                if parts[:2] != ["pipelines", "commands"] or len(parts) < 3:
                    continue
                if parts[2] == "_common" and importer.startswith("pipelines.commands."):
                    continue
                offenders.append(f"{importer} imports {name}")
    assert not offenders, "\n".join(offenders)


def test_command_scan_sees_a_command_import(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from pipelines.commands.sweep import handle\n    from pipelines.commands import evaluate\n")
    found = _imported_modules(bad)
    assert {"pipelines.commands.sweep", "pipelines.commands.evaluate"} <= found


def test_importing_memseg_and_sweeps_loads_no_mlflow() -> None:
    code = (
        "import sys, pkgutil, importlib, memseg, sweeps\n"
        "for pkg in (memseg, sweeps):\n"
        "    for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + '.'):\n"
        "        importlib.import_module(m.name)\n"
        "print(','.join(sorted(n for n in sys.modules if n.split('.')[0] == 'mlflow')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "", f"memseg/sweeps pulled in: {out.stdout.strip()}"
