"""Which environment variables the code reads: an AST scan of memseg/, sweeps/ and pipelines/.

It serves the check that every environment variable the code reads is provided where it runs.
Finds ``os.environ.get("X")``, ``os.getenv("X")``, ``os.environ["X"]`` (loads) and ``"X" in os.environ``,
with the name given literally, through a module-level constant, or through a loop/comprehension over
a module-level tuple of names. ``os.environ.setdefault("X", v)`` is not a read that needs providing:
the code supplies its own default.
"""

from __future__ import annotations

import ast
from pathlib import Path

from tests.infra.manifests import ROOT

PACKAGES = ("memseg", "sweeps", "pipelines")


def _is_environ(node: ast.AST) -> bool:
    return (isinstance(node, ast.Attribute) and node.attr == "environ") or (
        isinstance(node, ast.Name) and node.id == "environ"
    )


def _constants(tree: ast.Module) -> dict[str, list[str]]:
    """Module-level ``NAME = "X"`` / ``NAME = ("X", "Y")`` bindings."""
    out: dict[str, list[str]] = {}
    for node in tree.body:
        targets, value = [], None
        if isinstance(node, ast.Assign):
            targets, value = node.targets, node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            targets, value = [node.target], node.value
        for target in targets:
            if not isinstance(target, ast.Name):
                continue
            if isinstance(value, ast.Constant) and isinstance(value.value, str):
                out[target.id] = [value.value]
            elif isinstance(value, (ast.Tuple, ast.List, ast.Set)):
                items = [e.value for e in value.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)]
                if items and len(items) == len(value.elts):
                    out[target.id] = items
    return out


def env_reads_in(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    consts = _constants(tree)
    loops: dict[str, list[str]] = {}  # loop variable -> names it iterates over
    for node in ast.walk(tree):
        if (
            isinstance(node, (ast.For, ast.comprehension))
            and isinstance(node.target, ast.Name)
            and isinstance(node.iter, ast.Name)
            and node.iter.id in consts
        ):
            loops[node.target.id] = consts[node.iter.id]

    def names(expr: ast.AST) -> list[str]:
        if isinstance(expr, ast.Constant) and isinstance(expr.value, str):
            return [expr.value]
        if isinstance(expr, ast.Name):
            return consts.get(expr.id) or loops.get(expr.id, [])
        return []

    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and node.args:
            func = node.func
            if (isinstance(func, ast.Attribute) and func.attr == "get" and _is_environ(func.value)) or (isinstance(func, ast.Attribute) and func.attr == "getenv"):
                found.update(names(node.args[0]))
        elif isinstance(node, ast.Subscript) and _is_environ(node.value) and isinstance(node.ctx, ast.Load):
            found.update(names(node.slice))
        elif isinstance(node, ast.Compare) and any(_is_environ(c) for c in node.comparators):
            found.update(names(node.left))
    return found


def env_reads() -> dict[str, list[str]]:
    """``{variable: [files reading it]}`` over the three packages."""
    out: dict[str, list[str]] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            for name in env_reads_in(path):
                out.setdefault(name, []).append(path.relative_to(ROOT).as_posix())
    return out
