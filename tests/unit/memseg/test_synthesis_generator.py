"""AnomalyGenerator end to end, and per-worker seeding (docs/model.md, "Anomaly synthesis")."""

from __future__ import annotations

import numpy as np
import pytest

from memseg.config import SynthesisConfig, load_config, resolve_for_category
from memseg.synthesis import AnomalyGenerator, ProceduralTextureSource, worker_rng
from memseg.synthesis.foreground import foreground_for


class ConstantTexture:
    """A real TextureSource whose textures are one known colour."""

    def __init__(self, rgb: tuple[int, int, int]) -> None:
        self.rgb = rgb

    def sample(self, rng: np.random.Generator, size: int) -> np.ndarray:
        return np.broadcast_to(np.array(self.rgb, dtype=np.uint8), (size, size, 3)).copy()


def _texture_image(size: int = 64) -> np.ndarray:
    return np.random.default_rng(100).integers(60, 200, (size, size, 3), dtype=np.uint8)


def _hazelnut_image(size: int = 64) -> np.ndarray:
    """Bright textured disc (foreground for hazelnut: grey > 50) on a dark background."""
    rng = np.random.default_rng(101)
    yy, xx = np.mgrid[:size, :size]
    disc = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size * 0.3) ** 2
    image = rng.integers(0, 20, (size, size, 3), dtype=np.uint8)
    image[disc] = rng.integers(120, 230, (int(disc.sum()), 3), dtype=np.uint8)
    return image


def test_texture_category_default_config_gives_non_empty_masks() -> None:
    gen = AnomalyGenerator(SynthesisConfig(), ProceduralTextureSource(), "carpet")
    assert gen.foreground is None
    image = _texture_image()
    for seed in range(25):
        out, mask = gen(image, np.random.default_rng(seed))
        assert out.shape == image.shape and out.dtype == np.uint8
        assert mask.shape == image.shape[:2] and mask.dtype == np.float32
        assert set(np.unique(mask)) <= {0.0, 1.0}
        assert mask.any(), f"seed {seed}: empty mask for a texture category"
        outside = mask == 0
        np.testing.assert_array_equal(out[outside], image[outside])


def test_object_category_keeps_anomalies_on_the_foreground() -> None:
    cfg = resolve_for_category(load_config(), "hazelnut").synthesis
    gen = AnomalyGenerator(cfg, ProceduralTextureSource(), "hazelnut")
    image = _hazelnut_image()
    fg = foreground_for(cfg)(image)
    assert 0.1 < fg.mean() < 0.5
    non_empty = 0
    for seed in range(30):
        out, mask = gen(image, np.random.default_rng(seed))
        assert (mask * (1.0 - fg)).sum() == 0.0, f"seed {seed}: mask pixels on the background"
        np.testing.assert_array_equal(out[fg == 0], image[fg == 0])
        non_empty += bool(mask.any())
    assert non_empty >= 24


def test_disabling_the_foreground_mask_lets_anomalies_reach_the_background() -> None:
    cfg = SynthesisConfig(use_foreground_mask=False)
    gen = AnomalyGenerator(cfg, ProceduralTextureSource(), "hazelnut")
    image = _hazelnut_image()
    fg = foreground_for(SynthesisConfig(), "hazelnut")(image)
    on_background = sum((gen(image, np.random.default_rng(s))[1] * (1 - fg)).sum() > 0 for s in range(20))
    assert on_background > 0


def test_no_foreground_returns_normal_sample() -> None:
    gen = AnomalyGenerator(SynthesisConfig(), ProceduralTextureSource(), "hazelnut")
    dark = np.full((32, 32, 3), 5, dtype=np.uint8)  # nothing above hazelnut's threshold 50
    out, mask = gen(dark, np.random.default_rng(0))
    np.testing.assert_array_equal(out, dark)
    assert mask.dtype == np.float32 and not mask.any()


def test_empty_perlin_mask_after_retries_returns_normal_sample() -> None:
    cfg = SynthesisConfig(perlin_threshold=0.999)  # noise (|n| <= 1) practically never gets there
    gen = AnomalyGenerator(cfg, ProceduralTextureSource(), "carpet", mask_attempts=2)
    image = _texture_image(32)
    for seed in range(5):
        out, mask = gen(image, np.random.default_rng(seed))
        np.testing.assert_array_equal(out, image)
        assert not mask.any()


