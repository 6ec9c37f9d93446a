"""Evaluation, overlays, checkpoint loading and prediction on files, with a real (tiny) MemSeg."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from memseg.config import SCHEMA_VERSION, MemSegConfig, load_config, resolve_for_category
from memseg.errors import CheckpointError, ImageReadError
from memseg.evaluation import evaluate_model, predict_maps
from memseg.inference import (
    MAP_PNG_MAX,
    collect_images,
    load_checkpoint,
    predict,
    predict_paths,
)
from memseg.metrics import compute_metrics, image_scores, keys
from memseg.model import MemSeg, create_model
from memseg.visualize import (
    BAR_AREA_PX,
    BAR_GAP_PX,
    BAR_PX,
    FOOTER_PX,
    LABEL_PX,
    MAX_TILE_PX,
    MIN_TILE_PX,
    SEPARATOR_PX,
    colorize,
    map_range,
    overlay_heatmap,
    panel,
    scale_note,
    stack_panels,
    tile_size,
)
from pipelines.cli import main

SIZE = 64


@pytest.fixture(scope="module")
def tiny() -> tuple[MemSeg, MemSegConfig]:
    torch.manual_seed(0)
    cfg = resolve_for_category(
        load_config(
            None,
            [
                f"data.image_size={SIZE}", "data.category=carpet", "model.backbone_weights=none",
                "model.memory_size=2", "eval.top_k=10", "eval.batch_size=3",
            ],
        )
    )
    model = create_model(cfg)
    model.build_memory(torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1)))
    return model.eval(), cfg


def _payload(model: MemSeg, cfg: MemSegConfig, **changes: object) -> dict:
    payload = {
        "schema_version": SCHEMA_VERSION,
        "config": cfg.model_dump(),
        "state_dict": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "step": 7,
        "metrics": {"val_pixel_auroc": 0.5},
    }
    payload.update(changes)
    return payload


@pytest.fixture(scope="module")
def checkpoint_dir(tiny: tuple[MemSeg, MemSegConfig], tmp_path_factory: pytest.TempPathFactory) -> Path:
    model, cfg = tiny
    folder = tmp_path_factory.mktemp("ckpt")
    torch.save(_payload(model, cfg), folder / "best_model.pt")
    (folder / "model.pt").write_bytes(b"not a checkpoint")  # the folder must prefer best_model.pt
    return folder


def _rand_images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


# ---- evaluation -----------------------------------------------------------------------------------


def test_predict_maps_batches_all_input_kinds_alike(tiny: tuple[MemSeg, MemSegConfig]) -> None:
    model, _ = tiny
    images = _rand_images(5)
    model.train()
    maps = predict_maps(model, images, batch_size=2)
    assert model.training  # mode restored
    model.eval()
    assert maps.shape == (5, SIZE, SIZE) and maps.dtype == np.float32
    assert maps.min() >= 0.0 and maps.max() <= 1.0
    with torch.no_grad():
        direct = model.anomaly_map(images).numpy()
    np.testing.assert_allclose(maps, direct, atol=1e-5)  # batch size does not change the maps
    u8 = (images.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
    from_u8 = predict_maps(model, list(u8), batch_size=4)
    from_float = predict_maps(model, torch.from_numpy(u8).permute(0, 3, 1, 2).float() / 255, batch_size=5)
    np.testing.assert_allclose(from_u8, from_float, atol=1e-5)
    assert predict_maps(model, torch.zeros(0, 3, SIZE, SIZE), 2).shape == (0, SIZE, SIZE)


def test_bf16_precision_runs_the_head_in_bf16_and_stays_close(tiny: tuple[MemSeg, MemSegConfig]) -> None:
    model, _ = tiny
    images = _rand_images(4, seed=5)
    seen: list[torch.dtype] = []
    hook = model.decoder.final.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
    try:
        fp32 = predict_maps(model, images, batch_size=4)
        bf16 = predict_maps(model, images, batch_size=4, precision="bf16")
    finally:
        hook.remove()
    assert seen == [torch.float32, torch.bfloat16]
    assert bf16.dtype == np.float32 and bf16.min() >= 0.0 and bf16.max() <= 1.0
    # Measured ~1.7e-2 here: PyTorch's default head init gives this untrained model logits up to ~2.
    assert np.abs(bf16 - fp32).max() < 0.04
    with pytest.raises(ValueError, match="precision must be one of fp32, bf16, got 'fp16'"):
        predict_maps(model, images, batch_size=4, precision="fp16")


def test_evaluate_model_returns_maps_and_their_metrics(tiny: tuple[MemSeg, MemSegConfig]) -> None:
    model, cfg = tiny
    images = _rand_images(6, seed=3)
    masks = np.zeros((6, SIZE, SIZE), np.uint8)
    masks[3, 10:20, 10:30] = 1
    masks[4:, 40:50, 5:15] = 1
    labels = [0, 0, 0, 1, 1, 1]
    types = ["good"] * 3 + ["hole", "crack", "crack"]
    metrics, maps = evaluate_model(model, images, masks, labels, types, cfg.eval, "cpu")
    expected = compute_metrics(maps, masks, labels, types, top_k=cfg.eval.top_k, fpr_limit=cfg.eval.aupro_fpr_limit)
    assert metrics == expected
    assert {keys.IMAGE_AUROC, keys.PIXEL_AUPRO, f"{keys.PIXEL_AUROC}/crack", f"{keys.IMAGE_F1_MAX}/hole"} <= set(metrics)


# ---- overlays -------------------------------------------------------------------------------------


def test_overlay_keeps_shape_and_a_zero_map_keeps_the_image() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)
    clean = overlay_heatmap(image, np.zeros((40, 60), np.float32))
    assert clean.shape == image.shape and clean.dtype == np.uint8
    np.testing.assert_array_equal(clean, image)
    # Fixed scale: a faint, flat map changes the image by at most a few levels (no min-max stretch).
    faint = overlay_heatmap(image, np.full((10, 15), 0.02, np.float32))  # also resized to the image
    assert faint.shape == image.shape
    assert np.abs(faint.astype(int) - image.astype(int)).max() <= 4


def test_overlay_marks_high_scores_red_on_grey() -> None:
    image = np.full((32, 32, 3), 128, np.uint8)
    anomaly_map = np.zeros((32, 32), np.float32)
    anomaly_map[8:16, 8:16] = 1.0
    out = overlay_heatmap(image, anomaly_map, alpha=0.5).astype(int)
    r, g, b = out[12, 12]
    assert r >= 120 and r > g + 40 and r > b + 40  # JET at 1.0 is (dark) red
    assert (out[0, 0] == 128).all()


def _tiles(out: np.ndarray, n: int, th: int, tw: int) -> list[np.ndarray]:
    """The ``n`` tiles of a panel (below their label strips), left to right."""
    return [out[LABEL_PX : LABEL_PX + th, i * (tw + SEPARATOR_PX) : i * (tw + SEPARATOR_PX) + tw] for i in range(n)]


def _dark(region: np.ndarray) -> bool:
    """Whether ``region`` (on white) holds text: some near-black pixels."""
    return bool((region.max(axis=2) < 100).any())


def test_panel_has_four_labelled_tiles_a_colour_bar_and_draws_the_gt_outline() -> None:
    image = np.full((48, 40, 3), 100, np.uint8)
    image[5, 5] = (250, 10, 10)
    mask = np.zeros((48, 40), np.uint8)
    mask[10:30, 10:20] = 1
    th, tw = tile_size(48, 40)
    assert (th, tw) == (48 * 6, 40 * 6)  # a whole factor: the longer side reaches 256 px
    out = panel(image, mask, np.zeros((48, 40), np.float32))
    assert out.dtype == np.uint8
    assert out.shape == (LABEL_PX + th + FOOTER_PX, 4 * tw + 3 * SEPARATOR_PX + BAR_AREA_PX, 3)
    shown, truth, heat, overlay = _tiles(out, 4, th, tw)
    np.testing.assert_array_equal(shown, np.repeat(np.repeat(image, 6, axis=0), 6, axis=1))  # nearest upscale
    green = (truth[..., 1] == 255) & (truth[..., 0] == 0)
    assert green.any() and not green[20 * 6, 15 * 6]  # an outline, not a filled region
    # A flat map draws as the bottom colour of the scale and leaves the overlay as the image.
    assert (heat == colorize(np.zeros((1, 1)))[0, 0]).all()
    np.testing.assert_array_equal(overlay, shown)
    # Every tile and the colour bar have a label strip with text in it.
    for i in range(4):
        x = i * (tw + SEPARATOR_PX)
        assert _dark(out[:LABEL_PX, x : x + tw])
    assert _dark(out[:LABEL_PX, -BAR_AREA_PX:]) and _dark(out[-FOOTER_PX:])
    without = panel(image, None, np.zeros((48, 40)))
    assert without.shape[1] == 3 * tw + 2 * SEPARATOR_PX + BAR_AREA_PX
    np.testing.assert_array_equal(_tiles(without, 3, th, tw)[1], heat)  # no ground-truth tile


def test_the_colour_bar_follows_the_colormap_and_prints_its_numbers() -> None:
    image = np.full((64, 64, 3), 128, np.uint8)
    anomaly_map = np.linspace(0.0, 0.15, 64 * 64, dtype=np.float32).reshape(64, 64)
    out = panel(image, None, anomaly_map)
    th = tile_size(64, 64)[0]
    bar_area = out[LABEL_PX : LABEL_PX + th, -BAR_AREA_PX:]
    bar = bar_area[:, BAR_GAP_PX : BAR_GAP_PX + BAR_PX]
    expected = colorize(np.linspace(1.0, 0.0, th)[:, None])[:, 0]  # top of the scale at the top
    np.testing.assert_array_equal(bar, np.repeat(expected[:, None], BAR_PX, axis=1))
    assert tuple(bar[0, 0]) != tuple(bar[-1, 0])  # a real ramp, not one colour
    labels = bar_area[:, BAR_GAP_PX + BAR_PX :]
    assert _dark(labels[:20]) and _dark(labels[th // 2 - 10 : th // 2 + 10]) and _dark(labels[-20:])
    assert map_range(anomaly_map) == pytest.approx((0.0, 0.15))
    assert scale_note(map_range(anomaly_map)) == (
        "colour scale: this map's min to max, 0.000 to 0.150 (spread 0.150; not 0 to 1)")
    # A narrow range gets the decimals that tell its ends apart; a flat map says so.
    assert scale_note((0.4992, 0.5022)) == "colour scale: this map's min to max, 0.4992 to 0.5022 (spread 0.0030; not 0 to 1)"
    assert scale_note(map_range(np.full((4, 4), 0.02))) == "colour scale: this map is flat at 0.020 (not 0 to 1)"


def test_a_map_that_peaks_at_0_15_gets_the_full_contrast_of_the_stretched_scale() -> None:
    image = np.full((64, 64, 3), 128, np.uint8)
    anomaly_map = np.zeros((64, 64), np.float32)
    anomaly_map[24:40, 24:40] = 0.15
    out = panel(image, None, anomaly_map)
    th, tw = tile_size(64, 64)
    _, heat, overlay = _tiles(out, 3, th, tw)
    top, bottom = colorize(np.ones((1, 1)))[0, 0], colorize(np.zeros((1, 1)))[0, 0]
    np.testing.assert_array_equal(heat[th // 2, tw // 2], top)  # 0.15 is the top of this map's scale
    np.testing.assert_array_equal(heat[5, 5], bottom)
    r, g, b = overlay[th // 2, tw // 2].astype(int)
    assert r >= 120 and r > g + 40 and r > b + 40  # visibly red on grey
    assert (overlay[5, 5] == 128).all()
    # On the fixed probability scale the same map barely tints the image.
    fixed = overlay_heatmap(image, anomaly_map).astype(int)
    assert np.abs(fixed[32, 32] - 128).max() < 40


def test_small_images_are_shown_at_256_px_and_large_ones_shrunk() -> None:
    assert tile_size(64, 64) == (256, 256)
    assert min(tile_size(64, 64)) >= MIN_TILE_PX
    out = panel(np.zeros((64, 64, 3), np.uint8), np.zeros((64, 64)), np.zeros((64, 64)))
    assert out.shape[0] - LABEL_PX - FOOTER_PX >= 256
    assert (out.shape[1] - BAR_AREA_PX - 3 * SEPARATOR_PX) // 4 >= 256
    assert tile_size(1024, 512) == (MAX_TILE_PX, MAX_TILE_PX // 2)
    assert tile_size(300, 300) == (300, 300)


def test_stacked_panels_are_left_aligned_on_white_and_keep_their_pixels() -> None:
    narrow, wide = np.full((10, 20, 3), 30, np.uint8), np.full((12, 32, 3), 90, np.uint8)
    stacked = stack_panels([narrow, wide])
    assert stacked.shape == (10 + SEPARATOR_PX + 12, 32, 3)
    assert (stacked[:10, :20] == 30).all() and (stacked[:10, 20:] == 255).all()  # padded on the right
    assert (stacked[10 : 10 + SEPARATOR_PX] == 255).all()
    assert (stacked[10 + SEPARATOR_PX :] == 90).all()
    with pytest.raises(ValueError, match="no picture"):
        stack_panels([])


def test_overlay_on_a_stated_range_stretches_it() -> None:
    image = np.full((16, 16, 3), 128, np.uint8)
    anomaly_map = np.full((16, 16), 0.15, np.float32)
    np.testing.assert_array_equal(overlay_heatmap(image, anomaly_map, value_range=(0.0, 0.15)),
                                  overlay_heatmap(image, np.ones((16, 16), np.float32)))
    with pytest.raises(ValueError, match="value_range must rise"):
        overlay_heatmap(image, anomaly_map, value_range=(0.2, 0.2))


# ---- checkpoints ----------------------------------------------------------------------------------


def test_checkpoint_round_trip_prefers_best_model(tiny: tuple[MemSeg, MemSegConfig], checkpoint_dir: Path) -> None:
    model, cfg = tiny
    loaded, loaded_cfg = load_checkpoint(checkpoint_dir)  # model.pt there is garbage: best_model.pt is used
    assert loaded_cfg == cfg
    assert not loaded.training
    images = _rand_images(2, seed=5)
    with torch.no_grad():
        torch.testing.assert_close(loaded.anomaly_map(images), model.anomaly_map(images))
    with pytest.raises(CheckpointError, match=r"model\.pt: cannot read"):
        load_checkpoint(checkpoint_dir / "model.pt")


def test_checkpoint_errors_name_the_file(tiny: tuple[MemSeg, MemSegConfig], tmp_path: Path) -> None:
    model, cfg = tiny
    with pytest.raises(CheckpointError, match="missing.pt: checkpoint file not found"):
        load_checkpoint(tmp_path / "missing.pt")
    with pytest.raises(CheckpointError, match="no best_model.pt or model.pt"):
        load_checkpoint(tmp_path)

    old = tmp_path / "old.pt"
    torch.save(_payload(model, cfg, schema_version=SCHEMA_VERSION + 1), old)
    with pytest.raises(CheckpointError, match="old.pt: checkpoint schema_version"):
        load_checkpoint(old)

    partial = tmp_path / "partial.pt"
    state = _payload(model, cfg)
    state["state_dict"].pop(next(iter(state["state_dict"])))
    torch.save(state, partial)
    with pytest.raises(CheckpointError, match="partial.pt: weights do not fit"):
        load_checkpoint(partial)

    # weights_only=True: a pickled arbitrary object is refused, not executed.
    unsafe = tmp_path / "unsafe.pt"
    torch.save({**_payload(model, cfg), "extra": Path("/etc")}, unsafe)
    with pytest.raises(CheckpointError, match="unsafe.pt: cannot read"):
        load_checkpoint(unsafe)


def test_checkpoint_written_with_a_retired_config_field_still_loads(
    tiny: tuple[MemSeg, MemSegConfig], tmp_path: Path
) -> None:
    model, cfg = tiny
    payload = _payload(model, cfg)
    payload["config"]["train"]["fail_at_step"] = None  # what earlier versions stored
    torch.save(payload, tmp_path / "earlier.pt")
    _, loaded_cfg = load_checkpoint(tmp_path / "earlier.pt")
    assert loaded_cfg == cfg
    # Any other unknown field is still an error naming the file.
    payload["config"]["train"]["not_a_field"] = 1
    torch.save(payload, tmp_path / "unknown.pt")
    with pytest.raises(CheckpointError, match=r"(?s)unknown.pt: stored config is invalid.*train.not_a_field"):
        load_checkpoint(tmp_path / "unknown.pt")


def test_checkpoint_saved_before_texture_source_existed_loads_and_predicts(
    tiny: tuple[MemSeg, MemSegConfig], tmp_path: Path
) -> None:
    model, cfg = tiny
    for dtd_root, expected in ((None, "procedural"), ("/nowhere/dtd", "dtd")):
        payload = _payload(model, cfg)
        del payload["config"]["data"]["texture_source"]
        payload["config"]["data"]["dtd_root"] = dtd_root
        payload["config"]["model"]["head_init"] = "normal"  # what earlier versions stored by default
        torch.save(payload, tmp_path / "earlier.pt")
        loaded, loaded_cfg = load_checkpoint(tmp_path / "earlier.pt")
        # The source it was trained with; loading a model never needs DTD, even when it was trained on it.
        assert loaded_cfg.data.texture_source == expected
        assert loaded_cfg.model.head_init == "normal"
        (prediction,) = predict(loaded, [np.zeros((SIZE, SIZE, 3), np.uint8)], loaded_cfg)
        assert prediction.anomaly_map.shape == (SIZE, SIZE)


# ---- prediction -----------------------------------------------------------------------------------


def test_predict_resizes_back_and_scores_at_model_size(tiny: tuple[MemSeg, MemSegConfig]) -> None:
    model, cfg = tiny
    rng = np.random.default_rng(1)
    square = rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    wide = rng.integers(0, 256, (50, 90, 3), dtype=np.uint8)
    gray = rng.integers(0, 256, (70, 40), dtype=np.uint8)
    preds = predict(model, [square, wide, gray], cfg)
    assert [p.anomaly_map.shape for p in preds] == [(SIZE, SIZE), (50, 90), (70, 40)]
    maps = predict_maps(model, square[None], 1)
    # Another batch composition moves float32 results by ~2e-6 (oneDNN picks kernels per batch).
    assert preds[0].score == pytest.approx(float(image_scores(maps, cfg.eval.top_k)[0]), abs=1e-5)
    np.testing.assert_allclose(preds[0].anomaly_map, maps[0], atol=1e-5)


def _write_folder(root: Path) -> None:
    rng = np.random.default_rng(2)
    root.mkdir()
    cv2.imwrite(str(root / "a.png"), rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    cv2.imwrite(str(root / "b.jpg"), rng.integers(0, 256, (48, 80, 3), dtype=np.uint8))
    cv2.imwrite(str(root / "gray.png"), rng.integers(0, 256, (70, 70), dtype=np.uint8))
    (root / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    (root / "notes.txt").write_text("not an image")
    (root / "sub").mkdir()
    cv2.imwrite(str(root / "sub" / "a.png"), rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))


def test_predict_paths_writes_outputs_and_skips_a_corrupt_png(
    tiny: tuple[MemSeg, MemSegConfig], tmp_path: Path
) -> None:
    model, cfg = tiny
    images = tmp_path / "images"
    _write_folder(images)
    out = images / "predictions"  # inside the input folder: must not be read back on a rerun
    report = predict_paths(model, cfg, images, out, threshold=0.5)
    assert [p.name for p, _ in report.skipped] == ["corrupt.png"]
    assert "corrupt.png: cannot decode" in report.skipped[0][1]
    names = {"a", "b", "gray", "sub__a"}
    assert {f.name for f in out.iterdir()} == (
        {f"{n}_map.png" for n in names} | {f"{n}_overlay.png" for n in names} | {"scores.csv"}
    )
    saved = cv2.imread(str(out / "b_map.png"), cv2.IMREAD_UNCHANGED)
    assert saved.dtype == np.uint16 and saved.shape == (48, 80)
    assert cv2.imread(str(out / "b_overlay.png")).shape == (48, 80, 3)
    with (out / "scores.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [r["name"] for r in rows] == ["a", "b", "gray", "sub__a"]
    direct = predict(model, [cv2.cvtColor(cv2.imread(str(images / "a.png")), cv2.COLOR_BGR2RGB)], cfg)[0]
    assert float(rows[0]["score"]) == pytest.approx(direct.score, rel=1e-6)
    np.testing.assert_allclose(
        cv2.imread(str(out / "a_map.png"), cv2.IMREAD_UNCHANGED) / MAP_PNG_MAX, direct.anomaly_map, atol=1e-4
    )
    for row in rows:
        assert row["is_anomalous"] == str(int(float(row["score"]) >= 0.5))
    rerun = predict_paths(model, cfg, images, out)
    assert len(rerun.scores) == 4  # the outputs under images/predictions were not taken as inputs


def test_collect_images_errors_name_the_input(tmp_path: Path) -> None:
    with pytest.raises(ImageReadError, match="nowhere.png: no such file"):
        collect_images([tmp_path / "nowhere.png"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ImageReadError, match="no image files"):
        collect_images([tmp_path / "empty"])


# ---- CLI ------------------------------------------------------------------------------------------


def _write_category(root: Path, category: str) -> None:
    rng = np.random.default_rng(4)
    for folder, n in (("train/good", 4), ("test/good", 3), ("test/hole", 2), ("test/crack", 2)):
        (root / category / folder).mkdir(parents=True)
        for i in range(n):
            image = rng.integers(90, 110, (SIZE, SIZE, 3), dtype=np.uint8)
            name = f"{i:03d}.png"
            if folder.startswith("test/") and not folder.endswith("good"):
                mask = np.zeros((SIZE, SIZE), np.uint8)
                mask[20:30, 15 + i : 35 + i] = 255
                image[mask > 0] = 255
                defect = folder.split("/")[1]
                (root / category / "ground_truth" / defect).mkdir(parents=True, exist_ok=True)
                cv2.imwrite(str(root / category / "ground_truth" / defect / f"{i:03d}_mask.png"), mask)
            cv2.imwrite(str(root / category / folder / name), image)


def test_cli_evaluate_and_predict(
    checkpoint_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _write_category(tmp_path / "data", "carpet")
    out_json = tmp_path / "metrics.json"
    code = main([
        "evaluate", "--checkpoint", str(checkpoint_dir), "--root", str(tmp_path / "data"),
        "--json", str(out_json), "--device", "cpu",
    ])
    printed = capsys.readouterr().out
    assert code == 0
    assert "carpet test split, 7 images (3 good, 4 anomalous)" in printed
    lines = printed.splitlines()
    assert any(line.startswith("overall") for line in lines)
    assert any(line.startswith("crack") for line in lines) and any(line.startswith("hole") for line in lines)
    record = json.loads(out_json.read_text())
    assert record["images"] == 7 and record["split"] == "test"
    assert 0.0 <= record["image_f1_max_threshold"] <= 1.0
    assert "threshold at the best image F1" in printed
    assert {keys.IMAGE_AUROC, keys.PIXEL_AUPRO, f"{keys.PIXEL_AUROC}/hole"} <= set(record["metrics"])

    images = tmp_path / "images"
    _write_folder(images)
    code = main([
        "predict", "--checkpoint", str(checkpoint_dir / "best_model.pt"), str(images / "a.png"),
        str(images / "corrupt.png"), "--out", str(tmp_path / "pred"), "--threshold", "0.2", "--device", "cpu",
    ])
    printed = capsys.readouterr().out
    assert code == 0
    assert "skipped" in printed and "corrupt.png" in printed
    assert "1 image(s) scored" in printed
    assert (tmp_path / "pred" / "a_overlay.png").is_file()

    assert not (tmp_path / "pred" / "a_panel.png").exists()  # panels only on request

    code = main([
        "predict", "--checkpoint", str(checkpoint_dir), str(images / "a.png"), "--out", str(tmp_path / "bf16"),
        "--device", "cpu", "--precision", "bf16", "--panels",
    ])
    assert code == 0 and "1 image(s) scored" in capsys.readouterr().out
    assert (tmp_path / "bf16" / "scores.csv").is_file()
    tiles = cv2.imread(str(tmp_path / "bf16" / "a_panel.png"))
    image = cv2.imread(str(images / "a.png"))
    # Three tiles (image | map | overlay, no ground truth) of at least 256 px, and a colour bar beside them.
    assert tiles.shape[0] > 256 and tiles.shape[1] > 3 * max(256, image.shape[1])

    code = main(["predict", "--checkpoint", str(checkpoint_dir), str(images / "corrupt.png"), "--out", str(tmp_path / "p2")])
    assert code == 1
    assert "none of the 1 image(s) could be read" in capsys.readouterr().err
