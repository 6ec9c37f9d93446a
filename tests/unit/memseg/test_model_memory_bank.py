"""Memory module and spatial attention (docs/model.md, "Memory module", "Spatial attention")."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from memseg.model.coreset import greedy_coreset
from memseg.model.memory_bank import MemoryBank, MemoryNotBuiltError
from memseg.model.spatial_attention import spatial_attention

CHANNELS = (4, 6, 8)
SIZES = ((8, 8), (4, 4), (2, 2))


def _features(n: int, seed: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(n, c, *s, generator=gen) for c, s in zip(CHANNELS, SIZES, strict=True)]


def _bank(**kwargs: object) -> MemoryBank:
    opts: dict = {"diff_scale": 100.0, "feature_scale": 10.0, "pooling": True, "per_level_selection": True}
    opts.update(kwargs)
    return MemoryBank(CHANNELS, **opts)


def test_input_equal_to_a_memory_sample_selects_it_with_zero_difference() -> None:
    memory = _features(5, seed=0)
    bank = _bank()
    bank.build(memory)
    batch = [torch.cat([m[3:4], m[1:2]]) for m in memory]
    out = bank(batch)
    assert out.indices.tolist() == [[3, 3, 3], [1, 1, 1]]
    for di in out.differences:
        assert torch.count_nonzero(di) == 0
    # A different input gives a non-zero difference.
    other = bank(_features(1, seed=99))
    assert all(di.abs().sum() > 0 for di in other.differences)


def test_matches_a_brute_force_loop_over_samples() -> None:
    memory, batch = _features(6, seed=1), _features(3, seed=2)
    bank = _bank(diff_scale=7.0, feature_scale=3.0)
    bank.build(memory)
    out = bank(batch)
    for level, (x, m) in enumerate(zip(batch, memory, strict=True)):
        px, pm = F.avg_pool2d(x, 3, 1, 1), F.avg_pool2d(m, 3, 1, 1)
        for b in range(x.shape[0]):
            dists = torch.stack([(px[b] - pm[n]).abs().sum() for n in range(m.shape[0])])
            best = int(dists.argmin())
            assert out.indices[b, level] == best
            expected_di = (px[b] - pm[best]).abs() * 7.0
            torch.testing.assert_close(out.differences[level][b], expected_di)
            expected_ci = torch.cat([x[b] * 3.0, expected_di])
            torch.testing.assert_close(out.concatenated[level][b], expected_ci)


def test_nearest_match_compares_each_location_with_the_closest_memory_vector_anywhere() -> None:
    memory, batch = _features(4, seed=5), _features(2, seed=6)
    bank = _bank(diff_scale=2.0, match="nearest")
    bank.build(memory)
    out = bank(batch)
    for level, (x, m) in enumerate(zip(batch, memory, strict=True)):
        px, pm = F.avg_pool2d(x, 3, 1, 1), F.avg_pool2d(m, 3, 1, 1)
        keys = pm.permute(0, 2, 3, 1).reshape(-1, pm.shape[1])
        for b in range(x.shape[0]):
            for i in range(px.shape[2]):
                for j in range(px.shape[3]):
                    nearest = keys[((keys - px[b, :, i, j]) ** 2).sum(1).argmin()]
                    expected = (px[b, :, i, j] - nearest).abs() * 2.0
                    torch.testing.assert_close(out.differences[level][b, :, i, j], expected)


def test_nearest_match_finds_a_pattern_moved_to_another_location_of_the_memory() -> None:
    # A shifted copy of a memory sample: aligned comparison sees a difference, nearest matching none.
    memory = _features(3, seed=7)
    shifted = [torch.roll(m[1:2], shifts=(0, 1), dims=(2, 3)) for m in memory]
    aligned, nearest = _bank(pooling=False), _bank(pooling=False, match="nearest")
    aligned.build(memory)
    nearest.build(memory)
    assert all(di.abs().sum() > 0 for di in aligned(shifted).differences)
    assert all(torch.count_nonzero(di) == 0 for di in nearest(shifted).differences)
    assert nearest(shifted).indices.tolist() == [[1, 1, 1]]


def test_nearest_match_in_small_blocks_gives_the_same_differences(monkeypatch: pytest.MonkeyPatch) -> None:
    memory, batch = _features(4, seed=8), _features(3, seed=9)
    bank = _bank(match="nearest")
    bank.build(memory)
    whole = bank(batch)
    monkeypatch.setattr("memseg.model.memory_bank._DISTANCE_BLOCK", 7)
    blocked = bank(batch)
    for a, b in zip(whole.differences, blocked.differences, strict=True):
        torch.testing.assert_close(a, b)


def test_coreset_keeps_one_vector_of_each_cluster_first() -> None:
    # Three tight clusters of different sizes: a uniform draw of three would often miss the small
    # one; greedy k-center reaches every cluster before a second vector of any.
    gen = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    sizes = (50, 30, 2)
    vectors = torch.cat([c + 0.01 * torch.randn(n, 2, generator=gen) for c, n in zip(centres, sizes, strict=True)])
    picked = greedy_coreset(vectors, 3)
    cluster = torch.cat([torch.full((n,), i) for i, n in enumerate(sizes)])
    assert sorted(cluster[picked].tolist()) == [0, 1, 2]
    assert torch.equal(greedy_coreset(vectors, 3), picked)  # the same memory, the same coreset
    assert torch.equal(greedy_coreset(vectors, 500), torch.arange(len(vectors)))
    with pytest.raises(ValueError, match="size must be at least 1"):
        greedy_coreset(vectors, 0)


def test_nearest_match_with_a_coreset_compares_with_the_kept_vectors_only() -> None:
    memory, batch = _features(4, seed=12), _features(2, seed=13)
    bank = _bank(diff_scale=1.0, match="nearest", coreset=10)
    bank.build(memory)
    out = bank(batch)
    for level, (x, m) in enumerate(zip(batch, memory, strict=True)):
        px, pm = F.avg_pool2d(x, 3, 1, 1), F.avg_pool2d(m, 3, 1, 1)
        every = pm.permute(0, 2, 3, 1).reshape(-1, pm.shape[1])
        kept = getattr(bank, f"coreset{level + 1}")
        assert kept.shape == (10,)
        assert torch.equal(kept, greedy_coreset(every, 10))
        keys = every[kept]
        for i in range(px.shape[2]):
            for j in range(px.shape[3]):
                nearest = keys[((keys - px[1, :, i, j]) ** 2).sum(1).argmin()]
                torch.testing.assert_close(out.differences[level][1, :, i, j], (px[1, :, i, j] - nearest).abs())


@pytest.mark.parametrize("bound", [{"coreset": 10_000}, {"window": 8}])
def test_a_bound_that_covers_the_whole_memory_is_exact_nearest_matching(bound: dict) -> None:
    memory, batch = _features(3, seed=14), _features(2, seed=15)
    exact, bounded = _bank(match="nearest"), _bank(match="nearest", **bound)
    exact.build(memory)
    bounded.build(memory)
    for a, b in zip(exact(batch).differences, bounded(batch).differences, strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("bound", [{"coreset": 12}, {"window": 1}])
def test_bounded_nearest_matching_for_export_gives_the_same_differences(bound: dict) -> None:
    memory, batch = _features(4, seed=16), _features(3, seed=17)
    bank = _bank(match="nearest", **bound)
    bank.build(memory)
    expected = bank(batch)
    bank.export_friendly = True
    for a, b in zip(expected.differences, bank(batch).differences, strict=True):
        torch.testing.assert_close(a, b)


def test_a_window_and_a_coreset_together_are_refused() -> None:
    with pytest.raises(ValueError, match="coreset and window cannot both be set"):
        _bank(match="nearest", window=1, coreset=8)


def test_exact_nearest_matching_refuses_the_export_graph() -> None:
    bank = _bank(match="nearest")
    bank.build(_features(2, seed=18))
    bank.export_friendly = True
    with pytest.raises(RuntimeError, match="model.memory_coreset"):
        bank(_features(1, seed=19))


def test_the_coreset_is_in_the_state_dict_and_an_older_state_dict_loads_without_one() -> None:
    bank = _bank(match="nearest", coreset=5)
    bank.build(_features(3, seed=20))
    state = bank.state_dict()
    assert tuple(state["coreset1"].shape) == (5,)
    fresh = _bank(match="nearest", coreset=5)
    fresh.load_state_dict(state)
    batch = _features(2, seed=21)
    for a, b in zip(bank(batch).differences, fresh(batch).differences, strict=True):
        assert torch.equal(a, b)
    older = {k: v for k, v in state.items() if not k.startswith("coreset")}
    exact = _bank(match="nearest")
    exact.load_state_dict(older)  # strict: the missing coreset is not an error
    assert all(getattr(exact, f"coreset{k}").numel() == 0 for k in (1, 2, 3))
    reference = _bank(match="nearest")
    reference.build(_features(3, seed=20))
    for a, b in zip(reference(batch).differences, exact(batch).differences, strict=True):
        assert torch.equal(a, b)


def _window_brute_force(x: torch.Tensor, m: torch.Tensor, radius: int) -> torch.Tensor:
    """|x - nearest memory vector within ``radius`` cells, any sample| by looping over locations."""
    out = torch.empty_like(x)
    h, w = x.shape[-2:]
    for b in range(x.shape[0]):
        for i in range(h):
            for j in range(w):
                cells = m[:, :, max(0, i - radius) : i + radius + 1, max(0, j - radius) : j + radius + 1]
                keys = cells.permute(0, 2, 3, 1).reshape(-1, m.shape[1])
                nearest = keys[((keys - x[b, :, i, j]) ** 2).sum(1).argmin()]
                out[b, :, i, j] = (x[b, :, i, j] - nearest).abs()
    return out


@pytest.mark.parametrize("radius", [0, 1, 2])
def test_window_match_is_the_nearest_vector_within_the_window_of_every_sample(radius: int) -> None:
    memory, batch = _features(3, seed=22), _features(2, seed=23)
    bank = _bank(diff_scale=1.0, match="nearest", window=radius)
    bank.build(memory)
    out = bank(batch)
    for level, (x, m) in enumerate(zip(batch, memory, strict=True)):
        expected = _window_brute_force(F.avg_pool2d(x, 3, 1, 1), F.avg_pool2d(m, 3, 1, 1), radius)
        torch.testing.assert_close(out.differences[level], expected)


def test_window_match_finds_a_pattern_moved_by_less_than_the_window() -> None:
    memory = _features(3, seed=26)
    shifted = [torch.roll(m[2:3], shifts=(1, -1), dims=(2, 3)) for m in memory]
    aligned, windowed = _bank(pooling=False), _bank(pooling=False, match="nearest", window=1)
    aligned.build(memory)
    windowed.build(memory)
    assert all(di.abs().sum() > 0 for di in aligned(shifted).differences)
    for di in windowed(shifted).differences:
        # roll wraps around: the first row and the last column came from the far side of the map
        assert torch.count_nonzero(di[..., 1:, :-1]) == 0
    assert windowed(shifted).indices.tolist() == [[2, 2, 2]]


def test_without_pooling_compares_raw_features() -> None:
    memory, batch = _features(4, seed=3), _features(2, seed=4)
    bank = _bank(pooling=False, diff_scale=1.0)
    bank.build(memory)
    out = bank(batch)
    for level, (x, m) in enumerate(zip(batch, memory, strict=True)):
        picked = m[out.indices[:, level]]
        torch.testing.assert_close(out.differences[level], (x - picked).abs())


def _level_disagreeing_features() -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Memory of two samples; the input is sample 0 at level 1 and sample 1 at levels 2 and 3.

    Sample 1 is far from the input at level 1 (a large offset over many elements), so the sum of the
    three level distances is smallest for sample 0, while levels 2 and 3 alone prefer sample 1.
    """
    m0 = [torch.zeros(1, c, *s) for c, s in zip(CHANNELS, SIZES, strict=True)]
    m1 = [torch.full((1, c, *s), 1.0) for c, s in zip(CHANNELS, SIZES, strict=True)]
    m1[0] = torch.full((1, CHANNELS[0], *SIZES[0]), 50.0)
    memory = [torch.cat([a, b]) for a, b in zip(m0, m1, strict=True)]
    x = [m0[0], m1[1], m1[2]]
    return memory, x


