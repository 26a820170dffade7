"""PyTorch backend: an already-built ``nn.Module`` (eager, optionally ``torch.compile``-d) behind the interface.

The runtime never builds models: the caller builds the module (e.g. from a checkpoint) and declares its I/O
with :class:`~sammil_deploy.runtime.artifacts.TensorSpec` lists — the same specs the export stage stamps into
the ONNX file, so the torch and exported backends are validated identically. Reduced precision is autocast
(weights stay FP32): ``bf16``/``fp16`` on CUDA, ``bf16`` on CPU; outputs are cast back to their declared dtype.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from sammil_deploy.errors import BackendError, ConfigError
from sammil_deploy.runtime.artifacts import TensorSpec
from sammil_deploy.runtime.base import ArrayLike, Backend
from sammil_deploy.runtime.devices import resolve_device

log = logging.getLogger(__name__)

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class TorchBackend(Backend):
    """Run a caller-built ``nn.Module`` with declared named inputs and outputs.

    The module's ``forward`` takes the inputs positionally in ``input_spec`` order and returns a tensor, a
    tuple/list (matched to ``output_spec`` in order) or a dict keyed by output name. The module is moved to
    ``device`` and put in eval mode on :meth:`load` (in place).

    Args:
        module: The network.
        input_spec: Declared inputs, in ``forward`` argument order.
        output_spec: Declared outputs, in return order.
        device: ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        precision: ``fp32``, ``bf16`` (CUDA or CPU autocast) or ``fp16`` (CUDA autocast only).
        compile: Wrap the module with ``torch.compile(dynamic=True)``: ``True`` for the default (inductor) backend,
            or a ``torch.compile`` backend name (``"cudagraphs"``, ``"aot_eager"``). First calls compile (slow).
        name: Label for messages and reports (default: the module's class name).

    Raises:
        ConfigError: Unknown precision, fp16 on CPU, or an empty spec.
    """

    kind = "torch"

    def __init__(
        self,
        module: nn.Module,
        input_spec: Sequence[TensorSpec],
        output_spec: Sequence[TensorSpec],
        *,
        device: str = "cpu",
        precision: str = "fp32",
        compile: bool | str = False,  # noqa: A002  (mirrors torch.compile; the CLI flag is --compile)
        name: str | None = None,
    ) -> None:
        if precision not in PRECISIONS:
            raise ConfigError(f"torch backend precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
        if precision == "fp16" and torch.device(device).type != "cuda":
            raise ConfigError("torch backend precision 'fp16' needs a CUDA device; use 'bf16' or 'fp32' on CPU")
        if not input_spec or not output_spec:
            raise ConfigError("torch backend needs at least one declared input and one declared output")
        super().__init__(device=str(device), artifact=name or type(module).__name__)
        self.module = module
        self.precision = precision
        self.compile = compile
        self._spec_in = tuple(input_spec)
        self._spec_out = tuple(output_spec)
        self._runner: Any = None
        self._device: torch.device | None = None

    def _load(self) -> None:
        self._device = torch.device(resolve_device(self.device, option="torch backend device"))
        self.device = str(self._device)
        self.module.to(self._device).eval()
        if self.compile:
            backend = self.compile if isinstance(self.compile, str) else "inductor"
            self._runner = torch.compile(self.module, dynamic=True, backend=backend)
        else:
            self._runner = self.module
        self._input_spec, self._output_spec = self._spec_in, self._spec_out

    def _close(self) -> None:
        self._runner = None

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        dtype = PRECISIONS[self.precision]
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self._device.type, dtype=dtype)

    def _run(self, inputs: Mapping[str, ArrayLike]) -> dict[str, torch.Tensor]:
        args = [_to_tensor(inputs[t.name], self._device) for t in self._input_spec]
        with torch.inference_mode(), self._autocast():
            result = self._runner(*args)
        names = [t.name for t in self._output_spec]
        if isinstance(result, torch.Tensor):
            values = [result]
        elif isinstance(result, Mapping):
            missing = [n for n in names if n not in result]
            if missing:
                raise BackendError(f"{self.label}: forward() returned keys {sorted(result)}, missing {missing}")
            values = [result[n] for n in names]
        else:
            values = list(result)
        self._match_outputs(values, names)
        return {
            t.name: v.to(getattr(torch, t.dtype)) if str(v.dtype) != f"torch.{t.dtype}" else v
            for t, v in zip(self._output_spec, values, strict=True)
        }

    def _infer(self, inputs: Mapping[str, ArrayLike]) -> dict[str, np.ndarray]:
        return {name: value.cpu().numpy() for name, value in self._run(inputs).items()}

    def _infer_torch(self, inputs: Mapping[str, ArrayLike]) -> dict[str, torch.Tensor]:
        return self._run(inputs)

    def _details(self) -> dict[str, Any]:
        return {"precision": self.precision, "compile": self.compile}


def _to_tensor(value: ArrayLike, device: torch.device) -> torch.Tensor:
    """Array or tensor → tensor on ``device`` (host→device copies are non-blocking from pinned memory)."""
    tensor = torch.from_numpy(np.ascontiguousarray(value)) if isinstance(value, np.ndarray) else value
    return tensor.to(device, non_blocking=True)
