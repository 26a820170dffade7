"""Tissue detection: CLAM segmentation semantics, presets, errors, and the vectorised point-in-polygon test."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from sammil_deploy.errors import ConfigError, TissueError
from sammil_deploy.slide import open_slide
from sammil_deploy.tissue import TissueConfig, detect_tissue, point_polygon_test, select_seg_level, tissue_preset


def _opencv_reference(polygon: np.ndarray, points: np.ndarray) -> np.ndarray:
    contour = polygon.reshape(-1, 1, 2).astype(np.int32)
    return np.array([cv2.pointPolygonTest(contour, (float(x), float(y)), False) for x, y in points]).astype(int)


@pytest.mark.parametrize("approx", [cv2.CHAIN_APPROX_NONE, cv2.CHAIN_APPROX_SIMPLE])
def test_point_polygon_test_matches_opencv_including_boundary(approx):
    rng = np.random.default_rng(0)
    for _ in range(40):
        blob = np.zeros((64, 64), np.uint8)
        for _ in range(4):
            centre = (int(rng.integers(6, 58)), int(rng.integers(6, 58)))
            cv2.circle(blob, centre, int(rng.integers(3, 16)), 255, -1)
        contours, _ = cv2.findContours(blob, cv2.RETR_CCOMP, approx)
        polygon = contours[0].reshape(-1, 2) * int(rng.integers(1, 9))
        points = np.concatenate(
            [
                rng.integers(-5, 520, (300, 2)).astype(float),
                rng.integers(-10, 1040, (150, 2)) / 2,  # half-integer points (CLAM's hole-test centres)
                polygon[:40].astype(float),  # vertices: on the boundary
                (polygon + np.roll(polygon, -1, axis=0))[:20] / 2,  # edge midpoints: on the boundary
            ]
        )
        ours = point_polygon_test(polygon, points)
        np.testing.assert_array_equal(ours, _opencv_reference(polygon, points))


def test_point_polygon_test_empty_inputs():
    assert point_polygon_test(np.zeros((0, 2)), np.ones((3, 2))).tolist() == [-1, -1, -1]
    assert point_polygon_test(np.array([[0, 0], [4, 0], [4, 4]]), np.zeros((0, 2))).shape == (0,)


def test_annulus_default_config_finds_one_contour_with_its_hole(annulus_slide):
    path, truth = annulus_slide
    with open_slide(path) as reader:
        result = detect_tissue(reader, TissueConfig())
    assert result.seg_level == 2  # downsample 16 is the coarsest level <= 64
    assert result.seg_downsample_xy == (16.0, 16.0)
    assert result.n_contours == 1
    assert result.n_holes == 1
    expected_area = math.pi * (truth["radius_px"] ** 2 - truth["hole_radius_px"] ** 2)
    assert result.tissue_area_level0_px2 == pytest.approx(expected_area, rel=0.03)
    cx, cy = truth["centre_xy"]
    r = truth["radius_px"]
    # Within 4 seg-level pixels: JPEG chroma bleeding passes sthresh 8, and a 4x4 closing is not centred.
    assert result.bbox_level0 == pytest.approx((cx - r, cy - r, cx + r, cy + r), abs=4 * 16)
    # Contour vertices lie on the outer circle, hole vertices on the inner one.
    radii = np.hypot(*(result.contours_level0_xy[0] - truth["centre_xy"]).T)
    hole_radii = np.hypot(*(result.holes_level0_xy[0][0] - truth["centre_xy"]).T)
    assert np.abs(radii - r).max() < 4 * 16
    assert np.abs(hole_radii - truth["hole_radius_px"]).max() < 4 * 16
    assert result.contours_level0_xy[0].dtype == np.int32
    # The mask is the annulus at the seg level: centre cleared (hole), ring set, corner clear.
    mask = result.mask
    assert mask.shape == (512, 512)
    assert not mask[256, 256]
    assert mask[256, 256 + 150]
    assert not mask[5, 5]
    assert mask.mean() == pytest.approx(expected_area / 8192**2, rel=0.05)


def test_real_slide_with_biopsy_preset(real_slide_path):
    with open_slide(real_slide_path) as reader:
        result = detect_tissue(reader, TissueConfig(**tissue_preset("bwh_biopsy")))
        w0, h0 = reader.info.dimensions_wh
    assert result.seg_level == 0  # single-level slide
    assert result.n_contours >= 1
    x0, y0, x1, y1 = result.bbox_level0
    assert 0 <= x0 < x1 < w0
    assert 0 <= y0 < y1 < h0
    # The tissue strip covers roughly 40% of this region; the mask and the polygon areas agree.
    assert 0.2 < result.mask.mean() < 0.6
    assert result.tissue_area_level0_px2 == pytest.approx(result.mask.sum(), rel=0.03)


def test_clam_default_area_filter_rejects_small_region_with_a_hint(real_slide_path):
    # CMU-1-Small-Region holds ~9 reference patches of tissue; CLAM's default a_t is 100.
    with open_slide(real_slide_path) as reader, pytest.raises(TissueError) as err:
        detect_tissue(reader, TissueConfig())
    message = str(err.value)
    assert "CMU-1-Small-Region.svs" in message
    assert "bwh_biopsy" in message
    assert "a_t=100" in message


def test_area_filter_threshold_is_in_reference_patches(annulus_slide):
    path, truth = annulus_slide
    net_patches = math.pi * (truth["radius_px"] ** 2 - truth["hole_radius_px"] ** 2) / 512**2  # ~127
    with open_slide(path) as reader:
        assert detect_tissue(reader, TissueConfig(a_t=net_patches * 0.9)).n_contours == 1
        with pytest.raises(TissueError, match="not above a_t"):
            detect_tissue(reader, TissueConfig(a_t=net_patches * 1.1))
        hole_patches = math.pi * truth["hole_radius_px"] ** 2 / 512**2  # ~20
        assert detect_tissue(reader, TissueConfig(a_h=hole_patches * 1.1)).n_holes == 0
        assert detect_tissue(reader, TissueConfig(max_n_holes=0)).n_holes == 0


def test_blank_slide_raises_tissue_error_naming_file(blank_slide):
    with open_slide(blank_slide) as reader:
        for cfg in (TissueConfig(), TissueConfig(use_otsu=True)):
            with pytest.raises(TissueError, match=r"blank\.svs: no tissue found"):
                detect_tissue(reader, cfg)


def test_otsu_finds_the_annulus(annulus_slide):
    with open_slide(annulus_slide[0]) as reader:
        assert detect_tissue(reader, TissueConfig(use_otsu=True)).n_contours == 1


def test_seg_level_selection_and_size_guard(annulus_slide):
    with open_slide(annulus_slide[0]) as reader:
        info = reader.info
        assert select_seg_level(info, TissueConfig(seg_downsample=4)) == 1
        assert select_seg_level(info, TissueConfig(seg_level=0)) == 0
        with pytest.raises(ConfigError, match="seg_level 5 does not exist"):
            select_seg_level(info, TissueConfig(seg_level=5))
        with pytest.raises(TissueError, match="coarser --seg-level"):
            detect_tissue(reader, TissueConfig(seg_level=1, max_seg_pixels=1_000_000))


def test_config_validation_and_presets():
    assert TissueConfig().a_t == 100
    assert TissueConfig().sthresh == 8
    assert TissueConfig().close == 4
    assert tissue_preset("tcga") == {"sthresh": 8, "mthresh": 7, "close": 4, "a_t": 16.0, "a_h": 4.0, "max_n_holes": 8}
    with pytest.raises(ConfigError, match="unknown tissue preset"):
        tissue_preset("nope")
    with pytest.raises(ConfigError, match="odd"):
        TissueConfig(mthresh=8)
    with pytest.raises(ConfigError, match="sthresh"):
        TissueConfig(sthresh=300)
