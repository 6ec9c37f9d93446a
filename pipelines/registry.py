"""Registration of a category's sweep winner in the MLflow Model Registry.

After a category's study ends, its best trial (chosen on the VALIDATION selection metric, never on
test) is evaluated once on the test split, logged as a pyfunc LoggedModel
(:mod:`pipelines.pyfunc_model`, models-from-code, the checkpoint as artifact) and registered as a
new version of ``memseg-<dataset>-<category>`` with the alias ``challenger``. The ``champion`` alias
is the promotion gate's business (:mod:`pipelines.promotion`); stages are never used.

Idempotent by construction: a version is identified by its ``sweep_id`` + ``trial_id`` tags, so a
second registration of the same winner finds it and returns it without evaluating, logging or
creating anything. A LoggedModel left behind by a crash between logging and registering is found
the same way (LoggedModel tags) and reused.

MLflow 3 specifics: the LoggedModel is created with
``initialize_logged_model(source_run_id=<the winner's trial run>)`` and filled by
``mlflow.pyfunc.log_model(model_id=...)``, so the winner's finished run is linked without being
re-opened (re-opening would change its status and end time).
"""

from __future__ import annotations

import logging
import math
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import cv2
import mlflow
import numpy as np
import pandas as pd
import pyarrow.fs
from mlflow import MlflowClient
from mlflow.entities import LoggedModel, LoggedModelStatus
from mlflow.entities.model_registry import ModelVersion, RegisteredModel
from mlflow.exceptions import MlflowException

from memseg.config import MemSegConfig
from memseg.data.mvtec import list_category, read_image
from memseg.errors import MemSegError
from memseg.evaluation import evaluate_split
from memseg.inference import load_checkpoint
from memseg.metrics import image_scores, keys
from memseg.training import resolve_device
from memseg.training.checkpoint import BEST_MODEL_FILE, config_from_payload, load_model_file
from memseg.visualize import panel
from pipelines import pyfunc_model as pm
from pipelines import schema
from pipelines.schema import (
    CHALLENGER,
    HEATMAP_DIR,
    LOGGED_MODEL_NAME,
    REPORTED_METRICS,
    ROLE_PARENT,
    TAG_CATEGORY,
    TAG_DATASET,
    TAG_PARENT,
    TAG_ROLE,
    TAG_SWEEP,
    TAG_TRIAL,
    ParentRun,
    RegisteredVersion,
    TrialRun,
    experiment_name,
)
from pipelines.tracking import check_tracking_store, find_runs, git_commit

log = logging.getLogger(__name__)


class RegistrationError(MemSegError):
    """A winner cannot be registered (no checkpoint, no scored trial, ...)."""


# --- names and provenance ----------------------------------------------------------------------------


def model_name(dataset: str, category: str) -> str:
    """``memseg-<dataset>-<category>``, lower case, characters outside ``[a-z0-9_-]`` replaced by ``-``."""
    def clean(text: str) -> str:
        return re.sub(r"[^a-z0-9_-]+", "-", text.lower()).strip("-") or "data"

    return f"{schema.MODEL_PREFIX}{clean(dataset)}-{clean(category)}"


def dataset_name(data_root: str | Path) -> str:
    """A dataset's short name: its root folder's name (``/data/mvtec`` -> ``mvtec``)."""
    return Path(str(data_root).rstrip("/")).name or "data"


def tracking_client(tracking_uri: str) -> MlflowClient:
    """An ``MlflowClient`` for ``tracking_uri`` after a fast reachability check.

    The fluent ``mlflow.*`` calls used for LoggedModels point at the same URI (process-global: the
    pipeline talks to one tracking server).

    Raises:
        TrackingError: naming the server when it does not answer.
    """
    check_tracking_store(tracking_uri)
    mlflow.set_tracking_uri(tracking_uri)
    return MlflowClient(tracking_uri=tracking_uri)


