"""What produced a sweep's figures: the dataset's recognition, the validation size, the paper rule, the header."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from memseg.config import MemSegConfig, resolve_for_category
from memseg.data.datasets import category_splits
from memseg.data.synthetic_mvtec import generate_dataset
from pipelines import provenance, schema
from pipelines.provenance import CategoryFacts
from pipelines.schema import DatasetFacts
from pipelines.tracking import _params_of


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("generated")
    return generate_dataset(root, size=32, categories=("carpet",), n_train=9, n_test_good=2, n_test_defect=3, seed=1)


def test_each_kind_of_dataset_is_recognised_by_the_documented_rule(generated: Path, tmp_path: Path) -> None:
    facts = provenance.identify_dataset(generated, "carpet")
    assert (facts.kind, facts.source_fingerprint) == (schema.DATASET_GENERATED, "")
    assert facts.name == "memseg data synth (size=32 seed=1 n_train=9 n_test_good=2 n_test_defect=3)"
    assert dict(facts.images) == {"train_good": 9, "test_good": 2, "test_defect": 3}

    mvtec = tmp_path / "mvtec"
    shutil.copytree(generated / "carpet", mvtec / "carpet")  # the same files without the generator's readme
    assert provenance.identify_dataset(mvtec, "carpet").kind == schema.DATASET_MVTEC
    shutil.copytree(generated / "carpet", mvtec / "widget")  # not one of MVTec AD's category names
    custom = provenance.identify_dataset(mvtec, "widget")
    assert (custom.kind, custom.name) == (schema.DATASET_CUSTOM, f"folder {mvtec}")

    (mvtec / "benchmark.json").write_text(json.dumps(
        {"name": "memseg-surface-photos", "version": 1, "size": 32, "seed": 1,
         "categories": {"carpet": {"sha256": "ab12"}}}))
    bench = provenance.identify_dataset(mvtec, "carpet")
    assert (bench.kind, bench.source_fingerprint) == (schema.DATASET_REALISTIC, "sha256:ab12")
    assert bench.name == "memseg-surface-photos v1 (size=32 seed=1)"
    assert DatasetFacts.from_tags(bench.tags(), "run r") == bench


def test_an_unknown_dataset_kind_on_a_run_is_an_error_naming_it() -> None:
    with pytest.raises(schema.SchemaError, match="run r: dataset.kind='imagenet' is not one of"):
        DatasetFacts.from_tags({schema.TAG_DATASET_KIND: "imagenet"}, "run r")
    assert DatasetFacts.from_tags({}, "run r") is None


@pytest.mark.parametrize(("memory_size", "val_fraction"), [(2, 0.1), (3, 0.5), (1, 0.3)])
def test_the_validation_size_is_the_trainers_split_of_the_same_config(
    generated: Path, memory_size: int, val_fraction: float
) -> None:
    cfg = resolve_for_category(MemSegConfig().with_overrides({
        "data.root": str(generated), "data.category": "carpet", "model.memory_size": memory_size,
        "data.val_fraction": val_fraction, "data.val_min_images": 2, "data.val_anomalies_per_image": 3,
    }), "carpet")
    _, splits = category_splits(cfg)
    assert provenance.validation_size(9, _params_of(cfg)) == (len(splits.val), 3 * len(splits.val))
    assert provenance.validation_size(9, {}) is None


def _facts(kind: str | None, weights: str, category: str = "carpet") -> CategoryFacts:
    dataset = DatasetFacts(kind, "x", "", {"train_good": 9}) if kind else None
    return CategoryFacts(category, dataset, "fp", "64", "16", "resnet18", weights, (2, 2), 2)


def test_the_paper_compares_only_with_mvtec_ad_and_a_pretrained_backbone() -> None:
    assert provenance.paper_exclusion(_facts(schema.DATASET_MVTEC, "imagenet")) == ""
    assert provenance.paper_exclusion(_facts(schema.DATASET_MVTEC, "/w/resnet.pth")) == ""
    assert provenance.paper_exclusion(_facts(schema.DATASET_MVTEC, "none")) == (
        "the backbone is not pretrained (model.backbone_weights=none)")
    assert provenance.paper_exclusion(_facts(schema.DATASET_GENERATED, "imagenet")) == (
        "the data is generated, not MVTec AD")
    assert provenance.paper_exclusion(_facts(None, "")) == (
        "the dataset's kind was not recorded, and the backbone weights were not recorded")


def test_the_header_groups_values_that_differ_between_categories() -> None:
    lines = provenance.header_lines([_facts(schema.DATASET_GENERATED, "none"),
                                     _facts(schema.DATASET_GENERATED, "none", "bottle")])
    assert lines[0] == "dataset: generated: x"
    assert "validation set (the chosen trial's split): 2 good + 2 synthetic anomalous images (4 good/anomalous pairs)" in lines
    assert "trials: 2 per category, 4 in all" in lines
    mixed = provenance.header_lines([_facts(schema.DATASET_MVTEC, "imagenet"), _facts(None, "", "bottle")])
    assert mixed[0] == "dataset: MVTec AD: x (carpet); not recorded (bottle)"
