"""The MemSeg network, built to the authors' code (docs/model.md describes every part).

``x`` in [0, 1] -> ImageNet normalisation (buffers) -> frozen extractor (stem after bn1 + ReLU, layer1..3)
-> memory module (CI_k, DI_k) -> spatial attention M_k -> MSFF (x M_k) ; frozen layer3 -> trainable
layer4 -> U-Net decoder with skips [MSFF3, MSFF2, MSFF1, stem] -> logits ``(B, 2, H, W)``.
Softmax channel 1 is the anomaly probability.

Trained: layer4, MSFF and the decoder (:meth:`MemSeg.trainable_parameters`). The memory bank is
built once (:meth:`MemSeg.build_memory`) and lives in the state dict.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from memseg.config import ModelConfig
from memseg.model.decoder import UNetDecoder
from memseg.model.feature_extractor import FrozenFeatureExtractor, feature_info
from memseg.model.layer4_branch import Layer4Branch
from memseg.model.map_smoothing import MapSmoothing
from memseg.model.memory_bank import MemoryBank
from memseg.model.msff import MultiScaleFeatureFusion
from memseg.model.spatial_attention import spatial_attention
from memseg.model.weight_init import init_head_weights

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class MemSegOutputs(NamedTuple):
    """Intermediate results of one forward pass (for inspection, baselines and tests).

    Attributes:
        logits: ``(B, 2, H, W)``.
        differences: ``DI_k`` ``(B, C_k, H_k, W_k)``, finest first.
        attention: ``M_k`` ``(B, 1, H_k, W_k)``, finest first.
        memory_indices: ``(B, 3)`` memory sample picked per image and level.
    """

    logits: Tensor
    differences: list[Tensor]
    attention: list[Tensor]
    memory_indices: Tensor


class MemSeg(nn.Module):
    """MemSeg: memory-guided U-Net segmentation of surface defects."""

    mean: Tensor
    std: Tensor

    def __init__(self, backbone: nn.Module, cfg: ModelConfig) -> None:
        """Assemble the network around a timm ResNet (see :func:`memseg.model.create_model`).

        Args:
            backbone: timm ResNet with its weights loaded (:func:`create_backbone`); its stem and
                layer1..3 become the frozen extractor and its layer4 is copied into the trainable branch.
            cfg: the model section, resolved for the category (no ``None`` values).
        """
        super().__init__()
        if cfg.memory_size is None or cfg.diff_scale is None or cfg.feature_scale is None:
            msg = "MemSeg needs a ModelConfig resolved for its category (memory_size/diff_scale/feature_scale)"
            raise ValueError(msg)
        self.memory_size = int(cfg.memory_size)
        pretrained = getattr(backbone, "pretrained_cfg", None) or {}
        mean = pretrained.get("mean", IMAGENET_MEAN)
        std = pretrained.get("std", IMAGENET_STD)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

        self.extractor = FrozenFeatureExtractor(backbone)
        self.encoder = Layer4Branch(backbone)
        channels = self.extractor.level_channels
        self.memory = MemoryBank(
            channels,
            diff_scale=cfg.diff_scale,
            feature_scale=cfg.feature_scale,
            pooling=cfg.memory_pooling,
            per_level_selection=cfg.per_level_selection,
            match=cfg.memory_match,
            coreset=cfg.memory_coreset,
            window=cfg.memory_window,
        )
        self.msff = MultiScaleFeatureFusion(channels, fusion=cfg.msff_fusion)
        self.decoder = UNetDecoder(self.encoder.out_channels, channels, self.extractor.stem_channels)
        init_head_weights(self.msff, cfg.head_init)
        init_head_weights(self.decoder, cfg.head_init)
        self.smoothing = MapSmoothing(cfg.map_smoothing_sigma)
        # Total stride of the network: the input must be divisible by it.
        self.stride = int(feature_info(backbone)[-1]["reduction"])

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The parameters to optimise: layer4, MSFF and decoder (the memory bank is not learned)."""
        return [p for m in (self.encoder, self.msff, self.decoder) for p in m.parameters()]

    def _normalise(self, x: Tensor) -> Tensor:
        if x.ndim != 4 or x.shape[1] != 3:
            msg = f"MemSeg expects RGB images (B, 3, H, W) in [0, 1], got shape {tuple(x.shape)}"
            raise ValueError(msg)
        h, w = x.shape[-2:]
        if h % self.stride or w % self.stride:
            msg = f"MemSeg input height and width must be divisible by {self.stride}, got {h}x{w}"
            raise ValueError(msg)
        x = (x.float() - self.mean) / self.std
        if x.device.type == "cpu":
            # oneDNN's NHWC convolutions skip the per-layer layout reorders of NCHW: about 25% less
            # CPU time per training step and 20% per inference batch at 256 px (memseg bench). The
            # layout propagates through every conv, BN, cat and upsample, forward and backward. On
            # CUDA the layout is the trainer's choice (train.channels_last).
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    @torch.no_grad()
    def build_memory(self, images: Tensor, batch_size: int = 16) -> None:
        """Extract and store the memory samples' features (replaces any earlier memory).

        Args:
            images: the N = ``model.memory_size`` memory images ``(N, 3, H, W)``, float in [0, 1],
                on any device (moved to the model's device chunk by chunk).
            batch_size: images per extractor pass (memory use only; the result does not depend on it).
        """
        if images.ndim != 4 or images.shape[0] != self.memory_size:
            msg = (
                f"build_memory: expected model.memory_size={self.memory_size} images (N, 3, H, W), "
                f"got shape {tuple(images.shape)}"
            )
            raise ValueError(msg)
        chunks: list[list[Tensor]] = []
        for start in range(0, images.shape[0], batch_size):
            batch = images[start : start + batch_size].to(self.mean.device)
            _, levels = self.extractor(self._normalise(batch))
            chunks.append(levels)
        self.memory.build([torch.cat(level, dim=0) for level in zip(*chunks, strict=True)])

    def forward_details(self, x: Tensor) -> MemSegOutputs:
        """Forward pass that also returns the memory differences, attention maps and picks.

        Args:
            x: ``(B, 3, H, W)`` float RGB in [0, 1]; H and W divisible by 32.
        """
        stem, levels = self.extractor(self._normalise(x))
        comparison = self.memory(levels)
        attention = spatial_attention(comparison.differences)
        fused = self.msff(comparison.concatenated, attention)
        bottom = self.encoder(levels[-1])
        logits = self.decoder(bottom, fused, stem, x.shape[-2:])
        return MemSegOutputs(logits, comparison.differences, attention, comparison.indices)

    def forward(self, x: Tensor) -> Tensor:
        """Segment a batch.

        Args:
            x: ``(B, 3, H, W)`` float RGB in [0, 1]; H and W divisible by 32.

        Returns:
            Logits ``(B, 2, H, W)`` (channel 1 = anomaly).

        Raises:
            MemoryNotBuiltError: before :meth:`build_memory`.
        """
        return self.forward_details(x).logits

    def anomaly_map(self, x: Tensor) -> Tensor:
        """Per-pixel anomaly probability ``(B, H, W)``: softmax channel 1 of the logits, float32, blurred by
        ``model.map_smoothing_sigma`` (:class:`MapSmoothing`; still in [0, 1])."""
        return self.smoothing(torch.softmax(self.forward(x).float(), dim=1)[:, 1])
