"""Search spaces: versioned YAML files keyed by ``MemSegConfig`` field names, run as Optuna define-by-run.

A space file (``sweeps/spaces/<name>.yaml``) maps dotted config fields (``synthesis.perlin_threshold``)
to a parameter spec::

    version: 1
    name: paper
    params:
      synthesis.perlin_threshold: {type: float, low: 0.4, high: 0.6}
      model.memory_size: {type: categorical, choices: [10, 30, 60, 120], cap: memory_pool}
      loss.l1_weight: {type: float, low: 0.4, high: 0.8}
      loss.focal_weight: {type: complement, of: loss.l1_weight}       # 1 - l1_weight, not sampled
      optim.optimizer: {type: categorical, choices: [sgd, adamw]}
      optim.lr:                                                        # conditional on the optimiser
        type: conditional
        depends_on: optim.optimizer
        cases:
          sgd: {type: float, low: 0.01, high: 0.08, log: true}
          adamw: {type: float, low: 0.001, high: 0.01, log: true}

Parameter types: ``float``, ``int``, ``categorical``, ``const``, ``complement`` and ``conditional``.
``cap: memory_pool`` bounds a parameter by the largest memory size the category's ``train/good``
folder allows (so that validation and at least two training images remain).

:meth:`SearchSpace.for_category` binds a space to one category and its base config and returns a
:class:`CategorySpace`: the picklable define-by-run function handed to ``OptunaSearch`` (Tune pickles
the searcher into its experiment state, so it must be a plain object, not a closure) and the
authors'-defaults point for ``points_to_evaluate``. Each branch of a conditional parameter is its own
Optuna parameter (``optim.lr[sgd]``) so TPE never mixes two ranges under one name; the trial's
config also carries the plain field name, which is all :func:`overrides_from_params` keeps.
"""

from __future__ import annotations

import enum
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal, cast

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from memseg.config import MemSegConfig, field_names, read_yaml_mapping
from memseg.errors import ConfigError
from sweeps.spec import ParamValue, describe_validation_error

if TYPE_CHECKING:
    from optuna import Trial

logger = logging.getLogger(__name__)

SPACES_DIR = Path(__file__).resolve().parent / "spaces"
SPACE_FORMAT_VERSION = 1
Scalar = bool | int | float | str


class _Unset(enum.Enum):
    """No default for this branch (the defaults take another one); never leaves this module."""

    UNSET = "unset"


_UNSET = _Unset.UNSET


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FloatParam(_Strict):
    """A float drawn from ``[low, high]`` (log-uniform with ``log: true``)."""

    type: Literal["float"]
    low: float
    high: float
    log: bool = False
    step: float | None = None

    @model_validator(mode="after")
    def _check(self) -> FloatParam:
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) > high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError("log needs low > 0")
        if self.log and self.step is not None:
            raise ValueError("log and step cannot be combined")
        return self


class IntParam(_Strict):
    """An integer drawn from ``[low, high]``."""

    type: Literal["int"]
    low: int
    high: int
    log: bool = False
    step: int = 1
    cap: Literal["memory_pool"] | None = None

    @model_validator(mode="after")
    def _check(self) -> IntParam:
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) > high ({self.high})")
        if self.log and (self.low < 1 or self.step != 1):
            raise ValueError("log needs low >= 1 and step 1")
        return self


class CategoricalParam(_Strict):
    """One of ``choices``."""

    type: Literal["categorical"]
    choices: list[Scalar | None] = Field(..., min_length=1)
    cap: Literal["memory_pool"] | None = None

    @model_validator(mode="after")
    def _check(self) -> CategoricalParam:
        if self.cap is not None and not all(_is_number(c) for c in self.choices if c is not None):
            raise ValueError(f"cap: {self.cap} needs numeric choices, got {self.choices}")
        return self


class ConstParam(_Strict):
    """A fixed value (documents a deliberate choice in the space; not sampled)."""

    type: Literal["const"]
    value: Scalar | None


class ComplementParam(_Strict):
    """``total - <of>`` (e.g. focal weight = 1 - L1 weight); not sampled."""

    type: Literal["complement"]
    of: str
    total: float = 1.0


