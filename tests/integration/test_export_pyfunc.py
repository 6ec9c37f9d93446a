"""The registered pyfunc running its version's exported file: ``model_config={"backend": "onnx" | "openvino"}``.

A briefly trained 64 px model is registered in a real ``mlflow server``, exported with
``memseg export --int8 --openvino --register``, and loaded with each backend: the exported graph's scores and
maps equal the torch backend's within 1e-4, and in a fresh process the ONNX and OpenVINO backends
predict without torch ever being imported. A version that was never exported, an unknown backend
and INT8 on the torch backend are refused naming what to do.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest

from memseg.errors import CheckpointError
from pipelines import pyfunc_model as pm
from pipelines.cli import main
from tests.helpers.mlflow_server import MlflowServer
from tests.helpers.registered_model import registered_champion
from tests.helpers.tiny_checkpoint import save_tiny_checkpoint
from tests.helpers.trained_checkpoint import brief_export

pytestmark = [pytest.mark.mlflow, pytest.mark.slow]

NAME = "memseg-pyfuncexport-carpet"
UNEXPORTED = "memseg-pyfuncexport-tile"
# A 6-step model on a random backbone is near chance and INT8 moves it by up to 0.11 (see
# tests/integration/test_export_cli.py); this margin lets its normal calibration pass the gate.
TEST_MARGIN = "0.15"


def _images() -> list[np.ndarray]:
    rng = np.random.default_rng(3)
    # the model's own size and two others, so resizing both ways and map_size=input are covered
    return [rng.integers(0, 256, shape, dtype=np.uint8) for shape in ((64, 64, 3), (100, 80, 3), (48, 40, 3))]


@pytest.fixture(scope="module")
def exported(
    mlflow_server: MlflowServer, synthetic_root: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """``NAME`` version 1 (alias ``champion``): a trained model, exported fp32 and INT8 with --register."""
    trained = brief_export(synthetic_root, tmp_path_factory.getbasetemp() / "brief_export")[0]
    with registered_champion(mlflow_server.uri, trained / "best_model.pt", NAME, "memseg-pyfunc-export-test"):
        code = main(["export", "--checkpoint", f"models:/{NAME}@champion", "--out",
                     str(tmp_path_factory.mktemp("export")), "--int8", "--margin", TEST_MARGIN,
                     "--calibration-images", "4", "--tracking-uri", mlflow_server.uri, "--register", "--openvino"])
        assert code == 0
        tags = mlflow.MlflowClient(mlflow_server.uri).get_model_version(NAME, "1").tags
        assert tags["int8_gate"] == "passed" and "onnx_int8" in tags, tags
        # the openvino backend runs these IR files (their .bin logged beside), the onnx backend the .onnx
        assert tags["openvino_fp32"].endswith("/export/version-1/model_fp32.xml"), tags
        assert tags["openvino_int8"].endswith("/export/version-1/model_int8.xml"), tags
        yield f"models:/{NAME}@champion"


@pytest.fixture(scope="module")
def unexported(mlflow_server: MlflowServer, exported: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    checkpoint = save_tiny_checkpoint(tmp_path_factory.mktemp("tiny"))
    with registered_champion(mlflow_server.uri, checkpoint, UNEXPORTED, "memseg-pyfunc-unexported-test"):
        yield f"models:/{UNEXPORTED}@champion"


def _predict(uri: str, config: dict[str, str], map_size: str) -> pd.DataFrame:
    model = mlflow.pyfunc.load_model(uri, model_config=config)
    return model.predict({pm.IMAGE_COLUMN: _images()}, params={pm.MAP_SIZE_PARAM: map_size})


@pytest.mark.parametrize("map_size", ["model", "input"])
def test_onnx_and_openvino_backends_give_the_torch_backends_scores_and_maps(exported: str, map_size: str) -> None:
    reference = _predict(exported, {"backend": "torch", "device": "cpu"}, map_size)
    for backend in ("onnx", "openvino"):
        got = _predict(exported, {"backend": backend}, map_size)
        np.testing.assert_allclose(got[pm.SCORE_COLUMN], reference[pm.SCORE_COLUMN], atol=1e-4, rtol=0)
        for ours, theirs in zip(got[pm.MAP_COLUMN], reference[pm.MAP_COLUMN], strict=True):
            assert ours.shape == theirs.shape
            np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=0, err_msg=backend)


def test_int8_backends_run_the_gated_file(exported: str) -> None:
    reference = _predict(exported, {"backend": "torch", "device": "cpu"}, "model")
    int8 = {b: _predict(exported, {"backend": b, "precision": "int8"}, "model") for b in ("onnx", "openvino")}
    for frame in int8.values():
        assert [m.shape for m in frame[pm.MAP_COLUMN]] == [(64, 64)] * 3
    # INT8 is another graph: close to fp32, not equal (equal would mean the fp32 file was loaded)
    differences = np.abs(np.stack(int8["onnx"][pm.MAP_COLUMN]) - np.stack(reference[pm.MAP_COLUMN]))
    assert 0 < differences.max() < 0.5
    np.testing.assert_allclose(int8["openvino"][pm.SCORE_COLUMN], int8["onnx"][pm.SCORE_COLUMN], atol=0.05)


def test_exported_backends_predict_in_a_fresh_process_without_importing_torch(
    exported: str, mlflow_server: MlflowServer, tmp_path: Path
) -> None:
    script = textwrap.dedent(f"""
        import json, sys
        import numpy as np
        import mlflow
        out = {{}}
        for backend in ("onnx", "openvino"):
            model = mlflow.pyfunc.load_model({exported!r}, model_config={{"backend": backend}})
            frame = model.predict({{"image": [np.full((64, 64, 3), 128, np.uint8)]}})
            out[backend] = float(frame["score"][0])
        out["torch_imported"] = "torch" in sys.modules
        print(json.dumps(out))
    """)
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_server.uri}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=False,
                          env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["torch_imported"] is False
    assert 0.0 <= result["onnx"] <= 1.0
    assert result["openvino"] == pytest.approx(result["onnx"], abs=1e-4)


def test_a_version_never_exported_names_itself_and_the_export_command(unexported: str) -> None:
    with pytest.raises(CheckpointError) as caught:
        mlflow.pyfunc.load_model(unexported, model_config={"backend": "onnx"})
    message = str(caught.value)
    assert f"models:/{UNEXPORTED}/1 has no exported fp32 ONNX file (no version tag onnx_fp32)" in message
    assert f"memseg export --checkpoint models:/{UNEXPORTED}/1 --out DIR --register" in message


@pytest.mark.parametrize(
    ("config", "message"),
    [({"backend": "tensorrt"}, "model_config backend must be one of torch, onnx, openvino, got 'tensorrt'"),
     ({"precision": "int8"}, "model_config precision must be one of fp32 with backend torch, got 'int8'")],
)
def test_bad_backend_settings_are_refused_naming_the_key(exported: str, config: dict[str, str], message: str) -> None:
    with pytest.raises(CheckpointError, match=message):
        mlflow.pyfunc.load_model(exported, model_config=config)
