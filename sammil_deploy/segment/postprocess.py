"""Vectorised pieces of SAM's automatic-mask post-processing (torch on any device, numpy/OpenCV for cleanup).

Each function reproduces one step of ``segment_anything``'s ``SamAutomaticMaskGenerator`` / ``utils.amg`` with the
same numbers, but on batches without Python loops over masks, without full-image padding and without RLE:

- :func:`upscale_logits` is ``Sam.postprocess_masks`` (two bilinear resizes) for one crop's masks.
- :func:`stability_and_boxes` is ``calculate_stability_score`` + ``batched_mask_to_box`` in one pass.
- :func:`remove_small_regions_in_box` is ``amg.remove_small_regions`` (holes then islands) on a mask's tight box
  instead of the whole image, with the exact component sizes the whole image would give.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch


def upscale_logits(
    low_res: torch.Tensor, input_size_px: int, resized_hw: tuple[int, int], crop_hw: tuple[int, int]
) -> torch.Tensor:
    """Mask logits at crop resolution, exactly as ``Sam.postprocess_masks``.

    Args:
        low_res: (N, h, w) float low-resolution logits of the decoder (h = w = input_size_px / 4).
        input_size_px: Encoder input side S.
        resized_hw: (H', W') of the crop after ResizeLongestSide (the unpadded part of the S x S input).
        crop_hw: (H, W) of the crop in image pixels.

    Returns:
        (N, H, W) float logits.
    """
    from torch.nn import functional as F

    x = F.interpolate(low_res[:, None], (input_size_px, input_size_px), mode="bilinear", align_corners=False)
    x = x[..., : resized_hw[0], : resized_hw[1]]
    if tuple(resized_hw) == tuple(crop_hw):  # a same-size bilinear resize returns its input bit for bit
        return x[:, 0]
    return F.interpolate(x, crop_hw, mode="bilinear", align_corners=False)[:, 0]


def stability_and_boxes(
    logits: torch.Tensor, mask_threshold: float, offset: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Stability scores and tight boxes of thresholded masks, without materialising the binary masks.

    Args:
        logits: (N, H, W) float mask logits, H < 32768.
        mask_threshold: Logit cut that binarises a mask (SAM: 0.0).
        offset: Stability offset (SAM: 1.0): IoU of the masks cut at threshold + offset and threshold - offset.

    Returns:
        (N,) float32 stability scores (NaN for masks empty at threshold - offset, as upstream) and (N, 4) int64
        inclusive (x0, y0, x1, y1) boxes of ``logits > mask_threshold`` ([0, 0, 0, 0] for empty masks), as
        ``amg.calculate_stability_score`` and ``amg.batched_mask_to_box``.
    """
    inner = _count_above(logits, mask_threshold + offset)
    outer = _count_above(logits, mask_threshold - offset)
    # any(x > t) over a row is max(x) > t: a reduction over floats instead of a full bool mask.
    rows = logits.amax(dim=-1) > mask_threshold
    cols = logits.amax(dim=-2) > mask_threshold
    return inner / outer, _boxes_from_profiles(rows, cols)


def mask_boxes(binary: torch.Tensor) -> torch.Tensor:
    """(N, 4) int64 inclusive (x0, y0, x1, y1) boxes of (N, H, W) bool masks; [0, 0, 0, 0] for empty masks."""
    return _boxes_from_profiles(binary.any(dim=-1), binary.any(dim=-2))


def _count_above(logits: torch.Tensor, threshold: float) -> torch.Tensor:
    """(N,) int32 count of pixels above ``threshold``.

    Summing bytes down the rows into int16 (exact below 32768 rows), then along the row, is ~4x faster on a CPU
    than one int32 sum over both axes.
    """
    import torch

    above = (logits > threshold).view(torch.uint8)
    return above.sum(dim=-2, dtype=torch.int16).sum(dim=-1, dtype=torch.int32)


