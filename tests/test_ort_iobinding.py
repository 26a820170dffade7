"""ONNX Runtime with IO binding (``infer_torch``): same outputs as ``infer``, outputs as torch tensors in place."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from sammil_deploy.export.onnx_export import export_onnx
from sammil_deploy.export.spec import ExportSpec
from sammil_deploy.runtime import TensorSpec
from sammil_deploy.runtime.ort_backend import OrtBackend


class PatchesToFeatures(nn.Module):
    """``patches (B, 8, 8, 3) uint8 -> features (B, 4)`` and a static ``scale (2,)`` output."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 4)

    def forward(self, patches: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = patches.to(torch.float32).mean(dim=(1, 2)) / 255.0
        feats = self.fc(x)
        return feats, torch.stack([feats.min(), feats.max()])


SPEC = ExportSpec(
    part="resnet50",
    inputs=(TensorSpec("patches", "uint8", ("batch", 8, 8, 3)),),
    outputs=(TensorSpec("features", "float32", ("batch", 4)), TensorSpec("scale", "float32", (2,))),
)


@pytest.fixture(scope="module")
def onnx_path(tmp_path_factory):
    torch.manual_seed(0)
    example = [torch.zeros((2, 8, 8, 3), dtype=torch.uint8)]
    return export_onnx(PatchesToFeatures().eval(), SPEC, example, tmp_path_factory.mktemp("iob") / "m.onnx").path


def _patches(n: int) -> np.ndarray:
    return np.random.default_rng(n).integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)


@pytest.mark.parametrize("n", [1, 5])
def test_io_binding_matches_plain_run_on_cpu(onnx_path, n):
    with OrtBackend(onnx_path, providers="cpu") as ort:
        expected = ort.infer({"patches": _patches(n)})
        for value in (_patches(n), torch.from_numpy(_patches(n))):
            got = ort.infer_torch({"patches": value})
            assert set(got) == {"features", "scale"}
            assert all(isinstance(t, torch.Tensor) for t in got.values())
            assert got["features"].shape == (n, 4)
            for name, want in expected.items():
                np.testing.assert_array_equal(got[name].numpy(), want)


@pytest.mark.gpu
def test_io_binding_keeps_cuda_tensors_on_the_device(onnx_path):
    from sammil_deploy.runtime.ort_backend import CUDA_EP

    with OrtBackend(onnx_path, providers="cpu") as cpu, OrtBackend(onnx_path, providers="cuda") as gpu:
        assert gpu.providers[0] == CUDA_EP
        patches = _patches(7)
        got = gpu.infer_torch({"patches": torch.from_numpy(patches).cuda()})
        assert got["features"].is_cuda
        assert got["scale"].is_cuda
        np.testing.assert_allclose(got["features"].cpu().numpy(), cpu.infer({"patches": patches})["features"],
                                   rtol=1e-4, atol=1e-5)  # fmt: skip
