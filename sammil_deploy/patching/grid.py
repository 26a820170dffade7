"""Patch grid inside tissue contours, with CLAM's per-contour grids and contour checks (vectorised)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from sammil_deploy.errors import ConfigError, PatchingError
from sammil_deploy.patching.config import PatchConfig
from sammil_deploy.slide import SlideInfo
from sammil_deploy.tissue.detect import TissueResult
from sammil_deploy.tissue.geometry import point_polygon_test

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PatchGrid:
    """Patch positions on one slide.

    Attributes:
        coords_level0_xy: ``(N, 2)`` int64 top-left corners (x, y) in level-0 pixels.
        patch_size_level0_px: Patch side in level-0 pixels (its footprint).
        step_level0_px: Grid step in level-0 pixels.
        patch_level: Level to read patches from.
        read_size_px: Patch side read at ``patch_level``, in pixels of that level (CLAM's ``patch_size`` attr).
        patch_downsample: Downsample of ``patch_level`` (level-0 width / level width).
        output_size_px: Side the patch has at the requested resolution (``cfg.patch_size_px``); differs from
            ``read_size_px`` only with a target mpp, where the reader resizes to it.
        target_mpp: Requested resolution in microns per pixel, or ``None`` for level-based patching.
    """

    coords_level0_xy: np.ndarray
    patch_size_level0_px: int
    step_level0_px: int
    patch_level: int
    read_size_px: int
    patch_downsample: float
    output_size_px: int
    target_mpp: float | None = None

    def __len__(self) -> int:
        return len(self.coords_level0_xy)


@dataclass(frozen=True, slots=True)
class _Geometry:
    level: int
    downsample_xy: tuple[float, float]
    size_level0_px: int
    step_level0_xy: tuple[int, int]
    size_at_level_px: int


def _resolve_geometry(info: SlideInfo, cfg: PatchConfig) -> _Geometry:
    """Patch level, level-0 size and step from either ``patch_level`` (CLAM) or ``target_mpp``."""
    if cfg.target_mpp is not None:
        mpp = info.require_mpp()
        scale = cfg.target_mpp / mpp
        size0 = round(cfg.patch_size_px * scale)
        step0 = round(cfg.effective_step_px * scale)
        if size0 < 1 or step0 < 1:
            raise ConfigError(
                f"{info.path.name}: patch of {cfg.patch_size_px} px at {cfg.target_mpp} mpp is under one level-0 "
                f"pixel (slide mpp {mpp}); raise --patch-size or --target-mpp"
            )
        level = info.level_for_mpp(cfg.target_mpp)
        ds_xy = _level_downsample_xy(info, level)
        return _Geometry(level, ds_xy, size0, (step0, step0), max(1, round(size0 / ds_xy[0])))
    if cfg.patch_level >= info.level_count:
        raise ConfigError(
            f"{info.path.name}: patch_level {cfg.patch_level} does not exist (levels 0..{info.level_count - 1}); "
            "choose an existing --patch-level or use --target-mpp"
        )
    ds_xy = _level_downsample_xy(info, cfg.patch_level)
    # CLAM truncates the level downsample to int before scaling sizes and steps.
    int_ds = (max(1, int(ds_xy[0])), max(1, int(ds_xy[1])))
    step = cfg.effective_step_px
    return _Geometry(
        cfg.patch_level, ds_xy, cfg.patch_size_px * int_ds[0], (step * int_ds[0], step * int_ds[1]), cfg.patch_size_px
    )


def _level_downsample_xy(info: SlideInfo, level: int) -> tuple[float, float]:
    (w0, h0), (w, h) = info.dimensions_wh, info.level_dimensions_wh[level]
    return (w0 / w, h0 / h)


def require_patch_fits(info: SlideInfo, cfg: PatchConfig) -> int:
    """The patch side in level-0 pixels, after checking the slide can hold one patch (cheap; no pixels read).

    Raises:
        ConfigError: As for ``make_patch_grid``.
        PatchingError: If the slide is narrower or shorter than one patch.
    """
    size0 = _resolve_geometry(info, cfg).size_level0_px
    w0, h0 = info.dimensions_wh
    if size0 > w0 or size0 > h0:
        raise PatchingError(
            f"{info.path.name}: the slide ({w0}x{h0} level-0 px) is smaller than one patch ({size0}x{size0} "
            "level-0 px); use a smaller --patch-size"
        )
    return size0


def make_patch_grid(info: SlideInfo, tissue: TissueResult, cfg: PatchConfig) -> PatchGrid:
    """Place patches inside tissue as CLAM's ``process_contour`` does.

    One grid per contour, anchored at the contour's bounding box (CLAM's ``cv2.boundingRect``), step
    ``step_px × int(level downsample)``; a candidate is kept if ``cfg.contour_fn`` accepts it and its centre is not
    strictly inside one of that contour's holes. Deviation from CLAM: a position produced by two contours'
    overlapping grids is kept once (CLAM would write it twice).

    Args:
        info: Slide geometry (``info.mpp`` is needed only with ``cfg.target_mpp``).
        tissue: Contours and holes in level-0 pixels.
        cfg: Patch size, step, level or target mpp, contour check.

    Returns:
        The grid; ``coords_level0_xy`` is ``(N, 2)`` int64 in CLAM's order (contour by contour, x-major).

    Raises:
        ConfigError: If the level does not exist, or a target mpp needs an mpp the slide lacks.
        PatchingError: If the slide is smaller than one patch, or no patch passes the tissue checks.
    """
    geo = _resolve_geometry(info, cfg)
    size0 = require_patch_fits(info, cfg)
    w0, h0 = info.dimensions_wh
    chunks = [
        _contour_patches(contour, holes, geo, cfg, (w0, h0))
        for contour, holes in zip(tissue.contours_level0_xy, tissue.holes_level0_xy, strict=True)
    ]
    coords = np.concatenate(chunks) if chunks else np.zeros((0, 2), np.int64)
    _, first = np.unique(coords, axis=0, return_index=True)
    coords = coords[np.sort(first)]
    if len(coords) == 0:
        raise PatchingError(
            f"{info.path.name}: {tissue.n_contours} tissue contour(s) but no {size0}-px patch passes the "
            f"{cfg.contour_fn!r} check; use a smaller --patch-size or --step, or --contour-fn basic"
        )
    log.info("%s: %d patches of %d level-0 px", info.path.name, len(coords), size0)
    return PatchGrid(
        coords_level0_xy=coords.astype(np.int64),
        patch_size_level0_px=size0,
        step_level0_px=geo.step_level0_xy[0],
        patch_level=geo.level,
        read_size_px=geo.size_at_level_px,
        patch_downsample=geo.downsample_xy[0],
        output_size_px=cfg.patch_size_px,
        target_mpp=cfg.target_mpp,
    )


def _contour_patches(
    contour: np.ndarray,
    holes: tuple[np.ndarray, ...],
    geo: _Geometry,
    cfg: PatchConfig,
    slide_wh: tuple[int, int],
) -> np.ndarray:
    """``(M, 2)`` int64 accepted top-left corners for one contour (CLAM ``process_contour``)."""
    size0 = geo.size_level0_px
    start = contour.min(axis=0).astype(np.int64)
    stop = contour.max(axis=0).astype(np.int64) + 1  # boundingRect width is max - min + 1
    if not cfg.use_padding:
        stop = np.minimum(stop, np.asarray(slide_wh) - size0 + 1)
    xs = np.arange(start[0], stop[0], geo.step_level0_xy[0], dtype=np.int64)
    ys = np.arange(start[1], stop[1], geo.step_level0_xy[1], dtype=np.int64)
    if len(xs) == 0 or len(ys) == 0:
        return np.zeros((0, 2), np.int64)
    gx, gy = np.meshgrid(xs, ys, indexing="ij")
    candidates = np.stack([gx.ravel(), gy.ravel()], axis=1)
    keep = contour_check(contour, candidates, size0, cfg.contour_fn)
    # The hole test uses the float centre (CLAM: patch_size / 2), the contour checks the integer one (// 2).
    centres = candidates[keep] + size0 / 2
    in_hole = np.zeros(len(centres), bool)
    for hole in holes:
        in_hole |= point_polygon_test(hole, centres) > 0
    accepted = np.flatnonzero(keep)[~in_hole]
    return candidates[accepted]


def contour_check(contour: np.ndarray, corners_xy: np.ndarray, size_level0_px: int, contour_fn: str) -> np.ndarray:
    """CLAM's ``isInContour*`` checks for many patches at once.

    Args:
        contour: ``(K, 2)`` level-0 polygon.
        corners_xy: ``(P, 2)`` patch top-left corners in level-0 pixels.
        size_level0_px: Patch side in level-0 pixels.
        contour_fn: ``four_pt``, ``four_pt_hard``, ``center`` or ``basic``.

    Returns:
        ``(P,)`` bool, True where the patch passes (``pointPolygonTest >= 0``, i.e. boundary counts as inside).
    """
    if contour_fn == "basic":
        return point_polygon_test(contour, corners_xy) >= 0
    centre = corners_xy + size_level0_px // 2
    shift = int(size_level0_px // 2 * 0.5)
    if contour_fn == "center" or shift == 0:
        return point_polygon_test(contour, centre) >= 0
    offsets = np.array([(-shift, -shift), (shift, shift), (shift, -shift), (-shift, shift)])
    points = (centre[None, :, :] + offsets[:, None, :]).reshape(-1, 2)
    inside = (point_polygon_test(contour, points) >= 0).reshape(4, -1)
    if contour_fn == "four_pt":
        return inside.any(axis=0)
    if contour_fn == "four_pt_hard":
        return inside.all(axis=0)
    raise ConfigError(f"unknown contour_fn {contour_fn!r}; choose four_pt, four_pt_hard, center or basic")