def _boxes_from_profiles(rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """Boxes from (N, H) "row has a pixel" and (N, W) "column has a pixel" flags."""
    import torch

    h, w = rows.shape[-1], cols.shape[-1]
    # argmax returns the first maximum: first set row/column; on the flipped axis, the last.
    y0 = rows.to(torch.uint8).argmax(dim=-1)
    y1 = h - 1 - rows.flip(-1).to(torch.uint8).argmax(dim=-1)
    x0 = cols.to(torch.uint8).argmax(dim=-1)
    x1 = w - 1 - cols.flip(-1).to(torch.uint8).argmax(dim=-1)
    boxes = torch.stack([x0, y0, x1, y1], dim=-1).to(torch.int64)
    return boxes * rows.any(dim=-1, keepdim=True)


def remove_small_regions_in_box(
    crop: np.ndarray, box_xyxy: tuple[int, int, int, int], image_hw: tuple[int, int], min_area_px: int
) -> tuple[np.ndarray, tuple[int, int, int, int], bool]:
    """Fill small holes, then drop small islands, of one mask given as its tight-box crop.

    Same result as ``amg.remove_small_regions(mask, min_area_px, "holes")`` followed by ``"islands"`` on the full
    (H, W) mask, at the cost of the box: a hole component that reaches the box border continues outside it, so
    its whole-image size is its size in the box plus the area of the outside region(s) it touches. Only when an
    outside region itself is small (a mask nearly covering the image) is the full image used.

    Args:
        crop: (y1 - y0, x1 - x0) bool mask inside its tight box.
        box_xyxy: (x0, y0, x1, y1) box, x1/y1 exclusive, image px.
        image_hw: (H, W) of the image.
        min_area_px: Regions (holes or islands) smaller than this are removed.

    Returns:
        The new crop and its tight exclusive box (the mask never grows outside the old box except in the
        full-image case), and whether anything changed.
    """
    filled, hole_changed = _fill_small_holes(crop, box_xyxy, image_hw, min_area_px)
    if filled is None:  # an outside region is itself a small hole: do it on the whole image
        full = np.zeros(image_hw, bool)
        x0, y0, x1, y1 = box_xyxy
        full[y0:y1, x0:x1] = crop
        full, hole_changed = _remove_regions_full(full, min_area_px, "holes")
        crop, box_xyxy = _tight(full, (0, 0, image_hw[1], image_hw[0]))
    else:
        crop = filled
    # Islands: every mask pixel lies in the box, so components in the box are the image's components.
    crop, island_changed = _remove_regions_full(crop, min_area_px, "islands")
    if island_changed:
        crop, box_xyxy = _tight(crop, box_xyxy)
    return crop, box_xyxy, hole_changed or island_changed


def _fill_small_holes(
    crop: np.ndarray, box_xyxy: tuple[int, int, int, int], image_hw: tuple[int, int], min_area_px: int
) -> tuple[np.ndarray | None, bool]:
    """Holes pass on the box plus a one-pixel ring of outside pixels (where the image has them)."""
    import cv2

    x0, y0, x1, y1 = box_xyxy
    img_h, img_w = image_hw
    pad_l, pad_t, pad_r, pad_b = int(x0 > 0), int(y0 > 0), int(x1 < img_w), int(y1 < img_h)
    window = np.pad(~crop, ((pad_t, pad_b), (pad_l, pad_r)), constant_values=True)
    _, labels, stats, _ = cv2.connectedComponentsWithStats(window.astype(np.uint8), connectivity=8)
    sizes = stats[:, cv2.CC_STAT_AREA].astype(np.int64)
    # Outside the box everything is background, so the ring stands for the outside region(s): those pixels are
    # replaced by the true outside areas. image \ box is one region unless the box spans the full width or height.
    ring = np.zeros(window.shape, bool)
    ring[: pad_t or None, :] = bool(pad_t)
    ring[window.shape[0] - pad_b :, :] |= bool(pad_b)
    ring[:, : pad_l or None] |= bool(pad_l)
    ring[:, window.shape[1] - pad_r :] |= bool(pad_r)
    np.subtract.at(sizes, labels[ring], 1)
    box_area = (x1 - x0) * (y1 - y0)
    spans_w, spans_h = x0 == 0 and x1 == img_w, y0 == 0 and y1 == img_h
    if spans_w and not spans_h:
        pieces = [(labels[0, 0], y0 * img_w)] if pad_t else []
        pieces += [(labels[-1, 0], (img_h - y1) * img_w)] if pad_b else []
    elif spans_h and not spans_w:
        pieces = [(labels[0, 0], x0 * img_h)] if pad_l else []
        pieces += [(labels[0, -1], (img_w - x1) * img_h)] if pad_r else []
    elif ring.any():
        pieces = [(labels[ring][0], img_h * img_w - box_area)]
    else:
        pieces = []
    for label, area in pieces:
        sizes[label] += area
    small = np.flatnonzero(sizes < min_area_px)
    small = small[small > 0]  # label 0 is the mask itself
    if len(small) == 0:
        return crop, False
    if any(label in small for label, _ in pieces):
        return None, True
    inner = labels[pad_t : window.shape[0] - pad_b, pad_l : window.shape[1] - pad_r]
    return crop | np.isin(inner, small), True


def _remove_regions_full(mask: np.ndarray, min_area_px: int, mode: str) -> tuple[np.ndarray, bool]:
    from segment_anything.utils.amg import remove_small_regions

    out, changed = remove_small_regions(mask, min_area_px, mode=mode)
    return np.asarray(out, bool), bool(changed)


def _tight(mask: np.ndarray, box_xyxy: tuple[int, int, int, int]) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """Shrink a mask given in ``box_xyxy`` to its tight box (an empty mask keeps a 0 x 0 box at the origin)."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if len(rows) == 0:
        return np.zeros((0, 0), bool), (box_xyxy[0], box_xyxy[1], box_xyxy[0], box_xyxy[1])
    r0, r1, c0, c1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    x0, y0 = box_xyxy[0], box_xyxy[1]
    return np.ascontiguousarray(mask[r0:r1, c0:c1]), (x0 + c0, y0 + r0, x0 + c1, y0 + r1)
