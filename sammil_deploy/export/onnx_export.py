"""torch → ONNX with the dynamo exporter, metadata stamping, checking, and FP16 variants of a saved FP32 file.

Why the dynamo exporter (``torch.onnx.export(..., dynamo=True)``): it is torch's supported path (the
TorchScript exporter is deprecated), and for SAM it yields a clean graph. The ViT's window partition pads
``H, W`` to a multiple of the window; the TorchScript exporter traces that padding as ~150 runtime
``Shape/Gather/Mod/Range`` nodes (and ``repeat_interleave`` in the mask decoder as ``OneHot/Tile``), while
``torch.export`` resolves every static dimension at export time and keeps only the declared dynamic axes
(batch, prompts, instances) symbolic. Both were measured on the tiny SAM with identical ORT parity (< 3e-6);
the dynamo graph has no shape arithmetic left for TensorRT to fold. Its cost is export time (seconds for
small models, minutes for ViT-H), paid once.
"""

from __future__ import annotations

import contextlib
import io
import logging
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from sammil_deploy.errors import ExportError
from sammil_deploy.export.spec import (
    EXTERNAL_DATA_THRESHOLD_BYTES,
    ExportArtifact,
    ExportSpec,
    check_model,
    make_artifact,
    save_model,
    stamp_metadata,
)

if TYPE_CHECKING:
    import onnx
    import torch
    from torch import nn

log = logging.getLogger(__name__)

MAX_DYNAMIC_DIM = 1 << 20  # torch.export needs an upper bound; TensorRT profiles set the real one


def export_onnx(
    module: nn.Module,
    spec: ExportSpec,
    example: Sequence[torch.Tensor],
    out: Path,
    *,
    external_data_threshold_bytes: int = EXTERNAL_DATA_THRESHOLD_BYTES,
) -> ExportArtifact:
    """Export ``module`` to an FP32 ONNX file with ``spec``'s names, dynamic axes and metadata.

    Args:
        module: CPU module; its ``forward`` takes the inputs of ``spec`` in order.
        spec: Names, dynamic axes (string dims), preprocessing/config metadata, opset.
        example: Example inputs; every dynamic axis must have size >= 2 (torch.export specialises 0 and 1).
        out: Destination ``.onnx`` path (weights go to ``out.data`` above the threshold).
        external_data_threshold_bytes: Initializer bytes above which weights are stored externally.

    Returns:
        The saved artifact (checked with the ONNX checker).

    Raises:
        ExportError: If torch cannot export the module, or the result fails the checker.
    """
    import torch

    module = module.eval()
    dims: dict[str, torch.export.Dim] = {}
    dynamic_shapes = []
    for tensor_spec, value in zip(spec.inputs, example, strict=True):
        axes = {}
        for axis, dim in enumerate(tensor_spec.shape):
            if isinstance(dim, str):
                if value.shape[axis] < 2:
                    raise ExportError(f"example input {tensor_spec.name!r} needs size >= 2 on dynamic axis {dim!r}")
                dims.setdefault(dim, torch.export.Dim(dim, min=1, max=MAX_DYNAMIC_DIM))
                axes[axis] = dims[dim]
        dynamic_shapes.append(axes or None)
    start = time.perf_counter()
    # The exporter prints progress to stdout and warns about tracing details; neither belongs in our output.
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        try:
            program = torch.onnx.export(
                module,
                tuple(example),
                None,
                input_names=spec.input_names,
                output_names=spec.output_names,
                opset_version=spec.opset,
                dynamo=True,
                dynamic_shapes=tuple(dynamic_shapes),
                verbose=False,
            )
        except Exception as err:  # noqa: BLE001  (torch.export raises many unrelated types)
            raise ExportError(f"{spec.part}: torch.onnx.export failed ({type(err).__name__}: {err})") from err
        model = program.model_proto
    route_uint8_inputs_through_cast(model)
    stamp_metadata(model, spec.metadata("fp32"))
    model.doc_string = f"sammil-deploy {spec.part} (fp32)"
    external = save_model(model, out, external_data_threshold_bytes=external_data_threshold_bytes)
    check_model(out)
    seconds = time.perf_counter() - start
    log.info("exported %s to %s in %.1f s", spec.part, out, seconds)
    return make_artifact(spec.part, "fp32", out, external, seconds)


def route_uint8_inputs_through_cast(model: onnx.ModelProto) -> None:
    """Make the Cast the only consumer of each uint8 graph input (in place).

    TensorRT accepts a UINT8 network input only when it feeds Cast layers (NVIDIA/TensorRT#3985), but the
    exporter reads symbolic sizes (e.g. the batch of a ``flatten``) with ``Shape`` straight off the input. A
    Cast keeps the shape, so those ``Shape`` nodes read the Cast's output instead; the Cast moves to the front
    of the node list so the graph stays topologically sorted.
    """
    import onnx

    graph = model.graph
    for value in graph.input:
        if value.type.tensor_type.elem_type != onnx.TensorProto.UINT8:
            continue
        casts = [n for n in graph.node if n.op_type == "Cast" and list(n.input) == [value.name]]
        if not casts:
            continue
        for node in graph.node:
            if node.op_type == "Shape" and list(node.input) == [value.name]:
                node.input[0] = casts[0].output[0]
        for cast in casts:  # a graph input needs nothing before it
            graph.node.remove(cast)
        for i, cast in enumerate(casts):
            graph.node.insert(i, cast)


def export_fp16_variant(
    fp32: ExportArtifact, out: Path, *, external_data_threshold_bytes: int = EXTERNAL_DATA_THRESHOLD_BYTES
) -> ExportArtifact:
    """Convert a saved FP32 ONNX file to the FP16 mixed-precision graph of :mod:`.fp16`, restamping precision.

    Raises:
        ExportError: If conversion or the checker fails.
    """
    import onnx

    from sammil_deploy.export.fp16 import convert_to_fp16

    start = time.perf_counter()
    model = onnx.load(str(fp32.path))  # loads the external data from the file's folder
    try:
        half = convert_to_fp16(model)
    except onnx.checker.ValidationError as err:
        raise ExportError(f"{fp32.path.name}: fp16 conversion produced an invalid graph ({err})") from None
    stamp_metadata(half, {"sammil_deploy.precision": "fp16"})
    half.doc_string = f"sammil-deploy {fp32.part} (fp16, LayerNorm/softmax/reductions in fp32)"
    external = save_model(half, out, external_data_threshold_bytes=external_data_threshold_bytes)
    check_model(out)
    return make_artifact(fp32.part, "fp16", out, external, time.perf_counter() - start)