# --- the winner -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Winner:
    """The best trial of one category's study, as registration needs it.

    Attributes:
        sweep_id / category / trial_id: identity (the idempotency key is sweep_id + trial_id).
        checkpoint: its ``best_model.pt`` (weights, memory bank and config).
        val_metrics: the validation figures it was chosen on (``val_*`` keys).
        experiment_id: the sweep's MLflow experiment (the LoggedModel goes there).
        selection_metric: the ``val_*`` metric that chose it (the checkpoint's ``eval.selection_metric``).
        run_id: the trial's MLflow run (the LoggedModel's source run), if tracked.
        parent_run_id: the (sweep, category) run, tagged with the registration, if tracked.
        dataset / dataset_fingerprint: which data it was trained on.
    """

    sweep_id: str
    category: str
    trial_id: str
    checkpoint: Path
    val_metrics: Mapping[str, float]
    experiment_id: str
    selection_metric: str
    run_id: str | None = None
    parent_run_id: str | None = None
    dataset: str = "data"
    dataset_fingerprint: str = ""


@dataclass(frozen=True)
class Registration:
    """A registered version of a category's model."""

    name: str
    version: str
    model_uri: str
    created: bool
    test_metrics: dict[str, float] = field(default_factory=dict)

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


def sweep_experiment_id(client: MlflowClient, sweep_id: str) -> str:
    """The MLflow experiment of a sweep.

    Raises:
        RegistrationError: there is no such experiment on this server.
    """
    exp = client.get_experiment_by_name(experiment_name(sweep_id))
    if exp is None:
        msg = f"sweep {sweep_id!r}: no MLflow experiment {experiment_name(sweep_id)!r} on this tracking server"
        raise RegistrationError(msg)
    return exp.experiment_id


def parent_runs(client: MlflowClient, experiment_id: str, sweep_id: str) -> list[ParentRun]:
    """Every category's parent run of a sweep (SchemaError when one lacks a tag the sweep writes)."""
    runs = find_runs(client, experiment_id, {TAG_SWEEP: sweep_id, TAG_ROLE: ROLE_PARENT})
    return [ParentRun.from_run(r) for r in runs]


def parent_run(client: MlflowClient, experiment_id: str, sweep_id: str, category: str) -> ParentRun | None:
    """The (sweep, category) parent run, or None."""
    runs = find_runs(client, experiment_id, {TAG_SWEEP: sweep_id, TAG_CATEGORY: category, TAG_ROLE: ROLE_PARENT})
    return ParentRun.from_run(min(runs, key=lambda r: r.info.start_time)) if runs else None


def trial_runs(client: MlflowClient, experiment_id: str, parent_run_id: str) -> list[TrialRun]:
    """The child (trial) runs of a parent run."""
    return [TrialRun.from_run(r) for r in find_runs(client, experiment_id, {TAG_PARENT: parent_run_id})]


def locate_checkpoint(experiment_path: str, trial_id: str, workdir: Path) -> Path:
    """The ``best_model.pt`` of a trial in the Tune experiment folder (local path or bucket URI).

    The sweep keeps the trial's latest reported checkpoints (``checkpoint_NNNNNN``); ``best_model.pt`` in
    the latest one is the trial's best-on-validation weights. A bucket file is copied to ``workdir``.

    Raises:
        RegistrationError: naming the folder searched when there is no such file.
    """
    fs: pyarrow.fs.FileSystem
    if "://" in experiment_path:
        fs, root = pyarrow.fs.FileSystem.from_uri(experiment_path)
    else:
        fs, root = pyarrow.fs.LocalFileSystem(), str(Path(experiment_path).resolve())
    selector = pyarrow.fs.FileSelector(root, allow_not_found=True)
    trial_dirs = [i.path for i in fs.get_file_info(selector)
                  if i.type == pyarrow.fs.FileType.Directory and i.path.rstrip("/").endswith(f"_{trial_id}")]
    candidates: list[str] = []
    for folder in trial_dirs:
        checkpoints = sorted(
            i.path for i in fs.get_file_info(pyarrow.fs.FileSelector(folder))
            if i.type == pyarrow.fs.FileType.Directory and Path(i.path).name.startswith("checkpoint_")
        )
        candidates += [f"{c}/{BEST_MODEL_FILE}" for c in reversed(checkpoints)]
    for file in candidates:
        if fs.get_file_info(file).type == pyarrow.fs.FileType.File:
            if isinstance(fs, pyarrow.fs.LocalFileSystem):
                return Path(file)
            local = Path(workdir) / trial_id / BEST_MODEL_FILE
            local.parent.mkdir(parents=True, exist_ok=True)
            with fs.open_input_stream(file) as src, local.open("wb") as dst:
                while chunk := src.read(1 << 20):
                    dst.write(chunk)
            return local
    msg = f"trial {trial_id}: no checkpoint_*/{BEST_MODEL_FILE} under {experiment_path} (trial folder *_{trial_id})"
    raise RegistrationError(msg)


