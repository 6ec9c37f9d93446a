"""The frozen, always-eval backbone feature extractor (the authors' ``Get_feature`` network).

It supplies the stem output after ``bn1`` and its ReLU (``(B, 64, H/2, W/2)`` for ResNet18) and the
outputs of layer1, layer2 and layer3. These feed the memory comparison and the decoder's skip
connections, so they must never drift: the parameters are frozen, the BN layers stay
in eval mode whatever ``train()`` says, and the forward pass runs under ``no_grad`` in float32 even
under autocast (the memory bank was built in float32 from the very same pass).

This module also builds the timm backbone (:func:`create_backbone`) with the weights that
``model.backbone_weights`` asks for: ``imagenet`` (timm's pretrained weights, from the local Hugging
Face cache or the hub), ``none`` (random, built with ``zero_init_last=False``) or a weights file.
Channels and reductions are read from timm's ``feature_info``, never hard-coded.
See docs/model.md, "Encoder".
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Self

import timm
import torch
from safetensors.torch import load_file
from torch import Tensor, nn

from memseg.errors import ConfigError

log = logging.getLogger(__name__)

# timm ResNet attributes the extractor and the layer4 branch rely on.
_RESNET_PARTS = ("conv1", "bn1", "act1", "maxpool", "layer1", "layer2", "layer3", "layer4")
_LEVELS = ("layer1", "layer2", "layer3")
# Keys a classifier checkpoint may carry that the feature stages do not use.
_HEAD_PREFIXES = ("fc.", "head.", "classifier.")


def create_backbone(name: str, weights: str, *, load_weights: bool = True) -> nn.Module:
    """Build a timm ResNet without its classifier, with the requested weights.

    Args:
        name: timm model name, optionally with a pretrained tag (``resnet18.tv_in1k``).
        weights: ``"imagenet"``, ``"none"`` or a path to a ``.pth``/``.pt``/``.bin``/``.safetensors``
            state dict of a timm or torchvision ResNet of the same depth.
        load_weights: False builds the architecture only (random init, no warning, no download),
            for callers that load a full MemSeg ``state_dict`` right after.

    Returns:
        The timm model (``num_classes=0``), with ``feature_info``.

    Raises:
        ConfigError: naming ``model.backbone`` or ``model.backbone_weights`` when the name is not a
            timm ResNet, the pretrained weights are not available, or the weights file does not fit.
    """
    pretrained = load_weights and weights == "imagenet"
    kwargs: dict[str, Any] = {"num_classes": 0}
    if not pretrained:
        # timm zero-inits the last BN of every residual block by default, which turns a random,
        # frozen backbone into a near-identity through layers 1-3 (its features would carry no
        # information beyond the stem). Loaded weights overwrite these BN weights anyway.
        kwargs["zero_init_last"] = False
    try:
        model = timm.create_model(name, pretrained=pretrained, **kwargs)
    except (RuntimeError, TypeError) as exc:
        if "Unknown model" in str(exc) or isinstance(exc, TypeError):
            msg = f"model.backbone: {name!r} is not a timm ResNet ({exc})"
            raise ConfigError(msg) from exc
        raise _pretrained_error(name, exc) from exc
    except Exception as exc:  # hub/network/cache failures come in many types; all mean "no weights"
        if not pretrained:
            raise
        raise _pretrained_error(name, exc) from exc
    missing = [part for part in _RESNET_PARTS if not hasattr(model, part)]
    if missing or not hasattr(model, "feature_info"):
        msg = f"model.backbone: {name!r} is not a ResNet-style timm model (lacks {missing or 'feature_info'})"
        raise ConfigError(msg)
    if load_weights and weights == "none":
        log.warning(
            "model.backbone_weights=none: the frozen %s backbone is randomly initialised; the memory "
            "comparison and skip features carry far less information than with ImageNet weights.",
            name,
        )
    elif load_weights and weights != "imagenet":
        load_weights_file(model, Path(weights))
    return model


def _pretrained_error(name: str, exc: Exception) -> ConfigError:
    msg = (
        f"model.backbone_weights=imagenet: could not load timm's pretrained weights for {name!r} "
        f"({type(exc).__name__}: {str(exc)[:300]}). Without internet access, either set "
        "model.backbone_weights=/path/to/resnet18.pth (or .safetensors: a timm or torchvision "
        "resnet18 state dict), or pre-populate the Hugging Face cache on a connected machine "
        f"(python -c \"import timm; timm.create_model('{name}', pretrained=True)\", then copy "
        "~/.cache/huggingface or point HF_HOME at it) and run with HF_HUB_OFFLINE=1; "
        "model.backbone_weights=none trains with a random frozen backbone."
    )
    return ConfigError(msg)


def load_weights_file(model: nn.Module, path: Path) -> None:
    """Load a ResNet state dict file into ``model``, strictly for the stages it has.

    timm and torchvision ResNets share their key names (``conv1``, ``bn1``, ``layer1.0.conv1``...).
    Every parameter and buffer of ``model`` must be in the file with the same shape (BN's
    ``num_batches_tracked`` excepted: old torchvision files lack it); classifier keys (``fc.*``) are
    ignored; any other extra key means a different architecture and is an error.

    Raises:
        ConfigError: naming ``model.backbone_weights`` and the file.
    """
    prefix = f"model.backbone_weights={path}"
    if not path.is_file():
        msg = f"{prefix}: no such file (expected 'imagenet', 'none' or a weights file path)"
        raise ConfigError(msg)
    try:
        if path.suffix == ".safetensors":
            loaded: Any = load_file(str(path))
        else:
            loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt files raise anything from pickle to safetensors errors
        msg = f"{prefix}: cannot read weights file ({type(exc).__name__}: {exc})"
        raise ConfigError(msg) from exc
    state = _unwrap_state_dict(loaded)
    if state is None:
        msg = f"{prefix}: not a state dict of tensors (got {type(loaded).__name__})"
        raise ConfigError(msg)

    expected = model.state_dict()
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    wrong_shape = [
        f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    unexpected = [k for k in state if k not in expected and not k.startswith(_HEAD_PREFIXES)]
    if missing or wrong_shape or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s) e.g. {missing[:3]}")
        if wrong_shape:
            parts.append(f"{len(wrong_shape)} shape mismatch(es) e.g. {wrong_shape[:3]}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s) e.g. {unexpected[:3]}")
        msg = f"{prefix}: does not fit the backbone ({'; '.join(parts)})"
        raise ConfigError(msg)
    model.load_state_dict({k: v for k, v in state.items() if k in expected}, strict=False)


def feature_info(backbone: nn.Module) -> list[Mapping[str, Any]]:
    """timm's ``feature_info`` of a backbone: one ``{"module", "num_chs", "reduction"}`` entry per stage.

    Raises:
        ConfigError: naming ``model.backbone`` when the model has no such list.
    """
    info = getattr(backbone, "feature_info", None)
    if not isinstance(info, Sequence) or not all(isinstance(entry, Mapping) for entry in info):
        msg = f"model.backbone: {type(backbone).__name__} has no timm feature_info list"
        raise ConfigError(msg)
    return list(info)


def _unwrap_state_dict(loaded: Any) -> dict[str, Tensor] | None:
    """The flat ``{key: tensor}`` dict inside common checkpoint wrappers, ``module.`` prefix removed."""
    if isinstance(loaded, Mapping):
        for wrapper in ("state_dict", "model", "model_state_dict"):
            inner = loaded.get(wrapper)
            if isinstance(inner, Mapping):
                loaded = inner
                break
        if loaded and all(isinstance(v, Tensor) for v in loaded.values()):
            return {str(k).removeprefix("module."): v for k, v in loaded.items()}
    return None


class FrozenFeatureExtractor(nn.Module):
    """Stem (after bn1 and its ReLU), layer1, layer2 and layer3 of a frozen ResNet, always in eval mode.

    Attributes:
        stem_channels: channels of the stem output (reduction 2).
        level_channels: channels of layer1..layer3.
        level_reductions: spatial reductions of layer1..layer3 (4, 8, 16 for ResNet18).
    """

    def __init__(self, backbone: nn.Module) -> None:
        """Take the stem and layer1..3 of ``backbone`` (a timm ResNet from :func:`create_backbone`)."""
        super().__init__()
        info = {entry["module"]: entry for entry in feature_info(backbone)}
        try:
            self.stem_channels: int = int(info["act1"]["num_chs"])
            self.stem_reduction: int = int(info["act1"]["reduction"])
            self.level_channels: tuple[int, ...] = tuple(int(info[n]["num_chs"]) for n in _LEVELS)
            self.level_reductions: tuple[int, ...] = tuple(int(info[n]["reduction"]) for n in _LEVELS)
        except KeyError as exc:
            msg = f"model.backbone: feature_info lacks {exc} (need act1, layer1..layer3)"
            raise ConfigError(msg) from exc
        self.conv1 = backbone.get_submodule("conv1")
        self.bn1 = backbone.get_submodule("bn1")
        self.act1 = backbone.get_submodule("act1")
        self.maxpool = backbone.get_submodule("maxpool")
        self.layer1 = backbone.get_submodule("layer1")
        self.layer2 = backbone.get_submodule("layer2")
        self.layer3 = backbone.get_submodule("layer3")
        for param in self.parameters():
            param.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> Self:
        """Stay in eval mode: BN running statistics must match the ones the memory was built with."""
        return super().train(False)

    @torch.no_grad()
    def forward(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        """Extract the frozen features.

        Args:
            x: ImageNet-normalised images ``(B, 3, H, W)``.

        Returns:
            ``stem`` ``(B, C0, H/2, W/2)`` = relu(bn1(conv1(x))), non-negative, and
            ``[layer1, layer2, layer3]`` ``(B, Ck, H/rk, W/rk)``, all float32.
        """
        with torch.autocast(device_type=x.device.type, enabled=False):
            # Post-ReLU, as the authors' decoder reads it: their hook keeps the tensor bn1 returns,
            # which torchvision's in-place ReLU then overwrites (docs/model.md, "Encoder").
            stem = self.act1(self.bn1(self.conv1(x.float())))
            out = self.maxpool(stem)
            f1 = self.layer1(out)
            f2 = self.layer2(f1)
            f3 = self.layer3(f2)
        return stem, [f1, f2, f3]
