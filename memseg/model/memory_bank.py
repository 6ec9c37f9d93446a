"""The memory module: N normal samples' features and the per-level difference to them.

Following the authors' code: the layer1..layer3 features of the input and of every memory sample are smoothed
with ``AvgPool2d(3, stride 1, padding 1)`` (``model.memory_pooling``); for each level separately the
memory sample with the smallest L1 distance (``sum |pooled input - memory|`` over C x H x W) is picked
(``model.per_level_selection``; when off, one sample for all levels, by the smallest sum of the three
per-level distances); ``DI_k = diff_scale * |pooled input_k - selected memory_k|`` element-wise, and
``CI_k = concat(feature_scale * raw input_k, DI_k)`` with the raw (un-pooled) features.

The authors loop in Python over images x levels x memory samples; here the distances of the whole batch to
the whole memory are one ``torch.cdist(p=1)`` per level (no ``(B, N, C, H, W)`` tensor is made).

The memory features are registered buffers, so ``.to()``, ``state_dict()`` and checkpoints carry
them; loading a state dict into a fresh, empty bank resizes the buffers. Everything is computed in
float32, also under autocast: the distances sum ~10^5 terms and feed an unnormalised attention.

``model.memory_match=nearest`` compares each location with the closest pooled vector at any location of
any memory sample instead; ``model.memory_coreset`` bounds its cost by keeping a greedy k-center
subset of those vectors per level (``coreset.py``), whose indices are buffers like the memory;
``model.memory_window`` by searching only a window around each location, in every memory sample.
See docs/model.md, "Memory module".
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from memseg.errors import MemSegError
from memseg.model.coreset import greedy_coreset


class MemoryNotBuiltError(MemSegError, RuntimeError):
    """The model was run before its memory bank was built (``MemSeg.build_memory``)."""


# Rows x memory vectors of one distance block (128 MiB of float32): bounds the memory of ``nearest``
# matching at any image size.
_DISTANCE_BLOCK = 1 << 25


# |m|^2 of cells outside the memory map in windowed matching: larger than any real squared distance,
# finite so that products with it stay numbers.
_OUTSIDE = 1e30


def _vectors(feature: Tensor) -> Tensor:
    """``(N, C, H, W)`` -> ``(N * H * W, C)``: one row per location, sample-major."""
    return feature.permute(0, 2, 3, 1).reshape(-1, feature.shape[1])


def _nearest_rows(queries: Tensor, keys: Tensor) -> Tensor:
    """Index of each query's nearest key (L2), computed in blocks of queries."""
    step = max(1, _DISTANCE_BLOCK // max(1, keys.shape[0]))
    return torch.cat([torch.cdist(queries[i : i + step], keys).argmin(dim=1) for i in range(0, queries.shape[0], step)])


def _nearest_by_product(queries: Tensor, keys: Tensor) -> Tensor:
    """Index of each query's nearest key (L2) from a matrix product and an argmin: ops every ONNX
    runtime has, in one block (the exported graph's batch is dynamic, so it cannot be split into a
    known number of blocks; the keys are a coreset, so the block is bounded by the batch).
    ``|q|^2`` is the same for every key of a query and drops out of the argmin."""
    return ((keys * keys).sum(dim=1)[None] - 2.0 * queries @ keys.T).argmin(dim=1)


def _l1_to_each_sample(pooled: Tensor, memory: Tensor) -> Tensor:
    """``(B, N)`` L1 distances as one subtraction and sum per memory sample.

    The same figures as ``torch.cdist(p=1)`` up to float summation order, from ordinary element-wise
    ops and reductions: ONNX has no cdist, and the legacy exporter's cdist computes another norm.
    """
    return torch.stack([(pooled - memory[n]).abs().sum(dim=(1, 2, 3)) for n in range(memory.shape[0])], dim=1)


class MemoryComparison(NamedTuple):
    """What the memory module hands on, one entry per level (layer1..layer3).

    Attributes:
        concatenated: ``CI_k`` ``(B, 2 * C_k, H_k, W_k)``.
        differences: ``DI_k`` ``(B, C_k, H_k, W_k)``, already multiplied by ``diff_scale``.
        indices: ``(B, L)`` memory sample picked for each image and level.
    """

    concatenated: list[Tensor]
    differences: list[Tensor]
    indices: Tensor


class MemoryBank(nn.Module):
    """Stores N samples' pooled features and compares inputs with them."""

    def __init__(
        self,
        channels: Sequence[int],
        *,
        diff_scale: float,
        feature_scale: float,
        pooling: bool = True,
        per_level_selection: bool = True,
        match: Literal["aligned", "nearest"] = "aligned",
        coreset: int | None = None,
        window: int | None = None,
    ) -> None:
        """Create an empty bank.

        Args:
            channels: channels of each level (``(64, 128, 256)`` for ResNet18).
            diff_scale: ``m_scale``, multiplies DI (config ``model.diff_scale``).
            feature_scale: ``o_scale``, multiplies the raw features in CI (``model.feature_scale``).
            pooling: 3x3 average pooling before the comparison (``model.memory_pooling``).
            per_level_selection: pick the nearest sample per level (``model.per_level_selection``).
            match: ``aligned`` compares each location with the same location of the picked sample (the
                authors'); ``nearest`` with the closest pooled feature vector at any location of any
                sample (``model.memory_match``; docs/model.md, "Memory module").
            coreset: with ``nearest``, keep this many memory vectors per level (greedy k-center,
                ``model.memory_coreset``); ``None`` keeps every one. Ignored by ``aligned``.
            window: with ``nearest``, search only within this many cells of each location, in every
                memory sample (``model.memory_window``); ``None`` searches everywhere.
        """
        super().__init__()
        self.channels = tuple(int(c) for c in channels)
        self.diff_scale = float(diff_scale)
        self.feature_scale = float(feature_scale)
        self.pooling = pooling
        self.per_level_selection = per_level_selection
        self.match = match
        self.coreset = coreset
        if coreset is not None and window is not None:
            msg = "MemoryBank: coreset and window cannot both be set (a coreset keeps no locations)"
            raise ValueError(msg)
        self.window = window
        # Set by memseg.export while tracing: the distances from ops every ONNX runtime has.
        self.export_friendly = False
        for k, c in enumerate(self.channels, start=1):
            self.register_buffer(f"level{k}", torch.zeros(0, c, 0, 0))
            # Indices into the level's (N * H * W, C) vectors that nearest matching compares with;
            # empty = every vector (exact nearest, or aligned matching).
            self.register_buffer(f"coreset{k}", torch.zeros(0, dtype=torch.long))

    @property
    def levels(self) -> list[Tensor]:
        """The stored pooled features, ``(N, C_k, H_k, W_k)`` per level."""
        return [getattr(self, f"level{k}") for k in range(1, len(self.channels) + 1)]

    @property
    def size(self) -> int:
        """Number of memory samples N (0 before :meth:`build`)."""
        return int(self.levels[0].shape[0])

    @property
    def is_built(self) -> bool:
        return self.size > 0

    def _pool(self, feature: Tensor) -> Tensor:
        if not self.pooling:
            return feature
        return F.avg_pool2d(feature, kernel_size=3, stride=1, padding=1)

    @torch.no_grad()
    def build(self, features: Sequence[Tensor]) -> None:
        """Store the memory samples' features (replacing any earlier memory).

        Args:
            features: raw layer1..layer3 features of the N memory images, ``(N, C_k, H_k, W_k)``.
        """
        self._check_levels(features, "build")
        sizes = {int(f.shape[0]) for f in features}
        if len(sizes) != 1 or 0 in sizes:
            msg = f"MemoryBank.build: every level needs the same, non-zero number of samples, got {sorted(sizes)}"
            raise ValueError(msg)
        for k, feature in enumerate(features, start=1):
            current = getattr(self, f"level{k}")
            pooled = self._pool(feature.float()).contiguous().to(device=current.device)
            setattr(self, f"level{k}", pooled)
            kept = torch.zeros(0, dtype=torch.long, device=current.device)
            if self.match == "nearest" and self.coreset is not None:
                kept = greedy_coreset(_vectors(pooled), self.coreset)
            setattr(self, f"coreset{k}", kept)

    def forward(self, features: Sequence[Tensor]) -> MemoryComparison:
        """Compare a batch with the memory.

        Args:
            features: raw layer1..layer3 features ``(B, C_k, H_k, W_k)`` of the batch.

        Returns:
            The :class:`MemoryComparison` (CI, DI and the picked indices).

        Raises:
            MemoryNotBuiltError: before :meth:`build` (or loading a state dict that holds a memory).
            ValueError: when the feature sizes differ from the memory's (another input resolution).
        """
        if not self.is_built:
            msg = (
                "the memory bank is empty: call MemSeg.build_memory(images) with the N memory images "
                "(or load a state dict / checkpoint that contains one) before running the model"
            )
            raise MemoryNotBuiltError(msg)
        self._check_levels(features, "forward")
        with torch.autocast(device_type=features[0].device.type, enabled=False):
            raw = [f.float() for f in features]
            pooled = [self._pool(f) for f in raw]
            if self.match == "nearest" and self.window is not None:
                indices, differences = self._window_differences(pooled, self.window)
            elif self.match == "nearest":
                indices, differences = self._nearest_differences(pooled)
            else:
                indices, differences = self._aligned_differences(pooled)
            concatenated = [
                torch.cat([f * self.feature_scale, d], dim=1) for f, d in zip(raw, differences, strict=True)
            ]
        return MemoryComparison(concatenated, differences, indices)

    def _aligned_differences(self, pooled: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
        # (B, N) L1 distances per level, without materialising (B, N, C, H, W).
        if self.export_friendly:
            distances = [_l1_to_each_sample(p, m) for p, m in zip(pooled, self.levels, strict=True)]
        else:
            distances = [torch.cdist(p.flatten(1), m.flatten(1), p=1) for p, m in zip(pooled, self.levels, strict=True)]
        if self.per_level_selection:
            indices = torch.stack([d.argmin(dim=1) for d in distances], dim=1)
        else:
            joint = torch.stack(distances).sum(0).argmin(dim=1)
            indices = joint[:, None].expand(-1, len(distances)).contiguous()
        differences = [
            (p - m.index_select(0, indices[:, k])).abs_().mul_(self.diff_scale)
            for k, (p, m) in enumerate(zip(pooled, self.levels, strict=True))
        ]
        return indices, differences

    def _window_differences(self, pooled: list[Tensor], radius: int) -> tuple[Tensor, list[Tensor]]:
        # Exact nearest matching within (2r+1)^2 cells of each location in every memory sample: one
        # running minimum over the offsets, each offset one batched product of (B, C) by (C, N) per
        # location. Cells shifted in from outside the map get an infinite-like |m|^2, so the location
        # itself (offset 0) always remains a candidate.
        indices = []
        differences = []
        for p, m in zip(pooled, self.levels, strict=True):
            b, c, h, w = p.shape
            padded = F.pad(m, (radius, radius, radius, radius))
            norms = F.pad((m * m).sum(dim=1), (radius, radius, radius, radius), value=_OUTSIDE)
            best_score: Tensor | None = None
            best_match: Tensor | None = None
            best_sample: Tensor | None = None
            locations = torch.arange(h * w, device=p.device)[None]
            for dy in range(2 * radius + 1):
                for dx in range(2 * radius + 1):
                    shifted = padded[:, :, dy : dy + h, dx : dx + w]
                    # (B, N, H, W): |m|^2 - 2 p.m; |p|^2 is the same for every candidate of a location.
                    score = norms[None, :, dy : dy + h, dx : dx + w] - 2.0 * torch.einsum("bchw,nchw->bnhw", p, shifted)
                    score, sample = score.min(dim=1)
                    # The picked sample's vector at each location: rows of the shifted memory as (N*H*W, C).
                    rows = sample.flatten(1) * (h * w) + locations
                    match = _vectors(shifted).index_select(0, rows.flatten()).reshape(b, h, w, c).permute(0, 3, 1, 2)
                    if best_score is None or best_match is None or best_sample is None:
                        best_score, best_match, best_sample = score, match, sample
                        continue
                    closer = score < best_score
                    best_score = torch.where(closer, score, best_score)
                    best_match = torch.where(closer[:, None], match, best_match)
                    best_sample = torch.where(closer, sample, best_sample)
            assert best_match is not None and best_sample is not None  # at least one offset
            differences.append((p - best_match).abs_().mul_(self.diff_scale))
            indices.append(self._main_sample(best_sample.reshape(b, -1)))
        return torch.stack(indices, dim=1), differences

    def _nearest_differences(self, pooled: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
        # Each location against every location of every sample: what stochastic textures (grass,
        # gravel) need, where no memory sample lines up with the input pixel for pixel.
        indices = []
        differences = []
        for k, (p, m) in enumerate(zip(pooled, self.levels, strict=True), start=1):
            b, c, h, w = p.shape
            queries = _vectors(p)
            keys = _vectors(m)
            kept: Tensor = getattr(self, f"coreset{k}")
            if kept.numel():
                nearest = kept.index_select(0, self._nearest(queries, keys.index_select(0, kept)))
            elif self.export_friendly:
                msg = (
                    "nearest matching against every memory vector is not exported (at 256 px and 30 memory images, "
                    "layer1 alone is 4,096 x 122,880 distances per image): "
                    "set model.memory_coreset or model.memory_window"
                )
                raise RuntimeError(msg)
            else:
                nearest = _nearest_rows(queries, keys)
            matched = keys.index_select(0, nearest).reshape(b, h, w, c).permute(0, 3, 1, 2)
            differences.append((p - matched).abs_().mul_(self.diff_scale))
            indices.append(self._main_sample(torch.div(nearest, h * w, rounding_mode="floor").reshape(b, -1)))
        return torch.stack(indices, dim=1), differences

    def _main_sample(self, samples: Tensor) -> Tensor:
        # The sample that supplied most of an image's (B, H*W) matches, for inspection only; the exported
        # graph returns the map alone and has no mode, so there it is the first location's sample.
        return samples[:, 0] if self.export_friendly else samples.mode(dim=1).values

    def _nearest(self, queries: Tensor, keys: Tensor) -> Tensor:
        return _nearest_by_product(queries, keys) if self.export_friendly else _nearest_rows(queries, keys)

    def _check_levels(self, features: Sequence[Tensor], where: str) -> None:
        if len(features) != len(self.channels):
            msg = f"MemoryBank.{where}: expected {len(self.channels)} feature levels, got {len(features)}"
            raise ValueError(msg)
        for k, (feature, c) in enumerate(zip(features, self.channels, strict=True), start=1):
            if feature.ndim != 4 or feature.shape[1] != c:
                msg = f"MemoryBank.{where}: level {k} must be (B, {c}, H, W), got {tuple(feature.shape)}"
                raise ValueError(msg)
            if where == "forward":
                stored = getattr(self, f"level{k}")
                if feature.shape[-2:] != stored.shape[-2:]:
                    msg = (
                        f"input features of level {k} are {tuple(feature.shape[-2:])} but the memory holds "
                        f"{tuple(stored.shape[-2:])}: the memory was built at another image size "
                        "(rebuild it with images of the size the model is run on)"
                    )
                    raise ValueError(msg)

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        # A fresh bank holds (0, C, 0, 0) placeholders; take the stored memory's shape so that a
        # checkpoint loads into a model straight from create_model(cfg); the same for the coreset.
        for name in [f"coreset{k}" for k in range(1, len(self.channels) + 1)]:
            incoming = state_dict.get(f"{prefix}{name}")
            current = self._buffers[name]
            if isinstance(incoming, Tensor) and current is not None and incoming.shape != current.shape:
                self._buffers[name] = torch.empty(incoming.shape, dtype=current.dtype, device=current.device)
        for k in range(1, len(self.channels) + 1):
            key = f"{prefix}level{k}"
            incoming = state_dict.get(key)
            current = self._buffers[f"level{k}"]
            if (
                isinstance(incoming, Tensor)
                and incoming.ndim == 4
                and incoming.shape[1] == self.channels[k - 1]
                and current is not None
                and incoming.shape != current.shape
            ):
                self._buffers[f"level{k}"] = torch.empty(incoming.shape, dtype=current.dtype, device=current.device)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        # Checkpoints written before the coreset existed compare with every vector, as they did.
        for k in range(1, len(self.channels) + 1):
            key = f"{prefix}coreset{k}"
            if key not in state_dict and key in missing_keys:
                missing_keys.remove(key)
                self._buffers[f"coreset{k}"] = torch.zeros(0, dtype=torch.long, device=self.levels[0].device)
