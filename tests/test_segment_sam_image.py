"""The SAM image follows SAM-MIL's downsample, level rule and residual bicubic resize."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from sammil_deploy.errors import SegmentationError
from sammil_deploy.segment.sam_image import official_geometry, read_sam_image, sam_read_level
from sammil_deploy.slide import open_slide


@pytest.mark.parametrize(
    ("downsamples", "target", "level"),
    [
        ((1.0, 4.0, 16.0), 8, 1),  # 16 > 8 is one too far
        ((1.0, 4.0, 16.0), 4, 1),  # int(4) > 4 is false: level 1 is allowed
        ((1.0, 4.0, 16.0), 2, 0),
        ((1.0, 4.0, 16.0), 64, 2),  # nothing exceeds 64: the last level
        ((1.0, 4.000347, 16.00139), 16, 2),  # int() truncates Aperio's inexact downsamples
        ((1.0,), 4, 0),
    ],
)
def test_read_level_rule(downsamples, target, level):
    assert sam_read_level(downsamples, target) == level


def test_real_slide_single_level_residual_resize(real_slide_path):
    with open_slide(real_slide_path) as reader:
        sam_image = read_sam_image(reader, (0, 0, 2219, 2966))
        full = reader.read_region((0, 0), 0, (2219, 2966))
    # Long side 2966 -> D = 4; only level 0 exists, so a residual x4 bicubic resize: 2219 // 4, 2966 // 4.
    assert sam_image.level == 0
    assert sam_image.residual_downsample == 4
    assert sam_image.downsample == 4.0
    assert sam_image.image.shape == (741, 554, 3)
    assert sam_image.image.dtype == np.uint8
    expected = np.asarray(Image.fromarray(full).resize((554, 741), Image.Resampling.BICUBIC))
    np.testing.assert_array_equal(sam_image.image, expected)


def test_configurable_long_side_and_offset_bbox(real_slide_path):
    with open_slide(real_slide_path) as reader:
        sam_image = read_sam_image(reader, (100, 200, 2100, 2900), long_side_px=256)
    assert sam_image.residual_downsample == 16  # 2700 / 256 -> D = 16
    assert sam_image.image.shape[:2] == (2700 // 16, 2000 // 16)
    assert sam_image.origin_level0_xy == (100, 200)
    np.testing.assert_allclose(sam_image.level0_to_image_xy(np.array([[100 + 32, 200 + 48]])), [[2.0, 3.0]])


def test_pyramid_reads_the_level_below_d(annulus_slide):
    path, truth = annulus_slide
    r = truth["radius_px"]
    cx, cy = truth["centre_xy"]
    bbox = (int(cx - r), int(cy - r), int(cx + r), int(cy + r))  # 7000 px -> D = 8
    with open_slide(path) as reader:
        sam_image = read_sam_image(reader, bbox)
    assert sam_image.level == 1
    assert sam_image.level_downsample == pytest.approx(4.0)
    assert sam_image.residual_downsample == 2
    assert sam_image.downsample == pytest.approx(8.0)
    assert sam_image.official_downsample == 8
    side = (bbox[2] // 4 - bbox[0] // 4) // 2
    assert sam_image.image.shape == (side, side, 3)
    assert 512 < max(sam_image.image.shape[:2]) <= 1024
    # The annulus centre is the hole (white), the ring is purple.
    mid = side // 2
    assert sam_image.image[mid, mid].mean() > 230
    ring = int(mid + (truth["radius_px"] + truth["hole_radius_px"]) / 2 / 8)
    assert sam_image.image[mid, ring, 1] < 150


def test_bad_bbox_is_a_segmentation_error(real_slide_path):
    with open_slide(real_slide_path) as reader, pytest.raises(SegmentationError, match="outside the slide"):
        read_sam_image(reader, (5000, 0, 6000, 100))


def test_official_geometry_uses_per_axis_integer_downsamples():
    # Rounded level sizes: 10001 / 2501 = 3.9988 on x, 8000 / 2000 = 4 on y; OpenSlide reports their mean 3.9994,
    # whose int() is 3 on both axes. SAM-MIL takes int() per axis: 3 on x, 4 on y.
    dims = ((10001, 8000), (2501, 2000), (625, 500))
    openslide_ds = (1.0, (10001 / 2501 + 4.0) / 2, 16.0)
    bbox = (1000, 800, 9001, 7401)  # 8001 px wide: D = 8
    level, residual, (w, h) = official_geometry(dims, openslide_ds, bbox, 8)
    assert level == 1
    assert residual == int(8 / 3)  # SAM-MIL's residual uses the x axis
    assert w == int(9001 / 3) - int(1000 / 3)
    assert h == 7401 // 4 - 800 // 4  # not 7401 // 3 - 800 // 3, as int(3.9994) would give
    # Both axes must exceed D for a level to be one too far: int(3.9988) = 3 keeps level 1 at D = 2 as well.
    assert official_geometry(dims, openslide_ds, (0, 0, 2001, 1601), 2)[0] == 0
    assert official_geometry(dims, openslide_ds, (0, 0, 4001, 3201), 4)[0] == 1
    # Exact pyramids: the per-axis rule and ours agree.
    exact = ((8192, 4096), (2048, 1024), (512, 256))
    assert official_geometry(exact, (1.0, 4.0, 16.0), (0, 0, 8192, 4096), 8) == (1, 2, (2048, 1024))