def find_winner(tracking_uri: str, sweep_id: str, category: str, *, workdir: Path) -> Winner:
    """The best trial of a category's finished study, read from MLflow (+ its checkpoint from Tune storage).

    The parent run's ``best_trial_id`` tag (set by the sweep) names it; without the tag the child
    run with the highest ``tune_metric`` (the parent's tag: the best-so-far validation metric) wins.
    Its validation figures are read from the checkpoint itself, so they belong to exactly the
    registered weights.

    Raises:
        RegistrationError: no such sweep/category, or no scored trial.
        SchemaError: the parent run lacks a tag the sweep writes (named).
    """
    client = tracking_client(tracking_uri)
    experiment_id = sweep_experiment_id(client, sweep_id)
    parent = parent_run(client, experiment_id, sweep_id, category)
    if parent is None:
        msg = f"sweep {sweep_id!r} has no run for category {category!r}"
        raise RegistrationError(msg)
    children = trial_runs(client, experiment_id, parent.run_id)
    trial_id = parent.best_trial_id
    if trial_id is None:
        metric = parent.tune_metric
        scored = [r for r in children if math.isfinite(r.metrics.get(metric, math.nan))]
        if not scored:
            msg = f"sweep {sweep_id!r}, category {category!r}: no trial reported {metric}"
            raise RegistrationError(msg)
        trial_id = max(scored, key=lambda r: r.metrics[metric]).trial_id
    run = next((r for r in children if r.trial_id == trial_id), None)
    checkpoint = locate_checkpoint(parent.experiment_path, trial_id, workdir)
    payload = load_model_file(checkpoint)
    cfg = config_from_payload(payload, checkpoint)
    return Winner(
        sweep_id=sweep_id,
        category=category,
        trial_id=trial_id,
        checkpoint=checkpoint,
        val_metrics={k: float(v) for k, v in payload["metrics"].items() if k.startswith(keys.VAL_PREFIX)},
        experiment_id=experiment_id,
        selection_metric=cfg.eval.selection_metric,
        run_id=run.run_id if run is not None else None,
        parent_run_id=parent.run_id,
        dataset=dataset_name(cfg.data.root),
        dataset_fingerprint=parent.dataset_fingerprint,
    )


def find_version(client: MlflowClient, name: str, sweep_id: str, trial_id: str) -> ModelVersion | None:
    """The registered version of ``name`` holding this sweep's trial, or None."""
    found = client.search_model_versions(
        f"name = '{name}' and tags.{TAG_SWEEP} = '{sweep_id}' and tags.{TAG_TRIAL} = '{trial_id}'"
    )
    return min(found, key=lambda v: int(v.version)) if found else None


def _find_logged_model(client: MlflowClient, experiment_id: str, sweep_id: str, trial_id: str) -> LoggedModel | None:
    """The trial's READY LoggedModel, to reuse; any other (PENDING or FAILED) one is deleted.

    A LoggedModel stays PENDING when the register stage was killed while filling it: its artifacts
    may be partial, so it is not reused, and deleting it keeps the experiment's model list clean.
    The register stage runs from one driver, so no other process is filling it at the same time.
    """
    models = mlflow.search_logged_models(
        experiment_ids=[experiment_id],
        filter_string=f"tags.{TAG_SWEEP} = '{sweep_id}' AND tags.{TAG_TRIAL} = '{trial_id}'",
        output_format="list",
    )
    for model in models:
        if model.status != LoggedModelStatus.READY:
            log.info("deleting LoggedModel %s (%s) left by an interrupted registration of trial %s",
                     model.model_id, model.status, trial_id)
            client.delete_logged_model(model.model_id)
    ready = [m for m in models if m.status == LoggedModelStatus.READY]
    return ready[0] if ready else None


