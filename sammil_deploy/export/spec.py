"""What an exported artifact is: its I/O contract, metadata stamped into the ONNX file, and how it is saved.

Every ONNX file we write carries ``metadata_props`` (keys prefixed ``sammil_deploy.``): toolkit version, part,
precision, the export config, the source weights' SHA-256, the preprocessing the inputs need and the I/O
contract. A reader (``read_metadata``) needs only ``onnx``, not the weights. Models whose initializers exceed
``external_data_threshold_bytes`` (protobuf's 2 GiB limit by default) keep their weights in ONE external file
``<name>.onnx.data`` next to the graph.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sammil_deploy import __version__
from sammil_deploy.errors import BackendError, ConfigError, ExportError
from sammil_deploy.io_atomic import ensure_dir, output_error
from sammil_deploy.runtime.artifacts import METADATA_PREFIX, TensorSpec, read_onnx_metadata

if TYPE_CHECKING:
    import onnx

METADATA_SCHEMA_VERSION = 1
# protobuf cannot serialise a message over 2 GiB; weights beyond that go to one external-data file.
EXTERNAL_DATA_THRESHOLD_BYTES = 2 * 1024**3 - 64 * 1024**2
DEFAULT_OPSET = 18  # the dynamo exporter's native opset; TensorRT 10.x/11.x parse it
PRECISIONS = ("fp32", "fp16", "int8")


@dataclass(frozen=True, slots=True)
class ExportSpec:
    """The contract of one exported part.

    Attributes:
        part: ``sam_encoder``, ``sam_decoder``, ``resnet50`` or ``mil``.
        inputs: Input tensors in forward-argument order.
        outputs: Output tensors in forward-return order.
        preprocessing: What the caller must do to raw data before the first input (JSON-able).
        config: Model configuration (architecture, dims) stored with the artifact (JSON-able).
        source_sha256: SHA-256 of the weights the part was exported from, or ``"random"``.
        opset: ONNX opset (>= 17).
    """

    part: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    preprocessing: Mapping[str, Any] = field(default_factory=dict)
    config: Mapping[str, Any] = field(default_factory=dict)
    source_sha256: str = "random"
    opset: int = DEFAULT_OPSET

    def __post_init__(self) -> None:
        if self.opset < 17:
            raise ConfigError(f"export opset must be >= 17 (LayerNormalization), got {self.opset}")

    @property
    def input_names(self) -> list[str]:
        """Input names in order."""
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        """Output names in order."""
        return [t.name for t in self.outputs]

    def dynamic_dims(self) -> dict[str, dict[int, str]]:
        """``{input name: {axis: dim name}}`` for every dynamic input axis."""
        return {
            t.name: {i: d for i, d in enumerate(t.shape) if isinstance(d, str)}
            for t in self.inputs
            if any(isinstance(d, str) for d in t.shape)
        }

    def metadata(self, precision: str) -> dict[str, str]:
        """``metadata_props`` entries (all values strings, JSON where structured)."""
        return {
            f"{METADATA_PREFIX}schema_version": str(METADATA_SCHEMA_VERSION),
            f"{METADATA_PREFIX}version": __version__,
            f"{METADATA_PREFIX}part": self.part,
            f"{METADATA_PREFIX}precision": precision,
            f"{METADATA_PREFIX}source_sha256": self.source_sha256,
            f"{METADATA_PREFIX}preprocessing": json.dumps(dict(self.preprocessing), sort_keys=True),
            f"{METADATA_PREFIX}config": json.dumps(dict(self.config), sort_keys=True, default=str),
            f"{METADATA_PREFIX}inputs": json.dumps([t.to_dict() for t in self.inputs]),
            f"{METADATA_PREFIX}outputs": json.dumps([t.to_dict() for t in self.outputs]),
        }


@dataclass(frozen=True, slots=True)
class ExportArtifact:
    """An ONNX file on disk and what it is.

    Attributes:
        part: Which network.
        precision: ``fp32``, ``fp16`` or ``int8``.
        path: The ``.onnx`` graph file.
        external_data: The single ``.onnx.data`` weights file, or ``None`` when weights are inline.
        sha256: SHA-256 of the graph file (and of the data file, in ``external_sha256``).
        size_bytes: Graph plus external-data bytes.
        export_seconds: Wall time spent producing this file (export or conversion, not parity).
    """

    part: str
    precision: str
    path: Path
    external_data: Path | None
    sha256: str
    external_sha256: str | None
    size_bytes: int
    export_seconds: float

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for JSON reports (paths as strings)."""
        return {
            "part": self.part,
            "precision": self.precision,
            "path": str(self.path),
            "external_data": str(self.external_data) if self.external_data else None,
            "sha256": self.sha256,
            "external_sha256": self.external_sha256,
            "size_bytes": self.size_bytes,
            "export_seconds": round(self.export_seconds, 3),
        }


