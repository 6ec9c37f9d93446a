"""Coordinate attention, MSFF, decoder and head init (docs/model.md, "Multi-scale feature fusion", "Decoder")."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from memseg.model.coord_attention import CoordinateAttention
from memseg.model.decoder import UNetDecoder
from memseg.model.msff import MultiScaleFeatureFusion
from memseg.model.weight_init import init_head_weights

LEVELS = (64, 128, 256)


@pytest.mark.parametrize(("channels", "mip"), [(128, 8), (256, 8), (512, 16)])
def test_coordinate_attention_returns_weights_only(channels: int, mip: int) -> None:
    ca = CoordinateAttention(channels).eval()
    assert ca.conv1.out_channels == mip
    x = torch.randn(2, channels, 6, 10)
    with torch.no_grad():
        w = ca(x)
        scaled = ca(x * 1000.0)
    assert w.shape == x.shape
    assert ((w > 0) & (w < 1)).all()
    # Weights, not x * weights: a positive rescaling of x cannot push values beyond (0, 1).
    assert ((scaled >= 0) & (scaled <= 1)).all()  # x * weights would reach ~1000
    # Separable: a_h (B, C, H, 1) * a_w (B, C, 1, W) has rank one per channel.
    singular = torch.linalg.svdvals(w[0, 0].double())
    assert singular[1] < 1e-5 * singular[0]


def _msff_inputs(size: int = 32) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    gen = torch.Generator().manual_seed(0)
    ci = [torch.randn(2, 2 * c, size >> k, size >> k, generator=gen) for k, c in enumerate(LEVELS)]
    maps = [torch.rand(2, 1, size >> k, size >> k, generator=gen) for k in range(len(LEVELS))]
    return ci, maps


def test_msff_shapes_and_attention_multiplication() -> None:
    msff = MultiScaleFeatureFusion(LEVELS).eval()
    ci, maps = _msff_inputs()
    with torch.no_grad():
        out = msff(ci, maps)
        zeroed = msff(ci, [maps[0], torch.zeros_like(maps[1]), maps[2]])
    assert [tuple(o.shape) for o in out] == [(2, 64, 32, 32), (2, 128, 16, 16), (2, 256, 8, 8)]
    assert torch.count_nonzero(zeroed[1]) == 0
    assert torch.equal(zeroed[0], out[0]) and torch.equal(zeroed[2], out[2])
    assert [m.conv_in[1].__class__ for m in msff.levels] == [nn.BatchNorm2d] * 3


def test_msff_fusion_switch_controls_top_down_flow() -> None:
    ci, maps = _msff_inputs()
    changed = [ci[0], ci[1], ci[2] + 5.0]
    fused = MultiScaleFeatureFusion(LEVELS, fusion=True).eval()
    separate = MultiScaleFeatureFusion(LEVELS, fusion=False).eval()
    with torch.no_grad():
        assert not torch.allclose(fused(ci, maps)[0], fused(changed, maps)[0])
        assert torch.equal(separate(ci, maps)[0], separate(changed, maps)[0])


def test_decoder_stage_widths_follow_the_authors_table() -> None:
    dec = UNetDecoder(512, LEVELS, 64).eval()
    convs = [m for m in dec.modules() if isinstance(m, nn.Conv2d)]
    widths = [(c.in_channels, c.out_channels) for c in convs]
    assert widths == [
        (512, 256), (512, 256), (256, 256),
        (256, 128), (256, 128), (128, 128),
        (128, 64), (128, 64), (64, 64),
        (64, 32), (96, 48), (48, 48),
        (48, 48), (48, 24), (24, 24),
        (24, 24), (24, 2),
    ]
    msff = [torch.randn(1, c, 16 >> k, 16 >> k) for k, c in enumerate(LEVELS)]
    with torch.no_grad():
        out = dec(torch.randn(1, 512, 2, 2), msff, torch.randn(1, 64, 32, 32), (64, 64))
    assert out.shape == (1, 2, 64, 64)


@torch.no_grad()
def test_head_init_schemes() -> None:
    torch.manual_seed(0)
    normal = UNetDecoder(512, LEVELS, 64)
    init_head_weights(normal, "normal")
    big = normal.db1[0][0]
    assert abs(float(big.weight.std()) - 0.02) < 0.001
    assert float(big.bias.abs().max()) == 0.0
    bn = normal.db1[0][1]
    assert abs(float(bn.weight.mean()) - 1.0) < 0.01 and 0.01 < float(bn.weight.std()) < 0.03
    default = UNetDecoder(512, LEVELS, 64)
    init_head_weights(default, "default")
    assert float(default.db1[0][0].weight.std()) < 0.01  # PyTorch's kaiming-uniform(a=sqrt 5) here
    assert torch.equal(default.db1[0][1].weight, torch.ones(256))
    with pytest.raises(ValueError, match="model.head_init"):
        init_head_weights(default, "xavier")