LeafParam = FloatParam | IntParam | CategoricalParam | ConstParam
Leaf = Annotated[LeafParam, Field(discriminator="type")]


class ConditionalParam(_Strict):
    """A parameter whose distribution depends on an earlier categorical parameter."""

    type: Literal["conditional"]
    depends_on: str
    cases: dict[str, Leaf] = Field(..., min_length=1)


AnyParam = LeafParam | ComplementParam | ConditionalParam
Param = Annotated[AnyParam, Field(discriminator="type")]


# Fields that define what "better on validation" means. Every trial of a study must be measured on
# the same validation set with the same metric, or the searcher and ASHA compare unlike figures.
SELECTION_FIELDS = frozenset({
    "data.val_fraction", "data.val_min_images", "data.val_anomalies_per_image", "data.val_anomaly_source",
    "eval.val_seed", "eval.selection_metric", "model.memory_selection",
})


class SpaceFile(_Strict):
    """A whole search-space file."""

    version: int = Field(..., description="Format version of the file (this code reads 1).")
    name: str
    description: str = ""
    params: dict[str, Param] = Field(..., min_length=1)

    @model_validator(mode="after")
    def _check(self) -> SpaceFile:
        if self.version != SPACE_FORMAT_VERSION:
            raise ValueError(f"version {self.version} is not supported (this code reads {SPACE_FORMAT_VERSION})")
        known = set(field_names())
        seen: dict[str, AnyParam] = {}
        for name, spec in self.params.items():
            if name not in known:
                raise ValueError(f"params.{name}: not a MemSegConfig field (see memseg.config.field_names())")
            if name in SELECTION_FIELDS:
                msg = (f"params.{name}: defines the validation set or the selection metric, so trials drawing "
                       "different values would be ranked on different yardsticks; set it in the sweep's base")
                raise ValueError(msg)
            if isinstance(spec, ComplementParam) and not isinstance(seen.get(spec.of), FloatParam):
                raise ValueError(f"params.{name}: 'of: {spec.of}' must name an earlier float parameter")
            if isinstance(spec, ConditionalParam):
                parent = seen.get(spec.depends_on)
                if not isinstance(parent, CategoricalParam):
                    msg = f"params.{name}: 'depends_on: {spec.depends_on}' must name an earlier categorical parameter"
                    raise ValueError(msg)
                missing = {case_key(c) for c in parent.choices} - set(spec.cases)
                if missing:
                    raise ValueError(f"params.{name}: no case for {spec.depends_on} = {sorted(missing)}")
            seen[name] = spec
        return self


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def case_key(value: object) -> str:
    """The string a conditional's ``cases`` uses for a parent value (YAML ``true`` -> ``"true"``)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def branch_name(field: str, case: str) -> str:
    """Optuna parameter name of one branch of a conditional field."""
    return f"{field}[{case}]"


def max_memory_size(n_train_images: int, val_fraction: float, val_min_images: int, min_train: int = 2) -> int:
    """Largest memory size that leaves validation and ``min_train`` training images (as ``make_splits`` counts).

    Raises:
        ConfigError: when even one memory image is too many.
    """
    for n in range(n_train_images, 0, -1):
        rest = n_train_images - n
        n_val = max(val_min_images, round(val_fraction * rest))
        if rest - n_val >= min_train:
            return n
    msg = (
        f"{n_train_images} train/good images cannot hold 1 memory image + validation "
        f"(data.val_min_images={val_min_images}) + {min_train} training images"
    )
    raise ConfigError(msg)


class SearchSpace:
    """A validated space file, not yet bound to a category."""

    def __init__(self, spec: SpaceFile, source: str) -> None:
        self.spec = spec
        self.source = source

    @property
    def name(self) -> str:
        return self.spec.name

    def fields(self) -> list[str]:
        """Every config field the space sets."""
        return list(self.spec.params)

    def for_category(self, base: MemSegConfig, memory_pool: int | None = None) -> CategorySpace:
        """Bind the space to a category's resolved base config.

        Args:
            base: The category's config with every ``None`` resolved (``resolve_for_category``); its
                values are the defaults that go first.
            memory_pool: Largest allowed memory size for the category (``cap: memory_pool``); None = no cap.
        """
        flat = base.flatten()
        entries: list[tuple[str, AnyParam]] = []
        defaults: dict[str, ParamValue] = {}
        for name, spec in self.spec.params.items():
            if isinstance(spec, ConditionalParam):
                cases: dict[str, LeafParam] = {}
                active = case_key(defaults.get(spec.depends_on, flat[spec.depends_on]))
                for case, leaf in spec.cases.items():
                    # Only the branch the defaults take must hold the default value; the others keep
                    # their own range (the authors' SGD lr says nothing about AdamW's).
                    default = flat[name] if case == active else _UNSET
                    cases[case], fitted_default = _fit_default(branch_name(name, case), leaf, default, memory_pool)
                    if not isinstance(fitted_default, _Unset):
                        defaults[branch_name(name, case)] = fitted_default
                entries.append((name, spec.model_copy(update={"cases": cases})))
            elif isinstance(spec, ComplementParam | ConstParam):
                entries.append((name, spec))
            else:
                fitted, fitted_default = _fit_default(name, spec, flat[name], memory_pool)
                if not isinstance(fitted_default, _Unset):  # a plain parameter always has its default
                    defaults[name] = fitted_default
                entries.append((name, fitted))
        return CategorySpace(self.name, entries, defaults)


class CategorySpace:
    """The define-by-run function of one category's study (plain and picklable; computes nothing heavy).

    Calling it with an Optuna trial samples every parameter and returns the plain field values;
    Ray's OptunaSearch merges those with the sampled (branch-named) values into the trial config.
    """

    def __init__(
        self, space_name: str, entries: list[tuple[str, AnyParam]], defaults: Mapping[str, ParamValue]
    ) -> None:
        self.space_name = space_name
        self.entries = entries
        self._defaults = dict(defaults)  # Optuna parameter name -> the authors' value (fitted into the space)

    def __call__(self, trial: Trial) -> dict[str, ParamValue]:
        values: dict[str, ParamValue] = {}
        for name, spec in self.entries:
            if isinstance(spec, ConstParam):
                values[name] = spec.value
            elif isinstance(spec, ComplementParam):
                # SpaceFile's validator made `of` an earlier float parameter, so its value is a float.
                values[name] = spec.total - cast(float, values[spec.of])
            elif isinstance(spec, ConditionalParam):
                case = case_key(values[spec.depends_on])
                values[name] = _suggest(trial, branch_name(name, case), spec.cases[case])
            else:
                values[name] = _suggest(trial, name, spec)
        return values

    def default_point(self) -> dict[str, ParamValue]:
        """The authors' defaults in Optuna parameter names (for ``points_to_evaluate``)."""
        point: dict[str, ParamValue] = {}
        for name, spec in self.entries:
            if isinstance(spec, ConstParam | ComplementParam):
                continue
            if isinstance(spec, ConditionalParam):
                case = case_key(point[spec.depends_on])
                if not isinstance(spec.cases[case], ConstParam):
                    point[branch_name(name, case)] = self._defaults[branch_name(name, case)]
            else:
                point[name] = self._defaults[name]
        return point

    def points_to_evaluate(
        self, extra: Sequence[Mapping[str, ParamValue]] = (), *, defaults_first: bool = True
    ) -> list[dict[str, ParamValue]]:
        """The points Optuna evaluates before it samples: the defaults, then each ``extra`` point over them.

        Raises:
            ConfigError: naming a key of an extra point that is not a parameter of the space.
        """
        base = self.default_point()
        names = set(self.param_names())
        points = [base] if defaults_first else []
        for i, point in enumerate(extra):
            unknown = sorted(set(point) - names)
            if unknown:
                msg = (f"search.extra_points[{i}]: {unknown} not in space {self.space_name!r} "
                       f"(parameters: {sorted(names)})")
                raise ConfigError(msg)
            points.append({**base, **point})
        return points

    def param_names(self) -> list[str]:
        """Every Optuna parameter name the study may see."""
        names = []
        for name, spec in self.entries:
            if isinstance(spec, ConditionalParam):
                names += [branch_name(name, c) for c, leaf in spec.cases.items() if not isinstance(leaf, ConstParam)]
            elif not isinstance(spec, ConstParam | ComplementParam):
                names.append(name)
        return names


