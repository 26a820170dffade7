"""The SAM image: the tissue bounding box read at SAM-MIL's power-of-two downsample.

SAM-MIL (``WholeSlideImage_modified.process_contours`` / ``visWSI``) reads the union bounding box of all tissue
contours at D = 2^ceil(log2(long side / 1024)): at the last level whose integer downsample does not exceed D,
then resizes by the remaining integer factor with PIL's default (bicubic) filter. We reproduce that exactly so
official segment files and ours share one pixel grid.

One detail differs between the two rules, and ``official=True`` follows SAM-MIL's: SAM-MIL's
``WholeSlideImage`` keeps a per-axis downsample per level (level-0 size / level size on each axis, when that is
not OpenSlide's single value) and takes ``int()`` of each axis — to pick the level (both axes must exceed D), to
size the region (per axis) and for the residual (x axis). A level whose OpenSlide downsample is just below a whole
number (3.9999 from rounded level sizes) then gets a different integer on one axis than ``int(3.9999) = 3``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sammil_deploy.errors import SegmentationError
from sammil_deploy.slide import SlideReader, downsample_for_long_side


@dataclass(frozen=True)
class SamImage:
    """The image SAM (or the fallback) segments, with its mapping to level 0.

    Attributes:
        image: (H, W, 3) uint8 RGB.
        origin_level0_xy: Level-0 (x, y) of the image's top-left pixel (the bounding box's min corner).
        downsample: Level-0 pixels per SAM-image pixel (level downsample x residual resize), float.
        level: Pyramid level the region was read at.
        level_downsample: That level's downsample to level 0 (float, as the slide reports it).
        residual_downsample: Extra integer resize factor applied after reading (1 = none).
        bbox_level0: (x0, y0, x1, y1) level-0 tissue bounding box that was read.
    """

    image: np.ndarray
    origin_level0_xy: tuple[int, int]
    downsample: float
    level: int
    level_downsample: float
    residual_downsample: int
    bbox_level0: tuple[int, int, int, int]

    @property
    def size_hw(self) -> tuple[int, int]:
        """(height, width) in SAM-image pixels."""
        return int(self.image.shape[0]), int(self.image.shape[1])

    @property
    def official_downsample(self) -> int:
        """SAM-MIL's scale f = int(level downsample) x residual, used by its corner-window membership test."""
        return int(self.level_downsample) * self.residual_downsample

    def level0_to_image_xy(self, xy_level0: np.ndarray) -> np.ndarray:
        """(N, 2) level-0 (x, y) → (N, 2) float64 SAM-image (x, y), continuous (pixel i spans [i, i+1))."""
        origin = np.asarray(self.origin_level0_xy, np.float64)
        return (np.asarray(xy_level0, np.float64) - origin) / self.downsample


def sam_read_level(level_downsamples: tuple[float, ...], downsample: int) -> int:
    """SAM-MIL's level rule: the first level whose ``int(downsample)`` exceeds D is one too far; else the last."""
    for level, level_ds in enumerate(level_downsamples):
        if int(level_ds) > downsample:
            return max(level - 1, 0)
    return len(level_downsamples) - 1


def official_level_downsamples(
    level_dimensions_wh: tuple[tuple[int, int], ...], level_downsamples: tuple[float, ...]
) -> list[tuple[float, float]]:
    """SAM-MIL's per-axis downsamples (CLAM's ``_assertLevelDownsamples``).

    Level-0 size / level size on each axis, or OpenSlide's value on both axes when those ratios equal it.
    """
    w0, h0 = level_dimensions_wh[0]
    out = []
    for downsample, (w, h) in zip(level_downsamples, level_dimensions_wh, strict=True):
        estimated = (w0 / float(w), h0 / float(h))
        out.append(estimated if estimated != (downsample, downsample) else (downsample, downsample))
    return out


def official_geometry(
    level_dimensions_wh: tuple[tuple[int, int], ...],
    level_downsamples: tuple[float, ...],
    bbox_level0: tuple[int, int, int, int],
    downsample: int,
) -> tuple[int, int, tuple[int, int]]:
    """SAM-MIL's level, residual factor and region size (w, h) at that level for target downsample D."""
    per_axis = official_level_downsamples(level_dimensions_wh, level_downsamples)
    level = len(per_axis) - 1
    for i, (ds_x, ds_y) in enumerate(per_axis):
        if int(ds_x) > downsample and int(ds_y) > downsample:
            level = max(i - 1, 0)
            break
    int_x, int_y = int(per_axis[level][0]), int(per_axis[level][1])
    residual = max(int(downsample / int_x), 1)
    x0, y0, x1, y1 = bbox_level0
    # visWSI: (corner * (1 / int(ds))).astype(int) per axis, float products included.
    size_w = int(x1 * (1.0 / int_x)) - int(x0 * (1.0 / int_x))
    size_h = int(y1 * (1.0 / int_y)) - int(y0 * (1.0 / int_y))
    return level, residual, (size_w, size_h)


def read_sam_image(
    reader: SlideReader, bbox_level0: tuple[int, int, int, int], long_side_px: int = 1024, *, official: bool = False
) -> SamImage:
    """Read the tissue bounding box as SAM-MIL does.

    Args:
        reader: An open slide.
        bbox_level0: (x0, y0, x1, y1) level-0 union bounding box of the tissue contours (x1, y1 are the max
            contour coordinates, as in SAM-MIL).
        long_side_px: Target long side; D = 2^ceil(log2(max(x1 - x0, y1 - y0) / long_side_px)), at least 1.
        official: Use SAM-MIL's per-axis integer downsamples (see the module docstring); the ``official``
            membership mode sets it, so official files match the official code on every pyramid.

    Returns:
        The SAM image; its long side is in (long_side_px / 2, long_side_px] for boxes larger than long_side_px.

    Raises:
        SegmentationError: If the box is empty or outside the slide.
    """
    from PIL import Image

    info = reader.info
    x0, y0, x1, y1 = (int(v) for v in bbox_level0)
    width0, height0 = info.dimensions_wh
    if x1 <= x0 or y1 <= y0 or x0 < 0 or y0 < 0 or x0 >= width0 or y0 >= height0:
        raise SegmentationError(
            f"{info.path.name}: tissue bounding box {bbox_level0} is empty or outside the slide "
            f"({width0}x{height0}); check the tissue detection"
        )
    target = downsample_for_long_side(max(x1 - x0, y1 - y0), long_side_px)
    if official:
        level, residual, (size_w, size_h) = official_geometry(
            info.level_dimensions_wh, info.level_downsamples, (x0, y0, x1, y1), target
        )
    else:
        level = sam_read_level(info.level_downsamples, target)
        int_ds = max(int(info.level_downsamples[level]), 1)
        residual = max(target // int_ds, 1)
        # Region size at the read level: floor of both corners, as SAM-MIL's visWSI does.
        size_w = x1 // int_ds - x0 // int_ds
        size_h = y1 // int_ds - y0 // int_ds
    level_ds = info.level_downsamples[level]
    region = reader.read_region((x0, y0), level, (size_w, size_h))
    if residual > 1:
        out_w, out_h = max(size_w // residual, 1), max(size_h // residual, 1)
        region = np.asarray(Image.fromarray(region).resize((out_w, out_h), Image.Resampling.BICUBIC))
    return SamImage(
        image=np.ascontiguousarray(region, dtype=np.uint8),
        origin_level0_xy=(x0, y0),
        downsample=float(level_ds) * residual,
        level=level,
        level_downsample=float(level_ds),
        residual_downsample=residual,
        bbox_level0=(x0, y0, x1, y1),
    )
