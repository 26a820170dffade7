"""Classical fallback segmenter, front door, label map and overlay files."""

from __future__ import annotations

import time

import cv2
import numpy as np
import pytest
from PIL import Image

from sammil_deploy.config import from_mapping
from sammil_deploy.errors import ConfigError, SegmentationError
from sammil_deploy.segment import SegmentConfig, assign_patches, segment_slide
from sammil_deploy.segment.fallback import fallback_segment
from sammil_deploy.segment.image_tissue import tissue_mask_on_image
from sammil_deploy.segment.io import load_segmentation, render_overlay, save_overlay_png, save_segmentation
from sammil_deploy.slide import open_slide


@pytest.fixture(scope="module")
def real_fallback(real_slide_path):
    with open_slide(real_slide_path) as reader:
        start = time.perf_counter()
        sam_image, seg = segment_slide(reader, (0, 0, 2219, 2966), SegmentConfig())
        seconds = time.perf_counter() - start
    return sam_image, seg, seconds


def test_fallback_on_real_slide(real_fallback):
    sam_image, seg, seconds = real_fallback
    assert seg.segmenter == "fallback_kmeans"
    assert seg.n_masks >= 2
    assert seconds < 20
    labels = seg.label_map
    assert labels.shape == sam_image.size_hw
    # Fallback regions do not overlap: the label map holds every mask pixel exactly once.
    assert int((labels >= 0).sum()) == int(seg.areas_px.sum())
    tissue = tissue_mask_on_image(sam_image.image)
    assert seg.tissue_area_px == int(tissue.sum())
    assert not (labels[~tissue] >= 0).any()
    # Most tissue is in some region; segments differ in colour (epidermis vs dermis on CMU-1).
    assert (labels >= 0).sum() > 0.5 * tissue.sum()
    big = np.argsort(seg.areas_px)[::-1][:4]
    means = np.array([sam_image.image[labels == k].mean(axis=0) for k in big])
    assert np.abs(means[:, None] - means[None]).max() > 20


def test_fallback_is_deterministic_and_seeded(real_fallback):
    sam_image, seg, _ = real_fallback
    again = fallback_segment(sam_image.image, SegmentConfig())
    np.testing.assert_array_equal(again.label_map, seg.label_map)
    other = fallback_segment(sam_image.image, SegmentConfig(fallback_n_clusters=3))
    assert not np.array_equal(other.label_map, seg.label_map)


def test_fallback_on_synthetic_annulus_splits_the_ring(annulus_slide):
    path, truth = annulus_slide
    r, (cx, cy) = truth["radius_px"], truth["centre_xy"]
    with open_slide(path) as reader:
        sam_image, seg = segment_slide(
            reader, (int(cx - r), int(cy - r), int(cx + r), int(cy + r)), SegmentConfig(segmenter="fallback")
        )
    # One flat colour: the spatial term splits the ring into compact pieces.
    assert seg.n_masks >= 2
    h, w = sam_image.size_hw
    assert seg.label_map[h // 2, w // 2] == -1  # the white hole is no segment


def test_blank_image_is_a_clear_error():
    with pytest.raises(SegmentationError, match="no tissue"):
        fallback_segment(np.full((64, 64, 3), 245, np.uint8), SegmentConfig())


def test_patches_on_real_slide_get_segments(real_fallback):
    sam_image, seg, _ = real_fallback
    xs, ys = np.meshgrid(np.arange(0, 2220 - 256, 256), np.arange(0, 2967 - 256, 256))
    coords = np.stack([xs.ravel(), ys.ravel()], axis=1)
    a = assign_patches(seg, sam_image, coords, 256)
    assert a.segmenter == "fallback_kmeans"
    assert (a.segment_id >= 0).sum() > len(coords) // 3
    assert (a.segment_id == -1).any()  # the glass at the left edge
    # A 64 px footprint spans several fallback regions: patches are in more groups than one.
    assert len(a.membership_patch) > (a.segment_id >= 0).sum()


def test_label_map_and_overlay_files(real_fallback, tmp_path):
    sam_image, seg, _ = real_fallback
    png = save_overlay_png(tmp_path / "overlay.png", sam_image.image, seg)
    npz = save_segmentation(tmp_path / "segments.npz", sam_image, seg)
    assert not list(tmp_path.glob("*.partial"))
    overlay = np.asarray(Image.open(png))
    assert overlay.shape == sam_image.image.shape
    painted = seg.label_map >= 0
    assert (overlay[painted] != sam_image.image[painted]).any(axis=1).mean() > 0.9
    far = cv2.dilate(painted.astype(np.uint8), np.ones((5, 5), np.uint8)) == 0  # away from segment borders
    np.testing.assert_array_equal(overlay[far], sam_image.image[far])
    np.testing.assert_array_equal(render_overlay(sam_image.image, seg), overlay)
    image2, seg2 = load_segmentation(npz)
    np.testing.assert_array_equal(seg2.label_map, seg.label_map)
    np.testing.assert_array_equal(image2.image, sam_image.image)
    assert seg2.segmenter == "fallback_kmeans"
    assert seg2.config == seg.config


def test_load_rejects_other_files(tmp_path):
    bad = tmp_path / "x.npz"
    bad.write_bytes(b"nope")
    with pytest.raises(SegmentationError, match="x.npz"):
        load_segmentation(bad)
    with pytest.raises(SegmentationError, match="not found"):
        load_segmentation(tmp_path / "missing.npz")


def test_config_validation_and_resolution(tmp_path):
    assert SegmentConfig().resolved_segmenter == "fallback"
    ckpt = tmp_path / "sam.pth"
    cfg = from_mapping(SegmentConfig, {"sam_checkpoint": str(ckpt), "membership": "official"})
    assert cfg.sam_checkpoint == ckpt
    assert cfg.resolved_segmenter == "sam"
    assert (cfg.points_per_side, cfg.crop_n_layers, cfg.crop_n_points_downscale_factor) == (32, 1, 2)
    assert (cfg.pred_iou_thresh, cfg.stability_score_thresh) == (0.6, 0.6)
    with pytest.raises(ConfigError, match="no segment.sam_checkpoint"):
        SegmentConfig(segmenter="sam")
    with pytest.raises(ConfigError, match="drop one"):
        SegmentConfig(segmenter="fallback", sam_checkpoint=ckpt)
    with pytest.raises(ConfigError, match="membership"):
        SegmentConfig(membership="centre")
    with pytest.raises(ConfigError, match="did you mean"):
        from_mapping(SegmentConfig, {"points_per_slide": 32})
    with pytest.raises(ConfigError, match="odd"):
        SegmentConfig(fallback_smooth_px=4)
