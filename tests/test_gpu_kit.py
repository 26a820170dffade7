"""The GPU validation kit (benchmarks/gpu/) and the dependency ranges: run.sh's plan and budgets, prepare.sh's
wheel folder (slow: builds and downloads from PyPI), and `pip install -e .` beside another torch (slow)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
KIT = ROOT / "benchmarks" / "gpu"
STEPS = ("install", "doctor", "gpu-tests", "bench-models", "bench-maskgen", "e2e-infer", "report")
KIT_LIMIT_MIB = 60
RUN_LIMIT_S = 8 * 60


def _requirements(lines: list[str]) -> dict[str, str]:
    """``{normalised name: specifier}`` of requirement strings."""
    found = {}
    for line in lines:
        match = re.fullmatch(r"\s*([A-Za-z0-9_.-]+)\s*([<>=!~].*)?", line.split("#")[0])
        if match and match.group(1):
            found[re.sub(r"[-_.]+", "-", match.group(1)).lower()] = (match.group(2) or "").replace(" ", "")
    return found


def _pyproject_requirements() -> dict[str, str]:
    text = (ROOT / "pyproject.toml").read_text()
    quoted = re.findall(r'^\s*"([^"]+)",', text, flags=re.M)
    quoted += re.findall(r'"([A-Za-z0-9_.-]+[<>=!~][^"]*)"', text)
    return _requirements(quoted)


def test_run_dry_run_lists_every_step_with_a_budget_within_8_minutes(tmp_path):
    out = tmp_path / "kit-out"
    result = subprocess.run(
        ["bash", str(KIT / "run.sh"), "--dry-run", "--out", str(out)], capture_output=True, text=True, check=True
    )
    rows = re.findall(r"^(\S+)\s+budget\s+(\d+) s\s+(.+)$", result.stdout, flags=re.M)
    assert tuple(name for name, _, _ in rows) == STEPS
    budgets = {name: int(budget) for name, budget, _ in rows}
    assert all(b > 0 for b in budgets.values())
    assert sum(budgets.values()) <= RUN_LIMIT_S
    assert f"{sum(budgets.values())} s of budgets in all" in result.stdout
    commands = {name: command for name, _, command in rows}
    assert "--no-index --no-deps" in commands["install"]
    assert "--target" in commands["install"]
    assert "-m 'gpu or trt'" in commands["gpu-tests"]
    assert "--width-px 40000 --height-px 32000" in commands["e2e-infer"]
    deadline = int(re.search(r"--deadline-s (\d+)", commands["e2e-infer"]).group(1))
    assert deadline < budgets["e2e-infer"]  # e2e.py skips variants itself before the timeout kills it
    assert not out.exists()  # a dry run writes nothing


def test_run_refuses_unknown_arguments():
    result = subprocess.run(["bash", str(KIT / "run.sh"), "--bogus"], capture_output=True, text=True)
    assert result.returncode == 2
    assert "unknown argument --bogus" in result.stderr


def test_kit_suites_load_and_list_the_gpu_only_backends():
    from sammil_deploy.bench.suites import load_suite

    models = load_suite(str(KIT / "kit-models.toml"))
    assert models.device == "cuda"
    assert set(models.enabled_components()) == {"sam_encoder", "resnet50", "mil"}
    listed = {v.split(":")[0] for v in models.resnet50.variants}
    assert {"ort-cuda", "ort-trt", "tensorrt"} <= listed  # reported as unavailable with the reason, not dropped
    assert load_suite(str(KIT / "kit-maskgen.toml")).enabled_components() == ("mask_generation",)


def test_kit_wheels_use_the_pyproject_ranges():
    kit = _requirements((KIT / "wheels.txt").read_text().splitlines())
    declared = _pyproject_requirements()
    assert kit, "wheels.txt lists nothing"
    for name, spec in kit.items():
        assert declared.get(name) == spec, f"{name}{spec} in wheels.txt, {declared.get(name)!r} in pyproject.toml"


def test_dependencies_are_ranges_and_ci_pins_them():
    declared = _pyproject_requirements()
    assert declared["torch"] == ">=2.11,<3"
    assert declared["torchvision"] == ">=0.26,<1"
    pins = _requirements((ROOT / ".ci" / "constraints.txt").read_text().splitlines())
    assert pins == {"torch": "==2.14.1", "torchvision": "==0.29.1"}
    assert "-c .ci/constraints.txt" in (ROOT / ".ci" / "run").read_text()


@pytest.mark.slow
def test_prepare_builds_the_wheel_folder_under_60_mib(tmp_path):
    dest = tmp_path / "wheels"
    result = subprocess.run(
        ["bash", str(KIT / "prepare.sh"), str(dest)], capture_output=True, text=True, timeout=900, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-2000:]
    wheels = sorted(p.name for p in dest.glob("*.whl"))
    for prefix in ("sammil_deploy-", "openslide_python-", "openslide_bin-", "segment_anything-", "imagecodecs-"):
        assert any(w.startswith(prefix) for w in wheels), (prefix, wheels)
    assert all(re.search(r"(py3-none|cp3\d*-abi3|cp312-cp312)-(any|manylinux)", w) for w in wheels), wheels
    size_bytes = sum(p.stat().st_size for p in dest.iterdir())
    assert size_bytes < KIT_LIMIT_MIB * 1024 * 1024
    subprocess.run(["sha256sum", "-c", "--quiet", "SHA256SUMS"], cwd=dest, check=True)


@pytest.mark.slow
def test_install_keeps_the_torch_already_there(tmp_path):
    """A fresh venv with torch 2.13.0 + torchvision 0.28.0 first: pip resolves our package without replacing them.

    The on-disk torch 2.13.0 CPU wheel of this build machine stands in for a GPU image's torch; ``--dry-run
    --report`` shows what pip would install without installing our other dependencies.
    """
    if shutil.which("python3") is None:
        pytest.skip("no python3")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "--disable-pip-version-check"]
    first = subprocess.run(
        [*pip, "install", "-q", "torch==2.13.0", "torchvision==0.28.0"], capture_output=True, text=True
    )
    if first.returncode != 0:
        pytest.skip(f"torch 2.13.0 / torchvision 0.28.0 not installable here: {first.stderr[-300:]}")
    project = tmp_path / "project"
    project.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, project / name)
    shutil.copytree(ROOT / "sammil_deploy", project / "sammil_deploy", ignore=shutil.ignore_patterns("__pycache__"))
    report = tmp_path / "report.json"
    subprocess.run(
        [*pip, "install", "-q", "--dry-run", "--report", str(report), "-e", str(project)],
        check=True, timeout=900,
    )  # fmt: skip
    planned = {
        item["metadata"]["name"].lower(): item["metadata"]["version"]
        for item in json.loads(report.read_text())["install"]
    }
    assert "sammil-deploy" in planned
    assert "torch" not in planned, planned
    assert "torchvision" not in planned, planned
