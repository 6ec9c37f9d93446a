"""What the stages tell each other through MLflow: every tag, alias, prefix and metric key, defined once.

The chain sweep -> register -> promote -> report talks only through the tracking server. The sweep
stage writes a parent run per (sweep, category) and a child run per trial; registration reads them
and writes a model version; the gate reads the version and writes its decision; the report reads
all of it. Each name below is written by one stage and read by a later one, so a rename here is a
rename everywhere.

The readers (:class:`ParentRun`, :class:`TrialRun`, :class:`RegisteredVersion`, :class:`GateRecord`)
turn an MLflow entity into a typed record. A tag the writing stage always sets is required: when it
is missing, :class:`SchemaError` names the run or version and the tag, instead of a default standing
in for it (a default metric name would silently rank models on the wrong figure).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from mlflow.entities import Run
from mlflow.entities.model_registry import ModelVersion

from memseg.errors import MemSegError
from memseg.metrics import keys
from memseg.metrics.rank_correlation import MIN_TRIALS, RankCorrelation, val_test_rank_correlation

# --- experiment ---------------------------------------------------------------------------------------

EXPERIMENT_PREFIX = "memseg-sweep-"
TAG_SPEC = "sweep_spec"
TAG_NOTE = "mlflow.note.content"


# MLflow 3's UI opens an experiment without this tag as a GenAI one (traces overview); this value (the
# UI's "custom model development" kind) makes it open on the runs table. The UI's link to that table
# is ``#/experiments/<id>/runs?workflowType=machine_learning`` (:func:`runs_view_fragment`).
TAG_EXPERIMENT_KIND = "mlflow.experimentKind"
EXPERIMENT_KIND_TRAINING = "custom_model_development"


def runs_view_fragment(experiment_id: str) -> str:
    """The MLflow UI route (after ``#``) of an experiment's runs table, whatever kind the UI infers."""
    return f"/experiments/{experiment_id}/runs?workflowType=machine_learning"


def experiment_name(sweep_id: str) -> str:
    """The MLflow experiment of a sweep."""
    return f"{EXPERIMENT_PREFIX}{sweep_id}"


# --- run tags (sweep stage) -------------------------------------------------------------------------------

TAG_SWEEP = "sweep_id"
TAG_CATEGORY = "category"
TAG_TRIAL = "trial_id"
TAG_ROLE = "memseg.role"
ROLE_PARENT = "parent"
ROLE_TRIAL = "trial"
TAG_PARENT = "mlflow.parentRunId"
TAG_OUTCOME = "memseg.outcome"
# A trial ASHA stopped early (or the time budget ended) is a normal outcome, not a failure: its run
# ends FINISHED, its name ends in RUN_NAME_PRUNED_SUFFIX and PRUNED_FILTER finds it (docs/report.md).
OUTCOME_PRUNED = "pruned"
RUN_NAME_PRUNED_SUFFIX = " (pruned)"
PRUNED_FILTER = f"tags.`{TAG_OUTCOME}` = '{OUTCOME_PRUNED}'"
# MLflow's own "Created by", "Source" and commit columns, set on every run the pipeline creates.
TAG_USER = "mlflow.user"
TAG_SOURCE_NAME = "mlflow.source.name"
TAG_SOURCE_GIT_COMMIT = "mlflow.source.git.commit"
TAG_FAILURES = "memseg.num_failures"
TAG_ERROR = "memseg.error"
TAG_GIT = "git_commit"
TAG_FINGERPRINT = "dataset_fingerprint"
TAG_SPACE = "search_space"
TAG_NODE = "ray_node_id"
TAG_TRIAL_DIR = "trial_dir"
TAG_TUNE_METRIC = "tune_metric"
TAG_EXPERIMENT_PATH = "experiment_path"
TAG_BEST_TRIAL = "best_trial_id"
TAG_BEST_RUN = "best_run_id"
# What produced the figures, set on the parent run when the sweep stage creates it and stated by the
# report (:mod:`pipelines.provenance` writes and reads them): the dataset's kind (one of
# :data:`DATASET_KINDS`) and name, the fingerprint its folder carries (a generator's ``benchmark.json``;
# absent when it carries none), its image count per split (``dataset.images.train_good`` ...), and the
# default of every swept field (JSON object: field -> the value as its param text). The trials' own
# params (the resolved config, dotted) give image size, steps, backbone weights and validation split.
TAG_DATASET_KIND = "dataset.kind"
TAG_DATASET_NAME = "dataset.name"
TAG_DATASET_SOURCE_FINGERPRINT = "dataset.source_fingerprint"
TAG_DATASET_IMAGES = "dataset.images."
TAG_SWEPT_DEFAULTS = "swept_defaults"
DATASET_MVTEC = "MVTec AD"
DATASET_GENERATED = "generated"
DATASET_REALISTIC = "realistic benchmark"
DATASET_CUSTOM = "custom"
DATASET_KINDS = (DATASET_MVTEC, DATASET_GENERATED, DATASET_REALISTIC, DATASET_CUSTOM)
# Set on the parent run by the register stage; the report follows them to the version.
TAG_REGISTERED_MODEL = "registered_model"
TAG_REGISTERED_VERSION = "registered_version"

# The training loop reports ``best_<selection metric>`` (the best-so-far value, what best_model.pt
# scores); Tune, ASHA and Optuna maximise it and the parent run's ``tune_metric`` tag names it.
BEST_PREFIX = "best_"
# The parent run holds the chosen trial's figures under ``best.<val metric>`` (``best.val_pixel_auroc``),
# never the trials' own key, so a trial chart has no parent series and no row mixes two trials. Parents
# written before this carry the score under the trials' ``tune_metric`` key (:attr:`ParentRun.best_score`).
PARENT_BEST_PREFIX = "best."


def parent_best_metric(metric: str) -> str:
    """The parent run's key of the chosen trial's ``metric``: ``best_val_pixel_auroc`` -> ``best.val_pixel_auroc``."""
    return PARENT_BEST_PREFIX + metric.removeprefix(BEST_PREFIX)

# How well validation predicts test across a category's trials, on its parent run (sweep stage, at the
# end of the category's study). The validation side is each trial's ``tune_metric`` (the best-so-far
# selection metric, what its best_model.pt scored); the test side is that checkpoint's ``test_<metric>``,
# logged on the trial run under the same keys registration logs on the winner's run. Keyed by the test
# metric: ``val_test_spearman.test_pixel_auroc`` is rho, ``val_test_trials.test_pixel_auroc`` the number
# of trials with both figures; where rho is undefined no rho metric is logged and the tag
# ``val_test_reason.test_pixel_auroc`` says why.
VAL_TEST_SPEARMAN = "val_test_spearman."
VAL_TEST_TRIALS = "val_test_trials."
VAL_TEST_REASON = "val_test_reason."
# The test AUPRO finds separate defect regions, which pixel figures can rank differently, so rho
# against it is reported whatever the selection metric.
VAL_TEST_ALSO = keys.TEST_PIXEL_AUPRO

# The sweep's gain over the authors' defaults and over a training-free baseline (docs/report.md,
# "Sweep gain"). The sweep stage tags the parent run with the trial that ran the authors' defaults (the
# first point Optuna evaluates) and logs the training-free baseline's figures there
# (``baseline.val_pixel_auroc``, ``baseline.test_pixel_auroc`` ..., ``baseline.wall_time_s``); the report
# logs what it compares: ``defaults.<figure>``, ``chosen.<figure>``, ``sweep_gain.<figure>`` (chosen minus
# defaults), where ``<figure>`` is the validation selection metric (its best-so-far value, what ranked the
# trials) or its test counterpart, and the sweep's cost, ``sweep.trials`` and ``sweep.trial_hours``.
TAG_DEFAULTS_TRIAL = "defaults_trial_id"
BASELINE_PREFIX = "baseline."
BASELINE_WALL_TIME = f"{BASELINE_PREFIX}wall_time_s"
DEFAULTS_PREFIX = "defaults."
CHOSEN_PREFIX = "chosen."
GAIN_PREFIX = "sweep_gain."
SWEEP_TRIALS = "sweep.trials"
SWEEP_TRIAL_HOURS = "sweep.trial_hours"

# --- registered models and versions (register stage) ---------------------------------------------------------

MODEL_PREFIX = "memseg-"
CHAMPION = "champion"
CHALLENGER = "challenger"
LOGGED_MODEL_NAME = "memseg"
TAG_DATASET = "dataset"
TAG_RUN_ID = "run_id"
TAG_MODEL_ID = "model_id"
TAG_IMAGE_SIZE = "image_size"
TAG_BACKBONE = "backbone"
TAG_BACKBONE_WEIGHTS = "backbone_weights"
TAG_SELECTION_METRIC = "selection_metric"
# Test-split heat-map panels logged on the winner's trial run at registration, shown by the report.
HEATMAP_DIR = "test_heatmaps"
# The MLflow image key of a trial's validation panels (one stacked picture per evaluation that improved
# the trial's best; docs/report.md, "Heat-map panels").
HEATMAP_IMAGE_KEY = "heatmaps"

# The figures registration records (``val_``/``test_`` prefixed) and the gate compares (unprefixed).
REPORTED_METRICS = (keys.IMAGE_AUROC, keys.PIXEL_AUROC, keys.PIXEL_AUPRO, keys.IMAGE_F1_MAX, keys.PIXEL_F1_MAX)



def val_test_metrics(selection_metric: str) -> tuple[str, ...]:
    """The test figures rho is taken against: the selection metric's test counterpart, then test AUPRO.

    ``val_pixel_auroc`` -> ``("test_pixel_auroc", "test_pixel_aupro")``; ``val_pixel_aupro`` -> one entry.
    """
    counterpart = keys.TEST_PREFIX + selection_metric.removeprefix(keys.VAL_PREFIX)
    return (counterpart,) if counterpart == VAL_TEST_ALSO else (counterpart, VAL_TEST_ALSO)


def val_test_pairs(trials: Iterable[TrialRun], tune_metric: str, test_metric: str) -> list[tuple[float, float]]:
    """One ``(validation, test)`` pair per trial that reported ``tune_metric`` (NaN where a figure is missing)."""
    return [
        (run.metrics[tune_metric], run.metrics.get(test_metric, math.nan))
        for run in trials
        if math.isfinite(run.metrics.get(tune_metric, math.nan))
    ]


def val_test_correlation(trials: Iterable[TrialRun], tune_metric: str, test_metric: str) -> RankCorrelation:
    """Spearman rho of the trials' validation and test figures (NaN with the reason where undefined).

    When fewer than :data:`~memseg.metrics.rank_correlation.MIN_TRIALS` trials reported a validation
    figure, the sweep stage measures none of them on test; the reason then says so.
    """
    pairs = val_test_pairs(trials, tune_metric, test_metric)
    result = val_test_rank_correlation(pairs)
    if len(pairs) < MIN_TRIALS:
        reason = f"fewer than {MIN_TRIALS} trials with a validation figure: {len(pairs)}"
        return RankCorrelation(math.nan, result.n, reason)
    return result


# --- the gate (promote stage) -------------------------------------------------------------------------------

GATE_PREFIX = "gate."
GATE_DECISION = f"{GATE_PREFIX}decision"
GATE_REASON = f"{GATE_PREFIX}reason"
GATE_METRIC = f"{GATE_PREFIX}metric"
GATE_DELTA = f"{GATE_PREFIX}delta"
GATE_DATA = f"{GATE_PREFIX}data"
GATE_CHAMPION_VERSION = f"{GATE_PREFIX}champion_version"
GATE_POLICY = f"{GATE_PREFIX}policy"
GATE_DECIDED_AT = f"{GATE_PREFIX}decided_at"
GATE_REPLACED_BY = f"{GATE_PREFIX}replaced_by"
PROMOTED = "promoted"
REFUSED = "refused"


def gate_figure_tag(role: str, metric: str) -> str:
    """``gate.<role>.<metric>``: one figure of the challenger or the champion on the gate data."""
    return f"{GATE_PREFIX}{role}.{metric}"


# --- the report ------------------------------------------------------------------------------------------------

REPORT_ARTIFACT_DIR = "report"
PLOTS_ARTIFACT_DIR = "optuna"


# --- readers ---------------------------------------------------------------------------------------------------


class SchemaError(MemSegError):
    """An MLflow run or model version lacks what the stage that wrote it always writes."""


def is_number(text: str) -> bool:
    """True when a tag value parses as a float (``nan`` included)."""
    try:
        float(text)
    except ValueError:
        return False
    return True


def _required(tags: Mapping[str, str], tag: str, what: str) -> str:
    value = tags.get(tag)
    if not value:
        msg = f"{what} has no {tag!r} tag (it is written by the stage that made it; the run is incomplete)"
        raise SchemaError(msg)
    return value


def _numbers(tags: Mapping[str, str], prefix: str) -> dict[str, float]:
    return {k: float(v) for k, v in tags.items() if k.startswith(prefix) and is_number(v)}


def _figures(tags: Mapping[str, str], prefix: str) -> dict[str, float]:
    """The numeric tags under ``prefix``, keyed without it."""
    return {k.removeprefix(prefix): v for k, v in _numbers(tags, prefix).items()}


def selection_metric_of(tune_metric: str, what: str) -> str:
    """``best_val_pixel_aupro`` -> ``val_pixel_aupro``.

    Raises:
        SchemaError: naming ``what`` when the name is not a ``best_val_*`` metric.
    """
    selection = tune_metric.removeprefix(BEST_PREFIX)
    if selection == tune_metric or not selection.startswith(keys.VAL_PREFIX):
        msg = f"{what}: {TAG_TUNE_METRIC}={tune_metric!r} is not {BEST_PREFIX}{keys.VAL_PREFIX}<metric>"
        raise SchemaError(msg)
    return selection


def _val_test_of(metrics: Mapping[str, float], tags: Mapping[str, str], what: str) -> dict[str, RankCorrelation]:
    """The parent run's val/test rank correlations, keyed by test metric (empty before the study ended).

    A reason tag wins over a rho metric: a metric cannot be deleted, so a figure that became undefined
    on a later write is recorded by its tag.
    """
    reasons = {k.removeprefix(VAL_TEST_REASON): v for k, v in tags.items() if k.startswith(VAL_TEST_REASON)}
    rhos = {k.removeprefix(VAL_TEST_SPEARMAN): v for k, v in metrics.items() if k.startswith(VAL_TEST_SPEARMAN)}
    out: dict[str, RankCorrelation] = {}
    for metric in sorted({*reasons, *rhos}):
        n = metrics.get(VAL_TEST_TRIALS + metric)
        if n is None:
            msg = f"{what} has a val/test rank correlation for {metric} but no {VAL_TEST_TRIALS}{metric} metric"
            raise SchemaError(msg)
        if metric in reasons:
            out[metric] = RankCorrelation(math.nan, int(n), reasons[metric])
        else:
            out[metric] = RankCorrelation(rhos[metric], int(n))
    return out


@dataclass(frozen=True)
class DatasetFacts:
    """The dataset a category's trials ran on, as the sweep stage recorded it on the parent run.

    Attributes:
        kind: one of :data:`DATASET_KINDS`.
        name: what the data is (a generator and its settings, a benchmark and its version, a folder).
        source_fingerprint: the fingerprint the data folder carries ("" when it carries none).
        images: image count per split: ``train_good``, ``test_good``, ``test_defect``.
    """

    kind: str
    name: str
    source_fingerprint: str
    images: Mapping[str, int]

    def tags(self) -> dict[str, str]:
        tags = {TAG_DATASET_KIND: self.kind, TAG_DATASET_NAME: self.name}
        if self.source_fingerprint:
            tags[TAG_DATASET_SOURCE_FINGERPRINT] = self.source_fingerprint
        tags.update({f"{TAG_DATASET_IMAGES}{split}": str(n) for split, n in self.images.items()})
        return tags

    @classmethod
    def from_tags(cls, tags: Mapping[str, str], what: str) -> DatasetFacts | None:
        """None when the run predates these tags; :class:`SchemaError` for a kind that is not one of ours."""
        kind = tags.get(TAG_DATASET_KIND)
        if kind is None:
            return None
        if kind not in DATASET_KINDS:
            msg = f"{what}: {TAG_DATASET_KIND}={kind!r} is not one of {DATASET_KINDS}"
            raise SchemaError(msg)
        images = {}
        for key, value in tags.items():
            if key.startswith(TAG_DATASET_IMAGES):
                if not value.isdigit():
                    msg = f"{what}: {key}={value!r} is not an image count"
                    raise SchemaError(msg)
                images[key.removeprefix(TAG_DATASET_IMAGES)] = int(value)
        return cls(kind=kind, name=tags.get(TAG_DATASET_NAME, ""),
                   source_fingerprint=tags.get(TAG_DATASET_SOURCE_FINGERPRINT, ""), images=images)


def swept_defaults_of(tags: Mapping[str, str], what: str) -> dict[str, str] | None:
    """The parent run's swept fields with their defaults (param text); None when not recorded."""
    text = tags.get(TAG_SWEPT_DEFAULTS)
    if text is None:
        return None
    try:
        loaded = json.loads(text)
    except json.JSONDecodeError as exc:
        msg = f"{what}: {TAG_SWEPT_DEFAULTS} is not JSON ({exc})"
        raise SchemaError(msg) from None
    if not isinstance(loaded, dict) or not all(isinstance(v, str) for v in loaded.values()):
        msg = f"{what}: {TAG_SWEPT_DEFAULTS} is not a JSON object of field -> value text"
        raise SchemaError(msg)
    return {str(k): v for k, v in loaded.items()}


@dataclass(frozen=True)
class ParentRun:
    """A (sweep, category) parent run, as the sweep stage wrote it.

    ``best_trial_id`` is set when the category's study ended with a scored trial (``val_test`` too:
    rho per test metric, see :data:`VAL_TEST_SPEARMAN`); the ``registered_*`` fields once the register
    stage recorded its version there. ``dataset`` and ``swept_defaults`` are None on runs written
    before the sweep stage recorded them.
    """

    run_id: str
    status: str
    start_time: int
    sweep_id: str
    category: str
    tune_metric: str
    experiment_path: str
    dataset_fingerprint: str
    search_space: str
    best_trial_id: str | None = None
    best_run_id: str | None = None
    registered_model: str | None = None
    registered_version: str | None = None
    metrics: Mapping[str, float] = field(default_factory=dict)
    val_test: Mapping[str, RankCorrelation] = field(default_factory=dict)
    dataset: DatasetFacts | None = None
    swept_defaults: Mapping[str, str] | None = None
    # The trial that ran the authors' defaults (None when none did, or before the sweep stage tagged it).
    defaults_trial_id: str | None = None

    @classmethod
    def from_run(cls, run: Run) -> ParentRun:
        """Raises :class:`SchemaError` naming the run and the first missing tag."""
        tags = run.data.tags
        what = f"parent run {run.info.run_id}"
        if tags.get(TAG_ROLE) != ROLE_PARENT:
            msg = f"{what} is not a parent run ({TAG_ROLE}={tags.get(TAG_ROLE)!r})"
            raise SchemaError(msg)
        tune_metric = _required(tags, TAG_TUNE_METRIC, what)
        selection_metric_of(tune_metric, what)
        return cls(
            run_id=run.info.run_id,
            status=run.info.status,
            start_time=run.info.start_time,
            sweep_id=_required(tags, TAG_SWEEP, what),
            category=_required(tags, TAG_CATEGORY, what),
            tune_metric=tune_metric,
            experiment_path=_required(tags, TAG_EXPERIMENT_PATH, what),
            dataset_fingerprint=_required(tags, TAG_FINGERPRINT, what),
            search_space=_required(tags, TAG_SPACE, what),
            best_trial_id=tags.get(TAG_BEST_TRIAL) or None,
            best_run_id=tags.get(TAG_BEST_RUN) or None,
            registered_model=tags.get(TAG_REGISTERED_MODEL) or None,
            registered_version=tags.get(TAG_REGISTERED_VERSION) or None,
            metrics=dict(run.data.metrics),
            val_test=_val_test_of(run.data.metrics, tags, what),
            dataset=DatasetFacts.from_tags(tags, what),
            swept_defaults=swept_defaults_of(tags, what),
            defaults_trial_id=tags.get(TAG_DEFAULTS_TRIAL) or None,
        )

    @property
    def selection_metric(self) -> str:
        """The ``val_*`` metric the category's trials were ranked on."""
        return selection_metric_of(self.tune_metric, f"parent run {self.run_id}")

    @property
    def best_score(self) -> float | None:
        """The chosen trial's ``tune_metric`` (under the old key on parents written before ``best.*``)."""
        return self.metrics.get(parent_best_metric(self.tune_metric), self.metrics.get(self.tune_metric))

    @property
    def finished(self) -> bool:
        """The study ended (the run is FINISHED) with a best trial."""
        return self.status == "FINISHED" and self.best_trial_id is not None


@dataclass(frozen=True)
class TrialRun:
    """A trial's child run. ``outcome`` is None while the trial runs (the tag is set when it ends)."""

    run_id: str
    trial_id: str
    parent_run_id: str
    status: str
    start_time: int
    end_time: int | None
    outcome: str | None
    params: Mapping[str, str]
    metrics: Mapping[str, float]

    @classmethod
    def from_run(cls, run: Run) -> TrialRun:
        """Raises :class:`SchemaError` naming the run and the first missing tag."""
        tags = run.data.tags
        what = f"trial run {run.info.run_id}"
        return cls(
            run_id=run.info.run_id,
            trial_id=_required(tags, TAG_TRIAL, what),
            parent_run_id=_required(tags, TAG_PARENT, what),
            status=run.info.status,
            start_time=run.info.start_time,
            end_time=run.info.end_time,
            outcome=tags.get(TAG_OUTCOME) or None,
            params=dict(run.data.params),
            metrics=dict(run.data.metrics),
        )


@dataclass(frozen=True)
class GateRecord:
    """The gate's decision on a challenger version, as written by the promote stage.

    The decision tag is written last, so its presence means the rest was written too.
    """

    promoted: bool
    reason: str
    metric: str
    delta: float | None
    data: str
    decided_at: str
    challenger: Mapping[str, float]
    champion: Mapping[str, float]

    @classmethod
    def from_tags(cls, tags: Mapping[str, str], what: str) -> GateRecord | None:
        """None when the version was never decided; :class:`SchemaError` when a decision is incomplete."""
        decision = tags.get(GATE_DECISION)
        if decision is None:
            return None
        if decision not in (PROMOTED, REFUSED):
            msg = f"{what}: {GATE_DECISION}={decision!r} is neither {PROMOTED!r} nor {REFUSED!r}"
            raise SchemaError(msg)
        delta = tags.get(GATE_DELTA)
        return cls(
            promoted=decision == PROMOTED,
            reason=_required(tags, GATE_REASON, what),
            metric=_required(tags, GATE_METRIC, what),
            delta=float(delta) if delta is not None else None,
            data=_required(tags, GATE_DATA, what),
            decided_at=_required(tags, GATE_DECIDED_AT, what),
            challenger=_figures(tags, gate_figure_tag(CHALLENGER, "")),
            champion=_figures(tags, gate_figure_tag(CHAMPION, "")),
        )

    def value(self, role: str) -> float | None:
        """The primary metric's figure of ``role`` (``challenger``/``champion``), None when absent."""
        figures = self.challenger if role == CHALLENGER else self.champion
        return figures.get(self.metric)


@dataclass(frozen=True)
class RegisteredVersion:
    """A version of a ``memseg-<dataset>-<category>`` model, as the register stage wrote it."""

    name: str
    version: str
    source: str
    sweep_id: str
    trial_id: str
    category: str
    dataset: str
    selection_metric: str
    val_metrics: Mapping[str, float]
    test_metrics: Mapping[str, float]
    gate: GateRecord | None

    @classmethod
    def from_version(cls, version: ModelVersion) -> RegisteredVersion:
        """Raises :class:`SchemaError` naming the version and the first missing tag."""
        tags = version.tags
        what = f"model version {version.name}/{version.version}"
        selection = _required(tags, TAG_SELECTION_METRIC, what)
        if not selection.startswith(keys.VAL_PREFIX):
            msg = f"{what}: {TAG_SELECTION_METRIC}={selection!r} is not a {keys.VAL_PREFIX}* metric"
            raise SchemaError(msg)
        return cls(
            name=version.name,
            version=str(version.version),
            source=version.source or "",
            sweep_id=_required(tags, TAG_SWEEP, what),
            trial_id=_required(tags, TAG_TRIAL, what),
            category=_required(tags, TAG_CATEGORY, what),
            dataset=_required(tags, TAG_DATASET, what),
            selection_metric=selection,
            val_metrics=_numbers(tags, keys.VAL_PREFIX),
            test_metrics=_numbers(tags, keys.TEST_PREFIX),
            gate=GateRecord.from_tags(tags, what),
        )

    @property
    def gate_metric(self) -> str:
        """The selection metric without its split prefix: what the gate compares by default."""
        return self.selection_metric.removeprefix(keys.VAL_PREFIX)
