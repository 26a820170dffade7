"""Artifact formats shared by export (writer) and runtime (reader), free of any model-building code.

- :class:`TensorSpec`: one named input/output (the I/O contract stamped into every artifact).
- ONNX ``metadata_props`` (keys prefixed ``sammil_deploy.``): :func:`read_onnx_metadata` decodes them without
  loading the weights.
- TensorRT plan sidecar ``<plan>.json`` (e.g. ``mil.plan`` → ``mil.plan.json``): :class:`PlanSidecar`, written
  by the export stage with :func:`write_sidecar` and checked by the runtime with :func:`check_plan_compatible`
  (a plan only runs on the TensorRT version and GPU compute capability that built it).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from sammil_deploy.errors import BackendError
from sammil_deploy.io_atomic import write_json

METADATA_PREFIX = "sammil_deploy."
_JSON_METADATA_KEYS = frozenset({"preprocessing", "config", "inputs", "outputs"})
SIDECAR_FORMAT_VERSION = 1
REBUILD_HINT = "rebuild the plan on this machine with `sammil-deploy export --trt`"


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """One named input or output.

    Attributes:
        name: Tensor name in the graph.
        dtype: numpy dtype name (``float32``, ``uint8`` ...; ``bfloat16`` for torch-only tensors).
        shape: Dimensions; ``str`` entries are named dynamic axes (``"batch"``: every tensor using the same
            name must agree on its size), ``None`` entries are anonymous dynamic axes, ints are static.
        doc: Meaning, units and frame.
    """

    name: str
    dtype: str
    shape: tuple[int | str | None, ...]
    doc: str = ""

    @property
    def rank(self) -> int:
        """Number of dimensions."""
        return len(self.shape)

    @property
    def is_dynamic(self) -> bool:
        """Whether any axis is dynamic."""
        return any(not isinstance(d, int) for d in self.shape)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for JSON."""
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape), "doc": self.doc}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TensorSpec:
        """Inverse of :meth:`to_dict` (``doc`` optional).

        Raises:
            BackendError: If ``name``, ``dtype`` or ``shape`` is missing or malformed.
        """
        try:
            shape = tuple(d if d is None or isinstance(d, str) else int(d) for d in data["shape"])
            return cls(str(data["name"]), str(data["dtype"]), shape, str(data.get("doc", "")))
        except (KeyError, TypeError, ValueError) as err:
            raise BackendError(f"malformed tensor spec {dict(data)!r} ({err!r}); re-export the artifact") from None


def specs_from_dicts(items: Sequence[Mapping[str, Any]]) -> tuple[TensorSpec, ...]:
    """``[{"name", "dtype", "shape", "doc"}, ...]`` (metadata or sidecar JSON) → tensor specs."""
    return tuple(TensorSpec.from_dict(item) for item in items)


def read_onnx_metadata(path: Path) -> dict[str, Any]:
    """Our ``metadata_props`` of an ONNX file, prefix stripped, JSON values decoded; weights are not read.

    Returns:
        e.g. ``{"part": "mil", "precision": "fp32", "inputs": [...], "config": {...}, ...}``; empty when the
        file was not written by sammil-deploy.

    Raises:
        MissingDependencyError: ``onnx`` is not installed.
        BackendError: If the file is missing or not an ONNX model.
    """
    from sammil_deploy._deps import require

    onnx = require("onnx", extra="ort")
    from google.protobuf.message import DecodeError

    path = Path(path)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except (OSError, DecodeError, ValueError) as err:
        raise BackendError(
            f"{path}: cannot be read as ONNX ({err}); re-export it with `sammil-deploy export`"
        ) from None
    out: dict[str, Any] = {}
    for prop in model.metadata_props:
        if not prop.key.startswith(METADATA_PREFIX):
            continue
        key = prop.key[len(METADATA_PREFIX) :]
        try:
            out[key] = json.loads(prop.value) if key in _JSON_METADATA_KEYS else prop.value
        except json.JSONDecodeError:
            out[key] = prop.value
    return out


