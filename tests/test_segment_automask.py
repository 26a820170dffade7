"""SAM automatic mask generation with the tiny randomly initialised SAM (masks are meaningless, the plumbing is not).

Cost on the 2-core CPU dev machine: the tiny SAM (128 px input) with a 4x4 grid and one crop layer (5 encoder
passes, 16 + 4 x 4 prompts) takes well under a second on a ~180 x 140 image; the generator's cost grows with the
image size (masks are upsampled to it) and the grid, so tests keep both small.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from sammil_deploy.segment import SegmentConfig, assign_patches, segment_slide
from sammil_deploy.segment.automask import sam_segment
from sammil_deploy.segment.io import save_overlay_png
from sammil_deploy.segment.sam_model import build_sam
from sammil_deploy.slide import open_slide

TINY_CFG = dict(
    segmenter="sam",
    sam_model="tiny",
    points_per_side=4,
    crop_n_layers=1,
    pred_iou_thresh=0.0,  # random weights: keep whatever the decoder proposes
    stability_score_thresh=0.0,
    device="cpu",
)


@pytest.fixture(scope="module")
def tiny_sam():
    torch.manual_seed(0)  # this seed's random decoder proposes several distinct masks
    return build_sam("tiny")


def test_tiny_sam_automask_on_small_image(tiny_sam):
    rng = np.random.default_rng(0)
    image = np.full((96, 128, 3), 240, np.uint8)
    image[20:70, 30:90] = (180, 90, 170)
    image = np.clip(image + rng.normal(0, 6, (96, 128, 1)), 0, 255).astype(np.uint8)  # grey noise
    start = time.perf_counter()
    seg = sam_segment(image, SegmentConfig(**TINY_CFG), sam=tiny_sam)
    seconds = time.perf_counter() - start
    assert seconds < 30
    assert seg.segmenter == "sam_tiny"
    assert seg.n_masks >= 1
    assert seg.image_hw == (96, 128)
    assert seg.config["points_per_side"] == 4
    assert seg.config["sam_model"] == "tiny"
    assert seg.tissue_area_px == pytest.approx(50 * 60, rel=0.1)
    # Label map: each labelled pixel lies in its mask, and no smaller mask covers it.
    labels = seg.label_map
    for k in range(seg.n_masks):
        mask = seg.mask(k)
        assert mask.sum() == seg.areas_px[k]
        assert mask[labels == k].all()
        smaller_or_tied = [j for j in range(seg.n_masks) if (seg.areas_px[j], j) < (seg.areas_px[k], k)]
        for j in smaller_or_tied:
            assert not (seg.mask(j) & (labels == k)).any()
    # Deterministic: same model, same image, same masks.
    again = sam_segment(image, SegmentConfig(**TINY_CFG), sam=tiny_sam)
    np.testing.assert_array_equal(again.label_map, labels)


def test_min_mask_region_area_drops_small_masks(tiny_sam):
    image = np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    cfg = SegmentConfig(**TINY_CFG)
    seg = sam_segment(image, cfg, sam=tiny_sam)
    threshold = int(np.median(seg.areas_px)) + 1
    kept = sam_segment(image, SegmentConfig(**{**TINY_CFG, "min_mask_region_area": threshold}), sam=tiny_sam)
    assert seg.n_masks >= 2
    assert kept.n_masks < seg.n_masks
    assert (kept.areas_px >= threshold).all()


def test_segment_slide_with_tiny_sam_checkpoint_end_to_end(tiny_sam, real_slide_path, tmp_path):
    ckpt = tmp_path / "sam_tiny.pth"
    torch.save(tiny_sam.state_dict(), ckpt)
    cfg = SegmentConfig(**{**TINY_CFG, "sam_model": "auto", "segmenter": "auto"}, sam_checkpoint=ckpt, long_side_px=256)
    assert cfg.resolved_segmenter == "sam"
    with open_slide(real_slide_path) as reader:
        sam_image, seg = segment_slide(reader, (0, 0, 2219, 2966), cfg)
    assert sam_image.image.shape[:2] == (185, 138)  # D = 16
    assert seg.segmenter == "sam_fast_tiny"  # segment.generator "fast" is the default
    assert seg.n_masks >= 1
    same = sam_segment(sam_image.image, cfg, sam=tiny_sam)  # the loaded checkpoint == the in-memory model
    np.testing.assert_array_equal(same.label_map, seg.label_map)
    xs, ys = np.meshgrid(np.arange(0, 2220 - 512, 512), np.arange(0, 2967 - 512, 512))
    a = assign_patches(seg, sam_image, np.stack([xs.ravel(), ys.ravel()], 1), 512)
    assert a.segmenter == "sam_fast_tiny"
    assert len(a.segment_id) == xs.size
    png = save_overlay_png(tmp_path / "tiny_overlay.png", sam_image.image, seg)
    assert png.stat().st_size > 0
