"""``--checkpoint`` of ``memseg predict``/``evaluate``: registry URIs parsed, inputs checked before any
model loads, one line per skipped image. The registry download itself runs against a real server in
tests/integration/test_serving.py."""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
import pytest

from memseg.errors import CheckpointError
from pipelines.cli import main
from pipelines.model_source import RegisteredVersion, checkpoint_in_model, parse_registry_uri
from tests.helpers.tiny_checkpoint import save_tiny_checkpoint


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_checkpoint(tmp_path_factory.mktemp("ckpt"))


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("models:/memseg-mvtec-tile@champion", RegisteredVersion("memseg-mvtec-tile", alias="champion")),
        ("models:/memseg-mvtec-tile/12", RegisteredVersion("memseg-mvtec-tile", version="12")),
    ],
)
def test_registry_uris_parse_and_print_back(uri: str, expected: RegisteredVersion) -> None:
    parsed = parse_registry_uri(uri)
    assert parsed == expected and parsed.uri == uri


@pytest.mark.parametrize(
    "uri", ["models:/memseg-mvtec-tile", "models:/memseg-mvtec-tile/Production", "models:/a@b/c", "models:/@champion"]
)
def test_other_registry_uris_are_refused_naming_both_forms(uri: str) -> None:
    with pytest.raises(CheckpointError, match=r"expected models:/<name>@<alias> or models:/<name>/<version>"):
        parse_registry_uri(uri)


def test_a_model_folder_without_checkpoint_artifact_is_named(tmp_path: Path) -> None:
    (tmp_path / "MLmodel").write_text("flavors:\n  python_function:\n    loader_module: other\n")
    with pytest.raises(CheckpointError, match=r"models:/x/1: not a memseg model .* 'checkpoint' artifact"):
        checkpoint_in_model(tmp_path, "models:/x/1")


@pytest.mark.parametrize("source", ["nowhere/best_model.pt", "models:/memseg-none@champion"])
def test_predict_names_a_missing_input_before_loading_any_model(
    source: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Neither model exists (and no registry answers at the tracking URI): the error can only be about
    # the input if the inputs are checked first.
    checkpoint = source if source.startswith("models:/") else str(tmp_path / source)
    code = main([
        "predict", "--checkpoint", checkpoint, str(tmp_path / "missing-folder"), "--out", str(tmp_path / "out"),
        "--tracking-uri", "http://127.0.0.1:9",
    ])
    err = capsys.readouterr().err
    assert code == 1
    assert "missing-folder: no such file or folder" in err and "checkpoint" not in err


def test_evaluate_names_a_missing_dataset_root_before_loading_the_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["evaluate", "--checkpoint", str(tmp_path / "none.pt"), "--root", str(tmp_path / "no-data")])
    err = capsys.readouterr().err
    assert code == 1 and "no-data: no such dataset folder (--root)" in err and "none.pt" not in err


def test_predict_reports_each_skipped_image_once(
    checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    images = tmp_path / "images"
    images.mkdir()
    cv2.imwrite(str(images / "a.png"), np.full((40, 50, 3), 120, np.uint8))
    (images / "corrupt.png").write_bytes(b"\x89PNG but not really")
    caplog.set_level(logging.INFO)
    code = main(["predict", "--checkpoint", str(checkpoint), str(images), "--out", str(tmp_path / "out"),
                 "--device", "cpu"])
    captured = capsys.readouterr()
    said = captured.out + captured.err + "\n".join(r.getMessage() for r in caplog.records)
    assert code == 0
    assert said.count("corrupt.png") == 1, said
    assert "1 image(s) scored" in captured.out and (tmp_path / "out" / "a_map.png").is_file()
