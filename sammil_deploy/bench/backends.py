"""Turn a benchmark variant (``"ort-cuda:fp16"``) into a loaded runtime backend for one network.

The torch variants wrap the caller's module in :class:`~sammil_deploy.runtime.torch_backend.TorchBackend`;
the ONNX Runtime and TensorRT variants export the module once per run with the export stage's functions
(FP32 ONNX, its FP16 graph variant, a TensorRT plan with one optimisation profile covering the swept sizes)
into the run's work folder and load the artifact with the runtime's backends. A variant that cannot run on
this machine (no GPU, no TensorRT, provider missing) is reported as unavailable with the reason, before any
export work.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from sammil_deploy.bench.variants import Variant
from sammil_deploy.errors import BackendError

if TYPE_CHECKING:
    import torch
    from torch import nn

    from sammil_deploy.export.spec import ExportArtifact, ExportSpec
    from sammil_deploy.runtime.base import Backend

log = logging.getLogger(__name__)

TRT_WORKSPACE_BYTES = 8 << 30


def cuda_available() -> bool:
    """Whether torch sees a CUDA device."""
    import torch

    return torch.cuda.is_available()


def unavailable_reason(variant: Variant, device: str) -> str | None:
    """Why ``variant`` cannot run on this machine with the suite's ``device``, or ``None`` if it can."""
    gpu = cuda_available()
    runtime = variant.runtime
    if runtime.kind == "torch":
        if variant.precision == "fp16" and not device.startswith("cuda"):
            return "fp16 autocast needs a CUDA device (suite device is cpu)"
        return None
    if runtime.kind == "onnxruntime":
        try:
            import onnxruntime as ort
        except ImportError:
            return "onnxruntime is not installed (pip install 'sammil-deploy[ort]')"
        from sammil_deploy.runtime.ort_backend import PROVIDER_ALIASES

        ep = PROVIDER_ALIASES[str(runtime.ort_provider)]
        if ep not in ort.get_available_providers():
            return f"onnxruntime has no {ep} here (available: {', '.join(ort.get_available_providers())})"
        if runtime.ort_provider != "cpu" and not gpu:
            return f"{ep} needs a CUDA GPU; none is visible"
        return None
    import importlib.util

    problems = [] if gpu else ["no CUDA GPU is visible"]
    if importlib.util.find_spec("tensorrt") is None:
        problems.append("tensorrt is not installed (the `trt` extra, or the docker/ GPU image)")
    return f"TensorRT needs a CUDA GPU: {'; '.join(problems)}" if problems else None


def profile_for(spec: ExportSpec, sizes: Sequence[int]) -> dict[str, tuple[tuple[int, ...], ...]]:
    """One TensorRT profile ``{input: (min, opt, max)}``: dynamic axes from ``min(sizes)`` to ``max(sizes)``."""
    lo, hi = min(sizes), max(sizes)

    def shape(size: int, dims: Sequence[int | str | None]) -> tuple[int, ...]:
        return tuple(size if isinstance(d, str) or d is None else int(d) for d in dims)

    return {t.name: (shape(lo, t.shape), shape(hi, t.shape), shape(hi, t.shape)) for t in spec.inputs}


@dataclass
class ExportCache:
    """ONNX files and TensorRT plans of one run, built on first use (``<work>/<name>/<name>.<precision>.onnx``)."""

    work_dir: Path
    onnx: dict[tuple[str, str], ExportArtifact] = field(default_factory=dict)
    plans: dict[tuple[str, str, str], Path] = field(default_factory=dict)

    def onnx_path(
        self, name: str, module: nn.Module, spec: ExportSpec, example: Sequence[torch.Tensor], precision: str
    ) -> Path:
        """The ONNX file of ``module`` at ``precision`` (``fp32``, or the FP16 graph of the FP32 file).

        Raises:
            ExportError: If torch cannot export the module or the conversion fails.
        """
        from sammil_deploy.export.onnx_export import export_fp16_variant, export_onnx

        key = (name, precision)
        if key not in self.onnx:
            folder = self.work_dir / name
            folder.mkdir(parents=True, exist_ok=True)
            if (name, "fp32") not in self.onnx:
                log.info("exporting %s to ONNX for the benchmark", name)
                self.onnx[(name, "fp32")] = export_onnx(module, spec, example, folder / f"{name}.fp32.onnx")
            if precision == "fp16":
                self.onnx[key] = export_fp16_variant(self.onnx[(name, "fp32")], folder / f"{name}.fp16.onnx")
        return self.onnx[key].path

    def plan_path(self, name: str, onnx_path: Path, precision: str, profile: Mapping[str, Any]) -> Path:
        """A TensorRT plan of ``onnx_path`` with ``profile`` (built once per run)."""
        from sammil_deploy.export.tensorrt import build_engine

        key = (name, precision, repr(sorted(profile.items())))
        if key not in self.plans:
            plan = self.work_dir / name / f"{name}.{precision}.{len(self.plans)}.plan"
            build_engine(
                onnx_path,
                plan,
                profile,
                precision=precision,
                workspace_bytes=TRT_WORKSPACE_BYTES,
                timing_cache=self.work_dir / "trt_timing.cache",
                part=name,
            )
            self.plans[key] = plan
        return self.plans[key]