def stamp_metadata(model: onnx.ModelProto, metadata: Mapping[str, str]) -> None:
    """Set ``metadata_props`` entries on ``model`` in place (existing keys are overwritten, others kept)."""
    existing = {p.key: p.value for p in model.metadata_props}
    existing.update({k: str(v) for k, v in metadata.items()})
    del model.metadata_props[:]
    for key in sorted(existing):
        entry = model.metadata_props.add()
        entry.key, entry.value = key, existing[key]


def read_metadata(path: Path) -> dict[str, Any]:
    """Our ``metadata_props`` of an ONNX file (:func:`sammil_deploy.runtime.artifacts.read_onnx_metadata`).

    Raises:
        ExportError: If the file is missing or not an ONNX model.
    """
    try:
        return read_onnx_metadata(path)
    except BackendError as err:
        raise ExportError(str(err)) from None


def initializer_bytes(model: onnx.ModelProto) -> int:
    """Bytes held by the graph's initializers (what decides inline vs external data)."""
    import numpy as np
    import onnx

    total = 0
    for tensor in model.graph.initializer:
        itemsize = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)).itemsize
        total += int(np.prod(tensor.dims, dtype=np.int64)) * itemsize
    return total


def save_model(
    model: onnx.ModelProto, path: Path, *, external_data_threshold_bytes: int = EXTERNAL_DATA_THRESHOLD_BYTES
) -> Path | None:
    """Write ``model`` atomically to ``path``; weights go to one ``<name>.data`` file above the threshold.

    Both files are written in a private temporary folder beside ``path`` and moved into place (data first),
    so a reader never sees a half-written pair. A stale data file from an earlier inline export is removed.
    The in-memory ``model`` may have its tensors moved out (external data) and must not be reused.

    Returns:
        The external-data file, or ``None`` when the weights are inline.

    Raises:
        ExportError: If the files cannot be written.
    """
    import onnx

    path = Path(path)
    data_path = path.with_name(path.name + ".data")
    external = initializer_bytes(model) > external_data_threshold_bytes
    ensure_dir(path.parent)
    # a folder, not one .partial file: the model and its external data are built together, then each renamed
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent))
    try:
        tmp_model = tmp_dir / path.name
        if external:
            onnx.save_model(
                model,
                str(tmp_model),
                save_as_external_data=True,
                all_tensors_to_one_file=True,
                location=data_path.name,
                size_threshold=1024,
            )
            os.replace(tmp_dir / data_path.name, data_path)
        else:
            onnx.save_model(model, str(tmp_model))
            data_path.unlink(missing_ok=True)
        os.replace(tmp_model, path)
    except (OSError, ValueError) as err:
        raise output_error(err, path) or ExportError(f"{path}: cannot write ONNX model ({err})") from None
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return data_path if external else None


def make_artifact(part: str, precision: str, path: Path, external: Path | None, seconds: float) -> ExportArtifact:
    """Describe a saved ONNX file (hashes and sizes read from disk)."""
    from sammil_deploy.features.encoders import file_sha256

    size = path.stat().st_size + (external.stat().st_size if external else 0)
    return ExportArtifact(
        part=part,
        precision=precision,
        path=path,
        external_data=external,
        sha256=file_sha256(path),
        external_sha256=file_sha256(external) if external else None,
        size_bytes=size,
        export_seconds=seconds,
    )


def check_model(path: Path) -> None:
    """Run the ONNX checker on the file path (works for external data and > 2 GiB models).

    Raises:
        ExportError: With the checker's message.
    """
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=False)
    except onnx.checker.ValidationError as err:
        raise ExportError(f"{path}: ONNX checker rejected the exported model: {err}") from None
