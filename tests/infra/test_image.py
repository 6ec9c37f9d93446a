"""The Dockerfiles lint clean with hadolint and install what pyproject pins.

Two images: one CUDA image for head, workers and submitter (pinned versions, weights baked in,
HF_HUB_OFFLINE at run time, non-root) and the MLflow server image. No docker engine runs in CI, so
the images are linted and cross-checked here, not built.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

from tests.infra.manifests import INFRA, canonical, pinned_versions, pyproject, require_tool

DOCKERFILE = INFRA / "docker" / "Dockerfile"
CONSTRAINTS = INFRA / "docker" / "constraints.txt"
MLFLOW_DOCKERFILE = INFRA / "mlflow" / "Dockerfile"


def _hadolint(path: Path) -> subprocess.CompletedProcess:
    hadolint = require_tool("hadolint")
    return subprocess.run(
        [hadolint, "--no-color", "--failure-threshold", "info", str(path)], capture_output=True, text=True, timeout=60
    )


def _constraints() -> dict[str, str]:
    out = {}
    for line in CONSTRAINTS.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"{CONSTRAINTS.name}: {line!r} is not an exact pin"
            out[canonical(name)] = version
    return out


def _instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n\s*", " ", path.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def _env(path: Path) -> dict[str, str]:
    env = {}
    for word, rest in _instructions(path):
        if word == "ENV":
            for key, value in re.findall(r"(\w+)=(\S+)", rest):
                env[key] = value
    return env


@pytest.mark.parametrize("path", [DOCKERFILE, MLFLOW_DOCKERFILE], ids=["platform", "mlflow"])
def test_hadolint_finds_nothing(path: Path) -> None:
    proc = _hadolint(path)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_hadolint_does_fail_on_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu:latest\nRUN apt-get install python3\nUSER root\n")
    proc = _hadolint(bad)
    assert proc.returncode != 0
    assert "DL3007" in proc.stdout  # :latest


def test_constraints_keep_every_pyproject_pin_and_range() -> None:
    constraints = _constraints()
    for name, version in pinned_versions().items():
        assert constraints.get(name) == version, f"{name}: pyproject pins {version}, constraints say {constraints.get(name)}"
    for line in pyproject()["project"]["dependencies"]:
        req = Requirement(line)
        if canonical(req.name) in constraints:
            assert SpecifierSet(str(req.specifier)).contains(constraints[canonical(req.name)]), line


def test_constraints_match_the_tested_environment() -> None:
    from importlib.metadata import PackageNotFoundError, version

    for name, pinned in _constraints().items():
        try:
            installed = version(name)
        except PackageNotFoundError:
            pytest.fail(f"{name} in constraints.txt is not installed here, so it was never tested")
        assert installed.split("+")[0] == pinned, f"{name}: tested {installed}, image gets {pinned}"


def test_platform_image_contract() -> None:
    instructions = _instructions(DOCKERFILE)
    args = dict(re.match(r"(\w+)=(\S+)", rest).groups() for word, rest in instructions if word == "ARG" and "=" in rest)
    # CUDA of the base image = the CUDA torch's wheels were built with.
    import torch

    cuda_tag = args["CUDA_IMAGE"].split(":", 1)[1]
    assert args["CUDA_IMAGE"].startswith("nvidia/cuda:") and "cudnn-runtime-ubuntu" in cuda_tag
    assert cuda_tag.startswith(torch.version.cuda + "."), (cuda_tag, torch.version.cuda)
    # Python of the image satisfies requires-python.
    assert SpecifierSet(pyproject()["project"]["requires-python"]).contains(args["PYTHON_VERSION"] + ".0")
    runs = " ".join(rest for word, rest in instructions if word == "RUN")
    assert "--constraint /opt/memseg/constraints.txt ." in runs
    ray_pin = pinned_versions()["ray"]
    assert f"ray.__version__ == '{ray_pin}'" in runs
    # Weights: fetched for the configured backbone, then loaded once more with the hub off.
    assert "MemSegConfig().model.backbone, pretrained=True" in runs
    assert "HF_HUB_OFFLINE=1 python -c" in runs
    env = _env(DOCKERFILE)
    assert env["HF_HOME"] == "/opt/memseg/hf-cache"
    assert env["HF_HUB_OFFLINE"] == "1"
    # The run-time user is not root, and it is the uid the manifests' securityContext uses.
    users = [rest for word, rest in instructions if word == "USER"]
    assert users and users[-1] == "1000:1000"
    # The offline switch comes after the download, or the download itself would be refused.
    words = [w for w, _ in instructions]
    hf_offline_env = max(i for i, (w, r) in enumerate(instructions) if w == "ENV" and "HF_HUB_OFFLINE=1" in r)
    download = max(i for i, (w, r) in enumerate(instructions) if w == "RUN" and "pretrained=True" in r)
    assert download < hf_offline_env
    assert words.count("FROM") == 2


def test_build_context_holds_what_the_dockerfile_copies() -> None:
    ignore = (INFRA / "docker" / "Dockerfile.dockerignore").read_text().splitlines()
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    copied = []
    for word, rest in _instructions(DOCKERFILE):
        if word == "COPY" and not rest.startswith("--from"):
            copied += rest.split()[:-1]
    assert copied
    assert set(copied) <= allowed, set(copied) - allowed


def test_mlflow_image_pins_the_client_version() -> None:
    runs = " ".join(rest for word, rest in _instructions(MLFLOW_DOCKERFILE) if word == "RUN")
    assert f'"mlflow[auth]=={pinned_versions()["mlflow"]}"' in runs
    assert "psycopg2-binary==" in runs
    users = [rest for word, rest in _instructions(MLFLOW_DOCKERFILE) if word == "USER"]
    assert users and users[-1] != "root" and not users[-1].startswith("0")
