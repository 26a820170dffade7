"""ONNX Runtime backend: TensorRT, CUDA or CPU execution providers, chosen automatically or forced.

``providers="auto"`` takes the first available of TensorRT → CUDA → CPU (ONNX Runtime itself falls back to
the next one if a provider's libraries fail to load; :attr:`OrtBackend.providers` records what the session
really uses). Forcing a provider that is not available, or that the session dropped, is an error naming what
is available and how to install the missing one — never a silent fallback.

The TensorRT provider gets an engine/timing cache folder next to the model (``<model>.ort_trt_cache/``), so
its engines are built once per machine. ``trt_fp16_enable`` stays off unless asked for: precision comes from
the graph (the export stage's FP16 graphs keep LayerNorm/softmax in FP32, and that weak-typing flag would let
TensorRT run them in FP16 — SAM's known failure mode; the flag is gone in TensorRT 11). Optimisation-profile
shapes (:func:`trt_profile_options`) avoid engine rebuilds when a dynamic axis grows.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from sammil_deploy._deps import require
from sammil_deploy.errors import BackendError, ConfigError
from sammil_deploy.runtime.artifacts import TensorSpec, read_onnx_metadata
from sammil_deploy.runtime.base import ArrayLike, Backend

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

TRT_EP = "TensorrtExecutionProvider"
CUDA_EP = "CUDAExecutionProvider"
CPU_EP = "CPUExecutionProvider"
AUTO_ORDER = (TRT_EP, CUDA_EP, CPU_EP)
PROVIDER_ALIASES = {"tensorrt": TRT_EP, "trt": TRT_EP, "cuda": CUDA_EP, "cpu": CPU_EP}
_INSTALL_HINT = {
    TRT_EP: "install onnxruntime-gpu (pip install 'sammil-deploy[ort-gpu]') and TensorRT "
    "(pip install tensorrt --extra-index-url https://pypi.nvidia.com), on a CUDA machine",
    CUDA_EP: "install onnxruntime-gpu instead of onnxruntime (pip uninstall onnxruntime && "
    "pip install 'sammil-deploy[ort-gpu]'), on a CUDA machine",
}
# ONNX element types as ORT names them → numpy dtype names.
_ORT_TYPES = {"float": "float32", "double": "float64", "float16": "float16", "bfloat16": "bfloat16"}


def resolve_providers(requested: str | Sequence[str], available: Sequence[str]) -> list[str]:
    """Turn ``"auto"``, an alias (``"cuda"``) or provider names into an ordered provider list.

    Args:
        requested: ``"auto"``, one name/alias, or a sequence of names/aliases in priority order.
        available: ``onnxruntime.get_available_providers()``.

    Raises:
        BackendError: If a requested provider is not available (names the available ones and the install fix).
    """
    if isinstance(requested, str) and requested.lower() == "auto":
        chosen = [p for p in AUTO_ORDER if p in available]
        return chosen or list(available)
    names = [requested] if isinstance(requested, str) else list(requested)
    if not names:
        raise ConfigError("providers must be 'auto' or a non-empty list of execution providers")
    resolved = [PROVIDER_ALIASES.get(n.lower(), n) for n in names]
    for name in resolved:
        if name not in available:
            hint = _INSTALL_HINT.get(name, "check the provider name")
            raise BackendError(
                f"onnxruntime execution provider {name} is not available here (available: {list(available)}); "
                f"to use it, {hint}; or pass providers='auto'"
            )
    return resolved


def trt_profile_options(profile: Mapping[str, Sequence[Sequence[int]]]) -> dict[str, str]:
    """TensorRT-provider options for one profile ``{input: (min_shape, opt_shape, max_shape)}``.

    Returns:
        ``{"trt_profile_min_shapes": "features:1x1024", "trt_profile_opt_shapes": ..., "trt_profile_max_shapes": ...}``.
    """
    keys = ("trt_profile_min_shapes", "trt_profile_opt_shapes", "trt_profile_max_shapes")
    return {
        key: ",".join(f"{name}:{'x'.join(str(int(d)) for d in shapes[i])}" for name, shapes in profile.items())
        for i, key in enumerate(keys)
    }


def _numpy_dtype(ort_type: str) -> str:
    """``"tensor(float)"`` → ``"float32"``."""
    inner = ort_type.removeprefix("tensor(").removesuffix(")")
    return _ORT_TYPES.get(inner, inner)


def _spec(node: Any) -> TensorSpec:
    shape = tuple(d if isinstance(d, (int, str)) and d != -1 else None for d in node.shape)
    return TensorSpec(node.name, _numpy_dtype(node.type), shape)


class OrtBackend(Backend):
    """An ONNX file in an ``onnxruntime.InferenceSession``.

    Args:
        onnx_path: ``.onnx`` file; external weights (``<name>.onnx.data``) are found next to it.
        providers: ``"auto"``, one provider (``"cpu"``, ``"cuda"``, ``"tensorrt"`` or the full ORT name) or a
            priority list.
        device_id: CUDA device for the CUDA/TensorRT providers.
        intra_op_threads: CPU threads per operator (0: ONNX Runtime's default, all cores).
        spin: Let idle intra-op threads spin after a run (ONNX Runtime's default: fastest back-to-back runs).
            Turn it off when the caller does CPU work of its own between runs (the SAM generator's torch
            post-processing between decoder calls): spinning threads would take those cores.
        trt_cache_dir: Engine/timing cache folder for the TensorRT provider (default ``<model>.ort_trt_cache``).
        trt_fp16: Set the TensorRT provider's ``trt_fp16_enable`` (weak typing: lets TensorRT pick FP16 even for
            layers the graph keeps in FP32; TensorRT 10 only).
        trt_options: Extra TensorRT-provider options, e.g. :func:`trt_profile_options` or
            ``{"trt_max_workspace_size": 4 << 30}``; they override the defaults.
    """

    kind = "onnxruntime"

    def __init__(
        self,
        onnx_path: Path | str,
        *,
        providers: str | Sequence[str] = "auto",
        device_id: int = 0,
        intra_op_threads: int = 0,
        spin: bool = True,
        trt_cache_dir: Path | None = None,
        trt_fp16: bool = False,
        trt_options: Mapping[str, Any] | None = None,
    ) -> None:
        if intra_op_threads < 0:
            raise ConfigError(f"intra_op_threads must be >= 0 (0 = onnxruntime default), got {intra_op_threads}")
        if device_id < 0:
            raise ConfigError(f"device_id must be >= 0, got {device_id}")
        self.onnx_path = Path(onnx_path)
        super().__init__(device="cpu", artifact=self.onnx_path.name)
        self.requested_providers = providers
        self.device_id = device_id
        self.intra_op_threads = intra_op_threads
        self.spin = spin
        self.trt_cache_dir = Path(trt_cache_dir) if trt_cache_dir else None
        self.trt_fp16 = trt_fp16
        self.trt_options = dict(trt_options or {})
        self.metadata: dict[str, Any] = {}
        self.providers: list[str] = []
        self._session: Any = None
        self._output_names: list[str] = []

    def _load(self) -> None:
        ort = require("onnxruntime", extra="ort")
        if not self.onnx_path.is_file():
            raise BackendError(f"{self.onnx_path}: ONNX model not found; export it with `sammil-deploy export`")
        self.metadata = read_onnx_metadata(self.onnx_path)
        chosen = resolve_providers(self.requested_providers, ort.get_available_providers())
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if self.intra_op_threads:
            options.intra_op_num_threads = self.intra_op_threads
        if not self.spin:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        errors = _ort_errors(ort)
        try:
            # By path, so ORT resolves external-data files relative to the model (>2 GB SAM ViT-H).
            session = ort.InferenceSession(
                str(self.onnx_path), options, providers=chosen, provider_options=[self._options(p) for p in chosen]
            )
        except errors as err:
            raise BackendError(
                f"{self.onnx_path}: onnxruntime cannot load the model with {chosen} ({type(err).__name__}: {err}); "
                "re-export it with `sammil-deploy export` or try providers='cpu'"
            ) from None
        used = session.get_providers()
        if self.requested_providers != "auto":
            dropped = [p for p in chosen if p not in used]
            if dropped:
                raise BackendError(
                    f"{self.onnx_path}: onnxruntime could not initialise {dropped} (session uses {used}); "
                    f"check the CUDA/TensorRT libraries: {_INSTALL_HINT.get(dropped[0], '')}"
                )
        elif [p for p in chosen if p not in used]:  # auto: say which provider it really got, and why not the first
            log.warning(
                "onnxruntime %s: %s could not be initialised (e.g. TensorRT's libnvinfer.so.10 not found); using %s",
                self.onnx_path.name, [p for p in chosen if p not in used], used[0],
            )  # fmt: skip
        self._session = session
        self.providers = used
        self.device = "cpu" if used[0] == CPU_EP else f"cuda:{self.device_id}"
        self._input_spec = tuple(_spec(node) for node in session.get_inputs())
        self._output_spec = tuple(_spec(node) for node in session.get_outputs())
        self._output_names = [t.name for t in self._output_spec]
        log.info("onnxruntime %s on %s", self.onnx_path.name, used)

    def _options(self, provider: str) -> dict[str, Any]:
        if provider == TRT_EP:
            cache = self.trt_cache_dir or self.onnx_path.with_name(self.onnx_path.stem + ".ort_trt_cache")
            cache.mkdir(parents=True, exist_ok=True)
            return {
                "device_id": self.device_id,
                "trt_fp16_enable": self.trt_fp16,
                "trt_engine_cache_enable": True,
                "trt_engine_cache_path": str(cache),
                "trt_timing_cache_enable": True,
                "trt_timing_cache_path": str(cache),
                **self.trt_options,
            }
        if provider == CUDA_EP:
            return {"device_id": self.device_id}
        return {}

    def _close(self) -> None:
        self._session = None

    def _infer(self, inputs: Mapping[str, ArrayLike]) -> dict[str, np.ndarray]:
        feeds = {name: _to_numpy(value) for name, value in inputs.items()}
        try:
            values = self._session.run(self._output_names, feeds)
        except _ort_errors(require("onnxruntime", extra="ort")) as err:
            raise BackendError(f"{self.label}: onnxruntime run failed ({type(err).__name__}: {err})") from None
        self._match_outputs(values, self._output_names)
        return dict(zip(self._output_names, values, strict=True))

    def _infer_torch(self, inputs: Mapping[str, ArrayLike]) -> dict[str, torch.Tensor]:
        """Run with IO binding: no host round trip on CUDA.

        Inputs are bound where they are (torch tensors on the session's device are not copied); outputs are
        written into torch tensors on the session's device (on CUDA they stay there).
        """
        import torch

        device = torch.device(self.device)
        kind, index = ("cuda", device.index or 0) if device.type == "cuda" else ("cpu", 0)
        binding = self._session.io_binding()
        bound = {}  # keeps the bound input tensors alive until the run is over
        for spec in self._input_spec:
            value = inputs[spec.name]
            tensor = value if isinstance(value, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(value))
            tensor = bound[spec.name] = tensor.to(device, non_blocking=True).contiguous()
            binding.bind_input(spec.name, kind, index, np.dtype(spec.dtype), tuple(tensor.shape), tensor.data_ptr())
        if kind == "cuda":  # ORT runs on its own stream: what torch's stream wrote must be complete
            torch.cuda.current_stream(device).synchronize()
        outputs: dict[str, torch.Tensor] = {}
        for spec in self._output_spec:
            shape = _output_shape(spec, self._input_spec, bound)
            if shape is None:  # a data-dependent dim: ORT allocates, copied below
                binding.bind_output(spec.name, kind, index)
                continue
            out = outputs[spec.name] = torch.empty(shape, dtype=getattr(torch, spec.dtype), device=device)
            binding.bind_output(spec.name, kind, index, np.dtype(spec.dtype), shape, out.data_ptr())
        try:
            self._session.run_with_iobinding(binding)
            binding.synchronize_outputs()
        except _ort_errors(require("onnxruntime", extra="ort")) as err:
            raise BackendError(f"{self.label}: onnxruntime run failed ({type(err).__name__}: {err})") from None
        for spec, value in zip(self._output_spec, binding.get_outputs(), strict=True):
            if spec.name not in outputs:
                outputs[spec.name] = torch.from_numpy(value.numpy()).to(device)
        return {spec.name: outputs[spec.name] for spec in self._output_spec}

    def _details(self) -> dict[str, Any]:
        return {"providers": list(self.providers), "precision": self.metadata.get("precision", "unknown")}


def _output_shape(
    spec: TensorSpec, input_spec: Sequence[TensorSpec], inputs: Mapping[str, Any]
) -> tuple[int, ...] | None:
    """An output's concrete shape from its static dims and the input dims sharing a name; None if any is unknown."""
    named = {
        dim: int(inputs[t.name].shape[axis])
        for t in input_spec
        for axis, dim in enumerate(t.shape)
        if isinstance(dim, str)
    }
    shape = [dim if isinstance(dim, int) else named.get(dim) if isinstance(dim, str) else None for dim in spec.shape]
    return None if any(d is None for d in shape) else tuple(int(d) for d in shape)


def _to_numpy(value: ArrayLike) -> np.ndarray:
    if isinstance(value, np.ndarray):
        return value
    return value.detach().cpu().numpy()  # torch tensor (dtype already validated)


def _ort_errors(ort: Any) -> tuple[type[BaseException], ...]:
    """ORT's pybind exceptions (they derive from Exception, not RuntimeError) plus the Python ones it raises."""
    state = ort.capi.onnxruntime_pybind11_state
    names = ("Fail", "InvalidArgument", "NoSuchFile", "InvalidProtobuf", "InvalidGraph", "RuntimeException", "EPFail")
    return (RuntimeError, ValueError, *(getattr(state, n) for n in names if hasattr(state, n)))
