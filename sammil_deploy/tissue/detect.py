"""CLAM-style tissue detection: saturation threshold on a low-resolution level, contours with holes."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from sammil_deploy.errors import ConfigError, TissueError
from sammil_deploy.slide import SlideInfo, SlideReader
from sammil_deploy.tissue.config import TissueConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class TissueResult:
    """Tissue found on one slide.

    Attributes:
        contours_level0_xy: One ``(K, 2)`` int32 array of (x, y) level-0 vertices per kept tissue contour
            (CLAM: seg-level contour × per-axis downsample, truncated to int32).
        holes_level0_xy: For each contour, a tuple of ``(K, 2)`` int32 hole polygons in level-0 pixels.
        seg_level: Level the segmentation ran on.
        seg_downsample_xy: Per-axis downsample of that level, level-0 width / level width (CLAM's estimate).
        mask: ``(H, W)`` bool tissue mask at the seg level: kept contours filled, kept holes cleared.
        tissue_area_level0_px2: Area of the kept contours minus their kept holes, in level-0 pixels².
        bbox_level0: Union bounding box of all contour vertices, (min_x, min_y, max_x, max_y) in level-0 px
            (SAM-MIL's start/stop of the SAM image).
    """

    contours_level0_xy: tuple[np.ndarray, ...]
    holes_level0_xy: tuple[tuple[np.ndarray, ...], ...]
    seg_level: int
    seg_downsample_xy: tuple[float, float]
    mask: np.ndarray
    tissue_area_level0_px2: float
    bbox_level0: tuple[int, int, int, int]

    @property
    def n_contours(self) -> int:
        """Number of kept tissue contours."""
        return len(self.contours_level0_xy)

    @property
    def n_holes(self) -> int:
        """Number of kept holes over all contours."""
        return sum(len(h) for h in self.holes_level0_xy)


def select_seg_level(info: SlideInfo, cfg: TissueConfig) -> int:
    """CLAM's rule: level 0 for single-level slides, else the level best for ``cfg.seg_downsample``.

    Raises:
        ConfigError: If ``cfg.seg_level`` does not exist in the slide.
    """
    if cfg.seg_level >= 0:
        if cfg.seg_level >= info.level_count:
            raise ConfigError(
                f"{info.path.name}: seg_level {cfg.seg_level} does not exist (levels 0..{info.level_count - 1}); "
                "use --seg-level -1 to pick one automatically"
            )
        return cfg.seg_level
    if info.level_count == 1:
        return 0
    return info.best_level_for_downsample(cfg.seg_downsample)


def segment_saturation(rgb: np.ndarray, cfg: TissueConfig) -> np.ndarray:
    """Binary tissue image: HSV saturation → median blur → threshold (fixed or Otsu) → closing.

    Args:
        rgb: ``(H, W, 3)`` uint8 RGB image of the seg level.
        cfg: Thresholds and kernel sizes.

    Returns:
        ``(H, W)`` uint8 image, ``cfg.sthresh_up`` on tissue and 0 elsewhere.
    """
    import cv2

    saturation = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)[:, :, 1]
    blurred = cv2.medianBlur(saturation, cfg.mthresh) if cfg.mthresh > 1 else saturation
    if cfg.use_otsu:
        _, binary = cv2.threshold(blurred, 0, cfg.sthresh_up, cv2.THRESH_OTSU + cv2.THRESH_BINARY)
    else:
        _, binary = cv2.threshold(blurred, cfg.sthresh, cfg.sthresh_up, cv2.THRESH_BINARY)
    if cfg.close > 0:
        binary = cv2.morphologyEx(binary, cv2.MORPH_CLOSE, np.ones((cfg.close, cfg.close), np.uint8))
    return binary


def detect_tissue(reader: SlideReader, cfg: TissueConfig) -> TissueResult:
    """Find tissue contours and their holes as CLAM's ``segmentTissue`` does, in level-0 coordinates.

    Args:
        reader: Open slide.
        cfg: Segmentation and contour-filter parameters.

    Returns:
        The kept contours/holes (level 0), the seg-level mask and summary geometry.

    Raises:
        ConfigError: If ``cfg.seg_level`` does not exist.
        TissueError: If the seg level is too large to segment, or no contour passes the area filter.
    """
    import cv2

    info = reader.info
    level = select_seg_level(info, cfg)
    width, height = info.level_dimensions_wh[level]
    if width * height > cfg.max_seg_pixels:
        raise TissueError(
            f"{info.path.name}: seg level {level} is {width}x{height} px (> {cfg.max_seg_pixels:.0e}); pass a "
            "coarser --seg-level, or convert the slide to a pyramidal TIFF with low-resolution levels"
        )
    w0, h0 = info.dimensions_wh
    ds_xy = (w0 / width, h0 / height)
    binary = segment_saturation(reader.read_level(level), cfg)

    unit_px2 = int(cfg.ref_patch_size_px**2 / (ds_xy[0] * ds_xy[1]))
    contours, hierarchy = cv2.findContours(binary, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_NONE)
    kept, kept_holes, largest_px2 = _filter_contours(
        contours, hierarchy, a_t_px2=cfg.a_t * unit_px2, a_h_px2=cfg.a_h * unit_px2, max_n_holes=cfg.max_n_holes
    )
    if not kept:
        if largest_px2 > 0:
            raise TissueError(
                f"{info.path.name}: no tissue found: the largest tissue region at seg level {level} is "
                f"{largest_px2 / max(unit_px2, 1):.2f} reference patches ({cfg.ref_patch_size_px}² level-0 px), "
                f"not above a_t={cfg.a_t:g}; lower --a-t or use a preset for small tissue (--preset bwh_biopsy)"
            )
        threshold = "the Otsu threshold" if cfg.use_otsu else f"sthresh={cfg.sthresh}"
        raise TissueError(
            f"{info.path.name}: no tissue found: no region at seg level {level} has saturation above {threshold}; "
            "is the slide blank? If not, lower --sthresh or try --use-otsu"
        )

    mask = np.zeros((height, width), np.uint8)
    cv2.drawContours(mask, kept, -1, 1, thickness=cv2.FILLED)
    for holes in kept_holes:
        cv2.drawContours(mask, list(holes), -1, 0, thickness=cv2.FILLED)
    contours0 = tuple(_to_level0(c, ds_xy) for c in kept)
    holes0 = tuple(tuple(_to_level0(h, ds_xy) for h in holes) for holes in kept_holes)
    area = sum(
        cv2.contourArea(c) - sum(cv2.contourArea(h) for h in hs) for c, hs in zip(contours0, holes0, strict=True)
    )
    points = np.concatenate(contours0)
    bbox = (int(points[:, 0].min()), int(points[:, 1].min()), int(points[:, 0].max()), int(points[:, 1].max()))
    log.info("%s: %d tissue contours, %d holes at seg level %d", info.path.name, len(kept), len(holes0), level)
    return TissueResult(
        contours_level0_xy=contours0,
        holes_level0_xy=holes0,
        seg_level=level,
        seg_downsample_xy=ds_xy,
        mask=mask.astype(bool),
        tissue_area_level0_px2=float(area),
        bbox_level0=bbox,
    )


def _filter_contours(
    contours: tuple[np.ndarray, ...],
    hierarchy: np.ndarray | None,
    *,
    a_t_px2: float,
    a_h_px2: float,
    max_n_holes: int,
) -> tuple[list[np.ndarray], list[tuple[np.ndarray, ...]], float]:
    """CLAM's ``_filter_contours`` on RETR_CCOMP output (areas in seg-level pixels²).

    A top-level contour is kept if its area minus all its children's areas is > ``a_t_px2``; its holes are the
    ``max_n_holes`` largest children with area > ``a_h_px2``. Also returns the largest net area seen (for errors).
    """
    import cv2

    if hierarchy is None or not contours:
        return [], [], 0.0
    parent = hierarchy.reshape(-1, 4)[:, 3]
    areas = np.array([cv2.contourArea(c) for c in contours])
    kept: list[np.ndarray] = []
    kept_holes: list[tuple[np.ndarray, ...]] = []
    largest = 0.0
    for idx in np.flatnonzero(parent == -1):
        children = np.flatnonzero(parent == idx)
        net = areas[idx] - areas[children].sum()
        largest = max(largest, float(net))
        if net == 0 or not net > a_t_px2:
            continue
        by_area = children[np.argsort(-areas[children], kind="stable")][:max_n_holes]
        kept.append(contours[idx])
        kept_holes.append(tuple(contours[h] for h in by_area if areas[h] > a_h_px2))
    return kept, kept_holes, largest


def _to_level0(contour: np.ndarray, ds_xy: tuple[float, float]) -> np.ndarray:
    """Seg-level ``(K, 1, 2)`` contour → ``(K, 2)`` int32 level-0 vertices (CLAM truncates toward zero)."""
    return (contour.reshape(-1, 2) * np.asarray(ds_xy)).astype(np.int32)
