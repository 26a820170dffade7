"""Classical fallback segmenter, for users (and the demo) without SAM weights.

Method (deterministic for a given seed):

1. Tissue pixels: CLAM-style saturation threshold (``image_tissue.tissue_mask_on_image``).
2. Per tissue pixel, a feature vector: CIE Lab colour (lightly blurred), local texture (standard deviation of
   L in a 7 x 7 window), each standardised over the tissue, plus the (x, y) position scaled by
   ``fallback_spatial_weight`` so clusters stay spatially compact (superpixel-like, as SLIC does).
3. k-means (k-means++ initialisation, Lloyd iterations) fitted on a seeded subsample of at most
   ``_FIT_PIXELS`` tissue pixels, then applied to all of them.
4. The cluster map is median-filtered to remove speckle; every 8-connected region of one cluster becomes a
   mask; regions smaller than ``fallback_min_region_fraction`` of the tissue are dropped (their pixels belong to
   no segment, like the gaps SAM leaves).

Unlike SAM the masks do not overlap, so each patch's groups are the regions its footprint touches. The result
is a ``Segmentation`` with segmenter name ``fallback_kmeans``.
"""

from __future__ import annotations

import logging

import numpy as np

from sammil_deploy.errors import SegmentationError
from sammil_deploy.segment.config import SegmentConfig
from sammil_deploy.segment.image_tissue import tissue_mask_on_image
from sammil_deploy.segment.segmentation import Segmentation

log = logging.getLogger(__name__)

FALLBACK_NAME = "fallback_kmeans"
_FIT_PIXELS = 20_000
_KMEANS_ITERS = 30
_TEXTURE_PX = 7
_MIN_REGION_PX = 16
_NO_CLUSTER = 255


def fallback_segment(image: np.ndarray, cfg: SegmentConfig) -> Segmentation:
    """Segment an (H, W, 3) uint8 RGB SAM image into non-overlapping colour/texture regions.

    Raises:
        SegmentationError: If the image holds no tissue pixels.
    """
    import cv2

    tissue = tissue_mask_on_image(image)
    tissue_px = int(tissue.sum())
    if tissue_px == 0:
        raise SegmentationError(
            "fallback segmenter: the SAM image holds no tissue pixels (HSV saturation <= 8 everywhere); "
            "check the tissue bounding box or the slide"
        )
    features = _pixel_features(image, tissue, cfg.fallback_spatial_weight)
    rng = np.random.default_rng(cfg.fallback_seed)
    k = min(cfg.fallback_n_clusters, tissue_px)
    fit_rows = rng.choice(tissue_px, size=min(_FIT_PIXELS, tissue_px), replace=False)
    centres = _kmeans(features[np.sort(fit_rows)], k, rng)
    cluster_map = np.full(tissue.shape, _NO_CLUSTER, np.uint8)
    cluster_map[tissue] = _nearest(features, centres)
    if cfg.fallback_smooth_px > 1:
        cluster_map = cv2.medianBlur(cluster_map, cfg.fallback_smooth_px)
        cluster_map[~tissue] = _NO_CLUSTER
    min_region_px = max(_MIN_REGION_PX, int(round(cfg.fallback_min_region_fraction * tissue_px)))
    boxes, crops = _regions(cluster_map, k, min_region_px)
    log.info("fallback segmenter: %d clusters -> %d regions >= %d px", k, len(crops), min_region_px)
    return Segmentation(
        bbox_xyxy=np.asarray(boxes, np.int64).reshape(-1, 4),
        crops=tuple(crops),
        image_hw=(int(image.shape[0]), int(image.shape[1])),
        segmenter=FALLBACK_NAME,
        config={
            "n_clusters": k,
            "spatial_weight": cfg.fallback_spatial_weight,
            "min_region_fraction": cfg.fallback_min_region_fraction,
            "smooth_px": cfg.fallback_smooth_px,
            "seed": cfg.fallback_seed,
        },
        tissue_area_px=tissue_px,
    )


