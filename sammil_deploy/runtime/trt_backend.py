"""Native TensorRT backend: a plain plan file from the export stage, run with torch CUDA tensors as buffers.

Written against the name-based tensor API shared by TensorRT 10.x and 11.x (``num_io_tensors``,
``get_tensor_name``/``get_tensor_mode``/``get_tensor_dtype``, ``set_input_shape``, ``set_tensor_address``,
``execute_async_v3``); no pycuda. Per call: the input shapes are set, device buffers are taken from a
grow-only cache of torch CUDA tensors (one per tensor name, reallocated only when a larger shape arrives),
host inputs are copied into them (CUDA tensor inputs on the right device are used in place), the engine runs
on the backend's own ``torch.cuda.Stream`` and the stream is synchronised before returning.

Before deserialising, the plan's sidecar JSON is checked: a plan built by another TensorRT version or for
another GPU compute capability is refused with the rebuild command (TensorRT would otherwise fail obscurely
or crash).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from sammil_deploy._deps import require
from sammil_deploy.errors import BackendError, InputSpecError
from sammil_deploy.runtime.artifacts import (
    REBUILD_HINT,
    PlanSidecar,
    TensorSpec,
    check_plan_compatible,
    read_sidecar,
    specs_from_dicts,
)
from sammil_deploy.runtime.base import ArrayLike, Backend, format_shape

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

# TensorRT DataType member names → torch dtype names (members missing from a TensorRT version are skipped).
_TRT_TO_TORCH = {
    "FLOAT": "float32",
    "HALF": "float16",
    "BF16": "bfloat16",
    "INT8": "int8",
    "UINT8": "uint8",
    "INT32": "int32",
    "INT64": "int64",
    "BOOL": "bool",
}


# IExecutionContext.set_tensor_address: "the pointer must have at least 256-byte alignment".
TRT_ADDRESS_ALIGNMENT_BYTES = 256


def is_trt_aligned(address: int, alignment_bytes: int = TRT_ADDRESS_ALIGNMENT_BYTES) -> bool:
    """Whether a device address can be bound to TensorRT as is (a slice of a tensor usually cannot)."""
    return address % alignment_bytes == 0


# Dynamic axes whose rows are independent (patches, crops, prompts): a call may be split along them. The MIL
# bag's ``num_instances`` is not (softmax over the whole bag), so a bag above the profile is refused instead.
ROW_AXES = frozenset({"batch", "num_prompts"})


def row_chunks(inputs: Mapping[str, Any], row_inputs: frozenset[str], max_rows: int) -> list[dict[str, Any]]:
    """Split ``inputs`` into calls of at most ``max_rows`` rows; inputs not in ``row_inputs`` go whole to each.

    Raises:
        InputSpecError: The row inputs disagree on their row count.
    """
    counts = {int(inputs[name].shape[0]) for name in row_inputs if name in inputs}
    if len(counts) > 1:
        raise InputSpecError(f"row inputs {sorted(row_inputs)} disagree on their row count: {sorted(counts)}")
    rows = counts.pop() if counts else 0
    if rows <= max_rows:
        return [dict(inputs)]
    return [
        {name: value[start : start + max_rows] if name in row_inputs else value for name, value in inputs.items()}
        for start in range(0, rows, max_rows)
    ]


def trt_dtype_name(trt: Any, dtype: Any) -> str:
    """TensorRT ``DataType`` → numpy/torch dtype name.

    Raises:
        BackendError: For types without a torch equivalent (FP8, INT4, FP4 I/O tensors).
    """
    for member, name in _TRT_TO_TORCH.items():
        if getattr(trt.DataType, member, None) == dtype:
            return name
    raise BackendError(f"TensorRT I/O dtype {dtype} has no torch equivalent; keep graph inputs/outputs in fp32/fp16")


class TrtBackend(Backend):
    """A TensorRT plan (``*.plan`` + ``*.plan.json`` sidecar) on one CUDA device.

    Args:
        plan_path: The plain serialized engine written by ``sammil-deploy export --trt``.
        device: CUDA device (``"cuda"`` or ``"cuda:N"``).
        profile: Optimisation profile index to run with.

    Raises (on :meth:`load`):
        MissingDependencyError: ``tensorrt`` is not installed (names the install command).
        BackendError: No CUDA, missing/invalid sidecar, TensorRT version or GPU mismatch, or a plan that does
            not deserialise.
    """

    kind = "tensorrt"

    def __init__(self, plan_path: Path | str, *, device: str = "cuda", profile: int = 0) -> None:
        self.plan_path = Path(plan_path)
        super().__init__(device=device, artifact=self.plan_path.name)
        self.profile = profile
        self.sidecar: PlanSidecar | None = None
        self._runtime: Any = None
        self._engine: Any = None
        self._context: Any = None
        self._stream: torch.cuda.Stream | None = None
        self._torch_device: torch.device | None = None
        self._buffers: dict[str, torch.Tensor] = {}
        self._profile_ranges: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {}

    def _load(self) -> None:
        trt = require("tensorrt", extra="trt")
        import torch

        from sammil_deploy.runtime.devices import resolve_device

        self._torch_device = torch.device(resolve_device(self.device, option="tensorrt backend device"))
        if self._torch_device.type != "cuda":
            raise BackendError(f"{self.plan_path}: TensorRT runs on CUDA devices only, got device={self.device!r}")
        self.device = str(self._torch_device)
        sidecar = read_sidecar(self.plan_path)
        major, minor = torch.cuda.get_device_capability(self._torch_device)
        check_plan_compatible(
            sidecar,
            tensorrt_version=trt.__version__,
            compute_capability=f"{major}.{minor}",
            plan_name=str(self.plan_path),
        )
        gpu_name = torch.cuda.get_device_name(self._torch_device)
        if sidecar.gpu_name and sidecar.gpu_name != gpu_name:
            log.warning(
                "%s was built on %s, running on %s (same capability)", self.plan_path.name, sidecar.gpu_name, gpu_name
            )
        logger = trt.Logger(trt.Logger.WARNING)
        with torch.cuda.device(self._torch_device):
            runtime = trt.Runtime(logger)  # kept: the runtime must outlive its engines
            engine = runtime.deserialize_cuda_engine(self.plan_path.read_bytes())
            if engine is None:
                raise BackendError(f"{self.plan_path}: TensorRT could not deserialise the plan; {REBUILD_HINT}")
            context = engine.create_execution_context()
            if context is None:
                raise BackendError(f"{self.plan_path}: TensorRT could not create an execution context (GPU memory?)")
            stream = torch.cuda.Stream(self._torch_device)
            if self.profile and not context.set_optimization_profile_async(self.profile, stream.cuda_stream):
                raise BackendError(
                    f"{self.plan_path}: plan has no optimisation profile {self.profile} "
                    f"({engine.num_optimization_profiles} built)"
                )
        self._stream = stream
        self.sidecar, self._runtime, self._engine, self._context = sidecar, runtime, engine, context
        self._input_spec, self._output_spec = self._io_specs(trt, engine, sidecar)
        self._profile_ranges = {t.name: self._profile_range(engine, t.name) for t in self._input_spec if t.is_dynamic}
        log.info("TensorRT %s: %s on %s", trt.__version__, self.plan_path.name, self.device)

    def _io_specs(self, trt: Any, engine: Any, sidecar: PlanSidecar) -> tuple[tuple[TensorSpec, ...], ...]:
        """Specs from the engine; dynamic axes keep their names from the sidecar's ONNX specs when they match."""
        named = {t.name: t for t in specs_from_dicts([*sidecar.inputs, *sidecar.outputs])}
        inputs, outputs = [], []
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            dtype = trt_dtype_name(trt, engine.get_tensor_dtype(name))
            shape = tuple(int(d) for d in engine.get_tensor_shape(name))
            known = named.get(name)
            if known is not None and known.rank == len(shape):
                dims = tuple(
                    d if d >= 0 else (k if isinstance(k, str) else None)
                    for d, k in zip(shape, known.shape, strict=True)
                )
                doc = known.doc
            else:
                dims, doc = tuple(d if d >= 0 else None for d in shape), ""
            spec = TensorSpec(name, dtype, dims, doc)
            is_input = engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
            (inputs if is_input else outputs).append(spec)
        return tuple(inputs), tuple(outputs)

    def _profile_range(self, engine: Any, name: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
        low, _opt, high = engine.get_tensor_profile_shape(name, self.profile)
        return tuple(int(d) for d in low), tuple(int(d) for d in high)

    @property
    def profile_ranges(self) -> dict[str, tuple[tuple[int, ...], tuple[int, ...]]]:
        """``{dynamic input name: (min_shape, max_shape)}`` of the active profile (split batches to fit)."""
        self.load()
        return dict(self._profile_ranges)

    @property
    def max_rows_per_call(self) -> int | None:
        """Most rows (patches, images, prompts) one engine call takes: the profile's max on the row axis.

        :meth:`infer` and :meth:`infer_torch` split larger calls into calls of this size, so callers may send
        any batch (e.g. all 5 SAM crops to a plan built for one image). None when no input has a row axis.
        """
        self.load()
        maxima = [self._profile_ranges[n][1][0] for n in self._row_inputs() if n in self._profile_ranges]
        return min(maxima) if maxima else None

    def _row_inputs(self) -> frozenset[str]:
        return frozenset(t.name for t in self._input_spec if t.rank and t.shape[0] in ROW_AXES)

    def _chunks(self, inputs: Mapping[str, ArrayLike]) -> list[dict[str, ArrayLike]]:
        limit = self.max_rows_per_call
        return [dict(inputs)] if limit is None else row_chunks(inputs, self._row_inputs(), limit)

    def _join(self, parts: list[dict[str, Any]], cat: Any) -> dict[str, Any]:
        if len(parts) == 1:
            return parts[0]
        rows = {t.name for t in self._output_spec if t.rank and t.shape[0] in ROW_AXES}
        if set(parts[0]) - rows:
            raise BackendError(f"{self.label}: outputs {sorted(set(parts[0]) - rows)} cannot be joined across calls")
        return {name: cat([part[name] for part in parts]) for name in parts[0]}

    def _close(self) -> None:
        if self._stream is not None:
            self._stream.synchronize()
        self._buffers.clear()
        self._context = self._engine = self._runtime = self._stream = None  # context before engine before runtime

    def _buffer(self, name: str, dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
        """A contiguous ``shape`` view of the grow-only device buffer for ``name``."""
        import torch

        numel = int(np.prod(shape, dtype=np.int64))
        cached = self._buffers.get(name)
        if cached is None or cached.numel() < numel or cached.dtype != dtype:
            cached = torch.empty(max(numel, 1), dtype=dtype, device=self._torch_device)
            self._buffers[name] = cached
        return cached[:numel].view(shape)

    def _check_profile(self, name: str, shape: tuple[int, ...]) -> None:
        if name not in self._profile_ranges:
            return
        low, high = self._profile_ranges[name]
        if any(s < lo or s > hi for s, lo, hi in zip(shape, low, high, strict=True)):
            raise InputSpecError(
                f"{self.label}: input {name!r} shape {shape} is outside the plan's optimisation profile "
                f"{format_shape(low)}..{format_shape(high)}; split the batch or rebuild with larger "
                "--max-batch/--max-instances (`sammil-deploy export --trt`)"
            )

    def _run(self, inputs: Mapping[str, ArrayLike]) -> dict[str, torch.Tensor]:
        """Enqueue one inference; returns views of the output buffers (valid until the next call)."""
        import torch

        context, stream = self._context, self._stream
        stream.wait_stream(torch.cuda.current_stream(self._torch_device))  # inputs made on the default stream
        with torch.cuda.device(self._torch_device), torch.cuda.stream(stream):
            for spec in self._input_spec:
                value = inputs[spec.name]
                shape = tuple(int(d) for d in value.shape)
                self._check_profile(spec.name, shape)
                tensor = self._device_input(spec, value, shape)
                if not context.set_input_shape(spec.name, shape):
                    raise InputSpecError(f"{self.label}: TensorRT rejected shape {shape} for input {spec.name!r}")
                self._bind(spec.name, tensor)
            outputs = {}
            for spec in self._output_spec:
                shape = tuple(int(d) for d in context.get_tensor_shape(spec.name))
                if any(d < 0 for d in shape):
                    raise BackendError(
                        f"{self.label}: output {spec.name!r} has a data-dependent shape {shape}, which this backend "
                        "does not support; export the part with static-size outputs"
                    )
                outputs[spec.name] = self._buffer(spec.name, getattr(torch, spec.dtype), shape)
                self._bind(spec.name, outputs[spec.name])
            if not context.execute_async_v3(stream.cuda_stream):
                raise BackendError(f"{self.label}: TensorRT execution failed (see the TensorRT log above)")
        return outputs

    def _bind(self, name: str, tensor: torch.Tensor) -> None:
        if not self._context.set_tensor_address(name, tensor.data_ptr()):
            raise BackendError(
                f"{self.label}: TensorRT refused the address of {name!r} (alignment or device; see the TensorRT log)"
            )

    def _device_input(self, spec: TensorSpec, value: ArrayLike, shape: tuple[int, ...]) -> torch.Tensor:
        """The input on the device: a CUDA tensor in place when possible, else copied into the cached buffer.

        In place needs the right device, a contiguous layout and a 256-byte aligned start; a slice such as
        ``labels[start:stop]`` usually is not aligned and is copied (the cached buffers start aligned).
        """
        import torch

        if (
            isinstance(value, torch.Tensor)
            and value.device == self._torch_device
            and value.is_contiguous()
            and is_trt_aligned(value.data_ptr())
        ):
            return value
        source = torch.from_numpy(np.ascontiguousarray(value)) if isinstance(value, np.ndarray) else value
        buffer = self._buffer(spec.name, getattr(torch, spec.dtype), shape)
        buffer.copy_(source, non_blocking=True)
        return buffer

    def _infer(self, inputs: Mapping[str, ArrayLike]) -> dict[str, np.ndarray]:
        return self._join([self._infer_once(chunk) for chunk in self._chunks(inputs)], np.concatenate)

    def _infer_torch(self, inputs: Mapping[str, ArrayLike]) -> dict[str, torch.Tensor]:
        import torch

        return self._join([self._infer_torch_once(chunk) for chunk in self._chunks(inputs)], torch.cat)

    def _infer_once(self, inputs: Mapping[str, ArrayLike]) -> dict[str, np.ndarray]:
        import torch

        outputs = self._run(inputs)
        with torch.cuda.stream(self._stream):
            host = {name: value.to("cpu", non_blocking=True) for name, value in outputs.items()}
        self._stream.synchronize()
        return {name: value.numpy() for name, value in host.items()}

    def _infer_torch_once(self, inputs: Mapping[str, ArrayLike]) -> dict[str, torch.Tensor]:
        import torch

        outputs = self._run(inputs)
        with torch.cuda.stream(self._stream):
            owned = {name: value.clone() for name, value in outputs.items()}
        self._stream.synchronize()
        consumer = torch.cuda.current_stream(self._torch_device)
        for value in owned.values():  # allocated on our stream, used on the caller's: keep the allocator honest
            value.record_stream(consumer)
        return owned

    def _details(self) -> dict[str, Any]:
        sidecar = self.sidecar
        return {
            "tensorrt_version": sidecar.tensorrt_version if sidecar else None,
            "precision": sidecar.precision if sidecar else None,
            "profile": self.profile,
            "max_rows_per_call": self.max_rows_per_call if self._engine is not None else None,
        }
