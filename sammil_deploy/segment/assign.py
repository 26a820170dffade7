"""Patch → mask assignment: memberships (many-to-many), each patch's category (smallest mask) and its area.

A patch belongs to every mask that its footprint on the SAM image touches (SAM-MIL Eq. 3: masks overlap, so a
patch may be in several groups). Its *segment category* is its smallest containing mask; the category's area is
that mask's pixel count on the SAM image (SAM-MIL's ``relative_area``).

Two membership modes:

- ``footprint`` (default): the patch's whole footprint, i.e. every SAM-image pixel its level-0 square overlaps,
  at least one pixel.
- ``official``: SAM-MIL's ``is_patch_in_segmentation``: the patch's top-left corner, rounded to the SAM image
  with scale f = int(level downsample) x residual, must lie in the mask's box (half-open on SAM's XYWH box, so
  the last row/column is excluded), and a mask pixel must be set in the s x s window at that corner, with
  s = patch_size // f. This misses masks the rest of the patch touches and is never true when f > patch size
  (s = 0); offered only to reproduce official files.

Counting is vectorised: one summed-area table per mask crop, queried for all candidate patches at once (the
loop is over masks; patches are pre-selected per mask by a sorted x-range search).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from sammil_deploy.errors import ConfigError, SegmentationError
from sammil_deploy.segment.sam_image import SamImage
from sammil_deploy.segment.segmentation import BACKGROUND, Segmentation

log = logging.getLogger(__name__)

_EPS = 1e-6  # keeps float noise at exact pixel borders from adding a pixel row/column


@dataclass(frozen=True)
class PatchAssignment:
    """Spatial context of N patches; maps one-to-one onto ``features.bag.SpatialContext`` (minus group features).

    Attributes:
        segment_id: (N,) int64 smallest mask the patch is in, ``-1`` if none (ties: lower mask id).
        segment_area_px: (N,) int64 that mask's SAM-image pixel count, 0 if none.
        membership_patch: (M,) int64 patch row of each (patch, mask) membership, sorted by mask then patch.
        membership_mask: (M,) int64 mask id of each membership.
        group_ids: (G,) int64 ascending mask ids with at least one member (one group token each).
        group_area_px: (G,) int64 pixel count of each group's mask.
        tissue_area_px: Tissue pixels on the SAM image.
        segmenter: Which segmenter produced the masks.
        mode: ``"footprint"`` or ``"official"``.
    """

    segment_id: np.ndarray
    segment_area_px: np.ndarray
    membership_patch: np.ndarray
    membership_mask: np.ndarray
    group_ids: np.ndarray
    group_area_px: np.ndarray
    tissue_area_px: int
    segmenter: str
    mode: str

    @property
    def n_patches(self) -> int:
        """Number of patches N."""
        return int(len(self.segment_id))

    @property
    def segment_area_fraction(self) -> np.ndarray:
        """(N,) float64 category area as a fraction of the tissue area (0 for no segment or unknown tissue)."""
        if self.tissue_area_px <= 0:
            return np.zeros(self.n_patches, np.float64)
        return self.segment_area_px / float(self.tissue_area_px)


# No patch joins a 1-px mask: its area 1 would read as "no mask" in the official layout's relative_area (where 1
# means no mask). SAM-MIL's own corner test cannot join one either: SAM's box of a 1-px mask has width 0.
MIN_JOINABLE_AREA_PX = 2


def assign_patches(
    segmentation: Segmentation,
    sam_image: SamImage,
    coords_level0_xy: np.ndarray,
    patch_size_level0_px: int,
    mode: str = "footprint",
) -> PatchAssignment:
    """Assign N level-0 patches to the masks of ``segmentation``.

    Args:
        segmentation: Masks on ``sam_image``.
        sam_image: Gives the level-0 → SAM-image mapping.
        coords_level0_xy: (N, 2) int top-left corners in level-0 pixels.
        patch_size_level0_px: Patch side in level-0 pixels.
        mode: ``"footprint"`` or ``"official"`` (see the module docstring).

    Returns:
        The assignment; patches outside every mask get ``segment_id`` -1 and area 0.

    Raises:
        ConfigError: Unknown ``mode`` or non-positive patch size.
        SegmentationError: If the segmentation was made on an image of another size.
    """
    if mode not in ("footprint", "official"):
        raise ConfigError(f"membership mode must be 'footprint' or 'official', got {mode!r}")
    if patch_size_level0_px <= 0:
        raise ConfigError(f"patch_size_level0_px must be > 0, got {patch_size_level0_px}")
    if tuple(segmentation.image_hw) != sam_image.size_hw:
        raise SegmentationError(
            f"segmentation is for a {segmentation.image_hw} image but the SAM image is {sam_image.size_hw}; "
            "segment the same SAM image you assign patches on"
        )
    coords = np.asarray(coords_level0_xy, np.int64).reshape(-1, 2)
    if mode == "footprint":
        rects, corner_ok = _footprint_rects(sam_image, coords, patch_size_level0_px), None
    else:
        rects, corner_ok = _official_rects(sam_image, coords, patch_size_level0_px)
    member_patch, member_mask = _memberships(segmentation, rects, official=corner_ok is not None)
    return _summarise(segmentation, len(coords), member_patch, member_mask, mode)


def _footprint_rects(sam_image: SamImage, coords: np.ndarray, patch_px: int) -> np.ndarray:
    """(N, 4) int64 [x0, y0, x1, y1) pixel rectangles each footprint overlaps, clipped to the image."""
    h, w = sam_image.size_hw
    start = sam_image.level0_to_image_xy(coords)
    stop = sam_image.level0_to_image_xy(coords + patch_px)
    lo = np.floor(start + _EPS).astype(np.int64)
    hi = np.maximum(np.ceil(stop - _EPS).astype(np.int64), lo + 1)  # at least one pixel
    limits = np.array([w, h], np.int64)
    lo, hi = np.clip(lo, 0, limits), np.clip(hi, 0, limits)
    return np.concatenate([lo, hi], axis=1)


def _official_rects(sam_image: SamImage, coords: np.ndarray, patch_px: int) -> tuple[np.ndarray, np.ndarray]:
    """SAM-MIL's corner window: (N, 4) rectangles [cx, cy, cx + s, cy + s) and the (N, 2) rounded corners."""
    f = sam_image.official_downsample
    side = patch_px // f
    if side == 0:
        log.warning(
            "official membership: patch size %d px // SAM downsample %d = 0, so no patch is in any mask "
            "(SAM-MIL's silent failure); use membership 'footprint'",
            patch_px,
            f,
        )
    origin = np.asarray(sam_image.origin_level0_xy, np.int64)
    corner = np.rint((coords - origin) / f).astype(np.int64)  # numpy round: half to even, as SAM-MIL
    return np.concatenate([corner, corner + side], axis=1), corner