# --- test evaluation -------------------------------------------------------------------------------------


@dataclass
class TestEvaluation:
    """The winner's test figures (``test_*`` keys) and a few heat-map panels (image | GT | overlay)."""

    metrics: dict[str, float]
    panels: list[tuple[str, np.ndarray]]


def evaluate_on_test(
    checkpoint: Path, *, data_root: str | None = None, device: str = "auto", n_panels: int = 4
) -> TestEvaluation:
    """Evaluate a checkpoint ONCE on its category's test split (reported, never used for a choice).

    Args:
        checkpoint: a ``best_model.pt``.
        data_root: where the dataset is on this machine; None = the root stored in the checkpoint.
        device: ``auto``, ``cpu`` or ``cuda[:N]``.
        n_panels: heat-map panels kept: the highest-scored defective images, then the top good one.
    """
    dev = resolve_device(device)
    model, cfg = load_checkpoint(checkpoint, dev)
    if data_root:
        cfg = cfg.with_overrides({"data.root": data_root})
    evaluation = evaluate_split(model, cfg, "test", dev, per_defect_type=False)
    test, maps = evaluation.data, evaluation.maps
    out = {f"{keys.TEST_PREFIX}{k}": float(v) for k, v in evaluation.metrics.items() if k in REPORTED_METRICS}
    scores = image_scores(maps, cfg.eval.top_k)
    defect = [i for i in np.argsort(-scores) if test.labels[i] == 1][: max(n_panels - 1, 0)]
    good = [i for i in np.argsort(-scores) if test.labels[i] == 0][:1]
    panels = []
    for i in [*defect, *good][:n_panels]:
        image = (test.images[i].permute(1, 2, 0).numpy() * 255.0).round().astype(np.uint8)
        name = f"{i:03d}_{test.defect_types[i]}_score{scores[i]:.3f}.png"
        panels.append((name, panel(image, test.masks[i], maps[i])))
    return TestEvaluation(out, panels)


# --- registration ------------------------------------------------------------------------------------------


def _fmt(value: float) -> str:
    return "nan" if not math.isfinite(value) else f"{value:.6f}"


def _version_tags(
    winner: Winner, cfg: MemSegConfig, test_metrics: Mapping[str, float], model_id: str
) -> dict[str, str]:
    tags = {
        TAG_SWEEP: winner.sweep_id,
        TAG_TRIAL: winner.trial_id,
        TAG_CATEGORY: winner.category,
        schema.TAG_RUN_ID: winner.run_id or "",
        schema.TAG_MODEL_ID: model_id,
        TAG_DATASET: winner.dataset,
        schema.TAG_FINGERPRINT: winner.dataset_fingerprint,
        schema.TAG_GIT: git_commit(),
        schema.TAG_IMAGE_SIZE: str(cfg.data.image_size),
        schema.TAG_BACKBONE: cfg.model.backbone,
        schema.TAG_BACKBONE_WEIGHTS: cfg.model.backbone_weights,
        schema.TAG_SELECTION_METRIC: winner.selection_metric,
    }
    tags.update({k: _fmt(float(v)) for k, v in winner.val_metrics.items() if k.startswith(keys.VAL_PREFIX)})
    tags.update({k: _fmt(float(v)) for k, v in test_metrics.items()})
    return tags


def _pip_requirements() -> list[str]:
    # Explicit, so MLflow does not infer them by running the model in a subprocess. ``memseg`` is
    # this project's package (install it from the repository; `--env-manager local` uses the
    # current environment as is).
    reqs = ["memseg"]
    for dist in ("torch", "timm", "numpy", "opencv-python-headless", "pandas", "pydantic", "pyyaml", "mlflow"):
        try:
            reqs.append(f"{dist}=={version(dist)}")
        except PackageNotFoundError:
            reqs.append(dist)
    return reqs


