"""The promotion gate: may the ``challenger`` version of a category replace its ``champion``?

Two halves, kept apart so that the rule is testable without MLflow (style guide 8.1):

* :func:`decide` is pure: it compares two metric dicts measured on the SAME held-out data under a
  :class:`PromotionPolicy` and returns a :class:`Decision` (promote or not, and why).
* :func:`promote_category` is the MLflow side effect: it evaluates both versions on the gate data
  (see :class:`PromotionPolicy.data`), calls :func:`decide`, writes the decision and
  both sets of figures as version tags, and moves the ``champion`` alias. Stages are never touched
  (deprecated since MLflow 2.9; platform notes 2.5).

All metrics in the gate are "higher is better" (AUROC, AUPRO, F1-max), so the rule is one-sided.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from memseg.errors import ConfigError
from memseg.metrics import keys

CHAMPION = "champion"
CHALLENGER = "challenger"
TAG_PREFIX = "gate."


class PromotionPolicy(BaseModel):
    """How much better a challenger must be, and what it must not break.

    Metric names are the unprefixed keys of :mod:`memseg.metrics.keys` (``pixel_auroc``): both
    models are measured afresh on the gate data, so no ``val_``/``test_`` prefix applies.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    metric: str = Field(keys.PIXEL_AUROC, description="Primary metric the challenger must improve.")
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
    def _known_metric(cls, value: str) -> str:
        return _check_metric(value)

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


GATE_METRICS = (keys.IMAGE_AUROC, keys.PIXEL_AUROC, keys.PIXEL_AUPRO, keys.IMAGE_F1_MAX, keys.PIXEL_F1_MAX)


def _check_metric(name: str) -> str:
    if name not in GATE_METRICS:
        msg = f"unknown gate metric {name!r} (valid: {', '.join(GATE_METRICS)})"
        raise ValueError(msg)
    return name