def _suggest(trial: Trial, name: str, spec: LeafParam) -> ParamValue:
    if isinstance(spec, ConstParam):
        return spec.value
    if isinstance(spec, FloatParam):
        return trial.suggest_float(name, spec.low, spec.high, log=spec.log, step=spec.step)
    if isinstance(spec, IntParam):
        return trial.suggest_int(name, spec.low, spec.high, log=spec.log, step=spec.step)
    return trial.suggest_categorical(name, spec.choices)


def _fit_default(
    name: str, spec: LeafParam, default: ParamValue | _Unset, memory_pool: int | None
) -> tuple[LeafParam, ParamValue | _Unset]:
    """Apply the memory-pool cap, then make sure the authors' default is a value the distribution can take.

    Args:
        default: the authors' value, or ``_UNSET`` for a branch the defaults do not take.

    Returns:
        The (possibly capped or widened) spec and the default to evaluate first.
    """
    if isinstance(spec, ConstParam):
        return spec, spec.value
    cap = memory_pool if isinstance(spec, IntParam | CategoricalParam) and spec.cap == "memory_pool" else None
    if cap is not None and isinstance(default, int | float):
        default = min(default, cap)
    if isinstance(spec, CategoricalParam):
        choices = list(spec.choices)
        if cap is not None:
            # CategoricalParam's validator allows a cap on numeric choices only.
            kept: list[Scalar | None] = [c for c in choices if _is_number(c) and cast(float, c) <= cap]
            choices = kept + ([cap] if len(kept) < len(choices) and cap not in kept else [])
        if default is not _UNSET and default not in choices:
            logger.info("%s: adding the default %r to the choices %s", name, default, choices)
            choices.append(default)
        return spec.model_copy(update={"choices": choices}), default
    low, high = spec.low, spec.high
    if cap is not None:
        high, low = min(high, cap), min(low, cap)
    if isinstance(default, int | float) and not low <= default <= high:
        logger.info("%s: widening [%s, %s] to include the default %r", name, low, high, default)
        low, high = min(low, default), max(high, default)
    update: dict[str, float | None] = {"low": type(spec.low)(low), "high": type(spec.high)(high)}
    if (
        isinstance(spec, FloatParam) and spec.step is not None and isinstance(default, int | float)
        and not _on_grid(default, low, spec.step)
    ):
        logger.info("%s: dropping step %s so the default %r stays reachable", name, spec.step, default)
        update["step"] = None
    return spec.model_copy(update=update), default


