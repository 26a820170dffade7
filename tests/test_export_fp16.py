"""FP16 graph pass: LayerNorm (incl. SAM's decomposed LayerNorm2d), softmax and reductions stay FP32."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from sammil_deploy.errors import ExportError
from sammil_deploy.export.fp16 import FP32_OPS, convert_to_fp16, fp32_node_summary, layernorm_decomposition_nodes


def _sam_encoder_pair(tiny_export):
    report, _ = tiny_export
    part = next(p for p in report.parts if p.part == "sam_encoder")
    return [onnx.load(str(a.path)) for a in part.artifacts]


def test_sam_encoder_fp16_keeps_norms_softmax_reductions_fp32(tiny_export):
    fp32, fp16 = _sam_encoder_pair(tiny_export)
    summary = fp32_node_summary(fp16)
    for op in ("LayerNormalization", "Softmax", "ReduceMean", "Pow", "Sqrt"):
        assert op in summary, op
        assert set(summary[op]) == {"float32"}, (op, summary[op])
    # SAM's neck has two LayerNorm2d, written as ReduceMean/Sub/Pow/ReduceMean/Add/Sqrt/Div: Sub and Div stay fp32
    assert summary["Div"].get("float32", 0) >= 2
    assert summary["Sub"].get("float32", 0) >= 2
    assert len(layernorm_decomposition_nodes(fp32.graph)) >= 6
    # the heavy compute runs in fp16
    for op in ("MatMul", "Conv"):
        assert set(summary[op]) == {"float16"}, (op, summary[op])
    # graph I/O unchanged, so callers feed the same arrays
    for value in list(fp16.graph.input) + list(fp16.graph.output):
        assert value.type.tensor_type.elem_type == TensorProto.FLOAT
    kinds = {t.data_type for t in fp16.graph.initializer if t.data_type in (TensorProto.FLOAT, TensorProto.FLOAT16)}
    assert TensorProto.FLOAT16 in kinds


def test_fp16_of_fp16_unchanged_count_of_fp32_ops_matches_source(tiny_export):
    fp32, fp16 = _sam_encoder_pair(tiny_export)
    kept = sum(n.op_type in FP32_OPS for n in fp32.graph.node)
    assert sum(n.op_type in FP32_OPS for n in fp16.graph.node) == kept  # no fragile op removed or duplicated


def _matmul_softmax_model(weight: np.ndarray) -> onnx.ModelProto:
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"),
            helper.make_node("Softmax", ["h"], ["p"], axis=-1, name="sm"),
            helper.make_node("ReduceSum", ["p", "axes"], ["s"], keepdims=0, name="rs"),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", weight.shape[0]])],
        [
            helper.make_tensor_value_info("p", TensorProto.FLOAT, ["n", weight.shape[1]]),
            helper.make_tensor_value_info("s", TensorProto.FLOAT, ["n"]),
        ],
        [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(np.array([1], np.int64), "axes")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def test_handmade_graph_runs_and_clips_out_of_range_weights():
    weight = np.full((4, 3), 0.01, np.float32)
    weight[0, 0] = 1e6  # beyond fp16 range
    half = convert_to_fp16(_matmul_softmax_model(weight))
    ops = [n.op_type for n in half.graph.node]
    assert ops == ["Cast", "MatMul", "Cast", "Softmax", "ReduceSum"]  # x->fp16, mm fp16, h->fp32, softmax+sum fp32
    w = numpy_helper.to_array(next(t for t in half.graph.initializer if t.name == "w"))
    assert w.dtype == np.float16
    assert w[0, 0] == np.float16(65504)
    session = ort.InferenceSession(half.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).random((5, 4), dtype=np.float32) * 1e-3
    p, s = session.run(None, {"x": x})
    assert p.dtype == np.float32
    assert s == pytest.approx(np.ones(5), abs=1e-6)


def test_keep_io_types_false_makes_io_fp16():
    half = convert_to_fp16(_matmul_softmax_model(np.ones((4, 3), np.float32)), keep_io_types=False)
    assert half.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT16
    assert {o.type.tensor_type.elem_type for o in half.graph.output} == {TensorProto.FLOAT16}
    session = ort.InferenceSession(half.SerializeToString(), providers=["CPUExecutionProvider"])
    p, _ = session.run(None, {"x": np.ones((2, 4), np.float16)})
    assert p.dtype == np.float16


def test_control_flow_is_refused():
    then = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y1"])],
        "t",
        [],
        [helper.make_tensor_value_info("y1", TensorProto.FLOAT, [1])],
    )
    graph = helper.make_graph(
        [helper.make_node("If", ["c"], ["y"], then_branch=then, else_branch=then)],
        "g",
        [
            helper.make_tensor_value_info("c", TensorProto.BOOL, []),
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [1]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    with pytest.raises(ExportError, match="control flow"):
        convert_to_fp16(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]))
