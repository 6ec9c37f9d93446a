"""Training batches (normal + synthetic), the fixed validation set and the test set.

- :class:`ImageCache`: decode + resize every image once per process (``data.cache_images``).
- :class:`TrainDataset` + :class:`BalancedBatchSampler`: an endless stream of batches in which
  exactly ``round(synthesis.synthetic_ratio * batch_size)`` images carry a synthetic anomaly (the
  authors: 4 of 8). The sampler decides which positions are synthetic, so the ratio holds for every
  batch, not only on average. The anomalies are drawn from ``worker_rng(train.seed, worker_id,
  epoch)``: each DataLoader worker draws different anomalies and a run repeats for the same seed.
- :func:`build_validation_set`: the held-out ``train/good`` images, each kept clean (label 0) and
  also given ``data.val_anomalies_per_image`` anomalies drawn with the FIXED ``eval.val_seed``
  (label 1), by the training synthesis or by the held-out painter (``data.val_anomaly_source``).
  It does not depend on ``train.seed``, so runs with different training seeds are selected on the
  same images.
- :func:`load_test_set`: the ``test/`` split with its ground-truth masks.

Images leave this module as float tensors in [0, 1], ``(3, H, W)`` RGB; ImageNet normalisation is
the model's business (docs/architecture.md). See docs/model.md, "Anomaly synthesis" and
"Validation and selection".
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from torch.utils.data.dataloader import _BaseDataLoaderIter

from memseg.config import MemSegConfig
from memseg.data.mvtec import CategoryFiles, Sample, list_category, read_image, read_mask
from memseg.data.splits import Splits, make_splits
from memseg.errors import ConfigError
from memseg.synthesis import AnomalyGenerator, create_texture_source, worker_rng
from memseg.synthesis.validation_defects import ValidationDefectPainter

log = logging.getLogger(__name__)

NORMAL_TYPE = "good"
SYNTHETIC_TYPE = "synthetic"
# Validation anomalies whose Perlin mask came out empty (possible at high thresholds) are redrawn this often
# before giving up; an empty "anomaly" labelled 1 would only add label noise to the image AUROC.
_VAL_MAX_REDRAWS = 20


class ImageCache:
    """Decoded, resized RGB images keyed by ``(path, size)``; thread-safe, one per process.

    DataLoader workers started by ``fork`` inherit what the parent process already loaded.
    """

    def __init__(self) -> None:
        self._images: dict[tuple[str, int], np.ndarray] = {}
        self._lock = threading.Lock()

    def get(self, path: str | Path, size: int) -> np.ndarray:
        """``read_image(path, size)``, decoded once. The array is read-only: copy before editing."""
        key = (str(Path(path).resolve()), int(size))
        with self._lock:
            image = self._images.get(key)
        if image is None:
            image = read_image(path, size)
            image.setflags(write=False)
            with self._lock:
                self._images[key] = image
        return image

    def clear(self) -> None:
        with self._lock:
            self._images.clear()

    def __len__(self) -> int:
        return len(self._images)


_CACHE = ImageCache()


def load_images(paths: Sequence[str | Path], size: int, *, cache: bool = True) -> np.ndarray:
    """Decode (or fetch from the cache) several images.

    Returns:
        uint8 array ``(N, size, size, 3)``, RGB.
    """
    read = _CACHE.get if cache else read_image
    if not paths:
        return np.zeros((0, size, size, 3), np.uint8)
    return np.stack([read(p, size) for p in paths])


def to_tensor(images_u8: np.ndarray) -> torch.Tensor:
    """uint8 ``(H, W, 3)`` or ``(N, H, W, 3)`` -> float32 in [0, 1], ``(3, H, W)`` or ``(N, 3, H, W)``.

    One NumPy pass (transpose, convert, divide by 255, bit-identical to ``t.float() / 255``) rather
    than torch ops: a per-sample torch op opens an intra-op thread region, and in a main process
    that shares its cores (``data.num_workers=0``, a busy node) waiting for those threads cost
    2.5x the conversion itself (memseg bench).
    """
    arr = np.asarray(images_u8)
    chw = arr.transpose(2, 0, 1) if arr.ndim == 3 else arr.transpose(0, 3, 1, 2)
    out = np.empty(chw.shape, dtype=np.float32)
    np.divide(chw, np.float32(255.0), out=out)
    return torch.from_numpy(out)


def _anomaly_generator(cfg: MemSegConfig) -> AnomalyGenerator:
    texture = create_texture_source(cfg.data.texture_source, cfg.data.dtd_root)
    return AnomalyGenerator(cfg.synthesis, texture, cfg.data.category)


def category_splits(cfg: MemSegConfig) -> tuple[CategoryFiles, Splits]:
    """List ``data.root/data.category`` and split ``train/good`` into memory / train / validation.

    ``cfg`` must be resolved (``model.memory_size`` set). The split uses the fixed ``eval.val_seed``,
    not ``train.seed``: it is a property of the data, so runs with different training seeds hold out
    the same memory and validation images and are selected on the same validation set.
    """
    if cfg.model.memory_size is None:
        msg = "model.memory_size: not set; resolve the config for its category first (resolve_for_category)"
        raise ConfigError(msg)
    files = list_category(cfg.data.root, cfg.data.category)
    splits = make_splits(
        files, cfg.model.memory_size, cfg.model.memory_selection, cfg.data.val_fraction,
        cfg.data.val_min_images, cfg.eval.val_seed,
    )
    return files, splits


# --------------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ItemKey:
    """What the sampler asks of the dataset: image ``index``, with a synthetic anomaly or not, in ``epoch``."""

    index: int
    synthetic: bool
    epoch: int


def synthetic_count(batch_size: int, ratio: float) -> int:
    """Synthetic images per batch: ``round(ratio * batch_size)``, at least 1 and at most ``batch_size - 1``."""
    return min(batch_size - 1, max(1, round(ratio * batch_size)))


class BalancedBatchSampler(Sampler[list[ItemKey]]):
    """Endless batches of :class:`ItemKey` with a fixed number of synthetic positions per batch.

    An epoch is ``ceil(n_images / batch_size)`` batches over a permutation drawn from
    ``(seed, epoch)``; when the batches need more images than there are (tiny sets) further
    permutations are appended. Within a batch the synthetic positions are drawn at random too, so
    position carries no information. Because the order depends only on ``(seed, step)``, a run
    resumed at step ``s`` sees the same batches as an uninterrupted one (``start_step=s``).

    Args:
        n_images: size of the training split.
        batch_size: images per batch.
        synthetic_ratio: share of each batch that gets a synthetic anomaly.
        seed: ``train.seed``.
        start_step: index of the first batch to yield.
    """

    def __init__(
        self, n_images: int, batch_size: int, synthetic_ratio: float, seed: int, start_step: int = 0
    ) -> None:
        if n_images < 1:
            msg = "the training split is empty"
            raise ValueError(msg)
        self.n_images = n_images
        self.batch_size = batch_size
        self.n_synthetic = synthetic_count(batch_size, synthetic_ratio)
        self.seed = seed
        self.start_step = start_step
        self.batches_per_epoch = -(-n_images // batch_size)

    def epoch_batches(self, epoch: int) -> list[list[ItemKey]]:
        rng = np.random.default_rng([self.seed % 2**63, epoch, 0x5A17])
        need = self.batches_per_epoch * self.batch_size
        order = np.concatenate([rng.permutation(self.n_images) for _ in range(-(-need // self.n_images))])[:need]
        batches = []
        for b in range(self.batches_per_epoch):
            idx = order[b * self.batch_size : (b + 1) * self.batch_size]
            synthetic = np.zeros(self.batch_size, bool)
            synthetic[rng.choice(self.batch_size, size=self.n_synthetic, replace=False)] = True
            batches.append([ItemKey(int(i), bool(s), epoch) for i, s in zip(idx, synthetic, strict=True)])
        return batches

    def __iter__(self) -> Iterator[list[ItemKey]]:
        epoch, offset = divmod(self.start_step, self.batches_per_epoch)
        while True:
            yield from self.epoch_batches(epoch)[offset:]
            epoch, offset = epoch + 1, 0


class TrainDataset(Dataset):
    """Training images, returned normal or with a synthetic anomaly as the sampler's key says.

    Args:
        samples: the training split (memory and validation images already removed).
        cfg: the resolved config (``data``, ``synthesis``, ``train.seed``).

    ``dataset[ItemKey(i, synthetic, epoch)]`` returns ``(image, mask)``: float32 ``(3, H, W)`` in
    [0, 1] and float32 ``(H, W)`` in {0, 1} (all zeros for a normal image).
    """

    def __init__(self, samples: Sequence[Sample], cfg: MemSegConfig) -> None:
        self.paths = [s.path for s in samples]
        self.size = cfg.data.image_size
        self.seed = cfg.train.seed
        self.cfg = cfg
        self._images = load_images(self.paths, self.size) if cfg.data.cache_images else None
        self._generator: AnomalyGenerator | None = None
        self._rng: np.random.Generator | None = None
        self._rng_key: tuple[int, int] | None = None

    def __len__(self) -> int:
        return len(self.paths)

    def image(self, index: int) -> np.ndarray:
        """uint8 ``(H, W, 3)`` of one training image."""
        if self._images is not None:
            return self._images[index]
        return read_image(self.paths[index], self.size)

    def rng(self, epoch: int) -> np.random.Generator:
        """This worker's generator for ``epoch``: ``worker_rng(train.seed, worker_id, epoch)``."""
        info = torch.utils.data.get_worker_info()
        worker_id = info.id if info is not None else 0
        if self._rng is None or self._rng_key != (worker_id, epoch):
            self._rng = worker_rng(self.seed, worker_id, epoch)
            self._rng_key = (worker_id, epoch)
        return self._rng

    def __getitem__(self, key: ItemKey | int) -> tuple[torch.Tensor, torch.Tensor]:
        if not isinstance(key, ItemKey):
            key = ItemKey(int(key), False, 0)
        image = self.image(key.index)
        if key.synthetic:
            if self._generator is None:  # built lazily: each worker process gets its own
                self._generator = _anomaly_generator(self.cfg)
            image, mask_array = self._generator(np.array(image), self.rng(key.epoch))
            mask = torch.from_numpy(np.ascontiguousarray(mask_array, dtype=np.float32))
        else:
            mask = torch.from_numpy(np.zeros((self.size, self.size), dtype=np.float32))
        return to_tensor(image), mask


