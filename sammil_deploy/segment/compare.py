"""Compare two mask sets of the same image: best-match IoU per mask, both ways (generator equality checks)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sammil_deploy.segment.segmentation import Segmentation


@dataclass(frozen=True)
class MaskAgreement:
    """How well two mask sets of one image agree.

    Attributes:
        n_reference: Masks in the reference set.
        n_candidate: Masks in the candidate set.
        min_iou_reference: Lowest, over reference masks, of the best IoU with a candidate mask (1.0 when both
            sets are empty; 0.0 when only one is).
        min_iou_candidate: The same from the candidate side.
        median_iou: Median best IoU over the reference masks (1.0 when both sets are empty).
    """

    n_reference: int
    n_candidate: int
    min_iou_reference: float
    min_iou_candidate: float
    median_iou: float

    @property
    def min_iou(self) -> float:
        """The worst best-match IoU of either side: every mask has a partner at least this good."""
        return min(self.min_iou_reference, self.min_iou_candidate)

    def as_dict(self) -> dict[str, float | int]:
        """Benchmark-row notes: mask counts and the matched IoUs."""
        return {
            "masks_reference": self.n_reference,
            "masks": self.n_candidate,
            "matched_iou_min": round(self.min_iou, 6),
            "matched_iou_median": round(self.median_iou, 6),
        }


def best_match_ious(a: Segmentation, b: Segmentation) -> np.ndarray:
    """(a.n_masks,) float64: for each mask of ``a``, its highest IoU with any mask of ``b`` (0 if none overlaps).

    Only pairs whose boxes overlap are compared, on the overlap of their crops.
    """
    best = np.zeros(a.n_masks, np.float64)
    if a.n_masks == 0 or b.n_masks == 0:
        return best
    ba, bb = a.bbox_xyxy.astype(np.int64), b.bbox_xyxy.astype(np.int64)
    x0 = np.maximum(ba[:, None, 0], bb[None, :, 0])
    y0 = np.maximum(ba[:, None, 1], bb[None, :, 1])
    x1 = np.minimum(ba[:, None, 2], bb[None, :, 2])
    y1 = np.minimum(ba[:, None, 3], bb[None, :, 3])
    area_a, area_b = a.areas_px.astype(np.int64), b.areas_px.astype(np.int64)
    for i, j in zip(*np.nonzero((x1 > x0) & (y1 > y0)), strict=True):
        ox0, oy0, ox1, oy1 = x0[i, j], y0[i, j], x1[i, j], y1[i, j]
        crop_a = a.crops[i][oy0 - ba[i, 1] : oy1 - ba[i, 1], ox0 - ba[i, 0] : ox1 - ba[i, 0]]
        crop_b = b.crops[j][oy0 - bb[j, 1] : oy1 - bb[j, 1], ox0 - bb[j, 0] : ox1 - bb[j, 0]]
        inter = int(np.count_nonzero(crop_a & crop_b))
        union = int(area_a[i] + area_b[j] - inter)
        if union > 0:
            best[i] = max(best[i], inter / union)
    return best


def mask_agreement(reference: Segmentation, candidate: Segmentation) -> MaskAgreement:
    """Best-match IoUs of ``candidate`` against ``reference``, both ways (see :class:`MaskAgreement`)."""
    if reference.n_masks == 0 and candidate.n_masks == 0:
        return MaskAgreement(0, 0, 1.0, 1.0, 1.0)
    ref_side = best_match_ious(reference, candidate)
    cand_side = best_match_ious(candidate, reference)
    return MaskAgreement(
        reference.n_masks,
        candidate.n_masks,
        float(ref_side.min()) if len(ref_side) else 0.0,
        float(cand_side.min()) if len(cand_side) else 0.0,
        float(np.median(ref_side)) if len(ref_side) else 0.0,
    )
