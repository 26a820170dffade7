"""The backend interface: load an artifact, describe its inputs/outputs, run it, close it.

Every backend validates its inputs in :meth:`Backend.infer` (names, ranks, static dims, consistent named
dynamic dims, dtypes) before calling the subclass's ``_infer``, so a wrong input fails the same way, with the
same message, on PyTorch, ONNX Runtime and TensorRT. Nothing is coerced silently: a float64 array given to a
float32 input is an error, not a cast.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from sammil_deploy.errors import BackendError, InputSpecError
from sammil_deploy.runtime.artifacts import TensorSpec

if TYPE_CHECKING:
    import torch

    ArrayLike = np.ndarray | torch.Tensor
else:
    ArrayLike = Any

__all__ = ["ArrayLike", "Backend", "TensorSpec", "check_inputs", "dtype_name", "format_shape"]


def dtype_name(value: ArrayLike) -> str:
    """numpy-style dtype name of an array or tensor (``torch.float32`` → ``"float32"``)."""
    dtype = value.dtype
    if isinstance(dtype, np.dtype):
        return dtype.name
    return str(dtype).removeprefix("torch.")


def format_shape(shape: Sequence[int | str | None]) -> str:
    """``(None, "batch", 3)`` → ``"(?, batch, 3)"``."""
    return "(" + ", ".join("?" if d is None else str(d) for d in shape) + ")"


def check_inputs(inputs: Mapping[str, ArrayLike], spec: Sequence[TensorSpec], *, backend: str = "backend") -> None:
    """Check names, ranks, static dims, named dynamic dims and dtypes of ``inputs`` against ``spec``.

    Args:
        inputs: ``{name: array or tensor}``; every spec input must be present, no other name is allowed.
        spec: Declared inputs.
        backend: Label for messages (``"onnxruntime mil.onnx"``).

    Raises:
        InputSpecError: Naming the tensor, what was expected and what was given.
    """
    expected = {t.name: t for t in spec}
    missing = [n for n in expected if n not in inputs]
    unknown = [n for n in inputs if n not in expected]
    if missing or unknown:
        raise InputSpecError(
            f"{backend}: inputs {sorted(inputs)} do not match the declared inputs {list(expected)}"
            + (f"; missing {missing}" if missing else "")
            + (f"; unexpected {unknown}" if unknown else "")
        )
    named_dims: dict[str, tuple[int, str]] = {}
    for name, tensor_spec in expected.items():
        value = inputs[name]
        if not hasattr(value, "shape") or not hasattr(value, "dtype"):
            raise InputSpecError(f"{backend}: input {name!r} must be a numpy array or torch tensor, got {type(value)}")
        shape = tuple(int(d) for d in value.shape)
        want = format_shape(tensor_spec.shape)
        if len(shape) != tensor_spec.rank:
            raise InputSpecError(
                f"{backend}: input {name!r} expects rank {tensor_spec.rank} {want}, got rank {len(shape)} {shape}"
            )
        for axis, (dim, size) in enumerate(zip(tensor_spec.shape, shape, strict=True)):
            if isinstance(dim, int) and dim != size:
                raise InputSpecError(
                    f"{backend}: input {name!r} expects {want}, got {shape} (axis {axis}: {size} != {dim})"
                )
            if isinstance(dim, str):
                seen = named_dims.setdefault(dim, (size, name))
                if seen[0] != size:
                    raise InputSpecError(
                        f"{backend}: dynamic axis {dim!r} is {seen[0]} in input {seen[1]!r} but {size} in {name!r}; "
                        "inputs sharing an axis name must agree"
                    )
        got_dtype = dtype_name(value)
        if got_dtype != tensor_spec.dtype:
            raise InputSpecError(
                f"{backend}: input {name!r} expects dtype {tensor_spec.dtype}, got {got_dtype}; convert it first "
                f"(e.g. array.astype(np.{tensor_spec.dtype}))"
            )


class Backend(abc.ABC):
    """One loaded artifact that maps named inputs to named outputs.

    Use as a context manager (``with open_backend(...) as b:``) or call :meth:`load`/:meth:`close`. ``infer``
    loads on first use. Subclasses implement :meth:`_load`, :meth:`_infer` and optionally :meth:`_close` and
    :meth:`_infer_torch`; they set ``self._input_spec``/``self._output_spec`` in ``_load``.

    Attributes:
        kind: Registry name (``torch``, ``onnxruntime``, ``tensorrt``).
        device: Where compute runs (``"cpu"``, ``"cuda:0"``).
        artifact: What was loaded (file path or module description), for messages and reports.
    """

    kind: ClassVar[str] = ""

    def __init__(self, *, device: str, artifact: str) -> None:
        self.device = device
        self.artifact = artifact
        self._input_spec: tuple[TensorSpec, ...] = ()
        self._output_spec: tuple[TensorSpec, ...] = ()
        self._loaded = False

    def __enter__(self) -> Backend:
        self.load()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.artifact!r}, device={self.device!r})"

    @property
    def label(self) -> str:
        """``"<kind> <artifact>"`` for messages."""
        return f"{self.kind} {self.artifact}"

    @property
    def is_loaded(self) -> bool:
        """Whether :meth:`load` has run (and :meth:`close` has not)."""
        return self._loaded

    def load(self) -> None:
        """Load the artifact (idempotent).

        Raises:
            BackendError: If the artifact cannot be loaded (names it and the fix).
            MissingDependencyError: If the backend's optional dependency is absent.
        """
        if not self._loaded:
            self._load()
            self._loaded = True

    def close(self) -> None:
        """Release sessions, engines and device buffers (idempotent); :meth:`load` may be called again."""
        if self._loaded:
            self._close()
            self._loaded = False

    @property
    def input_spec(self) -> tuple[TensorSpec, ...]:
        """Declared inputs (loads the artifact if needed)."""
        self.load()
        return self._input_spec

    @property
    def output_spec(self) -> tuple[TensorSpec, ...]:
        """Declared outputs (loads the artifact if needed)."""
        self.load()
        return self._output_spec

    @property
    def input_names(self) -> list[str]:
        """Input names in declaration order."""
        return [t.name for t in self.input_spec]

    @property
    def output_names(self) -> list[str]:
        """Output names in declaration order."""
        return [t.name for t in self.output_spec]

    def describe(self) -> dict[str, Any]:
        """JSON-able description: kind, artifact, device, inputs, outputs and backend details."""
        return {
            "kind": self.kind,
            "artifact": self.artifact,
            "device": self.device,
            "inputs": [t.to_dict() for t in self.input_spec],
            "outputs": [t.to_dict() for t in self.output_spec],
            **self._details(),
        }

    def infer(self, inputs: Mapping[str, ArrayLike]) -> dict[str, np.ndarray]:
        """Validate ``inputs`` and run the artifact.

        Args:
            inputs: ``{input name: numpy array or torch tensor}`` matching :attr:`input_spec` exactly.

        Returns:
            ``{output name: numpy array}`` in :attr:`output_spec` order (host memory, owned by the caller).

        Raises:
            InputSpecError: Wrong names, rank, static dim or dtype.
            BackendError: The runtime failed.
        """
        check_inputs(inputs, self.input_spec, backend=self.label)
        return self._infer(inputs)

    def infer_torch(self, inputs: Mapping[str, ArrayLike]) -> dict[str, torch.Tensor]:
        """Like :meth:`infer` but returns torch tensors, left on :attr:`device` where the backend runs on a GPU.

        Lets GPU pipelines chain backends (e.g. SAM encoder → decoder) without host round trips. The tensors
        are owned by the caller (never views of reused buffers).
        """
        check_inputs(inputs, self.input_spec, backend=self.label)
        return self._infer_torch(inputs)

    @abc.abstractmethod
    def _load(self) -> None: ...

    def _close(self) -> None:  # noqa: B027  (optional hook)
        """Release resources (default: nothing to release)."""

    @abc.abstractmethod
    def _infer(self, inputs: Mapping[str, ArrayLike]) -> dict[str, np.ndarray]: ...

    def _infer_torch(self, inputs: Mapping[str, ArrayLike]) -> dict[str, torch.Tensor]:
        import torch

        return {name: torch.from_numpy(value) for name, value in self._infer(inputs).items()}

    def _details(self) -> dict[str, Any]:
        """Backend-specific entries for :meth:`describe`."""
        return {}

    def _match_outputs(self, values: Sequence[Any], names: Sequence[str]) -> None:
        """Raise unless the runtime returned one value per declared output."""
        if len(values) != len(names):
            raise BackendError(
                f"{self.label}: returned {len(values)} outputs but {len(names)} are declared ({list(names)}); "
                "the output spec does not match the artifact"
            )
