"""Spatial context: SAM automatic masks (or a classical fallback) → per-patch segments and group memberships.

Front door (every caller: ``extract``, ``add-context``, ``infer``, the demo)::

    segmenter = create_segmenter(SegmentConfig(sam_checkpoint=path))  # once: loads SAM / wraps sessions
    sam_image, segmentation = segment_slide(reader, bbox_level0, cfg, segmenter=segmenter)
    assignment = assign_patches(segmentation, sam_image, coords_level0_xy, patch_size_level0_px)

Segmenters are registered by name (``segmenters.py``): ``sam_torch_fast``, ``sam_torch_reference``,
``sam_exported`` (ONNX Runtime / TensorRT) and ``fallback``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from sammil_deploy.segment.assign import PatchAssignment, assign_patches
from sammil_deploy.segment.config import SegmentConfig
from sammil_deploy.segment.sam_image import SamImage, read_sam_image
from sammil_deploy.segment.segmentation import BACKGROUND, Segmentation
from sammil_deploy.segment.segmenters import Segmenter, create_segmenter, register_segmenter

if TYPE_CHECKING:
    from segment_anything.modeling import Sam

    from sammil_deploy.slide import SlideReader

__all__ = [
    "BACKGROUND",
    "PatchAssignment",
    "SamImage",
    "SegmentConfig",
    "Segmentation",
    "Segmenter",
    "assign_patches",
    "create_segmenter",
    "read_sam_image",
    "register_segmenter",
    "segment_image",
    "segment_slide",
]


def segment_slide(
    reader: SlideReader,
    bbox_level0: tuple[int, int, int, int],
    cfg: SegmentConfig,
    *,
    segmenter: Segmenter | None = None,
    sam: Sam | None = None,
) -> tuple[SamImage, Segmentation]:
    """Read the tissue bounding box as SAM-MIL's SAM image and segment it.

    Args:
        reader: An open slide.
        bbox_level0: (x0, y0, x1, y1) level-0 union bounding box of all tissue contours.
        cfg: Which segmenter runs (``cfg.resolved_segmenter``), its settings and the membership mode (which
            chooses the SAM-image geometry rule).
        segmenter: Built once with :func:`create_segmenter` and reused across slides; built from ``cfg`` (and
            ``sam``) when None.
        sam: A preloaded PyTorch SAM (``automask.load_sam(cfg)``), when ``segmenter`` is None.

    Returns:
        The SAM image and its segmentation; ``segmentation.segmenter`` records which segmenter ran.
    """
    sam_image = read_sam_image(reader, bbox_level0, cfg.long_side_px, official=cfg.membership == "official")
    return sam_image, segment_image(sam_image.image, cfg, segmenter=segmenter, sam=sam)


def segment_image(
    image: np.ndarray, cfg: SegmentConfig, *, segmenter: Segmenter | None = None, sam: Sam | None = None
) -> Segmentation:
    """Segment an (H, W, 3) uint8 RGB image with ``segmenter``, or with the one ``cfg`` selects."""
    if segmenter is None:
        reuse = {"sam": sam} if sam is not None and cfg.resolved_segmenter == "sam" else {}
        segmenter = create_segmenter(cfg, **reuse)
    return segmenter.segment(image)
