"""In-memory bag of one slide: patch features plus optional SAM spatial context.

This is the contract between extraction (writes), the feature store (persists) and training/inference (read).
Shapes: N patches, D feature dims, M patch-mask memberships, G group tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sammil_deploy.errors import FeatureStoreError

NO_SEGMENT = -1


@dataclass(frozen=True)
class SpatialContext:
    """SAM (or fallback) segments of a slide, as seen by its patches.

    Attributes:
        segment_id: (N,) int64, the patch's *category*: id of the smallest mask it touches, ``NO_SEGMENT`` if none.
        segment_area_px: (N,) int64, pixel count of that mask on the segmentation image, 0 if none.
        membership_patch: (M,) int64 patch row of each (patch, mask) membership; a patch is in every mask its
            footprint touches, so masks overlap.
        membership_mask: (M,) int64 mask id of each membership.
        group_ids: (G,) int64 ascending mask ids that have at least one member (one group token each).
        group_area_px: (G,) int64 pixel count of each group's mask on the segmentation image.
        group_features: (G, D) float32 mean feature of each group's members (SAM-MIL Eq. 3).
        tissue_area_px: tissue pixels on the segmentation image (for area fractions).
        segmenter: which segmenter ran (``sam_vit_h``, ``fallback_kmeans``, ``official_import`` ...).
    """

    segment_id: np.ndarray
    segment_area_px: np.ndarray
    membership_patch: np.ndarray
    membership_mask: np.ndarray
    group_ids: np.ndarray
    group_area_px: np.ndarray
    group_features: np.ndarray
    tissue_area_px: int = 0
    segmenter: str = "unknown"

    @property
    def n_groups(self) -> int:
        """Number of group tokens G."""
        return int(len(self.group_ids))


@dataclass(frozen=True)
class FeatureBag:
    """Features of one slide's patches (CLAM layout) plus optional spatial context.

    Attributes:
        slide_id: Slide file stem.
        coords_level0_xy: (N, 2) int64 top-left corners in level-0 pixels.
        features: (N, D) float32.
        patch_size_level0_px: Patch side in level-0 pixels (CLAM's ``patch_size`` at ``patch_level`` 0).
        patch_level: Level the patches were defined at (CLAM attr).
        context: Segments, or ``None`` for a plain CLAM bag.
        attrs: Provenance (encoder, weights hash, segmenter config, slide mpp/size, toolkit version ...).
    """

    slide_id: str
    coords_level0_xy: np.ndarray
    features: np.ndarray
    patch_size_level0_px: int
    patch_level: int = 0
    context: SpatialContext | None = None
    attrs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        validate_bag(self)

    @property
    def n_patches(self) -> int:
        """Number of patch rows N."""
        return int(self.features.shape[0])

    @property
    def dim(self) -> int:
        """Feature dimension D."""
        return int(self.features.shape[1])

    @property
    def has_context(self) -> bool:
        """Whether spatial context (segments, group tokens) is present."""
        return self.context is not None

    def tokens(self, *, with_groups: bool) -> np.ndarray:
        """(N [+ G], D) float32 instance matrix; group tokens are appended after the patch rows (Eq. 4)."""
        if not with_groups or self.context is None or self.context.n_groups == 0:
            return self.features
        return np.concatenate([self.features, self.context.group_features], axis=0)

    def relative_area(self, *, with_groups: bool) -> np.ndarray:
        """(N [+ G],) int64 in the official SAM-MIL meaning: area of the smallest mask, 1 = no mask, 0 = group token.

        Raises:
            FeatureStoreError: If the bag has no spatial context.
        """
        ctx = self.require_context()
        area = np.where(ctx.segment_id == NO_SEGMENT, 1, ctx.segment_area_px).astype(np.int64)
        if with_groups:
            area = np.concatenate([area, np.zeros(ctx.n_groups, dtype=np.int64)])
        return area

    def is_group_token(self, *, with_groups: bool) -> np.ndarray:
        """(N [+ G],) bool, True on group-token rows."""
        n_groups = self.context.n_groups if (with_groups and self.context is not None) else 0
        return np.concatenate([np.zeros(self.n_patches, bool), np.ones(n_groups, bool)])

    def require_context(self) -> SpatialContext:
        """The spatial context, or a clear error saying how to add it."""
        if self.context is None:
            raise FeatureStoreError(
                f"{self.slide_id}: this bag has no SAM spatial context (segments / group features); run "
                "`sammil-deploy extract` with segmentation, or `sammil-deploy add-context` on CLAM files"
            )
        return self.context


def group_features_from_memberships(
    features: np.ndarray, membership_patch: np.ndarray, membership_mask: np.ndarray, group_ids: np.ndarray
) -> np.ndarray:
    """(G, D) float32 mean of member features per group (Eq. 3), in ``group_ids`` order.

    Accumulates in float64 so large groups do not lose precision.
    """
    if len(group_ids) == 0:
        return np.zeros((0, features.shape[1]), np.float32)
    row = np.searchsorted(group_ids, membership_mask)
    if np.any(row >= len(group_ids)) or np.any(group_ids[np.minimum(row, len(group_ids) - 1)] != membership_mask):
        raise FeatureStoreError("membership refers to a mask id that is not a group id")
    sums = np.zeros((len(group_ids), features.shape[1]), np.float64)
    np.add.at(sums, row, features[membership_patch].astype(np.float64))
    counts = np.bincount(row, minlength=len(group_ids)).astype(np.float64)
    if np.any(counts == 0):
        raise FeatureStoreError("a group id has no member patch; group tokens need at least one member")
    return (sums / counts[:, None]).astype(np.float32)


def validate_bag(bag: FeatureBag) -> None:
    """Check shapes and id consistency; raise FeatureStoreError naming the slide and the field."""
    name = bag.slide_id
    n = bag.features.shape[0] if bag.features.ndim == 2 else -1
    if bag.features.ndim != 2:
        raise FeatureStoreError(f"{name}: features must be (N, D), got shape {bag.features.shape}")
    if bag.coords_level0_xy.shape != (n, 2):
        raise FeatureStoreError(f"{name}: coords must be ({n}, 2) to match features, got {bag.coords_level0_xy.shape}")
    ctx = bag.context
    if ctx is None:
        return
    for field_name in ("segment_id", "segment_area_px"):
        if getattr(ctx, field_name).shape != (n,):
            raise FeatureStoreError(f"{name}: {field_name} must be ({n},), got {getattr(ctx, field_name).shape}")
    if ctx.membership_patch.shape != ctx.membership_mask.shape:
        raise FeatureStoreError(f"{name}: membership_patch and membership_mask differ in length")
    if len(ctx.membership_patch) and (ctx.membership_patch.min() < 0 or ctx.membership_patch.max() >= n):
        raise FeatureStoreError(f"{name}: membership_patch holds rows outside 0..{n - 1}")
    g = len(ctx.group_ids)
    if ctx.group_area_px.shape != (g,) or ctx.group_features.shape != (g, bag.features.shape[1]):
        raise FeatureStoreError(
            f"{name}: group arrays disagree: {g} ids, areas {ctx.group_area_px.shape}, "
            f"features {ctx.group_features.shape} (feature dim {bag.features.shape[1]})"
        )
