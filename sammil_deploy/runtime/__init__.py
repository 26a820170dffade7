"""Runtime backends: PyTorch, ONNX Runtime and TensorRT behind one interface. Loads artifacts only.

``from sammil_deploy.runtime import open_backend, TensorSpec`` is cheap; the backend modules (and torch,
onnxruntime, tensorrt) are imported when a backend is created.
"""

from sammil_deploy.runtime.artifacts import PlanSidecar, TensorSpec, read_onnx_metadata, read_sidecar
from sammil_deploy.runtime.base import Backend, check_inputs
from sammil_deploy.runtime.factory import backend_kinds, open_backend

__all__ = [
    "Backend",
    "PlanSidecar",
    "TensorSpec",
    "backend_kinds",
    "check_inputs",
    "open_backend",
    "read_onnx_metadata",
    "read_sidecar",
]
