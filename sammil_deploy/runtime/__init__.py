"""Runtime backends: PyTorch, ONNX Runtime and TensorRT behind one interface. Loads artifacts only.

``from sammil_deploy.runtime import open_backend, TensorSpec`` is cheap; the backend modules (and torch,
onnxruntime, tensorrt) are imported when a backend is created.
"""

from sammil_deploy.runtime.artifacts import PlanSidecar, TensorSpec, read_onnx_metadata, read_sidecar
from sammil_deploy.runtime.base import Backend, check_inputs
from sammil_deploy.runtime.factory import BACKEND_KINDS, GPU_ONLY_KINDS, backend_kinds, check_backend_kind, open_backend

__all__ = [
    "BACKEND_KINDS",
    "Backend",
    "GPU_ONLY_KINDS",
    "PlanSidecar",
    "TensorSpec",
    "backend_kinds",
    "check_backend_kind",
    "check_inputs",
    "open_backend",
    "read_onnx_metadata",
    "read_sidecar",
]