def worker_init_fn(worker_id: int) -> None:
    """DataLoader worker start-up: one compute thread per worker (``worker_id`` is unused).

    The workers run NumPy/OpenCV synthesis; letting each one spawn a thread per core would
    oversubscribe the CPU that the main process needs for the forward pass. Each worker's synthesis
    generator comes from ``worker_rng(seed, worker_id, epoch)`` inside the dataset, not from here.
    """
    torch.set_num_threads(1)
    cv2.setNumThreads(1)


@contextmanager
def _opencv_pool_stopped() -> Iterator[None]:
    """Stop OpenCV's worker threads while DataLoader workers are forked, restart them afterwards.

    Why: a forked child inherits OpenCV's pthreads pool with its condition variable still counting
    the parent's sleeping pool threads as waiters; the worker's ``cv2.setNumThreads(1)``
    (``worker_init_fn``) then blocks forever in ``pthread_cond_destroy``. Any OpenCV work in the
    parent before the fork (the validation set's synthesis) leaves such threads, so a run with
    ``data.num_workers > 0`` hung at its first batch. With one thread there is no pool to inherit.
    """
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        yield
    finally:
        cv2.setNumThreads(threads)


class _ForkSafeLoader(DataLoader):
    """A DataLoader whose workers are forked without OpenCV pool threads (see :func:`_opencv_pool_stopped`)."""

    def _get_iterator(self) -> _BaseDataLoaderIter:
        if self.num_workers == 0:
            return super()._get_iterator()
        with _opencv_pool_stopped():
            return super()._get_iterator()


