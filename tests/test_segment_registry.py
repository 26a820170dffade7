"""One segmentation entry point with a segmenter registry: every caller segments through ``segment_slide``."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch

from sammil_deploy.errors import ConfigError
from sammil_deploy.segment import Segmentation, SegmentConfig, create_segmenter, register_segmenter, segment_slide
from sammil_deploy.segment.segmenters import (
    ExportedSamSegmenter,
    FallbackSegmenter,
    TorchSamSegmenter,
    available_segmenters,
    segmenter_name,
)

TINY = {"segmenter": "sam", "sam_model": "tiny", "device": "cpu", "points_per_side": 4, "crop_n_layers": 0}


@pytest.mark.parametrize(
    ("settings", "exported", "name"),
    [
        ({}, False, "fallback"),
        ({"segmenter": "fallback"}, True, "fallback"),  # no SAM asked for: exported parts are not used
        (TINY, False, "sam_torch_fast"),
        ({**TINY, "generator": "reference"}, False, "sam_torch_reference"),
        (TINY, True, "sam_exported"),
    ],
)
def test_config_selects_a_registered_segmenter(settings, exported, name):
    assert segmenter_name(SegmentConfig(**settings), exported=exported) == name
    assert name in available_segmenters()


def test_builders_make_the_segmenter_the_config_names():
    assert isinstance(create_segmenter(SegmentConfig()), FallbackSegmenter)
    torch.manual_seed(0)
    fast = create_segmenter(SegmentConfig(**TINY))
    assert isinstance(fast, TorchSamSegmenter)
    assert fast.name == "sam_torch_fast"
    reference = create_segmenter(SegmentConfig(**TINY, generator="reference"), sam=fast.sam)
    assert reference.name == "sam_torch_reference"
    assert reference.sam is fast.sam  # a loaded model is reused, not loaded again


def test_unknown_and_duplicate_names_are_refused():
    with pytest.raises(ConfigError, match="unknown segmenter 'nope'; choose from"):
        create_segmenter(SegmentConfig(), name="nope")
    with pytest.raises(ValueError, match="registered twice"):
        register_segmenter("fallback")(lambda cfg: FallbackSegmenter(cfg))


@dataclass
class _WholeImage:
    """A user's segmenter: one mask over the whole SAM image."""

    cfg: SegmentConfig
    name: str = "whole_image"

    def segment(self, image: np.ndarray) -> Segmentation:
        h, w = image.shape[:2]
        return Segmentation.from_masks([np.ones((h, w), bool)], (h, w), self.name)


register_segmenter("test_whole_image")(_WholeImage)


def test_pipeline_segments_through_the_given_segmenter(real_slide_path):
    # extract, add-context and infer all call stages.segment_patches -> segment_slide: a registered segmenter
    # handed in is the one that runs, on the same SAM image segment_slide reads.
    from sammil_deploy.pipeline.stages import segment_patches
    from sammil_deploy.slide import open_slide

    cfg = SegmentConfig()
    segmenter = create_segmenter(cfg, name="test_whole_image")
    coords = np.array([[0, 0], [512, 512]], np.int64)
    with open_slide(real_slide_path) as reader:
        bbox = (0, 0, 2219, 2966)
        sam_image, segmentation, assignment = segment_patches(reader, bbox, coords, 512, cfg, segmenter=segmenter)
        same_image, fallback = segment_slide(reader, bbox, cfg)
    assert segmentation.segmenter == "whole_image"
    assert segmentation.n_masks == 1
    assert segmentation.image_hw == sam_image.image.shape[:2]
    np.testing.assert_array_equal(same_image.image, sam_image.image)
    assert assignment.segment_id.tolist() == [0, 0]
    assert fallback.segmenter.startswith("fallback")


@pytest.mark.slow
def test_exported_segmenter_runs_the_onnx_graphs(tmp_path, thumbnail_256):
    # The infer path's segmenter: the fast generator on ONNX Runtime backends (IO binding), same masks as torch.
    pytest.importorskip("onnxruntime")
    from sammil_deploy.export import sam as sam_export
    from sammil_deploy.export.onnx_export import export_onnx
    from sammil_deploy.runtime import open_backend
    from sammil_deploy.segment.compare import mask_agreement
    from sammil_deploy.segment.sam_model import build_sam

    torch.manual_seed(0)
    sam = build_sam("tiny")
    size = sam.image_encoder.img_size
    cfg = SegmentConfig(**{**TINY, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0})
    export_onnx(sam.image_encoder, sam_export.encoder_spec(sam, "tiny", "random"),
                (torch.randn(2, 3, size, size),), tmp_path / "enc.onnx")  # fmt: skip
    embedding, points = torch.randn(1, 32, size // 16, size // 16), (torch.rand(5, 1, 2) * size, torch.ones(5, 1))
    export_onnx(sam_export.SamPointDecoder(sam), sam_export.decoder_spec(sam, "tiny", "random"),
                (embedding, *points), tmp_path / "dec.onnx")  # fmt: skip
    encoder, decoder = (open_backend("onnxruntime", tmp_path / f, providers="cpu", spin=False)
                        for f in ("enc.onnx", "dec.onnx"))  # fmt: skip
    with encoder, decoder:
        exported = create_segmenter(cfg, encoder=encoder, decoder=decoder, model_type="tiny")
        assert isinstance(exported, ExportedSamSegmenter)
        ours = exported.segment(thumbnail_256)
    torch_masks = create_segmenter(cfg, sam=sam).segment(thumbnail_256)
    assert ours.segmenter == "sam_fast_tiny"
    agreement = mask_agreement(torch_masks, ours)
    assert agreement.n_candidate == agreement.n_reference >= 1
    assert agreement.min_iou >= 0.99, agreement


@pytest.fixture(scope="module")
def thumbnail_256(real_slide_path) -> np.ndarray:
    from sammil_deploy.slide import open_slide

    with open_slide(real_slide_path) as reader:
        return reader.thumbnail(256)
