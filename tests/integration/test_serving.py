"""A registered memseg model served by ``mlflow models serve`` and scored by ``memseg predict``/``evaluate``.

One tiny model (64 px, random backbone) is logged to a real ``mlflow server`` (SQLite backend),
registered with the alias ``champion`` and served over HTTP with a pixel limit of 1024 x 1024
(``$MEMSEG_MAX_PIXELS``). The tests check what a client gets: maps at the model's resolution unless
asked for the input size, and for bad requests a 400 whose message names the row and the problem,
with no traceback and none of the request echoed back. The command line then scores a folder and a
dataset straight from the registry.
"""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from memseg.config import MemSegConfig, resolve_for_category
from memseg.inference import MAP_PNG_MAX, load_checkpoint, predict
from memseg.model import create_model
from memseg.training.checkpoint import save_model
from pipelines import pyfunc_model as pm
from pipelines.cli import main
from tests.helpers.mlflow_server import MlflowServer
from tests.helpers.ray_cluster import free_port
from tests.helpers.registered_model import registered_champion
from tests.helpers.scoring_server import scoring_server

pytestmark = [pytest.mark.mlflow, pytest.mark.slow]

NAME = "memseg-servingtest-tile"
SIZE = 64
LIMIT = 1024 * 1024


@pytest.fixture(scope="module")
def registered(mlflow_server: MlflowServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The checkpoint, logged as the pyfunc and registered as ``NAME`` version 1 with alias ``champion``."""
    torch.manual_seed(0)
    cfg = resolve_for_category(
        MemSegConfig().with_overrides({
            "model.backbone_weights": "none", "data.image_size": SIZE, "model.memory_size": 2,
            "data.category": "tile", "eval.top_k": 10,
        })
    )
    model = create_model(cfg)
    model.build_memory(torch.rand(2, 3, SIZE, SIZE))
    checkpoint = save_model(tmp_path_factory.mktemp("ckpt") / "best_model.pt", model, cfg, 1, {})
    with registered_champion(mlflow_server.uri, checkpoint, NAME, "memseg-serving-test"):
        yield checkpoint


@pytest.fixture(scope="module")
def served(mlflow_server: MlflowServer, registered: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``mlflow models serve -m models:/NAME@champion``; yields its base URL."""
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    env = {"MLFLOW_TRACKING_URI": mlflow_server.uri, pm.MAX_PIXELS_ENV: str(LIMIT)}
    with scoring_server(f"models:/{NAME}@champion", free_port(), log, env) as base:
        yield base


def _noise(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _post(base: str, payload: dict[str, object]) -> tuple[int, bytes]:
    request = urllib.request.Request(f"{base}/invocations", data=json.dumps(payload).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _frame(column: str, cells: list[str]) -> dict[str, object]:
    return {"dataframe_split": {"columns": [column], "data": [[c] for c in cells]}}


def test_served_1024_image_gets_a_map_at_model_resolution_unless_input_size_is_asked(
    served: str, registered: Path
) -> None:
    image = _noise(1024, 1024)
    status, body = _post(served, _frame("image", [pm.encode_png(image)]))
    assert status == 200, body[:2000]
    (row,) = json.loads(body)["predictions"]
    served_map = np.asarray(row["anomaly_map"], np.float32)
    assert served_map.shape == (SIZE, SIZE)
    model, cfg = load_checkpoint(registered, "cpu")
    (expected,) = predict(model, [image], cfg, "cpu", full_size=False)
    assert row["score"] == pytest.approx(expected.score, abs=1e-5)
    np.testing.assert_allclose(served_map, expected.anomaly_map, atol=1e-4)

    small = _noise(48, 80, seed=1)
    status, body = _post(served, {**_frame("image", [pm.encode_png(small)]), "params": {"map_size": "input"}})
    assert status == 200, body[:2000]
    assert np.asarray(json.loads(body)["predictions"][0]["anomaly_map"]).shape == (48, 80)


# case: (column, cells, params, the message expected)
BAD_REQUESTS: dict[str, tuple[str, list[str], dict[str, str], str]] = {
    "not an image": (
        "image", [pm.encode_png(_noise(20, 20)), base64.b64encode(b"just some text").decode()], {},
        "image row 1: cannot decode the image bytes (PNG/JPEG expected)",
    ),
    "wrong column": (
        "picture", [pm.encode_png(_noise(20, 20))], {},
        "the request needs a column 'image' (one base64 PNG/JPEG per row), got no column the model knows",
    ),
    "over the pixel limit": (
        "image", [pm.encode_png(_noise(1025, 1024))], {},
        "image row 0: 1024 x 1025 = 1,049,600 pixels is over this model's limit of 1,048,576 pixels "
        "(max_pixels in model_config, or $MEMSEG_MAX_PIXELS where it is served)",
    ),
    "unknown map size": (
        "image", [pm.encode_png(_noise(20, 20))], {"map_size": "huge"},
        "params map_size must be one of model, input, got 'huge'",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_REQUESTS))
def test_served_bad_request_gets_400_naming_row_and_problem_without_trace_or_payload(served: str, case: str) -> None:
    column, cells, params, message = BAD_REQUESTS[case]
    status, body = _post(served, {**_frame(column, cells), "params": params} if params else _frame(column, cells))
    assert status == 400, body[:2000]
    answer = json.loads(body)
    assert answer == {"error_code": "INVALID_PARAMETER_VALUE", "message": message}
    text = body.decode()
    assert "Traceback" not in text and ".py" not in text
    for cell in cells:
        assert cell[:24] not in text  # no part of the request's images is echoed back


def _write_category(root: Path) -> None:
    rng = np.random.default_rng(3)
    for folder, n in (("train/good", 4), ("test/good", 2), ("test/crack", 2)):
        (root / "tile" / folder).mkdir(parents=True)
        for i in range(n):
            image = rng.integers(90, 110, (SIZE, SIZE, 3), dtype=np.uint8)
            if folder == "test/crack":
                mask = np.zeros((SIZE, SIZE), np.uint8)
                mask[20:30, 10 + i : 40 + i] = 255
                image[mask > 0] = 255
                (root / "tile" / "ground_truth" / "crack").mkdir(parents=True, exist_ok=True)
                cv2.imwrite(str(root / "tile" / "ground_truth" / "crack" / f"{i:03d}_mask.png"), mask)
            cv2.imwrite(str(root / "tile" / folder / f"{i:03d}.png"), image)


def test_cli_scores_a_folder_and_a_dataset_from_the_registry(
    mlflow_server: MlflowServer, registered: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    images = tmp_path / "images"
    images.mkdir()
    for i, (h, w) in enumerate(((64, 64), (48, 80), (100, 30))):
        cv2.imwrite(str(images / f"img{i}.png"), _noise(h, w, seed=10 + i))
    out = tmp_path / "out"
    code = main(["predict", "--checkpoint", f"models:/{NAME}@champion", str(images), "--out", str(out),
                 "--tracking-uri", mlflow_server.uri, "--device", "cpu"])
    assert code == 0, capsys.readouterr().err
    assert "3 image(s) scored" in capsys.readouterr().out
    model, cfg = load_checkpoint(registered, "cpu")
    for i, (h, w) in enumerate(((64, 64), (48, 80), (100, 30))):
        saved = cv2.imread(str(out / f"img{i}_map.png"), cv2.IMREAD_UNCHANGED)
        assert saved.shape == (h, w) and (out / f"img{i}_overlay.png").is_file()
        rgb = cv2.cvtColor(cv2.imread(str(images / f"img{i}.png")), cv2.COLOR_BGR2RGB)
        (expected,) = predict(model, [rgb], cfg, "cpu")
        np.testing.assert_allclose(saved / MAP_PNG_MAX, expected.anomaly_map, atol=1e-4)

    _write_category(tmp_path / "data")
    code = main(["evaluate", "--checkpoint", f"models:/{NAME}/1", "--root", str(tmp_path / "data"),
                 "--tracking-uri", mlflow_server.uri, "--device", "cpu"])
    printed = capsys.readouterr().out
    assert code == 0
    assert f"models:/{NAME}/1: tile test split, 4 images (2 good, 2 anomalous)" in printed