def _on_grid(value: float, low: float, step: float) -> bool:
    k = (value - low) / step
    return math.isclose(k, round(k), abs_tol=1e-9)


def resolve_space_path(name_or_path: str | Path) -> Path:
    """``paper`` -> ``sweeps/spaces/paper.yaml``; anything with a slash or suffix is a path."""
    text = str(name_or_path)
    if "/" not in text and not text.endswith((".yaml", ".yml")):
        path = SPACES_DIR / f"{text}.yaml"
        if not path.is_file():
            available = ", ".join(sorted(p.stem for p in SPACES_DIR.glob("*.yaml")))
            raise ConfigError(f"search.space: no built-in space {text!r} (built-in: {available})")
        return path
    return Path(text)


def load_space(name_or_path: str | Path) -> SearchSpace:
    """Read and validate a search-space file.

    Raises:
        ConfigError: naming the file and the parameter at fault.
    """
    path = resolve_space_path(name_or_path)
    loaded = read_yaml_mapping(path, "search space")
    params = loaded.get("params")
    if isinstance(params, dict):  # YAML reads `true:` case keys as booleans
        for spec in params.values():
            if isinstance(spec, dict) and isinstance(spec.get("cases"), dict):
                spec["cases"] = {case_key(k): v for k, v in spec["cases"].items()}
    try:
        return SearchSpace(SpaceFile.model_validate(loaded), str(path))
    except ValidationError as exc:
        raise ConfigError(f"{path}: {describe_validation_error(exc)}") from None


def overrides_from_params(params: Mapping[str, object]) -> dict[str, object]:
    """The config overrides in a trial config: its keys that are config fields (branch names are dropped)."""
    known = set(field_names())
    return {k: v for k, v in params.items() if k in known}