@dataclass(frozen=True, slots=True)
class PlanSidecar:
    """What a TensorRT plan was built from and for; stored as ``<plan>.json`` next to the plain plan file.

    The JSON is the one ``sammil_deploy.export.tensorrt.build_engine`` writes; keys not named here
    (``strongly_typed``, ``workspace_bytes``, ``build_seconds`` ...) are kept in ``extra`` and written back at
    the top level.

    Attributes:
        tensorrt_version: ``tensorrt.__version__`` of the builder (plans only load on the same version).
        compute_capability: GPU compute capability of the builder, ``"major.minor"`` (e.g. ``"9.0"``).
        gpu_name: Builder GPU name (a different GPU of the same capability loads, with a warning).
        precision: Precision of the source graph (``fp32``, ``fp16``, ``int8``).
        part: Which network (``sam_encoder``, ``sam_decoder``, ``resnet50``, ``mil``).
        source_onnx: File name of the ONNX graph the plan was built from.
        source_onnx_sha256: Its SHA-256.
        profiles: One entry per optimisation profile: ``{input name: [min_shape, opt_shape, max_shape]}``.
        inputs: Optional input tensor specs (dicts, as in the ONNX metadata) keeping the named dynamic axes.
        outputs: Optional output tensor specs (dicts).
        sammil_deploy_version: Toolkit version that built the plan.
        format_version: Sidecar format version.
        extra: Any other keys.
    """

    tensorrt_version: str
    compute_capability: str
    gpu_name: str = ""
    precision: str = "fp32"
    part: str = ""
    source_onnx: str = ""
    source_onnx_sha256: str = ""
    profiles: tuple[Mapping[str, Sequence[Sequence[int]]], ...] = ()
    inputs: tuple[Mapping[str, Any], ...] = ()
    outputs: tuple[Mapping[str, Any], ...] = ()
    sammil_deploy_version: str = ""
    format_version: int = SIDECAR_FORMAT_VERSION
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for JSON; ``extra`` entries are written at the top level (as they were read)."""
        known = {f.name: _jsonable(getattr(self, f.name)) for f in fields(self) if f.name != "extra"}
        return {**_jsonable(self.extra), **known}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "sidecar") -> PlanSidecar:
        """Parse the JSON dict; unknown keys go to ``extra`` so newer writers stay readable.

        Raises:
            BackendError: If a required key is missing or the format version is newer than this reader.
        """
        known = {f.name for f in fields(cls)} - {"extra"}
        missing = [k for k in ("tensorrt_version", "compute_capability") if k not in data]
        if missing:
            raise BackendError(f"{source}: missing {missing}; {REBUILD_HINT}")
        version = int(data.get("format_version", SIDECAR_FORMAT_VERSION))
        if version > SIDECAR_FORMAT_VERSION:
            raise BackendError(
                f"{source}: sidecar format {version} is newer than this sammil-deploy reads "
                f"({SIDECAR_FORMAT_VERSION}); upgrade sammil-deploy or {REBUILD_HINT}"
            )
        values = {k: v for k, v in data.items() if k in known}
        for key in ("profiles", "inputs", "outputs"):
            values[key] = tuple(values.get(key) or ())
        values["tensorrt_version"] = str(values["tensorrt_version"])
        values["compute_capability"] = str(values["compute_capability"])
        return cls(**values, extra={k: v for k, v in data.items() if k not in known})


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


def sidecar_path(plan_path: Path) -> Path:
    """``engine.plan`` → ``engine.plan.json``."""
    plan_path = Path(plan_path)
    return plan_path.with_name(plan_path.name + ".json")


def write_sidecar(plan_path: Path, sidecar: PlanSidecar) -> Path:
    """Write the sidecar of ``plan_path`` atomically (``.partial`` then rename); returns its path."""
    path = sidecar_path(plan_path)
    return write_json(path, sidecar.to_dict())


def read_sidecar(plan_path: Path) -> PlanSidecar:
    """Read and parse the sidecar of ``plan_path``.

    Raises:
        BackendError: If the plan or its sidecar is missing, or the sidecar is not valid JSON.
    """
    plan_path = Path(plan_path)
    if not plan_path.is_file():
        raise BackendError(f"{plan_path}: TensorRT plan not found; build it with `sammil-deploy export --trt`")
    path = sidecar_path(plan_path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise BackendError(
            f"{plan_path}: sidecar {path.name} is missing, so the plan's TensorRT version and GPU are unknown; "
            f"{REBUILD_HINT}"
        ) from None
    except json.JSONDecodeError as err:
        raise BackendError(f"{path}: not valid JSON ({err}); {REBUILD_HINT}") from None
    if not isinstance(data, dict):
        raise BackendError(f"{path}: expected a JSON object; {REBUILD_HINT}")
    return PlanSidecar.from_dict(data, source=str(path))


def check_plan_compatible(
    sidecar: PlanSidecar, *, tensorrt_version: str, compute_capability: str, plan_name: str = "plan"
) -> None:
    """Refuse a plan built by another TensorRT version or for another GPU architecture.

    Raises:
        BackendError: Naming both versions/capabilities and the rebuild command.
    """
    if sidecar.tensorrt_version != tensorrt_version:
        raise BackendError(
            f"{plan_name}: built with TensorRT {sidecar.tensorrt_version}, this machine has {tensorrt_version}; "
            f"{REBUILD_HINT}"
        )
    if sidecar.compute_capability != compute_capability:
        built_on = f" ({sidecar.gpu_name})" if sidecar.gpu_name else ""
        raise BackendError(
            f"{plan_name}: built for GPU compute capability {sidecar.compute_capability}{built_on}, this GPU is "
            f"{compute_capability}; {REBUILD_HINT}"
        )
