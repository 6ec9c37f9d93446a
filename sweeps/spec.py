"""The typed sweep configuration: what a ``memseg sweep --config`` YAML may say.

A sweep spec names the categories, the search space file, the base training config (dotted
``MemSegConfig`` overrides shrunk for the sweep), where the data and the results live, the resources
of one trial and the budgets. Like :mod:`memseg.config` it is a frozen pydantic tree with
``extra="forbid"``: an unknown or out-of-range key raises :class:`memseg.errors.ConfigError` naming
the file and the dotted key.

The built-in specs live next to this file in ``configs/<name>.yaml``; ``--config smoke`` and
``--config sweeps/configs/smoke.yaml`` name the same file.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from memseg.config import MemSegConfig, apply_overrides, flatten_dict, parse_overrides, read_yaml_mapping
from memseg.errors import ConfigError

CONFIGS_DIR = Path(__file__).resolve().parent / "configs"

ParamValue = bool | int | float | str | None
"""A value a sweep parameter takes (what a search space samples and a trial's config holds)."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class GenerateSettings(_Strict):
    """Arguments of ``memseg.data.synthetic_mvtec.generate_dataset`` used when the data root is missing."""

    size: int = Field(64, ge=32, le=1024, description="Side of the generated images in pixels.")
    n_train: int = Field(20, ge=4, description="train/good images per category.")
    n_test_good: int = Field(4, ge=1, description="test/good images per category.")
    n_test_defect: int = Field(4, ge=1, description="Defective test images per category.")
    seed: int = Field(0, description="Seed of the generator.")


class DataSettings(_Strict):
    """Where the MVTec-layout images are."""

    root: str = Field(..., description="Dataset root; relative paths are made absolute on the driver.")
    generate: GenerateSettings | None = Field(
        None, description="When set and the root does not exist, generate a synthetic dataset there first."
    )


class SearchSettings(_Strict):
    """The Optuna study of one category (one study per category)."""

    space: str = Field("paper", description="A file in sweeps/spaces/ (without .yaml) or a path to a space YAML.")
    num_samples: int = Field(8, ge=1, description="Trials per category, the authors' defaults included.")
    max_concurrent: int = Field(
        0, ge=0, description="Running trials per category at most; 0 = as many as the cluster fits."
    )
    seed: int = Field(0, description="Base seed of the TPE sampler (each category derives its own).")
    n_startup_trials: int = Field(
        8, ge=1, description="Random trials before TPE models the results (>= the concurrency)."
    )
    defaults_first: bool = Field(True, description="Evaluate the authors' defaults first (points_to_evaluate).")
    extra_points: list[dict[str, ParamValue]] = Field(
        default_factory=list,
        description="Known configurations to evaluate next, in the space's parameter names; a parameter "
        "left out takes the authors' value.",
    )


class SchedulerSettings(_Strict):
    """Early stopping: ASHA on the selection metric by training steps."""

    kind: Literal["asha", "fifo"] = Field("asha", description="'asha' prunes; 'fifo' runs every trial to its budget.")
    grace_period_evals: int = Field(2, ge=1, description="Evaluations a trial gets before it can be pruned.")
    reduction_factor: float = Field(3.0, gt=1.0, description="ASHA keeps 1/reduction_factor of the trials per rung.")
    brackets: int = Field(1, ge=1, le=8, description="ASHA brackets.")


class ResourceSettings(_Strict):
    """Resources of one trial (Tune's with_resources)."""

    cpu: float = Field(1.0, gt=0.0, le=256.0, description="CPUs per trial; torch uses this many threads.")
    gpu: float = Field(
        0.0, ge=0.0, le=16.0, description="GPUs per trial: 0, a fraction dividing 1 (0.5, 0.25) or whole."
    )

    @field_validator("gpu")
    @classmethod
    def _gpu_packs(cls, value: float) -> float:
        # A fraction that does not divide 1 strands GPU capacity: Ray packs fractional GPUs per device,
        # so 0.3 leaves a 0.1 remainder on every GPU that no trial can use.
        if 0.0 < value < 1.0 and not math.isclose(1.0 / value, round(1.0 / value), rel_tol=1e-6):
            raise ValueError(f"a fractional GPU must divide 1 (0.5, 0.25, ...), got {value}")
        if value > 1.0 and not float(value).is_integer():
            raise ValueError(f"more than one GPU must be a whole number, got {value}")
        return value


class BudgetSettings(_Strict):
    """How much a trial and a category may spend."""

    steps_per_trial: int | None = Field(
        None, ge=1, description="Per-trial step budget (sets train.steps); None = the base config's train.steps."
    )
    time_budget_s: float | None = Field(
        None, gt=0.0, description="Wall-clock budget of each category's study in seconds (Tune's time_budget_s)."
    )
    measure_trials_on_test: bool = Field(
        True,
        description="When a category's study has ended, measure every scored trial's best checkpoint on the "
        "test split (one Ray task per trial, with a trial's resources) for the parent run's val/test rank "
        "correlation; false measures none, and the parent run says so instead of giving rho.",
    )


class FailureSettings(_Strict):
    """Fault tolerance of one trial."""

    max_failures: int = Field(1, ge=-1, description="Retries from the last checkpoint before FAILED; -1 = forever.")


class StorageSettings(_Strict):
    """Where Tune keeps experiment state and checkpoints (must be shared on a multi-node cluster)."""

    path: str = Field("runs/sweeps", description="Local/NFS path (made absolute) or a bucket URI (s3://, gs://).")
    checkpoints_to_keep: int = Field(
        1, ge=1, description="Checkpoints kept per trial (the latest); the sweep empties older ones itself, "
        "not through Tune's num_to_keep (sweeps/storage_pruning.py)."
    )
    snapshot_interval_s: float | None = Field(
        None, gt=0.0, description="Experiment-state snapshot period (TUNE_GLOBAL_CHECKPOINT_S); None = Tune's auto."
    )
    prune_finished: bool = Field(
        True,
        description="Once a trial has ended for good (finished, stopped by ASHA, failed after its last retry), "
        "delete model.pt and train_state.pt from its checkpoints on storage, keeping best_model.pt and the "
        "heat maps (sweeps/storage_pruning.py); false keeps every checkpoint whole.",
    )


class ClusterSettings(_Strict):
    """How the driver uses the cluster."""

    local_num_cpus: int | None = Field(
        None, ge=1, description="CPUs of the local Ray instance started when RAY_ADDRESS is unset; None = all."
    )
    parallel_categories: int = Field(
        0, ge=0, description="Category studies running at once; 0 = all of them (keeps the cluster busy)."
    )
    reuse_actors: bool = Field(
        False,
        description="Start a category's next trial in the worker process of one that ended (Tune's "
        "reuse_actors): no new Python, torch import or CUDA context per trial. Off by default: with one "
        "Tuner per category, a Tuner keeps its idle workers and their GPUs while it has trials to come, so "
        "the categories run in waves (docs/performance.md, \"Sweep at scale (simulated)\").",
    )
    status_interval_s: float = Field(
        15.0, gt=0.0,
        description="Seconds between two redraws of the status table on a terminal (elsewhere each change "
        "of a trial's state is one line).",
    )


class SweepSpec(_Strict):
    """A whole sweep: categories x (search space, base config, budgets, resources)."""

    name: str = Field(..., pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", description="Short name; prefixes sweep ids.")
    description: str = Field("", description="Free text shown in the MLflow experiment.")
    categories: list[str] = Field(..., min_length=1, description="Categories, each gets its own study.")
    base: dict[str, object] = Field(
        default_factory=dict, description="MemSegConfig overrides (nested sections or dotted keys) for every trial."
    )
    data: DataSettings
    search: SearchSettings = SearchSettings()
    scheduler: SchedulerSettings = SchedulerSettings()
    resources: ResourceSettings = ResourceSettings()
    budget: BudgetSettings = BudgetSettings()
    failure: FailureSettings = FailureSettings()
    storage: StorageSettings = StorageSettings()
    cluster: ClusterSettings = ClusterSettings()

    @field_validator("categories")
    @classmethod
    def _unique(cls, value: list[str]) -> list[str]:
        dupes = sorted({c for c in value if value.count(c) > 1})
        if dupes:
            raise ValueError(f"categories listed twice: {dupes}")
        return value

    @model_validator(mode="after")
    def _base_is_a_config(self) -> SweepSpec:
        self.base_config()  # raises ConfigError naming base.<key>
        return self

    def base_config(self) -> MemSegConfig:
        """The training config every trial starts from (before the category and the trial's parameters)."""
        overrides = flatten_dict(self.base)
        if self.budget.steps_per_trial is not None:
            overrides["train.steps"] = self.budget.steps_per_trial
        try:
            return MemSegConfig().with_overrides(overrides)
        except ConfigError as exc:
            raise ConfigError(f"base.{exc}") from None

    def with_changes(self, changes: Mapping[str, object] | Sequence[str]) -> SweepSpec:
        """A copy with dotted changes applied (``{"data.root": ..., "storage.path": ...}`` or
        ``["key=value", ...]``), validated again."""
        return validate_spec(apply_overrides(self.model_dump(), parse_overrides(changes)), "<overrides>")


def builtin_specs() -> list[str]:
    """Names of the specs shipped in ``sweeps/configs``."""
    return sorted(p.stem for p in CONFIGS_DIR.glob("*.yaml"))


def resolve_spec_path(name_or_path: str | Path) -> Path:
    """``smoke`` -> ``sweeps/configs/smoke.yaml``; anything with a suffix or a slash is a path."""
    text = str(name_or_path)
    if "/" not in text and not text.endswith((".yaml", ".yml")):
        path = CONFIGS_DIR / f"{text}.yaml"
        if not path.is_file():
            msg = f"{text}: no built-in sweep config of that name (built-in: {', '.join(builtin_specs())})"
            raise ConfigError(msg)
        return path
    return Path(text)


def load_sweep_spec(name_or_path: str | Path) -> SweepSpec:
    """Read and validate a sweep spec.

    Raises:
        ConfigError: naming the file and the dotted key at fault.
    """
    path = resolve_spec_path(name_or_path)
    return validate_spec(read_yaml_mapping(path, "sweep config"), str(path))


def validate_spec(tree: Mapping[str, object], source: str) -> SweepSpec:
    try:
        return SweepSpec.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(f"{source}: {describe_validation_error(exc)}") from None
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def describe_validation_error(exc: ValidationError) -> str:
    """One line per problem, each starting with the dotted key."""
    lines = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "<root>"
        if err["type"] == "extra_forbidden":
            lines.append(f"{key}: unknown key")
        elif err["type"] == "value_error" and isinstance(err.get("ctx", {}).get("error"), ConfigError):
            lines.append(str(err["ctx"]["error"]))
        else:
            lines.append(f"{key}: {err['msg']} (got {err.get('input')!r})")
    return "; ".join(lines)


def unique(items: Sequence[str]) -> list[str]:
    """Order-preserving de-duplication (for ``--categories`` given twice)."""
    return list(dict.fromkeys(items))