def open_variant(
    variant: Variant,
    *,
    name: str,
    module: nn.Module,
    spec: ExportSpec,
    example: Sequence[torch.Tensor],
    sizes: Sequence[int],
    cache: ExportCache,
    device: str,
    threads: int,
    ort_spin: bool = True,
) -> Backend:
    """Load ``module`` as ``variant`` (exporting it first for ONNX Runtime/TensorRT).

    Args:
        variant: Backend and precision.
        name: File stem for exported artifacts (one per network).
        module: CPU (or device) module whose ``forward`` takes ``spec``'s inputs in order.
        spec: The export I/O contract (also the torch backend's declared I/O).
        example: Export example inputs (dynamic axes >= 2).
        sizes: Swept sizes of the dynamic axis (TensorRT profile range).
        cache: Where exports go.
        device: Suite device for torch variants (``cpu``, ``cuda:0``).
        threads: ONNX Runtime intra-op threads (0: its default).
        ort_spin: ONNX Runtime's idle-thread spinning (see :class:`~sammil_deploy.runtime.OrtBackend`).

    Raises:
        BackendError, ExportError, MissingDependencyError: Loading or exporting failed.
    """
    from sammil_deploy.runtime import open_backend
    from sammil_deploy.runtime.devices import cuda_index

    runtime = variant.runtime
    if runtime.kind == "torch":
        return open_backend(
            runtime.kind,
            module,
            input_spec=spec.inputs,
            output_spec=spec.outputs,
            device=device,
            precision=variant.precision,
            compile=runtime.compile,
            name=name,
        )
    onnx_path = cache.onnx_path(name, module, spec, example, variant.precision)
    if runtime.kind == "onnxruntime":
        from sammil_deploy.runtime.ort_backend import trt_profile_options

        options: dict[str, Any] = {
            "providers": runtime.ort_provider,
            "intra_op_threads": threads,
            "spin": ort_spin,
        }
        if device.startswith("cuda:"):
            options["device_id"] = cuda_index(device)
        if runtime.ort_provider == "tensorrt":
            options["trt_options"] = trt_profile_options(profile_for(spec, sizes))
        return open_backend(runtime.kind, onnx_path, **options)
    plan = cache.plan_path(name, onnx_path, variant.precision, profile_for(spec, sizes))
    return open_backend(runtime.kind, plan, device=device if device.startswith("cuda") else "cuda")


def feed_for(backend: Backend, inputs: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """Inputs in the form the backend is timed with.

    Torch and TensorRT backends on a GPU get device tensors (their normal GPU use: no host copies timed);
    everything else gets host arrays. Arrays are cast to the declared dtypes (an FP16 graph's inputs).
    """
    import torch

    dtypes = {t.name: t.dtype for t in backend.input_spec}
    arrays = {k: v.astype(dtypes.get(k, v.dtype.name), copy=False) for k, v in inputs.items()}
    if backend.kind in ("torch", "tensorrt") and backend.device.startswith("cuda"):
        return {k: torch.from_numpy(np.ascontiguousarray(v)).to(backend.device) for k, v in arrays.items()}
    return arrays


def io_note(backend: Backend) -> str:
    """How a timed call's I/O is placed (recorded in the row's notes)."""
    if backend.device.startswith("cuda"):
        if backend.kind in ("torch", "tensorrt"):
            return "device tensors in, device tensors out"
        return "host arrays in/out (host-device copies timed)"
    return "host arrays"


def run_once(backend: Backend, feed: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """One call, outputs on the host (for parity checks; device-resident backends via ``infer_torch``)."""
    if backend.kind in ("torch", "tensorrt") and backend.device.startswith("cuda"):
        return {k: v.float().cpu().numpy() for k, v in backend.infer_torch(feed).items()}
    return backend.infer(feed)


def call_for(backend: Backend, feed: Mapping[str, Any]) -> Any:
    """The zero-argument callable that is timed."""
    if backend.kind in ("torch", "tensorrt") and backend.device.startswith("cuda"):
        return lambda: backend.infer_torch(feed)
    return lambda: backend.infer(feed)


def parity(reference: Mapping[str, np.ndarray], candidate: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """Max |difference| and cosine similarity of the first output against the reference's (finite values)."""
    name = next(iter(reference))
    a = np.asarray(reference[name], dtype=np.float64).ravel()
    b = np.asarray(candidate[name], dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise BackendError(f"output {name!r} has {b.size} values, the reference {a.size}")
    denom = float(np.linalg.norm(a) * np.linalg.norm(b))
    cosine = float(a @ b / denom) if denom > 0 else float(np.array_equal(a, b))
    return {"output": name, "max_abs_diff": float(np.max(np.abs(a - b))) if a.size else 0.0, "cosine": cosine}
