"""A training-free baseline: distance to the nearest memory feature (for comparison with MemSeg).

MemSeg's memory module already finds many defects before any training (docs/model.md, "Memory module"): comparing frozen
features with those of normal images is the core of PatchCore-style methods. To show what the
training adds, this baseline scores each pixel with no learned parameter at all:

1. the frozen extractor of a freshly built MemSeg (same backbone, same weights setting) gives
   layer2 and layer3 features, smoothed with the same 3x3 average pooling as the memory module;
   layer3 is upsampled to layer2's grid and concatenated: one ``C2 + C3`` vector per location;
2. the memory is every location of every memory image (the same N images MemSeg holds out);
3. a location's score is the L2 distance to its nearest memory vector (any location of any memory
   image), upsampled bilinearly to the image size; the image score is the top-k mean, as for MemSeg.

It is evaluated on the same validation set (fixed-seed synthetic anomalies) and test split as fit().
"""

from __future__ import annotations

import logging
import time

import torch
import torch.nn.functional as F
from torch import Tensor

from memseg.config import MemSegConfig
from memseg.data.datasets import EvalSet, build_validation_set, category_splits, load_memory_images, load_test_set
from memseg.metrics import compute_metrics, keys
from memseg.model import create_model
from memseg.model.map_smoothing import MapSmoothing
from memseg.training.loop import prepare_config, resolve_device

log = logging.getLogger(__name__)

# layer2 and layer3 of the extractor's [layer1, layer2, layer3]: mid-level features, the usual
# choice of memory-based detectors (layer1 is too local, layer4 too semantic and coarse).
_LEVELS = (1, 2)


class NearestMemoryBaseline:
    """Per-location nearest-neighbour distance to the memory features.

    Args:
        cfg: resolved config (backbone, weights, memory pooling).
        device: where features and distances are computed.
    """

    def __init__(self, cfg: MemSegConfig, device: torch.device | str = "cpu") -> None:
        self.cfg = cfg
        self.device = torch.device(device)
        model = create_model(cfg)
        self.extractor = model.extractor.to(self.device).eval()
        self.mean = model.mean.to(self.device)
        self.std = model.std.to(self.device)
        self.memory: Tensor | None = None
        # The same blur as the model's map, so the comparison differs in the method, not the scoring.
        self.smoothing = MapSmoothing(cfg.model.map_smoothing_sigma).to(self.device)

    @torch.no_grad()
    def features(self, images: Tensor) -> Tensor:
        """``(B, 3, H, W)`` in [0, 1] -> ``(B, C2 + C3, H/8, W/8)`` pooled layer2+layer3 features."""
        x = (images.to(self.device).float() - self.mean) / self.std
        _, levels = self.extractor(x)
        picked = [levels[i] for i in _LEVELS]
        if self.cfg.model.memory_pooling:
            picked = [F.avg_pool2d(f, 3, stride=1, padding=1) for f in picked]
        size = picked[0].shape[-2:]
        picked = [f if f.shape[-2:] == size else F.interpolate(f, size=size, mode="bilinear") for f in picked]
        return torch.cat(picked, dim=1)

    @torch.no_grad()
    def build_memory(self, images: Tensor, batch_size: int = 16) -> None:
        """Store every location's feature vector of the memory images ``(N, 3, H, W)``."""
        chunks = [self.features(images[i : i + batch_size]) for i in range(0, images.shape[0], batch_size)]
        feats = torch.cat(chunks)
        self.memory = feats.permute(0, 2, 3, 1).reshape(-1, feats.shape[1]).contiguous()

    @torch.no_grad()
    def anomaly_map(self, images: Tensor, batch_size: int = 4) -> Tensor:
        """``(B, 3, H, W)`` -> ``(B, H, W)`` float32 distance maps (unbounded, higher = more anomalous)."""
        if self.memory is None:
            msg = "NearestMemoryBaseline: call build_memory first"
            raise RuntimeError(msg)
        out = []
        size = images.shape[-2:]
        for i in range(0, images.shape[0], batch_size):
            feats = self.features(images[i : i + batch_size])
            b, c, h, w = feats.shape
            query = feats.permute(0, 2, 3, 1).reshape(-1, c)
            dist = torch.cdist(query, self.memory).amin(dim=1).reshape(b, 1, h, w)
            full = F.interpolate(dist, size=size, mode="bilinear", align_corners=False)[:, 0]
            out.append(self.smoothing(full).cpu())
        return torch.cat(out) if out else torch.zeros((0, *size))

    def evaluate(self, data: EvalSet, prefix: str, *, per_type: bool) -> dict[str, float]:
        maps = self.anomaly_map(data.images).numpy()
        metrics = compute_metrics(
            maps, data.masks, data.labels, data.defect_types if per_type else None,
            top_k=self.cfg.eval.top_k, fpr_limit=self.cfg.eval.aupro_fpr_limit,
        )
        return {f"{prefix}{k}": float(v) for k, v in metrics.items()}


def evaluate_baseline(cfg: MemSegConfig, *, device: str | None = None, test: bool = True) -> dict[str, float]:
    """Score the validation set and the test split with :class:`NearestMemoryBaseline`.

    Uses the same memory images, validation set and test split as :func:`memseg.training.fit`.

    Returns:
        ``val_*`` and (when ``test``) ``test_*`` metrics, plus ``wall_time_s``.
    """
    started = time.perf_counter()
    cfg = prepare_config(cfg)
    dev = resolve_device(device or cfg.train.device)
    files, splits = category_splits(cfg)
    torch.manual_seed(cfg.train.seed)  # the random-weights backbone, as fit() builds it
    baseline = NearestMemoryBaseline(cfg, dev)
    baseline.build_memory(load_memory_images(splits.memory, cfg.data.image_size))
    metrics = baseline.evaluate(build_validation_set(splits.val, cfg), keys.VAL_PREFIX, per_type=False)
    if test and files.test:
        test_set = load_test_set(files.test, cfg.data.image_size)
        metrics.update(baseline.evaluate(test_set, keys.TEST_PREFIX, per_type=True))
    metrics["wall_time_s"] = time.perf_counter() - started
    log.info("baseline %s: %s", cfg.data.category, {k: round(v, 4) for k, v in metrics.items() if "/" not in k})
    return metrics

