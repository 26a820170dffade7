"""One backend vocabulary and one device resolver: the runtime's. A second copy anywhere makes these fail."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import sammil_deploy
from sammil_deploy.errors import ConfigError
from sammil_deploy.runtime import BACKEND_KINDS, GPU_ONLY_KINDS
from sammil_deploy.runtime.factory import BACKENDS

PACKAGE = Path(sammil_deploy.__file__).parent
HOME_OF_KINDS = PACKAGE / "runtime" / "factory.py"
HOME_OF_DEVICES = PACKAGE / "runtime" / "devices.py"
PACKAGE_NAMES = PACKAGE / "environment.py"  # lists the torch, onnxruntime, tensorrt *distributions*' versions


def _modules() -> list[tuple[Path, ast.Module]]:
    return [(path, ast.parse(path.read_text(), str(path))) for path in sorted(PACKAGE.rglob("*.py"))]


def test_device_resolution_is_defined_once():
    defined = [
        f"{path.relative_to(PACKAGE)}:{node.lineno} {node.name}"
        for path, tree in _modules()
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and "resolve_device" in node.name
        if path != HOME_OF_DEVICES
    ]
    assert defined == [], "resolve devices with sammil_deploy.runtime.devices.resolve_device"


def test_backend_kinds_are_listed_once():
    """No tuple/list/set/dict literal outside runtime/factory.py spells out the three kinds again."""
    kinds = set(BACKEND_KINDS)
    copies = []
    for path, tree in _modules():
        if path in (HOME_OF_KINDS, PACKAGE_NAMES):
            continue
        for node in ast.walk(tree):
            elements = node.keys if isinstance(node, ast.Dict) else getattr(node, "elts", None)
            if not isinstance(node, ast.Tuple | ast.List | ast.Set | ast.Dict) or elements is None:
                continue
            names = {e.value for e in elements if isinstance(e, ast.Constant) and isinstance(e.value, str)}
            if kinds <= names:
                copies.append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
    assert copies == [], "use sammil_deploy.runtime.BACKEND_KINDS"


def test_every_backend_name_is_a_runtime_kind():
    from sammil_deploy.bench.variants import BACKENDS as BENCH_NAMES
    from sammil_deploy.bench.variants import BENCH_BACKENDS, Variant
    from sammil_deploy.cli import infer as cli_infer
    from sammil_deploy.demo.config import INFER_BACKENDS
    from sammil_deploy.features.encoding import FEATURE_BACKENDS

    assert tuple(BACKENDS) == BACKEND_KINDS  # the registry open_backend dispatches on
    assert cli_infer.BACKEND_KINDS is BACKEND_KINDS  # the CLI's --backend help lists the same object
    assert ("auto", *BACKEND_KINDS) == FEATURE_BACKENDS
    assert set(INFER_BACKENDS) == set(BACKEND_KINDS) - set(GPU_ONLY_KINDS)
    # Benchmark names are runtime kinds run a certain way (ort-cuda: onnxruntime on CUDA), never new kinds.
    assert {b.kind for b in BENCH_BACKENDS.values()} == set(BACKEND_KINDS)
    assert all(Variant.parse(name).runtime.kind in BACKEND_KINDS for name in BENCH_NAMES)
    assert all(b.kind == name for name, b in BENCH_BACKENDS.items() if name in BACKEND_KINDS)  # a kind means itself


def test_configs_validate_against_the_runtime_kinds():
    from sammil_deploy.features.encoding import EncoderConfig
    from sammil_deploy.pipeline.infer import InferConfig

    for kind in BACKEND_KINDS:
        assert InferConfig(backend=kind).backend == kind
    with pytest.raises(ConfigError, match=r"infer\.backend: unknown backend 'onnx'; choose from torch, onnxruntime"):
        InferConfig(backend="onnx")
    with pytest.raises(ConfigError, match="features.backend must be one of"):
        EncoderConfig(backend="ort")


def test_resolve_device_canonical_names_and_errors():
    import torch

    from sammil_deploy.runtime.devices import ort_device_options, resolve_device

    assert resolve_device("cpu") == "cpu"
    assert resolve_device(" CPU ") == "cpu"
    assert resolve_device(torch.device("cpu")) == "cpu"
    assert ort_device_options("cpu") == {"providers": "cpu", "device_id": 0}
    with pytest.raises(ConfigError, match="train.device 'gpu': use auto, cpu, cuda or cuda:N"):
        resolve_device("gpu", option="train.device")
    if torch.cuda.is_available():
        current = torch.cuda.current_device()
        assert resolve_device("auto") == resolve_device("cuda") == f"cuda:{current}"
        assert ort_device_options(f"cuda:{current}") == {"providers": "cuda", "device_id": current}
        return
    assert resolve_device("auto") == "cpu"
    with pytest.raises(ConfigError, match=r"train\.device 'cuda:1': no CUDA GPU is visible.*set train\.device = 'cpu'"):
        resolve_device("cuda:1", option="train.device")
