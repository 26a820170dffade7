"""One front door to the backends: ``open_backend(kind, artifact, **options)`` via a registry."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sammil_deploy.errors import ConfigError
from sammil_deploy.runtime.base import Backend


def _torch(artifact: Any, **options: Any) -> Backend:
    from sammil_deploy.runtime.torch_backend import TorchBackend

    return TorchBackend(artifact, **options)


def _onnxruntime(artifact: Any, **options: Any) -> Backend:
    from sammil_deploy.runtime.ort_backend import OrtBackend

    return OrtBackend(artifact, **options)


def _tensorrt(artifact: Any, **options: Any) -> Backend:
    from sammil_deploy.runtime.trt_backend import TrtBackend

    return TrtBackend(artifact, **options)


# The one vocabulary of backend kinds: the CLI's --backend choices, the config checks, the bundle formats and the
# benchmark variants (``ort-cuda`` = onnxruntime on a CUDA device) all use these names.
BACKEND_KINDS = ("torch", "onnxruntime", "tensorrt")
GPU_ONLY_KINDS = ("tensorrt",)
# Builders import their module on call, so `import sammil_deploy.runtime` stays cheap (no torch for ORT users).
BACKENDS: dict[str, Callable[..., Backend]] = dict(zip(BACKEND_KINDS, (_torch, _onnxruntime, _tensorrt), strict=True))
ALIASES = {"ort": "onnxruntime", "trt": "tensorrt", "pytorch": "torch"}


def backend_kinds() -> list[str]:
    """Registered backend names, sorted."""
    return sorted(BACKENDS)


def check_backend_kind(kind: str, *, option: str = "backend") -> str:
    """``kind`` if it is a runtime backend kind (exact name, as configs and the CLI take it).

    Raises:
        ConfigError: Any other name, listing the kinds.
    """
    if kind not in BACKEND_KINDS:
        raise ConfigError(f"{option}: unknown backend {kind!r}; choose from {', '.join(BACKEND_KINDS)}")
    return kind


def open_backend(kind: str, artifact: Any, *, load: bool = True, **options: Any) -> Backend:
    """Create (and by default load) a backend.

    Args:
        kind: ``torch``, ``onnxruntime`` or ``tensorrt`` (aliases ``pytorch``, ``ort``, ``trt``).
        artifact: ``torch``: the built ``nn.Module``; ``onnxruntime``: the ``.onnx`` path; ``tensorrt``: the
            ``.plan`` path.
        load: Load now (errors surface here) rather than on first use.
        **options: Backend keyword arguments, e.g. ``input_spec=..., output_spec=..., device="cuda",
            precision="bf16", compile=True`` (torch); ``providers="cuda", intra_op_threads=2`` (onnxruntime);
            ``device="cuda:1", profile=0`` (tensorrt).

    Returns:
        The backend; use it as a context manager to close it.

    Raises:
        ConfigError: Unknown kind, or an option the backend does not take.
        BackendError, MissingDependencyError: From loading.
    """
    name = ALIASES.get(kind.lower(), kind.lower())
    try:
        builder = BACKENDS[name]
    except KeyError:
        raise ConfigError(f"unknown backend {kind!r}; choose from {backend_kinds()}") from None
    try:
        backend = builder(artifact, **options)
    except TypeError as err:
        raise ConfigError(f"backend {name!r}: invalid options {sorted(options)} ({err})") from None
    if load:
        backend.load()
    return backend
