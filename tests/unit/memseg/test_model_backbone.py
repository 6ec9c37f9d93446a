"""Backbone construction and the frozen feature extractor (docs/model.md, "Encoder")."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import timm
import torch
import torchvision
from huggingface_hub import constants as hf_constants
from safetensors.torch import save_file

from memseg.errors import ConfigError
from memseg.model.feature_extractor import FrozenFeatureExtractor, create_backbone


def test_random_backbone_is_built_without_zero_init_last_and_warns(caplog: pytest.LogCaptureFixture) -> None:
    # timm's own default zero-inits the last BN of each block: the trap this guards against.
    assert torch.count_nonzero(timm.create_model("resnet18", num_classes=0).layer1[0].bn2.weight) == 0
    with caplog.at_level(logging.WARNING, logger="memseg.model.feature_extractor"):
        model = create_backbone("resnet18", "none")
    for layer in (model.layer1, model.layer2, model.layer3, model.layer4):
        assert torch.count_nonzero(layer[-1].bn2.weight) == layer[-1].bn2.weight.numel()
    assert "randomly initialised" in caplog.text


def test_extractor_reads_channels_from_feature_info_and_matches_the_forward_pass() -> None:
    extractor = FrozenFeatureExtractor(create_backbone("resnet18", "none"))
    assert extractor.stem_channels == 64
    assert extractor.level_channels == (64, 128, 256)
    assert extractor.level_reductions == (4, 8, 16)
    x = torch.randn(2, 3, 64, 96)
    stem, levels = extractor(x)
    assert stem.shape == (2, 64, 32, 48)
    for feat, c, r in zip(levels, extractor.level_channels, extractor.level_reductions, strict=True):
        assert feat.shape == (2, c, 64 // r, 96 // r)
    # The stem is relu(bn1(conv1(x))), as the authors' decoder reads it.
    with torch.no_grad():
        pre = extractor.bn1(extractor.conv1(x))
    assert (pre < 0).any()
    torch.testing.assert_close(stem, torch.relu(pre), rtol=0.0, atol=0.0)
    # A wider ResNet reports other channels, read from timm rather than hard-coded.
    wide = FrozenFeatureExtractor(create_backbone("resnet50", "none"))
    assert wide.level_channels == (256, 512, 1024)


def test_extractor_stays_in_eval_mode_and_frozen() -> None:
    extractor = FrozenFeatureExtractor(create_backbone("resnet18", "none"))
    extractor.train()
    assert not extractor.training
    assert not any(m.training for m in extractor.modules())
    assert not any(p.requires_grad for p in extractor.parameters())
    before = extractor.bn1.running_mean.clone()
    x = torch.randn(2, 3, 64, 64, requires_grad=True)
    _, levels = extractor(x * 5 + 3)
    assert not levels[-1].requires_grad
    assert torch.equal(before, extractor.bn1.running_mean)  # running stats untouched


def test_weights_file_loads_torchvision_and_timm_state_dicts(tmp_path: Path) -> None:
    tv = torchvision.models.resnet18(weights=None).eval()
    path = tmp_path / "tv_resnet18.pth"
    torch.save(tv.state_dict(), path)
    model = create_backbone("resnet18", str(path))
    for name in ("conv1.weight", "layer3.1.bn2.running_var", "layer4.0.downsample.0.weight"):
        assert torch.equal(model.state_dict()[name], tv.state_dict()[name])
    # Same layer3 features as torchvision's own forward pass.
    x = torch.randn(1, 3, 64, 64)
    _, levels = FrozenFeatureExtractor(model)(x)
    with torch.no_grad():
        ref = tv.layer3(tv.layer2(tv.layer1(tv.maxpool(tv.relu(tv.bn1(tv.conv1(x)))))))
    torch.testing.assert_close(levels[-1], ref)

    source = timm.create_model("resnet18", zero_init_last=False)
    st_path = tmp_path / "timm_resnet18.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(st_path))
    loaded = create_backbone("resnet18", str(st_path))
    assert torch.equal(loaded.layer2[1].conv2.weight, source.layer2[1].conv2.weight)


def test_bad_weights_files_name_the_key_and_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"model\.backbone_weights=.*missing\.pth.*no such file"):
        create_backbone("resnet18", str(tmp_path / "missing.pth"))
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ConfigError, match=r"corrupt\.pth: cannot read"):
        create_backbone("resnet18", str(corrupt))
    deeper = tmp_path / "resnet34.pth"
    torch.save(torchvision.models.resnet34(weights=None).state_dict(), deeper)
    with pytest.raises(ConfigError, match=r"resnet34\.pth: does not fit.*unexpected"):
        create_backbone("resnet18", str(deeper))


def test_unknown_backbone_names_the_key() -> None:
    with pytest.raises(ConfigError, match=r"model\.backbone: 'no_such_net'"):
        create_backbone("no_such_net", "none")


def test_imagenet_offline_without_cache_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # huggingface_hub reads HF_HUB_OFFLINE / HF_HOME into these constants at import; patch them as
    # HF_HUB_OFFLINE=1 with an empty HF_HOME would set them.
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(ConfigError) as info:
        create_backbone("resnet18.tv_in1k", "imagenet")
    message = str(info.value)
    assert "model.backbone_weights=imagenet" in message
    assert "backbone_weights=/path/to/" in message
    assert "HF_HUB_OFFLINE" in message