def test_per_level_selection_can_pick_different_samples_per_level() -> None:
    memory, x = _level_disagreeing_features()
    bank = _bank()
    bank.build(memory)
    out = bank(x)
    assert out.indices.tolist() == [[0, 1, 1]]
    assert all(torch.count_nonzero(di) == 0 for di in out.differences)


def test_joint_selection_picks_one_sample_for_all_levels() -> None:
    memory, x = _level_disagreeing_features()
    bank = _bank(per_level_selection=False)
    bank.build(memory)
    out = bank(x)
    assert out.indices.tolist() == [[0, 0, 0]]
    assert torch.count_nonzero(out.differences[0]) == 0
    assert torch.count_nonzero(out.differences[1]) > 0
    assert torch.count_nonzero(out.differences[2]) > 0


def test_run_before_build_is_a_clear_error() -> None:
    with pytest.raises(MemoryNotBuiltError, match="build_memory"):
        _bank()(_features(1, seed=0))


def test_other_resolution_than_the_memory_is_a_clear_error() -> None:
    bank = _bank()
    bank.build(_features(2, seed=0))
    wrong = [torch.randn(1, c, s[0] * 2, s[1] * 2) for c, s in zip(CHANNELS, SIZES, strict=True)]
    with pytest.raises(ValueError, match="another image size"):
        bank(wrong)


