"""Weights beyond the threshold go to ONE external-data file; loading, checking and running it all work."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from sammil_deploy.export import mil as mil_export
from sammil_deploy.export.onnx_export import export_fp16_variant, export_onnx
from sammil_deploy.export.spec import check_model, read_metadata
from sammil_deploy.export.verify import torch_runner, verify_parity
from sammil_deploy.mil.checkpoint import load_checkpoint
from sammil_deploy.mil.model import BagClassifier


@pytest.fixture(scope="module")
def external_mil(tmp_path_factory, tiny_mil_checkpoint):
    ckpt = load_checkpoint(tiny_mil_checkpoint)
    module = BagClassifier(ckpt.model).eval()
    spec = mil_export.mil_spec(ckpt, "test")
    out = tmp_path_factory.mktemp("external") / "mil_head.fp32.onnx"
    artifact = export_onnx(module, spec, mil_export.example_inputs(ckpt), out, external_data_threshold_bytes=1)
    return artifact, torch_runner(module, spec.input_names, spec.output_names)


def test_external_data_round_trip(external_mil):
    artifact, reference = external_mil
    data = artifact.path.with_name(artifact.path.name + ".data")
    assert artifact.external_data == data
    assert data.is_file()
    assert sorted(p.name for p in artifact.path.parent.iterdir()) == sorted([artifact.path.name, data.name])
    header = onnx.load(str(artifact.path), load_external_data=False)
    big = [t for t in header.graph.initializer if 4 * int(np.prod(t.dims)) >= 1024]  # smaller ones stay inline
    assert big
    assert all(t.data_location == onnx.TensorProto.EXTERNAL for t in big)
    assert {e.value for t in header.graph.initializer for e in t.external_data if e.key == "location"} == {data.name}
    full = onnx.load(str(artifact.path))  # base dir = the model's folder
    assert all(t.raw_data for t in full.graph.initializer if t.dims)
    check_model(artifact.path)
    assert read_metadata(artifact.path)["part"] == "mil"
    rng = np.random.default_rng(0)
    report = verify_parity(reference, artifact.path, [mil_export.random_bag(64, n, rng) for n in (3, 50)], "fp32")
    assert report.passed, report.summary()
    assert artifact.size_bytes == artifact.path.stat().st_size + data.stat().st_size


def test_fp16_of_external_model_is_external_and_runs(external_mil, tmp_path):
    artifact, reference = external_mil
    half = export_fp16_variant(artifact, artifact.path.with_name("mil_head.fp16.onnx"), external_data_threshold_bytes=1)
    assert half.external_data is not None
    assert half.external_data.is_file()
    report = verify_parity(reference, half.path, mil_export.random_bag(64, 20, np.random.default_rng(1)), "fp16")
    assert report.passed, report.summary()
    inline = export_fp16_variant(artifact, tmp_path / "inline.onnx")  # default threshold: weights stay inline
    assert inline.external_data is None
    assert not (tmp_path / "inline.onnx.data").exists()
