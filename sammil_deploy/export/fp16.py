"""FP32 → FP16 conversion *in the ONNX graph*, keeping numerically fragile ops in FP32 behind Casts.

Strongly typed TensorRT (10.x with ``STRONGLY_TYPED``, always in 11.x) takes each layer's precision from the
graph's tensor types, so mixed precision must be written into the graph. Plain FP16 SAM ViT-H produces
garbage because LayerNorm's variance (a mean of squares over 1,280 channels) overflows FP16's 65,504 and
softmax/exp saturate. We keep in FP32:

* normalisation and reductions: ``LayerNormalization``, ``GroupNormalization``, ``InstanceNormalization``,
  every ``Reduce*``, ``GlobalAveragePool``, ``CumSum``;
* ``Softmax``/``LogSoftmax``, ``Exp``/``Log``, ``Pow``/``Sqrt``/``Reciprocal``, and ``Sin``/``Cos``
  (SAM's random-Fourier prompt encoding has arguments up to ~50 rad, where FP16 spacing is 0.03);
* the rest of SAM's ``LayerNorm2d`` decomposition: ``Sub(x, mean)``, the ``Add`` of epsilon before
  ``Sqrt``, and the ``Div`` by the standard deviation (see :func:`layernorm_decomposition_nodes`).

Everything else computes in FP16. Shape-only ops (``Reshape``, ``Transpose``, ``Slice`` ...) follow the
precision of their data input, so no Cast pair is inserted around them. Graph inputs and outputs stay FP32
by default (``keep_io_types``), so callers feed the same arrays as for the FP32 model.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable
from typing import TYPE_CHECKING

from sammil_deploy.errors import ExportError

if TYPE_CHECKING:
    import onnx

log = logging.getLogger(__name__)

FP32_OPS = frozenset(
    {
        "LayerNormalization", "GroupNormalization", "InstanceNormalization", "LpNormalization",
        "Softmax", "LogSoftmax",
        "ReduceMean", "ReduceSum", "ReduceSumSquare", "ReduceL1", "ReduceL2", "ReduceLogSum",
        "ReduceLogSumExp", "ReduceMax", "ReduceMin", "ReduceProd", "GlobalAveragePool", "CumSum",
        "Pow", "Sqrt", "Reciprocal", "Exp", "Log", "Sin", "Cos", "Range",
    }
)  # fmt: skip
# Ops that only move or select data: they compute in whatever precision their data input has.
PASS_THROUGH_OPS = frozenset(
    {
        "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Identity", "Expand", "Slice", "Gather",
        "GatherElements", "GatherND", "Split", "Tile", "Concat", "Pad", "DepthToSpace", "SpaceToDepth",
    }
)  # fmt: skip
# Inputs that the ONNX spec types as float32 only, whatever the data precision.
FP32_ONLY_SLOTS = frozenset({("Resize", 2), ("Upsample", 1)})
# Inputs whose type the op does not care about (no Cast needed).
ANY_TYPE_OPS = frozenset({"Shape", "Size", "Cast", "CastLike", "IsNaN", "IsInf"})
_CONTROL_FLOW = frozenset({"If", "Loop", "Scan"})
_FP16_MAX = 65504.0


def convert_to_fp16(
    model: onnx.ModelProto, *, keep_io_types: bool = True, extra_fp32_ops: Iterable[str] = ()
) -> onnx.ModelProto:
    """Return an FP16 copy of an FP32 model with fragile ops kept in FP32.

    Args:
        model: FP32 model with its weights loaded (``onnx.load`` of the file, external data included).
        keep_io_types: Keep float graph inputs/outputs FP32 (Casts at the boundary); else make them FP16.
        extra_fp32_ops: Further op types to keep in FP32.

    Returns:
        A new model; ``model`` is not modified. Initializers beyond FP16 range are clipped to +-65504.

    Raises:
        ExportError: The graph has control flow (``If``/``Loop``/``Scan``) or fails the ONNX checker after
            conversion.
    """
    import onnx

    src = onnx.ModelProto()
    src.CopyFrom(model)
    if src.functions:
        src = onnx.inliner.inline_local_functions(src)
    graph = src.graph
    if bad := sorted({n.op_type for n in graph.node if n.op_type in _CONTROL_FLOW}):
        raise ExportError(f"fp16 conversion does not support control flow ops {bad}; export the model without them")
    elem_types = _infer_elem_types(src)
    fp32_ops = FP32_OPS | frozenset(extra_fp32_ops)
    plan = _Plan(src, elem_types, fp32_ops, keep_io_types)
    plan.rewrite()
    onnx.checker.check_model(src)
    return src


def layernorm_decomposition_nodes(graph: onnx.GraphProto) -> set[str]:
    """Names of the elementwise nodes of decomposed LayerNorms (SAM's ``LayerNorm2d``) to keep in FP32.

    The decomposition is ``u = ReduceMean(x); d = Sub(x, u); v = ReduceMean(Pow(d, 2)); s = Sqrt(Add(v, eps));
    y = Div(d, s)``: the ``Sub`` taking a ``ReduceMean`` output, the ``Add`` feeding a ``Sqrt`` from a
    ``ReduceMean``, and the ``Div`` by a ``Sqrt`` are returned (the other ops are in :data:`FP32_OPS`).
    """
    producer = {out: node for node in graph.node for out in node.output}

    def made_by(name: str, op_type: str) -> bool:
        node = producer.get(name)
        return node is not None and node.op_type == op_type

    consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
    for node in graph.node:
        for name in node.input:
            consumers[name].append(node)

    def is_decomposed_ln(node: onnx.NodeProto) -> bool:
        if node.op_type == "Sub" and len(node.input) == 2:
            return made_by(node.input[1], "ReduceMean")  # x - mean(x)
        if node.op_type == "Div" and len(node.input) == 2:
            return made_by(node.input[1], "Sqrt")  # (x - mean) / sqrt(var + eps)
        return (  # var + eps, feeding the Sqrt
            node.op_type == "Add"
            and any(made_by(i, "ReduceMean") for i in node.input)
            and any(c.op_type == "Sqrt" for c in consumers[node.output[0]])
        )

    return {node.name for node in graph.node if is_decomposed_ln(node)}


def _infer_elem_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every value: graph inputs, initializers, Constant outputs and inferred node outputs.

    Shape inference runs on a weightless copy, so it works for models beyond protobuf's 2 GiB.
    """
    import onnx

    header = onnx.ModelProto()
    header.CopyFrom(model)
    for tensor in header.graph.initializer:
        if tensor.data_type != onnx.TensorProto.INT64 and tensor.ByteSize() > 4096:
            tensor.ClearField("raw_data")
            tensor.ClearField("float_data")
            tensor.ClearField("int32_data")
            tensor.data_location = onnx.TensorProto.EXTERNAL
            entry = tensor.external_data.add()
            entry.key, entry.value = "location", "weightless"
    inferred = onnx.shape_inference.infer_shapes(header, strict_mode=False)
    types: dict[str, int] = {}
    graph = inferred.graph
    for value in list(graph.input) + list(graph.value_info) + list(graph.output):
        if value.type.HasField("tensor_type") and value.type.tensor_type.elem_type:
            types[value.name] = value.type.tensor_type.elem_type
    for tensor in model.graph.initializer:
        types[tensor.name] = tensor.data_type
    for node in model.graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    types[node.output[0]] = attr.t.data_type
    return types


class _Plan:
    """One conversion: decides each node's precision, then rewrites the graph with Casts where homes differ."""

    def __init__(self, model: onnx.ModelProto, types: dict[str, int], fp32_ops: frozenset[str], keep_io: bool):
        import onnx

        self.model, self.graph, self.types = model, model.graph, types
        self.FLOAT, self.HALF = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16
        self.fp32_ops, self.keep_io = fp32_ops, keep_io
        self.ln_nodes = layernorm_decomposition_nodes(self.graph)
        self.constants = {t.name for t in self.graph.initializer} | {
            n.output[0] for n in self.graph.node if n.op_type == "Constant"
        }
        self.home: dict[str, int] = {}  # float value -> precision it is produced in
        self.node_fp32: dict[int, bool] = {}

    def is_float(self, name: str) -> bool:
        return bool(name) and self.types.get(name) == self.FLOAT

    def rewrite(self) -> None:
        self._decide_nodes()
        self._decide_constants()
        self._insert_casts()
        self._convert_constants_and_attrs()
        self._fix_io()
        del self.graph.value_info[:]

    def _decide_nodes(self) -> None:
        for value in self.graph.input:
            if self.is_float(value.name):
                self.home[value.name] = self.FLOAT if self.keep_io else self.HALF
        for idx, node in enumerate(self.graph.node):
            if node.op_type == "Constant":
                continue
            if node.op_type in self.fp32_ops or node.name in self.ln_nodes:
                fp32 = True
            elif node.op_type in PASS_THROUGH_OPS:
                data_in = [self.home.get(i) for i in node.input if self.is_float(i) and i not in self.constants]
                fp32 = bool(data_in) and all(h == self.FLOAT for h in data_in)
            else:
                fp32 = False
            self.node_fp32[idx] = fp32
            for out in node.output:
                if self.is_float(out):
                    self.home[out] = self.FLOAT if fp32 else self.HALF

    def required(self, idx: int, node: onnx.NodeProto, slot: int) -> int | None:
        """Precision a float input slot needs, or ``None`` if any type is accepted."""
        if node.op_type in ANY_TYPE_OPS:
            return None
        if (node.op_type, slot) in FP32_ONLY_SLOTS or self.node_fp32[idx]:
            return self.FLOAT
        return self.HALF

    def _decide_constants(self) -> None:
        needs: dict[str, set[int | None]] = defaultdict(set)
        for idx, node in enumerate(self.graph.node):
            if node.op_type == "Constant":
                continue
            for slot, name in enumerate(node.input):
                if name in self.constants and self.is_float(name):
                    needs[name].add(self.required(idx, node, slot))
        for name in self.constants:
            if self.is_float(name):
                wanted = needs.get(name, set()) - {None}
                self.home[name] = self.FLOAT if wanted == {self.FLOAT} else self.HALF

    def _insert_casts(self) -> None:
        import onnx

        casts: dict[tuple[str, int], str] = {}
        nodes: list[onnx.NodeProto] = []
        for idx, node in enumerate(self.graph.node):
            if node.op_type != "Constant":
                for slot, name in enumerate(node.input):
                    if not self.is_float(name):
                        continue
                    want = self.required(idx, node, slot)
                    if want is None or want == self.home[name]:
                        continue
                    key = (name, want)
                    if key not in casts:
                        casts[key] = f"{name}__to_{'fp32' if want == self.FLOAT else 'fp16'}"
                        nodes.append(onnx.helper.make_node("Cast", [name], [casts[key]], to=want, name=casts[key]))
                    node.input[slot] = casts[key]
            nodes.append(node)
        del self.graph.node[:]
        self.graph.node.extend(nodes)

    def _convert_constants_and_attrs(self) -> None:
        import numpy as np
        from onnx import numpy_helper

        def to_half(tensor: onnx.TensorProto) -> onnx.TensorProto:
            values = numpy_helper.to_array(tensor)
            if np.abs(values).max(initial=0.0) > _FP16_MAX:
                log.warning("fp16: %s has values beyond +-65504; clipped", tensor.name)
            half = np.clip(values, -_FP16_MAX, _FP16_MAX).astype(np.float16)
            return numpy_helper.from_array(half, tensor.name)

        for i, tensor in enumerate(self.graph.initializer):
            if tensor.data_type == self.FLOAT and self.home.get(tensor.name) == self.HALF:
                self.graph.initializer[i].CopyFrom(to_half(tensor))
        for node in self.graph.node:
            if node.op_type in ("Constant", "ConstantOfShape") and self.home.get(node.output[0]) == self.HALF:
                for attr in node.attribute:
                    if attr.name == "value" and attr.t.data_type == self.FLOAT:
                        attr.t.CopyFrom(to_half(attr.t))
            elif node.op_type == "Cast" and self.home.get(node.output[0]) == self.HALF:
                for attr in node.attribute:
                    if attr.name == "to" and attr.i == self.FLOAT:
                        attr.i = self.HALF

    def _fix_io(self) -> None:
        import onnx

        for value in self.graph.input:
            if self.is_float(value.name) and not self.keep_io:
                value.type.tensor_type.elem_type = self.HALF
        want = self.FLOAT if self.keep_io else self.HALF
        for value in self.graph.output:
            if not self.is_float(value.name):
                continue
            value.type.tensor_type.elem_type = want
            if self.home[value.name] == want:
                continue
            inner = f"{value.name}__{'fp16' if want == self.FLOAT else 'fp32'}"
            for node in self.graph.node:
                for k, name in enumerate(node.output):
                    if name == value.name:
                        node.output[k] = inner
                for k, name in enumerate(node.input):
                    if name == value.name:
                        node.input[k] = inner
            self.graph.node.append(onnx.helper.make_node("Cast", [inner], [value.name], to=want, name=inner + "_cast"))


def fp32_node_summary(model: onnx.ModelProto) -> dict[str, dict[str, int]]:
    """Count nodes per op type by the element type they compute in (``float32``/``float16``/``other``).

    Used by tests and reports to show that LayerNorm/Softmax/reductions stay FP32 in an FP16 graph.
    """
    import onnx

    types = _infer_elem_types(model)
    names = {onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.FLOAT16: "float16"}
    summary: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for node in model.graph.node:
        float_types = {types.get(i) for i in node.input if types.get(i) in names}
        key = names[float_types.pop()] if len(float_types) == 1 else "mixed" if float_types else "other"
        summary[node.op_type][key] += 1
    return {op: dict(v) for op, v in summary.items()}
