"""What the sections measure on: the settings, a generated category, the config and the model.

The data is a generated MVTec-layout category (:func:`memseg.data.synthetic_mvtec.generate_dataset`)
written to a temporary folder, so the bench needs no download; ``weights="none"`` keeps the backbone
offline too.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from memseg.bench.figures import Clock, Figure
from memseg.bench.machine import available_cpus
from memseg.bench.report import BenchReport
from memseg.config import MemSegConfig, parse_overrides, resolve_for_category
from memseg.data.datasets import load_memory_images
from memseg.data.mvtec import Sample, list_category
from memseg.data.synthetic_mvtec import generate_dataset
from memseg.errors import ConfigError
from memseg.model import MemSeg, create_model


@dataclass(frozen=True)
class BenchSettings:
    """What to measure and how.

    Attributes:
        device: ``cpu`` or ``cuda`` (or ``cuda:N``).
        size: training/inference image size (px).
        source_size: size of the image files the data is decoded from (px), like MVTec's larger PNGs.
        quick: fewer and shorter runs (CI smoke test).
        repeats: timed runs per figure (None: 5, quick: 3).
        warmup: untimed runs before them.
        weights: ``model.backbone_weights`` (``none`` = offline random init, ``imagenet`` or a file).
        category: generated category (its foreground rule and defaults apply).
        memory_size: memory samples N for the memory build and the inference comparison.
        batch_size: training and batched-inference batch.
        workers: N of the "N workers" DataLoader figure (None: the CPUs this process may use).
        threads: torch intra-op threads (None: torch's default).
        seed: seed of the data generator and the synthesis.
        dtd_root: DTD root for texture sources (None: procedural textures).
        clock: ``wall`` (elapsed time, the figures a user sees) or ``cpu`` (this process's CPU time,
            all threads: on a machine shared with other jobs, a 1-thread run timed in CPU time
            approximates the idle machine; the DataLoader figures always use wall time, since their
            workers are other processes).
        overrides: ``section.field=value`` config changes applied to every figure (``--set``), e.g.
            ``model.memory_match=nearest`` to time that matching; the bench's own settings win on the
            fields they name (size, memory size, weights, batch, device).
    """

    device: str = "cpu"
    size: int = 256
    source_size: int = 384
    quick: bool = False
    repeats: int | None = None
    warmup: int = 1
    weights: str = "none"
    category: str = "bottle"
    memory_size: int = 30
    batch_size: int = 8
    workers: int | None = None
    threads: int | None = None
    seed: int = 0
    dtd_root: str | None = None
    clock: str = "wall"
    overrides: tuple[str, ...] = ()

    @property
    def timer(self) -> Clock:
        """The clock the figures are timed with (see ``clock``)."""
        return time.process_time if self.clock == "cpu" else time.perf_counter

    @property
    def runs(self) -> int:
        return self.repeats if self.repeats is not None else (3 if self.quick else 5)

    @property
    def n_workers(self) -> int:
        return self.workers if self.workers is not None else available_cpus()

    def check(self) -> None:
        """Raises ConfigError naming the flag of a setting the bench cannot run with."""
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            msg = f"--device {self.device}: CUDA is not available on this machine"
            raise ConfigError(msg)
        if self.device != "cpu" and not self.device.startswith("cuda"):
            msg = f"--device: expected cpu or cuda, got {self.device!r}"
            raise ConfigError(msg)
        if self.clock not in ("wall", "cpu"):
            msg = f"--clock: expected wall or cpu, got {self.clock!r}"
            raise ConfigError(msg)
        if self.size % 32:
            msg = f"--size: must be divisible by 32, got {self.size}"
            raise ConfigError(msg)
        # A wrong key or value is refused here, naming the field, before any data is generated.
        MemSegConfig().with_overrides(list(self.overrides))


@dataclass
class BenchData:
    """A generated category at ``source_size`` px: the memory images and the training images."""

    root: Path
    memory: list[Sample]
    train: list[Sample]


@dataclass(frozen=True)
class Section:
    """One part of the bench: the figures it declares and the function that records them.

    ``measure`` records every declared figure in the report, measured or skipped with the reason.
    """

    name: str
    figures: tuple[Figure, ...]
    measure: Callable[[BenchSettings, BenchData, BenchReport], None]


def make_bench_data(settings: BenchSettings, out: str | Path) -> BenchData:
    """Write a small MVTec-layout category at ``source_size`` px and split off the N memory images."""
    n_train = settings.memory_size + (8 if settings.quick else 24)
    root = generate_dataset(
        out, size=settings.source_size, categories=[settings.category], n_train=n_train, n_test_good=1,
        n_test_defect=1, seed=settings.seed,
    )
    files = list_category(root, settings.category)
    good = sorted((s for s in files.train if s.label == 0), key=lambda s: s.path.name)
    return BenchData(root, good[: settings.memory_size], good[settings.memory_size :])


def bench_config(settings: BenchSettings, data_root: str | Path, **overrides: object) -> MemSegConfig:
    """The resolved training config the bench uses: the authors' defaults at ``size`` on the bench data."""
    changes: dict[str, object] = {
        **parse_overrides(list(settings.overrides)),
        "data.root": str(data_root),
        "data.category": settings.category,
        "data.image_size": settings.size,
        # The bench times whichever source it is given; without a DTD root it chooses generated textures.
        "data.texture_source": "dtd" if settings.dtd_root else "procedural",
        "data.dtd_root": settings.dtd_root,
        "data.num_workers": 0,
        "model.backbone_weights": settings.weights,
        "model.memory_size": settings.memory_size,
        "train.batch_size": settings.batch_size,
        "train.seed": settings.seed,
        "train.device": settings.device,
    }
    changes.update(overrides)
    return resolve_for_category(MemSegConfig().with_overrides(changes))


def build_model(cfg: MemSegConfig, data: BenchData, device: torch.device) -> MemSeg:
    """MemSeg with its memory built from the N memory images, on ``device``."""
    model = create_model(cfg).to(device)
    model.build_memory(load_memory_images(data.memory, cfg.data.image_size).to(device))
    if device.type == "cuda" and cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def sync(device: torch.device) -> None:
    """Wait for the device's queued work, so a timed run ends when its work does."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