def log_pyfunc(winner: Winner, cfg: MemSegConfig, input_image: np.ndarray, tags: Mapping[str, str]) -> LoggedModel:
    """Create the LoggedModel (linked to the winner's run) and fill it with the pyfunc; returns it."""
    params = {k: str(v) for k, v in cfg.flatten().items()}
    logged = mlflow.initialize_logged_model(
        name=LOGGED_MODEL_NAME,
        source_run_id=winner.run_id,
        tags=dict(tags),
        params=params,
        experiment_id=winner.experiment_id,
    )
    mlflow.pyfunc.log_model(
        name=LOGGED_MODEL_NAME,
        model_id=logged.model_id,
        python_model=str(Path(pm.__file__).resolve()),
        artifacts={pm.CHECKPOINT_ARTIFACT: str(winner.checkpoint)},
        signature=pm.signature(),
        model_config=pm.DEFAULT_MODEL_CONFIG,
        input_example=pd.DataFrame({pm.IMAGE_COLUMN: [pm.encode_png(input_image)]}),
        pip_requirements=_pip_requirements(),
    )
    return mlflow.get_logged_model(logged.model_id)


def _example_image(cfg: MemSegConfig, data_root: str | None) -> np.ndarray:
    files = list_category(data_root or cfg.data.root, cfg.data.category)
    sample = next((s for s in files.test if s.label == 1), files.test[0])
    return read_image(sample.path, cfg.data.image_size)


def register_winner(
    tracking_uri: str, winner: Winner, *, data_root: str | None = None, device: str = "auto"
) -> Registration:
    """Register ``winner`` as a version of ``memseg-<dataset>-<category>`` with alias ``challenger``.

    Idempotent: when a version with this sweep_id + trial_id exists it is returned as is
    (``created=False``); nothing is evaluated or logged.

    Args:
        tracking_uri: the tracking server (its registry holds the models).
        winner: the best trial.
        data_root: the dataset root on this machine (None = the checkpoint's).
        device: where to evaluate the test split.

    Raises:
        RegistrationError: the checkpoint is missing.
        TrackingError: the server is not reachable (named).
    """
    client = tracking_client(tracking_uri)
    name = model_name(winner.dataset, winner.category)
    existing = find_version(client, name, winner.sweep_id, winner.trial_id)
    if existing is not None:
        log.info("%s: sweep %s trial %s is already version %s", name, winner.sweep_id, winner.trial_id,
                 existing.version)
        _ensure_challenger(client, name, existing.version, created=False)
        recorded = RegisteredVersion.from_version(existing)
        return Registration(name, recorded.version, recorded.source, False, dict(recorded.test_metrics))
    if not Path(winner.checkpoint).is_file():
        msg = f"{winner.category}: best trial {winner.trial_id} has no checkpoint at {winner.checkpoint}"
        raise RegistrationError(msg)

    _, cfg = load_checkpoint(winner.checkpoint, "cpu")
    evaluation = evaluate_on_test(Path(winner.checkpoint), data_root=data_root, device=device)
    logged = _find_logged_model(client, winner.experiment_id, winner.sweep_id, winner.trial_id)
    if logged is None:
        base_tags = _version_tags(winner, cfg, evaluation.metrics, model_id="")
        base_tags.pop(schema.TAG_MODEL_ID)
        logged = log_pyfunc(winner, cfg, _example_image(cfg, data_root), base_tags)
    tags = _version_tags(winner, cfg, evaluation.metrics, logged.model_id)

    _ensure_registered_model(client, name, winner)
    created = client.create_model_version(
        name, source=f"models:/{logged.model_id}", run_id=winner.run_id, tags=tags, model_id=logged.model_id,
        description=f"Best trial {winner.trial_id} of sweep {winner.sweep_id} ({winner.selection_metric}).",
    )
    _ensure_challenger(client, name, created.version, created=True)
    _record_on_runs(client, winner, name, created.version, evaluation)
    log.info("%s: registered version %s (sweep %s, trial %s)", name, created.version, winner.sweep_id,
             winner.trial_id)
    return Registration(name, created.version, f"models:/{logged.model_id}", True, evaluation.metrics)


def register_category(
    tracking_uri: str, sweep_id: str, category: str, *, workdir: Path, data_root: str | None = None,
    device: str = "auto",
) -> Registration:
    """The register stage for one category: find its sweep winner and register it (idempotent)."""
    winner = find_winner(tracking_uri, sweep_id, category, workdir=workdir)
    return register_winner(tracking_uri, winner, data_root=data_root, device=device)


