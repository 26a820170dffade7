"""Configuration of the spatial-context stage (SAM automatic masks or the classical fallback)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sammil_deploy.errors import ConfigError

SEGMENTERS = ("auto", "sam", "fallback")
SAM_MODELS = ("auto", "vit_h", "vit_l", "vit_b", "tiny")
MEMBERSHIP_MODES = ("footprint", "official")
GENERATORS = ("fast", "reference")


@dataclass(frozen=True, slots=True)
class SegmentConfig:
    """How slides are segmented into spatial groups.

    SAM generator defaults are SAM-MIL's (``01_create_patches_and_sam_segment.py``); the rest are upstream
    ``SamAutomaticMaskGenerator`` defaults.

    Attributes:
        segmenter: ``"sam"``, ``"fallback"`` (classical colour/texture clustering, no weights needed) or ``"auto"``
            (SAM when ``sam_checkpoint`` is set, else the fallback).
        sam_checkpoint: Local SAM ``.pth`` (``sam_vit_h_4b8939.pth``, vit_l, vit_b); never downloaded.
        sam_model: ``"auto"`` detects the type from the checkpoint's shapes; a named type is checked against it.
            ``"tiny"`` is a randomly initialised test model (meaningless masks) and needs no checkpoint.
        long_side_px: Target long side of the SAM image; the downsample is the power of two that brings the
            tissue bounding box to at most this (SAM-MIL: 1024).
        points_per_side: Point grid per side on the full image (crops use it divided by the downscale factor).
        points_per_batch: Prompts decoded together (memory, not results).
        crop_n_layers: Crop layers (1 = full image + 4 crops, 5 encoder passes).
        crop_n_points_downscale_factor: Grid downscale per crop layer.
        pred_iou_thresh: Drop masks whose predicted IoU is below this.
        stability_score_thresh: Drop masks whose stability score is below this.
        min_mask_region_area: Remove small holes/islands and drop masks below this many SAM-image pixels (0 = off).
        box_nms_thresh: Box-IoU threshold of the NMS between masks.
        generator: ``"fast"`` (``fast_automask.FastMaskGenerator``: the same masks, batched and vectorised) or
            ``"reference"`` (upstream ``SamAutomaticMaskGenerator``).
        device: ``"auto"`` (CUDA when visible), ``"cpu"``, ``"cuda"``, ``"cuda:N"``.
        membership: ``"footprint"`` (a patch is in every mask its whole footprint touches) or ``"official"``
            (SAM-MIL's test of an ``s x s`` window at the patch's top-left corner, s = patch_size // downsample,
            which misses masks and can be 0 px; only for matching official files).
        fallback_n_clusters: Colour/texture clusters of the fallback (each split into connected regions).
        fallback_spatial_weight: Weight of the (x, y) position in the fallback's clustering features; > 0 makes
            regions compact, superpixel-like.
        fallback_min_region_fraction: Fallback regions smaller than this fraction of the tissue are dropped (their
            pixels belong to no segment, like SAM's gaps).
        fallback_smooth_px: Median filter size (odd, px) applied to the cluster map to remove speckle.
        fallback_seed: Seed of the fallback's pixel subsample and k-means++ initialisation.
    """

    segmenter: str = "auto"
    sam_checkpoint: Path | None = None
    sam_model: str = "auto"
    long_side_px: int = 1024
    points_per_side: int = 32
    points_per_batch: int = 64
    crop_n_layers: int = 1
    crop_n_points_downscale_factor: int = 2
    pred_iou_thresh: float = 0.6
    stability_score_thresh: float = 0.6
    min_mask_region_area: int = 0
    box_nms_thresh: float = 0.7
    generator: str = "fast"
    device: str = "auto"
    membership: str = "footprint"
    fallback_n_clusters: int = 6
    fallback_spatial_weight: float = 0.5
    fallback_min_region_fraction: float = 0.002
    fallback_smooth_px: int = 9
    fallback_seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.sam_checkpoint, str):
            object.__setattr__(self, "sam_checkpoint", Path(self.sam_checkpoint))
        _choice("segment.segmenter", self.segmenter, SEGMENTERS)
        _choice("segment.sam_model", self.sam_model, SAM_MODELS)
        _choice("segment.membership", self.membership, MEMBERSHIP_MODES)
        _choice("segment.generator", self.generator, GENERATORS)
        if self.segmenter == "sam" and self.sam_checkpoint is None and self.sam_model != "tiny":
            raise ConfigError(
                "segment.segmenter is 'sam' but no segment.sam_checkpoint is given; pass the path of "
                "sam_vit_h_4b8939.pth (or vit_l/vit_b), or use segmenter 'fallback' / 'auto'"
            )
        if self.segmenter == "fallback" and self.sam_checkpoint is not None:
            raise ConfigError(
                "segment.segmenter is 'fallback' but segment.sam_checkpoint is set; drop one of the two "
                "(use segmenter 'sam' or 'auto' to run SAM)"
            )
        for name in ("long_side_px", "points_per_side", "points_per_batch", "crop_n_points_downscale_factor"):
            _positive(name, getattr(self, name))
        if self.long_side_px < 64:
            raise ConfigError(f"segment.long_side_px must be >= 64, got {self.long_side_px}")
        for name in ("crop_n_layers", "min_mask_region_area", "fallback_seed"):
            if getattr(self, name) < 0:
                raise ConfigError(f"segment.{name} must be >= 0, got {getattr(self, name)}")
        for name in ("pred_iou_thresh", "stability_score_thresh", "box_nms_thresh", "fallback_min_region_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"segment.{name} must be in [0, 1], got {getattr(self, name)}")
        if self.fallback_n_clusters < 2:
            raise ConfigError(f"segment.fallback_n_clusters must be >= 2, got {self.fallback_n_clusters}")
        if self.fallback_spatial_weight < 0:
            raise ConfigError(f"segment.fallback_spatial_weight must be >= 0, got {self.fallback_spatial_weight}")
        if self.fallback_smooth_px < 1 or self.fallback_smooth_px % 2 == 0:
            raise ConfigError(f"segment.fallback_smooth_px must be an odd number >= 1, got {self.fallback_smooth_px}")

    @property
    def resolved_segmenter(self) -> str:
        """``"sam"`` or ``"fallback"``: what ``"auto"`` means for this config."""
        if self.segmenter != "auto":
            return self.segmenter
        return "sam" if self.sam_checkpoint is not None else "fallback"


def _choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{name} must be one of {list(choices)}, got {value!r}")


def _positive(name: str, value: int) -> None:
    if value <= 0:
        raise ConfigError(f"segment.{name} must be > 0, got {value}")
