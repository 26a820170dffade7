"""Runtime backends: torch vs onnxruntime parity on dynamic axes, input validation, provider choice, plan sidecars.

The ONNX files are made by the export stage's own exporter (dynamo, metadata stamped) from small random
models built here: the AB-MIL head (dynamic instance axis) and a tiny uint8 NHWC conv net (dynamic batch).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from sammil_deploy.errors import BackendError, ConfigError, InputSpecError, MissingDependencyError
from sammil_deploy.export.onnx_export import export_onnx
from sammil_deploy.export.spec import ExportSpec
from sammil_deploy.mil.config import ModelConfig
from sammil_deploy.mil.model import BagClassifier, build_model
from sammil_deploy.runtime import TensorSpec, check_inputs, open_backend, read_onnx_metadata
from sammil_deploy.runtime.artifacts import (
    PlanSidecar,
    check_plan_compatible,
    read_sidecar,
    sidecar_path,
    write_sidecar,
)
from sammil_deploy.runtime.ort_backend import CPU_EP, OrtBackend, resolve_providers, trt_profile_options
from sammil_deploy.runtime.torch_backend import TorchBackend
from sammil_deploy.runtime.trt_backend import ROW_AXES, TrtBackend

IN_DIM = 64
PATCH_PX = 16


class TinyPatchNet(nn.Module):
    """``patches (B, 16, 16, 3) uint8 -> features (B, 8)``: normalise, two convs, global average pool, Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2), nn.ReLU())
        self.fc = nn.Linear(16, 8)

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        x = patches.to(torch.float32).permute(0, 3, 1, 2) / 255.0 - 0.5  # cast first, as TensorRT needs for uint8
        return self.fc(self.conv(x).mean(dim=(2, 3)))


def _mil_spec() -> ExportSpec:
    return ExportSpec(
        part="mil",
        inputs=(TensorSpec("features", "float32", ("num_instances", IN_DIM), "bag"),),
        outputs=(
            TensorSpec("logits", "float32", (2,)),
            TensorSpec("probabilities", "float32", (2,)),
            TensorSpec("attention", "float32", ("num_instances",)),
        ),
    )


def _patch_spec() -> ExportSpec:
    return ExportSpec(
        part="resnet50",
        inputs=(TensorSpec("patches", "uint8", ("batch", PATCH_PX, PATCH_PX, 3)),),
        outputs=(TensorSpec("features", "float32", ("batch", 8)),),
    )