def _ensure_registered_model(client: MlflowClient, name: str, winner: Winner) -> None:
    try:
        model = client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(
            name,
            tags={TAG_CATEGORY: winner.category, TAG_DATASET: winner.dataset},
            description=model_description(name, winner),
        )
        return
    if "models:/<name>" in (model.description or ""):  # written before the URI was spelled out
        client.update_registered_model(name, description=model_description(name, winner))


def model_description(name: str, winner: Winner) -> str:
    """The registered model's description (Markdown): its real ``models:/`` URI, serving and a request."""
    uri = f"models:/{name}@{schema.CHAMPION}"
    return _DESCRIPTION.format(dataset=winner.dataset, category=winner.category, uri=uri,
                               champion=schema.CHAMPION, challenger=CHALLENGER)


_DESCRIPTION = """MemSeg for {dataset}/{category}. Aliases: `{champion}` (serving), `{challenger}` (latest winner).

Load: `mlflow.pyfunc.load_model("{uri}")`

Serve: `mlflow models serve -m {uri} --env-manager local -p 5001`

Request (one base64 PNG/JPEG per row; docs/serving.md):

```python
import base64, json, urllib.request
image = base64.b64encode(open("image.png", "rb").read()).decode()
body = {{"dataframe_split": {{"columns": ["image"], "data": [[image]]}}}}
req = urllib.request.Request("http://127.0.0.1:5001/invocations", data=json.dumps(body).encode(),
                             headers={{"Content-Type": "application/json"}})
print(json.load(urllib.request.urlopen(req))["predictions"][0]["score"])
```
"""


def _ensure_challenger(client: MlflowClient, name: str, version: str, *, created: bool) -> None:
    """A new version becomes ``challenger``; an old one only when the alias is missing (crash repair)."""
    if created or CHALLENGER not in client.get_registered_model(name).aliases:
        client.set_registered_model_alias(name, CHALLENGER, version)


def _record_on_runs(
    client: MlflowClient, winner: Winner, name: str, version: str, evaluation: TestEvaluation
) -> None:
    """Test figures and heat-maps on the winner's run; the registration on the category's parent run."""
    if winner.run_id:
        for key, value in evaluation.metrics.items():
            client.log_metric(winner.run_id, key, value)
        with tempfile.TemporaryDirectory() as tmp:
            for file, image in evaluation.panels:
                cv2.imwrite(str(Path(tmp) / file), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
            if evaluation.panels:
                client.log_artifacts(winner.run_id, tmp, HEATMAP_DIR)
    if winner.parent_run_id:
        for key, value in evaluation.metrics.items():  # best.test_*: the trial charts' test_* stay the trials'
            client.log_metric(winner.parent_run_id, schema.parent_best_metric(key), value)
        for key, text in {
            schema.TAG_BEST_TRIAL: winner.trial_id,
            schema.TAG_BEST_RUN: winner.run_id or "",
            schema.TAG_REGISTERED_MODEL: name,
            schema.TAG_REGISTERED_VERSION: version,
        }.items():
            client.set_tag(winner.parent_run_id, key, text)


def registered_models(
    client: MlflowClient, *, category: str | None = None, dataset: str | None = None
) -> list[str]:
    """Names of the ``memseg-*`` registered models, optionally of one category and/or dataset.

    Raises:
        RegistrationError: nothing matches, or ``category`` matches several datasets without ``dataset``.
    """
    models: list[RegisteredModel] = []
    token = None
    while True:
        page = client.search_registered_models(filter_string=f"name LIKE '{schema.MODEL_PREFIX}%'", page_token=token)
        models.extend(page)
        token = page.token
        if not token:
            break
    names = sorted(
        m.name for m in models
        if (category is None or m.tags.get(TAG_CATEGORY) == category)
        and (dataset is None or m.tags.get(TAG_DATASET) == dataset)
    )
    if not names:
        what = " ".join(f"{k}={v}" for k, v in (("category", category), ("dataset", dataset)) if v) or "memseg-*"
        msg = f"no registered model for {what} on this tracking server"
        raise RegistrationError(msg)
    if category is not None and dataset is None and len(names) > 1:
        msg = f"category {category!r} has models for several datasets ({', '.join(names)}): pass --dataset or --model"
        raise RegistrationError(msg)
    return names
