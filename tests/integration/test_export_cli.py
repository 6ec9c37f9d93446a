"""``memseg export`` and ``memseg predict --backend onnx|openvino`` end to end, and an export from the registry.

A briefly trained 64 px model is exported (fp32 and INT8 behind the gate); predicting with the
exported graph (onnxruntime or OpenVINO) writes the same files as predicting with torch. A model registered in a real
``mlflow server`` is exported by its alias and the file runs in a fresh process where torch cannot
be imported.
"""

from __future__ import annotations

import csv
import logging
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import cv2
import mlflow
import numpy as np
import pytest
import torch

from memseg.inference import MAP_PNG_MAX, load_checkpoint
from pipelines.cli import main
from tests.helpers.mlflow_server import MlflowServer
from tests.helpers.registered_model import registered_champion
from tests.helpers.tiny_checkpoint import save_tiny_checkpoint
from tests.helpers.trained_checkpoint import brief_export

pytestmark = pytest.mark.slow

NAME = "memseg-exporttest-tile"
# A 6-step model on a random backbone is near chance, and INT8 moves its validation pixel AUROC by up
# to 0.11 (see tests/unit/memseg/test_export_int8.py); this margin lets its normal calibration pass.
TEST_MARGIN = "0.15"


@pytest.fixture(scope="module")
def trained(synthetic_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return brief_export(synthetic_root, tmp_path_factory.getbasetemp() / "brief_export")[0]


def _scores(folder: Path) -> dict[str, float]:
    with (folder / "scores.csv").open() as fh:
        return {row["name"]: float(row["score"]) for row in csv.DictReader(fh)}


def test_export_with_int8_then_predict_with_onnx_or_openvino_writes_what_torch_writes(
    trained: Path, synthetic_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    out = tmp_path / "export"
    code = main(["export", "--checkpoint", str(trained), "--out", str(out), "--int8", "--margin", TEST_MARGIN,
                 "--calibration-images", "16", "--test", "--openvino"])
    printed = capsys.readouterr().out
    assert code == 0
    # our own progress lines stay; the exporter's per-rewrite INFO lines do not flood the console
    assert any(r.name.startswith("memseg.export") for r in caplog.records)
    assert not [r for r in caplog.records if r.name.split(".")[0] in ("onnx_ir", "onnxscript")]
    assert (out / "model_fp32.onnx").is_file()
    assert "INT8 accepted" in printed and (out / "model_int8.onnx").is_file()
    # --openvino: IR copies, the INT8 one behind its own gate
    assert "OpenVINO IR INT8 accepted" in printed
    assert {p.name for p in out.glob("*.xml")} == {"model_fp32.xml", "model_int8.xml"}
    assert {p.name for p in out.glob("*.bin")} == {"model_fp32.bin", "model_int8.bin"}
    assert '"test_int8_pixel_auroc"' in printed  # test figures reported beside the decision

    images = synthetic_root / "carpet" / "test"
    by_backend = {}
    runs = {"torch": ("torch", trained), "onnx": ("onnx", out / "model_fp32.onnx"),
            "openvino": ("openvino", out / "model_fp32.onnx"), "openvino_ir": ("openvino", out / "model_fp32.xml")}
    for name, (backend, checkpoint) in runs.items():
        dest = tmp_path / name
        code = main(["predict", "--checkpoint", str(checkpoint), "--backend", backend, "--device", "cpu",
                     str(images), "--out", str(dest)])
        assert code == 0, capsys.readouterr().err
        by_backend[name] = dest
    torch_files = sorted(p.name for p in by_backend["torch"].iterdir())
    assert any(name.endswith("_map.png") for name in torch_files)
    torch_scores = _scores(by_backend["torch"])
    for backend in ("onnx", "openvino", "openvino_ir"):
        assert torch_files == sorted(p.name for p in by_backend[backend].iterdir()), backend
        scores = _scores(by_backend[backend])
        assert torch_scores.keys() == scores.keys()
        for name, score in torch_scores.items():
            assert scores[name] == pytest.approx(score, abs=1e-4), (backend, name)
        for name in (n for n in torch_files if n.endswith("_map.png")):
            a = cv2.imread(str(by_backend["torch"] / name), cv2.IMREAD_UNCHANGED).astype(np.int64)
            b = cv2.imread(str(by_backend[backend] / name), cv2.IMREAD_UNCHANGED).astype(np.int64)
            assert np.abs(a - b).max() <= 1e-4 * MAP_PNG_MAX, (backend, name)


def test_int8_missing_the_margin_is_refused_and_no_int8_file_is_left(
    trained: Path, synthetic_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A margin of 0 refuses any loss at all: the run must say so and leave only the fp32 graph.
    code = main(["export", "--checkpoint", str(trained), "--out", str(tmp_path), "--int8", "--margin", "0",
                 "--calibration-images", "4"])
    printed = capsys.readouterr().out
    assert code == 0
    assert "INT8 refused: validation drop exceeds the margin 0: pixel_auroc by" in printed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model_fp32.onnx"]


@pytest.mark.parametrize(
    ("flags", "message"),
    [(["--opset", "11"], "opset 11 is not supported"),
     (["--image-size", "128"], "data.image_size=64, not the requested 128"),
     (["--register"], "--register needs a registered model version")],
)
def test_bad_export_requests_fail_naming_the_field(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], message: str
) -> None:
    code = main(["export", "--checkpoint", str(trained), "--out", str(tmp_path / "x"), *flags])
    err = capsys.readouterr().err
    assert code == 1
    assert message in err
    assert not (tmp_path / "x" / "model_fp32.onnx").exists()


@pytest.mark.parametrize("backend", ["onnx", "openvino"])
def test_a_torch_precision_with_an_exported_backend_is_refused(
    trained: Path, synthetic_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], backend: str
) -> None:
    code = main(["predict", "--checkpoint", str(trained), "--backend", backend, "--precision", "bf16",
                 str(synthetic_root / "carpet" / "test"), "--out", str(tmp_path / "out")])
    assert code == 1
    assert f"--precision bf16 is a torch setting; --backend {backend} runs the exported graph" in capsys.readouterr().err
    assert not (tmp_path / "out" / "scores.csv").exists()


@pytest.fixture(scope="module")
def registered(mlflow_server: MlflowServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A tiny checkpoint registered as ``NAME`` version 1 with the alias ``champion``."""
    checkpoint = save_tiny_checkpoint(tmp_path_factory.mktemp("ckpt"))
    with registered_champion(mlflow_server.uri, checkpoint, NAME, "memseg-export-test"):
        yield checkpoint


@pytest.mark.mlflow
def test_a_registered_model_exports_registers_its_file_and_runs_where_torch_cannot_be_imported(
    mlflow_server: MlflowServer, registered: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "export"
    code = main(["export", "--checkpoint", f"models:/{NAME}@champion", "--out", str(out),
                 "--tracking-uri", mlflow_server.uri, "--register"])
    assert code == 0, capsys.readouterr().err
    # --register: the file is logged to the version's run and the version's tag says where.
    tags = mlflow.MlflowClient(mlflow_server.uri).get_model_version(NAME, "1").tags
    assert tags["onnx_fp32"].endswith("/export/version-1/model_fp32.onnx")
    downloaded = Path(mlflow.artifacts.download_artifacts(
        artifact_uri=tags["onnx_fp32"], dst_path=str(tmp_path / "download"), tracking_uri=mlflow_server.uri))
    images = np.random.default_rng(1).random((2, 3, 64, 64), dtype=np.float32)
    np.save(tmp_path / "images.npy", images)
    script = textwrap.dedent(f"""
        import sys
        sys.modules["torch"] = None  # any import of torch now raises ImportError
        import numpy as np
        import onnxruntime as ort
        session = ort.InferenceSession({str(downloaded)!r}, providers=["CPUExecutionProvider"])
        (maps,) = session.run(["anomaly_map"], {{"image": np.load({str(tmp_path / "images.npy")!r})}})
        np.save({str(tmp_path / "maps.npy")!r}, maps)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    model, _ = load_checkpoint(registered)
    with torch.no_grad():
        expected = model.anomaly_map(torch.from_numpy(images)).numpy()
    np.testing.assert_allclose(np.load(tmp_path / "maps.npy"), expected, atol=1e-4, rtol=0)
