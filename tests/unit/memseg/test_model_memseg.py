"""The assembled MemSeg network and its factory."""

from __future__ import annotations

import io

import pytest
import torch

import memseg.model.memseg as memseg_network
from memseg.config import MemSegConfig, resolve_for_category
from memseg.errors import ConfigError
from memseg.loss import MemSegLoss
from memseg.model import MemoryNotBuiltError, MemSeg, create_model
from memseg.model.decoder import UNetDecoder
from memseg.model.msff import MultiScaleFeatureFusion

N_MEMORY = 2


def _config(**overrides: object) -> MemSegConfig:
    base = {"model.backbone_weights": "none", "model.memory_size": N_MEMORY, **overrides}
    return resolve_for_category(MemSegConfig().with_overrides(base), "bottle")


def _model(size: int | tuple[int, int] = 64, seed: int = 0, **overrides: object) -> MemSeg:
    torch.manual_seed(seed)
    model = create_model(_config(**overrides))
    h, w = (size, size) if isinstance(size, int) else size
    model.build_memory(torch.rand(N_MEMORY, 3, h, w, generator=torch.Generator().manual_seed(123)))
    return model


@pytest.mark.parametrize("size", [128, 256, 320])
def test_output_shapes(size: int) -> None:
    model = _model(size).eval()
    x = torch.rand(1, 3, size, size)
    with torch.no_grad():
        out = model.forward_details(x)
        amap = model.anomaly_map(x)
    assert out.logits.shape == (1, 2, size, size)
    assert amap.shape == (1, size, size)
    assert ((amap >= 0) & (amap <= 1)).all()
    assert [d.shape[1:] for d in out.differences] == [
        (64, size // 4, size // 4), (128, size // 8, size // 8), (256, size // 16, size // 16),
    ]
    assert out.memory_indices.shape == (1, 3)


def test_non_square_input() -> None:
    model = _model((64, 96)).eval()
    with torch.no_grad():
        assert model(torch.rand(2, 3, 64, 96)).shape == (2, 2, 64, 96)


def test_memory_image_as_input_gives_zero_difference() -> None:
    model = _model(64).eval()
    images = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(7))
    model.memory_size = 3
    model.build_memory(images)
    with torch.no_grad():
        out = model.forward_details(images[[2, 0]])
    assert out.memory_indices.tolist() == [[2, 2, 2], [0, 0, 0]]
    assert all(torch.count_nonzero(d) == 0 for d in out.differences)
    assert all(torch.count_nonzero(m) == 0 for m in out.attention)


def test_frozen_extractor_gets_no_grads_and_heads_do() -> None:
    model = _model(64)
    model.train()
    assert not model.extractor.training and not model.extractor.bn1.training
    assert model.encoder.training and model.msff.training and model.decoder.training
    assert not any(p.requires_grad for p in model.extractor.parameters())
    trainable = {id(p) for p in model.trainable_parameters()}
    assert trainable == {id(p) for p in model.parameters() if p.requires_grad}
    extractor_stats = model.extractor.layer1[0].bn1.running_mean.clone()

    mask = torch.zeros(2, 64, 64)
    mask[:, 10:30, 20:40] = 1.0
    total, _ = MemSegLoss(_config().loss)(model(torch.rand(2, 3, 64, 64)), mask)
    total.backward()
    assert all(p.grad is None for p in model.extractor.parameters())
    for part in (model.encoder, model.msff, model.decoder):
        grads = [p.grad for p in part.parameters()]
        assert all(g is not None for g in grads)
        assert sum(float(g.abs().sum()) for g in grads) > 0
    assert torch.equal(extractor_stats, model.extractor.layer1[0].bn1.running_mean)


def test_state_dict_round_trip_into_a_fresh_model() -> None:
    model = _model(64, seed=0)
    model.train()
    with torch.no_grad():  # move BN running stats of the heads away from their init
        model(torch.rand(4, 3, 64, 64))
    model.eval()
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    assert state["memory.level1"].shape == (N_MEMORY, 64, 16, 16)

    torch.manual_seed(1)
    fresh = create_model(_config(), load_backbone_weights=False).eval()
    x = torch.rand(2, 3, 64, 64)
    with pytest.raises(MemoryNotBuiltError):
        fresh(x)
    fresh.load_state_dict(state)
    with torch.no_grad():
        assert torch.equal(model(x), fresh(x))
    assert fresh.memory.size == N_MEMORY


