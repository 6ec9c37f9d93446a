"""What produced a sweep's figures: the dataset, image size, steps, backbone, validation set and trials.

The sweep stage records on each category's parent run what only the data folder and the plan know
(:func:`parent_tags`): the dataset's kind, name, the fingerprint its folder carries and its image
count per split, and the default of every swept field. The report reads those back and the winning
trial's params (the resolved config under dotted names) and states them at the top of the report and
in the console summary (:func:`header_lines`); docs/report.md describes the rules.

Which dataset (:func:`identify_dataset`), first match wins:

* ``generated``: the root's ``readme.txt`` carries the marker of ``memseg data synth``;
* ``realistic benchmark``: the root carries ``benchmark.json`` or the marker of ``memseg data realistic``;
* ``MVTec AD``: neither, and the category is one of MVTec AD's 15 official category names;
* ``custom``: anything else.

The paper's MVTec AD figures are comparable only with MVTec AD data and a pretrained backbone
(:func:`paper_exclusion`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from memseg.data import surface_photos, synthetic_mvtec
from memseg.data.categories import CATEGORIES
from memseg.data.mvtec import CategoryFiles, Sample, list_category
from memseg.data.splits import make_splits
from memseg.errors import ConfigError
from pipelines import schema
from pipelines.schema import DatasetFacts

if TYPE_CHECKING:
    from sweeps.driver import CategoryPlan

# The config fields the header states, read from the winning trial's params.
IMAGE_SIZE = "data.image_size"
STEPS = "train.steps"
BACKBONE = "model.backbone"
BACKBONE_WEIGHTS = "model.backbone_weights"
NO_WEIGHTS = "none"
# What the validation split and its synthetic anomalies depend on (see docs/model.md, "Validation and selection").
_VAL_FIELDS = ("model.memory_size", "model.memory_selection", "data.val_fraction", "data.val_min_images",
               "eval.val_seed", "data.val_anomalies_per_image")
NOT_RECORDED = "not recorded"


def param_text(value: object) -> str:
    """A config value as the trial runs log it as an MLflow param."""
    return "None" if value is None else str(value)


def identify_dataset(root: str | Path, category: str) -> DatasetFacts:
    """The kind, name, carried fingerprint and image count per split of ``root/category``.

    Raises:
        DatasetLayoutError: the category folder is not in the MVTec layout (from ``list_category``).
    """
    root = Path(root)
    files = list_category(root, category)
    images = {
        "train_good": len(files.train),
        "test_good": sum(1 for s in files.test if s.label == 0),
        "test_defect": sum(1 for s in files.test if s.label == 1),
    }
    readme = root / "readme.txt"
    notes = readme.read_text(errors="replace") if readme.is_file() else ""
    benchmark = root / surface_photos.METADATA_FILE
    if synthetic_mvtec.README_MARKER in notes:
        settings = next((line for line in notes.splitlines() if line.startswith("size=")), "")
        name = f"memseg data synth ({settings})" if settings else "memseg data synth"
        return DatasetFacts(schema.DATASET_GENERATED, name, "", images)
    if benchmark.is_file() or surface_photos.README_MARKER in notes:
        name, fingerprint = _benchmark_identity(benchmark, category)
        return DatasetFacts(schema.DATASET_REALISTIC, name, fingerprint, images)
    if category in CATEGORIES:
        return DatasetFacts(schema.DATASET_MVTEC, f"MVTec AD at {root}", "", images)
    return DatasetFacts(schema.DATASET_CUSTOM, f"folder {root}", "", images)


def _benchmark_identity(metadata: Path, category: str) -> tuple[str, str]:
    """(name and version, the category's SHA-256) from ``benchmark.json``; what is missing stays generic."""
    try:
        loaded = json.loads(metadata.read_text())
    except (OSError, json.JSONDecodeError):
        return "memseg data realistic (no readable benchmark.json)", ""
    if not isinstance(loaded, dict):
        return "memseg data realistic (benchmark.json is not an object)", ""
    name = f"{loaded.get('name', 'memseg data realistic')} v{loaded.get('version', '?')}"
    name += f" (size={loaded.get('size', '?')} seed={loaded.get('seed', '?')})"
    entry = (loaded.get("categories") or {}).get(category)
    fingerprint = entry.get("sha256", "") if isinstance(entry, dict) else ""
    return name, f"sha256:{fingerprint}" if fingerprint else ""


def swept_defaults(plan: CategoryPlan) -> dict[str, str]:
    """Every field of the category's search space with its default (the resolved base config's value)."""
    flat = plan.base_config.flatten()
    return {name: param_text(flat.get(name)) for name, _ in plan.space.entries}


def parent_tags(plan: CategoryPlan) -> dict[str, str]:
    """The tags the sweep stage sets on a category's parent run so the report can say what produced it."""
    facts = identify_dataset(plan.base_config.data.root, plan.category)
    return {**facts.tags(), schema.TAG_SWEPT_DEFAULTS: json.dumps(swept_defaults(plan), sort_keys=True)}


def validation_size(n_train_good: int, params: Mapping[str, str]) -> tuple[int, int] | None:
    """(good, synthetic anomalous) validation images of a trial with ``params`` on ``n_train_good`` images.

    The split is the library's own (:func:`memseg.data.splits.make_splits` on stand-in file names);
    None when a field it needs is not among the params or the counts do not fit.
    """
    if any(f not in params for f in _VAL_FIELDS):
        return None
    stand_ins = [Sample(Path(f"{i:06d}.png"), 0, "good", None) for i in range(n_train_good)]
    try:
        splits = make_splits(
            CategoryFiles(Path(), "", stand_ins, []), int(params["model.memory_size"]),
            params["model.memory_selection"], float(params["data.val_fraction"]),
            int(params["data.val_min_images"]), int(params["eval.val_seed"]),
        )
    except (ConfigError, ValueError):
        return None
    good = len(splits.val)
    return good, good * int(params["data.val_anomalies_per_image"])


@dataclass(frozen=True)
class CategoryFacts:
    """What produced one category's figures ("" or None where it was not recorded)."""

    category: str
    dataset: DatasetFacts | None
    fingerprint: str
    image_size: str
    steps: str
    backbone: str
    backbone_weights: str
    validation: tuple[int, int] | None
    trials: int


def category_facts(
    category: str, dataset: DatasetFacts | None, fingerprint: str, params: Mapping[str, str], trials: int
) -> CategoryFacts:
    """The facts of one category from its parent run's records and the params of its winning trial."""
    n_train = dataset.images.get("train_good") if dataset is not None else None
    return CategoryFacts(
        category=category,
        dataset=dataset,
        fingerprint=fingerprint,
        image_size=params.get(IMAGE_SIZE, ""),
        steps=params.get(STEPS, ""),
        backbone=params.get(BACKBONE, ""),
        backbone_weights=params.get(BACKBONE_WEIGHTS, ""),
        validation=validation_size(n_train, params) if n_train is not None else None,
        trials=trials,
    )


def paper_exclusion(facts: CategoryFacts) -> str:
    """Why the paper's MVTec AD figures do not compare with this category's ("" when they do)."""
    reasons = []
    if facts.dataset is None:
        reasons.append("the dataset's kind was not recorded")
    elif facts.dataset.kind != schema.DATASET_MVTEC:
        reasons.append(f"the data is {facts.dataset.kind}, not MVTec AD")
    if not facts.backbone_weights:
        reasons.append("the backbone weights were not recorded")
    elif facts.backbone_weights == NO_WEIGHTS:
        reasons.append(f"the backbone is not pretrained ({BACKBONE_WEIGHTS}={NO_WEIGHTS})")
    return ", and ".join(reasons)


def _grouped(values: Mapping[str, str]) -> str:
    """``value`` when every category has it, else ``value (cat, cat); value (cat)``."""
    by_value: dict[str, list[str]] = {}
    for category, value in values.items():
        by_value.setdefault(value or NOT_RECORDED, []).append(category)
    if len(by_value) == 1:
        return next(iter(by_value))
    return "; ".join(f"{value} ({', '.join(cats)})" for value, cats in by_value.items())


def _images(dataset: DatasetFacts | None) -> str:
    if dataset is None or not dataset.images:
        return NOT_RECORDED
    return ", ".join(f"{split.replace('_', '/')} {n}" for split, n in dataset.images.items())


def _validation(size: tuple[int, int] | None) -> str:
    if size is None:
        return NOT_RECORDED
    good, anomalous = size
    return f"{good} good + {anomalous} synthetic anomalous images ({good * anomalous} good/anomalous pairs)"


def _weights(facts: CategoryFacts) -> str:
    if not facts.backbone_weights:
        return NOT_RECORDED
    note = " = random init, not pretrained" if facts.backbone_weights == NO_WEIGHTS else ""
    return f"{facts.backbone or 'backbone'}, weights {facts.backbone_weights}{note}"


def header_lines(facts: Sequence[CategoryFacts]) -> list[str]:
    """The report's first lines: what produced the figures, one line per fact, grouped over categories."""
    def per(fn: Callable[[CategoryFacts], str]) -> str:
        return _grouped({f.category: fn(f) for f in facts})

    datasets = per(lambda f: f"{f.dataset.kind}: {f.dataset.name}" if f.dataset else NOT_RECORDED)
    carried = {f.category: f.dataset.source_fingerprint for f in facts if f.dataset and f.dataset.source_fingerprint}
    lines = [
        f"dataset: {datasets}",
        f"dataset fingerprint (file names and sizes): {per(lambda f: f.fingerprint)}",
    ]
    if carried:
        lines.append(f"fingerprint the data folder carries: {_grouped(carried)}")
    total = sum(f.trials for f in facts)
    lines += [
        f"images per split: {per(lambda f: _images(f.dataset))}",
        f"image size (px): {per(lambda f: f.image_size)}; training steps: {per(lambda f: f.steps)}",
        f"backbone: {per(_weights)}",
        f"validation set (the chosen trial's split): {per(lambda f: _validation(f.validation))}",
        f"trials: {per(lambda f: str(f.trials))} per category, {total} in all",
    ]
    return lines
