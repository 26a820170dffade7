"""Spatial context: SAM automatic masks (or a classical fallback) → per-patch segments and group memberships.

Front door::

    sam_image, segmentation = segment_slide(reader, bbox_level0, SegmentConfig(sam_checkpoint=path))
    assignment = assign_patches(segmentation, sam_image, coords_level0_xy, patch_size_level0_px)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from sammil_deploy.segment.assign import PatchAssignment, assign_patches
from sammil_deploy.segment.config import SegmentConfig
from sammil_deploy.segment.sam_image import SamImage, read_sam_image
from sammil_deploy.segment.segmentation import BACKGROUND, Segmentation

if TYPE_CHECKING:
    from segment_anything.modeling import Sam

    from sammil_deploy.slide import SlideReader

__all__ = [
    "BACKGROUND",
    "PatchAssignment",
    "SamImage",
    "SegmentConfig",
    "Segmentation",
    "assign_patches",
    "read_sam_image",
    "segment_image",
    "segment_slide",
]


def segment_slide(
    reader: SlideReader,
    bbox_level0: tuple[int, int, int, int],
    cfg: SegmentConfig,
    *,
    sam: Sam | None = None,
) -> tuple[SamImage, Segmentation]:
    """Read the tissue bounding box as SAM-MIL's SAM image and segment it.

    Args:
        reader: An open slide.
        bbox_level0: (x0, y0, x1, y1) level-0 union bounding box of all tissue contours.
        cfg: Which segmenter runs (``cfg.resolved_segmenter``) and its settings.
        sam: A preloaded SAM model (``automask.load_sam(cfg)``) to reuse across slides; built when None.

    Returns:
        The SAM image and its segmentation; ``segmentation.segmenter`` records which segmenter ran.
    """
    sam_image = read_sam_image(reader, bbox_level0, cfg.long_side_px, official=cfg.membership == "official")
    return sam_image, segment_image(sam_image.image, cfg, sam=sam)


def segment_image(image: np.ndarray, cfg: SegmentConfig, *, sam: Sam | None = None) -> Segmentation:
    """Segment an (H, W, 3) uint8 RGB image with SAM or the fallback, as ``cfg`` says."""
    if cfg.resolved_segmenter == "sam" and cfg.generator == "fast":
        from sammil_deploy.segment.fast_automask import fast_sam_segment

        return fast_sam_segment(image, cfg, sam=sam)
    if cfg.resolved_segmenter == "sam":
        from sammil_deploy.segment.automask import sam_segment

        return sam_segment(image, cfg, sam=sam)
    from sammil_deploy.segment.fallback import fallback_segment

    return fallback_segment(image, cfg)
