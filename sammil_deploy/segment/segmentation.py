"""``Segmentation``: the masks of one SAM image, stored as bounding-box crops (memory ~ mask extent, not K x H x W)."""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sammil_deploy.errors import SegmentationError

BACKGROUND = -1


@dataclass(frozen=True)
class Segmentation:
    """K possibly overlapping binary masks on an (H, W) SAM image.

    Mask ``k`` is ``crops[k]`` placed at ``bbox_xyxy[k]``; mask ids are positions in this order (SAM's output
    order, which fixes the order of group tokens as in SAM-MIL).

    Attributes:
        bbox_xyxy: (K, 4) int64 (x0, y0, x1, y1) of each mask's tight box, x1/y1 exclusive, SAM-image px.
        crops: K bool arrays of shape (y1 - y0, x1 - x0).
        image_hw: (H, W) of the SAM image.
        segmenter: Which segmenter produced the masks (``sam_vit_h``, ``sam_tiny``, ``fallback_kmeans`` ...).
        config: The settings that produced them (JSON-serialisable), for provenance.
        tissue_area_px: Tissue pixels on the SAM image (the denominator of area fractions).
        profile: How the masks were computed, for reports: seconds per sub-stage and work counts (e.g. the fast
            generator's ``encoder_passes``, ``decoder_prompts``, ``encoder_s``, ``decoder_s``,
            ``decoder_wait_s``, ``postprocess_s``; with the decoder overlapped, ``decoder_s`` is partly hidden
            and ``total_s = encoder_s + decoder_wait_s + postprocess_s``). Never saved, not part of equality.
    """

    bbox_xyxy: np.ndarray
    crops: tuple[np.ndarray, ...]
    image_hw: tuple[int, int]
    segmenter: str
    config: dict[str, Any] = field(default_factory=dict)
    tissue_area_px: int = 0
    profile: dict[str, float | int] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        k = len(self.crops)
        if self.bbox_xyxy.shape != (k, 4):
            raise SegmentationError(f"bbox_xyxy must be ({k}, 4) for {k} masks, got {self.bbox_xyxy.shape}")
        for i, (crop, (x0, y0, x1, y1)) in enumerate(zip(self.crops, self.bbox_xyxy, strict=True)):
            if crop.dtype != bool or crop.shape != (y1 - y0, x1 - x0):
                raise SegmentationError(
                    f"mask {i}: crop {crop.shape} {crop.dtype} does not fit its box {(x0, y0, x1, y1)}"
                )

    @classmethod
    def from_masks(
        cls,
        masks: Iterable[np.ndarray],
        image_hw: tuple[int, int],
        segmenter: str,
        config: dict[str, Any] | None = None,
        tissue_area_px: int = 0,
    ) -> Segmentation:
        """Build from full-size (H, W) bool masks, in order; empty masks are dropped."""
        boxes: list[tuple[int, int, int, int]] = []
        crops: list[np.ndarray] = []
        for mask in masks:
            if mask.shape != tuple(image_hw):
                raise SegmentationError(f"mask shape {mask.shape} differs from the SAM image {tuple(image_hw)}")
            rows = np.flatnonzero(mask.any(axis=1))
            if len(rows) == 0:
                continue
            cols = np.flatnonzero(mask.any(axis=0))
            y0, y1, x0, x1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
            boxes.append((x0, y0, x1, y1))
            crops.append(np.ascontiguousarray(mask[y0:y1, x0:x1], dtype=bool))
        return cls(
            bbox_xyxy=np.asarray(boxes, np.int64).reshape(-1, 4),
            crops=tuple(crops),
            image_hw=(int(image_hw[0]), int(image_hw[1])),
            segmenter=segmenter,
            config=dict(config or {}),
            tissue_area_px=int(tissue_area_px),
        )

    @property
    def n_masks(self) -> int:
        """Number of masks K."""
        return len(self.crops)

    @functools.cached_property
    def areas_px(self) -> np.ndarray:
        """(K,) int64 pixel count of each mask on the SAM image (SAM-MIL's ``area``)."""
        return np.asarray([int(c.sum()) for c in self.crops], np.int64)

    def mask(self, k: int) -> np.ndarray:
        """(H, W) bool full-size mask ``k``."""
        out = np.zeros(self.image_hw, bool)
        x0, y0, x1, y1 = self.bbox_xyxy[k]
        out[y0:y1, x0:x1] = self.crops[k]
        return out

    @functools.cached_property
    def label_map(self) -> np.ndarray:
        """(H, W) int32 mask id per pixel, ``BACKGROUND`` (-1) where no mask; on overlaps the smaller mask wins.

        Ties (equal areas) go to the lower id, so the map is deterministic.
        """
        out = np.full(self.image_hw, BACKGROUND, np.int32)
        # Paint largest first so smaller masks overwrite; for equal areas the lower id is painted last.
        order = np.lexsort((-np.arange(self.n_masks), -self.areas_px))
        for k in order:
            x0, y0, x1, y1 = self.bbox_xyxy[k]
            view = out[y0:y1, x0:x1]
            view[self.crops[k]] = k
        return out
