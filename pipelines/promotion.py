"""The promotion gate: may the ``challenger`` version of a category replace its ``champion``?

Two halves, kept apart so that the rule is testable without MLflow:

* :func:`decide` is pure: it compares two metric dicts measured on the SAME held-out data under a
  :class:`PromotionPolicy` and returns a :class:`Decision` (promote or not, and why).
* :func:`promote_category` is the MLflow side effect: it evaluates both versions on the gate data
  (see :class:`PromotionPolicy.data`), calls :func:`decide`, writes the decision and
  both sets of figures as version tags, and moves the ``champion`` alias. Stages are never touched
  (deprecated since MLflow 2.9).

The primary metric defaults to the challenger's selection metric (its ``selection_metric`` tag without
the ``val_`` prefix), so a sweep that selected on AUPRO is also gated on AUPRO. All metrics in the
gate are "higher is better" (AUROC, AUPRO, F1-max), so the rule is one-sided.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import numpy as np
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from memseg.config import EvalConfig, MemSegConfig
from memseg.data.datasets import build_validation_set
from memseg.data.mvtec import Sample, list_category
from memseg.data.splits import make_splits
from memseg.errors import CheckpointError, ConfigError
from memseg.evaluation import load_split
from memseg.inference import load_checkpoint, predict
from memseg.metrics import compute_metrics, keys
from memseg.training import resolve_device
from pipelines.registry import tracking_client
from pipelines.schema import (
    CHALLENGER,
    CHAMPION,
    GATE_CHAMPION_VERSION,
    GATE_DATA,
    GATE_DECIDED_AT,
    GATE_DECISION,
    GATE_DELTA,
    GATE_METRIC,
    GATE_POLICY,
    GATE_REASON,
    GATE_REPLACED_BY,
    PROMOTED,
    REFUSED,
    REPORTED_METRICS,
    RegisteredVersion,
    gate_figure_tag,
)


class PromotionPolicy(BaseModel):
    """How much better a challenger must be, and what it must not break.

    Metric names are the unprefixed keys of :mod:`memseg.metrics.keys` (``pixel_auroc``): both
    models are measured afresh on the gate data, so no ``val_``/``test_`` prefix applies.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    metric: str | None = Field(
        None,
        description="Primary metric the challenger must improve; None = the challenger's selection metric "
        "(its `selection_metric` tag without `val_`).",
    )
    margin: float = Field(
        0.0, ge=0.0, le=1.0, description="Challenger must beat the champion by MORE than this on `metric`."
    )
    guard_metrics: tuple[str, ...] = Field(
        (keys.IMAGE_AUROC, keys.PIXEL_AUPRO), description="Metrics that must not regress beyond `guard_tolerance`."
    )
    guard_tolerance: float = Field(
        0.01, ge=0.0, le=1.0, description="Largest drop of a guard metric (absolute) that is still accepted."
    )
    floor: float = Field(
        0.5, ge=0.0, le=1.0, description="A category's first model becomes champion only if `metric` >= floor."
    )
    data: str = Field(
        "val",
        description="Gate data: 'val' = held-out train/good images with fixed-seed synthetic anomalies that "
        "neither model trained on or kept in memory (leakage-free, default); 'test' = the test split.",
    )

    @field_validator("metric")
    @classmethod
    def _known_metric(cls, value: str | None) -> str | None:
        return None if value is None else _check_metric(value)

    @field_validator("guard_metrics")
    @classmethod
    def _known_guards(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(_check_metric(v) for v in value)

    @field_validator("data")
    @classmethod
    def _known_data(cls, value: str) -> str:
        if value not in ("val", "test"):
            msg = f"data must be 'val' or 'test', got {value!r}"
            raise ValueError(msg)
        return value

    def for_selection(self, selection_metric: str) -> PromotionPolicy:
        """This policy with ``metric`` filled from a ``val_*`` selection metric when it is unset."""
        if self.metric is not None:
            return self
        return make_policy(**{**self.model_dump(), "metric": selection_metric.removeprefix(keys.VAL_PREFIX)})

    @property
    def primary(self) -> str:
        """The primary metric (:meth:`for_selection` fills it when the policy leaves it to the model)."""
        if self.metric is None:
            msg = "promotion.metric: unset; resolve it with PromotionPolicy.for_selection(<selection metric>)"
            raise ConfigError(msg)
        return self.metric


def _check_metric(name: str) -> str:
    if name not in REPORTED_METRICS:
        msg = f"unknown gate metric {name!r} (valid: {', '.join(REPORTED_METRICS)})"
        raise ValueError(msg)
    return name


def make_policy(
    *,
    metric: str | None = None,
    margin: float | None = None,
    guard_metrics: tuple[str, ...] | None = None,
    guard_tolerance: float | None = None,
    floor: float | None = None,
    data: str | None = None,
) -> PromotionPolicy:
    """A policy with ``None`` arguments left at their defaults.

    Raises:
        ConfigError: naming the key of an invalid value.
    """
    given = {"metric": metric, "margin": margin, "guard_metrics": guard_metrics, "guard_tolerance": guard_tolerance,
             "floor": floor, "data": data}
    values = {k: v for k, v in given.items() if v is not None}
    try:
        return PromotionPolicy.model_validate(values)
    except ValidationError as exc:
        problems = "; ".join(
            f"promotion.{'.'.join(str(p) for p in e['loc'])}: {e['msg']} (got {e.get('input')!r})" for e in exc.errors()
        )
        raise ConfigError(problems) from None


@dataclass(frozen=True)
class Decision:
    """The outcome of the gate for one challenger.

    Attributes:
        promote: move ``champion`` to the challenger.
        reason: one human sentence; printed and stored as a tag.
        metric: the primary metric compared.
        challenger_value / champion_value: its values (champion ``None`` when there is none yet).
        delta: challenger - champion (``None`` without a champion).
        regressions: guard metric -> drop, for every guard that dropped beyond the tolerance.
    """

    promote: bool
    reason: str
    metric: str
    challenger_value: float
    champion_value: float | None
    delta: float | None
    regressions: dict[str, float] = field(default_factory=dict)

    @property
    def verdict(self) -> str:
        return PROMOTED if self.promote else REFUSED

    def as_tags(self) -> dict[str, str]:
        """The decision as flat string tags (the figures themselves are tagged separately)."""
        tags = {GATE_DECISION: self.verdict, GATE_REASON: self.reason, GATE_METRIC: self.metric}
        if self.delta is not None:
            tags[GATE_DELTA] = f"{self.delta:.6f}"
        return tags


def decide(
    challenger: Mapping[str, float], champion: Mapping[str, float] | None, policy: PromotionPolicy
) -> Decision:
    """Apply the gate rule.

    Rule: without a champion, promote iff ``challenger[metric] >= floor``. With one, promote iff
    ``challenger[metric] - champion[metric] > margin`` and no guard metric dropped by more than
    ``guard_tolerance``. NaN values (e.g. AUROC on data with a single class) never pass.

    Args:
        challenger: metrics of the candidate on the gate data.
        champion: metrics of the current champion on the SAME data, or ``None``.
        policy: thresholds, with its primary metric set (:meth:`PromotionPolicy.for_selection`).

    A metric missing from a dict (undefined on the gate data, e.g. AUROC with one class) counts as
    NaN, so it cannot pass.
    """
    metric = policy.primary
    challenger = _with_nan(challenger, policy)
    champion = _with_nan(champion, policy) if champion is not None else None
    value = float(challenger[metric])
    if champion is None:
        ok = value >= policy.floor  # False for NaN
        reason = f"first model: {metric}={value:.4f} {'>=' if ok else '<'} floor {policy.floor:.4f}"
        return Decision(ok, reason, metric, value, None, None)

    base = float(champion[metric])
    delta = value - base
    regressions = {}
    for guard in policy.guard_metrics:
        drop = float(champion[guard]) - float(challenger[guard])
        if not drop <= policy.guard_tolerance:  # NaN counts as a regression
            regressions[guard] = drop
    improved = delta > policy.margin
    if improved and not regressions:
        reason = f"{metric} {value:.4f} vs {base:.4f}: +{delta:.4f} > margin {policy.margin:.4f}"
        return Decision(True, reason, metric, value, base, delta)
    parts = []
    if not improved:
        parts.append(f"{metric} {value:.4f} vs {base:.4f}: {delta:+.4f} not > margin {policy.margin:.4f}")
    if regressions:
        parts.append(
            "guard regression: "
            + ", ".join(f"{g} -{d:.4f} > tolerance {policy.guard_tolerance:.4f}" for g, d in regressions.items())
        )
    return Decision(False, "; ".join(parts), metric, value, base, delta, regressions)


def _with_nan(metrics: Mapping[str, float], policy: PromotionPolicy) -> dict[str, float]:
    out = {k: float(v) for k, v in metrics.items()}
    for name in (policy.primary, *policy.guard_metrics):
        out.setdefault(name, math.nan)
    return out


def figure_tags(role: str, metrics: Mapping[str, float]) -> dict[str, str]:
    """``{"gate.<role>.<metric>": "0.987654"}`` for every gate metric present."""
    return {gate_figure_tag(role, k): f"{float(v):.6f}" for k, v in metrics.items() if k in REPORTED_METRICS}


# --- the gate data -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GateData:
    """The held-out images both versions are measured on.

    Attributes:
        images: uint8 ``(N, H, W, 3)`` RGB.
        masks: uint8 ``(N, H, W)`` in {0, 1}.
        labels: ``(N,)`` 1 = anomalous.
        description: what the data is, stored as the ``gate.data`` tag.
    """

    images: np.ndarray
    masks: np.ndarray
    labels: np.ndarray
    description: str


def gate_data(challenger_cfg: MemSegConfig, champion_cfg: MemSegConfig | None, policy: PromotionPolicy,
              data_root: str | None = None) -> GateData:
    """Build the gate data (see :attr:`PromotionPolicy.data`).

    ``val``: the ``train/good`` images that BOTH versions held out for validation (the intersection
    of their validation splits: neither trained on them nor keeps them in memory, and no test image
    is looked at), each clean and with ``data.val_anomalies_per_image`` synthetic anomalies drawn with
    the challenger's synthesis settings and fixed ``eval.val_seed``. When the two splits share fewer
    than ``data.val_min_images`` images (their memory sizes differ a lot) the gate falls back to the
    test split and says so in ``gate.data``.

    ``test``: the category's test split (real defects), at the challenger's image size.
    """
    cfg = challenger_cfg.with_overrides({"data.root": data_root}) if data_root else challenger_cfg
    files = list_category(cfg.data.root, cfg.data.category)
    description = ""
    if policy.data == "val":
        def val_samples(c: MemSegConfig) -> list[Sample]:
            if c.model.memory_size is None:
                msg = f"{c.data.category}: model.memory_size is unresolved in the checkpoint's config"
                raise ConfigError(msg)
            splits = make_splits(files, c.model.memory_size, c.model.memory_selection, c.data.val_fraction,
                                 c.data.val_min_images, c.eval.val_seed)
            return splits.val

        shared = val_samples(cfg)
        if champion_cfg is not None:
            theirs = {str(s.path) for s in val_samples(champion_cfg)}
            shared = [s for s in shared if str(s.path) in theirs]
        if len(shared) >= cfg.data.val_min_images:
            evalset = build_validation_set(shared, cfg)
            description = (f"val: {len(shared)} held-out train/good images x (clean + "
                           f"{cfg.data.val_anomalies_per_image} synthetic, seed {cfg.eval.val_seed})")
        else:
            description = (f"test (fallback: the validation splits share {len(shared)} < "
                           f"{cfg.data.val_min_images} images)")
    if not description.startswith("val"):
        evalset = load_split(cfg, "test")
        description = description or f"test: {len(files.test)} images"
    images = (evalset.images.permute(0, 2, 3, 1).numpy() * 255.0).round().astype(np.uint8)
    return GateData(images, evalset.masks, evalset.labels, description)


def measure(checkpoint: Path, data: GateData, *, rule: EvalConfig, device: str = "auto") -> dict[str, float]:
    """Metrics of one checkpoint on the gate data (maps via :func:`memseg.inference.predict`).

    Scored by ``rule`` (``top_k``, ``aupro_fpr_limit``): pass the challenger's ``eval`` settings for
    both versions so that the two are scored alike. Maps come back at the gate data's size whatever
    the version's own image size.
    """
    dev = resolve_device(device)
    model, cfg = load_checkpoint(checkpoint, dev)
    predictions = predict(model, list(data.images), cfg, dev)
    maps = np.stack([p.anomaly_map for p in predictions])
    metrics = compute_metrics(maps, data.masks, data.labels, None, top_k=rule.top_k, fpr_limit=rule.aupro_fpr_limit)
    return {k: float(v) for k, v in metrics.items() if k in REPORTED_METRICS}


# --- the MLflow side effect ------------------------------------------------------------------------------


@dataclass(frozen=True)
class PromotionOutcome:
    """What the gate did for one registered model."""

    name: str
    challenger: str | None
    champion_before: str | None
    champion_after: str | None
    decision: Decision | None
    challenger_metrics: dict[str, float] = field(default_factory=dict)
    champion_metrics: dict[str, float] = field(default_factory=dict)
    data: str = ""
    note: str = ""

    def summary(self) -> str:
        if self.decision is None:
            return f"{self.name}: {self.note}"
        head = (f"{self.name}: challenger v{self.challenger} {self.decision.verdict.upper()}"
                f" (champion now v{self.champion_after})")
        lines = [head, f"  reason: {self.decision.reason}", f"  data:   {self.data}"]
        names = sorted(set(self.challenger_metrics) | set(self.champion_metrics))
        for m in names:
            ch = self.challenger_metrics.get(m)
            cp = self.champion_metrics.get(m)
            champ = f"{cp:.4f}" if cp is not None else "-"
            lines.append(f"  {m:<14} challenger {ch if ch is None else f'{ch:.4f}'}   champion {champ}")
        if self.note:
            lines.append(f"  note:   {self.note}")
        return "\n".join(lines)


def _alias_version(client: MlflowClient, name: str, alias: str) -> ModelVersion | None:
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


GATE_DIR_PREFIX = "memseg-gate-"


def gate_workdir(root: str | Path | None = None) -> Path:
    """A fresh folder for the gate's downloaded checkpoints, named after this process (``memseg-gate-<pid>-*``).

    The caller removes it in a ``finally``; a process killed outright cannot, so the folders of
    processes that no longer exist are removed first (:func:`remove_stale_gate_dirs`).
    """
    base = Path(root) if root is not None else Path(tempfile.gettempdir())
    remove_stale_gate_dirs(base)
    return Path(tempfile.mkdtemp(prefix=f"{GATE_DIR_PREFIX}{os.getpid()}-", dir=base))


def remove_stale_gate_dirs(root: str | Path | None = None) -> list[Path]:
    """Remove the gate folders under ``root`` (default: the temp folder) whose process is gone; returns them."""
    base = Path(root) if root is not None else Path(tempfile.gettempdir())
    removed = []
    for folder in base.glob(f"{GATE_DIR_PREFIX}*-*"):
        pid = folder.name.removeprefix(GATE_DIR_PREFIX).split("-", 1)[0]
        if folder.is_dir() and pid.isdigit() and not _process_alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def _download_checkpoint(name: str, version: str, dst: str) -> Path:
    """The version's checkpoint artifact (``artifacts/best_model.pt`` of the pyfunc), downloaded."""
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{version}", dst_path=dst))
    found = sorted(local.rglob("best_model.pt")) or sorted(local.rglob("*.pt"))
    if not found:
        msg = f"models:/{name}/{version}: no checkpoint file in the model's artifacts"
        raise CheckpointError(msg)
    return found[0]


def promote(tracking_uri: str, name: str, policy: PromotionPolicy, *, data_root: str | None = None,
            device: str = "auto", force: bool = False) -> PromotionOutcome:
    """Run the gate for one registered model: maybe move ``champion`` to the ``challenger`` version.

    Decided once per version: a challenger that already carries a ``gate.decision`` tag is not
    evaluated again (``force=True`` re-decides). Both versions are measured afresh on the same
    :func:`gate_data`; the decision, the reason, the data and both sets of figures are written as tags
    of the challenger version (``gate.*``, the decision last); a promotion also tags the previous
    champion ``gate.replaced_by``. A policy without a metric gates on the challenger's selection metric.

    Raises:
        TrackingError: the server is not reachable (named).
        SchemaError: the challenger version lacks a tag registration writes (named).
    """
    client = tracking_client(tracking_uri)
    challenger_version = _alias_version(client, name, CHALLENGER)
    champion = _alias_version(client, name, CHAMPION)
    before = champion.version if champion is not None else None
    if challenger_version is None:
        return PromotionOutcome(name, None, before, before, None, note="no challenger version: nothing to decide")
    challenger = RegisteredVersion.from_version(challenger_version)
    if champion is not None and champion.version == challenger.version:
        return PromotionOutcome(name, challenger.version, before, before, None,
                                note=f"challenger v{challenger.version} is already the champion")
    if challenger.gate is not None and not force:
        gate = challenger.gate
        value = gate.value(CHALLENGER)
        decision = Decision(gate.promoted, gate.reason, gate.metric, math.nan if value is None else value,
                            gate.value(CHAMPION), gate.delta)
        return PromotionOutcome(name, challenger.version, before, before, decision, dict(gate.challenger),
                                dict(gate.champion), gate.data,
                                note="decided earlier (gate tags on the version); --force to decide again")

    policy = policy.for_selection(challenger.selection_metric)
    tmp = gate_workdir()
    try:
        ch_ckpt = _download_checkpoint(name, challenger.version, f"{tmp}/challenger")
        _, ch_cfg = load_checkpoint(ch_ckpt, "cpu")
        cp_ckpt = cp_cfg = None
        if champion is not None:
            cp_ckpt = _download_checkpoint(name, champion.version, f"{tmp}/champion")
            _, cp_cfg = load_checkpoint(cp_ckpt, "cpu")
        data = gate_data(ch_cfg, cp_cfg, policy, data_root)
        ch_metrics = measure(ch_ckpt, data, rule=ch_cfg.eval, device=device)
        cp_metrics = measure(cp_ckpt, data, rule=ch_cfg.eval, device=device) if cp_ckpt is not None else {}
    finally:  # Ctrl-C and errors included; a kill -9 is cleaned by the next gate (remove_stale_gate_dirs)
        shutil.rmtree(tmp, ignore_errors=True)
    decision = decide(ch_metrics, cp_metrics if champion is not None else None, policy)

    tags = {
        **decision.as_tags(),
        **figure_tags(CHALLENGER, ch_metrics),
        **figure_tags(CHAMPION, cp_metrics),
        GATE_DATA: data.description,
        GATE_CHAMPION_VERSION: before or "",
        GATE_POLICY: policy.model_dump_json(),
        GATE_DECIDED_AT: time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    verdict = tags.pop(GATE_DECISION)
    for key, text in [*tags.items(), (GATE_DECISION, verdict)]:  # the decision last: it marks the set complete
        client.set_model_version_tag(name, challenger.version, key, text)
    after = before
    if decision.promote:
        client.set_registered_model_alias(name, CHAMPION, challenger.version)
        after = challenger.version
        if before is not None:
            client.set_model_version_tag(name, before, GATE_REPLACED_BY, challenger.version)
    return PromotionOutcome(name, challenger.version, before, after, decision, ch_metrics, cp_metrics,
                            data.description)