def _pixel_features(image: np.ndarray, tissue: np.ndarray, spatial_weight: float) -> np.ndarray:
    """(T, 4 or 6) float32 standardised features of the T tissue pixels (row-major order)."""
    import cv2

    rgb = cv2.GaussianBlur(image.astype(np.float32) / 255.0, (0, 0), sigmaX=1.0)
    lab = cv2.cvtColor(rgb, cv2.COLOR_RGB2Lab)
    lightness = lab[..., 0]
    mean = cv2.blur(lightness, (_TEXTURE_PX, _TEXTURE_PX))
    mean_sq = cv2.blur(lightness * lightness, (_TEXTURE_PX, _TEXTURE_PX))
    texture = np.sqrt(np.maximum(mean_sq - mean * mean, 0.0))
    columns = [lab[..., 0][tissue], lab[..., 1][tissue], lab[..., 2][tissue], texture[tissue]]
    feats = np.stack(columns, axis=1).astype(np.float32)
    feats = (feats - feats.mean(axis=0)) / np.maximum(feats.std(axis=0), 1e-6)
    if spatial_weight > 0:
        ys, xs = np.nonzero(tissue)
        xy = np.stack([xs, ys], axis=1).astype(np.float32)
        xy = (xy - xy.mean(axis=0)) / np.maximum(xy.std(axis=0).max(), 1e-6)  # one scale keeps the aspect
        feats = np.concatenate([feats, spatial_weight * xy], axis=1)
    return feats


def _kmeans(points: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """(k, F) centres by k-means++ seeding and Lloyd iterations on (P, F) points."""
    centres = np.empty((k, points.shape[1]), np.float32)
    centres[0] = points[rng.integers(len(points))]
    dist = ((points - centres[0]) ** 2).sum(axis=1)
    for i in range(1, k):
        total = dist.sum()
        pick = rng.choice(len(points), p=dist / total) if total > 0 else rng.integers(len(points))
        centres[i] = points[pick]
        dist = np.minimum(dist, ((points - centres[i]) ** 2).sum(axis=1))
    for _ in range(_KMEANS_ITERS):
        labels = _nearest(points, centres)
        sums = np.zeros_like(centres, dtype=np.float64)
        np.add.at(sums, labels, points)
        counts = np.bincount(labels, minlength=k)
        new = np.where(counts[:, None] > 0, sums / np.maximum(counts, 1)[:, None], centres).astype(np.float32)
        if np.allclose(new, centres, atol=1e-5):
            break
        centres = new
    return centres


def _nearest(points: np.ndarray, centres: np.ndarray, chunk: int = 262_144) -> np.ndarray:
    """(P,) uint8 index of the nearest centre for each of the (P, F) points (chunked to bound memory)."""
    out = np.empty(len(points), np.uint8)
    c_sq = (centres * centres).sum(axis=1)
    for start in range(0, len(points), chunk):
        p = points[start : start + chunk]
        out[start : start + chunk] = np.argmin(c_sq[None, :] - 2.0 * p @ centres.T, axis=1)
    return out


def _regions(
    cluster_map: np.ndarray, k: int, min_region_px: int
) -> tuple[list[tuple[int, int, int, int]], list[np.ndarray]]:
    """8-connected regions of each cluster with at least ``min_region_px`` pixels, largest first."""
    import cv2

    found: list[tuple[int, int, int, int, int, np.ndarray]] = []
    for c in range(k):
        n, labels, stats, _ = cv2.connectedComponentsWithStats((cluster_map == c).astype(np.uint8), connectivity=8)
        for comp in range(1, n):
            x, y, w, h, area = (int(v) for v in stats[comp])
            if area < min_region_px:
                continue
            found.append((area, y, x, w, h, labels[y : y + h, x : x + w] == comp))
    found.sort(key=lambda r: (-r[0], r[1], r[2]))
    boxes = [(x, y, x + w, y + h) for _, y, x, w, h, _ in found]
    return boxes, [crop for *_, crop in found]
