"""The fast generator's per-mask work: score decoder masks, render the survivors, clean up small regions.

:class:`MaskRenderer` turns one crop's low-res decoder logits into what upstream ``SamAutomaticMaskGenerator``
computes from its full-size upsampled masks (stability scores, tight boxes, the binary masks), without the
full-size maps: on a CPU each mask is upsampled only inside the window its logits can reach (``upsample.py``),
on a GPU whole maps in chunks on the device. :class:`Candidates` carries the masks that passed the per-point
filters through the NMS rounds; :func:`remove_small_regions` is upstream's ``postprocess_small_regions``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from sammil_deploy.segment.postprocess import remove_small_regions_in_box, stability_and_boxes, upscale_logits
from sammil_deploy.segment.upsample import CropUpsampler

if TYPE_CHECKING:
    import torch

# Upstream SamAutomaticMaskGenerator defaults that SegmentConfig does not expose (SAM-MIL keeps them).
MASK_THRESHOLD = 0.0
STABILITY_OFFSET = 1.0
CROP_NMS_THRESH = 0.7


@dataclass
class Candidates:
    """Masks that passed the per-point filters of some crops; all tensors on the generator's device.

    Attributes:
        low_res: (N, h, w) float decoder logits, kept to re-render survivors.
        iou: (N,) float32 predicted IoU.
        stability: (N,) float32 stability score.
        boxes: (N, 4) int64 inclusive xyxy boxes, crop frame.
        crop: (N,) int64 index of the crop each mask came from.
    """

    low_res: torch.Tensor
    iou: torch.Tensor
    stability: torch.Tensor
    boxes: torch.Tensor
    crop: torch.Tensor

    def select(self, keep: torch.Tensor) -> Candidates:
        """The rows ``keep`` (bool mask or indices) of every field."""
        return Candidates(*(t[keep] for t in (self.low_res, self.iou, self.stability, self.boxes, self.crop)))

    @staticmethod
    def cat(parts: Sequence[Candidates]) -> Candidates:
        """All rows of ``parts``, in order."""
        import torch

        return Candidates(
            *(torch.cat([getattr(p, k) for p in parts]) for k in ("low_res", "iou", "stability", "boxes", "crop"))
        )


@dataclass(frozen=True)
class MaskRenderer:
    """``Sam.postprocess_masks`` + thresholding for the masks of one image's crops, without full-size maps.

    Attributes:
        img_size: Encoder input side S in pixels.
        device: Torch device of the logits.
        windowed: Upsample each mask only inside the window its logits can reach (the CPU path).
        chunk_px: Otherwise, upsampled logits are processed this many pixels at a time (~5 bytes per pixel).
    """

    img_size: int
    device: torch.device
    windowed: bool
    chunk_px: int

    def stability_and_boxes(
        self, low_res: torch.Tensor, resized_hw: tuple[int, int], crop_hw: tuple[int, int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(N,) float32 stability scores and (N, 4) int64 inclusive boxes (crop frame) of (N, h, w) logits."""
        import torch

        if self.windowed:
            up = CropUpsampler(low_res.shape[-1], self.img_size, resized_hw, crop_hw, self.device)
            return up.stability_and_boxes(low_res, MASK_THRESHOLD, STABILITY_OFFSET)
        stability = [torch.zeros(0, device=self.device)]
        boxes = [torch.zeros((0, 4), dtype=torch.int64, device=self.device)]
        chunks = self._chunks(len(low_res), resized_hw, crop_hw)
        for start in chunks:
            logits = upscale_logits(low_res[start : start + chunks.step], self.img_size, resized_hw, crop_hw)
            s, b = stability_and_boxes(logits, MASK_THRESHOLD, STABILITY_OFFSET)
            stability.append(s.float())
            boxes.append(b)
        return torch.cat(stability), torch.cat(boxes)

    def render(
        self, data: Candidates, crop_boxes: list[list[int]], resized_hw: list[tuple[int, int]]
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        """Upsample the surviving masks again and cut each to its box: (K, 4) exclusive image boxes, K crops."""
        boxes_crop = data.boxes.cpu().numpy()
        crop_of = data.crop.cpu().numpy()
        masks: list[np.ndarray | None] = [None] * len(crop_of)
        for c in np.unique(crop_of):
            x0, y0, x1, y1 = crop_boxes[c]
            rows = np.flatnonzero(crop_of == c)
            crops = self._binary_in_boxes(data.low_res[rows], boxes_crop[rows], resized_hw[c], (y1 - y0, x1 - x0))
            for k, crop in zip(rows, crops, strict=True):
                masks[k] = crop
        offsets = np.asarray(crop_boxes, np.int64)[crop_of][:, [0, 1, 0, 1]] if len(crop_of) else 0
        boxes_image = (boxes_crop + offsets + np.array([0, 0, 1, 1])).reshape(-1, 4).astype(np.int64)
        return boxes_image, masks  # type: ignore[return-value]

    def _binary_in_boxes(
        self, low_res: torch.Tensor, boxes: np.ndarray, resized_hw: tuple[int, int], crop_hw: tuple[int, int]
    ) -> list[np.ndarray]:
        """Each mask's ``logits > MASK_THRESHOLD`` inside its inclusive box, as a bool array."""
        if self.windowed:
            up = CropUpsampler(low_res.shape[-1], self.img_size, resized_hw, crop_hw, self.device)
            return list(up.binary_in_boxes(low_res, boxes, MASK_THRESHOLD))
        out = []
        chunks = self._chunks(len(low_res), resized_hw, crop_hw)
        for start in chunks:
            logits = upscale_logits(low_res[start : start + chunks.step], self.img_size, resized_hw, crop_hw)
            binary = (logits > MASK_THRESHOLD).cpu().numpy()
            for j, (bx0, by0, bx1, by1) in enumerate(boxes[start : start + chunks.step]):
                out.append(np.ascontiguousarray(binary[j, by0 : by1 + 1, bx0 : bx1 + 1]))
        return out

    def _chunks(self, n: int, resized_hw: tuple[int, int], crop_hw: tuple[int, int]) -> range:
        per_mask_px = self.img_size**2 + resized_hw[0] * resized_hw[1] + crop_hw[0] * crop_hw[1]
        return range(0, n, max(1, self.chunk_px // per_mask_px))


def remove_small_regions(
    boxes: np.ndarray, masks: list[np.ndarray], image_hw: tuple[int, int], min_area_px: int, box_nms_thresh: float
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Upstream ``postprocess_small_regions``: clean each mask, then NMS preferring unchanged masks.

    Args:
        boxes: (K, 4) int64 exclusive image boxes.
        masks: K bool crops of those boxes.
        image_hw: (H, W) of the image.
        min_area_px: Holes and islands under this many pixels are removed.
        box_nms_thresh: The generator's box NMS threshold (the NMS uses the larger of it and the crop one).
    """
    import torch
    from torchvision.ops import batched_nms

    if not masks:
        return boxes, masks
    new_boxes, new_masks, unchanged = [], [], []
    for box, crop in zip(boxes, masks, strict=True):
        crop, box, changed = remove_small_regions_in_box(crop, tuple(int(v) for v in box), image_hw, min_area_px)
        new_boxes.append(box)
        new_masks.append(crop)
        unchanged.append(float(not changed))
    boxes = np.asarray(new_boxes, np.int64)
    # Upstream boxes are inclusive and [0, 0, 0, 0] for an empty mask.
    inclusive = np.where((boxes[:, 2:] > boxes[:, :2]).all(1, keepdims=True), boxes - [0, 0, 1, 1], 0)
    keep = batched_nms(
        torch.as_tensor(inclusive).float(),
        torch.as_tensor(unchanged),
        torch.zeros(len(boxes), dtype=torch.int64),
        max(box_nms_thresh, CROP_NMS_THRESH),
    ).numpy()
    return boxes[keep], [new_masks[i] for i in keep]