def _mil_inputs(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    return {"features": np.abs(np.random.default_rng(seed).standard_normal((n, IN_DIM), dtype=np.float32))}


def _patch_inputs(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"patches": rng.integers(0, 256, (n, PATCH_PX, PATCH_PX, 3), dtype=np.uint8)}


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> dict[str, tuple[nn.Module, ExportSpec, Path, object]]:
    """Both models exported once: ``{name: (module, spec, onnx path, make_inputs)}``."""
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("runtime")
    mil = BagClassifier(build_model(ModelConfig(in_dim=IN_DIM, embed_dim=32, attn_dim=16, n_classes=2))).eval()
    patch_net = TinyPatchNet().eval()
    result = {}
    for name, module, spec, make in (
        ("mil", mil, _mil_spec(), _mil_inputs),
        ("patches", patch_net, _patch_spec(), _patch_inputs),
    ):
        example = [torch.from_numpy(v) for v in make(4).values()]
        artifact = export_onnx(module, spec, example, out / f"{name}.onnx")
        result[name] = (module, spec, artifact.path, make)
    return result


def _torch_backend(entry) -> TorchBackend:
    module, spec, _, _ = entry
    return TorchBackend(module, spec.inputs, spec.outputs)


@pytest.mark.parametrize(("name", "sizes"), [("mil", (7, 300)), ("patches", (2, 5))])
def test_torch_and_onnxruntime_agree_on_two_dynamic_sizes(artifacts, name, sizes):
    entry = artifacts[name]
    _, spec, path, make = entry
    with _torch_backend(entry) as ref, OrtBackend(path, providers="cpu", intra_op_threads=1) as ort:
        assert ort.output_names == spec.output_names
        for n in sizes:
            inputs = make(n, seed=n)
            expected, got = ref.infer(inputs), ort.infer(inputs)
            assert list(got) == spec.output_names
            for out in spec.output_names:
                assert got[out].shape == expected[out].shape
                assert got[out].dtype == np.float32
                np.testing.assert_allclose(got[out], expected[out], atol=1e-5, rtol=1e-5, err_msg=f"{name}.{out} n={n}")
            assert expected[spec.output_names[0]].shape[0] == (n if name == "patches" else 2)


def test_onnxruntime_spinning_is_a_session_setting(artifacts):
    """``spin=False`` (the SAM chain's sessions) reaches the session; outputs do not depend on it."""
    _, _, path, make = artifacts["patches"]
    inputs = make(3, seed=0)
    with OrtBackend(path, providers="cpu") as spinning, OrtBackend(path, providers="cpu", spin=False) as quiet:
        entry = "session.intra_op.allow_spinning"
        assert quiet._session.get_session_options().get_session_config_entry(entry) == "0"
        with pytest.raises(RuntimeError, match="does not have configuration"):  # unset: ORT's default, spinning
            spinning._session.get_session_options().get_session_config_entry(entry)
        np.testing.assert_array_equal(quiet.infer(inputs)["features"], spinning.infer(inputs)["features"])


def test_onnxruntime_reads_specs_from_session_and_metadata(artifacts):
    _, spec, path, _ = artifacts["mil"]
    backend = open_backend("ort", path, providers="auto", intra_op_threads=1)
    with backend:
        (features,) = backend.input_spec
        assert (features.name, features.dtype, features.rank) == ("features", "float32", 2)
        assert features.shape[1] == IN_DIM
        assert not isinstance(features.shape[0], int)
        assert [t.name for t in backend.output_spec] == spec.output_names
        # Auto on a CPU-only onnxruntime lands on the CPU provider (Azure is not a compute provider).
        assert backend.providers[0] == CPU_EP
        assert backend.device == "cpu"
        described = backend.describe()
        assert described["kind"] == "onnxruntime"
        assert described["precision"] == "fp32"
    assert not backend.is_loaded
    assert backend.infer(_mil_inputs(3))["attention"].shape == (3,)  # infer reloads a closed backend
    assert backend.is_loaded
    backend.close()
    assert read_onnx_metadata(path)["part"] == "mil"
    assert read_onnx_metadata(path)["inputs"][0]["shape"] == ["num_instances", IN_DIM]


def test_onnxruntime_loads_external_data_by_path(artifacts, tmp_path):
    module, spec, path, make = artifacts["patches"]
    example = [torch.from_numpy(v) for v in make(3).values()]
    external = export_onnx(module, spec, example, tmp_path / "ext.onnx", external_data_threshold_bytes=0)
    assert external.external_data is not None
    assert external.external_data.is_file()
    inputs = make(6, seed=1)
    with OrtBackend(external.path, providers="cpu") as ext, OrtBackend(path, providers="cpu") as inline:
        np.testing.assert_array_equal(ext.infer(inputs)["features"], inline.infer(inputs)["features"])


def test_torch_tensor_inputs_match_numpy_inputs(artifacts):
    entry = artifacts["mil"]
    inputs = _mil_inputs(11)
    as_tensors = {k: torch.from_numpy(v) for k, v in inputs.items()}
    with OrtBackend(entry[2], providers="cpu") as ort, _torch_backend(entry) as ref:
        np.testing.assert_array_equal(ort.infer(as_tensors)["attention"], ort.infer(inputs)["attention"])
        torch_out = ref.infer_torch(as_tensors)
        assert isinstance(torch_out["logits"], torch.Tensor)
        np.testing.assert_array_equal(torch_out["logits"].numpy(), ref.infer(inputs)["logits"])


BAD_INPUTS = {
    "wrong name": ({"feats": np.zeros((3, IN_DIM), np.float32)}, ["'feats'", "missing ['features']"]),
    "extra name": (
        {"features": np.zeros((3, IN_DIM), np.float32), "coords": np.zeros((3, 2))},
        ["unexpected ['coords']"],
    ),
    "wrong rank": ({"features": np.zeros((1, 3, IN_DIM), np.float32)}, ["'features'", "rank 2", "got rank 3"]),
    "wrong dtype": ({"features": np.zeros((3, IN_DIM), np.float64)}, ["'features'", "float32", "got float64"]),
    "wrong static dim": ({"features": np.zeros((3, IN_DIM + 1), np.float32)}, ["'features'", f"{IN_DIM + 1}"]),
    "wrong torch dtype": ({"features": torch.zeros((3, IN_DIM), dtype=torch.float16)}, ["float32", "got float16"]),
}


@pytest.mark.parametrize("kind", ["torch", "onnxruntime"])
@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_inputs_raise_input_spec_error_naming_tensor_expected_and_got(artifacts, kind, case):
    entry = artifacts["mil"]
    backend = _torch_backend(entry) if kind == "torch" else OrtBackend(entry[2], providers="cpu")
    inputs, fragments = BAD_INPUTS[case]
    with backend, pytest.raises(InputSpecError) as info:
        backend.infer(inputs)
    message = str(info.value)
    assert kind in message
    for fragment in fragments:
        assert fragment in message, (fragment, message)


def test_named_dynamic_axes_must_agree_across_inputs():
    spec = [
        TensorSpec("point_coords", "float32", ("num_prompts", 1, 2)),
        TensorSpec("point_labels", "float32", ("num_prompts", 1)),
        TensorSpec("anything", "int64", (None,)),
    ]
    good = {"point_coords": np.zeros((5, 1, 2), np.float32), "point_labels": np.zeros((5, 1), np.float32)}
    check_inputs({**good, "anything": np.zeros(9, np.int64)}, spec)  # anonymous axes are free
    bad = {**good, "point_labels": np.zeros((4, 1), np.float32), "anything": np.zeros(1, np.int64)}
    with pytest.raises(InputSpecError, match=r"'num_prompts' is 5 in input 'point_coords' but 4 in 'point_labels'"):
        check_inputs(bad, spec)


@pytest.mark.parametrize("provider", ["CUDAExecutionProvider", "tensorrt"])
def test_forcing_an_unavailable_provider_lists_available_ones(artifacts, provider):
    import onnxruntime

    available = onnxruntime.get_available_providers()
    full = "TensorrtExecutionProvider" if provider == "tensorrt" else provider
    if full in available:
        pytest.skip(f"{full} is available on this machine")
    backend = OrtBackend(artifacts["mil"][2], providers=[provider, "cpu"])
    with pytest.raises(BackendError) as info:
        backend.load()
    message = str(info.value)
    assert full in message
    assert CPU_EP in message
    assert "onnxruntime-gpu" in message
    assert not backend.is_loaded


def test_auto_provider_order_prefers_tensorrt_then_cuda():
    available = [CPU_EP, "CUDAExecutionProvider", "TensorrtExecutionProvider"]
    assert resolve_providers("auto", available) == ["TensorrtExecutionProvider", "CUDAExecutionProvider", CPU_EP]
    assert resolve_providers("auto", [CPU_EP, "AzureExecutionProvider"]) == [CPU_EP]
    assert resolve_providers(["cuda", "cpu"], available) == ["CUDAExecutionProvider", CPU_EP]


def test_missing_onnx_file_is_a_backend_error(tmp_path):
    with pytest.raises(BackendError, match=r"missing\.onnx.*sammil-deploy export"):
        OrtBackend(tmp_path / "missing.onnx").load()


def test_torch_backend_bf16_autocast_on_cpu_is_close_and_declared_dtype(artifacts):
    entry = artifacts["mil"]
    module, spec, _, _ = entry
    inputs = _mil_inputs(50)
    with _torch_backend(entry) as fp32, TorchBackend(module, spec.inputs, spec.outputs, precision="bf16") as bf16:
        expected, got = fp32.infer(inputs), bf16.infer(inputs)
    assert got["probabilities"].dtype == np.float32
    np.testing.assert_allclose(got["probabilities"], expected["probabilities"], atol=5e-2)
    assert np.abs(got["probabilities"] - expected["probabilities"]).max() > 0  # autocast really ran in bf16


def test_torch_backend_rejects_bad_precision_and_missing_cuda(artifacts):
    module, spec, _, _ = artifacts["mil"]
    with pytest.raises(ConfigError, match="fp16.*CUDA"):
        TorchBackend(module, spec.inputs, spec.outputs, precision="fp16")
    with pytest.raises(ConfigError, match="precision must be one of"):
        TorchBackend(module, spec.inputs, spec.outputs, precision="int8")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA GPU is visible"):
            TorchBackend(module, spec.inputs, spec.outputs, device="cuda").load()


def test_open_backend_registry_errors(artifacts):
    with pytest.raises(
        ConfigError, match=r"unknown backend 'openvino'; choose from \['onnxruntime', 'tensorrt', 'torch'\]"
    ):
        open_backend("openvino", artifacts["mil"][2])
    with pytest.raises(ConfigError, match="invalid options"):
        open_backend("onnxruntime", artifacts["mil"][2], precision="bf16")


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="tensorrt is installed here")
def test_tensorrt_backend_without_tensorrt_names_the_install_command(tmp_path):
    plan = tmp_path / "mil.plan"
    plan.write_bytes(b"not a plan")
    with pytest.raises(MissingDependencyError, match=r"tensorrt is not installed.*pip install tensorrt"):
        TrtBackend(plan).load()
    with pytest.raises(MissingDependencyError):
        open_backend("trt", plan)