def make_policy(**overrides: Any) -> PromotionPolicy:
    """A policy with ``None`` overrides dropped; invalid values raise :class:`ConfigError` naming the key."""
    from pydantic import ValidationError

    values = {k: v for k, v in overrides.items() if v is not None}
    try:
        return PromotionPolicy(**values)
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
        return "promoted" if self.promote else "refused"

    def as_tags(self) -> dict[str, str]:
        """The decision as flat string tags (the figures themselves are tagged separately)."""
        tags = {
            f"{TAG_PREFIX}decision": self.verdict,
            f"{TAG_PREFIX}reason": self.reason,
            f"{TAG_PREFIX}metric": self.metric,
        }
        if self.delta is not None:
            tags[f"{TAG_PREFIX}delta"] = f"{self.delta:.6f}"
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
        policy: thresholds.

    A metric missing from a dict (undefined on the gate data, e.g. AUROC with one class) counts as
    NaN, so it cannot pass.
    """
    challenger = _with_nan(challenger, policy)
    champion = _with_nan(champion, policy) if champion is not None else None
    value = float(challenger[policy.metric])
    if champion is None:
        ok = value >= policy.floor  # False for NaN
        reason = (
            f"first model: {policy.metric}={value:.4f} {'>=' if ok else '<'} floor {policy.floor:.4f}"
        )
        return Decision(ok, reason, policy.metric, value, None, None)

    base = float(champion[policy.metric])
    delta = value - base
    regressions = {}
    for guard in policy.guard_metrics:
        drop = float(champion[guard]) - float(challenger[guard])
        if not drop <= policy.guard_tolerance:  # NaN counts as a regression
            regressions[guard] = drop
    improved = delta > policy.margin
    if improved and not regressions:
        reason = f"{policy.metric} {value:.4f} vs {base:.4f}: +{delta:.4f} > margin {policy.margin:.4f}"
        return Decision(True, reason, policy.metric, value, base, delta)
    parts = []
    if not improved:
        parts.append(f"{policy.metric} {value:.4f} vs {base:.4f}: {delta:+.4f} not > margin {policy.margin:.4f}")
    if regressions:
        parts.append(
            "guard regression: "
            + ", ".join(f"{g} -{d:.4f} > tolerance {policy.guard_tolerance:.4f}" for g, d in regressions.items())
        )
    return Decision(False, "; ".join(parts), policy.metric, value, base, delta, regressions)


def _with_nan(metrics: Mapping[str, float], policy: PromotionPolicy) -> dict[str, float]:
    out = {k: float(v) for k, v in metrics.items()}
    for name in (policy.metric, *policy.guard_metrics):
        out.setdefault(name, math.nan)
    return out


def figure_tags(role: str, metrics: Mapping[str, float]) -> dict[str, str]:
    """``{"gate.<role>.<metric>": "0.987654"}`` for every gate metric present."""
    return {f"{TAG_PREFIX}{role}.{k}": f"{float(v):.6f}" for k, v in metrics.items() if k in GATE_METRICS}


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

    images: Any
    masks: Any
    labels: Any
    description: str


def gate_data(challenger_cfg: Any, champion_cfg: Any | None, policy: PromotionPolicy,
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
    import numpy as np

    from memseg.data.datasets import build_validation_set, load_test_set
    from memseg.data.mvtec import list_category
    from memseg.data.splits import make_splits

    cfg = challenger_cfg
    root = data_root or cfg.data.root
    if data_root:
        cfg = cfg.with_overrides({"data.root": data_root})
    files = list_category(root, cfg.data.category)
    description = ""
    if policy.data == "val":
        def val_paths(c: Any) -> list:
            splits = make_splits(files, c.model.memory_size, c.model.memory_selection, c.data.val_fraction,
                                 c.data.val_min_images, c.eval.val_seed)
            return splits.val

        shared = val_paths(cfg)
        if champion_cfg is not None:
            theirs = {str(s.path) for s in val_paths(champion_cfg)}
            shared = [s for s in shared if str(s.path) in theirs]
        if len(shared) >= cfg.data.val_min_images:
            evalset = build_validation_set(shared, cfg)
            description = (f"val: {len(shared)} held-out train/good images x (clean + "
                           f"{cfg.data.val_anomalies_per_image} synthetic, seed {cfg.eval.val_seed})")
        else:
            description = (f"test (fallback: the validation splits share {len(shared)} < "
                           f"{cfg.data.val_min_images} images)")
    if not description.startswith("val"):
        evalset = load_test_set(files.test, cfg.data.image_size)
        description = description or f"test: {len(files.test)} images"
    images = (evalset.images.permute(0, 2, 3, 1).numpy() * 255.0).round().astype(np.uint8)
    return GateData(images, evalset.masks, evalset.labels, description)


def measure(checkpoint: Any, data: GateData, *, device: str = "auto", top_k: int | None = None,
            fpr_limit: float | None = None) -> dict[str, float]:
    """Metrics of one checkpoint on the gate data (maps via :func:`memseg.inference.predict`).

    ``top_k``/``fpr_limit`` default to the checkpoint's ``eval`` settings; pass the challenger's for both
    versions so that the two are scored by the same rule.
    """
    import numpy as np

    from memseg.inference import load_checkpoint, predict
    from memseg.metrics import compute_metrics
    from memseg.training.loop import resolve_device

    dev = resolve_device(device)
    model, cfg = load_checkpoint(checkpoint, dev)
    predictions = predict(model, list(data.images), cfg, dev)
    maps = np.stack([p.anomaly_map for p in predictions])
    metrics = compute_metrics(
        maps, data.masks, data.labels, None,
        top_k=top_k or cfg.eval.top_k, fpr_limit=fpr_limit or cfg.eval.aupro_fpr_limit,
    )
    return {k: float(v) for k, v in metrics.items() if k in GATE_METRICS}


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


def _alias_version(client: Any, name: str, alias: str) -> Any | None:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def _download_checkpoint(name: str, version: str, dst: str) -> Path:
    """The version's checkpoint artifact (``artifacts/best_model.pt`` of the pyfunc), downloaded."""
    import mlflow

    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{version}", dst_path=dst))
    found = sorted(local.rglob("best_model.pt")) or sorted(local.rglob("*.pt"))
    if not found:
        from memseg.errors import CheckpointError

        msg = f"models:/{name}/{version}: no checkpoint file in the model's artifacts"
        raise CheckpointError(msg)
    return found[0]