def test_texture_source_at_full_opacity_is_pasted_inside_the_mask() -> None:
    cfg = SynthesisConfig(texture_probability=1.0, transparency_min=1.0, transparency_max=1.0)
    gen = AnomalyGenerator(cfg, ConstantTexture((1, 2, 3)), "carpet")
    image = _texture_image()
    out, mask = gen(image, np.random.default_rng(4))
    inside = mask == 1
    assert inside.any()
    assert (out[inside] == (1, 2, 3)).all()


def test_structural_source_draws_from_the_image_itself() -> None:
    cfg = SynthesisConfig(
        texture_probability=0.0,
        transparency_min=1.0,
        transparency_max=1.0,
        structure_rotation_deg=0.0,
        structure_color_jitter=0.0,
        structure_hue_jitter=0.0,
    )
    gen = AnomalyGenerator(cfg, ConstantTexture((1, 2, 3)), "carpet")
    # Four uniform colours in 4x8 grid cells: the shuffled source can only hold these colours.
    image = np.zeros((32, 64, 3), dtype=np.uint8)
    palette = np.array([(200, 10, 10), (10, 200, 10), (10, 10, 200), (90, 90, 90)], dtype=np.uint8)
    for r in range(4):
        for c in range(8):
            image[r * 8 : (r + 1) * 8, c * 8 : (c + 1) * 8] = palette[(r + c) % 4]
    out, mask = gen(image, np.random.default_rng(2))
    inside = out[mask == 1]
    assert len(inside) > 0
    assert not (inside == (1, 2, 3)).all(axis=1).any()
    assert (inside[:, None, :] == palette[None]).all(axis=2).any(axis=1).all()
    assert not np.array_equal(out, image)


def test_partial_transparency_mixes_image_and_source() -> None:
    cfg = SynthesisConfig(texture_probability=1.0, transparency_min=0.5, transparency_max=0.5)
    gen = AnomalyGenerator(cfg, ConstantTexture((200, 200, 200)), "carpet")
    image = np.full((32, 32, 3), 100, dtype=np.uint8)
    out, mask = gen(image, np.random.default_rng(1))
    assert (out[mask == 1] == 150).all()
    assert (out[mask == 0] == 100).all()


def test_deterministic_per_seed_and_input_untouched() -> None:
    gen = AnomalyGenerator(SynthesisConfig(), ProceduralTextureSource(), "carpet")
    image = _texture_image()
    before = image.copy()
    a_img, a_mask = gen(image, np.random.default_rng(7))
    b_img, b_mask = gen(image, np.random.default_rng(7))
    c_img, c_mask = gen(image, np.random.default_rng(8))
    np.testing.assert_array_equal(a_img, b_img)
    np.testing.assert_array_equal(a_mask, b_mask)
    assert not (np.array_equal(a_img, c_img) and np.array_equal(a_mask, c_mask))
    np.testing.assert_array_equal(image, before)


def test_both_sources_are_used_at_probability_half() -> None:
    gen = AnomalyGenerator(SynthesisConfig(), ConstantTexture((1, 2, 3)), "carpet")
    image = _texture_image()
    from_texture = 0
    for seed in range(40):
        out, mask = gen(image, np.random.default_rng(seed))
        # delta >= 0.15 moves every masked pixel towards (1, 2, 3) when the texture is the source.
        from_texture += bool((out[mask == 1].astype(int) < image[mask == 1].astype(int) - 5).all())
    assert 8 <= from_texture <= 32


def test_rejects_bad_input() -> None:
    gen = AnomalyGenerator(SynthesisConfig(), ProceduralTextureSource(), "carpet")
    with pytest.raises(ValueError, match="uint8"):
        gen(np.zeros((8, 8, 3), dtype=np.float32), np.random.default_rng(0))
    with pytest.raises(ValueError, match="mask_attempts"):
        AnomalyGenerator(SynthesisConfig(), ProceduralTextureSource(), "carpet", mask_attempts=0)


def test_worker_rng_streams() -> None:
    def draw(*args: int) -> np.ndarray:
        return worker_rng(*args).random(4)

    np.testing.assert_array_equal(draw(42, 0, 0), draw(42, 0, 0))
    assert not np.array_equal(draw(42, 0, 0), draw(42, 1, 0))
    assert not np.array_equal(draw(42, 0, 0), draw(42, 0, 1))
    assert not np.array_equal(draw(42, 0, 0), draw(43, 0, 0))
    assert draw(-1, 0, 0).shape == (4,)