def test_plan_sidecar_roundtrip_and_refusals(tmp_path):
    plan = tmp_path / "mil.plan"
    with pytest.raises(BackendError, match="plan not found"):
        read_sidecar(plan)
    plan.write_bytes(b"\x00plan")
    with pytest.raises(BackendError, match=r"sidecar mil\.plan\.json is missing.*export --trt"):
        read_sidecar(plan)
    sidecar = PlanSidecar(
        tensorrt_version="10.3.0",
        compute_capability="9.0",
        gpu_name="NVIDIA H200",
        precision="fp16",
        part="mil",
        profiles=({"features": [[1, IN_DIM], [4096, IN_DIM], [65536, IN_DIM]]},),
        inputs=(TensorSpec("features", "float32", ("num_instances", IN_DIM)).to_dict(),),
        extra={"build_seconds": 12.5},
    )
    assert write_sidecar(plan, sidecar) == sidecar_path(plan) == tmp_path / "mil.plan.json"
    loaded = read_sidecar(plan)
    assert loaded == sidecar
    assert loaded.extra == {"build_seconds": 12.5}
    assert '"build_seconds": 12.5' in sidecar_path(plan).read_text()  # extra keys sit at the top level
    check_plan_compatible(loaded, tensorrt_version="10.3.0", compute_capability="9.0")
    with pytest.raises(BackendError, match=r"TensorRT 10\.3\.0, this machine has 11\.4\.0.*export --trt"):
        check_plan_compatible(loaded, tensorrt_version="11.4.0", compute_capability="9.0")
    with pytest.raises(BackendError, match=r"capability 9\.0 \(NVIDIA H200\), this GPU is 8\.9.*export --trt"):
        check_plan_compatible(loaded, tensorrt_version="10.3.0", compute_capability="8.9")
    sidecar_path(plan).write_text("{not json")
    with pytest.raises(BackendError, match="not valid JSON"):
        read_sidecar(plan)


