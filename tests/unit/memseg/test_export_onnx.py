"""The ONNX export: the graph computes MemSeg.anomaly_map, runs without torch, and refuses bad inputs."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from memseg.errors import CheckpointError, ConfigError
from memseg.export.metadata import stored_config
from memseg.export.onnx_graph import export_onnx
from memseg.export.release import export_checkpoint
from memseg.export.runtime import OnnxAnomalyModel
from memseg.inference import load_checkpoint
from tests.helpers.trained_checkpoint import brief_export

MAP_TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def exported(synthetic_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return brief_export(synthetic_root, tmp_path_factory.getbasetemp() / "brief_export")


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    # Three images while the export traced two: the batch dimension is dynamic.
    return np.random.default_rng(0).random((3, 3, 64, 64), dtype=np.float32)


def test_exported_graph_maps_equal_the_torch_model(exported: tuple[Path, Path], images: np.ndarray) -> None:
    run, onnx_file = exported
    model, cfg = load_checkpoint(run)
    assert cfg.model.map_smoothing_sigma > 0  # the blur is part of what must match
    with torch.no_grad():
        expected = model.anomaly_map(torch.from_numpy(images)).numpy()
    got = OnnxAnomalyModel(onnx_file).anomaly_map(images)
    assert got.shape == expected.shape == (3, 64, 64)
    np.testing.assert_allclose(got, expected, atol=MAP_TOLERANCE, rtol=0)
    assert float(expected.std()) > 1e-3  # a flat map would match trivially


def test_export_stores_the_config(exported: tuple[Path, Path]) -> None:
    run, onnx_file = exported
    _, cfg = load_checkpoint(run)
    assert stored_config(onnx_file) == cfg
    assert OnnxAnomalyModel(onnx_file).image_size == 64


# Runs ``script`` in a fresh interpreter. The OpenVINO tests use it too: OpenVINO's native thread pools,
# loaded into the pytest process next to torch's, made a later fork of that process die of SIGSEGV.
def _in_child(script: str) -> str:
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True,
                          timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_runtime_runs_in_a_process_where_torch_cannot_be_imported(
    exported: tuple[Path, Path], images: np.ndarray, tmp_path: Path
) -> None:
    run, onnx_file = exported
    model, _ = load_checkpoint(run)
    with torch.no_grad():
        expected = model.anomaly_map(torch.from_numpy(images)).numpy()
    np.save(tmp_path / "images.npy", images)
    _in_child(f"""
        import sys
        sys.modules["torch"] = None  # any import of torch now raises ImportError
        import numpy as np
        from memseg.export.runtime import OnnxAnomalyModel
        maps = OnnxAnomalyModel({str(onnx_file)!r}).anomaly_map(np.load({str(tmp_path / "images.npy")!r}))
        np.save({str(tmp_path / "maps.npy")!r}, maps)
        assert not any(name == "torch" or name.startswith("torch.") for name, m in sys.modules.items() if m)
    """)
    np.testing.assert_allclose(np.load(tmp_path / "maps.npy"), expected, atol=MAP_TOLERANCE, rtol=0)


def test_runtime_names_the_expected_shape(exported: tuple[Path, Path]) -> None:
    with pytest.raises(ValueError, match=r"\(B, 3, 64, 64\)"):
        OnnxAnomalyModel(exported[1]).anomaly_map(np.zeros((1, 3, 32, 32), np.float32))


def test_an_unsupported_opset_is_refused_by_name(exported: tuple[Path, Path], tmp_path: Path) -> None:
    model, cfg = load_checkpoint(exported[0])
    with pytest.raises(ConfigError, match="opset 11 is not supported"):
        export_onnx(model, cfg, tmp_path / "m.onnx", opset=11)
    assert not (tmp_path / "m.onnx").exists()


def test_a_checkpoint_of_another_size_is_refused_naming_file_and_field(
    exported: tuple[Path, Path], tmp_path: Path
) -> None:
    run = exported[0]
    with pytest.raises(CheckpointError, match=r"best_model\.pt.*data\.image_size=64, not the requested 128"):
        export_checkpoint(run / "best_model.pt", tmp_path, image_size=128)
    assert not any(tmp_path.iterdir())


def test_nearest_memory_matching_without_a_coreset_is_refused_by_name(
    exported: tuple[Path, Path], tmp_path: Path
) -> None:
    model, cfg = load_checkpoint(exported[0])
    with pytest.raises(ConfigError, match=r"model.memory_match=nearest with neither model.memory_coreset nor model.memory_window set"):
        export_onnx(model, cfg.with_overrides({"model.memory_match": "nearest"}), tmp_path / "m.onnx")
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize(("field", "value"), [("coreset", 64), ("window", 2)])
def test_nearest_memory_matching_with_a_bound_exports_to_the_same_maps(
    exported: tuple[Path, Path], images: np.ndarray, tmp_path: Path, field: str, value: int
) -> None:
    model, cfg = load_checkpoint(exported[0])
    cfg = cfg.with_overrides({"model.memory_match": "nearest", f"model.memory_{field}": value})
    model.memory.match = "nearest"
    setattr(model.memory, field, value)
    # Rebuilt, so that a coreset is picked from it.
    memory = torch.from_numpy(np.random.default_rng(1).random((model.memory_size, 3, 64, 64), dtype=np.float32))
    model.build_memory(memory)
    assert model.memory.coreset1.shape == ((64,) if field == "coreset" else (0,))
    with torch.no_grad():
        expected = model.anomaly_map(torch.from_numpy(images)).numpy()
    onnx_file = export_onnx(model, cfg, tmp_path / "m.onnx")
    got = OnnxAnomalyModel(onnx_file).anomaly_map(images)
    np.testing.assert_allclose(got, expected, atol=MAP_TOLERANCE, rtol=0)
    assert getattr(stored_config(onnx_file).model, f"memory_{field}") == value


def test_a_file_that_is_not_a_memseg_export_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"not onnx")
    with pytest.raises(CheckpointError, match=r"model\.onnx: onnxruntime cannot load it"):
        OnnxAnomalyModel(bad)
    with pytest.raises(CheckpointError, match=r"missing\.onnx: ONNX file not found"):
        OnnxAnomalyModel(tmp_path / "missing.onnx")


def test_openvino_runs_the_onnx_file_and_its_ir_like_torch_with_the_config(
    exported: tuple[Path, Path], images: np.ndarray, tmp_path: Path
) -> None:
    run, onnx_file = exported
    model, _ = load_checkpoint(run)
    with torch.no_grad():
        np.save(tmp_path / "expected.npy", model.anomaly_map(torch.from_numpy(images)).numpy())
    np.save(tmp_path / "images.npy", images)
    out = _in_child(f"""
        from pathlib import Path
        import numpy as np
        from memseg.export.openvino_runtime import OpenVinoAnomalyModel, save_ir
        from memseg.inference import load_checkpoint
        tmp, onnx_file = Path({str(tmp_path)!r}), Path({str(onnx_file)!r})
        _, cfg = load_checkpoint(Path({str(run)!r}))
        images, expected = np.load(tmp / "images.npy"), np.load(tmp / "expected.npy")
        xml = save_ir(onnx_file, tmp / "model_fp32.xml")
        assert xml.with_suffix(".bin").is_file()
        for path in (onnx_file, xml):
            graph = OpenVinoAnomalyModel(path, threads=1)
            assert graph.config == cfg and graph.precision == "fp32" and graph.fixed_batch is None, path
            np.testing.assert_allclose(graph.predict_maps(images, 2), expected, atol={MAP_TOLERANCE}, rtol=0)
            print("matched", path.suffix)
    """)
    assert out.split() == ["matched", ".onnx", "matched", ".xml"]


def test_openvino_refuses_what_is_not_a_memseg_export_naming_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"not onnx")
    out = _in_child(f"""
        from pathlib import Path
        from memseg.errors import CheckpointError
        from memseg.export.openvino_runtime import OpenVinoAnomalyModel, save_ir
        tmp = Path({str(tmp_path)!r})
        for call in (lambda: OpenVinoAnomalyModel(tmp / "model.onnx"), lambda: OpenVinoAnomalyModel(tmp / "missing.xml"),
                     lambda: save_ir(tmp / "model.onnx", tmp / "model.xml")):
            try:
                call()
            except CheckpointError as exc:
                print(exc)
            else:
                print("accepted")
    """)
    lines = out.splitlines()
    assert len(lines) == 3, out
    assert "model.onnx: not an ONNX file" in lines[0]
    assert "missing.xml: IR file not found" in lines[1]
    assert "model.onnx: not an ONNX file" in lines[2]