def create_train_loader(
    samples: Sequence[Sample], cfg: MemSegConfig, *, start_step: int = 0, pin_memory: bool = False
) -> DataLoader:
    """An endless DataLoader of ``(images (B, 3, H, W), masks (B, H, W))`` training batches.

    Args:
        samples: the training split.
        cfg: resolved config (``train.batch_size``, ``train.seed``, ``data.num_workers``, ...).
        start_step: the first batch's index (resume).
        pin_memory: page-locked batches for asynchronous host-to-GPU copies (CUDA only).
    """
    dataset = TrainDataset(samples, cfg)
    sampler = BalancedBatchSampler(
        len(dataset), cfg.train.batch_size, cfg.synthesis.synthetic_ratio, cfg.train.seed, start_step
    )
    workers = cfg.data.num_workers
    return _ForkSafeLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=workers,
        persistent_workers=workers > 0,
        pin_memory=pin_memory,
        worker_init_fn=worker_init_fn if workers > 0 else None,
        prefetch_factor=4 if workers > 0 else None,
    )


# --------------------------------------------------------------------------------------------------
# Validation and test
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EvalSet:
    """Images with their ground truth, ready for ``evaluate_model``.

    Attributes:
        images: float32 ``(N, 3, H, W)`` in [0, 1].
        masks: uint8 ``(N, H, W)`` in {0, 1}.
        labels: int64 ``(N,)``, 1 = anomalous.
        defect_types: ``N`` names (``"good"``, ``"synthetic"`` or the test folder's name).
    """

    images: torch.Tensor
    masks: np.ndarray
    labels: np.ndarray
    defect_types: list[str]

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __iter__(self) -> Iterator:
        """Unpacks as ``images, masks, labels, defect_types``."""
        return iter((self.images, self.masks, self.labels, self.defect_types))