# --- GPU / TensorRT: real code paths, skipped where the hardware is absent ------------------------------------------


@pytest.mark.gpu
def test_torch_backend_on_cuda_matches_cpu(artifacts):
    module, spec, _, _ = artifacts["mil"]
    inputs = _mil_inputs(1000)
    with TorchBackend(module, spec.inputs, spec.outputs) as cpu:
        expected = cpu.infer(inputs)
    with TorchBackend(module, spec.inputs, spec.outputs, device="cuda") as gpu:
        got = gpu.infer(inputs)
        on_device = gpu.infer_torch({"features": torch.from_numpy(inputs["features"]).cuda()})
    module.cpu()
    assert on_device["attention"].is_cuda
    for name in spec.output_names:
        np.testing.assert_allclose(got[name], expected[name], atol=1e-4, rtol=1e-3)


@pytest.mark.trt
@pytest.mark.gpu
@pytest.mark.parametrize(("name", "sizes"), [("mil", (7, 300)), ("patches", (2, 5))])
def test_tensorrt_plan_matches_onnxruntime(artifacts, tmp_path, name, sizes):
    _, spec, path, make = artifacts[name]
    (inp,) = spec.inputs
    static = tuple(d for d in inp.shape if isinstance(d, int))
    from sammil_deploy.export.tensorrt import build_engine

    profile = {inp.name: ((1, *static), (8, *static), (512, *static))}
    plan = build_engine(path, tmp_path / f"{name}.plan", profile, precision="fp32", workspace_bytes=1 << 30).plan
    with TrtBackend(plan) as trt_backend, OrtBackend(path, providers="cpu") as ort:
        assert not isinstance(trt_backend.input_spec[0].shape[0], int)  # dynamic axis
        assert trt_backend.profile_ranges[inp.name] == ((1, *static), (512, *static))
        for n in (*sizes, sizes[0]):  # grow the buffers, then reuse them for a smaller call
            inputs = make(n, seed=n)
            expected, got = ort.infer(inputs), trt_backend.infer(inputs)
            on_device = trt_backend.infer_torch({k: torch.from_numpy(v).cuda() for k, v in inputs.items()})
            for out in spec.output_names:
                np.testing.assert_allclose(got[out], expected[out], atol=1e-4, rtol=1e-3)
                np.testing.assert_array_equal(on_device[out].cpu().numpy(), got[out])
        too_many = make(513, seed=513)
        if inp.shape[0] in ROW_AXES:  # independent rows: split at the profile's max (512 + 1), same results
            assert trt_backend.max_rows_per_call == 512
            expected, got = ort.infer(too_many), trt_backend.infer(too_many)
            for out in spec.output_names:
                np.testing.assert_allclose(got[out], expected[out], atol=1e-4, rtol=1e-3)
        else:  # a MIL bag cannot be split (softmax over the whole bag)
            assert trt_backend.max_rows_per_call is None
            with pytest.raises(InputSpecError, match="optimisation profile"):
                trt_backend.infer(too_many)


