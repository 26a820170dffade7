"""`export_all` on every part (tiny SAM, random ResNet50, a saved MIL checkpoint): files, metadata, dynamic axes,
parity in real onnxruntime sessions (random inputs and the real slide), INT8 Q/DQ and the manifest."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from sammil_deploy import __version__
from sammil_deploy.export.spec import initializer_bytes, read_metadata
from sammil_deploy.features.encoders import create_encoder, file_sha256


def _part(report, name):
    return next(p for p in report.parts if p.part == name)


def test_every_part_exported_and_within_tolerance(tiny_export):
    report, out_dir = tiny_export
    assert [p.part for p in report.parts] == ["sam_encoder", "sam_decoder", "resnet50", "mil"]
    assert report.passed, "\n".join(report.failures())
    expected = {"sam_encoder": "fp16", "sam_decoder": "fp16", "resnet50": "int8", "mil": "fp16"}
    for part in report.parts:
        precisions = [a.precision for a in part.artifacts]
        assert precisions == ["fp32", expected[part.part]]
        for artifact in part.artifacts:
            assert artifact.path.is_file()
            assert artifact.path.parent == out_dir
            assert artifact.sha256 == file_sha256(artifact.path)
            assert artifact.size_bytes >= artifact.path.stat().st_size > 0
        # one parity report per artifact, over two sizes of the dynamic axis (INT8: one batch of slide patches)
        assert {r.precision for r in part.parity} >= set(precisions)
        per_artifact = [r for r in part.parity if r.precision != "int8" and not r.artifact.startswith("sam chain")]
        assert all(r.n_input_sets >= 2 for r in per_artifact)
    int8 = next(r for r in _part(report, "resnet50").parity if r.precision == "int8")
    assert int8.notes["inputs"] == "slide patches"
    assert int8.outputs[0].cosine >= 0.99
    # reduced precision stores the weights in half (fp16) or a quarter (int8) of the bytes
    for part in report.parts:
        fp32, reduced = (initializer_bytes(onnx.load(str(a.path))) for a in part.artifacts)
        assert reduced < (0.3 if part.part == "resnet50" else 0.55) * fp32


def test_parity_numbers_are_tight_for_fp32(tiny_export):
    report, _ = tiny_export
    for part in report.parts:
        fp32 = next(r for r in part.parity if r.precision == "fp32")
        for output in fp32.outputs:
            assert output.cosine > 0.99999
            assert output.max_rel < 1e-4, (part.part, output)


def test_sam_chain_checked_on_random_and_real_slide_with_mask_iou(tiny_export, real_slide_path):
    report, _ = tiny_export
    chains = [r for r in _part(report, "sam_decoder").parity if r.artifact.startswith("sam chain")]
    assert [r.notes["inputs"] for r in chains] == ["random", f"slide {real_slide_path.name}"]
    for chain in chains:
        masks = next(o for o in chain.outputs if o.name == "low_res_masks")
        assert masks.mask_iou is not None
        assert masks.mask_iou >= chain.tolerance.mask_iou_min
        assert {o.name for o in chain.outputs} == {"image_embeddings", "low_res_masks", "iou_predictions"}


def test_metadata_stamped(tiny_export, random_resnet_weights, tiny_mil_checkpoint):
    report, _ = tiny_export
    for part in report.parts:
        for artifact in part.artifacts:
            meta = read_metadata(artifact.path)
            assert meta["part"] == part.part
            assert meta["precision"] == artifact.precision
            assert meta["version"] == __version__
            assert meta["inputs"]
            assert meta["outputs"]
            model = onnx.load(str(artifact.path), load_external_data=False)
            assert model.opset_import[0].version >= 17
    resnet = read_metadata(_part(report, "resnet50").artifacts[0].path)
    assert resnet["source_sha256"] == file_sha256(random_resnet_weights)
    assert resnet["preprocessing"]["layout"] == "NHWC uint8"
    mil = read_metadata(_part(report, "mil").artifacts[0].path)
    assert mil["source_sha256"] == file_sha256(tiny_mil_checkpoint)
    assert mil["config"]["class_names"] == ["normal", "tumor"]
    sam = read_metadata(_part(report, "sam_encoder").artifacts[0].path)
    assert sam["preprocessing"]["pixel_mean_0_255"] == pytest.approx([123.675, 116.28, 103.53])
    assert sam["source_sha256"] == "random"


def test_dynamic_axes_named_and_usable_with_new_sizes(tiny_export):
    report, _ = tiny_export
    rng = np.random.default_rng(5)
    dims = {}
    for part in report.parts:
        session = ort.InferenceSession(str(part.artifacts[0].path), providers=["CPUExecutionProvider"])
        dims[part.part] = {i.name: i.shape for i in session.get_inputs()}
    assert dims["sam_encoder"]["images"][0] == "batch"
    assert dims["sam_decoder"]["point_coords"][0] == "num_prompts"
    assert dims["sam_decoder"]["image_embeddings"][0] == 1
    assert dims["resnet50"]["patches"][0] == "batch"
    assert dims["mil"]["features"][0] == "num_instances"

    mil = ort.InferenceSession(str(_part(report, "mil").artifacts[0].path), providers=["CPUExecutionProvider"])
    for n in (2, 1000):
        logits, probs, attention = mil.run(None, {"features": rng.random((n, 64), dtype=np.float32)})
        assert logits.shape == (2,)
        assert attention.shape == (n,)
        assert attention.sum() == pytest.approx(1.0, abs=1e-5)
        assert probs == pytest.approx(np.exp(logits) / np.exp(logits).sum(), abs=1e-6)
    decoder = ort.InferenceSession(str(_part(report, "sam_decoder").artifacts[1].path))
    masks, iou = decoder.run(
        None,
        {
            "image_embeddings": rng.standard_normal((1, 32, 8, 8), dtype=np.float32),
            "point_coords": rng.uniform(0, 128, (37, 1, 2)).astype(np.float32),
            "point_labels": np.ones((37, 1), np.float32),
        },
    )
    assert masks.shape == (37, 3, 32, 32)
    assert iou.shape == (37, 3)
    assert masks.dtype == np.float32


def test_resnet_folds_normalisation_and_matches_encoder(tiny_export, random_resnet_weights, real_slide_path):
    report, _ = tiny_export
    from sammil_deploy.export.resnet import slide_patches

    encoder = create_encoder("resnet50_trunc", weights=random_resnet_weights)
    patches = slide_patches(
        real_slide_path, patch_size_level0_px=512, out_size_px=224, count=2, rng=np.random.default_rng(1)
    )["patches"]
    mean, std = np.array(encoder.mean), np.array(encoder.std)
    normalised = ((patches / 255.0 - mean) / std).transpose(0, 3, 1, 2).astype(np.float32)
    with torch.inference_mode():
        expected = encoder(torch.from_numpy(normalised)).numpy()
    session = ort.InferenceSession(str(_part(report, "resnet50").artifacts[0].path))
    (features,) = session.run(None, {"patches": patches})
    assert features.shape == (2, 1024)
    np.testing.assert_allclose(features, expected, rtol=1e-4, atol=1e-4)


def test_resnet_uint8_input_feeds_a_cast_directly(tiny_export):
    # TensorRT accepts a UINT8 network input only when its consumers are Casts (NVIDIA/TensorRT#3985).
    report, _ = tiny_export
    for artifact in _part(report, "resnet50").artifacts:
        graph = onnx.load(str(artifact.path), load_external_data=False).graph
        consumers = [n.op_type for n in graph.node if "patches" in n.input]
        assert consumers == ["Cast"], (artifact.path.name, consumers)


def test_int8_resnet_has_symmetric_qdq(tiny_export):
    report, _ = tiny_export
    int8 = _part(report, "resnet50").artifacts[1]
    model = onnx.load(str(int8.path))
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("QuantizeLinear") > 10
    assert ops.count("DequantizeLinear") > 10
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    zero_points = [inits[n.input[2]] for n in model.graph.node if n.op_type == "QuantizeLinear" and len(n.input) > 2]
    assert zero_points
    assert all(np.all(z == 0) for z in zero_points)
    assert read_metadata(int8.path)["int8_calibration_patches"] == "8"


def test_manifest_matches_report(tiny_export):
    report, out_dir = tiny_export
    manifest = json.loads((out_dir / "export_manifest.json").read_text())
    assert manifest["passed"] is report.passed
    assert manifest["config"]["precision"] == "int8"
    listed = {a["path"] for p in manifest["parts"] for a in p["artifacts"]}
    assert listed == {str(a.path) for p in report.parts for a in p.artifacts}
    assert not list(out_dir.glob("*.partial"))
    assert not list(out_dir.glob(".*partial"))