_VAL_CACHE: dict[tuple, EvalSet] = {}


def _val_key(samples: Sequence[Sample], cfg: MemSegConfig) -> tuple:
    return (
        tuple(str(s.path) for s in samples),
        cfg.data.image_size,
        cfg.data.category,
        cfg.data.texture_source,
        cfg.data.dtd_root,
        cfg.data.val_anomalies_per_image,
        cfg.data.val_anomaly_source,
        cfg.eval.val_seed,
        cfg.synthesis.model_dump_json(),
    )


def build_validation_set(samples: Sequence[Sample], cfg: MemSegConfig) -> EvalSet:
    """The fixed validation set: every image clean plus ``data.val_anomalies_per_image`` anomalies.

    The anomalies come from one generator seeded with ``eval.val_seed`` (never ``train.seed``), in
    image order, so the set is identical across calls and across training seeds. It is built once
    per process and configuration and then served from a cache.

    Args:
        samples: the validation split (normal ``train/good`` images).
        cfg: resolved config (synthesis settings, image size, category, ``eval.val_seed``).
    """
    key = _val_key(samples, cfg)
    cached = _VAL_CACHE.get(key)
    if cached is not None:
        return cached
    size = cfg.data.image_size
    clean = load_images([s.path for s in samples], size, cache=cfg.data.cache_images)
    # Held-out defects keep selection from rewarding a fit to the training synthesis
    # (see docs/model.md, "Validation and selection").
    generator: ValidationDefectPainter | AnomalyGenerator
    if cfg.data.val_anomaly_source == "held_out":
        generator = ValidationDefectPainter.for_category(cfg.synthesis, cfg.data.category, donors=list(clean))
    else:
        generator = _anomaly_generator(cfg)
    rng = np.random.default_rng(cfg.eval.val_seed)
    images: list[np.ndarray] = []
    masks: list[np.ndarray] = []
    labels: list[int] = []
    types: list[str] = []
    for image in clean:
        images.append(image)
        masks.append(np.zeros((size, size), np.uint8))
        labels.append(0)
        types.append(NORMAL_TYPE)
        for _ in range(cfg.data.val_anomalies_per_image):
            for _ in range(_VAL_MAX_REDRAWS):
                anomalous, mask = generator(np.array(image), rng)
                if mask.any():
                    break
            images.append(anomalous)
            masks.append((mask > 0.5).astype(np.uint8))
            labels.append(int(mask.any()))
            types.append(SYNTHETIC_TYPE if mask.any() else NORMAL_TYPE)
    result = EvalSet(
        images=to_tensor(np.stack(images)) if images else torch.zeros((0, 3, size, size)),
        masks=np.stack(masks) if masks else np.zeros((0, size, size), np.uint8),
        labels=np.asarray(labels, np.int64),
        defect_types=types,
    )
    _VAL_CACHE[key] = result
    return result


def load_test_set(files: Sequence[Sample], size: int, *, cache: bool = False) -> EvalSet:
    """The test split: images, ground-truth masks (empty for good images), labels and defect types.

    Not cached by default: the test set is read once per run, at the end.
    """
    images = load_images([s.path for s in files], size, cache=cache)
    masks = np.stack([read_mask(s.mask_path, size) for s in files]) if files else np.zeros((0, size, size), np.uint8)
    return EvalSet(
        images=to_tensor(images) if len(files) else torch.zeros((0, 3, size, size)),
        masks=masks,
        labels=np.asarray([s.label for s in files], np.int64),
        defect_types=[s.defect_type for s in files],
    )


def load_memory_images(samples: Sequence[Sample], size: int, *, cache: bool = True) -> torch.Tensor:
    """The memory images as float32 ``(N, 3, H, W)`` in [0, 1] for ``MemSeg.build_memory``."""
    return to_tensor(load_images([s.path for s in samples], size, cache=cache))
