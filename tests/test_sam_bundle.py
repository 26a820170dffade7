"""A bundle holding exported SAM parts runs the SAM chain in ``infer`` through ONNX Runtime, end to end.

The SAM is the tiny test model with calibrated random weights (mask logits x100, IoU head +0.6, saved as a .pth)
so masks pass SAM-MIL's 0.6 thresholds; its masks mean nothing, the test checks the plumbing and the numbers:
the exported encoder/decoder drive the fast generator, the report carries SAM's work and timings, and the
PyTorch backend on the same bundle gives the same masks and groups.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sammil_deploy.bundle import load_bundle, make_bundle
from sammil_deploy.pipeline.extract import load_extract_config
from sammil_deploy.pipeline.infer import InferConfig, run_slide

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def sam_bundle(tmp_path_factory, random_resnet_weights) -> Path:
    from sammil_deploy.bench.maskgen import calibrated_random_sam
    from sammil_deploy.export.api import export_all
    from sammil_deploy.export.config import ExportConfig
    from sammil_deploy.mil.checkpoint import make_meta, save_checkpoint
    from sammil_deploy.mil.config import ModelConfig
    from sammil_deploy.mil.model import build_model

    root = tmp_path_factory.mktemp("sam_bundle")
    sam_checkpoint = root / "sam_tiny_calibrated.pth"
    torch.save(calibrated_random_sam("tiny", 0).state_dict(), sam_checkpoint)
    torch.manual_seed(1)
    model_cfg = ModelConfig(in_dim=1024)
    meta = make_meta(model_cfg, class_names=("normal", "tumor"), group_tokens=True, feature_extractor="resnet50_trunc")
    checkpoint = save_checkpoint(root / "fold0", build_model(model_cfg), meta)
    export_dir = root / "export"
    report = export_all(
        checkpoint, sam_checkpoint, "tiny", random_resnet_weights, export_dir, ExportConfig(precision="fp32")
    )
    assert report.passed, report.failures()
    preprocess = load_extract_config(
        preset="bwh_biopsy",
        overrides={
            "features.weights": random_resnet_weights,
            "segment.sam_checkpoint": sam_checkpoint,  # before the segmenter, which needs it
            "segment.sam_model": "tiny",
            "segment.segmenter": "sam",
        },
    )
    return make_bundle(root / "bundle", checkpoint, export_dir, preprocess).root


@pytest.mark.slow
def test_bundle_with_sam_parts_infers_through_onnxruntime(sam_bundle, tmp_path):
    from sammil_deploy.slide.synthetic import SyntheticSlideSpec, write_synthetic_slide

    slide = tmp_path / "slide.svs"
    write_synthetic_slide(slide, SyntheticSlideSpec(width_px=1536, height_px=1280, mpp=0.5, seed=11, n_lumens=1))
    bundle = load_bundle(sam_bundle)
    assert {a.part for a in bundle.artifacts} >= {"sam_encoder", "sam_decoder", "resnet50", "mil"}
    common = {"device": "cpu", "batch_size": 8, "num_workers": 0, "intra_op_threads": 1}
    ort = run_slide(slide, bundle, InferConfig(backend="onnxruntime", **common), tmp_path / "ort").report
    assert ort["segmenter"] == "sam_fast_tiny"
    assert "onnxruntime" in ort["backends"]["segmentation"]
    assert "sam_tiny_encoder" in ort["backends"]["segmentation"]
    counts = ort["counts"]
    # SAM-MIL's settings: the whole image plus 4 crops; 32 x 32 points plus 4 x 16 x 16.
    assert counts["sam_encoder_passes"] == 5
    assert counts["sam_decoder_prompts"] == 32 * 32 + 4 * 16 * 16
    assert counts["masks"] >= 1
    sam_stages = ("sam_encoder", "sam_decoder", "sam_decoder_wait", "sam_postprocess")
    for stage in sam_stages:
        assert ort["timings_s"][f"segmentation.{stage}"] >= 0.0
    # encoder + decoder wait + post-processing are the generator's total, inside the segmentation stage.
    parts = sum(ort["timings_s"][f"segmentation.{stage}"] for stage in sam_stages if stage != "sam_decoder")
    assert parts <= ort["timings_s"]["segmentation"]
    assert ort["timings_s"]["segmentation.sam_encoder"] < ort["timings_s"]["segmentation"]
    reference = run_slide(slide, bundle, InferConfig(backend="torch", **common), tmp_path / "torch").report
    assert "torch SAM" in reference["backends"]["segmentation"]
    assert reference["counts"]["masks"] == counts["masks"]
    assert reference["counts"]["segments"] == counts["segments"]
    assert reference["counts"]["patches_in_no_segment"] == counts["patches_in_no_segment"]