def test_memory_is_in_the_state_dict_and_loads_into_an_empty_bank() -> None:
    bank = _bank()
    bank.build(_features(3, seed=5))
    state = bank.state_dict()
    assert {k: tuple(v.shape) for k, v in state.items()} == {
        "level1": (3, 4, 8, 8), "level2": (3, 6, 4, 4), "level3": (3, 8, 2, 2),
        "coreset1": (0,), "coreset2": (0,), "coreset3": (0,),
    }
    fresh = _bank()
    assert not fresh.is_built
    fresh.load_state_dict(state)
    assert fresh.size == 3
    batch = _features(2, seed=6)
    a, b = bank(batch), fresh(batch)
    assert torch.equal(a.indices, b.indices)
    for x, y in zip(a.concatenated, b.concatenated, strict=True):
        assert torch.equal(x, y)


def test_outputs_are_float32_under_autocast() -> None:
    bank = _bank()
    bank.build(_features(2, seed=0))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = bank([f.bfloat16() for f in _features(1, seed=1)])
    assert all(t.dtype == torch.float32 for t in out.concatenated + out.differences)


def test_spatial_attention_multiplies_the_upsampled_coarser_means() -> None:
    di = [torch.full((1, 4, 8, 8), 2.0), torch.full((1, 6, 4, 4), 3.0), torch.full((1, 8, 2, 2), 5.0)]
    m1, m2, m3 = spatial_attention(di)
    assert m1.shape == (1, 1, 8, 8) and m2.shape == (1, 1, 4, 4) and m3.shape == (1, 1, 2, 2)
    torch.testing.assert_close(m3, torch.full_like(m3, 5.0))
    torch.testing.assert_close(m2, torch.full_like(m2, 15.0))
    torch.testing.assert_close(m1, torch.full_like(m1, 30.0))
    # Non-constant: the mean over channels, no normalisation; zero difference anywhere zeroes finer maps.
    di3 = torch.zeros(1, 8, 2, 2)
    di3[:, :4, 0, 0] = 4.0  # channel mean 2 at (0, 0), 0 elsewhere
    _, m2b, m3b = spatial_attention([di[0], di[1], di3])
    assert m3b[0, 0].tolist() == [[2.0, 0.0], [0.0, 0.0]]
    up = F.interpolate(m3b, size=(4, 4), mode="bilinear", align_corners=False)
    torch.testing.assert_close(m2b, 3.0 * up)
    assert m2b[0, 0, 3, 3] == 0.0