def test_reads_the_sidecar_the_export_stage_writes(tmp_path):
    """The keys ``sammil_deploy.export.tensorrt.build_engine`` writes, as a literal (it needs TensorRT to run)."""
    plan = tmp_path / "resnet50.plan"
    plan.write_bytes(b"\x00")
    written = {
        "format_version": 1,
        "sammil_deploy_version": "0.1.0",
        "part": "resnet50",
        "tensorrt_version": "10.13.3.9",
        "gpu_name": "NVIDIA L4",
        "compute_capability": "8.9",
        "precision": "fp16",
        "strongly_typed": True,
        "profiles": [{"patches": [[1, 224, 224, 3], [64, 224, 224, 3], [256, 224, 224, 3]]}],
        "workspace_bytes": 4 << 30,
        "source_onnx": "resnet50.fp16.onnx",
        "source_onnx_sha256": "ab" * 32,
        "build_seconds": 41.2,
    }
    sidecar_path(plan).write_text(json.dumps(written))
    sidecar = read_sidecar(plan)
    assert (sidecar.tensorrt_version, sidecar.compute_capability, sidecar.precision) == ("10.13.3.9", "8.9", "fp16")
    assert sidecar.profiles[0]["patches"][2] == [256, 224, 224, 3]
    assert sidecar.extra == {"strongly_typed": True, "workspace_bytes": 4 << 30, "build_seconds": 41.2}
    assert sidecar.to_dict() == {**written, "inputs": [], "outputs": []}
    with pytest.raises(BackendError, match=r"resnet50\.plan: built for GPU compute capability 8\.9 \(NVIDIA L4\)"):
        check_plan_compatible(sidecar, tensorrt_version="10.13.3.9", compute_capability="9.0", plan_name=plan.name)
    sidecar_path(plan).write_text(json.dumps({**written, "format_version": 2}))
    with pytest.raises(BackendError, match="newer than this sammil-deploy reads"):
        read_sidecar(plan)


def test_trt_provider_profile_options_format():
    profile = {"point_coords": ((1, 1, 2), (64, 1, 2), (1024, 1, 2)), "point_labels": ((1, 1), (64, 1), (1024, 1))}
    assert trt_profile_options(profile) == {
        "trt_profile_min_shapes": "point_coords:1x1x2,point_labels:1x1",
        "trt_profile_opt_shapes": "point_coords:64x1x2,point_labels:64x1",
        "trt_profile_max_shapes": "point_coords:1024x1x2,point_labels:1024x1",
    }


def test_torch_backend_compiled_matches_eager_on_two_sizes(artifacts):
    """``aot_eager`` exercises the torch.compile path (dynamo capture, dynamic shapes) without a C++ toolchain."""
    module, spec, _, _ = artifacts["mil"]
    torch._dynamo.reset()
    with (
        _torch_backend(artifacts["mil"]) as eager,
        TorchBackend(module, spec.inputs, spec.outputs, compile="aot_eager") as compiled,
    ):
        assert compiled.describe()["compile"] == "aot_eager"
        for n in (9, 130):
            inputs = _mil_inputs(n, seed=n)
            expected, got = eager.infer(inputs), compiled.infer(inputs)
            for name in spec.output_names:
                np.testing.assert_allclose(got[name], expected[name], atol=1e-6, rtol=1e-6)