def _memberships(seg: Segmentation, rects: np.ndarray, *, official: bool) -> tuple[np.ndarray, np.ndarray]:
    """(M,) patch rows and (M,) mask ids of every (patch, mask) pair whose rectangle holds a mask pixel."""
    if len(rects) == 0 or seg.n_masks == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    order = np.argsort(rects[:, 0], kind="stable")
    x0_sorted = rects[order, 0]
    max_width = int((rects[:, 2] - rects[:, 0]).max())
    patches: list[np.ndarray] = []
    masks: list[np.ndarray] = []
    areas = seg.areas_px
    for k in range(seg.n_masks):
        if areas[k] < MIN_JOINABLE_AREA_PX:
            continue
        bx0, by0, bx1, by1 = (int(v) for v in seg.bbox_xyxy[k])
        # Candidates: rectangles starting in [bx0 - max_width, bx1), i.e. possibly overlapping the box in x.
        lo, hi = np.searchsorted(x0_sorted, [bx0 - max_width, bx1], side="left")
        cand = order[lo:hi]
        r = rects[cand]
        if official:
            # Corner in SAM's XYWH box, half-open: [bx0, bx1 - 1) because SAM's w is max - min.
            keep = (r[:, 0] >= bx0) & (r[:, 0] < bx1 - 1) & (r[:, 1] >= by0) & (r[:, 1] < by1 - 1)
            cand, r = cand[keep], r[keep]
        ix0 = np.clip(r[:, 0], bx0, bx1) - bx0
        iy0 = np.clip(r[:, 1], by0, by1) - by0
        ix1 = np.clip(r[:, 2], bx0, bx1) - bx0
        iy1 = np.clip(r[:, 3], by0, by1) - by0
        inside = (ix1 > ix0) & (iy1 > iy0)
        if not inside.any():
            continue
        cand, ix0, iy0, ix1, iy1 = cand[inside], ix0[inside], iy0[inside], ix1[inside], iy1[inside]
        sat = _summed_area_table(seg.crops[k])
        count = sat[iy1, ix1] - sat[iy0, ix1] - sat[iy1, ix0] + sat[iy0, ix0]
        hit = np.sort(cand[count > 0])
        patches.append(hit)
        masks.append(np.full(len(hit), k, np.int64))
    if not patches:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(patches).astype(np.int64), np.concatenate(masks)


def _summed_area_table(crop: np.ndarray) -> np.ndarray:
    """(h + 1, w + 1) int64 table with table[y, x] = number of set pixels in crop[:y, :x]."""
    sat = np.zeros((crop.shape[0] + 1, crop.shape[1] + 1), np.int64)
    np.cumsum(np.cumsum(crop, axis=0, dtype=np.int64), axis=1, out=sat[1:, 1:])
    return sat


def _summarise(
    seg: Segmentation, n_patches: int, member_patch: np.ndarray, member_mask: np.ndarray, mode: str
) -> PatchAssignment:
    areas = seg.areas_px
    segment_id = np.full(n_patches, BACKGROUND, np.int64)
    segment_area = np.zeros(n_patches, np.int64)
    if len(member_patch):
        # Per patch, the membership with the smallest area (then the lowest mask id) is its category.
        order = np.lexsort((member_mask, areas[member_mask], member_patch))
        sorted_patch = member_patch[order]
        first = order[np.flatnonzero(np.r_[True, sorted_patch[1:] != sorted_patch[:-1]])]
        segment_id[member_patch[first]] = member_mask[first]
        segment_area[member_patch[first]] = areas[member_mask[first]]
    group_ids = np.unique(member_mask).astype(np.int64)
    return PatchAssignment(
        segment_id=segment_id,
        segment_area_px=segment_area,
        membership_patch=member_patch,
        membership_mask=member_mask,
        group_ids=group_ids,
        group_area_px=areas[group_ids].astype(np.int64),
        tissue_area_px=seg.tissue_area_px,
        segmenter=seg.segmenter,
        mode=mode,
    )
