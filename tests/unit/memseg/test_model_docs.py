"""docs/model.md holds the sections that code comments point to, and every pointer names one of them."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
MODEL_DOC = ROOT / "docs" / "model.md"
SECTIONS = (
    "Encoder",
    "Memory module",
    "Spatial attention",
    "Multi-scale feature fusion",
    "Decoder",
    "Anomaly synthesis",
    "Loss",
    "Training recipe",
    "Validation and selection",
    "Evaluation and scoring",
    "Deviations from the authors' code",
)
SCANNED = ("memseg", "sweeps", "pipelines", "tests", "docs", "scripts", "infra", "README.md")
SUFFIXES = {".py", ".md", ".yaml", ".yml", ".sh", ".toml"}
# `docs/model.md, "Memory module"` or `docs/model.md "Loss"`, possibly naming several sections.
POINTER = re.compile(r'docs/model\.md,?\s*((?:"[^"\n]+"(?:\s*(?:,|and)\s*)?)+)')


def _headings() -> list[str]:
    return [line[3:].strip() for line in MODEL_DOC.read_text().splitlines() if line.startswith("## ")]


def _files() -> list[Path]:
    out: list[Path] = []
    for name in SCANNED:
        path = ROOT / name
        if path.is_file():
            out.append(path)
        elif path.is_dir():
            out += [p for p in path.rglob("*") if p.is_file() and p.suffix in SUFFIXES]
    return out


def pointers(text: str) -> list[str]:
    """Section names quoted after ``docs/model.md`` (comment line breaks joined first)."""
    joined = re.sub(r"\s*\n\s*(?:#\s*)?", " ", text)
    return [name for match in POINTER.finditer(joined) for name in re.findall(r'"([^"]+)"', match.group(1))]


def test_the_model_doc_has_exactly_the_sections_comments_point_to() -> None:
    assert tuple(_headings()) == SECTIONS


def test_pointer_parser_reads_one_or_several_sections() -> None:
    text = 'x  # see docs/model.md, "Memory module"\n# and docs/model.md, "Encoder",\n# "Decoder".\n'
    assert pointers(text) == ["Memory module", "Encoder", "Decoder"]


def test_every_pointer_into_the_model_doc_names_an_existing_section() -> None:
    headings = set(_headings())
    broken = [
        f"{path.relative_to(ROOT)}: {name!r}"
        for path in _files()
        if path != Path(__file__).resolve()
        for name in pointers(path.read_text(errors="replace"))
        if name not in headings
    ]
    assert not broken, broken