def _recorded(version: Any) -> tuple[Decision, dict[str, float], dict[str, float]] | None:
    tags = version.tags
    if f"{TAG_PREFIX}decision" not in tags:
        return None

    def figures(role: str) -> dict[str, float]:
        prefix = f"{TAG_PREFIX}{role}."
        return {k[len(prefix):]: float(v) for k, v in tags.items() if k.startswith(prefix)}

    ch, cp = figures(CHALLENGER), figures(CHAMPION)
    metric = tags.get(f"{TAG_PREFIX}metric", "")
    delta = tags.get(f"{TAG_PREFIX}delta")
    decision = Decision(
        promote=tags[f"{TAG_PREFIX}decision"] == "promoted",
        reason=tags.get(f"{TAG_PREFIX}reason", ""),
        metric=metric,
        challenger_value=ch.get(metric, math.nan),
        champion_value=cp.get(metric),
        delta=float(delta) if delta is not None else None,
    )
    return decision, ch, cp


def promote(tracking_uri: str, name: str, policy: PromotionPolicy, *, data_root: str | None = None,
            device: str = "auto", force: bool = False) -> PromotionOutcome:
    """Run the gate for one registered model: maybe move ``champion`` to the ``challenger`` version.

    Decided once per version: a challenger that already carries a ``gate.decision`` tag is not
    evaluated again (``force=True`` re-decides). Both versions are measured afresh on the same
    :func:`gate_data`; the decision, the reason, the data and both sets of figures are written as tags
    of the challenger version (``gate.*``); a promotion also tags the previous champion
    ``gate.replaced_by``.

    Raises:
        TrackingError: the server is not reachable (named).
    """
    import tempfile
    import time

    from memseg.inference import load_checkpoint
    from pipelines.registry import tracking_client

    client = tracking_client(tracking_uri)
    challenger = _alias_version(client, name, CHALLENGER)
    champion = _alias_version(client, name, CHAMPION)
    before = champion.version if champion is not None else None
    if challenger is None:
        return PromotionOutcome(name, None, before, before, None, note="no challenger version: nothing to decide")
    if champion is not None and champion.version == challenger.version:
        return PromotionOutcome(name, challenger.version, before, before, None,
                                note=f"challenger v{challenger.version} is already the champion")
    recorded = None if force else _recorded(challenger)
    if recorded is not None:
        decision, ch, cp = recorded
        return PromotionOutcome(name, challenger.version, before, before, decision, ch, cp,
                                challenger.tags.get(f"{TAG_PREFIX}data", ""),
                                note="decided earlier (gate tags on the version); --force to decide again")

    with tempfile.TemporaryDirectory(prefix="memseg-gate-") as tmp:
        ch_ckpt = _download_checkpoint(name, challenger.version, f"{tmp}/challenger")
        _, ch_cfg = load_checkpoint(ch_ckpt, "cpu")
        cp_ckpt = cp_cfg = None
        if champion is not None:
            cp_ckpt = _download_checkpoint(name, champion.version, f"{tmp}/champion")
            _, cp_cfg = load_checkpoint(cp_ckpt, "cpu")
        data = gate_data(ch_cfg, cp_cfg, policy, data_root)
        rule = {"top_k": ch_cfg.eval.top_k, "fpr_limit": ch_cfg.eval.aupro_fpr_limit}
        ch_metrics = measure(ch_ckpt, data, device=device, **rule)
        cp_metrics = measure(cp_ckpt, data, device=device, **rule) if cp_ckpt is not None else {}
    decision = decide(ch_metrics, cp_metrics if champion is not None else None, policy)

    tags = {
        **decision.as_tags(),
        **figure_tags(CHALLENGER, ch_metrics),
        **figure_tags(CHAMPION, cp_metrics),
        f"{TAG_PREFIX}data": data.description,
        f"{TAG_PREFIX}champion_version": before or "",
        f"{TAG_PREFIX}policy": policy.model_dump_json(),
        f"{TAG_PREFIX}decided_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    for key, value in tags.items():
        client.set_model_version_tag(name, challenger.version, key, value)
    after = before
    if decision.promote:
        client.set_registered_model_alias(name, CHAMPION, challenger.version)
        after = challenger.version
        if before is not None:
            client.set_model_version_tag(name, before, f"{TAG_PREFIX}replaced_by", challenger.version)
    return PromotionOutcome(name, challenger.version, before, after, decision, ch_metrics, cp_metrics,
                            data.description)
