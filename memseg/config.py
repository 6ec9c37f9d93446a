"""The one typed, validated configuration tree that flows from YAML/CLI to the trainer.

Defaults are the values of the authors' code (docs/model.md, "Training recipe"), except where a
field says otherwise. Fields whose authors' value depends on the category (memory size,
difference/feature scales, foreground threshold) default to ``None`` = "the authors' value for this
category"; :func:`resolve_for_category` fills them in from :mod:`memseg.category_defaults`.

Sweeps write to the same dotted field names (``synthesis.perlin_threshold``, ``optim.lr``), and
MLflow logs :meth:`MemSegConfig.flatten` as params, so a name means the same thing everywhere.

Validation uses pydantic (already a dependency of ray and mlflow): unknown keys and out-of-range
values raise :class:`memseg.errors.ConfigError` naming the dotted key.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from memseg.category_defaults import category_defaults
from memseg.errors import ConfigError

SCHEMA_VERSION = 1


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


# The texture anomaly sources (memseg.synthesis.texture_source).
TextureSourceName = Literal["dtd", "procedural"]


class DataConfig(_Section):
    """Where the images come from and how they are split."""

    root: str = Field("data/mvtec", description="MVTec-layout dataset root (made absolute before training).")
    category: str = Field("bottle", description="Category folder under root.")
    image_size: int = Field(256, ge=32, le=2048, description="Square input size; must be divisible by 32.")
    val_fraction: float = Field(
        0.1, ge=0.0, lt=1.0, description="Share of train/good (after the memory images) held out for validation."
    )
    val_min_images: int = Field(4, ge=1, description="At least this many validation images, whatever the fraction.")
    val_anomalies_per_image: int = Field(
        2, ge=1, le=16, description="Synthetic anomalies made (fixed seed) from each validation image."
    )
    val_anomaly_source: Literal["training_synthesis", "held_out"] = Field(
        "held_out",
        description="Where the validation anomalies come from: 'held_out' (default) = a defect painter the "
        "training synthesis never produces (polygon/ellipse/band masks: shading ramps, smears, colour casts, "
        "patches of other validation images, streaks, grain; memseg.synthesis.validation_defects), the same "
        "for every trial whatever its synthesis settings, so checkpoint and trial selection do not reward "
        "fitting the training synthesis; 'training_synthesis' = the training-time synthesis (Perlin mask, "
        "texture/structure source, blending), as the authors validate.",
    )
    texture_source: TextureSourceName = Field(
        "dtd",
        description="Texture anomaly source: 'dtd' = images of the Describable Textures Dataset under "
        "data.dtd_root (the paper's; training refuses to start without them); 'procedural' = generated "
        "textures, no download (generated data, CI, demos), a different anomaly distribution from the paper's.",
    )
    dtd_root: str | None = Field(
        None, description="DTD root holding images/<class>/*.jpg (memseg data download dtd); used when "
        "data.texture_source=dtd.",
    )
    num_workers: int = Field(0, ge=0, le=64, description="DataLoader worker processes for training.")
    cache_images: bool = Field(True, description="Decode and resize every image once and keep it in memory.")

    @model_validator(mode="after")
    def _size_divisible(self) -> DataConfig:
        if self.image_size % 32:
            raise ValueError(f"image_size must be divisible by 32, got {self.image_size}")
        return self


class SynthesisConfig(_Section):
    """Anomaly synthesis (docs/model.md, "Anomaly synthesis")."""

    perlin_threshold: float = Field(0.5, gt=0.0, lt=1.0, description="Perlin noise binarisation threshold.")
    perlin_min_scale_exp: int = Field(0, ge=0, le=8, description="Smallest Perlin scale exponent (2^e).")
    perlin_max_scale_exp: int = Field(
        6, ge=1, le=9, description="Exclusive upper bound of the scale exponent: e is drawn from [min, max)."
    )
    perlin_rotation_deg: float = Field(90.0, ge=0.0, le=180.0, description="Noise rotated by U[-r, r] degrees.")
    ridge_mask_probability: float = Field(
        0.0, ge=0.0, le=1.0,
        description="P(a thin-line mask instead of a Perlin blob): the pixels near a zero crossing of the Perlin "
        "noise, kept inside a coarse Perlin region (crack- and scratch-like shapes, which blobs never give). "
        "0 = blobs only (the paper's recipe; see docs/model.md, \"Anomaly synthesis\").",
    )
    ridge_mask_width: float = Field(
        0.05, gt=0.0, le=0.5, description="Thin-line masks: |noise| below this is the line (wider = thicker lines)."
    )
    transparency_min: float = Field(0.15, ge=0.0, le=1.0, description="Lower bound of the blending factor delta.")
    transparency_max: float = Field(1.0, ge=0.0, le=1.0, description="Upper bound of the blending factor delta.")
    texture_probability: float = Field(
        0.5, ge=0.0, le=1.0, description="P(texture source); otherwise the structural (self-shuffled) source."
    )
    structure_grid_rows: int = Field(4, ge=1, le=32, description="Rows of the structural shuffle grid (paper 4).")
    structure_grid_cols: int = Field(8, ge=1, le=32, description="Columns of the structural shuffle grid (paper 8).")
    structure_rotation_deg: float = Field(45.0, ge=0.0, le=180.0, description="Structural source rotation range.")
    structure_color_jitter: float = Field(
        0.3, ge=0.0, le=1.0, description="Brightness/saturation jitter amplitude for the structural source."
    )
    structure_hue_jitter: float = Field(0.1, ge=0.0, le=0.5, description="Hue jitter (fraction of the hue circle).")
    structure_flip_probability: float = Field(
        0.5, ge=0.0, le=1.0, description="Structural source: P(horizontal mirror), and independently P(vertical)."
    )
    synthetic_ratio: float = Field(
        0.5, gt=0.0, lt=1.0, description="Share of each training batch that is synthetic (authors: 4 of 8)."
    )
    use_foreground_mask: bool | None = Field(None, description="None = the category's default.")
    foreground_threshold: int | None = Field(None, ge=0, le=255, description="None = the category's default.")
    foreground_bright: bool | None = Field(
        None, description="True: pixels above the threshold are foreground. None = the category's default."
    )

    @model_validator(mode="after")
    def _ranges(self) -> SynthesisConfig:
        if self.transparency_min > self.transparency_max:
            raise ValueError("transparency_min must be <= transparency_max")
        if self.perlin_min_scale_exp >= self.perlin_max_scale_exp:
            raise ValueError("perlin_min_scale_exp must be < perlin_max_scale_exp")
        return self


class ModelConfig(_Section):
    """The network (see docs/model.md, "Encoder" and the sections after it)."""

    backbone: str = Field(
        "resnet18.tv_in1k",
        description="timm ResNet name, optionally with a pretrained tag; tv_in1k = the torchvision ImageNet "
        "weights the authors' code uses (torchvision resnet18).",
    )
    backbone_weights: str = Field(
        "imagenet",
        description="'imagenet' (timm pretrained, from the local cache or the hub), 'none' (random init) "
        "or a path to a weights file.",
    )
    memory_size: int | None = Field(None, ge=1, le=1024, description="Memory samples N. None = category default.")
    memory_selection: Literal["first", "random"] = Field(
        "first", description="'first' = first N by filename (authors); 'random' = seeded draw."
    )
    diff_scale: float | None = Field(None, gt=0.0, description="m_scale on |difference|. None = category default.")
    feature_scale: float | None = Field(None, gt=0.0, description="o_scale on features. None = category default.")
    memory_pooling: bool = Field(True, description="3x3 average pooling before the memory comparison (authors).")
    per_level_selection: bool = Field(True, description="Pick the closest memory sample per level (authors).")
    memory_match: Literal["aligned", "nearest"] = Field(
        "aligned",
        description="'aligned' = difference to the same location of the closest memory sample (authors); "
        "'nearest' = to the closest memory feature at any location of any sample (for textures).",
    )
    memory_coreset: int | None = Field(
        None, ge=1, le=65536,
        description="With memory_match=nearest: memory feature vectors kept per level, a greedy k-center "
        "coreset, so matching costs locations x this instead of locations x every stored vector (needed to "
        "export nearest matching); 2048 lost exact matching's gain on realistic grass (docs/quality.md, section 9). "
        "None = every vector. Ignored by 'aligned'.",
    )
    memory_window: int | None = Field(
        None, ge=0, le=64,
        description="With memory_match=nearest: search only within this many feature cells of each location, in "
        "every memory image (exact and local: N x (2r+1)^2 candidates per location instead of N x H x W; "
        "exportable). None = anywhere. Not together with memory_coreset.",
    )
    msff_fusion: bool = Field(True, description="Top-down fusion in MSFF (off = the authors' ablation).")
    map_smoothing_sigma: float = Field(
        4.0, ge=0.0, le=64.0,
        description="Gaussian blur of the anomaly map, sigma in pixels of the input image, before any scoring "
        "(validation, test, predict, serving); 0 = the raw map, as the authors' code scores it.",
    )
    head_init: Literal["default", "normal"] = Field(
        "default",
        description="Init of MSFF and decoder: 'default' = PyTorch's default init (what the authors' code runs: "
        "their Init() skips nested modules); 'normal' = conv N(0, 0.02), BN weight N(1, 0.02), the values "
        "their Init() names.",
    )

    @model_validator(mode="after")
    def _one_way_to_bound_nearest_matching(self) -> ModelConfig:
        if self.memory_coreset is not None and self.memory_window is not None:
            raise ValueError("memory_coreset and memory_window cannot both be set (a coreset keeps no locations)")
        return self


class LossConfig(_Section):
    """L1 + focal loss (docs/model.md, "Loss")."""

    l1_weight: float = Field(0.6, ge=0.0, description="Weight of the L1 term.")
    focal_weight: float = Field(0.4, ge=0.0, description="Weight of the focal term.")
    focal_gamma: float = Field(4.0, ge=0.0, le=10.0, description="Focal gamma.")
    focal_alpha_normal: float = Field(1.0, gt=0.0, description="Focal alpha of the normal class.")
    focal_alpha_anomaly: float = Field(1.2, gt=0.0, description="Focal alpha of the anomaly class.")
    label_smoothing: float = Field(1e-5, ge=0.0, lt=0.5, description="Label smoothing of the focal term.")

    @model_validator(mode="after")
    def _some_loss(self) -> LossConfig:
        if self.l1_weight == 0.0 and self.focal_weight == 0.0:
            raise ValueError("l1_weight and focal_weight cannot both be 0")
        return self


class OptimConfig(_Section):
    """Optimiser and schedule."""

    optimizer: Literal["sgd", "adamw"] = Field("sgd", description="Authors: SGD; a public reimplementation: AdamW.")
    lr: float = Field(0.04, gt=0.0, le=10.0, description="Peak learning rate.")
    momentum: float = Field(0.9, ge=0.0, lt=1.0, description="SGD momentum.")
    weight_decay: float = Field(3e-5, ge=0.0, le=1.0, description="Weight decay.")
    warmup_fraction: float = Field(0.0, ge=0.0, lt=1.0, description="Linear warmup, share of the steps.")
    min_lr: float = Field(0.0, ge=0.0, description="Cosine floor.")


class TrainConfig(_Section):
    """The training loop."""

    steps: int = Field(2700, ge=1, description="Optimisation steps (authors: 2701).")
    batch_size: int = Field(8, ge=2, le=1024, description="Images per step, normal + synthetic.")
    eval_interval: int = Field(100, ge=1, description="Validate every this many steps.")
    device: str = Field("auto", description="'auto', 'cpu', 'cuda' or 'cuda:N'.")
    amp: bool = Field(True, description="Mixed precision on CUDA (ignored on the CPU).")
    channels_last: bool = Field(True, description="channels_last memory format on CUDA.")
    seed: int = Field(42, description="Seed of model init, synthesis and data order.")
    output_dir: str = Field("runs/train", description="Checkpoints and logs go here.")
    log_interval: int = Field(10, ge=1, description="Progress/loss log every this many steps.")


class EvalConfig(_Section):
    """Scoring and model selection (docs/model.md, "Validation and selection")."""

    top_k: int = Field(100, ge=1, description="Image score = mean of the top-k pixel scores.")
    aupro_fpr_limit: float = Field(0.3, gt=0.0, le=1.0, description="AUPRO integrated up to this FPR.")
    selection_metric: Literal["val_pixel_auroc", "val_image_auroc", "val_pixel_aupro"] = Field(
        "val_pixel_auroc", description="Validation metric that picks the best checkpoint (never a test metric)."
    )
    val_seed: int = Field(1234, description="Fixed seed of the validation anomalies.")
    heatmap_samples: int = Field(4, ge=0, le=64, description="Validation heat-map overlays kept per evaluation.")
    batch_size: int = Field(16, ge=1, description="Batch size at evaluation.")


class MemSegConfig(_Section):
    """The whole configuration of one training run."""

    schema_version: int = SCHEMA_VERSION
    data: DataConfig = DataConfig()
    synthesis: SynthesisConfig = SynthesisConfig()
    model: ModelConfig = ModelConfig()
    loss: LossConfig = LossConfig()
    optim: OptimConfig = OptimConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()

    def flatten(self) -> dict[str, Any]:
        """Dotted-name view (``{"optim.lr": 0.04, ...}``), the names MLflow params and sweeps use."""
        return flatten_dict(self.model_dump())

    def with_overrides(self, overrides: Mapping[str, Any] | Sequence[str]) -> MemSegConfig:
        """A copy with dotted overrides applied: a mapping, or ``["key=value", ...]`` strings."""
        return _build(apply_overrides(self.model_dump(), parse_overrides(overrides)))

    def to_yaml(self) -> str:
        """Serialise (round-trips through :func:`load_config`)."""
        return yaml.safe_dump(self.model_dump(), sort_keys=False)


def flatten_dict(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten nested mappings into dotted keys."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten_dict(value, f"{name}."))
        else:
            out[name] = value
    return out


def field_names() -> list[str]:
    """Every dotted leaf name of the config (the names a sweep space may use)."""
    return sorted(MemSegConfig().flatten())


def read_yaml_mapping(path: Path, what: str, *, empty_ok: bool = False) -> dict[str, Any]:
    """The top-level mapping of a YAML file (configs, sweep specs, search spaces).

    Args:
        path: the file.
        what: what the file is, for the error ("config file", "sweep config", ...).
        empty_ok: an empty file reads as ``{}`` instead of an error.

    Raises:
        ConfigError: naming the file when it cannot be read, is not YAML or is not a mapping.
    """
    try:
        loaded = yaml.safe_load(path.read_text())
    except OSError as exc:
        msg = f"{path}: cannot read {what} ({exc.strerror})"
        raise ConfigError(msg) from exc
    except yaml.YAMLError as exc:
        msg = f"{path}: not valid YAML ({exc})"
        raise ConfigError(msg) from exc
    if loaded is None and empty_ok:
        return {}
    if not isinstance(loaded, dict):
        msg = f"{path}: top level of the {what} must be a mapping, got {type(loaded).__name__}"
        raise ConfigError(msg)
    return loaded


def load_config(
    path: str | Path | None = None, overrides: Mapping[str, Any] | Sequence[str] = ()
) -> MemSegConfig:
    """Read a YAML config (or the defaults when ``path`` is None) and apply dotted overrides.

    Raises:
        ConfigError: naming the file, or the dotted key that is unknown or out of range.
    """
    tree: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        tree = read_yaml_mapping(path, "config file", empty_ok=True)
    try:
        return _build(apply_overrides(tree, parse_overrides(overrides)))
    except ConfigError as exc:
        if path is not None:
            raise ConfigError(f"{path}: {exc}") from exc
        raise


def resolve_for_category(cfg: MemSegConfig, category: str | None = None) -> MemSegConfig:
    """Fill every ``None`` = "category default" field with the authors' value for the category.

    Also caps the memory size so that at least two training images remain.
    """
    category = category or cfg.data.category
    d = category_defaults(category)
    changes: dict[str, Any] = {"data.category": category}
    if cfg.model.memory_size is None:
        changes["model.memory_size"] = d.memory_size
    if cfg.model.diff_scale is None:
        changes["model.diff_scale"] = d.diff_scale
    if cfg.model.feature_scale is None:
        changes["model.feature_scale"] = d.feature_scale
    if cfg.synthesis.use_foreground_mask is None:
        changes["synthesis.use_foreground_mask"] = d.use_foreground_mask
    if cfg.synthesis.foreground_threshold is None:
        changes["synthesis.foreground_threshold"] = d.foreground_threshold
    if cfg.synthesis.foreground_bright is None:
        changes["synthesis.foreground_bright"] = d.foreground_bright
    return cfg.with_overrides(changes)


def parse_overrides(overrides: Mapping[str, Any] | Sequence[str]) -> dict[str, Any]:
    """Dotted overrides as a mapping: a mapping is copied, ``["key=value", ...]`` strings are parsed.

    Values are YAML scalars (``0.4`` -> float, ``true`` -> bool, ``null`` -> None, ``[4, 8]`` -> list);
    a value that is not valid YAML stays the raw string. The one parser of ``--set`` for configs and
    sweep specs alike.

    Raises:
        ConfigError: an item is not ``key=value``.
    """
    if isinstance(overrides, Mapping):
        return dict(overrides)
    parsed: dict[str, Any] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            msg = f"override {item!r} must look like section.field=value"
            raise ConfigError(msg)
        # YAML scalars: 0.4 -> float, true -> bool, null -> None, [4, 8] -> list.
        try:
            parsed[key.strip()] = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            parsed[key.strip()] = raw
    return parsed


def apply_overrides(tree: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """A deep copy of ``tree`` with each dotted key set (``{"optim.lr": 0.1}`` sets ``tree["optim"]["lr"]``).

    Raises:
        ConfigError: a dotted key runs through a value (``optim.lr.x`` when ``optim.lr`` is a number).
    """
    tree = _deep_copy(tree)
    for dotted, value in overrides.items():
        parts = dotted.split(".")
        node = tree
        for i, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                msg = f"{'.'.join(parts[: i + 1])}: is a value, cannot set {dotted}"
                raise ConfigError(msg)
            node = child
        node[parts[-1]] = value
    return tree


def _deep_copy(tree: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _deep_copy(v) if isinstance(v, Mapping) else v for k, v in tree.items()}


def _build(tree: Mapping[str, Any]) -> MemSegConfig:
    try:
        return MemSegConfig.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from None


def _describe(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "<root>"
        if err["type"] == "extra_forbidden":
            section = _section_at(err["loc"][:-1])
            valid = ", ".join(sorted(section.model_fields)) if section else ""
            lines.append(f"{key}: unknown key (valid here: {valid})")
        else:
            lines.append(f"{key}: {err['msg']} (got {err.get('input')!r})")
    return "; ".join(lines)


def _section_at(loc: Sequence[Any]) -> type[BaseModel] | None:
    model: type[BaseModel] = MemSegConfig
    for part in loc:
        field = model.model_fields.get(str(part))
        if field is None or not (isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)):
            return None
        model = field.annotation
    return model
