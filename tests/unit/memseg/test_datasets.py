"""Training batches, worker seeding, the fixed validation set, the test set and the splits fit() uses."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from memseg.config import MemSegConfig, resolve_for_category
from memseg.data import datasets as ds
from memseg.data.datasets import (
    BalancedBatchSampler,
    ItemKey,
    TrainDataset,
    build_validation_set,
    category_splits,
    create_train_loader,
    load_test_set,
    synthetic_count,
)
from memseg.errors import ConfigError
from memseg.synthesis import AnomalyGenerator, create_texture_source, worker_rng

SIZE = 64


def _write_category(root: Path, category: str, n_train: int = 16) -> Path:
    """A minimal MVTec-layout category: textured train/good images, one good and one defect test image."""
    rng = np.random.default_rng(0)
    base = (rng.random((8, 8, 3)) * 255).astype(np.uint8)
    texture = cv2.resize(base, (SIZE, SIZE), interpolation=cv2.INTER_CUBIC)

    def image() -> np.ndarray:
        noise = rng.normal(0, 8, (SIZE, SIZE, 3))
        return np.clip(texture.astype(float) + noise, 0, 255).astype(np.uint8)

    cat = root / category
    for sub in ("train/good", "test/good", "test/hole", "ground_truth/hole"):
        (cat / sub).mkdir(parents=True)
    for i in range(n_train):
        cv2.imwrite(str(cat / "train/good" / f"{i:03d}.png"), image())
    cv2.imwrite(str(cat / "test/good/000.png"), image())
    defect = image()
    defect[20:30, 20:30] = 0
    cv2.imwrite(str(cat / "test/hole/000.png"), defect)
    mask = np.zeros((SIZE, SIZE), np.uint8)
    mask[20:30, 20:30] = 255
    cv2.imwrite(str(cat / "ground_truth/hole/000_mask.png"), mask)
    return root


@pytest.fixture
def cfg(tmp_path: Path) -> MemSegConfig:
    root = _write_category(tmp_path / "data", "carpet")
    base = MemSegConfig().with_overrides(
        {
            "data.root": str(root),
            "data.category": "carpet",
            "data.image_size": SIZE,
            "data.texture_source": "procedural",
            "data.val_min_images": 3,
            "model.memory_size": 3,
            "train.batch_size": 8,
            "train.seed": 7,
        }
    )
    return resolve_for_category(base)


def test_sampler_puts_exactly_the_synthetic_ratio_in_every_batch() -> None:
    for batch_size, ratio, expected in [(8, 0.5, 4), (8, 0.25, 2), (6, 0.5, 3), (10, 0.3, 3)]:
        sampler = BalancedBatchSampler(13, batch_size, ratio, seed=1)
        assert synthetic_count(batch_size, ratio) == expected
        for _, batch in zip(range(20), sampler, strict=False):
            assert len(batch) == batch_size
            assert sum(k.synthetic for k in batch) == expected


def test_sampler_covers_every_image_each_epoch_and_resumes_at_a_step() -> None:
    sampler = BalancedBatchSampler(16, 8, 0.5, seed=3)
    epoch0 = [k.index for batch in sampler.epoch_batches(0) for k in batch]
    assert sorted(epoch0) == list(range(16))
    full = [b for _, b in zip(range(7), BalancedBatchSampler(16, 8, 0.5, seed=3), strict=False)]
    resumed = [b for _, b in zip(range(4), BalancedBatchSampler(16, 8, 0.5, seed=3, start_step=3), strict=False)]
    assert resumed == full[3:]
    other_seed = [b for _, b in zip(range(7), BalancedBatchSampler(16, 8, 0.5, seed=4), strict=False)]
    assert other_seed != full


def test_loader_batches_hold_the_synthetic_share_with_real_masks(cfg: MemSegConfig) -> None:
    _, splits = category_splits(cfg)
    loader = create_train_loader(splits.train, cfg)
    it = iter(loader)
    for _ in range(3):
        images, masks = next(it)
        assert images.shape == (8, 3, SIZE, SIZE)
        assert images.dtype == torch.float32
        assert float(images.min()) >= 0.0 and float(images.max()) <= 1.0
        assert masks.shape == (8, SIZE, SIZE)
        assert set(torch.unique(masks).tolist()) <= {0.0, 1.0}
        # carpet uses no foreground mask, so every synthetic item gets a non-empty Perlin mask.
        assert int((masks.flatten(1).sum(1) > 0).sum()) == 4


def test_a_worker_process_loads_the_batches_the_main_process_would(cfg: MemSegConfig) -> None:
    # One worker has worker id 0, as the main process does, so it draws the same anomalies; its
    # start-up (worker_init_fn) limits it to one torch and one OpenCV thread.
    _, splits = category_splits(cfg)
    main = iter(create_train_loader(splits.train, cfg))
    worker_cfg = cfg.with_overrides({"data.num_workers": 1})
    loader = create_train_loader(splits.train, worker_cfg)
    assert loader.worker_init_fn is ds.worker_init_fn
    forked = iter(loader)
    for _ in range(2):
        (images_a, masks_a), (images_b, masks_b) = next(main), next(forked)
        torch.testing.assert_close(images_a, images_b, rtol=0, atol=0)
        torch.testing.assert_close(masks_a, masks_b, rtol=0, atol=0)
    forked._shutdown_workers()


def test_category_splits_names_an_unresolved_memory_size(cfg: MemSegConfig) -> None:
    with pytest.raises(ConfigError, match=r"model\.memory_size: not set"):
        category_splits(cfg.with_overrides({"model.memory_size": None}))


def test_training_split_excludes_memory_and_validation_images(cfg: MemSegConfig) -> None:
    files, splits = category_splits(cfg)
    memory = {s.path for s in splits.memory}
    train = {s.path for s in splits.train}
    val = {s.path for s in splits.val}
    assert len(memory) == 3
    assert len(val) >= 3
    assert not memory & train
    assert not memory & val
    assert not train & val
    assert memory | train | val == {s.path for s in files.train}
    # The authors' choice: the memory is the first N by filename.
    assert sorted(p.name for p in memory) == ["000.png", "001.png", "002.png"]
    assert set(TrainDataset(splits.train, cfg).paths) == train


def test_split_does_not_depend_on_the_training_seed(cfg: MemSegConfig) -> None:
    _, a = category_splits(cfg)
    _, b = category_splits(cfg.with_overrides({"train.seed": 99}))
    assert a == b


def _synthetic_item(dataset: TrainDataset, index: int = 0, epoch: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    return dataset[ItemKey(index, True, epoch)]


def test_worker_seeding_differs_per_worker_and_repeats_per_seed(cfg: MemSegConfig) -> None:
    _, splits = category_splits(cfg)
    dataset = TrainDataset(splits.train, cfg)
    # Two batches asking for the very same synthetic item: with two workers, batch 0 is made by
    # worker 0 and batch 1 by worker 1, each from a fresh worker_rng(seed, worker_id, epoch).
    same = [[ItemKey(0, True, 0), ItemKey(1, True, 0)]] * 2
    # The fork-safe loader of create_train_loader (OpenCV's pool stopped around the fork).
    loader = ds._ForkSafeLoader(dataset, batch_sampler=same, num_workers=2)
    (img_w0, mask_w0), (img_w1, mask_w1) = list(loader)
    assert not torch.equal(mask_w0[0], mask_w1[0])
    assert not torch.equal(img_w0[0], img_w1[0])

    # Worker 0's first draw is exactly the generator fed with worker_rng(seed, 0, 0).
    generator = AnomalyGenerator(cfg.synthesis, create_texture_source("procedural"), "carpet")
    expected_img, expected_mask = generator(np.array(dataset.image(0)), worker_rng(cfg.train.seed, 0, 0))
    assert torch.equal(mask_w0[0], torch.from_numpy(expected_mask))
    assert torch.equal(img_w0[0], ds.to_tensor(expected_img))
    # ... and worker 1's with worker_rng(seed, 1, 0).
    _, expected_mask1 = generator(np.array(dataset.image(0)), worker_rng(cfg.train.seed, 1, 0))
    assert torch.equal(mask_w1[0], torch.from_numpy(expected_mask1))

    # The same seed repeats; another seed does not.
    again = list(ds._ForkSafeLoader(TrainDataset(splits.train, cfg), batch_sampler=same, num_workers=2))
    assert torch.equal(again[0][1], mask_w0) and torch.equal(again[1][1], mask_w1)
    reseeded = TrainDataset(splits.train, cfg.with_overrides({"train.seed": 8}))
    assert not torch.equal(_synthetic_item(reseeded)[1], mask_w0[0])
    # A new epoch draws new anomalies.
    assert not torch.equal(_synthetic_item(TrainDataset(splits.train, cfg), epoch=1)[1], mask_w0[0])


def test_normal_items_are_the_untouched_image_with_an_empty_mask(cfg: MemSegConfig) -> None:
    _, splits = category_splits(cfg)
    dataset = TrainDataset(splits.train, cfg)
    image, mask = dataset[ItemKey(2, False, 0)]
    assert torch.equal(image, ds.to_tensor(np.array(dataset.image(2))))
    assert not mask.any()


def test_validation_set_is_fixed_and_independent_of_the_training_seed(cfg: MemSegConfig) -> None:
    _, splits = category_splits(cfg)
    ds._VAL_CACHE.clear()
    first = build_validation_set(splits.val, cfg)
    k = cfg.data.val_anomalies_per_image
    n = len(splits.val)
    assert len(first) == n * (1 + k)
    assert first.labels.tolist() == ([0] + [1] * k) * n
    assert first.defect_types[: 1 + k] == ["good"] + ["synthetic"] * k
    assert all(first.masks[i].any() == bool(first.labels[i]) for i in range(len(first)))
    assert first.images.shape == (n * (1 + k), 3, SIZE, SIZE)
    # Clean entries are the images themselves.
    assert torch.equal(first.images[0], ds.to_tensor(ds.load_images([splits.val[0].path], SIZE))[0])

    assert build_validation_set(splits.val, cfg) is first  # cached
    ds._VAL_CACHE.clear()
    rebuilt = build_validation_set(splits.val, cfg.with_overrides({"train.seed": 12345}))
    assert torch.equal(rebuilt.images, first.images)
    assert np.array_equal(rebuilt.masks, first.masks)

    ds._VAL_CACHE.clear()
    other = build_validation_set(splits.val, cfg.with_overrides({"eval.val_seed": 1}))
    assert not np.array_equal(other.masks, first.masks)


def test_test_set_has_masks_labels_and_defect_types(cfg: MemSegConfig) -> None:
    files, _ = category_splits(cfg)
    images, masks, labels, types = load_test_set(files.test, SIZE)
    assert images.shape == (2, 3, SIZE, SIZE)
    assert labels.tolist() == [0, 1]
    assert types == ["good", "hole"]
    assert not masks[0].any()
    assert masks[1].sum() == 100 and masks[1][25, 25] == 1


def test_image_cache_decodes_once(cfg: MemSegConfig) -> None:
    files, _ = category_splits(cfg)
    cache = ds.ImageCache()
    a = cache.get(files.train[0].path, SIZE)
    b = cache.get(files.train[0].path, SIZE)
    assert a is b
    assert not a.flags.writeable
    assert cache.get(files.train[0].path, 32).shape == (32, 32, 3)
    assert len(cache) == 2
