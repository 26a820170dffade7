"""Tissue pixels on the SAM image (CLAM-style saturation threshold), for area fractions and the fallback."""

from __future__ import annotations

import numpy as np

SATURATION_THRESH = 8  # CLAM's default sthresh on the HSV saturation channel (0-255)
_MEDIAN_PX = 7  # CLAM's default mthresh
_CLOSE_PX = 5


def tissue_mask_on_image(image: np.ndarray, saturation_thresh: int = SATURATION_THRESH) -> np.ndarray:
    """(H, W) bool tissue mask of an (H, W, 3) uint8 RGB image.

    Median-blurred HSV saturation above ``saturation_thresh`` (glass and white background are unsaturated),
    then a small morphological close to fill pinholes. Deterministic, no parameters learned from the image.
    """
    import cv2

    saturation = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2HSV)[..., 1]
    saturation = cv2.medianBlur(saturation, _MEDIAN_PX)
    mask = (saturation > saturation_thresh).astype(np.uint8)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (_CLOSE_PX, _CLOSE_PX))
    return cv2.morphologyEx(mask, cv2.MORPH_CLOSE, kernel).astype(bool)