def test_forward_before_build_memory_is_a_clear_error() -> None:
    model = create_model(_config()).eval()
    with pytest.raises(MemoryNotBuiltError, match=r"build_memory\(images\)"):
        model(torch.rand(1, 3, 64, 64))


def test_bad_inputs_are_clear_errors() -> None:
    model = _model(64).eval()
    with pytest.raises(ValueError, match="memory_size=2"):
        model.build_memory(torch.rand(3, 3, 64, 64))
    with pytest.raises(ValueError, match="divisible by 32"):
        model(torch.rand(1, 3, 64, 80))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        model(torch.rand(1, 1, 64, 64))
    with pytest.raises(ValueError, match="another image size"):
        model(torch.rand(1, 3, 128, 128))


def test_factory_names_unresolved_keys() -> None:
    cfg = MemSegConfig().with_overrides({"model.backbone_weights": "none"})
    with pytest.raises(ConfigError, match=r"model\.memory_size"):
        create_model(cfg)
    cfg = cfg.with_overrides({"model.memory_size": 2})
    with pytest.raises(ConfigError, match=r"model\.diff_scale"):
        create_model(cfg)


def test_config_switches_reach_the_modules() -> None:
    model = create_model(
        _config(**{"model.per_level_selection": False, "model.memory_pooling": False, "model.msff_fusion": False,
                   "model.diff_scale": 3.0, "model.feature_scale": 2.0})
    )
    assert model.memory.per_level_selection is False and model.memory.pooling is False
    assert model.memory.diff_scale == 3.0 and model.memory.feature_scale == 2.0
    assert model.msff.fusion is False
    transistor = create_model(
        resolve_for_category(MemSegConfig().with_overrides({"model.backbone_weights": "none"}), "transistor")
    )
    assert transistor.memory.diff_scale == 1000.0 and transistor.memory.feature_scale == 1.0
    assert transistor.memory_size == 30


def test_decoder_reads_a_post_relu_stem() -> None:
    model = _model(64).eval()
    seen: list[torch.Tensor] = []
    model.decoder.register_forward_pre_hook(lambda _module, args: seen.append(args[2]))
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        model(x)
        pre_relu = model.extractor.bn1(model.extractor.conv1(model._normalise(x)))
    (stem,) = seen
    assert (pre_relu < 0).any()  # the ReLU has something to remove
    assert float(stem.min()) >= 0.0 and (stem > 0).any()
    torch.testing.assert_close(stem, torch.relu(pre_relu), rtol=0.0, atol=0.0)


@pytest.mark.parametrize("head_init", ["default", "normal"])
def test_default_head_init_leaves_pytorchs_initial_weights(head_init: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # The RNG state right before the heads are built, to build the same modules again outside MemSeg.
    rng_states: list[torch.Tensor] = []

    def recording_msff(*args: object, **kwargs: object) -> MultiScaleFeatureFusion:
        rng_states.append(torch.get_rng_state())
        return MultiScaleFeatureFusion(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(memseg_network, "MultiScaleFeatureFusion", recording_msff)
    overrides = {} if head_init == "default" else {"model.head_init": head_init}
    torch.manual_seed(0)
    model = create_model(_config(**overrides))
    channels = model.extractor.level_channels
    torch.set_rng_state(rng_states[0])
    fresh_msff = MultiScaleFeatureFusion(channels, fusion=True)
    fresh_decoder = UNetDecoder(model.encoder.out_channels, channels, model.extractor.stem_channels)
    same = [
        torch.equal(value, fresh.state_dict()[name])
        for built, fresh in ((model.msff, fresh_msff), (model.decoder, fresh_decoder))
        for name, value in built.state_dict().items()
    ]
    if head_init == "default":
        assert MemSegConfig().model.head_init == "default"
        assert all(same)
    else:  # the check above can tell a re-initialised head from PyTorch's
        assert not all(same)
