"""Per-slide steps shared by ``extract`` and ``infer``: segments, spatial context, bag attrs.

Both encode patches with the one engine, :func:`sammil_deploy.features.engine.encode_patches`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from sammil_deploy.features.engine import resize_method

if TYPE_CHECKING:
    from sammil_deploy.features.bag import SpatialContext
    from sammil_deploy.patching import PatchGrid
    from sammil_deploy.segment import PatchAssignment, SamImage, Segmentation, SegmentConfig, Segmenter
    from sammil_deploy.slide import SlideInfo, SlideReader

log = logging.getLogger(__name__)

ProgressFn = Callable[[int, int], None]


def segment_patches(
    reader: SlideReader,
    bbox_level0: tuple[int, int, int, int],
    coords_level0_xy: np.ndarray,
    patch_size_level0_px: int,
    cfg: SegmentConfig,
    *,
    segmenter: Segmenter | None = None,
) -> tuple[SamImage, Segmentation, PatchAssignment]:
    """Segment the tissue box (:func:`sammil_deploy.segment.segment_slide`) and assign every patch to its masks.

    Args:
        reader: An open slide.
        bbox_level0: (x0, y0, x1, y1) level-0 union box of the tissue contours.
        coords_level0_xy: (N, 2) int64 patch top-left corners.
        patch_size_level0_px: Patch footprint side in level-0 px.
        cfg: Segmenter settings and membership mode.
        segmenter: Built once with :func:`sammil_deploy.segment.create_segmenter` (PyTorch SAM, SAM on exported
            graphs, or the fallback) and reused across slides; built from ``cfg`` when None.

    Returns:
        The SAM image, its masks and the per-patch assignment.
    """
    from sammil_deploy.segment import assign_patches, segment_slide

    sam_image, segmentation = segment_slide(reader, bbox_level0, cfg, segmenter=segmenter)
    assignment = assign_patches(segmentation, sam_image, coords_level0_xy, patch_size_level0_px, mode=cfg.membership)
    return sam_image, segmentation, assignment


def spatial_context(features: np.ndarray, assignment: PatchAssignment) -> SpatialContext:
    """The bag's spatial context: the assignment plus one mean-feature group token per segment (Eq. 3).

    Args:
        features: (N, D) float32 patch features, rows in grid order.
        assignment: From :func:`segment_patches`.
    """
    from sammil_deploy.features.bag import SpatialContext, group_features_from_memberships

    return SpatialContext(
        segment_id=assignment.segment_id,
        segment_area_px=assignment.segment_area_px,
        membership_patch=assignment.membership_patch,
        membership_mask=assignment.membership_mask,
        group_ids=assignment.group_ids,
        group_area_px=assignment.group_area_px,
        group_features=group_features_from_memberships(
            features, assignment.membership_patch, assignment.membership_mask, assignment.group_ids
        ),
        tissue_area_px=assignment.tissue_area_px,
        segmenter=assignment.segmenter,
    )


def bag_attrs(
    *,
    encoder_meta: dict[str, Any],
    interpolation: str,
    precision: str,
    extract_config: dict[str, Any],
    info: SlideInfo,
    grid: PatchGrid,
    segmenter_config: dict[str, Any],
    membership: str,
    feature_backend: str = "unknown",
    slide_reader: str = "unknown",
    resize_place: str = "host",
) -> dict[str, Any]:
    """Feature-file provenance: encoder and weights, every stage config, slide geometry (the store adds the version)."""
    return {
        "encoder": encoder_meta["name"],
        "encoder_meta": encoder_meta,
        "encoder_weights_sha256": encoder_meta["weights_sha256"],
        "resize_interpolation": interpolation,
        "resize_method": resize_method(interpolation, resize_place),
        "feature_backend": feature_backend,
        "slide_reader": slide_reader,
        "precision": precision,
        "extract_config": extract_config,
        "segmenter_config": segmenter_config,
        "membership_mode": membership,
        "slide_mpp": info.mpp,
        "slide_mpp_source": info.mpp_source,
        "slide_width_px": info.dimensions_wh[0],
        "slide_height_px": info.dimensions_wh[1],
        "patch_size_px": grid.read_size_px,
        "target_mpp": grid.target_mpp,
    }
